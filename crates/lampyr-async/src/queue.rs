//! The durable event queue: SQLite (`DATA/events.db`, WAL), one writer
//! thread, and the dispatcher's board in memory.
//!
//! * **Group commit.** Every write (accepts, leases, outcomes, redrives) is
//!   an [`Op`] sent to the writer thread, which applies whatever has
//!   arrived in one transaction and answers only after it committed: an
//!   accepted event is on disk before its 202, and concurrent accepts
//!   share one commit.
//! * **Leases.** An event being run is `running` with a lease token and an
//!   expiry; an outcome is applied only with the token of the lease it
//!   ran under, so a late completion of an attempt that was taken over is
//!   ignored. At start, every `running` event of the previous process is
//!   queued again: a crash rescue, counted in `rescues`, not an attempt.
//! * **States.** `queued` (with the time it may run: now, or after a
//!   back-off), `running`, `succeeded` (kept a day, then pruned) and
//!   `dead` (the dead-letter list, until redriven or purged).
//! * **The board** holds, per function, the events that may run now in
//!   arrival order and those waiting for a time; the dispatcher takes from
//!   it. It is rebuilt from the database at start.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};
use std::path::Path;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use lampyr_api::events::{AttemptError, DeadReason, EventInfo, EventState};
use lampyr_api::TriggerKind;
use parking_lot::Mutex;
use rusqlite::{params, Connection, OptionalExtension};
use tokio::sync::{oneshot, Notify};

use crate::AsyncConfig;

