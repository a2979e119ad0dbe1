//! Zygotes: a pre-initialised runtime process that forks new instances into
//! sandboxes lampyr has built, instead of lampyr exec'ing a fresh
//! interpreter in each. The program is the runtime's (Python's is
//! `runtimes/python/zygote.py`); this module is the protocol it speaks.
//!
//! The zygote itself runs in a mount namespace of its own that shows the
//! interpreter and the bootstrap exactly where every jail shows them
//! (`/opt/lampyr/runtime`, `/var/runtime`; see [`crate::jail::JailMode`]):
//! whatever it imports before forking has the paths a fresh interpreter in
//! a jail would give it, so an instance forked from it imports what a
//! freshly started one does.
//!
//! The sandbox is built as usual, except that its PID 1 does not start the
//! runtime (adopt mode). Once the jail is ready, [`Adoption::complete`] hands
//! the zygote the sandbox's namespaces, cgroup files, protocol socket and
//! log pipes; the zygote's child joins the cgroup and namespaces, forks the
//! instance (PID 2, adopted by PID 1), which drops to the same uid,
//! capabilities and seccomp filter as a freshly started runtime and runs the
//! bootstrap.

use std::io::{IoSlice, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
use parking_lot::Mutex;

use crate::jail::JailSpec;
use crate::SandboxError;

/// A running zygote.
#[derive(Debug)]
pub struct Zygote {
    ctl: Mutex<StdUnixStream>,
    /// The sandbox init's executable, sent with every request: the
    /// zygote's helper becomes its reaper ([`crate::init::REAP_ARG`]) once
    /// it has forked the instance.
    reaper: std::fs::File,
    child: Mutex<Child>,
    /// The interpreter it runs (its host path); instances of this
    /// program come from it.
    pub program: PathBuf,
}

fn read_msg(s: &mut StdUnixStream) -> std::io::Result<serde_json::Value> {
    let mut hdr = [0u8; 4];
    s.read_exact(&mut hdr)?;
    let mut body = vec![0u8; u32::from_be_bytes(hdr) as usize];
    s.read_exact(&mut body)?;
    serde_json::from_slice(&body).map_err(std::io::Error::other)
}

impl Zygote {
    /// Starts the zygote: `init` builds its filesystem from `spec` and runs
    /// the interpreter there (`spec` says what: `python zygote.py`).
    pub fn start(python: &Path, init: &Path, spec: &JailSpec) -> Result<Zygote, SandboxError> {
        let spawn_err = |source| SandboxError::Spawn {
            program: python.display().to_string(),
            source,
        };
        let reaper = std::fs::File::open(init).map_err(spawn_err)?;
        let (host, guest) = StdUnixStream::pair().map_err(SandboxError::Socket)?;
        let json = serde_json::to_string(spec).expect("jail spec serialises");
        let child = Command::new(init)
            .arg(crate::init::INIT_ARG)
            .env_clear()
            .env(crate::init::SPEC_ENV, json)
            .current_dir("/")
            .stdin(Stdio::from(OwnedFd::from(guest)))
            .stdout(Stdio::null())
            .spawn()
            .map_err(spawn_err)?;
        let mut ctl = host;
        ctl.write_all(&crate::sys::GO_FRAME).map_err(spawn_err)?;
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
            reaper,
            child: Mutex::new(child),
            program: python.to_path_buf(),
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
    /// The instance's cgroup files, which the zygote's child writes itself
    /// into (it sees no `/sys`: they go as descriptors).
    pub(crate) cgroup_procs: Vec<PathBuf>,
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
        for procs in &self.cgroup_procs {
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(procs)
                .map_err(|e| fail(format!("opening {}: {e}", procs.display())))?;
            ns.push(OwnedFd::from(f));
        }
        let fds: Vec<RawFd> = self
            .fds
            .iter()
            .chain(ns.iter())
            .map(|f| f.as_raw_fd())
            .chain([self.zygote.reaper.as_raw_fd()])
            .collect();
        self.zygote.fork(&self.request, &fds).map_err(fail)
    }
}
