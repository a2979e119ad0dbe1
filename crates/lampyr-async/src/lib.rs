//! Asynchronous invocation: calls answered `202 Accepted` at once and run
//! later, with Lambda's semantics, and timer triggers, whose firings are
//! such calls.
//!
//! * [`queue`]: the durable event queue (a journal appended in the
//!   caller's thread and applied to SQLite in the background; leases, dead
//!   letters, idempotency keys). An event is on disk before its 202.
//! * [`AsyncTrigger`] (`dispatch.rs`): the trigger that runs queued events
//!   through `lampyr_scheduler::Scheduler::call`, like any other trigger:
//!   at least once, oldest first per function, using at most half of a
//!   function's capacity so synchronous calls always have the rest, and
//!   fewer while callers wait for a CPU (`governor.rs`);
//!   failures retried with exponential back-off and jitter, throttles
//!   retried without using an attempt, too-old or exhausted events
//!   dead-lettered, destinations (`on_success`, `on_failure`) sent
//!   Lambda-style records.
//! * [`TimerTrigger`] (`timer.rs`): cron and `@every` schedules; each tick
//!   is an event with the idempotency key `timer:NAME:TICK`, so it is
//!   durable, retried, and never fired twice.
//!
//! The event queue is also the function service's
//! [`lampyr_scheduler::EventSink`]: every trigger's event calls land here.
#![forbid(unsafe_code)]

mod destination;
mod dispatch;
mod governor;
mod journal;
mod metrics;
pub mod queue;
mod settle;
mod timer;
mod writer;

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use lampyr_scheduler::{EventSink, NewEvent, Queued, SchedulerError};

pub use dispatch::AsyncTrigger;
pub use queue::{EventQueue, QueueError};
pub use timer::{timer_info, TimerTrigger};

/// Settings of asynchronous invocation (`[async]` in the server's
/// configuration).
#[derive(Debug, Clone)]
pub struct AsyncConfig {
    /// The back-off before the first retry of a failed event; it doubles
    /// for the next, with jitter (Lambda: about a minute, then two).
    pub retry_base: Duration,
    /// The first back-off after the function was at its limits; it doubles
    /// up to a minute.
    pub throttle_base: Duration,
    /// The largest event.
    pub max_event_bytes: usize,
    /// The most unfinished events per function.
    pub max_queue_depth: u64,
    /// Sync every commit to the disk (survives power loss, not only a
    /// killed server), at the cost of a flush per group.
    pub fsync: bool,
    /// How long succeeded events are kept for `GET /api/v1/invocations/ID`.
    pub keep_finished: Duration,
    /// What a lease gets besides the function's timeout.
    pub lease_slack: Duration,
}

impl Default for AsyncConfig {
    fn default() -> Self {
        AsyncConfig {
            retry_base: Duration::from_secs(60),
            throttle_base: Duration::from_secs(1),
            max_event_bytes: 256 * 1024,
            max_queue_depth: 100_000,
            fsync: false,
            keep_finished: Duration::from_secs(24 * 3600),
            lease_slack: Duration::from_secs(30),
        }
    }
}

/// The event queue as the function service's event sink.
struct Sink(Arc<EventQueue>);

impl EventSink for Sink {
    fn enqueue(&self, event: NewEvent) -> BoxFuture<'static, Result<Queued, SchedulerError>> {
        let function = event.function.clone();
        if event.payload.len() > self.0.cfg.max_event_bytes {
            let e = SchedulerError::EventTooLarge {
                function,
                size: event.payload.len(),
                limit: self.0.cfg.max_event_bytes,
            };
            return Box::pin(async move { Err(e) });
        }
        // Decided now, in the caller's order; the write (shared with the
        // accepts arriving meanwhile) and a sync are waited for.
        let written = self.0.accept_now(queue::Accept { event, tick: None });
        let queue = self.0.clone();
        Box::pin(async move {
            let store = |message: String| SchedulerError::EventStore {
                function: function.clone(),
                message,
            };
            match written {
                Ok((q, written)) => {
                    if let Some(written) = written {
                        queue
                            .committed(written)
                            .await
                            .map_err(|e| store(e.to_string()))?;
                    }
                    Ok(q)
                }
                Err(queue::AcceptError::Full { depth }) => {
                    Err(SchedulerError::EventQueueFull { function, depth })
                }
                Err(queue::AcceptError::Store(message)) => Err(store(message)),
            }
        })
    }
}

impl EventQueue {
    /// The queue's metrics in Prometheus's text format, gauges read now.
    pub fn metrics_text(&self) -> String {
        let depths = self.board.lock().depths();
        let now = queue::now_ms();
        self.metrics.depth.reset();
        self.metrics.oldest.reset();
        for (f, (depth, oldest)) in depths {
            self.metrics
                .depth
                .with_label_values(&[&f])
                .set(depth as i64);
            if let Some(c) = oldest {
                self.metrics
                    .oldest
                    .with_label_values(&[&f])
                    .set((now - c).max(0) / 1000);
            }
        }
        self.metrics.render()
    }

    /// A function's asynchronous events, in brief.
    pub fn counts(&self, function: &str) -> lampyr_api::events::AsyncCounts {
        let (pending, oldest) = self.depth(function);
        lampyr_api::events::AsyncCounts {
            pending,
            oldest_age_s: oldest.map(|d| d.as_secs_f64()),
            dead_letters: self.dead_count(function),
        }
    }
}

/// Shares the queue as the function service's event sink.
pub fn sink(queue: &Arc<EventQueue>) -> Arc<dyn EventSink> {
    Arc::new(Sink(queue.clone()))
}
