//! Runtime pools: generic instances started ahead of demand, one pool per
//! language runtime.
//!
//! A pooled instance has its sandbox built, its cgroup created and its
//! runtime's bootstrap started and waiting (HELLO received), but no code. A
//! cold start takes one and specialises it (code at `/var/task`, the
//! function's memory limit, then LOAD), which skips the sandbox and runtime
//! phases. The pool refills in the background.
//!
//! Sizing: each pool starts at `min`. A take that finds the pool empty (a
//! miss: cold starts arrive faster than refills) raises the target by one, up
//! to `max`; after `shrink_after` without a miss the target falls by one, down
//! to `min`. The total stays within `memory_budget_mb`, counting each pooled
//! instance at its measured memory use (its cgroup's), or at
//! `instance_memory_mb` before there is a measurement.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use lampyr_api::{PoolStatus, Runtime};
use lampyr_runtime::Instance;
use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::handle::InstanceHandle;
use crate::Inner;

/// Size bounds of one runtime's pool. `max = 0` turns it off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolBounds {
    pub min: u32,
    pub max: u32,
}

/// Pool settings.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// All pools on or off.
    pub enabled: bool,
    /// Each runtime's bounds; a runtime not listed has its default
    /// (`lampyr_api::runtimes::Descriptor::pool`).
    pub runtimes: BTreeMap<Runtime, PoolBounds>,
    /// The most memory all pooled instances together may use.
    pub memory_budget_mb: u64,
    /// The memory limit of an instance while it waits in a pool.
    pub instance_memory_mb: u32,
    /// How long without a miss before a pool shrinks by one.
    pub shrink_after: Duration,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            enabled: true,
            runtimes: BTreeMap::new(),
            memory_budget_mb: 1024,
            instance_memory_mb: 256,
            shrink_after: Duration::from_secs(60),
        }
    }
}

impl PoolConfig {
    /// The bounds of `rt`'s pool.
    pub fn bounds(&self, rt: Runtime) -> PoolBounds {
        if !self.enabled {
            return PoolBounds { min: 0, max: 0 };
        }
        self.runtimes
            .get(&rt)
            .copied()
            .unwrap_or_else(|| PoolBounds::default_for(rt))
    }
}

impl PoolBounds {
    /// The bounds a runtime's pool has unless configured.
    pub fn default_for(rt: Runtime) -> PoolBounds {
        let (min, max) = rt.descriptor().pool;
        PoolBounds { min, max }
    }
}

/// One runtime's pool. Generic over the instance (see [`InstanceHandle`]).
pub(crate) struct Pool<I = Instance> {
    runtime: Runtime,
    bounds: PoolBounds,
    ready: Mutex<VecDeque<Arc<I>>>,
    starting: AtomicU32,
    target: AtomicU32,
    last_miss: Mutex<Instant>,
    wake: Notify,
}

/// Every runtime's pool.
pub(crate) struct Pools<I = Instance> {
    pools: Vec<Arc<Pool<I>>>,
    cfg: PoolConfig,
}

impl<I: InstanceHandle> Pools<I> {
    pub(crate) fn new(cfg: PoolConfig) -> Pools<I> {
        let pools = Runtime::ALL
            .iter()
            .map(|&rt| {
                let bounds = cfg.bounds(rt);
                Arc::new(Pool {
                    runtime: rt,
                    bounds,
                    ready: Mutex::new(VecDeque::new()),
                    starting: AtomicU32::new(0),
                    target: AtomicU32::new(bounds.min.min(bounds.max)),
                    last_miss: Mutex::new(Instant::now()),
                    wake: Notify::new(),
                })
            })
            .collect();
        Pools { pools, cfg }
    }

    fn pool(&self, rt: Runtime) -> &Arc<Pool<I>> {
        self.pools
            .iter()
            .find(|p| p.runtime == rt)
            .expect("a pool per runtime")
    }

