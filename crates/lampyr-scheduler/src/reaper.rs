//! The lifecycle of instances once started: a watcher per instance that
//! removes it when it exits, reserved instances kept up, and the reaper
//! that stops idle instances and samples instance counts.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use lampyr_runtime::Instance;

use crate::state::FunctionState;
use crate::{Phases, Scheduler};

/// Starts the reaper: every `reap_interval` until the service is gone.
pub(crate) fn start(sched: &Scheduler) {
    let weak = Arc::downgrade(&sched.inner);
    let every = sched.inner.config.reap_interval;
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(inner) = weak.upgrade() else { break };
            Scheduler { inner }.reap();
        }
    });
}

impl Scheduler {
    /// Removes an instance from its function when it exits, whatever the cause.
    pub(crate) fn watch_instance(&self, state: &Arc<FunctionState>, inst: &Arc<Instance>) {
        let weak_state = Arc::downgrade(state);
        let weak_inst = Arc::downgrade(inst);
        let exit = inst.clone();
        let id = inst.id().to_string();
        let sched = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            let reason = exit.wait_exit().await.reason;
            drop(exit);
            let Some(state) = weak_state.upgrade() else {
                return;
            };
            state.gone(&id);
            if let Some(inst) = weak_inst.upgrade() {
                tracing::debug!(function = %state.name, instance = inst.id(), %reason, "instance exited");
                state.forget(&inst);
            }
            if let Some(inner) = sched.upgrade() {
                Scheduler { inner }.ensure_reserved(&state);
            }
        });
    }

    /// Starts reserved instances until `min_instances` are alive.
    pub(crate) fn ensure_reserved(&self, state: &Arc<FunctionState>) {
        let missing = state.reserve_missing();
        for version in missing {
            let sched = self.clone();
            let state = state.clone();
            tokio::spawn(async move {
                let mut phases = Phases::default();
                if let Err(e) = sched.cold_start(&state, version, &mut phases, None).await {
                    tracing::warn!(function = %state.name, "reserved instance failed to start: {e}");
                }
            });
        }
    }

    /// One pass of the reaper: stop idle instances, top up reserved ones.
    fn reap(&self) {
        let states: Vec<Arc<FunctionState>> =
            self.inner.functions.read().values().cloned().collect();
        self.sample(&states);
        let pinned: Vec<Arc<FunctionState>> = self.inner.pinned.read().values().cloned().collect();
        for state in states.into_iter().chain(pinned) {
            for inst in state.reap_idle(Instant::now()) {
                inst.kill("idle timeout");
            }
            if state.needs_reserve() {
                self.ensure_reserved(&state);
            }
        }
    }

    /// Records how many instances each function has, every few seconds,
    /// keeping an hour of samples.
    fn sample(&self, states: &[Arc<FunctionState>]) {
        const EVERY: Duration = Duration::from_secs(5);
        const KEEP: Duration = Duration::from_secs(3600);
        let now = SystemTime::now();
        let mut samples = self.inner.samples.lock();
        for st in states {
            let ring = samples.entry(st.name.clone()).or_default();
            if ring
                .back()
                .is_some_and(|(t, _)| now.duration_since(*t).unwrap_or_default() < EVERY)
            {
                continue;
            }
            let c = self.instance_counts(&st.name);
            ring.push_back((now, c.total() as u64));
            while ring
                .front()
                .is_some_and(|(t, _)| now.duration_since(*t).unwrap_or_default() > KEEP)
            {
                ring.pop_front();
            }
        }
        samples.retain(|name, _| states.iter().any(|s| &s.name == name));
    }

    /// A function's instance counts over time.
    pub fn instance_samples(&self, name: &str) -> Vec<(SystemTime, u64)> {
        self.inner
            .samples
            .lock()
            .get(name)
            .map(|r| r.iter().copied().collect())
            .unwrap_or_default()
    }
}
