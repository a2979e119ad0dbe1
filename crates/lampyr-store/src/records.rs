//! Invocation records, stored in batches: one row per function and flush of
//! the record writer, holding that flush's records as one JSON array. A busy
//! function's thousand records a second cost a few row writes, not a
//! thousand (each with its index entries, and a thousand deletes when they
//! age out). Rows are found by function and time; a record by request id
//! through the time in its (time-ordered) id. Old rows are pruned whole, by
//! age and by count.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lampyr_api::{InvocationRecord, PhaseTimes};
use parking_lot::Mutex;
use rusqlite::{params, Connection};
use serde::{Deserialize, Serialize};

use crate::Result;

/// `id` is the sequence number of the batch's last record: ids grow by each
/// batch's record count, so the newest N records are those in rows with
/// `id > MAX(id) - N` (plus the one row straddling the boundary).
const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS invocation_batches (
    id        INTEGER PRIMARY KEY,
    function  TEXT NOT NULL,
    first_ms  INTEGER NOT NULL,
    last_ms   INTEGER NOT NULL,
    count     INTEGER NOT NULL,
    records   BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS invocation_batches_by_function ON invocation_batches (function, last_ms);
CREATE INDEX IF NOT EXISTS invocation_batches_by_time ON invocation_batches (last_ms, first_ms);
CREATE INDEX IF NOT EXISTS invocation_batches_by_first ON invocation_batches (first_ms);
"#;

/// Which records to read.
#[derive(Debug, Clone, Default)]
pub struct RecordQuery {
    /// At most this many, newest first.
    pub limit: usize,
    /// Only records that started at or after this time.
    pub since: Option<SystemTime>,
    /// Only records with this status.
    pub status: Option<lampyr_api::Status>,
    /// Only invocations that reached an instance (not throttled ones, nor
    /// those whose instance failed to start).
    pub ran: bool,
}

/// How long records are kept.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    pub max_age: Duration,
    pub max_count: u64,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            max_age: Duration::from_secs(7 * 24 * 3600),
            max_count: 100_000,
        }
    }
}

pub struct RecordStore {
    /// Writes: inserts, pruning, deletes.
    db: Mutex<Connection>,
    /// Reads, on a connection of their own: in WAL mode a read sees the
    /// last committed batch and never waits for a write in progress (the
    /// record writer runs at idle priority, and may hold `db` for a while
    /// when the CPUs are busy).
    reader: Mutex<Connection>,
}

fn ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn parse_rfc3339(s: &str) -> i64 {
    humantime::parse_rfc3339(s).map(ms).unwrap_or(0)
}

/// One record inside a batch, stored as a JSON array in this field order
/// (field names once in the code, not in every record; the function is the
/// row's). Append fields, never reorder them.
#[derive(Serialize, Deserialize)]
struct Row<S>(
    /* request_id */ S,
    /* version */ u64,
    /* trigger */ S,
    /* start_ms */ i64,
    /* start */ S,
    /* phases: queue, code, sandbox, runtime, init, exec */
    f64,
    Option<f64>,
    Option<f64>,
    Option<f64>,
    Option<f64>,
    f64,
    /* duration_ms */ f64,
    /* billed_ms */ u64,
    /* gb_seconds */ f64,
    /* memory_mb */ u32,
    /* max_memory_used_mb */ Option<f64>,
    /* status */ S,
    /* error_type */ Option<S>,
    /* http_status: a number, or null when no HTTP status was sent */
    Option<u16>,
    /* response_bytes */ u64,
    /* instance */ Option<S>,
    /* attempt, absent from batches written before it */
    #[serde(default)] Option<u32>,
    /* stream_bytes, absent from batches written before it */
    #[serde(default)] Option<u64>,
);

impl<'a> Row<&'a str> {
    fn of(r: &'a InvocationRecord) -> Self {
        let p = &r.phases;
        Row(
            &r.request_id,
            r.version,
            r.trigger.as_str(),
            parse_rfc3339(&r.start_time),
            r.start.as_str(),
            p.queue,
            p.code,
            p.sandbox,
            p.runtime,
            p.init,
            p.exec,
            r.duration_ms,
            r.billed_ms,
            r.gb_seconds,
            r.memory_mb,
            r.max_memory_used_mb,
            r.status.as_str(),
            r.error_type.as_deref(),
            r.http_status,
            r.response_bytes,
            r.instance.as_deref(),
            r.attempt,
            r.stream_bytes,
        )
    }
}

/// A stored trigger kind; one this version does not know reads as `api`.
fn trigger_of(s: &str) -> lampyr_api::TriggerKind {
    s.parse().unwrap_or(lampyr_api::TriggerKind::Api)
}

/// A stored start kind; one this version does not know reads as `cold`.
fn start_of(s: &str) -> lampyr_api::StartKind {
    s.parse().unwrap_or(lampyr_api::StartKind::Cold)
}

