//! The log hub: every instance's output lines and lampyr's own per-invocation
//! records flow through one channel to a writer thread that appends them to
//! the function's log files, off the request path. Followers subscribe to a
//! broadcast of the same records.

use std::sync::Arc;
use std::time::SystemTime;

use lampyr_api::LogRecord;
use lampyr_runtime::{LogLine, LogSender, Stream};
use lampyr_store::{rfc3339, LogQuery, LogStore};
use parking_lot::Mutex;
use tokio::sync::{broadcast, mpsc};

/// How often the writer looks for new lines.
const POLL: std::time::Duration = std::time::Duration::from_millis(5);

#[derive(Clone)]
pub struct LogHub {
    tx: LogSender,
    store: Arc<Mutex<LogStore>>,
    follow: broadcast::Sender<Arc<LogRecord>>,
}

impl LogHub {
    pub(crate) fn start(store: LogStore) -> LogHub {
        let (tx, mut rx) = mpsc::unbounded_channel::<LogLine>();
        let store = Arc::new(Mutex::new(store));
        let (follow, _) = broadcast::channel(4096);
        let hub = LogHub {
            tx,
            store: store.clone(),
            follow: follow.clone(),
        };
        std::thread::Builder::new()
            .name("lampyr-logs".into())
            .spawn(move || {
                // The writer polls every few milliseconds instead of
                // sleeping on the channel: a sender then never has to wake
                // it, which keeps logging off the request path's CPU.
                let mut batch = Vec::with_capacity(1024);
                loop {
                    loop {
                        match rx.try_recv() {
                            Ok(line) => batch.push(line),
                            Err(mpsc::error::TryRecvError::Empty) => break,
                            Err(mpsc::error::TryRecvError::Disconnected) => return,
                        }
                        if batch.len() >= 4096 {
                            break;
                        }
                    }
                    if batch.is_empty() {
                        std::thread::sleep(POLL);
                        continue;
                    }
                    let mut s = store.lock();
                    for line in batch.drain(..) {
                        let Some(rec) = to_record(line) else { continue };
                        if let Err(e) = s.append(&rec) {
                            tracing::warn!(function = %rec.function, "cannot write function log: {e}");
                        }
                        let _ = follow.send(Arc::new(rec));
                    }
                    if let Err(e) = s.flush() {
                        tracing::warn!("cannot flush function logs: {e}");
                    }
                }
            })
            .expect("spawn log writer thread");
        hub
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
        let _ = self.tx.send(LogLine {
            ts: SystemTime::now(),
            function: Some((function.into(), version)),
            instance: instance.into(),
            request_id: request_id.map(str::to_string),
            stream: Stream::Platform,
            level: Some(level.to_string()),
            message,
        });
    }

    /// Reads a function's stored records.
    pub fn query(&self, function: &str, q: &LogQuery) -> std::io::Result<Vec<LogRecord>> {
        let (dir, keep) = {
            let mut s = self.store.lock();
            s.flush()?;
            (s.dir().to_path_buf(), s.limits().keep)
        };
        LogStore::read(&dir, keep, function, q)
    }

    /// Records as they are written, for `logs --follow`.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<LogRecord>> {
        self.follow.subscribe()
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
