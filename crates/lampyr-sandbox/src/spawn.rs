//! Starting one instance: its jail (or plain process), cgroup, pipes and
//! protocol socket, and the handles the runtime layer keeps on it
//! ([`Sandbox`], [`SandboxControl`], [`SandboxIo`]).

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

use crate::cgroup::{CgroupLimits, InstanceCgroup};
use crate::jail::{Bind, JailSpec};
use crate::{
    batch_scheduling, init, jail, net, slots, sys, views, zygote, JailSupport, SandboxError,
    Sandboxer, ADOPT_STATUS_FD, GUEST_RUNTIME_DIR, GUEST_RUNTIME_PREFIX, GUEST_TASK_ROOT,
    PROTOCOL_FD,
};

/// What one instance runs and with which limits.
#[derive(Debug, Clone)]
pub struct InstanceSpec<'a> {
    pub id: &'a str,
    /// The interpreter; inside a jail it is found at the same path.
    pub program: &'a Path,
    /// The interpreter's installation prefix, made visible when outside `/usr`.
    pub program_prefix: Option<&'a Path>,
    /// Other installation prefixes shown read-only inside a jail: (host
    /// directory, where the instance sees it). A custom runtime sees the
    /// host's interpreters this way.
    pub shared_prefixes: &'a [(PathBuf, PathBuf)],
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
pub(crate) struct JailContents<'a> {
    pub(crate) program: &'a Path,
    pub(crate) program_prefix: Option<&'a Path>,
    pub(crate) shared_prefixes: &'a [(PathBuf, PathBuf)],
    pub(crate) args: &'a [OsString],
    pub(crate) env: &'a [(OsString, OsString)],
    pub(crate) runtime_dir: Option<&'a Path>,
    /// What appears at `/var/task`.
    pub(crate) task: Option<Bind>,
    pub(crate) network: jail::JailNetwork,
    pub(crate) cgroup_procs: Vec<PathBuf>,
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
pub(crate) fn cgroup_name(id: &str) -> String {
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

pub(crate) fn pipe_pair() -> Result<(pipe::Receiver, OwnedFd), SandboxError> {
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
pub(crate) fn spawn_with(
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
pub(crate) fn limit_open_files(n: u64) {
    let nofile = libc::rlimit {
        rlim_cur: n,
        rlim_max: n,
    };
    // SAFETY: setrlimit reads a valid rlimit struct; async-signal-safe.
    unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &nofile) };
}

/// Places `fd` at `target` across exec. Runs between fork and exec.
pub(crate) fn inherit_at(fd: i32, target: i32) -> std::io::Result<()> {
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
pub(crate) fn child_setup(guest_fd: i32) -> std::io::Result<()> {
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

impl Sandboxer {
    /// The jail for a program: the base layout, the program's prefix
    /// (a runtime installed outside `/usr`), its bootstrap, its task
    /// directory at `/var/task`, generated files and the network.
    pub(crate) fn jail_spec(&self, j: &JailSupport, c: JailContents<'_>) -> JailSpec {
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
        for (host, guest) in c.shared_prefixes {
            if host.is_dir() {
                binds.push(Bind::read_only(j.views.of(host), guest, true));
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
                shared_prefixes: spec.shared_prefixes,
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
