//! The sandbox init (`lampyr-init`, or `lampyr __sandbox-init`): the first
//! process of every jailed instance.
//!
//! The host starts it with the protocol socket as stdin and passes the
//! [`JailSpec`] in the environment. It:
//!
//! 1. moves the socket to fd 3, makes its own session, dies with the
//!    server (`PR_SET_PDEATHSIG`) and forbids core dumps: the set-up a
//!    plain process gets between fork and exec, done here so that the host
//!    can start this process with `posix_spawn`;
//! 2. joins the instance's cgroups, so everything it starts is counted;
//! 3. protects itself from the OOM killer (the runtime is the one to kill);
//! 4. joins the network namespace the host made for it (sent with
//!    SANDBOX_GO), if any, then `unshare`s the mount, PID, IPC, UTS, cgroup
//!    and (for a loopback-only network) network namespaces;
//! 5. forks: the child is PID 1 of the new PID namespace. It builds the
//!    jail ([`crate::jail::enter`]), forks the runtime (PID 2, so signals
//!    and orphans behave as on any Linux host), reaps orphans, and exits
//!    when the runtime does, passing on its wait status. This process stays
//!    outside, waits, and exits the same way as the runtime, so the host
//!    reads the runtime's own end. When PID 1 goes, the kernel kills every
//!    other process of the namespace.
//!
//! Failures before `exec` reach the host as a SANDBOX_ERROR frame.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;

use nix::fcntl::OFlag;
use nix::sched::{unshare, CloneFlags};
use nix::sys::signal::{kill, signal, SigHandler, Signal};
use nix::unistd::{fork, getpid, ForkResult, Pid};

use crate::jail::{self, JailSpec};
use crate::sys::{send_frame, LinuxSys, FRAME_SANDBOX_ERROR};

/// The argument that selects this entry point in the `lampyr` binary.
pub const INIT_ARG: &str = "__sandbox-init";
/// The dedicated executable with only this entry point, installed beside
/// `lampyr` (see [`crate::default_init_exe`]).
pub const INIT_EXE: &str = "lampyr-init";
/// The argument that makes an init print its [`BUILD_ID`] and exit.
pub const BUILD_ID_ARG: &str = "--build-id";

/// Identifies the sandbox code an init was built from: a hash of the
/// sources that define the jail specification and what the init does with
/// it. The server uses a `lampyr-init` only if its id is the server's own,
/// so a stale one (say, left by an earlier build) is never given a
/// specification it does not understand.
pub const BUILD_ID: u64 = {
    const fn fnv1a(mut h: u64, bytes: &[u8]) -> u64 {
        let mut i = 0;
        while i < bytes.len() {
            h ^= bytes[i] as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
            i += 1;
        }
        h
    }
    let mut h = 0xcbf2_9ce4_8422_2325;
    h = fnv1a(h, env!("CARGO_PKG_VERSION").as_bytes());
    h = fnv1a(h, include_bytes!("init.rs"));
    h = fnv1a(h, include_bytes!("jail.rs"));
    h = fnv1a(h, include_bytes!("sys.rs"));
    h = fnv1a(h, include_bytes!("seccomp.rs"));
    fnv1a(h, include_bytes!("seccomp.json"))
};
/// `INIT_ARG --reap PID FD`: what a zygote's helper execs once it has forked
/// an instance into its sandbox: it waits for the instance (its child) and
/// writes the raw wait status to `FD`, which the sandbox's PID 1 reads
/// ([`adopt_and_wait`]). A small process instead of the interpreter's
/// copy-on-write pages for each instance's lifetime.
pub const REAP_ARG: &str = "--reap";

/// The environment variable carrying the JSON [`JailSpec`].
pub const SPEC_ENV: &str = "LAMPYR_JAIL_SPEC";

fn fail(msg: &str, code: i32) -> ! {
    send_frame(FRAME_SANDBOX_ERROR, msg.as_bytes());
    eprintln!("lampyr sandbox: {msg}");
    std::process::exit(code)
}

