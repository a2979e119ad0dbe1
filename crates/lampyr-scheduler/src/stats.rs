//! Summaries of invocation records: `lampyr stats` and the dashboard's
//! time series.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use lampyr_api::{FunctionStats, InvocationRecord, Series, SeriesPoint, StartKind, Status};
use lampyr_store::rfc3339;

use crate::records::percentiles;

fn started(r: &InvocationRecord) -> SystemTime {
    humantime::parse_rfc3339(&r.start_time).unwrap_or(SystemTime::UNIX_EPOCH)
}

fn is_error(r: &InvocationRecord) -> bool {
    r.status != Status::Ok
}

/// A function's activity for the function list, from its records in a
/// window (newest first) and its current initialisation failure, if any.
pub fn activity(
    records: &[InvocationRecord],
    init_failure: Option<String>,
) -> lampyr_api::Activity {
    let s = totals("", SystemTime::UNIX_EPOCH, records);
    let latest: Vec<&InvocationRecord> = records.iter().take(3).collect();
    let failing =
        init_failure.is_some() || (!latest.is_empty() && latest.iter().all(|r| is_error(r)));
    let failure = init_failure.or_else(|| {
        records
            .iter()
            .find(|r| is_error(r))
            .filter(|_| failing)
            .map(|r| r.error_type.clone().unwrap_or_else(|| r.status.to_string()))
    });
    lampyr_api::Activity {
        invocations: s.count,
        errors: s.errors,
        error_rate: s.error_rate,
        p99_ms: (s.duration.count > 0).then_some(s.duration.p99),
        last_invocation: records.first().map(|r| r.start_time.clone()),
        failing,
        failure,
    }
}

/// Counts, rates and percentiles over `records` (any order), and split by
/// version.
pub fn stats(function: &str, since: SystemTime, records: &[InvocationRecord]) -> FunctionStats {
    let mut versions: BTreeMap<u64, Vec<InvocationRecord>> = BTreeMap::new();
    for r in records {
        versions.entry(r.version).or_default().push(r.clone());
    }
    let by_version = versions
        .into_iter()
        .map(|(v, rs)| {
            let s = totals(function, since, &rs);
            (
                v,
                lampyr_api::VersionStats {
                    count: s.count,
                    errors: s.errors,
                    error_rate: s.error_rate,
                    cold_starts: s.cold_starts,
                    cold_start_rate: s.cold_start_rate,
                    duration: s.duration,
                },
            )
        })
        .collect();
    FunctionStats {
        by_version,
        ..totals(function, since, records)
    }
}

/// [`stats`] over all of `records`, not split.
fn totals(function: &str, since: SystemTime, records: &[InvocationRecord]) -> FunctionStats {
    let count = records.len() as u64;
    let errors = records.iter().filter(|r| is_error(r)).count() as u64;
    let mut by_status = BTreeMap::new();
    let mut by_start = BTreeMap::new();
    for r in records {
        *by_status.entry(r.status.to_string()).or_insert(0) += 1;
        *by_start.entry(r.start.to_string()).or_insert(0) += 1;
    }
    let ran: Vec<&InvocationRecord> = records
        .iter()
        .filter(|r| r.status != Status::Throttled)
        .collect();
    let cold_starts = ran.iter().filter(|r| r.start != StartKind::Warm).count() as u64;
    let mut durations: Vec<f64> = ran.iter().map(|r| r.duration_ms).collect();
    let mut phases = BTreeMap::new();
    let cold: Vec<&&InvocationRecord> = ran.iter().filter(|r| r.start != StartKind::Warm).collect();
    for name in ["queue", "code", "sandbox", "runtime", "init", "exec"] {
        let mut v: Vec<f64> = cold
            .iter()
            .filter_map(|r| match name {
                "queue" => Some(r.phases.queue),
                "code" => r.phases.code,
                "sandbox" => r.phases.sandbox,
                "runtime" => r.phases.runtime,
                "init" => r.phases.init,
                _ => Some(r.phases.exec),
            })
            .collect();
        phases.insert(name.to_string(), percentiles(&mut v));
    }
    let ratio = |n: u64, d: usize| if d == 0 { 0.0 } else { n as f64 / d as f64 };
    FunctionStats {
        function: function.to_string(),
        since: rfc3339(since),
        count,
        errors,
        error_rate: ratio(errors, records.len()),
        cold_starts,
        cold_start_rate: ratio(cold_starts, ran.len()),
        by_status,
        by_start,
        duration: percentiles(&mut durations),
        phases,
        gb_seconds: records.iter().map(|r| r.gb_seconds).sum(),
        by_version: BTreeMap::new(),
    }
}

