//! wal2json (format version 2) rows → whole transactions → DynamoDB
//! Streams-like records, and records → batches with their idempotency
//! keys. Pure functions: no connection, no clock.

use lampyr_api::postgres::{ChangeKind, PostgresSpec};
use serde_json::{json, Map, Value};

use crate::SourceError;

/// One row of `pg_logical_slot_peek_changes`.
#[derive(Debug, Clone)]
pub struct Row {
    pub lsn: String,
    pub xid: String,
    pub data: String,
}

/// One committed transaction, as its rows came.
#[derive(Debug, Clone, PartialEq)]
pub struct Transaction {
    pub xid: u64,
    /// The LSN of its commit: where the slot is advanced to once it is
    /// queued.
    pub commit_lsn: String,
    /// The commit time, seconds since the epoch (when wal2json sent it).
    pub committed_at: Option<f64>,
    /// Its row changes (INSERT, UPDATE, DELETE) in order, with their LSN.
    pub changes: Vec<(String, Value)>,
}

/// Groups rows from `B` to `C` into transactions. Rows after the last `C`
/// (an unfinished transaction, which a peek does not return) are left out.
pub fn transactions(rows: &[Row]) -> Result<Vec<Transaction>, SourceError> {
    let mut out = Vec::new();
    let mut open: Option<Transaction> = None;
    for r in rows {
        let v: Value = serde_json::from_str(&r.data).map_err(|e| SourceError::Decode {
            lsn: r.lsn.clone(),
            reason: e.to_string(),
        })?;
        let action = v["action"].as_str().unwrap_or_default();
        match action {
            "B" => {
                open = Some(Transaction {
                    xid: v["xid"]
                        .as_u64()
                        .or_else(|| r.xid.parse().ok())
                        .unwrap_or(0),
                    commit_lsn: String::new(),
                    committed_at: v["timestamp"].as_str().and_then(epoch_seconds),
                    changes: Vec::new(),
                });
            }
            "C" => {
                let Some(mut t) = open.take() else {
                    return Err(SourceError::Decode {
                        lsn: r.lsn.clone(),
                        reason: "a commit without its begin".into(),
                    });
                };
                t.commit_lsn = r.lsn.clone();
                if let Some(ts) = v["timestamp"].as_str().and_then(epoch_seconds) {
                    t.committed_at = Some(ts);
                }
                out.push(t);
            }
            "I" | "U" | "D" => match &mut open {
                Some(t) => t.changes.push((r.lsn.clone(), v)),
                None => {
                    return Err(SourceError::Decode {
                        lsn: r.lsn.clone(),
                        reason: "a change outside a transaction".into(),
                    })
                }
            },
            // TRUNCATE and logical messages are not row changes.
            _ => {}
        }
    }
    Ok(out)
}

/// `2026-12-05 23:52:21.622149+00` as seconds since the epoch.
fn epoch_seconds(ts: &str) -> Option<f64> {
    chrono::DateTime::parse_from_str(ts, "%Y-%m-%d %H:%M:%S%.f%#z")
        .ok()
        .map(|t| t.timestamp_micros() as f64 / 1e6)
}

/// A record and where it comes from.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub commit_lsn: String,
    /// Its index among its transaction's row changes.
    pub index: usize,
    pub value: Value,
}

/// The records of `t` that `spec` delivers, in order.
pub fn records(t: &Transaction, spec: &PostgresSpec, database: &str) -> Vec<Record> {
    let mut out = Vec::new();
    for (index, (lsn, change)) in t.changes.iter().enumerate() {
        let kind = match change["action"].as_str() {
            Some("I") => ChangeKind::Insert,
            Some("U") => ChangeKind::Modify,
            _ => ChangeKind::Remove,
        };
        if !spec.wants(kind) {
            continue;
        }
        let (new_image, new_types) = image(&change["columns"]);
        let (old_image, old_types) = image(&change["identity"]);
        let mut types = old_types;
        types.extend(new_types);
        let key_names: Vec<&str> = match change["pk"].as_array() {
            Some(pk) if !pk.is_empty() => pk.iter().filter_map(|c| c["name"].as_str()).collect(),
            // No primary key: the replica identity is the key.
            _ => old_image.keys().map(String::as_str).collect(),
        };
        let source = if kind == ChangeKind::Remove {
            &old_image
        } else {
            &new_image
        };
        let keys: Map<String, Value> = key_names
            .iter()
            .filter_map(|k| Some((k.to_string(), source.get(*k)?.clone())))
            .collect();
        let schema = change["schema"].as_str().unwrap_or_default();
        let table = change["table"].as_str().unwrap_or_default();
        let mut db = Map::new();
        if let Some(at) = t.committed_at {
            db.insert("ApproximateCreationDateTime".into(), json!(at));
        }
        db.insert("Keys".into(), Value::Object(keys));
        if kind != ChangeKind::Remove {
            db.insert("NewImage".into(), Value::Object(new_image));
        }
        if !old_image.is_empty() {
            db.insert("OldImage".into(), Value::Object(old_image));
        }
        db.insert("SequenceNumber".into(), json!(lsn));
        db.insert("CommitSequenceNumber".into(), json!(t.commit_lsn));
        db.insert("TransactionId".into(), json!(t.xid));
        db.insert("Schema".into(), json!(schema));
        db.insert("Table".into(), json!(table));
        db.insert("Types".into(), Value::Object(types));
        out.push(Record {
            commit_lsn: t.commit_lsn.clone(),
            index,
            value: json!({
                "eventID": format!("{}-{index}", t.commit_lsn),
                "eventName": kind.as_str(),
                "eventVersion": "1.0",
                "eventSource": "lampyr:postgres",
                "eventSourceARN": format!("lampyr:postgres:{database}/{schema}.{table}"),
                "dbChange": Value::Object(db),
            }),
        });
    }
    out
}

