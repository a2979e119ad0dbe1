//! One instance: a language runtime in a sandbox, driven over the instance
//! protocol.
//!
//! Lifecycle: [`Instance::start`] builds the sandbox and starts the bootstrap
//! (phases `sandbox` and `runtime`, ending at HELLO); [`Instance::load`]
//! specialises it with one function's code (phase `init`, ending at LOADED);
//! [`Instance::invoke`] then runs invocations, several at once if the function
//! allows. Frames go out from the sending task when the socket takes them
//! at once; a writer task sends what could not be written then. Background
//! tasks also serve each instance: a frame reader, a log reader per output
//! pipe, and an exit watcher that owns the sandbox, reaps it, and fails
//! every invocation still in flight with the exit reason.

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use lampyr_sandbox::{InstanceSpec, Sandbox, SandboxControl, SandboxError, Sandboxer};
use parking_lot::Mutex;
use serde::Serialize;
use tokio::io::AsyncReadExt;
use tokio::net::unix::OwnedWriteHalf;
use tokio::sync::{mpsc, oneshot, watch, Notify};

use crate::capture::{read_logs, Capture, LineContext, LogLine, LogSender, Stream};
use crate::discover::RuntimeInfo;
use crate::protocol::{self, Frame};

/// How long a runtime may take to say HELLO.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// The specialisation an instance receives: the LOAD message.
#[derive(Debug, Clone, Serialize)]
pub struct LoadRequest {
    pub handler: String,
    pub task_root: PathBuf,
    /// Where the bootstrap is, as the instance sees it (`/var/runtime`).
    pub runtime_dir: PathBuf,
    pub function_name: String,
    pub function_version: String,
    pub memory_mb: u32,
    pub timeout_ms: u64,
    pub concurrency: u32,
    pub env: std::collections::BTreeMap<String, String>,
}

/// How long each start-up phase took.
#[derive(Debug, Clone, Copy, Default)]
pub struct StartTimings {
    /// Building the sandbox, until its init process handed over to the runtime.
    pub sandbox: Duration,
    /// From then until the bootstrap said HELLO.
    pub runtime: Duration,
}

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
    /// The function's module failed to load; the payload is the runtime's
    /// error object (`errorType`, `errorMessage`, `stackTrace`).
    #[error("loading the handler failed: {}", .0.get("errorMessage").and_then(|m| m.as_str()).unwrap_or("unknown error"))]
    LoadFailed(serde_json::Value),
}

/// The end of one invocation.
#[derive(Debug, Clone)]
pub enum InvokeOutcome {
    /// The handler returned; the JSON of its result.
    Ok(Bytes),
    /// The handler threw; the JSON error object.
    Error(Bytes),
    /// The instance died before answering.
    Exited(ExitReport),
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
    reply: oneshot::Sender<InvokeOutcome>,
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

type BuildJob = Box<dyn FnOnce() + Send>;

/// Runs `f` on one of the threads that build sandboxes and waits for its
/// result. They are threads of their own, alive as long as the server: an
/// instance's first process dies with the thread that started it (its
/// parent-death signal), so the async runtime's blocking pool, whose idle
/// threads exit, must not start instances.
async fn on_builder_thread<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, InstanceError> {
    static BUILDERS: std::sync::OnceLock<std::sync::mpsc::Sender<BuildJob>> =
        std::sync::OnceLock::new();
    let builders = BUILDERS.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel::<BuildJob>();
        let rx = Arc::new(Mutex::new(rx));
        // Two starts at once (a cold start beside a pool refill) at least.
        let n = std::thread::available_parallelism().map_or(2, |n| n.get().max(2));
        for _ in 0..n {
            let rx = rx.clone();
            let started = std::thread::Builder::new()
                .name("lampyr-sandbox".into())
                .spawn(move || loop {
                    let job = rx.lock().recv();
                    match job {
                        Ok(job) => {
                            // A panic fails that start (its reply is
                            // dropped), not the thread.
                            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                        }
                        Err(_) => return,
                    }
                });
            if let Err(e) = started {
                tracing::warn!("could not start a sandbox builder thread: {e}");
            }
        }
        tx
    });
    let (tx, rx) = oneshot::channel();
    // The sandbox's process and pipes belong to the caller's runtime.
    let runtime = tokio::runtime::Handle::current();
    builders
        .send(Box::new(move || {
            let _entered = runtime.enter();
            let _ = tx.send(f());
        }))
        .map_err(|_| InstanceError::Protocol("no thread is left to build sandboxes".into()))?;
    rx.await.map_err(|_| {
        InstanceError::Protocol("building the sandbox failed (its thread panicked)".into())
    })
}

