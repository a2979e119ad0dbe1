//! Finding the language runtimes on the host.
//!
//! Each runtime is looked up on `PATH` (or taken from the variable its kind
//! names, e.g. `LAMPYR_NODE`, `LAMPYR_PYTHON`), then asked for its real executable and version. Asking
//! the interpreter itself resolves shims such as pyenv's, which would
//! otherwise add ~200 ms to every start.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, OnceLock};

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

/// Where to look for one runtime's interpreters, from the server
/// configuration (`[runtimes.NAME]`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Interpreters {
    /// The default interpreter, instead of the first on `PATH` (the
    /// runtime's variable, e.g. `LAMPYR_PYTHON`, still wins).
    pub default: Option<PathBuf>,
    /// Other interpreters, for functions that ask for their version.
    pub others: Vec<PathBuf>,
    /// Also look where version managers (pyenv, nvm, asdf, ...) and
    /// distributions install other versions.
    pub scan: bool,
}

/// What discovery found for each runtime: a default interpreter each, and
/// the other installed versions, looked up the first time something asks
/// for them (a function naming a version the default is not, `lampyr
/// doctor`), so that starting a server probes one interpreter per runtime.
#[derive(Debug, Clone)]
pub struct Runtimes {
    found: Vec<(Runtime, Result<RuntimeInfo, String>)>,
    config: Vec<(Runtime, Interpreters)>,
    others: Arc<OnceLock<Vec<Other>>>,
}

/// An interpreter besides a runtime's default.
#[derive(Debug, Clone)]
struct Other {
    runtime: Runtime,
    /// Named in the configuration (its problems are reported), or found by
    /// a scan (silently skipped when unusable).
    configured: bool,
    found: Result<RuntimeInfo, String>,
}

impl Runtimes {
    /// Looks up every runtime with the default settings (`PATH`, the
    /// runtimes' variables, the usual places of other versions).
    pub fn discover() -> Self {
        Self::discover_with(&[])
    }

    /// Looks up every runtime, with the settings of those in `config`.
    pub fn discover_with(config: &[(Runtime, Interpreters)]) -> Self {
        let config: Vec<(Runtime, Interpreters)> = Runtime::ALL
            .iter()
            .map(|&rt| {
                let c = config
                    .iter()
                    .find(|(r, _)| *r == rt)
                    .map(|(_, c)| c.clone());
                (
                    rt,
                    c.unwrap_or(Interpreters {
                        scan: true,
                        ..Default::default()
                    }),
                )
            })
            .collect();
        let mut found: Vec<(Runtime, Result<RuntimeInfo, String>)> = config
            .iter()
            .map(|(rt, c)| (*rt, find(*rt, c.default.as_deref())))
            .collect();
        // A custom runtime's instances see the host's interpreters.
        let infos: Vec<&RuntimeInfo> = found.iter().filter_map(|(_, r)| r.as_ref().ok()).collect();
        let shared = crate::kinds::shared_prefixes(&infos);
        for (rt, r) in &mut found {
            if let (Runtime::Provided, Ok(info)) = (*rt, r) {
                info.shared_prefixes = shared.clone();
            }
        }
        Runtimes {
            found,
            config,
            others: Arc::default(),
        }
    }

    /// The default interpreter of `runtime`, or why this host has none.
    pub fn get(&self, runtime: Runtime) -> Result<&RuntimeInfo, &str> {
        self.found
            .iter()
            .find(|(rt, _)| *rt == runtime)
            .map_or(Err("not looked up"), |(_, r)| {
                r.as_ref().map_err(|e| e.as_str())
            })
    }

    /// Every usable interpreter of `runtime`: the default first, then the
    /// others, newest first.
    pub fn installed(&self, runtime: Runtime) -> Vec<&RuntimeInfo> {
        let mut all: Vec<&RuntimeInfo> = self.get(runtime).into_iter().collect();
        all.extend(
            self.others()
                .iter()
                .filter(|o| o.runtime == runtime)
                .filter_map(|o| o.found.as_ref().ok()),
        );
        all
    }

    /// Interpreters the configuration names that cannot be used, and why.
    pub fn problems(&self, runtime: Runtime) -> Vec<&str> {
        self.others()
            .iter()
            .filter(|o| o.runtime == runtime && o.configured)
            .filter_map(|o| o.found.as_ref().err().map(String::as_str))
            .collect()
    }

