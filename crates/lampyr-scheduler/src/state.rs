//! The per-function bookkeeping behind the scheduler: slots on instances,
//! cold starts in progress, and the queue of waiting requests. Everything
//! here runs under one short, synchronous lock per function; nothing awaits
//! while holding it.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use lampyr_api::InstanceCounts;
use lampyr_runtime::Instance;
use parking_lot::Mutex;
use tokio::sync::oneshot;

use crate::{SchedulerError, Version};

pub(crate) type SlotId = u64;

/// One slot on an instance, taken for one invocation.
pub(crate) struct SlotGrant {
    pub(crate) slot: SlotId,
    pub(crate) instance: Arc<Instance>,
    pub(crate) version: Arc<Version>,
}

/// What a waiting request receives.
pub(crate) enum Grant {
    /// A slot, already taken on the waiter's behalf.
    Slot(SlotGrant),
    /// Capacity was freed: try to acquire again (it may now cold-start).
    Retry,
}

pub(crate) enum Acquire {
    Slot(SlotGrant),
    /// The caller must cold-start an instance of this version; a start is
    /// already counted against `max_instances`.
    Start(Arc<Version>),
    Wait(oneshot::Receiver<Grant>),
}

struct Slot {
    id: SlotId,
    instance: Arc<Instance>,
    version: Arc<Version>,
    inflight: u32,
    last_used: Instant,
    /// Set when the instance takes no new work; it is killed once idle.
    drain: Option<String>,
}

struct Inner {
    current: Arc<Version>,
    slots: Vec<Slot>,
    starting: u32,
    waiters: VecDeque<oneshot::Sender<Grant>>,
    deleted: bool,
    next_slot: SlotId,
    /// Ids of instances taken out of service and killed whose processes
    /// have not exited yet.
    stopping: std::collections::HashSet<String>,
    /// The last start of the current version failed to initialise: until
    /// `retry_at`, requests get its error instead of starting another.
    init_failure: Option<InitFailure>,
}

/// A failed initialisation and when to try again.
struct InitFailure {
    version: u64,
    error: serde_json::Value,
    failures: u32,
    retry_at: Instant,
}

/// The back-off after `failures` initialisations in a row failed: 1 s,
/// doubling, at most 30 s.
pub(crate) fn init_backoff(failures: u32) -> std::time::Duration {
    let secs = 1u64 << failures.saturating_sub(1).min(5);
    std::time::Duration::from_secs(secs.min(30))
}

pub(crate) struct FunctionState {
    pub(crate) name: String,
    inner: Mutex<Inner>,
}

impl Inner {
    fn is_live(&self, s: &Slot) -> bool {
        s.drain.is_none() && Arc::ptr_eq(&s.version, &self.current)
    }

    fn live(&self) -> u32 {
        self.slots.iter().filter(|s| self.is_live(s)).count() as u32
    }

    /// Hands free capacity on slot `idx` to waiters, oldest first.
    fn serve_waiters(&mut self, idx: usize) {
        let concurrency = self.current.spec().concurrency;
        while !self.waiters.is_empty() {
            let live = self.is_live(&self.slots[idx]);
            let slot = &mut self.slots[idx];
            if !live || slot.inflight >= concurrency {
                return;
            }
            let tx = self.waiters.pop_front().expect("non-empty");
            slot.inflight += 1;
            let grant = SlotGrant {
                slot: slot.id,
                instance: slot.instance.clone(),
                version: slot.version.clone(),
            };
            if tx.send(Grant::Slot(grant)).is_err() {
                // That waiter gave up; the slot goes to the next one.
                slot.inflight -= 1;
            }
        }
    }

    fn wake_one(&mut self) {
        while let Some(tx) = self.waiters.pop_front() {
            if tx.send(Grant::Retry).is_ok() {
                return;
            }
        }
    }

    fn wake_all(&mut self) {
        for tx in self.waiters.drain(..) {
            let _ = tx.send(Grant::Retry);
        }
    }
}

