//! The function manifest, `lampyr.toml`, and its full validation.
//!
//! ```toml
//! name = "hello"
//! runtime = "nodejs"          # or "python"; or a version: "nodejs20.x", "python3.12"
//! handler = "index.handler"   # file index.js / index.py, export `handler`
//! memory_mb = 128
//! timeout = "10s"
//! concurrency = 1             # in-flight invocations per instance
//! min_instances = 0           # reserved instances kept warm
//! max_instances = 10
//! idle_timeout = "5m"         # an idle instance is stopped after this
//! max_queue = 100             # requests that may wait for a free instance
//! queue_timeout = "10s"       # how long one may wait before a 429
//! auth = "public"             # or "token": the HTTP trigger needs a bearer token
//! handler_type = "event"      # or "http": Function Compute's HTTP handler (`fc` module)
//! initializer = "index.init"  # run once per instance before its first call
//! initialization_timeout = "3s"
//! [env]
//! GREETING = "hi"
//!
//! [[triggers]]                # how it is called; without the list: its URL
//! type = "http"
//! ```
//!
//! Every rule lives in [`FunctionSpec::from_toml`]; the server runs it again on
//! every deploy, so a package is never accepted on the client's word.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::network::AllowRule;
pub use fc::HandlerType;
pub use nats::{NatsAuth, NatsSpec};

pub mod fc;
pub(crate) mod nats;
pub use crate::runtimes::Runtime;

/// Who may call a function's HTTP trigger.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Auth {
    /// Anyone who can reach the server.
    #[default]
    Public,
    /// Callers must send `Authorization: Bearer <token>` with the function's
    /// trigger token (see `lampyr info`) or the server's API token.
    Token,
}

/// The network an instance sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Network {
    /// Outbound connections to the internet, through lampyr, which refuses
    /// this host, its loopback, private and link-local ranges and other
    /// instances unless the manifest's `allow` names them.
    #[default]
    Egress,
    /// A private network namespace with loopback only.
    None,
    /// The host's network: everything the host reaches and serves,
    /// lampyr's own API included.
    Host,
}

impl Network {
    pub fn as_str(self) -> &'static str {
        match self {
            Network::Egress => "egress",
            Network::None => "none",
            Network::Host => "host",
        }
    }
}

/// A manifest key or value that is wrong. The message names the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error("lampyr.toml: {0}")]
    Parse(String),
    #[error("lampyr.toml: key `{key}`: {message}")]
    Invalid { key: String, message: String },
}

impl ManifestError {
    pub(crate) fn invalid(key: &str, message: impl Into<String>) -> Self {
        ManifestError::Invalid {
            key: key.to_string(),
            message: message.into(),
        }
    }
}

/// The manifest exactly as written; unknown keys are refused by serde.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    name: String,
    runtime: String,
    handler: String,
    memory_mb: Option<i64>,
    timeout: Option<DurationText>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    concurrency: Option<i64>,
    min_instances: Option<i64>,
    max_instances: Option<i64>,
    idle_timeout: Option<DurationText>,
    max_queue: Option<i64>,
    queue_timeout: Option<DurationText>,
    auth: Option<String>,
    network: Option<String>,
    allow: Option<Vec<String>>,
    triggers: Option<Vec<toml::Table>>,
    retries: Option<i64>,
    max_event_age: Option<DurationText>,
    on_success: Option<String>,
    on_failure: Option<String>,
    handler_type: Option<String>,
    initializer: Option<String>,
    initialization_timeout: Option<DurationText>,
}

/// A duration as written: a string such as `"10s"`, or a bare number,
/// which is refused with a hint (a number has no unit).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum DurationText {
    Text(String),
    Number(f64),
}

impl DurationText {
    fn text(&self, key: &str) -> Result<&str, ManifestError> {
        match self {
            DurationText::Text(s) => Ok(s),
            DurationText::Number(n) => Err(ManifestError::invalid(
                key,
                format!("{n} is a number, and a duration needs a unit: write \"{n}s\" for {n} seconds (or \"{n}ms\", \"{n}m\")"),
            )),
        }
    }
}

/// A validated function definition: what one version of a function is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FunctionSpec {
    pub name: String,
    pub runtime: Runtime,
    /// The interpreter version the function asks for, when the manifest
    /// names its runtime as the clouds do (`nodejs20.x` → `20`,
    /// `python3.12` → `3.12`); none: whichever this host has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_version: Option<String>,
    pub handler: String,
    pub memory_mb: u32,
    pub timeout_ms: u64,
    pub env: BTreeMap<String, String>,
    pub concurrency: u32,
    pub min_instances: u32,
    pub max_instances: u32,
    pub idle_timeout_ms: u64,
    pub max_queue: u32,
    pub queue_timeout_ms: u64,
    pub auth: Auth,
    pub network: Network,
    /// Destinations `network = "egress"` lets through besides its default.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<AllowRule>,
    /// How the function is called besides `lampyr invoke`. Stored specs
    /// without the list (every one written before it existed) have the HTTP
    /// trigger, as their manifests did.
    #[serde(
        default = "default_triggers",
        skip_serializing_if = "is_default_triggers"
    )]
    pub triggers: Vec<TriggerSpec>,
    /// Asynchronous invocation: how often a failed event is tried again.
    #[serde(
        default = "default_retries",
        skip_serializing_if = "is_default_retries"
    )]
    pub retries: u32,
    /// Asynchronous invocation: an event older than this is not run again.
    #[serde(
        default = "default_max_event_age_ms",
        skip_serializing_if = "is_default_max_event_age_ms"
    )]
    pub max_event_age_ms: u64,
    /// A function that receives a destination record when an asynchronous
    /// event succeeds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_success: Option<String>,
    /// A function that receives a destination record when an asynchronous
    /// event fails for good (retries exhausted, or too old).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_failure: Option<String>,
    /// How the handler is called: an event handler, or Function Compute's
    /// HTTP handler.
    #[serde(default, skip_serializing_if = "HandlerType::is_event")]
    pub handler_type: HandlerType,
    /// `FILE.EXPORT` of a hook run once per instance, after its module has
    /// loaded and before its first invocation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initializer: Option<String>,
    /// How long the initializer may run.
    #[serde(
        default = "fc::default_initialization_timeout_ms",
        skip_serializing_if = "fc::is_default_initialization_timeout_ms"
    )]
    pub initialization_timeout_ms: u64,
}

