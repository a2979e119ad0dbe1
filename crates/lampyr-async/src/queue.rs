//! The durable event queue: a journal, a SQLite database
//! (`DATA/events.db`, WAL) it is applied to, and the dispatcher's board in
//! memory.
//!
//! * **Group commit.** Every write is a journal append (`journal.rs`)
//!   made by the caller under the writer's lock (`writer.rs`). An accept
//!   is answered only once its record is written; the accepts that arrive
//!   together share one write (the first of them to look writes them all),
//!   and outcomes ride along with the next write. The settler
//!   (`settle.rs`) applies the journal to the database later, at idle
//!   priority, in large transactions; reads of the database wait for it
//!   first ([`EventQueue::settled`]), so they see every write answered
//!   before them.
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
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use lampyr_api::events::{AttemptError, DeadReason, EventInfo, EventState};
use lampyr_api::TriggerKind;
use parking_lot::Mutex;
use rusqlite::{params, Connection, OptionalExtension};
use tokio::sync::{oneshot, Notify};

use crate::journal::Pos;
use crate::settle::SlowOp;
use crate::writer::{Progress, Writer};
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
    #[error("event queue journal: {0}")]
    Journal(String),
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

/// Where an accepted event's record is (see [`EventQueue::accept_now`]).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Written {
    /// Written; the journal ends here.
    Now(Pos),
    /// Held for a group write, with this ticket.
    Held(u64),
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
    pub(crate) fn add(&mut self, mut ev: Ev, run_at_ms: i64) {
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
    pub(crate) writer: Mutex<Writer>,
    /// Syncs run one at a time (`fsync = true`); `synced` is how far the
    /// journal is synced (a packed [`Pos`]).
    sync_lock: tokio::sync::Mutex<()>,
    pub(crate) synced: AtomicU64,
    reader: Mutex<Connection>,
    pub(crate) board: Mutex<Board>,
    /// Woken when the board changes.
    pub(crate) wake: Notify,
    pub(crate) cfg: AsyncConfig,
    pub(crate) metrics: crate::metrics::Metrics,
    next_token: AtomicI64,
    /// Per function: events not finished (queued, waiting or running), for
    /// the depth limit.
    pub(crate) depths: Mutex<HashMap<String, u64>>,
    /// Per function: dead letters.
    pub(crate) dead: Mutex<HashMap<String, u64>>,
    /// How far the journal is applied to the database (a packed
    /// [`crate::journal::Pos`]).
    pub(crate) settled: AtomicU64,
}

