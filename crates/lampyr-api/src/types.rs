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
    /// Live instances right now, of any version (starting, idle, busy or draining).
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
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct InstanceCounts {
    pub starting: usize,
    pub idle: usize,
    pub busy: usize,
    pub draining: usize,
    /// Requests waiting for a free instance (not instances).
    #[serde(default)]
    pub queued: usize,
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
