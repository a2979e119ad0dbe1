//! JSON bodies of the management API (`/api/v1`).

use serde::{Deserialize, Serialize};

use crate::manifest::FunctionSpec;

/// The stable error body every non-2xx answer of lampyr carries.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ErrorDetail {
    /// A stable, machine-readable code such as `function_not_found`.
    pub code: String,
    /// A human-readable message naming the thing that is wrong.
    pub message: String,
}

impl ErrorBody {
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            error: ErrorDetail {
                code: code.into(),
                message: message.into(),
            },
        }
    }
}

/// A deployed function as `GET /api/v1/functions/NAME` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FunctionInfo {
    pub name: String,
    pub runtime: String,
    pub handler: String,
    /// The current (newest) version number; versions count up from 1.
    pub version: u64,
    /// Instances right now, of any version (starting, idle, busy, draining,
    /// or stopping: killed, its processes not yet gone).
    pub instances: usize,
    /// Live instances split by state.
    pub instance_states: InstanceCounts,
    /// The URL of the function's HTTP trigger.
    pub url: String,
    /// SHA-256 of the current version's code package.
    pub code_sha256: String,
    pub code_size: u64,
    pub created_at: String,
    pub updated_at: String,
    /// The validated manifest of the current version.
    pub spec: FunctionSpec,
    /// The token the HTTP trigger requires, when `auth = "token"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger_token: Option<String>,
    /// Its asynchronous events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events: Option<crate::events::AsyncCounts>,
    /// Its timers: the next firings and the latest one's outcome.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub timers: Vec<crate::events::TimerInfo>,
    /// Its event-source triggers (brokers, buckets, databases) and how
    /// each is doing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<crate::sources::SourceStatus>,
    /// Its aliases.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<crate::versions::AliasInfo>,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct InstanceCounts {
    pub starting: usize,
    pub idle: usize,
    pub busy: usize,
    pub draining: usize,
    /// Killed (idle too long, replaced, or deleted) and not yet gone: its
    /// processes still exit and its cgroup is still being removed.
    #[serde(default)]
    pub stopping: usize,
    /// Requests waiting for a free instance (not instances).
    #[serde(default)]
    pub queued: usize,
}

impl InstanceCounts {
    /// Every instance that exists, whatever its state.
    pub fn total(&self) -> usize {
        self.starting + self.idle + self.busy + self.draining + self.stopping
    }
}

/// One line of `GET /api/v1/functions`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FunctionSummary {
    pub name: String,
    pub runtime: String,
    pub version: u64,
    pub instances: usize,
    pub url: String,
    pub updated_at: String,
    /// What its invocations did in the list's window (`since`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activity: Option<Activity>,
    /// Its asynchronous events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events: Option<crate::events::AsyncCounts>,
}

/// A function's invocations over a window, for the function list.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Activity {
    pub invocations: u64,
    pub errors: u64,
    pub error_rate: f64,
    /// p99 of the handler's duration, over invocations that ran.
    pub p99_ms: Option<f64>,
    /// RFC 3339 start of the latest invocation (in the window).
    pub last_invocation: Option<String>,
    /// True when its latest invocations failed (the last three, or all of
    /// them if fewer).
    pub failing: bool,
    /// Why, when it fails: the latest failure's error type, or the message
    /// of its latest failed initialisation.
    pub failure: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FunctionList {
    pub functions: Vec<FunctionSummary>,
}

/// The answer to a successful deploy (`PUT /api/v1/functions/NAME`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DeployResult {
    pub name: String,
    pub version: u64,
    pub url: String,
    pub code_sha256: String,
    pub code_size: u64,
    /// False when the package was byte-identical to the current version and
    /// no new version was made.
    pub changed: bool,
    /// Milliseconds the server spent verifying, storing and unpacking the package.
    pub build_ms: f64,
    /// Milliseconds the load check took (an instance started and the
    /// handler loaded), when the deploy was checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check_ms: Option<f64>,
    /// The alias the deploy moved (`--alias`), as it is now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alias: Option<crate::versions::AliasInfo>,
}

/// One log record of a function.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LogRecord {
    /// RFC 3339 timestamp with milliseconds.
    pub ts: String,
    pub function: String,
    pub version: u64,
    /// The invocation the line belongs to, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    pub instance: String,
    /// `stdout`, `stderr` or `platform`.
    pub stream: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<String>,
    pub message: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LogList {
    pub records: Vec<LogRecord>,
}

/// `GET /healthz`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Health {
    pub status: String,
    pub version: String,
    pub functions: usize,
    pub instances: usize,
}

/// What `lampyr doctor` and `GET /api/v1/doctor` report.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DoctorReport {
    pub runtimes: Vec<RuntimeReport>,
    pub isolation: Vec<IsolationFeature>,
    pub data_dir: String,
    /// The server's limits on what it accepts (absent from `lampyr doctor`
    /// run without a server).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<ServerLimits>,
}

/// What a server accepts, so clients can name a limit before they hit it.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct ServerLimits {
    /// The largest compressed package a deploy accepts (bytes).
    pub max_package: u64,
    /// The largest unpacked code (bytes, 4 KiB per entry counted).
    pub max_unpacked: u64,
    /// The most entries a package may hold.
    pub max_entries: u64,
    /// The largest request body an HTTP trigger accepts (bytes).
    pub max_request_body: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RuntimeReport {
    pub runtime: String,
    pub found: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
    /// Other installed versions, newest first, for functions that name
    /// theirs (`runtime = "python3.12"`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub others: Vec<InterpreterReport>,
    /// Interpreters the server configuration names that cannot be used.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
}

