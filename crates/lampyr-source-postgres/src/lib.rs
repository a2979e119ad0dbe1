//! The PostgreSQL trigger (`[[triggers]]` with `type = "postgres"`): a
//! database's row changes, read through a logical replication slot with
//! the `wal2json` output plugin over an ordinary connection
//! (`pg_logical_slot_peek_changes`, then `pg_replication_slot_advance`),
//! and run as asynchronous events of the function.
//!
//! * **At least once, in commit order.** Each read returns whole
//!   transactions. Their changes are queued durably first (through
//!   `Scheduler::call` as events, each batch with the idempotency key
//!   `pg:SLOT:COMMIT_LSN:INDEX`), then the slot is advanced to the last
//!   commit read. A crash in between reads the same transactions again,
//!   and their keys drop the duplicates. The slot only ever moves to a
//!   commit, so a transaction is never split across an advance.
//! * **Batches** hold up to `batch_size` changes: whole transactions
//!   while they fit, a larger transaction in pieces of its own, queued one
//!   after the other.
//! * **The slot** is created when missing (changes committed before are
//!   not seen); deleting the trigger or the function drops it, since a
//!   forgotten slot keeps the database's WAL forever.
//! * **A database that cannot be reached** never stops the server: the
//!   trigger tries again with back-off, and says why in the log and in
//!   [`Trigger::status`] (state, lag in bytes of WAL the slot retains, last
//!   error).
//! * **TLS** as libpq reads the DSN's `sslmode` and `sslrootcert`
//!   (`tls.rs`, rustls): `verify-full` and `verify-ca` check the server's
//!   certificate against `sslrootcert` or the system's CAs; a refused
//!   certificate is reported with what to change.
//! * **The DSN's password** is never written to the log, an error or the
//!   API.
#![forbid(unsafe_code)]

pub mod decode;
mod tls;

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use futures_util::future::BoxFuture;
use lampyr_api::postgres::{redact_dsn, PostgresSpec};
use lampyr_api::sources::{SourceState, SourceStatus};
use lampyr_api::{FunctionSpec, TriggerKind, TriggerSpec};
use lampyr_scheduler::{Call, Scheduler};
use lampyr_triggers::{Context, Trigger, TriggerError};
use parking_lot::Mutex;

/// Why reading a slot failed. Never holds the DSN's password.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SourceError {
    #[error("the DSN cannot be read: {0}")]
    Dsn(String),
    #[error("cannot connect to {database}: {reason}")]
    Connect { database: String, reason: String },
    #[error("the database has wal_level = {0}: logical decoding needs wal_level = logical (set it in postgresql.conf and restart PostgreSQL)")]
    WalLevel(String),
    #[error("cannot create the replication slot {slot}: {reason}")]
    CreateSlot { slot: String, reason: String },
    #[error("the replication slot {slot} uses the output plugin {plugin}, not wal2json: drop it (SELECT pg_drop_replication_slot('{slot}')) or name another slot")]
    WrongPlugin { slot: String, plugin: String },
    #[error("the replication slot {slot} is gone (dropped by someone else?); it is created again, and changes made meanwhile are not seen")]
    SlotGone { slot: String },
    #[error("{what} failed: {reason}")]
    Query { what: &'static str, reason: String },
    #[error("wal2json sent something unreadable at {lsn}: {reason}")]
    Decode { lsn: String, reason: String },
    #[error("the changes could not be queued: {0}")]
    Enqueue(String),
}

/// The most rows one read asks for (a read ends at a transaction's end,
/// so a larger transaction still comes whole).
const READ_ROWS: i32 = 1000;
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How often the lag is read while changes flow.
const LAG_EVERY: Duration = Duration::from_secs(1);

/// The PostgreSQL trigger (see the module doc).
pub struct PostgresTrigger {
    scheduler: OnceLock<Scheduler>,
    /// The largest event the queue takes: bigger batches are cut.
    max_event_bytes: usize,
    /// Per function: its running sources.
    sources: Mutex<HashMap<String, Vec<Source>>>,
}

