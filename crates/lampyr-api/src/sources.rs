//! How an event-source trigger (a broker, a bucket, a database) is doing,
//! as `lampyr info`, the API, `/metrics` and the dashboard show it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::TriggerKind;

/// The state of one source of one function.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SourceStatus {
    /// The trigger, as the manifest names it (`triggers[N]`, or its `name`).
    pub trigger: String,
    pub kind: TriggerKind,
    pub state: SourceState,
    /// How far behind the source the trigger is, in the source's own unit
    /// (`lag_unit`): messages, bytes of WAL, ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag_unit: Option<String>,
    /// The latest error, and when it happened (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error_at: Option<String>,
    /// Events delivered to the function since the server started.
    #[serde(default)]
    pub delivered: u64,
    /// Anything else worth showing (never a secret), by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub detail: BTreeMap<String, String>,
}

/// Whether a source is reachable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceState {
    /// Connecting for the first time.
    Connecting,
    /// Connected and consuming.
    Connected,
    /// Not reachable: trying again with back-off (`last_error` says why).
    Retrying,
    /// Stopped (the trigger is disabled, or the server is shutting down).
    Stopped,
}

impl SourceState {
    pub fn as_str(self) -> &'static str {
        match self {
            SourceState::Connecting => "connecting",
            SourceState::Connected => "connected",
            SourceState::Retrying => "retrying",
            SourceState::Stopped => "stopped",
        }
    }
}
