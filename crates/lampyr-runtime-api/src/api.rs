//! The Runtime API's endpoints (`/2018-06-01/runtime/…`), as Lambda
//! serves them to a custom runtime:
//!
//! | endpoint | answer |
//! | --- | --- |
//! | `GET invocation/next` | 200, the event, `Lambda-Runtime-*` headers; blocks until there is one |
//! | `POST invocation/ID/response` | 202; the body is the result (RESULT), or a stream (`Lambda-Runtime-Function-Response-Mode: streaming`) |
//! | `POST invocation/ID/error` | 202; the function's error (ERROR) |
//! | `POST init/error` | 202; the function failed to initialise (LOAD_ERROR) |
//!
//! An id that was never handed out is 400 `InvalidRequestID`; a second
//! answer for one invocation, or an init error after init, 403
//! `InvalidStateTransition`; other paths 404, other methods 405; all with
//! the Runtime API's `{"errorMessage", "errorType"}` bodies.

use std::convert::Infallible;
use std::sync::Arc;

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use lampyr_runtime::protocol;
use serde_json::Value;
use tokio::net::TcpListener;

use crate::host::{Invocation, Refused, State};

const PREFIX: &str = "/2018-06-01/runtime/";
/// The error type header of `…/error` and of a stream's trailers.
pub const ERROR_TYPE: &str = "lambda-runtime-function-error-type";
/// A streamed response's error, base64 JSON, in its trailers.
pub const ERROR_BODY: &str = "lambda-runtime-function-error-body";
const RESPONSE_MODE: &str = "lambda-runtime-function-response-mode";
/// The most a buffered response may hold: what one RESULT frame carries.
const MAX_RESPONSE: usize = protocol::MAX_FRAME - 16;

type Reply = Response<Full<Bytes>>;

/// Accepts Runtime API connections for as long as the instance lives.
pub async fn serve(listener: TcpListener, state: Arc<State>) {
    loop {
        let Ok((conn, _)) = listener.accept().await else {
            continue;
        };
        let _ = conn.set_nodelay(true);
        let state = state.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(route(&state, req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .serve_connection(hyper_util::rt::TokioIo::new(conn), service)
                .await;
        });
    }
}

/// Lambda's error object, as the built-in runtimes send it.
pub fn error_object(error_type: &str, message: &str) -> Value {
    serde_json::json!({"errorType": error_type, "errorMessage": message, "stackTrace": []})
}

fn json(status: StatusCode, body: Value) -> Reply {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn api_error(status: StatusCode, error_type: &str, message: &str) -> Reply {
    json(
        status,
        serde_json::json!({"errorMessage": message, "errorType": error_type}),
    )
}

fn accepted() -> Reply {
    json(StatusCode::ACCEPTED, serde_json::json!({"status": "OK"}))
}

fn refused(r: Refused, request_id: &str) -> Reply {
    match r {
        Refused::Unknown => api_error(
            StatusCode::BAD_REQUEST,
            "InvalidRequestID",
            &format!("Invalid request ID: no invocation {request_id} is waiting for an answer (ask `invocation/next` for one)"),
        ),
        Refused::Answered => api_error(
            StatusCode::FORBIDDEN,
            "InvalidStateTransition",
            &format!("State transition from ResponseSent to ResponseSent failed for runtime: invocation {request_id} was answered already"),
        ),
    }
}

async fn route(state: &State, req: Request<Incoming>) -> Reply {
    let path = req.uri().path().to_string();
    let Some(rest) = path.strip_prefix(PREFIX) else {
        return not_found(req.method(), &path);
    };
    let parts: Vec<&str> = rest.split('/').collect();
    let (endpoint, method) = match parts.as_slice() {
        ["invocation", "next"] => (Endpoint::Next, Method::GET),
        ["invocation", id, "response"] if !id.is_empty() => {
            (Endpoint::Response(id.to_string()), Method::POST)
        }
        ["invocation", id, "error"] if !id.is_empty() => {
            (Endpoint::Error(id.to_string()), Method::POST)
        }
        ["init", "error"] => (Endpoint::InitError, Method::POST),
        _ => return not_found(req.method(), &path),
    };
    if req.method() != method {
        let mut r = api_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            &format!("{} {path}: use {method}", req.method()),
        );
        if let Ok(v) = HeaderValue::from_str(method.as_str()) {
            r.headers_mut().insert(hyper::header::ALLOW, v);
        }
        return r;
    }
    match endpoint {
        Endpoint::Next => next(state).await,
        Endpoint::Response(id) => response(state, &id, req).await,
        Endpoint::Error(id) => invocation_error(state, &id, req).await,
        Endpoint::InitError => init_error(state, req).await,
    }
}

