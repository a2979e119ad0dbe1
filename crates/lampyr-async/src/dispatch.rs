//! The asynchronous trigger: runs queued events through the function
//! service and applies what happened (see the crate doc).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use lampyr_api::events::{AttemptError, DeadReason};
use lampyr_api::{FunctionError, TriggerKind};
use lampyr_scheduler::{
    Answer, Call, Credential, InvocationType, Outcome, Scheduler, SchedulerError,
};
use lampyr_triggers::{Context, Trigger, TriggerError};
use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::destination::{self, Condition};
use crate::governor::{Governor, TICK};
use crate::queue::{now_ms, rfc3339, Ev, EventQueue, Finish};

/// Runs the event queue (see the crate doc).
pub struct AsyncTrigger {
    queue: Arc<EventQueue>,
    stopping: Arc<AtomicBool>,
    stop: Arc<Notify>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    in_flight: Arc<InFlight>,
}

/// Events being run, so that a shutdown waits for them.
#[derive(Default)]
struct InFlight {
    n: AtomicUsize,
    done: Notify,
}

impl AsyncTrigger {
    pub fn new(queue: Arc<EventQueue>) -> AsyncTrigger {
        AsyncTrigger {
            queue,
            stopping: Arc::new(AtomicBool::new(false)),
            stop: Arc::new(Notify::new()),
            task: Mutex::new(None),
            in_flight: Arc::new(InFlight::default()),
        }
    }
}

impl Trigger for AsyncTrigger {
    fn kind(&self) -> TriggerKind {
        TriggerKind::Async
    }

    fn start(&self, ctx: Context) -> Result<(), TriggerError> {
        let d = Dispatcher {
            queue: self.queue.clone(),
            sched: ctx.scheduler,
            stopping: self.stopping.clone(),
            in_flight: self.in_flight.clone(),
            own_calls: AtomicU64::new(0),
        };
        let stop = self.stop.clone();
        *self.task.lock() = Some(tokio::spawn(d.run(stop)));
        Ok(())
    }

    fn deployed(&self, _spec: &Arc<lampyr_api::FunctionSpec>) {
        // A new version's limits apply from the next event on.
        self.queue.wake.notify_one();
    }

    fn deleted(&self, name: &str) {
        self.queue.forget(name);
    }

    fn shutdown(&self) -> BoxFuture<'static, ()> {
        self.stopping.store(true, Ordering::Release);
        self.stop.notify_one();
        let task = self.task.lock().take();
        let in_flight = self.in_flight.clone();
        let queue = self.queue.clone();
        Box::pin(async move {
            if let Some(t) = task {
                let _ = t.await;
            }
            // Events running now get a moment to finish; any that do not
            // are run again after the restart (a crash rescue).
            let all_done = async {
                while in_flight.n.load(Ordering::Acquire) > 0 {
                    let notified = in_flight.done.notified();
                    if in_flight.n.load(Ordering::Acquire) == 0 {
                        break;
                    }
                    notified.await;
                }
            };
            let _ = tokio::time::timeout(Duration::from_secs(5), all_done).await;
            // Their outcomes are written before the server stops.
            queue.flush();
        })
    }
}

struct Dispatcher {
    queue: Arc<EventQueue>,
    sched: Scheduler,
    stopping: Arc<AtomicBool>,
    in_flight: Arc<InFlight>,
    /// Calls this dispatcher made (see `governor.rs`).
    own_calls: AtomicU64,
}

/// How many of a function's events may run at once: half its capacity
/// (`max_instances × concurrency`), at least one; synchronous calls
/// always have the rest.
fn share(max_instances: u32, concurrency: u32) -> u32 {
    (max_instances.saturating_mul(concurrency) / 2).max(1)
}

/// How long an outcome waits for a write to ride along with.
const FLUSH_EVERY: Duration = Duration::from_millis(5);

/// Events being run now.
fn in_flight_now(d: &Dispatcher) -> usize {
    d.in_flight.n.load(Ordering::Acquire)
}

/// How much of a running lane's share must be free before it takes more
/// events: a quarter, at least one.
fn refill(share: u32) -> u32 {
    (share / 4).max(1)
}

