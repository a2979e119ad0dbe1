//! The language runtimes lampyr knows, as one table: what the manifest,
//! the CLI and the server need to know of each without running it (its
//! name, the handler files it loads, the hello-world `lampyr init` writes,
//! its pool's default size). How a runtime is found, started and prepared
//! lives beside its bootstrap, in `lampyr-runtime`'s `kinds` module.
//!
//! `provided` is Lambda's custom runtime (`provided.al2023`, `provided.al2`):
//! no interpreter, the function ships an executable `bootstrap` that speaks
//! the Lambda Runtime API (see `docs/custom-runtimes.md`).

use std::fmt;

use serde::{Deserialize, Serialize};

/// A language runtime lampyr can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Runtime {
    Nodejs,
    Python,
    /// A custom runtime: the function's own `bootstrap` over the Lambda
    /// Runtime API.
    Provided,
}

/// What lampyr knows of one runtime.
#[derive(Debug)]
pub struct Descriptor {
    /// Its name in manifests, configuration and the API.
    pub name: &'static str,
    /// Other names a manifest may use for it.
    pub aliases: &'static [&'static str],
    /// What a host needs to run it, for people, e.g. `Node.js >= 18`.
    pub requirement: &'static str,
    /// The file extensions a handler module may have, in lookup order;
    /// none when the runtime loads no handler module (`provided`).
    pub extensions: &'static [&'static str],
    /// The handler `lampyr init` writes: its file name and contents.
    pub template: (&'static str, &'static str),
    /// The default size of its pool of generic instances (min, max).
    pub pool: (u32, u32),
}

static NODEJS: Descriptor = Descriptor {
    name: "nodejs",
    aliases: &["node"],
    requirement: "Node.js >= 18",
    extensions: &["js", "mjs", "cjs"],
    template: (
        "index.js",
        include_str!("../../../runtimes/nodejs/template/index.js"),
    ),
    pool: (1, 8),
};

static PYTHON: Descriptor = Descriptor {
    name: "python",
    aliases: &["python3"],
    requirement: "Python >= 3.9",
    extensions: &["py"],
    template: (
        "index.py",
        include_str!("../../../runtimes/python/template/index.py"),
    ),
    pool: (1, 8),
};

/// The file a `provided` function runs: an executable at its code's root.
pub const PROVIDED_BOOTSTRAP: &str = "bootstrap";

static PROVIDED: Descriptor = Descriptor {
    name: "provided",
    aliases: &["provided.al2023", "provided.al2"],
    requirement: "lampyr-runtime-api installed beside lampyr",
    extensions: &[],
    template: (
        PROVIDED_BOOTSTRAP,
        include_str!("../../../runtimes/provided/template/bootstrap"),
    ),
    // Grown on demand (a cold start that found none raises the target):
    // a server whose functions bring no runtime of their own keeps none.
    pool: (0, 4),
};

impl Runtime {
    pub const ALL: [Runtime; 3] = [Runtime::Nodejs, Runtime::Python, Runtime::Provided];

    /// The runtime's row of the table.
    pub fn descriptor(self) -> &'static Descriptor {
        match self {
            Runtime::Nodejs => &NODEJS,
            Runtime::Python => &PYTHON,
            Runtime::Provided => &PROVIDED,
        }
    }

    pub fn as_str(self) -> &'static str {
        self.descriptor().name
    }

    /// The file extensions a handler module may have, in lookup order.
    pub fn extensions(self) -> &'static [&'static str] {
        self.descriptor().extensions
    }

    /// Whether the function brings its own runtime (an executable
    /// `bootstrap`) rather than a handler module for an interpreter.
    pub fn is_custom(self) -> bool {
        self == Runtime::Provided
    }
}

/// A runtime as a manifest names it: the language, and the version the
/// function asks for when named the way the clouds name runtimes
/// (Lambda's `nodejs20.x`, `python3.12`; Function Compute's `nodejs20`,
/// `python3.10`).
pub fn parse_runtime_id(s: &str) -> Result<(Runtime, Option<String>), String> {
    if let Ok(rt) = s.parse::<Runtime>() {
        return Ok((rt, None));
    }
    let cloud = |prefix: &str| s.strip_prefix(prefix);
    if let Some(v) = cloud("nodejs") {
        let major = v.strip_suffix(".x").unwrap_or(v);
        if !major.is_empty() && major.len() <= 3 && major.bytes().all(|b| b.is_ascii_digit()) {
            return Ok((Runtime::Nodejs, Some(major.to_string())));
        }
    }
    if let Some(v) = cloud("python") {
        if let Some((maj, min)) = v.split_once('.') {
            let digits =
                |x: &str| !x.is_empty() && x.len() <= 3 && x.bytes().all(|b| b.is_ascii_digit());
            if maj == "3" && digits(min) {
                return Ok((Runtime::Python, Some(v.to_string())));
            }
        }
    }
    Err(s.parse::<Runtime>().unwrap_err()
        + " (or a version as the clouds name them: \"nodejs20.x\", \"nodejs22.x\", \"python3.12\", \"nodejs20\", \"python3.10\")")
}

