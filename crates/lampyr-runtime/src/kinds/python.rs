//! Python (3.9 or later): `runtimes/python/bootstrap.py`.
//!
//! * Instances run with `-s` (no user site-packages) and `-B` (no bytecode
//!   written into the read-only code), unbuffered.
//! * At deploy every module of the package is compiled to bytecode, into
//!   the usual `__pycache__` directories, by the interpreter that will run
//!   it. The files are "unchecked-hash" `.pyc`s: a version's code never
//!   changes (it is content-addressed and sealed read-only), so an import
//!   uses them without looking at the source's timestamp. `-B` stops
//!   instances writing bytecode, not reading it.
//! * Instances can be forked from a zygote (`runtimes/python/zygote.py`)
//!   that has imported the bootstrap and the common standard library once.

use std::path::Path;
use std::time::Duration;

use lampyr_api::Runtime;
use lampyr_sandbox::job::JobSpec;
use lampyr_sandbox::Sandboxer;

use super::{Discovery, File, Kind, Prepared, Zygote};
use crate::RuntimeInfo;

pub(super) struct Python;

pub(super) static PYTHON: Python = Python;

static DISCOVERY: Discovery = Discovery {
    env_var: "LAMPYR_PYTHON",
    names: &["python3", "python"],
    probe: &[
        "-c",
        "import sys; print(sys.executable); print('%d.%d.%d' % sys.version_info[:3]); print(sys.base_prefix)",
    ],
    beside_lampyr: false,
    min_version: (3, 9),
    scan: &[
        "python3.*",
        "$PYENV_ROOT/versions/*/bin/python3",
        "~/.pyenv/versions/*/bin/python3",
        "~/.asdf/installs/python/*/bin/python3",
        "/usr/bin/python3.*",
        "/usr/local/bin/python3.*",
        "/opt/python*/bin/python3",
    ],
};

static FILES: &[File] = &[
    File {
        name: "bootstrap.py",
        contents: include_str!("../../../../runtimes/python/bootstrap.py"),
    },
    File {
        name: "zygote.py",
        contents: include_str!("../../../../runtimes/python/zygote.py"),
    },
];

static ZYGOTE: Zygote = Zygote {
    args: &["-s", "-B"],
    file: "zygote.py",
};

impl Kind for Python {
    fn runtime(&self) -> Runtime {
        Runtime::Python
    }

    fn discovery(&self) -> &'static Discovery {
        &DISCOVERY
    }

    fn files(&self) -> &'static [File] {
        FILES
    }

    fn args(&self) -> &'static [&'static str] {
        // No user site-packages, no .pyc writes into the read-only code.
        &["-s", "-B"]
    }

    fn env(&self) -> &'static [(&'static str, &'static str)] {
        &[("PYTHONUNBUFFERED", "1"), ("PYTHONDONTWRITEBYTECODE", "1")]
    }

    fn prepare(
        &self,
        info: Result<&RuntimeInfo, &str>,
        sandboxer: &Sandboxer,
        dir: &Path,
    ) -> Prepared {
        match info {
            Ok(py) => compile(py, sandboxer, dir),
            Err(e) => Prepared::Skipped(format!("no Python to compile with: {e}")),
        }
    }

    fn zygote(&self) -> Option<&'static Zygote> {
        Some(&ZYGOTE)
    }
}

/// How long compiling one package may take before it is abandoned.
const COMPILE_LIMIT: Duration = Duration::from_secs(120);

/// How many regular files ending in `.EXT` the tree holds, found without
/// following symbolic links; counting stops at `enough`.
fn count_files(dir: &Path, ext: &str, enough: usize) -> usize {
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
            } else if t.is_file() && p.extension().is_some_and(|x| x == ext) {
                n += 1;
                if n >= enough {
                    return n;
                }
            }
        }
    }
    n
}

fn compile(py: &RuntimeInfo, sandboxer: &Sandboxer, dir: &Path) -> Prepared {
    if count_files(dir, "py", 1) == 0 {
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
            modules: count_files(dir, "pyc", usize::MAX),
        },
    }
}

/// The memory limit of the compile job.
const COMPILE_MEMORY_MB: u32 = 512;
