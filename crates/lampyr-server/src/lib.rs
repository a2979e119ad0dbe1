//! The composition root: everything `lampyr serve` is, assembled.
//!
//! It reads and checks the configuration ([`config`]), prepares the data
//! directory and the API token ([`token`]), finds the runtimes, sets up the
//! container layer, the code store, the records and the logs, starts the
//! function service, and then the triggers: the HTTP trigger and the
//! management API today ([`lampyr_gateway`]), every other trigger beside it.
//! The binary calls [`Server::start`] and [`Server::run`] and nothing else
//! of the platform. [`doctor`] reports what this host offers; [`demo`]
//! deploys the bundled example functions.
#![forbid(unsafe_code)]

pub mod config;
pub mod demo;
pub mod doctor;
pub mod token;

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use lampyr_api::Runtime;
use lampyr_gateway::AppState;
use lampyr_runtime::prebuild::Prepared;
use lampyr_runtime::Runtimes;
use lampyr_sandbox::Sandboxer;
use lampyr_scheduler::{Scheduler, SchedulerConfig};
use lampyr_store::{LogLimits, LogStore, Store, StoreLimits};
use lampyr_triggers::TriggerSet;

pub use config::{ConfigError, ServerConfig, DEFAULT_LISTEN};
pub use token::{load_or_create_token, TOKEN_FILE};

/// The first process of every jailed instance (`lampyr-init`, or `lampyr
/// __sandbox-init`): the executables call this when asked to.
pub fn sandbox_init() -> ! {
    lampyr_sandbox::init::main()
}

/// The async runtime a server runs on: `workers` threads, which check the
/// instances' sockets before they sleep when polling pays
/// ([`lampyr_runtime::poll_before_park`]), and whose waits for a CPU tell
/// asynchronous work when to give way ([`lampyr_sandbox::caller_cpu_wait`]).
pub fn async_runtime(workers: usize) -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .on_thread_park(lampyr_runtime::poll_before_park)
        .on_thread_start(lampyr_sandbox::count_as_caller_thread)
        .on_thread_stop(lampyr_sandbox::uncount_caller_thread)
        .build()
}

/// The argument that selects [`sandbox_init`] in the `lampyr` executable.
pub const SANDBOX_INIT_ARG: &str = lampyr_sandbox::init::INIT_ARG;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Config(#[from] ConfigError),
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
    #[error(transparent)]
    Trigger(#[from] lampyr_triggers::TriggerError),
    #[error(transparent)]
    Events(#[from] lampyr_async::QueueError),
    #[error(transparent)]
    Keys(#[from] lampyr_store::KeyError),
    #[error("the HTTP listener failed (the log says why); the server stopped")]
    Serve,
}

/// A started server, not yet serving requests.
pub struct Server {
    pub app: AppState,
    sched: Scheduler,
    public_url: String,
    pub sandboxer: Arc<Sandboxer>,
    /// The HTTP edge, also in `triggers`.
    http: Arc<lampyr_gateway::HttpTrigger>,
    triggers: TriggerSet,
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
        let sandbox_cfg = cfg.sandbox.to_config(&data_dir)?;
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
        let pools = cfg.pools.to_config()?;
        let runtimes = Runtimes::discover();
        for rt in Runtime::ALL {
            match runtimes.get(rt) {
                Ok(info) => {
                    tracing::info!(runtime = %rt, path = %info.path.display(), version = %info.version, "runtime found")
                }
                Err(e) => tracing::warn!(runtime = %rt, "runtime not available: {e}"),
            }
        }
        if pools.enabled && sandboxer.is_jailed() {
            for rt in Runtime::ALL {
                let Ok(info) = runtimes.get(rt) else { continue };
                if !cfg.pools.zygote(rt) {
                    continue;
                }
                match lampyr_runtime::kinds::start_zygote(rt, info, &sandboxer, &bootstrap_dir) {
                    Ok(true) => tracing::info!(
                        runtime = %rt,
                        "{rt} instances are forked from a pre-initialised zygote"
                    ),
                    Ok(false) => {}
                    Err(e) => tracing::warn!(
                        runtime = %rt,
                        "{rt} zygote unavailable, instances start from scratch: {e}"
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
        let retention = cfg.records.to_retention()?;
        let egress_cfg = cfg.network.to_config()?;
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
                keep_versions: cfg.versions.keep,
                canary_threshold: cfg.versions.canary_threshold()?,
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
        let conn_limits = cfg.http.to_limits()?;
        let body_timeout = cfg.http.body_timeout()?;
        let limits = lampyr_gateway::Limits {
            max_request_body: cfg.limits.max_request_body,
            max_response_body: cfg.limits.max_response_body,
            max_package: cfg.limits.max_package,
            body_timeout,
        };
        let mut doctor = doctor::doctor_report(&runtimes, &sandboxer, &data_dir);
        doctor.limits = Some(lampyr_api::ServerLimits {
            max_package: cfg.limits.max_package as u64,
            max_unpacked: cfg.limits.max_unpacked,
            max_entries: cfg.limits.max_entries,
            max_request_body: cfg.limits.max_request_body as u64,
        });
        let events =
            lampyr_async::EventQueue::open(&data_dir.join("events.db"), cfg.async_.to_config()?)?;
        sched.set_event_sink(lampyr_async::sink(&events));
        let storage = Arc::new(lampyr_source_storage::StorageTrigger::new());
        let keys = Arc::new(lampyr_store::KeyStore::open(&data_dir.join("lampyr.db"))?);
        let app = AppState::new(sched.clone(), token, public_url.clone(), limits, doctor)
            .with_events(events.clone())
            .with_keys(keys)
            .with_webhook("storage", storage.clone());
        // Every trigger starts here, beside the HTTP edge.
        let http = Arc::new(lampyr_gateway::HttpTrigger::new(
            app.clone(),
            listener,
            conn_limits,
        ));
        let mut triggers = TriggerSet::new();
        triggers.add(http.clone());
        triggers.add(Arc::new(lampyr_async::AsyncTrigger::new(events.clone())));
        triggers.add(Arc::new(lampyr_async::TimerTrigger::new(events)));
        triggers.add(storage);
        triggers.add(Arc::new(lampyr_source_postgres::PostgresTrigger::new(
            cfg.async_.to_config()?.max_event_bytes,
        )));
        triggers.add(Arc::new(lampyr_source_nats::NatsTrigger::new()));
        app.set_sources(triggers.statuses());
        Ok(Server {
            app,
            sched,
            public_url,
            sandboxer,
            http,
            triggers,
            addr,
            data_dir,
            runtimes,
        })
    }

    /// The base URL functions are served under.
    pub fn app_url(&self) -> String {
        self.public_url.trim_end_matches('/').to_string()
    }

    pub fn scheduler(&self) -> &Scheduler {
        &self.sched
    }

    /// Starts the triggers and serves until `shutdown` resolves (or the
    /// HTTP listener fails); then shuts the triggers down, which answer
    /// what they accepted, stops every instance and removes the server's
    /// cgroups.
    pub async fn run(
        mut self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServerError> {
        let sched = self.sched.clone();
        let sandboxer = self.sandboxer.clone();
        let failed = self.http.failed();
        self.triggers.start(&sched)?;
        let served = tokio::select! {
            _ = shutdown => Ok(()),
            _ = failed => Err(ServerError::Serve),
        };
        self.triggers.shutdown().await;
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
