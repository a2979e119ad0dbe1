//! The container layer: how an instance's processes are started, confined
//! and stopped. This is the only crate in lampyr allowed `unsafe` code and
//! raw system calls; every `unsafe` block carries a `// SAFETY:` comment.
//!
//! With full isolation (root, namespaces and cgroups available) every
//! instance runs in a jail built from kernel primitives, no container daemon:
//! its own mount, PID, IPC, UTS, cgroup and network namespaces, a read-only
//! root with only what the runtime needs, the function's code read-only at
//! `/var/task`, a size-limited `/tmp`, a minimal `/dev`, an unprivileged
//! uid with no capabilities, `no_new_privs`, a seccomp filter, and a cgroup
//! enforcing memory, CPU and pids limits. See `docs/sandbox.md` for the
//! sequence ([`jail::enter`], [`init`]).
//!
//! Without root or kernel support it falls back to plain processes (own
//! session, clean environment, rlimits) and says so: [`Sandboxer::features`]
//! reports each feature as on or off, and [`IsolationMode::Strict`] refuses
//! to run without full isolation.
#![deny(unsafe_op_in_unsafe_fn)]

pub mod cgroup;
pub mod init;
pub mod jail;
pub mod job;
pub mod net;
pub mod seccomp;
pub mod slots;
pub mod sys;
pub mod views;
pub mod zygote;

use std::ffi::OsString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use tokio::net::unix::pipe;
use tokio::process::{Child, Command};

use cgroup::{CgroupLimits, Cgroups, InstanceCgroup};
use jail::{Bind, JailSpec};

pub use sys::{
    batch_scheduling, idle_scheduling, ReadySet, FRAME_SANDBOX_ERROR, FRAME_SANDBOX_GO,
    FRAME_SANDBOX_READY,
};

/// The file descriptor at which an instance finds its protocol socket.
pub const PROTOCOL_FD: i32 = 3;
/// Where the function's code appears inside a jail.
pub const GUEST_TASK_ROOT: &str = "/var/task";
/// Where the runtime's bootstrap appears inside a jail.
pub const GUEST_RUNTIME_DIR: &str = "/var/runtime";
/// Where a runtime installed outside `/usr` appears inside a jail.
pub const GUEST_RUNTIME_PREFIX: &str = "/opt/lampyr/runtime";

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("creating the instance socket: {0}")]
    Socket(std::io::Error),
    #[error("starting {program}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("creating the instance's cgroup: {0}")]
    Cgroup(#[from] cgroup::CgroupError),
    #[error("--isolation strict: full isolation is not available on this host: {0}")]
    NotIsolated(String),
    #[error("python zygote: {0}")]
    Zygote(String),
    #[error("code slot: {0}")]
    Slot(#[from] slots::SlotError),
    #[error("the instance's network: {0}")]
    Network(std::io::Error),
    #[error("sandbox state directory {path}: {source}")]
    State {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// How much isolation the server insists on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IsolationMode {
    /// Use every feature the host offers; fall back loudly.
    #[default]
    Auto,
    /// Refuse to start without full isolation.
    Strict,
    /// Plain processes, for development hosts.
    Off,
}

impl std::str::FromStr for IsolationMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "strict" => Ok(Self::Strict),
            "off" | "none" => Ok(Self::Off),
            other => Err(format!(
                "unknown isolation mode '{other}': use auto, strict or off"
            )),
        }
    }
}

/// Settings of the container layer.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    pub mode: IsolationMode,
    /// A directory lampyr owns (an empty mount point for jail roots lives here).
    pub state_dir: PathBuf,
    /// Identifies this server's cgroups, e.g. a hash of its data directory.
    pub tag: String,
    /// The unprivileged identity functions run as.
    pub uid: u32,
    pub gid: u32,
    /// Most tasks (processes and threads) one instance may have.
    pub pids_max: u32,
    /// Size of an instance's writable `/tmp`.
    pub tmp_mb: u32,
    /// Most open files per process.
    pub max_open_files: u64,
    /// The executable that implements `__sandbox-init`: [`default_init_exe`].
    pub init_exe: PathBuf,
}

impl SandboxConfig {
    pub fn new(state_dir: PathBuf, tag: String) -> Self {
        SandboxConfig {
            mode: IsolationMode::Auto,
            state_dir,
            tag,
            uid: 65534,
            gid: 65534,
            pids_max: 256,
            tmp_mb: 64,
            max_open_files: 1024,
            init_exe: default_init_exe(),
        }
    }
}

/// The small `lampyr-init` executable installed beside the running one, or
/// else the running executable itself (`lampyr` also answers
/// `__sandbox-init`). Both run [`init::main`]; the small one starts faster,
/// since every jailed instance begins by executing it.
///
/// A `lampyr-init` from another build (its [`init::BUILD_ID`] differs) is
/// not used: the running executable is, with a warning.
pub fn default_init_exe() -> PathBuf {
    let me = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/proc/self/exe"));
    let lean = me.with_file_name(init::INIT_EXE);
    if !lean.is_file() {
        return me;
    }
    let id = std::process::Command::new(&lean)
        .arg(init::BUILD_ID_ARG)
        .env_clear()
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    if id.as_deref() == Some(format!("{:016x}", init::BUILD_ID).as_str()) {
        lean
    } else {
        tracing::warn!(
            init = %lean.display(),
            "{} is not from this build of lampyr; instances start from {} instead (rebuild both, e.g. `cargo build --release`)",
            init::INIT_EXE,
            me.display()
        );
        me
    }
}