struct Source {
    spec: PostgresSpec,
    slot: String,
    /// False for a trigger refused because another function's reads the
    /// same slot: its removal leaves the slot alone.
    owns_slot: bool,
    status: Arc<Mutex<SourceStatus>>,
    task: tokio::task::JoinHandle<()>,
}

impl PostgresTrigger {
    pub fn new(max_event_bytes: usize) -> PostgresTrigger {
        PostgresTrigger {
            scheduler: OnceLock::new(),
            max_event_bytes,
            sources: Mutex::new(HashMap::new()),
        }
    }

    /// Starts, keeps or stops the sources of `spec`'s function so they
    /// match its postgres triggers; the slots of triggers that are gone
    /// are dropped.
    fn sync(&self, function: &str, wanted: Vec<PostgresSpec>) {
        let Some(sched) = self.scheduler.get() else {
            return;
        };
        let mut all = self.sources.lock();
        let old = all.remove(function).unwrap_or_default();
        let mut kept = Vec::new();
        let mut wanted: Vec<(PostgresSpec, String)> = wanted
            .into_iter()
            .map(|p| {
                let slot = p.slot_name(function);
                (p, slot)
            })
            .collect();
        for s in old {
            if let Some(i) = wanted.iter().position(|(p, _)| *p == s.spec) {
                wanted.remove(i);
                kept.push(s);
                continue;
            }
            s.task.abort();
            let same_slot = wanted
                .iter()
                .any(|(p, slot)| *slot == s.slot && p.dsn == s.spec.dsn);
            if s.owns_slot && !same_slot {
                tokio::spawn(drop_slot(function.to_string(), s.spec, s.slot));
            }
        }
        for (spec, slot) in wanted {
            let place = where_of(&spec.dsn);
            let taken = all.iter().find_map(|(f, sources)| {
                sources
                    .iter()
                    .any(|o| o.owns_slot && o.slot == slot && where_of(&o.spec.dsn) == place)
                    .then(|| f.clone())
            });
            let source = self.spawn(sched, function, spec, slot, taken.is_none());
            if let Some(other) = taken {
                let why = format!(
                    "the replication slot {} is read by a trigger of the function {other}: a slot has one reader, name another slot",
                    source.slot
                );
                tracing::error!(function, trigger = %source.spec.name, "postgres trigger not started: {why}");
                let mut st = source.status.lock();
                st.state = SourceState::Stopped;
                st.last_error = Some(why);
                st.last_error_at = Some(lampyr_time(SystemTime::now()));
            }
            kept.push(source);
        }
        if !kept.is_empty() {
            all.insert(function.to_string(), kept);
        }
    }

    fn spawn(
        &self,
        sched: &Scheduler,
        function: &str,
        spec: PostgresSpec,
        slot: String,
        run: bool,
    ) -> Source {
        let mut detail = std::collections::BTreeMap::new();
        detail.insert("slot".to_string(), slot.clone());
        detail.insert("database".to_string(), redact_dsn(&spec.dsn));
        if !spec.tables.is_empty() {
            detail.insert("tables".to_string(), spec.tables.join(", "));
        }
        let status = Arc::new(Mutex::new(SourceStatus {
            trigger: spec.name.clone(),
            kind: TriggerKind::Postgres,
            state: SourceState::Connecting,
            lag: None,
            lag_unit: Some("bytes".into()),
            last_error: None,
            last_error_at: None,
            delivered: 0,
            detail,
        }));
        let reader = Reader {
            sched: sched.clone(),
            function: function.to_string(),
            spec: spec.clone(),
            slot: slot.clone(),
            status: status.clone(),
            max_event_bytes: self.max_event_bytes,
        };
        Source {
            spec,
            slot,
            owns_slot: run,
            status,
            task: if run {
                tokio::spawn(reader.run())
            } else {
                tokio::spawn(async {})
            },
        }
    }
}

fn postgres_triggers(spec: &FunctionSpec) -> Vec<PostgresSpec> {
    spec.triggers
        .iter()
        .filter_map(|t| match t {
            TriggerSpec::Postgres(p) => Some(p.clone()),
            _ => None,
        })
        .collect()
}

