//! `InvokeWithResponseStream`, `POST
//! /2021-11-15/functions/NAME/response-streaming-invocations`: the answer
//! as an AWS event stream (`application/vnd.amazon.eventstream`) of
//! `PayloadChunk` events, one per chunk the function streamed as it
//! arrives, then one `InvokeComplete` (with `ErrorCode` and `ErrorDetails`
//! if the function failed, `LogResult` for `X-Amz-Log-Type: Tail`). A
//! function that does not stream answers with its whole result in one
//! `PayloadChunk`.
//!
//! An event-stream message: total length (`u32`), headers length (`u32`),
//! the CRC-32 of those 8 bytes, the headers (name length `u8`, name, type
//! 7 = string, value length `u16`, value), the payload, the CRC-32 of all
//! before it.

use axum::body::Body;
use axum::http::HeaderValue;
use axum::response::Response;
use bytes::{BufMut, Bytes};
use lampyr_api::FunctionError;
use lampyr_scheduler::{Invocation, Outcome};

use super::{log_tail, AppState};

/// One event-stream message of `:message-type` `event`.
fn event(kind: &str, content_type: &str, payload: &[u8]) -> Bytes {
    let mut headers = Vec::new();
    for (name, value) in [
        (":event-type", kind),
        (":content-type", content_type),
        (":message-type", "event"),
    ] {
        headers.put_u8(name.len() as u8);
        headers.extend_from_slice(name.as_bytes());
        headers.put_u8(7);
        headers.put_u16(value.len() as u16);
        headers.extend_from_slice(value.as_bytes());
    }
    let total = 12 + headers.len() + payload.len() + 4;
    let mut m = Vec::with_capacity(total);
    m.put_u32(total as u32);
    m.put_u32(headers.len() as u32);
    m.put_u32(crc32fast::hash(&m));
    m.extend_from_slice(&headers);
    m.extend_from_slice(payload);
    m.put_u32(crc32fast::hash(&m));
    Bytes::from(m)
}

fn payload_chunk(data: &[u8]) -> Bytes {
    event("PayloadChunk", "application/octet-stream", data)
}

/// `InvokeComplete`, with how the function failed if it did.
fn complete(error: Option<(String, String)>, log: Option<String>) -> Bytes {
    let mut body = serde_json::Map::new();
    if let Some((code, details)) = error {
        body.insert("ErrorCode".into(), code.into());
        body.insert("ErrorDetails".into(), details.into());
    }
    if let Some(log) = log {
        body.insert("LogResult".into(), log.into());
    }
    event(
        "InvokeComplete",
        "application/json",
        serde_json::Value::Object(body).to_string().as_bytes(),
    )
}

/// The failure an outcome is, as `InvokeComplete` names it.
fn failure(inv: &Invocation) -> Option<(String, String)> {
    match &inv.outcome {
        Outcome::Ok(_) => None,
        other => {
            let body = super::outcome_body(inv, other).0;
            let e = FunctionError::parse(&body, "Error");
            Some((e.error_type, body_text(&body)))
        }
    }
}

fn body_text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The event-stream response for an invocation that ran.
pub(super) fn respond(app: &AppState, mut inv: Invocation, tail: bool) -> Response {
    let app = app.clone();
    let version = inv.version;
    let content_type = inv.streamed().unwrap_or("application/json").to_string();
    inv.delivered(lampyr_scheduler::Delivery {
        http_status: Some(200),
        response_bytes: 0,
    });
    let events = futures_util::stream::unfold(Some(inv), move |inv| {
        let app = app.clone();
        async move {
            let mut inv = inv?;
            if inv.streaming() {
                if let Some(c) = inv.next_chunk().await {
                    return Some((Ok::<_, std::io::Error>(payload_chunk(&c)), Some(inv)));
                }
            } else if let Outcome::Ok(result) = &inv.outcome {
                // A whole result: one chunk, then the end.
                let chunk = (!result.is_empty()).then(|| payload_chunk(result));
                inv.outcome = Outcome::Ok(Bytes::new());
                if let Some(chunk) = chunk {
                    return Some((Ok(chunk), Some(inv)));
                }
            }
            let log = if tail {
                Some(log_tail(&app, &inv).await)
            } else {
                None
            };
            Some((Ok(complete(failure(&inv), log)), None))
        }
    });
    let mut resp = Response::new(Body::from_stream(events));
    let h = resp.headers_mut();
    h.insert(
        "content-type",
        HeaderValue::from_static("application/vnd.amazon.eventstream"),
    );
    if let Ok(v) = HeaderValue::from_str(&content_type) {
        h.insert("x-amzn-remapped-content-type", v);
    }
    h.insert("x-amz-executed-version", HeaderValue::from(version));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_framed_as_aws_event_streams() {
        let m = payload_chunk(b"hi");
        let total = u32::from_be_bytes(m[0..4].try_into().unwrap()) as usize;
        let headers = u32::from_be_bytes(m[4..8].try_into().unwrap()) as usize;
        assert_eq!(total, m.len());
        assert_eq!(
            u32::from_be_bytes(m[8..12].try_into().unwrap()),
            crc32fast::hash(&m[..8])
        );
        assert_eq!(
            u32::from_be_bytes(m[total - 4..].try_into().unwrap()),
            crc32fast::hash(&m[..total - 4])
        );
        let h = &m[12..12 + headers];
        assert_eq!(h[0] as usize, ":event-type".len());
        assert_eq!(&h[1..12], b":event-type");
        assert_eq!(h[12], 7);
        assert_eq!(&h[13..15], &12u16.to_be_bytes());
        assert_eq!(&h[15..27], b"PayloadChunk");
        assert_eq!(&m[12 + headers..total - 4], b"hi");
        let c = complete(Some(("TypeError".into(), "x".into())), None);
        let headers = u32::from_be_bytes(c[4..8].try_into().unwrap()) as usize;
        let body: serde_json::Value =
            serde_json::from_slice(&c[12 + headers..c.len() - 4]).unwrap();
        assert_eq!(body["ErrorCode"], "TypeError");
        assert_eq!(body["ErrorDetails"], "x");
    }
}