/// One confinement feature and whether this host uses it.
#[derive(Debug, Clone)]
pub struct Feature {
    pub name: &'static str,
    pub enabled: bool,
    pub detail: String,
}

#[derive(Debug)]
struct JailSupport {
    root_dir: PathBuf,
    cgroups: Option<Cgroups>,
    /// The compiled seccomp filters ([`seccomp::to_hex`]), compiled once
    /// here; empty where the kernel has no seccomp.
    seccomp: Vec<String>,
    base_binds: Vec<Bind>,
    base_symlinks: Vec<(PathBuf, PathBuf)>,
    slots: Arc<slots::Slots>,
    views: Arc<views::Views>,
}

/// Starts instances with as much isolation as the host allows.
#[derive(Debug)]
pub struct Sandboxer {
    cfg: SandboxConfig,
    jail: Option<JailSupport>,
    features: Vec<Feature>,
    zygote: parking_lot::Mutex<Option<Arc<zygote::Zygote>>>,
}

/// What one instance runs and with which limits.
#[derive(Debug, Clone)]
pub struct InstanceSpec<'a> {
    pub id: &'a str,
    /// The interpreter; inside a jail it is found at the same path.
    pub program: &'a Path,
    /// The interpreter's installation prefix, made visible when outside `/usr`.
    pub program_prefix: Option<&'a Path>,
    pub args: Vec<OsString>,
    /// The complete environment; nothing is inherited from the server.
    pub env: Vec<(OsString, OsString)>,
    /// Host directory with the runtime's bootstrap.
    pub runtime_dir: &'a Path,
    /// Host directory with the function's code, or `None` for a generic
    /// instance that [`SandboxControl::specialise`] gives code later.
    pub code_dir: Option<&'a Path>,
    pub memory_mb: u32,
    pub network: NetMode,
    /// A generic instance started ahead of demand: lowest CPU weight until
    /// it is specialised.
    pub background: bool,
}

/// The network an instance gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetMode {
    /// Its own network namespace with loopback only.
    Loopback,
    /// Its own network namespace with loopback and `eth0`, a TUN device
    /// whose host end comes back in [`SandboxIo::tun`] (see [`net`]).
    Egress,
    /// The host's network.
    Host,
}

/// What [`Sandboxer::jail_spec`] puts in a jail besides the base layout.
struct JailContents<'a> {
    program: &'a Path,
    program_prefix: Option<&'a Path>,
    args: &'a [OsString],
    env: &'a [(OsString, OsString)],
    runtime_dir: Option<&'a Path>,
    /// What appears at `/var/task`.
    task: Option<Bind>,
    network: jail::JailNetwork,
    cgroup_procs: Vec<PathBuf>,
}

fn namespaces_work() -> Result<(), String> {
    let mut cmd = std::process::Command::new("/bin/true");
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs between fork and exec and only makes the
    // unshare system call, which is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            let flags = libc::CLONE_NEWNS
                | libc::CLONE_NEWPID
                | libc::CLONE_NEWIPC
                | libc::CLONE_NEWUTS
                | libc::CLONE_NEWNET
                | libc::CLONE_NEWCGROUP;
            if libc::unshare(flags) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    match cmd.status() {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => Err(format!("probe exited with {s}")),
        Err(e) => Err(e.to_string()),
    }
}

/// The seccomp filters, compiled, if this kernel has seccomp.
fn seccomp_filters() -> Option<Vec<String>> {
    let supported = std::fs::read_to_string("/proc/self/status")
        .is_ok_and(|s| s.lines().any(|l| l.starts_with("Seccomp:")));
    let progs = seccomp::compile().ok().filter(|_| supported)?;
    Some(progs.iter().map(seccomp::to_hex).collect())
}

/// The parts of the host's root every runtime needs, read-only.
fn base_layout() -> (Vec<Bind>, Vec<(PathBuf, PathBuf)>) {
    let mut binds = vec![Bind::read_only("/usr", "/usr", true)];
    let mut links = Vec::new();
    for top in ["/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"] {
        let p = Path::new(top);
        match std::fs::symlink_metadata(p) {
            Ok(m) if m.file_type().is_symlink() => {
                if let Ok(target) = std::fs::read_link(p) {
                    links.push((p.to_path_buf(), target));
                }
            }
            Ok(m) if m.is_dir() => binds.push(Bind::read_only(p, p, true)),
            _ => {}
        }
    }
    // Only public, non-secret parts of /etc.
    for (path, is_dir) in [
        ("/etc/ld.so.cache", false),
        ("/etc/ssl/certs", true),
        ("/etc/ssl/openssl.cnf", false),
        ("/etc/ca-certificates", true),
        ("/etc/alternatives", true),
        ("/etc/mime.types", false),
    ] {
        let p = Path::new(path);
        let ok = if is_dir { p.is_dir() } else { p.is_file() };
        if ok {
            binds.push(Bind::read_only(p, p, is_dir));
        }
    }
    (binds, links)
}

