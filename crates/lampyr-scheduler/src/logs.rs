//! The log hub: every instance's output lines and lampyr's own messages flow
//! through one channel to a writer thread that appends them to the
//! function's log files, off the request path. Followers subscribe to a
//! broadcast of the same records.
//!
//! The lines that frame each invocation (`START`, `END`, `REPORT`) are not
//! stored: everything they say is in the invocation's record, so reads
//! rebuild them from the records and merge them in by time ([`merge`]).
//! Followers get them live ([`LogHub::announce`]), sent only while someone
//! follows. A function that prints nothing thus costs no log writes at all.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use lampyr_api::{InvocationRecord, LogRecord};
use lampyr_runtime::{LogBudget, LogLine, LogSender, Stream};
use lampyr_store::{rfc3339, LogQuery, LogStore, RecordQuery, RecordStore};
use parking_lot::Mutex;
use tokio::sync::broadcast;

/// How often the writer looks for new lines.
const POLL: std::time::Duration = std::time::Duration::from_millis(5);

#[derive(Clone)]
pub struct LogHub {
    tx: LogSender,
    store: Arc<Mutex<LogStore>>,
    records: Arc<RecordStore>,
    follow: broadcast::Sender<Arc<LogRecord>>,
    followers: Arc<AtomicUsize>,
    /// Rounds of the log writer: each takes the lines queued when it began
    /// (up to a batch of 4096) and has written them by its end.
    rounds: Arc<std::sync::atomic::AtomicU64>,
}

/// A subscription to the live log ([`LogHub::subscribe`]).
pub struct Follower {
    rx: broadcast::Receiver<Arc<LogRecord>>,
    followers: Arc<AtomicUsize>,
}

impl Follower {
    pub async fn recv(&mut self) -> Result<Arc<LogRecord>, broadcast::error::RecvError> {
        self.rx.recv().await
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.followers.fetch_sub(1, Ordering::Relaxed);
    }
}

impl LogHub {
    pub(crate) fn start(store: LogStore, records: Arc<RecordStore>, budget: LogBudget) -> LogHub {
        let (tx, mut rx) = lampyr_runtime::log_channel(budget);
        let store = Arc::new(Mutex::new(store));
        // Followers that fall this far behind skip lines (and are told).
        let (follow, _) = broadcast::channel(1024);
        let hub = LogHub {
            tx,
            store: store.clone(),
            records,
            follow: follow.clone(),
            followers: Arc::new(AtomicUsize::new(0)),
            rounds: Arc::new(std::sync::atomic::AtomicU64::new(0)),
        };
        let rounds = hub.rounds.clone();
        std::thread::Builder::new()
            .name("lampyr-logs".into())
            .spawn(move || {
                let _ = lampyr_sandbox::batch_scheduling();
                // The writer polls every few milliseconds instead of
                // sleeping on the channel: a sender then never has to wake
                // it, which keeps logging off the request path's CPU.
                let mut batch = Vec::with_capacity(1024);
                loop {
                    loop {
                        match rx.try_recv() {
                            Ok(line) => batch.push(line),
                            Err(false) => break,
                            Err(true) => return,
                        }
                        if batch.len() >= 4096 {
                            break;
                        }
                    }
                    if batch.is_empty() {
                        rounds.fetch_add(1, Ordering::Release);
                        std::thread::sleep(POLL);
                        continue;
                    }
                    let mut s = store.lock();
                    for line in batch.drain(..) {
                        let live_only = line.live_only;
                        let Some(rec) = to_record(line) else { continue };
                        if !live_only {
                            if let Err(e) = s.append(&rec) {
                                tracing::warn!(function = %rec.function, "cannot write function log: {e}");
                            }
                        }
                        let _ = follow.send(Arc::new(rec));
                    }
                    if let Err(e) = s.flush() {
                        tracing::warn!("cannot flush function logs: {e}");
                    }
                    drop(s);
                    rounds.fetch_add(1, Ordering::Release);
                }
            })
            .expect("spawn log writer thread");
        hub
    }

    /// Waits (up to `limit`) until the log writer has written every line
    /// queued before this call: two of its rounds have ended.
    pub fn written_up_to_now(&self, limit: std::time::Duration) {
        let start = self.rounds.load(Ordering::Acquire);
        let until = std::time::Instant::now() + limit;
        while self.rounds.load(Ordering::Acquire) < start + 2 && std::time::Instant::now() < until {
            std::thread::sleep(POLL / 4);
        }
    }

    /// The sender instances write their lines to.
    pub fn sender(&self) -> LogSender {
        self.tx.clone()
    }