impl FunctionState {
    pub(crate) fn new(name: &str, current: Arc<Version>) -> Self {
        FunctionState {
            name: name.to_string(),
            inner: Mutex::new(Inner {
                current,
                slots: Vec::new(),
                starting: 0,
                waiters: VecDeque::new(),
                deleted: false,
                next_slot: 1,
                stopping: Default::default(),
                init_failure: None,
            }),
        }
    }

    pub(crate) fn current(&self) -> Arc<Version> {
        self.inner.lock().current.clone()
    }

    pub(crate) fn try_acquire(&self) -> Result<Acquire, SchedulerError> {
        let mut g = self.inner.lock();
        if g.deleted {
            return Err(SchedulerError::Deleted(self.name.clone()));
        }
        let current = g.current.clone();
        let spec = current.spec();
        // The most recently used instance with room: keeping work on few
        // instances lets the others go idle and scale in.
        let best = {
            let inner = &*g;
            inner
                .slots
                .iter()
                .enumerate()
                .filter(|(_, s)| {
                    inner.is_live(s)
                        && s.inflight < spec.concurrency
                        && s.instance.exit_report().is_none()
                })
                .max_by_key(|(_, s)| s.last_used)
                .map(|(i, _)| i)
        };
        if let Some(i) = best {
            let s = &mut g.slots[i];
            s.inflight += 1;
            return Ok(Acquire::Slot(SlotGrant {
                slot: s.id,
                instance: s.instance.clone(),
                version: s.version.clone(),
            }));
        }
        if g.live() + g.starting < spec.max_instances {
            if let Some(f) = &g.init_failure {
                let now = Instant::now();
                if f.version == current.record.version && now < f.retry_at {
                    return Err(SchedulerError::InitFailed {
                        function: self.name.clone(),
                        error: f.error.clone(),
                        retry_in: Some(f.retry_at - now),
                    });
                }
            }
            g.starting += 1;
            return Ok(Acquire::Start(current));
        }
        g.waiters.retain(|w| !w.is_closed());
        if g.waiters.len() >= spec.max_queue as usize {
            return Err(SchedulerError::QueueFull {
                function: self.name.clone(),
                max_instances: spec.max_instances,
                concurrency: spec.concurrency,
                queued: g.waiters.len(),
                max_queue: spec.max_queue,
            });
        }
        let (tx, rx) = oneshot::channel();
        g.waiters.push_back(tx);
        Ok(Acquire::Wait(rx))
    }

    /// A cold start finished. With `claim` the caller gets a slot on it.
    pub(crate) fn started(
        &self,
        instance: Arc<Instance>,
        version: Arc<Version>,
        claim: bool,
    ) -> Result<Option<SlotGrant>, SchedulerError> {
        let mut g = self.inner.lock();
        g.starting = g.starting.saturating_sub(1);
        if g.deleted {
            drop(g);
            instance.kill("function deleted");
            return Err(SchedulerError::Deleted(self.name.clone()));
        }
        let stale = !Arc::ptr_eq(&version, &g.current);
        if !stale {
            g.init_failure = None;
        }
        if stale && !claim {
            // A reserved instance of a version replaced while it started:
            // nobody will use it.
            drop(g);
            instance.kill("replaced by a new version");
            return Ok(None);
        }
        let id = g.next_slot;
        g.next_slot += 1;
        let drain = stale.then(|| "replaced by a new version".to_string());
        g.slots.push(Slot {
            id,
            instance: instance.clone(),
            version: version.clone(),
            inflight: u32::from(claim),
            last_used: Instant::now(),
            drain,
        });
        let idx = g.slots.len() - 1;
        g.serve_waiters(idx);
        Ok(claim.then_some(SlotGrant {
            slot: id,
            instance,
            version,
        }))
    }

