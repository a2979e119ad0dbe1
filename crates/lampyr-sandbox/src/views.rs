//! Neutral views of host directories, for what jails bind: nothing an
//! instance can read about its mounts (`/proc/self/mountinfo`) names a
//! host path, the data directory least of all.
//!
//! A bind mount shows its source's path within its filesystem. So what a
//! jail sees comes from filesystems of lampyr's own instead:
//!
//! * a directory of the host (a version's code, the bootstraps, a runtime's
//!   installation prefix) is shown through a read-only overlay mount of it,
//!   made once and kept while the server runs: an overlay is a filesystem
//!   of its own, whose root is the directory, and its lower layers are
//!   named by `/proc/self/fd/N` (the descriptors are closed once it is
//!   mounted), never by their paths;
//! * code slots live on a tmpfs (see [`crate::slots`]).
//!
//! Where overlays are not available the binds use the directories
//! themselves, and say so in the isolation report.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::fcntl::{open, OFlag};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::stat::Mode;
use parking_lot::Mutex;

/// The overlay views this server has made, by the directory they show.
#[derive(Debug)]
pub struct Views {
    dir: PathBuf,
    empty: PathBuf,
    made: Mutex<HashMap<PathBuf, PathBuf>>,
    /// Whether this kernel mounts overlays; learnt from the first try.
    works: Mutex<Option<bool>>,
}

impl Views {
    /// Views live under `state/views`.
    pub fn new(state: &Path) -> std::io::Result<Views> {
        let dir = state.join("views");
        let empty = state.join("empty");
        for d in [&dir, &empty] {
            std::fs::create_dir_all(d)?;
        }
        // Mount points of an earlier run (unmounted by the slots' set-up).
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for e in entries.flatten() {
                let _ = std::fs::remove_dir(e.path());
            }
        }
        Ok(Views {
            dir,
            empty,
            made: Mutex::new(HashMap::new()),
            works: Mutex::new(None),
        })
    }

    /// Whether views are available (known once one was made).
    pub fn available(&self) -> Option<bool> {
        *self.works.lock()
    }

    /// The directory to bind in place of `dir`: its overlay view (made now
    /// if it is the first time), or `dir` itself where views do not work.
    pub fn of(&self, dir: &Path) -> PathBuf {
        if *self.works.lock() == Some(false) {
            return dir.to_path_buf();
        }
        let mut made = self.made.lock();
        if let Some(v) = made.get(dir) {
            return v.clone();
        }
        let at = self.dir.join(key(dir));
        match overlay(dir, &self.empty, &at) {
            Ok(()) => {
                *self.works.lock() = Some(true);
                made.insert(dir.to_path_buf(), at.clone());
                at
            }
            Err(e) => {
                let _ = std::fs::remove_dir(&at);
                let mut works = self.works.lock();
                if works.is_none() {
                    tracing::warn!(
                        "overlay mounts are unavailable ({e}): instances see the host paths of their code and runtime in /proc/self/mountinfo"
                    );
                    *works = Some(false);
                }
                dir.to_path_buf()
            }
        }
    }

    /// Unmounts the view of `dir`, if there is one (its directory is about
    /// to be removed). Instances still using it keep it until they end.
    pub fn forget(&self, dir: &Path) {
        if let Some(at) = self.made.lock().remove(dir) {
            let _ = umount2(&at, MntFlags::MNT_DETACH);
            let _ = std::fs::remove_dir(&at);
        }
    }

    /// Unmounts every view, at shutdown.
    pub fn teardown(&self) {
        for (_, at) in self.made.lock().drain() {
            let _ = umount2(&at, MntFlags::MNT_DETACH);
            let _ = std::fs::remove_dir(&at);
        }
    }
}

/// A stable name for a view of `dir`: its last component (a code
/// version's sha256, or `python`), and a hash of the whole path.
fn key(dir: &Path) -> String {
    let last: String = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_' || *c == '.')
        .take(80)
        .collect();
    format!("{last}-{}", crate::path_tag(dir))
}

/// Mounts a read-only overlay at `at` whose layers are `dir` and an empty
/// directory, both named through descriptors.
fn overlay(dir: &Path, empty: &Path, at: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(at)?;
    let flags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
    let lower: OwnedFd = open(dir, flags, Mode::empty())?;
    let blank: OwnedFd = open(empty, flags, Mode::empty())?;
    let opts = format!(
        "lowerdir=/proc/self/fd/{}:/proc/self/fd/{}",
        lower.as_raw_fd(),
        blank.as_raw_fd()
    );
    mount(
        Some("overlay"),
        at,
        Some("overlay"),
        MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(opts.as_str()),
    )?;
    Ok(())
}
