//! Building an instance's sandbox and starting its runtime, up to HELLO.

use std::collections::HashMap;
use std::ffi::OsString;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lampyr_sandbox::InstanceSpec;
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot, watch, Notify};

use super::frames::{read_frames, write_frames, OutState, Outbox};
use super::poll::replies;
use super::{
    refusals_to_log, watch_exit, Instance, InstanceConfig, InstanceError, Network, Shared, LIVE,
    RECENT,
};
use crate::capture::{read_logs, Capture, LineContext, Stream};
use crate::protocol;

/// How long a runtime may take to say HELLO.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// How long each start-up phase took.
#[derive(Debug, Clone, Copy, Default)]
pub struct StartTimings {
    /// Building the sandbox, until its init process handed over to the runtime.
    pub sandbox: Duration,
    /// From then until the bootstrap said HELLO.
    pub runtime: Duration,
}

type BuildJob = Box<dyn FnOnce() + Send>;

/// Threads of lampyr's own that run blocking start-up work, alive as long
/// as the server.
struct Workers {
    name: &'static str,
    threads: fn() -> usize,
    jobs: std::sync::OnceLock<std::sync::mpsc::Sender<BuildJob>>,
}

/// The threads that build sandboxes: an instance's first process dies
/// with the thread that started it (its parent-death signal), so the async
/// runtime's blocking pool, whose idle threads exit, must not start
/// instances. Two starts at once (a cold start beside a pool refill) at
/// least.
static BUILDERS: Workers = Workers {
    name: "lampyr-sandbox",
    threads: || std::thread::available_parallelism().map_or(2, |n| n.get().max(2)),
    jobs: std::sync::OnceLock::new(),
};

/// The thread that has zygotes fork runtimes into built sandboxes. One is
/// enough (a zygote forks one instance at a time), and a thread that stays
/// keeps its memory: the blocking pool would start a thread, with a malloc
/// arena of its own, for each of many instances started at once (40
/// reserved instances grew the server by ~45 MiB that way).
static ADOPTERS: Workers = Workers {
    name: "lampyr-adopt",
    threads: || 1,
    jobs: std::sync::OnceLock::new(),
};

/// Runs `f` on one of the threads that build sandboxes and waits for its
/// result.
async fn on_builder_thread<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, InstanceError> {
    on_worker(&BUILDERS, f).await
}

async fn on_worker<T: Send + 'static>(
    workers: &'static Workers,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, InstanceError> {
    let jobs = workers.jobs.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel::<BuildJob>();
        let rx = Arc::new(Mutex::new(rx));
        for _ in 0..(workers.threads)() {
            let rx = rx.clone();
            let started = std::thread::Builder::new()
                .name(workers.name.into())
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
                tracing::warn!("could not start a {} thread: {e}", workers.name);
            }
        }
        tx
    });
    let (tx, rx) = oneshot::channel();
    // The sandbox's process and pipes belong to the caller's runtime.
    let runtime = tokio::runtime::Handle::current();
    jobs.send(Box::new(move || {
        let _entered = runtime.enter();
        let _ = tx.send(f());
    }))
    .map_err(|_| InstanceError::Protocol(format!("no {} thread is left", workers.name)))?;
    rx.await.map_err(|_| {
        InstanceError::Protocol(format!(
            "starting the instance failed (a {} thread panicked)",
            workers.name
        ))
    })
}

