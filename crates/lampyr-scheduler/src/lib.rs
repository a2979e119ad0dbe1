//! The function service: it turns "call function F with this event" into a
//! result, owning every instance of every function.
//!
//! * **One way in.** Every trigger calls [`Scheduler::call`] (`invoke.rs`):
//!   access is checked, the invocation runs and is recorded, refusals
//!   included, whatever the trigger.
//! * **Reuse, then cold start.** An invocation takes a free slot on an idle
//!   or not-yet-full instance of the current version; if there is none and the
//!   function is below `max_instances`, it cold-starts one (`start.rs`: code
//!   → sandbox → runtime → init, from a pool when one is ready), recording
//!   each phase.
//! * **Bounded waiting.** Past `max_instances × concurrency` in-flight
//!   invocations, requests wait in a FIFO queue of `max_queue`; a freed slot is
//!   handed straight to the oldest waiter. A request that waits longer than
//!   `queue_timeout`, or finds the queue full, is throttled (429).
//! * **Scale to zero / reserved.** A reaper (`reaper.rs`) stops instances
//!   idle longer than `idle_timeout`, never going below `min_instances`, and
//!   starts reserved instances whenever fewer than `min_instances` are alive.
//! * **Versions.** A deploy (`deploy.rs`) checks that the new version loads,
//!   then switches new requests to it at once; old-version instances drain
//!   (finish what they run) and stop. Any version stays callable by number
//!   or through an alias (`versions.rs`, `aliases.rs`), on instances of its
//!   own; an alias may move gradually (`canary.rs`).
//! * **Failures.** A timed-out invocation poisons its instance, which is
//!   killed as soon as nothing else runs on it; an instance that dies fails
//!   exactly the invocations it was running, and is replaced on demand.
//!
//! The rules themselves live in `state.rs` (one function's slots, starts and
//! waiters) and `pool.rs` (runtime pools), which see instances only through
//! `InstanceHandle` (`handle.rs`) and are unit-tested with stand-ins.
#![forbid(unsafe_code)]

mod aliases;
mod canary;
mod deploy;
mod error;
mod handle;
mod invoke;
mod logs;
mod metrics;
mod pool;
mod reaper;
mod records;
mod start;
mod state;
pub mod stats;
mod stream;
mod versions;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use lampyr_api::{FunctionSpec, InstanceCounts};
use lampyr_runtime::{Instance, Runtimes};
use lampyr_store::{FunctionRecord, LogStore, Store, VersionRecord};
use parking_lot::RwLock;

pub use deploy::{DeployOptions, DeployOutcome};
pub use error::SchedulerError;
pub use invoke::{
    new_request_id, token_eq, Answer, Call, Credential, Delivery, EventSink, Invocation,
    InvocationType, NewEvent, Outcome, Phases, Queued, Refused, COLLECT_LIMIT,
};
pub use logs::{Follower, LogHub};
pub use pool::{PoolBounds, PoolConfig};
use state::FunctionState;

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
    /// How many old versions of a function that no alias uses keep their
    /// code (the newest version and aliased ones always do).
    pub keep_versions: usize,
    /// How much higher (0-1) a canary's error rate may be than the old
    /// version's before the canary is rolled back.
    pub canary_threshold: f64,
}

/// The default of [`SchedulerConfig::keep_versions`].
pub const DEFAULT_KEEP_VERSIONS: usize = 10;

/// The default of [`SchedulerConfig::canary_threshold`]: five points.
pub const DEFAULT_CANARY_THRESHOLD: f64 = 0.05;

/// The function service. Cheap to clone.
#[derive(Clone)]
pub struct Scheduler {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    store: Arc<Store>,
    config: SchedulerConfig,
    functions: RwLock<HashMap<String, Arc<FunctionState>>>,
    /// Versions other than the newest that calls reached, by function and
    /// number (`versions.rs`).
    pinned: RwLock<HashMap<(String, u64), Arc<FunctionState>>>,
    /// Every function's aliases (`aliases.rs`).
    routes: aliases::Routes,
    /// Canaries in progress (`canary.rs`).
    canaries: canary::Canaries,
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
    /// Deploys and deletes, for triggers that follow them.
    changes: tokio::sync::broadcast::Sender<Change>,
    /// Where event calls go.
    events: std::sync::OnceLock<Arc<dyn invoke::EventSink>>,
    /// Calls that wait for an answer so far (see
    /// [`Scheduler::waiting_calls`]).
    calls: AtomicU64,
}

/// A deploy or delete, as triggers that follow the functions see it.
#[derive(Debug, Clone)]
pub enum Change {
    /// A function's current version is now `spec` (it was deployed, or
    /// loaded when the service started).
    Deployed(Arc<FunctionSpec>),
    /// A function was deleted.
    Deleted(String),
}

/// A resolved, runnable version of a function.
#[derive(Debug)]
pub(crate) struct Version {
    pub(crate) record: VersionRecord,
    pub(crate) code_dir: PathBuf,
    pub(crate) access: TriggerAccess,
}

