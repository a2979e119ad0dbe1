//! The runtime layer: the language and its bootstrap inside an instance.
//!
//! * [`kinds`] is one module per runtime kind (Node.js, Python) behind one
//!   trait: discovery, bootstrap files, interpreter arguments, deploy-time
//!   preparation, the zygote.
//! * [`discover`] finds each runtime (Node.js ≥ 18, Python ≥ 3.9) and
//!   resolves the real interpreter binary behind any shim.
//! * [`bootstrap`] installs the runtimes' files (`runtimes/NAME/`, embedded
//!   in the binary) into the data directory.
//! * [`protocol`] is the framed instance protocol (see `docs/protocol.md`).
//! * [`instance`] starts one runtime in a sandbox and drives it: HELLO, LOAD
//!   (the cold-start handshake: [`Instance::cold_start`],
//!   [`Instance::specialise_and_load`]), INVOKE, and reports how it exited.
//! * [`capture`] reads an instance's output as log lines, with bounded
//!   memory whatever the function writes.
//! * [`prebuild`] prepares a function's code for its runtime when it is
//!   deployed (Python bytecode).
#![forbid(unsafe_code)]

pub mod bootstrap;
pub mod capture;
pub mod discover;
pub mod instance;
pub mod kinds;
pub mod prebuild;
pub mod protocol;

pub use capture::{log_channel, LogBudget, LogLine, LogReceiver, LogSender, Stream};
pub use discover::{Interpreters, RuntimeInfo, Runtimes};
pub use instance::poll::poll_before_park;
pub use instance::{
    ExitReport, FirstInvoke, FunctionLoad, Instance, InstanceConfig, InstanceError, InvokeOutcome,
    Loaded, Network, PendingInvoke, ReplyStream, SpecialiseError, StartPhases, StartTimings,
    StreamEnd, StreamItem,
};
