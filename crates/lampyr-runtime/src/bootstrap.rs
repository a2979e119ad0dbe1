//! The runtime bootstraps, embedded in the binary and installed into the
//! data directory at start-up so a single `lampyr` file is all a host needs.

use std::path::{Path, PathBuf};

use lampyr_api::Runtime;

const NODE_BOOTSTRAP: &str = include_str!("../../../runtimes/nodejs/bootstrap.js");
const PYTHON_BOOTSTRAP: &str = include_str!("../../../runtimes/python/bootstrap.py");

/// The bootstrap source of a runtime and its file name.
pub fn source(runtime: Runtime) -> (&'static str, &'static str) {
    match runtime {
        Runtime::Nodejs => ("bootstrap.js", NODE_BOOTSTRAP),
        Runtime::Python => ("bootstrap.py", PYTHON_BOOTSTRAP),
    }
}

/// Writes every bootstrap under `dir/RUNTIME/` (if its content changed) and
/// returns the directory.
pub fn install(dir: &Path) -> std::io::Result<PathBuf> {
    for rt in Runtime::ALL {
        let (file, body) = source(rt);
        let d = dir.join(rt.as_str());
        std::fs::create_dir_all(&d)?;
        let path = d.join(file);
        if std::fs::read_to_string(&path).ok().as_deref() != Some(body) {
            let tmp = d.join(format!(".{file}.tmp"));
            std::fs::write(&tmp, body)?;
            std::fs::rename(&tmp, &path)?;
        }
    }
    Ok(dir.to_path_buf())
}

/// Where [`install`] put a runtime's bootstrap.
pub fn path(dir: &Path, runtime: Runtime) -> PathBuf {
    dir.join(runtime.as_str()).join(source(runtime).0)
}
