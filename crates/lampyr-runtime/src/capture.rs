//! Log capture: what an instance writes on stdout and stderr, as lines,
//! with bounded memory whatever the function writes.
//!
//! * **Per instance, a rate.** Each instance may write so many bytes per
//!   second (with a burst); past that, lampyr stops reading its pipes for a
//!   while, the pipes fill and the function's writes block: a function that
//!   prints as fast as it can is slowed down, and nothing it wrote is lost.
//! * **For the server, a queue bounded in bytes.** Lines travel to the log
//!   writer on a channel that holds at most so many bytes. When the writer
//!   falls behind and the queue is full, lines are dropped and counted; the
//!   next line that gets through is preceded by a platform line saying how
//!   many were dropped.
//! * **Request ids are checked.** A line names its invocation only if that
//!   invocation is in flight on that instance; a function cannot file lines
//!   under another request or pose as lampyr (platform lines come from
//!   lampyr alone, with their own stream).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use parking_lot::Mutex;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};
use tokio::sync::mpsc;

/// The longest log line kept whole; longer lines are cut.
pub const MAX_LOG_LINE: usize = 256 * 1024;

/// Where an output line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
    /// Written by lampyr itself about the invocation (errors, timeouts, crashes).
    Platform,
}

impl Stream {
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
            Stream::Platform => "platform",
        }
    }
}

/// One line an instance wrote.
#[derive(Debug, Clone)]
pub struct LogLine {
    pub ts: SystemTime,
    /// The function and version the instance was loaded with, if any yet.
    pub function: Option<(Arc<str>, u64)>,
    pub instance: Arc<str>,
    pub request_id: Option<String>,
    pub stream: Stream,
    pub level: Option<String>,
    pub message: String,
    /// Shown to followers of the live log but not stored: the lines lampyr
    /// writes to frame an invocation, which reads rebuild from its record.
    pub live_only: bool,
}

impl LogLine {
    /// What a queued line counts as: its text plus a little for the rest.
    fn cost(&self) -> usize {
        self.message.len() + self.request_id.as_ref().map_or(0, String::len) + 128
    }
}

/// How much log output the server holds and accepts.
#[derive(Debug, Clone, Copy)]
pub struct LogBudget {
    /// Most bytes of lines waiting for the log writer, all instances together.
    pub queue_bytes: usize,
    /// Bytes per second one instance may write before its writes block.
    pub instance_rate: u64,
    /// Bytes one instance may write at once, above its rate.
    pub instance_burst: u64,
}

impl Default for LogBudget {
    fn default() -> Self {
        LogBudget {
            queue_bytes: 64 << 20,
            instance_rate: 1 << 20,
            instance_burst: 4 << 20,
        }
    }
}

struct Queue {
    bytes: AtomicUsize,
    limit: usize,
    dropped: AtomicU64,
    budget: LogBudget,
}

/// The sending side of the log channel: cheap to clone; refuses lines once
/// the queue holds its limit in bytes.
#[derive(Clone)]
pub struct LogSender {
    tx: mpsc::UnboundedSender<LogLine>,
    queue: Arc<Queue>,
}

/// The log writer's side of the channel.
pub struct LogReceiver {
    rx: mpsc::UnboundedReceiver<LogLine>,
    queue: Arc<Queue>,
}

/// A line the queue had no room for.
#[derive(Debug)]
pub struct Dropped;

/// A log channel holding at most `budget.queue_bytes` bytes of lines; the
/// instances that send on it read their output at `budget`'s rate.
pub fn log_channel(budget: LogBudget) -> (LogSender, LogReceiver) {
    let (tx, rx) = mpsc::unbounded_channel();
    let queue = Arc::new(Queue {
        bytes: AtomicUsize::new(0),
        limit: budget.queue_bytes,
        dropped: AtomicU64::new(0),
        budget,
    });
    (
        LogSender {
            tx,
            queue: queue.clone(),
        },
        LogReceiver { rx, queue },
    )
}

impl LogSender {
    /// Queues a line, unless the queue is full (then it is counted as
    /// dropped) or the writer is gone.
    pub fn send(&self, line: LogLine) -> Result<(), Dropped> {
        self.send_counted(line, true)
    }

