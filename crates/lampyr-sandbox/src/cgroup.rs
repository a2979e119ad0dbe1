//! Per-instance cgroups on either hierarchy.
//!
//! * **cgroup v1** (separate `memory`, `cpu` and `pids` hierarchies): one
//!   directory per controller, `…/<parent>/<instance>`.
//! * **cgroup v2** (one unified hierarchy): one directory,
//!   `…/<parent>/<instance>`, with the `memory`, `cpu` and `pids`
//!   controllers enabled on the parent.
//!
//! The parent is `lampyr-<tag>` under the server's own cgroup, where the tag
//! identifies the server's data directory; stale children left by a server
//! that was killed are found there and removed at the next start.
//!
//! Limits for an instance with `memory_mb` M:
//! * memory: M MiB, no swap;
//! * CPU weight proportional to M (v1 `cpu.shares` = M; v2 `cpu.weight` =
//!   M × 100 / 1024, so 1 GiB has the default weight), and a hard cap of
//!   max(1, M / 1769) CPUs, the public clouds' rule of one vCPU per 1769 MB;
//! * pids: the configured maximum of tasks (processes and threads).

use std::path::{Path, PathBuf};
use std::time::Duration;

/// Which hierarchy, and the parent directories this server owns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cgroups {
    V1 {
        memory: PathBuf,
        cpu: PathBuf,
        pids: PathBuf,
    },
    V2 {
        parent: PathBuf,
    },
}

/// What an instance's cgroup enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CgroupLimits {
    pub memory_mb: u32,
    pub pids_max: u32,
    /// Background work (a pooled instance starting ahead of demand): the
    /// smallest CPU weight, so it never slows instances serving requests.
    /// Specialising the instance gives it its function's weight.
    pub background: bool,
}

/// Megabytes of memory per full CPU.
pub const MB_PER_CPU: u64 = 1769;
const CPU_PERIOD_US: u64 = 100_000;

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("no usable cgroup hierarchy: {0}")]
    Unavailable(String),
    #[error("cgroup {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CgroupError + '_ {
    move |source| CgroupError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    std::fs::write(path, value).map_err(io(path))
}

/// The server's own cgroup path in a hierarchy, from `/proc/self/cgroup`.
fn own_path(proc_cgroup: &str, controller: Option<&str>) -> String {
    for line in proc_cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, ctrls, path) = (
            parts.next(),
            parts.next().unwrap_or(""),
            parts.next().unwrap_or("/"),
        );
        let matches = match controller {
            None => ctrls.is_empty(),
            Some(c) => ctrls.split(',').any(|x| x == c),
        };
        if matches {
            return path.to_string();
        }
    }
    "/".to_string()
}

impl Cgroups {
    /// Finds the hierarchy under `root` (normally `/sys/fs/cgroup`) and
    /// prepares this server's parent cgroup, named `lampyr-<tag>`.
    pub fn setup(root: &Path, proc_self_cgroup: &str, tag: &str) -> Result<Cgroups, CgroupError> {
        let name = format!("lampyr-{tag}");
        if root.join("cgroup.controllers").exists() {
            let available =
                std::fs::read_to_string(root.join("cgroup.controllers")).map_err(io(root))?;
            for c in ["memory", "cpu", "pids"] {
                if !available.split_whitespace().any(|x| x == c) {
                    return Err(CgroupError::Unavailable(format!(
                        "the cgroup v2 controller '{c}' is not available"
                    )));
                }
            }
            let own = root.join(own_path(proc_self_cgroup, None).trim_start_matches('/'));
            let base = prepare_v2_base(root, &own)?;
            let parent = base.join(&name);
            std::fs::create_dir_all(&parent).map_err(io(&parent))?;
            write(&parent.join("cgroup.subtree_control"), "+memory +cpu +pids")?;
            return Ok(Cgroups::V2 { parent });
        }
        let mut dirs = Vec::new();
        for c in ["memory", "cpu", "pids"] {
            let hier = root.join(c);
            if !hier.join("cgroup.procs").exists() {
                return Err(CgroupError::Unavailable(format!(
                    "the cgroup v1 '{c}' hierarchy is not mounted at {}",
                    hier.display()
                )));
            }
            let own = own_path(proc_self_cgroup, Some(c));
            let parent = hier.join(own.trim_start_matches('/')).join(&name);
            std::fs::create_dir_all(&parent).map_err(io(&parent))?;
            dirs.push(parent);
        }
        let pids = dirs.pop().expect("three dirs");
        let cpu = dirs.pop().expect("three dirs");
        let memory = dirs.pop().expect("three dirs");
        Ok(Cgroups::V1 { memory, cpu, pids })
    }

