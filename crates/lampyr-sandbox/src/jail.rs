//! The jail: what an instance's first process does, as PID 1 of its new
//! namespaces, between `fork` and `exec` of the language runtime.
//!
//! [`enter`] is the whole sequence, step by step, against the [`Sys`]
//! trait. [`crate::sys::LinuxSys`] makes the real system calls; the tests use
//! a recording implementation so the order of the steps is checked without
//! privileges. `docs/sandbox.md` describes the same steps in the same order.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// One bind mount into the new root: read-only unless `writable` (a
/// one-off job's scratch tree), always without set-uid programs or devices.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bind {
    pub src: PathBuf,
    /// Absolute path inside the sandbox.
    pub dst: PathBuf,
    pub is_dir: bool,
    #[serde(default)]
    pub writable: bool,
}

impl Bind {
    /// A read-only bind of `src` at `dst`.
    pub fn read_only(src: impl Into<PathBuf>, dst: impl Into<PathBuf>, is_dir: bool) -> Bind {
        Bind {
            src: src.into(),
            dst: dst.into(),
            is_dir,
            writable: false,
        }
    }
}

/// Everything the jail needs, decided by the host before the process starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JailSpec {
    /// An empty host directory; the new root's tmpfs is mounted over it
    /// inside the private mount namespace.
    pub root_dir: PathBuf,
    pub binds: Vec<Bind>,
    /// (link path inside the sandbox, target), e.g. `/bin` → `usr/bin`.
    pub symlinks: Vec<(PathBuf, PathBuf)>,
    /// Generated files, e.g. a minimal `/etc/passwd`.
    pub files: Vec<(PathBuf, String)>,
    pub tmp_mb: u32,
    pub hostname: String,
    pub network: JailNetwork,
    pub uid: u32,
    pub gid: u32,
    pub max_open_files: u64,
    /// The seccomp filters to install, compiled once by the host, each the
    /// hex of its `sock_filter` array ([`crate::seccomp::to_hex`]); empty
    /// for none.
    pub seccomp: Vec<String>,
    /// cgroup files (`tasks` on v1, `cgroup.procs` on v2) the init process
    /// writes `0` into, while single-threaded, before the namespaces are made.
    pub cgroup_procs: Vec<PathBuf>,
    /// The runtime is not exec'd here: the Python zygote forks it into the
    /// finished jail, and PID 1 adopts it.
    #[serde(default)]
    pub adopt: bool,
    /// What the jail is for.
    #[serde(default)]
    pub mode: JailMode,
    /// The server's process id: the init process ends at once if its parent
    /// is no longer the server (the server died while it started).
    pub host_pid: u32,
    pub program: PathBuf,
    pub args: Vec<OsString>,
    pub env: Vec<(OsString, OsString)>,
    pub cwd: PathBuf,
}

/// What a jail holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum JailMode {
    /// An instance: its own namespaces, no privileges, seccomp.
    #[default]
    Instance,
    /// The Python zygote's view of the filesystem: a mount namespace of its
    /// own with the runtime at the same paths as in every instance's jail
    /// (so what it imports before forking resolves the same inside them),
    /// and nothing else of the instance confinement: the zygote keeps the
    /// privileges it needs to confine each instance it forks, and shares
    /// the host's other namespaces (its hostname included: the jail does
    /// not set one).
    Zygote,
}

/// The network namespace a jail lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum JailNetwork {
    /// The host's.
    Host,
    /// A new one, with loopback only (brought up by the jail).
    Loopback,
    /// One the host made (see [`crate::net`]): the init joins it with the
    /// descriptor that comes with SANDBOX_GO.
    Joined,
}

/// The devices an instance gets in `/dev`.
pub const DEVICES: &[&str] = &["null", "zero", "full", "random", "urandom"];

/// A failed step, naming it and the path it concerned.
#[derive(Debug, thiserror::Error)]
#[error("sandbox set-up failed at '{step}'{}: {source}", .path.as_ref().map(|p| format!(" ({})", p.display())).unwrap_or_default())]
pub struct JailError {
    pub step: &'static str,
    pub path: Option<PathBuf>,
    #[source]
    pub source: std::io::Error,
}

pub type JailResult<T = ()> = Result<T, JailError>;

/// Mount options the jail uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MountKind {
    /// Make every mount a slave: nothing done inside flows back to the host.
    SlaveRecursive,
    /// Mount point private to this namespace.
    Private,
    Tmpfs {
        size_kb: u64,
        mode: u32,
        noexec: bool,
    },
    Proc,
    BindRecursive,
    /// Remount a bind read-only, nosuid, nodev.
    RemountReadOnly,
    /// Remount a bind nosuid, nodev, leaving it writable.
    RemountNoSuid,
}

