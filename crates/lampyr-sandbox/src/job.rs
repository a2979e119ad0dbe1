//! One-off jobs: a program run once, to completion, in the same jail as an
//! instance, with a directory of the host writable at `/var/task` and
//! nothing else. Deploy-time preparation of a function's code (Python
//! bytecode) runs this way: unprivileged, without the network, in a cgroup
//! with limits, dying with the server, and able to write only the scratch
//! tree it prepares.
//!
//! The job's uid owns the tree while the job runs (so it can write there),
//! and the server's own uid owns it again afterwards.

use std::ffi::OsString;
use std::io::Read;
use std::os::unix::net::UnixStream as StdUnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

use crate::cgroup::CgroupLimits;
use crate::jail::Bind;
use crate::{cgroup_name, init, JailContents, SandboxError, Sandboxer, GUEST_TASK_ROOT};

/// The most output of a job that is kept (the rest is read and dropped).
const MAX_OUTPUT: usize = 64 * 1024;

/// What a job runs.
#[derive(Debug, Clone)]
pub struct JobSpec<'a> {
    /// Names the job's cgroup.
    pub id: &'a str,
    pub program: &'a Path,
    /// The program's installation prefix, made visible when outside `/usr`.
    pub program_prefix: Option<&'a Path>,
    pub args: Vec<OsString>,
    /// The complete environment; nothing is inherited from the server.
    pub env: Vec<(OsString, OsString)>,
    /// The host directory the job may write, at `/var/task` in a jail; it
    /// is also the job's working directory.
    pub task_dir: &'a Path,
    pub memory_mb: u32,
    /// Past this the job is killed.
    pub timeout: Duration,
}

/// How a job ended.
#[derive(Debug)]
pub struct JobOutput {
    /// `None` when it was killed at its timeout.
    pub status: Option<ExitStatus>,
    /// Its standard output and error, interleaved, cut at 64 KiB.
    pub output: String,
    /// The kernel's OOM killer ended it.
    pub oom_killed: bool,
}

impl JobOutput {
    pub fn success(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }
}

impl Sandboxer {
    /// Where a job's task directory is, as the job sees it.
    pub fn guest_job_dir(&self, host: &Path) -> PathBuf {
        self.guest_task_root(host)
    }

