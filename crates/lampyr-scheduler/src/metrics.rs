//! Prometheus metrics (`GET /metrics`), in the text exposition format.
//!
//! Counters and histograms are updated by the record writer thread, off the
//! request path; the instance and queue gauges are read from the scheduler's
//! state when the metrics are scraped.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Latency buckets in seconds, from 100 µs to 60 s.
const BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0,
];

pub(crate) struct Metrics {
    registry: Registry,
    pub(crate) invocations: IntCounterVec,
    pub(crate) duration: HistogramVec,
    pub(crate) phases: HistogramVec,
    pub(crate) throttles: IntCounterVec,
    pub(crate) timeouts: IntCounterVec,
    pub(crate) oom_kills: IntCounterVec,
    pub(crate) gb_seconds: prometheus::CounterVec,
    pub(crate) instances: IntGaugeVec,
    pub(crate) queue_depth: IntGaugeVec,
    pub(crate) pooled: IntGaugeVec,
    pub(crate) reserved: IntGaugeVec,
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
            invocations: reg!(IntCounterVec::new(
                Opts::new(
                    "lampyr_invocations_total",
                    "Invocations by function, status and start kind."
                ),
                &["function", "status", "start"]
            )),
            duration: reg!(HistogramVec::new(
                HistogramOpts::new(
                    "lampyr_invocation_duration_seconds",
                    "Handler execution time."
                )
                .buckets(BUCKETS.to_vec()),
                &["function"]
            )),
            phases: reg!(HistogramVec::new(
                HistogramOpts::new(
                    "lampyr_cold_start_phase_seconds",
                    "Duration of each cold-start phase (queue, code, sandbox, runtime, init)."
                )
                .buckets(BUCKETS.to_vec()),
                &["function", "phase"]
            )),
            throttles: reg!(IntCounterVec::new(
                Opts::new(
                    "lampyr_throttles_total",
                    "Requests refused with 429 because the function was at its limits."
                ),
                &["function"]
            )),
            timeouts: reg!(IntCounterVec::new(
                Opts::new(
                    "lampyr_timeouts_total",
                    "Invocations that ran past the function's timeout."
                ),
                &["function"]
            )),
            oom_kills: reg!(IntCounterVec::new(
                Opts::new(
                    "lampyr_oom_kills_total",
                    "Invocations failed because their instance ran out of memory."
                ),
                &["function"]
            )),
            gb_seconds: reg!(prometheus::CounterVec::new(
                Opts::new(
                    "lampyr_billed_gb_seconds_total",
                    "Billed compute: memory (GB) times billed duration (s)."
                ),
                &["function"]
            )),
            instances: reg!(IntGaugeVec::new(
                Opts::new(
                    "lampyr_instances",
                    "Instances by function and state (starting, idle, busy, draining, stopping)."
                ),
                &["function", "state"]
            )),
            queue_depth: reg!(IntGaugeVec::new(
                Opts::new(
                    "lampyr_queue_depth",
                    "Requests waiting for a free instance."
                ),
                &["function"]
            )),
            pooled: reg!(IntGaugeVec::new(
                Opts::new(
                    "lampyr_pooled_instances",
                    "Pre-started generic instances waiting in a runtime pool."
                ),
                &["runtime"]
            )),
            reserved: reg!(IntGaugeVec::new(
                Opts::new(
                    "lampyr_reserved_instances",
                    "Reserved instances (min_instances) configured per function."
                ),
                &["function"]
            )),
            registry,
        }
    }

    /// The metrics in Prometheus's text format.
    pub(crate) fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding cannot fail");
        String::from_utf8(buf).expect("text format is UTF-8")
    }
}

impl crate::Scheduler {
    /// The Prometheus metrics, with the gauges read now.
    pub fn metrics_text(&self) -> String {
        let m = &self.inner.metrics;
        let states: Vec<(String, std::sync::Arc<crate::state::FunctionState>)> = self
            .inner
            .functions
            .read()
            .iter()
            .map(|(n, s)| (n.clone(), s.clone()))
            .collect();
        for (name, state) in &states {
            let name = name.as_str();
            let c = self.instance_counts(name);
            for (st, n) in [
                ("starting", c.starting),
                ("idle", c.idle),
                ("busy", c.busy),
                ("draining", c.draining),
                ("stopping", c.stopping),
            ] {
                m.instances.with_label_values(&[name, st]).set(n as i64);
            }
            m.queue_depth
                .with_label_values(&[name])
                .set(c.queued as i64);
            m.reserved
                .with_label_values(&[name])
                .set(i64::from(state.reserve()));
        }
        for p in self.inner.pools.status() {
            m.pooled
                .with_label_values(&[&p.runtime])
                .set(p.ready as i64);
        }
        m.render()
    }
}
