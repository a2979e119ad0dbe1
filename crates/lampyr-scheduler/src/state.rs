//! The per-function bookkeeping behind the scheduler: slots on instances,
//! cold starts in progress, and the queue of waiting requests. Everything
//! here runs under one short, synchronous lock per function; nothing awaits
//! while holding it.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use lampyr_api::{FunctionError, InstanceCounts};
use parking_lot::Mutex;
use tokio::sync::oneshot;

use crate::handle::InstanceHandle;
use crate::{SchedulerError, Version};

pub(crate) type SlotId = u64;

/// One slot on an instance, taken for one invocation.
pub(crate) struct SlotGrant<I> {
    pub(crate) slot: SlotId,
    pub(crate) instance: Arc<I>,
    pub(crate) version: Arc<Version>,
}

/// What a waiting request receives.
pub(crate) enum Grant<I> {
    /// A slot, already taken on the waiter's behalf.
    Slot(SlotGrant<I>),
    /// Capacity was freed: try to acquire again (it may now cold-start).
    Retry,
}

pub(crate) enum Acquire<I> {
    Slot(SlotGrant<I>),
    /// The caller must cold-start an instance of this version; a start is
    /// already counted against `max_instances`.
    Start(Arc<Version>),
    Wait(oneshot::Receiver<Grant<I>>),
}

struct Slot<I> {
    id: SlotId,
    instance: Arc<I>,
    version: Arc<Version>,
    inflight: u32,
    last_used: Instant,
    /// Set when the instance takes no new work; it is killed once idle.
    drain: Option<String>,
}

struct Inner<I> {
    current: Arc<Version>,
    slots: Vec<Slot<I>>,
    starting: u32,
    waiters: VecDeque<oneshot::Sender<Grant<I>>>,
    deleted: bool,
    next_slot: SlotId,
    /// Ids of instances taken out of service and killed whose processes
    /// have not exited yet.
    stopping: std::collections::HashSet<String>,
    /// The last start of the current version failed to initialise: until
    /// `retry_at`, requests get its error instead of starting another.
    init_failure: Option<InitFailure>,
    /// Reserved instances the version's aliases ask for.
    alias_reserve: u32,
    /// A version other than the function's newest: only its aliases'
    /// reserved instances are kept, not its manifest's `min_instances`.
    pinned: bool,
}

/// A failed initialisation and when to try again.
struct InitFailure {
    version: u64,
    error: FunctionError,
    failures: u32,
    retry_at: Instant,
}

/// The back-off after `failures` initialisations in a row failed: 1 s,
/// doubling, at most 30 s.
pub(crate) fn init_backoff(failures: u32) -> std::time::Duration {
    let secs = 1u64 << failures.saturating_sub(1).min(5);
    std::time::Duration::from_secs(secs.min(30))
}

/// One function's instances and waiting requests. Generic over the
/// instance (see [`InstanceHandle`]) so the rules are tested without
/// starting any.
pub(crate) struct FunctionState<I = lampyr_runtime::Instance> {
    pub(crate) name: String,
    inner: Mutex<Inner<I>>,
}

impl<I> Inner<I> {
    /// How many instances are kept alive, idle or not.
    fn reserve(&self) -> u32 {
        if self.pinned {
            self.alias_reserve
        } else {
            self.current.spec().min_instances.max(self.alias_reserve)
        }
    }

