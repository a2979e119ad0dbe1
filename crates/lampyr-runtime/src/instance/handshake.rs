//! Giving an instance a function: its code, its memory limit, its
//! network, then the LOAD message, with the first invocation right behind
//! it, until the handler has loaded (LOADED) or failed to (LOAD_ERROR).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use lampyr_api::FunctionError;
use serde::Serialize;

use super::{Instance, InstanceConfig, InstanceError, PendingInvoke};
use crate::protocol::{self, Frame};

/// How long, once a starting runtime has exited, the frames it wrote before
/// it exited may take to be read.
const EXIT_DRAIN: Duration = Duration::from_secs(1);

/// What an instance is loaded with: one version of a function.
#[derive(Debug, Clone)]
pub struct FunctionLoad {
    /// `FILE.EXPORT`.
    pub handler: String,
    pub function_name: String,
    pub function_version: u64,
    pub memory_mb: u32,
    pub timeout_ms: u64,
    pub concurrency: u32,
    pub env: BTreeMap<String, String>,
    /// How the handler is called (Function Compute's HTTP handlers).
    pub handler_type: lampyr_api::HandlerType,
    /// `FILE.EXPORT` of the hook the runtime runs once, after the handler
    /// has loaded and before LOADED.
    pub initializer: Option<String>,
    /// How long the runtime lets the initializer run.
    pub initialization_timeout_ms: u64,
    /// How long loading the handler (its module's init code, and the
    /// initializer) may take.
    pub init_limit: Duration,
}

/// The LOAD message: the function, and where the instance finds its code
/// and its bootstrap.
#[derive(Serialize)]
struct LoadRequest<'a> {
    handler: &'a str,
    task_root: PathBuf,
    runtime_dir: &'a Path,
    function_name: &'a str,
    function_version: String,
    memory_mb: u32,
    timeout_ms: u64,
    concurrency: u32,
    env: &'a BTreeMap<String, String>,
    #[serde(skip_serializing_if = "lampyr_api::HandlerType::is_event")]
    handler_type: lampyr_api::HandlerType,
    #[serde(skip_serializing_if = "Option::is_none")]
    initializer: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    initialization_timeout_ms: Option<u64>,
    region: &'static str,
    account_id: &'static str,
}

/// An invocation sent along with the LOAD of a start: the runtime runs it
/// as soon as the handler has loaded, which saves a round trip.
#[derive(Clone, Copy)]
pub struct FirstInvoke<'a> {
    pub request_id: &'a str,
    pub event: &'a [u8],
    /// The call's extras (see [`Instance::start_invoke`]).
    pub extras: Option<&'a [u8]>,
    /// Its deadline is this long after it is sent.
    pub timeout: Duration,
    /// Called with the instance's id as it is sent (to announce it).
    pub on_sent: Option<&'a (dyn Fn(&str) + Sync)>,
}

/// How long each phase of bringing an instance up took.
#[derive(Debug, Clone, Copy, Default)]
pub struct StartPhases {
    /// Building the sandbox; for a pooled instance, specialising it (code,
    /// memory limit, network).
    pub sandbox: Duration,
    /// Starting the language runtime, until HELLO (fresh instances only).
    pub runtime: Option<Duration>,
    /// Loading the handler, until LOADED.
    pub init: Duration,
}

/// An instance with its function loaded, ready for invocations.
pub struct Loaded {
    pub instance: Arc<Instance>,
    pub phases: StartPhases,
    /// The first invocation, sent; its outcome comes from here.
    pub first: Option<PendingInvoke>,
}

/// Why a pooled instance did not come up with a function.
#[derive(Debug, thiserror::Error)]
pub enum SpecialiseError {
    /// It cannot take this function (for one, its runtime already uses
    /// more memory than the function may); it was stopped, and a fresh
    /// instance may well work.
    #[error("the pooled instance cannot take this function: {0}")]
    Unsuitable(InstanceError),
    /// The function did not load.
    #[error(transparent)]
    Load(InstanceError),
}

impl Instance {
    /// Starts a fresh instance with a function's code and loads it: the
    /// sandbox is built, the runtime started, and the LOAD (and `first`)
    /// sent before it is up, to be read as soon as it is.
    pub async fn cold_start(
        cfg: InstanceConfig<'_>,
        load: &FunctionLoad,
        first: Option<FirstInvoke<'_>>,
    ) -> Result<Loaded, InstanceError> {
        let (instance, starting) = Instance::spawn(cfg).await?;
        instance.send_load(load).await?;
        let first = first.map(|f| instance.send_first(f));
        let t = instance.started(starting).await?;
        // Loading starts when the runtime is up.
        let init = instance.loaded(Instant::now(), load).await?;
        Ok(Loaded {
            instance,
            phases: StartPhases {
                sandbox: t.sandbox,
                runtime: Some(t.runtime),
                init,
            },
            first,
        })
    }

    /// Gives a generic (pooled) instance a function's code at its task
    /// root, the function's memory limit and network (`Some` policy for
    /// egress, `None` for loopback only), and loads it.
    pub async fn specialise_and_load(
        self: Arc<Self>,
        code_dir: &Path,
        network: Option<lampyr_egress::Policy>,
        load: &FunctionLoad,
        first: Option<FirstInvoke<'_>>,
    ) -> Result<Loaded, SpecialiseError> {
        let t = Instant::now();
        let closing = network.is_none() && self.has_egress();
        if let Err(e) = self.specialise(code_dir, load.memory_mb, network) {
            self.kill("could not be specialised");
            return Err(SpecialiseError::Unsuitable(e));
        }
        if closing {
            self.until_eth0_is_gone().await;
        }
        let sandbox = t.elapsed();
        let started = self.send_load(load).await.map_err(SpecialiseError::Load)?;
        let first = first.map(|f| self.send_first(f));
        let init = self
            .loaded(started, load)
            .await
            .map_err(SpecialiseError::Load)?;
        Ok(Loaded {
            instance: self,
            phases: StartPhases {
                sandbox,
                runtime: None,
                init,
            },
            first,
        })
    }

