//! Assembling a running server: configuration, the data directory and its
//! API token, the code store, runtime discovery, the function service, and
//! the listener.

use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use lampyr_api::{DoctorReport, IsolationFeature, Runtime, RuntimeReport};
use lampyr_runtime::prebuild::Prepared;
use lampyr_runtime::Runtimes;
use lampyr_sandbox::{SandboxConfig, Sandboxer};
use lampyr_scheduler::{PoolBounds, PoolConfig, Scheduler, SchedulerConfig};
use lampyr_store::{LogLimits, LogStore, Store, StoreLimits};
use serde::Deserialize;

use crate::{AppState, Limits};

/// The token file inside the data directory.
pub const TOKEN_FILE: &str = "token";

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
    pub fn to_config(&self) -> Result<lampyr_egress::EgressConfig, String> {
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
                            format!(
                                "network.dns: \"{s}\" is not an IP address (with an optional port)"
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
                return Err(format!("network.{key} must be at least 1"));
            }
        }
        Ok(lampyr_egress::EgressConfig {
            dns,
            max_tcp: self.max_connections_per_instance,
            max_udp_flows: self.max_udp_flows_per_instance,
            connect_timeout: lampyr_api::manifest::parse_duration(&self.connect_timeout)
                .map_err(|e| format!("network.connect_timeout: {e}"))?,
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
        let d = crate::listen::ConnLimits::default();
        let f = |d: Duration| humantime::format_duration(d).to_string();
        HttpSection {
            max_connections: d.max_connections,
            header_timeout: f(d.header_timeout),
            body_timeout: f(Limits::default().body_timeout),
            stall_timeout: f(d.stall_timeout),
            shutdown_timeout: f(d.shutdown_timeout),
        }
    }
}

impl HttpSection {
    fn duration(key: &str, v: &str) -> Result<Duration, String> {
        let d = lampyr_api::manifest::parse_duration(v).map_err(|e| format!("http.{key}: {e}"))?;
        if d.is_zero() {
            return Err(format!("http.{key} must be more than 0"));
        }
        Ok(d)
    }

    pub fn to_limits(&self) -> Result<crate::listen::ConnLimits, String> {
        if self.max_connections == 0 {
            return Err("http.max_connections must be at least 1".into());
        }
        Ok(crate::listen::ConnLimits {
            max_connections: self.max_connections,
            header_timeout: Self::duration("header_timeout", &self.header_timeout)?,
            stall_timeout: Self::duration("stall_timeout", &self.stall_timeout)?,
            shutdown_timeout: Self::duration("shutdown_timeout", &self.shutdown_timeout)?,
        })
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
    pub fn to_retention(&self) -> Result<lampyr_store::Retention, String> {
        Ok(lampyr_store::Retention {
            max_age: lampyr_api::manifest::parse_duration(&self.max_age)
                .map_err(|e| format!("records.max_age: {e}"))?,
            max_count: self.max_count,
        })
    }
}

/// `[pools]`: generic instances started ahead of demand.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PoolsSection {
    pub enabled: bool,
    pub nodejs_min: u32,
    pub nodejs_max: u32,
    pub python_min: u32,
    pub python_max: u32,
    pub memory_budget_mb: u64,
    pub instance_memory_mb: u32,
    pub shrink_after: String,
    /// Fork Python instances from a pre-initialised zygote.
    pub python_zygote: bool,
}

impl Default for PoolsSection {
    fn default() -> Self {
        let d = PoolConfig::default();
        PoolsSection {
            enabled: d.enabled,
            nodejs_min: d.nodejs.min,
            nodejs_max: d.nodejs.max,
            python_min: d.python.min,
            python_max: d.python.max,
            memory_budget_mb: d.memory_budget_mb,
            instance_memory_mb: d.instance_memory_mb,
            shrink_after: "60s".into(),
            python_zygote: true,
        }
    }
}