impl Trigger for PostgresTrigger {
    fn kind(&self) -> TriggerKind {
        TriggerKind::Postgres
    }

    fn start(&self, ctx: Context) -> Result<(), TriggerError> {
        let _ = self.scheduler.set(ctx.scheduler.clone());
        for spec in &ctx.functions {
            self.sync(&spec.name, postgres_triggers(spec));
        }
        Ok(())
    }

    fn deployed(&self, spec: &Arc<FunctionSpec>) {
        self.sync(&spec.name, postgres_triggers(spec));
    }

    fn deleted(&self, name: &str) {
        self.sync(name, Vec::new());
    }

    fn shutdown(&self) -> BoxFuture<'static, ()> {
        // Slots stay: the next start goes on from them.
        for (_, sources) in self.sources.lock().drain() {
            for s in sources {
                s.task.abort();
            }
        }
        Box::pin(async {})
    }

    fn status(&self, function: &str) -> Vec<SourceStatus> {
        self.sources
            .lock()
            .get(function)
            .map(|s| s.iter().map(|s| s.status.lock().clone()).collect())
            .unwrap_or_default()
    }
}

/// `text` with `secret` (a password) blanked out, for what an error or a
/// server message might repeat.
fn scrub(text: String, secret: Option<&str>) -> String {
    match secret {
        Some(s) if !s.is_empty() => text.replace(s, "***"),
        _ => text,
    }
}

/// Where a DSN points, without its password: `user@host:port/db`.
fn describe(cfg: &tokio_postgres::Config) -> String {
    let host = cfg
        .get_hosts()
        .first()
        .map(|h| match h {
            tokio_postgres::config::Host::Tcp(h) => h.clone(),
            tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
        })
        .unwrap_or_else(|| "localhost".into());
    let port = cfg.get_ports().first().copied().unwrap_or(5432);
    format!(
        "{}@{host}:{port}/{}",
        cfg.get_user().unwrap_or("?"),
        cfg.get_dbname().or(cfg.get_user()).unwrap_or("?")
    )
}

/// The database a DSN names (`user@host:port/db`), to tell two triggers
/// on the same one.
fn where_of(dsn: &str) -> String {
    tls::parse(dsn)
        .map(|(c, _)| {
            let d = describe(&c);
            d.split_once('@').map(|(_, w)| w.to_string()).unwrap_or(d)
        })
        .unwrap_or_else(|_| redact_dsn(dsn))
}

/// A connection whose driver task ends with it.
struct Conn {
    client: tokio_postgres::Client,
    driver: tokio::task::JoinHandle<()>,
    password: Option<String>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

impl Conn {
    async fn open(dsn: &str) -> Result<(Conn, String), SourceError> {
        let (cfg, settings) = tls::parse(dsn)
            .map_err(|e| SourceError::Dsn(scrub(e, password_of_text(dsn).as_deref())))?;
        let password = cfg
            .get_password()
            .map(|p| String::from_utf8_lossy(p).into_owned());
        let database = describe(&cfg);
        // Reading CA certificates is file I/O: off the async workers.
        let tls_settings = settings.clone();
        let connector = tokio::task::spawn_blocking(move || tls::connector(&tls_settings))
            .await
            .map_err(|e| e.to_string())
            .and_then(|c| c.map_err(|e| e.to_string()))
            .map_err(|reason| SourceError::Connect {
                database: database.clone(),
                reason,
            })?;
        let connect = tokio::time::timeout(Duration::from_secs(10), cfg.connect(connector));
        let (client, connection) = match connect.await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                let reason = match lampyr_tls::refused_certificate(&e) {
                    Some(why) => refused(&why, &settings),
                    None => db_message(&e),
                };
                return Err(SourceError::Connect {
                    database,
                    reason: scrub(reason, password.as_deref()),
                });
            }
            Err(_) => {
                return Err(SourceError::Connect {
                    database,
                    reason: "no answer within 10 s".into(),
                })
            }
        };
        let driver = tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok((
            Conn {
                client,
                driver,
                password,
            },
            database,
        ))
    }

    fn err(&self, what: &'static str, e: tokio_postgres::Error) -> SourceError {
        SourceError::Query {
            what,
            reason: scrub(db_message(&e), self.password.as_deref()),
        }
    }
}

