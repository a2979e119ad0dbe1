//! The runtime bootstraps, embedded in the binary and installed into the
//! data directory at start-up so a single `lampyr` file is all a host needs.
//! Which files a runtime has is its kind's ([`crate::kinds::Kind::files`]).

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

/// Copies the programs of lampyr's own that runtimes run alone
/// ([`crate::kinds::Kind::own_program`]: `provided`'s Runtime API shim),
/// as discovery found them, into `dir/RUNTIME/` (when their size or
/// modification time differ), where a jail can show them.
pub fn install_programs(dir: &Path, runtimes: &crate::Runtimes) -> std::io::Result<()> {
    for rt in Runtime::ALL {
        let Ok(info) = runtimes.get(rt) else { continue };
        if !crate::kinds::of(rt).own_program() {
            continue;
        }
        let Some(name) = info.path.file_name() else {
            continue;
        };
        let d = dir.join(rt.as_str());
        std::fs::create_dir_all(&d)?;
        let to = d.join(name);
        let stamp = |p: &Path| std::fs::metadata(p).map(|m| (m.len(), m.modified().ok()));
        let from = stamp(&info.path)?;
        if stamp(&to).ok() == Some(from) {
            continue;
        }
        let tmp = d.join(format!(".{}.tmp", name.to_string_lossy()));
        std::fs::copy(&info.path, &tmp)?;
        if let Some(t) = from.1 {
            std::fs::File::options()
                .write(true)
                .open(&tmp)?
                .set_modified(t)?;
        }
        std::fs::rename(&tmp, &to)?;
    }
    Ok(())
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
