//! The settler: applies the journal to the SQLite database.
//!
//! One thread, the database's only writer. It reads the journal from where
//! it last got to, applies a batch of records in one transaction together
//! with the new position, and commits: a record is applied once, also
//! across a crash. Within a batch an event that was accepted, leased and
//! finished is one row written once (an `INSERT` of its final state), not
//! an insert and two updates.
//!
//! It runs at idle priority (`SCHED_IDLE`): under load the journal grows on
//! disk and is applied when the CPUs have time, so settling never takes CPU
//! from requests. It runs at normal priority while a read waits for it (a
//! barrier), while it has operations to apply (redrive, purge, ...), or
//! when it is more than [`URGENT_BACKLOG`] behind.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use lampyr_api::TriggerKind;
use rusqlite::{params, Connection, OptionalExtension};
use tokio::sync::oneshot;

use crate::journal::{self, AcceptRec, Outcome, Pos, Reader, Rec};
use crate::queue::{now_ms, Ev, EventQueue, QueueError, IDEMPOTENCY_WINDOW};

/// Records applied in one transaction at most.
const MAX_BATCH: usize = 4096;

/// Journal bytes behind at which settling runs at normal priority.
const URGENT_BACKLOG: u64 = 128 << 20;

/// How long records wait to be applied when nothing waits for them.
const GATHER: Duration = Duration::from_millis(200);

/// An operation that goes through the settler, in journal order.
pub(crate) enum SlowOp {
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
    Forget { function: String },
    /// A timer exists from now (its catch-up starts here).
    TimerSeen { function: String, timer: String },
    /// Prunes succeeded events and idempotency keys past their window.
    Prune { keep_finished: Duration },
    /// Answers once everything before it is in the database.
    Barrier(oneshot::Sender<()>),
}

/// What the writer tells the settler.
pub(crate) enum ToSettler {
    /// The journal has new records (see [`crate::writer::Progress`]).
    Written,
    /// Apply `op` once the records before `Pos` are applied.
    Op(Pos, SlowOp),
}

/// Creates the table that holds how far the journal is applied.
pub(crate) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS journal (
    one INTEGER PRIMARY KEY CHECK (one = 1),
    segment INTEGER NOT NULL,
    offset INTEGER NOT NULL
);
";

/// How far the journal is applied.
pub(crate) fn applied(conn: &Connection) -> rusqlite::Result<Pos> {
    Ok(conn
        .query_row("SELECT segment, offset FROM journal", [], |r| {
            Ok(Pos {
                seg: r.get::<_, i64>(0)? as u64,
                off: r.get::<_, i64>(1)? as u64,
            })
        })
        .optional()?
        .unwrap_or_default())
}

/// Applies everything in the journal (at start, before anything runs);
/// returns where it ends (at least the last segment there is).
pub(crate) fn replay(conn: &mut Connection, dir: &Path) -> Result<Pos, QueueError> {
    let from = applied(conn)?;
    let mut end = from;
    let mut total = 0;
    let segments = journal::segments(dir).map_err(|e| QueueError::Journal(e.to_string()))?;
    for seg in segments.into_iter().filter(|s| *s >= from.seg) {
        let start = if seg == from.seg {
            from
        } else {
            Pos { seg, off: 0 }
        };
        let mut reader = Reader::new(dir, start);
        let until = Pos {
            seg,
            off: u64::MAX >> 24,
        };
        loop {
            let n = apply_batch(conn, &mut reader, until)?;
            total += n;
            if n == 0 {
                break;
            }
        }
        end = reader.at();
    }
    if total > 0 {
        tracing::info!(records = total, "applied the event journal");
    }
    Ok(end)
}

/// The settler thread's state.
pub(crate) struct Settler {
    pub(crate) conn: Connection,
    pub(crate) dir: PathBuf,
    pub(crate) rx: mpsc::Receiver<ToSettler>,
    pub(crate) queue: Weak<EventQueue>,
    pub(crate) reader: Reader,
    pub(crate) progress: Arc<crate::writer::Progress>,
    pub(crate) written: Pos,
}