/// Why the queue could not be opened or written.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("event queue {path}: {source}")]
    Open {
        path: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error("event queue: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("event queue: the writer thread is gone")]
    Closed,
    #[error("event queue: could not commit: {0}")]
    Commit(String),
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// An event to accept.
#[derive(Debug, Clone)]
pub(crate) struct Accept {
    pub(crate) event: lampyr_scheduler::NewEvent,
    /// A timer's firing: `(timer name, scheduled time in ms)`, recorded
    /// with the event.
    pub(crate) tick: Option<(String, i64)>,
}

/// What the writer thread does.
pub(crate) enum Op {
    Accept {
        accept: Accept,
        reply: oneshot::Sender<Result<lampyr_scheduler::Queued, AcceptError>>,
    },
    Lease {
        id: i64,
        token: i64,
        until_ms: i64,
        reply: oneshot::Sender<bool>,
    },
    Finish {
        id: i64,
        token: i64,
        outcome: Finish,
    },
    Redrive {
        function: String,
        /// `None`: all of them.
        request_ids: Option<Vec<String>>,
        reply: oneshot::Sender<Result<usize, QueueError>>,
    },
    Purge {
        function: String,
        reply: oneshot::Sender<Result<usize, QueueError>>,
    },
    /// The function was deleted: its events and dead letters go.
    Forget {
        function: String,
    },
    /// A timer exists from now (its catch-up starts here).
    TimerSeen {
        function: String,
        timer: String,
    },
    Prune,
}

/// Why an accept was refused.
#[derive(Debug)]
pub(crate) enum AcceptError {
    Full { depth: u64 },
    Store(String),
}

/// How a run ended, for the writer.
#[derive(Debug)]
pub(crate) enum Finish {
    Succeeded {
        destination: Option<Accept>,
    },
    /// An attempt failed; it runs again at `run_at_ms`.
    Retry {
        run_at_ms: i64,
        error: AttemptError,
    },
    /// The function was at its limits: no attempt was used.
    Throttled {
        run_at_ms: i64,
    },
    Dead {
        reason: DeadReason,
        /// The failed attempt that ended it (none when it was too old to run).
        error: Option<AttemptError>,
        destination: Option<Accept>,
    },
    /// The function is gone.
    Dropped,
}

/// One event the dispatcher may run.
#[derive(Debug, Clone)]
pub(crate) struct Ev {
    pub(crate) id: i64,
    pub(crate) request_id: String,
    pub(crate) function: String,
    pub(crate) trigger: TriggerKind,
    /// `None` when the board holds too many bytes: read from the database.
    pub(crate) payload: Option<Bytes>,
    pub(crate) created_ms: i64,
    pub(crate) attempts: u32,
    /// The timer that fired it.
    pub(crate) timer: Option<String>,
    /// The token of the lease it runs under (0: none).
    pub(crate) lease: i64,
    /// Throttles in a row (in memory only: they use no attempt).
    pub(crate) throttles: u32,
}

/// Per function: what may run now, what waits, what runs.
#[derive(Default)]
pub(crate) struct Lane {
    pub(crate) ready: VecDeque<Ev>,
    pub(crate) running: u32,
    /// Not finished (queued, waiting or running).
    pub(crate) depth: u64,
    /// Not finished, per timer.
    pub(crate) timers: HashMap<String, u32>,
}

/// The dispatcher's view of the queue.
#[derive(Default)]
pub(crate) struct Board {
    pub(crate) lanes: HashMap<String, Lane>,
    /// Events waiting for a time: (run at, id), and the events themselves.
    later: BinaryHeap<Reverse<(i64, i64)>>,
    waiting: HashMap<i64, Ev>,
    payload_bytes: usize,
}

/// The most payload bytes the board holds in memory.
const BOARD_PAYLOAD_BYTES: usize = 256 << 20;

impl Board {
    /// Adds a new event (it counts towards its lane's depth).
    fn add(&mut self, mut ev: Ev, run_at_ms: i64) {
        let lane = self.lanes.entry(ev.function.clone()).or_default();
        lane.depth += 1;
        if let Some(t) = &ev.timer {
            *lane.timers.entry(t.clone()).or_default() += 1;
        }
        if let Some(p) = &ev.payload {
            if self.payload_bytes + p.len() > BOARD_PAYLOAD_BYTES {
                ev.payload = None;
            } else {
                self.payload_bytes += p.len();
            }
        }
        self.schedule(ev, run_at_ms);
    }

    /// Puts an event (already counted) where it waits until `run_at_ms`.
    pub(crate) fn schedule(&mut self, ev: Ev, run_at_ms: i64) {
        if run_at_ms <= now_ms() {
            self.lanes
                .entry(ev.function.clone())
                .or_default()
                .ready
                .push_back(ev);
        } else {
            self.later.push(Reverse((run_at_ms, ev.id)));
            self.waiting.insert(ev.id, ev);
        }
    }

    /// An event is over: it no longer counts.
    pub(crate) fn finished(&mut self, ev: &Ev) {
        if let Some(p) = &ev.payload {
            self.payload_bytes = self.payload_bytes.saturating_sub(p.len());
        }
        if let Some(lane) = self.lanes.get_mut(&ev.function) {
            lane.depth = lane.depth.saturating_sub(1);
            if let Some(t) = &ev.timer {
                if let Some(n) = lane.timers.get_mut(t) {
                    *n = n.saturating_sub(1);
                }
            }
        }
    }

    /// Moves events whose time has come to their lanes; returns when the
    /// next one is due.
    pub(crate) fn due(&mut self, now: i64) -> Option<i64> {
        while let Some(Reverse((at, id))) = self.later.peek().copied() {
            if at > now {
                return Some(at);
            }
            self.later.pop();
            if let Some(ev) = self.waiting.remove(&id) {
                self.lanes
                    .entry(ev.function.clone())
                    .or_default()
                    .ready
                    .push_back(ev);
            }
        }
        None
    }

    /// Drops a function's events.
    fn forget(&mut self, function: &str) {
        self.lanes.remove(function);
        self.waiting.retain(|_, ev| ev.function != function);
    }

    /// Events waiting (queued or for a retry), and the oldest one's
    /// creation time, per function.
    pub(crate) fn depths(&self) -> BTreeMap<String, (u64, Option<i64>)> {
        let mut out: BTreeMap<String, (u64, Option<i64>)> = BTreeMap::new();
        for (f, lane) in &self.lanes {
            let oldest = lane.ready.iter().map(|e| e.created_ms).min();
            out.insert(f.clone(), (lane.depth, oldest));
        }
        for ev in self.waiting.values() {
            let e = out.entry(ev.function.clone()).or_default();
            e.1 = Some(e.1.map_or(ev.created_ms, |o| o.min(ev.created_ms)));
        }
        out
    }
}

/// What the queue remembers of a timer.
#[derive(Debug, Clone)]
pub(crate) struct TimerState {
    /// When it was first deployed: its catch-up starts here.
    pub(crate) first_seen_ms: i64,
    /// The tick it last fired for, and that event's request id.
    pub(crate) last_tick_ms: Option<i64>,
    pub(crate) last_request_id: Option<String>,
}

/// The event queue. Cheap to share.
pub struct EventQueue {
    writer: mpsc::Sender<Op>,
    reader: Mutex<Connection>,
    pub(crate) board: Mutex<Board>,
    /// Woken when the board changes.
    pub(crate) wake: Notify,
    pub(crate) cfg: AsyncConfig,
    pub(crate) metrics: crate::metrics::Metrics,
    next_token: std::sync::atomic::AtomicI64,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    request_id TEXT NOT NULL UNIQUE,
    function TEXT NOT NULL,
    trigger TEXT NOT NULL,
    payload BLOB NOT NULL,
    created_ms INTEGER NOT NULL,
    state TEXT NOT NULL,
    run_at_ms INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    rescues INTEGER NOT NULL DEFAULT 0,
    lease INTEGER NOT NULL DEFAULT 0,
    lease_until_ms INTEGER,
    errors TEXT NOT NULL DEFAULT '[]',
    finished_ms INTEGER,
    dead_reason TEXT,
    timer TEXT
);
-- Indexes a state change does not touch: an event changes state three
-- times or more, and every index entry moved is a page written.
DROP INDEX IF EXISTS events_by_state;
CREATE INDEX IF NOT EXISTS events_by_function ON events (function, id);
CREATE INDEX IF NOT EXISTS events_finished ON events (finished_ms) WHERE finished_ms IS NOT NULL;
CREATE TABLE IF NOT EXISTS idempotency (
    function TEXT NOT NULL,
    key TEXT NOT NULL,
    request_id TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    PRIMARY KEY (function, key)
);
CREATE TABLE IF NOT EXISTS timer_ticks (
    function TEXT NOT NULL,
    timer TEXT NOT NULL,
    first_seen_ms INTEGER NOT NULL,
    last_tick_ms INTEGER,
    last_request_id TEXT,
    PRIMARY KEY (function, timer)
);
";

fn open_conn(path: &Path, sync: &str) -> Result<Connection, QueueError> {
    let open = |e| QueueError::Open {
        path: path.display().to_string(),
        source: e,
    };
    let conn = Connection::open(path).map_err(open)?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(open)?;
    conn.pragma_update(None, "synchronous", sync)
        .map_err(open)?;
    conn.busy_timeout(Duration::from_secs(5)).map_err(open)?;
    Ok(conn)
}

impl EventQueue {
    /// Opens (or creates) the queue at `path`: events the previous process
    /// was running are queued again (crash rescues), and the board is
    /// rebuilt. Starts the writer thread.
    pub fn open(path: &Path, cfg: AsyncConfig) -> Result<Arc<EventQueue>, QueueError> {
        let sync = if cfg.fsync { "FULL" } else { "NORMAL" };
        let conn = open_conn(path, sync)?;
        conn.execute_batch(SCHEMA)?;
        let rescued = conn.execute(
            "UPDATE events SET state = 'queued', rescues = rescues + 1, run_at_ms = ?1
             WHERE state = 'running'",
            params![now_ms()],
        )?;
        if rescued > 0 {
            tracing::warn!(
                events = rescued,
                "queued again the asynchronous events the previous run left running"
            );
        }
        let mut board = Board::default();
        {
            let mut stmt = conn.prepare(
                "SELECT id, request_id, function, trigger, payload, created_ms, attempts,
                        run_at_ms, timer
                 FROM events WHERE state = 'queued' ORDER BY id",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok((
                    Ev {
                        id: r.get(0)?,
                        request_id: r.get(1)?,
                        function: r.get(2)?,
                        trigger: r.get::<_, String>(3)?.parse().unwrap_or(TriggerKind::Async),
                        payload: Some(Bytes::from(r.get::<_, Vec<u8>>(4)?)),
                        created_ms: r.get(5)?,
                        attempts: r.get(6)?,
                        timer: r.get(8)?,
                        lease: 0,
                        throttles: 0,
                    },
                    r.get::<_, i64>(7)?,
                ))
            })?;
            for row in rows {
                let (ev, run_at) = row?;
                board.add(ev, run_at);
            }
        }
        let last_token: i64 =
            conn.query_row("SELECT COALESCE(MAX(lease), 0) FROM events", [], |r| {
                r.get(0)
            })?;
        // The writer never checkpoints (that would stall accepts for the
        // milliseconds it takes): a thread of its own does, every second.
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        let checkpointer = open_conn(path, sync)?;
        std::thread::Builder::new()
            .name("lampyr-events-checkpoint".into())
            .spawn(move || loop {
                std::thread::sleep(Duration::from_secs(1));
                if let Err(e) =
                    checkpointer.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
                {
                    tracing::debug!("event queue checkpoint: {e}");
                }
            })
            .map_err(|e| QueueError::Open {
                path: path.display().to_string(),
                source: rusqlite::Error::ToSqlConversionFailure(Box::new(e)),
            })?;
        let reader = open_conn(path, sync)?;
        reader.pragma_update(None, "query_only", true)?;
        let (tx, rx) = mpsc::channel::<Op>();
        let queue = Arc::new(EventQueue {
            writer: tx,
            reader: Mutex::new(reader),
            board: Mutex::new(board),
            wake: Notify::new(),
            cfg,
            metrics: crate::metrics::Metrics::new(),
            next_token: std::sync::atomic::AtomicI64::new(last_token + 1),
        });
        let weak = Arc::downgrade(&queue);
        std::thread::Builder::new()
            .name("lampyr-events".into())
            .spawn(move || write_loop(conn, rx, weak))
            .map_err(|e| QueueError::Open {
                path: path.display().to_string(),
                source: rusqlite::Error::ToSqlConversionFailure(Box::new(e)),
            })?;
        Ok(queue)
    }

    fn send(&self, op: Op) {
        let _ = self.writer.send(op);
    }

    /// Accepts an event: committed before it answers.
    pub(crate) async fn accept(
        &self,
        accept: Accept,
    ) -> Result<lampyr_scheduler::Queued, AcceptError> {
        let (reply, rx) = oneshot::channel();
        self.send_accept(accept, reply);
        rx.await
            .unwrap_or_else(|_| Err(AcceptError::Store("the event queue is closed".into())))
    }

    pub(crate) fn send_accept(
        &self,
        accept: Accept,
        reply: oneshot::Sender<Result<lampyr_scheduler::Queued, AcceptError>>,
    ) {
        if let Err(mpsc::SendError(Op::Accept { reply, .. })) =
            self.writer.send(Op::Accept { accept, reply })
        {
            let _ = reply.send(Err(AcceptError::Store("the event queue is closed".into())));
        }
    }

    /// A new lease token.
    pub(crate) fn token(&self) -> i64 {
        self.next_token
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    /// Takes the lease of a queued event, committed before it answers
    /// (a run whose record survives a crash is then known to be a rescue).
    /// False if the event is no longer queued.
    pub(crate) async fn lease(&self, id: i64, token: i64, until_ms: i64) -> bool {
        let (reply, rx) = oneshot::channel();
        self.send(Op::Lease {
            id,
            token,
            until_ms,
            reply,
        });
        rx.await.unwrap_or(false)
    }

    pub(crate) fn finish(&self, id: i64, token: i64, outcome: Finish) {
        self.send(Op::Finish { id, token, outcome });
    }

    /// Forgets a deleted function's events.
    pub fn forget(&self, function: &str) {
        self.board.lock().forget(function);
        self.send(Op::Forget {
            function: function.to_string(),
        });
    }

    /// Queues a function's dead letters again (those named, or all):
    /// attempts start over, the age from now. Returns how many.
    pub async fn redrive(
        &self,
        function: &str,
        request_ids: Option<Vec<String>>,
    ) -> Result<usize, QueueError> {
        let (reply, rx) = oneshot::channel();
        self.writer
            .send(Op::Redrive {
                function: function.to_string(),
                request_ids,
                reply,
            })
            .map_err(|_| QueueError::Closed)?;
        rx.await.map_err(|_| QueueError::Closed)?
    }

    /// Deletes a function's dead letters. Returns how many.
    pub async fn purge(&self, function: &str) -> Result<usize, QueueError> {
        let (reply, rx) = oneshot::channel();
        self.writer
            .send(Op::Purge {
                function: function.to_string(),
                reply,
            })
            .map_err(|_| QueueError::Closed)?;
        rx.await.map_err(|_| QueueError::Closed)?
    }

    /// Prunes succeeded events and idempotency keys past their window.
    pub(crate) fn prune(&self) {
        self.send(Op::Prune);
    }

    /// An event's payload, from the database.
    pub(crate) fn payload(&self, id: i64) -> Result<Option<Bytes>, QueueError> {
        let db = self.reader.lock();
        Ok(db
            .query_row(
                "SELECT payload FROM events WHERE id = ?1",
                params![id],
                |r| r.get::<_, Vec<u8>>(0),
            )
            .optional()?
            .map(Bytes::from))
    }

    /// One event, by request id; with its payload if `payload`.
    pub fn get(&self, request_id: &str, payload: bool) -> Result<Option<EventInfo>, QueueError> {
        let db = self.reader.lock();
        let mut stmt = db.prepare_cached(&format!("{SELECT_INFO} WHERE request_id = ?1"))?;
        let info = stmt
            .query_row(params![request_id], |r| info_of(r, payload))
            .optional()?;
        Ok(info)
    }

    /// A function's events, newest first; only those in `state` if given.
    pub fn list(
        &self,
        function: &str,
        state: Option<EventState>,
        limit: usize,
        payload: bool,
    ) -> Result<Vec<EventInfo>, QueueError> {
        let db = self.reader.lock();
        let db_state = match state {
            None => None,
            Some(EventState::DeadLettered) => Some("dead"),
            Some(EventState::Succeeded) => Some("succeeded"),
            Some(EventState::Running) => Some("running"),
            Some(EventState::Queued | EventState::Retrying) => Some("queued"),
        };
        let mut stmt = db.prepare_cached(&format!(
            "{SELECT_INFO} WHERE function = ?1 AND (?2 IS NULL OR state = ?2)
             ORDER BY id DESC LIMIT ?3"
        ))?;
        let rows = stmt.query_map(params![function, db_state, limit as i64], |r| {
            info_of(r, payload)
        })?;
        let mut out = Vec::new();
        for r in rows {
            let r = r?;
            if state.is_none_or(|s| s == r.state) {
                out.push(r);
            }
        }
        Ok(out)
    }

    /// How many dead letters a function has.
    pub fn dead_count(&self, function: &str) -> Result<u64, QueueError> {
        let db = self.reader.lock();
        let n: i64 = db.query_row(
            "SELECT COUNT(*) FROM events WHERE function = ?1 AND state = 'dead'",
            params![function],
            |r| r.get(0),
        )?;
        Ok(n as u64)
    }

    /// Events not finished (queued, waiting, running) and the age of the
    /// oldest, per function.
    pub fn depth(&self, function: &str) -> (u64, Option<Duration>) {
        let board = self.board.lock();
        let depth = board.lanes.get(function).map_or(0, |l| l.depth);
        let oldest = board.depths().get(function).and_then(|d| d.1);
        (
            depth,
            oldest.map(|c| Duration::from_millis((now_ms() - c).max(0) as u64)),
        )
    }

    /// The last firing of a timer, and when it was first seen.
    pub(crate) fn timer_state(
        &self,
        function: &str,
        timer: &str,
    ) -> Result<Option<TimerState>, QueueError> {
        let db = self.reader.lock();
        Ok(db
            .query_row(
                "SELECT first_seen_ms, last_tick_ms, last_request_id FROM timer_ticks
                 WHERE function = ?1 AND timer = ?2",
                params![function, timer],
                |r| {
                    Ok(TimerState {
                        first_seen_ms: r.get(0)?,
                        last_tick_ms: r.get(1)?,
                        last_request_id: r.get(2)?,
                    })
                },
            )
            .optional()?)
    }

    /// Whether a timer's earlier firing has not finished.
    pub(crate) fn timer_busy(&self, function: &str, timer: &str) -> bool {
        self.board
            .lock()
            .lanes
            .get(function)
            .and_then(|l| l.timers.get(timer))
            .is_some_and(|n| *n > 0)
    }

    /// Notes that a timer exists, from now (its catch-up starts here).
    pub(crate) fn timer_seen(&self, function: &str, timer: &str) {
        self.send(Op::TimerSeen {
            function: function.to_string(),
            timer: timer.to_string(),
        });
    }
}