enum Endpoint {
    Next,
    Response(String),
    Error(String),
    InitError,
}

fn not_found(method: &Method, path: &str) -> Reply {
    api_error(
        StatusCode::NOT_FOUND,
        "NotFound",
        &format!("{method} {path}: no such Runtime API endpoint (they are under {PREFIX}: invocation/next, invocation/ID/response, invocation/ID/error, init/error)"),
    )
}

/// The answer to `next`: the event and its headers.
pub fn invocation_response(inv: &Invocation, function_arn: &str) -> Reply {
    let mut r = Response::new(Full::new(inv.event.clone()));
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    let mut put = |name: &'static str, value: &str| {
        if let Ok(v) = HeaderValue::from_str(value) {
            h.insert(name, v);
        }
    };
    put("lambda-runtime-aws-request-id", &inv.request_id);
    put("lambda-runtime-deadline-ms", &inv.deadline_ms.to_string());
    put("lambda-runtime-invoked-function-arn", function_arn);
    if let Some(t) = &inv.extras.trace_id {
        put("lambda-runtime-trace-id", t);
    }
    if let Some(c) = &inv.extras.client_context {
        put("lambda-runtime-client-context", &c.to_string());
    }
    if let Some(i) = &inv.extras.identity {
        put("lambda-runtime-cognito-identity", &i.to_string());
    }
    r
}

async fn next(state: &State) -> Reply {
    let inv = state.next().await;
    invocation_response(&inv, &state.function_arn())
}

async fn response(state: &State, request_id: &str, req: Request<Incoming>) -> Reply {
    if let Err(r) = state.check(request_id) {
        return refused(r, request_id);
    }
    let streaming = req
        .headers()
        .get(RESPONSE_MODE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"streaming"));
    if streaming {
        return stream(state, request_id, req).await;
    }
    let (id, body) = match answer_with_body(state, request_id, req.into_body()).await {
        Ok(a) => a,
        Err(r) => return r,
    };
    // A response with no body is a handler that returned nothing.
    let result: &[u8] = if body.is_empty() { b"null" } else { &body };
    state.send(protocol::encode_reply(protocol::RESULT, id, result));
    accepted()
}

/// Reads an answer's body, then takes the invocation to answer it (a
/// second answer that raced this one loses here).
async fn answer_with_body(
    state: &State,
    request_id: &str,
    body: Incoming,
) -> Result<(u32, Bytes), Reply> {
    let body = read_body(body).await?;
    let id = state
        .answer(request_id)
        .map_err(|r| refused(r, request_id))?;
    Ok((id, body))
}

async fn read_body(body: Incoming) -> Result<Bytes, Reply> {
    let limited = http_body_util::Limited::new(body, MAX_RESPONSE);
    match limited.collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(api_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "RequestEntityTooLarge",
            &format!("Exceeded maximum allowed payload size ({MAX_RESPONSE} bytes)."),
        )),
        Err(e) => Err(api_error(
            StatusCode::BAD_REQUEST,
            "InvalidRequest",
            &format!("the request body could not be read: {e}"),
        )),
    }
}