    /// [`LogSender::send`], counting a refused line as dropped or not (a
    /// note about drops that did not fit is not itself a lost line).
    fn send_counted(&self, line: LogLine, count: bool) -> Result<(), Dropped> {
        let cost = line.cost();
        let before = self.queue.bytes.fetch_add(cost, Ordering::Relaxed);
        if before + cost > self.queue.limit {
            self.queue.bytes.fetch_sub(cost, Ordering::Relaxed);
            if count {
                self.queue.dropped.fetch_add(1, Ordering::Relaxed);
            }
            return Err(Dropped);
        }
        self.tx.send(line).map_err(|_| {
            self.queue.bytes.fetch_sub(cost, Ordering::Relaxed);
            Dropped
        })
    }

    /// Lines dropped so far because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.queue.dropped.load(Ordering::Relaxed)
    }
}

impl LogReceiver {
    /// The next queued line, without waiting; `Err(true)` once every
    /// sender is gone and the queue is empty.
    pub fn try_recv(&mut self) -> Result<LogLine, bool> {
        match self.rx.try_recv() {
            Ok(line) => {
                self.queue.bytes.fetch_sub(line.cost(), Ordering::Relaxed);
                Ok(line)
            }
            Err(mpsc::error::TryRecvError::Empty) => Err(false),
            Err(mpsc::error::TryRecvError::Disconnected) => Err(true),
        }
    }
}

/// A token bucket of bytes.
#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
    rate: f64,
    burst: f64,
}

impl Bucket {
    fn new(rate: u64, burst: u64) -> Bucket {
        let burst = burst.max(MAX_LOG_LINE as u64) as f64;
        Bucket {
            tokens: burst,
            at: Instant::now(),
            rate: rate.max(1) as f64,
            burst,
        }
    }

    /// Takes `n` bytes at `now`; returns how long to wait before the
    /// bucket is out of debt.
    fn take(&mut self, n: usize, now: Instant) -> Duration {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.at = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst) - n as f64;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }
}

/// What the log readers of one instance share.
pub(crate) struct Capture {
    pub(crate) id: Arc<str>,
    pub(crate) logs: LogSender,
    bucket: Mutex<Bucket>,
    /// Lines of this instance the full queue dropped, not yet reported.
    unreported: AtomicU64,
}

impl Capture {
    pub(crate) fn new(id: Arc<str>, logs: LogSender) -> Capture {
        let budget = logs.queue.budget;
        Capture {
            id,
            logs,
            bucket: Mutex::new(Bucket::new(budget.instance_rate, budget.instance_burst)),
            unreported: AtomicU64::new(0),
        }
    }

