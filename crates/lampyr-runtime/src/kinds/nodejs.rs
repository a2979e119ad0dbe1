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
    scan: &[
        "$NVM_DIR/versions/node/*/bin/node",
        "~/.nvm/versions/node/*/bin/node",
        "$FNM_DIR/node-versions/*/installation/bin/node",
        "~/.local/share/fnm/node-versions/*/installation/bin/node",
        "~/.volta/tools/image/node/*/bin/node",
        "~/.asdf/installs/nodejs/*/bin/node",
        "/usr/local/n/versions/node/*/bin/node",
        "/opt/node*/bin/node",
    ],
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