/// Runs the sandbox init; never returns.
pub fn main() -> ! {
    if std::env::args_os().skip(1).any(|a| a == BUILD_ID_ARG) {
        println!("{BUILD_ID:016x}");
        std::process::exit(0);
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [_, flag, pid, fd] = &args[..] {
        if flag == REAP_ARG {
            reap(pid, fd);
        }
    }
    if std::env::var_os(SPEC_ENV).is_none() {
        eprintln!(
            "{INIT_EXE}: the first process of a lampyr instance's sandbox. lampyr starts it, \
             with the sandbox's specification in {SPEC_ENV}, for every sandboxed instance; \
             it is not meant to be run by hand (see docs/sandbox.md)."
        );
        std::process::exit(2);
    }
    take_socket_from_stdin();
    let spec: JailSpec = match std::env::var(SPEC_ENV)
        .map_err(|e| e.to_string())
        .and_then(|s| serde_json::from_str(&s).map_err(|e| e.to_string()))
    {
        Ok(s) => s,
        Err(e) => fail(
            &format!("no valid sandbox specification in {SPEC_ENV}: {e}"),
            125,
        ),
    };
    detach_from_host(spec.host_pid);
    let netns = wait_for_go();
    if spec.network == crate::jail::JailNetwork::Joined {
        let Some(ns) = netns else {
            fail("the host sent no network namespace with SANDBOX_GO", 125);
        };
        if let Err(e) = nix::sched::setns(&ns, CloneFlags::CLONE_NEWNET) {
            fail(
                &format!("joining the instance's network namespace: {e}"),
                125,
            );
        }
    }
    for procs in &spec.cgroup_procs {
        if let Err(e) = std::fs::write(procs, "0") {
            fail(&format!("joining cgroup {}: {e}", procs.display()), 125);
        }
    }
    if spec.mode == crate::jail::JailMode::Zygote {
        zygote(&spec);
    }
    let _ = std::fs::write("/proc/self/oom_score_adj", "-1000");
    let mut flags = CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWPID
        | CloneFlags::CLONE_NEWIPC
        | CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWCGROUP;
    if spec.network == crate::jail::JailNetwork::Loopback {
        flags |= CloneFlags::CLONE_NEWNET;
    }
    if let Err(e) = unshare(flags) {
        fail(&format!("creating namespaces: {e}"), 125);
    }
    // PID 1 reports the runtime's raw wait status through this pipe.
    let (status_r, status_w) = match nix::unistd::pipe2(OFlag::O_CLOEXEC) {
        Ok(p) => p,
        Err(e) => fail(&format!("pipe: {e}"), 125),
    };
    // SAFETY: this process is single-threaded (it was just exec'd and has
    // started no threads), so the child may do anything after fork.
    match unsafe { fork() } {
        Err(e) => fail(&format!("fork: {e}"), 125),
        Ok(ForkResult::Child) => {
            drop(status_r);
            pid1(&spec, status_w)
        }
        Ok(ForkResult::Parent { child }) => {
            drop(status_w);
            // The socket belongs to the runtime; the host sees EOF when it goes.
            let _ = nix::unistd::close(crate::PROTOCOL_FD);
            let pid1_status = wait_for(child);
            let mut raw = [0u8; 4];
            let reported = nix::unistd::read(&status_r, &mut raw).ok() == Some(4);
            let status = if reported {
                i32::from_ne_bytes(raw)
            } else {
                pid1_status
            };
            exit_like(status)
        }
    }
}

/// The zygote: a mount namespace of its own with the jail's filesystem,
/// then the zygote itself in place of this process (its control socket
/// stays at fd 3).
fn zygote(spec: &JailSpec) -> ! {
    let cstr = |b: &[u8]| {
        CString::new(b).unwrap_or_else(|_| fail("a NUL byte in the zygote's command line", 125))
    };
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
    if let Err(e) = unshare(CloneFlags::CLONE_NEWNS) {
        fail(&format!("creating the zygote's mount namespace: {e}"), 125);
    }
    if let Err(e) = jail::enter(&mut LinuxSys, spec) {
        fail(&e.to_string(), 125);
    }
    let e = nix::unistd::execve(&program, &argv, &envp).unwrap_err();
    fail(&format!("exec {}: {e}", spec.program.display()), 126)
}

/// Moves the protocol socket from stdin to fd 3 and puts `/dev/null` on
/// stdin. Exits if there is no socket: nothing can be reported then.
fn take_socket_from_stdin() {
    use std::os::fd::{AsRawFd, BorrowedFd};
    // SAFETY: fd 0 is open for the lifetime of this process (the host gave
    // it); it is only borrowed for the dup.
    let stdin = unsafe { BorrowedFd::borrow_raw(0) };
    // SAFETY: fd 3 is not in use: the host passes only fds 0, 1 and 2 (and
    // 4 for a zygote-forked runtime); dup2 onto it owns it from now on.
    let moved = unsafe { libc::dup2(stdin.as_raw_fd(), crate::PROTOCOL_FD) };
    if moved != crate::PROTOCOL_FD {
        eprintln!("lampyr sandbox: no protocol socket on stdin");
        std::process::exit(125);
    }
    if let Ok(null) = std::fs::File::open("/dev/null") {
        // SAFETY: both descriptors are open; dup2 replaces fd 0.
        unsafe { libc::dup2(null.as_raw_fd(), 0) };
    }
}

/// Waits until the host has made the instance's cgroup and code slot: it
/// sends SANDBOX_GO then, with the instance's network namespace attached
/// when the host made one. Ends quietly if the host closes the socket
/// first (it could not make them, and reports that itself).
fn wait_for_go() -> Option<std::os::fd::OwnedFd> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    use std::os::fd::FromRawFd;
    let mut frame = [0u8; 5];
    let mut got = 0;
    let mut passed = None;
    while got < frame.len() {
        let mut cmsg = nix::cmsg_space!(std::os::fd::RawFd);
        let mut iov = [std::io::IoSliceMut::new(&mut frame[got..])];
        match recvmsg::<()>(
            crate::PROTOCOL_FD,
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Ok(msg) if msg.bytes == 0 => std::process::exit(125),
            Ok(msg) => {
                let n = msg.bytes;
                if let Ok(cmsgs) = msg.cmsgs() {
                    for c in cmsgs {
                        if let ControlMessageOwned::ScmRights(fds) = c {
                            for fd in fds {
                                // SAFETY: the kernel just gave this process
                                // the descriptor; nothing else owns it.
                                let owned = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
                                passed.get_or_insert(owned);
                            }
                        }
                    }
                }
                got += n;
            }
            Err(nix::errno::Errno::EINTR) => {}
            Err(_) => std::process::exit(125),
        }
    }
    if frame != crate::sys::GO_FRAME {
        fail(
            &format!("expected SANDBOX_GO from the host, got {frame:02x?}"),
            125,
        );
    }
    passed
}

