//! Aliases as the service routes them: a copy of every alias in memory,
//! read per call, written through to the store (which keeps them, their
//! history and canaries across restarts) on every change.
//!
//! Moving an alias takes effect for the next call: calls already running
//! finish on the version they started on (their lease holds its state).

use std::collections::HashMap;
use std::sync::Arc;

use lampyr_api::versions::AliasTarget;
use lampyr_store::{AliasRecord, StoreError};
use parking_lot::RwLock;

use crate::deploy::blocking;
use crate::{Scheduler, SchedulerError};

/// One alias as calls see it.
#[derive(Debug)]
pub(crate) struct Route {
    pub(crate) name: Arc<str>,
    pub(crate) target: AliasTarget,
    pub(crate) min_instances: u32,
}

/// Every function's aliases, by function and alias name.
#[derive(Default)]
pub(crate) struct Routes(RwLock<HashMap<String, HashMap<String, Arc<Route>>>>);

impl Routes {
    /// Remembers `rec` as it is now.
    pub(crate) fn put(&self, rec: &AliasRecord) {
        self.0
            .write()
            .entry(rec.function.clone())
            .or_default()
            .insert(
                rec.alias.clone(),
                Arc::new(Route {
                    name: rec.alias.as_str().into(),
                    target: rec.target,
                    min_instances: rec.min_instances,
                }),
            );
    }

    fn remove(&self, function: &str, alias: &str) {
        if let Some(m) = self.0.write().get_mut(function) {
            m.remove(alias);
        }
    }

    /// Forgets every alias of `function`.
    pub(crate) fn forget(&self, function: &str) {
        self.0.write().remove(function);
    }

    fn get(&self, function: &str, alias: &str) -> Option<Arc<Route>> {
        self.0.read().get(function)?.get(alias).cloned()
    }

    /// The aliases of `function`.
    pub(crate) fn of(&self, function: &str) -> Vec<Arc<Route>> {
        self.0
            .read()
            .get(function)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }
}

impl Scheduler {
    /// Alias `alias` of `function`, as calls are routed now.
    pub(crate) fn route(&self, function: &str, alias: &str) -> Result<Arc<Route>, SchedulerError> {
        self.inner.routes.get(function, alias).ok_or_else(|| {
            StoreError::AliasNotFound {
                function: function.to_string(),
                alias: alias.to_string(),
            }
            .into()
        })
    }

    /// Whether an alias of `function` routes to `version`.
    pub(crate) fn routed_to(&self, function: &str, version: u64) -> bool {
        self.inner.routes.of(function).iter().any(|r| {
            r.target.version == version || r.target.weight.is_some_and(|(v, _)| v == version)
        })
    }

    /// Whether `alias` of `function` points at `version` alone.
    pub(crate) fn routed_exactly(&self, function: &str, alias: &str, version: u64) -> bool {
        self.inner.routes.get(function, alias).is_some_and(|r| {
            r.target
                == AliasTarget {
                    version,
                    weight: None,
                }
        })
    }

    /// Loads every stored alias (at start).
    pub(crate) fn load_routes(&self) -> Result<(), SchedulerError> {
        for rec in self.inner.store.all_aliases()? {
            self.inner.routes.put(&rec);
            self.inner.canaries.follow(&rec);
        }
        Ok(())
    }

    /// Routes calls as `rec` says from now on.
    pub(crate) fn routed(&self, rec: &AliasRecord) {
        self.inner.routes.put(rec);
        self.inner.canaries.follow(rec);
        self.aliases_changed(&rec.function);
    }

    /// Points `alias` of `function` at `target` (and sets its reserved
    /// instances, when given).
    pub async fn set_alias(
        &self,
        function: &str,
        alias: &str,
        target: AliasTarget,
        min_instances: Option<u32>,
    ) -> Result<AliasRecord, SchedulerError> {
        let store = self.inner.store.clone();
        let (f, a) = (function.to_string(), alias.to_string());
        let rec = blocking(move || store.set_alias(&f, &a, target, min_instances)).await??;
        tracing::info!(function, alias, target = %rec.target, "alias set");
        self.routed(&rec);
        Ok(rec)
    }

    /// Points an alias back at what it pointed at before, at once. Without
    /// `alias`: the one the HTTP trigger serves, or the function's only one.
    pub async fn rollback(
        &self,
        function: &str,
        alias: Option<&str>,
    ) -> Result<AliasRecord, SchedulerError> {
        let alias = match alias {
            Some(a) => a.to_string(),
            None => self.default_alias(function)?,
        };
        let store = self.inner.store.clone();
        let (f, a) = (function.to_string(), alias.clone());
        let rec = blocking(move || store.rollback_alias(&f, &a)).await??;
        tracing::info!(function, alias, target = %rec.target, "alias rolled back");
        self.routed(&rec);
        Ok(rec)
    }

