//! Setting up the container layer on this host: which isolation features
//! work (namespaces, cgroups, seccomp), the configuration, and the base
//! filesystem layout every jail gets.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;

use crate::cgroup::Cgroups;
use crate::jail::Bind;
use crate::{init, net, seccomp, slots, views, SandboxError, Sandboxer};

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
pub(crate) struct JailSupport {
    pub(crate) root_dir: PathBuf,
    pub(crate) cgroups: Option<Cgroups>,
    /// The compiled seccomp filters ([`seccomp::to_hex`]), compiled once
    /// here; empty where the kernel has no seccomp.
    pub(crate) seccomp: Vec<String>,
    pub(crate) base_binds: Vec<Bind>,
    pub(crate) base_symlinks: Vec<(PathBuf, PathBuf)>,
    pub(crate) slots: Arc<slots::Slots>,
    pub(crate) views: Arc<views::Views>,
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
                zygotes: parking_lot::Mutex::new(Vec::new()),
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
            zygotes: parking_lot::Mutex::new(Vec::new()),
        })
    }
}
