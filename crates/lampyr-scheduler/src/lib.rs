//! The function service: it turns "invoke function F with this event" into a
//! result, owning every instance of every function.
//!
//! * **Reuse, then cold start.** An invocation takes a free slot on an idle
//!   or not-yet-full instance of the current version; if there is none and the
//!   function is below `max_instances`, it cold-starts one (code → sandbox →
//!   runtime → init), recording each phase.
//! * **Bounded waiting.** Past `max_instances × concurrency` in-flight
//!   invocations, requests wait in a FIFO queue of `max_queue`; a freed slot is
//!   handed straight to the oldest waiter. A request that waits longer than
//!   `queue_timeout`, or finds the queue full, is throttled (429).
//! * **Scale to zero / reserved.** A reaper stops instances idle longer than
//!   `idle_timeout`, never going below `min_instances`, and starts reserved
//!   instances whenever fewer than `min_instances` are alive.
//! * **Versions.** A deploy switches new requests to the new version at once;
//!   old-version instances drain (finish what they run) and stop.
//! * **Failures.** A timed-out invocation poisons its instance, which is
//!   killed as soon as nothing else runs on it; an instance that dies fails
//!   exactly the invocations it was running, and is replaced on demand.
#![forbid(unsafe_code)]

mod deploy;
mod logs;
mod metrics;
mod pool;
mod records;
mod state;
pub mod stats;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use lampyr_api::{FunctionSpec, InstanceCounts};
use lampyr_runtime::{
    Instance, InstanceConfig, InstanceError, InvokeOutcome, LoadRequest, PendingInvoke, Runtimes,
    Starting,
};
use lampyr_store::{FunctionRecord, LogStore, Store, VersionRecord};
use parking_lot::RwLock;

pub use deploy::{DeployOptions, DeployOutcome};
pub use logs::{Follower, LogHub};
pub use pool::{PoolBounds, PoolConfig};
use state::{FunctionState, Grant, SlotGrant, SlotId};

/// Errors that stop an invocation before or instead of the handler running.
#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    #[error("function '{0}' does not exist")]
    NotFound(String),
    #[error("function '{function}' is at its limit of {max_instances} instance(s) × {concurrency} concurrent invocation(s) and {queued} request(s) are already waiting (max_queue = {max_queue})")]
    QueueFull {
        function: String,
        max_instances: u32,
        concurrency: u32,
        queued: usize,
        max_queue: u32,
    },
    #[error("function '{function}' is at its limit of {max_instances} instance(s) × {concurrency} concurrent invocation(s); the request waited {waited_ms} ms (queue_timeout) without a free instance")]
    QueueTimeout {
        function: String,
        max_instances: u32,
        concurrency: u32,
        waited_ms: u64,
    },
    #[error("function '{function}' needs the {runtime} runtime, which is not available on this host: {why}")]
    RuntimeUnavailable {
        function: String,
        runtime: String,
        why: String,
    },
    #[error("function '{function}' could not start an instance: {source}")]
    StartFailed {
        function: String,
        #[source]
        source: InstanceError,
    },
    /// The handler module failed to load: the runtime's error object.
    /// With `retry_in`, this request did not start an instance: a start
    /// failed moments ago and the next is tried only after a back-off.
    #[error("function '{function}' failed to initialise: {}{}", describe_error(.error), .retry_in.map(|d| format!(" (not retried for this request: the last start failed just now; the next start is tried in {:.1} s)", d.as_secs_f64())).unwrap_or_default())]
    InitFailed {
        function: String,
        error: serde_json::Value,
        retry_in: Option<Duration>,
    },
    #[error("function '{0}' was deleted")]
    Deleted(String),
    /// A deploy's load check failed: the new version's handler does not
    /// load. The runtime's error object.
    #[error("version {version} of function '{function}' does not load: {}", describe_error(.error))]
    LoadCheckFailed {
        function: String,
        version: u64,
        error: serde_json::Value,
    },
    #[error("function '{function}' has network = \"egress\", which this server cannot provide: {why}; deploy it with network = \"none\" (loopback only) or \"host\", or run lampyr where /dev/net/tun exists")]
    NetworkUnavailable { function: String, why: String },
    #[error(transparent)]
    Store(#[from] lampyr_store::StoreError),
}

/// A runtime's error object (`errorType`, `errorMessage`, `stackTrace`) as
/// people read it: the type and message, then the stack, a frame a line.
pub fn describe_error(error: &serde_json::Value) -> String {
    let t = error
        .get("errorType")
        .and_then(|v| v.as_str())
        .unwrap_or("Runtime.InitError");
    let m = error
        .get("errorMessage")
        .and_then(|v| v.as_str())
        .unwrap_or("");
    let mut out = format!("{t}: {m}");
    if let Some(stack) = error.get("stackTrace").and_then(|v| v.as_array()) {
        let frames: Vec<&str> = stack.iter().filter_map(|f| f.as_str()).collect();
        // The runtime's own frames (the bootstrap loading the module, the
        // import machinery) say nothing about the function's code.
        let own = |f: &&str| {
            [
                "/var/runtime/",
                "(node:",
                "at node:",
                "<frozen importlib",
                "/importlib/__init__.py",
            ]
            .iter()
            .any(|p| f.contains(p))
        };
        let theirs: Vec<&str> = frames.iter().copied().filter(|f| !own(f)).collect();
        let shown = if theirs.is_empty() { frames } else { theirs };
        for frame in shown {
            for line in frame.lines().filter(|l| !l.trim().is_empty()) {
                out.push_str("\n    ");
                out.push_str(line.trim_end());
            }
        }
    }
    out
}