    /// The interpreter that runs a function of `runtime` asking for
    /// `version` (`20`, `3.12`; `None`: any): the default if it is that
    /// version, else the newest other one that is. The error names what
    /// is installed and what to do.
    pub fn for_version(
        &self,
        runtime: Runtime,
        version: Option<&str>,
    ) -> Result<&RuntimeInfo, String> {
        let default = self.get(runtime).map_err(str::to_string)?;
        let Some(required) = version else {
            return Ok(default);
        };
        let installed = self.installed(runtime);
        if let Some(info) = installed
            .iter()
            .find(|i| lampyr_api::runtimes::version_satisfies(required, &i.version))
        {
            return Ok(info);
        }
        let list: Vec<String> = installed
            .iter()
            .map(|i| format!("{} ({})", i.version, i.path.display()))
            .collect();
        Err(format!(
            "this host has no {runtime} {required}: installed {} {}; install {runtime} {required}, or name its interpreter under [runtimes.{runtime}] interpreters in the server config (`lampyr doctor` lists what is found)",
            if list.len() == 1 { "is" } else { "are" },
            list.join(", "),
        ))
    }

    fn others(&self) -> &[Other] {
        self.others.get_or_init(|| {
            let mut wanted: Vec<(Runtime, bool, PathBuf)> = Vec::new();
            for (rt, c) in &self.config {
                let d = crate::kinds::of(*rt).discovery();
                wanted.extend(c.others.iter().map(|p| (*rt, true, p.clone())));
                if c.scan {
                    for pattern in d.scan {
                        wanted.extend(expand(pattern).into_iter().map(|p| (*rt, false, p)));
                    }
                }
            }
            // Probes run at once: each starts an interpreter.
            let probed: Vec<Other> = std::thread::scope(|s| {
                let handles: Vec<_> = wanted
                    .into_iter()
                    .map(|(rt, configured, path)| {
                        s.spawn(move || {
                            let d = crate::kinds::of(rt).discovery();
                            let found = probe_one(rt, &path, d.probe, d.min_version)
                                .map_err(|e| format!("{}: {e}", path.display()));
                            Other {
                                runtime: rt,
                                configured,
                                found,
                            }
                        })
                    })
                    .collect();
                handles.into_iter().filter_map(|h| h.join().ok()).collect()
            });
            let mut seen: Vec<PathBuf> = self
                .found
                .iter()
                .filter_map(|(_, f)| f.as_ref().ok().map(|i| i.path.clone()))
                .collect();
            let mut others = Vec::new();
            for o in probed {
                match &o.found {
                    Ok(info) if seen.contains(&info.path) => continue,
                    Ok(info) => seen.push(info.path.clone()),
                    Err(_) if !o.configured => continue,
                    Err(_) => {}
                }
                others.push(o);
            }
            others.sort_by(|a, b| match (&a.found, &b.found) {
                (Ok(x), Ok(y)) => version_key(&y.version).cmp(&version_key(&x.version)),
                (a, b) => a.is_err().cmp(&b.is_err()),
            });
            others
        })
    }
}

fn version_key(v: &str) -> Vec<u32> {
    v.trim_start_matches('v')
        .split('.')
        .map(|p| p.parse().unwrap_or(0))
        .collect()
}

/// The paths a [`crate::kinds::Discovery::scan`] pattern names that exist.
fn expand(pattern: &str) -> Vec<PathBuf> {
    if !pattern.contains('/') {
        let Some(path) = std::env::var_os("PATH") else {
            return Vec::new();
        };
        // Version managers' shims (pyenv's) are scripts that pick a version
        // by directory; the versions themselves are scanned where they are.
        return std::env::split_paths(&path)
            .filter(|dir| !dir.ends_with("shims"))
            .flat_map(|dir| matching(&dir, pattern))
            .filter(|p| is_executable(p))
            .collect();
    }
    let full = if let Some(rest) = pattern.strip_prefix("~/") {
        match std::env::var_os("HOME") {
            Some(home) => PathBuf::from(home).join(rest),
            None => return Vec::new(),
        }
    } else if let Some(rest) = pattern.strip_prefix('$') {
        let (var, rest) = rest.split_once('/').unwrap_or((rest, ""));
        match std::env::var_os(var) {
            Some(v) if !v.is_empty() => PathBuf::from(v).join(rest),
            _ => return Vec::new(),
        }
    } else {
        PathBuf::from(pattern)
    };
    let mut paths = vec![PathBuf::from("/")];
    for part in full.components().skip(1) {
        let part = part.as_os_str().to_string_lossy();
        paths = if part.contains('*') {
            paths.iter().flat_map(|dir| matching(dir, &part)).collect()
        } else {
            paths.into_iter().map(|p| p.join(&*part)).collect()
        };
    }
    paths.into_iter().filter(|p| is_executable(p)).collect()
}