impl Sandboxer {
    /// Detects what the host offers, prepares this server's cgroups and
    /// removes any left behind by a previous run.
    pub fn new(cfg: SandboxConfig) -> Result<Sandboxer, SandboxError> {
        let mut features = vec![
            Feature {
                name: "process-group",
                enabled: true,
                detail: "each instance runs in its own session; killing it kills its children"
                    .into(),
            },
            Feature {
                name: "die-with-server",
                enabled: true,
                detail: "instances receive SIGKILL when the server exits (PR_SET_PDEATHSIG)".into(),
            },
            Feature {
                name: "clean-environment",
                enabled: true,
                detail: "instances see only the variables lampyr and the manifest set".into(),
            },
        ];
        if cfg.mode == IsolationMode::Off {
            features.push(Feature {
                name: "namespaces",
                enabled: false,
                detail: "turned off (--isolation off)".into(),
            });
            return Ok(Sandboxer {
                cfg,
                jail: None,
                features,
                zygote: parking_lot::Mutex::new(None),
            });
        }
        let mut missing = Vec::new();
        let root = nix::unistd::geteuid().is_root();
        if !root {
            missing.push("lampyr is not running as root".to_string());
        }
        let ns = if root {
            namespaces_work()
        } else {
            Err("needs root".into())
        };
        if let Err(e) = &ns {
            missing.push(format!("namespaces: {e}"));
        }
        let cgroups = if root {
            let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
            Cgroups::setup(Path::new("/sys/fs/cgroup"), &own, &cfg.tag).map_err(|e| e.to_string())
        } else {
            Err("needs root".into())
        };
        if let Err(e) = &cgroups {
            missing.push(format!("cgroups: {e}"));
        }
        let seccomp_filters = seccomp_filters();
        let seccomp = seccomp_filters.is_some();
        if !seccomp {
            missing.push("seccomp is not supported by this kernel".into());
        }
        if cfg.mode == IsolationMode::Strict && !missing.is_empty() {
            return Err(SandboxError::NotIsolated(missing.join("; ")));
        }
        let slots = if ns.is_ok() {
            slots::Slots::setup(&cfg.state_dir).map_err(|e| e.to_string())
        } else {
            Err("needs namespaces".into())
        };
        if let (Ok(()), Err(e)) = (&ns, &slots) {
            missing.push(format!("code slots: {e}"));
        }
        if cfg.mode == IsolationMode::Strict && !missing.is_empty() {
            return Err(SandboxError::NotIsolated(missing.join("; ")));
        }
        let jail = match (&ns, slots) {
            (Ok(()), Ok(slots)) => {
                let root_dir = cfg.state_dir.join("root");
                std::fs::create_dir_all(&root_dir).map_err(|source| SandboxError::State {
                    path: root_dir.display().to_string(),
                    source,
                })?;
                let (base_binds, base_symlinks) = base_layout();
                let views =
                    views::Views::new(&cfg.state_dir).map_err(|source| SandboxError::State {
                        path: cfg.state_dir.display().to_string(),
                        source,
                    })?;
                Some(JailSupport {
                    views: Arc::new(views),
                    root_dir,
                    cgroups: cgroups.as_ref().ok().cloned(),
                    seccomp: seccomp_filters.unwrap_or_default(),
                    base_binds,
                    base_symlinks,
                    slots: Arc::new(slots),
                })
            }
            _ => None,
        };
        let on = jail.is_some();
        features.push(Feature {
            name: "namespaces",
            enabled: on,
            detail: match &ns {
                Ok(()) => "own mount, pid, ipc, uts and cgroup namespaces per instance".into(),
                Err(e) => format!("unavailable ({e}): instances share the host's namespaces"),
            },
        });
        features.push(Feature {
            name: "root-filesystem",
            enabled: on,
            detail: if on { "pivot_root into a read-only root: the runtime, code at /var/task, tmpfs /tmp, minimal /dev".into() } else { "instances see the host's filesystem".into() },
        });
        features.push(Feature {
            name: "network",
            enabled: on,
            detail: if on { "a network namespace per instance: outbound through lampyr (network = \"egress\"), loopback only (\"none\"), or the host's (\"host\")".into() } else { "instances use the host's network".into() },
        });
        let egress = if on {
            net::egress_available()
        } else {
            Err("needs namespaces".into())
        };
        features.push(Feature {
            name: "egress",
            enabled: egress.is_ok(),
            detail: match &egress {
                Ok(()) => "network = \"egress\": a TUN device per instance, its traffic relayed by lampyr under the function's policy".into(),
                Err(e) => format!("unavailable ({e}): functions with network = \"egress\" cannot start"),
            },
        });
        features.push(Feature {
            name: "privileges",
            enabled: on,
            detail: if on {
                format!(
                    "uid {} gid {}, no capabilities, no_new_privs",
                    cfg.uid, cfg.gid
                )
            } else {
                "instances run as lampyr's own user".into()
            },
        });
        features.push(Feature {
            name: "seccomp",
            enabled: on && seccomp,
            detail: if seccomp {
                format!(
                    "{} system calls refused (mount, ptrace, bpf, unshare, …)",
                    seccomp::denied_syscalls().len()
                )
            } else {
                "unavailable".into()
            },
        });
        let cg_on = on && cgroups.is_ok();
        features.push(Feature {
            name: "cgroups",
            enabled: cg_on,
            detail: match &cgroups {
                Ok(c) => format!(
                    "{}: memory = memory_mb (no swap), cpu proportional to memory, pids <= {}",
                    c.version(),
                    cfg.pids_max
                ),
                Err(e) => format!("unavailable ({e}): no memory, cpu or pids limits"),
            },
        });
        if !missing.is_empty() {
            tracing::warn!("INSTANCES ARE NOT FULLY ISOLATED: {}", missing.join("; "));
        }
        Ok(Sandboxer {
            cfg,
            jail,
            features,
            zygote: parking_lot::Mutex::new(None),
        })
    }