const SELECT_INFO: &str = "SELECT request_id, function, trigger, state, attempts, rescues,
    created_ms, run_at_ms, finished_ms, dead_reason, errors, payload FROM events";

fn info_of(r: &rusqlite::Row<'_>, payload: bool) -> rusqlite::Result<EventInfo> {
    let state: String = r.get(3)?;
    let attempts: u32 = r.get(4)?;
    let run_at: i64 = r.get(7)?;
    let state = match state.as_str() {
        "running" => EventState::Running,
        "succeeded" => EventState::Succeeded,
        "dead" => EventState::DeadLettered,
        _ if attempts > 0 || run_at > now_ms() => EventState::Retrying,
        _ => EventState::Queued,
    };
    let errors: Vec<AttemptError> =
        serde_json::from_str(&r.get::<_, String>(10)?).unwrap_or_default();
    let body: Vec<u8> = r.get(11)?;
    Ok(EventInfo {
        request_id: r.get(0)?,
        function: r.get(1)?,
        trigger: r.get::<_, String>(2)?.parse().unwrap_or(TriggerKind::Async),
        state,
        attempts,
        rescues: r.get(5)?,
        created_at: rfc3339(r.get(6)?),
        next_attempt_at: matches!(state, EventState::Queued | EventState::Retrying)
            .then(|| rfc3339(run_at)),
        finished_at: r.get::<_, Option<i64>>(8)?.map(rfc3339),
        dead_reason: r
            .get::<_, Option<String>>(9)?
            .as_deref()
            .and_then(DeadReason::parse),
        errors,
        payload: payload.then(|| {
            serde_json::from_slice(&body).unwrap_or_else(|_| {
                serde_json::Value::String(String::from_utf8_lossy(&body).into_owned())
            })
        }),
    })
}

