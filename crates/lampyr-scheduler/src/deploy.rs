//! Deploying and deleting functions: what the function service does between
//! "here is a package" and "the new version takes traffic".
//!
//! A deploy is staged by the store (validated, unpacked, prepared, nothing
//! recorded), then **checked**: an instance of the new version is started
//! with the function's limits and its handler loaded (its initializer run,
//! if it has one), within its init timeout (the function's `timeout`, at
//! least 10 s, plus the initializer's own). Only if that works is
//! the version recorded and made current, and the instance that passed the
//! check serves it at once. If the handler does not load, the deploy fails
//! with the runtime's error and the previous version keeps serving;
//! nothing of the refused version is kept. A package identical to the
//! current version changes nothing, its instances included. Deploys of one
//! function run one at a time.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use lampyr_store::{FunctionRecord, Staged, VersionRecord};

use crate::{Phases, Scheduler, SchedulerError, TriggerAccess, Version};

/// How to deploy.
#[derive(Debug, Clone)]
pub struct DeployOptions {
    /// Check that the new version loads before it takes traffic.
    pub verify: bool,
    /// Recorded with the new version.
    pub description: Option<String>,
    /// Point this alias at the new version once it is recorded.
    pub alias: Option<String>,
    /// With `alias`: move it gradually, the new version on this share of
    /// its traffic for this long first (`canary.rs`).
    pub canary: Option<(f64, Duration)>,
}

impl Default for DeployOptions {
    fn default() -> Self {
        DeployOptions {
            verify: true,
            description: None,
            alias: None,
            canary: None,
        }
    }
}

/// What a deploy did.
#[derive(Debug, Clone)]
pub struct DeployOutcome {
    pub record: FunctionRecord,
    /// False when the package was the current version's: nothing changed.
    pub changed: bool,
    /// Validating, storing, unpacking and preparing the code.
    pub build_time: Duration,
    /// Starting an instance and loading the handler, when it was checked.
    pub check_time: Option<Duration>,
    /// The alias the deploy moved, as it is now.
    pub alias: Option<lampyr_store::AliasRecord>,
}

impl Scheduler {
    /// Deploys `package` as the next version of `name` (see the module doc).
    pub async fn deploy(
        &self,
        name: &str,
        package: bytes::Bytes,
        opts: DeployOptions,
    ) -> Result<DeployOutcome, SchedulerError> {
        let lock = self
            .inner
            .deploying
            .lock()
            .entry(name.to_string())
            .or_default()
            .clone();
        let _one_at_a_time = lock.lock().await;
        if let Some(alias) = &opts.alias {
            lampyr_api::versions::validate_alias(alias).map_err(|message| {
                lampyr_store::StoreError::InvalidAlias {
                    function: name.to_string(),
                    alias: alias.clone(),
                    message,
                }
            })?;
        }
        if opts.canary.is_some() && opts.alias.is_none() {
            return Err(SchedulerError::AliasRequired {
                function: name.to_string(),
                message: "a canary moves an alias: name it (`--alias ALIAS --canary 10%/5m`)"
                    .into(),
            });
        }
        let store = self.inner.store.clone();
        let n = name.to_string();
        let mut staged: Staged = blocking(move || store.stage(&n, &package)).await??;
        staged.description = opts.description.clone();
        if let Some(record) = staged.unchanged.clone() {
            // Nothing new to try gradually; the alias (if any) points at it.
            let alias = match &opts.alias {
                Some(a) if !self.routed_exactly(name, a, record.current.version) => Some(
                    self.set_alias(
                        name,
                        a,
                        lampyr_api::versions::AliasTarget {
                            version: record.current.version,
                            weight: None,
                        },
                        None,
                    )
                    .await?,
                ),
                _ => None,
            };
            return Ok(DeployOutcome {
                record,
                changed: false,
                build_time: staged.build_time,
                check_time: None,
                alias,
            });
        }
        if let Err(e) = self.check_trigger_aliases(&staged, opts.alias.as_deref()) {
            self.discard(staged).await;
            return Err(e);
        }
        let store = self.inner.store.clone();
        let n = name.to_string();
        let version = blocking(move || store.next_version(&n)).await??;
        let mut checked = None;
        let mut check_time = None;
        if opts.verify {
            let started = Instant::now();
            match self.load_check(&staged, version).await {
                Ok(inst) => {
                    checked = Some(inst);
                    check_time = Some(started.elapsed());
                }
                Err(e) => {
                    self.discard(staged).await;
                    return Err(e);
                }
            }
        }
        let store = self.inner.store.clone();
        let s = staged.clone();
        let record = blocking(move || store.commit(&s, version)).await??;
        self.activate_with(&record, checked)?;
        let alias = match (&opts.alias, opts.canary) {
            // A canary needs a version to compare with: a new alias simply
            // points at the new version.
            (Some(a), Some((weight, interval))) if self.route(name, a).is_ok() => Some(
                self.start_canary(name, a, version, weight, interval)
                    .await?,
            ),
            (Some(a), _) => Some(
                self.set_alias(
                    name,
                    a,
                    lampyr_api::versions::AliasTarget {
                        version,
                        weight: None,
                    },
                    None,
                )
                .await?,
            ),
            (None, _) => None,
        };
        if let Err(e) = self.prune_versions(name).await {
            tracing::warn!(function = name, "pruning old versions failed: {e}");
        }
        Ok(DeployOutcome {
            record,
            changed: true,
            build_time: staged.build_time,
            check_time,
            alias,
        })
    }

