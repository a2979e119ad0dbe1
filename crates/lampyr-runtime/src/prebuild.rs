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

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use lampyr_api::Runtime;

use crate::Runtimes;

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
pub fn prepare(runtimes: &Runtimes, runtime: Runtime, dir: &Path) -> Prepared {
    match runtime {
        Runtime::Nodejs => Prepared::Nothing,
        Runtime::Python => match runtimes.get(Runtime::Python) {
            Ok(py) => compile_python(&py.path, dir),
            Err(e) => Prepared::Skipped(format!("no Python to compile with: {e}")),
        },
    }
}

/// The package's Python modules: regular `.py` files, found without
/// following symbolic links (a package's links stay inside it, but could
/// loop).
fn python_modules(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
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
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

fn compile_python(python: &Path, dir: &Path) -> Prepared {
    let modules = python_modules(dir);
    if modules.is_empty() {
        return Prepared::Nothing;
    }
    // `-I`: no environment variables, no user site; `-i -`: the files to
    // compile, one per line, on stdin.
    let child = Command::new(python)
        .args([
            "-I",
            "-m",
            "compileall",
            "-q",
            "--invalidation-mode",
            "unchecked-hash",
            "-i",
            "-",
        ])
        .env_clear()
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => return Prepared::Skipped(format!("cannot run {}: {e}", python.display())),
    };
    let mut list = String::new();
    for m in &modules {
        // A name with a newline cannot be listed; it is compiled on import.
        if let Some(s) = m.to_str().filter(|s| !s.contains('\n')) {
            list.push_str(s);
            list.push('\n');
        }
    }
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(list.as_bytes());
    }
    let started = Instant::now();
    loop {
        match child.try_wait() {
            // compileall exits with 1 when some module did not compile;
            // the others are compiled all the same.
            Ok(Some(_)) => break,
            Ok(None) if started.elapsed() > COMPILE_LIMIT => {
                let _ = child.kill();
                let _ = child.wait();
                return Prepared::Skipped(format!(
                    "compiling took longer than {}s",
                    COMPILE_LIMIT.as_secs()
                ));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => return Prepared::Skipped(format!("waiting for compileall: {e}")),
        }
    }
    Prepared::Compiled {
        modules: modules.len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modules_are_found_without_following_links() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        std::fs::create_dir_all(root.join("pkg/sub")).unwrap();
        for f in ["index.py", "pkg/__init__.py", "pkg/sub/m.py", "notes.txt"] {
            std::fs::write(root.join(f), "x = 1\n").unwrap();
        }
        // A loop and a linked module: neither is followed.
        std::os::unix::fs::symlink("..", root.join("pkg/sub/up")).unwrap();
        std::os::unix::fs::symlink("index.py", root.join("alias.py")).unwrap();
        let found: Vec<String> = python_modules(root)
            .iter()
            .map(|p| p.strip_prefix(root).unwrap().display().to_string())
            .collect();
        assert_eq!(found, ["index.py", "pkg/__init__.py", "pkg/sub/m.py"]);
    }

    #[test]
    fn python_modules_get_bytecode_and_broken_ones_do_not_stop_it() {
        let runtimes = Runtimes::discover();
        let Ok(py) = runtimes.get(Runtime::Python) else {
            panic!("this test needs Python 3.9 or later on PATH");
        };
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        std::fs::create_dir_all(root.join("vendored")).unwrap();
        std::fs::write(root.join("index.py"), "def handler(e, c):\n    return 1\n").unwrap();
        std::fs::write(root.join("vendored/lib.py"), "VALUE = 2\n").unwrap();
        std::fs::write(root.join("broken.py"), "print 'python 2'\n").unwrap();
        let got = prepare(&runtimes, Runtime::Python, root);
        assert_eq!(got, Prepared::Compiled { modules: 3 });
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
        assert_eq!(prepare(&runtimes, Runtime::Nodejs, root), Prepared::Nothing);
    }
}
