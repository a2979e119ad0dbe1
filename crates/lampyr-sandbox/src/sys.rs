//! The real system calls behind [`crate::jail::Sys`].

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::resource::{setrlimit, Resource};

use crate::jail::{JailError, JailResult, MountKind, Sys};

/// The instance-protocol frame a sandbox sends when it is built.
pub const FRAME_SANDBOX_READY: u8 = 0x06;
/// The instance-protocol frame a sandbox sends when building it failed.
pub const FRAME_SANDBOX_ERROR: u8 = 0x05;
/// The instance-protocol frame the host sends a sandbox init once the
/// instance's cgroup and code slot exist.
pub const FRAME_SANDBOX_GO: u8 = 0x07;
/// SANDBOX_GO as it is sent: length 1, the type, no payload.
pub const GO_FRAME: [u8; 5] = [0, 0, 0, 1, FRAME_SANDBOX_GO];

fn err(step: &'static str, path: Option<&Path>) -> impl FnOnce(nix::Error) -> JailError {
    let path = path.map(Path::to_path_buf);
    move |e| JailError {
        step,
        path,
        source: std::io::Error::from(e),
    }
}

fn ioerr(step: &'static str, path: Option<&Path>) -> impl FnOnce(std::io::Error) -> JailError {
    let path = path.map(Path::to_path_buf);
    move |source| JailError { step, path, source }
}

/// Sends SANDBOX_GO on the host's end of an instance socket with `fd`
/// attached (the instance's network namespace). A failure means the init
/// is gone; the instance then reports that, as for any init that dies.
pub(crate) fn send_go_with(socket: &std::os::unix::net::UnixStream, fd: &OwnedFd) {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    let fds = [fd.as_raw_fd()];
    let iov = [std::io::IoSlice::new(&GO_FRAME)];
    let _ = sendmsg::<()>(
        socket.as_raw_fd(),
        &iov,
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    );
}

/// Writes one protocol frame to the host on fd 3.
pub fn send_frame(kind: u8, payload: &[u8]) {
    let mut frame = Vec::with_capacity(5 + payload.len());
    frame.extend_from_slice(&((payload.len() + 1) as u32).to_be_bytes());
    frame.push(kind);
    frame.extend_from_slice(payload);
    let _ = nix::unistd::write(
        // SAFETY: fd 3 is the protocol socket this process inherited; it is
        // only borrowed for this write.
        unsafe { std::os::fd::BorrowedFd::borrow_raw(crate::PROTOCOL_FD) },
        &frame,
    );
}

/// Takes the protocol socket this process inherited on fd 3 (an
/// instance's runtime written in Rust, e.g. the Runtime API shim). Only
/// the first call gets it; it must be a Unix stream socket. It is made
/// close-on-exec: programs the runtime starts do not inherit it.
pub fn take_protocol_socket() -> std::io::Result<std::os::unix::net::UnixStream> {
    use std::sync::atomic::{AtomicBool, Ordering};
    static TAKEN: AtomicBool = AtomicBool::new(false);
    if TAKEN.swap(true, Ordering::SeqCst) {
        return Err(std::io::Error::other(
            "the protocol socket was already taken",
        ));
    }
    // SAFETY: fd 3 is only borrowed here, to check what it is.
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(crate::PROTOCOL_FD) };
    let st = nix::sys::stat::fstat(fd).map_err(std::io::Error::from)?;
    if st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        return Err(std::io::Error::other(format!(
            "fd {} is not the protocol socket (is this running in a lampyr instance?)",
            crate::PROTOCOL_FD
        )));
    }
    // SAFETY: fd 3 is open (fstat succeeded), a socket, and owned by
    // nothing else in this process: TAKEN hands it out once.
    let sock = unsafe { std::os::unix::net::UnixStream::from_raw_fd(crate::PROTOCOL_FD) };
    use nix::fcntl::{fcntl, FcntlArg, FdFlag};
    fcntl(&sock, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).map_err(std::io::Error::from)?;
    Ok(sock)
}