/// wal2json's column list as `{name: value}` and `{name: type}`; JSON
/// columns become JSON.
fn image(columns: &Value) -> (Map<String, Value>, Map<String, Value>) {
    let mut values = Map::new();
    let mut types = Map::new();
    for c in columns.as_array().into_iter().flatten() {
        let Some(name) = c["name"].as_str() else {
            continue;
        };
        let ty = c["type"].as_str().unwrap_or_default();
        let mut v = c["value"].clone();
        if matches!(ty, "json" | "jsonb") {
            if let Some(parsed) = v.as_str().and_then(|s| serde_json::from_str(s).ok()) {
                v = parsed;
            }
        }
        values.insert(name.to_string(), v);
        types.insert(name.to_string(), json!(ty));
    }
    (values, types)
}

/// One invocation's worth of records, with its idempotency key.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub key: String,
    pub records: Vec<Value>,
}

/// Cuts the records of consecutive transactions into batches of at most
/// `size`: whole transactions while they fit, a transaction larger than
/// `size` in pieces of its own. The cut depends only on the records, so a
/// replay from the same slot position makes the same batches with the
/// same keys (`pg:SLOT:COMMIT_LSN:INDEX`, or `…:FIRST..LAST` for several).
pub fn batches(per_tx: Vec<Vec<Record>>, size: usize, slot: &str) -> Vec<Batch> {
    let mut out = Vec::new();
    let mut current: Vec<Record> = Vec::new();
    let mut flush = |current: &mut Vec<Record>| {
        if current.is_empty() {
            return;
        }
        let first = &current[0];
        let last = &current[current.len() - 1];
        let key = if current.len() == 1 {
            format!("pg:{slot}:{}:{}", first.commit_lsn, first.index)
        } else {
            format!(
                "pg:{slot}:{}:{}..{}:{}",
                first.commit_lsn, first.index, last.commit_lsn, last.index
            )
        };
        out.push(Batch {
            key,
            records: current.drain(..).map(|r| r.value).collect(),
        });
    };
    for tx in per_tx {
        if tx.is_empty() {
            continue;
        }
        if current.len() + tx.len() > size {
            flush(&mut current);
        }
        if tx.len() > size {
            for chunk in tx.chunks(size) {
                current.extend(chunk.iter().cloned());
                flush(&mut current);
            }
        } else {
            current.extend(tx);
        }
    }
    flush(&mut current);
    out
}

/// The events of `batches` as `(idempotency key, {"Records": [...]})`. A
/// batch over `max_bytes` goes as one event per record (key `KEY#I`), and
/// a record still over it without its images, marked `"Truncated": true`
/// (its keys say which row to read).
pub fn events(batches: Vec<Batch>, max_bytes: usize) -> Vec<(String, Vec<u8>)> {
    let body = |records: &[Value]| {
        serde_json::to_vec(&json!({ "Records": records })).expect("an event serialises")
    };
    let mut out = Vec::new();
    for b in batches {
        let bytes = body(&b.records);
        if bytes.len() <= max_bytes {
            out.push((b.key, bytes));
            continue;
        }
        for (i, mut r) in b.records.into_iter().enumerate() {
            let mut bytes = body(std::slice::from_ref(&r));
            if bytes.len() > max_bytes {
                if let Some(db) = r["dbChange"].as_object_mut() {
                    db.remove("NewImage");
                    db.remove("OldImage");
                    db.insert("Truncated".into(), Value::Bool(true));
                }
                bytes = body(std::slice::from_ref(&r));
            }
            out.push((format!("{}#{i}", b.key), bytes));
        }
    }
    out
}

