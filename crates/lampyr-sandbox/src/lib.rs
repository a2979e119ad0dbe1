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
//!
//! `setup` finds out what the host offers and builds the [`Sandboxer`];
//! `spawn` starts one instance and hands back its handles ([`Sandbox`],
//! [`SandboxControl`], [`SandboxIo`]); [`zygote`] forks runtimes into built
//! jails; [`job`] runs one-off jailed jobs.
#![deny(unsafe_op_in_unsafe_fn)]

pub mod cgroup;
pub mod init;
pub mod jail;
pub mod job;
pub mod net;
pub mod seccomp;
mod setup;
pub mod slots;
mod spawn;
pub mod sys;
pub mod views;
pub mod zygote;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub(crate) use setup::JailSupport;
pub use setup::{default_init_exe, Feature, IsolationMode, SandboxConfig};
pub(crate) use spawn::{cgroup_name, child_setup, JailContents};
pub use spawn::{
    describe_exit, ExitInfo, InstanceSpec, NetMode, Sandbox, SandboxControl, SandboxIo,
};
pub use sys::{
    batch_scheduling, caller_cpu_wait, count_as_caller_thread, idle_scheduling,
    take_protocol_socket, uncount_caller_thread, ReadySet, FRAME_SANDBOX_ERROR, FRAME_SANDBOX_GO,
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
/// Where the host's interpreters installed outside `/usr` appear inside a
/// custom runtime's jail: `/opt/lampyr/NAME` (`/opt/lampyr/python`).
pub const GUEST_SHARED_PREFIXES: &str = "/opt/lampyr";

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
    #[error("zygote: {0}")]
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

/// Starts instances with as much isolation as the host allows.
#[derive(Debug)]
pub struct Sandboxer {
    cfg: SandboxConfig,
    jail: Option<JailSupport>,
    features: Vec<Feature>,
    /// Running zygotes, one per program at most.
    zygotes: parking_lot::Mutex<Vec<Arc<zygote::Zygote>>>,
}

/// What [`Sandboxer::start_zygote`] runs.
#[derive(Debug)]
pub struct ZygoteSpec<'a> {
    /// The interpreter, and the prefix it is installed under.
    pub program: &'a Path,
    pub prefix: &'a Path,
    /// The host directory shown at `/var/runtime` (the zygote's script and
    /// the runtime's bootstrap are there).
    pub runtime_dir: &'a Path,
    /// Its arguments, paths as the jail shows them.
    pub args: Vec<OsString>,
    /// Its environment besides `PATH` and `LANG`.
    pub env: Vec<(OsString, OsString)>,
}

impl Sandboxer {
    /// Starts a zygote (jailed instances only): `spec.program` runs
    /// `spec.args` (its script, under `spec.runtime_dir`) in a jail-shaped
    /// mount namespace and forks instances of that program from then on,
    /// instead of their being exec'd (see [`zygote`]).
    pub fn start_zygote(&self, spec: &ZygoteSpec<'_>) -> Result<(), SandboxError> {
        let Some(j) = &self.jail else {
            return Ok(());
        };
        let mut env: Vec<(OsString, OsString)> = vec![
            ("PATH".into(), "/usr/local/bin:/usr/bin:/bin".into()),
            ("LANG".into(), "C.UTF-8".into()),
        ];
        env.extend(spec.env.iter().cloned());
        let mut jail_spec = self.jail_spec(
            j,
            JailContents {
                program: spec.program,
                program_prefix: Some(spec.prefix),
                shared_prefixes: &[],
                args: &spec.args,
                env: &env,
                runtime_dir: Some(spec.runtime_dir),
                task: None,
                network: jail::JailNetwork::Host,
                cgroup_procs: Vec::new(),
            },
        );
        jail_spec.mode = jail::JailMode::Zygote;
        let z = zygote::Zygote::start(spec.program, &self.cfg.init_exe, &jail_spec)?;
        let mut zygotes = self.zygotes.lock();
        zygotes.retain(|old| old.program != spec.program);
        zygotes.push(Arc::new(z));
        Ok(())
    }

    /// The zygote to use for `program`, if there is a live one.
    fn zygote_for(&self, program: &Path) -> Option<Arc<zygote::Zygote>> {
        let mut zygotes = self.zygotes.lock();
        let i = zygotes.iter().position(|z| z.program == program)?;
        if !zygotes[i].alive() {
            tracing::warn!(
                program = %program.display(),
                "a zygote died; its runtime's instances are started from scratch"
            );
            zygotes.remove(i);
            return None;
        }
        Some(zygotes[i].clone())
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
}

/// Where PID 1 of an adopting sandbox reads its runtime's wait status.
pub(crate) const ADOPT_STATUS_FD: i32 = 4;

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
            shared_prefixes: &[],
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
