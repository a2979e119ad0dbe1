//! One instance: a language runtime in a sandbox, driven over the instance
//! protocol.
//!
//! Lifecycle, in the order the submodules implement it:
//!
//! * `spawn`: build the sandbox and start the bootstrap (phases `sandbox`
//!   and `runtime`, ending at HELLO), on threads of their own.
//! * `handshake`: specialise an instance with one function's code (phase
//!   `init`, ending at LOADED): [`Instance::cold_start`] for a fresh
//!   instance, [`Instance::specialise_and_load`] for a pooled one. Either
//!   sends the first invocation along with the LOAD.
//! * `frames`: run invocations, several at once if the function allows.
//!   Frames go out from the sending task when the socket takes them at
//!   once; a writer task sends what could not be written then. A reader
//!   task hands replies to their callers.
//! * `stream`: a reply that is a stream (STREAM_START, STREAM_CHUNK,
//!   STREAM_END): handed to its caller at STREAM_START, its chunks through
//!   a bounded channel, so a slow reader holds the runtime back instead of
//!   the host buffering the body.
//! * [`poll`]: when instances are asked to poll for their next frame
//!   instead of sleeping.
//!
//! Background tasks also serve each instance: a log reader per output pipe
//! ([`crate::capture`]) and an exit watcher that owns the sandbox, reaps it,
//! and fails every invocation still in flight with the exit reason.

mod frames;
mod handshake;
pub mod poll;
mod spawn;
mod stream;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use lampyr_api::FunctionError;
use lampyr_sandbox::{Sandbox, SandboxControl, SandboxError, Sandboxer};
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot, watch, Notify};

use crate::capture::{LineContext, LogLine, LogSender, Stream};
use crate::discover::RuntimeInfo;
use crate::protocol::Frame;
use frames::Outbox;

pub use frames::PendingInvoke;
pub use handshake::{FirstInvoke, FunctionLoad, Loaded, SpecialiseError, StartPhases};
pub use spawn::StartTimings;
pub use stream::{ReplyStream, StreamEnd, StreamItem};

#[derive(Debug, thiserror::Error)]
pub enum InstanceError {
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    /// The jail could not be built; the sandbox's own explanation.
    #[error("{0}")]
    SandboxSetup(String),
    #[error("the runtime exited while {stage}: {reason}")]
    Exited { stage: &'static str, reason: String },
    #[error("the runtime did not {stage} within {}s", .limit.as_secs())]
    Timeout {
        stage: &'static str,
        limit: Duration,
    },
    #[error("instance protocol error: {0}")]
    Protocol(String),
    /// The function's module failed to load: the runtime's error object.
    #[error("loading the handler failed: {}", .0.error_message)]
    LoadFailed(FunctionError),
}

/// The end of one invocation, or the start of its streamed reply.
#[derive(Debug)]
pub enum InvokeOutcome {
    /// The handler returned; the JSON of its result.
    Ok(Bytes),
    /// The handler threw; the JSON error object.
    Error(Bytes),
    /// The instance died before answering.
    Exited(ExitReport),
    /// The runtime answers with a stream (STREAM_START): the invocation
    /// goes on until the stream ends.
    Stream(ReplyStream),
}

/// Why and how an instance ended.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExitReport {
    /// For people: what happened.
    pub reason: String,
    /// The kernel's OOM killer struck: the instance exceeded its memory limit.
    pub oom: bool,
    /// The most memory the instance used, in bytes, where measured.
    pub memory_peak: Option<u64>,
}

struct Pending {
    request_id: String,
    reply: Reply,
}

/// Where an invocation's reply goes.
enum Reply {
    /// Its caller waits for the outcome (or a stream's start).
    Waiting(oneshot::Sender<InvokeOutcome>),
    /// The reply is a stream, being read.
    Streaming(stream::Feed),
}

