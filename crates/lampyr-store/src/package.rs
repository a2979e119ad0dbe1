//! The code package format: a gzip'd tar archive of the function directory
//! with `lampyr.toml` at its root.
//!
//! Packing is deterministic (sorted entries, zero mtimes and owners, modes
//! reduced to 0644/0755), so the same code always has the same SHA-256 and a
//! redeploy of unchanged code makes no new version.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use flate2::{read::GzDecoder, write::GzEncoder, Compression};
use lampyr_api::FunctionSpec;

#[derive(Debug, thiserror::Error)]
pub enum PackageError {
    #[error("the {what} is larger than the limit of {} MiB", limit >> 20)]
    TooLarge { what: &'static str, limit: u64 },
    #[error("invalid package: {0}")]
    Invalid(String),
    #[error("handler '{handler}': no file {tried} in the function directory")]
    HandlerMissing { handler: String, tried: String },
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PackageError + '_ {
    move |source| PackageError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Names never packed: version-control data and interpreter caches.
const SKIP: &[&str] = &[".git", ".hg", "__pycache__", ".DS_Store"];

/// Packs a function directory into a deterministic `.tar.gz`.
pub fn pack_dir(dir: &Path) -> Result<Vec<u8>, PackageError> {
    let mut entries = Vec::new();
    walk(dir, Path::new(""), &mut entries)?;
    entries.sort();
    let gz = GzEncoder::new(Vec::new(), Compression::fast());
    let mut tar = tar::Builder::new(gz);
    tar.mode(tar::HeaderMode::Deterministic);
    tar.follow_symlinks(false);
    for rel in entries {
        let full = dir.join(&rel);
        let meta = std::fs::symlink_metadata(&full).map_err(io(&full))?;
        let mut header = tar::Header::new_gnu();
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        if meta.file_type().is_symlink() {
            let target = std::fs::read_link(&full).map_err(io(&full))?;
            check_link(&rel, &target)?;
            header.set_entry_type(tar::EntryType::Symlink);
            header.set_size(0);
            header.set_mode(0o777);
            tar.append_link(&mut header, &rel, &target)
                .map_err(io(&full))?;
        } else if meta.is_dir() {
            header.set_entry_type(tar::EntryType::Directory);
            header.set_size(0);
            header.set_mode(0o755);
            tar.append_data(&mut header, &rel, std::io::empty())
                .map_err(io(&full))?;
        } else if meta.is_file() {
            let exec = meta.permissions().mode() & 0o111 != 0;
            header.set_entry_type(tar::EntryType::Regular);
            header.set_size(meta.len());
            header.set_mode(if exec { 0o755 } else { 0o644 });
            let f = std::fs::File::open(&full).map_err(io(&full))?;
            tar.append_data(&mut header, &rel, f).map_err(io(&full))?;
        }
    }
    let gz = tar.into_inner().map_err(io(dir))?;
    gz.finish().map_err(io(dir))
}

fn walk(root: &Path, rel: &Path, out: &mut Vec<PathBuf>) -> Result<(), PackageError> {
    let dir = root.join(rel);
    for e in std::fs::read_dir(&dir).map_err(io(&dir))? {
        let e = e.map_err(io(&dir))?;
        let name = e.file_name();
        if SKIP.iter().any(|s| name == *s) {
            continue;
        }
        let rel = rel.join(&name);
        let ft = e.file_type().map_err(io(&dir))?;
        out.push(rel.clone());
        if ft.is_dir() {
            walk(root, &rel, out)?;
        }
    }
    Ok(())
}

/// A symlink must be relative and must not leave the function directory.
fn check_link(at: &Path, target: &Path) -> Result<(), PackageError> {
    let bad = || {
        PackageError::Invalid(format!(
            "symlink {} -> {} points outside the function directory",
            at.display(),
            target.display()
        ))
    };
    if target.is_absolute() {
        return Err(bad());
    }
    let mut depth: i64 = at.components().count() as i64 - 1;
    for c in target.components() {
        match c {
            Component::ParentDir => depth -= 1,
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            _ => return Err(bad()),
        }
        if depth < 0 {
            return Err(bad());
        }
    }
    Ok(())
}

/// Unpacks a package into `dst`, refusing anything that could escape it.
pub(crate) fn unpack(package: &[u8], dst: &Path, max_bytes: u64) -> Result<(), PackageError> {
    let invalid = |m: String| PackageError::Invalid(m);
    let mut archive = tar::Archive::new(GzDecoder::new(package));
    archive.set_preserve_permissions(false);
    archive.set_overwrite(true);
    let mut total: u64 = 0;
    let entries = archive
        .entries()
        .map_err(|e| invalid(format!("not a gzip'd tar archive ({e})")))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| invalid(format!("corrupt archive ({e})")))?;
        let path = entry
            .path()
            .map_err(|e| invalid(format!("bad entry name ({e})")))?
            .into_owned();
        if path
            .components()
            .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
        {
            return Err(invalid(format!(
                "entry {} is not a plain relative path",
                path.display()
            )));
        }
        let kind = entry.header().entry_type();
        match kind {
            tar::EntryType::Regular | tar::EntryType::Directory => {}
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name()
                    .map_err(|e| invalid(format!("bad symlink ({e})")))?
                    .ok_or_else(|| invalid(format!("symlink {} has no target", path.display())))?;
                check_link(&path, &target)?;
            }
            other => {
                return Err(invalid(format!(
                    "entry {} has unsupported type {other:?}: only files, directories and relative symlinks are allowed",
                    path.display()
                )))
            }
        }
        total = total.saturating_add(entry.header().size().unwrap_or(0));
        if total > max_bytes {
            return Err(PackageError::TooLarge {
                what: "unpacked code",
                limit: max_bytes,
            });
        }
        let exec = entry.header().mode().unwrap_or(0) & 0o111 != 0;
        let ok = entry
            .unpack_in(dst)
            .map_err(|e| invalid(format!("cannot unpack {} ({e})", path.display())))?;
        if !ok {
            return Err(invalid(format!(
                "entry {} escapes the package",
                path.display()
            )));
        }
        if kind == tar::EntryType::Regular {
            let mode = if exec { 0o755 } else { 0o644 };
            let p = dst.join(&path);
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).map_err(io(&p))?;
        }
    }
    // Drain the rest so a truncated gzip stream is noticed.
    let mut rest = Vec::new();
    archive
        .into_inner()
        .read_to_end(&mut rest)
        .map_err(|e| invalid(format!("corrupt archive ({e})")))?;
    Ok(())
}