/// Buckets of `step` from `since` to `until`: counts and cold/warm latency
/// percentiles per bucket, and the last instance-count sample in each.
pub fn series(
    function: &str,
    since: SystemTime,
    until: SystemTime,
    step: Duration,
    records: &[InvocationRecord],
    samples: &[(SystemTime, u64)],
) -> Series {
    let step = step.max(Duration::from_secs(1));
    let span = until.duration_since(since).unwrap_or_default();
    let n = ((span.as_secs_f64() / step.as_secs_f64()).ceil() as usize).clamp(1, 10_000);
    struct Bucket {
        invocations: u64,
        errors: u64,
        cold: u64,
        warm: Vec<f64>,
        cold_lat: Vec<f64>,
        instances: Option<u64>,
    }
    let mut buckets: Vec<Bucket> = (0..n)
        .map(|_| Bucket {
            invocations: 0,
            errors: 0,
            cold: 0,
            warm: Vec::new(),
            cold_lat: Vec::new(),
            instances: None,
        })
        .collect();
    let index = |t: SystemTime| -> Option<usize> {
        let d = t.duration_since(since).ok()?;
        let i = (d.as_secs_f64() / step.as_secs_f64()) as usize;
        (i < n).then_some(i)
    };
    for r in records {
        let Some(i) = index(started(r)) else { continue };
        let b = &mut buckets[i];
        b.invocations += 1;
        if is_error(r) {
            b.errors += 1;
        }
        if r.status == Status::Throttled {
            continue;
        }
        let total = r.phases.queue
            + r.phases.code.unwrap_or(0.0)
            + r.phases.sandbox.unwrap_or(0.0)
            + r.phases.runtime.unwrap_or(0.0)
            + r.phases.init.unwrap_or(0.0)
            + r.phases.exec;
        if r.start == StartKind::Warm {
            b.warm.push(total);
        } else {
            b.cold += 1;
            b.cold_lat.push(total);
        }
    }
    for (t, count) in samples {
        if let Some(i) = index(*t) {
            buckets[i].instances = Some(*count);
        }
    }
    let points = buckets
        .into_iter()
        .enumerate()
        .map(|(i, mut b)| {
            let w = (!b.warm.is_empty()).then(|| percentiles(&mut b.warm));
            let c = (!b.cold_lat.is_empty()).then(|| percentiles(&mut b.cold_lat));
            SeriesPoint {
                t: rfc3339(since + step * i as u32),
                invocations: b.invocations,
                errors: b.errors,
                cold: b.cold,
                warm_p50_ms: w.as_ref().map(|p| p.p50),
                warm_p99_ms: w.as_ref().map(|p| p.p99),
                cold_p50_ms: c.as_ref().map(|p| p.p50),
                cold_p99_ms: c.as_ref().map(|p| p.p99),
                instances: b.instances,
            }
        })
        .collect();
    Series {
        function: function.to_string(),
        step_seconds: step.as_secs(),
        points,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lampyr_api::PhaseTimes;

    fn rec(at: SystemTime, start: &str, status: &str, exec: f64) -> InvocationRecord {
        InvocationRecord {
            request_id: "r".into(),
            function: "f".into(),
            version: 1,
            trigger: lampyr_api::TriggerKind::Http,
            start_time: rfc3339(at),
            start: start.parse().unwrap(),
            phases: PhaseTimes {
                queue: 0.0,
                init: (start != "warm").then_some(2.0),
                exec,
                ..Default::default()
            },
            duration_ms: exec,
            billed_ms: exec.ceil() as u64,
            gb_seconds: 0.001,
            memory_mb: 128,
            max_memory_used_mb: None,
            status: status.parse().unwrap(),
            error_type: None,
            http_status: Some(200),
            response_bytes: 1,
            instance: None,
            attempt: None,
            stream_bytes: None,
        }
    }

    #[test]
    fn stats_count_rates_and_phases() {
        let t = SystemTime::now();
        let recs = vec![
            rec(t, "cold", "ok", 5.0),
            rec(t, "warm", "ok", 1.0),
            rec(t, "warm", "error", 2.0),
            rec(t, "warm", "throttled", 0.0),
        ];
        let s = stats("f", t, &recs);
        assert_eq!((s.count, s.errors, s.cold_starts), (4, 2, 1));
        assert!((s.error_rate - 0.5).abs() < 1e-9);
        assert!((s.cold_start_rate - 1.0 / 3.0).abs() < 1e-9);
        assert_eq!(s.phases["init"].p50, 2.0);
        assert_eq!(s.duration.count, 3);
        assert_eq!(s.by_status["throttled"], 1);
    }

    #[test]
    fn series_buckets_by_step() {
        let t0 = SystemTime::now() - Duration::from_secs(180);
        let recs = vec![
            rec(t0 + Duration::from_secs(10), "cold", "ok", 9.0),
            rec(t0 + Duration::from_secs(70), "warm", "ok", 1.0),
            rec(t0 + Duration::from_secs(75), "warm", "ok", 3.0),
        ];
        let samples = vec![
            (t0 + Duration::from_secs(65), 1),
            (t0 + Duration::from_secs(130), 0),
        ];
        let s = series(
            "f",
            t0,
            t0 + Duration::from_secs(180),
            Duration::from_secs(60),
            &recs,
            &samples,
        );
        assert_eq!(s.points.len(), 3);
        assert_eq!((s.points[0].invocations, s.points[0].cold), (1, 1));
        assert_eq!(s.points[0].cold_p50_ms, Some(11.0));
        assert_eq!(s.points[1].warm_p99_ms, Some(3.0));
        assert_eq!(s.points[1].instances, Some(1));
        assert_eq!(s.points[2].instances, Some(0));
        assert_eq!(s.points[2].invocations, 0);
    }
}
