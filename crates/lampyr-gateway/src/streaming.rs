//! Streamed replies over HTTP: a function that answers with a stream has
//! its body written to the client as the chunks arrive (chunked transfer
//! encoding; nothing buffers the whole body on the way).
//!
//! * The response's head waits for the first chunk (or the end), so a
//!   function that fails before it streams a byte gets the ordinary error
//!   response. After that the head is out: a failure (an error thrown
//!   mid-stream, a timeout, a crash, out of memory) cuts the body (the
//!   connection ends without the last chunk) and the invocation's record
//!   says how it ended.
//! * Lambda's HTTP-integration streams (content type
//!   `application/vnd.awslambda.http-integration-response`) start with a
//!   JSON prelude, `{"statusCode", "headers", "cookies"}`, and 8 NUL bytes:
//!   on the HTTP trigger it becomes the status, the headers and
//!   `Set-Cookie`. Any other content type is the body's, with status 200.
//! * `Server-Timing` goes out with the head: its `exec` runs until the
//!   stream started. The record's duration runs to its end.

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use lampyr_scheduler::{Delivery, Invocation, Outcome};

use crate::error::ApiError;
use crate::trigger;

/// The content type of Lambda's HTTP-integration response streaming.
pub(crate) const HTTP_INTEGRATION_TYPE: &str =
    "application/vnd.awslambda.http-integration-response";

/// What ends an HTTP-integration stream's prelude.
const PRELUDE_END: [u8; 8] = [0; 8];

/// The longest prelude read before it is refused.
const MAX_PRELUDE: usize = 64 * 1024;

/// How a streamed reply becomes a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StreamAs {
    /// The HTTP trigger: an HTTP-integration prelude is the response's
    /// status and headers.
    Http,
    /// The bytes as the function streamed them, with its content type.
    Raw,
}

/// The response for an invocation whose reply is a stream still to be
/// read; `failed` answers one that failed before its first byte.
pub(crate) async fn respond(
    mut inv: Invocation,
    how: StreamAs,
    failed: impl FnOnce(&Invocation) -> Response,
) -> Response {
    let content_type = inv.streamed().unwrap_or_default().to_string();
    let prelude = how == StreamAs::Http && content_type == HTTP_INTEGRATION_TYPE;
    let mut first = BytesMut::new();
    // The head waits for the first bytes (the whole prelude, if there is one).
    let head = loop {
        match inv.next_chunk().await {
            Some(c) => first.extend_from_slice(&c),
            None if matches!(inv.outcome, Outcome::Ok(_)) && !prelude => break None,
            None if matches!(inv.outcome, Outcome::Ok(_)) => {
                break Some(Err(trigger::bad_result(
                    &inv.function,
                    "its streamed response ended before the end of its prelude (8 NUL bytes after the JSON {\"statusCode\", \"headers\", \"cookies\"})".into(),
                )))
            }
            // Failed before a byte went out: the ordinary error response.
            None => {
                let resp = failed(&inv);
                inv.delivered(Delivery {
                    http_status: Some(resp.status().as_u16()),
                    response_bytes: 0,
                });
                return resp;
            }
        }
        if !prelude {
            if !first.is_empty() {
                break None;
            }
            continue;
        }
        if let Some(at) = find(&first, &PRELUDE_END) {
            let rest = first.split_off(at + PRELUDE_END.len());
            let head = prelude_head(&inv.function, &first[..at]);
            first = rest;
            break Some(head);
        }
        if first.len() > MAX_PRELUDE {
            break Some(Err(trigger::bad_result(
                &inv.function,
                format!("its streamed response's prelude is longer than {MAX_PRELUDE} bytes (is the 8-NUL-byte delimiter missing?)"),
            )));
        }
    };
    let mut resp = match head {
        Some(Ok(resp)) => resp,
        Some(Err(e)) => {
            // The rest of the stream is read and discarded; the record says
            // what was answered.
            let resp = e.into_response();
            inv.delivered(Delivery {
                http_status: Some(resp.status().as_u16()),
                response_bytes: 0,
            });
            return resp;
        }
        None => {
            let mut r = Response::new(Body::empty());
            let t = HeaderValue::from_str(&content_type)
                .unwrap_or_else(|_| HeaderValue::from_static("application/octet-stream"));
            r.headers_mut().insert("content-type", t);
            r
        }
    };
    trigger::platform_headers(&mut resp, &inv);
    let status = resp.status().as_u16();
    let body = futures_util::stream::unfold(
        (Some(inv), first.freeze(), 0u64),
        move |(inv, first, sent)| async move {
            let mut inv = inv?;
            let chunk = if first.is_empty() {
                inv.next_chunk().await
            } else {
                Some(first)
            };
            match chunk {
                Some(c) => {
                    let sent = sent + c.len() as u64;
                    Some((Ok(c), (Some(inv), Bytes::new(), sent)))
                }
                None => {
                    inv.delivered(Delivery {
                        http_status: Some(status),
                        response_bytes: sent,
                    });
                    if matches!(inv.outcome, Outcome::Ok(_)) {
                        return None;
                    }
                    // The body is cut: the client sees no last chunk. The
                    // invocation's record (written as it goes) says why.
                    let e = std::io::Error::other(format!(
                        "function '{}' failed mid-stream",
                        inv.function
                    ));
                    Some((Err(e), (None, Bytes::new(), sent)))
                }
            }
        },
    );
    *resp.body_mut() = Body::from_stream(body);
    resp
}

/// The response's head from an HTTP-integration prelude.
fn prelude_head(function: &str, json: &[u8]) -> Result<Response, ApiError> {
    let mut obj = match serde_json::from_slice::<serde_json::Value>(json) {
        Ok(serde_json::Value::Object(m)) => m,
        _ => {
            return Err(trigger::bad_result(
                function,
                "its streamed response's prelude is not a JSON object {\"statusCode\", \"headers\", \"cookies\"}".into(),
            ))
        }
    };
    obj.entry("statusCode")
        .or_insert_with(|| StatusCode::OK.as_u16().into());
    trigger::proxy_head(function, &obj, "application/octet-stream")
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prelude_is_the_status_headers_and_cookies() {
        let r = prelude_head(
            "f",
            br#"{"statusCode":201,"headers":{"x-a":"1","content-type":"text/html"},"cookies":["a=1","b=2; Path=/"]}"#,
        )
        .unwrap();
        assert_eq!(r.status(), 201);
        assert_eq!(r.headers()["x-a"], "1");
        assert_eq!(r.headers()["content-type"], "text/html");
        let cookies: Vec<_> = r.headers().get_all("set-cookie").iter().collect();
        assert_eq!(cookies, ["a=1", "b=2; Path=/"]);
        // Nothing but a status: 200 and the stream's default type.
        let r = prelude_head("f", b"{}").unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["content-type"], "application/octet-stream");
        assert!(prelude_head("f", b"[1]").is_err());
        assert!(prelude_head("f", br#"{"statusCode":99}"#).is_err());
        // Framing headers stay the server's.
        let r = prelude_head("f", br#"{"headers":{"content-length":"3"}}"#).unwrap();
        assert!(r.headers().get("content-length").is_none());
    }

    #[test]
    fn the_prelude_ends_at_eight_nul_bytes() {
        let s = b"{\"statusCode\":200}\0\0\0\0\0\0\0\0body\0";
        assert_eq!(find(s, &PRELUDE_END), Some(18));
        assert_eq!(find(b"{}\0\0\0\0\0\0\0", &PRELUDE_END), None);
    }
}