    /// Takes a ready instance, if the pool has one.
    pub(crate) fn take(&self, rt: Runtime) -> Option<Arc<I>> {
        let pool = self.pool(rt);
        if pool.bounds.max == 0 {
            return None;
        }
        let taken = {
            let mut ready = pool.ready.lock();
            loop {
                match ready.pop_front() {
                    Some(i) if i.exited() => continue,
                    other => break other,
                }
            }
        };
        if taken.is_none() {
            // Cold starts outpace refills: grow.
            *pool.last_miss.lock() = Instant::now();
            let _ = pool
                .target
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| {
                    (t < pool.bounds.max).then_some(t + 1)
                });
        }
        if taken.is_none() {
            pool.wake.notify_one();
        }
        taken
    }

    /// Starts refilling a runtime's pool. Called once a taken instance has
    /// loaded its function, so the refill does not compete with that cold
    /// start for the CPU (the refill task also checks every second).
    pub(crate) fn replenish(&self, rt: Runtime) {
        self.pool(rt).wake.notify_one();
    }

    pub(crate) fn status(&self) -> Vec<PoolStatus> {
        self.pools
            .iter()
            .map(|p| PoolStatus {
                runtime: p.runtime.to_string(),
                enabled: p.bounds.max > 0,
                ready: p.ready.lock().len(),
                starting: p.starting.load(Ordering::Relaxed) as usize,
                target: p.target.load(Ordering::Relaxed) as usize,
                min: p.bounds.min as usize,
                max: p.bounds.max as usize,
            })
            .collect()
    }

    /// Kills every pooled instance, at shutdown.
    pub(crate) fn drain(&self) -> Vec<Arc<I>> {
        let mut out = Vec::new();
        for p in &self.pools {
            p.target.store(0, Ordering::Relaxed);
            out.extend(p.ready.lock().drain(..));
            p.wake.notify_one();
        }
        out
    }
}

impl Pools {
    /// Starts the refill task of every enabled pool whose runtime exists.
    pub(crate) fn start(&self, inner: &Arc<Inner>) {
        for pool in &self.pools {
            if pool.bounds.max == 0 || inner.config.runtimes.get(pool.runtime).is_err() {
                continue;
            }
            tokio::spawn(refill(
                pool.clone(),
                Arc::downgrade(inner),
                self.cfg.clone(),
            ));
        }
    }
}

/// Keeps one pool at its target size, within the memory budget.
async fn refill(pool: Arc<Pool>, inner: Weak<Inner>, cfg: PoolConfig) {
    let mut failures = 0u32;
    loop {
        let Some(strong) = inner.upgrade() else {
            return;
        };
        shrink_if_idle(&pool, &cfg);
        let have = pool.ready.lock().len() as u32 + pool.starting.load(Ordering::Relaxed);
        let target = pool.target.load(Ordering::Relaxed);
        let pooled_mb: u64 = strong
            .pools
            .pools
            .iter()
            .map(|p| p.ready.lock().len() as u64 + u64::from(p.starting.load(Ordering::Relaxed)))
            .sum::<u64>()
            * estimate_mb(&pool, &cfg);
        let within_budget = pooled_mb + estimate_mb(&pool, &cfg) <= cfg.memory_budget_mb;
        // At most two starts at once: a start is CPU-bound.
        if have < target && within_budget && pool.starting.load(Ordering::Relaxed) < 2 {
            pool.starting.fetch_add(1, Ordering::Relaxed);
            let pool2 = pool.clone();
            let inner2 = strong.clone();
            let instance_memory = cfg.instance_memory_mb;
            let started = tokio::spawn(async move {
                let r = crate::Scheduler { inner: inner2 }
                    .start_generic(pool2.runtime, instance_memory)
                    .await;
                pool2.starting.fetch_sub(1, Ordering::Relaxed);
                r
            });
            drop(strong);
            match started.await {
                Ok(Ok(inst)) => {
                    failures = 0;
                    let keep =
                        pool.target.load(Ordering::Relaxed) as usize > pool.ready.lock().len();
                    if keep {
                        pool.ready.lock().push_back(inst);
                    } else {
                        inst.kill("pool shrank");
                    }
                }
                Ok(Err(e)) if pool.target.load(Ordering::Relaxed) == 0 => {
                    // The pool was drained (the server is stopping) while
                    // the instance started: its end is expected.
                    tracing::debug!(runtime = %pool.runtime, "pooled instance stopped while starting: {e}");
                }
                Ok(Err(e)) => {
                    failures += 1;
                    tracing::warn!(runtime = %pool.runtime, "could not start a pooled instance: {e}");
                    // Back off: a broken runtime must not spin.
                    tokio::time::sleep(Duration::from_millis(200 * u64::from(failures.min(25))))
                        .await;
                }
                Err(_) => return,
            }
            continue;
        }
        drop(strong);
        let _ = tokio::time::timeout(Duration::from_secs(1), pool.wake.notified()).await;
    }
}

