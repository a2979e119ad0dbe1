//! Invocation records: one row per invocation in the embedded database,
//! written in batches by a background thread and pruned by age and count.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lampyr_api::{InvocationRecord, PhaseTimes};
use parking_lot::Mutex;
use rusqlite::{params, Connection, OptionalExtension};

use crate::Result;

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS invocations (
    request_id     TEXT PRIMARY KEY,
    function       TEXT NOT NULL,
    version        INTEGER NOT NULL,
    trigger        TEXT NOT NULL,
    start_ms       INTEGER NOT NULL,
    start_kind     TEXT NOT NULL,
    phases         TEXT NOT NULL,
    duration_ms    REAL NOT NULL,
    billed_ms      INTEGER NOT NULL,
    gb_seconds     REAL NOT NULL,
    memory_mb      INTEGER NOT NULL,
    max_memory_mb  REAL,
    status         TEXT NOT NULL,
    error_type     TEXT,
    http_status    INTEGER NOT NULL,
    response_bytes INTEGER NOT NULL,
    instance       TEXT
);
CREATE INDEX IF NOT EXISTS invocations_by_function ON invocations (function, start_ms);
DROP INDEX IF EXISTS invocations_by_time;
"#;

/// Which records to read.
#[derive(Debug, Clone, Default)]
pub struct RecordQuery {
    /// At most this many, newest first.
    pub limit: usize,
    /// Only records that started at or after this time.
    pub since: Option<SystemTime>,
    pub status: Option<String>,
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
    db: Mutex<Connection>,
}

fn ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn parse_rfc3339(s: &str) -> i64 {
    humantime::parse_rfc3339(s).map(ms).unwrap_or(0)
}