/// A stored status; one this version does not know reads as `error`.
fn status_of(s: &str) -> lampyr_api::Status {
    s.parse().unwrap_or(lampyr_api::Status::Error)
}

impl<S> Row<S> {
    fn start_ms(&self) -> i64 {
        self.3
    }

    fn request_id(&self) -> &S {
        &self.0
    }

    fn status(&self) -> &S {
        &self.16
    }

    /// Whether the invocation reached an instance.
    fn ran(&self) -> bool {
        self.20.is_some()
    }
}

impl Row<String> {
    fn into_record(self, function: &str) -> InvocationRecord {
        let r = self;
        InvocationRecord {
            request_id: r.0,
            function: function.to_string(),
            version: r.1,
            trigger: trigger_of(&r.2),
            start_time: crate::rfc3339(UNIX_EPOCH + Duration::from_millis(r.3.max(0) as u64)),
            start: start_of(&r.4),
            phases: PhaseTimes {
                queue: r.5,
                code: r.6,
                sandbox: r.7,
                runtime: r.8,
                init: r.9,
                exec: r.10,
            },
            duration_ms: r.11,
            billed_ms: r.12,
            gb_seconds: r.13,
            memory_mb: r.14,
            max_memory_used_mb: r.15,
            status: status_of(&r.16),
            error_type: r.17,
            http_status: r.18,
            response_bytes: r.19,
            instance: r.20,
            attempt: r.21,
            stream_bytes: r.22,
        }
    }
}

/// The time in a time-ordered (version 7) UUID, in Unix milliseconds.
fn uuid_v7_ms(id: &str) -> Option<i64> {
    let b = id.as_bytes();
    if b.len() != 36 || b[8] != b'-' || b[13] != b'-' || b[14] != b'7' {
        return None;
    }
    let hex = |s: &[u8]| {
        std::str::from_utf8(s)
            .ok()
            .and_then(|s| i64::from_str_radix(s, 16).ok())
    };
    Some(hex(&b[0..8])? << 16 | hex(&b[9..13])?)
}

/// How far a record's start may be from the time in its id. The start is
/// read from the same clock right after the id is made, so the two differ
/// only if the clock is stepped in between.
const ID_CLOCK_SLACK_MS: i64 = 60_000;

impl RecordStore {
    /// Opens the records tables in the database at `path` (its own
    /// connection, so record writes never wait for metadata reads).
    pub fn open(path: &Path) -> Result<RecordStore> {
        // Writes append at the right edge of the table and its indexes, so
        // a small page cache holds their working set; a large one made every
        // commit slower, as SQLite walks its cache at the end of each
        // transaction.
        let connect = || -> Result<Connection> {
            let conn = Connection::open(path)?;
            conn.pragma_update(None, "cache_size", -4096)?;
            conn.pragma_update(None, "mmap_size", 256i64 << 20)?;
            conn.busy_timeout(Duration::from_secs(5))?;
            Ok(conn)
        };
        let conn = connect()?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // Records are telemetry written at request rate: no fsync (a crash of
        // the process loses nothing; one of the machine at most the last
        // moments) and few checkpoints.
        conn.pragma_update(None, "synchronous", "OFF")?;
        conn.pragma_update(None, "wal_autocheckpoint", 10_000)?;
        conn.execute_batch(SCHEMA)?;
        let reader = connect()?;
        reader.pragma_update(None, "query_only", true)?;
        let mut store = RecordStore {
            db: Mutex::new(conn),
            reader: Mutex::new(reader),
        };
        store.migrate_rows()?;
        Ok(store)
    }

    /// Moves records from the one-row-per-record table of earlier versions
    /// into batches, then drops that table.
    fn migrate_rows(&mut self) -> Result<()> {
        let db = self.db.get_mut();
        let old: bool = db.query_row(
            "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'invocations')",
            [],
            |r| r.get(0),
        )?;
        if !old {
            return Ok(());
        }
        let tx = db.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let records: Vec<InvocationRecord> = {
            let mut stmt = tx.prepare(
                "SELECT request_id, function, version, trigger, start_ms, start_kind, phases, duration_ms,
                 billed_ms, gb_seconds, memory_mb, max_memory_mb, status, error_type, http_status,
                 response_bytes, instance FROM invocations ORDER BY rowid",
            )?;
            let rows = stmt.query_map([], |r| {
                let phases: String = r.get(6)?;
                Ok(InvocationRecord {
                    request_id: r.get(0)?,
                    function: r.get(1)?,
                    version: r.get::<_, i64>(2)? as u64,
                    trigger: trigger_of(&r.get::<_, String>(3)?),
                    start_time: crate::rfc3339(
                        UNIX_EPOCH + Duration::from_millis(r.get::<_, i64>(4)?.max(0) as u64),
                    ),
                    start: start_of(&r.get::<_, String>(5)?),
                    phases: serde_json::from_str::<PhaseTimes>(&phases).unwrap_or_default(),
                    duration_ms: r.get(7)?,
                    billed_ms: r.get::<_, i64>(8)? as u64,
                    gb_seconds: r.get(9)?,
                    memory_mb: r.get(10)?,
                    max_memory_used_mb: r.get(11)?,
                    status: status_of(&r.get::<_, String>(12)?),
                    error_type: r.get(13)?,
                    http_status: r.get(14)?,
                    response_bytes: r.get::<_, i64>(15)? as u64,
                    instance: r.get(16)?,
                    attempt: None,
                    stream_bytes: None,
                })
            })?;
            rows.collect::<rusqlite::Result<_>>()?
        };
        for chunk in records.chunks(1000) {
            insert_batches(&tx, chunk)?;
        }
        tx.execute_batch("DROP TABLE invocations;")?;
        tx.commit()?;
        tracing::info!(
            records = records.len(),
            "invocation records moved into batches"
        );
        Ok(())
    }