/// The entries of `dir` whose names match `pattern` (one `*`), sorted;
/// not the helper scripts beside interpreters (`python3.11-config`).
fn matching(dir: &Path, pattern: &str) -> Vec<PathBuf> {
    let (head, tail) = pattern.split_once('*').unwrap_or((pattern, ""));
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name.len() >= head.len() + tail.len()
                && name.starts_with(head)
                && name.ends_with(tail)
                && !name.ends_with("-config")
        })
        .map(|e| e.path())
        .collect();
    out.sort();
    out
}

fn find(runtime: Runtime, configured: Option<&Path>) -> Result<RuntimeInfo, String> {
    let d = crate::kinds::of(runtime).discovery();
    let var = d.env_var;
    let candidates: Vec<PathBuf> = match (std::env::var_os(var), configured) {
        (Some(p), _) => vec![PathBuf::from(p)],
        (None, Some(p)) => vec![p.to_path_buf()],
        (None, None) => {
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
    fn scan_patterns_match_within_one_component() {
        let dir = std::env::temp_dir().join(format!("lampyr-scan-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for v in ["3.10.1", "3.12.0", "other"] {
            let bin = dir.join("versions").join(v).join("bin");
            std::fs::create_dir_all(&bin).unwrap();
            if v != "other" {
                std::fs::write(bin.join("python3"), "").unwrap();
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(
                    bin.join("python3"),
                    std::fs::Permissions::from_mode(0o755),
                )
                .unwrap();
            }
        }
        std::fs::write(dir.join("python3.11"), "").unwrap();
        std::fs::write(dir.join("python3.11-config"), "").unwrap();
        let found = expand(&format!("{}/versions/*/bin/python3", dir.display()));
        assert_eq!(
            found,
            vec![
                dir.join("versions/3.10.1/bin/python3"),
                dir.join("versions/3.12.0/bin/python3")
            ]
        );
        assert_eq!(matching(&dir, "python3.*"), vec![dir.join("python3.11")]);
        assert!(expand("$LAMPYR_SURELY_UNSET_VARIABLE/bin/node").is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn versions_sort_numerically() {
        assert!(version_key("3.10.1") > version_key("3.9.18"));
        assert!(version_key("v20.1.0") > version_key("v18.20.0"));
    }

    #[test]
    fn a_version_is_chosen_among_the_installed_or_refused_naming_them() {
        let rts = Runtimes::discover();
        let default = rts.get(Runtime::Python).unwrap().clone();
        let minor: String = default
            .version
            .splitn(3, '.')
            .take(2)
            .collect::<Vec<_>>()
            .join(".");
        assert_eq!(
            rts.for_version(Runtime::Python, None).unwrap().path,
            default.path
        );
        assert_eq!(
            rts.for_version(Runtime::Python, Some(&minor)).unwrap().path,
            default.path
        );
        for info in rts.installed(Runtime::Python) {
            let minor: String = info
                .version
                .splitn(3, '.')
                .take(2)
                .collect::<Vec<_>>()
                .join(".");
            let chosen = rts.for_version(Runtime::Python, Some(&minor)).unwrap();
            assert!(lampyr_api::runtimes::version_satisfies(
                &minor,
                &chosen.version
            ));
        }
        let err = rts.for_version(Runtime::Python, Some("2.1")).unwrap_err();
        assert!(err.contains("no python 2.1"), "{err}");
        assert!(err.contains(&default.version), "{err}");
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