/// An LSN (`X/Y`, hexadecimal) as a number.
pub fn lsn_value(lsn: &str) -> Option<u64> {
    let (hi, lo) = lsn.split_once('/')?;
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What wal2json 2.5 sent for a transaction inserting two rows and
    /// updating one, then one (REPLICA IDENTITY FULL) updating and
    /// deleting.
    fn sample() -> Vec<Row> {
        let rows = [
            (
                "0/1530870",
                "726",
                r#"{"action":"B","xid":726,"timestamp":"2026-12-05 23:52:21.665473+00"}"#,
            ),
            (
                "0/1530870",
                "726",
                r#"{"action":"I","xid":726,"schema":"public","table":"t","columns":[{"name":"id","type":"integer","value":1},{"name":"j","type":"jsonb","value":"{\"a\": 1}"},{"name":"n","type":"numeric","value":1.50},{"name":"s","type":"text","value":"hi"}],"pk":[{"name":"id","type":"integer"}]}"#,
            ),
            (
                "0/1530998",
                "726",
                r#"{"action":"I","xid":726,"schema":"public","table":"t","columns":[{"name":"id","type":"integer","value":2},{"name":"j","type":"jsonb","value":null},{"name":"n","type":"numeric","value":2},{"name":"s","type":"text","value":"x"}],"pk":[{"name":"id","type":"integer"}]}"#,
            ),
            (
                "0/1530A28",
                "726",
                r#"{"action":"U","xid":726,"schema":"public","table":"t","columns":[{"name":"id","type":"integer","value":1},{"name":"j","type":"jsonb","value":"{\"a\": 1}"},{"name":"n","type":"numeric","value":1.50},{"name":"s","type":"text","value":"yo"}],"identity":[{"name":"id","type":"integer","value":1}],"pk":[{"name":"id","type":"integer"}]}"#,
            ),
            (
                "0/1530AE8",
                "726",
                r#"{"action":"C","xid":726,"timestamp":"2026-12-05 23:52:21.665473+00"}"#,
            ),
            (
                "0/1530AE8",
                "727",
                r#"{"action":"B","xid":727,"timestamp":"2026-12-05 23:52:21.670314+00"}"#,
            ),
            (
                "0/1530C78",
                "727",
                r#"{"action":"U","xid":727,"schema":"public","table":"t","columns":[{"name":"id","type":"integer","value":2},{"name":"s","type":"text","value":"z"}],"identity":[{"name":"id","type":"integer","value":2},{"name":"s","type":"text","value":"x"}],"pk":[{"name":"id","type":"integer"}]}"#,
            ),
            (
                "0/1530CF0",
                "727",
                r#"{"action":"D","xid":727,"schema":"public","table":"t","identity":[{"name":"id","type":"integer","value":1},{"name":"s","type":"text","value":"yo"}],"pk":[{"name":"id","type":"integer"}]}"#,
            ),
            (
                "0/1530DE8",
                "727",
                r#"{"action":"C","xid":727,"timestamp":"2026-12-05 23:52:21.670314+00"}"#,
            ),
            // A transaction still open at the end is left for the next read.
            ("0/1530DE8", "728", r#"{"action":"B","xid":728}"#),
        ];
        rows.iter()
            .map(|(l, x, d)| Row {
                lsn: l.to_string(),
                xid: x.to_string(),
                data: d.to_string(),
            })
            .collect()
    }

    fn spec(extra: &str) -> PostgresSpec {
        let s = lampyr_api::FunctionSpec::from_toml(&format!(
            "name = \"f\"\nruntime = \"nodejs\"\nhandler = \"index.handler\"\n[[triggers]]\ntype = \"postgres\"\ndsn = \"postgres://a@h/d\"\n{extra}"
        ))
        .unwrap();
        match &s.triggers[0] {
            lampyr_api::TriggerSpec::Postgres(p) => p.clone(),
            _ => unreachable!(),
        }
    }

    #[test]
    fn transactions_become_records_in_the_documented_shape() {
        let txs = transactions(&sample()).unwrap();
        assert_eq!(txs.len(), 2);
        assert_eq!((txs[0].xid, txs[0].commit_lsn.as_str()), (726, "0/1530AE8"));
        assert_eq!(txs[0].changes.len(), 3);
        let r = records(&txs[0], &spec(""), "shop");
        assert_eq!(r.len(), 3);
        let insert = &r[0].value;
        assert_eq!(insert["eventName"], "INSERT");
        assert_eq!(insert["eventID"], "0/1530AE8-0");
        assert_eq!(insert["eventSourceARN"], "lampyr:postgres:shop/public.t");
        let db = &insert["dbChange"];
        assert_eq!(db["Keys"], json!({"id": 1}));
        assert_eq!(
            db["NewImage"]["j"],
            json!({"a": 1}),
            "JSON columns are JSON"
        );
        assert_eq!(db["NewImage"]["n"], json!(1.5));
        assert_eq!(db["SequenceNumber"], "0/1530870");
        assert_eq!(db["TransactionId"], 726);
        assert_eq!(db["Types"]["j"], "jsonb");
        assert!(db.get("OldImage").is_none());
        let at = db["ApproximateCreationDateTime"].as_f64().unwrap();
        assert!((at - 1_796_514_741.665_473).abs() < 1e-3, "{at}");
        let r = records(&txs[1], &spec(""), "shop");
        let (update, delete) = (&r[0].value, &r[1].value);
        assert_eq!(update["eventName"], "MODIFY");
        assert_eq!(update["dbChange"]["OldImage"], json!({"id": 2, "s": "x"}));
        assert_eq!(update["dbChange"]["NewImage"], json!({"id": 2, "s": "z"}));
        assert_eq!(delete["eventName"], "REMOVE");
        assert_eq!(delete["dbChange"]["Keys"], json!({"id": 1}));
        assert!(delete["dbChange"].get("NewImage").is_none());
        assert_eq!(delete["dbChange"]["OldImage"]["s"], "yo");
    }

    #[test]
    fn event_kinds_are_filtered_but_keep_their_index() {
        let txs = transactions(&sample()).unwrap();
        let r = records(&txs[0], &spec("events = [\"MODIFY\"]\n"), "shop");
        assert_eq!(r.len(), 1);
        assert_eq!(
            (r[0].index, r[0].value["eventID"].as_str()),
            (2, Some("0/1530AE8-2"))
        );
    }

    #[test]
    fn batches_keep_transactions_whole_when_they_fit_and_keys_are_stable() {
        let txs = transactions(&sample()).unwrap();
        let per_tx = || {
            txs.iter()
                .map(|t| records(t, &spec(""), "shop"))
                .collect::<Vec<_>>()
        };
        let one = batches(per_tx(), 1, "s");
        let keys: Vec<&str> = one.iter().map(|b| b.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "pg:s:0/1530AE8:0",
                "pg:s:0/1530AE8:1",
                "pg:s:0/1530AE8:2",
                "pg:s:0/1530DE8:0",
                "pg:s:0/1530DE8:1"
            ]
        );
        // 3 + 2 changes in batches of 4: the second transaction does not
        // fit beside the first, so it goes whole into the next batch.
        let four = batches(per_tx(), 4, "s");
        assert_eq!(four.len(), 2);
        assert_eq!(four[0].records.len(), 3);
        assert_eq!(four[0].key, "pg:s:0/1530AE8:0..0/1530AE8:2");
        assert_eq!(four[1].records.len(), 2);
        // Both fit in ten; a transaction larger than the batch is cut.
        assert_eq!(batches(per_tx(), 10, "s").len(), 1);
        let two = batches(per_tx(), 2, "s");
        let sizes: Vec<usize> = two.iter().map(|b| b.records.len()).collect();
        assert_eq!(sizes, [2, 1, 2]);
        assert_eq!(batches(per_tx(), 2, "s"), two, "the same cut every time");
    }

    #[test]
    fn events_over_the_limit_are_cut_and_images_dropped_last() {
        let txs = transactions(&sample()).unwrap();
        let per_tx: Vec<Vec<Record>> = txs.iter().map(|t| records(t, &spec(""), "shop")).collect();
        let all = batches(per_tx, 10, "s");
        let whole = events(all.clone(), 1 << 20);
        assert_eq!(whole.len(), 1);
        let one: Value = serde_json::from_slice(&whole[0].1).unwrap();
        assert_eq!(one["Records"].as_array().unwrap().len(), 5);
        // Too large together: one event per record, keys apart.
        let largest = whole[0].1.len() / 2;
        let cut = events(all.clone(), largest);
        assert_eq!(cut.len(), 5);
        assert!(cut[0].0.ends_with("#0") && cut[4].0.ends_with("#4"));
        assert!(cut.iter().all(|(_, b)| b.len() <= largest));
        // A record too large alone keeps its keys, without images.
        let tiny = events(all, 400);
        let r: Value = serde_json::from_slice(&tiny[0].1).unwrap();
        let db = &r["Records"][0]["dbChange"];
        assert_eq!(
            (db["Truncated"].as_bool(), &db["Keys"]),
            (Some(true), &json!({"id": 1}))
        );
        assert!(db.get("NewImage").is_none());
    }

    #[test]
    fn lsns_compare_as_numbers() {
        assert!(lsn_value("0/1530DE8") > lsn_value("0/1530AE8"));
        assert!(lsn_value("1/0") > lsn_value("0/FFFFFFFF"));
        assert_eq!(lsn_value("junk"), None);
    }
}
