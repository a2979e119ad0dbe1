//! Gradual deployment: a canary on an alias, decided in the background.
//!
//! `deploy --alias A --canary 10%/5m` records the new version and points
//! `A` at the old version and the new one, the new one on 10% of the
//! traffic, with a decision time (`Store::start_canary`: stored with the
//! alias, so a restart resumes it). A task of the service looks at the
//! canaries a few times a second; when one is due it compares the two
//! versions' error rates over the window since it started (their
//! invocation records) and either promotes the new version to all of the
//! alias's traffic or, when the new version's error rate is higher than
//! the old one's by more than the threshold, points the alias back at the
//! old version. Either way the alias's note says what happened and why,
//! and the server logs it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use lampyr_store::{AliasRecord, Canary, RecordQuery};

use crate::deploy::blocking;
use crate::{Scheduler, SchedulerError};

/// How often due canaries are looked for.
const EVERY: Duration = Duration::from_millis(200);

/// Canaries in progress, by function and alias.
#[derive(Default)]
pub(crate) struct Canaries(parking_lot::Mutex<HashMap<(String, String), Canary>>);

impl Canaries {
    /// Follows `rec`: its canary, or none.
    pub(crate) fn follow(&self, rec: &AliasRecord) {
        let key = (rec.function.clone(), rec.alias.clone());
        let mut m = self.0.lock();
        match &rec.canary {
            Some(c) => {
                m.insert(key, c.clone());
            }
            None => {
                m.remove(&key);
            }
        }
    }

    pub(crate) fn forget(&self, function: &str, alias: Option<&str>) {
        self.0
            .lock()
            .retain(|(f, a), _| !(f == function && alias.is_none_or(|x| x == a)));
    }

    /// The canaries whose decision time has come.
    fn due(&self, now: SystemTime) -> Vec<(String, String, Canary)> {
        self.0
            .lock()
            .iter()
            .filter(|(_, c)| c.decide_at() <= now)
            .map(|((f, a), c)| (f.clone(), a.clone(), c.clone()))
            .collect()
    }
}

/// Starts the task that decides canaries, until the service is gone.
pub(crate) fn start(sched: &Scheduler) {
    let weak = Arc::downgrade(&sched.inner);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(inner) = weak.upgrade() else { break };
            let sched = Scheduler { inner };
            for (function, alias, canary) in sched.inner.canaries.due(SystemTime::now()) {
                if let Err(e) = sched.decide(&function, &alias, &canary).await {
                    tracing::warn!(function, alias, "deciding a canary failed: {e}");
                    // Tried again on the next tick.
                }
            }
        }
    });
}

/// Error counts of one version over a canary's window.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Rate {
    calls: u64,
    errors: u64,
}

impl Rate {
    fn rate(&self) -> f64 {
        if self.calls == 0 {
            0.0
        } else {
            self.errors as f64 / self.calls as f64
        }
    }
}

impl std::fmt::Display for Rate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:.1}% errors ({} of {} calls)",
            self.rate() * 100.0,
            self.errors,
            self.calls
        )
    }
}

/// Promote (true) or roll back, and why.
fn verdict(c: &Canary, old: Rate, new: Rate) -> (bool, String) {
    if new.rate() > old.rate() + c.threshold {
        (
            false,
            format!(
                "canary rolled back to version {}: version {} had {new}, more than {:.1} points above version {}'s {old}",
                c.from,
                c.to,
                c.threshold * 100.0,
                c.from
            ),
        )
    } else {
        (
            true,
            format!(
                "canary promoted version {} to all traffic: {new}, version {} {old} (threshold {:.1} points)",
                c.to,
                c.from,
                c.threshold * 100.0
            ),
        )
    }
}

impl Scheduler {
    /// Points `alias` at the old version and `to`, the latter on `weight`
    /// of the traffic, for `interval` (see the module doc).
    pub async fn start_canary(
        &self,
        function: &str,
        alias: &str,
        to: u64,
        weight: f64,
        interval: Duration,
    ) -> Result<AliasRecord, SchedulerError> {
        let threshold = self.inner.config.canary_threshold;
        let store = self.inner.store.clone();
        let (f, a) = (function.to_string(), alias.to_string());
        let rec =
            blocking(move || store.start_canary(&f, &a, to, weight, interval, threshold)).await??;
        tracing::info!(function, alias, target = %rec.target, ?interval, "canary started");
        self.routed(&rec);
        Ok(rec)
    }

    /// Decides a due canary.
    async fn decide(&self, function: &str, alias: &str, c: &Canary) -> Result<(), SchedulerError> {
        let records = self.inner.records.clone();
        let f = function.to_string();
        let since = c.started_at();
        let all = blocking(move || {
            records.list(
                &f,
                &RecordQuery {
                    limit: 1_000_000,
                    since: Some(since),
                    status: None,
                    ran: false,
                },
            )
        })
        .await??;
        let (mut old, mut new) = (Rate::default(), Rate::default());
        for r in &all {
            let rate = match r.version {
                v if v == c.from => &mut old,
                v if v == c.to => &mut new,
                _ => continue,
            };
            rate.calls += 1;
            if r.status != lampyr_api::Status::Ok {
                rate.errors += 1;
            }
        }
        let (promote, note) = verdict(c, old, new);
        let store = self.inner.store.clone();
        let (f, a, n) = (function.to_string(), alias.to_string(), note.clone());
        let rec = blocking(move || store.finish_canary(&f, &a, promote, n)).await?;
        match rec {
            Ok(Some(rec)) => {
                if promote {
                    tracing::info!(function, alias, "{note}");
                } else {
                    tracing::warn!(function, alias, "{note}");
                }
                self.routed(&rec);
            }
            // Set or rolled back by hand since: nothing to decide.
            Ok(None) => self.inner.canaries.forget(function, Some(alias)),
            Err(
                lampyr_store::StoreError::NotFound(_)
                | lampyr_store::StoreError::AliasNotFound { .. },
            ) => {
                self.inner.canaries.forget(function, Some(alias));
            }
            Err(e) => return Err(e.into()),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canary() -> Canary {
        Canary {
            from: 1,
            to: 2,
            weight: 0.1,
            started_at_ms: 0,
            decide_at_ms: 0,
            threshold: 0.05,
        }
    }

    #[test]
    fn a_canary_rolls_back_only_past_the_threshold() {
        let r = |calls, errors| Rate { calls, errors };
        assert!(verdict(&canary(), r(100, 1), r(10, 0)).0);
        assert!(verdict(&canary(), r(100, 10), r(100, 14)).0);
        let (promote, why) = verdict(&canary(), r(100, 0), r(10, 2));
        assert!(!promote);
        assert!(why.contains("20.0% errors (2 of 10 calls)"), "{why}");
        // No call reached the new version: nothing against it.
        assert!(verdict(&canary(), r(5, 0), r(0, 0)).0);
    }
}