impl Settler {
    pub(crate) fn run(mut self) {
        let can_idle = lampyr_sandbox::idle_scheduling().is_ok();
        let mut idle = can_idle;
        let mut ops: VecDeque<(Pos, SlowOp)> = VecDeque::new();
        let mut failures = 0u32;
        // When the oldest record not applied was written (roughly).
        let mut since = Instant::now();
        loop {
            self.written = Pos::unpack(self.progress.written.load(Ordering::SeqCst));
            if self.reader.at() >= self.written && ops.is_empty() {
                // Asleep until the next append or operation says otherwise.
                self.progress.parked.store(true, Ordering::SeqCst);
                self.written = Pos::unpack(self.progress.written.load(Ordering::SeqCst));
                if self.reader.at() >= self.written {
                    match self.rx.recv() {
                        Ok(m) => self.take(m, &mut ops),
                        Err(_) => return,
                    }
                }
                self.progress.parked.store(false, Ordering::SeqCst);
                since = Instant::now();
            }
            while let Ok(m) = self.rx.try_recv() {
                self.take(m, &mut ops);
            }
            let urgent = !ops.is_empty() || self.behind() > URGENT_BACKLOG;
            if !urgent {
                // Records gather for a while: an event accepted, run and
                // finished within it is one row written once.
                if let Some(left) = GATHER.checked_sub(since.elapsed()) {
                    match self.rx.recv_timeout(left) {
                        Ok(m) => {
                            self.take(m, &mut ops);
                            continue;
                        }
                        Err(mpsc::RecvTimeoutError::Timeout) => {}
                        Err(mpsc::RecvTimeoutError::Disconnected) => return,
                    }
                }
            }
            if can_idle && urgent == idle {
                let _ = if urgent {
                    lampyr_sandbox::batch_scheduling()
                } else {
                    lampyr_sandbox::idle_scheduling()
                };
                idle = !urgent;
            }
            self.written = Pos::unpack(self.progress.written.load(Ordering::SeqCst));
            let until = ops
                .front()
                .map_or(self.written, |(p, _)| (*p).min(self.written));
            if let Err(e) = apply_batch(&mut self.conn, &mut self.reader, until) {
                failures += 1;
                tracing::error!(
                    "the event queue could not apply its journal (try {failures}): {e}; trying again"
                );
                std::thread::sleep(Duration::from_millis(100 * u64::from(failures.min(50))));
                continue;
            }
            failures = 0;
            let Some(queue) = self.queue.upgrade() else {
                return;
            };
            while ops.front().is_some_and(|(p, _)| *p <= self.reader.at()) {
                let (_, op) = ops.pop_front().expect("checked");
                apply_op(&mut self.conn, &queue, op);
            }
            queue
                .settled
                .store(self.reader.at().pack(), Ordering::Release);
            if let Err(e) = journal::delete_before(&self.dir, self.reader.at().seg) {
                tracing::warn!("the event queue could not delete applied journal segments: {e}");
            }
        }
    }

    fn take(&mut self, m: ToSettler, ops: &mut VecDeque<(Pos, SlowOp)>) {
        if let ToSettler::Op(p, op) = m {
            ops.push_back((p, op));
        }
        self.written = Pos::unpack(self.progress.written.load(Ordering::SeqCst));
    }

    /// Journal bytes not applied yet (roughly, across segments).
    fn behind(&self) -> u64 {
        let at = self.reader.at();
        if self.written.seg == at.seg {
            self.written.off.saturating_sub(at.off)
        } else {
            (self.written.seg - at.seg) * journal::SEGMENT_BYTES + self.written.off
        }
    }
}

/// An event accepted in the batch being applied, not written yet.
struct Row {
    a: AcceptRec,
    state: &'static str,
    attempts: i64,
    lease: i64,
    lease_until_ms: Option<i64>,
    finished_ms: Option<i64>,
}

/// Applies the records from the reader's position up to `until`, at most
/// [`MAX_BATCH`], in one transaction with the new position. Returns how
/// many; on an error the reader is back where it started.
fn apply_batch(
    conn: &mut Connection,
    reader: &mut Reader,
    until: Pos,
) -> Result<usize, QueueError> {
    let start = reader.at();
    let result = (|| -> Result<usize, QueueError> {
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let mut pending: BTreeMap<i64, Row> = BTreeMap::new();
        let mut n = 0;
        while n < MAX_BATCH {
            let Some((rec, _)) = reader
                .next(until)
                .map_err(|e| QueueError::Journal(e.to_string()))?
            else {
                break;
            };
            apply_rec(&tx, &mut pending, rec)?;
            n += 1;
        }
        if n == 0 {
            return Ok(0);
        }
        for row in pending.into_values() {
            insert_row(&tx, row)?;
        }
        let at = reader.at();
        exec(
            &tx,
            "INSERT INTO journal (one, segment, offset) VALUES (1, ?1, ?2)
             ON CONFLICT (one) DO UPDATE SET segment = ?1, offset = ?2",
            params![at.seg as i64, at.off as i64],
        )?;
        tx.commit()?;
        Ok(n)
    })();
    if result.is_err() {
        reader.rewind(start);
    }
    result
}

