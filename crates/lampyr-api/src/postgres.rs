//! The `[[triggers]]` table with `type = "postgres"`: a PostgreSQL
//! database's row changes, read through a logical replication slot.
//!
//! ```toml
//! [[triggers]]
//! type = "postgres"
//! dsn = "postgres://lampyr:secret@127.0.0.1:5432/shop"  # the password is never shown
//! slot = "lampyr_orders"          # default: lampyr_<function>_<name>
//! tables = ["public.orders"]      # default: every table
//! events = ["INSERT", "MODIFY"]   # default: INSERT, MODIFY and REMOVE
//! batch_size = 10                 # row changes per invocation, 1-100 (default 1)
//! poll_interval = "100ms"         # how often an idle slot is read (default 500ms)
//! ```

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::manifest::{duration_in, table_string, ManifestError, TriggerSpec};

/// The keys of a postgres trigger's table.
pub(crate) const KEYS: &[&str] = &[
    "type",
    "name",
    "dsn",
    "slot",
    "tables",
    "events",
    "batch_size",
    "poll_interval",
];

pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_millis(500);
pub const MIN_POLL_INTERVAL: Duration = Duration::from_millis(10);
pub const MAX_POLL_INTERVAL: Duration = Duration::from_secs(60);
pub const MAX_BATCH_SIZE: u32 = 100;
pub const MAX_TABLES: usize = 100;
pub const MAX_DSN_BYTES: usize = 1024;

/// A kind of row change, as the event's `eventName` says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ChangeKind {
    #[serde(rename = "INSERT")]
    Insert,
    #[serde(rename = "MODIFY")]
    Modify,
    #[serde(rename = "REMOVE")]
    Remove,
}

impl ChangeKind {
    pub const ALL: [ChangeKind; 3] = [ChangeKind::Insert, ChangeKind::Modify, ChangeKind::Remove];

    pub fn as_str(self) -> &'static str {
        match self {
            ChangeKind::Insert => "INSERT",
            ChangeKind::Modify => "MODIFY",
            ChangeKind::Remove => "REMOVE",
        }
    }
}

/// A `[[triggers]]` table with `type = "postgres"`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresSpec {
    /// Its name, unique among the function's postgres triggers.
    pub name: String,
    /// The connection string (URL or `key=value` form). Holds a password:
    /// shown only through [`redact_dsn`].
    pub dsn: String,
    /// The replication slot as written; [`PostgresSpec::slot_name`] gives
    /// the one used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot: Option<String>,
    /// `schema.table` names (`*` matches any); empty: every table.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tables: Vec<String>,
    /// The kinds of change delivered.
    pub events: Vec<ChangeKind>,
    /// The most row changes in one invocation.
    pub batch_size: u32,
    /// How long the trigger waits before reading a slot that had nothing.
    pub poll_interval_ms: u64,
}

impl fmt::Debug for PostgresSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresSpec")
            .field("name", &self.name)
            .field("dsn", &redact_dsn(&self.dsn))
            .field("slot", &self.slot)
            .field("tables", &self.tables)
            .field("events", &self.events)
            .field("batch_size", &self.batch_size)
            .field("poll_interval_ms", &self.poll_interval_ms)
            .finish()
    }
}

impl PostgresSpec {
    /// The replication slot this trigger of `function` reads: `slot`, or
    /// `lampyr_<function>_<name>` made a valid slot name.
    pub fn slot_name(&self, function: &str) -> String {
        if let Some(s) = &self.slot {
            return s.clone();
        }
        let full: String = format!("lampyr_{function}_{}", self.name)
            .chars()
            .map(|c| if c == '-' { '_' } else { c })
            .collect();
        if full.len() <= 63 {
            return full;
        }
        // Too long: a prefix, and a hash of the whole so names stay apart.
        let mut h: u32 = 0x811c_9dc5;
        for b in full.bytes() {
            h = (h ^ b as u32).wrapping_mul(0x0100_0193);
        }
        format!("{}_{h:08x}", &full[..54])
    }

    pub fn poll_interval(&self) -> Duration {
        Duration::from_millis(self.poll_interval_ms)
    }

    /// Whether changes of `kind` are delivered.
    pub fn wants(&self, kind: ChangeKind) -> bool {
        self.events.contains(&kind)
    }

