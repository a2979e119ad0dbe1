//! The container layer: how an instance's process is started, confined and
//! stopped. This is the only crate in lampyr allowed `unsafe` code and raw
//! system calls; every `unsafe` block carries a `// SAFETY:` comment.
//!
//! Today a sandbox is a plain process in its own session and process group,
//! killed with the server (`PR_SET_PDEATHSIG`), with its protocol socket at
//! fd 3 and its stdout and stderr on pipes. [`Sandbox::kill`] signals the
//! whole process group, so a function's own children die with it.
//! [`isolation_report`] tells what confinement the host offers.
#![deny(unsafe_op_in_unsafe_fn)]

use std::ffi::OsString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::process::{Child, ChildStderr, ChildStdout, Command};

/// The file descriptor at which an instance finds its protocol socket.
pub const PROTOCOL_FD: i32 = 3;

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
}

/// What to start inside a sandbox.
#[derive(Debug, Clone)]
pub struct SandboxSpec {
    pub program: PathBuf,
    pub args: Vec<OsString>,
    /// The complete environment; nothing is inherited from the server.
    pub env: Vec<(OsString, OsString)>,
    pub cwd: PathBuf,
}

/// A started sandbox: one process tree with a protocol socket and log pipes.
#[derive(Debug)]
pub struct Sandbox {
    pid: u32,
    child: Child,
    /// Time spent creating the sandbox and starting its first process.
    pub setup: Duration,
}

/// The host's ends of a sandbox's channels, handed out once.
#[derive(Debug)]
pub struct SandboxIo {
    pub socket: StdUnixStream,
    pub stdout: ChildStdout,
    pub stderr: ChildStderr,
}

impl Sandbox {
    /// Starts `spec.program` in a new sandbox.
    pub fn spawn(spec: &SandboxSpec) -> Result<(Sandbox, SandboxIo), SandboxError> {
        let started = Instant::now();
        let (host, guest) = StdUnixStream::pair().map_err(SandboxError::Socket)?;
        let guest: OwnedFd = guest.into();
        let guest_fd = guest.as_raw_fd();

        let mut cmd = Command::new(&spec.program);
        cmd.args(&spec.args)
            .env_clear()
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .current_dir(&spec.cwd)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        // SAFETY: the closure runs in the forked child before exec and only
        // calls async-signal-safe functions (dup2, fcntl, setsid, prctl,
        // getppid, _exit); it allocates nothing and touches no locks.
        unsafe {
            cmd.pre_exec(move || child_setup(guest_fd));
        }
        let child = cmd.spawn().map_err(|source| SandboxError::Spawn {
            program: spec.program.display().to_string(),
            source,
        })?;
        drop(guest);
        let pid = child.id().unwrap_or(0);
        let mut child = child;
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().expect("stderr is piped");
        Ok((
            Sandbox {
                pid,
                child,
                setup: started.elapsed(),
            },
            SandboxIo {
                socket: host,
                stdout,
                stderr,
            },
        ))
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Kills every process of the sandbox. Safe to call more than once.
    pub fn kill(&self) {
        if self.pid != 0 {
            // The instance leads its own process group (setsid), so this
            // reaches the function's children too.
            let _ = killpg(Pid::from_raw(self.pid as i32), Signal::SIGKILL);
        }
    }

    /// Waits for the sandbox's main process to exit.
    pub async fn wait(&mut self) -> std::io::Result<ExitStatus> {
        self.child.wait().await
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.kill();
    }
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
    // Die with the server, whatever way it exits.
    // SAFETY: prctl(PR_SET_PDEATHSIG) takes plain integers.
    if unsafe {
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        )
    } < 0
    {
        return Err(std::io::Error::last_os_error());
    }
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

/// One confinement feature and whether this host uses it.
#[derive(Debug, Clone)]
pub struct Feature {
    pub name: &'static str,
    pub enabled: bool,
    pub detail: String,
}

/// Which cgroup hierarchy the host mounts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupVersion {
    V1,
    V2,
    None,
}

/// Detects the cgroup hierarchy at `/sys/fs/cgroup`.
pub fn detect_cgroups() -> CgroupVersion {
    let root = std::path::Path::new("/sys/fs/cgroup");
    if root.join("cgroup.controllers").exists() {
        CgroupVersion::V2
    } else if root.join("memory").is_dir() {
        CgroupVersion::V1
    } else {
        CgroupVersion::None
    }
}

/// What confinement instances get on this host.
pub fn isolation_report() -> Vec<Feature> {
    let cg = detect_cgroups();
    vec![
        Feature {
            name: "process-group",
            enabled: true,
            detail: "each instance runs in its own session; killing it kills its children".into(),
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
        Feature {
            name: "namespaces",
            enabled: false,
            detail: "instances share the host's mount, pid, network, ipc and uts namespaces".into(),
        },
        Feature {
            name: "cgroups",
            enabled: false,
            detail: format!(
                "host hierarchy: {}; per-instance memory, cpu and pids limits are not applied",
                match cg {
                    CgroupVersion::V1 => "cgroup v1",
                    CgroupVersion::V2 => "cgroup v2",
                    CgroupVersion::None => "none found",
                }
            ),
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[tokio::test]
    async fn child_gets_socket_on_fd3_and_dies_with_its_group() {
        let spec = SandboxSpec {
            program: "/bin/sh".into(),
            // Echo one line back over fd 3, then start a grandchild and wait.
            args: vec![
                "-c".into(),
                "read x <&3; echo \"got $x\" >&3; sleep 60 & wait".into(),
            ],
            env: vec![("PATH".into(), "/usr/bin:/bin".into())],
            cwd: "/".into(),
        };
        let (mut sb, io) = Sandbox::spawn(&spec).unwrap();
        let mut sock = io.socket;
        sock.write_all(b"ping\n").unwrap();
        let mut buf = [0u8; 9];
        sock.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"got ping\n");
        sb.kill();
        let status = sb.wait().await.unwrap();
        assert_eq!(describe_exit(&status), "killed by signal 9 (SIGKILL)");
    }

    #[test]
    fn environment_is_not_inherited() {
        std::env::set_var("LAMPYR_SECRET_FOR_TEST", "x");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let spec = SandboxSpec {
                program: "/usr/bin/env".into(),
                args: vec![],
                env: vec![("ONLY".into(), "this".into())],
                cwd: "/".into(),
            };
            let (mut sb, mut io) = Sandbox::spawn(&spec).unwrap();
            let mut out = String::new();
            tokio::io::AsyncReadExt::read_to_string(&mut io.stdout, &mut out)
                .await
                .unwrap();
            sb.wait().await.unwrap();
            assert_eq!(out.trim(), "ONLY=this");
        });
    }
}
