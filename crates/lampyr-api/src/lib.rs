//! The vocabulary every lampyr layer shares and nothing else: the function
//! manifest (`lampyr.toml`) with its validation, the JSON bodies of the
//! management API, and the stable error body `{ "error": { "code", "message" } }`.
//!
//! This crate does no I/O. The gateway, the scheduler, the store and the CLI
//! all speak these types, so a field added here is seen the same way by the
//! server and by its clients.
#![forbid(unsafe_code)]

pub mod events;
pub mod invocation;
pub mod keys;
pub mod manifest;
pub mod network;
pub mod postgres;
pub mod runtimes;
pub mod schedule;
pub mod sources;
pub mod storage;
pub mod types;
pub mod versions;

pub use invocation::{FunctionError, StartKind, Status, TriggerKind};
pub use manifest::{
    Auth, CatchUp, FunctionSpec, HandlerType, HttpSpec, ManifestError, NatsAuth, NatsSpec, Network,
    Overlap, TimerSpec, TriggerSpec,
};
pub use network::AllowRule;
pub use runtimes::Runtime;
pub use storage::{StorageNats, StorageSpec};
pub use types::*;

/// The region lampyr's ARNs and the runtimes' `context` objects name: one
/// server has no regions.
pub const REGION: &str = "local";
/// The account id lampyr's ARNs and the runtimes' `context` objects name:
/// one server has no accounts.
pub const ACCOUNT_ID: &str = "000000000000";
