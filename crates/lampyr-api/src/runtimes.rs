//! The language runtimes lampyr knows, as one table: what the manifest,
//! the CLI and the server need to know of each without running it (its
//! name, the handler files it loads, the hello-world `lampyr init` writes,
//! its pool's default size). How a runtime is found, started and prepared
//! lives beside its bootstrap, in `lampyr-runtime`'s `kinds` module.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A language runtime lampyr can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Runtime {
    Nodejs,
    Python,
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
    /// The file extensions a handler module may have, in lookup order.
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

impl Runtime {
    pub const ALL: [Runtime; 2] = [Runtime::Nodejs, Runtime::Python];

    /// The runtime's row of the table.
    pub fn descriptor(self) -> &'static Descriptor {
        match self {
            Runtime::Nodejs => &NODEJS,
            Runtime::Python => &PYTHON,
        }
    }

    pub fn as_str(self) -> &'static str {
        self.descriptor().name
    }

    /// The file extensions a handler module may have, in lookup order.
    pub fn extensions(self) -> &'static [&'static str] {
        self.descriptor().extensions
    }
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
            assert!(!d.extensions.is_empty());
            let ext = d.template.0.rsplit('.').next().unwrap();
            assert!(
                d.extensions.contains(&ext),
                "{}: template {}",
                d.name,
                d.template.0
            );
            assert!(d.pool.0 <= d.pool.1);
        }
        let e = "ruby".parse::<Runtime>().unwrap_err();
        assert_eq!(e, "unknown runtime 'ruby': use \"nodejs\" or \"python\"");
    }
}