    pub(crate) fn from_table(i: usize, t: &toml::Table) -> Result<PostgresSpec, ManifestError> {
        let key = |k: &str| format!("triggers[{i}].{k}");
        let string = |k: &str| table_string(t, &key(k), k);
        let strings = |k: &str| -> Result<Option<Vec<String>>, ManifestError> {
            match t.get(k) {
                None => Ok(None),
                Some(toml::Value::Array(items)) => items
                    .iter()
                    .enumerate()
                    .map(|(j, v)| match v {
                        toml::Value::String(s) => Ok(s.clone()),
                        v => Err(ManifestError::invalid(
                            &format!("triggers[{i}].{k}[{j}]"),
                            format!("must be a string, not {}", v.type_str()),
                        )),
                    })
                    .collect::<Result<Vec<_>, _>>()
                    .map(Some),
                Some(v) => Err(ManifestError::invalid(
                    &key(k),
                    format!("must be a list of strings, not {}", v.type_str()),
                )),
            }
        };
        let name = string("name")?.unwrap_or_else(|| "postgres".to_string());
        crate::manifest::validate_name(&name).map_err(|_| {
            ManifestError::invalid(
                &key("name"),
                format!("\"{name}\" is not a valid trigger name: use 1-63 characters of a-z, 0-9, '-' and '_'"),
            )
        })?;
        // The DSN is never repeated in a message: it may hold a password.
        let dsn = string("dsn")?.ok_or_else(|| {
            ManifestError::invalid(
                &key("dsn"),
                "is missing: name the database, e.g. dsn = \"postgres://USER:PASSWORD@HOST:5432/DB\"",
            )
        })?;
        check_dsn(&dsn).map_err(|m| ManifestError::invalid(&key("dsn"), m))?;
        let slot = string("slot")?;
        if let Some(s) = &slot {
            check_slot(s).map_err(|m| ManifestError::invalid(&key("slot"), m))?;
        }
        let mut tables = Vec::new();
        for (j, table) in strings("tables")?.unwrap_or_default().iter().enumerate() {
            let t = normalise_table(table)
                .map_err(|m| ManifestError::invalid(&format!("triggers[{i}].tables[{j}]"), m))?;
            if tables.contains(&t) {
                return Err(ManifestError::invalid(
                    &format!("triggers[{i}].tables[{j}]"),
                    format!("\"{t}\" is listed twice: list each table once"),
                ));
            }
            tables.push(t);
        }
        if tables.len() > MAX_TABLES {
            return Err(ManifestError::invalid(
                &key("tables"),
                format!("has {} tables, more than the limit of {MAX_TABLES}: use a pattern such as \"public.*\"", tables.len()),
            ));
        }
        let events = match strings("events")? {
            None => ChangeKind::ALL.to_vec(),
            Some(list) => {
                if list.is_empty() {
                    return Err(ManifestError::invalid(
                        &key("events"),
                        "is empty: list the changes to deliver, some of \"INSERT\", \"MODIFY\", \"REMOVE\" (or leave the key out for all three)",
                    ));
                }
                let mut events = Vec::new();
                for (j, e) in list.iter().enumerate() {
                    let k = format!("triggers[{i}].events[{j}]");
                    let kind = ChangeKind::ALL
                        .into_iter()
                        .find(|c| c.as_str() == e)
                        .ok_or_else(|| {
                            ManifestError::invalid(
                                &k,
                                format!("unknown change \"{e}\": use \"INSERT\", \"MODIFY\" (an UPDATE) or \"REMOVE\" (a DELETE)"),
                            )
                        })?;
                    if events.contains(&kind) {
                        return Err(ManifestError::invalid(
                            &k,
                            format!("\"{e}\" is listed twice: list each change once"),
                        ));
                    }
                    events.push(kind);
                }
                events
            }
        };
        let batch_size = match t.get("batch_size") {
            None => 1,
            Some(toml::Value::Integer(n)) if (1..=MAX_BATCH_SIZE as i64).contains(n) => *n as u32,
            Some(toml::Value::Integer(n)) => {
                return Err(ManifestError::invalid(
                    &key("batch_size"),
                    format!("{n} is out of range: use a whole number from 1 to {MAX_BATCH_SIZE} (row changes per invocation)"),
                ))
            }
            Some(v) => {
                return Err(ManifestError::invalid(
                    &key("batch_size"),
                    format!("must be a whole number, not {}", v.type_str()),
                ))
            }
        };
        let poll_interval = match t.get("poll_interval") {
            None => DEFAULT_POLL_INTERVAL,
            Some(toml::Value::String(s)) => duration_in(
                &key("poll_interval"),
                Some(s),
                DEFAULT_POLL_INTERVAL,
                MIN_POLL_INTERVAL,
                MAX_POLL_INTERVAL,
            )?,
            Some(v) => {
                return Err(ManifestError::invalid(
                    &key("poll_interval"),
                    format!("must be a duration such as \"500ms\", not {}", v.type_str()),
                ))
            }
        };
        Ok(PostgresSpec {
            name,
            dsn,
            slot,
            tables,
            events,
            batch_size,
            poll_interval_ms: poll_interval.as_millis() as u64,
        })
    }