pub const DEFAULT_RETRIES: u32 = 2;
pub const MAX_RETRIES: u32 = 2;
pub const DEFAULT_MAX_EVENT_AGE: Duration = Duration::from_secs(6 * 3600);
pub const MIN_MAX_EVENT_AGE: Duration = Duration::from_secs(60);

fn default_retries() -> u32 {
    DEFAULT_RETRIES
}

fn is_default_retries(n: &u32) -> bool {
    *n == DEFAULT_RETRIES
}

fn default_max_event_age_ms() -> u64 {
    DEFAULT_MAX_EVENT_AGE.as_millis() as u64
}

fn is_default_max_event_age_ms(ms: &u64) -> bool {
    *ms == default_max_event_age_ms()
}

/// One way a function is called: a `[[triggers]]` table of the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum TriggerSpec {
    /// Its URL, `/fn/NAME`, open to callers as `auth` says.
    Http(HttpSpec),
    /// A schedule: each firing is an asynchronous event.
    Timer(TimerSpec),
    /// S3-format bucket notifications: each record is an asynchronous event.
    Storage(crate::storage::StorageSpec),
    /// A PostgreSQL database's row changes (logical decoding).
    Postgres(crate::postgres::PostgresSpec),
    /// A NATS JetStream stream: its messages, in batches.
    Nats(NatsSpec),
}

/// A `[[triggers]]` table with `type = "http"`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSpec {
    /// The alias `/fn/NAME` (without a qualifier) is served by; none: the
    /// newest version (`$LATEST`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alias: Option<String>,
}

impl HttpSpec {
    fn from_table(i: usize, t: &toml::Table) -> Result<HttpSpec, ManifestError> {
        Ok(HttpSpec {
            alias: trigger_alias(i, t)?,
        })
    }
}

/// A `[[triggers]]` table's `alias`: the alias the trigger calls (none, or
/// `"$LATEST"`: the newest version).
pub(crate) fn trigger_alias(i: usize, t: &toml::Table) -> Result<Option<String>, ManifestError> {
    let key = format!("triggers[{i}].alias");
    let alias = table_string(t, &key, "alias")?;
    match alias.as_deref() {
        None | Some(crate::versions::LATEST) => Ok(None),
        Some(a) => {
            crate::versions::validate_alias(a).map_err(|m| ManifestError::invalid(&key, m))?;
            Ok(alias)
        }
    }
}

/// A `[[triggers]]` table with `type = "timer"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimerSpec {
    /// Its name, unique among the function's timers (`triggerName`).
    pub name: String,
    /// A 5- or 6-field cron expression, or `@every DURATION`.
    pub cron: String,
    /// The IANA time zone the cron expression is read in.
    pub timezone: String,
    /// Passed in the event as `payload`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<String>,
    pub enabled: bool,
    pub catch_up: CatchUp,
    pub overlap: Overlap,
    /// The alias its firings call; none: the newest version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alias: Option<String>,
}

impl TimerSpec {
    /// Its schedule (validated when the manifest was read).
    pub fn schedule(&self) -> crate::schedule::Schedule {
        crate::schedule::Schedule::parse(&self.cron, &self.timezone)
            .expect("validated with the manifest")
    }
}

/// What a timer does about ticks missed while the server was down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CatchUp {
    /// Fire the most recent missed tick once at start.
    One,
    /// Skip missed ticks.
    None,
}

/// What a timer does with a tick while its previous firing still runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Overlap {
    Allow,
    /// Drop the tick (it is counted).
    Skip,
}

/// The largest timer payload.
pub const MAX_TIMER_PAYLOAD: usize = 4096;

impl TriggerSpec {
    /// Whether `triggers` is what a manifest without the list has.
    pub fn is_default(triggers: &[TriggerSpec]) -> bool {
        is_default_triggers(triggers)
    }

    /// Every trigger type, by the name a manifest gives it.
    pub const TYPES: &'static [&'static str] = &["http", "timer", "nats", "storage", "postgres"];

    /// What the records call invocations from this trigger.
    pub fn kind(&self) -> crate::TriggerKind {
        match self {
            TriggerSpec::Http(_) => crate::TriggerKind::Http,
            TriggerSpec::Timer(_) => crate::TriggerKind::Timer,
            TriggerSpec::Storage(_) => crate::TriggerKind::Storage,
            TriggerSpec::Postgres(_) => crate::TriggerKind::Postgres,
            TriggerSpec::Nats(_) => crate::TriggerKind::Nats,
        }
    }

    /// Reads `[[triggers]]` table `i`, naming any wrong key.
    fn from_table(i: usize, table: &toml::Table) -> Result<TriggerSpec, ManifestError> {
        let key = |k: &str| format!("triggers[{i}].{k}");
        let kind = match table.get("type") {
            None => {
                return Err(ManifestError::invalid(
                    &key("type"),
                    format!(
                        "is missing: every trigger names its type, one of {}",
                        Self::TYPES.join(", ")
                    ),
                ))
            }
            Some(toml::Value::String(t)) => t.as_str(),
            Some(other) => {
                return Err(ManifestError::invalid(
                    &key("type"),
                    format!("must be a string, not {}", other.type_str()),
                ))
            }
        };
        let (spec, keys): (TriggerSpec, &[&str]) = match kind {
            "http" => (
                TriggerSpec::Http(HttpSpec::from_table(i, table)?),
                &["type", "alias"],
            ),
            "timer" => (
                TriggerSpec::Timer(TimerSpec::from_table(i, table)?),
                &[
                    "type", "name", "cron", "timezone", "payload", "enabled", "catch_up",
                    "overlap", "alias",
                ],
            ),
            "storage" => (
                TriggerSpec::Storage(crate::storage::StorageSpec::from_table(i, table)?),
                crate::storage::KEYS,
            ),
            "postgres" => (
                TriggerSpec::Postgres(crate::postgres::PostgresSpec::from_table(i, table)?),
                crate::postgres::KEYS,
            ),
            "nats" => (
                TriggerSpec::Nats(NatsSpec::from_table(i, table)?),
                NatsSpec::KEYS,
            ),
            other => {
                return Err(ManifestError::invalid(
                    &key("type"),
                    format!(
                        "unknown trigger type \"{other}\": use one of {}",
                        Self::TYPES.join(", ")
                    ),
                ))
            }
        };
        if let Some(k) = table.keys().find(|k| !keys.contains(&k.as_str())) {
            return Err(ManifestError::invalid(
                &key(k),
                format!("is not a setting of a trigger of type \"{kind}\""),
            ));
        }
        Ok(spec)
    }
}