impl Dispatcher {
    async fn run(self, stop: Arc<Notify>) {
        let me = Arc::new(self);
        let mut last_prune = std::time::Instant::now();
        let mut last_flush = std::time::Instant::now();
        let mut governor = Governor::new();
        loop {
            if me.stopping.load(Ordering::Acquire) {
                return;
            }
            let now = now_ms();
            let mut picks: Vec<Ev> = Vec::new();
            let limit = governor.limit(
                me.sched.waiting_calls(),
                me.own_calls.load(Ordering::Relaxed),
            );
            let mut held_back = false;
            let next_due = {
                let mut board = me.queue.board.lock();
                let next = board.due(now);
                let mut running: u32 = board.lanes.values().map(|l| l.running).sum();
                for (function, lane) in board.lanes.iter_mut() {
                    if lane.ready.is_empty() {
                        continue;
                    }
                    let cap = me.sched.capacity(function).map_or(1, |(i, c)| share(i, c));
                    if lane.running > 0 && cap.saturating_sub(lane.running) < refill(cap) {
                        // Refilled when a batch's worth of room is free: one
                        // round and one lease write for several events.
                        continue;
                    }
                    while lane.running < cap {
                        if running >= limit {
                            held_back = true;
                            break;
                        }
                        let Some(ev) = lane.ready.pop_front() else {
                            break;
                        };
                        lane.running += 1;
                        running += 1;
                        picks.push(ev);
                    }
                }
                next
            };
            // Every pick's lease in one write, before any of them runs.
            let now = now_ms();
            let leases: Vec<(i64, i64, i64)> = picks
                .iter_mut()
                .map(|ev| {
                    let timeout = me
                        .sched
                        .current(&ev.function)
                        .map_or(Duration::ZERO, |v| v.spec.timeout());
                    ev.lease = me.queue.token();
                    let until = now + (timeout + me.queue.cfg.lease_slack).as_millis() as i64;
                    (ev.id, ev.lease, until)
                })
                .collect();
            if !picks.is_empty() && !me.queue.lease(&leases).await {
                // The journal could not be written: the events stay queued,
                // and are tried again in a while.
                for mut ev in picks.drain(..) {
                    ev.lease = 0;
                    me.again(ev, now + 1000);
                }
            }
            for ev in picks {
                me.in_flight.n.fetch_add(1, Ordering::AcqRel);
                let d = me.clone();
                tokio::spawn(async move {
                    d.run_one(ev).await;
                    if d.in_flight.n.fetch_sub(1, Ordering::AcqRel) == 1 {
                        d.in_flight.done.notify_waiters();
                    }
                    d.queue.wake.notify_one();
                });
            }
            // Outcomes ride along with the next write (an accept's or a
            // lease's); left alone, they are written within FLUSH_EVERY, or
            // at once when nothing runs (nothing else would write them).
            let idle = in_flight_now(&me) == 0;
            if idle || last_flush.elapsed() >= FLUSH_EVERY {
                me.queue.flush();
                last_flush = std::time::Instant::now();
            }
            if last_prune.elapsed() > Duration::from_secs(60) {
                last_prune = std::time::Instant::now();
                me.queue.prune();
            }
            let mut wait = next_due
                .map(|t| Duration::from_millis((t - now_ms()).max(1) as u64))
                .unwrap_or(Duration::from_secs(1))
                .min(Duration::from_secs(1));
            if me.queue.outcomes_waiting() {
                wait = wait.min(FLUSH_EVERY);
            }
            if held_back || governor.limited() {
                // The limit is reconsidered every tick.
                wait = wait.min(TICK);
            }
            tokio::select! {
                _ = me.queue.wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
                _ = stop.notified() => return,
            }
        }
    }

