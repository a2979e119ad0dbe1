//! Finding the language runtimes on the host.
//!
//! Each runtime is looked up on `PATH` (or taken from the variable its kind
//! names, e.g. `LAMPYR_NODE`, `LAMPYR_PYTHON`), then asked for its real executable and version. Asking
//! the interpreter itself resolves shims such as pyenv's, which would
//! otherwise add ~200 ms to every start.

use std::path::{Path, PathBuf};
use std::process::Command;

use lampyr_api::Runtime;

/// A runtime found on this host.
#[derive(Debug, Clone)]
pub struct RuntimeInfo {
    pub runtime: Runtime,
    /// The real interpreter binary.
    pub path: PathBuf,
    /// The version it reports, e.g. `20.20.2` or `3.11.7`.
    pub version: String,
    /// The installation prefix holding the binary and its libraries, e.g.
    /// `/usr` or `~/.pyenv/versions/3.11.7`; a sandbox makes it visible.
    pub prefix: PathBuf,
    /// Other installation prefixes its instances see: (host directory,
    /// where a jail shows it). A custom runtime (`provided`) sees the
    /// host's interpreters.
    pub shared_prefixes: Vec<(PathBuf, PathBuf)>,
}

/// What discovery found for each runtime.
#[derive(Debug, Clone)]
pub struct Runtimes {
    found: Vec<(Runtime, Result<RuntimeInfo, String>)>,
}

impl Runtimes {
    /// Looks up every runtime.
    pub fn discover() -> Self {
        let mut found: Vec<(Runtime, Result<RuntimeInfo, String>)> =
            Runtime::ALL.iter().map(|&rt| (rt, find(rt))).collect();
        let infos: Vec<&RuntimeInfo> = found.iter().filter_map(|(_, r)| r.as_ref().ok()).collect();
        let shared = crate::kinds::shared_prefixes(&infos);
        for (rt, r) in &mut found {
            if let (Runtime::Provided, Ok(info)) = (*rt, r) {
                info.shared_prefixes = shared.clone();
            }
        }
        Runtimes { found }
    }

    /// The interpreter of `runtime`, or why this host has none.
    pub fn get(&self, runtime: Runtime) -> Result<&RuntimeInfo, &str> {
        self.found
            .iter()
            .find(|(rt, _)| *rt == runtime)
            .map_or(Err("not looked up"), |(_, r)| {
                r.as_ref().map_err(|e| e.as_str())
            })
    }
}

fn find(runtime: Runtime) -> Result<RuntimeInfo, String> {
    let d = crate::kinds::of(runtime).discovery();
    let var = d.env_var;
    let candidates: Vec<PathBuf> = match std::env::var_os(var) {
        Some(p) => vec![PathBuf::from(p)],
        None => {
            let beside = std::env::current_exe()
                .ok()
                .filter(|_| d.beside_lampyr)
                .into_iter()
                .flat_map(|me| d.names.iter().map(move |n| me.with_file_name(n)))
                .filter(|p| is_executable(p));
            beside
                .chain(d.names.iter().filter_map(|n| which(n)))
                .collect()
        }
    };
    if candidates.is_empty() {
        return Err(format!(
            "no {} found on PATH: install {} or set {var}",
            d.names.join(" or "),
            runtime.descriptor().requirement,
        ));
    }
    let mut problems = Vec::new();
    for cand in candidates {
        match probe_one(runtime, &cand, d.probe, d.min_version) {
            Ok(info) => return Ok(info),
            Err(e) => problems.push(format!("{}: {e}", cand.display())),
        }
    }
    Err(problems.join("; "))
}

fn probe_one(
    runtime: Runtime,
    cand: &Path,
    probe: &[&str],
    min: (u32, u32),
) -> Result<RuntimeInfo, String> {
    let out = Command::new(cand)
        .args(probe)
        .output()
        .map_err(|e| format!("cannot run it ({e})"))?;
    if !out.status.success() {
        return Err(format!(
            "it failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    let exe = lines.next().unwrap_or_default().trim();
    let version = lines.next().unwrap_or_default().trim().to_string();
    let prefix = lines.next().unwrap_or_default().trim();
    let path = std::fs::canonicalize(exe).map_err(|e| format!("cannot resolve {exe} ({e})"))?;
    let prefix = std::fs::canonicalize(prefix).unwrap_or_else(|_| {
        path.parent()
            .and_then(Path::parent)
            .unwrap_or(Path::new("/usr"))
            .to_path_buf()
    });
    let (major, minor) =
        parse_version(&version).ok_or_else(|| format!("unreadable version '{version}'"))?;
    if (major, minor) < min {
        return Err(format!(
            "version {version} is older than the {}.{} lampyr needs",
            min.0, min.1
        ));
    }
    Ok(RuntimeInfo {
        runtime,
        path,
        version,
        prefix,
        shared_prefixes: Vec::new(),
    })
}

fn parse_version(v: &str) -> Option<(u32, u32)> {
    let mut it = v.trim_start_matches('v').split('.');
    let major = it.next()?.parse().ok()?;
    let minor = it.next()?.parse().ok()?;
    Some((major, minor))
}

fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse() {
        assert_eq!(parse_version("20.20.2"), Some((20, 20)));
        assert_eq!(parse_version("v18.0.0"), Some((18, 0)));
        assert_eq!(parse_version("3.11.7"), Some((3, 11)));
        assert_eq!(parse_version("x"), None);
    }

    #[test]
    fn finds_real_binaries() {
        let rts = Runtimes::discover();
        // `provided`'s shim is lampyr's own, beside `lampyr`, not found
        // from a library test.
        for rt in [Runtime::Nodejs, Runtime::Python] {
            let info = rts.get(rt).unwrap_or_else(|e| panic!("{rt}: {e}"));
            // The real binary, not a shell script shim.
            let head = std::fs::read(&info.path).unwrap();
            assert_eq!(
                &head[..4],
                b"\x7fELF",
                "{} is not an ELF binary",
                info.path.display()
            );
        }
    }
}