    /// Adds an instance of `version` that is already loaded, idle (one that
    /// passed a deploy's load check).
    pub(crate) fn adopt(&self, instance: Arc<Instance>, version: Arc<Version>) {
        let mut g = self.inner.lock();
        if g.deleted || !Arc::ptr_eq(&version, &g.current) {
            drop(g);
            instance.kill("replaced by a new version");
            return;
        }
        let id = g.next_slot;
        g.next_slot += 1;
        g.slots.push(Slot {
            id,
            instance,
            version,
            inflight: 0,
            last_used: Instant::now(),
            drain: None,
        });
        let idx = g.slots.len() - 1;
        g.serve_waiters(idx);
    }

    /// A start of `version` failed to initialise with `error`: requests
    /// get that error, without a start, for a back-off.
    pub(crate) fn init_failed(&self, version: &Version, error: serde_json::Value) {
        let mut g = self.inner.lock();
        if version.record.version != g.current.record.version {
            return;
        }
        let failures = g
            .init_failure
            .as_ref()
            .filter(|f| f.version == version.record.version)
            .map_or(1, |f| f.failures + 1);
        g.init_failure = Some(InitFailure {
            version: version.record.version,
            error,
            failures,
            retry_at: Instant::now() + init_backoff(failures),
        });
    }

    /// The latest initialisation error of the current version, as people
    /// read it, if its starts are failing.
    pub(crate) fn init_failure(&self) -> Option<String> {
        let g = self.inner.lock();
        let f = g.init_failure.as_ref()?;
        (f.version == g.current.record.version).then(|| {
            let t = f
                .error
                .get("errorType")
                .and_then(|v| v.as_str())
                .unwrap_or("Runtime.InitError");
            let m = f
                .error
                .get("errorMessage")
                .and_then(|v| v.as_str())
                .unwrap_or("");
            format!("{t}: {m}")
        })
    }

    pub(crate) fn start_failed(&self) {
        let mut g = self.inner.lock();
        g.starting = g.starting.saturating_sub(1);
        g.wake_one();
    }

    /// Gives a slot back. Returns the instance and a reason if it must now be
    /// killed (it was draining and is idle).
    pub(crate) fn release(&self, slot: SlotId) -> Option<(Arc<Instance>, String)> {
        let mut g = self.inner.lock();
        let idx = g.slots.iter().position(|s| s.id == slot)?;
        let live = g.is_live(&g.slots[idx]);
        let s = &mut g.slots[idx];
        s.inflight = s.inflight.saturating_sub(1);
        s.last_used = Instant::now();
        if !live {
            if s.inflight == 0 {
                let s = g.slots.remove(idx);
                g.stopping.insert(s.instance.id().to_string());
                g.wake_one();
                return Some((
                    s.instance,
                    s.drain
                        .unwrap_or_else(|| "replaced by a new version".into()),
                ));
            }
            return None;
        }
        g.serve_waiters(idx);
        None
    }

    /// Marks the instance behind `slot` as unusable.
    pub(crate) fn poison(&self, slot: SlotId, reason: &str) {
        let mut g = self.inner.lock();
        if let Some(s) = g.slots.iter_mut().find(|s| s.id == slot) {
            s.drain.get_or_insert_with(|| reason.to_string());
        }
    }

    /// An instance's processes are gone (whatever ended them).
    pub(crate) fn gone(&self, id: &str) {
        self.inner.lock().stopping.remove(id);
    }

    /// Drops an instance that exited on its own. One still running
    /// invocations stays until they end (they fail with its exit), but takes
    /// no new work.
    pub(crate) fn forget(&self, instance: &Arc<Instance>) {
        let mut g = self.inner.lock();
        let before = g.slots.len();
        g.slots.retain_mut(|s| {
            if !Arc::ptr_eq(&s.instance, instance) {
                return true;
            }
            s.drain.get_or_insert_with(|| "exited".into());
            s.inflight > 0
        });
        if g.slots.len() < before {
            g.wake_one();
        }
    }

