//! The server's configuration file (`lampyr serve --config FILE`): every
//! key optional, its default in `config/lampyr-server.toml`, unknown keys
//! refused by name, every value checked before the server starts.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use lampyr_sandbox::SandboxConfig;
use lampyr_scheduler::{PoolBounds, PoolConfig};
use lampyr_store::{LogLimits, StoreLimits};
use serde::Deserialize;

/// A configuration file that cannot be read, or a value that is wrong.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: String, message: String },
    /// `key` is the value's dotted name, e.g. `pools.nodejs_min`.
    #[error("server configuration: {key}: {message}")]
    Invalid { key: String, message: String },
}

impl ConfigError {
    pub fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// A duration value of the configuration, e.g. `"60s"`.
fn duration(key: &str, v: &str) -> Result<Duration, ConfigError> {
    lampyr_api::manifest::parse_duration(v).map_err(|m| ConfigError::invalid(key, m))
}

/// Where the server listens unless told otherwise.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

/// The server configuration file. Every key is optional; see
/// `config/lampyr-server.toml` for the commented defaults.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    pub listen: Option<SocketAddr>,
    pub data_dir: Option<PathBuf>,
    /// The base URL printed for functions; defaults to `http://LISTEN`.
    pub public_url: Option<String>,
    /// Threads serving requests and running the function service; see
    /// [`default_workers`].
    pub workers: Option<usize>,
    #[serde(default)]
    pub limits: LimitsConfig,
    #[serde(default)]
    pub logs: LogsConfig,
    #[serde(default)]
    pub sandbox: SandboxSection,
    #[serde(default)]
    pub pools: PoolsSection,
    #[serde(default)]
    pub records: RecordsSection,
    #[serde(default)]
    pub http: HttpSection,
    #[serde(default)]
    pub network: NetworkSection,
    #[serde(default, rename = "async")]
    pub async_: AsyncSection,
    #[serde(default)]
    pub versions: VersionsSection,
    /// `[runtimes.NAME]`: which interpreters run each runtime.
    #[serde(default)]
    pub runtimes: std::collections::BTreeMap<String, RuntimeSection>,
}

/// `[runtimes.NAME]`: the interpreters of one runtime.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeSection {
    /// The default interpreter, instead of the first on `PATH`.
    pub path: Option<PathBuf>,
    /// Other interpreters, for functions that name their version.
    #[serde(default)]
    pub interpreters: Vec<PathBuf>,
    /// Also look where version managers install other versions.
    pub scan: Option<bool>,
}

impl ServerConfig {
    /// Where to look for each runtime's interpreters; refuses tables that
    /// name no runtime.
    pub fn interpreters(
        &self,
    ) -> Result<Vec<(lampyr_api::Runtime, lampyr_runtime::Interpreters)>, ConfigError> {
        self.runtimes
            .iter()
            .map(|(name, section)| {
                let rt = lampyr_api::Runtime::ALL
                    .into_iter()
                    .find(|r| r.as_str() == name)
                    .ok_or_else(|| {
                        let names: Vec<&str> = lampyr_api::Runtime::ALL
                            .iter()
                            .map(|r| r.as_str())
                            .collect();
                        ConfigError::invalid(
                            format!("runtimes.{name}"),
                            format!(
                                "unknown runtime: [runtimes] has a table per runtime ({})",
                                names.join(", ")
                            ),
                        )
                    })?;
                for (i, p) in section.path.iter().chain(&section.interpreters).enumerate() {
                    if !p.is_absolute() {
                        let key = if section.path.is_some() && i == 0 {
                            format!("runtimes.{name}.path")
                        } else {
                            format!("runtimes.{name}.interpreters")
                        };
                        return Err(ConfigError::invalid(
                            key,
                            format!("{} is not an absolute path", p.display()),
                        ));
                    }
                }
                Ok((
                    rt,
                    lampyr_runtime::Interpreters {
                        default: section.path.clone(),
                        others: section.interpreters.clone(),
                        scan: section.scan.unwrap_or(true),
                    },
                ))
            })
            .collect()
    }
}

/// `[versions]`: how many old versions keep their code.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VersionsSection {
    /// Old versions that no alias uses, newest first, that are kept (the
    /// newest version and aliased ones always are).
    pub keep: usize,
    /// A canary is rolled back when the new version's error rate is higher
    /// than the old one's by more than this (0-1).
    pub canary_threshold: f64,
}