/// Who may call a function's triggers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TriggerAccess {
    Public,
    /// Callers must present this bearer token (or be an operator).
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
            pinned: RwLock::new(HashMap::new()),
            routes: aliases::Routes::default(),
            canaries: canary::Canaries::default(),
            logs,
            instance_seq: AtomicU64::new(1),
            pools,
            records,
            recorder,
            metrics,
            samples: parking_lot::Mutex::new(HashMap::new()),
            deploying: parking_lot::Mutex::new(HashMap::new()),
            changes: tokio::sync::broadcast::channel(256).0,
            events: std::sync::OnceLock::new(),
            calls: AtomicU64::new(0),
        });
        inner.pools.start(&inner);
        let sched = Scheduler { inner };
        sched.load_routes()?;
        for rec in store.list()? {
            sched.activate(&rec)?;
        }
        reaper::start(&sched);
        canary::start(&sched);
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

    /// Deploys and deletes from now on. A follower that lags more than 256
    /// changes behind is told so ([`tokio::sync::broadcast`]) and should
    /// re-read [`Scheduler::functions`].
    pub fn changes(&self) -> tokio::sync::broadcast::Receiver<Change> {
        self.inner.changes.subscribe()
    }

    /// The current version of every function.
    pub fn functions(&self) -> Vec<Arc<FunctionSpec>> {
        self.inner
            .functions
            .read()
            .values()
            .map(|s| Arc::new(s.current().spec().clone()))
            .collect()
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
        let previous = state.current();
        if previous.record.version != version.record.version
            && self.routed_to(&rec.name, previous.record.version)
        {
            // An alias still routes to the version being replaced: its idle
            // instances move to that version's own state, warm.
            let idle = state.hand_over(version.clone());
            self.keep_instances(&state, previous, idle);
        } else {
            for inst in state.set_version(version.clone()) {
                inst.kill("replaced by a new version");
            }
        }
        if let Some(inst) = loaded {
            self.watch_instance(&state, &inst);
            state.adopt(inst, version);
        }
        self.ensure_reserved(&state);
        // The newest version changed: so may the reserves aliases ask for.
        self.aliases_changed(&rec.name);
        let _ = self
            .inner
            .changes
            .send(Change::Deployed(Arc::new(rec.current.spec.clone())));
        Ok(())
    }

    /// Forgets a function: its instances drain and stop, waiting requests fail.
    pub fn remove(&self, name: &str) {
        let state = self.inner.functions.write().remove(name);
        if let Some(state) = state {
            for inst in state.delete() {
                inst.kill("function deleted");
            }
            let versions: Vec<u64> = self
                .version_states(name)
                .iter()
                .map(|s| s.current().record.version)
                .collect();
            self.drop_versions(name, &versions);
            self.inner.routes.forget(name);
            self.inner.canaries.forget(name, None);
            let _ = self.inner.changes.send(Change::Deleted(name.to_string()));
        }
        self.inner.logs.remove(name);
    }

    /// The invocation records store.
    pub fn records(&self) -> &Arc<lampyr_store::RecordStore> {
        &self.inner.records
    }

    /// The runtime pools.
    pub fn pools(&self) -> Vec<lampyr_api::PoolStatus> {
        self.inner.pools.status()
    }

    /// Stops every instance of every function and waits (up to `limit`)
    /// until they are gone, their cgroups included.
    pub async fn shutdown(&self, limit: Duration) {
        let mut states: Vec<Arc<FunctionState>> = self
            .inner
            .functions
            .write()
            .drain()
            .map(|(_, s)| s)
            .collect();
        states.extend(self.inner.pinned.write().drain().map(|(_, s)| s));
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

    /// Live instance counts of a function, all its versions together.
    pub fn instance_counts(&self, name: &str) -> InstanceCounts {
        let mut c = self
            .inner
            .functions
            .read()
            .get(name)
            .map(|s| s.counts())
            .unwrap_or_default();
        for s in self.version_states(name) {
            let o = s.counts();
            c.starting += o.starting;
            c.idle += o.idle;
            c.busy += o.busy;
            c.draining += o.draining;
            c.stopping += o.stopping;
            c.queued += o.queued;
        }
        c
    }

    /// The error of `name`'s latest failed initialisation, while requests
    /// are answered with it (its back-off).
    pub fn init_failure(&self, name: &str) -> Option<String> {
        self.inner.functions.read().get(name)?.init_failure()
    }

    /// Instances of this server that have not exited yet, pooled ones
    /// included.
    pub fn live_instances(&self) -> usize {
        Instance::live()
    }

    /// How many functions are deployed.
    pub fn function_count(&self) -> usize {
        self.inner.functions.read().len()
    }

    /// Total live instances across all functions and versions.
    pub fn total_instances(&self) -> usize {
        let main: usize = self
            .inner
            .functions
            .read()
            .values()
            .map(|s| s.counts().total())
            .sum();
        let pinned: usize = self
            .inner
            .pinned
            .read()
            .values()
            .map(|s| s.counts().total())
            .sum();
        main + pinned
    }

    /// A function's capacity: `(max_instances, concurrency)`.
    pub fn capacity(&self, name: &str) -> Option<(u32, u32)> {
        let functions = self.inner.functions.read();
        let v = functions.get(name)?.current();
        Some((v.spec().max_instances, v.spec().concurrency))
    }

    /// The current version of a function, as the scheduler runs it.
    pub fn current(&self, name: &str) -> Option<VersionRecord> {
        self.inner
            .functions
            .read()
            .get(name)
            .map(|s| s.current().record.clone())
    }
}