    /// Refuses a second postgres trigger with this one's name or slot
    /// (`earlier`: the function's triggers before table `i`).
    pub(crate) fn check_unique(
        &self,
        i: usize,
        function: &str,
        earlier: &[TriggerSpec],
    ) -> Result<(), ManifestError> {
        for o in earlier {
            let TriggerSpec::Postgres(o) = o else {
                continue;
            };
            if o.name == self.name {
                return Err(ManifestError::invalid(
                    &format!("triggers[{i}].name"),
                    format!("\"{}\" is the name of another postgres trigger: give each one a name of its own", self.name),
                ));
            }
            if o.slot_name(function) == self.slot_name(function) {
                return Err(ManifestError::invalid(
                    &format!("triggers[{i}].slot"),
                    format!("\"{}\" is the slot of another postgres trigger: a slot has one reader, give each trigger its own", self.slot_name(function)),
                ));
            }
        }
        Ok(())
    }
}

/// Checks a DSN's form without repeating it (it may hold a password).
fn check_dsn(dsn: &str) -> Result<(), String> {
    if dsn.trim().is_empty() {
        return Err(
            "is empty: name the database, e.g. \"postgres://USER:PASSWORD@HOST:5432/DB\"".into(),
        );
    }
    if dsn.len() > MAX_DSN_BYTES {
        return Err(format!("is longer than {MAX_DSN_BYTES} bytes"));
    }
    if dsn.contains(['\0', '\n', '\r']) {
        return Err("contains a NUL byte or a line break".into());
    }
    let url = dsn.starts_with("postgres://") || dsn.starts_with("postgresql://");
    if !url && !dsn.contains('=') {
        return Err("is neither a URL (\"postgres://USER:PASSWORD@HOST:PORT/DB\") nor a list of settings (\"host=HOST port=5432 user=USER dbname=DB\")".into());
    }
    if url && dsn.split_once("://").is_some_and(|(_, r)| r.is_empty()) {
        return Err("names no server: write \"postgres://USER:PASSWORD@HOST:PORT/DB\"".into());
    }
    Ok(())
}

/// A replication slot name: 1-63 characters of a-z, 0-9 and '_'.
fn check_slot(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(format!("\"{s}\" is not a replication slot name: PostgreSQL allows 1-63 characters of a-z, 0-9 and '_'"))
    }
}

