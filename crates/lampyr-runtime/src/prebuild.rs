//! Deploy-time preparation of a function's code for its runtime, so that the
//! first request does less work.
//!
//! What is done is the runtime kind's ([`crate::kinds::Kind::prepare`]):
//! Python compiles every module to bytecode; Node.js needs nothing.
//!
//! Preparation is best effort: a module that does not compile (a syntax
//! error, Python 2 code in a vendored package) is left as it is, and the
//! import reports the error as it would have without preparation.

use std::path::Path;

use lampyr_api::Runtime;
use lampyr_sandbox::Sandboxer;

use crate::Runtimes;

pub use crate::kinds::Prepared;

/// Prepares the unpacked code in `dir` (still writable) for `runtime`, with
/// the interpreter that will run it (of `version`, where the function names
/// one).
///
/// The work runs as a one-off job of the sandbox ([`Sandboxer::run_job`]):
/// jailed where the host allows it, unprivileged, without the network,
/// able to write `dir` alone, and killed with the server. Nothing of the
/// package ever runs as the server's user.
pub fn prepare(
    runtimes: &Runtimes,
    sandboxer: &Sandboxer,
    runtime: Runtime,
    version: Option<&str>,
    dir: &Path,
) -> Prepared {
    let info = runtimes.for_version(runtime, version);
    crate::kinds::of(runtime).prepare(info.as_deref().map_err(String::as_str), sandboxer, dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plain() -> Sandboxer {
        let mut cfg = lampyr_sandbox::SandboxConfig::new(std::env::temp_dir(), "test".into());
        cfg.mode = lampyr_sandbox::IsolationMode::Off;
        Sandboxer::new(cfg).unwrap()
    }

    #[test]
    fn python_modules_get_bytecode_and_broken_ones_do_not_stop_it() {
        let runtimes = Runtimes::discover();
        let Ok(py) = runtimes.get(Runtime::Python) else {
            panic!("this test needs Python 3.9 or later on PATH");
        };
        let sandboxer = plain();
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        std::fs::create_dir_all(root.join("vendored")).unwrap();
        std::fs::write(root.join("index.py"), "def handler(e, c):\n    return 1\n").unwrap();
        std::fs::write(root.join("vendored/lib.py"), "VALUE = 2\n").unwrap();
        std::fs::write(root.join("broken.py"), "print 'python 2'\n").unwrap();
        let got = prepare(&runtimes, &sandboxer, Runtime::Python, None, root);
        assert_eq!(got, Prepared::Compiled { modules: 2 });
        let tag = format!(
            "cpython-{}",
            py.version.split('.').take(2).collect::<Vec<_>>().join("")
        );
        for (dir, name) in [("", "index"), ("vendored", "lib")] {
            let pyc = root
                .join(dir)
                .join("__pycache__")
                .join(format!("{name}.{tag}.pyc"));
            let bytes = std::fs::read(&pyc).unwrap_or_else(|e| panic!("{}: {e}", pyc.display()));
            // PEP 552 flags word: bit 0 hash-based, bit 1 check_source (off).
            assert_eq!(
                &bytes[4..8],
                &[1, 0, 0, 0],
                "{}: unchecked hash",
                pyc.display()
            );
        }
        assert!(!root
            .join("__pycache__")
            .join(format!("broken.{tag}.pyc"))
            .exists());
        assert_eq!(
            prepare(&runtimes, &sandboxer, Runtime::Nodejs, None, root),
            Prepared::Nothing
        );
    }
}
