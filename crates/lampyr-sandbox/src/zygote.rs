//! The Python zygote (`zygote/zygote.py`): a pre-initialised Python process
//! that forks new Python instances into sandboxes lampyr has built, instead
//! of lampyr exec'ing a fresh interpreter in each.
//!
//! The sandbox is built as usual, except that its PID 1 does not start the
//! runtime (adopt mode). Once the jail is ready, [`Adoption::complete`] hands
//! the zygote the sandbox's namespaces, protocol socket and log pipes; the
//! zygote's child joins the cgroup and namespaces, forks the instance (PID 2,
//! adopted by PID 1), which drops to the same uid, capabilities and seccomp
//! filter as a freshly started runtime and runs the bootstrap.

use std::io::{IoSlice, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
use parking_lot::Mutex;

use crate::SandboxError;

/// The zygote's source; lampyr writes it next to the Python bootstrap.
pub const SCRIPT: &str = include_str!("../zygote/zygote.py");

/// A running zygote.
#[derive(Debug)]
pub struct Zygote {
    ctl: Mutex<StdUnixStream>,
    child: Mutex<Child>,
    /// The interpreter it runs; instances of this program come from it.
    pub program: PathBuf,
    /// That interpreter's installation prefix on the host.
    pub prefix: PathBuf,
}

fn read_msg(s: &mut StdUnixStream) -> std::io::Result<serde_json::Value> {
    let mut hdr = [0u8; 4];
    s.read_exact(&mut hdr)?;
    let mut body = vec![0u8; u32::from_be_bytes(hdr) as usize];
    s.read_exact(&mut body)?;
    serde_json::from_slice(&body).map_err(std::io::Error::other)
}

impl Zygote {
    /// Starts `python script` as a zygote that has imported `bootstrap`.
    pub fn start(
        python: &Path,
        prefix: &Path,
        script: &Path,
        bootstrap: &Path,
    ) -> Result<Zygote, SandboxError> {
        let spawn_err = |source| SandboxError::Spawn {
            program: python.display().to_string(),
            source,
        };
        let (host, guest) = StdUnixStream::pair().map_err(SandboxError::Socket)?;
        let guest: OwnedFd = guest.into();
        let guest_fd = guest.as_raw_fd();
        let mut cmd = Command::new(python);
        cmd.args(["-s", "-B"])
            .arg(script)
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("LANG", "C.UTF-8")
            .env("LAMPYR_BOOTSTRAP", bootstrap)
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        // SAFETY: as for every instance (see `crate::child_setup`): only
        // async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(move || crate::child_setup(guest_fd));
        }
        let child = cmd.spawn().map_err(spawn_err)?;
        drop(guest);
        let mut ctl = host;
        ctl.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .map_err(spawn_err)?;
        let ready = read_msg(&mut ctl).map_err(spawn_err)?;
        if ready.get("ready") != Some(&serde_json::Value::Bool(true)) {
            return Err(spawn_err(std::io::Error::other(format!(
                "unexpected greeting {ready}"
            ))));
        }
        Ok(Zygote {
            ctl: Mutex::new(ctl),
            child: Mutex::new(child),
            program: python.to_path_buf(),
            prefix: prefix.to_path_buf(),
        })
    }

    /// Asks for one instance; returns its host pid.
    fn fork(&self, req: &serde_json::Value, fds: &[RawFd]) -> Result<u32, String> {
        let body = serde_json::to_vec(req).expect("request serialises");
        let hdr = (body.len() as u32).to_be_bytes();
        let mut ctl = self.ctl.lock();
        let iov = [IoSlice::new(&hdr), IoSlice::new(&body)];
        let cmsg = [ControlMessage::ScmRights(fds)];
        let sent = sendmsg::<()>(ctl.as_raw_fd(), &iov, &cmsg, MsgFlags::empty(), None)
            .map_err(|e| e.to_string())?;
        if sent < hdr.len() + body.len() {
            ctl.write_all(&[&hdr[..], &body[..]].concat()[sent..])
                .map_err(|e| e.to_string())?;
        }
        let answer = match read_msg(&mut ctl) {
            Ok(a) => a,
            Err(e) => {
                // Its state is unknown now: stop it, Python instances then
                // start from scratch.
                let _ = self.child.lock().kill();
                return Err(format!("the zygote did not answer: {e}"));
            }
        };
        match answer.get("pid").and_then(|p| p.as_u64()) {
            Some(pid) => Ok(pid as u32),
            None => Err(answer
                .get("error")
                .and_then(|e| e.as_str())
                .unwrap_or("unknown error")
                .to_string()),
        }
    }

    /// True while the zygote process is alive.
    pub fn alive(&self) -> bool {
        matches!(self.child.lock().try_wait(), Ok(None))
    }
}

impl Drop for Zygote {
    fn drop(&mut self) {
        let mut c = self.child.lock();
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// A sandbox waiting for its runtime from the zygote.
#[derive(Debug)]
pub struct Adoption {
    pub(crate) zygote: Arc<Zygote>,
    /// The sandbox's first process on the host (PID 1's parent).
    pub(crate) outer_pid: u32,
    /// Protocol socket, stdout and stderr ends for the instance.
    pub(crate) fds: Vec<OwnedFd>,
    pub(crate) request: serde_json::Value,
}

impl Adoption {
    /// Has the zygote fork the runtime into the sandbox. Call once the
    /// sandbox has reported SANDBOX_READY. Blocking: run it off the async
    /// executor.
    pub fn complete(self) -> Result<u32, SandboxError> {
        let fail = |m: String| SandboxError::Zygote(m);
        let children =
            std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", self.outer_pid))
                .map_err(|e| fail(format!("finding the sandbox's PID 1: {e}")))?;
        let pid1: u32 = children
            .split_whitespace()
            .next()
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| fail("the sandbox's PID 1 is gone".into()))?;
        let mut ns = Vec::new();
        for name in ["cgroup", "ipc", "uts", "net", "pid", "mnt"] {
            let f = std::fs::File::open(format!("/proc/{pid1}/ns/{name}"))
                .map_err(|e| fail(format!("opening the sandbox's {name} namespace: {e}")))?;
            ns.push(OwnedFd::from(f));
        }
        let fds: Vec<RawFd> = self
            .fds
            .iter()
            .chain(ns.iter())
            .map(|f| f.as_raw_fd())
            .collect();
        self.zygote.fork(&self.request, &fds).map_err(fail)
    }
}
