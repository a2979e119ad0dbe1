//! Node.js (18 or later): `runtimes/nodejs/bootstrap.js`. Nothing is
//! prepared at deploy, and instances start fresh.

use lampyr_api::Runtime;

use super::{Discovery, File, Kind};

pub(super) struct Nodejs;

pub(super) static NODEJS: Nodejs = Nodejs;

static DISCOVERY: Discovery = Discovery {
    env_var: "LAMPYR_NODE",
    names: &["node", "nodejs"],
    probe: &[
        "-e",
        "const p = require('path'); process.stdout.write([process.execPath, process.versions.node, p.resolve(process.execPath, '..', '..')].join('\\n'))",
    ],
    beside_lampyr: false,
    min_version: (18, 0),
};

static FILES: &[File] = &[File {
    name: "bootstrap.js",
    contents: include_str!("../../../../runtimes/nodejs/bootstrap.js"),
}];

impl Kind for Nodejs {
    fn runtime(&self) -> Runtime {
        Runtime::Nodejs
    }

    fn discovery(&self) -> &'static Discovery {
        &DISCOVERY
    }

    fn files(&self) -> &'static [File] {
        FILES
    }
}
