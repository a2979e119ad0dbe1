//! The event a batch of messages becomes, and what the function's result
//! says about which of them failed.

use std::collections::{BTreeMap, HashSet};

use base64::Engine;
use lampyr_nats::async_nats::jetstream::Message;
use serde_json::{json, Value};

/// What lampyr knows of one delivered message.
#[derive(Debug, Clone)]
pub(crate) struct Delivered {
    pub stream_sequence: u64,
    pub delivered: u64,
    pub pending: u64,
}

/// Its delivery metadata, from the ack subject.
pub(crate) fn delivered(m: &Message) -> Option<Delivered> {
    let info = m.info().ok()?;
    Some(Delivered {
        stream_sequence: info.stream_sequence,
        delivered: info.delivered.max(1) as u64,
        pending: info.pending,
    })
}

/// One record of the event: Lambda's SQS record, for a NATS message.
pub(crate) fn record(m: &Message) -> Value {
    let info = m.info().ok();
    let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    if let Some(h) = &m.headers {
        for (name, values) in h.iter() {
            headers
                .entry(name.to_string())
                .or_default()
                .extend(values.iter().map(|v| v.to_string()));
        }
    }
    let seq = info.as_ref().map(|i| i.stream_sequence).unwrap_or(0);
    json!({
        "eventSource": "lampyr:nats",
        "messageId": seq.to_string(),
        "subject": m.subject.as_str(),
        "data": base64::engine::general_purpose::STANDARD.encode(&m.payload),
        "headers": headers,
        "stream": info.as_ref().map(|i| i.stream).unwrap_or(""),
        "streamSequence": seq,
        "deliveryCount": info.as_ref().map(|i| i.delivered.max(1)).unwrap_or(1),
        "publishedAt": info
            .as_ref()
            .map(|i| i.published.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)),
    })
}

/// The event for a batch.
pub(crate) fn event(msgs: &[Message]) -> Vec<u8> {
    let records: Vec<Value> = msgs.iter().map(record).collect();
    serde_json::to_vec(&json!({ "Records": records })).expect("JSON values serialise")
}

/// Which messages of a batch failed, by the function's successful result:
/// `{"batchItemFailures": [{"itemIdentifier": SEQ}]}` names them (the
/// stream sequence, as a number or a string), as Lambda's SQS integration
/// reads it. A result without the key is a success of the whole batch; an
/// identifier that is not in the batch fails the whole batch.
pub(crate) fn failed_items(result: &[u8], batch: &[u64]) -> Result<HashSet<u64>, String> {
    let Ok(Value::Object(obj)) = serde_json::from_slice::<Value>(result) else {
        return Ok(HashSet::new());
    };
    let list = match obj.get("batchItemFailures") {
        None | Some(Value::Null) => return Ok(HashSet::new()),
        Some(Value::Array(list)) => list,
        Some(_) => return Err("batchItemFailures is not a list".into()),
    };
    let mut failed = HashSet::new();
    for item in list {
        let id = match item.get("itemIdentifier") {
            Some(Value::Number(n)) => n.as_u64(),
            Some(Value::String(s)) => s.parse().ok(),
            _ => None,
        };
        match id {
            Some(id) if batch.contains(&id) => {
                failed.insert(id);
            }
            _ => {
                return Err(format!(
                    "batchItemFailures names {} which is not a message of the batch",
                    item.get("itemIdentifier").unwrap_or(&Value::Null)
                ))
            }
        }
    }
    Ok(failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_item_failures_read_as_lambda_reads_them() {
        let batch = [5, 6, 7];
        assert!(failed_items(b"null", &batch).unwrap().is_empty());
        assert!(failed_items(b"\"ok\"", &batch).unwrap().is_empty());
        assert!(failed_items(br#"{"batchItemFailures":[]}"#, &batch)
            .unwrap()
            .is_empty());
        let f = failed_items(
            br#"{"batchItemFailures":[{"itemIdentifier":6},{"itemIdentifier":"7"}]}"#,
            &batch,
        )
        .unwrap();
        assert_eq!(f, HashSet::from([6, 7]));
        assert!(failed_items(br#"{"batchItemFailures":[{"itemIdentifier":9}]}"#, &batch).is_err());
        assert!(failed_items(br#"{"batchItemFailures":[{"id":5}]}"#, &batch).is_err());
        assert!(failed_items(br#"{"batchItemFailures":3}"#, &batch).is_err());
    }
}