    pub fn version(&self) -> &'static str {
        match self {
            Cgroups::V1 { .. } => "cgroup v1",
            Cgroups::V2 { .. } => "cgroup v2",
        }
    }

    fn parents(&self) -> Vec<&Path> {
        match self {
            Cgroups::V1 { memory, cpu, pids } => vec![memory, cpu, pids],
            Cgroups::V2 { parent } => vec![parent],
        }
    }

    /// The files through which a process joins instance `id`'s cgroup, as
    /// [`InstanceCgroup::procs_files`] of [`Cgroups::create`] will name them:
    /// known before the cgroup exists, so that the instance's init can be
    /// started while it is created.
    pub fn procs_files(&self, id: &str) -> Vec<PathBuf> {
        InstanceCgroup {
            dirs: self.parents().iter().map(|p| p.join(id)).collect(),
            v2: matches!(self, Cgroups::V2 { .. }),
        }
        .procs_files()
    }

    /// Creates an instance's cgroup with its limits.
    pub fn create(&self, id: &str, limits: CgroupLimits) -> Result<InstanceCgroup, CgroupError> {
        let mem = u64::from(limits.memory_mb) << 20;
        let cpus = (u64::from(limits.memory_mb) / MB_PER_CPU).max(1);
        let quota = cpus * CPU_PERIOD_US;
        let cg = match self {
            Cgroups::V1 { memory, cpu, pids } => {
                let dirs = vec![memory.join(id), cpu.join(id), pids.join(id)];
                for d in &dirs {
                    std::fs::create_dir_all(d).map_err(io(d))?;
                }
                let (m, c, p) = (&dirs[0], &dirs[1], &dirs[2]);
                write(&m.join("memory.limit_in_bytes"), &mem.to_string())?;
                // No swap: memory+swap may not exceed memory. Absent when the
                // kernel does not account swap, which means no swap anyway.
                let memsw = m.join("memory.memsw.limit_in_bytes");
                if memsw.exists() {
                    write(&memsw, &mem.to_string())?;
                }
                let swappiness = m.join("memory.swappiness");
                if swappiness.exists() {
                    let _ = write(&swappiness, "0");
                }
                let shares = if limits.background {
                    2
                } else {
                    limits.memory_mb.max(2)
                };
                write(&c.join("cpu.shares"), &shares.to_string())?;
                write(&c.join("cpu.cfs_period_us"), &CPU_PERIOD_US.to_string())?;
                write(&c.join("cpu.cfs_quota_us"), &quota.to_string())?;
                write(&p.join("pids.max"), &limits.pids_max.to_string())?;
                InstanceCgroup { dirs, v2: false }
            }
            Cgroups::V2 { parent } => {
                let d = parent.join(id);
                std::fs::create_dir_all(&d).map_err(io(&d))?;
                write(&d.join("memory.max"), &mem.to_string())?;
                write(&d.join("memory.swap.max"), "0")?;
                // On OOM, kill the whole instance rather than one process of it.
                let group = d.join("memory.oom.group");
                if group.exists() {
                    write(&group, "1")?;
                }
                let weight = if limits.background {
                    1
                } else {
                    (u64::from(limits.memory_mb) * 100 / 1024).clamp(1, 10_000)
                };
                write(&d.join("cpu.weight"), &weight.to_string())?;
                write(&d.join("cpu.max"), &format!("{quota} {CPU_PERIOD_US}"))?;
                write(&d.join("pids.max"), &limits.pids_max.to_string())?;
                InstanceCgroup {
                    dirs: vec![d],
                    v2: true,
                }
            }
        };
        Ok(cg)
    }

    /// Removes the parent directories (they must be empty by now).
    pub fn remove_parents(&self) {
        for p in self.parents() {
            let _ = std::fs::remove_dir(p);
        }
    }

    /// Removes instance cgroups a previous run of this server left behind,
    /// killing anything still in them. Returns how many were removed.
    pub fn cleanup_stale(&self) -> usize {
        let mut ids = std::collections::BTreeSet::new();
        for p in self.parents() {
            if let Ok(entries) = std::fs::read_dir(p) {
                for e in entries.flatten() {
                    if e.file_type().is_ok_and(|t| t.is_dir()) {
                        ids.insert(e.file_name().to_string_lossy().into_owned());
                    }
                }
            }
        }
        let n = ids.len();
        for id in ids {
            let cg = InstanceCgroup {
                dirs: self
                    .parents()
                    .iter()
                    .map(|p| p.join(&id))
                    .filter(|d| d.exists())
                    .collect(),
                v2: matches!(self, Cgroups::V2 { .. }),
            };
            cg.kill_all();
            cg.remove_blocking();
        }
        n
    }
}

