//! The runtime kinds, one module each, behind [`Kind`]: how a runtime is
//! found on the host, which bootstrap files it runs, its interpreter's
//! arguments and environment, what it prepares when code is deployed, and
//! whether its instances can be forked from a zygote. What needs no
//! interpreter (names, handler extensions, the `lampyr init` template, pool
//! sizes) is the runtime's row in `lampyr_api::runtimes`.
//!
//! Adding a runtime: a variant and a row in `lampyr_api::runtimes`, a
//! module here implementing [`Kind`], listed in [`of`], and its bootstrap
//! under `runtimes/NAME/`.

mod nodejs;
mod provided;
mod python;

pub(crate) use provided::search_paths;
pub use provided::{shared_prefixes, SHIM};

use std::ffi::OsString;
use std::path::Path;

use lampyr_api::Runtime;
use lampyr_sandbox::Sandboxer;

use crate::RuntimeInfo;

/// What preparing deployed code did ([`Kind::prepare`],
/// [`crate::prebuild::prepare`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Prepared {
    /// Nothing to do for this runtime or this code.
    Nothing,
    /// Python modules compiled to bytecode.
    Compiled { modules: usize },
    /// Preparation was not possible; the code runs unprepared.
    Skipped(String),
}

/// How to find a runtime's interpreter.
#[derive(Debug)]
pub struct Discovery {
    /// An environment variable naming the interpreter, which wins over
    /// `PATH`.
    pub env_var: &'static str,
    /// Executable names to look for on `PATH`, in order.
    pub names: &'static [&'static str],
    /// Arguments that make the interpreter print three lines: its real
    /// executable, its version (`MAJOR.MINOR.PATCH`) and its installation
    /// prefix.
    pub probe: &'static [&'static str],
    /// The oldest version lampyr runs (major, minor).
    pub min_version: (u32, u32),
    /// Where other installed versions are, besides the default: patterns
    /// of paths where `~` is the home directory, `$VAR` an environment
    /// variable (a pattern whose variable is unset is skipped) and `*`
    /// matches within one path component. A pattern without `/` is looked
    /// for in every `PATH` directory (`python3.*`).
    pub scan: &'static [&'static str],
    /// Looked for beside the running `lampyr` before `PATH` (a program
    /// of lampyr's own).
    pub beside_lampyr: bool,
}

/// A file a runtime's instances read from `/var/runtime`.
#[derive(Debug)]
pub struct File {
    pub name: &'static str,
    pub contents: &'static str,
}

/// How instances of a runtime are forked from a pre-initialised process:
/// the zygote program runs with these arguments (the bootstrap's path is in
/// `LAMPYR_BOOTSTRAP`) and speaks the sandbox's adopt protocol
/// (`lampyr_sandbox::zygote`).
#[derive(Debug)]
pub struct Zygote {
    /// Interpreter arguments; the zygote's file, among [`Kind::files`], as
    /// the instance sees it, follows them.
    pub args: &'static [&'static str],
    /// The zygote's file name.
    pub file: &'static str,
}

/// One runtime kind.
pub trait Kind: Send + Sync + 'static {
    fn runtime(&self) -> Runtime;

    /// How to find its interpreter.
    fn discovery(&self) -> &'static Discovery;

    /// The files installed under `runtime/NAME/` of the data directory;
    /// the first is the bootstrap the interpreter runs. None when the
    /// program found by [`Kind::discovery`] runs alone ([`Kind::own_program`]).
    fn files(&self) -> &'static [File];

    /// The program found by discovery is lampyr's own and runs alone, with
    /// no bootstrap file: it is copied under `runtime/NAME/` by
    /// [`crate::bootstrap::install_program`] and instances run that copy
    /// (which a jail shows at `/var/runtime`). `provided`'s Runtime API shim.
    fn own_program(&self) -> bool {
        false
    }

    /// The interpreter's arguments before the bootstrap's path.
    fn args(&self) -> &'static [&'static str] {
        &[]
    }

    /// Environment variables of its instances, besides the platform's.
    fn env(&self) -> &'static [(&'static str, &'static str)] {
        &[]
    }

    /// Prepares freshly deployed code in `dir` (still writable) with the
    /// interpreter `info` (or why this host has none), as a job of
    /// `sandboxer`. Best effort.
    fn prepare(
        &self,
        info: Result<&RuntimeInfo, &str>,
        sandboxer: &Sandboxer,
        dir: &Path,
    ) -> Prepared {
        let _ = (info, sandboxer, dir);
        Prepared::Nothing
    }

    /// Its zygote, if its instances can be forked from one.
    fn zygote(&self) -> Option<&'static Zygote> {
        None
    }
}

