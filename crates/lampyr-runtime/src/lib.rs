//! The runtime layer: the language and its bootstrap inside an instance.
//!
//! * [`discover`] finds Node.js ≥ 18 and Python ≥ 3.9 and resolves the real
//!   interpreter binary behind any shim.
//! * [`bootstrap`] embeds the bootstraps (`runtimes/nodejs`, `runtimes/python`)
//!   and installs them into the data directory.
//! * [`protocol`] is the framed instance protocol (see `docs/protocol.md`).
//! * [`instance`] starts one runtime in a sandbox and drives it: HELLO, LOAD
//!   (specialise with a function's code), INVOKE, and reports how it exited.
//! * [`capture`] reads an instance's output as log lines, with bounded
//!   memory whatever the function writes.
//! * [`prebuild`] prepares a function's code for its runtime when it is
//!   deployed (Python bytecode).
#![forbid(unsafe_code)]

pub mod bootstrap;
pub mod capture;
pub mod discover;
pub mod instance;
pub mod prebuild;
pub mod protocol;

pub use capture::{log_channel, LogBudget, LogLine, LogReceiver, LogSender, Stream};
pub use discover::{RuntimeInfo, Runtimes};
pub use instance::{
    ExitReport, Instance, InstanceConfig, InstanceError, InvokeOutcome, LoadRequest, Network,
    PendingInvoke, StartTimings, Starting,
};
