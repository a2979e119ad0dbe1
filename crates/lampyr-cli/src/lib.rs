//! The command-line client. `init` scaffolds a function locally; every other
//! command talks to a running server over the management API, found through
//! `--url` / `LAMPYR_URL`, authenticated with the token the server keeps in
//! its data directory (or `LAMPYR_TOKEN`). Every command takes `--json` for
//! scripts; without it, output is for people.
#![forbid(unsafe_code)]

mod client;
mod commands;
pub mod events;
pub mod keys;
pub mod paths;
pub mod scaffold;
mod templates;
pub mod versions;

pub use client::{Client, ClientError};
pub use commands::*;