    /// Sends one of the instance's lines; reports drops first.
    fn send(&self, line: LogLine) {
        let missed = self.unreported.swap(0, Ordering::Relaxed);
        if missed > 0 {
            let note = LogLine {
                stream: Stream::Platform,
                level: Some("WARN".into()),
                request_id: None,
                message: format!(
                    "{missed} line(s) of this instance's output were dropped: the server's log writer was behind"
                ),
                live_only: false,
                ..line.clone()
            };
            if self.logs.send_counted(note, false).is_err() {
                self.unreported.fetch_add(missed, Ordering::Relaxed);
            }
        }
        if self.logs.send(line).is_err() {
            self.unreported.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// What [`read_logs`] needs to know about the instance as lines arrive.
pub(crate) trait LineContext: Send + Sync {
    /// The function the instance is loaded with, if any yet.
    fn function(&self) -> Option<(Arc<str>, u64)>;
    /// The request id a line may be filed under: `claimed` if that
    /// invocation is in flight on this instance (or just finished), else
    /// the only invocation in flight if exactly one is, else, with none in
    /// flight, the one that finished last.
    fn request_id(&self, claimed: Option<&str>) -> Option<String>;
}

/// Reads an instance's output pipe line by line until it closes, at most
/// its rate, and sends the lines to the log writer.
pub(crate) async fn read_logs(
    capture: Arc<Capture>,
    ctx: Arc<dyn LineContext>,
    pipe: impl AsyncRead + Unpin,
    stream: Stream,
) {
    let mut reader = BufReader::with_capacity(64 * 1024, pipe);
    let mut line = Vec::with_capacity(256);
    loop {
        line.clear();
        let n = match (&mut reader)
            .take(MAX_LOG_LINE as u64)
            .read_until(b'\n', &mut line)
            .await
        {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let mut read = n;
        if n == MAX_LOG_LINE && line.last() != Some(&b'\n') {
            // Cut: skip the rest of this overlong line without holding it.
            loop {
                let buf = match reader.fill_buf().await {
                    Ok(b) if !b.is_empty() => b,
                    _ => break,
                };
                match buf.iter().position(|&b| b == b'\n') {
                    Some(i) => {
                        reader.consume(i + 1);
                        read += i + 1;
                        break;
                    }
                    None => {
                        let n = buf.len();
                        reader.consume(n);
                        read += n;
                    }
                }
            }
            line.extend_from_slice(b" [line truncated]");
        }
        while matches!(line.last(), Some(b'\n')) {
            line.pop();
        }
        let text = String::from_utf8_lossy(&line);
        let (claimed, level, message) = match parse_record(&text) {
            Some((rid, level, msg)) => (rid, Some(level.to_string()), msg.replace('\r', "\n")),
            None => (None, None, text.to_string()),
        };
        capture.send(LogLine {
            ts: SystemTime::now(),
            function: ctx.function(),
            instance: capture.id.clone(),
            request_id: ctx.request_id(claimed),
            stream,
            level,
            message,
            live_only: false,
        });
        // Over its rate the instance waits: nothing more is read from it
        // meanwhile, so its pipe fills and its writes block.
        let wait = capture.bucket.lock().take(read, Instant::now());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

/// Parses `TS \t REQUEST_ID \t LEVEL \t MESSAGE`, the bootstraps' record format.
pub(crate) fn parse_record(line: &str) -> Option<(Option<&str>, &str, &str)> {
    let mut parts = line.splitn(4, '\t');
    let ts = parts.next()?;
    let rid = parts.next()?;
    let level = parts.next()?;
    let msg = parts.next()?;
    let ts_ok =
        ts.len() >= 20 && ts.as_bytes()[0].is_ascii_digit() && ts.as_bytes().get(10) == Some(&b'T');
    let level_ok = matches!(
        level,
        "INFO" | "WARN" | "ERROR" | "DEBUG" | "TRACE" | "FATAL"
    );
    if !ts_ok || !level_ok {
        return None;
    }
    Some(((rid != "-").then_some(rid), level, msg))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_parse() {
        let r = parse_record("2026-11-26T16:40:00.123Z\tabc\tINFO\thello\tworld").unwrap();
        assert_eq!(r, (Some("abc"), "INFO", "hello\tworld"));
        let r = parse_record("2026-11-26T16:40:00.123Z\t-\tERROR\tboom").unwrap();
        assert_eq!(r, (None, "ERROR", "boom"));
        assert!(parse_record("plain output").is_none());
        assert!(parse_record("a\tb\tc\td").is_none());
    }

    #[test]
    fn the_bucket_allows_its_burst_then_its_rate() {
        let t0 = Instant::now();
        let mut b = Bucket::new(1000, 300_000);
        assert_eq!(b.take(300_000, t0), Duration::ZERO);
        // 500 bytes in debt at 1000 B/s: half a second.
        let w = b.take(500, t0);
        assert!((w.as_secs_f64() - 0.5).abs() < 1e-6, "{w:?}");
        // A second later the debt is paid and 500 bytes saved.
        assert_eq!(b.take(500, t0 + Duration::from_secs(1)), Duration::ZERO);
    }

    fn line(msg: &str) -> LogLine {
        LogLine {
            ts: SystemTime::now(),
            function: None,
            instance: "i".into(),
            request_id: None,
            stream: Stream::Stdout,
            level: None,
            message: msg.into(),
            live_only: false,
        }
    }

    #[test]
    fn the_queue_holds_its_limit_in_bytes_and_counts_drops() {
        let (tx, mut rx) = log_channel(LogBudget {
            queue_bytes: 1000,
            ..LogBudget::default()
        });
        let cap = Capture::new("i".into(), tx.clone());
        for _ in 0..10 {
            cap.send(line(&"x".repeat(300)));
        }
        // Two lines of 428 bytes fit in 1000.
        let mut got = Vec::new();
        while let Ok(l) = rx.try_recv() {
            got.push(l);
        }
        assert_eq!(got.len(), 2);
        assert_eq!(tx.dropped(), 8);
        // With room again, the drop is reported before the next line.
        cap.send(line("after"));
        let note = rx.try_recv().unwrap();
        assert_eq!(note.stream, Stream::Platform);
        assert!(note.message.starts_with("8 line(s)"), "{}", note.message);
        assert_eq!(rx.try_recv().unwrap().message, "after");
    }
}
