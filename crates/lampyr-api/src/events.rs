//! Asynchronous events as the API shows them: an event's state, its
//! attempts' errors, why it was dead-lettered; timers' next firings.

use serde::{Deserialize, Serialize};

use crate::TriggerKind;

/// An event's state, as the API shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventState {
    Queued,
    Running,
    /// Waiting for its next attempt (after a failure) or a retry after the
    /// function was at its limits.
    Retrying,
    Succeeded,
    DeadLettered,
}

/// Why an event was dead-lettered (Lambda's destination conditions).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeadReason {
    RetriesExhausted,
    EventAgeExceeded,
}

impl DeadReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DeadReason::RetriesExhausted => "RetriesExhausted",
            DeadReason::EventAgeExceeded => "EventAgeExceeded",
        }
    }

    pub fn parse(s: &str) -> Option<DeadReason> {
        match s {
            "RetriesExhausted" => Some(DeadReason::RetriesExhausted),
            "EventAgeExceeded" => Some(DeadReason::EventAgeExceeded),
            _ => None,
        }
    }
}

/// How one attempt failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptError {
    pub attempt: u32,
    /// RFC 3339.
    pub at: String,
    pub error_type: String,
    pub message: String,
}

/// An event as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventInfo {
    pub request_id: String,
    pub function: String,
    pub trigger: TriggerKind,
    pub state: EventState,
    /// Attempts that ended (crash rescues are not attempts).
    pub attempts: u32,
    /// Times the event was taken over after the server stopped while it ran.
    pub rescues: u32,
    /// RFC 3339: when it was accepted.
    pub created_at: String,
    /// RFC 3339: when it runs next, while queued or retrying.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<String>,
    /// RFC 3339: when it succeeded or was dead-lettered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_reason: Option<DeadReason>,
    pub errors: Vec<AttemptError>,
    /// The payload, on request (a dead letter shown alone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<serde_json::Value>,
}

/// One timer of a function, for `lampyr info`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TimerInfo {
    pub name: String,
    pub cron: String,
    pub timezone: String,
    pub enabled: bool,
    /// RFC 3339: its next three firings.
    pub next: Vec<String>,
    /// Its latest firing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last: Option<TimerFiring>,
}

/// A timer's firing and how its event went.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TimerFiring {
    /// RFC 3339: the tick it was fired for.
    pub scheduled_at: String,
    pub request_id: String,
    /// The event's state, if it is still known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<EventState>,
}

/// A function's asynchronous events, for `lampyr info` and the dashboard.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct AsyncCounts {
    /// Events not finished: queued, waiting for a retry, or running.
    pub pending: u64,
    /// Seconds since the oldest of them was accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oldest_age_s: Option<f64>,
    pub dead_letters: u64,
}

/// `GET /api/v1/functions/NAME/events` and `.../dlq`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventList {
    pub events: Vec<EventInfo>,
}

/// An invocation seen through its request id: for an asynchronous event,
/// its state and every attempt's record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventDetail {
    #[serde(flatten)]
    pub event: EventInfo,
    /// The attempts' invocation records, oldest first.
    pub records: Vec<crate::InvocationRecord>,
}