    /// Starts the Python zygote for `python` (jailed instances only): its
    /// script is written to `dir`, and it imports `bootstrap` once. Python
    /// instances are then forked from it instead of exec'd.
    pub fn start_zygote(
        &self,
        python: &Path,
        prefix: &Path,
        dir: &Path,
        bootstrap: &Path,
    ) -> Result<(), SandboxError> {
        let Some(j) = &self.jail else {
            return Ok(());
        };
        let script = dir.join("zygote.py");
        std::fs::write(&script, zygote::SCRIPT).map_err(|source| SandboxError::State {
            path: script.display().to_string(),
            source,
        })?;
        let bootstrap_name = bootstrap.file_name().unwrap_or_default();
        let env: Vec<(OsString, OsString)> = vec![
            ("PATH".into(), "/usr/local/bin:/usr/bin:/bin".into()),
            ("LANG".into(), "C.UTF-8".into()),
            (
                "LAMPYR_BOOTSTRAP".into(),
                Path::new(GUEST_RUNTIME_DIR).join(bootstrap_name).into(),
            ),
            ("PYTHONDONTWRITEBYTECODE".into(), "1".into()),
        ];
        let args: Vec<OsString> = vec![
            "-s".into(),
            "-B".into(),
            Path::new(GUEST_RUNTIME_DIR).join("zygote.py").into(),
        ];
        let mut spec = self.jail_spec(
            j,
            JailContents {
                program: python,
                program_prefix: Some(prefix),
                args: &args,
                env: &env,
                runtime_dir: Some(dir),
                task: None,
                network: jail::JailNetwork::Host,
                cgroup_procs: Vec::new(),
            },
        );
        spec.mode = jail::JailMode::Zygote;
        let z = zygote::Zygote::start(python, &self.cfg.init_exe, &spec)?;
        *self.zygote.lock() = Some(Arc::new(z));
        Ok(())
    }

    /// The zygote to use for `program`, if there is a live one.
    fn zygote_for(&self, program: &Path) -> Option<Arc<zygote::Zygote>> {
        let z = self.zygote.lock().clone()?;
        if z.program != program {
            return None;
        }
        if !z.alive() {
            tracing::warn!("the Python zygote died; Python instances are started from scratch");
            *self.zygote.lock() = None;
            return None;
        }
        Some(z)
    }

    /// Removes instance cgroups (and kills their processes) that an earlier
    /// run of this server left behind, e.g. after it was SIGKILLed, or that
    /// are still there at shutdown. Only the server that owns the data
    /// directory may call this. Returns how many it removed.
    pub fn cleanup_stale(&self) -> usize {
        self.jail
            .as_ref()
            .and_then(|j| j.cgroups.as_ref())
            .map(|c| c.cleanup_stale())
            .unwrap_or(0)
    }

    /// Removes this server's (empty) parent cgroups and its slot mounts,
    /// at shutdown.
    pub fn teardown(&self) {
        if let Some(j) = &self.jail {
            if let Some(c) = &j.cgroups {
                c.remove_parents();
            }
            j.views.teardown();
            j.slots.teardown();
        }
    }

    /// Unmounts the view of a code directory about to be removed (see
    /// [`views`]).
    pub fn forget_code(&self, code_dir: &Path) {
        if let Some(j) = &self.jail {
            j.views.forget(code_dir);
        }
    }

    /// Each isolation feature and whether it is on.
    pub fn features(&self) -> &[Feature] {
        &self.features
    }

    /// Whether jailed instances can have an egress network; `Ok` where
    /// instances are not jailed (they use the host's network then).
    pub fn egress_support(&self) -> Result<(), String> {
        match self.features.iter().find(|f| f.name == "egress") {
            Some(f) if !f.enabled && self.is_jailed() => Err(f.detail.clone()),
            _ => Ok(()),
        }
    }

    /// True when instances run in jails.
    pub fn is_jailed(&self) -> bool {
        self.jail.is_some()
    }

    /// Where the runtime's bootstrap directory is, as the instance sees it.
    pub fn guest_runtime_dir(&self, host: &Path) -> PathBuf {
        if self.is_jailed() {
            GUEST_RUNTIME_DIR.into()
        } else {
            host.to_path_buf()
        }
    }

    /// Where the function's code is, as the instance sees it.
    pub fn guest_task_root(&self, host: &Path) -> PathBuf {
        if self.is_jailed() {
            GUEST_TASK_ROOT.into()
        } else {
            host.to_path_buf()
        }
    }