/// One more interpreter of a runtime.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct InterpreterReport {
    pub version: String,
    pub path: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct IsolationFeature {
    pub feature: String,
    pub enabled: bool,
    pub detail: String,
}

/// One runtime pool, as `GET /api/v1/pools` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PoolStatus {
    pub runtime: String,
    pub enabled: bool,
    /// Instances started and waiting for a function.
    pub ready: usize,
    pub starting: usize,
    /// The size the pool is growing or shrinking to.
    pub target: usize,
    pub min: usize,
    pub max: usize,
}

/// What happened to one invocation (`GET /api/v1/invocations/REQUEST_ID`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct InvocationRecord {
    pub request_id: String,
    pub function: String,
    pub version: u64,
    /// What called it.
    pub trigger: crate::TriggerKind,
    /// RFC 3339 start time.
    pub start_time: String,
    pub start: crate::StartKind,
    /// Cold-start and execution phases in milliseconds; absent phases did not happen.
    pub phases: PhaseTimes,
    /// Wall-clock time of the whole invocation in the platform, in ms.
    pub duration_ms: f64,
    /// The handler's execution time rounded up to the next millisecond.
    pub billed_ms: u64,
    /// memory_mb / 1024 × billed seconds.
    pub gb_seconds: f64,
    pub memory_mb: u32,
    /// The instance's peak memory use, where the kernel reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_memory_used_mb: Option<f64>,
    pub status: crate::Status,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_type: Option<String>,
    /// The HTTP status sent to the caller, when a trigger answered over
    /// HTTP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_status: Option<u16>,
    pub response_bytes: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// Which attempt this was, for an invocation that is retried (the
    /// first is 1); absent for one that is not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    /// The bytes the function streamed, when its reply was a stream (then
    /// `duration_ms` runs to the stream's end, `phases.exec` to its start).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_bytes: Option<u64>,
}

/// `d` in milliseconds, as the records and the API give durations: the
/// nearest `f64` to the exact value, which prints as briefly as it reads
/// (191 808 ns is `0.191808`, not `0.19180799999999998`).
pub fn millis(d: std::time::Duration) -> f64 {
    d.as_nanos() as f64 / 1_000_000.0
}

/// Phase durations in milliseconds.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct PhaseTimes {
    pub queue: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init: Option<f64>,
    pub exec: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct InvocationList {
    pub invocations: Vec<InvocationRecord>,
}

/// Percentiles of one measure, in milliseconds.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Percentiles {
    pub count: u64,
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
}

/// `GET /api/v1/functions/NAME/stats?since=1h`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FunctionStats {
    pub function: String,
    /// RFC 3339 start of the window.
    pub since: String,
    pub count: u64,
    pub errors: u64,
    pub error_rate: f64,
    pub cold_starts: u64,
    /// (cold + pooled) / count.
    pub cold_start_rate: f64,
    pub by_status: std::collections::BTreeMap<String, u64>,
    pub by_start: std::collections::BTreeMap<String, u64>,
    pub duration: Percentiles,
    /// Per cold-start phase (queue, code, sandbox, runtime, init, exec).
    pub phases: std::collections::BTreeMap<String, Percentiles>,
    pub gb_seconds: f64,
    /// The same, split by the version that ran (a canary beside the
    /// version it may replace).
    #[serde(default)]
    pub by_version: std::collections::BTreeMap<u64, VersionStats>,
}

/// One version's part of [`FunctionStats`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct VersionStats {
    pub count: u64,
    pub errors: u64,
    pub error_rate: f64,
    pub cold_starts: u64,
    pub cold_start_rate: f64,
    pub duration: Percentiles,
}

/// One point of a function's time series (`GET /api/v1/functions/NAME/series`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SeriesPoint {
    /// RFC 3339 start of the bucket.
    pub t: String,
    pub invocations: u64,
    pub errors: u64,
    pub cold: u64,
    pub warm_p50_ms: Option<f64>,
    pub warm_p99_ms: Option<f64>,
    pub cold_p50_ms: Option<f64>,
    pub cold_p99_ms: Option<f64>,
    /// Live instances at the end of the bucket, when sampled.
    pub instances: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Series {
    pub function: String,
    pub step_seconds: u64,
    pub points: Vec<SeriesPoint>,
}

#[cfg(test)]
mod millis_tests {
    use super::millis;
    use std::time::Duration;

    #[test]
    fn durations_print_as_short_as_their_nanoseconds() {
        let json = |d| serde_json::to_string(&millis(d)).unwrap();
        assert_eq!(json(Duration::from_nanos(191_808)), "0.191808");
        assert_eq!(json(Duration::from_nanos(140)), "0.00014");
        assert_eq!(json(Duration::from_millis(1500)), "1500.0");
        assert_eq!(millis(Duration::ZERO), 0.0);
    }
}

/// The short form of a request id people see: its last eight characters.
/// lampyr's ids are time-ordered UUIDs whose first characters are the time
/// (the same for every request of a minute) and whose last ones are
/// random. Cut by characters, whatever the id holds.
pub fn short_request_id(id: &str) -> String {
    let n = id.chars().count();
    id.chars().skip(n.saturating_sub(8)).collect()
}

#[cfg(test)]
mod short_id_tests {
    use super::short_request_id;

    #[test]
    fn short_ids_are_the_random_end_cut_by_characters() {
        assert_eq!(
            short_request_id("0193a1b2-7c4d-7e8f-9a0b-1c2d3e4f5a6b"),
            "3e4f5a6b"
        );
        assert_eq!(short_request_id("ab"), "ab");
        assert_eq!(short_request_id("ééééééééééé"), "éééééééé");
    }
}
