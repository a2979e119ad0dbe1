//! Which version runs a call, and a function's versions as the service
//! keeps them.
//!
//! A call names `NAME`, `NAME@$LATEST`, `NAME@N` or `NAME@ALIAS`. The
//! newest version runs on the function's own state (the one a deploy
//! switches); every other version a call reaches gets a state of its own,
//! made on first use from the version's stored code, so instances always
//! belong to one version. An alias is resolved per call: with two versions,
//! the caller's routing key (or a random number) picks one.
//!
//! Old versions are pruned after each deploy (the newest `keep_versions`
//! that no alias uses stay); a version deleted or pruned loses its state,
//! whose instances drain and stop.

use std::sync::Arc;

use lampyr_api::versions::{self, Qualifier};
use lampyr_api::TriggerKind;
use lampyr_store::VersionRecord;

use crate::state::FunctionState;
use crate::{Scheduler, SchedulerError, TriggerAccess, Version};

/// Where a call goes: the state of the version that runs it, and the alias
/// it was reached through.
pub(crate) struct Target {
    pub(crate) state: Arc<FunctionState>,
    pub(crate) alias: Option<Arc<str>>,
}

impl Scheduler {
    /// Resolves `target` (`NAME[@QUALIFIER]`) for a call through `trigger`.
    /// Without a qualifier the HTTP trigger goes to the alias its manifest
    /// names, every other way in to the newest version.
    pub(crate) fn target(
        &self,
        target: &str,
        trigger: TriggerKind,
        routing_key: Option<&str>,
    ) -> Result<Target, SchedulerError> {
        let (name, q) =
            versions::split_target(target).map_err(|message| SchedulerError::BadQualifier {
                target: target.to_string(),
                message,
            })?;
        let main = self
            .inner
            .functions
            .read()
            .get(name)
            .cloned()
            .ok_or_else(|| SchedulerError::NotFound(name.to_string()))?;
        // Only the HTTP trigger needs the newest version's manifest here.
        let latest =
            (q == Qualifier::Default && trigger == TriggerKind::Http).then(|| main.current());
        let alias = match q {
            Qualifier::Latest => None,
            Qualifier::Default => latest.as_ref().and_then(|l| l.spec().http_alias()),
            Qualifier::Version(n) => {
                return Ok(Target {
                    state: self.version_state(&main, n)?,
                    alias: None,
                })
            }
            Qualifier::Alias(a) => Some(a),
        };
        let Some(alias) = alias else {
            return Ok(Target {
                state: main,
                alias: None,
            });
        };
        let route = self.route(name, alias)?;
        let roll = routing_key.map_or_else(rand::random::<f64>, versions::roll_of);
        let n = versions::pick(route.target.version, route.target.weight, roll);
        Ok(Target {
            state: self.version_state(&main, n)?,
            alias: Some(route.name.clone()),
        })
    }

    /// The state that runs version `n` of the function whose newest
    /// version runs on `main`: `main` itself, or one of its own.
    pub(crate) fn version_state(
        &self,
        main: &Arc<FunctionState>,
        n: u64,
    ) -> Result<Arc<FunctionState>, SchedulerError> {
        let latest = main.current();
        if latest.record.version == n {
            return Ok(main.clone());
        }
        let key = (main.name.clone(), n);
        if let Some(s) = self.inner.pinned.read().get(&key) {
            return Ok(s.clone());
        }
        let record = self.inner.store.version(&main.name, n)?;
        let version = self.runnable(&record, &latest.access)?;
        let state = self
            .inner
            .pinned
            .write()
            .entry(key)
            .or_insert_with(|| Arc::new(FunctionState::pinned(&main.name, version)))
            .clone();
        Ok(state)
    }

    /// A stored version made runnable: its code unpacked (rebuilt from its
    /// blob if it is missing), its access as its manifest says.
    pub(crate) fn runnable(
        &self,
        record: &VersionRecord,
        function_access: &TriggerAccess,
    ) -> Result<Arc<Version>, SchedulerError> {
        let code_dir = self.inner.store.ensure_unpacked(&record.code_sha256)?;
        let access = match record.spec.auth {
            lampyr_api::Auth::Public => TriggerAccess::Public,
            lampyr_api::Auth::Token => match function_access {
                TriggerAccess::Token(t) => TriggerAccess::Token(t.clone()),
                TriggerAccess::Public => {
                    TriggerAccess::Token(self.inner.store.get(&record.name)?.trigger_token.into())
                }
            },
        };
        Ok(Arc::new(Version {
            record: record.clone(),
            code_dir,
            access,
        }))
    }

    /// Gives the idle instances of `version` (the newest version until a
    /// deploy replaced it on `main`) to the version's own state.
    pub(crate) fn keep_instances(
        &self,
        main: &Arc<FunctionState>,
        version: Arc<Version>,
        idle: Vec<Arc<lampyr_runtime::Instance>>,
    ) {
        let state = self
            .inner
            .pinned
            .write()
            .entry((main.name.clone(), version.record.version))
            .or_insert_with(|| Arc::new(FunctionState::pinned(&main.name, version.clone())))
            .clone();
        for inst in idle {
            self.watch_instance(&state, &inst);
            state.adopt(inst, version.clone());
        }
    }

    /// A function's live instances per version, oldest version first.
    pub fn version_counts(&self, name: &str) -> Vec<(u64, lampyr_api::InstanceCounts)> {
        let mut out: Vec<(u64, lampyr_api::InstanceCounts)> = self
            .version_states(name)
            .iter()
            .map(|s| (s.current().record.version, s.counts()))
            .collect();
        if let Some(main) = self.inner.functions.read().get(name) {
            out.push((main.current().record.version, main.counts()));
        }
        out.sort_by_key(|(v, _)| *v);
        out
    }

    /// Every state of a function's other versions.
    pub(crate) fn version_states(&self, name: &str) -> Vec<Arc<FunctionState>> {
        self.inner
            .pinned
            .read()
            .iter()
            .filter(|((f, _), _)| f == name)
            .map(|(_, s)| s.clone())
            .collect()
    }

    /// Forgets the states of versions `gone` of `name` (deleted or
    /// pruned): their instances drain and stop.
    pub(crate) fn drop_versions(&self, name: &str, gone: &[u64]) {
        let states: Vec<Arc<FunctionState>> = {
            let mut pinned = self.inner.pinned.write();
            gone.iter()
                .filter_map(|v| pinned.remove(&(name.to_string(), *v)))
                .collect()
        };
        for state in states {
            for inst in state.delete() {
                inst.kill("version deleted");
            }
        }
    }

    /// Deletes version `version` of `name` (refused for the newest and
    /// for one an alias routes to) and the code no version uses any more.
    pub async fn delete_version(&self, name: &str, version: u64) -> Result<(), SchedulerError> {
        let store = self.inner.store.clone();
        let n = name.to_string();
        let removed = crate::deploy::blocking(move || store.delete_version(&n, version)).await??;
        self.drop_versions(name, &[version]);
        for dir in removed {
            self.inner.config.sandboxer.forget_code(&dir);
        }
        Ok(())
    }

    /// Applies the retention of versions to `name`.
    pub(crate) async fn prune_versions(&self, name: &str) -> Result<(), SchedulerError> {
        let keep = self.inner.config.keep_versions;
        let store = self.inner.store.clone();
        let n = name.to_string();
        let (gone, removed) =
            crate::deploy::blocking(move || store.prune_versions(&n, keep)).await??;
        self.drop_versions(name, &gone);
        for dir in removed {
            self.inner.config.sandboxer.forget_code(&dir);
        }
        Ok(())
    }
}