    /// Waits (briefly) until the instance's `eth0`, whose device was just
    /// closed, routes nothing: its function then sees loopback only from
    /// its first line, and a connection out fails at once.
    async fn until_eth0_is_gone(&self) {
        const LIMIT: Duration = Duration::from_secs(1);
        let started = Instant::now();
        while lampyr_sandbox::net::routes_through_eth0(self.pid) {
            if started.elapsed() > LIMIT {
                tracing::warn!(instance = %self.id(), "eth0 still routes {LIMIT:?} after its device was closed");
                return;
            }
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
    }

    fn send_first(&self, f: FirstInvoke<'_>) -> PendingInvoke {
        if let Some(on_sent) = f.on_sent {
            on_sent(self.id());
        }
        self.start_invoke(
            f.request_id,
            SystemTime::now() + f.timeout,
            f.extras,
            f.event,
        )
    }

    /// Gives a generic instance a function's code (read-only at its task
    /// root) and memory limit. Returns the task root.
    fn specialise(
        &self,
        code_dir: &std::path::Path,
        memory_mb: u32,
        network: Option<lampyr_egress::Policy>,
    ) -> Result<PathBuf, InstanceError> {
        let root = self.sandbox.specialise(code_dir, memory_mb)?;
        *self.task_root.lock() = Some(root.clone());
        let mut link = self.link.lock();
        match network {
            Some(policy) => {
                if let Some(l) = &*link {
                    l.set_policy(policy);
                }
            }
            // Loopback only: closing the TUN device removes `eth0`.
            None => *link = None,
        }
        Ok(root)
    }

    /// Sends the LOAD message without waiting for the handler to load.
    /// Invocations may follow at once: the runtime runs them as soon as the
    /// handler is loaded. Finish with [`Instance::loaded`].
    async fn send_load(&self, load: &FunctionLoad) -> Result<Instant, InstanceError> {
        let started = Instant::now();
        *self.shared.function.lock() =
            Some((load.function_name.as_str().into(), load.function_version));
        let req = LoadRequest {
            handler: &load.handler,
            task_root: self.task_root().unwrap_or_default(),
            runtime_dir: &self.runtime_dir,
            function_name: &load.function_name,
            function_version: load.function_version.to_string(),
            memory_mb: load.memory_mb,
            timeout_ms: load.timeout_ms,
            concurrency: load.concurrency,
            env: &load.env,
            handler_type: load.handler_type,
            initializer: load.initializer.as_deref(),
            initialization_timeout_ms: load
                .initializer
                .as_ref()
                .map(|_| load.initialization_timeout_ms),
            region: lampyr_api::REGION,
            account_id: lampyr_api::ACCOUNT_ID,
        };
        let body = serde_json::to_vec(&req).expect("load request serialises");
        self.send(&protocol::encode(protocol::LOAD, &body), "load the handler")
            .await?;
        Ok(started)
    }

    /// Waits until the handler sent with [`Instance::send_load`] (at
    /// `started`) has loaded. Returns how long loading took.
    async fn loaded(
        &self,
        started: Instant,
        load: &FunctionLoad,
    ) -> Result<Duration, InstanceError> {
        let stage = match load.initializer {
            None => "load the handler",
            Some(_) => "load the handler and run its initializer",
        };
        let frame = self.next_control(stage, load.init_limit).await?;
        match frame.kind {
            protocol::LOADED => {
                self.shared.loaded.store(true, Ordering::Release);
                Ok(started.elapsed())
            }
            protocol::LOAD_ERROR => {
                let err = FunctionError::parse(&frame.payload, "Runtime.InitError");
                self.kill("handler failed to load");
                Err(InstanceError::LoadFailed(err))
            }
            other => {
                self.kill("protocol error");
                Err(InstanceError::Protocol(format!(
                    "expected LOADED, got frame type {other:#04x}"
                )))
            }
        }
    }

    pub(super) async fn next_control(
        &self,
        stage: &'static str,
        limit: Duration,
    ) -> Result<Frame, InstanceError> {
        let mut rx = self.control.lock().await;
        let mut exit = self.shared.exit.subscribe();
        tokio::select! {
            f = rx.recv() => match f {
                Some(f) => Ok(f),
                None => Err(InstanceError::Exited { stage, reason: self.wait_exit().await.reason }),
            },
            _ = async { exit.wait_for(|e| e.is_some()).await.map(|_| ()) } => {
                // Frames sent just before the exit (a load error, a sandbox
                // error) win: the process is gone, so its socket ends as
                // soon as the reader has taken what it wrote.
                if let Ok(Some(f)) = tokio::time::timeout(EXIT_DRAIN, rx.recv()).await {
                    return Ok(f);
                }
                Err(InstanceError::Exited { stage, reason: self.shared.exit_report().unwrap_or_default().reason })
            }
            _ = tokio::time::sleep(limit) => {
                self.kill(&format!("did not {stage} in time"));
                Err(InstanceError::Timeout { stage, limit })
            }
        }
    }
}
