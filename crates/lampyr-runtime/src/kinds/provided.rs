//! `provided`: a custom runtime, Lambda's `provided.al2023`. There is no
//! interpreter: the instance's runtime process is lampyr's Runtime API shim
//! (`lampyr-runtime-api`, crate `lampyr-runtime-api`), which speaks the
//! instance protocol on fd 3 and serves the Lambda Runtime API on the
//! instance's loopback to the function's own executable `bootstrap`.
//!
//! * The shim is found beside the running `lampyr` (or `PATH`, or
//!   `LAMPYR_RUNTIME_API_SHIM`) and, when an instance first starts, linked
//!   or copied into `runtime/provided/` of the data directory, which a jail
//!   shows at `/var/runtime`.
//! * A provided function sees `/usr` (the system's interpreters and tools)
//!   and the host's interpreters lampyr found outside `/usr`, read-only at
//!   `/opt/lampyr/NAME` (`/opt/lampyr/python` for a pyenv Python), with
//!   their `bin` first on `PATH` and their `lib` on `LD_LIBRARY_PATH`.
//! * Nothing is prepared at deploy; deploy checks that `bootstrap` is an
//!   executable file (`lampyr_package::check_handler`).

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use lampyr_api::Runtime;

use super::{Discovery, File, Kind};
use crate::RuntimeInfo;

/// The shim's executable name.
pub const SHIM: &str = "lampyr-runtime-api";

pub(super) struct Provided;

pub(super) static PROVIDED: Provided = Provided;

static DISCOVERY: Discovery = Discovery {
    env_var: "LAMPYR_RUNTIME_API_SHIM",
    names: &[SHIM],
    // The shim answers as an interpreter would: its path, lampyr's
    // version, and the directory it is in.
    probe: &["--probe"],
    min_version: (0, 0),
    beside_lampyr: true,
    // lampyr's own program: one version, the running lampyr's.
    scan: &[],
};

impl Kind for Provided {
    fn runtime(&self) -> Runtime {
        Runtime::Provided
    }

    fn discovery(&self) -> &'static Discovery {
        &DISCOVERY
    }

    fn files(&self) -> &'static [File] {
        &[]
    }

    fn own_program(&self) -> bool {
        true
    }
}

/// The host's interpreters (other than `provided`'s own) that a custom
/// runtime sees, where they are installed outside `/usr`: (host prefix,
/// where a jail shows it).
pub fn shared_prefixes(found: &[&RuntimeInfo]) -> Vec<(PathBuf, PathBuf)> {
    found
        .iter()
        .filter(|i| i.runtime != Runtime::Provided && !i.prefix.starts_with("/usr"))
        .map(|i| {
            (
                i.prefix.clone(),
                Path::new(lampyr_sandbox::GUEST_SHARED_PREFIXES).join(i.runtime.as_str()),
            )
        })
        .collect()
}

/// `PATH` and `LD_LIBRARY_PATH` for a custom runtime that sees the
/// prefixes at `guests` (as the instance sees them).
pub(crate) fn search_paths(guests: &[PathBuf]) -> Vec<(OsString, OsString)> {
    let join = |sub: &str, tail: &str| {
        let mut v: Vec<String> = guests
            .iter()
            .map(|g| g.join(sub).display().to_string())
            .collect();
        if !tail.is_empty() {
            v.push(tail.into());
        }
        v.join(":")
    };
    let mut env = vec![(
        OsString::from("PATH"),
        OsString::from(join("bin", "/usr/local/bin:/usr/bin:/bin")),
    )];
    if !guests.is_empty() {
        env.push(("LD_LIBRARY_PATH".into(), join("lib", "").into()));
    }
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interpreters_outside_usr_are_shared_with_their_bin_first_on_path() {
        let info = |rt, prefix: &str| RuntimeInfo {
            runtime: rt,
            path: Path::new(prefix).join("bin/x"),
            version: "1.0.0".into(),
            prefix: prefix.into(),
            shared_prefixes: Vec::new(),
        };
        let py = info(Runtime::Python, "/root/.pyenv/versions/3.11.7");
        let node = info(Runtime::Nodejs, "/usr");
        let me = info(Runtime::Provided, "/opt/lampyr-bin");
        let shared = shared_prefixes(&[&node, &py, &me]);
        assert_eq!(
            shared,
            vec![(
                PathBuf::from("/root/.pyenv/versions/3.11.7"),
                PathBuf::from("/opt/lampyr/python")
            )]
        );
        let guests: Vec<PathBuf> = shared.into_iter().map(|(_, g)| g).collect();
        assert_eq!(
            search_paths(&guests),
            vec![
                (
                    "PATH".into(),
                    "/opt/lampyr/python/bin:/usr/local/bin:/usr/bin:/bin".into()
                ),
                ("LD_LIBRARY_PATH".into(), "/opt/lampyr/python/lib".into()),
            ]
        );
        assert_eq!(search_paths(&[]).len(), 1);
    }
}