fn apply_rec(
    tx: &rusqlite::Transaction<'_>,
    pending: &mut BTreeMap<i64, Row>,
    rec: Rec,
) -> rusqlite::Result<()> {
    match rec {
        Rec::Accept(a) => accept(tx, pending, a),
        Rec::Lease {
            id,
            token,
            until_ms,
        } => {
            if let Some(r) = pending.get_mut(&id) {
                if r.state == "queued" {
                    r.state = "running";
                    r.lease = token;
                    r.lease_until_ms = Some(until_ms);
                }
                return Ok(());
            }
            exec(
                tx,
                "UPDATE events SET state = 'running', lease = ?2, lease_until_ms = ?3
                 WHERE id = ?1 AND state = 'queued'",
                params![id, token, until_ms],
            )?;
            Ok(())
        }
        Rec::Finish {
            id,
            token,
            at_ms,
            outcome,
            destination,
        } => {
            let applied = match pending.get_mut(&id) {
                Some(r) if r.state == "running" && r.lease == token => match outcome {
                    Outcome::Succeeded => {
                        r.state = "succeeded";
                        r.attempts += 1;
                        r.finished_ms = Some(at_ms);
                        true
                    }
                    Outcome::Dropped => {
                        pending.remove(&id);
                        true
                    }
                    other => {
                        let row = pending.remove(&id).expect("matched above");
                        insert_row(tx, row)?;
                        finish(tx, id, token, at_ms, &other)? > 0
                    }
                },
                Some(_) => {
                    let row = pending.remove(&id).expect("matched above");
                    insert_row(tx, row)?;
                    false
                }
                None => finish(tx, id, token, at_ms, &outcome)? > 0,
            };
            if let (true, Some(d)) = (applied, destination) {
                accept(tx, pending, d)?;
            }
            Ok(())
        }
    }
}

fn accept(
    tx: &rusqlite::Transaction<'_>,
    pending: &mut BTreeMap<i64, Row>,
    a: AcceptRec,
) -> rusqlite::Result<()> {
    if let Some(key) = &a.idempotency_key {
        exec(
            tx,
            "INSERT OR REPLACE INTO idempotency (function, key, request_id, created_ms) VALUES (?1, ?2, ?3, ?4)",
            params![a.function, key, a.request_id, a.created_ms],
        )?;
    }
    if let (Some(t), Some(tick)) = (&a.timer, a.tick_ms) {
        exec(
            tx,
            "INSERT INTO timer_ticks (function, timer, first_seen_ms, last_tick_ms, last_request_id)
             VALUES (?1, ?2, ?3, ?3, ?4)
             ON CONFLICT (function, timer) DO UPDATE SET last_tick_ms = ?3, last_request_id = ?4",
            params![a.function, t, tick, a.request_id],
        )?;
    }
    pending.insert(
        a.id,
        Row {
            a,
            state: "queued",
            attempts: 0,
            lease: 0,
            lease_until_ms: None,
            finished_ms: None,
        },
    );
    Ok(())
}

fn insert_row(tx: &rusqlite::Transaction<'_>, r: Row) -> rusqlite::Result<()> {
    let a = r.a;
    // A succeeded event's payload is not kept: nothing reads it again (a
    // destination got it when the event ended), and most of the queue's
    // bytes are payloads.
    let payload: &[u8] = if r.state == "succeeded" {
        &[]
    } else {
        a.payload.as_ref()
    };
    let n = exec(
        tx,
        "INSERT OR IGNORE INTO events (id, request_id, function, trigger, payload, created_ms, state,
                                       run_at_ms, attempts, lease, lease_until_ms, finished_ms, timer)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?6, ?8, ?9, ?10, ?11, ?12)",
        params![
            a.id,
            a.request_id,
            a.function,
            a.trigger,
            payload,
            a.created_ms,
            r.state,
            r.attempts,
            r.lease,
            r.lease_until_ms,
            r.finished_ms,
            a.timer
        ],
    )?;
    if n == 0 {
        tracing::error!(
            request_id = %a.request_id,
            function = %a.function,
            "an event's request id was already in the queue; the event was not stored again"
        );
    }
    Ok(())
}