    /// The alias a command means when it names none.
    fn default_alias(&self, function: &str) -> Result<String, SchedulerError> {
        let current = self
            .current(function)
            .ok_or_else(|| SchedulerError::NotFound(function.to_string()))?;
        if let Some(a) = current.spec.http_alias() {
            return Ok(a.to_string());
        }
        let mut all = self.inner.routes.of(function);
        match all.len() {
            1 => Ok(all.remove(0).name.to_string()),
            n => Err(SchedulerError::AliasRequired {
                function: function.to_string(),
                message: format!(
                    "the function has {n} aliases and its HTTP trigger names none: say which alias (`lampyr alias ls {function}` lists them)"
                ),
            }),
        }
    }

    /// Deletes an alias. Refused while a trigger of the newest version
    /// calls it.
    pub async fn delete_alias(&self, function: &str, alias: &str) -> Result<(), SchedulerError> {
        if let Some(current) = self.current(function) {
            if let Some((key, _)) = current
                .spec
                .trigger_aliases()
                .into_iter()
                .find(|(_, a)| *a == alias)
            {
                return Err(StoreError::InvalidAlias {
                    function: function.to_string(),
                    alias: alias.to_string(),
                    message: format!(
                        "{key} of version {} calls it; deploy a manifest whose triggers name another alias first",
                        current.version
                    ),
                }
                .into());
            }
        }
        let store = self.inner.store.clone();
        let (f, a) = (function.to_string(), alias.to_string());
        blocking(move || store.delete_alias(&f, &a)).await??;
        tracing::info!(function, alias, "alias deleted");
        self.inner.routes.remove(function, alias);
        self.inner.canaries.forget(function, Some(alias));
        self.aliases_changed(function);
        Ok(())
    }

    /// The aliases of a function, as stored.
    pub async fn aliases(&self, function: &str) -> Result<Vec<AliasRecord>, SchedulerError> {
        let store = self.inner.store.clone();
        let f = function.to_string();
        Ok(blocking(move || {
            store.get(&f)?;
            store.aliases(&f)
        })
        .await??)
    }

    /// A function's aliases changed (or its newest version did): each
    /// version gets the reserved instances its aliases ask for, started
    /// now; a version no alias reserves for any more lets them go.
    pub(crate) fn aliases_changed(&self, function: &str) {
        let Some(main) = self.inner.functions.read().get(function).cloned() else {
            return;
        };
        let want = reserves(&self.inner.routes.of(function));
        let latest = main.current().record.version;
        self.reserve_for(&main, want.get(&latest).copied().unwrap_or(0));
        for state in self.version_states(function) {
            let v = state.current().record.version;
            self.reserve_for(&state, want.get(&v).copied().unwrap_or(0));
        }
        for (&v, _) in want.iter().filter(|(v, n)| **v != latest && **n > 0) {
            // Made with its reserve, by the loop above next time; now:
            match self.version_state(&main, v) {
                Ok(state) => self.reserve_for(&state, want[&v]),
                Err(e) => {
                    tracing::warn!(
                        function,
                        version = v,
                        "reserved instances cannot start: {e}"
                    )
                }
            }
        }
    }

    fn reserve_for(&self, state: &Arc<crate::state::FunctionState>, n: u32) {
        let routed = self.routed_to(&state.name, state.current().record.version);
        for inst in state.set_alias_reserve(n, routed) {
            inst.kill("no alias routes to its version any more");
        }
        self.ensure_reserved(state);
    }
}

/// The reserved instances each version gets from `routes`: an alias's
/// `min_instances` for its one version, or shared by weight between two
/// (each at least one).
fn reserves(routes: &[Arc<Route>]) -> HashMap<u64, u32> {
    let mut want: HashMap<u64, u32> = HashMap::new();
    for r in routes.iter().filter(|r| r.min_instances > 0) {
        let n = r.min_instances;
        match r.target.weight {
            None => *want.entry(r.target.version).or_default() += n,
            Some((v, w)) => {
                let second = ((f64::from(n) * w).round() as u32).clamp(1, n.max(1));
                let first = n.saturating_sub(second).max(1);
                *want.entry(r.target.version).or_default() += first;
                *want.entry(v).or_default() += second;
            }
        }
    }
    want
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_instances_follow_aliases_shared_by_weight() {
        let route = |version, weight, min_instances| {
            Arc::new(Route {
                name: "a".into(),
                target: AliasTarget { version, weight },
                min_instances,
            })
        };
        let want = reserves(&[
            route(1, None, 2),
            route(1, Some((2, 0.25)), 4),
            route(3, None, 0),
        ]);
        assert_eq!(want.get(&1), Some(&5));
        assert_eq!(want.get(&2), Some(&1));
        assert_eq!(want.get(&3), None);
        let want = reserves(&[route(1, Some((2, 0.05)), 1)]);
        assert_eq!((want[&1], want[&2]), (1, 1));
    }
}