/// RFC 3339 of milliseconds since the epoch.
pub(crate) fn rfc3339(ms: i64) -> String {
    lampyr_store::rfc3339(UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64))
}

/// The most operations applied in one transaction.
const MAX_GROUP: usize = 4096;

/// The writer thread: applies operations in groups, one transaction each.
fn write_loop(mut conn: Connection, rx: mpsc::Receiver<Op>, queue: std::sync::Weak<EventQueue>) {
    // Per function: events not finished, for the depth limit. Counted
    // here, the only writer, so accepts see their own batch.
    let mut depths: HashMap<String, u64> = HashMap::new();
    if let Ok(mut stmt) = conn.prepare(
        "SELECT function, COUNT(*) FROM events WHERE state IN ('queued', 'running') GROUP BY function",
    ) {
        if let Ok(rows) = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))) {
            for (f, n) in rows.flatten() {
                depths.insert(f, n as u64);
            }
        }
    }
    let mut group: Vec<Op> = Vec::with_capacity(256);
    loop {
        match rx.recv() {
            Ok(op) => group.push(op),
            Err(_) => return,
        }
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(op) => group.push(op),
                Err(_) => break,
            }
        }
        let Some(queue) = queue.upgrade() else { return };
        apply_group(&mut conn, &queue, &mut depths, &mut group);
    }
}