/// Applies an outcome to a stored event under its lease; returns 0 if the
/// lease is no longer its own (taken over: too late).
fn finish(
    tx: &rusqlite::Transaction<'_>,
    id: i64,
    token: i64,
    now: i64,
    outcome: &Outcome,
) -> rusqlite::Result<usize> {
    match outcome {
        Outcome::Succeeded => exec(
            tx,
            "UPDATE events SET state = 'succeeded', attempts = attempts + 1, finished_ms = ?3,
                               payload = X''
             WHERE id = ?1 AND lease = ?2 AND state = 'running'",
            params![id, token, now],
        ),
        Outcome::Retry { run_at_ms, error } => exec(
            tx,
            "UPDATE events SET state = 'queued', attempts = attempts + 1, run_at_ms = ?3,
                               errors = json_insert(errors, '$[#]', json(?4))
             WHERE id = ?1 AND lease = ?2 AND state = 'running'",
            params![id, token, run_at_ms, error],
        ),
        Outcome::Throttled { run_at_ms } => exec(
            tx,
            "UPDATE events SET state = 'queued', run_at_ms = ?3
             WHERE id = ?1 AND lease = ?2 AND state = 'running'",
            params![id, token, run_at_ms],
        ),
        Outcome::Dead { reason, error } => exec(
            tx,
            "UPDATE events SET state = 'dead', attempts = attempts + ?3, finished_ms = ?4,
                               dead_reason = ?5,
                               errors = CASE WHEN ?6 IS NULL THEN errors
                                             ELSE json_insert(errors, '$[#]', json(?6)) END
             WHERE id = ?1 AND lease = ?2 AND state = 'running'",
            params![id, token, i64::from(error.is_some()), now, reason, error],
        ),
        Outcome::Dropped => exec(
            tx,
            "DELETE FROM events WHERE id = ?1 AND lease = ?2 AND state = 'running'",
            params![id, token],
        ),
    }
}

/// Applies one operation in a transaction of its own and answers it.
fn apply_op(conn: &mut Connection, queue: &Arc<EventQueue>, op: SlowOp) {
    match op {
        SlowOp::Barrier(reply) => {
            let _ = reply.send(());
        }
        SlowOp::Redrive {
            function,
            request_ids,
            reply,
        } => {
            let r = redrive(conn, &function, request_ids.as_deref());
            let r = r.map(|evs| {
                let n = evs.len();
                queue.redriven(&function, evs);
                n
            });
            let _ = reply.send(r.map_err(QueueError::from));
        }
        SlowOp::Purge { function, reply } => {
            let r = conn.execute(
                "DELETE FROM events WHERE function = ?1 AND state = 'dead'",
                params![function],
            );
            if r.is_ok() {
                queue.dead.lock().remove(&function);
            }
            let _ = reply.send(r.map_err(QueueError::from));
        }
        SlowOp::Forget { function } => {
            let r = (|| -> rusqlite::Result<()> {
                let tx = conn.transaction()?;
                for sql in [
                    "DELETE FROM events WHERE function = ?1",
                    "DELETE FROM idempotency WHERE function = ?1",
                    "DELETE FROM timer_ticks WHERE function = ?1",
                ] {
                    tx.execute(sql, params![function])?;
                }
                tx.commit()
            })();
            if let Err(e) = r {
                tracing::error!(function = %function, "the event queue could not forget a deleted function's events: {e}");
            }
        }
        SlowOp::TimerSeen { function, timer } => {
            if let Err(e) = conn.execute(
                "INSERT OR IGNORE INTO timer_ticks (function, timer, first_seen_ms) VALUES (?1, ?2, ?3)",
                params![function, timer, now_ms()],
            ) {
                tracing::warn!(function = %function, timer = %timer, "the event queue could not note a timer: {e}");
            }
        }
        SlowOp::Prune { keep_finished } => {
            let now = now_ms();
            let r = conn
                .execute(
                    "DELETE FROM events WHERE state = 'succeeded' AND finished_ms < ?1",
                    params![now - keep_finished.as_millis() as i64],
                )
                .and_then(|_| {
                    conn.execute(
                        "DELETE FROM idempotency WHERE created_ms < ?1",
                        params![now - IDEMPOTENCY_WINDOW.as_millis() as i64],
                    )
                });
            if let Err(e) = r {
                tracing::warn!("the event queue could not prune finished events: {e}");
            }
        }
    }
}

