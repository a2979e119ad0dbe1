//! What stops an invocation, a deploy or a delete, and how each refusal of
//! an invocation is recorded.

use std::time::Duration;

use lampyr_api::{FunctionError, Status};
use lampyr_runtime::InstanceError;

/// Errors that stop an invocation before or instead of the handler
/// running, or a deploy or delete.
#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    #[error("function '{0}' does not exist")]
    NotFound(String),
    /// A call or command named a version or alias that cannot be.
    #[error("'{target}': {message}")]
    BadQualifier { target: String, message: String },
    /// A command that works on an alias could not tell which.
    #[error("function '{function}': {message}")]
    AliasRequired { function: String, message: String },
    /// The caller may not call the function this way: a token-protected
    /// trigger without the right token.
    #[error("function '{function}' requires a bearer token on its trigger: send `Authorization: Bearer TOKEN` with the token `lampyr info {function}` shows")]
    Unauthorized { function: String },
    /// The function has no trigger of the kind it was called through.
    #[error("function '{function}' has no {trigger} trigger: its lampyr.toml lists [[triggers]] without one (call it with `lampyr invoke {function}`, or add [[triggers]] type = \"{trigger}\")")]
    NoTrigger {
        function: String,
        trigger: lampyr_api::TriggerKind,
    },
    #[error("function '{function}' is at its limit of {max_instances} instance(s) × {concurrency} concurrent invocation(s) and {queued} request(s) are already waiting (max_queue = {max_queue})")]
    QueueFull {
        function: String,
        max_instances: u32,
        concurrency: u32,
        queued: usize,
        max_queue: u32,
    },
    #[error("function '{function}' is at its limit of {max_instances} instance(s) × {concurrency} concurrent invocation(s); the request waited {waited_ms} ms (queue_timeout) without a free instance")]
    QueueTimeout {
        function: String,
        max_instances: u32,
        concurrency: u32,
        waited_ms: u64,
    },
    #[error("function '{function}' needs the {runtime} runtime, which is not available on this host: {why}")]
    RuntimeUnavailable {
        function: String,
        runtime: String,
        why: String,
    },
    #[error("function '{function}' could not start an instance: {source}")]
    StartFailed {
        function: String,
        #[source]
        source: InstanceError,
    },
    /// The handler module failed to load: the runtime's error object.
    /// With `retry_in`, this request did not start an instance: a start
    /// failed moments ago and the next is tried only after a back-off.
    #[error("function '{function}' failed to initialise: {}{}", .error.describe(), .retry_in.map(|d| format!(" (not retried for this request: the last start failed just now; the next start is tried in {:.1} s)", d.as_secs_f64())).unwrap_or_default())]
    InitFailed {
        function: String,
        error: FunctionError,
        retry_in: Option<Duration>,
    },
    #[error("function '{0}' was deleted")]
    Deleted(String),
    /// A deploy's load check failed: the new version's handler does not
    /// load. The runtime's error object.
    #[error("version {version} of function '{function}' does not load: {}", .error.describe())]
    LoadCheckFailed {
        function: String,
        version: u64,
        error: FunctionError,
    },
    #[error("function '{function}' has network = \"egress\", which this server cannot provide: {why}; deploy it with network = \"none\" (loopback only) or \"host\", or run lampyr where /dev/net/tun exists")]
    NetworkUnavailable { function: String, why: String },
    #[error(transparent)]
    Store(#[from] lampyr_store::StoreError),
    /// An event call, on a server without an event queue.
    #[error(
        "function '{0}' cannot be invoked asynchronously on this server: it has no event queue"
    )]
    AsyncUnavailable(String),
    /// An event over the queue's size limit.
    #[error("the event for function '{function}' is {size} bytes, over the asynchronous limit of {limit} bytes ([async] max_event_bytes): send less, or invoke it synchronously (up to the request limit)")]
    EventTooLarge {
        function: String,
        size: usize,
        limit: usize,
    },
    /// The function's event queue is at its depth limit.
    #[error("function '{function}' has {depth} asynchronous events waiting, its limit ([async] max_queue_depth): retry later, or raise its max_instances so events drain faster")]
    EventQueueFull { function: String, depth: u64 },
    /// The event queue could not commit the event.
    #[error("the event for function '{function}' could not be stored: {message}")]
    EventStore { function: String, message: String },
    /// A task of the function service itself failed.
    #[error("internal error: {0}")]
    Internal(String),
}

impl SchedulerError {
    /// How a refused invocation is recorded: its status and error type.
    /// `None` for refusals that are not invocations of a function (it does
    /// not exist, the caller may not call it).
    pub(crate) fn recorded_as(&self) -> Option<(Status, Option<String>)> {
        match self {
            SchedulerError::QueueFull { .. } | SchedulerError::QueueTimeout { .. } => {
                Some((Status::Throttled, None))
            }
            SchedulerError::InitFailed { error, .. } => {
                Some((Status::Error, Some(error.error_type.clone())))
            }
            SchedulerError::StartFailed { .. } | SchedulerError::RuntimeUnavailable { .. } => {
                Some((Status::Crashed, Some("Runtime.StartError".to_string())))
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_recorded_by_what_stopped_them() {
        let throttled = SchedulerError::QueueTimeout {
            function: "f".into(),
            max_instances: 1,
            concurrency: 1,
            waited_ms: 10,
        };
        assert_eq!(throttled.recorded_as(), Some((Status::Throttled, None)));
        let init = SchedulerError::InitFailed {
            function: "f".into(),
            error: FunctionError::parse(br#"{"errorType":"SyntaxError","errorMessage":"x"}"#, "E"),
            retry_in: Some(Duration::from_secs(2)),
        };
        assert_eq!(
            init.recorded_as(),
            Some((Status::Error, Some("SyntaxError".into())))
        );
        let msg = init.to_string();
        assert!(
            msg.contains("SyntaxError: x") && msg.contains("tried in 2.0 s"),
            "{msg}"
        );
        assert_eq!(SchedulerError::NotFound("f".into()).recorded_as(), None);
        assert_eq!(
            SchedulerError::Unauthorized {
                function: "f".into()
            }
            .recorded_as(),
            None
        );
    }
}