/// In v2 a cgroup with processes cannot hand controllers to children (the
/// "no internal processes" rule). If the server's own cgroup has processes
/// and is not the root, move them into a `supervisor` leaf first.
fn prepare_v2_base(root: &Path, own: &Path) -> Result<PathBuf, CgroupError> {
    if own == root {
        return Ok(own.to_path_buf());
    }
    let procs = std::fs::read_to_string(own.join("cgroup.procs")).map_err(io(own))?;
    if !procs.trim().is_empty() {
        let leaf = own.join("supervisor");
        std::fs::create_dir_all(&leaf).map_err(io(&leaf))?;
        for pid in procs.split_whitespace() {
            // A process may exit meanwhile; that is fine.
            let _ = std::fs::write(leaf.join("cgroup.procs"), pid);
        }
    }
    write(&own.join("cgroup.subtree_control"), "+memory +cpu +pids")?;
    Ok(own.to_path_buf())
}

/// One instance's cgroup (one directory per hierarchy).
#[derive(Debug)]
pub struct InstanceCgroup {
    dirs: Vec<PathBuf>,
    v2: bool,
}

fn counter(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let mut it = l.split_whitespace();
        (it.next() == Some(key))
            .then(|| it.next()?.parse().ok())
            .flatten()
    })
}

impl InstanceCgroup {
    /// Changes the memory limit (and the CPU share and cap that follow from
    /// it) of a running instance, e.g. when a pooled instance is given to a
    /// function. Fails if the instance already uses more than the new limit.
    pub fn update_memory(&self, memory_mb: u32) -> Result<(), CgroupError> {
        let mem = (u64::from(memory_mb) << 20).to_string();
        let cpus = (u64::from(memory_mb) / MB_PER_CPU).max(1);
        let quota = cpus * CPU_PERIOD_US;
        if self.v2 {
            let d = &self.dirs[0];
            write(&d.join("memory.max"), &mem)?;
            let weight = (u64::from(memory_mb) * 100 / 1024).clamp(1, 10_000);
            write(&d.join("cpu.weight"), &weight.to_string())?;
            write(&d.join("cpu.max"), &format!("{quota} {CPU_PERIOD_US}"))?;
            return Ok(());
        }
        let (m, c) = (&self.dirs[0], &self.dirs[1]);
        let limit = m.join("memory.limit_in_bytes");
        let memsw = m.join("memory.memsw.limit_in_bytes");
        let current: u64 = std::fs::read_to_string(&limit)
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(u64::MAX);
        // memory+swap may never be below memory: lower memory first, raise
        // memory+swap first.
        if u64::from(memory_mb) << 20 <= current {
            write(&limit, &mem)?;
            if memsw.exists() {
                write(&memsw, &mem)?;
            }
        } else {
            if memsw.exists() {
                write(&memsw, &mem)?;
            }
            write(&limit, &mem)?;
        }
        write(&c.join("cpu.shares"), &memory_mb.max(2).to_string())?;
        write(&c.join("cpu.cfs_quota_us"), &quota.to_string())?;
        Ok(())
    }

    /// The files a single-threaded process writes `0` into to join.
    ///
    /// On v1 that is `tasks`: moving the calling thread itself is exempt
    /// from the global threadgroup lock, whereas a write to `cgroup.procs`
    /// takes it and waits for an RCU grace period (once the largest cost of
    /// building a sandbox). The process is single-threaded
    /// when it joins, so moving its one thread moves the process, and every
    /// process it forks afterwards starts in the cgroup. v2 has no such
    /// exemption across domain cgroups, so it uses `cgroup.procs`.
    pub fn procs_files(&self) -> Vec<PathBuf> {
        let file = if self.v2 { "cgroup.procs" } else { "tasks" };
        self.dirs.iter().map(|d| d.join(file)).collect()
    }

    fn memory_dir(&self) -> &Path {
        &self.dirs[0]
    }