    /// Stores a batch of records in one transaction: one row per function.
    pub fn insert(&self, records: &[InvocationRecord]) -> Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        let mut db = self.db.lock();
        let tx = db.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        insert_batches(&tx, records)?;
        tx.commit()?;
        Ok(())
    }

    /// A function's records, newest first (by start time, then by the order
    /// in which they were stored).
    pub fn list(&self, function: &str, q: &RecordQuery) -> Result<Vec<InvocationRecord>> {
        let since = q.since.map(ms).unwrap_or(i64::MIN);
        let limit = match q.limit {
            0 => 100,
            n => n,
        };
        let db = self.reader.lock();
        let mut stmt = db.prepare_cached(
            "SELECT id, last_ms, records FROM invocation_batches
             WHERE function = ?1 AND last_ms >= ?2 ORDER BY last_ms DESC, id DESC",
        )?;
        let mut rows = stmt.query(params![function, since])?;
        // (start_ms, batch id, index in batch): newest first once sorted.
        let mut found: Vec<Found> = Vec::new();
        let mut floor = i64::MIN;
        while let Some(row) = rows.next()? {
            let id: i64 = row.get(0)?;
            let last_ms: i64 = row.get(1)?;
            if last_ms < floor {
                // Every record here and in the rows after it started before
                // the newest `limit` found so far.
                break;
            }
            let Some(batch) = row.get_ref(2)?.as_blob().ok().and_then(decode) else {
                tracing::warn!(
                    function,
                    batch = id,
                    "skipping an unreadable batch of invocation records"
                );
                continue;
            };
            for (i, r) in batch.into_iter().enumerate() {
                if r.start_ms() < since
                    || q.status.is_some_and(|s| r.status() != s.as_str())
                    || (q.ran && !r.ran())
                {
                    continue;
                }
                found.push(((r.start_ms(), id, i), r));
            }
            if found.len() >= limit.saturating_mul(2).max(1024) {
                newest_first(&mut found, limit);
                floor = found.last().map_or(i64::MIN, |f| f.0 .0);
            }
        }
        newest_first(&mut found, limit);
        Ok(found
            .into_iter()
            .map(|(_, r)| r.into_record(function))
            .collect())
    }

    /// One record by request id.
    pub fn get(&self, request_id: &str) -> Result<Option<InvocationRecord>> {
        let db = self.reader.lock();
        // The id in JSON, quoted: a cheap test on the stored bytes before a
        // batch is decoded.
        let needle = serde_json::to_string(request_id).expect("a string serialises");
        let needle = needle.as_bytes();
        let Some(t) = uuid_v7_ms(request_id) else {
            // Not an id lampyr made: look everywhere.
            let mut stmt = db.prepare_cached(
                "SELECT function, records FROM invocation_batches
                 WHERE instr(records, ?1) > 0 ORDER BY id DESC",
            )?;
            let found = find_in(stmt.query(params![needle])?, request_id)?;
            return Ok(found);
        };
        // The record started after its id was made (once its body was
        // read): its batch ends at or after the time in the id. Batches are
        // looked at from that time on, each tested with the quoted id before
        // it is decoded, so a recent request is found in the first few. Then,
        // for a clock stepped back between the two readings, the batches
        // that end within the slack before it.
        let mut stmt = db.prepare_cached(
            "SELECT function, records FROM invocation_batches
             WHERE last_ms >= ?1 AND instr(records, ?2) > 0 ORDER BY last_ms",
        )?;
        let found = find_in(stmt.query(params![t, needle])?, request_id)?;
        if found.is_some() {
            return Ok(found);
        }
        let mut stmt = db.prepare_cached(
            "SELECT function, records FROM invocation_batches
             WHERE last_ms >= ?1 AND last_ms < ?2 AND instr(records, ?3) > 0 ORDER BY last_ms DESC",
        )?;
        let found = find_in(
            stmt.query(params![t - ID_CLOCK_SLACK_MS, t, needle])?,
            request_id,
        )?;
        Ok(found)
    }

    /// Every record of `request_id` of `function`, oldest first: the
    /// attempts of an asynchronous event, which share its id (and start
    /// after it was made).
    pub fn attempts(&self, function: &str, request_id: &str) -> Result<Vec<InvocationRecord>> {
        let db = self.reader.lock();
        let needle = serde_json::to_string(request_id).expect("a string serialises");
        let since = uuid_v7_ms(request_id).map_or(i64::MIN, |t| t - ID_CLOCK_SLACK_MS);
        let mut stmt = db.prepare_cached(
            "SELECT records FROM invocation_batches
             WHERE function = ?1 AND last_ms >= ?2 AND instr(records, ?3) > 0 ORDER BY last_ms",
        )?;
        let mut rows = stmt.query(params![function, since, needle.as_bytes()])?;
        let mut out: Vec<(i64, InvocationRecord)> = Vec::new();
        while let Some(row) = rows.next()? {
            let Some(batch) = row.get_ref(0)?.as_blob().ok().and_then(decode) else {
                continue;
            };
            for r in batch.into_iter().filter(|r| r.request_id() == request_id) {
                out.push((r.start_ms(), r.into_record(function)));
            }
        }
        out.sort_by_key(|(t, _)| *t);
        Ok(out.into_iter().map(|(_, r)| r).collect())
    }

    /// The request ids of `function`'s records (every function's with
    /// `None`) that begin or end with `part` (case-insensitively), newest
    /// batches first, at most `limit`: how a short id becomes a whole one.
    pub fn complete_id(
        &self,
        function: Option<&str>,
        part: &str,
        limit: usize,
    ) -> Result<Vec<String>> {
        let part = part.to_ascii_lowercase();
        if part.is_empty() || part.contains('"') || part.contains('\\') {
            return Ok(Vec::new());
        }
        let prefix = format!("\"{part}");
        let suffix = format!("{part}\"");
        let db = self.reader.lock();
        let mut stmt = db.prepare_cached(
            "SELECT records FROM invocation_batches
             WHERE (?1 IS NULL OR function = ?1)
               AND (instr(lower(records), ?2) > 0 OR instr(lower(records), ?3) > 0)
             ORDER BY last_ms DESC",
        )?;
        let mut rows = stmt.query(params![function, prefix, suffix])?;
        let mut out: Vec<String> = Vec::new();
        while let Some(row) = rows.next()? {
            let Some(batch) = row.get_ref(0)?.as_blob().ok().and_then(decode) else {
                continue;
            };
            for r in batch {
                let id = r.request_id().to_ascii_lowercase();
                if (id.starts_with(&part) || id.ends_with(&part)) && !out.contains(&id) {
                    out.push(r.request_id().clone());
                    if out.len() >= limit {
                        return Ok(out);
                    }
                }
            }
        }
        Ok(out)
    }

    /// Deletes records older than the retention age and beyond its count:
    /// whole batches where it can, and the old records out of the batches
    /// that straddle either limit. Returns the number of records deleted.
    pub fn prune(&self, retention: Retention, now: SystemTime) -> Result<usize> {
        let mut db = self.db.lock();
        let tx = db.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let cutoff = ms(now) - retention.max_age.as_millis() as i64;
        // Records with sequence numbers up to this one are beyond the count.
        let keep_after: i64 = tx.query_row(
            "SELECT COALESCE(MAX(id), 0) - ?1 FROM invocation_batches",
            params![i64::try_from(retention.max_count).unwrap_or(i64::MAX)],
            |r| r.get(0),
        )?;
        let mut n: i64 = tx.query_row(
            "SELECT COALESCE(SUM(count), 0) FROM invocation_batches WHERE last_ms < ?1 OR id <= ?2",
            params![cutoff, keep_after],
            |r| r.get(0),
        )?;
        if n > 0 {
            tx.execute(
                "DELETE FROM invocation_batches WHERE last_ms < ?1 OR id <= ?2",
                params![cutoff, keep_after],
            )?;
        }
        // The batches left that still hold records to delete: the first
        // one after `keep_after` (its sequence numbers may straddle it: a
        // batch holds those from `id - count + 1` to `id`), and those whose
        // oldest record started before `cutoff` (their newest did not).
        let mut partial: Vec<(i64, i64, Vec<u8>)> = Vec::new();
        for (sql, bound) in [
            (
                "SELECT id, count, records FROM invocation_batches WHERE id > ?1 ORDER BY id LIMIT 1",
                keep_after,
            ),
            (
                "SELECT id, count, records FROM invocation_batches WHERE first_ms < ?1",
                cutoff,
            ),
        ] {
            let mut stmt = tx.prepare_cached(sql)?;
            let rows = stmt.query_map(params![bound], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
            for row in rows {
                let row = row?;
                if !partial.iter().any(|(id, _, _)| *id == row.0) {
                    partial.push(row);
                }
            }
        }
        for (id, count, blob) in partial {
            let Some(rows) = decode(&blob) else { continue };
            let first_seq = id - count + 1;
            let before = rows.len();
            let kept: Vec<Row<String>> = rows
                .into_iter()
                .enumerate()
                .filter(|(i, r)| first_seq + *i as i64 > keep_after && r.start_ms() >= cutoff)
                .map(|(_, r)| r)
                .collect();
            n += (before - kept.len()) as i64;
            if kept.is_empty() {
                tx.execute("DELETE FROM invocation_batches WHERE id = ?1", params![id])?;
            } else if kept.len() < before {
                let first = kept.iter().map(Row::start_ms).min().unwrap_or(0);
                let last = kept.iter().map(Row::start_ms).max().unwrap_or(0);
                tx.execute(
                    "UPDATE invocation_batches SET count = ?2, first_ms = ?3, last_ms = ?4, records = ?5
                     WHERE id = ?1",
                    params![
                        id,
                        kept.len() as i64,
                        first,
                        last,
                        serde_json::to_vec(&kept).expect("records serialise")
                    ],
                )?;
            }
        }
        tx.commit()?;
        Ok(n as usize)
    }

    /// Forgets a deleted function's records.
    pub fn delete_function(&self, function: &str) -> Result<()> {
        self.db.lock().execute(
            "DELETE FROM invocation_batches WHERE function = ?1",
            params![function],
        )?;
        Ok(())
    }
}

