//! The queue's writing side: turns accepts, leases and outcomes into
//! journal records, under one lock, in the caller's thread.
//!
//! An append is one `write` of a few hundred bytes to the page cache, which
//! a killed server does not lose: cheaper than handing the record to
//! another thread and waking the caller again when it is done. With
//! `fsync = true` the caller then waits for the syncer thread, which syncs
//! whatever has been appended since its last sync in one `fdatasync`
//! (group commit).
//!
//! It decides what can be decided in memory: an accept is refused when its
//! function's queue is full, a repeated idempotency key answers with the
//! first event's request id (keys not applied yet are in memory, older
//! ones in the database), and event ids are counted here. What the records
//! change in the database is the settler's (`settle.rs`) to apply.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};

use bytes::Bytes;
use rusqlite::{params, Connection, OptionalExtension};

use crate::journal::{AcceptRec, Appender, Outcome, Pos, Rec};
use crate::queue::{Accept, AcceptError, Ev, Finish, IDEMPOTENCY_WINDOW};
use crate::settle::{SlowOp, ToSettler};

/// Idempotency keys kept in memory before the applied ones are dropped.
const KEYS_IN_MEMORY: usize = 4096;

/// Where the settler learns how far the journal goes, without a message
/// per append.
#[derive(Default)]
pub(crate) struct Progress {
    /// The end of the journal (a packed [`Pos`]).
    pub(crate) written: AtomicU64,
    /// The settler is waiting for a message: the next append sends one.
    pub(crate) parked: AtomicBool,
}

pub(crate) struct Writer {
    journal: Appender,
    /// Reads idempotency keys the settler has applied.
    keys_db: Connection,
    /// Keys not applied yet (or not long ago): `(function, key)` → the
    /// first event's request id and where its record ends.
    keys: HashMap<(String, String), (String, Pos)>,
    next_id: i64,
    settler: mpsc::Sender<ToSettler>,
    progress: Arc<Progress>,
    /// Outcomes, and accepts held for a group write, waiting to be
    /// written before the next records.
    unwritten: Vec<u8>,
    /// Bytes written from `unwritten` so far: a held accept is written once
    /// this passes its ticket (see [`Writer::hold_accept`]).
    flushed: u64,
    buf: Vec<u8>,
    /// Writes made.
    #[cfg(test)]
    pub(crate) writes: u64,
}

/// A decided accept: the event and its record.
pub(crate) type NewEvent = (Ev, AcceptRec);

impl Writer {
    pub(crate) fn new(
        journal: Appender,
        keys_db: Connection,
        settler: mpsc::Sender<ToSettler>,
        progress: Arc<Progress>,
        next_id: i64,
    ) -> Writer {
        Writer {
            journal,
            keys_db,
            keys: HashMap::new(),
            next_id,
            settler,
            progress,
            unwritten: Vec::new(),
            flushed: 0,
            buf: Vec::with_capacity(4096),
            #[cfg(test)]
            writes: 0,
        }
    }

    /// Decides an accept: the event and its journal record, or the first
    /// event's request id for a repeated key (no event), or why not.
    pub(crate) fn decide(
        &mut self,
        depth: u64,
        max_depth: u64,
        a: Accept,
        now: i64,
    ) -> Result<(lampyr_scheduler::Queued, Option<NewEvent>), AcceptError> {
        let Accept { event: e, tick } = a;
        if let Some(key) = &e.idempotency_key {
            if let Some(request_id) = self.seen(&e.function, key, now)? {
                return Ok((
                    lampyr_scheduler::Queued {
                        request_id,
                        duplicate: true,
                    },
                    None,
                ));
            }
        }
        if depth >= max_depth {
            return Err(AcceptError::Full { depth });
        }
        let id = self.next_id;
        self.next_id += 1;
        let rec = AcceptRec {
            id,
            request_id: e.request_id.clone(),
            function: e.function.clone(),
            trigger: e.trigger.as_str().to_string(),
            payload: Bytes::from(e.payload),
            created_ms: now,
            timer: tick.as_ref().map(|(t, _)| t.clone()),
            tick_ms: tick.map(|(_, t)| t),
            idempotency_key: e.idempotency_key,
        };
        let ev = Ev {
            id,
            request_id: e.request_id,
            function: e.function,
            trigger: e.trigger,
            payload: Some(rec.payload.clone()),
            created_ms: now,
            attempts: 0,
            timer: rec.timer.clone(),
            lease: 0,
            throttles: 0,
        };
        Ok((
            lampyr_scheduler::Queued {
                request_id: ev.request_id.clone(),
                duplicate: false,
            },
            Some((ev, rec)),
        ))
    }

    /// Appends an accept's record; returns where the journal ends.
    pub(crate) fn append_accept(&mut self, rec: AcceptRec) -> std::io::Result<Pos> {
        let key = rec
            .idempotency_key
            .clone()
            .map(|k| ((rec.function.clone(), k), rec.request_id.clone()));
        let end = self.append(&Rec::Accept(rec))?;
        if let Some((k, request_id)) = key {
            self.keys.insert(k, (request_id, end));
        }
        Ok(end)
    }

    /// Holds an accept's record (one without an idempotency key) for the
    /// next write, shared with the accepts that arrive meanwhile; returns
    /// its ticket, written once [`Writer::written`] says so.
    pub(crate) fn hold_accept(&mut self, rec: AcceptRec) -> u64 {
        debug_assert!(rec.idempotency_key.is_none(), "a key needs its position");
        Rec::Accept(rec).encode(&mut self.unwritten);
        self.flushed + self.unwritten.len() as u64
    }