    /// Switches to a new version; returns old idle instances to kill.
    pub(crate) fn set_version(&self, version: Arc<Version>) -> Vec<Arc<Instance>> {
        let mut g = self.inner.lock();
        g.current = version;
        g.init_failure = None;
        let reason = format!("replaced by version {}", g.current.record.version);
        let mut idle = Vec::new();
        let current = g.current.clone();
        g.slots.retain_mut(|s| {
            if Arc::ptr_eq(&s.version, &current) {
                return true;
            }
            s.drain.get_or_insert_with(|| reason.clone());
            if s.inflight == 0 {
                idle.push(s.instance.clone());
                false
            } else {
                true
            }
        });
        g.stopping.extend(idle.iter().map(|i| i.id().to_string()));
        g.wake_all();
        idle
    }

    /// Marks the function deleted; returns idle instances to kill. Busy
    /// ones are killed when their invocations end; waiters fail.
    pub(crate) fn delete(&self) -> Vec<Arc<Instance>> {
        let mut g = self.inner.lock();
        g.deleted = true;
        g.waiters.clear();
        let mut idle = Vec::new();
        g.slots.retain_mut(|s| {
            s.drain.get_or_insert_with(|| "function deleted".into());
            if s.inflight == 0 {
                idle.push(s.instance.clone());
                false
            } else {
                true
            }
        });
        idle
    }

    /// Takes every instance away, busy or not, for a server shutdown.
    pub(crate) fn stop_all(&self) -> Vec<Arc<Instance>> {
        let mut g = self.inner.lock();
        g.deleted = true;
        g.waiters.clear();
        g.slots.drain(..).map(|s| s.instance).collect()
    }

    /// Removes instances idle past `idle_timeout`, keeping `min_instances`.
    pub(crate) fn reap_idle(&self, now: Instant) -> Vec<Arc<Instance>> {
        let mut g = self.inner.lock();
        let current = g.current.clone();
        let spec = current.spec();
        let idle_timeout = spec.idle_timeout();
        let mut live = g.live();
        let mut out = Vec::new();
        // Oldest-idle first.
        let mut candidates: Vec<(Instant, SlotId)> = g
            .slots
            .iter()
            .filter(|s| {
                g.is_live(s) && s.inflight == 0 && now.duration_since(s.last_used) >= idle_timeout
            })
            .map(|s| (s.last_used, s.id))
            .collect();
        candidates.sort();
        for (_, id) in candidates {
            if live <= spec.min_instances {
                break;
            }
            if let Some(idx) = g.slots.iter().position(|s| s.id == id) {
                let inst = g.slots.remove(idx).instance;
                g.stopping.insert(inst.id().to_string());
                out.push(inst);
                live -= 1;
            }
        }
        out
    }

    /// How many reserved instances must start now; counts them as starting.
    pub(crate) fn reserve_missing(&self) -> Vec<Arc<Version>> {
        let mut g = self.inner.lock();
        if g.deleted {
            return Vec::new();
        }
        let want = g.current.spec().min_instances;
        let have = g.live() + g.starting;
        let backing_off = g
            .init_failure
            .as_ref()
            .is_some_and(|f| Instant::now() < f.retry_at);
        let n = if backing_off {
            0
        } else {
            want.saturating_sub(have)
        };
        g.starting += n;
        (0..n).map(|_| g.current.clone()).collect()
    }

    pub(crate) fn needs_reserve(&self) -> bool {
        let g = self.inner.lock();
        !g.deleted
            && g.live() + g.starting < g.current.spec().min_instances
            && g.init_failure
                .as_ref()
                .is_none_or(|f| Instant::now() >= f.retry_at)
    }

    pub(crate) fn counts(&self) -> InstanceCounts {
        let g = self.inner.lock();
        let mut c = InstanceCounts {
            starting: g.starting as usize,
            stopping: g.stopping.len(),
            queued: g.waiters.iter().filter(|w| !w.is_closed()).count(),
            ..Default::default()
        };
        for s in &g.slots {
            if s.drain.is_some() || !Arc::ptr_eq(&s.version, &g.current) {
                c.draining += 1;
            } else if s.inflight > 0 {
                c.busy += 1;
            } else {
                c.idle += 1;
            }
        }
        c
    }
}