/// Queues a function's dead letters again (those named, or all): attempts
/// start over, the age from now.
fn redrive(
    conn: &mut Connection,
    function: &str,
    request_ids: Option<&[String]>,
) -> rusqlite::Result<Vec<Ev>> {
    let now = now_ms();
    let tx = conn.transaction()?;
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
                function: function.to_string(),
                trigger: r.get::<_, String>(2)?.parse().unwrap_or(TriggerKind::Async),
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
            if request_ids.is_none_or(|ids| ids.contains(&ev.request_id)) {
                redriven.push(ev);
            }
        }
    }
    for ev in &redriven {
        tx.execute(
            "UPDATE events SET state = 'queued', attempts = 0, created_ms = ?2,
             run_at_ms = ?2, finished_ms = NULL, dead_reason = NULL WHERE id = ?1",
            params![ev.id, now],
        )?;
    }
    tx.commit()?;
    Ok(redriven)
}

/// Runs one statement through the connection's statement cache (most
/// statements here run once per event: parsing each time would cost more
/// than running them).
fn exec(
    tx: &rusqlite::Transaction<'_>,
    sql: &str,
    p: impl rusqlite::Params,
) -> rusqlite::Result<usize> {
    tx.prepare_cached(sql)?.execute(p)
}

/// Dead letters per function, as stored.
pub(crate) fn dead_counts(conn: &Connection) -> rusqlite::Result<HashMap<String, u64>> {
    let mut stmt = conn
        .prepare("SELECT function, COUNT(*) FROM events WHERE state = 'dead' GROUP BY function")?;
    let rows = stmt.query_map([], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
    })?;
    rows.collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::Appender;

    /// A minute ago, the same for every record of a test run (idempotency
    /// keys hold a day from their event's creation).
    fn base() -> i64 {
        static BASE: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
        *BASE.get_or_init(|| now_ms() - 60_000)
    }

    fn accept(id: i64, key: Option<&str>) -> AcceptRec {
        AcceptRec {
            id,
            request_id: format!("req-{id}"),
            function: "f".into(),
            trigger: "async".into(),
            payload: format!("{{\"n\":{id}}}").into_bytes().into(),
            created_ms: base() + id,
            timer: None,
            tick_ms: None,
            idempotency_key: key.map(str::to_string),
        }
    }

    fn finish(id: i64, token: i64, outcome: Outcome) -> Rec {
        Rec::Finish {
            id,
            token,
            at_ms: 5_000 + id,
            outcome,
            destination: None,
        }
    }

    fn lease(id: i64, token: i64) -> Rec {
        Rec::Lease {
            id,
            token,
            until_ms: 9_000,
        }
    }

    fn error(n: u32) -> String {
        serde_json::to_string(&lampyr_api::events::AttemptError {
            attempt: n,
            at: "2026-01-01T00:00:00Z".into(),
            error_type: "Error".into(),
            message: format!("attempt {n} failed"),
        })
        .unwrap()
    }

    /// Every way an event goes, in one journal.
    fn history() -> Vec<Rec> {
        let retry = |n: i64| Outcome::Retry {
            run_at_ms: 7_000 + n,
            error: error(n as u32),
        };
        vec![
            // 1: runs and succeeds; its success queues a destination (6).
            Rec::Accept(accept(1, None)),
            lease(1, 10),
            Rec::Finish {
                id: 1,
                token: 10,
                at_ms: 5_001,
                outcome: Outcome::Succeeded,
                destination: Some(accept(6, None)),
            },
            // 2: fails twice and is dead-lettered.
            Rec::Accept(accept(2, Some("k2"))),
            lease(2, 11),
            finish(2, 11, retry(1)),
            lease(2, 12),
            finish(2, 12, retry(2)),
            lease(2, 13),
            finish(
                2,
                13,
                Outcome::Dead {
                    reason: "retries_exhausted".into(),
                    error: Some(error(3)),
                },
            ),
            // 3: leased and still running (a crash rescues it).
            Rec::Accept(accept(3, None)),
            lease(3, 14),
            // 4: throttled, queued again; then dropped (function deleted).
            Rec::Accept(accept(4, None)),
            lease(4, 15),
            finish(4, 15, Outcome::Throttled { run_at_ms: 8_000 }),
            lease(4, 16),
            finish(4, 16, Outcome::Dropped),
            // 5: an outcome under a lease that is not its own is ignored.
            Rec::Accept(accept(5, None)),
            lease(5, 17),
            finish(5, 99, Outcome::Succeeded),
        ]
    }

    fn db() -> (tempfile::TempDir, Connection) {
        let dir = tempfile::tempdir().unwrap();
        let conn = Connection::open(dir.path().join("events.db")).unwrap();
        conn.execute_batch(crate::queue::SCHEMA).unwrap();
        conn.execute_batch(SCHEMA).unwrap();
        std::fs::create_dir(dir.path().join("journal")).unwrap();
        (dir, conn)
    }

    /// Writes `recs` to a journal segment; returns each record's end.
    fn write(dir: &Path, recs: &[Rec]) -> Vec<Pos> {
        let mut a = Appender::create(dir, 1, false).unwrap();
        recs.iter()
            .map(|r| {
                let mut buf = Vec::new();
                r.encode(&mut buf);
                a.append(&buf).unwrap()
            })
            .collect()
    }

    fn rows(conn: &Connection) -> Vec<String> {
        let mut stmt = conn
            .prepare(
                "SELECT id, request_id, state, attempts, rescues, lease, run_at_ms, errors,
                        finished_ms, dead_reason FROM events ORDER BY id",
            )
            .unwrap();
        let out = stmt
            .query_map([], |r| {
                Ok(format!(
                    "{} {} {} {} {} {} {} {} {:?} {:?}",
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, i64>(4)?,
                    r.get::<_, i64>(5)?,
                    r.get::<_, i64>(6)?,
                    r.get::<_, String>(7)?,
                    r.get::<_, Option<i64>>(8)?,
                    r.get::<_, Option<String>>(9)?,
                ))
            })
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        out
    }

    #[test]
    fn a_journal_applied_at_once_or_record_by_record_gives_the_same_rows() {
        let (d1, mut whole) = db();
        let j1 = d1.path().join("journal");
        write(&j1, &history());
        let end = replay(&mut whole, &j1).unwrap();
        assert_eq!(applied(&whole).unwrap(), end);

        let (d2, mut one_by_one) = db();
        let j2 = d2.path().join("journal");
        let ends = write(&j2, &history());
        let mut reader = Reader::new(&j2, Pos { seg: 1, off: 0 });
        for e in &ends {
            assert_eq!(apply_batch(&mut one_by_one, &mut reader, *e).unwrap(), 1);
        }
        let got = rows(&whole);
        assert_eq!(got, rows(&one_by_one));
        assert_eq!(got.len(), 5, "{got:#?}");
        assert!(got[0].starts_with("1 req-1 succeeded 1 0 10"), "{}", got[0]);
        assert!(got[1].starts_with("2 req-2 dead 3 0 13 7002"), "{}", got[1]);
        assert!(got[1].contains("attempt 1 failed") && got[1].contains("attempt 3 failed"));
        assert!(got[2].starts_with("3 req-3 running 0 0 14"), "{}", got[2]);
        assert!(got[3].starts_with("5 req-5 running 0 0 17"), "{}", got[3]);
        assert!(got[4].starts_with("6 req-6 queued 0 0 0"), "{}", got[4]);
        let key: String = whole
            .query_row(
                "SELECT request_id FROM idempotency WHERE function = 'f' AND key = 'k2'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(key, "req-2");
    }

    #[test]
    fn a_record_is_applied_once_across_restarts() {
        let (d, mut conn) = db();
        let j = d.path().join("journal");
        let recs = history();
        let ends = write(&j, &recs);
        // Applied up to the middle, then the process stops.
        let mut reader = Reader::new(&j, Pos { seg: 1, off: 0 });
        apply_batch(&mut conn, &mut reader, ends[8]).unwrap();
        let partial = applied(&conn).unwrap();
        assert_eq!(partial, ends[8]);
        // The next start applies the rest, and a start after that nothing.
        replay(&mut conn, &j).unwrap();
        let after = rows(&conn);
        replay(&mut conn, &j).unwrap();
        assert_eq!(rows(&conn), after);

        let (d2, mut fresh) = db();
        let j2 = d2.path().join("journal");
        write(&j2, &recs);
        replay(&mut fresh, &j2).unwrap();
        assert_eq!(after, rows(&fresh));
    }

    #[tokio::test]
    async fn the_queue_reopens_with_what_its_journal_holds() {
        let (d, conn) = db();
        drop(conn);
        let db_path = d.path().join("events.db");
        let j = db_path.with_extension("journal");
        std::fs::create_dir_all(&j).unwrap();
        // A journal a killed server left, with a record cut short at its end.
        write(&j, &history());
        let mut torn = Vec::new();
        Rec::Accept(accept(7, None)).encode(&mut torn);
        let path = j.join(format!("{:016}.journal", 1));
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        std::io::Write::write_all(&mut f, &torn[..torn.len() - 3]).unwrap();
        drop(f);

        let q = EventQueue::open(&db_path, crate::AsyncConfig::default()).unwrap();
        let get = |id: &str| {
            let q = q.clone();
            let id = id.to_string();
            std::thread::spawn(move || q.get(&id, false).unwrap())
                .join()
                .unwrap()
        };
        use lampyr_api::events::EventState;
        assert_eq!(get("req-1").unwrap().state, EventState::Succeeded);
        assert_eq!(get("req-2").unwrap().state, EventState::DeadLettered);
        assert_eq!(get("req-2").unwrap().errors.len(), 3);
        // Running when the server died: queued again, a rescue, no attempt.
        let rescued = get("req-3").unwrap();
        assert_eq!((rescued.rescues, rescued.attempts), (1, 0));
        assert!(get("req-7").is_none(), "a record cut short is not an event");
        assert_eq!(q.dead_count("f"), 1);
        // Events 3, 5 (rescued) and 6 (the destination) wait to run.
        assert_eq!(q.depth("f").0, 3);
        // Keys applied before hold: the same key is the first event.
        let again = q
            .accept(crate::queue::Accept {
                event: lampyr_scheduler::NewEvent {
                    function: "f".into(),
                    request_id: "req-new".into(),
                    trigger: lampyr_api::TriggerKind::Async,
                    payload: b"{}".to_vec(),
                    idempotency_key: Some("k2".into()),
                },
                tick: None,
            })
            .await
            .unwrap();
        assert_eq!(
            (again.request_id.as_str(), again.duplicate),
            ("req-2", true)
        );
        // A new event gets an id after every one the journal had.
        let new = q
            .accept(crate::queue::Accept {
                event: lampyr_scheduler::NewEvent {
                    function: "f".into(),
                    request_id: "req-8".into(),
                    trigger: lampyr_api::TriggerKind::Async,
                    payload: b"{}".to_vec(),
                    idempotency_key: Some("k8".into()),
                },
                tick: None,
            })
            .await
            .unwrap();
        assert!(!new.duplicate);
        q.settled().await;
        let id: i64 = {
            let c = Connection::open(&db_path).unwrap();
            c.query_row(
                "SELECT id FROM events WHERE request_id = 'req-8'",
                [],
                |r| r.get(0),
            )
            .unwrap()
        };
        assert_eq!(id, 7);
        // Only the new segment is left.
        assert_eq!(journal::segments(&j).unwrap(), vec![2]);
    }

    #[tokio::test]
    async fn a_queue_written_before_the_journal_existed_opens() {
        let dir = tempfile::tempdir().unwrap();
        let db_path = dir.path().join("events.db");
        {
            // The tables as the previous version wrote them.
            let c = Connection::open(&db_path).unwrap();
            c.execute_batch(
                "CREATE TABLE events (id INTEGER PRIMARY KEY, request_id TEXT NOT NULL UNIQUE,
                    function TEXT NOT NULL, trigger TEXT NOT NULL, payload BLOB NOT NULL,
                    created_ms INTEGER NOT NULL, state TEXT NOT NULL, run_at_ms INTEGER NOT NULL,
                    attempts INTEGER NOT NULL DEFAULT 0, rescues INTEGER NOT NULL DEFAULT 0,
                    lease INTEGER NOT NULL DEFAULT 0, lease_until_ms INTEGER,
                    errors TEXT NOT NULL DEFAULT '[]', finished_ms INTEGER, dead_reason TEXT, timer TEXT);
                 CREATE INDEX events_by_state ON events (state, function, id);
                 CREATE TABLE idempotency (function TEXT NOT NULL, key TEXT NOT NULL,
                    request_id TEXT NOT NULL, created_ms INTEGER NOT NULL, PRIMARY KEY (function, key));
                 CREATE TABLE timer_ticks (function TEXT NOT NULL, timer TEXT NOT NULL,
                    first_seen_ms INTEGER NOT NULL, last_tick_ms INTEGER, last_request_id TEXT,
                    PRIMARY KEY (function, timer));
                 INSERT INTO events (request_id, function, trigger, payload, created_ms, state, run_at_ms)
                    VALUES ('old-queued', 'f', 'async', X'7B7D', 1, 'queued', 1),
                           ('old-running', 'f', 'async', X'7B7D', 2, 'running', 2);
                 INSERT INTO events (request_id, function, trigger, payload, created_ms, state, run_at_ms,
                                     attempts, dead_reason, finished_ms)
                    VALUES ('old-dead', 'f', 'timer', X'7B7D', 3, 'dead', 3, 3, 'retries_exhausted', 4);",
            )
            .unwrap();
        }
        let q = EventQueue::open(&db_path, crate::AsyncConfig::default()).unwrap();
        assert_eq!(q.depth("f").0, 2);
        assert_eq!(q.dead_count("f"), 1);
        let q2 = q.clone();
        let running = std::thread::spawn(move || q2.get("old-running", true).unwrap())
            .join()
            .unwrap()
            .unwrap();
        assert_eq!(running.rescues, 1);
        assert_eq!(running.payload, Some(serde_json::json!({})));
    }

    /// Spawns 32 accepts at once and waits for their answers.
    async fn accept_32_at_once(q: &Arc<EventQueue>) {
        let accepts = (0..32).map(|n| {
            let q = q.clone();
            tokio::spawn(async move {
                q.accept(crate::queue::Accept {
                    event: lampyr_scheduler::NewEvent {
                        function: "f".into(),
                        request_id: format!("together-{n}"),
                        trigger: lampyr_api::TriggerKind::Async,
                        payload: b"{}".to_vec(),
                        idempotency_key: None,
                    },
                    tick: None,
                })
                .await
            })
        });
        for a in futures_util::future::join_all(accepts).await {
            assert!(!a.unwrap().unwrap().duplicate);
        }
    }

    /// Waits for the settler, then counts the events in the database.
    async fn settled_count(q: &EventQueue, db_path: &Path) -> i64 {
        q.settled().await;
        Connection::open(db_path)
            .unwrap()
            .query_row("SELECT COUNT(*) FROM events", [], |r| r.get(0))
            .unwrap()
    }

    #[tokio::test(flavor = "current_thread")]
    async fn accepts_arriving_together_share_a_write() {
        let dir = tempfile::tempdir().unwrap();
        let db_path = dir.path().join("events.db");
        let q = EventQueue::open(&db_path, crate::AsyncConfig::default()).unwrap();
        let before = q.writer.lock().writes;
        accept_32_at_once(&q).await;
        // All 32 ready at once: the first to look wrote them all.
        assert_eq!(q.writer.lock().writes - before, 1);
        assert!(
            !q.writer.lock().waiting(),
            "every answered accept is written"
        );
        assert_eq!(settled_count(&q, &db_path).await, 32);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn with_fsync_accepts_arriving_together_share_a_sync() {
        let dir = tempfile::tempdir().unwrap();
        let db_path = dir.path().join("events.db");
        let cfg = crate::AsyncConfig {
            fsync: true,
            ..crate::AsyncConfig::default()
        };
        let q = EventQueue::open(&db_path, cfg).unwrap();
        accept_32_at_once(&q).await;
        // Synced as far as the journal goes once every accept answered.
        let end = q.writer.lock().end();
        assert!(q.synced.load(Ordering::Acquire) >= end.pack());
        assert_eq!(settled_count(&q, &db_path).await, 32);
    }
}