/// A `[[triggers]]` table's string value `k` (named `key` in errors), if
/// there is one: what every trigger type reads the same way.
pub(crate) fn table_string(
    t: &toml::Table,
    key: &str,
    k: &str,
) -> Result<Option<String>, ManifestError> {
    match t.get(k) {
        None => Ok(None),
        Some(toml::Value::String(s)) => Ok(Some(s.clone())),
        Some(v) => Err(ManifestError::invalid(
            key,
            format!("must be a string, not {}", v.type_str()),
        )),
    }
}

/// A `[[triggers]]` table `i`'s value `k` that is a string or a list of
/// strings (`what` names it in errors: "a URL or a list of URLs"), if
/// there is one.
pub(crate) fn table_strings(
    t: &toml::Table,
    i: usize,
    k: &str,
    what: &str,
) -> Result<Option<Vec<String>>, ManifestError> {
    let key = |k: &str| format!("triggers[{i}].{k}");
    match t.get(k) {
        None => Ok(None),
        Some(toml::Value::String(s)) => Ok(Some(vec![s.clone()])),
        Some(toml::Value::Array(a)) => a
            .iter()
            .enumerate()
            .map(|(j, v)| match v {
                toml::Value::String(s) => Ok(s.clone()),
                v => Err(ManifestError::invalid(
                    &key(&format!("{k}[{j}]")),
                    format!("must be a string, not {}", v.type_str()),
                )),
            })
            .collect::<Result<_, _>>()
            .map(Some),
        Some(v) => Err(ManifestError::invalid(
            &key(k),
            format!("must be {what}, not {}", v.type_str()),
        )),
    }
}

impl TimerSpec {
    fn from_table(i: usize, t: &toml::Table) -> Result<TimerSpec, ManifestError> {
        let key = |k: &str| format!("triggers[{i}].{k}");
        let string = |k: &str| table_string(t, &key(k), k);
        let name = string("name")?.unwrap_or_else(|| "timer".to_string());
        validate_name(&name).map_err(|_| {
            ManifestError::invalid(
                &key("name"),
                format!("\"{name}\" is not a valid trigger name: use 1-63 characters of a-z, 0-9, '-' and '_'"),
            )
        })?;
        let cron = string("cron")?.ok_or_else(|| {
            ManifestError::invalid(
                &key("cron"),
                "is missing: a timer needs a schedule, e.g. cron = \"0 */5 * * * *\" or \"@every 30s\"",
            )
        })?;
        let timezone = string("timezone")?.unwrap_or_else(|| "UTC".to_string());
        if let Err(m) = crate::schedule::Schedule::parse(&cron, &timezone) {
            let k = if m.contains("time zone") {
                "timezone"
            } else {
                "cron"
            };
            return Err(ManifestError::invalid(&key(k), m));
        }
        let payload = string("payload")?;
        if payload
            .as_ref()
            .is_some_and(|p| p.len() > MAX_TIMER_PAYLOAD)
        {
            return Err(ManifestError::invalid(
                &key("payload"),
                format!("is over the limit of {MAX_TIMER_PAYLOAD} bytes"),
            ));
        }
        let enabled = match t.get("enabled") {
            None => true,
            Some(toml::Value::Boolean(b)) => *b,
            Some(v) => {
                return Err(ManifestError::invalid(
                    &key("enabled"),
                    format!("must be true or false, not {}", v.type_str()),
                ))
            }
        };
        let catch_up = match string("catch_up")?.as_deref() {
            None | Some("one") => CatchUp::One,
            Some("none") => CatchUp::None,
            Some(other) => {
                return Err(ManifestError::invalid(
                    &key("catch_up"),
                    format!("unknown value \"{other}\": use \"one\" (run the latest tick missed while the server was down) or \"none\""),
                ))
            }
        };
        let overlap = match string("overlap")?.as_deref() {
            None | Some("allow") => Overlap::Allow,
            Some("skip") => Overlap::Skip,
            Some(other) => {
                return Err(ManifestError::invalid(
                    &key("overlap"),
                    format!("unknown value \"{other}\": use \"allow\" or \"skip\" (drop a tick while the previous one runs)"),
                ))
            }
        };
        Ok(TimerSpec {
            name,
            cron,
            timezone,
            payload,
            enabled,
            catch_up,
            overlap,
            alias: trigger_alias(i, t)?,
        })
    }
}

fn default_triggers() -> Vec<TriggerSpec> {
    vec![TriggerSpec::Http(HttpSpec::default())]
}

fn is_default_triggers(t: &[TriggerSpec]) -> bool {
    t == [TriggerSpec::Http(HttpSpec::default())]
}

pub const DEFAULT_MEMORY_MB: u32 = 128;
pub const MIN_MEMORY_MB: u32 = 32;
pub const MAX_MEMORY_MB: u32 = 16384;
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
pub const MAX_TIMEOUT: Duration = Duration::from_secs(15 * 60);
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(5 * 60);
pub const DEFAULT_MAX_INSTANCES: u32 = 10;
pub const MAX_INSTANCES_LIMIT: u32 = 1000;
pub const MAX_CONCURRENCY: u32 = 1000;
pub const DEFAULT_MAX_QUEUE: u32 = 100;
pub const DEFAULT_QUEUE_TIMEOUT: Duration = Duration::from_secs(10);

/// The most `allow` rules a manifest may have.
pub const MAX_ALLOW: usize = 64;

/// The largest manifest accepted.
pub const MAX_MANIFEST_BYTES: usize = 64 * 1024;
/// The most bytes a function's environment may take, names and values
/// together (Lambda's limit).
pub const MAX_ENV_BYTES: usize = 4096;

/// Environment variable names the platform sets itself.
const RESERVED_ENV_PREFIXES: &[&str] = &["LAMPYR_", "AWS_LAMBDA_", "LAMBDA_"];
const RESERVED_ENV: &[&str] = &["_HANDLER", "AWS_EXECUTION_ENV", "PATH", "LD_PRELOAD"];

