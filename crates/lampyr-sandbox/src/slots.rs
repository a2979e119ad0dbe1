//! Code slots: how a function's code reaches `/var/task` of an instance that
//! is already running, so generic instances can be started ahead of demand
//! and specialised later.
//!
//! At start-up the server mounts a small tmpfs at `STATE/slots` and makes it
//! *shared*. Every jail binds its own empty `STATE/slots/<id>` at
//! `/var/task`; the jail made every mount a slave first, so that bind
//! receives mount events from the host but sends none back. To specialise
//! an instance the host bind-mounts the version's code (its read-only view,
//! see [`crate::views`]) onto the slot, and the mount propagates into the
//! running jail. When the instance stops, the slot is unmounted and
//! removed. Being a tmpfs of their own, slots name no host path inside the
//! jail.

use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

#[derive(Debug, thiserror::Error)]
#[error("{what} {path}: {source}")]
pub struct SlotError {
    what: &'static str,
    path: String,
    #[source]
    source: std::io::Error,
}

fn err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(nix::Error) -> SlotError + 'a {
    move |e| SlotError {
        what,
        path: path.display().to_string(),
        source: e.into(),
    }
}

fn ioerr<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> SlotError + 'a {
    move |source| SlotError {
        what,
        path: path.display().to_string(),
        source,
    }
}

/// The mount points below `dir` in this mount namespace, deepest first.
pub fn mounts_under(mountinfo: &str, dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape)
        .map(PathBuf::from)
        .filter(|p| p.starts_with(dir))
        .collect();
    out.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    out.dedup();
    out
}

/// Undoes mountinfo's octal escapes (`\040` for a space, …).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Unmounts everything at or below `dir` (left over from an earlier run).
pub fn unmount_all_under(dir: &Path) {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for m in mounts_under(&info, dir) {
        let _ = umount2(&m, MntFlags::MNT_DETACH);
    }
}

/// The host side of the slot mechanism.
#[derive(Debug)]
pub struct Slots {
    slots: PathBuf,
}

impl Slots {
    /// Prepares `state/slots` (a shared tmpfs), removing whatever an
    /// earlier run left mounted under `state`.
    pub fn setup(state: &Path) -> Result<Slots, SlotError> {
        unmount_all_under(state);
        let slots = state.join("slots");
        std::fs::create_dir_all(&slots).map_err(ioerr("creating", &slots))?;
        // Stale slot directories of a previous run.
        if let Ok(entries) = std::fs::read_dir(&slots) {
            for e in entries.flatten() {
                let _ = std::fs::remove_dir(e.path());
            }
        }
        let none: Option<&str> = None;
        mount(
            Some("tmpfs"),
            &slots,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            Some("size=1m,mode=755"),
        )
        .map_err(err("mounting a tmpfs on", &slots))?;
        mount(none, &slots, none, MsFlags::MS_SHARED, none).map_err(err("sharing", &slots))?;
        Ok(Slots { slots })
    }

    /// Creates an instance's empty slot.
    pub fn create(&self, id: &str) -> Result<PathBuf, SlotError> {
        let p = self.path(id);
        std::fs::create_dir_all(&p).map_err(ioerr("creating", &p))?;
        Ok(p)
    }

    /// Where [`Slots::create`] puts instance `id`'s slot.
    pub fn path(&self, id: &str) -> PathBuf {
        self.slots.join(id)
    }

    /// Mounts a version's code (its view) on a slot, read-only; it appears
    /// at `/var/task` in the instance.
    pub fn fill(&self, slot: &Path, code: &Path) -> Result<(), SlotError> {
        let none: Option<&str> = None;
        mount(Some(code), slot, none, MsFlags::MS_BIND, none)
            .map_err(err("mounting code on", slot))?;
        mount(none, slot, none, crate::sys::READ_ONLY_REMOUNT, none)
            .map_err(err("making read-only", slot))
    }

    /// Unmounts and removes a slot.
    pub fn release(&self, slot: &Path) {
        let _ = umount2(slot, MntFlags::MNT_DETACH);
        let _ = std::fs::remove_dir(slot);
    }

    /// Unmounts everything, at shutdown.
    pub fn teardown(&self) {
        if let Some(state) = self.slots.parent() {
            unmount_all_under(state);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_is_parsed_deepest_first() {
        let info = "22 1 0:21 / / rw - ext4 /dev/vda rw\n\
                    30 22 0:40 / /data/sandbox/slots rw shared:5 - ext4 /dev/vda rw\n\
                    31 30 0:40 /code/ab /data/sandbox/slots/fn-1 ro shared:5 - ext4 /dev/vda rw\n\
                    32 22 0:41 / /data/sandbox/code-ro ro - ext4 /dev/vda rw\n\
                    33 22 0:42 / /data/other\\040dir rw - tmpfs tmpfs rw\n";
        let m = mounts_under(info, Path::new("/data/sandbox"));
        assert_eq!(
            m,
            vec![
                PathBuf::from("/data/sandbox/slots/fn-1"),
                PathBuf::from("/data/sandbox/slots"),
                PathBuf::from("/data/sandbox/code-ro")
            ]
        );
        assert_eq!(
            mounts_under(info, Path::new("/data/other dir")),
            vec![PathBuf::from("/data/other dir")]
        );
    }
}