/// `table` or `schema.table` (either part may be `*`) as `schema.table`.
fn normalise_table(t: &str) -> Result<String, String> {
    let (schema, table) = t.split_once('.').unwrap_or(("public", t));
    let ident = |s: &str| {
        s == "*"
            || (!s.is_empty()
                && s.len() <= 63
                && s.chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$'))
    };
    if !ident(schema) || !ident(table) {
        return Err(format!("\"{t}\" is not a table: write \"TABLE\" (in schema public) or \"SCHEMA.TABLE\", names of letters, digits, '_' and '$' (or \"*\" for any)"));
    }
    Ok(format!("{schema}.{table}"))
}

/// `dsn` with its password replaced by `***`, in either form (URL or
/// `key=value` settings).
pub fn redact_dsn(dsn: &str) -> String {
    if let Some((scheme, rest)) = dsn.split_once("://") {
        let (head, query) = match rest.find('?') {
            Some(q) => (&rest[..q], Some(&rest[q + 1..])),
            None => (rest, None),
        };
        let head = match head.rfind('@') {
            Some(at) => {
                let (userinfo, host) = head.split_at(at);
                match userinfo.split_once(':') {
                    Some((user, _)) => format!("{user}:***{host}"),
                    None => head.to_string(),
                }
            }
            None => head.to_string(),
        };
        let mut out = format!("{scheme}://{head}");
        if let Some(q) = query {
            let params: Vec<String> = q
                .split('&')
                .map(|p| match p.split_once('=') {
                    Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                    _ => p.to_string(),
                })
                .collect();
            out.push('?');
            out.push_str(&params.join("&"));
        }
        return out;
    }
    // key = value settings; values may be quoted with '…' and escapes.
    let mut out = String::with_capacity(dsn.len());
    let chars: Vec<char> = dsn.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        if chars[i].is_whitespace() {
            out.push(chars[i]);
            i += 1;
            continue;
        }
        let start = i;
        while i < chars.len() && chars[i] != '=' && !chars[i].is_whitespace() {
            i += 1;
        }
        let key: String = chars[start..i].iter().collect();
        out.push_str(&key);
        while i < chars.len() && chars[i].is_whitespace() {
            out.push(chars[i]);
            i += 1;
        }
        if i < chars.len() && chars[i] == '=' {
            out.push('=');
            i += 1;
            while i < chars.len() && chars[i].is_whitespace() {
                out.push(chars[i]);
                i += 1;
            }
            let vstart = i;
            if i < chars.len() && chars[i] == '\'' {
                i += 1;
                while i < chars.len() && chars[i] != '\'' {
                    if chars[i] == '\\' {
                        i += 1;
                    }
                    i += 1;
                }
                i = (i + 1).min(chars.len());
            } else {
                while i < chars.len() && !chars[i].is_whitespace() {
                    if chars[i] == '\\' {
                        i += 1;
                    }
                    i += 1;
                }
            }
            let i_end = i.min(chars.len());
            if key.eq_ignore_ascii_case("password") {
                out.push_str("***");
            } else {
                out.extend(&chars[vstart..i_end]);
            }
            i = i_end;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use crate::manifest::{FunctionSpec, TriggerSpec};

    use super::*;

    const MIN: &str = "name = \"shop-api\"\nruntime = \"nodejs\"\nhandler = \"index.handler\"\n";
    const DSN: &str = "postgres://app:s3cr3t-pw@127.0.0.1:5432/shop";

    fn parse(table: &str) -> Result<FunctionSpec, String> {
        FunctionSpec::from_toml(&format!(
            "{MIN}[[triggers]]\ntype = \"postgres\"\ndsn = \"{DSN}\"\n{table}"
        ))
        .map_err(|e| e.to_string())
    }

    fn pg(spec: &FunctionSpec, i: usize) -> &PostgresSpec {
        match &spec.triggers[i] {
            TriggerSpec::Postgres(p) => p,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn defaults_fill_in_and_round_trip() {
        let s = parse("").unwrap();
        let p = pg(&s, 0);
        assert_eq!(p.name, "postgres");
        assert_eq!(p.slot_name("shop-api"), "lampyr_shop_api_postgres");
        assert_eq!(p.events, ChangeKind::ALL);
        assert!(p.tables.is_empty());
        assert_eq!(
            (p.batch_size, p.poll_interval()),
            (1, DEFAULT_POLL_INTERVAL)
        );
        assert_eq!(s.triggers[0].kind(), crate::TriggerKind::Postgres);
        let j = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<FunctionSpec>(&j).unwrap(), s);
    }

    #[test]
    fn every_key_is_read() {
        let s = parse(
            "name = \"orders\"\nslot = \"shop_orders\"\ntables = [\"orders\", \"sales.*\"]\nevents = [\"INSERT\", \"REMOVE\"]\nbatch_size = 10\npoll_interval = \"50ms\"\n",
        )
        .unwrap();
        let p = pg(&s, 0);
        assert_eq!(p.slot_name("shop-api"), "shop_orders");
        assert_eq!(p.tables, ["public.orders", "sales.*"]);
        assert_eq!(p.events, [ChangeKind::Insert, ChangeKind::Remove]);
        assert!(!p.wants(ChangeKind::Modify));
        assert_eq!((p.batch_size, p.poll_interval_ms), (10, 50));
    }

    #[test]
    fn wrong_keys_and_values_are_named_with_what_to_do() {
        for (table, want) in [
            (
                "dbname = \"x\"\n",
                "`triggers[0].dbname`: is not a setting of a trigger of type \"postgres\"",
            ),
            (
                "slot = \"Orders-Slot\"\n",
                "`triggers[0].slot`: \"Orders-Slot\" is not a replication slot name",
            ),
            (
                "tables = [\"public.orders.x\"]\n",
                "`triggers[0].tables[0]`",
            ),
            (
                "tables = [\"a\", \"public.a\"]\n",
                "`triggers[0].tables[1]`: \"public.a\" is listed twice",
            ),
            (
                "tables = \"orders\"\n",
                "`triggers[0].tables`: must be a list of strings",
            ),
            (
                "tables = [3]\n",
                "`triggers[0].tables[0]`: must be a string",
            ),
            (
                "events = [\"UPDATE\"]\n",
                "`triggers[0].events[0]`: unknown change \"UPDATE\": use",
            ),
            ("events = []\n", "`triggers[0].events`: is empty"),
            (
                "events = [\"INSERT\", \"INSERT\"]\n",
                "`triggers[0].events[1]`",
            ),
            (
                "batch_size = 0\n",
                "`triggers[0].batch_size`: 0 is out of range: use a whole number from 1 to 100",
            ),
            (
                "batch_size = \"10\"\n",
                "`triggers[0].batch_size`: must be a whole number",
            ),
            (
                "poll_interval = \"1ms\"\n",
                "`triggers[0].poll_interval`: 1ms is out of range",
            ),
            (
                "poll_interval = 5\n",
                "`triggers[0].poll_interval`: must be a duration",
            ),
            ("name = \"Bad Name\"\n", "`triggers[0].name`"),
        ] {
            let e = parse(table).unwrap_err();
            assert!(e.contains(want), "{table:?} gave {e}");
            assert!(!e.contains("s3cr3t-pw"), "{e}");
        }
        let e = FunctionSpec::from_toml(&format!("{MIN}[[triggers]]\ntype = \"postgres\"\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("`triggers[0].dsn`: is missing"), "{e}");
        for dsn in ["", "not a dsn", "postgres://"] {
            let e = FunctionSpec::from_toml(&format!(
                "{MIN}[[triggers]]\ntype = \"postgres\"\ndsn = \"{dsn}\"\n"
            ))
            .unwrap_err()
            .to_string();
            assert!(e.contains("`triggers[0].dsn`"), "{dsn:?} gave {e}");
        }
        // A second trigger with the same name, or the same slot.
        let two = |a: &str, b: &str| {
            FunctionSpec::from_toml(&format!(
                "{MIN}[[triggers]]\ntype = \"postgres\"\ndsn = \"{DSN}\"\n{a}[[triggers]]\ntype = \"postgres\"\ndsn = \"{DSN}\"\n{b}"
            ))
            .map_err(|e| e.to_string())
        };
        let e = two("", "").unwrap_err();
        assert!(e.contains("`triggers[1].name`"), "{e}");
        let e = two("slot = \"s\"\n", "name = \"b\"\nslot = \"s\"\n").unwrap_err();
        assert!(e.contains("`triggers[1].slot`"), "{e}");
        assert!(two("", "name = \"b\"\n").is_ok());
    }

    #[test]
    fn long_names_make_valid_distinct_slots() {
        let f = "f".repeat(63);
        let s = FunctionSpec::from_toml(&format!(
            "name = \"{f}\"\nruntime = \"nodejs\"\nhandler = \"index.handler\"\n[[triggers]]\ntype = \"postgres\"\ndsn = \"{DSN}\"\nname = \"a\"\n[[triggers]]\ntype = \"postgres\"\ndsn = \"{DSN}\"\nname = \"b\"\n"
        ))
        .unwrap();
        let (a, b) = (pg(&s, 0).slot_name(&f), pg(&s, 1).slot_name(&f));
        assert_ne!(a, b);
        for slot in [a, b] {
            assert!(check_slot(&slot).is_ok(), "{slot}");
        }
    }

    #[test]
    fn passwords_are_redacted_everywhere_they_show() {
        for (dsn, want) in [
            (DSN, "postgres://app:***@127.0.0.1:5432/shop"),
            ("postgresql://app@db/shop", "postgresql://app@db/shop"),
            (
                "postgres://a:p%40ss@h/d?sslmode=disable&password=x",
                "postgres://a:***@h/d?sslmode=disable&password=***",
            ),
            (
                "host=db user=app password=s3cr3t dbname=shop",
                "host=db user=app password=*** dbname=shop",
            ),
            (
                "host=db password = 'it\\'s s3cr3t' dbname=shop",
                "host=db password = *** dbname=shop",
            ),
        ] {
            assert_eq!(redact_dsn(dsn), want);
        }
        let s = parse("").unwrap();
        let shown = serde_json::to_string(&s.redacted()).unwrap();
        assert!(
            !shown.contains("s3cr3t-pw") && shown.contains("app:***@"),
            "{shown}"
        );
        let debug = format!("{s:?}");
        assert!(!debug.contains("s3cr3t-pw"), "{debug}");
    }
}