impl Default for VersionsSection {
    fn default() -> Self {
        VersionsSection {
            keep: lampyr_scheduler::DEFAULT_KEEP_VERSIONS,
            canary_threshold: lampyr_scheduler::DEFAULT_CANARY_THRESHOLD,
        }
    }
}

impl VersionsSection {
    /// The canary threshold, checked.
    pub fn canary_threshold(&self) -> Result<f64, ConfigError> {
        let t = self.canary_threshold;
        if !(0.0..=1.0).contains(&t) {
            return Err(ConfigError::invalid(
                "versions.canary_threshold",
                format!(
                    "{t} is outside 0-1: it is a difference of error rates (0.05: five points)"
                ),
            ));
        }
        Ok(t)
    }
}

/// `[async]`: asynchronous invocation and its event queue.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AsyncSection {
    pub retry_base: String,
    pub throttle_base: String,
    pub max_event_bytes: usize,
    pub max_queue_depth: u64,
    /// `"process"`: an accepted event survives the server being killed;
    /// `"power"`: also the machine losing power (a disk flush per commit).
    pub durability: String,
    pub keep_finished: String,
}

impl Default for AsyncSection {
    fn default() -> Self {
        let d = lampyr_async::AsyncConfig::default();
        AsyncSection {
            retry_base: humantime::format_duration(d.retry_base).to_string(),
            throttle_base: humantime::format_duration(d.throttle_base).to_string(),
            max_event_bytes: d.max_event_bytes,
            max_queue_depth: d.max_queue_depth,
            durability: "process".into(),
            keep_finished: humantime::format_duration(d.keep_finished).to_string(),
        }
    }
}

impl AsyncSection {
    pub fn to_config(&self) -> Result<lampyr_async::AsyncConfig, ConfigError> {
        let fsync = match self.durability.as_str() {
            "process" => false,
            "power" => true,
            other => {
                return Err(ConfigError::invalid(
                    "async.durability",
                    format!("unknown value \"{other}\": use \"process\" (survives a killed server) or \"power\" (also a power loss: a disk flush per commit)"),
                ))
            }
        };
        if self.max_event_bytes == 0 || self.max_queue_depth == 0 {
            return Err(ConfigError::invalid(
                if self.max_event_bytes == 0 {
                    "async.max_event_bytes"
                } else {
                    "async.max_queue_depth"
                },
                "must be at least 1",
            ));
        }
        Ok(lampyr_async::AsyncConfig {
            retry_base: duration("async.retry_base", &self.retry_base)?,
            throttle_base: duration("async.throttle_base", &self.throttle_base)?,
            max_event_bytes: self.max_event_bytes,
            max_queue_depth: self.max_queue_depth,
            fsync,
            keep_finished: duration("async.keep_finished", &self.keep_finished)?,
            ..lampyr_async::AsyncConfig::default()
        })
    }
}

/// `[network]`: the egress network of instances.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NetworkSection {
    /// Resolvers for instances' DNS queries; empty: the host's
    /// `/etc/resolv.conf`.
    pub dns: Vec<String>,
    pub max_connections_per_instance: usize,
    pub max_udp_flows_per_instance: usize,
    pub connect_timeout: String,
}

impl Default for NetworkSection {
    fn default() -> Self {
        let d = lampyr_egress::EgressConfig::default();
        NetworkSection {
            dns: Vec::new(),
            max_connections_per_instance: d.max_tcp,
            max_udp_flows_per_instance: d.max_udp_flows,
            connect_timeout: humantime::format_duration(d.connect_timeout).to_string(),
        }
    }
}

impl NetworkSection {
    pub fn to_config(&self) -> Result<lampyr_egress::EgressConfig, ConfigError> {
        let dns = if self.dns.is_empty() {
            lampyr_egress::resolv_conf_servers(
                &std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
            )
        } else {
            self.dns
                .iter()
                .map(|s| {
                    s.parse::<SocketAddr>()
                        .or_else(|_| {
                            s.parse::<std::net::IpAddr>()
                                .map(|ip| SocketAddr::new(ip, 53))
                        })
                        .map_err(|_| {
                            ConfigError::invalid(
                                "network.dns",
                                format!("\"{s}\" is not an IP address (with an optional port)"),
                            )
                        })
                })
                .collect::<Result<_, _>>()?
        };
        for (key, v) in [
            (
                "max_connections_per_instance",
                self.max_connections_per_instance,
            ),
            (
                "max_udp_flows_per_instance",
                self.max_udp_flows_per_instance,
            ),
        ] {
            if v == 0 {
                return Err(ConfigError::invalid(
                    format!("network.{key}"),
                    "must be at least 1",
                ));
            }
        }
        Ok(lampyr_egress::EgressConfig {
            dns,
            max_tcp: self.max_connections_per_instance,
            max_udp_flows: self.max_udp_flows_per_instance,
            connect_timeout: duration("network.connect_timeout", &self.connect_timeout)?,
        })
    }
}

