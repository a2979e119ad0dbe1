//! Deploy-time preparation of a function's code for its runtime, so that the
//! first request does less work.
//!
//! Python: every module of the package is compiled to bytecode, into the
//! usual `__pycache__` directories, by the interpreter that will run it.
//! The files are "unchecked-hash" `.pyc`s: a version's code never changes
//! (it is content-addressed and sealed read-only), so an import uses them
//! without looking at the source's timestamp. Instances run with `-B`,
//! which stops them writing bytecode, not reading it.
//!
//! Node.js needs nothing here.
//!
//! Preparation is best effort: a module that does not compile (a syntax
//! error, Python 2 code in a vendored package) is left as it is, and the
//! import reports the error as it would have without preparation.

use std::path::Path;
use std::time::Duration;

use lampyr_api::Runtime;
use lampyr_sandbox::job::JobSpec;
use lampyr_sandbox::Sandboxer;

use crate::{RuntimeInfo, Runtimes};

/// How long compiling one package may take before it is abandoned.
const COMPILE_LIMIT: Duration = Duration::from_secs(120);

/// What [`prepare`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Prepared {
    /// Nothing to do for this runtime or this code.
    Nothing,
    /// Python modules compiled to bytecode.
    Compiled { modules: usize },
    /// Preparation was not possible; the code runs unprepared.
    Skipped(String),
}

/// Prepares the unpacked code in `dir` (still writable) for `runtime`.
///
/// The work runs as a one-off job of the sandbox ([`Sandboxer::run_job`]):
/// jailed where the host allows it, unprivileged, without the network,
/// able to write `dir` alone, and killed with the server. Nothing of the
/// package ever runs as the server's user.
pub fn prepare(
    runtimes: &Runtimes,
    sandboxer: &Sandboxer,
    runtime: Runtime,
    dir: &Path,
) -> Prepared {
    match runtime {
        Runtime::Nodejs => Prepared::Nothing,
        Runtime::Python => match runtimes.get(Runtime::Python) {
            Ok(py) => compile_python(py, sandboxer, dir),
            Err(e) => Prepared::Skipped(format!("no Python to compile with: {e}")),
        },
    }
}

/// Whether the package has a Python module: a regular `.py` file, found
/// without following symbolic links.
fn has_python_modules(dir: &Path) -> bool {
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(t) = e.file_type() else { continue };
            let p = e.path();
            if t.is_dir() {
                todo.push(p);
            } else if t.is_file() && p.extension().is_some_and(|x| x == "py") {
                return true;
            }
        }
    }
    false
}

fn compile_python(py: &RuntimeInfo, sandboxer: &Sandboxer, dir: &Path) -> Prepared {
    if !has_python_modules(dir) {
        return Prepared::Nothing;
    }
    // `-I`: no environment variables, no user site. compileall walks the
    // tree itself and does not descend into linked directories; inside
    // the jail no link leads anywhere but the tree.
    let task = sandboxer.guest_job_dir(dir);
    let args: Vec<std::ffi::OsString> = vec![
        "-I".into(),
        "-m".into(),
        "compileall".into(),
        "-q".into(),
        "--invalidation-mode".into(),
        "unchecked-hash".into(),
        task.into(),
    ];
    let id = format!(
        "compile-{}",
        dir.file_name().and_then(|n| n.to_str()).unwrap_or("code")
    );
    let job = JobSpec {
        id: &id,
        program: &py.path,
        program_prefix: Some(&py.prefix),
        args,
        env: vec![
            ("PATH".into(), "/usr/local/bin:/usr/bin:/bin".into()),
            ("LANG".into(), "C.UTF-8".into()),
        ],
        task_dir: dir,
        memory_mb: COMPILE_MEMORY_MB,
        timeout: COMPILE_LIMIT,
    };
    match sandboxer.run_job(&job) {
        Err(e) => Prepared::Skipped(format!("cannot run the compiler: {e}")),
        Ok(out) if out.status.is_none() => Prepared::Skipped(format!(
            "compiling took longer than {}s",
            COMPILE_LIMIT.as_secs()
        )),
        Ok(out) if out.oom_killed => Prepared::Skipped(format!(
            "compiling needed more than {COMPILE_MEMORY_MB} MiB"
        )),
        // compileall exits with 1 when some module did not compile; the
        // others are compiled all the same.
        Ok(_) => Prepared::Compiled {
            modules: count_bytecode(dir),
        },
    }
}

/// The memory limit of the compile job.
const COMPILE_MEMORY_MB: u32 = 512;

/// How many compiled modules the tree now holds.
fn count_bytecode(dir: &Path) -> usize {
    let mut n = 0;
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(t) = e.file_type() else { continue };
            let p = e.path();
            if t.is_dir() {
                todo.push(p);
            } else if t.is_file() && p.extension().is_some_and(|x| x == "pyc") {
                n += 1;
            }
        }
    }
    n
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
        let got = prepare(&runtimes, &sandboxer, Runtime::Python, root);
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
            prepare(&runtimes, &sandboxer, Runtime::Nodejs, root),
            Prepared::Nothing
        );
    }
}