/// The system calls the jail makes, so the sequence can be recorded in tests.
pub trait Sys {
    fn mount(&mut self, src: Option<&Path>, target: &Path, kind: MountKind) -> JailResult;
    fn mkdir_all(&mut self, path: &Path) -> JailResult;
    fn create_file(&mut self, path: &Path) -> JailResult;
    fn write_file(&mut self, path: &Path, content: &str) -> JailResult;
    fn symlink(&mut self, target: &Path, link: &Path) -> JailResult;
    /// `chdir(root)`, `pivot_root(".", ".")`, detach the old root, `chdir("/")`.
    fn pivot_root(&mut self, new_root: &Path) -> JailResult;
    fn sethostname(&mut self, name: &str) -> JailResult;
    fn loopback_up(&mut self) -> JailResult;
    fn limit_open_files(&mut self, n: u64) -> JailResult;
    fn disable_core_dumps(&mut self) -> JailResult;
    fn reset_oom_score(&mut self) -> JailResult;
    fn drop_capability_bounding_set(&mut self) -> JailResult;
    fn set_ids(&mut self, uid: u32, gid: u32) -> JailResult;
    /// Re-arms the parent-death signal, which changing uid clears.
    fn die_with_parent(&mut self) -> JailResult;
    fn no_new_privs(&mut self) -> JailResult;
    fn seccomp(&mut self, filters: &[String]) -> JailResult;
    fn notify_ready(&mut self) -> JailResult;
    fn chdir(&mut self, path: &Path) -> JailResult;
}

fn inside(root: &Path, p: &Path) -> PathBuf {
    root.join(p.strip_prefix("/").unwrap_or(p))
}