impl RecordStore {
    /// Opens the records table in the database at `path` (its own
    /// connection, so record writes never wait for metadata reads).
    pub fn open(path: &Path) -> Result<RecordStore> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        // Records are telemetry written at request rate: no fsync (a crash of
        // the process loses nothing; one of the machine at most the last
        // moments) and few checkpoints. Inserts touch only the right edge of
        // the indexes (request ids and start times grow), so a small page
        // cache holds their working set; a large one made every commit
        // slower, as SQLite walks its cache at the end of each transaction.
        conn.pragma_update(None, "synchronous", "OFF")?;
        conn.pragma_update(None, "wal_autocheckpoint", 10_000)?;
        conn.pragma_update(None, "cache_size", -4096)?;
        conn.pragma_update(None, "mmap_size", 256i64 << 20)?;
        conn.busy_timeout(Duration::from_secs(5))?;
        conn.execute_batch(SCHEMA)?;
        Ok(RecordStore {
            db: Mutex::new(conn),
        })
    }

    /// Stores a batch of records in one transaction.
    pub fn insert(&self, records: &[InvocationRecord]) -> Result<()> {
        let mut db = self.db.lock();
        let tx = db.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        {
            let mut stmt = tx.prepare_cached(
                "INSERT OR REPLACE INTO invocations (request_id, function, version, trigger, start_ms, start_kind, phases,
                 duration_ms, billed_ms, gb_seconds, memory_mb, max_memory_mb, status, error_type, http_status, response_bytes, instance)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)",
            )?;
            for r in records {
                stmt.execute(params![
                    r.request_id,
                    r.function,
                    r.version as i64,
                    r.trigger,
                    parse_rfc3339(&r.start_time),
                    r.start,
                    serde_json::to_string(&r.phases).expect("phases serialise"),
                    r.duration_ms,
                    r.billed_ms as i64,
                    r.gb_seconds,
                    r.memory_mb,
                    r.max_memory_used_mb,
                    r.status,
                    r.error_type,
                    r.http_status,
                    r.response_bytes as i64,
                    r.instance,
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    const COLUMNS: &'static str = "request_id, function, version, trigger, start_ms, start_kind, phases, duration_ms, billed_ms,
        gb_seconds, memory_mb, max_memory_mb, status, error_type, http_status, response_bytes, instance";

    fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<InvocationRecord> {
        let phases: String = r.get(6)?;
        Ok(InvocationRecord {
            request_id: r.get(0)?,
            function: r.get(1)?,
            version: r.get::<_, i64>(2)? as u64,
            trigger: r.get(3)?,
            start_time: crate::rfc3339(
                UNIX_EPOCH + Duration::from_millis(r.get::<_, i64>(4)?.max(0) as u64),
            ),
            start: r.get(5)?,
            phases: serde_json::from_str::<PhaseTimes>(&phases).unwrap_or_default(),
            duration_ms: r.get(7)?,
            billed_ms: r.get::<_, i64>(8)? as u64,
            gb_seconds: r.get(9)?,
            memory_mb: r.get(10)?,
            max_memory_used_mb: r.get(11)?,
            status: r.get(12)?,
            error_type: r.get(13)?,
            http_status: r.get(14)?,
            response_bytes: r.get::<_, i64>(15)? as u64,
            instance: r.get(16)?,
        })
    }

    /// A function's records, newest first.
    pub fn list(&self, function: &str, q: &RecordQuery) -> Result<Vec<InvocationRecord>> {
        let db = self.db.lock();
        let sql = format!(
            "SELECT {} FROM invocations WHERE function = ?1 AND start_ms >= ?2 AND (?3 IS NULL OR status = ?3)
             AND (?5 = 0 OR instance IS NOT NULL)
             ORDER BY start_ms DESC, rowid DESC LIMIT ?4",
            Self::COLUMNS
        );
        let mut stmt = db.prepare_cached(&sql)?;
        let since = q.since.map(ms).unwrap_or(0);
        let limit = match q.limit {
            0 => 100,
            n => i64::try_from(n).unwrap_or(i64::MAX),
        };
        let rows = stmt.query_map(params![function, since, q.status, limit, q.ran], Self::row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// One record by request id.
    pub fn get(&self, request_id: &str) -> Result<Option<InvocationRecord>> {
        let db = self.db.lock();
        let sql = format!(
            "SELECT {} FROM invocations WHERE request_id = ?1",
            Self::COLUMNS
        );
        Ok(db
            .query_row(&sql, params![request_id], Self::row)
            .optional()?)
    }

    /// Deletes records older than the retention age and beyond its count.
    pub fn prune(&self, retention: Retention, now: SystemTime) -> Result<usize> {
        let db = self.db.lock();
        let cutoff = ms(now) - retention.max_age.as_millis() as i64;
        let mut n = db.execute(
            "DELETE FROM invocations WHERE start_ms < ?1",
            params![cutoff],
        )?;
        // Rows are appended in arrival order: the oldest have the smallest rowids.
        n += db.execute(
            "DELETE FROM invocations WHERE rowid <= (SELECT MAX(rowid) FROM invocations) - ?1",
            params![retention.max_count as i64],
        )?;
        Ok(n)
    }

    /// Forgets a deleted function's records.
    pub fn delete_function(&self, function: &str) -> Result<()> {
        self.db.lock().execute(
            "DELETE FROM invocations WHERE function = ?1",
            params![function],
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(i: u64, status: &str, at: SystemTime) -> InvocationRecord {
        InvocationRecord {
            request_id: format!("r{i}"),
            function: "f".into(),
            version: 1,
            trigger: "http".into(),
            start_time: crate::rfc3339(at),
            start: if i == 0 { "cold".into() } else { "warm".into() },
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
            status: status.into(),
            error_type: None,
            http_status: 200,
            response_bytes: 12,
            instance: Some("f-1".into()),
        }
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

    #[test]
    fn insert_query_prune() {
        let d = tempfile::tempdir().unwrap();
        let s = RecordStore::open(&d.path().join("db")).unwrap();
        let now = SystemTime::now();
        let old = now - Duration::from_secs(3600);
        let mut batch: Vec<_> = (0..10)
            .map(|i| rec(i, if i % 3 == 0 { "error" } else { "ok" }, now))
            .collect();
        batch.push(InvocationRecord {
            request_id: "old".into(),
            ..rec(99, "ok", old)
        });
        batch.push(InvocationRecord {
            request_id: "throttled".into(),
            instance: None,
            ..rec(98, "throttled", old)
        });
        s.insert(&batch).unwrap();
        let all = s
            .list(
                "f",
                &RecordQuery {
                    limit: 100,
                    ..Default::default()
                },
            )
            .unwrap();
        assert_eq!(all.len(), 12);
        let ran = s
            .list(
                "f",
                &RecordQuery {
                    limit: 100,
                    ran: true,
                    ..Default::default()
                },
            )
            .unwrap();
        assert_eq!(ran.len(), 11);
        assert_eq!(ran.last().unwrap().request_id, "old", "newest first");
        let errors = s
            .list(
                "f",
                &RecordQuery {
                    limit: 100,
                    status: Some("error".into()),
                    ..Default::default()
                },
            )
            .unwrap();
        assert_eq!(errors.len(), 4);
        let recent = s
            .list(
                "f",
                &RecordQuery {
                    limit: 100,
                    since: Some(now - Duration::from_secs(60)),
                    ..Default::default()
                },
            )
            .unwrap();
        assert_eq!(recent.len(), 10);
        let r0 = s.get("r0").unwrap().unwrap();
        assert_eq!(r0.phases.init, Some(3.0));
        assert_eq!(r0.start, "cold");
        // Age, then count.
        assert_eq!(
            s.prune(
                Retention {
                    max_age: Duration::from_secs(600),
                    max_count: 1000
                },
                now
            )
            .unwrap(),
            2
        );
        assert_eq!(
            s.prune(
                Retention {
                    max_age: Duration::from_secs(600),
                    max_count: 4
                },
                now
            )
            .unwrap(),
            6
        );
        assert_eq!(
            s.list(
                "f",
                &RecordQuery {
                    limit: 100,
                    ..Default::default()
                }
            )
            .unwrap()
            .len(),
            4
        );
    }
}
