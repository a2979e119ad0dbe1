//! Deploying and deleting functions: what the function service does between
//! "here is a package" and "the new version takes traffic".
//!
//! A deploy is staged by the store (validated, unpacked, prepared, nothing
//! recorded), then **checked**: an instance of the new version is started
//! with the function's limits and its handler loaded, within its init
//! timeout (the function's `timeout`, at least 10 s). Only if that works is
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
#[derive(Debug, Clone, Copy)]
pub struct DeployOptions {
    /// Check that the new version loads before it takes traffic.
    pub verify: bool,
}

impl Default for DeployOptions {
    fn default() -> Self {
        DeployOptions { verify: true }
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
        let store = self.inner.store.clone();
        let n = name.to_string();
        let staged: Staged = blocking(move || store.stage(&n, &package)).await??;
        if let Some(record) = staged.unchanged.clone() {
            return Ok(DeployOutcome {
                record,
                changed: false,
                build_time: staged.build_time,
                check_time: None,
            });
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
                    let store = self.inner.store.clone();
                    let _ = blocking(move || store.discard(staged)).await;
                    return Err(e);
                }
            }
        }
        let store = self.inner.store.clone();
        let s = staged.clone();
        let record = blocking(move || store.commit(&s, version)).await??;
        self.activate_with(&record, checked)?;
        Ok(DeployOutcome {
            record,
            changed: true,
            build_time: staged.build_time,
            check_time,
        })
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
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, SchedulerError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| SchedulerError::Internal(format!("a store task failed: {e}")))
}