/// The error a runtime client posts, as the built-in runtimes report
/// one: `errorType` (the body's, else the header's), `errorMessage`,
/// `stackTrace` (Node's client calls it `trace`).
pub fn function_error(body: &[u8], header_type: Option<&str>, default_type: &str) -> Value {
    let parsed: Option<serde_json::Map<String, Value>> = serde_json::from_slice(body).ok();
    let text = |v: Option<&Value>| match v {
        Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
        _ => None,
    };
    let header_type = header_type.filter(|t| !t.is_empty()).map(str::to_string);
    match parsed {
        Some(obj) => {
            let error_type = text(obj.get("errorType"))
                .or(header_type)
                .unwrap_or_else(|| default_type.into());
            let message = match obj.get("errorMessage") {
                Some(Value::String(s)) => s.clone(),
                Some(v) if !v.is_null() => v.to_string(),
                _ => String::new(),
            };
            let stack = match obj.get("stackTrace").or_else(|| obj.get("trace")) {
                Some(Value::Array(a)) => Value::Array(a.clone()),
                Some(Value::String(s)) => Value::Array(vec![Value::String(s.clone())]),
                _ => Value::Array(Vec::new()),
            };
            serde_json::json!({"errorType": error_type, "errorMessage": message, "stackTrace": stack})
        }
        None => error_object(
            &header_type.unwrap_or_else(|| default_type.into()),
            String::from_utf8_lossy(body).trim(),
        ),
    }
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

async fn invocation_error(state: &State, request_id: &str, req: Request<Incoming>) -> Reply {
    if let Err(r) = state.check(request_id) {
        return refused(r, request_id);
    }
    let error_type = header(req.headers(), ERROR_TYPE).map(str::to_string);
    let (id, body) = match answer_with_body(state, request_id, req.into_body()).await {
        Ok(a) => a,
        Err(r) => return r,
    };
    let err = function_error(&body, error_type.as_deref(), "Runtime.Unknown");
    state.send(protocol::encode_reply(
        protocol::ERROR,
        id,
        err.to_string().as_bytes(),
    ));
    accepted()
}

async fn init_error(state: &State, req: Request<Incoming>) -> Reply {
    let error_type = header(req.headers(), ERROR_TYPE).map(str::to_string);
    let body = match read_body(req.into_body()).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let err = function_error(&body, error_type.as_deref(), "Runtime.InitError");
    if state.load_failed(&err) {
        // lampyr stops the instance once it has the LOAD_ERROR.
        state.flushed().await;
        accepted()
    } else {
        api_error(
            StatusCode::FORBIDDEN,
            "InvalidStateTransition",
            "State transition from Ready to InitError failed for runtime: init ended when the bootstrap first asked for `invocation/next`",
        )
    }
}

/// A streamed response: STREAM_START, a STREAM_CHUNK per piece of body as
/// it arrives (at most 1 MiB each), STREAM_END with the trailers' error if
/// there is one.
async fn stream(state: &State, request_id: &str, req: Request<Incoming>) -> Reply {
    let id = match state.answer(request_id) {
        Ok(id) => id,
        Err(r) => return refused(r, request_id),
    };
    let content_type = header(req.headers(), CONTENT_TYPE.as_str())
        .unwrap_or("")
        .to_string();
    state.send(protocol::encode_reply(
        protocol::STREAM_START,
        id,
        content_type.as_bytes(),
    ));
    let mut body = req.into_body();
    let mut failure: Option<Value> = None;
    loop {
        match body.frame().await {
            None => break,
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => send_chunks(state, id, &data),
                Err(frame) => {
                    if let Some(t) = frame.trailers_ref() {
                        failure = trailer_error(t);
                    }
                }
            },
            Some(Err(e)) => {
                failure = Some(error_object(
                    "Runtime.StreamError",
                    &format!("the response stream broke off: {e}"),
                ));
                break;
            }
        }
    }
    let end = failure.map(|e| e.to_string()).unwrap_or_default();
    state.send(protocol::encode_reply(
        protocol::STREAM_END,
        id,
        end.as_bytes(),
    ));
    accepted()
}

/// STREAM_CHUNK frames for `data`: empty chunks are not sent, big ones split.
pub fn send_chunks(state: &State, id: u32, data: &[u8]) {
    for piece in data.chunks(protocol::MAX_STREAM_CHUNK) {
        state.send(protocol::encode_reply(protocol::STREAM_CHUNK, id, piece));
    }
}