    /// The jail for a program: the base layout, the program's prefix
    /// (a runtime installed outside `/usr`), its bootstrap, its task
    /// directory at `/var/task`, generated files and the network.
    fn jail_spec(&self, j: &JailSupport, c: JailContents<'_>) -> JailSpec {
        let mut binds = j.base_binds.clone();
        // A runtime installed outside /usr (say a pyenv Python under /root)
        // appears at /opt/lampyr/runtime, so nothing else of its home
        // directory is visible; its libraries are found through
        // LD_LIBRARY_PATH.
        let mut program = c.program.to_path_buf();
        let mut env = c.env.to_vec();
        if let Some(prefix) = c.program_prefix {
            if !prefix.starts_with("/usr") && prefix.is_dir() {
                if let Ok(rel) = c.program.strip_prefix(prefix) {
                    binds.push(Bind::read_only(
                        j.views.of(prefix),
                        GUEST_RUNTIME_PREFIX,
                        true,
                    ));
                    program = Path::new(GUEST_RUNTIME_PREFIX).join(rel);
                    env.push((
                        "LD_LIBRARY_PATH".into(),
                        format!("{GUEST_RUNTIME_PREFIX}/lib").into(),
                    ));
                }
            }
        }
        if let Some(dir) = c.runtime_dir {
            binds.push(Bind::read_only(j.views.of(dir), GUEST_RUNTIME_DIR, true));
        }
        binds.extend(c.task);
        let (uid, gid) = (self.cfg.uid, self.cfg.gid);
        let mut files = vec![
            ("/etc/passwd".into(), format!("root:x:0:0:root:/:/usr/sbin/nologin\nsbx_user:x:{uid}:{gid}:lampyr function:/tmp:/usr/sbin/nologin\n")),
            ("/etc/group".into(), format!("root:x:0:\nsbx_user:x:{gid}:\n")),
            ("/etc/hostname".into(), "lampyr\n".into()),
            ("/etc/nsswitch.conf".into(), "passwd: files\ngroup: files\nhosts: files dns\n".into()),
        ];
        match c.network {
            jail::JailNetwork::Host => {
                for f in ["/etc/resolv.conf", "/etc/hosts"] {
                    if Path::new(f).is_file() {
                        binds.push(Bind::read_only(f, f, false));
                    }
                }
            }
            jail::JailNetwork::Loopback => files.push((
                "/etc/hosts".into(),
                "127.0.0.1 localhost lampyr\n::1 localhost\n".into(),
            )),
            jail::JailNetwork::Joined => {
                files.push((
                    "/etc/hosts".into(),
                    format!(
                        "127.0.0.1 localhost lampyr\n::1 localhost\n{} {}\n",
                        net::GATEWAY_ADDR,
                        net::HOST_NAME
                    ),
                ));
                files.push((
                    "/etc/resolv.conf".into(),
                    format!("nameserver {}\noptions edns0\n", net::DNS_ADDR),
                ));
            }
        }
        JailSpec {
            root_dir: j.root_dir.clone(),
            binds,
            symlinks: j.base_symlinks.clone(),
            files,
            tmp_mb: self.cfg.tmp_mb,
            hostname: "lampyr".into(),
            network: c.network,
            uid,
            gid,
            max_open_files: self.cfg.max_open_files,
            seccomp: j.seccomp.clone(),
            cgroup_procs: c.cgroup_procs,
            adopt: false,
            mode: jail::JailMode::Instance,
            host_pid: std::process::id(),
            program,
            args: c.args.to_vec(),
            env,
            cwd: "/".into(),
        }
    }

    /// Starts one instance. With `spec.code_dir` the code is in place
    /// before the runtime starts; without, the instance is generic until
    /// [`SandboxControl::specialise`] gives it a function.
    pub fn spawn(&self, spec: &InstanceSpec<'_>) -> Result<(Sandbox, SandboxIo), SandboxError> {
        let Some(j) = &self.jail else {
            let mut cmd = Command::new(spec.program);
            cmd.args(&spec.args)
                .env_clear()
                .envs(spec.env.iter().map(|(k, v)| (k, v)))
                .current_dir("/");
            let control = SandboxControl {
                slot: None,
                slots: None,
                views: None,
                cgroup: None,
            };
            return spawn_with(
                cmd,
                spec.program,
                || Ok(control),
                None,
                Some(self.cfg.max_open_files),
                None,
            );
        };
        // The instance's cgroup and code slot are made while its init starts
        // (see `spawn_with`); their paths are known now.
        let name = cgroup_name(spec.id);
        let slot = j.slots.path(&name);
        let cgroup_procs = j
            .cgroups
            .as_ref()
            .map(|c| c.procs_files(&name))
            .unwrap_or_default();
        let prepare = || -> Result<SandboxControl, SandboxError> {
            let limits = CgroupLimits {
                memory_mb: spec.memory_mb,
                pids_max: self.cfg.pids_max,
                background: spec.background,
            };
            let cgroup = match &j.cgroups {
                Some(c) => Some(c.create(&name, limits)?),
                None => None,
            };
            let control = SandboxControl {
                slot: Some(slot.clone()),
                slots: Some(j.slots.clone()),
                views: Some(j.views.clone()),
                cgroup,
            };
            let filled = j.slots.create(&name).and_then(|slot| match spec.code_dir {
                Some(code) => j.slots.fill(&slot, &j.views.of(code)),
                None => Ok(()),
            });
            if let Err(e) = filled {
                control.release();
                // Nothing has joined it: the init waits for SANDBOX_GO.
                if let Some(cg) = &control.cgroup {
                    cg.try_remove();
                }
                return Err(e.into());
            }
            Ok(control)
        };
        let jail_spec = self.jail_spec(
            j,
            JailContents {
                program: spec.program,
                program_prefix: spec.program_prefix,
                args: &spec.args,
                env: &spec.env,
                runtime_dir: Some(spec.runtime_dir),
                task: Some(Bind::read_only(slot.clone(), GUEST_TASK_ROOT, true)),
                network: match spec.network {
                    NetMode::Host => jail::JailNetwork::Host,
                    NetMode::Loopback => jail::JailNetwork::Loopback,
                    NetMode::Egress => jail::JailNetwork::Joined,
                },
                cgroup_procs,
            },
        );
        // An egress network is made before the init starts, so its
        // descriptor can go with SANDBOX_GO.
        let netns = match spec.network {
            NetMode::Egress => Some(net::make_egress_netns().map_err(SandboxError::Network)?),
            _ => None,
        };
        let zygote = self.zygote_for(spec.program);
        let mut jail_spec = jail_spec;
        jail_spec.adopt = zygote.is_some();
        let adopt = zygote.map(|z| {
            let env: serde_json::Map<String, serde_json::Value> = jail_spec
                .env
                .iter()
                .map(|(k, v)| {
                    (
                        k.to_string_lossy().into_owned(),
                        v.to_string_lossy().into_owned().into(),
                    )
                })
                .collect();
            let request = serde_json::json!({
                "cgroups": jail_spec.cgroup_procs.len(),
                "uid": jail_spec.uid,
                "gid": jail_spec.gid,
                "max_open_files": jail_spec.max_open_files,
                "seccomp": j.seccomp,
                "env": env,
            });
            (z, request, jail_spec.cgroup_procs.clone())
        });
        let json = serde_json::to_string(&jail_spec).expect("jail spec serialises");
        let mut cmd = Command::new(&self.cfg.init_exe);
        cmd.arg(init::INIT_ARG)
            .env_clear()
            .env(init::SPEC_ENV, json)
            .current_dir("/");
        spawn_with(cmd, &self.cfg.init_exe, prepare, adopt, None, netns)
    }
}