/// Builds the sandbox's world and drops every privilege, in this order:
///
/// 1. mount propagation: make every mount a slave;
/// 2. the new root: a small tmpfs over `root_dir`, private;
/// 3. binds, read-only, of what the runtime needs (`/usr`, the runtime's
///    prefix, `/var/runtime`, the function's code at `/var/task`, a few
///    files of `/etc`), and the usual top-level symlinks;
/// 4. generated files (`/etc/passwd`, `/etc/group`, `/etc/hosts`, …);
/// 5. `/dev`: a tmpfs with only null, zero, full, random and urandom;
/// 6. `/tmp`: a writable tmpfs of `tmp_mb`;
/// 7. `/proc` for the new PID namespace;
/// 8. `pivot_root` into the new root and detach the old one;
/// 9. the root itself read-only;
/// 10. hostname, and loopback up in a new network namespace (one the
///     host made has it up already);
/// 11. resource limits: open files, no core dumps, default OOM score;
/// 12. privileges: empty capability bounding set, unprivileged uid/gid
///     (then the parent-death signal again, which the uid change cleared),
///     `no_new_privs`;
/// 13. the seccomp filter (last: it forbids the mounts above);
/// 14. tell the host the sandbox is ready, `chdir` to the working directory.
///
/// The caller then `exec`s the runtime.
///
/// For the zygote ([`JailMode::Zygote`]) the sequence ends after step 9:
/// the same filesystem, none of the rest.
pub fn enter(sys: &mut dyn Sys, spec: &JailSpec) -> JailResult {
    let root = spec.root_dir.as_path();
    sys.mount(None, Path::new("/"), MountKind::SlaveRecursive)?;

    sys.mount(
        None,
        root,
        MountKind::Tmpfs {
            size_kb: 1024,
            mode: 0o755,
            noexec: false,
        },
    )?;
    sys.mount(None, root, MountKind::Private)?;

    for b in &spec.binds {
        let dst = inside(root, &b.dst);
        if b.is_dir {
            sys.mkdir_all(&dst)?;
        } else {
            if let Some(parent) = dst.parent() {
                sys.mkdir_all(parent)?;
            }
            sys.create_file(&dst)?;
        }
        sys.mount(Some(&b.src), &dst, MountKind::BindRecursive)?;
        let remount = if b.writable {
            MountKind::RemountNoSuid
        } else {
            MountKind::RemountReadOnly
        };
        sys.mount(None, &dst, remount)?;
    }
    for (link, target) in &spec.symlinks {
        sys.symlink(target, &inside(root, link))?;
    }

    for (path, content) in &spec.files {
        let dst = inside(root, path);
        if let Some(parent) = dst.parent() {
            sys.mkdir_all(parent)?;
        }
        sys.write_file(&dst, content)?;
    }

    let dev = inside(root, Path::new("/dev"));
    sys.mkdir_all(&dev)?;
    sys.mount(
        None,
        &dev,
        MountKind::Tmpfs {
            size_kb: 64,
            mode: 0o755,
            noexec: true,
        },
    )?;
    for d in DEVICES {
        let node = dev.join(d);
        sys.create_file(&node)?;
        sys.mount(
            Some(&Path::new("/dev").join(d)),
            &node,
            MountKind::BindRecursive,
        )?;
    }
    for (name, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        sys.symlink(Path::new(target), &dev.join(name))?;
    }

    let tmp = inside(root, Path::new("/tmp"));
    sys.mkdir_all(&tmp)?;
    sys.mount(
        None,
        &tmp,
        MountKind::Tmpfs {
            size_kb: u64::from(spec.tmp_mb) * 1024,
            mode: 0o1777,
            noexec: false,
        },
    )?;

    let proc_dir = inside(root, Path::new("/proc"));
    sys.mkdir_all(&proc_dir)?;
    sys.mount(None, &proc_dir, MountKind::Proc)?;

    sys.pivot_root(root)?;
    sys.mount(None, Path::new("/"), MountKind::RemountReadOnly)?;

    if spec.mode == JailMode::Zygote {
        sys.disable_core_dumps()?;
        return sys.chdir(&spec.cwd);
    }
    sys.sethostname(&spec.hostname)?;
    if spec.network == JailNetwork::Loopback {
        sys.loopback_up()?;
    }

    sys.limit_open_files(spec.max_open_files)?;
    sys.disable_core_dumps()?;
    sys.reset_oom_score()?;

    sys.drop_capability_bounding_set()?;
    sys.set_ids(spec.uid, spec.gid)?;
    sys.die_with_parent()?;
    sys.no_new_privs()?;
    if !spec.seccomp.is_empty() {
        sys.seccomp(&spec.seccomp)?;
    }
    sys.notify_ready()?;
    sys.chdir(&spec.cwd)?;
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Records every call instead of making it.
    #[derive(Default)]
    pub struct Recorder {
        pub calls: Vec<String>,
        pub fail_at: Option<&'static str>,
    }

    impl Recorder {
        fn rec(&mut self, call: String, step: &'static str) -> JailResult {
            self.calls.push(call);
            if self.fail_at == Some(step) {
                return Err(JailError {
                    step,
                    path: None,
                    source: std::io::Error::from_raw_os_error(libc::EPERM),
                });
            }
            Ok(())
        }
        pub fn position(&self, prefix: &str) -> usize {
            self.calls
                .iter()
                .position(|c| c.starts_with(prefix))
                .unwrap_or_else(|| panic!("no call {prefix:?} in {:#?}", self.calls))
        }
    }

    impl Sys for Recorder {
        fn mount(&mut self, src: Option<&Path>, target: &Path, kind: MountKind) -> JailResult {
            self.rec(
                format!(
                    "mount {kind:?} {} -> {}",
                    src.map(|s| s.display().to_string()).unwrap_or_default(),
                    target.display()
                ),
                "mount",
            )
        }
        fn mkdir_all(&mut self, path: &Path) -> JailResult {
            self.rec(format!("mkdir {}", path.display()), "mkdir")
        }
        fn create_file(&mut self, path: &Path) -> JailResult {
            self.rec(format!("touch {}", path.display()), "touch")
        }
        fn write_file(&mut self, path: &Path, _: &str) -> JailResult {
            self.rec(format!("write {}", path.display()), "write")
        }
        fn symlink(&mut self, target: &Path, link: &Path) -> JailResult {
            self.rec(
                format!("symlink {} -> {}", link.display(), target.display()),
                "symlink",
            )
        }
        fn pivot_root(&mut self, new_root: &Path) -> JailResult {
            self.rec(format!("pivot_root {}", new_root.display()), "pivot_root")
        }
        fn sethostname(&mut self, name: &str) -> JailResult {
            self.rec(format!("sethostname {name}"), "sethostname")
        }
        fn loopback_up(&mut self) -> JailResult {
            self.rec("loopback_up".into(), "loopback_up")
        }
        fn limit_open_files(&mut self, n: u64) -> JailResult {
            self.rec(format!("rlimit nofile {n}"), "rlimit")
        }
        fn disable_core_dumps(&mut self) -> JailResult {
            self.rec("rlimit core 0".into(), "rlimit")
        }
        fn reset_oom_score(&mut self) -> JailResult {
            self.rec("oom_score_adj 0".into(), "oom")
        }
        fn drop_capability_bounding_set(&mut self) -> JailResult {
            self.rec("capbset drop".into(), "caps")
        }
        fn set_ids(&mut self, uid: u32, gid: u32) -> JailResult {
            self.rec(format!("setids {uid}:{gid}"), "setids")
        }
        fn die_with_parent(&mut self) -> JailResult {
            self.rec("pdeathsig".into(), "pdeathsig")
        }
        fn no_new_privs(&mut self) -> JailResult {
            self.rec("no_new_privs".into(), "no_new_privs")
        }
        fn seccomp(&mut self, _filters: &[String]) -> JailResult {
            self.rec("seccomp".into(), "seccomp")
        }
        fn notify_ready(&mut self) -> JailResult {
            self.rec("ready".into(), "ready")
        }
        fn chdir(&mut self, path: &Path) -> JailResult {
            self.rec(format!("chdir {}", path.display()), "chdir")
        }
    }

    pub fn spec() -> JailSpec {
        JailSpec {
            root_dir: "/data/sandbox/root".into(),
            host_pid: 1,
            binds: vec![
                Bind::read_only("/usr", "/usr", true),
                Bind::read_only("/data/code/abc", "/var/task", true),
                Bind::read_only("/etc/ld.so.cache", "/etc/ld.so.cache", false),
            ],
            symlinks: vec![("/bin".into(), "usr/bin".into())],
            files: vec![("/etc/passwd".into(), "root:x:0:0::/:/bin/false\n".into())],
            tmp_mb: 64,
            hostname: "lampyr".into(),
            network: JailNetwork::Loopback,
            uid: 65534,
            gid: 65534,
            max_open_files: 1024,
            seccomp: vec!["00".into()],
            cgroup_procs: vec![],
            adopt: false,
            mode: JailMode::Instance,
            program: "/usr/bin/node".into(),
            args: vec!["/var/runtime/bootstrap.js".into()],
            env: vec![],
            cwd: "/var/task".into(),
        }
    }

    #[test]
    fn the_sequence_runs_in_a_safe_order() {
        let mut r = Recorder::default();
        enter(&mut r, &spec()).unwrap();
        // Nothing is mounted before propagation to the host is cut.
        assert_eq!(r.position("mount"), r.position("mount SlaveRecursive"));
        // The code is mounted read-only, inside the new root.
        let bind = r.position("mount BindRecursive /data/code/abc -> /data/sandbox/root/var/task");
        assert_eq!(
            r.calls[bind + 1],
            "mount RemountReadOnly  -> /data/sandbox/root/var/task"
        );
        // /proc is mounted before the pivot, the root goes read-only after it.
        assert!(r.position("mount Proc") < r.position("pivot_root"));
        let root_ro = r
            .calls
            .iter()
            .position(|c| c == "mount RemountReadOnly  -> /")
            .expect("root remounted read-only");
        assert!(r.position("pivot_root") < root_ro);
        // Privileges go after everything that needs them, seccomp last.
        let caps = r.position("capbset drop");
        let ids = r.position("setids 65534:65534");
        let nnp = r.position("no_new_privs");
        let sec = r.position("seccomp");
        assert!(r.position("loopback_up") < caps);
        assert!(r.position("oom_score_adj") < caps);
        assert!(caps < ids && ids < nnp && nnp < sec);
        assert!(
            ids < r.position("pdeathsig"),
            "the parent-death signal is re-armed after the uid change"
        );
        assert!(sec < r.position("ready"));
        assert_eq!(r.calls.last().unwrap(), "chdir /var/task");
        // Only the five devices.
        let devs: Vec<_> = r
            .calls
            .iter()
            .filter(|c| c.starts_with("mount BindRecursive /dev/"))
            .collect();
        assert_eq!(devs.len(), DEVICES.len());
    }

    #[test]
    fn host_network_skips_loopback_and_seccomp_can_be_off() {
        let mut s = spec();
        s.network = JailNetwork::Host;
        s.seccomp = Vec::new();
        let mut r = Recorder::default();
        enter(&mut r, &s).unwrap();
        assert!(!r.calls.iter().any(|c| c == "loopback_up" || c == "seccomp"));
    }

    #[test]
    fn the_zygote_gets_the_filesystem_and_keeps_the_hosts_hostname() {
        let mut s = spec();
        s.mode = JailMode::Zygote;
        s.network = JailNetwork::Host;
        let mut r = Recorder::default();
        enter(&mut r, &s).unwrap();
        assert!(r.position("pivot_root") > r.position("mount BindRecursive /usr"));
        for never in ["sethostname", "setids", "seccomp", "ready", "capbset"] {
            assert!(
                !r.calls.iter().any(|c| c.starts_with(never)),
                "{never} in {:#?}",
                r.calls
            );
        }
    }

    #[test]
    fn a_failing_step_stops_the_sequence() {
        let mut r = Recorder {
            fail_at: Some("pivot_root"),
            ..Default::default()
        };
        let e = enter(&mut r, &spec()).unwrap_err();
        assert_eq!(e.step, "pivot_root");
        assert!(
            !r.calls.iter().any(|c| c.starts_with("setids")),
            "privileges are not touched after a failure"
        );
    }
}