/// Appends `records` as one row per function, in the order they come.
fn insert_batches(tx: &rusqlite::Transaction<'_>, records: &[InvocationRecord]) -> Result<()> {
    let mut next: i64 = tx.query_row(
        "SELECT COALESCE(MAX(id), 0) FROM invocation_batches",
        [],
        |r| r.get(0),
    )?;
    let mut groups: Vec<(&str, Vec<Row<&str>>)> = Vec::new();
    for r in records {
        let row = Row::of(r);
        match groups.iter_mut().find(|(f, _)| *f == r.function) {
            Some((_, rows)) => rows.push(row),
            None => groups.push((&r.function, vec![row])),
        }
    }
    let mut stmt = tx.prepare_cached(
        "INSERT INTO invocation_batches (id, function, first_ms, last_ms, count, records)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?;
    for (function, rows) in groups {
        let first = rows.iter().map(Row::start_ms).min().unwrap_or(0);
        let last = rows.iter().map(Row::start_ms).max().unwrap_or(0);
        next += rows.len() as i64;
        let blob = serde_json::to_vec(&rows).expect("records serialise");
        stmt.execute(params![
            next,
            function,
            first,
            last,
            rows.len() as i64,
            blob
        ])?;
    }
    Ok(())
}

/// The record with `request_id` in rows of (function, records).
fn find_in(mut rows: rusqlite::Rows<'_>, request_id: &str) -> Result<Option<InvocationRecord>> {
    while let Some(row) = rows.next()? {
        let function: String = row.get(0)?;
        let Some(batch) = row.get_ref(1)?.as_blob().ok().and_then(decode) else {
            continue;
        };
        if let Some(r) = batch.into_iter().find(|r| r.request_id() == request_id) {
            return Ok(Some(r.into_record(&function)));
        }
    }
    Ok(None)
}

fn decode(blob: &[u8]) -> Option<Vec<Row<String>>> {
    serde_json::from_slice(blob).ok()
}

/// A record found by a query, with where it sorts: (start, batch id, index
/// in the batch).
type Found = ((i64, i64, usize), Row<String>);

/// Sorts newest first and keeps the first `limit`.
fn newest_first(found: &mut Vec<Found>, limit: usize) {
    found.sort_unstable_by_key(|f| std::cmp::Reverse(f.0));
    found.truncate(limit);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(i: u64, status: &str, at: SystemTime) -> InvocationRecord {
        InvocationRecord {
            request_id: format!("r{i}"),
            function: "f".into(),
            version: 1,
            trigger: lampyr_api::TriggerKind::Http,
            start_time: crate::rfc3339(at),
            start: if i == 0 {
                lampyr_api::StartKind::Cold
            } else {
                lampyr_api::StartKind::Warm
            },
            phases: PhaseTimes {
                queue: 0.01,
                exec: 1.5,
                init: (i == 0).then_some(3.0),
                ..Default::default()
            },
            duration_ms: 1.5,
            billed_ms: 2,
            gb_seconds: 0.125 * 0.002,
            memory_mb: 128,
            max_memory_used_mb: Some(40.0),
            status: status.parse().unwrap(),
            error_type: None,
            http_status: Some(200),
            response_bytes: 12,
            instance: Some("f-1".into()),
            attempt: None,
            stream_bytes: None,
        }
    }

    /// A batch written before records had an attempt number, and when the
    /// HTTP status was always a number, reads; one written now keeps both.
    #[test]
    fn batches_written_by_earlier_versions_read() {
        let old = br#"[["r1",3,"http",1700000000000,"pooled",0.5,null,1.2,null,4.0,2.5,2.5,3,0.0004,128,40.5,"error","TypeError",500,80,"f-2"]]"#;
        let rows = decode(old).expect("an old batch decodes");
        let r = rows.into_iter().next().unwrap().into_record("f");
        assert_eq!(r.request_id, "r1");
        assert_eq!(r.start, lampyr_api::StartKind::Pooled);
        assert_eq!(r.status, lampyr_api::Status::Error);
        assert_eq!(r.http_status, Some(500));
        assert_eq!(r.error_type.as_deref(), Some("TypeError"));
        assert_eq!(r.attempt, None);
        assert_eq!(r.instance.as_deref(), Some("f-2"));
        let mut now = rec(1, "ok", SystemTime::now());
        now.http_status = None;
        now.attempt = Some(2);
        let blob = serde_json::to_vec(&[Row::of(&now)]).unwrap();
        let back = decode(&blob)
            .unwrap()
            .into_iter()
            .next()
            .unwrap()
            .into_record("f");
        assert_eq!((back.http_status, back.attempt), (None, Some(2)));
    }

    #[test]
    fn deploys_and_record_batches_share_the_database() {
        // The record writer commits on its own connection while deploys
        // read then write on theirs: neither may fail with "database is
        // locked".
        let root = tempfile::tempdir().unwrap();
        let store = crate::Store::open(root.path(), crate::StoreLimits::default()).unwrap();
        let records = RecordStore::open(&root.path().join("lampyr.db")).unwrap();
        let src = tempfile::tempdir().unwrap();
        std::fs::write(
            src.path().join("lampyr.toml"),
            "name = \"busy\"\nruntime = \"nodejs\"\nhandler = \"index.handler\"\n",
        )
        .unwrap();
        let stop = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|scope| {
            scope.spawn(|| {
                let mut i = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let batch: Vec<_> = (0..50)
                        .map(|j| InvocationRecord {
                            request_id: format!("r-{i}-{j}"),
                            ..rec(j, "ok", SystemTime::now())
                        })
                        .collect();
                    records.insert(&batch).unwrap();
                    i += 1;
                    // About the writer's own pace (it batches every 20 ms),
                    // only faster.
                    std::thread::sleep(std::time::Duration::from_millis(2));
                }
            });
            // Stops the writer however this thread leaves (a failed deploy
            // panics), so that the scope can end.
            struct StopOnDrop<'a>(&'a std::sync::atomic::AtomicBool);
            impl Drop for StopOnDrop<'_> {
                fn drop(&mut self) {
                    self.0.store(true, std::sync::atomic::Ordering::Relaxed);
                }
            }
            let _stop = StopOnDrop(&stop);
            for v in 0..30 {
                std::fs::write(
                    src.path().join("index.js"),
                    format!("exports.handler = async () => {v};"),
                )
                .unwrap();
                let pkg = crate::pack_dir(src.path()).unwrap();
                let d = store.deploy("busy", &pkg).unwrap();
                assert_eq!(d.record.current.version, v + 1);
            }
        });
    }

    fn list(s: &RecordStore, function: &str, q: RecordQuery) -> Vec<InvocationRecord> {
        s.list(function, &q).unwrap()
    }

    fn ids(v: &[InvocationRecord]) -> Vec<&str> {
        v.iter().map(|r| r.request_id.as_str()).collect()
    }

    /// Reads never wait for the writer: with a write transaction open they
    /// answer at once, from what was committed before it.
    #[test]
    fn reads_do_not_wait_for_a_write_in_progress() {
        let d = tempfile::tempdir().unwrap();
        let s = RecordStore::open(&d.path().join("db")).unwrap();
        let now = SystemTime::now();
        let committed = rec(1, "ok", now);
        s.insert(std::slice::from_ref(&committed)).unwrap();
        let mut db = s.db.lock();
        let tx = db
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .unwrap();
        insert_batches(&tx, &[rec(2, "ok", now)]).unwrap();
        let seen = list(&s, "f", RecordQuery::default());
        assert_eq!(ids(&seen), [committed.request_id.as_str()]);
        assert_eq!(s.get(&committed.request_id).unwrap(), Some(committed));
        tx.commit().unwrap();
        drop(db);
        assert_eq!(list(&s, "f", RecordQuery::default()).len(), 2);
    }

    #[test]
    fn insert_query_prune() {
        let d = tempfile::tempdir().unwrap();
        let s = RecordStore::open(&d.path().join("db")).unwrap();
        let now = SystemTime::now();
        let old = now - Duration::from_secs(3600);
        s.insert(&[
            InvocationRecord {
                request_id: "old".into(),
                ..rec(99, "ok", old)
            },
            InvocationRecord {
                request_id: "throttled".into(),
                instance: None,
                ..rec(98, "throttled", old)
            },
        ])
        .unwrap();
        let batch: Vec<_> = (0..10)
            .map(|i| rec(i, if i % 3 == 0 { "error" } else { "ok" }, now))
            .collect();
        s.insert(&batch).unwrap();
        let all = list(
            &s,
            "f",
            RecordQuery {
                limit: 100,
                ..Default::default()
            },
        );
        assert_eq!(all.len(), 12);
        assert_eq!(all[0], batch[9], "newest first, every field kept");
        let ran = list(
            &s,
            "f",
            RecordQuery {
                limit: 100,
                ran: true,
                ..Default::default()
            },
        );
        assert_eq!(ran.len(), 11);
        assert_eq!(ran.last().unwrap().request_id, "old", "newest first");
        let errors = list(
            &s,
            "f",
            RecordQuery {
                limit: 100,
                status: Some(lampyr_api::Status::Error),
                ..Default::default()
            },
        );
        assert_eq!(ids(&errors), ["r9", "r6", "r3", "r0"]);
        let recent = list(
            &s,
            "f",
            RecordQuery {
                limit: 100,
                since: Some(now - Duration::from_secs(60)),
                ..Default::default()
            },
        );
        assert_eq!(recent.len(), 10);
        assert_eq!(
            ids(&list(
                &s,
                "f",
                RecordQuery {
                    limit: 3,
                    ..Default::default()
                }
            )),
            ["r9", "r8", "r7"]
        );
        assert!(list(&s, "g", RecordQuery::default()).is_empty());
        let r0 = s.get("r0").unwrap().unwrap();
        assert_eq!(r0.phases.init, Some(3.0));
        assert_eq!(r0.start, lampyr_api::StartKind::Cold);
        assert_eq!(s.get("nope").unwrap(), None);
        let retention = |max_count| Retention {
            max_age: Duration::from_secs(600),
            max_count,
        };
        // Age: the old batch goes whole.
        assert_eq!(s.prune(retention(1000), now).unwrap(), 2);
        assert_eq!(s.get("old").unwrap(), None);
        // Count: batches go once the newer ones hold max_count records.
        for b in 0..3 {
            s.insert(&[
                InvocationRecord {
                    request_id: format!("b{b}-0"),
                    ..rec(1, "ok", now)
                },
                InvocationRecord {
                    request_id: format!("b{b}-1"),
                    ..rec(1, "ok", now)
                },
            ])
            .unwrap();
        }
        // The ten of the second batch, and the older of b0's two.
        assert_eq!(s.prune(retention(5), now).unwrap(), 11);
        assert_eq!(
            ids(&list(&s, "f", RecordQuery::default())),
            ["b2-1", "b2-0", "b1-1", "b1-0", "b0-1"]
        );
        assert_eq!(s.prune(retention(4), now).unwrap(), 1);
        assert_eq!(list(&s, "f", RecordQuery::default()).len(), 4);
        assert_eq!(s.prune(retention(4), now).unwrap(), 0);
        // Age, inside a batch: its old record goes, its new one stays.
        s.insert(&[
            InvocationRecord {
                request_id: "mixed-old".into(),
                ..rec(1, "ok", old)
            },
            InvocationRecord {
                request_id: "mixed-new".into(),
                ..rec(1, "ok", now)
            },
        ])
        .unwrap();
        assert_eq!(s.prune(retention(1000), now).unwrap(), 1);
        assert_eq!(s.get("mixed-old").unwrap(), None);
        assert!(s.get("mixed-new").unwrap().is_some());
        assert_eq!(list(&s, "f", RecordQuery::default()).len(), 5);
        s.delete_function("f").unwrap();
        assert!(list(&s, "f", RecordQuery::default()).is_empty());
    }

    #[test]
    fn newest_first_across_batches_that_overlap_in_time() {
        // A long invocation is stored in a later batch than shorter ones
        // that started after it: the order is by start, whatever the batch.
        let d = tempfile::tempdir().unwrap();
        let s = RecordStore::open(&d.path().join("db")).unwrap();
        let t0 = SystemTime::now() - Duration::from_secs(100);
        let at = |i: u64| t0 + Duration::from_secs(i);
        let mk = |name: &str, function: &str, i: u64| InvocationRecord {
            request_id: name.into(),
            function: function.into(),
            ..rec(i, "ok", at(i))
        };
        s.insert(&[mk("a5", "f", 5), mk("a6", "f", 6), mk("g1", "g", 1)])
            .unwrap();
        s.insert(&[mk("b1", "f", 1), mk("b7", "f", 7)]).unwrap();
        for _ in 0..50 {
            // Many batches, all older than what the first rows hold.
            s.insert(&[mk("x", "f", 0)]).unwrap();
        }
        let q = |limit| RecordQuery {
            limit,
            ..Default::default()
        };
        assert_eq!(ids(&list(&s, "f", q(3))), ["b7", "a6", "a5"]);
        assert_eq!(ids(&list(&s, "f", q(4))), ["b7", "a6", "a5", "b1"]);
        assert_eq!(list(&s, "f", q(1000)).len(), 54);
        assert_eq!(ids(&list(&s, "g", q(10))), ["g1"]);
        let since = list(
            &s,
            "f",
            RecordQuery {
                limit: 100,
                since: Some(at(6)),
                ..Default::default()
            },
        );
        assert_eq!(ids(&since), ["b7", "a6"]);
    }

    #[test]
    fn finds_a_record_by_the_time_in_its_id() {
        let d = tempfile::tempdir().unwrap();
        let s = RecordStore::open(&d.path().join("db")).unwrap();
        let now = SystemTime::now();
        let id = |t: SystemTime| {
            let ms = t.duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
            uuid::Builder::from_unix_timestamp_millis(ms, &[7; 10])
                .into_uuid()
                .to_string()
        };
        let new = id(now);
        let old = id(now - Duration::from_secs(3600));
        assert_eq!(
            uuid_v7_ms(&new),
            Some(now.duration_since(UNIX_EPOCH).unwrap().as_millis() as i64)
        );
        assert_eq!(uuid_v7_ms("r1"), None);
        assert_eq!(uuid_v7_ms(&uuid::Uuid::new_v4().to_string()), None);
        s.insert(&[InvocationRecord {
            request_id: old.clone(),
            ..rec(1, "ok", now - Duration::from_secs(3600))
        }])
        .unwrap();
        s.insert(&[InvocationRecord {
            request_id: new.clone(),
            ..rec(2, "ok", now)
        }])
        .unwrap();
        assert_eq!(s.get(&new).unwrap().unwrap().request_id, new);
        assert_eq!(s.get(&old).unwrap().unwrap().request_id, old);
        assert_eq!(s.get(&id(now + Duration::from_secs(1))).unwrap(), None);
    }

    #[test]
    fn moves_records_of_the_one_row_per_record_table_into_batches() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("db");
        {
            let c = Connection::open(&path).unwrap();
            c.execute_batch(
                "CREATE TABLE invocations (
                    request_id TEXT PRIMARY KEY, function TEXT NOT NULL, version INTEGER NOT NULL,
                    trigger TEXT NOT NULL, start_ms INTEGER NOT NULL, start_kind TEXT NOT NULL,
                    phases TEXT NOT NULL, duration_ms REAL NOT NULL, billed_ms INTEGER NOT NULL,
                    gb_seconds REAL NOT NULL, memory_mb INTEGER NOT NULL, max_memory_mb REAL,
                    status TEXT NOT NULL, error_type TEXT, http_status INTEGER NOT NULL,
                    response_bytes INTEGER NOT NULL, instance TEXT);
                 CREATE INDEX invocations_by_function ON invocations (function, start_ms);
                 INSERT INTO invocations VALUES ('r1', 'f', 2, 'http', 1700000000000, 'cold',
                    '{\"queue\":0.5,\"init\":3.0,\"exec\":1.5}', 1.5, 2, 0.00025, 128, 40.0,
                    'ok', NULL, 200, 12, 'f-1');
                 INSERT INTO invocations VALUES ('r2', 'g', 1, 'api', 1700000001000, 'warm',
                    '{\"queue\":0.0,\"exec\":9.0}', 9.0, 9, 0.001, 128, NULL,
                    'error', 'TypeError', 500, 80, 'g-1');",
            )
            .unwrap();
        }
        let s = RecordStore::open(&path).unwrap();
        let r1 = s.get("r1").unwrap().unwrap();
        assert_eq!(r1.function, "f");
        assert_eq!(r1.version, 2);
        assert_eq!(r1.phases.init, Some(3.0));
        assert_eq!(r1.max_memory_used_mb, Some(40.0));
        assert_eq!(r1.start_time, "2023-11-14T22:13:20.000Z");
        let g = list(&s, "g", RecordQuery::default());
        assert_eq!(g[0].error_type.as_deref(), Some("TypeError"));
        assert_eq!(g[0].trigger, lampyr_api::TriggerKind::Api);
        drop(s);
        let c = Connection::open(&path).unwrap();
        let left: i64 = c
            .query_row(
                "SELECT COUNT(*) FROM sqlite_master WHERE name LIKE 'invocations%'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(left, 0, "the old table and its index are gone");
    }
}