/// Whether an interpreter of version `found` (e.g. `20.20.2`) is the
/// version a function asks for (`20`, `3.12`).
pub fn version_satisfies(required: &str, found: &str) -> bool {
    let found = found.trim_start_matches('v');
    found == required || found.starts_with(&format!("{required}."))
}

impl fmt::Display for Runtime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Runtime {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Runtime::ALL
            .into_iter()
            .find(|rt| {
                let d = rt.descriptor();
                d.name == s || d.aliases.contains(&s)
            })
            .ok_or_else(|| {
                let names: Vec<String> = Runtime::ALL
                    .iter()
                    .map(|r| format!("\"{}\"", r.as_str()))
                    .collect();
                format!("unknown runtime '{s}': use {}", names.join(" or "))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_aliases_parse_and_the_table_is_whole() {
        for rt in Runtime::ALL {
            let d = rt.descriptor();
            assert_eq!(d.name.parse::<Runtime>().unwrap(), rt);
            for a in d.aliases {
                assert_eq!(a.parse::<Runtime>().unwrap(), rt);
            }
            assert_eq!(
                serde_json::to_string(&rt).unwrap(),
                format!("\"{}\"", d.name)
            );
            if rt.is_custom() {
                assert!(d.extensions.is_empty());
                assert_eq!(d.template.0, PROVIDED_BOOTSTRAP);
            } else {
                let ext = d.template.0.rsplit('.').next().unwrap();
                assert!(
                    d.extensions.contains(&ext),
                    "{}: template {}",
                    d.name,
                    d.template.0
                );
            }
            assert!(d.pool.0 <= d.pool.1);
        }
        let e = "ruby".parse::<Runtime>().unwrap_err();
        assert_eq!(
            e,
            "unknown runtime 'ruby': use \"nodejs\" or \"python\" or \"provided\""
        );
    }

    #[test]
    fn cloud_runtime_identifiers_name_a_language_and_a_version() {
        let ok = |s: &str| parse_runtime_id(s).unwrap();
        assert_eq!(ok("nodejs"), (Runtime::Nodejs, None));
        assert_eq!(ok("python"), (Runtime::Python, None));
        // Lambda's OS-only runtimes are lampyr's `provided`: the function
        // brings its own runtime, there is no interpreter version to check.
        assert_eq!(ok("provided.al2023"), (Runtime::Provided, None));
        assert_eq!(ok("provided.al2"), (Runtime::Provided, None));
        assert_eq!(ok("provided"), (Runtime::Provided, None));
        for (id, rt, v) in [
            ("nodejs18.x", Runtime::Nodejs, "18"),
            ("nodejs20.x", Runtime::Nodejs, "20"),
            ("nodejs22.x", Runtime::Nodejs, "22"),
            ("nodejs20", Runtime::Nodejs, "20"),
            ("python3.11", Runtime::Python, "3.11"),
            ("python3.12", Runtime::Python, "3.12"),
            ("python3.10", Runtime::Python, "3.10"),
        ] {
            assert_eq!(ok(id), (rt, Some(v.to_string())), "{id}");
        }
        for bad in [
            "nodejs.x",
            "nodejsx",
            "python2.7",
            "python3.x",
            "java21",
            "provided.al2099",
        ] {
            let e = parse_runtime_id(bad).unwrap_err();
            assert!(e.contains(bad) && e.contains("nodejs20.x"), "{bad}: {e}");
        }
        assert!(version_satisfies("20", "20.20.2"));
        assert!(version_satisfies("20", "v20.1.0"));
        assert!(!version_satisfies("2", "20.20.2"));
        assert!(version_satisfies("3.11", "3.11.7"));
        assert!(!version_satisfies("3.1", "3.11.7"));
        assert!(!version_satisfies("3.12", "3.11.7"));
    }
}
