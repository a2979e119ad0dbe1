//! Cold starts: the function service chooses a pooled instance or a fresh
//! one and keeps the phase bookkeeping; the runtime layer does the
//! handshake ([`Instance::cold_start`], [`Instance::specialise_and_load`]).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lampyr_api::{FunctionSpec, StartKind};
use lampyr_runtime::{
    FirstInvoke, FunctionLoad, Instance, InstanceConfig, InstanceError, Loaded, PendingInvoke,
    SpecialiseError,
};

use crate::state::{FunctionState, SlotGrant};
use crate::{Phases, Scheduler, SchedulerError, Version};

impl Scheduler {
    /// Starts and specialises one instance of `version`. With `first`, the
    /// new instance comes back with one slot taken for the caller and that
    /// invocation already sent; without, it joins the function's pool idle
    /// (a reserved instance).
    pub(crate) async fn cold_start(
        &self,
        state: &Arc<FunctionState>,
        version: Arc<Version>,
        phases: &mut Phases,
        first: Option<FirstInvoke<'_>>,
    ) -> Result<
        (
            Option<SlotGrant<Instance>>,
            StartKind,
            Option<PendingInvoke>,
        ),
        SchedulerError,
    > {
        let claim = first.is_some();
        match self.start_instance(&version, phases, first).await {
            Ok((loaded, kind)) => {
                let inst = loaded.instance;
                self.watch_instance(state, &inst);
                Ok((state.started(inst, version, claim)?, kind, loaded.first))
            }
            Err(e) => {
                if let SchedulerError::InitFailed { error, .. } = &e {
                    // The runtime logged the error, once for this start;
                    // requests meanwhile get it without another start.
                    state.init_failed(&version, error.clone());
                }
                state.start_failed();
                Err(e)
            }
        }
    }

    /// Starts a generic instance of a runtime, with no code, for a pool.
    pub(crate) async fn start_generic(
        &self,
        rt: lampyr_api::Runtime,
        memory_mb: u32,
    ) -> Result<Arc<Instance>, SchedulerError> {
        let function = format!("pool-{rt}");
        let runtime = self.inner.config.runtimes.get(rt).map_err(|why| {
            SchedulerError::RuntimeUnavailable {
                function: function.clone(),
                runtime: rt.to_string(),
                why: why.to_string(),
            }
        })?;
        let cfg = InstanceConfig {
            id: format!(
                "pool-{rt}-{}",
                self.inner.instance_seq.fetch_add(1, Ordering::Relaxed)
            ),
            runtime,
            sandboxer: self.inner.config.sandboxer.clone(),
            runtime_dir: self.inner.config.bootstrap_dir.join(rt.as_str()),
            code_dir: None,
            memory_mb,
            // Pooled instances wait with their network closed; a function
            // opens it (egress) or removes it (none) when it takes one.
            network: match &self.inner.config.egress {
                Ok(egress) => lampyr_runtime::Network::Egress {
                    egress: egress.clone(),
                    policy: lampyr_egress::Policy::default(),
                },
                Err(_) => lampyr_runtime::Network::None,
            },
            logs: self.inner.logs.sender(),
        };
        let (inst, _) = Instance::start(cfg)
            .await
            .map_err(|source| SchedulerError::StartFailed { function, source })?;
        Ok(inst)
    }