/// `[http]`: how the server treats its connections.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSection {
    pub max_connections: usize,
    pub header_timeout: String,
    pub body_timeout: String,
    pub stall_timeout: String,
    pub shutdown_timeout: String,
}

impl Default for HttpSection {
    fn default() -> Self {
        let d = lampyr_gateway::listen::ConnLimits::default();
        let f = |d: Duration| humantime::format_duration(d).to_string();
        HttpSection {
            max_connections: d.max_connections,
            header_timeout: f(d.header_timeout),
            body_timeout: f(lampyr_gateway::Limits::default().body_timeout),
            stall_timeout: f(d.stall_timeout),
            shutdown_timeout: f(d.shutdown_timeout),
        }
    }
}

impl HttpSection {
    /// A positive duration of `[http]`.
    fn duration(key: &str, v: &str) -> Result<Duration, ConfigError> {
        let key = format!("http.{key}");
        let d = duration(&key, v)?;
        if d.is_zero() {
            return Err(ConfigError::invalid(key, "must be more than 0"));
        }
        Ok(d)
    }

    pub fn to_limits(&self) -> Result<lampyr_gateway::listen::ConnLimits, ConfigError> {
        if self.max_connections == 0 {
            return Err(ConfigError::invalid(
                "http.max_connections",
                "must be at least 1",
            ));
        }
        Ok(lampyr_gateway::listen::ConnLimits {
            max_connections: self.max_connections,
            header_timeout: Self::duration("header_timeout", &self.header_timeout)?,
            stall_timeout: Self::duration("stall_timeout", &self.stall_timeout)?,
            shutdown_timeout: Self::duration("shutdown_timeout", &self.shutdown_timeout)?,
        })
    }

    /// How long a request body may stall.
    pub fn body_timeout(&self) -> Result<Duration, ConfigError> {
        Self::duration("body_timeout", &self.body_timeout)
    }
}

/// `[records]`: how long invocation records are kept.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RecordsSection {
    pub max_age: String,
    pub max_count: u64,
}

impl Default for RecordsSection {
    fn default() -> Self {
        RecordsSection {
            max_age: "7d".into(),
            max_count: lampyr_store::Retention::default().max_count,
        }
    }
}

impl RecordsSection {
    pub fn to_retention(&self) -> Result<lampyr_store::Retention, ConfigError> {
        Ok(lampyr_store::Retention {
            max_age: duration("records.max_age", &self.max_age)?,
            max_count: self.max_count,
        })
    }
}

/// `[pools]`: generic instances started ahead of demand, with a table per
/// runtime by its name (`[pools.nodejs]`, `[pools.python]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct PoolsSection {
    pub enabled: bool,
    pub memory_budget_mb: u64,
    pub instance_memory_mb: u32,
    pub shrink_after: String,
    /// Everything else: the runtimes' tables, and the older spelling of
    /// their settings (`nodejs_min`, `python_zygote`, ...), checked by
    /// [`PoolsSection::runtime`]. Any other key is refused there.
    #[serde(flatten)]
    pub rest: std::collections::BTreeMap<String, toml::Value>,
}

/// `[pools.NAME]`: one runtime's pool.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimePool {
    pub min: Option<u32>,
    pub max: Option<u32>,
    /// Fork the runtime's instances from a pre-initialised zygote, where it
    /// has one (jailed instances only).
    pub zygote: Option<bool>,
}

impl Default for PoolsSection {
    fn default() -> Self {
        let d = PoolConfig::default();
        PoolsSection {
            enabled: d.enabled,
            memory_budget_mb: d.memory_budget_mb,
            instance_memory_mb: d.instance_memory_mb,
            shrink_after: "60s".into(),
            rest: Default::default(),
        }
    }
}