/// Why the server's certificate was refused, and what to change.
fn refused(why: &str, settings: &tls::Settings) -> String {
    let trusted = match &settings.rootcert {
        Some(f) => format!("the CA certificates in sslrootcert ({f})"),
        None => "the system's CA certificates (SSL_CERT_FILE or SSL_CERT_DIR replace them)".into(),
    };
    let fix = match settings.verify {
        lampyr_tls::Verify::Full => "set sslrootcert in the DSN to the CA that signed the server's certificate, and connect to a host name the certificate names (or use sslmode=verify-ca, which checks the CA only)",
        _ => "set sslrootcert in the DSN to the CA that signed the server's certificate",
    };
    format!("the server's TLS certificate is refused: {why}; lampyr trusts {trusted}: {fix}")
}

/// A DSN's password found by its text alone (for an unparsable DSN).
fn password_of_text(dsn: &str) -> Option<String> {
    let redacted = redact_dsn(dsn);
    if redacted == dsn {
        return None;
    }
    // The password is what the redaction replaced: the longest run that
    // differs (good enough to blank it in a message).
    let prefix = dsn
        .bytes()
        .zip(redacted.bytes())
        .take_while(|(a, b)| a == b)
        .count();
    let suffix = dsn
        .bytes()
        .rev()
        .zip(redacted.bytes().rev())
        .take_while(|(a, b)| a == b)
        .count();
    let end = dsn.len().saturating_sub(suffix);
    (prefix < end)
        .then(|| dsn.get(prefix..end).map(str::to_string))
        .flatten()
}

/// A server error's own message (`ERROR: …`), or the client's with its
/// causes (`error connecting to server: Connection refused`).
fn db_message(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{}: {}", db.severity(), db.message());
    }
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        let c_text = c.to_string();
        if !text.contains(&c_text) {
            text = format!("{text}: {c_text}");
        }
        cause = c.source();
    }
    text
}

/// Reads one slot for one function, for as long as the trigger lives.
struct Reader {
    sched: Scheduler,
    function: String,
    spec: PostgresSpec,
    slot: String,
    status: Arc<Mutex<SourceStatus>>,
    max_event_bytes: usize,
}