pub(crate) const SCHEMA: &str = "
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
    /// Opens (or creates) the queue at `path`: the journal beside it is
    /// applied, events the previous process was running are queued again
    /// (crash rescues), and the board is rebuilt. Starts the writer and the
    /// settler threads.
    pub fn open(path: &Path, cfg: AsyncConfig) -> Result<Arc<EventQueue>, QueueError> {
        let sync = if cfg.fsync { "FULL" } else { "NORMAL" };
        let open_err = |e: std::io::Error| QueueError::Open {
            path: path.display().to_string(),
            source: rusqlite::Error::ToSqlConversionFailure(Box::new(e)),
        };
        let mut conn = open_conn(path, sync)?;
        // The settler's connection, the only writer: a page cache that
        // holds a large batch's pages (none written twice in a
        // transaction), and checkpoints far enough apart that a page
        // rewritten by every batch is copied to the database once per many.
        conn.pragma_update(None, "cache_size", -65536)?;
        conn.pragma_update(None, "wal_autocheckpoint", 8192)?;
        conn.execute_batch(SCHEMA)?;
        conn.execute_batch(crate::settle::SCHEMA)?;
        let dir = path.with_extension("journal");
        std::fs::create_dir_all(&dir).map_err(open_err)?;
        let end = crate::settle::replay(&mut conn, &dir)?;
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
        let depths: HashMap<String, u64> = board
            .lanes
            .iter()
            .map(|(f, l)| (f.clone(), l.depth))
            .collect();
        let dead = crate::settle::dead_counts(&conn)?;
        let (last_token, last_id): (i64, i64) = conn.query_row(
            "SELECT COALESCE(MAX(lease), 0), COALESCE(MAX(id), 0) FROM events",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        // Everything in the journal is applied: a new segment starts, and
        // the old ones go.
        let start = crate::journal::Pos {
            seg: end.seg + 1,
            off: 0,
        };
        let appender =
            crate::journal::Appender::create(&dir, start.seg, cfg.fsync).map_err(open_err)?;
        crate::journal::delete_before(&dir, start.seg).map_err(open_err)?;
        let reader = open_conn(path, sync)?;
        reader.pragma_update(None, "query_only", true)?;
        let keys_db = open_conn(path, sync)?;
        keys_db.pragma_update(None, "query_only", true)?;
        let (to_settler, settler_rx) = mpsc::channel();
        let progress = Arc::new(Progress::default());
        progress.written.store(start.pack(), Ordering::SeqCst);
        let writer = Writer::new(appender, keys_db, to_settler, progress.clone(), last_id + 1);
        let queue = Arc::new(EventQueue {
            writer: Mutex::new(writer),
            sync_lock: tokio::sync::Mutex::new(()),
            synced: AtomicU64::new(start.pack()),
            reader: Mutex::new(reader),
            board: Mutex::new(board),
            wake: Notify::new(),
            cfg,
            metrics: crate::metrics::Metrics::new(),
            next_token: AtomicI64::new(last_token + 1),
            depths: Mutex::new(depths),
            dead: Mutex::new(dead),
            settled: AtomicU64::new(start.pack()),
        });
        let settler = crate::settle::Settler {
            conn,
            dir: dir.clone(),
            rx: settler_rx,
            queue: Arc::downgrade(&queue),
            reader: crate::journal::Reader::new(&dir, start),
            progress,
            written: start,
        };
        std::thread::Builder::new()
            .name("lampyr-events-settle".into())
            .spawn(move || settler.run())
            .map_err(open_err)?;
        Ok(queue)
    }

    /// Accepts an event: in the journal (and synced, with `fsync`) before
    /// it answers.
    pub(crate) async fn accept(
        &self,
        accept: Accept,
    ) -> Result<lampyr_scheduler::Queued, AcceptError> {
        let (queued, written) = self.accept_now(accept)?;
        if let Some(written) = written {
            self.committed(written)
                .await
                .map_err(|e| AcceptError::Store(e.to_string()))?;
        }
        Ok(queued)
    }

    /// Decides an accept and puts its event on the board; its record is
    /// written ([`Written::Now`]), or held for a group write
    /// ([`Written::Held`], see [`EventQueue::committed`]). `None` for a
    /// repeated idempotency key.
    pub(crate) fn accept_now(
        &self,
        accept: Accept,
    ) -> Result<(lampyr_scheduler::Queued, Option<Written>), AcceptError> {
        let now = now_ms();
        let mut w = self.writer.lock();
        let depth = self
            .depths
            .lock()
            .get(&accept.event.function)
            .copied()
            .unwrap_or(0);
        let (queued, new) = w.decide(depth, self.cfg.max_queue_depth, accept, now)?;
        let Some((ev, rec)) = new else {
            return Ok((queued, None));
        };
        // A record with an idempotency key is written at once (the key is
        // kept with its position); others wait for the accepts arriving
        // with them, and the first of them to look writes them all.
        let written = if rec.idempotency_key.is_some() {
            Written::Now(
                w.append_accept(rec)
                    .map_err(|e| AcceptError::Store(format!("could not write the event: {e}")))?,
            )
        } else {
            Written::Held(w.hold_accept(rec))
        };
        *self.depths.lock().entry(ev.function.clone()).or_default() += 1;
        w.trim_keys(self.settled.load(Ordering::Acquire));
        drop(w);
        self.metrics.accepted(&ev.function);
        self.board.lock().add(ev, now);
        self.wake.notify_one();
        Ok((queued, Some(written)))
    }

    /// Waits until an accept's record is written (and synced, with
    /// `fsync = true`). A held record is written by the first of the
    /// accepts held with it to get here, after the other tasks ready to run
    /// had their turn: concurrent accepts share one write (group commit).
    pub(crate) async fn committed(&self, written: Written) -> std::io::Result<()> {
        let end = match written {
            Written::Now(end) => end,
            Written::Held(ticket) => {
                tokio::task::yield_now().await;
                let mut w = self.writer.lock();
                if w.written(ticket) {
                    w.end()
                } else {
                    w.write_held().map_err(|e| {
                        std::io::Error::other(format!("could not write the event: {e}"))
                    })?
                }
            }
        };
        self.durable(end).await
    }

    /// With `fsync = true`, waits until the journal is synced up to `end`;
    /// the first waiter syncs for everyone behind it (group commit).
    pub(crate) async fn durable(&self, end: Pos) -> std::io::Result<()> {
        if !self.cfg.fsync {
            return Ok(());
        }
        let _one_at_a_time = self.sync_lock.lock().await;
        if self.synced.load(Ordering::Acquire) >= end.pack() {
            return Ok(());
        }
        let (file, target) = {
            let w = self.writer.lock();
            (w.sync_handle()?, w.end())
        };
        tokio::task::spawn_blocking(move || file.sync_data())
            .await
            .map_err(std::io::Error::other)??;
        self.synced.fetch_max(target.pack(), Ordering::AcqRel);
        Ok(())
    }

    /// A new lease token.
    pub(crate) fn token(&self) -> i64 {
        self.next_token.fetch_add(1, Ordering::Relaxed)
    }

    /// Takes the leases of queued events, `(id, token, until_ms)`, in the
    /// journal (one write) before it answers (a run that a crash
    /// interrupts is then known to be a rescue). False if they could not
    /// be written.
    pub(crate) async fn lease(&self, leases: &[(i64, i64, i64)]) -> bool {
        let end = self.writer.lock().append_leases(leases);
        match end {
            Ok(end) => self.durable(end).await.is_ok(),
            Err(e) => {
                tracing::error!("the event queue could not write a lease: {e}");
                false
            }
        }
    }

    /// Whether outcomes (or held accepts) wait to be written.
    pub(crate) fn outcomes_waiting(&self) -> bool {
        self.writer.lock().waiting()
    }

    /// Writes the outcomes reported since the last write.
    pub(crate) fn flush(&self) {
        self.writer.lock().flush();
    }

    /// Records how an attempt ended (written with the next write, or at
    /// the next [`EventQueue::flush`]); a destination's event is queued
    /// with it.
    pub(crate) fn finish(&self, id: i64, token: i64, function: &str, outcome: Finish) {
        let now = now_ms();
        let mut w = self.writer.lock();
        let destination = match &outcome {
            Finish::Succeeded { destination } | Finish::Dead { destination, .. } => {
                destination.clone()
            }
            _ => None,
        };
        // A destination that is full or refused is logged, not retried:
        // the source event is done.
        let destination = destination.and_then(|a| {
            let target = a.event.function.clone();
            let depth = self.depths.lock().get(&target).copied().unwrap_or(0);
            match w.decide(depth, self.cfg.max_queue_depth, a, now) {
                Ok((_, new)) => new,
                Err(e) => {
                    tracing::warn!(function = %target, "a destination record was not queued: {e:?}");
                    None
                }
            }
        });
        w.append_finish(
            id,
            token,
            now,
            &outcome,
            destination.as_ref().map(|(_, rec)| rec.clone()),
        );
        {
            let mut depths = self.depths.lock();
            if !matches!(outcome, Finish::Retry { .. } | Finish::Throttled { .. }) {
                if let Some(d) = depths.get_mut(function) {
                    *d = d.saturating_sub(1);
                }
            }
            if let Some((ev, _)) = &destination {
                *depths.entry(ev.function.clone()).or_default() += 1;
            }
        }
        if matches!(outcome, Finish::Dead { .. }) {
            *self.dead.lock().entry(function.to_string()).or_default() += 1;
        }
        drop(w);
        if let Some((ev, _)) = destination {
            self.metrics.accepted(&ev.function);
            self.board.lock().add(ev, now);
            self.wake.notify_one();
        }
    }

    /// Hands an operation to the settler, after everything written so far.
    fn slow(&self, op: SlowOp) {
        self.writer.lock().slow(op);
    }

    /// Forgets a deleted function's events.
    pub fn forget(&self, function: &str) {
        self.board.lock().forget(function);
        self.depths.lock().remove(function);
        self.dead.lock().remove(function);
        self.slow(SlowOp::Forget {
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
        self.slow(SlowOp::Redrive {
            function: function.to_string(),
            request_ids,
            reply,
        });
        rx.await.map_err(|_| QueueError::Closed)?
    }

    /// Deletes a function's dead letters. Returns how many.
    pub async fn purge(&self, function: &str) -> Result<usize, QueueError> {
        let (reply, rx) = oneshot::channel();
        self.slow(SlowOp::Purge {
            function: function.to_string(),
            reply,
        });
        rx.await.map_err(|_| QueueError::Closed)?
    }

    /// Prunes succeeded events and idempotency keys past their window.
    pub(crate) fn prune(&self) {
        self.slow(SlowOp::Prune {
            keep_finished: self.cfg.keep_finished,
        });
    }

    /// Events the settler queued again (a redrive): on the board, counted.
    pub(crate) fn redriven(&self, function: &str, evs: Vec<Ev>) {
        let n = evs.len() as u64;
        *self.depths.lock().entry(function.to_string()).or_default() += n;
        if let Some(d) = self.dead.lock().get_mut(function) {
            *d = d.saturating_sub(n);
        }
        let mut board = self.board.lock();
        for ev in evs {
            board.add(ev, now_ms());
        }
        drop(board);
        self.wake.notify_one();
    }

    /// Waits until everything written before this call is in the database.
    pub async fn settled(&self) {
        let (tx, rx) = oneshot::channel();
        self.slow(SlowOp::Barrier(tx));
        let _ = rx.await;
    }

    /// [`EventQueue::settled`] for a thread that may block (never an async
    /// task's).
    pub fn settled_blocking(&self) {
        let (tx, rx) = oneshot::channel();
        self.slow(SlowOp::Barrier(tx));
        let _ = rx.blocking_recv();
    }

    /// An event's payload, from the database.
    pub(crate) async fn payload(&self, id: i64) -> Result<Option<Bytes>, QueueError> {
        self.settled().await;
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

    /// One event, by request id; with its payload if `payload`. Blocks
    /// until the journal is applied: call it where blocking is allowed.
    pub fn get(&self, request_id: &str, payload: bool) -> Result<Option<EventInfo>, QueueError> {
        self.settled_blocking();
        self.read_one(request_id, payload)
    }

    /// One event as the database has it now (the latest writes may not be
    /// applied yet).
    pub(crate) fn read_one(
        &self,
        request_id: &str,
        payload: bool,
    ) -> Result<Option<EventInfo>, QueueError> {
        let db = self.reader.lock();
        let mut stmt = db.prepare_cached(&format!("{SELECT_INFO} WHERE request_id = ?1"))?;
        let info = stmt
            .query_row(params![request_id], |r| info_of(r, payload))
            .optional()?;
        Ok(info)
    }

    /// A function's events, newest first; only those in `state` if given.
    /// Blocks until the journal is applied: call it where blocking is
    /// allowed.
    pub fn list(
        &self,
        function: &str,
        state: Option<EventState>,
        limit: usize,
        payload: bool,
    ) -> Result<Vec<EventInfo>, QueueError> {
        self.settled_blocking();
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
    pub fn dead_count(&self, function: &str) -> u64 {
        self.dead.lock().get(function).copied().unwrap_or(0)
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

    /// The last firing of a timer, and when it was first seen, as the
    /// database has it now.
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
        self.slow(SlowOp::TimerSeen {
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

/// How long an idempotency key holds.
pub const IDEMPOTENCY_WINDOW: Duration = Duration::from_secs(24 * 3600);
