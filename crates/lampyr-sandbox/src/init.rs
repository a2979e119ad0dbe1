//! `lampyr __sandbox-init`: the first process of every jailed instance.
//!
//! The host starts it (in the instance's session, with the protocol socket
//! at fd 3) and passes the [`JailSpec`] in the environment. It:
//!
//! 1. joins the instance's cgroups, so everything it starts is counted;
//! 2. protects itself from the OOM killer (the runtime is the one to kill);
//! 3. `unshare`s the mount, PID, IPC, UTS, cgroup and (unless the function
//!    uses the host's) network namespaces;
//! 4. forks: the child is PID 1 of the new PID namespace, builds the jail
//!    ([`crate::jail::enter`]) and `exec`s the runtime; this process stays
//!    outside, waits for it, and exits the same way, so the host sees the
//!    runtime's own exit status. When PID 1 dies, the kernel kills every
//!    other process of the namespace.
//!
//! Failures before `exec` reach the host as a SANDBOX_ERROR frame.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;

use nix::sched::{unshare, CloneFlags};
use nix::sys::signal::{kill, signal, SigHandler, Signal};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, getpid, ForkResult};

use crate::jail::{self, JailSpec};
use crate::sys::{send_frame, LinuxSys, FRAME_SANDBOX_ERROR};

/// The argument that selects this entry point in the `lampyr` binary.
pub const INIT_ARG: &str = "__sandbox-init";
/// The environment variable carrying the JSON [`JailSpec`].
pub const SPEC_ENV: &str = "LAMPYR_JAIL_SPEC";

fn fail(msg: &str, code: i32) -> ! {
    send_frame(FRAME_SANDBOX_ERROR, msg.as_bytes());
    eprintln!("lampyr sandbox: {msg}");
    std::process::exit(code)
}

/// Runs the sandbox init; never returns.
pub fn main() -> ! {
    let spec: JailSpec = match std::env::var(SPEC_ENV).map_err(|e| e.to_string()).and_then(|s| serde_json::from_str(&s).map_err(|e| e.to_string())) {
        Ok(s) => s,
        Err(e) => fail(&format!("no valid sandbox specification in {SPEC_ENV}: {e}"), 125),
    };
    for procs in &spec.cgroup_procs {
        if let Err(e) = std::fs::write(procs, "0") {
            fail(&format!("joining cgroup {}: {e}", procs.display()), 125);
        }
    }
    let _ = std::fs::write("/proc/self/oom_score_adj", "-1000");
    let mut flags = CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWPID
        | CloneFlags::CLONE_NEWIPC
        | CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWCGROUP;
    if spec.private_network {
        flags |= CloneFlags::CLONE_NEWNET;
    }
    if let Err(e) = unshare(flags) {
        fail(&format!("creating namespaces: {e}"), 125);
    }
    // SAFETY: this process is single-threaded (it was just exec'd and has
    // started no threads), so the child may do anything after fork.
    match unsafe { fork() } {
        Err(e) => fail(&format!("fork: {e}"), 125),
        Ok(ForkResult::Child) => run_jailed(&spec),
        Ok(ForkResult::Parent { child }) => {
            // The socket belongs to the runtime; the host sees EOF when it goes.
            let _ = nix::unistd::close(crate::PROTOCOL_FD);
            loop {
                match waitpid(child, None) {
                    Ok(WaitStatus::Exited(_, code)) => std::process::exit(code),
                    Ok(WaitStatus::Signaled(_, sig, _)) => {
                        // Die the same way, so the host reads the real reason.
                        // SAFETY: resetting a signal to its default action.
                        let _ = unsafe { signal(sig, SigHandler::SigDfl) };
                        let _ = kill(getpid(), sig);
                        std::process::exit(128 + sig as i32)
                    }
                    Ok(_) => continue,
                    Err(nix::errno::Errno::EINTR) => continue,
                    Err(_) => std::process::exit(125),
                }
            }
        }
    }
}

fn run_jailed(spec: &JailSpec) -> ! {
    // SAFETY: prctl(PR_SET_PDEATHSIG) takes plain integers.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, Signal::SIGKILL as libc::c_ulong, 0, 0, 0) };
    let cstr = |b: &[u8]| CString::new(b).unwrap_or_else(|_| fail("a NUL byte in the runtime's command line", 125));
    let program = cstr(spec.program.as_os_str().as_bytes());
    let mut argv = vec![program.clone()];
    argv.extend(spec.args.iter().map(|a| cstr(a.as_bytes())));
    let envp: Vec<CString> = spec
        .env
        .iter()
        .map(|(k, v)| {
            let mut kv = k.as_bytes().to_vec();
            kv.push(b'=');
            kv.extend_from_slice(v.as_bytes());
            cstr(&kv)
        })
        .collect();
    if let Err(e) = jail::enter(&mut LinuxSys, spec) {
        fail(&e.to_string(), 125);
    }
    let e = nix::unistd::execve(&program, &argv, &envp).unwrap_err();
    fail(&format!("exec {}: {e}", spec.program.display()), 126)
}