/// Leaves the server's session and process group, so that the host can
/// signal the whole instance at once, and ties this process's life to the
/// server's.
fn detach_from_host(host_pid: u32) {
    if let Err(e) = nix::unistd::setsid() {
        fail(&format!("setsid: {e}"), 125);
    }
    if let Err(e) = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL) {
        fail(&format!("parent-death signal: {e}"), 125);
    }
    // The server may have died before the death signal was armed.
    if nix::unistd::getppid().as_raw() as u32 != host_pid {
        std::process::exit(125);
    }
    let _ = nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_CORE, 0, 0);
    // Inherited by the runtime and its threads (see `batch_scheduling`).
    let _ = crate::batch_scheduling();
}

/// Waits for `pid` and returns its raw wait status.
fn wait_for(pid: Pid) -> i32 {
    loop {
        let mut status: libc::c_int = 0;
        // SAFETY: waitpid writes the status of our own child into `status`.
        let r = unsafe { libc::waitpid(pid.as_raw(), &mut status, 0) };
        if r == pid.as_raw() {
            return status;
        }
        if r < 0 && nix::errno::Errno::last() != nix::errno::Errno::EINTR {
            return 125 << 8;
        }
    }
}

/// Ends this process the way a raw wait status says: same exit code, or
/// killed by the same signal, so the host reads the runtime's real end.
fn exit_like(status: i32) -> ! {
    if libc::WIFSIGNALED(status) {
        let sig = libc::WTERMSIG(status);
        if let Ok(sig) = Signal::try_from(sig) {
            // SAFETY: resetting a signal to its default action.
            let _ = unsafe { signal(sig, SigHandler::SigDfl) };
            let _ = kill(getpid(), sig);
        }
        std::process::exit(128 + sig)
    }
    std::process::exit(if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        125
    })
}

/// PID 1 holds no copy of the protocol socket or the log pipes, so the host
/// sees them close when the runtime's processes are gone.
fn release_descriptors() {
    let _ = nix::unistd::close(crate::PROTOCOL_FD);
    if let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        for fd in [0, 1, 2] {
            // SAFETY: dup2 onto the standard descriptors of this process.
            unsafe { libc::dup2(std::os::fd::AsRawFd::as_raw_fd(&null), fd) };
        }
    }
}

