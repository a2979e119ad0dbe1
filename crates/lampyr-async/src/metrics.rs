//! The queue's Prometheus metrics, rendered after the function service's
//! on `GET /metrics`.

use prometheus::{Encoder, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder};

pub(crate) struct Metrics {
    registry: Registry,
    events: IntCounterVec,
    pub(crate) depth: IntGaugeVec,
    pub(crate) oldest: IntGaugeVec,
    pub(crate) timer_ticks: IntCounterVec,
}

impl Metrics {
    pub(crate) fn new() -> Metrics {
        let registry = Registry::new();
        macro_rules! reg {
            ($m:expr) => {{
                let m = $m.expect("valid metric");
                registry
                    .register(Box::new(m.clone()))
                    .expect("unique metric");
                m
            }};
        }
        Metrics {
            events: reg!(IntCounterVec::new(
                Opts::new(
                    "lampyr_async_events_total",
                    "Asynchronous events by function and what happened: accepted, succeeded, retried, throttled, dead_lettered."
                ),
                &["function", "outcome"]
            )),
            depth: reg!(IntGaugeVec::new(
                Opts::new(
                    "lampyr_async_queue_depth",
                    "Asynchronous events not finished (queued, waiting for a retry, running) per function."
                ),
                &["function"]
            )),
            oldest: reg!(IntGaugeVec::new(
                Opts::new(
                    "lampyr_async_oldest_event_age_seconds",
                    "Age of the oldest unfinished asynchronous event per function."
                ),
                &["function"]
            )),
            timer_ticks: reg!(IntCounterVec::new(
                Opts::new(
                    "lampyr_timer_ticks_total",
                    "Timer ticks by function, timer and what happened: fired, skipped (overlap = \"skip\"), caught_up."
                ),
                &["function", "timer", "outcome"]
            )),
            registry,
        }
    }

    pub(crate) fn accepted(&self, function: &str) {
        self.count(function, "accepted");
    }

    pub(crate) fn count(&self, function: &str, outcome: &str) {
        self.events.with_label_values(&[function, outcome]).inc();
    }

    pub(crate) fn tick(&self, function: &str, timer: &str, outcome: &str) {
        self.timer_ticks
            .with_label_values(&[function, timer, outcome])
            .inc();
    }

    pub(crate) fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding cannot fail");
        String::from_utf8(buf).expect("text format is UTF-8")
    }
}