/// How an invocation found its instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartKind {
    /// A new instance was started for it.
    Cold,
    /// A pre-started generic instance was taken from a pool and specialised.
    Pooled,
    /// An already-running instance served it.
    Warm,
}

impl StartKind {
    pub fn as_str(self) -> &'static str {
        match self {
            StartKind::Cold => "cold",
            StartKind::Pooled => "pooled",
            StartKind::Warm => "warm",
        }
    }
}

/// Time spent in each phase of one invocation.
#[derive(Debug, Clone, Copy, Default)]
pub struct Phases {
    /// Waiting for a free instance.
    pub queue: Duration,
    /// Making the version's code available (cold start only).
    pub code: Option<Duration>,
    /// Building the sandbox (cold start only).
    pub sandbox: Option<Duration>,
    /// Starting the language runtime (cold start only).
    pub runtime: Option<Duration>,
    /// Loading the function's module and running its init code (cold start only).
    pub init: Option<Duration>,
    /// Running the handler.
    pub exec: Duration,
}

/// How the handler's part of an invocation ended.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// The handler's result as JSON.
    Ok(Bytes),
    /// The handler threw: the error object as JSON.
    FunctionError(Bytes),
    /// The handler ran past the function's timeout; its instance is killed.
    Timeout { timeout: Duration },
    /// The instance died while running the invocation.
    Crashed { reason: String },
    /// The instance exceeded its memory limit and the kernel killed it.
    OutOfMemory { limit_mb: u32 },
}

/// The invocation that caused a cold start, sent along with its LOAD.
#[derive(Clone, Copy)]
struct FirstInvoke<'a> {
    request_id: &'a str,
    event: &'a [u8],
}

/// The result of [`Scheduler::invoke`].
#[derive(Debug, Clone)]
pub struct Invocation {
    pub request_id: String,
    pub function: String,
    pub version: u64,
    pub start: StartKind,
    pub phases: Phases,
    pub outcome: Outcome,
    pub memory_mb: u32,
    /// When the request reached the function service.
    pub started_at: SystemTime,
    /// The instance that ran it.
    pub instance: String,
    sandbox: Arc<lampyr_sandbox::SandboxControl>,
    refill: Option<Arc<RefillOnDrop>>,
}

/// See [`Scheduler::record`].
#[derive(Debug)]
pub struct AfterResponse {
    _refill: Arc<RefillOnDrop>,
}

/// Refills a runtime pool when dropped.
struct RefillOnDrop {
    sched: Scheduler,
    runtime: lampyr_api::Runtime,
}

impl std::fmt::Debug for RefillOnDrop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RefillOnDrop({})", self.runtime)
    }
}

impl Drop for RefillOnDrop {
    fn drop(&mut self) {
        self.sched.inner.pools.replenish(self.runtime);
    }
}

/// How a request that never produced an [`Invocation`] ended, for its record.
#[derive(Debug, Clone)]
pub struct Rejected<'a> {
    pub function: &'a str,
    pub request_id: &'a str,
    pub trigger: &'a str,
    /// `throttled`, `error` or `crashed`.
    pub status: &'a str,
    pub error_type: Option<String>,
    pub http_status: u16,
    pub started_at: SystemTime,
    pub waited: Duration,
}

/// Settings of the function service.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    pub runtimes: Runtimes,
    /// Where the runtime bootstraps are installed (one directory per runtime).
    pub bootstrap_dir: PathBuf,
    /// The container layer every instance is started in.
    pub sandboxer: Arc<lampyr_sandbox::Sandboxer>,
    /// How often the reaper looks for idle instances and missing reserved ones.
    pub reap_interval: Duration,
    /// Pre-started instance pools.
    pub pools: PoolConfig,
    /// How long invocation records are kept.
    pub retention: lampyr_store::Retention,
    /// How much log output the server holds, and each instance may write.
    pub log_budget: lampyr_runtime::LogBudget,
    /// The egress network, or why this host has none.
    pub egress: Result<Arc<lampyr_egress::Egress>, String>,
}

