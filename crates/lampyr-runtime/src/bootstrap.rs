//! The runtime bootstraps, embedded in the binary and installed into the
//! data directory at start-up so a single `lampyr` file is all a host needs.
//! Which files a runtime has is its kind's ([`crate::kinds::Kind::files`]).

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use lampyr_api::Runtime;

/// Writes every runtime's files under `dir/RUNTIME/` (those whose content
/// changed) and returns the directory.
pub fn install(dir: &Path) -> std::io::Result<PathBuf> {
    for rt in Runtime::ALL {
        let d = dir.join(rt.as_str());
        std::fs::create_dir_all(&d)?;
        for f in crate::kinds::of(rt).files() {
            let path = d.join(f.name);
            if std::fs::read_to_string(&path).ok().as_deref() != Some(f.contents) {
                let tmp = d.join(format!(".{}.tmp", f.name));
                std::fs::write(&tmp, f.contents)?;
                std::fs::rename(&tmp, &path)?;
            }
        }
    }
    Ok(dir.to_path_buf())
}

/// Copies a program of lampyr's own that a runtime runs alone
/// ([`crate::kinds::Kind::own_program`]: `provided`'s Runtime API shim),
/// as discovery found it, into `runtime_dir` (unless a copy of the same
/// size and modification time is there), where a jail can show it; a hard
/// link where both are on one file system. Done when an instance of the
/// runtime first starts, so a server that runs none keeps no copy.
pub fn install_program(runtime_dir: &Path, info: &crate::RuntimeInfo) -> std::io::Result<PathBuf> {
    let name = info
        .path
        .file_name()
        .ok_or_else(|| std::io::Error::other("the program has no file name"))?;
    let to = runtime_dir.join(name);
    let stamp = |p: &Path| std::fs::metadata(p).map(|m| (m.len(), m.modified().ok()));
    let from = stamp(&info.path)?;
    if stamp(&to).ok() == Some(from) {
        return Ok(to);
    }
    std::fs::create_dir_all(runtime_dir)?;
    // A name of this call's own: instances start on several threads at
    // once, and a copy written through another call's link would truncate
    // the program itself (a hard link is the same file).
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let tmp = runtime_dir.join(format!(
        ".{}.{}.{}.tmp",
        name.to_string_lossy(),
        std::process::id(),
        SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let _ = std::fs::remove_file(&tmp);
    if std::fs::hard_link(&info.path, &tmp).is_err() {
        // A new file (never an existing one, which may be a link to the
        // program), then the program's bytes into it.
        let mut out = std::fs::File::options()
            .write(true)
            .create_new(true)
            .mode(0o755)
            .open(&tmp)?;
        std::io::copy(&mut std::fs::File::open(&info.path)?, &mut out)?;
        if let Some(t) = from.1 {
            out.set_modified(t)?;
        }
    }
    std::fs::rename(&tmp, &to)?;
    Ok(to)
}

/// Where [`install`] put a runtime's bootstrap (or [`install_programs`]
/// its program).
pub fn path(dir: &Path, runtime: Runtime) -> PathBuf {
    let d = dir.join(runtime.as_str());
    match crate::kinds::bootstrap(runtime) {
        Some(b) => d.join(b.name),
        None => d.join(crate::kinds::SHIM),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Instances start on several threads at once: installing the program
    /// from all of them leaves it, and its installed copy, whole.
    #[test]
    fn concurrent_installs_keep_the_program_whole() {
        let d = tempfile::tempdir().unwrap();
        let program = d.path().join("shim");
        let body = vec![7u8; 1 << 20];
        std::fs::write(&program, &body).unwrap();
        let info = crate::RuntimeInfo {
            runtime: Runtime::Provided,
            path: program.clone(),
            version: "0".into(),
            prefix: d.path().into(),
            shared_prefixes: Vec::new(),
        };
        let dir = d.path().join("runtime");
        std::thread::scope(|s| {
            for _ in 0..16 {
                s.spawn(|| install_program(&dir, &info).unwrap());
            }
        });
        assert_eq!(std::fs::read(&program).unwrap(), body);
        assert_eq!(std::fs::read(dir.join("shim")).unwrap(), body);
    }
}