/// Remounts a bind mount read-only, without set-uid programs or devices.
pub(crate) const READ_ONLY_REMOUNT: MsFlags = MsFlags::MS_REMOUNT
    .union(MsFlags::MS_BIND)
    .union(MsFlags::MS_RDONLY)
    .union(MsFlags::MS_NOSUID)
    .union(MsFlags::MS_NODEV);

/// The Linux implementation.
pub struct LinuxSys;

impl Sys for LinuxSys {
    fn mount(&mut self, src: Option<&Path>, target: &Path, kind: MountKind) -> JailResult {
        let none: Option<&str> = None;
        let r = match kind {
            MountKind::SlaveRecursive => mount(
                none,
                target,
                none,
                MsFlags::MS_REC | MsFlags::MS_SLAVE,
                none,
            ),
            MountKind::Private => mount(none, target, none, MsFlags::MS_PRIVATE, none),
            MountKind::Tmpfs {
                size_kb,
                mode,
                noexec,
            } => {
                let mut flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
                if noexec {
                    flags |= MsFlags::MS_NOEXEC;
                }
                let data = format!("size={size_kb}k,mode={mode:o}");
                mount(
                    Some("tmpfs"),
                    target,
                    Some("tmpfs"),
                    flags,
                    Some(data.as_str()),
                )
            }
            MountKind::Proc => mount(
                Some("proc"),
                target,
                Some("proc"),
                MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
                none,
            ),
            MountKind::BindRecursive => {
                mount(src, target, none, MsFlags::MS_BIND | MsFlags::MS_REC, none)
            }
            MountKind::RemountReadOnly => mount(none, target, none, READ_ONLY_REMOUNT, none),
            MountKind::RemountNoSuid => mount(
                none,
                target,
                none,
                MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
                none,
            ),
        };
        r.map_err(err("mount", Some(target)))
    }

    fn mkdir_all(&mut self, path: &Path) -> JailResult {
        std::fs::create_dir_all(path).map_err(ioerr("mkdir", Some(path)))
    }

    fn create_file(&mut self, path: &Path) -> JailResult {
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map(drop)
            .map_err(ioerr("create mount point", Some(path)))
    }

    fn write_file(&mut self, path: &Path, content: &str) -> JailResult {
        std::fs::write(path, content).map_err(ioerr("write file", Some(path)))
    }

    fn symlink(&mut self, target: &Path, link: &Path) -> JailResult {
        std::os::unix::fs::symlink(target, link).map_err(ioerr("symlink", Some(link)))
    }

    fn pivot_root(&mut self, new_root: &Path) -> JailResult {
        nix::unistd::chdir(new_root).map_err(err("chdir to new root", Some(new_root)))?;
        // pivot_root(".", ".") stacks the old root under the new one; the
        // detach below removes it without needing a directory for it.
        nix::unistd::pivot_root(".", ".").map_err(err("pivot_root", Some(new_root)))?;
        umount2(".", MntFlags::MNT_DETACH).map_err(err("detach old root", None))?;
        nix::unistd::chdir("/").map_err(err("chdir /", None))
    }

    fn sethostname(&mut self, name: &str) -> JailResult {
        nix::unistd::sethostname(name).map_err(err("sethostname", None))
    }