    /// Records a line written by lampyr itself about an invocation.
    pub fn platform(
        &self,
        function: &str,
        version: u64,
        instance: &str,
        request_id: Option<&str>,
        level: &str,
        message: String,
    ) {
        let _ = self.tx.send(platform_line(
            SystemTime::now(),
            function,
            version,
            instance,
            request_id,
            level,
            message,
        ));
    }

    /// Reads a function's log: its stored lines and, rebuilt from the
    /// invocation records, the lines that frame each invocation.
    pub fn query(&self, function: &str, q: &LogQuery) -> std::io::Result<Vec<LogRecord>> {
        let (dir, keep) = {
            let mut s = self.store.lock();
            s.flush()?;
            (s.dir().to_path_buf(), s.limits().keep)
        };
        let lines = LogStore::read(&dir, keep, function, q)?;
        let mut records: Vec<InvocationRecord> = match &q.request_id {
            Some(id) => self
                .records
                .get(id)
                .map_err(std::io::Error::other)?
                .filter(|r| r.function == function)
                .into_iter()
                .collect(),
            None => self
                .records
                .list(
                    function,
                    &RecordQuery {
                        // Each of these records has framing lines, the last
                        // two at its end: the newest `tail` of them hold the
                        // framing lines among the newest `tail` lines, but
                        // for an invocation that outlasted `tail` later ones.
                        limit: if q.tail == 0 { usize::MAX } else { q.tail },
                        // An invocation that started before `since` may end
                        // after it; `merge` filters the lines by time.
                        since: q
                            .since
                            .as_deref()
                            .and_then(parse_ts)
                            .map(|t| t.checked_sub(LONGEST).unwrap_or(t)),
                        status: None,
                        ran: true,
                    },
                )
                .map_err(std::io::Error::other)?,
        };
        if let Some(v) = q.version {
            records.retain(|r| r.version == v);
        }
        Ok(merge(lines, &records, q))
    }

    /// Records as they are written, for `logs --follow`.
    pub fn subscribe(&self) -> Follower {
        self.followers.fetch_add(1, Ordering::Relaxed);
        Follower {
            rx: self.follow.subscribe(),
            followers: self.followers.clone(),
        }
    }

    /// Whether anyone follows the live log.
    pub(crate) fn following(&self) -> bool {
        self.followers.load(Ordering::Relaxed) > 0
    }

    /// Sends a framing line to followers only (reads rebuild it from the
    /// invocation's record), through the writer, behind the lines already
    /// sent to it. Callers check [`LogHub::following`] first.
    pub(crate) fn announce(
        &self,
        at: SystemTime,
        function: &str,
        version: u64,
        instance: &str,
        request_id: &str,
        message: String,
    ) {
        let line = platform_line(
            at,
            function,
            version,
            instance,
            Some(request_id),
            "INFO",
            message,
        );
        let _ = self.tx.send(LogLine {
            live_only: true,
            ..line
        });
    }

    /// Sends an invocation's END and REPORT to followers (see `announce`).
    pub(crate) fn announce_end(&self, r: &InvocationRecord) {
        let Some((_, ended)) = handler_span(r) else {
            return;
        };
        for kind in [Frame::End, Frame::Report] {
            self.announce(
                ended,
                &r.function,
                r.version,
                r.instance.as_deref().unwrap_or_default(),
                &r.request_id,
                frame_message(r, kind),
            );
        }
    }

    pub(crate) fn remove(&self, function: &str) {
        self.store.lock().remove(function);
    }
}

fn to_record(line: LogLine) -> Option<LogRecord> {
    let Some((function, version)) = line.function else {
        // Output of a runtime not yet specialised: only lampyr's own log sees it.
        tracing::debug!(instance = %line.instance, "runtime output before load: {}", line.message);
        return None;
    };
    Some(LogRecord {
        ts: rfc3339(line.ts),
        function: function.to_string(),
        version,
        request_id: line.request_id,
        instance: line.instance.to_string(),
        stream: line.stream.as_str().to_string(),
        level: line.level,
        message: line.message,
    })
}

/// A line lampyr writes about an invocation, stored.
fn platform_line(
    ts: SystemTime,
    function: &str,
    version: u64,
    instance: &str,
    request_id: Option<&str>,
    level: &str,
    message: String,
) -> LogLine {
    LogLine {
        ts,
        function: Some((function.into(), version)),
        instance: instance.into(),
        request_id: request_id.map(str::to_string),
        stream: Stream::Platform,
        level: Some(level.to_string()),
        message,
        live_only: false,
    }
}