fn shrink_if_idle<I: InstanceHandle>(pool: &Pool<I>, cfg: &PoolConfig) {
    let mut last = pool.last_miss.lock();
    if last.elapsed() < cfg.shrink_after {
        return;
    }
    *last = Instant::now();
    let _ = pool
        .target
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| {
            (t > pool.bounds.min).then_some(t - 1)
        });
    let target = pool.target.load(Ordering::Relaxed) as usize;
    let extra: Vec<Arc<I>> = {
        let mut ready = pool.ready.lock();
        let n = ready.len().saturating_sub(target);
        ready.drain(..n).collect()
    };
    for i in extra {
        i.kill("pool shrank");
    }
}

/// Megabytes one pooled instance is expected to use.
fn estimate_mb<I: InstanceHandle>(pool: &Pool<I>, cfg: &PoolConfig) -> u64 {
    let ready = pool.ready.lock();
    let measured: Vec<u64> = ready.iter().filter_map(|i| i.memory_current()).collect();
    if measured.is_empty() {
        return u64::from(cfg.instance_memory_mb) / 4;
    }
    ((measured.iter().sum::<u64>() / measured.len() as u64) >> 20).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handle::fake::Fake;

    fn pools(min: u32, max: u32) -> Pools<Fake> {
        let mut cfg = PoolConfig::default();
        cfg.runtimes
            .insert(Runtime::Python, PoolBounds { min, max });
        Pools::new(cfg)
    }

    #[test]
    fn a_miss_grows_the_pool_and_a_quiet_while_shrinks_it() {
        let p = pools(1, 3);
        let py = p.pool(Runtime::Python).clone();
        assert_eq!(py.target.load(Ordering::Relaxed), 1);
        assert!(p.take(Runtime::Python).is_none());
        assert!(p.take(Runtime::Python).is_none());
        assert!(p.take(Runtime::Python).is_none());
        assert_eq!(
            py.target.load(Ordering::Relaxed),
            3,
            "grown to max, no further"
        );
        for id in ["a", "b", "c"] {
            py.ready.lock().push_back(Fake::new(id));
        }
        let cfg = PoolConfig {
            shrink_after: Duration::ZERO,
            ..PoolConfig::default()
        };
        shrink_if_idle(&py, &cfg);
        assert_eq!(py.target.load(Ordering::Relaxed), 2);
        let ready = py.ready.lock();
        assert_eq!(ready.len(), 2, "the instance over the target is stopped");
        assert_eq!(ready[0].id, "b", "the oldest goes");
        drop(ready);
        shrink_if_idle(&py, &cfg);
        shrink_if_idle(&py, &cfg);
        assert_eq!(py.target.load(Ordering::Relaxed), 1, "never below min");
    }

    #[test]
    fn takes_skip_instances_that_exited_and_disabled_pools_give_none() {
        let p = pools(1, 2);
        let py = p.pool(Runtime::Python).clone();
        let dead = Fake::new("dead");
        dead.kill("gone");
        py.ready.lock().push_back(dead);
        py.ready.lock().push_back(Fake::new("live"));
        assert_eq!(p.take(Runtime::Python).unwrap().id, "live");
        let off = pools(0, 0);
        assert!(off.take(Runtime::Python).is_none());
        let status = off.status();
        let s = status.iter().find(|s| s.runtime == "python").unwrap();
        assert!(!s.enabled);
        let all_off = Pools::<Fake>::new(PoolConfig {
            enabled: false,
            ..PoolConfig::default()
        });
        assert!(all_off.status().iter().all(|s| !s.enabled));
        assert_eq!(
            PoolConfig::default().bounds(Runtime::Nodejs),
            PoolBounds::default_for(Runtime::Nodejs)
        );
    }

    #[test]
    fn the_estimate_is_the_measured_use_of_ready_instances() {
        let p = pools(1, 2);
        let py = p.pool(Runtime::Python).clone();
        let cfg = PoolConfig::default();
        assert_eq!(
            estimate_mb(&py, &cfg),
            u64::from(cfg.instance_memory_mb) / 4
        );
        for mb in [30u64, 50] {
            py.ready.lock().push_back(Arc::new(Fake {
                id: format!("{mb}"),
                memory: Some(mb << 20),
                ..Default::default()
            }));
        }
        assert_eq!(estimate_mb(&py, &cfg), 40);
    }
}