impl PoolsSection {
    /// One runtime's settings: its table, with the older spelling
    /// (`NAME_min`, `NAME_max`, `NAME_zygote`) where the table leaves a
    /// value out. Refuses keys that are neither by name.
    pub fn runtime(&self, rt: lampyr_api::Runtime) -> Result<RuntimePool, ConfigError> {
        self.check_keys()?;
        let name = rt.as_str();
        let mut pool = match self.rest.get(name) {
            None => RuntimePool::default(),
            Some(v) => v.clone().try_into::<RuntimePool>().map_err(|e| {
                ConfigError::invalid(format!("pools.{name}"), e.message().to_string())
            })?,
        };
        let old = |suffix: &str| self.rest.get(&format!("{name}_{suffix}"));
        let number = |suffix: &str| -> Result<Option<u32>, ConfigError> {
            old(suffix)
                .map(|v| {
                    v.as_integer()
                        .and_then(|n| u32::try_from(n).ok())
                        .ok_or_else(|| {
                            ConfigError::invalid(
                                format!("pools.{name}_{suffix}"),
                                "must be a whole number",
                            )
                        })
                })
                .transpose()
        };
        pool.min = pool.min.or(number("min")?);
        pool.max = pool.max.or(number("max")?);
        if pool.zygote.is_none() {
            pool.zygote = old("zygote")
                .map(|v| {
                    v.as_bool().ok_or_else(|| {
                        ConfigError::invalid(
                            format!("pools.{name}_zygote"),
                            "must be true or false",
                        )
                    })
                })
                .transpose()?;
        }
        Ok(pool)
    }

    /// Whether `rt`'s instances are forked from its zygote (if it has one).
    pub fn zygote(&self, rt: lampyr_api::Runtime) -> bool {
        self.runtime(rt).ok().and_then(|p| p.zygote).unwrap_or(true)
    }

    fn check_keys(&self) -> Result<(), ConfigError> {
        let names: Vec<&str> = lampyr_api::Runtime::ALL
            .iter()
            .map(|r| r.as_str())
            .collect();
        for key in self.rest.keys() {
            let known = names.iter().any(|n| {
                key == n
                    || key
                        .strip_prefix(n)
                        .and_then(|k| k.strip_prefix('_'))
                        .is_some_and(|k| ["min", "max", "zygote"].contains(&k))
            });
            if !known {
                return Err(ConfigError::invalid(
                    format!("pools.{key}"),
                    format!(
                        "unknown key: [pools] has enabled, memory_budget_mb, instance_memory_mb, shrink_after and a table per runtime ({})",
                        names.join(", ")
                    ),
                ));
            }
        }
        Ok(())
    }

    pub fn to_config(&self) -> Result<PoolConfig, ConfigError> {
        let mut runtimes = std::collections::BTreeMap::new();
        for rt in lampyr_api::Runtime::ALL {
            let p = self.runtime(rt)?;
            let d = PoolBounds::default_for(rt);
            let bounds = PoolBounds {
                min: p.min.unwrap_or(d.min),
                max: p.max.unwrap_or(d.max),
            };
            if bounds.min > bounds.max {
                return Err(ConfigError::invalid(
                    format!("pools.{rt}.min"),
                    format!(
                        "{} is more than pools.{rt}.max ({})",
                        bounds.min, bounds.max
                    ),
                ));
            }
            runtimes.insert(rt, bounds);
        }
        Ok(PoolConfig {
            enabled: self.enabled,
            runtimes,
            memory_budget_mb: self.memory_budget_mb,
            instance_memory_mb: self.instance_memory_mb,
            shrink_after: duration("pools.shrink_after", &self.shrink_after)?,
        })
    }
}

/// `[sandbox]`: how instances are isolated.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SandboxSection {
    /// `auto`, `strict` (refuse to start without full isolation) or `off`.
    pub isolation: String,
    pub uid: u32,
    pub gid: u32,
    pub pids_max: u32,
    pub tmp_mb: u32,
    pub max_open_files: u64,
}

impl Default for SandboxSection {
    fn default() -> Self {
        let d = SandboxConfig::new(PathBuf::new(), String::new());
        SandboxSection {
            isolation: "auto".into(),
            uid: d.uid,
            gid: d.gid,
            pids_max: d.pids_max,
            tmp_mb: d.tmp_mb,
            max_open_files: d.max_open_files,
        }
    }
}