impl FunctionSpec {
    /// Parses and fully validates a manifest.
    pub fn from_toml(text: &str) -> Result<Self, ManifestError> {
        if text.len() > MAX_MANIFEST_BYTES {
            return Err(ManifestError::Parse(format!(
                "the file is {} bytes, over the limit of {MAX_MANIFEST_BYTES} bytes",
                text.len()
            )));
        }
        let raw: RawManifest =
            toml::from_str(text).map_err(|e| ManifestError::Parse(e.to_string()))?;
        Self::from_raw(raw)
    }

    fn from_raw(raw: RawManifest) -> Result<Self, ManifestError> {
        validate_name(&raw.name)?;
        let (runtime, runtime_version) = crate::runtimes::parse_runtime_id(&raw.runtime)
            .map_err(|m| ManifestError::invalid("runtime", m))?;
        validate_entry("handler", &raw.handler, "handler")?;
        let handler_type = HandlerType::parse(raw.handler_type.as_deref())?;
        let (initializer, initialization_timeout) = fc::initializer(
            raw.initializer,
            raw.initialization_timeout
                .as_ref()
                .map(|t| t.text("initialization_timeout"))
                .transpose()?,
        )?;

        let memory_mb = int_in(
            "memory_mb",
            raw.memory_mb,
            DEFAULT_MEMORY_MB as i64,
            MIN_MEMORY_MB as i64,
            MAX_MEMORY_MB as i64,
        )? as u32;
        let timeout = duration_in(
            "timeout",
            raw.timeout
                .as_ref()
                .map(|t| t.text("timeout"))
                .transpose()?,
            DEFAULT_TIMEOUT,
            Duration::from_millis(1),
            MAX_TIMEOUT,
        )?;
        let concurrency =
            int_in("concurrency", raw.concurrency, 1, 1, MAX_CONCURRENCY as i64)? as u32;
        let max_instances = int_in(
            "max_instances",
            raw.max_instances,
            DEFAULT_MAX_INSTANCES as i64,
            1,
            MAX_INSTANCES_LIMIT as i64,
        )? as u32;
        let min_instances = int_in(
            "min_instances",
            raw.min_instances,
            0,
            0,
            MAX_INSTANCES_LIMIT as i64,
        )? as u32;
        if min_instances > max_instances {
            return Err(ManifestError::invalid(
                "min_instances",
                format!("{min_instances} is more than max_instances ({max_instances})"),
            ));
        }
        let idle_timeout = duration_in(
            "idle_timeout",
            raw.idle_timeout
                .as_ref()
                .map(|t| t.text("idle_timeout"))
                .transpose()?,
            DEFAULT_IDLE_TIMEOUT,
            Duration::from_millis(100),
            Duration::from_secs(24 * 3600),
        )?;
        let max_queue = int_in(
            "max_queue",
            raw.max_queue,
            DEFAULT_MAX_QUEUE as i64,
            0,
            100_000,
        )? as u32;
        let queue_timeout = duration_in(
            "queue_timeout",
            raw.queue_timeout
                .as_ref()
                .map(|t| t.text("queue_timeout"))
                .transpose()?,
            DEFAULT_QUEUE_TIMEOUT,
            Duration::ZERO,
            MAX_TIMEOUT,
        )?;
        let auth = match raw.auth.as_deref() {
            None | Some("public") => Auth::Public,
            Some("token") => Auth::Token,
            Some(other) => {
                return Err(ManifestError::invalid(
                    "auth",
                    format!("unknown value \"{other}\": use \"public\" or \"token\""),
                ))
            }
        };
        let network = match raw.network.as_deref() {
            None | Some("egress") => Network::Egress,
            Some("none") => Network::None,
            Some("host") => Network::Host,
            Some(other) => {
                return Err(ManifestError::invalid(
                    "network",
                    format!("unknown value \"{other}\": use \"egress\" (outbound internet, the default), \"none\" (loopback only) or \"host\" (the host's network)"),
                ))
            }
        };
        let mut allow = Vec::new();
        for (i, rule) in raw.allow.iter().flatten().enumerate() {
            let r: AllowRule = rule
                .parse()
                .map_err(|m: String| ManifestError::invalid(&format!("allow[{i}]"), m))?;
            allow.push(r);
        }
        if network == Network::Host && runtime.is_custom() {
            return Err(ManifestError::invalid(
                "network",
                "\"host\" is not for runtime = \"provided\": its Runtime API (127.0.0.1:9001) would be on the host's network, where any local process could take the function's events; use \"egress\" or \"none\"".to_string(),
            ));
        }
        if !allow.is_empty() && network != Network::Egress {
            return Err(ManifestError::invalid(
                "allow",
                format!(
                    "only applies to network = \"egress\", not \"{}\"",
                    network.as_str()
                ),
            ));
        }
        if allow.len() > MAX_ALLOW {
            return Err(ManifestError::invalid(
                "allow",
                format!("has {} rules, more than the limit of {MAX_ALLOW}: use networks (\"10.0.0.0/16\") instead of single addresses", allow.len()),
            ));
        }
        for (k, v) in &raw.env {
            validate_env(k, v)?;
        }
        let env_bytes: usize = raw.env.iter().map(|(k, v)| k.len() + v.len()).sum();
        if env_bytes > MAX_ENV_BYTES {
            return Err(ManifestError::invalid(
                "env",
                format!("the variables take {env_bytes} bytes (names and values), over the limit of {MAX_ENV_BYTES} bytes: ship larger configuration as a file with the code"),
            ));
        }
        let triggers = match &raw.triggers {
            None => default_triggers(),
            Some(tables) => {
                let mut triggers: Vec<TriggerSpec> = Vec::new();
                for (i, t) in tables.iter().enumerate() {
                    let spec = TriggerSpec::from_table(i, t)?;
                    if matches!(spec, TriggerSpec::Http(_))
                        && triggers.iter().any(|t| matches!(t, TriggerSpec::Http(_)))
                    {
                        return Err(ManifestError::invalid(
                            &format!("triggers[{i}]"),
                            "is a second HTTP trigger: a function has one URL",
                        ));
                    }
                    if let TriggerSpec::Nats(n) = &spec {
                        if triggers
                            .iter()
                            .any(|o| matches!(o, TriggerSpec::Nats(o) if o.name == n.name))
                        {
                            return Err(ManifestError::invalid(
                                &format!("triggers[{i}].name"),
                                format!("\"{}\" is the name of another NATS trigger: give each one a name of its own", n.name),
                            ));
                        }
                    }
                    if let TriggerSpec::Timer(t) = &spec {
                        let taken = triggers
                            .iter()
                            .any(|o| matches!(o, TriggerSpec::Timer(o) if o.name == t.name));
                        if taken {
                            return Err(ManifestError::invalid(
                                &format!("triggers[{i}].name"),
                                format!("\"{}\" is the name of another timer: give each timer a name of its own", t.name),
                            ));
                        }
                    }
                    if let TriggerSpec::Storage(t) = &spec {
                        if triggers
                            .iter()
                            .any(|o| matches!(o, TriggerSpec::Storage(o) if o.name == t.name))
                        {
                            return Err(ManifestError::invalid(
                                &format!("triggers[{i}].name"),
                                format!("\"{}\" is the name of another storage trigger: give each a name of its own (it is the last part of its webhook's path)", t.name),
                            ));
                        }
                    }
                    if let TriggerSpec::Postgres(p) = &spec {
                        p.check_unique(i, &raw.name, &triggers)?;
                    }
                    triggers.push(spec);
                }
                triggers
            }
        };
        handler_type.check_triggers(&triggers)?;
        let retries = int_in(
            "retries",
            raw.retries,
            DEFAULT_RETRIES as i64,
            0,
            MAX_RETRIES as i64,
        )? as u32;
        let max_event_age = duration_in(
            "max_event_age",
            raw.max_event_age
                .as_ref()
                .map(|t| t.text("max_event_age"))
                .transpose()?,
            DEFAULT_MAX_EVENT_AGE,
            MIN_MAX_EVENT_AGE,
            DEFAULT_MAX_EVENT_AGE,
        )?;
        for (key, dest) in [
            ("on_success", &raw.on_success),
            ("on_failure", &raw.on_failure),
        ] {
            if let Some(d) = dest {
                validate_name(d).map_err(|_| {
                    ManifestError::invalid(key, format!("\"{d}\" is not a function name"))
                })?;
                if *d == raw.name {
                    return Err(ManifestError::invalid(
                        key,
                        "names the function itself: a destination is another function",
                    ));
                }
            }
        }
        Ok(FunctionSpec {
            name: raw.name,
            runtime,
            runtime_version,
            handler: raw.handler,
            memory_mb,
            timeout_ms: timeout.as_millis() as u64,
            env: raw.env,
            concurrency,
            min_instances,
            max_instances,
            idle_timeout_ms: idle_timeout.as_millis() as u64,
            max_queue,
            queue_timeout_ms: queue_timeout.as_millis() as u64,
            auth,
            network,
            allow,
            triggers,
            retries,
            max_event_age_ms: max_event_age.as_millis() as u64,
            on_success: raw.on_success,
            on_failure: raw.on_failure,
            handler_type,
            initializer,
            initialization_timeout_ms: initialization_timeout.as_millis() as u64,
        })
    }

