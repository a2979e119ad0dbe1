//! Timer triggers: each `[[triggers]]` table with `type = "timer"` is a
//! task that sleeps until its next tick and queues an event then, in
//! Function Compute's shape: `{"triggerTime", "triggerName", "payload"}`.
//!
//! * Every firing has the idempotency key `timer:NAME:TICK_MS` and is
//!   recorded with its tick: a tick is never fired twice, restarts and
//!   redeploys included.
//! * `catch_up = "one"`: at start, the most recent tick missed while the
//!   server was down (after the timer's last firing, and after it was
//!   first deployed) fires once; `"none"` skips missed ticks.
//! * `overlap = "skip"`: a tick whose previous firing has not finished is
//!   dropped, and counted (`lampyr_timer_ticks_total{outcome="skipped"}`).

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::future::BoxFuture;
use lampyr_api::events::{TimerFiring, TimerInfo};
use lampyr_api::{CatchUp, FunctionSpec, Overlap, TimerSpec, TriggerKind};
use lampyr_scheduler::NewEvent;
use lampyr_triggers::{Context, Trigger, TriggerError};
use parking_lot::Mutex;

use crate::queue::{rfc3339, Accept, EventQueue};

/// The timer trigger (see the module doc).
pub struct TimerTrigger {
    queue: Arc<EventQueue>,
    started: OnceLock<()>,
    /// Per function: its timers' tasks.
    tasks: Mutex<HashMap<String, Vec<tokio::task::JoinHandle<()>>>>,
}

impl TimerTrigger {
    pub fn new(queue: Arc<EventQueue>) -> TimerTrigger {
        TimerTrigger {
            queue,
            started: OnceLock::new(),
            tasks: Mutex::new(HashMap::new()),
        }
    }

    fn disarm(&self, function: &str) {
        if let Some(tasks) = self.tasks.lock().remove(function) {
            for t in tasks {
                t.abort();
            }
        }
    }

    fn arm(&self, spec: &FunctionSpec) {
        let tasks: Vec<_> = spec
            .timers()
            .filter(|t| t.enabled)
            .map(|t| tokio::spawn(run_timer(self.queue.clone(), spec.name.clone(), t.clone())))
            .collect();
        if !tasks.is_empty() {
            self.tasks.lock().insert(spec.name.clone(), tasks);
        }
    }
}

impl Trigger for TimerTrigger {
    fn kind(&self) -> TriggerKind {
        TriggerKind::Timer
    }

    fn start(&self, ctx: Context) -> Result<(), TriggerError> {
        let _ = self.started.set(());
        for spec in &ctx.functions {
            self.arm(spec);
        }
        Ok(())
    }

    fn deployed(&self, spec: &Arc<FunctionSpec>) {
        if self.started.get().is_none() {
            return;
        }
        // A new version's timers replace the old ones; the ticks they
        // fired are remembered by name.
        self.disarm(&spec.name);
        self.arm(spec);
    }

    fn deleted(&self, name: &str) {
        self.disarm(name);
    }

    fn shutdown(&self) -> BoxFuture<'static, ()> {
        let names: Vec<String> = self.tasks.lock().keys().cloned().collect();
        for n in names {
            self.disarm(&n);
        }
        Box::pin(async {})
    }
}

fn ms_of(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// One timer: catch up, then fire at every tick.
async fn run_timer(queue: Arc<EventQueue>, function: String, timer: TimerSpec) {
    let schedule = timer.schedule();
    // Every firing written so far is in the database before it is read.
    queue.settled().await;
    let state = queue.timer_state(&function, &timer.name).ok().flatten();
    if state.is_none() {
        queue.timer_seen(&function, &timer.name);
    }
    let now = SystemTime::now();
    if timer.catch_up == CatchUp::One {
        if let (Some(st), Some(missed)) = (state, schedule.last_at_or_before(now)) {
            let missed_ms = ms_of(missed);
            if missed_ms > st.last_tick_ms.unwrap_or(st.first_seen_ms)
                && missed_ms >= st.first_seen_ms
            {
                fire(&queue, &function, &timer, missed_ms, "caught_up").await;
            }
        }
    }
    let mut from = now;
    loop {
        let Some(next) = schedule.next_after(from) else {
            tracing::warn!(function = %function, timer = %timer.name, "the timer has no next tick");
            return;
        };
        if let Ok(wait) = next.duration_since(SystemTime::now()) {
            tokio::time::sleep(wait).await;
        }
        // The clock may have been stepped back: wait for the tick itself.
        while SystemTime::now() < next {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        fire(&queue, &function, &timer, ms_of(next), "fired").await;
        from = next;
    }
}

/// Queues the firing of `timer` for tick `tick_ms`.
async fn fire(queue: &EventQueue, function: &str, timer: &TimerSpec, tick_ms: i64, outcome: &str) {
    if timer.overlap == Overlap::Skip && queue.timer_busy(function, &timer.name) {
        queue.metrics.tick(function, &timer.name, "skipped");
        tracing::info!(
            function,
            timer = %timer.name,
            tick = %rfc3339(tick_ms),
            "timer tick skipped: the previous firing has not finished (overlap = \"skip\")"
        );
        return;
    }
    let event = serde_json::json!({
        "triggerTime": lampyr_store::rfc3339(UNIX_EPOCH + Duration::from_millis(tick_ms.max(0) as u64)),
        "triggerName": timer.name,
        "payload": timer.payload,
    });
    let accept = Accept {
        event: NewEvent {
            function: function.to_string(),
            request_id: lampyr_scheduler::new_request_id(),
            trigger: TriggerKind::Timer,
            payload: serde_json::to_vec(&event).expect("an event serialises"),
            idempotency_key: Some(format!("timer:{}:{tick_ms}", timer.name)),
        },
        tick: Some((timer.name.clone(), tick_ms)),
    };
    match queue.accept(accept).await {
        Ok(q) if !q.duplicate => queue.metrics.tick(function, &timer.name, outcome),
        Ok(_) => {}
        Err(e) => tracing::warn!(function, timer = %timer.name, "timer tick not queued: {e:?}"),
    }
}

/// What `lampyr info` shows of a function's timers.
pub fn timer_info(queue: &EventQueue, spec: &FunctionSpec) -> Vec<TimerInfo> {
    let now = SystemTime::now();
    spec.timers()
        .map(|t| {
            let next = if t.enabled {
                t.schedule()
                    .upcoming(now, 3)
                    .into_iter()
                    .map(lampyr_store::rfc3339)
                    .collect()
            } else {
                Vec::new()
            };
            let last = queue
                .timer_state(&spec.name, &t.name)
                .ok()
                .flatten()
                .and_then(|st| Some((st.last_tick_ms?, st.last_request_id?)))
                .map(|(tick, request_id)| TimerFiring {
                    scheduled_at: rfc3339(tick),
                    state: queue
                        .read_one(&request_id, false)
                        .ok()
                        .flatten()
                        .map(|e| e.state),
                    request_id,
                });
            TimerInfo {
                name: t.name.clone(),
                cron: t.cron.clone(),
                timezone: t.timezone.clone(),
                enabled: t.enabled,
                next,
                last,
            }
        })
        .collect()
}