impl SandboxSection {
    /// The container layer's settings for a data directory.
    pub fn to_config(&self, data_dir: &Path) -> Result<SandboxConfig, ConfigError> {
        let mut c =
            SandboxConfig::new(data_dir.join("sandbox"), lampyr_sandbox::path_tag(data_dir));
        c.mode = self
            .isolation
            .parse()
            .map_err(|e: String| ConfigError::invalid("sandbox.isolation", e))?;
        c.uid = self.uid;
        c.gid = self.gid;
        c.pids_max = self.pids_max;
        c.tmp_mb = self.tmp_mb;
        c.max_open_files = self.max_open_files;
        Ok(c)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    pub max_request_body: usize,
    pub max_response_body: usize,
    pub max_package: usize,
    pub max_unpacked: u64,
    pub max_entries: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        let l = lampyr_gateway::Limits::default();
        LimitsConfig {
            max_request_body: l.max_request_body,
            max_response_body: l.max_response_body,
            max_package: l.max_package,
            max_unpacked: StoreLimits::default().max_unpacked_bytes,
            max_entries: StoreLimits::default().max_entries,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogsConfig {
    pub file_bytes: u64,
    pub keep_files: usize,
    pub queue_bytes: usize,
    pub instance_rate: u64,
    pub instance_burst: u64,
}

impl Default for LogsConfig {
    fn default() -> Self {
        let l = LogLimits::default();
        let b = lampyr_runtime::LogBudget::default();
        LogsConfig {
            file_bytes: l.file_bytes,
            keep_files: l.keep,
            queue_bytes: b.queue_bytes,
            instance_rate: b.instance_rate,
            instance_burst: b.instance_burst,
        }
    }
}

impl LogsConfig {
    pub fn budget(&self) -> lampyr_runtime::LogBudget {
        lampyr_runtime::LogBudget {
            queue_bytes: self.queue_bytes,
            instance_rate: self.instance_rate,
            instance_burst: self.instance_burst,
        }
    }
}

impl ServerConfig {
    /// The number of worker threads: `workers` if set, else
    /// [`default_workers`].
    pub fn worker_threads(&self) -> Result<usize, ConfigError> {
        match self.workers {
            Some(0) => Err(ConfigError::invalid(
                "workers",
                format!(
                    "must be at least 1 (leave it out for the default, {} on this host)",
                    default_workers()
                ),
            )),
            Some(n) => Ok(n),
            None => Ok(default_workers()),
        }
    }

    /// Reads a config file, refusing unknown keys by name.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.display().to_string(),
            message: e.to_string(),
        })
    }

    /// Checks every value: what [`crate::Server::start`] would refuse.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.worker_threads()?;
        self.pools.to_config()?;
        self.records.to_retention()?;
        self.http.to_limits()?;
        self.http.body_timeout()?;
        self.network.to_config()?;
        self.async_.to_config()?;
        self.versions.canary_threshold()?;
        self.sandbox.to_config(Path::new("/"))?;
        Ok(())
    }
}

