//! The runtime layer: the language and its bootstrap inside an instance.
//!
//! * [`discover`] finds Node.js ≥ 18 and Python ≥ 3.9 and resolves the real
//!   interpreter binary behind any shim.
//! * [`bootstrap`] embeds the bootstraps (`runtimes/nodejs`, `runtimes/python`)
//!   and installs them into the data directory.
//! * [`protocol`] is the framed instance protocol (see `docs/protocol.md`).
//! * [`instance`] starts one runtime in a sandbox and drives it: HELLO, LOAD
//!   (specialise with a function's code), INVOKE; it captures the instance's
//!   log lines and reports how it exited.
//! * [`prebuild`] prepares a function's code for its runtime when it is
//!   deployed (Python bytecode).
#![forbid(unsafe_code)]

pub mod bootstrap;
pub mod discover;
pub mod instance;
pub mod prebuild;
pub mod protocol;

pub use discover::{RuntimeInfo, Runtimes};
pub use instance::{
    ExitReport, Instance, InstanceConfig, InstanceError, InvokeOutcome, LoadRequest, LogLine,
    LogSender, PendingInvoke, StartTimings, Starting, Stream,
};