impl Pending {
    /// Ends the invocation with the instance's exit.
    fn exited(self, report: &ExitReport) {
        match self.reply {
            Reply::Waiting(tx) => {
                let _ = tx.send(InvokeOutcome::Exited(report.clone()));
            }
            Reply::Streaming(feed) => feed.end(StreamEnd::Exited(report.clone())),
        }
    }
}

struct Shared {
    id: Arc<str>,
    pending: Mutex<HashMap<u32, Pending>>,
    function: Mutex<Option<(Arc<str>, u64)>>,
    exit: watch::Sender<Option<ExitReport>>,
    kill: Notify,
    kill_reason: Mutex<Option<String>>,
    logs: LogSender,
    /// Set once the handler is loaded: from then on only RESULT and ERROR
    /// frames are legitimate.
    loaded: std::sync::atomic::AtomicBool,
    /// The request ids of the last invocations this instance finished.
    recent: Mutex<std::collections::VecDeque<String>>,
}

/// How many finished invocations an instance remembers, for log lines
/// that arrive after their invocation's result.
const RECENT: usize = 64;

impl Shared {
    /// Notes that an invocation is over.
    fn finished(&self, request_id: String) {
        let mut recent = self.recent.lock();
        if recent.len() == RECENT {
            recent.pop_front();
        }
        recent.push_back(request_id);
    }
}

impl Shared {
    fn exit_report(&self) -> Option<ExitReport> {
        self.exit.borrow().clone()
    }

    async fn wait_exit(&self) -> ExitReport {
        let mut rx = self.exit.subscribe();
        let r = rx.wait_for(|e| e.is_some()).await.map(|v| v.clone());
        match r {
            Ok(v) => v.unwrap_or_default(),
            Err(_) => ExitReport {
                reason: "exited".into(),
                ..Default::default()
            },
        }
    }
}

/// A running runtime instance.
pub struct Instance {
    shared: Arc<Shared>,
    outbox: Arc<Outbox>,
    control: tokio::sync::Mutex<mpsc::UnboundedReceiver<Frame>>,
    next_id: AtomicU32,
    /// The POLL hint last sent to the runtime.
    poll: AtomicBool,
    sandbox: Arc<SandboxControl>,
    task_root: Mutex<Option<PathBuf>>,
    runtime_dir: PathBuf,
    /// The instance's outbound network, when it has one.
    link: Mutex<Option<lampyr_egress::Link>>,
    /// The host pid of the sandbox's first process.
    pid: u32,
}

/// What [`Instance::start`] needs.
pub struct InstanceConfig<'a> {
    pub id: String,
    pub runtime: &'a RuntimeInfo,
    pub sandboxer: Arc<Sandboxer>,
    /// The host directory holding this runtime's bootstrap.
    pub runtime_dir: PathBuf,
    /// The host directory holding the function's code, or `None` for a
    /// generic instance to be specialised later.
    pub code_dir: Option<PathBuf>,
    pub memory_mb: u32,
    pub network: Network,
    pub logs: LogSender,
}

/// The network an instance starts with.
#[derive(Clone)]
pub enum Network {
    /// Loopback only.
    None,
    /// The host's network.
    Host,
    /// Outbound through lampyr, under a policy (closed for a pooled
    /// instance until it is given a function).
    Egress {
        egress: Arc<lampyr_egress::Egress>,
        policy: lampyr_egress::Policy,
    },
}

impl Network {
    fn mode(&self) -> lampyr_sandbox::NetMode {
        match self {
            Network::None => lampyr_sandbox::NetMode::Loopback,
            Network::Host => lampyr_sandbox::NetMode::Host,
            Network::Egress { .. } => lampyr_sandbox::NetMode::Egress,
        }
    }
}

impl Instance {
    /// Instances of this process that have not exited yet, pooled ones
    /// included.
    pub fn live() -> usize {
        LIVE.load(Ordering::Relaxed)
    }

    /// Kills the instance; `reason` becomes its exit reason.
    pub fn kill(&self, reason: &str) {
        {
            let mut r = self.shared.kill_reason.lock();
            if r.is_none() {
                *r = Some(reason.to_string());
            }
        }
        self.shared.kill.notify_one();
    }