    /// Runs a job to completion (or its timeout). Blocking.
    ///
    /// The job dies with the thread that runs this (its parent-death
    /// signal), which waits for it here, and with the server.
    pub fn run_job(&self, spec: &JobSpec<'_>) -> Result<JobOutput, SandboxError> {
        let spawn_err = |program: &Path| {
            let program = program.display().to_string();
            move |source| SandboxError::Spawn { program, source }
        };
        let (out_r, out_w) = std::io::pipe().map_err(SandboxError::Socket)?;
        let Some(j) = &self.jail else {
            let mut cmd = Command::new(spec.program);
            cmd.args(&spec.args)
                .env_clear()
                .envs(spec.env.iter().map(|(k, v)| (k, v)))
                .current_dir(spec.task_dir)
                .stdin(Stdio::null())
                .stdout(out_w.try_clone().map_err(SandboxError::Socket)?)
                .stderr(out_w);
            let (guest, host) = StdUnixStream::pair().map_err(SandboxError::Socket)?;
            let guest_fd = std::os::fd::AsRawFd::as_raw_fd(&guest);
            // SAFETY: only async-signal-safe calls between fork and exec
            // (see `crate::child_setup`).
            unsafe {
                cmd.pre_exec(move || crate::child_setup(guest_fd));
            }
            let child = cmd.spawn().map_err(spawn_err(spec.program))?;
            drop((guest, host));
            drop(cmd);
            return Ok(finish(child, out_r, spec.timeout, None));
        };
        let name = cgroup_name(&format!("job-{}", spec.id));
        let cgroup = match &j.cgroups {
            Some(c) => Some(c.create(
                &name,
                CgroupLimits {
                    memory_mb: spec.memory_mb,
                    pids_max: self.cfg.pids_max,
                    background: true,
                },
            )?),
            None => None,
        };
        let owner = chown_tree(spec.task_dir, self.cfg.uid, self.cfg.gid);
        let jail = self.jail_spec(
            j,
            JailContents {
                program: spec.program,
                program_prefix: spec.program_prefix,
                shared_prefixes: &[],
                args: &spec.args,
                env: &spec.env,
                runtime_dir: None,
                task: Some(Bind {
                    src: spec.task_dir.to_path_buf(),
                    dst: GUEST_TASK_ROOT.into(),
                    is_dir: true,
                    writable: true,
                }),
                network: crate::jail::JailNetwork::Loopback,
                cgroup_procs: cgroup.as_ref().map(|c| c.procs_files()).unwrap_or_default(),
            },
        );
        let mut jail = jail;
        jail.cwd = GUEST_TASK_ROOT.into();
        let json = serde_json::to_string(&jail).expect("jail spec serialises");
        let (host, guest) = StdUnixStream::pair().map_err(SandboxError::Socket)?;
        let mut cmd = Command::new(&self.cfg.init_exe);
        cmd.arg(init::INIT_ARG)
            .env_clear()
            .env(init::SPEC_ENV, json)
            .current_dir("/")
            .stdin(Stdio::from(std::os::fd::OwnedFd::from(guest)))
            .stdout(out_w.try_clone().map_err(SandboxError::Socket)?)
            .stderr(out_w);
        let spawned = cmd.spawn().map_err(spawn_err(&self.cfg.init_exe));
        drop(cmd);
        let result = spawned.map(|child| {
            // The cgroup exists: the init may join it.
            let _ = std::io::Write::write_all(&mut &host, &crate::sys::GO_FRAME);
            let out = finish(child, out_r, spec.timeout, cgroup.as_ref());
            drop(host);
            out
        });
        if let Some(cg) = &cgroup {
            cg.kill_all();
            cg.remove_blocking();
        }
        if let Some((uid, gid)) = owner {
            chown_tree(spec.task_dir, uid, gid);
        }
        result
    }
}

/// Waits for a job's output to end (every process holding the pipe has
/// exited) or its timeout, then reaps it.
fn finish(
    mut child: std::process::Child,
    out: std::io::PipeReader,
    timeout: Duration,
    cgroup: Option<&crate::cgroup::InstanceCgroup>,
) -> JobOutput {
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut kept = Vec::new();
        let mut buf = [0u8; 8192];
        let mut out = out;
        loop {
            match out.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let room = MAX_OUTPUT.saturating_sub(kept.len());
                    kept.extend_from_slice(&buf[..n.min(room)]);
                }
            }
        }
        let _ = tx.send(String::from_utf8_lossy(&kept).into_owned());
    });
    let (output, timed_out) = match rx.recv_timeout(timeout) {
        Ok(o) => (o, false),
        Err(_) => {
            // The job leads its own process group (its session), which
            // reaches what it started outside a jail too.
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::killpg(pid, nix::sys::signal::Signal::SIGKILL);
            let _ = child.kill();
            if let Some(cg) = cgroup {
                cg.kill_all();
            }
            (rx.recv().unwrap_or_default(), true)
        }
    };
    let _ = reader.join();
    let status = child.wait().ok().filter(|_| !timed_out);
    JobOutput {
        status,
        output,
        oom_killed: cgroup.is_some_and(|c| c.oom_kills() > 0),
    }
}

/// Gives every entry of `dir` (links themselves, never what they point
/// to) to `uid`:`gid`; returns the owner `dir` had. Best effort.
fn chown_tree(dir: &Path, uid: u32, gid: u32) -> Option<(u32, u32)> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::symlink_metadata(dir).ok()?;
    let before = (meta.uid(), meta.gid());
    let mut todo = vec![dir.to_path_buf()];
    while let Some(p) = todo.pop() {
        let _ = std::os::unix::fs::lchown(&p, Some(uid), Some(gid));
        let Ok(m) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        if m.is_dir() {
            if let Ok(entries) = std::fs::read_dir(&p) {
                todo.extend(entries.flatten().map(|e| e.path()));
            }
        }
    }
    Some(before)
}