/// What the host can still change about a running sandbox: which code it
/// sees and its limits. Shared by the instance and its exit watcher.
#[derive(Debug)]
pub struct SandboxControl {
    slot: Option<PathBuf>,
    slots: Option<Arc<slots::Slots>>,
    views: Option<Arc<views::Views>>,
    cgroup: Option<InstanceCgroup>,
}

impl SandboxControl {
    /// Gives a generic instance a function: applies the function's memory
    /// limit and mounts its code, read-only, at `/var/task`. Returns where
    /// the instance sees the code.
    pub fn specialise(&self, code_dir: &Path, memory_mb: u32) -> Result<PathBuf, SandboxError> {
        if let Some(cg) = &self.cgroup {
            cg.update_memory(memory_mb)?;
        }
        match (&self.slot, &self.slots, &self.views) {
            (Some(slot), Some(slots), Some(views)) => {
                slots.fill(slot, &views.of(code_dir))?;
                Ok(GUEST_TASK_ROOT.into())
            }
            _ => Ok(code_dir.to_path_buf()),
        }
    }

    /// Current memory use of the instance, in bytes, where measured.
    pub fn memory_current(&self) -> Option<u64> {
        self.cgroup.as_ref()?.memory_current()
    }

    /// The most memory the instance has used, in bytes, where measured.
    pub fn memory_peak(&self) -> Option<u64> {
        self.cgroup.as_ref()?.memory_peak()
    }

    fn kill_all(&self) {
        if let Some(cg) = &self.cgroup {
            cg.kill_all();
        }
    }
}

/// A cgroup directory name for an instance id.
fn cgroup_name(id: &str) -> String {
    id.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn pipe_pair() -> Result<(pipe::Receiver, OwnedFd), SandboxError> {
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| SandboxError::Socket(e.into()))?;
    let r = pipe::Receiver::from_owned_fd(r).map_err(SandboxError::Socket)?;
    Ok((r, w))
}

/// Starts `cmd` with the protocol socket and log pipes, then runs `prepare`
/// for the instance's cgroup and code slot.
///
/// A plain process (`plain_open_files` is its open-file limit) gets the
/// socket at fd 3 and is set up between fork and exec. The sandbox init gets
/// the socket as its stdin and sets itself up ([`init::main`]): without a
/// `pre_exec` step the standard library starts it with `posix_spawn`, which
/// does not copy the server's page tables as `fork` does. While the init
/// loads, `prepare` makes the cgroup and the slot; then the host sends
/// SANDBOX_GO, which the init waits for before it joins the cgroup.
fn spawn_with(
    mut cmd: Command,
    program: &Path,
    prepare: impl FnOnce() -> Result<SandboxControl, SandboxError>,
    adopt: Option<(Arc<zygote::Zygote>, serde_json::Value, Vec<PathBuf>)>,
    plain_open_files: Option<u64>,
    netns: Option<net::NetNs>,
) -> Result<(Sandbox, SandboxIo), SandboxError> {
    let (host, guest) = StdUnixStream::pair().map_err(SandboxError::Socket)?;
    let guest: OwnedFd = guest.into();
    let guest_fd = guest.as_raw_fd();
    let (stdout, out_w) = pipe_pair()?;
    let (stderr, err_w) = pipe_pair()?;
    // For a zygote-forked runtime: the instance's ends of its channels, and
    // a pipe on which the runtime's wait status reaches the sandbox's PID 1
    // (at fd 4), since PID 1 is not the runtime's parent.
    let mut status_r: Option<OwnedFd> = None;
    let adopt_fds = match &adopt {
        Some(_) => {
            let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
                .map_err(|e| SandboxError::Socket(e.into()))?;
            status_r = Some(r);
            Some(vec![
                guest.try_clone().map_err(SandboxError::Socket)?,
                out_w.try_clone().map_err(SandboxError::Socket)?,
                err_w.try_clone().map_err(SandboxError::Socket)?,
                w,
            ])
        }
        None => None,
    };
    let status_fd = status_r.as_ref().map(|f| f.as_raw_fd());
    cmd.stdout(Stdio::from(out_w))
        .stderr(Stdio::from(err_w))
        .kill_on_drop(true);
    let mut guest = Some(guest);
    match plain_open_files {
        Some(max_open_files) => {
            cmd.stdin(Stdio::null());
            // SAFETY: the closure runs in the forked child before exec and
            // only calls async-signal-safe functions (dup2, fcntl, setsid,
            // prctl, setrlimit, getppid, _exit); it allocates nothing and
            // takes no locks.
            unsafe {
                cmd.pre_exec(move || {
                    child_setup(guest_fd)?;
                    limit_open_files(max_open_files);
                    Ok(())
                });
            }
        }
        None => {
            cmd.stdin(Stdio::from(guest.take().expect("the guest end is here")));
            if let Some(fd) = status_fd {
                // SAFETY: as above; dup2 and fcntl only.
                unsafe { cmd.pre_exec(move || inherit_at(fd, ADOPT_STATUS_FD)) };
            }
        }
    }
    let jailed = plain_open_files.is_none();
    let mut child = cmd.spawn().map_err(|source| SandboxError::Spawn {
        program: program.display().to_string(),
        source,
    })?;
    drop(guest);
    drop(status_r);
    // The write ends now live in the child (and the adoption); dropping
    // the command closes ours, so the pipes end when the instance does.
    drop(cmd);
    let control = match prepare() {
        Ok(c) => Arc::new(c),
        Err(e) => {
            // A sandbox init still waits for SANDBOX_GO: it goes with the
            // socket, and is killed here in any case.
            let _ = child.start_kill();
            return Err(e);
        }
    };
    if jailed {
        // A failed write means the init is gone already; the instance
        // then reports that, as for any init that dies.
        match &netns {
            Some(n) => sys::send_go_with(&host, &n.ns),
            None => {
                let _ = std::io::Write::write_all(&mut &host, &sys::GO_FRAME);
            }
        }
    }
    let pid = child.id().unwrap_or(0);
    let adoption = adopt
        .zip(adopt_fds)
        .map(|((zygote, request, cgroup_procs), fds)| zygote::Adoption {
            zygote,
            outer_pid: pid,
            fds,
            request,
            cgroup_procs,
        });
    Ok((
        Sandbox {
            pid,
            reaped: false,
            child,
            control,
        },
        SandboxIo {
            socket: host,
            stdout,
            stderr,
            adoption,
            tun: netns.map(|n| n.tun),
        },
    ))
}