/// The error a stream's trailers report, if they report one.
pub fn trailer_error(t: &HeaderMap) -> Option<Value> {
    let error_type = header(t, ERROR_TYPE);
    let body = header(t, ERROR_BODY);
    if error_type.is_none() && body.is_none() {
        return None;
    }
    let decoded = body
        .map(|b| {
            base64::engine::general_purpose::STANDARD
                .decode(b.trim())
                .unwrap_or_else(|_| b.as_bytes().to_vec())
        })
        .unwrap_or_default();
    Some(function_error(&decoded, error_type, "Runtime.StreamError"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::Out;
    use bytes::BytesMut;
    use lampyr_runtime::protocol::{decode, split_reply, Frame};
    use tokio::sync::mpsc;

    #[test]
    fn posted_errors_take_the_built_in_runtimes_shape() {
        // awslambdaric: stackTrace, and a requestId that is not kept.
        let e = function_error(
            br#"{"errorMessage":"boom","errorType":"ValueError","requestId":"r","stackTrace":["  File x"]}"#,
            Some("ValueError"),
            "Runtime.Unknown",
        );
        assert_eq!(
            e,
            serde_json::json!({"errorType":"ValueError","errorMessage":"boom","stackTrace":["  File x"]})
        );
        // aws-lambda-ric (Node): `trace`.
        let e = function_error(
            br#"{"errorType":"Error","errorMessage":"bad","trace":["Error: bad","    at x"]}"#,
            None,
            "Runtime.Unknown",
        );
        assert_eq!(e["stackTrace"][1], "    at x");
        // lambda_runtime (Rust): no stack; the header names the type when the body does not.
        let e = function_error(br#"{"errorMessage":"m"}"#, Some("&str"), "Runtime.Unknown");
        assert_eq!(
            (e["errorType"].as_str(), e["errorMessage"].as_str()),
            (Some("&str"), Some("m"))
        );
        // A shell script's plain text.
        let e = function_error(b"it broke\n", None, "Runtime.Unknown");
        assert_eq!(
            e,
            serde_json::json!({"errorType":"Runtime.Unknown","errorMessage":"it broke","stackTrace":[]})
        );
    }

    #[test]
    fn next_carries_the_invocations_headers_and_extras_only_when_present() {
        let mut f = lampyr_runtime::protocol::encode_invoke(
            1,
            1_700_000_000_123,
            "rid-1",
            Some(br#"{"client_context":{"custom":{"a":1}},"identity":{"cognitoIdentityId":"i"},"trace_id":"Root=1-5-6"}"#),
            br#"{"x":1}"#,
        );
        let frame = decode(&mut BytesMut::from(&f[..])).unwrap().unwrap();
        let inv = Invocation::from_frame(protocol::decode_invoke(frame.payload).unwrap());
        let r = invocation_response(&inv, "arn:aws:lambda:local:000000000000:function:f");
        let h = r.headers();
        assert_eq!(h["lambda-runtime-aws-request-id"], "rid-1");
        assert_eq!(h["lambda-runtime-deadline-ms"], "1700000000123");
        assert_eq!(
            h["lambda-runtime-invoked-function-arn"],
            "arn:aws:lambda:local:000000000000:function:f"
        );
        assert_eq!(h["lambda-runtime-trace-id"], "Root=1-5-6");
        assert_eq!(h["lambda-runtime-client-context"], r#"{"custom":{"a":1}}"#);
        assert_eq!(
            h["lambda-runtime-cognito-identity"],
            r#"{"cognitoIdentityId":"i"}"#
        );
        f = lampyr_runtime::protocol::encode_invoke(1, 2, "rid-2", None, b"{}");
        let frame = decode(&mut BytesMut::from(&f[..])).unwrap().unwrap();
        let inv = Invocation::from_frame(protocol::decode_invoke(frame.payload).unwrap());
        let r = invocation_response(&inv, "arn");
        assert!(r.headers().get("lambda-runtime-trace-id").is_none());
        assert!(r.headers().get("lambda-runtime-client-context").is_none());
        assert!(r.headers().get("lambda-runtime-cognito-identity").is_none());
    }

    fn drained(rx: &mut mpsc::UnboundedReceiver<Out>) -> Vec<Frame> {
        let mut buf = BytesMut::new();
        while let Ok(Out::Frame(f)) = rx.try_recv() {
            buf.extend_from_slice(&f);
        }
        std::iter::from_fn(|| decode(&mut buf).unwrap()).collect()
    }

    #[test]
    fn stream_chunks_are_at_most_a_mebibyte_and_never_empty() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let state = State::new(tx);
        send_chunks(&state, 7, b"");
        assert!(drained(&mut rx).is_empty());
        let big = vec![b'x'; protocol::MAX_STREAM_CHUNK * 2 + 3];
        send_chunks(&state, 7, &big);
        let frames = drained(&mut rx);
        let sizes: Vec<usize> = frames
            .into_iter()
            .map(|f| {
                assert_eq!(f.kind, protocol::STREAM_CHUNK);
                let (id, body) = split_reply(f.payload).unwrap();
                assert_eq!(id, 7);
                body.len()
            })
            .collect();
        assert_eq!(
            sizes,
            vec![protocol::MAX_STREAM_CHUNK, protocol::MAX_STREAM_CHUNK, 3]
        );
    }

    #[test]
    fn a_streams_trailers_become_its_error() {
        let mut t = HeaderMap::new();
        assert_eq!(trailer_error(&t), None);
        t.insert(ERROR_TYPE, HeaderValue::from_static("Runtime.StreamError"));
        let body = base64::engine::general_purpose::STANDARD
            .encode(br#"{"errorType":"Error","errorMessage":"half way"}"#);
        t.insert(ERROR_BODY, HeaderValue::from_str(&body).unwrap());
        assert_eq!(
            trailer_error(&t),
            Some(
                serde_json::json!({"errorType":"Error","errorMessage":"half way","stackTrace":[]})
            )
        );
        let mut t = HeaderMap::new();
        t.insert(ERROR_TYPE, HeaderValue::from_static("Runtime.StreamError"));
        assert_eq!(
            trailer_error(&t).unwrap()["errorType"],
            "Runtime.StreamError"
        );
    }

    /// A Runtime API on a free loopback port, its state, and what it sends
    /// to lampyr.
    async fn served() -> (
        std::net::SocketAddr,
        Arc<State>,
        mpsc::UnboundedReceiver<Out>,
    ) {
        let (tx, rx) = mpsc::unbounded_channel();
        let state = Arc::new(State::new(tx));
        let load = r#"{"handler":"f.h","task_root":"/t","function_name":"fn"}"#;
        state.loading(&serde_json::from_str(load).unwrap());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(listener, state.clone()));
        (addr, state, rx)
    }

    /// Sends one raw HTTP/1.1 request and reads the whole answer.
    async fn raw(addr: std::net::SocketAddr, request: &[u8]) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(request).await.unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.unwrap();
        String::from_utf8_lossy(&out).into_owned()
    }

    fn post(path: &str, headers: &str, body: &str) -> Vec<u8> {
        format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{headers}Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }

    #[tokio::test]
    async fn the_runtime_api_over_http_answers_as_lambdas_does() {
        let (addr, state, mut rx) = served().await;
        let invoke =
            lampyr_runtime::protocol::encode_invoke(11, 5_000, "req-1", None, br#"{"k":1}"#);
        let frame = decode(&mut BytesMut::from(&invoke[..])).unwrap().unwrap();
        state.push(Invocation::from_frame(
            protocol::decode_invoke(frame.payload).unwrap(),
        ));
        let next = raw(
            addr,
            b"GET /2018-06-01/runtime/invocation/next HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(next.starts_with("HTTP/1.1 200"), "{next}");
        assert!(
            next.contains("lambda-runtime-aws-request-id: req-1"),
            "{next}"
        );
        assert!(next.ends_with(r#"{"k":1}"#), "{next}");
        let sent = drained(&mut rx);
        assert_eq!(sent[0].kind, protocol::LOADED);

        // Wrong method, unknown path, unknown id.
        let r = raw(
            addr,
            b"GET /2018-06-01/runtime/init/error HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(
            r.starts_with("HTTP/1.1 405") && r.contains("allow: POST"),
            "{r}"
        );
        assert!(r.contains(r#""errorType":"MethodNotAllowed""#), "{r}");
        let r = raw(addr, &post("/2018-06-01/runtime/nope", "", "")).await;
        assert!(
            r.starts_with("HTTP/1.1 404") && r.contains(r#""errorType":"NotFound""#),
            "{r}"
        );
        let r = raw(
            addr,
            &post("/2018-06-01/runtime/invocation/other/response", "", "1"),
        )
        .await;
        assert!(
            r.starts_with("HTTP/1.1 400") && r.contains(r#""errorType":"InvalidRequestID""#),
            "{r}"
        );

        // One response, then a second one is refused.
        let r = raw(
            addr,
            &post(
                "/2018-06-01/runtime/invocation/req-1/response",
                "",
                r#"{"ok":true}"#,
            ),
        )
        .await;
        assert!(r.starts_with("HTTP/1.1 202"), "{r}");
        let r = raw(
            addr,
            &post("/2018-06-01/runtime/invocation/req-1/error", "", "{}"),
        )
        .await;
        assert!(
            r.starts_with("HTTP/1.1 403") && r.contains("InvalidStateTransition"),
            "{r}"
        );
        let sent = drained(&mut rx);
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].kind, protocol::RESULT);
        assert_eq!(
            split_reply(sent[0].payload.clone()).unwrap(),
            (11, Bytes::from_static(br#"{"ok":true}"#))
        );
        // Init is over: a late init error is refused.
        let r = raw(addr, &post("/2018-06-01/runtime/init/error", "", "{}")).await;
        assert!(r.starts_with("HTTP/1.1 403"), "{r}");
    }

    #[tokio::test]
    async fn a_streamed_response_becomes_stream_frames_as_its_chunks_arrive() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (addr, state, mut rx) = served().await;
        for (id, rid) in [(21, "s-ok"), (22, "s-bad")] {
            let f = lampyr_runtime::protocol::encode_invoke(id, 5_000, rid, None, b"{}");
            let frame = decode(&mut BytesMut::from(&f[..])).unwrap().unwrap();
            state.push(Invocation::from_frame(
                protocol::decode_invoke(frame.payload).unwrap(),
            ));
            state.next().await;
        }
        drained(&mut rx);
        let ct = "application/vnd.awslambda.http-integration-response";
        let head = format!(
            "POST /2018-06-01/runtime/invocation/s-ok/response HTTP/1.1\r\nHost: x\r\nConnection: close\r\nLambda-Runtime-Function-Response-Mode: streaming\r\nContent-Type: {ct}\r\nTransfer-Encoding: chunked\r\nTrailer: Lambda-Runtime-Function-Error-Type, Lambda-Runtime-Function-Error-Body\r\n\r\n"
        );
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let prelude = "{\"statusCode\":201,\"headers\":{\"x-a\":\"b\"}}\0\0\0\0\0\0\0\0";
        s.write_all(head.as_bytes()).await.unwrap();
        s.write_all(format!("{:x}\r\n{prelude}\r\n", prelude.len()).as_bytes())
            .await
            .unwrap();
        // The first chunk reaches lampyr before the stream ends.
        let mut got = Vec::new();
        while got.len() < 2 {
            match rx.recv().await.unwrap() {
                Out::Frame(f) => {
                    let mut b = BytesMut::from(&f[..]);
                    got.push(decode(&mut b).unwrap().unwrap());
                }
                Out::Flush(done) => {
                    let _ = done.send(());
                }
            }
        }
        assert_eq!(got[0].kind, protocol::STREAM_START);
        assert_eq!(
            split_reply(got[0].payload.clone()).unwrap(),
            (21, Bytes::from(ct))
        );
        assert_eq!(got[1].kind, protocol::STREAM_CHUNK);
        assert_eq!(
            split_reply(got[1].payload.clone()).unwrap(),
            (21, Bytes::from(prelude))
        );
        s.write_all(b"5\r\nhello\r\n0\r\n\r\n").await.unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 202"), "{answer}");
        let rest = drained(&mut rx);
        assert_eq!(rest.len(), 2);
        assert_eq!(
            split_reply(rest[0].payload.clone()).unwrap(),
            (21, Bytes::from("hello"))
        );
        assert_eq!(rest[1].kind, protocol::STREAM_END);
        assert_eq!(
            split_reply(rest[1].payload.clone()).unwrap(),
            (21, Bytes::new())
        );

        // An error in the trailers ends the stream with it.
        let body = base64::engine::general_purpose::STANDARD
            .encode(r#"{"errorType":"Error","errorMessage":"half way"}"#);
        let req = format!(
            "POST /2018-06-01/runtime/invocation/s-bad/response HTTP/1.1\r\nHost: x\r\nConnection: close\r\nLambda-Runtime-Function-Response-Mode: streaming\r\nTransfer-Encoding: chunked\r\nTrailer: Lambda-Runtime-Function-Error-Type, Lambda-Runtime-Function-Error-Body\r\n\r\n3\r\nabc\r\n0\r\nLambda-Runtime-Function-Error-Type: Runtime.StreamError\r\nLambda-Runtime-Function-Error-Body: {body}\r\n\r\n"
        );
        let answer = raw(addr, req.as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 202"), "{answer}");
        let frames = drained(&mut rx);
        let kinds: Vec<u8> = frames.iter().map(|f| f.kind).collect();
        assert_eq!(
            kinds,
            [
                protocol::STREAM_START,
                protocol::STREAM_CHUNK,
                protocol::STREAM_END
            ]
        );
        let (id, end) = split_reply(frames[2].payload.clone()).unwrap();
        assert_eq!(id, 22);
        let end: Value = serde_json::from_slice(&end).unwrap();
        assert_eq!(
            end,
            serde_json::json!({"errorType":"Error","errorMessage":"half way","stackTrace":[]})
        );
    }
}