    /// Whether anything waits to be written.
    pub(crate) fn waiting(&self) -> bool {
        !self.unwritten.is_empty()
    }

    /// Whether the record of this ticket is written.
    pub(crate) fn written(&self, ticket: u64) -> bool {
        self.flushed >= ticket
    }

    /// Writes what is held and waiting; returns where the journal ends.
    pub(crate) fn write_held(&mut self) -> std::io::Result<Pos> {
        if self.unwritten.is_empty() {
            return Ok(self.journal.end());
        }
        self.write_with(&[])
    }

    /// Appends leases, `(id, token, until_ms)`; returns where the journal
    /// ends.
    pub(crate) fn append_leases(&mut self, leases: &[(i64, i64, i64)]) -> std::io::Result<Pos> {
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        for &(id, token, until_ms) in leases {
            Rec::Lease {
                id,
                token,
                until_ms,
            }
            .encode(&mut buf);
        }
        let end = self.write_with(&buf);
        self.buf = buf;
        end
    }

    /// Writes the outcomes waiting to be written, if any.
    pub(crate) fn flush(&mut self) {
        if self.unwritten.is_empty() {
            return;
        }
        if let Err(e) = self.write_with(&[]) {
            tracing::error!("the event queue could not write outcomes (written later): {e}");
        }
    }

    /// Records an outcome (with the destination's record, if any), to be
    /// written with the next write or flush: an outcome needs no answer,
    /// and one lost to a crash only means its event runs again (a rescue).
    pub(crate) fn append_finish(
        &mut self,
        id: i64,
        token: i64,
        now: i64,
        outcome: &Finish,
        destination: Option<AcceptRec>,
    ) {
        let outcome = match outcome {
            Finish::Succeeded { .. } => Outcome::Succeeded,
            Finish::Retry { run_at_ms, error } => Outcome::Retry {
                run_at_ms: *run_at_ms,
                error: serde_json::to_string(error).unwrap_or_default(),
            },
            Finish::Throttled { run_at_ms } => Outcome::Throttled {
                run_at_ms: *run_at_ms,
            },
            Finish::Dead { reason, error, .. } => Outcome::Dead {
                reason: reason.as_str().to_string(),
                error: error
                    .as_ref()
                    .map(|e| serde_json::to_string(e).unwrap_or_default()),
            },
            Finish::Dropped => Outcome::Dropped,
        };
        let rec = Rec::Finish {
            id,
            token,
            at_ms: now,
            outcome,
            destination,
        };
        rec.encode(&mut self.unwritten);
    }

    /// Sends an operation to the settler, to apply after everything
    /// appended so far.
    pub(crate) fn slow(&mut self, op: SlowOp) {
        if let SlowOp::Forget { function } = &op {
            self.keys.retain(|(f, _), _| f != function);
        }
        // The outcomes waiting are written first: the operation comes after.
        self.flush();
        let _ = self.settler.send(ToSettler::Op(self.journal.end(), op));
    }

    /// Drops keys the settler has applied, once there are many.
    pub(crate) fn trim_keys(&mut self, settled: u64) {
        if self.keys.len() > KEYS_IN_MEMORY {
            self.keys.retain(|_, (_, p)| p.pack() > settled);
        }
    }

    /// Writes `rec` after the outcomes waiting to be written.
    fn append(&mut self, rec: &Rec) -> std::io::Result<Pos> {
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        rec.encode(&mut buf);
        let end = self.write_with(&buf);
        self.buf = buf;
        end
    }

    /// Writes the outcomes and held accepts waiting, then `records`, in one
    /// write. On an error what waited waits for the next write (an outcome
    /// must not be lost; a held accept's caller hears of the error, and its
    /// event may still run, as after a lost answer); `records` are dropped
    /// (their callers hear of the error).
    fn write_with(&mut self, records: &[u8]) -> std::io::Result<Pos> {
        let waiting = self.unwritten.len();
        self.unwritten.extend_from_slice(records);
        match self.journal.append(&self.unwritten) {
            Ok(end) => {
                #[cfg(test)]
                {
                    self.writes += 1;
                }
                self.flushed += waiting as u64;
                self.unwritten.clear();
                self.progress.written.store(end.pack(), Ordering::SeqCst);
                if self.progress.parked.swap(false, Ordering::SeqCst) {
                    let _ = self.settler.send(ToSettler::Written);
                }
                Ok(end)
            }
            Err(e) => {
                self.unwritten.truncate(waiting);
                Err(e)
            }
        }
    }

    /// The request id of an earlier event with this key, if any.
    fn seen(&self, function: &str, key: &str, now: i64) -> Result<Option<String>, AcceptError> {
        let k = (function.to_string(), key.to_string());
        if let Some((request_id, _)) = self.keys.get(&k) {
            return Ok(Some(request_id.clone()));
        }
        self.keys_db
            .prepare_cached(
                "SELECT request_id FROM idempotency WHERE function = ?1 AND key = ?2 AND created_ms >= ?3",
            )
            .and_then(|mut s| {
                s.query_row(
                    params![function, key, now - IDEMPOTENCY_WINDOW.as_millis() as i64],
                    |r| r.get(0),
                )
                .optional()
            })
            .map_err(|e| AcceptError::Store(e.to_string()))
    }

    /// The current segment's file, to sync.
    pub(crate) fn sync_handle(&self) -> std::io::Result<std::fs::File> {
        self.journal.try_clone_file()
    }

    /// Where the journal ends.
    pub(crate) fn end(&self) -> Pos {
        self.journal.end()
    }
}