/// An instance spawned by [`Instance::spawn`] whose runtime has not said
/// HELLO yet.
pub(super) struct Starting {
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
    pub(super) async fn spawn(
        cfg: InstanceConfig<'_>,
    ) -> Result<(Arc<Instance>, Starting), InstanceError> {
        let started = Instant::now();
        let (args, env) = command_line(&cfg);
        let id = cfg.id.clone();
        let own_program = crate::kinds::of(cfg.runtime.runtime).own_program();
        // A program of lampyr's own runs from the copy in its runtime
        // directory (which a jail shows); an interpreter from its prefix.
        let (program, prefix) = match cfg.runtime.path.file_name() {
            Some(name) if own_program => (
                cfg.sandboxer.guest_runtime_dir(&cfg.runtime_dir).join(name),
                None,
            ),
            _ => (cfg.runtime.path.clone(), Some(cfg.runtime.prefix.clone())),
        };
        let shared_prefixes = cfg.runtime.shared_prefixes.clone();
        let runtime_dir = cfg.runtime_dir.clone();
        let code_dir = cfg.code_dir.clone();
        let (memory_mb, net_mode) = (cfg.memory_mb, cfg.network.mode());
        let sandboxer = cfg.sandboxer.clone();
        // Building a sandbox starts processes and writes cgroup files:
        // milliseconds that must not hold up the async workers, and every
        // request they serve, while a pool refills or a function starts.
        let install = own_program.then(|| (runtime_dir.clone(), cfg.runtime.clone()));
        let (sandbox, mut io) = on_builder_thread(move || {
            if let Some((dir, info)) = &install {
                crate::bootstrap::install_program(dir, info).map_err(|e| {
                    InstanceError::SandboxSetup(format!(
                        "installing {} into {}: {e}",
                        info.path.display(),
                        dir.display()
                    ))
                })?;
            }
            let spec = InstanceSpec {
                id: &id,
                program: &program,
                program_prefix: prefix.as_deref(),
                shared_prefixes: &shared_prefixes,
                args,
                env,
                runtime_dir: &runtime_dir,
                code_dir: code_dir.as_deref(),
                memory_mb,
                network: net_mode,
                background: code_dir.is_none(),
            };
            sandboxer.spawn(&spec).map_err(InstanceError::from)
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
        let pid = sandbox.pid();
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
            pid,
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

    /// Waits for the HELLO of an instance from [`Instance::spawn`].
    pub(super) async fn started(&self, starting: Starting) -> Result<StartTimings, InstanceError> {
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
                        let forked = on_worker(&ADOPTERS, move || a.complete()).await;
                        match forked {
                            Ok(Ok(_pid)) => {}
                            Ok(Err(e)) => {
                                self.kill("the zygote could not fork the runtime");
                                return Err(e.into());
                            }
                            Err(e) => {
                                self.kill("the zygote could not fork the runtime");
                                return Err(e);
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
}

/// The runtime's arguments and complete environment.
fn command_line(cfg: &InstanceConfig<'_>) -> (Vec<OsString>, Vec<(OsString, OsString)>) {
    let guest_runtime_dir = cfg.sandboxer.guest_runtime_dir(&cfg.runtime_dir);
    let (args, own_env) = crate::kinds::command_line(cfg.runtime.runtime, &guest_runtime_dir);
    // A custom runtime also sees the host's interpreters (see
    // `kinds::provided`); the others need /usr alone.
    let jailed = cfg.sandboxer.is_jailed();
    let prefixes: Vec<std::path::PathBuf> = cfg
        .runtime
        .shared_prefixes
        .iter()
        .map(|(host, guest)| if jailed { guest } else { host }.clone())
        .collect();
    let mut env = crate::kinds::search_paths(&prefixes);
    env.extend([
        ("LANG".into(), "C.UTF-8".into()),
        ("TZ".into(), "UTC".into()),
        ("HOME".into(), "/tmp".into()),
        ("TMPDIR".into(), "/tmp".into()),
        (
            "LAMPYR_FD".into(),
            lampyr_sandbox::PROTOCOL_FD.to_string().into(),
        ),
        ("LAMPYR_INSTANCE_ID".into(), cfg.id.clone().into()),
    ]);
    env.extend(own_env);
    if cfg.code_dir.is_some() {
        // Started for one request with its code: warming the invocation
        // path up before HELLO would only delay that request.
        env.push(("LAMPYR_WARM_UP".into(), "0".into()));
    }
    (args, env)
}