    fn loopback_up(&mut self) -> JailResult {
        let e = |source: std::io::Error| JailError {
            step: "loopback up",
            path: None,
            source,
        };
        // SAFETY: socket() takes plain integers; the result is checked.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(e(std::io::Error::last_os_error()));
        }
        // SAFETY: fd is a new, valid descriptor owned by nobody else.
        let sock = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: ifreq is plain old data; all-zero is a valid value.
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
            *dst = *src as libc::c_char;
        }
        // SAFETY: SIOCGIFFLAGS reads the flags of the interface named in
        // `req` into `req`; the pointer is valid for the call.
        if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } < 0 {
            return Err(e(std::io::Error::last_os_error()));
        }
        // SAFETY: the union field written by SIOCGIFFLAGS is ifru_flags.
        unsafe {
            req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
        }
        // SAFETY: SIOCSIFFLAGS reads `req`, which is valid for the call.
        if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) } < 0 {
            return Err(e(std::io::Error::last_os_error()));
        }
        Ok(())
    }

    fn limit_open_files(&mut self, n: u64) -> JailResult {
        setrlimit(Resource::RLIMIT_NOFILE, n, n).map_err(err("limit open files", None))
    }

    fn disable_core_dumps(&mut self) -> JailResult {
        setrlimit(Resource::RLIMIT_CORE, 0, 0).map_err(err("disable core dumps", None))
    }

    fn reset_oom_score(&mut self) -> JailResult {
        let p = Path::new("/proc/self/oom_score_adj");
        std::fs::write(p, "0").map_err(ioerr("oom_score_adj", Some(p)))
    }

    fn drop_capability_bounding_set(&mut self) -> JailResult {
        let last: libc::c_ulong = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(40);
        for cap in 0..=last {
            // SAFETY: prctl(PR_CAPBSET_DROP, cap) takes plain integers.
            let r = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) };
            if r < 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINVAL) {
                return Err(JailError {
                    step: "drop capability bounding set",
                    path: None,
                    source: std::io::Error::last_os_error(),
                });
            }
        }
        // SAFETY: prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL) takes plain integers.
        unsafe {
            libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_CLEAR_ALL,
                0,
                0,
                0,
            )
        };
        Ok(())
    }

    fn set_ids(&mut self, uid: u32, gid: u32) -> JailResult {
        use nix::unistd::{setgroups, setresgid, setresuid, Gid, Uid};
        let (u, g) = (Uid::from_raw(uid), Gid::from_raw(gid));
        setgroups(&[g]).map_err(err("setgroups", None))?;
        setresgid(g, g, g).map_err(err("setresgid", None))?;
        // Leaving uid 0 for good clears the permitted and effective
        // capability sets as well.
        setresuid(u, u, u).map_err(err("setresuid", None))?;
        if nix::unistd::geteuid().is_root() {
            return Err(JailError {
                step: "setresuid",
                path: None,
                source: std::io::Error::other("still root after dropping privileges"),
            });
        }
        Ok(())
    }

    fn die_with_parent(&mut self) -> JailResult {
        nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
            .map_err(err("parent-death signal", None))
    }

    fn no_new_privs(&mut self) -> JailResult {
        nix::sys::prctl::set_no_new_privs().map_err(err("no_new_privs", None))
    }

    fn seccomp(&mut self, filters: &[String]) -> JailResult {
        let e = |m: String| JailError {
            step: "seccomp",
            path: None,
            source: std::io::Error::other(m),
        };
        for hex in filters {
            let prog = crate::seccomp::from_hex(hex).map_err(|x| e(x.to_string()))?;
            seccompiler::apply_filter(&prog).map_err(|x| e(x.to_string()))?;
        }
        Ok(())
    }

    fn notify_ready(&mut self) -> JailResult {
        send_frame(FRAME_SANDBOX_READY, b"");
        Ok(())
    }

    fn chdir(&mut self, path: &Path) -> JailResult {
        nix::unistd::chdir(path).map_err(err("chdir", Some(path)))
    }
}

/// Puts the calling thread, and the threads and processes it starts later,
/// under the kernel's `SCHED_BATCH` policy: the same share of the CPU as
/// before (same nice value), but its wake-ups never preempt a running task;
/// it runs when the current one blocks or its slice ends.
///
/// Instances run this way: the server's write of a request wakes the
/// instance, and with the default policy the instance would preempt the
/// very thread that is still handling other connections, on every request.
/// As a batch task it picks up what has queued once that thread yields, so
/// both sides run longer and switch less. Lampyr's log writer runs this
/// way too, and the record writer while it is behind. Best effort: a kernel or
/// seccomp policy that refuses it leaves the default in place.
pub fn batch_scheduling() -> std::io::Result<()> {
    set_scheduler(libc::SCHED_BATCH)
}