    /// The interpreter that runs `spec`: the runtime's default, or the
    /// installed one of the version the function asks for (`runtime =
    /// "python3.12"`); refused naming what is installed.
    fn interpreter<'s>(
        &'s self,
        spec: &lampyr_api::FunctionSpec,
    ) -> Result<&'s lampyr_runtime::RuntimeInfo, SchedulerError> {
        self.inner
            .config
            .runtimes
            .for_version(spec.runtime, spec.runtime_version.as_deref())
            .map_err(|why| SchedulerError::RuntimeUnavailable {
                function: spec.name.clone(),
                runtime: match &spec.runtime_version {
                    Some(v) => format!("{} {v}", spec.runtime),
                    None => spec.runtime.to_string(),
                },
                why,
            })
    }

    /// Refuses a custom runtime (`provided`) whose Runtime API would be
    /// on the host's network: it serves each instance's events and takes
    /// its results on `127.0.0.1:9001`, which only an instance's own
    /// network namespace keeps to itself.
    fn check_custom_runtime(&self, spec: &lampyr_api::FunctionSpec) -> Result<(), SchedulerError> {
        if !spec.runtime.is_custom() {
            return Ok(());
        }
        let why = if !self.inner.config.sandboxer.is_jailed() {
            "its instances would share the host's network, where any local process could take its events from the Runtime API; run the server with its sandbox on (`lampyr serve --isolation auto` or `strict`, as root on a kernel with namespaces; `lampyr doctor` says what is missing)"
        } else if spec.network == lampyr_api::Network::Host {
            "network = \"host\" would put its Runtime API on the host's network, where any local process could take its events; use network = \"egress\" or \"none\""
        } else {
            return Ok(());
        };
        Err(SchedulerError::RuntimeUnavailable {
            function: spec.name.clone(),
            runtime: spec.runtime.to_string(),
            why: why.into(),
        })
    }

    /// Brings up one instance of `version`, specialised and loaded: from a
    /// pool when one has an instance ready, else from scratch.
    pub(crate) async fn start_instance(
        &self,
        version: &Arc<Version>,
        phases: &mut Phases,
        first: Option<FirstInvoke<'_>>,
    ) -> Result<(Loaded, StartKind), SchedulerError> {
        let spec = version.spec();
        let function = spec.name.clone();
        let runtime = self.interpreter(spec)?;
        // Pools and zygotes run the default interpreter.
        let default_interpreter = self
            .inner
            .config
            .runtimes
            .get(spec.runtime)
            .is_ok_and(|d| d.path == runtime.path);
        self.check_custom_runtime(spec)?;
        let code_started = Instant::now();
        // No response will refill the pool afterwards: a start for no
        // request (reserved, a deploy's check) refills it at once.
        let for_request = first.is_some();
        // The code was unpacked at deploy; this is a check, or a rebuild from
        // the blob if the cache was removed.
        let code_dir = if version.code_dir.is_dir() {
            version.code_dir.clone()
        } else {
            let store = self.inner.store.clone();
            let sha = version.record.code_sha256.clone();
            tokio::task::spawn_blocking(move || store.ensure_unpacked(&sha))
                .await
                .map_err(|e| {
                    SchedulerError::Internal(format!("unpacking the code failed: {e}"))
                })??
        };
        phases.code = Some(code_started.elapsed());
        let load = FunctionLoad {
            handler: spec.handler.clone(),
            function_name: spec.name.clone(),
            function_version: version.record.version,
            memory_mb: spec.memory_mb,
            timeout_ms: spec.timeout_ms,
            concurrency: spec.concurrency,
            env: spec.env.clone(),
            handler_type: spec.handler_type,
            initializer: spec.initializer.clone(),
            initialization_timeout_ms: spec.initialization_timeout_ms,
            // Init code gets the function's timeout, as on Lambda, but at
            // least 10 s; an initializer its own timeout on top (the
            // runtime enforces that one and reports it: this limit is
            // for a runtime that cannot).
            init_limit: spec.timeout().max(Duration::from_secs(10))
                + spec
                    .initializer
                    .as_ref()
                    .map_or(Duration::ZERO, |_| spec.initialization_timeout()),
        };
        let announce = |instance: &str| {
            if let Some(f) = &first {
                self.log_start(&spec.name, version, instance, f.request_id);
            }
        };
        let first = first.map(|f| FirstInvoke {
            on_sent: Some(&announce),
            ..f
        });

        // A pooled instance lives in a private network; functions on the
        // host's network start from scratch.
        let network = self.network_of(spec)?;
        let pooled = match &network {
            lampyr_runtime::Network::Host => None,
            _ if !default_interpreter => None,
            _ => self.inner.pools.take(spec.runtime),
        };
        if let Some(inst) = pooled {
            let policy = match &network {
                lampyr_runtime::Network::Egress { policy, .. } => Some(policy.clone()),
                _ => None,
            };
            let loaded = inst
                .specialise_and_load(&code_dir, policy, &load, first)
                .await;
            if loaded.is_err() || !for_request {
                self.inner.pools.replenish(spec.runtime);
            }
            match loaded {
                Ok(loaded) => {
                    note_phases(phases, &loaded);
                    return Ok((loaded, StartKind::Pooled));
                }
                // E.g. the runtime already uses more than the function's
                // memory limit: start from scratch.
                Err(SpecialiseError::Unsuitable(e)) => {
                    tracing::debug!(function = %function, "pooled instance unusable: {e}");
                }
                Err(SpecialiseError::Load(e)) => return Err(load_error(function, e)),
            }
        }
        let cfg = InstanceConfig {
            id: format!(
                "{}-{}",
                spec.name,
                self.inner.instance_seq.fetch_add(1, Ordering::Relaxed)
            ),
            runtime,
            sandboxer: self.inner.config.sandboxer.clone(),
            runtime_dir: self.inner.config.bootstrap_dir.join(spec.runtime.as_str()),
            code_dir: Some(code_dir),
            memory_mb: spec.memory_mb,
            network,
            logs: self.inner.logs.sender(),
        };
        let loaded = Instance::cold_start(cfg, &load, first)
            .await
            .map_err(|e| load_error(function, e))?;
        note_phases(phases, &loaded);
        Ok((loaded, StartKind::Cold))
    }

    /// The network an instance of `spec` gets.
    fn network_of(&self, spec: &FunctionSpec) -> Result<lampyr_runtime::Network, SchedulerError> {
        Ok(match spec.network {
            lampyr_api::Network::None => lampyr_runtime::Network::None,
            lampyr_api::Network::Host => lampyr_runtime::Network::Host,
            lampyr_api::Network::Egress => match &self.inner.config.egress {
                Ok(egress) => lampyr_runtime::Network::Egress {
                    egress: egress.clone(),
                    policy: lampyr_egress::Policy::egress(&spec.allow),
                },
                Err(why) => {
                    return Err(SchedulerError::NetworkUnavailable {
                        function: spec.name.clone(),
                        why: why.clone(),
                    })
                }
            },
        })
    }
}

fn note_phases(phases: &mut Phases, loaded: &Loaded) {
    phases.sandbox = Some(loaded.phases.sandbox);
    phases.runtime = loaded.phases.runtime;
    phases.init = Some(loaded.phases.init);
}

/// A failed start: the handler's own error, or the instance's.
fn load_error(function: String, e: InstanceError) -> SchedulerError {
    match e {
        InstanceError::LoadFailed(error) => SchedulerError::InitFailed {
            function,
            error,
            retry_in: None,
        },
        source => SchedulerError::StartFailed { function, source },
    }
}