/// The longest an invocation's lines can trail its start: waiting in the
/// queue, initialisation and the handler, each at most the longest timeout.
const LONGEST: Duration = Duration::from_secs(3 * lampyr_api::manifest::MAX_TIMEOUT.as_secs());

fn parse_ts(s: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339(s).ok()
}

fn ms(d: f64) -> Duration {
    Duration::from_secs_f64(d.max(0.0) / 1000.0)
}

/// The lines that frame an invocation: `START` when its handler began, `END`
/// and `REPORT` when it finished. Requests that never reached an instance
/// (throttled, or their instance failed to start) have none. The values
/// order them among the invocation's own lines (1) at the same time.
#[derive(Clone, Copy)]
enum Frame {
    Start = 0,
    End = 2,
    Report = 3,
}

/// The message of an invocation's START line.
pub(crate) fn start_message(request_id: &str, version: u64) -> String {
    format!("START RequestId: {request_id} Version: {version}")
}

fn frame_message(r: &InvocationRecord, kind: Frame) -> String {
    match kind {
        Frame::Start => start_message(&r.request_id, r.version),
        Frame::End => format!("END RequestId: {}", r.request_id),
        Frame::Report => {
            let p = &r.phases;
            let mut m = format!(
                "REPORT RequestId: {}\tDuration: {:.2} ms\tBilled Duration: {} ms\tMemory Size: {} MB",
                r.request_id, r.duration_ms, r.billed_ms, r.memory_mb
            );
            if let Some(used) = r.max_memory_used_mb {
                m.push_str(&format!("\tMax Memory Used: {} MB", used.ceil() as u64));
            }
            let init: f64 = [p.sandbox, p.runtime, p.init].iter().flatten().sum();
            if r.start != lampyr_api::StartKind::Warm && init > 0.0 {
                m.push_str(&format!("\tInit Duration: {init:.2} ms"));
            }
            m
        }
    }
}

/// When an invocation's handler began and finished, from its record.
fn handler_span(r: &InvocationRecord) -> Option<(SystemTime, SystemTime)> {
    r.instance.as_ref()?;
    let started = parse_ts(&r.start_time)?;
    let p = &r.phases;
    let before: f64 = p.queue
        + [p.code, p.sandbox, p.runtime, p.init]
            .iter()
            .flatten()
            .sum::<f64>();
    let began = started + ms(before);
    Some((began, began + ms(p.exec)))
}