impl PoolsSection {
    pub fn to_config(&self) -> Result<PoolConfig, String> {
        for (key, min, max) in [
            ("nodejs", self.nodejs_min, self.nodejs_max),
            ("python", self.python_min, self.python_max),
        ] {
            if min > max {
                return Err(format!(
                    "pools.{key}_min ({min}) is more than pools.{key}_max ({max})"
                ));
            }
        }
        Ok(PoolConfig {
            enabled: self.enabled,
            nodejs: PoolBounds {
                min: self.nodejs_min,
                max: self.nodejs_max,
            },
            python: PoolBounds {
                min: self.python_min,
                max: self.python_max,
            },
            memory_budget_mb: self.memory_budget_mb,
            instance_memory_mb: self.instance_memory_mb,
            shrink_after: lampyr_api::manifest::parse_duration(&self.shrink_after)
                .map_err(|e| format!("pools.shrink_after: {e}"))?,
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
    pub fn to_config(&self, data_dir: &Path) -> Result<SandboxConfig, String> {
        let mut c =
            SandboxConfig::new(data_dir.join("sandbox"), lampyr_sandbox::path_tag(data_dir));
        c.mode = self
            .isolation
            .parse()
            .map_err(|e: String| format!("sandbox.isolation: {e}"))?;
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
        let l = Limits::default();
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

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("config file {path}: {message}")]
    Config { path: String, message: String },
    #[error("data directory {path}: {source}")]
    DataDir {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot listen on {addr}: {source} (is another server running? choose another address with --listen)")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] lampyr_store::StoreError),
    #[error(transparent)]
    Sandbox(#[from] lampyr_sandbox::SandboxError),
    #[error(transparent)]
    Scheduler(#[from] lampyr_scheduler::SchedulerError),
}

impl ServerConfig {
    /// The number of worker threads: `workers` if set, else
    /// [`default_workers`].
    pub fn worker_threads(&self) -> Result<usize, String> {
        match self.workers {
            Some(0) => Err(format!(
                "workers must be at least 1 (leave it out for the default, {} on this host)",
                default_workers()
            )),
            Some(n) => Ok(n),
            None => Ok(default_workers()),
        }
    }

    /// Reads a config file, refusing unknown keys by name.
    pub fn from_file(path: &Path) -> Result<Self, ServerError> {
        let err = |message: String| ServerError::Config {
            path: path.display().to_string(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        toml::from_str(&text).map_err(|e| err(e.to_string()))
    }
}

/// The default number of worker threads: half the CPUs this process may
/// use, at least one. Function instances run on the same host and need the
/// other half, and each extra worker costs the server CPU per request:
/// tasks move between workers and wake each other across CPUs.
pub fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
}

/// A started server, not yet serving requests.
pub struct Server {
    pub app: AppState,
    pub sandboxer: Arc<Sandboxer>,
    pub conn_limits: crate::listen::ConnLimits,
    pub listener: tokio::net::TcpListener,
    pub addr: SocketAddr,
    pub data_dir: PathBuf,
    pub runtimes: Runtimes,
}

impl Server {
    /// Prepares everything: data directory, token, store, runtimes, the
    /// function service (with reserved instances of every function), and
    /// binds the listener.
    pub async fn start(cfg: ServerConfig, data_dir: PathBuf) -> Result<Server, ServerError> {
        let dd = |source| ServerError::DataDir {
            path: data_dir.display().to_string(),
            source,
        };
        std::fs::create_dir_all(&data_dir).map_err(dd)?;
        std::fs::set_permissions(&data_dir, std::fs::Permissions::from_mode(0o700)).map_err(dd)?;
        let token = load_or_create_token(&data_dir).map_err(dd)?;
        let bootstrap_dir =
            lampyr_runtime::bootstrap::install(&data_dir.join("runtime")).map_err(dd)?;
        let sandbox_cfg =
            cfg.sandbox
                .to_config(&data_dir)
                .map_err(|message| ServerError::Config {
                    path: "[sandbox]".into(),
                    message,
                })?;
        let sandboxer = Arc::new(Sandboxer::new(sandbox_cfg)?);
        let stale = sandboxer.cleanup_stale();
        if stale > 0 {
            tracing::warn!(
                count = stale,
                "removed instance cgroups left behind by a previous run"
            );
        }
        for f in sandboxer.features() {
            tracing::info!(
                feature = f.name,
                enabled = f.enabled,
                "isolation: {}",
                f.detail
            );
        }
        let pools = cfg
            .pools
            .to_config()
            .map_err(|message| ServerError::Config {
                path: "[pools]".into(),
                message,
            })?;
        let runtimes = Runtimes::discover();
        for rt in Runtime::ALL {
            match runtimes.get(rt) {
                Ok(info) => {
                    tracing::info!(runtime = %rt, path = %info.path.display(), version = %info.version, "runtime found")
                }
                Err(e) => tracing::warn!(runtime = %rt, "runtime not available: {e}"),
            }
        }
        if pools.enabled && cfg.pools.python_zygote && sandboxer.is_jailed() {
            if let Ok(py) = runtimes.get(Runtime::Python) {
                let dir = bootstrap_dir.join(Runtime::Python.as_str());
                let bootstrap = lampyr_runtime::bootstrap::path(&bootstrap_dir, Runtime::Python);
                match sandboxer.start_zygote(&py.path, &py.prefix, &dir, &bootstrap) {
                    Ok(()) => {
                        tracing::info!("python instances are forked from a pre-initialised zygote")
                    }
                    Err(e) => tracing::warn!(
                        "python zygote unavailable, instances start from scratch: {e}"
                    ),
                }
            }
        }
        let store_limits = StoreLimits {
            max_package_bytes: cfg.limits.max_package as u64,
            max_unpacked_bytes: cfg.limits.max_unpacked,
            max_entries: cfg.limits.max_entries,
        };
        // Code is prepared for its runtime when it is deployed (Python
        // bytecode), so the first request does not compile it.
        let prepare_with = (runtimes.clone(), sandboxer.clone());
        let store = Arc::new(Store::open(&data_dir, store_limits)?.with_code_preparer(Arc::new(
            move |dir, spec| match lampyr_runtime::prebuild::prepare(&prepare_with.0, &prepare_with.1, spec.runtime, dir) {
                Prepared::Skipped(why) => {
                    tracing::warn!(function = %spec.name, "code not prepared for its runtime: {why}")
                }
                Prepared::Compiled { modules } => {
                    tracing::debug!(function = %spec.name, modules, "python modules compiled")
                }
                Prepared::Nothing => {}
            },
        )));
        let log_store = LogStore::new(
            &data_dir.join("logs"),
            LogLimits {
                file_bytes: cfg.logs.file_bytes,
                keep: cfg.logs.keep_files,
            },
        )
        .map_err(dd)?;
        let records = Arc::new(lampyr_store::RecordStore::open(
            &data_dir.join("lampyr.db"),
        )?);
        let retention = cfg
            .records
            .to_retention()
            .map_err(|message| ServerError::Config {
                path: "[records]".into(),
                message,
            })?;
        let egress_cfg = cfg
            .network
            .to_config()
            .map_err(|message| ServerError::Config {
                path: "[network]".into(),
                message,
            })?;
        if egress_cfg.dns.is_empty() {
            tracing::warn!("no DNS resolver found in /etc/resolv.conf: instances cannot resolve names (set [network] dns)");
        }
        let egress = sandboxer
            .egress_support()
            .map(|()| lampyr_egress::Egress::new(egress_cfg));
        let sched = Scheduler::start(
            store,
            log_store,
            records,
            SchedulerConfig {
                runtimes: runtimes.clone(),
                bootstrap_dir,
                sandboxer: sandboxer.clone(),
                reap_interval: Duration::from_millis(100),
                pools,
                retention,
                log_budget: cfg.logs.budget(),
                egress,
            },
        )?;
        let addr = cfg
            .listen
            .unwrap_or_else(|| DEFAULT_LISTEN.parse().expect("valid default"));
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| ServerError::Listen { addr, source })?;
        let addr = listener
            .local_addr()
            .map_err(|source| ServerError::Listen { addr, source })?;
        let public_url = cfg
            .public_url
            .clone()
            .unwrap_or_else(|| format!("http://{addr}"));
        let conn_limits = cfg
            .http
            .to_limits()
            .map_err(|message| ServerError::Config {
                path: "[http]".into(),
                message,
            })?;
        let body_timeout =
            HttpSection::duration("body_timeout", &cfg.http.body_timeout).map_err(|message| {
                ServerError::Config {
                    path: "[http]".into(),
                    message,
                }
            })?;
        let limits = Limits {
            max_request_body: cfg.limits.max_request_body,
            max_response_body: cfg.limits.max_response_body,
            max_package: cfg.limits.max_package,
            body_timeout,
        };
        let mut doctor = doctor_report(&runtimes, &sandboxer, &data_dir);
        doctor.limits = Some(lampyr_api::ServerLimits {
            max_package: cfg.limits.max_package as u64,
            max_unpacked: cfg.limits.max_unpacked,
            max_entries: cfg.limits.max_entries,
            max_request_body: cfg.limits.max_request_body as u64,
        });
        let app = AppState::new(sched, token, public_url, limits, doctor);
        Ok(Server {
            app,
            sandboxer,
            conn_limits,
            listener,
            addr,
            data_dir,
            runtimes,
        })
    }

    /// The base URL functions are served under.
    pub fn app_url(&self) -> String {
        self.app.public_url.to_string()
    }

    pub fn scheduler(&self) -> &Scheduler {
        &self.app.sched
    }

    /// Serves until `shutdown` resolves, then stops every instance and
    /// removes the server's cgroups.
    pub async fn run(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let sched = self.app.sched.clone();
        let sandboxer = self.sandboxer.clone();
        let served = crate::serve(self.listener, self.app, self.conn_limits, shutdown).await;
        sched.shutdown(Duration::from_secs(5)).await;
        // Instances still starting when the signal came are not known to
        // the scheduler yet: their cgroups find them.
        let n = sandboxer.cleanup_stale();
        if n > 0 {
            tracing::debug!(count = n, "stopped instances that were still starting");
        }
        sandboxer.teardown();
        served
    }
}

/// Reads the API token, creating it (owner-only) on first start.
pub fn load_or_create_token(data_dir: &Path) -> std::io::Result<String> {
    let path = data_dir.join(TOKEN_FILE);
    match std::fs::read_to_string(&path) {
        Ok(t) if !t.trim().is_empty() => {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
            return Ok(t.trim().to_string());
        }
        _ => {}
    }
    let token = lampyr_store::new_token();
    let tmp = data_dir.join(".token.tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(token.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    Ok(token)
}

/// What `lampyr doctor` reports: runtimes, isolation, data directory.
pub fn doctor_report(runtimes: &Runtimes, sandboxer: &Sandboxer, data_dir: &Path) -> DoctorReport {
    let rts = Runtime::ALL
        .iter()
        .map(|&rt| match runtimes.get(rt) {
            Ok(info) => RuntimeReport {
                runtime: rt.to_string(),
                found: true,
                path: Some(info.path.display().to_string()),
                version: Some(info.version.clone()),
                problem: None,
            },
            Err(e) => RuntimeReport {
                runtime: rt.to_string(),
                found: false,
                path: None,
                version: None,
                problem: Some(e.to_string()),
            },
        })
        .collect();
    let isolation = sandboxer
        .features()
        .iter()
        .map(|f| IsolationFeature {
            feature: f.name.to_string(),
            enabled: f.enabled,
            detail: f.detail.clone(),
        })
        .collect();
    DoctorReport {
        runtimes: rts,
        isolation,
        data_dir: data_dir.display().to_string(),
        limits: None,
    }
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
        assert_eq!(c.limits.max_package, Limits::default().max_package);
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
        assert!(c.pools.to_config().is_ok());
    }

    #[test]
    fn workers_default_to_half_the_cpus_and_zero_is_refused() {
        let c: ServerConfig = toml::from_str("").unwrap();
        assert_eq!(c.worker_threads().unwrap(), default_workers());
        assert!(default_workers() >= 1);
        let c: ServerConfig = toml::from_str("workers = 3\n").unwrap();
        assert_eq!(c.worker_threads().unwrap(), 3);
        let c: ServerConfig = toml::from_str("workers = 0\n").unwrap();
        let e = c.worker_threads().unwrap_err();
        assert!(e.starts_with("workers must be at least 1"), "{e}");
    }

    #[test]
    fn token_is_owner_only_and_stable() {
        let d = tempfile::tempdir().unwrap();
        let a = load_or_create_token(d.path()).unwrap();
        let b = load_or_create_token(d.path()).unwrap();
        assert_eq!(a, b);
        let mode = std::fs::metadata(d.path().join(TOKEN_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