/// A started sandbox: one process tree with a protocol socket and log pipes.
#[derive(Debug)]
pub struct Sandbox {
    pid: u32,
    /// Set once the process is reaped: its pid may belong to another by then.
    reaped: bool,
    child: Child,
    control: Arc<SandboxControl>,
}

/// The host's ends of a sandbox's channels.
#[derive(Debug)]
pub struct SandboxIo {
    pub socket: StdUnixStream,
    pub stdout: pipe::Receiver,
    pub stderr: pipe::Receiver,
    /// Set when the runtime comes from the Python zygote: complete it once
    /// the sandbox is ready.
    pub adoption: Option<zygote::Adoption>,
    /// The host's end of the instance's `eth0` ([`NetMode::Egress`]).
    pub tun: Option<OwnedFd>,
}

/// How a sandbox ended.
#[derive(Debug)]
pub struct ExitInfo {
    pub status: std::io::Result<ExitStatus>,
    /// The kernel's OOM killer struck in the instance's cgroup.
    pub oom_killed: bool,
    /// The most memory the instance used, in bytes, if known.
    pub memory_peak: Option<u64>,
}

impl ExitInfo {
    pub fn describe(&self) -> String {
        match &self.status {
            Ok(s) => describe_exit(s),
            Err(e) => format!("lost track of the process ({e})"),
        }
    }
}

impl SandboxControl {
    /// Unmounts and removes the instance's code slot.
    fn release(&self) {
        if let (Some(slot), Some(slots)) = (&self.slot, &self.slots) {
            slots.release(slot);
        }
    }
}

impl Sandbox {
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The handle through which the host specialises the running sandbox.
    pub fn control(&self) -> Arc<SandboxControl> {
        self.control.clone()
    }

    /// Kills every process of the sandbox. Safe to call more than once.
    pub fn kill(&self) {
        if self.pid != 0 && !self.reaped {
            // The instance leads its own process group (setsid), so this
            // reaches the whole tree outside a PID namespace; inside one,
            // the death of its PID 1 takes the rest with it.
            let _ = killpg(Pid::from_raw(self.pid as i32), Signal::SIGKILL);
            // A sandbox init that has not yet made its session: killing it
            // is enough, its PID 1 dies with it.
            let _ = kill(Pid::from_raw(self.pid as i32), Signal::SIGKILL);
        }
        self.control.kill_all();
    }

    /// Waits for the sandbox to exit, then removes its cgroup and its code
    /// slot.
    pub async fn wait(&mut self) -> ExitInfo {
        let status = self.child.wait().await;
        self.reaped = status.is_ok();
        let (oom_killed, memory_peak) = match &self.control.cgroup {
            Some(cg) => {
                let oom = cg.oom_kills() > 0;
                let peak = cg.memory_peak();
                cg.kill_all();
                if !cg.remove().await {
                    tracing::warn!(
                        pid = self.pid,
                        "could not remove an instance cgroup; it will be removed at the next start"
                    );
                }
                (oom, peak)
            }
            None => (false, None),
        };
        self.control.release();
        ExitInfo {
            status,
            oom_killed,
            memory_peak,
        }
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Sets RLIMIT_NOFILE. Runs between fork and exec.
fn limit_open_files(n: u64) {
    let nofile = libc::rlimit {
        rlim_cur: n,
        rlim_max: n,
    };
    // SAFETY: setrlimit reads a valid rlimit struct; async-signal-safe.
    unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &nofile) };
}