    /// The aliases a new version's triggers name must exist, or be the
    /// one the deploy points at it.
    fn check_trigger_aliases(
        &self,
        staged: &Staged,
        deploying: Option<&str>,
    ) -> Result<(), SchedulerError> {
        for (key, alias) in staged.spec.trigger_aliases() {
            if deploying == Some(alias) || self.route(&staged.name, alias).is_ok() {
                continue;
            }
            return Err(lampyr_store::StoreError::InvalidAlias {
                function: staged.name.clone(),
                alias: alias.to_string(),
                message: format!(
                    "{key} names it, but it does not exist: create it with this deploy (`lampyr deploy --alias {alias}`) or with `lampyr alias set {} {alias} VERSION`",
                    staged.name
                ),
            }
            .into());
        }
        Ok(())
    }

    /// Drops a refused package: its code (unless a recorded version uses
    /// it) and that code's sandbox view, which would otherwise show the
    /// same package deployed again an empty directory.
    async fn discard(&self, staged: Staged) {
        let store = self.inner.store.clone();
        if let Ok(Ok(Some(dir))) = blocking(move || store.discard(staged)).await {
            self.inner.config.sandboxer.forget_code(&dir);
        }
    }

    /// Starts an instance of the staged version `version` and loads its
    /// handler; returns it, loaded and idle.
    async fn load_check(
        &self,
        staged: &Staged,
        version: u64,
    ) -> Result<Arc<lampyr_runtime::Instance>, SchedulerError> {
        let v = Arc::new(Version {
            record: VersionRecord {
                name: staged.name.clone(),
                version,
                spec: staged.spec.clone(),
                code_sha256: staged.code_sha256.clone(),
                code_size: staged.code_size,
                created_at: SystemTime::now(),
                description: staged.description.clone(),
            },
            code_dir: staged.code_dir.clone(),
            access: TriggerAccess::Public,
        });
        let mut phases = Phases::default();
        match self.start_instance(&v, &mut phases, None).await {
            Ok((loaded, _)) => Ok(loaded.instance),
            Err(SchedulerError::InitFailed {
                function, error, ..
            }) => Err(SchedulerError::LoadCheckFailed {
                function,
                version,
                error,
            }),
            Err(e) => Err(e),
        }
    }

    /// Deletes a function: its instances drain and stop, waiting requests
    /// fail, and its versions, code, records and logs go.
    pub async fn delete(&self, name: &str) -> Result<(), SchedulerError> {
        self.inner.store.get(name)?;
        self.remove(name);
        let store = self.inner.store.clone();
        let records = self.inner.records.clone();
        let n = name.to_string();
        let removed = blocking(move || -> Result<Vec<std::path::PathBuf>, SchedulerError> {
            let removed = store.delete(&n)?;
            records.delete_function(&n)?;
            Ok(removed)
        })
        .await??;
        for dir in removed {
            self.inner.config.sandboxer.forget_code(&dir);
        }
        Ok(())
    }
}

/// Runs blocking store work off the async workers.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, SchedulerError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| SchedulerError::Internal(format!("a store task failed: {e}")))
}