impl Reader {
    async fn run(self) {
        let mut backoff = FIRST_BACKOFF;
        loop {
            let e = self.session(&mut backoff).await;
            let now = lampyr_time(SystemTime::now());
            {
                let mut st = self.status.lock();
                st.state = SourceState::Retrying;
                st.last_error = Some(e.to_string());
                st.last_error_at = Some(now);
            }
            tracing::warn!(
                function = %self.function,
                trigger = %self.spec.name,
                slot = %self.slot,
                "postgres trigger: {e}; trying again in {}",
                humanize(backoff)
            );
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// Connects, makes sure of the slot, and reads until something fails.
    async fn session(&self, backoff: &mut Duration) -> SourceError {
        match self.session_inner(backoff).await {
            Ok(never) => match never {},
            Err(e) => e,
        }
    }

    async fn session_inner(
        &self,
        backoff: &mut Duration,
    ) -> Result<std::convert::Infallible, SourceError> {
        let (conn, database) = Conn::open(&self.spec.dsn).await?;
        let c = &conn.client;
        let wal_level: String = c
            .query_one("SHOW wal_level", &[])
            .await
            .map_err(|e| conn.err("reading wal_level", e))?
            .get(0);
        if wal_level != "logical" {
            return Err(SourceError::WalLevel(wal_level));
        }
        let existing = c
            .query_opt(
                "SELECT plugin::text FROM pg_replication_slots WHERE slot_name = $1",
                &[&self.slot],
            )
            .await
            .map_err(|e| conn.err("looking up the slot", e))?;
        match existing {
            Some(row) => {
                let plugin: Option<String> = row.get(0);
                if plugin.as_deref() != Some("wal2json") {
                    return Err(SourceError::WrongPlugin {
                        slot: self.slot.clone(),
                        plugin: plugin.unwrap_or_else(|| "none (a physical slot)".into()),
                    });
                }
            }
            None => {
                c.query_one(
                    "SELECT lsn::text FROM pg_create_logical_replication_slot($1, 'wal2json')",
                    &[&self.slot],
                )
                .await
                .map_err(|e| {
                    let mut reason = scrub(db_message(&e), conn.password.as_deref());
                    if reason.contains("wal2json") {
                        reason.push_str(": install the wal2json output plugin on the database server (Debian: postgresql-NN-wal2json)");
                    }
                    SourceError::CreateSlot {
                        slot: self.slot.clone(),
                        reason,
                    }
                })?;
                tracing::info!(function = %self.function, trigger = %self.spec.name, slot = %self.slot, database = %database, "postgres trigger: replication slot created");
            }
        }
        let db_name: String = c
            .query_one("SELECT current_database()::text", &[])
            .await
            .map_err(|e| conn.err("reading the database's name", e))?
            .get(0);
        let mut options: Vec<String> = [
            "format-version",
            "2",
            "include-timestamp",
            "1",
            "include-pk",
            "1",
            "include-xids",
            "1",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if !self.spec.tables.is_empty() {
            options.push("add-tables".into());
            options.push(self.spec.tables.join(","));
        }
        let position = c
            .prepare(
                "SELECT pg_current_wal_lsn()::text, confirmed_flush_lsn::text, \
                 (pg_current_wal_lsn() - confirmed_flush_lsn)::int8 \
                 FROM pg_replication_slots WHERE slot_name = $1",
            )
            .await
            .map_err(|e| conn.err("preparing the slot's position", e))?;
        let peek = c
            .prepare(
                "SELECT lsn::text, xid::text, data FROM pg_logical_slot_peek_changes(\
                 $1, ($2::text)::pg_lsn, $3, VARIADIC $4::text[])",
            )
            .await
            .map_err(|e| conn.err("preparing the slot's read", e))?;
        let advance = c
            .prepare("SELECT pg_replication_slot_advance($1, ($2::text)::pg_lsn)::text")
            .await
            .map_err(|e| conn.err("preparing the slot's advance", e))?;
        {
            let mut st = self.status.lock();
            st.state = SourceState::Connected;
        }
        tracing::info!(function = %self.function, trigger = %self.spec.name, slot = %self.slot, database = %database, "postgres trigger: reading the slot");
        *backoff = FIRST_BACKOFF;
        let mut lag_read = std::time::Instant::now() - LAG_EVERY;
        loop {
            // Where the WAL ends now: the read stops there, and when it
            // held nothing more, the slot may move up to it.
            let pos = c
                .query_opt(&position, &[&self.slot])
                .await
                .map_err(|e| conn.err("reading the slot's position", e))?
                .ok_or_else(|| SourceError::SlotGone {
                    slot: self.slot.clone(),
                })?;
            let (end, confirmed, lag): (String, Option<String>, Option<i64>) =
                (pos.get(0), pos.get(1), pos.get(2));
            if lag_read.elapsed() >= LAG_EVERY {
                self.status.lock().lag = lag.map(|l| l.max(0) as u64);
                lag_read = std::time::Instant::now();
            }
            let rows = c
                .query(&peek, &[&self.slot, &end, &READ_ROWS, &options])
                .await
                .map_err(|e| conn.err("reading the slot", e))?;
            let read_all = rows.len() < READ_ROWS as usize;
            let rows: Vec<decode::Row> = rows
                .iter()
                .map(|r| decode::Row {
                    lsn: r.get(0),
                    xid: r.get(1),
                    data: r.get(2),
                })
                .collect();
            let txs = decode::transactions(&rows)?;
            let delivered = self.enqueue(&txs, &db_name).await?;
            // Everything read is queued: the slot moves to the last commit
            // read, or to the WAL's end when the read held everything up to
            // it (transactions of other tables leave no rows).
            let target = if read_all {
                Some(end.clone())
            } else {
                txs.last().map(|t| t.commit_lsn.clone())
            };
            let behind = |t: &String| match &confirmed {
                Some(c) => decode::lsn_value(t) > decode::lsn_value(c),
                None => true,
            };
            if let Some(target) = target.filter(behind) {
                c.query_one(&advance, &[&self.slot, &target])
                    .await
                    .map_err(|e| conn.err("advancing the slot", e))?;
            }
            {
                let mut st = self.status.lock();
                st.state = SourceState::Connected;
                st.delivered += delivered;
            }
            if txs.is_empty() {
                tokio::time::sleep(self.spec.poll_interval()).await;
            }
        }
    }

    /// Queues the records of `txs` as events, in order, and waits until
    /// every one is committed. Returns how many records were queued.
    async fn enqueue(
        &self,
        txs: &[decode::Transaction],
        database: &str,
    ) -> Result<u64, SourceError> {
        let per_tx: Vec<Vec<decode::Record>> = txs
            .iter()
            .map(|t| decode::records(t, &self.spec, database))
            .collect();
        let count: usize = per_tx.iter().map(Vec::len).sum();
        if count == 0 {
            return Ok(0);
        }
        let events = decode::events(
            decode::batches(per_tx, self.spec.batch_size as usize, &self.slot),
            self.max_event_bytes,
        );
        // Every call is sent to the queue in order as soon as it is first
        // polled; they commit together.
        let calls = events.into_iter().map(|(key, bytes)| {
            let sched = self.sched.clone();
            let function = self.function.clone();
            async move {
                sched
                    .call(Call::source_event(
                        &function,
                        bytes,
                        TriggerKind::Postgres,
                        &key,
                    ))
                    .await
                    .map(|a| matches!(a, lampyr_scheduler::Answer::Queued(q) if q.duplicate))
                    .map_err(|e| SourceError::Enqueue(e.to_string()))
            }
        });
        let mut again = 0;
        for r in futures_util::future::join_all(calls).await {
            again += r? as usize;
        }
        if again > 0 {
            tracing::info!(
                function = %self.function,
                trigger = %self.spec.name,
                slot = %self.slot,
                events = again,
                "postgres trigger: changes read again (the slot had not moved past them before a restart) were queued before: not queued twice"
            );
        }
        Ok(count as u64)
    }
}

/// Drops the slot of a trigger that is gone, trying again for a while if
/// the database cannot be reached (the log then says how to drop it by
/// hand).
async fn drop_slot(function: String, spec: PostgresSpec, slot: String) {
    let mut backoff = Duration::from_millis(100);
    let mut last = String::new();
    for _ in 0..12 {
        match Conn::open(&spec.dsn).await {
            Ok((conn, database)) => {
                let r = conn
                    .client
                    .query(
                        "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1",
                        &[&slot],
                    )
                    .await;
                match r {
                    Ok(_) => {
                        tracing::info!(function = %function, trigger = %spec.name, slot = %slot, database = %database, "postgres trigger: replication slot dropped");
                        return;
                    }
                    // Still in use by the reader that was just stopped.
                    Err(e) => last = conn.err("dropping the slot", e).to_string(),
                }
            }
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
    tracing::error!(
        function = %function,
        trigger = %spec.name,
        slot = %slot,
        "postgres trigger: the replication slot of a removed trigger could not be dropped ({last}); it keeps the database's WAL until it is: run SELECT pg_drop_replication_slot('{slot}') on the database"
    );
}

fn lampyr_time(t: SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(t).to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn humanize(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{} ms", d.as_millis())
    } else {
        format!("{} s", d.as_secs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_scrubbed_from_messages() {
        assert_eq!(
            password_of_text("postgres://a:pw@h/d").as_deref(),
            Some("pw")
        );
        assert_eq!(password_of_text("host=h user=a"), None);
        assert_eq!(
            scrub("bad pw here".into(), Some("pw")),
            "bad *** here".to_string()
        );
        let cfg: tokio_postgres::Config =
            "postgres://app:s3cret@127.0.0.1:6543/shop".parse().unwrap();
        let d = describe(&cfg);
        assert_eq!(d, "app@127.0.0.1:6543/shop");
    }
}