/// Puts the calling thread under `SCHED_IDLE`: it runs only on CPU time
/// that no other thread wants. For the invocation-record writer, which
/// returns to [`batch_scheduling`] whenever it falls behind.
pub fn idle_scheduling() -> std::io::Result<()> {
    set_scheduler(libc::SCHED_IDLE)
}

/// The threads that serve callers (the server's async workers), whose
/// waits for a CPU [`caller_cpu_wait`] adds up.
static CALLER_THREADS: std::sync::Mutex<Vec<i32>> = std::sync::Mutex::new(Vec::new());

/// Counts the calling thread among those that serve callers, until
/// [`uncount_caller_thread`].
pub fn count_as_caller_thread() {
    let tid = nix::unistd::gettid().as_raw();
    CALLER_THREADS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(tid);
}

/// Stops counting the calling thread (it is about to exit).
pub fn uncount_caller_thread() {
    let tid = nix::unistd::gettid().as_raw();
    CALLER_THREADS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|t| *t != tid);
}

/// How long the threads that serve callers have waited for a CPU while
/// they had work (runnable, not running), added up since they started:
/// the kernel's run delay (`/proc/self/task/TID/schedstat`). `None` when
/// no thread is counted or the kernel does not say.
pub fn caller_cpu_wait() -> Option<std::time::Duration> {
    let tids = CALLER_THREADS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let mut total: u64 = 0;
    let mut any = false;
    for tid in tids {
        let Ok(text) = std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat")) else {
            continue;
        };
        if let Some(wait) = text
            .split_whitespace()
            .nth(1)
            .and_then(|w| w.parse::<u64>().ok())
        {
            total += wait;
            any = true;
        }
    }
    any.then(|| std::time::Duration::from_nanos(total))
}

/// Sets the calling thread's policy to `policy` (one without priorities).
fn set_scheduler(policy: libc::c_int) -> std::io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: sched_setscheduler only reads the valid `param`; pid 0 is the
    // calling thread. A plain system call, async-signal-safe.
    if unsafe { libc::sched_setscheduler(0, policy, &param) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// A set of descriptors whose readability can be checked without sleeping:
/// a level-triggered epoll instance that nothing ever waits on.
pub struct ReadySet {
    ep: std::os::fd::OwnedFd,
}

impl ReadySet {
    pub fn new() -> std::io::Result<ReadySet> {
        // SAFETY: epoll_create1 takes no pointers; a non-negative result is a
        // new descriptor that nothing else owns.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` is the fresh descriptor from above, owned by nothing else.
        let ep = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        Ok(ReadySet { ep })
    }

    /// Adds `fd`, watched for reading. The kernel drops it from the set when
    /// its file is closed.
    pub fn add(&self, fd: std::os::fd::BorrowedFd<'_>) -> std::io::Result<()> {
        use std::os::fd::AsRawFd;
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: 0,
        };
        // SAFETY: both descriptors are open; `ev` is a valid epoll_event.
        let r = unsafe {
            libc::epoll_ctl(
                self.ep.as_raw_fd(),
                libc::EPOLL_CTL_ADD,
                fd.as_raw_fd(),
                &mut ev,
            )
        };
        if r < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// Whether any descriptor in the set has data to read, without waiting.
    pub fn any_ready(&self) -> bool {
        use std::os::fd::AsRawFd;
        let mut ev = libc::epoll_event { events: 0, u64: 0 };
        // SAFETY: room for one event at `ev`; a zero timeout never sleeps.
        unsafe { libc::epoll_wait(self.ep.as_raw_fd(), &mut ev, 1, 0) > 0 }
    }
}