/// An instance spawned by [`Instance::spawn`] whose runtime has not said
/// HELLO yet.
pub struct Starting {
    started: Instant,
    sandbox_time: Duration,
    adoption: Option<lampyr_sandbox::zygote::Adoption>,
}

impl Instance {
    /// Starts a runtime instance in a sandbox and waits for its HELLO.
    pub async fn start(
        cfg: InstanceConfig<'_>,
    ) -> Result<(Arc<Instance>, StartTimings), InstanceError> {
        let (inst, starting) = Instance::spawn(cfg).await?;
        let timings = inst.started(starting).await?;
        Ok((inst, timings))
    }

    /// Builds the sandbox and starts the bootstrap, without waiting for it.
    /// Frames may be sent at once (a LOAD, an INVOKE): the runtime reads
    /// them once it is up. Finish with [`Instance::started`].
    pub async fn spawn(
        cfg: InstanceConfig<'_>,
    ) -> Result<(Arc<Instance>, Starting), InstanceError> {
        let started = Instant::now();
        let (args, env) = command_line(&cfg);
        let id = cfg.id.clone();
        let program = cfg.runtime.path.clone();
        let prefix = cfg.runtime.prefix.clone();
        let runtime_dir = cfg.runtime_dir.clone();
        let code_dir = cfg.code_dir.clone();
        let (memory_mb, net_mode) = (cfg.memory_mb, cfg.network.mode());
        let sandboxer = cfg.sandboxer.clone();
        // Building a sandbox starts processes and writes cgroup files:
        // milliseconds that must not hold up the async workers, and every
        // request they serve, while a pool refills or a function starts.
        let (sandbox, mut io) = on_builder_thread(move || {
            let spec = InstanceSpec {
                id: &id,
                program: &program,
                program_prefix: Some(&prefix),
                args,
                env,
                runtime_dir: &runtime_dir,
                code_dir: code_dir.as_deref(),
                memory_mb,
                network: net_mode,
                background: code_dir.is_none(),
            };
            sandboxer.spawn(&spec)
        })
        .await??;
        let adoption = io.adoption.take();
        let sandbox_time = started.elapsed();
        let task_root = cfg
            .code_dir
            .as_deref()
            .map(|c| cfg.sandboxer.guest_task_root(c));
        let sandbox_control = sandbox.control();
        io.socket
            .set_nonblocking(true)
            .map_err(|e| InstanceError::Protocol(e.to_string()))?;
        if let Some(set) = replies() {
            let _ = set.add(std::os::fd::AsFd::as_fd(&io.socket));
        }
        let socket = tokio::net::UnixStream::from_std(io.socket)
            .map_err(|e| InstanceError::Protocol(e.to_string()))?;
        let (reader, writer) = socket.into_split();
        let (exit_tx, _) = watch::channel(None);
        let shared = Arc::new(Shared {
            id: cfg.id.into(),
            pending: Mutex::new(HashMap::new()),
            function: Mutex::new(None),
            exit: exit_tx,
            kill: Notify::new(),
            kill_reason: Mutex::new(None),
            logs: cfg.logs,
            loaded: std::sync::atomic::AtomicBool::new(false),
            recent: Mutex::new(std::collections::VecDeque::with_capacity(RECENT)),
        });
        let link = match (io.tun.take(), &cfg.network) {
            (Some(tun), Network::Egress { egress, policy }) => {
                let tun = lampyr_sandbox::net::Tun::new(tun).map_err(|e| {
                    InstanceError::SandboxSetup(format!("the instance's network: {e}"))
                })?;
                Some(egress.attach(tun, policy.clone(), refusals_to_log(&shared)))
            }
            _ => None,
        };
        let (control_tx, control_rx) = mpsc::unbounded_channel();
        let outbox = Arc::new(Outbox {
            writer,
            state: Mutex::new(OutState::default()),
            ready: Notify::new(),
            broken: std::sync::atomic::AtomicBool::new(false),
        });
        tokio::spawn(write_frames(shared.clone(), outbox.clone()));
        tokio::spawn(read_frames(shared.clone(), reader, control_tx));
        let capture = Arc::new(Capture::new(shared.id.clone(), shared.logs.clone()));
        let ctx: Arc<dyn LineContext> = shared.clone();
        tokio::spawn(read_logs(
            capture.clone(),
            ctx.clone(),
            io.stdout,
            Stream::Stdout,
        ));
        tokio::spawn(read_logs(capture, ctx, io.stderr, Stream::Stderr));
        LIVE.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(watch_exit(shared.clone(), sandbox));
        let inst = Arc::new(Instance {
            shared,
            outbox: outbox.clone(),
            control: tokio::sync::Mutex::new(control_rx),
            next_id: AtomicU32::new(1),
            poll: AtomicBool::new(false),
            sandbox: sandbox_control,
            task_root: Mutex::new(task_root),
            runtime_dir: cfg.sandboxer.guest_runtime_dir(&cfg.runtime_dir),
            link: Mutex::new(link),
        });
        Ok((
            inst,
            Starting {
                started,
                sandbox_time,
                adoption,
            },
        ))
    }