/// Checks that the handler's module file exists.
pub(crate) fn check_handler(dir: &Path, spec: &FunctionSpec) -> Result<(), PackageError> {
    let (module, _) = spec.handler_parts();
    let exts = spec.runtime.extensions();
    if exts
        .iter()
        .any(|ext| dir.join(format!("{module}.{ext}")).is_file())
    {
        return Ok(());
    }
    let tried = exts
        .iter()
        .map(|e| format!("{module}.{e}"))
        .collect::<Vec<_>>()
        .join(" or ");
    Err(PackageError::HandlerMissing {
        handler: spec.handler.clone(),
        tried,
    })
}

/// Makes unpacked code read-only: it is immutable once deployed.
pub(crate) fn seal(dir: &Path) -> Result<(), PackageError> {
    set_tree_writable(dir, false)
}

/// Makes a sealed tree writable again so it can be removed.
pub(crate) fn unseal(dir: &Path) {
    let _ = set_tree_writable(dir, true);
}

fn set_tree_writable(dir: &Path, writable: bool) -> Result<(), PackageError> {
    let meta = std::fs::symlink_metadata(dir).map_err(io(dir))?;
    if meta.file_type().is_symlink() {
        return Ok(());
    }
    if meta.is_dir() {
        if writable {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
                .map_err(io(dir))?;
        }
        for e in std::fs::read_dir(dir).map_err(io(dir))? {
            let e = e.map_err(io(dir))?;
            set_tree_writable(&e.path(), writable)?;
        }
        if !writable {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o555))
                .map_err(io(dir))?;
        }
    } else {
        let mode = meta.permissions().mode();
        let new = if writable {
            mode | 0o200
        } else {
            mode & !0o222
        };
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(new)).map_err(io(dir))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_must_stay_inside() {
        assert!(check_link(Path::new("node_modules/.bin/x"), Path::new("../pkg/bin.js")).is_ok());
        assert!(check_link(Path::new("a"), Path::new("../etc/passwd")).is_err());
        assert!(check_link(Path::new("a"), Path::new("/etc/passwd")).is_err());
        assert!(check_link(Path::new("d/a"), Path::new("../../x")).is_err());
    }

    #[test]
    fn unpack_refuses_traversal() {
        // A hand-made archive with a `../` entry.
        let mut header = tar::Header::new_gnu();
        header.set_size(1);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        let name = b"../evil";
        header.as_old_mut().name[..name.len()].copy_from_slice(name);
        header.set_cksum();
        let mut b = tar::Builder::new(GzEncoder::new(Vec::new(), Compression::fast()));
        b.append(&header, &b"x"[..]).unwrap();
        let pkg = b.into_inner().unwrap().finish().unwrap();
        let d = tempfile::tempdir().unwrap();
        let e = unpack(&pkg, d.path(), u64::MAX).unwrap_err();
        assert!(e.to_string().contains("evil"), "{e}");
        assert!(!d.path().parent().unwrap().join("evil").exists());
    }
}