/// The kind of `runtime`.
pub fn of(runtime: Runtime) -> &'static dyn Kind {
    match runtime {
        Runtime::Nodejs => &nodejs::NODEJS,
        Runtime::Python => &python::PYTHON,
        Runtime::Provided => &provided::PROVIDED,
    }
}

/// The bootstrap file of a runtime, if it has one.
pub fn bootstrap(runtime: Runtime) -> Option<&'static File> {
    of(runtime).files().first()
}

/// The interpreter's arguments to run the bootstrap at `runtime_dir` (as
/// the instance sees it), and the runtime's own environment.
pub(crate) fn command_line(
    runtime: Runtime,
    runtime_dir: &Path,
) -> (Vec<OsString>, Vec<(OsString, OsString)>) {
    let kind = of(runtime);
    let mut args: Vec<OsString> = kind.args().iter().map(OsString::from).collect();
    if let Some(b) = bootstrap(runtime) {
        args.push(runtime_dir.join(b.name).into());
    }
    let env = kind
        .env()
        .iter()
        .map(|(k, v)| (OsString::from(k), OsString::from(v)))
        .collect();
    (args, env)
}

/// Starts `runtime`'s zygote in `sandboxer` with the interpreter `info`,
/// its files installed under `bootstrap_dir` (see [`crate::bootstrap`]).
/// `Ok(false)`: the runtime has none.
pub fn start_zygote(
    runtime: Runtime,
    info: &RuntimeInfo,
    sandboxer: &Sandboxer,
    bootstrap_dir: &Path,
) -> Result<bool, lampyr_sandbox::SandboxError> {
    let kind = of(runtime);
    let (Some(z), Some(b)) = (kind.zygote(), bootstrap(runtime)) else {
        return Ok(false);
    };
    let host_dir = bootstrap_dir.join(runtime.as_str());
    let guest_dir = Path::new(lampyr_sandbox::GUEST_RUNTIME_DIR);
    let mut args: Vec<OsString> = z.args.iter().map(OsString::from).collect();
    args.push(guest_dir.join(z.file).into());
    let mut env: Vec<(OsString, OsString)> = kind
        .env()
        .iter()
        .map(|(k, v)| (OsString::from(k), OsString::from(v)))
        .collect();
    env.push(("LAMPYR_BOOTSTRAP".into(), guest_dir.join(b.name).into()));
    sandboxer.start_zygote(&lampyr_sandbox::ZygoteSpec {
        program: &info.path,
        prefix: &info.prefix,
        runtime_dir: &host_dir,
        args,
        env,
    })?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_runtime_has_a_kind_with_its_bootstrap_first() {
        for rt in Runtime::ALL {
            let k = of(rt);
            assert_eq!(k.runtime(), rt);
            match k.files().first() {
                Some(b) => assert!(b.name.starts_with("bootstrap."), "{rt}"),
                None => assert!(k.own_program(), "{rt}"),
            }
            if let Some(z) = k.zygote() {
                assert!(k.files().iter().any(|f| f.name == z.file), "{rt}");
            }
            assert!(!k.discovery().names.is_empty());
        }
    }
}