/// What to do once a group has committed.
enum Then {
    Accepted {
        reply: oneshot::Sender<Result<lampyr_scheduler::Queued, AcceptError>>,
        queued: lampyr_scheduler::Queued,
        ev: Option<Ev>,
    },
    Refused {
        reply: oneshot::Sender<Result<lampyr_scheduler::Queued, AcceptError>>,
        error: AcceptError,
    },
    Count {
        reply: oneshot::Sender<Result<usize, QueueError>>,
        n: usize,
        redriven: Vec<Ev>,
    },
    Leased {
        reply: oneshot::Sender<bool>,
        ok: bool,
    },
}

fn apply_group(
    conn: &mut Connection,
    queue: &EventQueue,
    depths: &mut HashMap<String, u64>,
    group: &mut Vec<Op>,
) {
    let cfg = &queue.cfg;
    let mut then: Vec<Then> = Vec::with_capacity(group.len());
    // Destination events are accepted in the same transaction as the
    // outcome that made them.
    let mut follow_ups: Vec<Ev> = Vec::new();
    let result = (|| -> Result<(), rusqlite::Error> {
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        for op in group.drain(..) {
            match op {
                Op::Accept { accept, reply } => match insert(&tx, cfg, depths, accept)? {
                    Ok((queued, ev)) => then.push(Then::Accepted { reply, queued, ev }),
                    Err(error) => then.push(Then::Refused { reply, error }),
                },
                Op::Lease {
                    id,
                    token,
                    until_ms,
                    reply,
                } => {
                    let n = exec(
                        &tx,
                        "UPDATE events SET state = 'running', lease = ?2, lease_until_ms = ?3
                         WHERE id = ?1 AND state = 'queued'",
                        params![id, token, until_ms],
                    )?;
                    then.push(Then::Leased { reply, ok: n == 1 });
                }
                Op::TimerSeen { function, timer } => {
                    exec(
                        &tx,
                        "INSERT OR IGNORE INTO timer_ticks (function, timer, first_seen_ms) VALUES (?1, ?2, ?3)",
                        params![function, timer, now_ms()],
                    )?;
                }
                Op::Finish { id, token, outcome } => {
                    let now = now_ms();
                    let lease = "id = ?1 AND lease = ?2 AND state = 'running'";
                    let applied = match &outcome {
                        Finish::Succeeded { .. } => exec(
                        &tx,
                            &format!("UPDATE events SET state = 'succeeded', attempts = attempts + 1, finished_ms = ?3 WHERE {lease}"),
                            params![id, token, now],
                        )?,
                        Finish::Retry { run_at_ms, error } => exec(
                        &tx,
                            &format!("UPDATE events SET state = 'queued', attempts = attempts + 1, run_at_ms = ?3,
                                      errors = json_insert(errors, '$[#]', json(?4)) WHERE {lease}"),
                            params![id, token, run_at_ms, serde_json::to_string(error).unwrap_or_default()],
                        )?,
                        Finish::Throttled { run_at_ms } => exec(
                        &tx,
                            &format!("UPDATE events SET state = 'queued', run_at_ms = ?3 WHERE {lease}"),
                            params![id, token, run_at_ms],
                        )?,
                        Finish::Dead { reason, error, .. } => {
                            let counted = i64::from(error.is_some());
                            exec(
                        &tx,
                                &format!("UPDATE events SET state = 'dead', attempts = attempts + ?3, finished_ms = ?4,
                                          dead_reason = ?5,
                                          errors = CASE WHEN ?6 IS NULL THEN errors ELSE json_insert(errors, '$[#]', json(?6)) END
                                          WHERE {lease}"),
                                params![
                                    id,
                                    token,
                                    counted,
                                    now,
                                    reason.as_str(),
                                    error.as_ref().map(|e| serde_json::to_string(e).unwrap_or_default())
                                ],
                            )?
                        }
                        Finish::Dropped => exec(
                        &tx,
                            &format!("DELETE FROM events WHERE {lease}"),
                            params![id, token],
                        )?,
                    };
                    if applied == 0 {
                        // Not its lease any more (taken over): too late.
                        continue;
                    }
                    let finished =
                        !matches!(outcome, Finish::Retry { .. } | Finish::Throttled { .. });
                    if finished {
                        let function: Option<String> = tx
                            .query_row(
                                "SELECT function FROM events WHERE id = ?1",
                                params![id],
                                |r| r.get(0),
                            )
                            .optional()?;
                        if let Some(f) = function {
                            if let Some(d) = depths.get_mut(&f) {
                                *d = d.saturating_sub(1);
                            }
                        }
                    }
                    let destination = match outcome {
                        Finish::Succeeded { destination } | Finish::Dead { destination, .. } => {
                            destination
                        }
                        _ => None,
                    };
                    if let Some(d) = destination {
                        // A destination that is full or refused is logged,
                        // not retried: the source event is done.
                        let function = d.event.function.clone();
                        match insert(&tx, cfg, depths, d)? {
                            Ok((_, Some(ev))) => follow_ups.push(ev),
                            Ok((_, None)) => {}
                            Err(e) => tracing::warn!(
                                function = %function,
                                "a destination record was not queued: {e:?}"
                            ),
                        }
                    }
                }
                Op::Redrive {
                    function,
                    request_ids,
                    reply,
                } => {
                    let now = now_ms();
                    let mut redriven = Vec::new();
                    {
                        let mut stmt = tx.prepare_cached(
                            "SELECT id, request_id, trigger, payload, timer FROM events
                             WHERE function = ?1 AND state = 'dead' ORDER BY id",
                        )?;
                        let rows = stmt.query_map(params![function], |r| {
                            Ok(Ev {
                                id: r.get(0)?,
                                request_id: r.get(1)?,
                                function: function.clone(),
                                trigger: r
                                    .get::<_, String>(2)?
                                    .parse()
                                    .unwrap_or(TriggerKind::Async),
                                payload: Some(Bytes::from(r.get::<_, Vec<u8>>(3)?)),
                                created_ms: now,
                                attempts: 0,
                                timer: r.get(4)?,
                                lease: 0,
                                throttles: 0,
                            })
                        })?;
                        for ev in rows {
                            let ev = ev?;
                            if request_ids
                                .as_ref()
                                .is_none_or(|ids| ids.contains(&ev.request_id))
                            {
                                redriven.push(ev);
                            }
                        }
                    }
                    for ev in &redriven {
                        exec(
                            &tx,
                            "UPDATE events SET state = 'queued', attempts = 0, created_ms = ?2,
                             run_at_ms = ?2, finished_ms = NULL, dead_reason = NULL WHERE id = ?1",
                            params![ev.id, now],
                        )?;
                    }
                    *depths.entry(function).or_default() += redriven.len() as u64;
                    then.push(Then::Count {
                        reply,
                        n: redriven.len(),
                        redriven,
                    });
                }
                Op::Purge { function, reply } => {
                    let n = exec(
                        &tx,
                        "DELETE FROM events WHERE function = ?1 AND state = 'dead'",
                        params![function],
                    )?;
                    then.push(Then::Count {
                        reply,
                        n,
                        redriven: Vec::new(),
                    });
                }
                Op::Forget { function } => {
                    exec(
                        &tx,
                        "DELETE FROM events WHERE function = ?1",
                        params![function],
                    )?;
                    exec(
                        &tx,
                        "DELETE FROM idempotency WHERE function = ?1",
                        params![function],
                    )?;
                    exec(
                        &tx,
                        "DELETE FROM timer_ticks WHERE function = ?1",
                        params![function],
                    )?;
                    depths.remove(&function);
                }
                Op::Prune => {
                    let now = now_ms();
                    let keep = cfg.keep_finished.as_millis() as i64;
                    exec(
                        &tx,
                        "DELETE FROM events WHERE state = 'succeeded' AND finished_ms < ?1",
                        params![now - keep],
                    )?;
                    exec(
                        &tx,
                        "DELETE FROM idempotency WHERE created_ms < ?1",
                        params![now - IDEMPOTENCY_WINDOW.as_millis() as i64],
                    )?;
                }
            }
        }
        tx.commit()
    })();
    let mut board = queue.board.lock();
    match result {
        Ok(()) => {
            for t in then {
                match t {
                    Then::Accepted { reply, queued, ev } => {
                        if let Some(ev) = ev {
                            queue.metrics.accepted(&ev.function);
                            board.add(ev, now_ms());
                        }
                        let _ = reply.send(Ok(queued));
                    }
                    Then::Refused { reply, error } => {
                        let _ = reply.send(Err(error));
                    }
                    Then::Count { reply, n, redriven } => {
                        for ev in redriven {
                            board.add(ev, now_ms());
                        }
                        let _ = reply.send(Ok(n));
                    }
                    Then::Leased { reply, ok } => {
                        let _ = reply.send(ok);
                    }
                }
            }
            for ev in follow_ups {
                queue.metrics.accepted(&ev.function);
                board.add(ev, now_ms());
            }
        }
        Err(e) => {
            tracing::error!("the event queue could not commit: {e}");
            for t in then {
                match t {
                    Then::Accepted { reply, .. } | Then::Refused { reply, .. } => {
                        let _ = reply.send(Err(AcceptError::Store(e.to_string())));
                    }
                    Then::Count { reply, .. } => {
                        let _ = reply.send(Err(QueueError::Commit(e.to_string())));
                    }
                    Then::Leased { reply, .. } => {
                        let _ = reply.send(false);
                    }
                }
            }
            // The depth counts may be off now; read them again.
            depths.clear();
        }
    }
    drop(board);
    queue.wake.notify_one();
}

/// Runs one statement through the connection's statement cache (every
/// statement here runs once per event: parsing it each time would cost
/// more than running it).
fn exec(
    tx: &rusqlite::Transaction<'_>,
    sql: &str,
    p: impl rusqlite::Params,
) -> rusqlite::Result<usize> {
    tx.prepare_cached(sql)?.execute(p)
}

/// How long an idempotency key holds.
pub const IDEMPOTENCY_WINDOW: Duration = Duration::from_secs(24 * 3600);

/// Inserts one accepted event, unless its key was seen or its function's
/// queue is full. Returns the answer and, for a new event, what the board
/// gets.
#[allow(clippy::type_complexity)]
fn insert(
    tx: &rusqlite::Transaction<'_>,
    cfg: &AsyncConfig,
    depths: &mut HashMap<String, u64>,
    a: Accept,
) -> rusqlite::Result<Result<(lampyr_scheduler::Queued, Option<Ev>), AcceptError>> {
    let Accept { event: e, tick } = a;
    let now = now_ms();
    if let Some(key) = &e.idempotency_key {
        let seen: Option<String> = tx
            .prepare_cached(
                "SELECT request_id FROM idempotency WHERE function = ?1 AND key = ?2 AND created_ms >= ?3",
            )?
            .query_row(
                params![e.function, key, now - IDEMPOTENCY_WINDOW.as_millis() as i64],
                |r| r.get(0),
            )
            .optional()?;
        if let Some(request_id) = seen {
            return Ok(Ok((
                lampyr_scheduler::Queued {
                    request_id,
                    duplicate: true,
                },
                None,
            )));
        }
    }
    let depth = depths.entry(e.function.clone()).or_default();
    if *depth >= cfg.max_queue_depth {
        return Ok(Err(AcceptError::Full { depth: *depth }));
    }
    let timer = tick.as_ref().map(|(t, _)| t.clone());
    exec(
                        tx,
        "INSERT INTO events (request_id, function, trigger, payload, created_ms, state, run_at_ms, timer)
         VALUES (?1, ?2, ?3, ?4, ?5, 'queued', ?5, ?6)",
        params![e.request_id, e.function, e.trigger.as_str(), e.payload, now, timer],
    )?;
    let id = tx.last_insert_rowid();
    if let Some(key) = &e.idempotency_key {
        exec(
                        tx,
            "INSERT OR REPLACE INTO idempotency (function, key, request_id, created_ms) VALUES (?1, ?2, ?3, ?4)",
            params![e.function, key, e.request_id, now],
        )?;
    }
    if let Some((t, tick)) = &tick {
        exec(
                        tx,
            "INSERT INTO timer_ticks (function, timer, first_seen_ms, last_tick_ms, last_request_id)
             VALUES (?1, ?2, ?3, ?3, ?4)
             ON CONFLICT (function, timer) DO UPDATE SET last_tick_ms = ?3, last_request_id = ?4",
            params![e.function, t, tick, e.request_id],
        )?;
    }
    *depth += 1;
    Ok(Ok((
        lampyr_scheduler::Queued {
            request_id: e.request_id.clone(),
            duplicate: false,
        },
        Some(Ev {
            id,
            request_id: e.request_id,
            function: e.function,
            trigger: e.trigger,
            payload: Some(Bytes::from(e.payload)),
            created_ms: now,
            attempts: 0,
            timer,
            lease: 0,
            throttles: 0,
        }),
    )))
}