    pub fn max_event_age(&self) -> Duration {
        Duration::from_millis(self.max_event_age_ms)
    }

    /// The function's timers.
    pub fn timers(&self) -> impl Iterator<Item = &TimerSpec> {
        self.triggers.iter().filter_map(|t| match t {
            TriggerSpec::Timer(t) => Some(t),
            _ => None,
        })
    }

    /// The function's storage-event triggers.
    pub fn storage_triggers(&self) -> impl Iterator<Item = &crate::storage::StorageSpec> {
        self.triggers.iter().filter_map(|t| match t {
            TriggerSpec::Storage(t) => Some(t),
            _ => None,
        })
    }

    /// The function's NATS triggers.
    pub fn nats(&self) -> impl Iterator<Item = &NatsSpec> {
        self.triggers.iter().filter_map(|t| match t {
            TriggerSpec::Nats(n) => Some(n),
            _ => None,
        })
    }

    /// The spec as shown outside the server: secrets in triggers (a
    /// database's password, a broker's credentials) replaced.
    pub fn redacted(&self) -> FunctionSpec {
        let mut s = self.clone();
        for t in &mut s.triggers {
            if let TriggerSpec::Postgres(p) = t {
                p.dsn = crate::postgres::redact_dsn(&p.dsn);
            }
            if let TriggerSpec::Nats(n) = t {
                n.auth = n.auth.redacted();
            }
            if let TriggerSpec::Storage(crate::storage::StorageSpec { nats: Some(n), .. }) = t {
                n.auth = n.auth.redacted();
            }
        }
        s
    }

    /// Whether the function can be called through its URL.
    pub fn has_http_trigger(&self) -> bool {
        self.http_trigger().is_some()
    }

    /// Its HTTP trigger, if it has one.
    pub fn http_trigger(&self) -> Option<&HttpSpec> {
        self.triggers.iter().find_map(|t| match t {
            TriggerSpec::Http(h) => Some(h),
            _ => None,
        })
    }

    /// The alias `/fn/NAME` is served by, if its HTTP trigger names one.
    pub fn http_alias(&self) -> Option<&str> {
        self.http_trigger()?.alias.as_deref()
    }

    /// Every alias its triggers call, with the trigger's key
    /// (`triggers[N].alias`).
    pub fn trigger_aliases(&self) -> Vec<(String, &str)> {
        self.triggers
            .iter()
            .enumerate()
            .filter_map(|(i, t)| {
                let alias = match t {
                    TriggerSpec::Http(h) => h.alias.as_deref(),
                    TriggerSpec::Timer(t) => t.alias.as_deref(),
                    TriggerSpec::Nats(n) => n.alias.as_deref(),
                    TriggerSpec::Storage(_) | TriggerSpec::Postgres(_) => None,
                }?;
                Some((format!("triggers[{i}].alias"), alias))
            })
            .collect()
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms)
    }
    pub fn queue_timeout(&self) -> Duration {
        Duration::from_millis(self.queue_timeout_ms)
    }
    pub fn initialization_timeout(&self) -> Duration {
        Duration::from_millis(self.initialization_timeout_ms)
    }

    /// The handler's module path (relative, without extension) and export name.
    pub fn handler_parts(&self) -> (&str, &str) {
        split_handler(&self.handler).expect("validated handler")
    }
}