    /// How the instance exited, once it has.
    pub fn exit_report(&self) -> Option<ExitReport> {
        self.shared.exit_report()
    }

    /// Waits until the instance has exited and returns how.
    pub async fn wait_exit(&self) -> ExitReport {
        self.shared.wait_exit().await
    }

    /// Where the runtime's bootstrap is, as the instance sees it.
    pub fn runtime_dir(&self) -> &std::path::Path {
        &self.runtime_dir
    }

    /// Where the function's code is, as the instance sees it, once it has
    /// code.
    pub fn task_root(&self) -> Option<PathBuf> {
        self.task_root.lock().clone()
    }

    /// Whether the instance has an outbound network (`eth0`).
    pub fn has_egress(&self) -> bool {
        self.link.lock().is_some()
    }

    /// The host's handle on the instance's sandbox (limits, memory use).
    pub fn sandbox(&self) -> Arc<SandboxControl> {
        self.sandbox.clone()
    }

    /// Current memory use, in bytes, where measured.
    pub fn memory_current(&self) -> Option<u64> {
        self.sandbox.memory_current()
    }

    pub fn id(&self) -> &str {
        &self.shared.id
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.kill("stopped");
    }
}

async fn watch_exit(shared: Arc<Shared>, mut sandbox: Sandbox) {
    let info = tokio::select! {
        s = sandbox.wait() => s,
        _ = shared.kill.notified() => {
            sandbox.kill();
            sandbox.wait().await
        }
    };
    let described = info.describe();
    let reason = if info.oom_killed {
        format!("the instance ran out of memory and was killed by the kernel ({described})")
    } else {
        match shared.kill_reason.lock().clone() {
            Some(r) => r,
            None => format!("the runtime process exited unexpectedly ({described})"),
        }
    };
    let report = ExitReport {
        reason,
        oom: info.oom_killed,
        memory_peak: info.memory_peak,
    };
    shared.exit.send_replace(Some(report.clone()));
    LIVE.fetch_sub(1, Ordering::Relaxed);
    let drained: Vec<Pending> = shared.pending.lock().drain().map(|(_, p)| p).collect();
    for p in drained {
        // Its last lines may still be in the pipe: they are its.
        shared.finished(p.request_id.clone());
        p.exited(&report);
    }
}

/// Says refused destinations in the function's log, as platform lines.
fn refusals_to_log(shared: &Arc<Shared>) -> lampyr_egress::OnRefused {
    let weak = Arc::downgrade(shared);
    Box::new(move |r| {
        let Some(shared) = weak.upgrade() else { return };
        let line = LogLine {
            ts: SystemTime::now(),
            function: shared.function(),
            instance: shared.id.clone(),
            request_id: shared.request_id(None),
            stream: Stream::Platform,
            level: Some("WARN".into()),
            message: r.to_string(),
            live_only: false,
        };
        let _ = shared.logs.send(line);
    })
}

impl LineContext for Shared {
    fn function(&self) -> Option<(Arc<str>, u64)> {
        self.function.lock().clone()
    }

    fn request_id(&self, claimed: Option<&str>) -> Option<String> {
        let pending = self.pending.lock();
        if let Some(rid) = claimed {
            // In flight, or just finished: a line written before the
            // result may arrive after it.
            if pending.values().any(|p| p.request_id == rid)
                || self.recent.lock().iter().any(|r| r == rid)
            {
                return Some(rid.to_string());
            }
        }
        match pending.len() {
            1 => pending.values().next().map(|p| p.request_id.clone()),
            // Nothing in flight: the line was written before the last
            // invocation's result and read after it (pipe and socket are
            // read apart), or written after it; it is that invocation's.
            0 => self.recent.lock().back().cloned(),
            _ => None,
        }
    }
}

/// Instances of this process that have not exited yet.
static LIVE: AtomicUsize = AtomicUsize::new(0);