/// Where PID 1 of an adopting sandbox reads its runtime's wait status.
pub(crate) const ADOPT_STATUS_FD: i32 = 4;

/// Places `fd` at `target` across exec. Runs between fork and exec.
fn inherit_at(fd: i32, target: i32) -> std::io::Result<()> {
    // SAFETY: dup2 on a descriptor this process owns; async-signal-safe.
    if unsafe { libc::dup2(fd, target) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fcntl on a valid descriptor; async-signal-safe.
    if unsafe { libc::fcntl(target, libc::F_SETFD, 0) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Runs in the child between fork and exec.
fn child_setup(guest_fd: i32) -> std::io::Result<()> {
    // SAFETY: dup2 on a descriptor this process owns; async-signal-safe.
    if unsafe { libc::dup2(guest_fd, PROTOCOL_FD) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    if guest_fd == PROTOCOL_FD {
        // dup2 onto itself keeps FD_CLOEXEC: clear it so exec keeps fd 3.
        // SAFETY: fcntl on a valid descriptor; async-signal-safe.
        if unsafe { libc::fcntl(PROTOCOL_FD, libc::F_SETFD, 0) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    // SAFETY: setsid has no memory-safety preconditions; async-signal-safe.
    if unsafe { libc::setsid() } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let _ = batch_scheduling();
    // Die with the server, whatever way it exits (a plain prctl; nothing
    // is allocated).
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
    let no_core = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: setrlimit reads a valid rlimit struct; async-signal-safe.
    unsafe { libc::setrlimit(libc::RLIMIT_CORE, &no_core) };
    // The server may have died between fork and prctl.
    // SAFETY: getppid has no preconditions.
    if unsafe { libc::getppid() } == 1 {
        // SAFETY: _exit ends the child at once; async-signal-safe.
        unsafe { libc::_exit(1) };
    }
    Ok(())
}

/// Describes an exit status the way an operator wants to read it.
pub fn describe_exit(status: &ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    if let Some(code) = status.code() {
        format!("exit code {code}")
    } else if let Some(sig) = status.signal() {
        let name = Signal::try_from(sig)
            .map(|s| s.as_str())
            .unwrap_or("unknown");
        format!("killed by signal {sig} ({name})")
    } else {
        "unknown exit status".to_string()
    }
}

/// A short stable tag for a path (FNV-1a), e.g. to name a server's cgroups.
pub fn path_tag(p: &Path) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in p.as_os_str().as_encoded_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{:012x}", h & 0xffff_ffff_ffff)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    fn plain() -> Sandboxer {
        let mut cfg = SandboxConfig::new(std::env::temp_dir(), "test".into());
        cfg.mode = IsolationMode::Off;
        Sandboxer::new(cfg).unwrap()
    }

    fn spec<'a>(program: &'a Path, args: &[&str], code: &'a Path) -> InstanceSpec<'a> {
        InstanceSpec {
            id: "t-1",
            program,
            program_prefix: None,
            args: args.iter().map(OsString::from).collect(),
            env: vec![("PATH".into(), "/usr/bin:/bin".into())],
            runtime_dir: code,
            code_dir: Some(code),
            memory_mb: 128,
            network: NetMode::Loopback,
            background: false,
        }
    }

    #[tokio::test]
    async fn child_gets_socket_on_fd3_and_dies_with_its_group() {
        let sb = plain();
        let tmp = std::env::temp_dir();
        let s = spec(
            Path::new("/bin/sh"),
            &["-c", "read x <&3; echo \"got $x\" >&3; sleep 60 & wait"],
            &tmp,
        );
        let (mut sandbox, io) = sb.spawn(&s).unwrap();
        let mut sock = io.socket;
        sock.write_all(b"ping\n").unwrap();
        let mut buf = [0u8; 9];
        sock.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"got ping\n");
        sandbox.kill();
        let exit = sandbox.wait().await;
        assert_eq!(exit.describe(), "killed by signal 9 (SIGKILL)");
        assert!(!exit.oom_killed);
    }

    #[tokio::test]
    async fn environment_is_not_inherited() {
        std::env::set_var("LAMPYR_SECRET_FOR_TEST", "x");
        let sb = plain();
        let tmp = std::env::temp_dir();
        let mut s = spec(Path::new("/usr/bin/env"), &[], &tmp);
        s.env = vec![("ONLY".into(), "this".into())];
        let (mut sandbox, mut io) = sb.spawn(&s).unwrap();
        let mut out = String::new();
        tokio::io::AsyncReadExt::read_to_string(&mut io.stdout, &mut out)
            .await
            .unwrap();
        sandbox.wait().await;
        assert_eq!(out.trim(), "ONLY=this");
    }

    #[test]
    fn off_mode_reports_namespaces_off() {
        let sb = plain();
        assert!(!sb.is_jailed());
        assert!(sb
            .features()
            .iter()
            .any(|f| f.name == "namespaces" && !f.enabled));
        assert_eq!(sb.guest_task_root(Path::new("/x")), Path::new("/x"));
    }

    #[test]
    fn tags_and_names_are_safe() {
        assert_eq!(path_tag(Path::new("/a")), path_tag(Path::new("/a")));
        assert_ne!(path_tag(Path::new("/a")), path_tag(Path::new("/b")));
        assert_eq!(cgroup_name("my.fn/1"), "my_fn_1");
    }
}