    fn is_live(&self, s: &Slot<I>) -> bool {
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

impl<I: InstanceHandle> FunctionState<I> {
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
                alias_reserve: 0,
                pinned: false,
            }),
        }
    }

    /// The state of a version other than the function's newest, which
    /// keeps only the reserved instances its aliases ask for.
    pub(crate) fn pinned(name: &str, version: Arc<Version>) -> Self {
        let st = FunctionState::new(name, version);
        st.inner.lock().pinned = true;
        st
    }

    /// Sets the reserved instances the version's aliases ask for. When no
    /// alias routes to it (`routed` false), a pinned version's idle
    /// instances stop now; they are returned to be killed.
    pub(crate) fn set_alias_reserve(&self, n: u32, routed: bool) -> Vec<Arc<I>> {
        let mut g = self.inner.lock();
        g.alias_reserve = n;
        if !g.pinned || routed {
            return Vec::new();
        }
        let mut idle = Vec::new();
        g.slots.retain(|s| {
            if s.inflight == 0 {
                idle.push(s.instance.clone());
                false
            } else {
                true
            }
        });
        g.stopping.extend(idle.iter().map(|i| i.id().to_string()));
        idle
    }

    /// Reserved instances kept now.
    pub(crate) fn reserve(&self) -> u32 {
        self.inner.lock().reserve()
    }

    pub(crate) fn current(&self) -> Arc<Version> {
        self.inner.lock().current.clone()
    }

    pub(crate) fn try_acquire(&self) -> Result<Acquire<I>, SchedulerError> {
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
                    inner.is_live(s) && s.inflight < spec.concurrency && !s.instance.exited()
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
        instance: Arc<I>,
        version: Arc<Version>,
        claim: bool,
    ) -> Result<Option<SlotGrant<I>>, SchedulerError> {
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
    pub(crate) fn adopt(&self, instance: Arc<I>, version: Arc<Version>) {
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
    pub(crate) fn init_failed(&self, version: &Version, error: FunctionError) {
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
        (f.version == g.current.record.version).then(|| f.error.summary())
    }

    pub(crate) fn start_failed(&self) {
        let mut g = self.inner.lock();
        g.starting = g.starting.saturating_sub(1);
        g.wake_one();
    }

    /// Gives a slot back. Returns the instance and a reason if it must now be
    /// killed (it was draining and is idle).
    pub(crate) fn release(&self, slot: SlotId) -> Option<(Arc<I>, String)> {
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
    pub(crate) fn forget(&self, instance: &Arc<I>) {
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
    pub(crate) fn set_version(&self, version: Arc<Version>) -> Vec<Arc<I>> {
        let idle = self.hand_over(version);
        let mut g = self.inner.lock();
        g.stopping.extend(idle.iter().map(|i| i.id().to_string()));
        idle
    }

    /// Switches to a new version; returns the old version's idle
    /// instances, no longer this state's (to be killed, or adopted by the
    /// old version's own state).
    pub(crate) fn hand_over(&self, version: Arc<Version>) -> Vec<Arc<I>> {
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
        g.wake_all();
        idle
    }

    /// Marks the function deleted; returns idle instances to kill. Busy
    /// ones are killed when their invocations end; waiters fail.
    pub(crate) fn delete(&self) -> Vec<Arc<I>> {
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
    pub(crate) fn stop_all(&self) -> Vec<Arc<I>> {
        let mut g = self.inner.lock();
        g.deleted = true;
        g.waiters.clear();
        g.slots.drain(..).map(|s| s.instance).collect()
    }

    /// Removes instances idle past `idle_timeout`, keeping `min_instances`.
    pub(crate) fn reap_idle(&self, now: Instant) -> Vec<Arc<I>> {
        let mut g = self.inner.lock();
        let current = g.current.clone();
        let spec = current.spec();
        let idle_timeout = spec.idle_timeout();
        let mut live = g.live();
        let reserve = g.reserve();
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
            if live <= reserve {
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
        let want = g.reserve();
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
            && g.live() + g.starting < g.reserve()
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

#[cfg(test)]
mod tests {
    //! The scheduling rules of `ARCHITECTURE.md`, through the seam: no
    //! instance is started, [`Fake`] stands in.

    use std::path::PathBuf;
    use std::time::{Duration, SystemTime};

    use lampyr_api::FunctionSpec;
    use lampyr_store::VersionRecord;

    use super::*;
    use crate::handle::fake::Fake;
    use crate::TriggerAccess;

    fn version(n: u64, extra: &str) -> Arc<Version> {
        let spec = FunctionSpec::from_toml(&format!(
            "name = \"f\"\nruntime = \"nodejs\"\nhandler = \"index.handler\"\n{extra}"
        ))
        .unwrap();
        Arc::new(Version {
            record: VersionRecord {
                name: "f".into(),
                version: n,
                spec,
                code_sha256: String::new(),
                code_size: 0,
                created_at: SystemTime::now(),
                description: None,
            },
            code_dir: PathBuf::new(),
            access: TriggerAccess::Public,
        })
    }

    /// Acquires and, where that means a start, starts `inst` for it.
    fn take(st: &FunctionState<Fake>, inst: &Arc<Fake>) -> SlotGrant<Fake> {
        match st.try_acquire().unwrap() {
            Acquire::Slot(g) => g,
            Acquire::Start(v) => st.started(inst.clone(), v, true).unwrap().unwrap(),
            Acquire::Wait(_) => panic!("expected a slot, not a wait"),
        }
    }

    fn wait(st: &FunctionState<Fake>) -> oneshot::Receiver<Grant<Fake>> {
        match st.try_acquire() {
            Ok(Acquire::Wait(rx)) => rx,
            Ok(Acquire::Slot(_)) => panic!("expected a wait, got a slot"),
            Ok(Acquire::Start(_)) => panic!("expected a wait, got a start"),
            Err(e) => panic!("expected a wait, got {e}"),
        }
    }

    #[test]
    fn a_freed_slot_goes_to_the_oldest_waiter_and_the_queue_is_bounded() {
        let st = FunctionState::new("f", version(1, "max_instances = 1\nmax_queue = 2\n"));
        let a = Fake::new("f-1");
        let g = take(&st, &a);
        assert!(Arc::ptr_eq(&g.instance, &a));
        let mut first = wait(&st);
        let mut second = wait(&st);
        assert!(matches!(
            st.try_acquire(),
            Err(SchedulerError::QueueFull { queued: 2, .. })
        ));
        assert_eq!(st.counts().queued, 2);
        assert!(st.release(g.slot).is_none());
        let handed = match first.try_recv() {
            Ok(Grant::Slot(g)) => g,
            _ => panic!("the oldest waiter gets the slot"),
        };
        assert!(Arc::ptr_eq(&handed.instance, &a));
        assert!(second.try_recv().is_err(), "the next waiter still waits");
        // A waiter that gave up is skipped: the slot goes to the next.
        drop(second);
        let mut third = wait(&st);
        assert!(st.release(handed.slot).is_none());
        assert!(matches!(third.try_recv(), Ok(Grant::Slot(_))));
    }

    #[test]
    fn concurrency_fills_the_most_recently_used_instance_first() {
        let st = FunctionState::new("f", version(1, "concurrency = 2\nmax_instances = 2\n"));
        let (a, b) = (Fake::new("f-1"), Fake::new("f-2"));
        let g1 = take(&st, &a);
        let g2 = take(&st, &a);
        assert_eq!(g1.slot, g2.slot, "two invocations share one instance");
        let g3 = take(&st, &b);
        assert!(
            Arc::ptr_eq(&g3.instance, &b),
            "a full instance means a start"
        );
        assert_eq!(st.counts().busy, 2);
    }

    #[test]
    fn a_deploy_drains_the_old_version() {
        let st = FunctionState::new("f", version(1, "max_instances = 3\n"));
        let (busy, idle) = (Fake::new("f-1"), Fake::new("f-2"));
        let held = take(&st, &busy);
        let other = take(&st, &idle);
        assert!(st.release(other.slot).is_none());
        let killed = st.set_version(version(2, "max_instances = 3\n"));
        assert_eq!(killed.len(), 1, "the idle old instance stops at once");
        assert!(Arc::ptr_eq(&killed[0], &idle));
        let c = st.counts();
        assert_eq!((c.draining, c.stopping), (1, 1));
        // New requests start the new version; the busy one is not reused.
        match st.try_acquire().unwrap() {
            Acquire::Start(v) => assert_eq!(v.record.version, 2),
            _ => panic!("a new version starts fresh"),
        }
        st.start_failed();
        // The busy old instance finishes its invocation, then stops.
        let (inst, reason) = st.release(held.slot).expect("drained once idle");
        assert!(Arc::ptr_eq(&inst, &busy));
        assert_eq!(reason, "replaced by version 2");
    }

    #[test]
    fn an_aliased_version_takes_its_idle_instances_along_and_keeps_its_reserve() {
        let v1 = version(1, "");
        let st = FunctionState::new("f", v1.clone());
        let a = Fake::new("f-1");
        let g = take(&st, &a);
        assert!(st.release(g.slot).is_none());
        let idle = st.hand_over(version(2, ""));
        assert_eq!(idle.len(), 1);
        assert_eq!(st.counts().stopping, 0, "handed over, not stopping");
        let pinned = FunctionState::pinned("f", v1.clone());
        pinned.adopt(idle[0].clone(), v1);
        assert_eq!(pinned.counts().idle, 1);
        // A pinned version keeps what its aliases reserve, not its
        // manifest's min_instances; unrouted, its idle instances stop.
        assert_eq!(pinned.reserve(), 0);
        assert!(pinned.set_alias_reserve(2, true).is_empty());
        assert_eq!(pinned.reserve_missing().len(), 1);
        assert_eq!(pinned.set_alias_reserve(0, false).len(), 1);
        assert_eq!(pinned.counts().idle, 0);
    }

    #[test]
    fn a_start_of_a_replaced_version_serves_its_caller_then_drains() {
        let v1 = version(1, "");
        let st = FunctionState::new("f", v1.clone());
        let Acquire::Start(v) = st.try_acquire().unwrap() else {
            panic!("a start")
        };
        st.set_version(version(2, ""));
        let a = Fake::new("f-1");
        let g = st
            .started(a.clone(), v, true)
            .unwrap()
            .expect("the caller's slot");
        assert_eq!(st.counts().draining, 1);
        assert!(
            st.release(g.slot).is_some(),
            "stopped once its one call ends"
        );
        // A reserved start of a replaced version is useless: stopped.
        let b = Fake::new("f-2");
        assert!(st.started(b.clone(), v1, false).unwrap().is_none());
        assert_eq!(b.killed().as_deref(), Some("replaced by a new version"));
    }

    #[test]
    fn reserved_instances_are_started_and_never_reaped() {
        let st = FunctionState::new(
            "f",
            version(1, "min_instances = 1\nidle_timeout = \"1s\"\n"),
        );
        assert!(st.needs_reserve());
        let missing = st.reserve_missing();
        assert_eq!(missing.len(), 1);
        assert!(!st.needs_reserve(), "the start in progress counts");
        assert!(st.reserve_missing().is_empty());
        let r = Fake::new("f-1");
        assert!(st
            .started(r.clone(), missing[0].clone(), false)
            .unwrap()
            .is_none());
        assert_eq!(st.counts().idle, 1);
        let later = Instant::now() + Duration::from_secs(3600);
        assert!(st.reap_idle(later).is_empty(), "min_instances stay");
        // A second, on-demand instance goes when idle; the reserve stays.
        let busy = take(&st, &r);
        let extra = Fake::new("f-2");
        let g = take(&st, &extra);
        assert!(Arc::ptr_eq(&g.instance, &extra));
        st.release(busy.slot);
        st.release(g.slot);
        let reaped = st.reap_idle(later);
        assert_eq!(reaped.len(), 1);
        assert_eq!(st.counts().idle, 1);
    }

    #[test]
    fn idle_instances_are_reaped_oldest_first_after_idle_timeout() {
        let st = FunctionState::new(
            "f",
            version(1, "max_instances = 3\nidle_timeout = \"1s\"\n"),
        );
        let (a, b) = (Fake::new("f-1"), Fake::new("f-2"));
        let ga = take(&st, &a);
        let gb = take(&st, &b);
        // Released in this order (ties sort by slot, which is the same).
        st.release(ga.slot);
        st.release(gb.slot);
        assert!(
            st.reap_idle(Instant::now()).is_empty(),
            "not idle long enough"
        );
        let reaped = st.reap_idle(Instant::now() + Duration::from_secs(2));
        assert_eq!(reaped.len(), 2);
        assert!(Arc::ptr_eq(&reaped[0], &a), "the one idle longest first");
        assert_eq!(st.counts().stopping, 2);
        st.gone("f-1");
        st.gone("f-2");
        assert_eq!(st.counts().total(), 0, "zero instances");
    }

    #[test]
    fn a_timed_out_invocation_marks_its_instance_draining() {
        let st = FunctionState::new("f", version(1, "concurrency = 2\n"));
        let a = Fake::new("f-1");
        let timed_out = take(&st, &a);
        let other = take(&st, &a);
        st.poison(timed_out.slot, "an invocation timed out after 1.00 s");
        assert_eq!(st.counts().draining, 1);
        // No new work goes to it.
        match st.try_acquire().unwrap() {
            Acquire::Start(_) => st.start_failed(),
            _ => panic!("a poisoned instance takes no new work"),
        }
        assert!(
            st.release(timed_out.slot).is_none(),
            "the other call still runs"
        );
        let (inst, reason) = st.release(other.slot).expect("killed once idle");
        assert!(Arc::ptr_eq(&inst, &a));
        assert_eq!(reason, "an invocation timed out after 1.00 s");
    }

    #[test]
    fn an_exited_instance_takes_no_work_and_its_slot_is_forgotten() {
        let st = FunctionState::new("f", version(1, "max_instances = 1\n"));
        let a = Fake::new("f-1");
        let g = take(&st, &a);
        st.release(g.slot);
        a.exited.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut waiter = wait(&st);
        st.forget(&a);
        assert!(
            matches!(waiter.try_recv(), Ok(Grant::Retry)),
            "a waiter may start a replacement"
        );
        assert!(matches!(st.try_acquire().unwrap(), Acquire::Start(_)));
    }

    #[test]
    fn a_failed_init_answers_from_a_back_off_until_a_new_version() {
        let v = version(1, "");
        let st: FunctionState<Fake> = FunctionState::new("f", v.clone());
        let Acquire::Start(_) = st.try_acquire().unwrap() else {
            panic!("a start")
        };
        let error = lampyr_api::FunctionError::parse(
            br#"{"errorType":"SyntaxError","errorMessage":"Unexpected token"}"#,
            "Runtime.InitError",
        );
        st.init_failed(&v, error);
        st.start_failed();
        match st.try_acquire() {
            Err(SchedulerError::InitFailed {
                retry_in, error, ..
            }) => {
                assert!(retry_in.is_some_and(|d| d <= Duration::from_secs(1)));
                assert_eq!(error.error_type, "SyntaxError");
            }
            _ => panic!("the back-off answers without a start"),
        }
        assert_eq!(
            st.init_failure().as_deref(),
            Some("SyntaxError: Unexpected token")
        );
        assert!(st.reserve_missing().is_empty());
        st.set_version(version(2, ""));
        assert!(st.init_failure().is_none());
        assert!(matches!(st.try_acquire().unwrap(), Acquire::Start(_)));
        assert_eq!(init_backoff(1), Duration::from_secs(1));
        assert_eq!(init_backoff(3), Duration::from_secs(4));
        assert_eq!(init_backoff(40), Duration::from_secs(30));
    }

    #[test]
    fn a_delete_fails_waiters_and_stops_instances_as_they_go_idle() {
        let st = FunctionState::new("f", version(1, "max_instances = 1\n"));
        let a = Fake::new("f-1");
        let g = take(&st, &a);
        let mut waiter = wait(&st);
        assert!(st.delete().is_empty(), "the busy instance finishes first");
        assert!(waiter.try_recv().is_err(), "the waiter's sender is gone");
        assert!(matches!(st.try_acquire(), Err(SchedulerError::Deleted(_))));
        assert!(st.release(g.slot).is_some());
        // A start that finishes after the delete is stopped.
        let b = Fake::new("f-2");
        assert!(st.started(b.clone(), version(1, ""), true).is_err());
        assert_eq!(b.killed().as_deref(), Some("function deleted"));
    }
}