    /// Instances of this process that have not exited yet, pooled ones
    /// included.
    pub fn live() -> usize {
        LIVE.load(Ordering::Relaxed)
    }

    /// Waits for the HELLO of an instance from [`Instance::spawn`].
    pub async fn started(&self, starting: Starting) -> Result<StartTimings, InstanceError> {
        let Starting {
            started,
            mut sandbox_time,
            mut adoption,
        } = starting;
        loop {
            let frame = self.next_control("start", START_TIMEOUT).await?;
            match frame.kind {
                protocol::HELLO => break,
                protocol::SANDBOX_READY => {
                    sandbox_time = started.elapsed();
                    // A Python runtime forked from the zygote into the jail.
                    if let Some(a) = adoption.take() {
                        let forked = tokio::task::spawn_blocking(move || a.complete()).await;
                        match forked {
                            Ok(Ok(_pid)) => {}
                            Ok(Err(e)) => {
                                self.kill("the zygote could not fork the runtime");
                                return Err(e.into());
                            }
                            Err(e) => {
                                self.kill("the zygote could not fork the runtime");
                                return Err(InstanceError::Protocol(e.to_string()));
                            }
                        }
                    }
                }
                protocol::SANDBOX_ERROR => {
                    self.kill("sandbox set-up failed");
                    return Err(InstanceError::SandboxSetup(
                        String::from_utf8_lossy(&frame.payload).into_owned(),
                    ));
                }
                other => {
                    self.kill("protocol error");
                    return Err(InstanceError::Protocol(format!(
                        "expected HELLO, got frame type {other:#04x}"
                    )));
                }
            }
        }
        Ok(StartTimings {
            sandbox: sandbox_time,
            runtime: started.elapsed() - sandbox_time,
        })
    }

    /// Specialises the instance with a function's code and waits until the
    /// handler is loaded. Returns how long loading took.
    pub async fn load(
        &self,
        req: &LoadRequest,
        limit: Duration,
    ) -> Result<Duration, InstanceError> {
        let started = self.send_load(req).await?;
        self.loaded(started, limit).await
    }

    /// Sends the LOAD message without waiting for the handler to load. The
    /// first invocation may follow at once ([`Instance::start_invoke`]):
    /// the runtime runs it as soon as the handler is loaded, which saves a
    /// round trip on a cold start. Finish with [`Instance::loaded`].
    pub async fn send_load(&self, req: &LoadRequest) -> Result<Instant, InstanceError> {
        let started = Instant::now();
        *self.shared.function.lock() = Some((
            req.function_name.as_str().into(),
            req.function_version.parse().unwrap_or(0),
        ));
        let body = serde_json::to_vec(req).expect("load request serialises");
        self.send(&protocol::encode(protocol::LOAD, &body), "load the handler")
            .await?;
        Ok(started)
    }