/// [`REAP_ARG`]: waits for the child `pid` and writes its raw wait status to
/// the descriptor `fd`.
fn reap(pid: &str, fd: &str) -> ! {
    let (Ok(pid), Ok(fd)) = (pid.parse::<libc::pid_t>(), fd.parse::<std::os::fd::RawFd>()) else {
        eprintln!("{INIT_EXE} {REAP_ARG}: expected a pid and a descriptor");
        std::process::exit(2);
    };
    let status = loop {
        let mut status: libc::c_int = 0;
        // SAFETY: waitpid writes the status of this process's own child into `status`.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r == pid {
            break status;
        }
        if r < 0 && nix::errno::Errno::last() != nix::errno::Errno::EINTR {
            // Not our child (any more): report it killed, as a helper
            // that died without a report would be.
            break libc::SIGKILL;
        }
    };
    // SAFETY: the zygote's helper left `fd` open across exec for exactly this.
    let out = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    let _ = nix::unistd::write(out, &status.to_ne_bytes());
    std::process::exit(0)
}

/// Adopt mode: the runtime is forked by the zygote into this namespace as
/// PID 2. Its parent (the zygote's helper, outside) waits for it and writes
/// its wait status to fd 4. Meanwhile PID 1 reaps the orphans of the
/// namespace; it ends when the status arrives (or the helper is gone).
fn adopt_and_wait(status_w: &std::os::fd::OwnedFd) -> ! {
    use std::os::fd::{AsFd, BorrowedFd};
    // SAFETY: fd 4 was placed here by the host for exactly this purpose.
    let adopt = unsafe { BorrowedFd::borrow_raw(crate::ADOPT_STATUS_FD) };
    let mut raw = [0u8; 4];
    let mut got = 0;
    loop {
        let mut fds = [nix::poll::PollFd::new(
            adopt.as_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        let _ = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(1000u16));
        loop {
            let mut status: libc::c_int = 0;
            // SAFETY: waitpid(-1, WNOHANG) reaps any exited child into `status`.
            if unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) } <= 0 {
                break;
            }
        }
        let ready = fds[0].revents().is_some_and(|r| !r.is_empty());
        if !ready {
            continue;
        }
        match nix::unistd::read(adopt, &mut raw[got..]) {
            Ok(0) | Err(_) if got < 4 => {
                // The helper died without a report: the runtime was killed.
                let status = libc::SIGKILL;
                let _ = nix::unistd::write(status_w, &status.to_ne_bytes());
                std::process::exit(0);
            }
            Ok(n) => {
                got += n;
                if got == 4 {
                    let _ = nix::unistd::write(status_w, &raw);
                    std::process::exit(0);
                }
            }
            Err(_) => {}
        }
    }
}

/// PID 1 of the new PID namespace: builds the jail, starts the runtime as
/// its child, reaps every orphan, and ends when the runtime ends.
fn pid1(spec: &JailSpec, status_w: std::os::fd::OwnedFd) -> ! {
    if let Err(e) = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL) {
        fail(&format!("parent-death signal: {e}"), 125);
    }
    let cstr = |b: &[u8]| {
        CString::new(b).unwrap_or_else(|_| fail("a NUL byte in the runtime's command line", 125))
    };
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
    if spec.adopt {
        release_descriptors();
        adopt_and_wait(&status_w);
    }
    // SAFETY: single-threaded, as above.
    let runtime = match unsafe { fork() } {
        Err(e) => fail(&format!("fork: {e}"), 125),
        Ok(ForkResult::Child) => {
            let e = nix::unistd::execve(&program, &argv, &envp).unwrap_err();
            fail(&format!("exec {}: {e}", spec.program.display()), 126)
        }
        Ok(ForkResult::Parent { child }) => child,
    };
    release_descriptors();
    loop {
        let mut status: libc::c_int = 0;
        // SAFETY: waitpid(-1) reaps any child of this process into `status`.
        let r = unsafe { libc::waitpid(-1, &mut status, 0) };
        if r == runtime.as_raw() {
            let _ = nix::unistd::write(&status_w, &status.to_ne_bytes());
            std::process::exit(0);
        }
        if r < 0 && nix::errno::Errno::last() == nix::errno::Errno::ECHILD {
            std::process::exit(125);
        }
    }
}
