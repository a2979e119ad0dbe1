//! Invocation records, off the request path.
//!
//! The request path hands a finished invocation to [`Recorder::record`] (a
//! channel send). A writer thread then, in batches: reads the instance's
//! peak memory from its cgroup, updates the Prometheus metrics, and stores
//! the records in the database (from which the log rebuilds each
//! invocation's `START`, `END` and `REPORT` lines). It also prunes old
//! records.

use std::collections::HashMap;
use std::sync::mpsc::{channel, Sender, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use lampyr_api::{InvocationRecord, Percentiles, StartKind, Status};
use lampyr_sandbox::SandboxControl;
use lampyr_store::{RecordStore, Retention};

use crate::logs::LogHub;
use crate::metrics::Metrics;

/// A finished invocation waiting to be written.
pub(crate) struct Draft {
    pub(crate) record: InvocationRecord,
    pub(crate) started_at: SystemTime,
    /// For the instance's peak memory, read by the writer.
    pub(crate) instance: Option<Arc<SandboxControl>>,
    /// Whether the invocation reached an instance: then its duration is
    /// measured and it has framing log lines (not for requests that
    /// never reached an instance).
    pub(crate) report: bool,
}

/// How often the writer looks for finished invocations.
const POLL: Duration = Duration::from_millis(20);
/// A poll this much later than due means the writer is not getting CPU
/// time at idle priority: it runs at normal weight until it catches up.
const BEHIND: Duration = Duration::from_millis(200);
/// The most records written in one transaction.
const MAX_BATCH: usize = 8192;

/// Whether the writer is behind after a poll that slept `slept` and took
/// `drained` records: the CPUs were too busy to run it for a while, or more
/// records wait than one batch takes.
fn is_behind(slept: Duration, drained: usize) -> bool {
    slept > POLL + BEHIND || drained >= MAX_BATCH
}

#[derive(Clone)]
pub(crate) struct Recorder {
    tx: Sender<Draft>,
}

impl Recorder {
    pub(crate) fn start(
        store: Arc<RecordStore>,
        retention: Retention,
        logs: LogHub,
        metrics: Arc<Metrics>,
    ) -> Recorder {
        let (tx, rx) = channel::<Draft>();
        std::thread::Builder::new()
            .name("lampyr-records".into())
            .spawn(move || {
                // Records are bookkeeping: written with CPU time the request
                // path leaves over, at normal weight only while behind.
                let can_idle = lampyr_sandbox::idle_scheduling().is_ok();
                let mut behind = false;
                let mut last_prune = Instant::now();
                let mut batch = Vec::with_capacity(256);
                loop {
                    // Poll rather than sleep on the channel: senders never
                    // have to wake this thread, and each poll writes one
                    // batch in one transaction.
                    let polled = Instant::now();
                    std::thread::sleep(POLL);
                    let slept = polled.elapsed();
                    loop {
                        match rx.try_recv() {
                            Ok(d) => batch.push(d),
                            Err(TryRecvError::Empty) => break,
                            Err(TryRecvError::Disconnected) => return,
                        }
                        if batch.len() >= MAX_BATCH {
                            break;
                        }
                    }
                    let now_behind = is_behind(slept, batch.len());
                    if can_idle && now_behind != behind {
                        let switched = if now_behind {
                            lampyr_sandbox::batch_scheduling()
                        } else {
                            lampyr_sandbox::idle_scheduling()
                        };
                        if switched.is_ok() {
                            behind = now_behind;
                        }
                    }
                    if !batch.is_empty() {
                        // The invocations' output lines were queued before
                        // their records: they are stored first, so a log
                        // read that shows an invocation's END and REPORT
                        // shows what it printed too.
                        logs.written_up_to_now(Duration::from_millis(100));
                        // One cgroup read per instance and batch, not per record.
                        let mut peaks: HashMap<*const SandboxControl, Option<u64>> = HashMap::new();
                        let mut reported = Vec::with_capacity(batch.len());
                        let records: Vec<InvocationRecord> = batch
                            .drain(..)
                            .map(|d| {
                                let peak = d.instance.as_ref().and_then(|c| {
                                    *peaks
                                        .entry(Arc::as_ptr(c))
                                        .or_insert_with(|| c.memory_peak())
                                });
                                reported.push(d.report);
                                complete(d, peak)
                            })
                            .collect();
                        if let Err(e) = store.insert(&records) {
                            tracing::warn!(
                                "cannot store {} invocation records: {e}",
                                records.len()
                            );
                        }
                        // After the insert: a follower that subscribes now
                        // reads these records' lines in its backlog, or gets
                        // them live; not neither.
                        publish(&records, &reported, &logs, &metrics);
                    }
                    if last_prune.elapsed() > Duration::from_secs(5) {
                        last_prune = Instant::now();
                        match store.prune(retention, SystemTime::now()) {
                            Ok(n) if n > 0 => {
                                tracing::debug!(pruned = n, "old invocation records removed")
                            }
                            Ok(_) => {}
                            Err(e) => tracing::warn!("cannot prune invocation records: {e}"),
                        }
                    }
                }
            })
            .expect("spawn the record writer thread");
        Recorder { tx }
    }

    pub(crate) fn record(&self, d: Draft) {
        let _ = self.tx.send(d);
    }
}

/// Completes one record: its start time and the instance's peak memory.
fn complete(d: Draft, peak: Option<u64>) -> InvocationRecord {
    let mut r = d.record;
    r.start_time = lampyr_store::rfc3339(d.started_at);
    if r.max_memory_used_mb.is_none() {
        r.max_memory_used_mb = peak.map(|b| (b as f64 / (1u64 << 20) as f64 * 10.0).round() / 10.0);
    }
    r
}

/// Publishes a batch of records' metrics (each series looked up once per
/// batch, not per record) and, to followers of the live log, their
/// framing lines. `reported[i]`: record `i` reached an instance.
fn publish(records: &[InvocationRecord], reported: &[bool], logs: &LogHub, metrics: &Metrics) {
    let mut counts: HashMap<(&str, &str, &str), u64> = HashMap::new();
    let mut durations: HashMap<&str, (prometheus::Histogram, f64)> = HashMap::new();
    let following = logs.following();
    for (r, &report) in records.iter().zip(reported) {
        let f = r.function.as_str();
        *counts
            .entry((f, r.status.as_str(), r.start.as_str()))
            .or_default() += 1;
        match r.status {
            Status::Throttled => metrics.throttles.with_label_values(&[f]).inc(),
            Status::Timeout => metrics.timeouts.with_label_values(&[f]).inc(),
            Status::OutOfMemory => metrics.oom_kills.with_label_values(&[f]).inc(),
            _ => {}
        }
        if !report {
            continue;
        }
        let (duration, gb_seconds) = durations
            .entry(f)
            .or_insert_with(|| (metrics.duration.with_label_values(&[f]), 0.0));
        duration.observe(r.duration_ms / 1000.0);
        *gb_seconds += r.gb_seconds;
        if r.start != StartKind::Warm {
            let p = &r.phases;
            for (phase, v) in [
                ("queue", Some(p.queue)),
                ("code", p.code),
                ("sandbox", p.sandbox),
                ("runtime", p.runtime),
                ("init", p.init),
            ] {
                if let Some(v) = v {
                    metrics
                        .phases
                        .with_label_values(&[f, phase])
                        .observe(v / 1000.0);
                }
            }
        }
        if following {
            logs.announce_end(r);
        }
    }
    for ((f, status, start), n) in counts {
        metrics
            .invocations
            .with_label_values(&[f, status, start])
            .inc_by(n);
    }
    for (f, (_, gb_seconds)) in durations {
        metrics
            .gb_seconds
            .with_label_values(&[f])
            .inc_by(gb_seconds);
    }
}

/// Nearest-rank percentiles of `values` (milliseconds).
pub fn percentiles(values: &mut [f64]) -> Percentiles {
    if values.is_empty() {
        return Percentiles::default();
    }
    values.sort_by(|a, b| a.total_cmp(b));
    let at = |p: f64| {
        let rank = ((p / 100.0) * values.len() as f64).ceil().max(1.0) as usize;
        values[rank.min(values.len()) - 1]
    };
    Percentiles {
        count: values.len() as u64,
        p50: at(50.0),
        p95: at(95.0),
        p99: at(99.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_writer_is_behind_when_late_or_full() {
        assert!(!is_behind(POLL, 0));
        assert!(!is_behind(POLL + BEHIND / 2, MAX_BATCH - 1));
        assert!(is_behind(POLL + BEHIND + Duration::from_millis(1), 0));
        assert!(is_behind(POLL, MAX_BATCH));
    }

    #[test]
    fn nearest_rank() {
        let mut v: Vec<f64> = (1..=100).map(f64::from).collect();
        let p = percentiles(&mut v);
        assert_eq!((p.count, p.p50, p.p95, p.p99), (100, 50.0, 95.0, 99.0));
        let mut one = vec![7.0];
        assert_eq!(percentiles(&mut one).p99, 7.0);
        assert_eq!(percentiles(&mut []).count, 0);
    }
}