    /// Runs one event and records what happened.
    /// Runs one event, leased already.
    async fn run_one(&self, mut ev: Ev) {
        let q = &self.queue;
        let Some(version) = self.sched.current(&ev.function) else {
            // The function is gone: so are its events.
            self.done(&ev, None, Finish::Dropped);
            return;
        };
        let spec = &version.spec;
        let age = now_ms() - ev.created_ms;
        if age > spec.max_event_age_ms as i64 {
            let payload = self.payload(&ev).await.unwrap_or_default();
            self.too_old(&ev, spec, &payload);
            return;
        }
        let Some(payload) = self.payload(&ev).await else {
            self.done(&ev, None, Finish::Dropped);
            return;
        };
        let attempt = ev.attempts + 1;
        self.own_calls.fetch_add(1, Ordering::Relaxed);
        // A timer that names an alias calls it (other events: the newest
        // version).
        let target = ev
            .timer
            .as_deref()
            .and_then(|t| spec.timers().find(|s| s.name == t))
            .and_then(|t| t.alias.as_deref())
            .map(|a| format!("{}@{a}", ev.function));
        let call = Call {
            function: target.as_deref().unwrap_or(&ev.function),
            request_id: ev.request_id.clone(),
            event: payload.to_vec(),
            trigger: ev.trigger,
            invocation_type: InvocationType::RequestResponse,
            credential: Credential::Operator,
            attempt: Some(attempt),
            idempotency_key: None,
            routing_key: None,
            extras: None,
        };
        let answer = self.sched.call(call).await;
        let failure = |error_type: String, message: String| AttemptError {
            attempt,
            at: rfc3339(now_ms()),
            error_type,
            message,
        };
        let (error, response): (AttemptError, Option<(Vec<u8>, bool)>) = match &answer {
            Ok(Answer::Ran(inv)) => match &inv.outcome {
                Outcome::Ok(body) => {
                    let destination = spec.on_success.as_deref().map(|d| {
                        destination::record(
                            d,
                            &ev.function,
                            &ev.request_id,
                            Condition::Success,
                            attempt,
                            &payload,
                            Some(destination::Response {
                                version: inv.version,
                                payload: Some(body),
                                function_error: false,
                            }),
                        )
                    });
                    self.done(&ev, Some("succeeded"), Finish::Succeeded { destination });
                    return;
                }
                Outcome::FunctionError(e) => {
                    let fe = FunctionError::parse(e, "Error");
                    (
                        failure(fe.error_type, fe.error_message),
                        Some((e.to_vec(), true)),
                    )
                }
                Outcome::Timeout { timeout } => (
                    failure(
                        "Runtime.Timeout".into(),
                        format!("timed out after {:.2} s", timeout.as_secs_f64()),
                    ),
                    None,
                ),
                Outcome::Crashed { reason } => {
                    (failure("Runtime.ExitError".into(), reason.clone()), None)
                }
                Outcome::OutOfMemory { limit_mb } => (
                    failure(
                        "Runtime.OutOfMemory".into(),
                        format!("exceeded its memory limit of {limit_mb} MiB"),
                    ),
                    None,
                ),
            },
            Ok(Answer::Queued(_)) => {
                self.done(
                    &ev,
                    Some("succeeded"),
                    Finish::Succeeded { destination: None },
                );
                return;
            }
            Err(refused) => match refused.error() {
                SchedulerError::QueueFull { .. } | SchedulerError::QueueTimeout { .. } => {
                    // At its limits: again later, the attempt not used.
                    ev.throttles += 1;
                    let backoff = throttle_backoff(q.cfg.throttle_base, ev.throttles);
                    let run_at = now_ms() + backoff.as_millis() as i64;
                    if run_at - ev.created_ms > spec.max_event_age_ms as i64 {
                        self.too_old(&ev, spec, &payload);
                    } else {
                        q.metrics.count(&ev.function, "throttled");
                        q.finish(
                            ev.id,
                            ev.lease,
                            &ev.function,
                            Finish::Throttled { run_at_ms: run_at },
                        );
                        self.again(ev, run_at);
                    }
                    return;
                }
                SchedulerError::NotFound(_) | SchedulerError::Deleted(_) => {
                    self.done(&ev, None, Finish::Dropped);
                    return;
                }
                SchedulerError::InitFailed { error, .. } => (
                    failure(error.error_type.clone(), error.error_message.clone()),
                    None,
                ),
                other => (
                    failure("Runtime.StartError".into(), other.to_string()),
                    None,
                ),
            },
        };
        drop(answer);
        if attempt > spec.retries {
            let destination = spec.on_failure.as_deref().map(|d| {
                destination::record(
                    d,
                    &ev.function,
                    &ev.request_id,
                    Condition::RetriesExhausted,
                    attempt,
                    &payload,
                    Some(destination::Response {
                        version: version.version,
                        payload: response.as_ref().map(|r| r.0.as_slice()),
                        function_error: response.as_ref().is_some_and(|r| r.1),
                    }),
                )
            });
            self.done(
                &ev,
                Some("dead_lettered"),
                Finish::Dead {
                    reason: DeadReason::RetriesExhausted,
                    error: Some(error),
                    destination,
                },
            );
            return;
        }
        let backoff = retry_backoff(q.cfg.retry_base, attempt);
        let run_at = now_ms() + backoff.as_millis() as i64;
        q.metrics.count(&ev.function, "retried");
        q.finish(
            ev.id,
            ev.lease,
            &ev.function,
            Finish::Retry {
                run_at_ms: run_at,
                error,
            },
        );
        ev.attempts = attempt;
        ev.throttles = 0;
        self.again(ev, run_at);
    }

