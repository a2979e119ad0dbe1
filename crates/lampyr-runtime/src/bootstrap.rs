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

/// Where [`install`] put a runtime's bootstrap.
pub fn path(dir: &Path, runtime: Runtime) -> PathBuf {
    dir.join(runtime.as_str())
        .join(crate::kinds::bootstrap(runtime).name)
}