    /// How many times the kernel's OOM killer struck in this cgroup.
    pub fn oom_kills(&self) -> u64 {
        let file = if self.v2 {
            "memory.events"
        } else {
            "memory.oom_control"
        };
        std::fs::read_to_string(self.memory_dir().join(file))
            .ok()
            .and_then(|t| counter(&t, "oom_kill"))
            .unwrap_or(0)
    }

    /// The most memory the instance used, in bytes, where the kernel says.
    pub fn memory_peak(&self) -> Option<u64> {
        self.read_memory_bytes("memory.max_usage_in_bytes", "memory.peak")
    }

    /// Current memory use, in bytes.
    pub fn memory_current(&self) -> Option<u64> {
        self.read_memory_bytes("memory.usage_in_bytes", "memory.current")
    }

    /// A byte count from the memory controller: file `v1` or `v2`.
    fn read_memory_bytes(&self, v1: &str, v2: &str) -> Option<u64> {
        let file = if self.v2 { v2 } else { v1 };
        std::fs::read_to_string(self.memory_dir().join(file))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    fn pids(&self) -> Vec<i32> {
        let mut out = Vec::new();
        for d in &self.dirs {
            if let Ok(t) = std::fs::read_to_string(d.join("cgroup.procs")) {
                out.extend(t.split_whitespace().filter_map(|p| p.parse::<i32>().ok()));
            }
        }
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Kills every process in the cgroup.
    pub fn kill_all(&self) {
        if self.v2 {
            let kill = self.dirs[0].join("cgroup.kill");
            if kill.exists() && std::fs::write(&kill, "1").is_ok() {
                return;
            }
        }
        // A few rounds: a process may fork while we iterate.
        for _ in 0..16 {
            let pids = self.pids();
            if pids.is_empty() {
                return;
            }
            for pid in pids {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }

    pub(crate) fn try_remove(&self) -> bool {
        let mut all = true;
        for d in &self.dirs {
            if d.exists() && std::fs::remove_dir(d).is_err() {
                all = false;
            }
        }
        all
    }

    /// Removes the cgroup, waiting (up to ~2 s) for its last tasks to go.
    pub async fn remove(&self) -> bool {
        for i in 0..40u64 {
            if self.try_remove() {
                return true;
            }
            self.kill_all();
            tokio::time::sleep(Duration::from_millis((1 << i.min(6)).min(50))).await;
        }
        false
    }

    pub(crate) fn remove_blocking(&self) -> bool {
        for _ in 0..40 {
            if self.try_remove() {
                return true;
            }
            self.kill_all();
            std::thread::sleep(Duration::from_millis(25));
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_v1(root: &Path) {
        for c in ["memory", "cpu", "pids"] {
            std::fs::create_dir_all(root.join(c).join("srv")).unwrap();
            std::fs::write(root.join(c).join("cgroup.procs"), "").unwrap();
        }
    }

    #[test]
    fn own_cgroup_is_read_per_hierarchy() {
        let text = "9:pids:/a\n4:memory:/m/x\n2:cpu,cpuacct:/c\n0::/unified\n";
        assert_eq!(own_path(text, Some("memory")), "/m/x");
        assert_eq!(own_path(text, Some("cpu")), "/c");
        assert_eq!(own_path(text, None), "/unified");
        assert_eq!(own_path("", Some("pids")), "/");
    }

    #[test]
    fn v1_limits_are_written_where_the_kernel_reads_them() {
        let d = tempfile::tempdir().unwrap();
        fake_v1(d.path());
        let cgs =
            Cgroups::setup(d.path(), "4:memory:/srv\n2:cpu:/srv\n9:pids:/srv\n", "t").unwrap();
        assert_eq!(cgs.version(), "cgroup v1");
        let cg = cgs
            .create(
                "fn-1",
                CgroupLimits {
                    memory_mb: 128,
                    pids_max: 64,
                    background: false,
                },
            )
            .unwrap();
        let mem = d.path().join("memory/srv/lampyr-t/fn-1");
        assert_eq!(
            std::fs::read_to_string(mem.join("memory.limit_in_bytes")).unwrap(),
            (128u64 << 20).to_string()
        );
        let cpu = d.path().join("cpu/srv/lampyr-t/fn-1");
        assert_eq!(
            std::fs::read_to_string(cpu.join("cpu.shares")).unwrap(),
            "128"
        );
        assert_eq!(
            std::fs::read_to_string(cpu.join("cpu.cfs_quota_us")).unwrap(),
            "100000"
        );
        assert_eq!(
            std::fs::read_to_string(d.path().join("pids/srv/lampyr-t/fn-1/pids.max")).unwrap(),
            "64"
        );
        // v1: a single-threaded process joins through `tasks`, which skips
        // the global threadgroup lock that `cgroup.procs` takes.
        let files = cg.procs_files();
        assert_eq!(files.len(), 3);
        assert!(files.iter().all(|f| f.ends_with("tasks")), "{files:?}");
        assert_eq!(cgs.procs_files("fn-1"), files, "known before creation");
        std::fs::write(
            mem.join("memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
        )
        .unwrap();
        assert_eq!(cg.oom_kills(), 2);
    }

    #[test]
    fn a_pooled_instance_waits_at_the_lowest_weight_until_specialised() {
        let d = tempfile::tempdir().unwrap();
        fake_v1(d.path());
        let cgs =
            Cgroups::setup(d.path(), "4:memory:/srv\n2:cpu:/srv\n9:pids:/srv\n", "t").unwrap();
        let cg = cgs
            .create(
                "pool-1",
                CgroupLimits {
                    memory_mb: 256,
                    pids_max: 64,
                    background: true,
                },
            )
            .unwrap();
        let cpu = d.path().join("cpu/srv/lampyr-t/pool-1");
        let mem = d.path().join("memory/srv/lampyr-t/pool-1");
        assert_eq!(
            std::fs::read_to_string(cpu.join("cpu.shares")).unwrap(),
            "2"
        );
        cg.update_memory(128).unwrap();
        assert_eq!(
            std::fs::read_to_string(cpu.join("cpu.shares")).unwrap(),
            "128"
        );
        assert_eq!(
            std::fs::read_to_string(mem.join("memory.limit_in_bytes")).unwrap(),
            (128u64 << 20).to_string()
        );
    }

    #[test]
    fn v2_limits_and_controllers() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            d.path().join("cgroup.controllers"),
            "cpuset cpu io memory pids",
        )
        .unwrap();
        let cgs = Cgroups::setup(d.path(), "0::/\n", "t").unwrap();
        let parent = d.path().join("lampyr-t");
        assert_eq!(
            std::fs::read_to_string(parent.join("cgroup.subtree_control")).unwrap(),
            "+memory +cpu +pids"
        );
        let big = cgs
            .create(
                "fn-2",
                CgroupLimits {
                    memory_mb: 4096,
                    pids_max: 10,
                    background: false,
                },
            )
            .unwrap();
        let dir = parent.join("fn-2");
        assert_eq!(cgs.procs_files("fn-2"), vec![dir.join("cgroup.procs")]);
        assert_eq!(big.procs_files(), cgs.procs_files("fn-2"));
        assert_eq!(
            std::fs::read_to_string(dir.join("memory.swap.max")).unwrap(),
            "0"
        );
        assert_eq!(
            std::fs::read_to_string(dir.join("cpu.weight")).unwrap(),
            "400"
        );
        assert_eq!(
            std::fs::read_to_string(dir.join("cpu.max")).unwrap(),
            "200000 100000"
        );
        std::fs::write(
            dir.join("memory.events"),
            "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n",
        )
        .unwrap();
        assert_eq!(big.oom_kills(), 1);
        // v2 has no single-thread exemption across domain cgroups.
        assert_eq!(big.procs_files(), vec![dir.join("cgroup.procs")]);
    }

    #[test]
    fn v2_without_a_controller_is_unavailable() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("cgroup.controllers"), "cpu io").unwrap();
        let e = Cgroups::setup(d.path(), "0::/\n", "t").unwrap_err();
        assert!(e.to_string().contains("memory"), "{e}");
    }

    #[test]
    fn v2_moves_the_server_out_of_its_own_cgroup() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("cgroup.controllers"), "cpu memory pids").unwrap();
        let own = d.path().join("svc");
        std::fs::create_dir_all(&own).unwrap();
        std::fs::write(own.join("cgroup.procs"), "42\n").unwrap();
        let cgs = Cgroups::setup(d.path(), "0::/svc\n", "t").unwrap();
        assert_eq!(
            cgs,
            Cgroups::V2 {
                parent: own.join("lampyr-t")
            }
        );
        assert_eq!(
            std::fs::read_to_string(own.join("supervisor/cgroup.procs")).unwrap(),
            "42"
        );
    }
}