    /// The event is older than its function's `max_event_age`: a dead
    /// letter, and the failure destination's record.
    fn too_old(&self, ev: &Ev, spec: &lampyr_api::FunctionSpec, payload: &[u8]) {
        let destination = spec.on_failure.as_deref().map(|d| {
            destination::record(
                d,
                &ev.function,
                &ev.request_id,
                Condition::EventAgeExceeded,
                ev.attempts,
                payload,
                None,
            )
        });
        self.done(
            ev,
            Some("dead_lettered"),
            Finish::Dead {
                reason: DeadReason::EventAgeExceeded,
                error: None,
                destination,
            },
        );
    }

    async fn payload(&self, ev: &Ev) -> Option<bytes::Bytes> {
        match &ev.payload {
            Some(p) => Some(p.clone()),
            None => self.queue.payload(ev.id).await.ok().flatten(),
        }
    }

    /// The event is over: `outcome` is written, the board forgets it.
    fn done(&self, ev: &Ev, counted: Option<&str>, outcome: Finish) {
        if let Some(c) = counted {
            self.queue.metrics.count(&ev.function, c);
        }
        // Applied only under the event's lease: one never leased (its
        // function is gone) has none, and is dropped with its function.
        self.queue.finish(ev.id, ev.lease, &ev.function, outcome);
        let mut board = self.queue.board.lock();
        if let Some(l) = board.lanes.get_mut(&ev.function) {
            l.running = l.running.saturating_sub(1);
        }
        board.finished(ev);
    }

    /// The event runs again at `run_at_ms`.
    fn again(&self, ev: Ev, run_at_ms: i64) {
        let mut board = self.queue.board.lock();
        if let Some(l) = board.lanes.get_mut(&ev.function) {
            l.running = l.running.saturating_sub(1);
        }
        board.schedule(ev, run_at_ms);
    }
}

/// The back-off before attempt `failed + 1`: the base doubled per failed
/// attempt, with up to ±20% jitter so retries of many events spread out.
fn retry_backoff(base: Duration, failed: u32) -> Duration {
    let d = base.saturating_mul(1 << failed.saturating_sub(1).min(10));
    let jitter = 0.8 + rand::random::<f64>() * 0.4;
    d.mul_f64(jitter)
}

/// The back-off after `n` throttles in a row: doubling from the base, at
/// most a minute, with jitter.
fn throttle_backoff(base: Duration, n: u32) -> Duration {
    let d = base
        .saturating_mul(1 << n.saturating_sub(1).min(10))
        .min(Duration::from_secs(60));
    d.mul_f64(0.8 + rand::random::<f64>() * 0.4)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn async_work_gets_half_a_functions_capacity() {
        assert_eq!(share(1, 1), 1);
        assert_eq!(share(10, 1), 5);
        assert_eq!(share(3, 4), 6);
        // A running lane takes more once a quarter of its share is free;
        // a share of one refills at every free place.
        assert_eq!(refill(32), 8);
        assert_eq!(refill(5), 1);
        assert_eq!(refill(1), 1);
    }

    #[test]
    fn retries_back_off_exponentially_with_jitter() {
        let base = Duration::from_secs(60);
        for _ in 0..100 {
            let first = retry_backoff(base, 1);
            let second = retry_backoff(base, 2);
            assert!((48..=72).contains(&first.as_secs()), "{first:?}");
            assert!((96..=144).contains(&second.as_secs()), "{second:?}");
            assert!(throttle_backoff(Duration::from_secs(1), 20) <= Duration::from_secs(72));
        }
    }
}