/// The function service. Cheap to clone.
#[derive(Clone)]
pub struct Scheduler {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    store: Arc<Store>,
    config: SchedulerConfig,
    functions: RwLock<HashMap<String, Arc<FunctionState>>>,
    logs: LogHub,
    instance_seq: AtomicU64,
    pools: pool::Pools,
    records: Arc<lampyr_store::RecordStore>,
    recorder: records::Recorder,
    metrics: Arc<metrics::Metrics>,
    /// Instance counts over time per function, sampled every few seconds.
    samples: parking_lot::Mutex<HashMap<String, std::collections::VecDeque<(SystemTime, u64)>>>,
    /// One lock per function: its deploys run one at a time.
    deploying: parking_lot::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// A resolved, runnable version of a function.
#[derive(Debug)]
pub(crate) struct Version {
    pub(crate) record: VersionRecord,
    pub(crate) code_dir: PathBuf,
    pub(crate) access: TriggerAccess,
}

/// Who may call a function's HTTP trigger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TriggerAccess {
    Public,
    /// Callers must present this bearer token (or the server's API token).
    Token(Arc<str>),
}

impl Version {
    fn spec(&self) -> &FunctionSpec {
        &self.record.spec
    }
}

impl Scheduler {
    /// Starts the function service over `store`: loads every function and
    /// brings up its reserved instances, and starts the reaper and the log
    /// writer. Must be called inside a tokio runtime.
    pub fn start(
        store: Arc<Store>,
        log_store: LogStore,
        records: Arc<lampyr_store::RecordStore>,
        config: SchedulerConfig,
    ) -> Result<Self, SchedulerError> {
        let logs = LogHub::start(log_store, records.clone(), config.log_budget);
        let pools = pool::Pools::new(config.pools.clone());
        let metrics = Arc::new(metrics::Metrics::new());
        let recorder = records::Recorder::start(
            records.clone(),
            config.retention,
            logs.clone(),
            metrics.clone(),
        );
        let inner = Arc::new(Inner {
            store: store.clone(),
            config,
            functions: RwLock::new(HashMap::new()),
            logs,
            instance_seq: AtomicU64::new(1),
            pools,
            records,
            recorder,
            metrics,
            samples: parking_lot::Mutex::new(HashMap::new()),
            deploying: parking_lot::Mutex::new(HashMap::new()),
        });
        inner.pools.start(&inner);
        let sched = Scheduler { inner };
        for rec in store.list()? {
            sched.activate(&rec)?;
        }
        let weak = Arc::downgrade(&sched.inner);
        let every = sched.inner.config.reap_interval;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { break };
                Scheduler { inner }.reap();
            }
        });
        Ok(sched)
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.inner.store
    }

    pub fn logs(&self) -> &LogHub {
        &self.inner.logs
    }

    pub fn runtimes(&self) -> &Runtimes {
        &self.inner.config.runtimes
    }

    /// Makes `rec`'s current version the one new requests get. Instances of
    /// older versions drain and stop; reserved instances are started.
    pub fn activate(&self, rec: &FunctionRecord) -> Result<(), SchedulerError> {
        self.activate_with(rec, None)
    }

    /// [`Scheduler::activate`], with an instance of the new version already
    /// loaded (the one that passed the deploy's load check), which serves
    /// it from the start.
    pub(crate) fn activate_with(
        &self,
        rec: &FunctionRecord,
        loaded: Option<Arc<Instance>>,
    ) -> Result<(), SchedulerError> {
        let code_dir = self.inner.store.ensure_unpacked(&rec.current.code_sha256)?;
        let access = match rec.current.spec.auth {
            lampyr_api::Auth::Public => TriggerAccess::Public,
            lampyr_api::Auth::Token => TriggerAccess::Token(rec.trigger_token.as_str().into()),
        };
        let version = Arc::new(Version {
            record: rec.current.clone(),
            code_dir,
            access,
        });
        let state = {
            let mut map = self.inner.functions.write();
            map.entry(rec.name.clone())
                .or_insert_with(|| Arc::new(FunctionState::new(&rec.name, version.clone())))
                .clone()
        };
        let to_kill = state.set_version(version.clone());
        for inst in to_kill {
            inst.kill("replaced by a new version");
        }
        if let Some(inst) = loaded {
            self.watch_instance(&state, &inst);
            state.adopt(inst, version);
        }
        self.ensure_reserved(&state);
        Ok(())
    }

    /// Forgets a function: its instances drain and stop, waiting requests fail.
    pub fn remove(&self, name: &str) {
        let state = self.inner.functions.write().remove(name);
        if let Some(state) = state {
            for inst in state.delete() {
                inst.kill("function deleted");
            }
        }
        self.inner.logs.remove(name);
    }

    /// Records how many instances each function has, every few seconds,
    /// keeping an hour of samples.
    fn sample(&self, states: &[Arc<FunctionState>]) {
        const EVERY: Duration = Duration::from_secs(5);
        const KEEP: Duration = Duration::from_secs(3600);
        let now = SystemTime::now();
        let mut samples = self.inner.samples.lock();
        for st in states {
            let ring = samples.entry(st.name.clone()).or_default();
            if ring
                .back()
                .is_some_and(|(t, _)| now.duration_since(*t).unwrap_or_default() < EVERY)
            {
                continue;
            }
            let c = st.counts();
            ring.push_back((now, c.total() as u64));
            while ring
                .front()
                .is_some_and(|(t, _)| now.duration_since(*t).unwrap_or_default() > KEEP)
            {
                ring.pop_front();
            }
        }
        samples.retain(|name, _| states.iter().any(|s| &s.name == name));
    }

    /// Hands a finished invocation to the record writer (off the request
    /// path): its record and metrics. Returns the work that should wait until
    /// the response has been sent, as a guard that does it when dropped: the
    /// trigger drops it after writing the response.
    pub fn record(
        &self,
        inv: Invocation,
        trigger: &str,
        http_status: u16,
        response_bytes: u64,
    ) -> Option<AfterResponse> {
        let Invocation {
            request_id,
            function,
            version,
            start,
            phases: p,
            outcome,
            memory_mb,
            started_at,
            instance,
            sandbox,
            refill,
        } = inv;
        let ms = lampyr_api::millis;
        let exec_ms = ms(p.exec);
        let billed_ms = (exec_ms.ceil() as u64).max(1);
        let (status, error_type) = match &outcome {
            Outcome::Ok(_) => ("ok", None),
            Outcome::FunctionError(e) => (
                "error",
                serde_json::from_slice::<serde_json::Value>(e)
                    .ok()
                    .and_then(|v| {
                        v.get("errorType")
                            .and_then(|t| t.as_str())
                            .map(str::to_string)
                    }),
            ),
            Outcome::Timeout { .. } => ("timeout", Some("Runtime.Timeout".to_string())),
            Outcome::OutOfMemory { .. } => {
                ("out_of_memory", Some("Runtime.OutOfMemory".to_string()))
            }
            Outcome::Crashed { .. } => ("crashed", Some("Runtime.ExitError".to_string())),
        };
        let record = lampyr_api::InvocationRecord {
            request_id,
            function,
            version,
            trigger: trigger.to_string(),
            // Formatted by the record writer, off the request path.
            start_time: String::new(),
            start: start.as_str().to_string(),
            phases: lampyr_api::PhaseTimes {
                queue: ms(p.queue),
                code: p.code.map(ms),
                sandbox: p.sandbox.map(ms),
                runtime: p.runtime.map(ms),
                init: p.init.map(ms),
                exec: exec_ms,
            },
            duration_ms: exec_ms,
            billed_ms,
            gb_seconds: f64::from(memory_mb) / 1024.0 * billed_ms as f64 / 1000.0,
            memory_mb,
            max_memory_used_mb: None,
            status: status.to_string(),
            error_type,
            http_status,
            response_bytes,
            instance: Some(instance),
        };
        self.inner.recorder.record(records::Draft {
            record,
            started_at,
            instance: Some(sandbox),
            report: true,
        });
        refill.map(|r| AfterResponse { _refill: r })
    }

    /// Records a request that never reached a handler (throttled, or its
    /// instance failed to start).
    pub fn record_rejected(&self, r: Rejected<'_>) {
        let Some(version) = self.current(r.function) else {
            return;
        };
        let record = lampyr_api::InvocationRecord {
            request_id: r.request_id.to_string(),
            function: r.function.to_string(),
            version: version.version,
            trigger: r.trigger.to_string(),
            start_time: String::new(),
            start: "cold".into(),
            phases: lampyr_api::PhaseTimes {
                queue: lampyr_api::millis(r.waited),
                ..Default::default()
            },
            duration_ms: 0.0,
            billed_ms: 0,
            gb_seconds: 0.0,
            memory_mb: version.spec.memory_mb,
            max_memory_used_mb: None,
            status: r.status.to_string(),
            error_type: r.error_type,
            http_status: r.http_status,
            response_bytes: 0,
            instance: None,
        };
        self.inner.recorder.record(records::Draft {
            record,
            started_at: r.started_at,
            instance: None,
            report: false,
        });
    }

    /// The invocation records store.
    pub fn records(&self) -> &Arc<lampyr_store::RecordStore> {
        &self.inner.records
    }

    /// A function's instance counts over time.
    pub fn instance_samples(&self, name: &str) -> Vec<(SystemTime, u64)> {
        self.inner
            .samples
            .lock()
            .get(name)
            .map(|r| r.iter().copied().collect())
            .unwrap_or_default()
    }

    /// The Prometheus metrics, with the gauges read now.
    pub fn metrics_text(&self) -> String {
        let m = &self.inner.metrics;
        for (name, state) in self.inner.functions.read().iter() {
            let c = state.counts();
            for (st, n) in [
                ("starting", c.starting),
                ("idle", c.idle),
                ("busy", c.busy),
                ("draining", c.draining),
                ("stopping", c.stopping),
            ] {
                m.instances.with_label_values(&[name, st]).set(n as i64);
            }
            m.queue_depth
                .with_label_values(&[name])
                .set(c.queued as i64);
            m.reserved
                .with_label_values(&[name])
                .set(i64::from(state.current().spec().min_instances));
        }
        for p in self.inner.pools.status() {
            m.pooled
                .with_label_values(&[&p.runtime])
                .set(p.ready as i64);
        }
        m.render()
    }

    /// The runtime pools.
    pub fn pools(&self) -> Vec<lampyr_api::PoolStatus> {
        self.inner.pools.status()
    }

    /// Stops every instance of every function and waits (up to `limit`)
    /// until they are gone, their cgroups included.
    pub async fn shutdown(&self, limit: Duration) {
        let states: Vec<Arc<FunctionState>> = self
            .inner
            .functions
            .write()
            .drain()
            .map(|(_, s)| s)
            .collect();
        let mut instances: Vec<Arc<Instance>> = states.iter().flat_map(|s| s.stop_all()).collect();
        instances.extend(self.inner.pools.drain());
        for inst in &instances {
            inst.kill("server shutting down");
        }
        let all = async {
            for inst in &instances {
                inst.wait_exit().await;
            }
        };
        if tokio::time::timeout(limit, all).await.is_err() {
            tracing::warn!("some instances did not stop within {limit:?}");
        }
    }

    /// Live instance counts of a function.
    pub fn instance_counts(&self, name: &str) -> InstanceCounts {
        self.inner
            .functions
            .read()
            .get(name)
            .map(|s| s.counts())
            .unwrap_or_default()
    }

    /// The error of `name`'s latest failed initialisation, while requests
    /// are answered with it (its back-off).
    pub fn init_failure(&self, name: &str) -> Option<String> {
        self.inner.functions.read().get(name)?.init_failure()
    }

    /// How many functions are deployed.
    pub fn function_count(&self) -> usize {
        self.inner.functions.read().len()
    }

    /// Total live instances across all functions.
    pub fn total_instances(&self) -> usize {
        self.inner
            .functions
            .read()
            .values()
            .map(|s| s.counts().total())
            .sum()
    }

    /// The current version of a function, as the scheduler runs it.
    pub fn current(&self, name: &str) -> Option<VersionRecord> {
        self.inner
            .functions
            .read()
            .get(name)
            .map(|s| s.current().record.clone())
    }

    /// Who may call the function's trigger; `None` if it does not exist.
    pub fn trigger_access(&self, name: &str) -> Option<TriggerAccess> {
        self.inner
            .functions
            .read()
            .get(name)
            .map(|s| s.current().access.clone())
    }

    /// Runs one invocation of `name` with `event` (JSON bytes).
    ///
    /// The invocation runs in its own task: if the caller goes away (the
    /// client disconnected), it still finishes or times out and gives its
    /// slot back properly, and a cold start it began still completes.
    pub async fn invoke(
        &self,
        name: &str,
        request_id: String,
        event: Vec<u8>,
    ) -> Result<Invocation, SchedulerError> {
        let sched = self.clone();
        let name = name.to_string();
        match tokio::spawn(async move { sched.run_invocation(&name, request_id, event).await })
            .await
        {
            Ok(r) => r,
            Err(e) => Err(SchedulerError::StartFailed {
                function: String::new(),
                source: InstanceError::Protocol(format!("the invocation task failed: {e}")),
            }),
        }
    }

    async fn run_invocation(
        &self,
        name: &str,
        request_id: String,
        event: Vec<u8>,
    ) -> Result<Invocation, SchedulerError> {
        let state = self
            .inner
            .functions
            .read()
            .get(name)
            .cloned()
            .ok_or_else(|| SchedulerError::NotFound(name.to_string()))?;
        let started_at = SystemTime::now();
        let queued_at = Instant::now();
        let mut phases = Phases::default();
        let first = FirstInvoke {
            request_id: &request_id,
            event: &event,
        };
        let (lease, start, sent) = self.acquire(&state, &mut phases, first).await?;
        if phases.code.is_none() {
            phases.queue = queued_at.elapsed();
        }
        let version = lease.version.clone();
        let spec = version.spec();
        let timeout = spec.timeout();
        let exec_started = Instant::now();
        let pending = match sent {
            // A cold start sent this invocation along with its LOAD.
            Some(p) => p,
            None => {
                self.log_start(
                    &lease.state.name,
                    &version,
                    lease.instance.id(),
                    &request_id,
                );
                lease
                    .instance
                    .start_invoke(&request_id, SystemTime::now() + timeout, &event)
            }
        };
        let outcome = tokio::time::timeout(timeout, pending.outcome()).await;
        phases.exec = exec_started.elapsed();
        // A pooled start refills its pool once its response is out (see
        // [`Scheduler::record`]): starting an instance takes CPU
        // the response still needs.
        let refill = (start == StartKind::Pooled).then(|| {
            Arc::new(RefillOnDrop {
                sched: self.clone(),
                runtime: spec.runtime,
            })
        });
        let outcome = match outcome {
            Ok(InvokeOutcome::Ok(b)) => Outcome::Ok(b),
            // The runtime logged the error and its stack.
            Ok(InvokeOutcome::Error(b)) => Outcome::FunctionError(b),
            Ok(InvokeOutcome::Exited(report)) => {
                lease.poison("crashed");
                if report.oom {
                    self.platform_log(
                        &lease,
                        &request_id,
                        "ERROR",
                        format!(
                            "Runtime.OutOfMemory: function '{name}' exceeded its memory limit of {} MiB; instance {} was killed",
                            spec.memory_mb,
                            lease.instance.id()
                        ),
                    );
                    Outcome::OutOfMemory {
                        limit_mb: spec.memory_mb,
                    }
                } else {
                    self.platform_log(
                        &lease,
                        &request_id,
                        "ERROR",
                        format!(
                            "instance {} exited during the invocation: {}",
                            lease.instance.id(),
                            report.reason
                        ),
                    );
                    Outcome::Crashed {
                        reason: report.reason,
                    }
                }
            }
            Err(_) => {
                self.platform_log(
                    &lease,
                    &request_id,
                    "ERROR",
                    format!("Task timed out after {:.2} seconds", timeout.as_secs_f64()),
                );
                lease.poison(&format!(
                    "an invocation timed out after {:.2} s",
                    timeout.as_secs_f64()
                ));
                Outcome::Timeout { timeout }
            }
        };
        Ok(Invocation {
            request_id,
            function: name.to_string(),
            version: version.record.version,
            start,
            phases,
            outcome,
            memory_mb: spec.memory_mb,
            started_at,
            instance: lease.instance.id().to_string(),
            sandbox: lease.instance.sandbox(),
            refill,
        })
    }

    /// The START line of an invocation, for followers of the live log
    /// (reads rebuild it from the invocation's record).
    fn log_start(&self, function: &str, version: &Version, instance: &str, request_id: &str) {
        if self.inner.logs.following() {
            let version = version.record.version;
            self.inner.logs.announce(
                SystemTime::now(),
                function,
                version,
                instance,
                request_id,
                logs::start_message(request_id, version),
            );
        }
    }

    fn platform_log(&self, lease: &Lease, request_id: &str, level: &str, message: String) {
        self.inner.logs.platform(
            &lease.state.name,
            lease.version.record.version,
            lease.instance.id(),
            Some(request_id),
            level,
            message,
        );
    }

    /// Takes a slot: warm if possible, else a cold start, else a place in line.
    /// A cold start sends `first` along with the LOAD and returns it sent.
    async fn acquire(
        &self,
        state: &Arc<FunctionState>,
        phases: &mut Phases,
        first: FirstInvoke<'_>,
    ) -> Result<(Lease, StartKind, Option<PendingInvoke>), SchedulerError> {
        let started = Instant::now();
        loop {
            match state.try_acquire()? {
                state::Acquire::Slot(grant) => {
                    return Ok((Lease::new(state.clone(), grant), StartKind::Warm, None))
                }
                state::Acquire::Start(version) => {
                    phases.queue = started.elapsed();
                    let (grant, kind, sent) =
                        self.cold_start(state, version, phases, Some(first)).await?;
                    let grant = grant.expect("a claimed start returns a slot");
                    return Ok((Lease::new(state.clone(), grant), kind, sent));
                }
                state::Acquire::Wait(rx) => {
                    let version = state.current();
                    let spec = version.spec();
                    let left = spec.queue_timeout().saturating_sub(started.elapsed());
                    let mut rx = rx;
                    match tokio::time::timeout(left, &mut rx).await {
                        Ok(Ok(Grant::Slot(g))) => {
                            return Ok((Lease::new(state.clone(), g), StartKind::Warm, None))
                        }
                        Ok(Ok(Grant::Retry)) => continue,
                        Ok(Err(_)) => return Err(SchedulerError::Deleted(state.name.clone())),
                        Err(_) => {
                            // A slot handed over just as the wait ran out is
                            // used, not lost.
                            rx.close();
                            if let Ok(Grant::Slot(g)) = rx.try_recv() {
                                return Ok((Lease::new(state.clone(), g), StartKind::Warm, None));
                            }
                            return Err(SchedulerError::QueueTimeout {
                                function: state.name.clone(),
                                max_instances: spec.max_instances,
                                concurrency: spec.concurrency,
                                waited_ms: started.elapsed().as_millis() as u64,
                            });
                        }
                    }
                }
            }
        }
    }

    /// Starts and specialises one instance of `version`. With `first`, the
    /// new instance comes back with one slot taken for the caller and that
    /// invocation already sent; without, it joins the function's pool idle
    /// (a reserved instance).
    async fn cold_start(
        &self,
        state: &Arc<FunctionState>,
        version: Arc<Version>,
        phases: &mut Phases,
        first: Option<FirstInvoke<'_>>,
    ) -> Result<(Option<SlotGrant>, StartKind, Option<PendingInvoke>), SchedulerError> {
        let claim = first.is_some();
        let result = self.start_instance(&version, phases, first).await;
        match result {
            Ok((inst, kind, sent)) => {
                self.watch_instance(state, &inst);
                Ok((state.started(inst, version, claim)?, kind, sent))
            }
            Err(e) => {
                if let SchedulerError::InitFailed { error, .. } = &e {
                    // The runtime logged the error, once for this start;
                    // requests meanwhile get it without another start.
                    state.init_failed(&version, error.clone());
                }
                state.start_failed();
                Err(e)
            }
        }
    }

    /// Starts a generic instance of a runtime, with no code, for a pool.
    pub(crate) async fn start_generic(
        &self,
        rt: lampyr_api::Runtime,
        memory_mb: u32,
    ) -> Result<Arc<Instance>, SchedulerError> {
        let runtime = self.inner.config.runtimes.get(rt).map_err(|why| {
            SchedulerError::RuntimeUnavailable {
                function: format!("pool-{rt}"),
                runtime: rt.to_string(),
                why: why.to_string(),
            }
        })?;
        let id = format!(
            "pool-{rt}-{}",
            self.inner.instance_seq.fetch_add(1, Ordering::Relaxed)
        );
        let cfg = InstanceConfig {
            id,
            runtime,
            sandboxer: self.inner.config.sandboxer.clone(),
            runtime_dir: self.inner.config.bootstrap_dir.join(rt.as_str()),
            code_dir: None,
            memory_mb,
            // Pooled instances wait with their network closed; a function
            // opens it (egress) or removes it (none) when it takes one.
            network: match &self.inner.config.egress {
                Ok(egress) => lampyr_runtime::Network::Egress {
                    egress: egress.clone(),
                    policy: lampyr_egress::Policy::default(),
                },
                Err(_) => lampyr_runtime::Network::None,
            },
            logs: self.inner.logs.sender(),
        };
        let (inst, _) =
            Instance::start(cfg)
                .await
                .map_err(|source| SchedulerError::StartFailed {
                    function: format!("pool-{rt}"),
                    source,
                })?;
        Ok(inst)
    }

    /// Brings up one instance of `version`, specialised and loaded: from a
    /// pool when one has an instance ready, else from scratch.
    async fn start_instance(
        &self,
        version: &Arc<Version>,
        phases: &mut Phases,
        first: Option<FirstInvoke<'_>>,
    ) -> Result<(Arc<Instance>, StartKind, Option<PendingInvoke>), SchedulerError> {
        let spec = version.spec();
        let function = spec.name.clone();
        let code_started = Instant::now();
        // No response will refill the pool afterwards: a start for no
        // request (reserved, a deploy's check) refills it at once.
        let for_request = first.is_some();
        // The code was unpacked at deploy; this is a check, or a rebuild from
        // the blob if the cache was removed.
        let code_dir = if version.code_dir.is_dir() {
            version.code_dir.clone()
        } else {
            let store = self.inner.store.clone();
            let sha = version.record.code_sha256.clone();
            tokio::task::spawn_blocking(move || store.ensure_unpacked(&sha))
                .await
                .map_err(|e| SchedulerError::StartFailed {
                    function: function.clone(),
                    source: InstanceError::Protocol(e.to_string()),
                })??
        };
        phases.code = Some(code_started.elapsed());

        // A pooled instance lives in a private network; functions on the
        // host's network start from scratch.
        let network = self.network_of(spec)?;
        let pooled = match &network {
            lampyr_runtime::Network::Host => None,
            _ => self.inner.pools.take(spec.runtime),
        };
        let (inst, kind, starting) = match pooled {
            Some(inst) => {
                let t = Instant::now();
                let policy = match &network {
                    lampyr_runtime::Network::Egress { policy, .. } => Some(policy.clone()),
                    _ => None,
                };
                match inst.specialise(&code_dir, spec.memory_mb, policy) {
                    Ok(_) => {
                        phases.sandbox = Some(t.elapsed());
                        (inst, StartKind::Pooled, None)
                    }
                    Err(e) => {
                        // E.g. the runtime already uses more than the
                        // function's memory limit: start from scratch.
                        tracing::debug!(function = %function, "pooled instance unusable: {e}");
                        inst.kill("could not be specialised");
                        let (fresh, starting) = self.spawn_fresh(version, &code_dir).await?;
                        (fresh, StartKind::Cold, Some(starting))
                    }
                }
            }
            None => {
                let (fresh, starting) = self.spawn_fresh(version, &code_dir).await?;
                (fresh, StartKind::Cold, Some(starting))
            }
        };
        let load = LoadRequest {
            handler: spec.handler.clone(),
            task_root: inst.task_root().unwrap_or_default(),
            runtime_dir: inst.runtime_dir().to_path_buf(),
            function_name: spec.name.clone(),
            function_version: version.record.version.to_string(),
            memory_mb: spec.memory_mb,
            timeout_ms: spec.timeout_ms,
            concurrency: spec.concurrency,
            env: spec.env.clone(),
        };
        // Init code gets the function's timeout, as on Lambda, but at least 10 s.
        let init_limit = spec.timeout().max(Duration::from_secs(10));
        let mut sent = None;
        let loaded = async {
            let load_started = inst.send_load(&load).await?;
            // The first invocation follows the LOAD at once: the runtime
            // runs it as soon as the handler is loaded. A runtime still
            // starting finds both waiting when it is up.
            sent = first.map(|f| {
                self.log_start(&spec.name, version, inst.id(), f.request_id);
                inst.start_invoke(f.request_id, SystemTime::now() + spec.timeout(), f.event)
            });
            let init_from = match starting {
                Some(starting) => {
                    let t = inst.started(starting).await?;
                    phases.sandbox = Some(t.sandbox);
                    phases.runtime = Some(t.runtime);
                    // Loading starts when the runtime is up.
                    Instant::now()
                }
                None => load_started,
            };
            inst.loaded(init_from, init_limit).await
        }
        .await;
        if kind == StartKind::Pooled && (loaded.is_err() || !for_request) {
            self.inner.pools.replenish(spec.runtime);
        }
        match loaded {
            Ok(d) => phases.init = Some(d),
            Err(InstanceError::LoadFailed(error)) => {
                return Err(SchedulerError::InitFailed {
                    function,
                    error,
                    retry_in: None,
                });
            }
            Err(source) => return Err(SchedulerError::StartFailed { function, source }),
        }
        Ok((inst, kind, sent))
    }

    /// Spawns an instance of `version` from scratch, its code in place; its
    /// runtime is still starting (see [`Instance::started`]).
    async fn spawn_fresh(
        &self,
        version: &Arc<Version>,
        code_dir: &std::path::Path,
    ) -> Result<(Arc<Instance>, Starting), SchedulerError> {
        let spec = version.spec();
        let function = spec.name.clone();
        let runtime = self
            .inner
            .config
            .runtimes
            .get(spec.runtime)
            .map_err(|why| SchedulerError::RuntimeUnavailable {
                function: function.clone(),
                runtime: spec.runtime.to_string(),
                why: why.to_string(),
            })?;
        let id = format!(
            "{}-{}",
            spec.name,
            self.inner.instance_seq.fetch_add(1, Ordering::Relaxed)
        );
        let cfg = InstanceConfig {
            id,
            runtime,
            sandboxer: self.inner.config.sandboxer.clone(),
            runtime_dir: self.inner.config.bootstrap_dir.join(spec.runtime.as_str()),
            code_dir: Some(code_dir.to_path_buf()),
            memory_mb: spec.memory_mb,
            network: self.network_of(spec)?,
            logs: self.inner.logs.sender(),
        };
        Instance::spawn(cfg)
            .await
            .map_err(|source| SchedulerError::StartFailed { function, source })
    }

    /// The network an instance of `spec` gets.
    fn network_of(&self, spec: &FunctionSpec) -> Result<lampyr_runtime::Network, SchedulerError> {
        Ok(match spec.network {
            lampyr_api::Network::None => lampyr_runtime::Network::None,
            lampyr_api::Network::Host => lampyr_runtime::Network::Host,
            lampyr_api::Network::Egress => match &self.inner.config.egress {
                Ok(egress) => lampyr_runtime::Network::Egress {
                    egress: egress.clone(),
                    policy: lampyr_egress::Policy::egress(&spec.allow),
                },
                Err(why) => {
                    return Err(SchedulerError::NetworkUnavailable {
                        function: spec.name.clone(),
                        why: why.clone(),
                    })
                }
            },
        })
    }

    /// Removes an instance from its function when it exits, whatever the cause.
    fn watch_instance(&self, state: &Arc<FunctionState>, inst: &Arc<Instance>) {
        let weak_state = Arc::downgrade(state);
        let weak_inst = Arc::downgrade(inst);
        let exit = inst.clone();
        let id = inst.id().to_string();
        let sched = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            let reason = exit.wait_exit().await.reason;
            drop(exit);
            let Some(state) = weak_state.upgrade() else {
                return;
            };
            state.gone(&id);
            if let Some(inst) = weak_inst.upgrade() {
                tracing::debug!(function = %state.name, instance = inst.id(), %reason, "instance exited");
                state.forget(&inst);
            }
            if let Some(inner) = sched.upgrade() {
                Scheduler { inner }.ensure_reserved(&state);
            }
        });
    }

    /// Starts reserved instances until `min_instances` are alive.
    fn ensure_reserved(&self, state: &Arc<FunctionState>) {
        let missing = state.reserve_missing();
        for version in missing {
            let sched = self.clone();
            let state = state.clone();
            tokio::spawn(async move {
                let mut phases = Phases::default();
                match sched.cold_start(&state, version, &mut phases, None).await {
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(function = %state.name, "reserved instance failed to start: {e}");
                    }
                }
            });
        }
    }

    /// One pass of the reaper: stop idle instances, top up reserved ones.
    fn reap(&self) {
        let states: Vec<Arc<FunctionState>> =
            self.inner.functions.read().values().cloned().collect();
        self.sample(&states);
        for state in states {
            for inst in state.reap_idle(Instant::now()) {
                inst.kill("idle timeout");
            }
            if state.needs_reserve() {
                self.ensure_reserved(&state);
            }
        }
    }
}

/// One taken slot on an instance; giving it back (dropping it) frees the slot
/// or hands it to the next waiter.
struct Lease {
    state: Arc<FunctionState>,
    slot: SlotId,
    instance: Arc<Instance>,
    version: Arc<Version>,
}

impl Lease {
    fn new(state: Arc<FunctionState>, grant: SlotGrant) -> Self {
        Lease {
            state,
            slot: grant.slot,
            instance: grant.instance,
            version: grant.version,
        }
    }

    /// The instance must not take new work and is killed once idle.
    fn poison(&self, reason: &str) {
        self.state.poison(self.slot, reason);
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some((inst, reason)) = self.state.release(self.slot) {
            inst.kill(&reason);
        }
    }
}