/// The default number of worker threads: half the CPUs this process may
/// use, at least one. Function instances run on the same host and need the
/// other half, and each extra worker costs the server CPU per request:
/// tasks move between workers and wake each other across CPUs.
pub fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_rejects_unknown_keys_by_name() {
        let e =
            toml::from_str::<ServerConfig>("listen = \"127.0.0.1:1\"\n[limits]\nmax_body = 1\n")
                .unwrap_err();
        assert!(e.to_string().contains("max_body"), "{e}");
        let c: ServerConfig = toml::from_str("[limits]\nmax_request_body = 10\n").unwrap();
        assert_eq!(c.limits.max_request_body, 10);
        assert_eq!(
            c.limits.max_package,
            lampyr_gateway::Limits::default().max_package
        );
    }

    #[test]
    fn runtimes_tables_are_checked_by_name() {
        for (text, key) in [
            (
                "[runtimes.java]\npath = \"/usr/bin/java\"\n",
                "runtimes.java",
            ),
            (
                "[runtimes.python]\ninterpreters = [\"python3.12\"]\n",
                "runtimes.python.interpreters",
            ),
            (
                "[runtimes.nodejs]\npath = \"node\"\n",
                "runtimes.nodejs.path",
            ),
        ] {
            let c: ServerConfig = toml::from_str(text).unwrap();
            let e = c.interpreters().unwrap_err().to_string();
            assert!(e.contains(key), "{text}: {e}");
        }
        let e = toml::from_str::<ServerConfig>("[runtimes.python]\nversions = []\n").unwrap_err();
        assert!(e.to_string().contains("versions"), "{e}");
        let c: ServerConfig = toml::from_str(
            "[runtimes.python]\nscan = false\ninterpreters = [\"/opt/py/bin/python3\"]\n",
        )
        .unwrap();
        let got = c.interpreters().unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0, lampyr_api::Runtime::Python);
        assert!(!got[0].1.scan);
        assert_eq!(got[0].1.others, vec![PathBuf::from("/opt/py/bin/python3")]);
    }

    /// Every key `config/lampyr-server.toml` documents (as `# key = value`)
    /// is one the server accepts.
    #[test]
    fn the_commented_config_file_parses_with_every_key_set() {
        let text = include_str!("../../../config/lampyr-server.toml");
        let uncommented: String = text
            .lines()
            .map(|l| match l.strip_prefix("# ") {
                Some(rest)
                    if rest.split_once(" = ").is_some_and(|(k, _)| {
                        k.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                    }) =>
                {
                    rest
                }
                _ => l,
            })
            .fold(String::new(), |acc, l| acc + l + "\n");
        let c: ServerConfig = toml::from_str(&uncommented).unwrap();
        assert_eq!(c.workers, Some(1));
        assert_eq!(c.records.max_age, "7d");
        assert!(c.sandbox.to_config(Path::new("/tmp")).is_ok());
        c.validate().unwrap();
    }

    #[test]
    fn pools_are_configured_per_runtime_by_name_and_the_older_keys_still_work() {
        use lampyr_api::Runtime;
        let c: ServerConfig = toml::from_str(
            "[pools]\nshrink_after = \"5s\"\n[pools.python]\nmin = 0\nmax = 3\nzygote = false\n",
        )
        .unwrap();
        let p = c.pools.to_config().unwrap();
        assert_eq!(p.bounds(Runtime::Python), PoolBounds { min: 0, max: 3 });
        assert_eq!(
            p.bounds(Runtime::Nodejs),
            PoolBounds::default_for(Runtime::Nodejs)
        );
        assert!(!c.pools.zygote(Runtime::Python));
        // Configuration files written before the tables.
        let c: ServerConfig =
            toml::from_str("[pools]\nnodejs_min = 2\nnodejs_max = 4\npython_zygote = false\n")
                .unwrap();
        let p = c.pools.to_config().unwrap();
        assert_eq!(p.bounds(Runtime::Nodejs), PoolBounds { min: 2, max: 4 });
        assert!(!c.pools.zygote(Runtime::Python));
        assert!(toml::from_str::<ServerConfig>("")
            .unwrap()
            .pools
            .zygote(Runtime::Python));
        for (text, key) in [
            ("[pools]\nruby_min = 1\n", "pools.ruby_min: unknown key"),
            ("[pools.ruby]\nmin = 1\n", "pools.ruby: unknown key"),
            (
                "[pools.nodejs]\nminimum = 1\n",
                "pools.nodejs: unknown field `minimum`",
            ),
            (
                "[pools.nodejs]\nmin = 5\nmax = 2\n",
                "pools.nodejs.min: 5 is more than",
            ),
            (
                "[pools]\npython_max = \"lots\"\n",
                "pools.python_max: must be a whole number",
            ),
        ] {
            let c: ServerConfig = toml::from_str(text).unwrap();
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains(key), "{text:?} gave {e}");
        }
    }

    #[test]
    fn workers_default_to_half_the_cpus_and_zero_is_refused() {
        let c: ServerConfig = toml::from_str("").unwrap();
        assert_eq!(c.worker_threads().unwrap(), default_workers());
        assert!(default_workers() >= 1);
        let c: ServerConfig = toml::from_str("workers = 3\n").unwrap();
        assert_eq!(c.worker_threads().unwrap(), 3);
        let c: ServerConfig = toml::from_str("workers = 0\n").unwrap();
        let e = c.worker_threads().unwrap_err().to_string();
        assert!(e.contains("workers: must be at least 1"), "{e}");
    }
}