    /// Waits until the handler sent with [`Instance::send_load`] (at
    /// `started`) has loaded. Returns how long loading took.
    pub async fn loaded(
        &self,
        started: Instant,
        limit: Duration,
    ) -> Result<Duration, InstanceError> {
        let frame = self.next_control("load the handler", limit).await?;
        match frame.kind {
            protocol::LOADED => {
                self.shared.loaded.store(true, Ordering::Release);
                Ok(started.elapsed())
            }
            protocol::LOAD_ERROR => {
                let err = serde_json::from_slice(&frame.payload).unwrap_or_else(|_| {
                    serde_json::json!({"errorType": "Runtime.InitError", "errorMessage": String::from_utf8_lossy(&frame.payload)})
                });
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

    async fn next_control(
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
                // Frames sent just before the exit (a sandbox error) win.
                if let Ok(f) = rx.try_recv() {
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

    /// Queues a frame for the instance. Frames queued while a write is in
    /// progress leave together in the next one.
    async fn send(&self, frame: &[u8], stage: &'static str) -> Result<(), InstanceError> {
        if self.outbox.broken.load(Ordering::Acquire) {
            return Err(InstanceError::Exited {
                stage,
                reason: self.wait_exit().await.reason,
            });
        }
        self.queue(frame);
        Ok(())
    }

    /// Writes a frame at once when nothing is queued or being written (no
    /// hand-off to the writer task), else queues it behind what is.
    ///
    /// The lock is never held across the system call: frames queued by other
    /// threads while it runs leave together in the next one, written by the
    /// caller that is writing (each round writes only what was queued before
    /// it began, and the socket's buffer bounds how long that goes on). Only
    /// a full socket hands the rest to the writer task.
    fn queue(&self, frame: &[u8]) {
        if self.outbox.broken.load(Ordering::Acquire) {
            // The instance is being killed; its exit fails what is pending.
            return;
        }
        {
            let mut st = self.outbox.state.lock();
            if st.writing || !st.buf.is_empty() {
                st.buf.extend_from_slice(frame);
                return;
            }
            st.writing = true;
        }
        let mut queued: Vec<u8> = Vec::new();
        let mut first = true;
        loop {
            let data: &[u8] = if first { frame } else { &queued };
            let rest = match self.outbox.writer.try_write(data) {
                Ok(n) => &data[n..],
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => data,
                Err(_) => {
                    // `writing` stays set: nothing more is written.
                    self.outbox.broken.store(true, Ordering::Release);
                    self.shared.kill.notify_one();
                    return;
                }
            };
            let mut st = self.outbox.state.lock();
            if !rest.is_empty() {
                // The socket is full: the writer task finishes, in order.
                st.buf.splice(0..0, rest.iter().copied());
                drop(st);
                self.outbox.ready.notify_one();
                return;
            }
            if st.buf.is_empty() {
                st.writing = false;
                return;
            }
            first = false;
            queued.clear();
            std::mem::swap(&mut st.buf, &mut queued);
        }
    }

    /// Runs one invocation. Dropping the returned future abandons it (the
    /// caller then usually kills the instance).
    pub async fn invoke(
        &self,
        request_id: &str,
        deadline: SystemTime,
        event: &[u8],
    ) -> InvokeOutcome {
        self.start_invoke(request_id, deadline, event)
            .outcome()
            .await
    }

    /// Sends one invocation; its outcome comes from the returned handle.
    /// Dropping the handle abandons the invocation.
    pub fn start_invoke(
        &self,
        request_id: &str,
        deadline: SystemTime,
        event: &[u8],
    ) -> PendingInvoke {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        // Only invocations on loaded instances count for polling: one that
        // rides with a LOAD waits for the handler to load, milliseconds in
        // which the server has other work (see `poll_before_park`).
        let counted = self.shared.loaded.load(Ordering::Acquire);
        let poll = if counted {
            poll_hint(IN_FLIGHT.fetch_add(1, Ordering::Relaxed) + 1)
        } else {
            self.poll.load(Ordering::Relaxed)
        };
        let (tx, rx) = oneshot::channel();
        self.shared.pending.lock().insert(
            id,
            Pending {
                request_id: request_id.to_string(),
                reply: tx,
            },
        );
        let pending = PendingInvoke {
            shared: self.shared.clone(),
            id,
            rx,
            counted,
        };
        let deadline_ms = deadline
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        // A broken socket kills the instance (see `queue`); its exit
        // watcher then fails this invocation.
        let invoke = protocol::encode_invoke(id, deadline_ms, request_id, event);
        if self.poll.swap(poll, Ordering::Relaxed) != poll {
            // The hint changes: the POLL frame goes in the same write.
            let micros = if poll {
                POLL_WINDOW.as_micros() as u32
            } else {
                0
            };
            let mut frames = protocol::encode_poll(micros);
            frames.extend_from_slice(&invoke);
            self.queue(&frames);
        } else {
            self.queue(&invoke);
        }
        pending
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

    /// Gives a generic instance a function's code (read-only at its task
    /// root) and memory limit. Returns the task root.
    pub fn specialise(
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

/// The instance's socket for writing, and frames waiting to be written.
struct Outbox {
    writer: OwnedWriteHalf,
    state: Mutex<OutState>,
    ready: Notify,
    broken: std::sync::atomic::AtomicBool,
}

#[derive(Default)]
struct OutState {
    buf: Vec<u8>,
    /// Someone is writing (a caller of `Instance::queue`, or the writer
    /// task once the socket was full): new frames queue behind its bytes and
    /// it writes them too. Stays set once the socket is broken.
    writing: bool,
}

/// Writes queued frames to the instance, as many per system call as have
/// accumulated, until the instance exits or the socket breaks.
async fn write_frames(shared: Arc<Shared>, outbox: Arc<Outbox>) {
    let mut exit = shared.exit.subscribe();
    let mut out = Vec::with_capacity(16 * 1024);
    loop {
        tokio::select! {
            _ = outbox.ready.notified() => {}
            _ = async { exit.wait_for(|e| e.is_some()).await.map(|_| ()) } => return,
        }
        loop {
            {
                let mut st = outbox.state.lock();
                if st.buf.is_empty() {
                    st.writing = false;
                    break;
                }
                std::mem::swap(&mut st.buf, &mut out);
                st.writing = true;
            }
            if write_all(&outbox.writer, &out).await.is_err() {
                outbox.broken.store(true, Ordering::Release);
                shared.kill.notify_one();
                return;
            }
            out.clear();
        }
    }
}

async fn write_all(w: &OwnedWriteHalf, mut data: &[u8]) -> std::io::Result<()> {
    while !data.is_empty() {
        w.writable().await?;
        match w.try_write(data) {
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// An invocation sent to an instance, waiting for its outcome. Dropped
/// unfinished, it is abandoned: removed from the pending table.
pub struct PendingInvoke {
    shared: Arc<Shared>,
    id: u32,
    rx: oneshot::Receiver<InvokeOutcome>,
    /// Counted in [`IN_FLIGHT`] (sent to a loaded instance).
    counted: bool,
}

impl PendingInvoke {
    /// Waits for the runtime's answer, or the instance's exit.
    pub async fn outcome(mut self) -> InvokeOutcome {
        // The exit watcher records the exit before it drains `pending`, so
        // an exit before the entry was made is seen here.
        if let Some(report) = self.shared.exit_report() {
            if let Ok(out) = self.rx.try_recv() {
                return out;
            }
            return InvokeOutcome::Exited(report);
        }
        match (&mut self.rx).await {
            Ok(outcome) => outcome,
            Err(_) => InvokeOutcome::Exited(self.shared.wait_exit().await),
        }
    }
}

impl Drop for PendingInvoke {
    fn drop(&mut self) {
        if self.counted {
            IN_FLIGHT.fetch_sub(1, Ordering::Relaxed);
        }
        let p = self.shared.pending.lock().remove(&self.id);
        if let Some(p) = p {
            self.shared.finished(p.request_id);
        }
    }
}

/// The runtime's arguments and complete environment.
fn command_line(cfg: &InstanceConfig<'_>) -> (Vec<OsString>, Vec<(OsString, OsString)>) {
    let mut args: Vec<OsString> = Vec::new();
    if cfg.runtime.runtime == lampyr_api::Runtime::Python {
        // No user site-packages, no .pyc writes into the read-only code.
        args.push("-s".into());
        args.push("-B".into());
    }
    let (file, _) = crate::bootstrap::source(cfg.runtime.runtime);
    args.push(
        cfg.sandboxer
            .guest_runtime_dir(&cfg.runtime_dir)
            .join(file)
            .into(),
    );
    let mut env: Vec<(OsString, OsString)> = vec![
        ("PATH".into(), "/usr/local/bin:/usr/bin:/bin".into()),
        ("LANG".into(), "C.UTF-8".into()),
        ("TZ".into(), "UTC".into()),
        ("HOME".into(), "/tmp".into()),
        ("TMPDIR".into(), "/tmp".into()),
        (
            "LAMPYR_FD".into(),
            lampyr_sandbox::PROTOCOL_FD.to_string().into(),
        ),
        ("LAMPYR_INSTANCE_ID".into(), cfg.id.clone().into()),
        ("PYTHONUNBUFFERED".into(), "1".into()),
        ("PYTHONDONTWRITEBYTECODE".into(), "1".into()),
    ];
    if cfg.code_dir.is_some() {
        // Started for one request with its code: warming the invocation
        // path up before HELLO would only delay that request.
        env.push(("LAMPYR_WARM_UP".into(), "0".into()));
    }
    (args, env)
}

async fn read_frames(
    shared: Arc<Shared>,
    mut reader: tokio::net::unix::OwnedReadHalf,
    control: mpsc::UnboundedSender<Frame>,
) {
    let mut buf = BytesMut::with_capacity(16 * 1024);
    'outer: loop {
        match reader.read_buf(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        loop {
            match protocol::decode(&mut buf) {
                Ok(Some(frame)) => match frame.kind {
                    protocol::RESULT | protocol::ERROR => {
                        let Ok((id, body)) = protocol::split_reply(frame.payload) else {
                            break 'outer;
                        };
                        let p = shared.pending.lock().remove(&id);
                        if let Some(p) = p {
                            shared.finished(p.request_id.clone());
                            let outcome = if frame.kind == protocol::RESULT {
                                InvokeOutcome::Ok(body)
                            } else {
                                InvokeOutcome::Error(body)
                            };
                            let _ = p.reply.send(outcome);
                        }
                    }
                    _ if shared.loaded.load(Ordering::Acquire) => {
                        // Nothing but replies may follow LOADED.
                        tracing::warn!(instance = %shared.id, "unexpected frame type {:#04x} from a loaded runtime", frame.kind);
                        *shared.kill_reason.lock() = Some(format!(
                            "protocol error: unexpected frame type {:#04x}",
                            frame.kind
                        ));
                        break 'outer;
                    }
                    _ => {
                        let _ = control.send(frame);
                    }
                },
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(instance = %shared.id, "instance protocol error: {e}");
                    *shared.kill_reason.lock() = Some(format!("protocol error: {e}"));
                    break 'outer;
                }
            }
        }
    }
    // The socket closed. A runtime that is exiting closes it just before it
    // goes; give the exit a moment to land so the reason is the real one.
    let mut exit = shared.exit.subscribe();
    let exited = async { exit.wait_for(|e| e.is_some()).await.map(|_| ()) };
    if tokio::time::timeout(Duration::from_millis(200), exited)
        .await
        .is_err()
    {
        {
            let mut r = shared.kill_reason.lock();
            if r.is_none() {
                *r = Some("the runtime closed its protocol socket".into());
            }
        }
        shared.kill.notify_one();
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
        let _ = p.reply.send(InvokeOutcome::Exited(report.clone()));
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
        if pending.len() == 1 {
            pending.values().next().map(|p| p.request_id.clone())
        } else {
            None
        }
    }
}

/// Instances of this process that have not exited yet.
static LIVE: AtomicUsize = AtomicUsize::new(0);

/// Invocations in flight on all instances of this process.
static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);

/// How long an instance keeps polling for its next frame after an INVOKE,
/// when the host asks it to (see [`poll_hint`]).
pub const POLL_WINDOW: Duration = Duration::from_micros(100);

/// Whether instances should poll for their next frame rather than sleep,
/// with `in_flight` invocations running: only while fewer have run than
/// there are CPUs, for 10 ms in a row. A sleeping process is woken by the
/// next frame, which on a virtual machine costs tens of microseconds on each
/// side of the socket, and a request at low concurrency pays that on its
/// way in and out. Polling then uses a CPU that would otherwise idle; with
/// as many invocations as CPUs it would take CPU from them. (The in-flight
/// count dips at times under load too: hence the quiet period.)
fn poll_hint(in_flight: usize) -> bool {
    static CPUS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    /// When (since EPOCH, in microseconds) as many ran as there are CPUs.
    static LAST_BUSY: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let cpus = *CPUS.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let now = EPOCH.get_or_init(Instant::now).elapsed().as_micros() as u64;
    let (poll, busy) = decide_poll(in_flight, cpus, now, LAST_BUSY.load(Ordering::Relaxed));
    if let Some(busy) = busy {
        LAST_BUSY.store(busy, Ordering::Relaxed);
    }
    if POLLING.load(Ordering::Relaxed) != poll {
        POLLING.store(poll, Ordering::Relaxed);
    }
    poll
}

/// [`poll_hint`]'s decision at `now_us`, given when as many invocations as
/// CPUs last ran: whether to poll, and the new time of that if it is to be
/// recorded. Under load this runs for every invocation, so that time is
/// recorded to the millisecond only (a shared value written less often).
fn decide_poll(
    in_flight: usize,
    cpus: usize,
    now_us: u64,
    last_busy_us: u64,
) -> (bool, Option<u64>) {
    const QUIET_US: u64 = 10_000;
    let since = now_us.saturating_sub(last_busy_us);
    if in_flight >= cpus {
        (false, (since >= 1000).then_some(now_us))
    } else {
        (since >= QUIET_US, None)
    }
}

/// Whether instances are being asked to poll (see [`poll_hint`]).
static POLLING: AtomicBool = AtomicBool::new(false);

/// The sockets of this process's instances, to see a reply arrive without
/// sleeping.
fn replies() -> Option<&'static lampyr_sandbox::ReadySet> {
    static SET: std::sync::OnceLock<Option<lampyr_sandbox::ReadySet>> = std::sync::OnceLock::new();
    SET.get_or_init(|| lampyr_sandbox::ReadySet::new().ok())
        .as_ref()
}

/// For the async runtime's `on_thread_park`: while instances are asked to
/// poll and an invocation is in flight, a worker about to sleep first waits
/// up to [`POLL_WINDOW`] for a reply, yielding its CPU to anything runnable.
/// The reply is then read without the worker being woken.
pub fn poll_before_park() {
    if !POLLING.load(Ordering::Relaxed) || IN_FLIGHT.load(Ordering::Relaxed) == 0 {
        return;
    }
    let Some(set) = replies() else { return };
    let start = Instant::now();
    while start.elapsed() < POLL_WINDOW {
        if set.any_ready() {
            return;
        }
        std::thread::yield_now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn polling_needs_a_spare_cpu_for_a_quiet_while() {
        // Two CPUs; 50 ms into the process, busy last at 30 ms.
        let (now, busy) = (50_000, 30_000);
        assert_eq!(decide_poll(1, 2, now, busy), (true, None));
        assert_eq!(decide_poll(0, 2, now, busy), (true, None));
        // Busy 5 ms ago: not quiet long enough.
        assert_eq!(decide_poll(1, 2, now, 45_000), (false, None));
        // As many in flight as CPUs: off, and now is the last busy time;
        // recorded to the millisecond.
        assert_eq!(decide_poll(2, 2, now, busy), (false, Some(now)));
        assert_eq!(decide_poll(5, 2, now, now - 300), (false, None));
        // One CPU: never.
        assert_eq!(decide_poll(1, 1, now, 0), (false, Some(now)));
    }
}