/// Checks a function name: 1–63 characters of `a-z`, `0-9`, `-` and `_`,
/// starting with a letter or digit. Names appear in URLs and paths.
pub fn validate_name(name: &str) -> Result<(), ManifestError> {
    if is_identifier(name, |b| b.is_ascii_alphanumeric()) {
        Ok(())
    } else {
        Err(ManifestError::invalid(
            "name",
            format!("\"{name}\" is not a valid function name: use 1-63 characters of a-z, 0-9, '-' and '_', starting with a letter or digit"),
        ))
    }
}

/// 1-63 characters of a-z, 0-9, '-' and '_', the first one `first`.
pub(crate) fn is_identifier(s: &str, first: impl Fn(u8) -> bool) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        && first(s.as_bytes()[0])
}

fn split_handler(handler: &str) -> Option<(&str, &str)> {
    let (module, export) = handler.rsplit_once('.')?;
    Some((module, export))
}

/// Checks a `FILE.EXPORT` value (the handler, the initializer) of manifest
/// key `key`; `example` is the export an example names.
fn validate_entry(key: &str, handler: &str, example: &str) -> Result<(), ManifestError> {
    let bad = |why: &str| {
        ManifestError::invalid(
            key,
            format!("\"{handler}\" {why}; write it as FILE.EXPORT, e.g. \"index.{example}\""),
        )
    };
    let (module, export) = split_handler(handler).ok_or_else(|| bad("has no '.'"))?;
    if module.is_empty() || export.is_empty() {
        return Err(bad("has an empty file or export name"));
    }
    if module.starts_with('/') || module.split('/').any(|seg| seg.is_empty() || seg == "..") {
        return Err(bad("must name a file inside the function directory"));
    }
    let ident = |s: &str| {
        s.chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == '$')
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$')
    };
    if !ident(export) {
        return Err(bad("has an export name that is not an identifier"));
    }
    if !module
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '/' | '.'))
    {
        return Err(bad("has characters that cannot be in a module path"));
    }
    Ok(())
}

fn validate_env(key: &str, value: &str) -> Result<(), ManifestError> {
    let full = format!("env.{key}");
    let ok = key
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !ok {
        return Err(ManifestError::invalid(
            &full,
            "is not a valid environment variable name (letters, digits and '_', not starting with a digit)",
        ));
    }
    if RESERVED_ENV.contains(&key) || RESERVED_ENV_PREFIXES.iter().any(|p| key.starts_with(p)) {
        return Err(ManifestError::invalid(
            &full,
            "is reserved: lampyr sets it itself",
        ));
    }
    if value.contains('\0') {
        return Err(ManifestError::invalid(&full, "contains a NUL byte"));
    }
    Ok(())
}

fn int_in(
    key: &str,
    value: Option<i64>,
    default: i64,
    min: i64,
    max: i64,
) -> Result<i64, ManifestError> {
    let v = value.unwrap_or(default);
    if v < min || v > max {
        return Err(ManifestError::invalid(
            key,
            format!("{v} is out of range: use a whole number from {min} to {max}"),
        ));
    }
    Ok(v)
}

/// Parses a duration such as `"10s"`, `"2s"`, `"500ms"` or `"5m"`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim()).map_err(|e| {
        format!("\"{s}\" is not a duration ({e}): write e.g. \"500ms\", \"10s\" or \"5m\"")
    })
}