/// Merges stored lines with the framing lines rebuilt from `records`, in
/// time order: an invocation's START before its output and its END and
/// REPORT after it, even where the clock's millisecond steps would tie or
/// invert them. Then applies `since` and `tail`.
fn merge(lines: Vec<LogRecord>, records: &[InvocationRecord], q: &LogQuery) -> Vec<LogRecord> {
    // The first and last stored line of each invocation.
    let mut seen: HashMap<&str, (&str, &str)> = HashMap::new();
    for l in &lines {
        if let Some(id) = l.request_id.as_deref() {
            let e = seen.entry(id).or_insert((l.ts.as_str(), l.ts.as_str()));
            e.0 = e.0.min(l.ts.as_str());
            e.1 = e.1.max(l.ts.as_str());
        }
    }
    // (time, order within the same time, line)
    let mut framed: Vec<(String, u8, LogRecord)> = Vec::with_capacity(records.len() * 3);
    for r in records {
        let Some((began, ended)) = handler_span(r) else {
            continue;
        };
        let (mut start, mut end) = (rfc3339(began), rfc3339(ended));
        if let Some((first, last)) = seen.get(r.request_id.as_str()) {
            if *first < start.as_str() {
                start = first.to_string();
            }
            if *last > end.as_str() {
                end = last.to_string();
            }
        }
        for (kind, ts) in [
            (Frame::Start, &start),
            (Frame::End, &end),
            (Frame::Report, &end),
        ] {
            let line = LogRecord {
                ts: ts.clone(),
                function: r.function.clone(),
                version: r.version,
                request_id: Some(r.request_id.clone()),
                instance: r.instance.clone().unwrap_or_default(),
                stream: Stream::Platform.as_str().to_string(),
                level: Some("INFO".into()),
                message: frame_message(r, kind),
            };
            framed.push((ts.clone(), kind as u8, line));
        }
    }
    drop(seen);
    let mut all: Vec<(String, u8, LogRecord)> = lines
        .into_iter()
        .map(|l| (l.ts.clone(), 1, l))
        .chain(framed)
        .collect();
    // Stable: stored lines with the same time keep their order.
    all.sort_by(|a, b| (a.0.as_str(), a.1).cmp(&(b.0.as_str(), b.1)));
    let mut out: Vec<LogRecord> = all
        .into_iter()
        .map(|(_, _, l)| l)
        .filter(|l| q.since.as_deref().is_none_or(|s| l.ts.as_str() >= s))
        .collect();
    if q.tail > 0 && out.len() > q.tail {
        out.drain(..out.len() - q.tail);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, start_time: &str, exec: f64, instance: Option<&str>) -> InvocationRecord {
        InvocationRecord {
            request_id: id.into(),
            function: "f".into(),
            version: 3,
            trigger: lampyr_api::TriggerKind::Http,
            start_time: start_time.into(),
            start: lampyr_api::StartKind::Cold,
            phases: lampyr_api::PhaseTimes {
                queue: 1.0,
                sandbox: Some(2.0),
                runtime: Some(10.0),
                init: Some(3.0),
                exec,
                ..Default::default()
            },
            duration_ms: exec,
            billed_ms: exec.ceil() as u64,
            gb_seconds: 0.0,
            memory_mb: 128,
            max_memory_used_mb: Some(41.2),
            status: lampyr_api::Status::Ok,
            error_type: None,
            http_status: Some(200),
            response_bytes: 12,
            instance: instance.map(str::to_string),
            attempt: None,
            stream_bytes: None,
        }
    }

    fn line(ts: &str, id: Option<&str>, message: &str) -> LogRecord {
        LogRecord {
            ts: ts.into(),
            function: "f".into(),
            version: 3,
            request_id: id.map(str::to_string),
            instance: "i-1".into(),
            stream: "stdout".into(),
            level: None,
            message: message.into(),
        }
    }

    fn messages(lines: &[LogRecord]) -> Vec<String> {
        lines
            .iter()
            .map(|l| l.message.split('\t').next().unwrap().to_string())
            .collect()
    }

    #[test]
    fn framing_lines_are_rebuilt_around_the_output() {
        // Handler ran from .016 (1 + 2 + 10 + 3 ms after the start) to .021.
        let r = record("a", "2026-01-01T00:00:00.000Z", 5.0, Some("i-1"));
        let lines = vec![
            line("2026-01-01T00:00:00.010Z", None, "init output"),
            line("2026-01-01T00:00:00.016Z", Some("a"), "first"),
            // Printed in the handler's last millisecond, which the
            // millisecond clock puts after the computed end.
            line("2026-01-01T00:00:00.022Z", Some("a"), "last"),
        ];
        let out = merge(lines, &[r], &LogQuery::default());
        assert_eq!(
            messages(&out),
            [
                "init output",
                "START RequestId: a Version: 3",
                "first",
                "last",
                "END RequestId: a",
                "REPORT RequestId: a",
            ]
        );
        assert_eq!(out[1].ts, "2026-01-01T00:00:00.016Z");
        assert_eq!(out[4].ts, "2026-01-01T00:00:00.022Z");
        let report = &out[5].message;
        assert!(report.contains("Duration: 5.00 ms"), "{report}");
        assert!(report.contains("Max Memory Used: 42 MB"), "{report}");
        assert!(report.contains("Init Duration: 15.00 ms"), "{report}");
        assert_eq!(out[5].stream, "platform");
        assert_eq!(out[5].instance, "i-1");
    }

    #[test]
    fn rejected_requests_have_no_framing_lines() {
        let r = record("t", "2026-01-01T00:00:00.000Z", 0.0, None);
        assert!(merge(Vec::new(), std::slice::from_ref(&r), &LogQuery::default()).is_empty());
    }

    #[test]
    fn tail_and_since_apply_to_the_merged_log() {
        let records = [
            record("a", "2026-01-01T00:00:00.000Z", 1.0, Some("i-1")),
            record("b", "2026-01-01T00:00:01.000Z", 1.0, Some("i-1")),
        ];
        let lines = vec![line("2026-01-01T00:00:01.016Z", Some("b"), "hello")];
        let tail = merge(
            lines.clone(),
            &records,
            &LogQuery {
                tail: 3,
                ..Default::default()
            },
        );
        assert_eq!(
            messages(&tail),
            ["hello", "END RequestId: b", "REPORT RequestId: b"]
        );
        let since = merge(
            lines,
            &records,
            &LogQuery {
                since: Some("2026-01-01T00:00:00.500Z".into()),
                ..Default::default()
            },
        );
        assert_eq!(since.len(), 4);
        assert!(since.iter().all(|l| l.request_id.as_deref() == Some("b")));
    }
}