pub(crate) fn duration_in(
    key: &str,
    value: Option<&str>,
    default: Duration,
    min: Duration,
    max: Duration,
) -> Result<Duration, ManifestError> {
    let d = match value {
        None => default,
        Some(s) => parse_duration(s).map_err(|m| ManifestError::invalid(key, m))?,
    };
    if d < min || d > max {
        return Err(ManifestError::invalid(
            key,
            format!(
                "{} is out of range: use a duration from {} to {}",
                humantime::format_duration(d),
                humantime::format_duration(min),
                humantime::format_duration(max)
            ),
        ));
    }
    Ok(d)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) const MIN: &str =
        "name = \"hello\"\nruntime = \"nodejs\"\nhandler = \"index.handler\"\n";

    #[test]
    fn defaults_fill_in() {
        let s = FunctionSpec::from_toml(MIN).unwrap();
        assert_eq!(s.memory_mb, 128);
        assert_eq!(s.concurrency, 1);
        assert_eq!(s.min_instances, 0);
        assert_eq!(s.timeout(), DEFAULT_TIMEOUT);
        assert_eq!(s.idle_timeout(), Duration::from_secs(300));
        assert_eq!(s.handler_parts(), ("index", "handler"));
        assert_eq!(s.auth, Auth::Public);
        assert_eq!(s.network, Network::Egress);
        assert!(s.allow.is_empty());
    }

    #[test]
    fn allow_rules_are_validated_and_need_egress() {
        let s = FunctionSpec::from_toml(&format!(
            "{MIN}allow = [\"10.0.0.5:5432\", \"127.0.0.1:6379\"]\n"
        ))
        .unwrap();
        assert_eq!(s.allow.len(), 2);
        assert_eq!(s.allow[1].port, Some(6379));
        let e = err("allow = [\"10.0.0.5\", \"db:5432\"]\n");
        assert!(e.contains("`allow[1]`"), "{e}");
        let e = err("network = \"none\"\nallow = [\"10.0.0.5\"]\n");
        assert!(e.contains("`allow`") && e.contains("egress"), "{e}");
        let e = err("network = \"lan\"\n");
        assert!(e.contains("`network`") && e.contains("egress"), "{e}");
        let e = FunctionSpec::from_toml(
            "name = \"a\"\nruntime = \"provided.al2023\"\nhandler = \"f.h\"\nnetwork = \"host\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("`network`") && e.contains("Runtime API"), "{e}");
    }

    /// A spec stored before `allow` existed (and with the old default
    /// network written out) still reads.
    #[test]
    fn specs_stored_by_earlier_versions_read() {
        let old = r#"{"name":"hello","runtime":"nodejs","handler":"index.handler","memory_mb":128,"timeout_ms":10000,"env":{},"concurrency":1,"min_instances":0,"max_instances":10,"idle_timeout_ms":300000,"max_queue":100,"queue_timeout_ms":10000,"auth":"public","network":"none"}"#;
        let s: FunctionSpec = serde_json::from_str(old).unwrap();
        assert_eq!(s.network, Network::None);
        assert!(s.allow.is_empty());
        // Before the trigger list, every function had its URL.
        assert_eq!(s.triggers, [TriggerSpec::Http(HttpSpec::default())]);
        assert!(s.has_http_trigger());
        // And a spec with the default list is stored as before.
        let again = serde_json::to_string(&s).unwrap();
        assert_eq!(again, old);
    }

    #[test]
    fn async_settings_and_timers_are_validated() {
        let s = FunctionSpec::from_toml(MIN).unwrap();
        assert_eq!((s.retries, s.max_event_age()), (2, DEFAULT_MAX_EVENT_AGE));
        let s = FunctionSpec::from_toml(&format!(
            "{MIN}retries = 0\nmax_event_age = \"10m\"\non_failure = \"alerts\"\n[[triggers]]\ntype = \"timer\"\ncron = \"*/5 * * * * *\"\ntimezone = \"Asia/Shanghai\"\npayload = '{{\"job\": \"report\"}}'\noverlap = \"skip\"\n[[triggers]]\ntype = \"timer\"\nname = \"nightly\"\ncron = \"@every 1h\"\ncatch_up = \"none\"\nenabled = false\n"
        ))
        .unwrap();
        assert_eq!(s.retries, 0);
        assert_eq!(s.on_failure.as_deref(), Some("alerts"));
        let timers: Vec<&TimerSpec> = s.timers().collect();
        assert_eq!(timers.len(), 2);
        assert_eq!(
            (timers[0].name.as_str(), timers[0].overlap),
            ("timer", Overlap::Skip)
        );
        assert_eq!(timers[0].payload.as_deref(), Some("{\"job\": \"report\"}"));
        assert_eq!(
            (timers[1].catch_up, timers[1].enabled),
            (CatchUp::None, false)
        );
        assert!(
            !s.has_http_trigger(),
            "listing triggers lists the URL too, or not"
        );
        let j = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<FunctionSpec>(&j).unwrap(), s);
        for (extra, want) in [
            ("retries = 3\n", "`retries`"),
            ("max_event_age = \"10s\"\n", "`max_event_age`"),
            ("max_event_age = \"7h\"\n", "`max_event_age`"),
            ("on_success = \"hello\"\n", "names the function itself"),
            ("on_failure = \"Bad Name\"\n", "`on_failure`"),
            ("[[triggers]]\ntype = \"timer\"\n", "`triggers[0].cron`: is missing"),
            ("[[triggers]]\ntype = \"timer\"\ncron = \"61 * * * *\"\n", "`triggers[0].cron`"),
            ("[[triggers]]\ntype = \"timer\"\ncron = \"* * * * *\"\ntimezone = \"Moon/Base\"\n", "`triggers[0].timezone`"),
            ("[[triggers]]\ntype = \"timer\"\ncron = \"@every 1s\"\novelap = \"skip\"\n", "`triggers[0].ovelap`"),
            ("[[triggers]]\ntype = \"timer\"\ncron = \"@every 1s\"\noverlap = \"queue\"\n", "`triggers[0].overlap`"),
            ("[[triggers]]\ntype = \"timer\"\ncron = \"@every 1s\"\n[[triggers]]\ntype = \"timer\"\ncron = \"@every 2s\"\n", "`triggers[1].name`"),
        ] {
            let e = err(extra);
            assert!(e.contains(want), "{extra:?} gave {e}");
        }
    }

    #[test]
    fn the_http_trigger_may_name_the_alias_it_serves() {
        let with = |alias: &str| {
            FunctionSpec::from_toml(&format!(
                "{MIN}[[triggers]]\ntype = \"http\"\nalias = \"{alias}\"\n"
            ))
        };
        let s = with("live").unwrap();
        assert_eq!(s.http_alias(), Some("live"));
        let j = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<FunctionSpec>(&j).unwrap(), s);
        // `$LATEST` is today's behaviour: no alias.
        assert_eq!(with("$LATEST").unwrap().http_alias(), None);
        let e = with("Live!").unwrap_err().to_string();
        assert!(
            e.contains("triggers[0].alias") && e.contains("Live!"),
            "{e}"
        );
        assert_eq!(FunctionSpec::from_toml(MIN).unwrap().http_alias(), None);
        let timer = FunctionSpec::from_toml(&format!(
            "{MIN}[[triggers]]\ntype = \"timer\"\ncron = \"@every 1m\"\nalias = \"live\"\n"
        ))
        .unwrap();
        assert_eq!(
            timer.timers().next().unwrap().alias.as_deref(),
            Some("live")
        );
        assert_eq!(
            timer.trigger_aliases(),
            [("triggers[0].alias".to_string(), "live")]
        );
    }

    #[test]
    fn triggers_default_to_http_and_name_their_keys() {
        assert_eq!(
            FunctionSpec::from_toml(MIN).unwrap().triggers,
            [TriggerSpec::Http(HttpSpec::default())]
        );
        let s = FunctionSpec::from_toml(&format!("{MIN}[[triggers]]\ntype = \"http\"\n")).unwrap();
        assert_eq!(s.triggers, [TriggerSpec::Http(HttpSpec::default())]);
        // None at all: `lampyr invoke` only.
        let s = FunctionSpec::from_toml(&format!("{MIN}triggers = []\n")).unwrap();
        assert!(s.triggers.is_empty() && !s.has_http_trigger());
        let j = serde_json::to_string(&s).unwrap();
        assert!(j.contains("\"triggers\":[]"), "{j}");
        assert_eq!(serde_json::from_str::<FunctionSpec>(&j).unwrap(), s);
        for (extra, want) in [
            (
                "[[triggers]]\ntype = \"smoke\"\n",
                "`triggers[0].type`: unknown trigger type \"smoke\"",
            ),
            (
                "[[triggers]]\npath = \"/x\"\n",
                "`triggers[0].type`: is missing",
            ),
            (
                "[[triggers]]\ntype = 3\n",
                "`triggers[0].type`: must be a string",
            ),
            (
                "[[triggers]]\ntype = \"http\"\nurl = \"/\"\n",
                "`triggers[0].url`: is not a setting",
            ),
            (
                "[[triggers]]\ntype = \"http\"\n[[triggers]]\ntype = \"http\"\n",
                "`triggers[1]`: is a second HTTP trigger",
            ),
        ] {
            let e = err(extra);
            assert!(e.contains(want), "{extra:?} gave {e}");
        }
    }

    #[test]
    fn full_manifest_parses() {
        let text = format!(
            "{MIN}memory_mb = 256\ntimeout = \"3s\"\nconcurrency = 4\nmin_instances = 1\nmax_instances = 2\nidle_timeout = \"2s\"\nauth = \"token\"\n[env]\nGREETING = \"hi\"\n"
        );
        let s = FunctionSpec::from_toml(&text).unwrap();
        assert_eq!(s.memory_mb, 256);
        assert_eq!(s.timeout_ms, 3000);
        assert_eq!(s.idle_timeout_ms, 2000);
        assert_eq!(s.concurrency, 4);
        assert_eq!(s.env["GREETING"], "hi");
        assert_eq!(s.auth, Auth::Token);
    }

    /// The error for a minimal manifest with `extra` lines.
    pub(crate) fn err(extra: &str) -> String {
        FunctionSpec::from_toml(&format!("{MIN}{extra}"))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn unknown_key_is_named() {
        let e = err("memroy_mb = 12\n");
        assert!(e.contains("memroy_mb"), "{e}");
    }

    #[test]
    fn bad_values_name_their_key() {
        for (extra, key) in [
            ("memory_mb = 1\n", "memory_mb"),
            ("timeout = \"soon\"\n", "timeout"),
            ("timeout = \"1h\"\n", "timeout"),
            ("concurrency = 0\n", "concurrency"),
            ("min_instances = 5\nmax_instances = 2\n", "min_instances"),
            ("idle_timeout = \"abc\"\n", "idle_timeout"),
            ("auth = \"maybe\"\n", "auth"),
            ("[env]\nAWS_LAMBDA_X = \"1\"\n", "env.AWS_LAMBDA_X"),
            ("[env]\n\"1BAD\" = \"1\"\n", "env.1BAD"),
            ("memory_mb = \"lots\"\n", "memory_mb"),
            ("timeout = 10\n", "\"10s\""),
            ("idle_timeout = 2.5\n", "\"2.5s\""),
        ] {
            let e = err(extra);
            assert!(e.contains(key), "{extra:?} gave {e}");
        }
    }

    #[test]
    fn bad_names_runtimes_and_handlers_are_refused() {
        let e = FunctionSpec::from_toml(
            "name = \"Hello World\"\nruntime = \"nodejs\"\nhandler = \"index.handler\"\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("`name`"));
        let e = FunctionSpec::from_toml(
            "name = \"a\"\nruntime = \"ruby\"\nhandler = \"index.handler\"\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("`runtime`") && e.to_string().contains("ruby"));
        for h in [
            "index",
            ".handler",
            "index.",
            "../x.handler",
            "/abs.handler",
            "index.1x",
        ] {
            let e = FunctionSpec::from_toml(&format!(
                "name = \"a\"\nruntime = \"python\"\nhandler = \"{h}\"\n"
            ))
            .unwrap_err();
            assert!(e.to_string().contains("`handler`"), "{h}: {e}");
        }
        let ok = FunctionSpec::from_toml(
            "name = \"a\"\nruntime = \"python\"\nhandler = \"src/app.main\"\n",
        )
        .unwrap();
        assert_eq!(ok.handler_parts(), ("src/app", "main"));
    }

    #[test]
    fn manifests_and_environments_are_bounded() {
        let big = format!("[env]\nBIG = \"{}\"\n", "x".repeat(5000));
        let e = err(&big);
        assert!(e.contains("`env`") && e.contains("4096"), "{e}");
        let ok = format!("[env]\nA = \"{}\"\n", "x".repeat(4000));
        assert!(FunctionSpec::from_toml(&format!("{MIN}{ok}")).is_ok());
        let huge = format!("{MIN}# {}\n", "y".repeat(MAX_MANIFEST_BYTES));
        let e = FunctionSpec::from_toml(&huge).unwrap_err().to_string();
        assert!(e.contains("over the limit"), "{e}");
    }

    #[test]
    fn missing_required_key_is_named() {
        let e = FunctionSpec::from_toml("name = \"a\"\nruntime = \"python\"\n").unwrap_err();
        assert!(e.to_string().contains("handler"), "{e}");
    }

    #[test]
    fn spec_round_trips_through_json() {
        let s = FunctionSpec::from_toml(MIN).unwrap();
        let j = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<FunctionSpec>(&j).unwrap(), s);
    }
}

#[cfg(test)]
mod fuzz {
    use super::*;
    use proptest::prelude::*;

    /// `PROPTEST_CASES` when set (for a longer hunt), else `n`.
    fn cases(n: u32) -> u32 {
        std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|c| c.parse().ok())
            .unwrap_or(n)
    }

    fn value() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<i64>().prop_map(|n| n.to_string()),
            "[ -~]{0,12}".prop_map(|s| format!("{s:?}")),
            Just("true".to_string()),
            Just("[\"10.0.0.1:80\", \"x\"]".to_string()),
            Just("\"500000000000y\"".to_string()),
            Just("\"18446744073709551615ms\"".to_string()),
            Just("{ A = \"1\" }".to_string()),
        ]
    }

    fn key() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("memory_mb"),
            Just("timeout"),
            Just("concurrency"),
            Just("min_instances"),
            Just("max_instances"),
            Just("idle_timeout"),
            Just("max_queue"),
            Just("queue_timeout"),
            Just("auth"),
            Just("network"),
            Just("allow"),
            Just("env"),
            Just("handler"),
            Just("bogus"),
        ]
        .prop_map(str::to_string)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(cases(500)))]

        /// Any text parses or is refused with an error naming the problem;
        /// what parses round-trips through the stored form.
        #[test]
        fn any_manifest_parses_or_is_refused(extra in proptest::collection::vec((key(), value()), 0..6), junk in "\\PC{0,40}") {
            let mut text = String::from("name = \"f\"\nruntime = \"nodejs\"\nhandler = \"index.handler\"\n");
            for (k, v) in &extra {
                text.push_str(&format!("{k} = {v}\n"));
            }
            match FunctionSpec::from_toml(&text) {
                Ok(spec) => {
                    let json = serde_json::to_string(&spec).unwrap();
                    prop_assert_eq!(serde_json::from_str::<FunctionSpec>(&json).unwrap(), spec);
                }
                Err(e) => prop_assert!(!e.to_string().is_empty()),
            }
            let _ = FunctionSpec::from_toml(&junk);
            let _ = FunctionSpec::from_toml(&format!("{text}{junk}"));
        }
    }
}
