//! The HTTP trigger: `ANY /fn/NAME[/REST]`.
//!
//! It holds the caller's request, turns it into a payload-format-2.0 event,
//! asks the function service for an invocation, and writes the function's
//! result back following the proxy-result rules: `statusCode`, `headers`,
//! `cookies`, `body` and `isBase64Encoded` are honoured; any other value is
//! sent as JSON with status 200.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, Uri, Version};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use lampyr_api::{FunctionError, TriggerKind};
use lampyr_scheduler::{
    Answer, Call, Credential, Delivery, Invocation, InvocationType, Outcome, TriggerAccess,
};
use serde::Serialize;

use crate::error::ApiError;
use crate::streaming::StreamAs;
use crate::{bearer, AppState};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

// Header names lampyr sets on every response. Constants: a name given as a
// string is looked up and, when it is not a standard one, copied each time.
pub(crate) const X_LAMPYR_REQUEST_ID: HeaderName = HeaderName::from_static("x-lampyr-request-id");
pub(crate) const X_LAMPYR_INVOCATION_TYPE: HeaderName =
    HeaderName::from_static("x-lampyr-invocation-type");
pub(crate) const X_LAMPYR_IDEMPOTENCY_KEY: HeaderName =
    HeaderName::from_static("x-lampyr-idempotency-key");
const X_LAMPYR_START: HeaderName = HeaderName::from_static("x-lampyr-start");
pub(crate) const X_LAMPYR_VERSION: HeaderName = HeaderName::from_static("x-lampyr-version");
const X_LAMPYR_ALIAS: HeaderName = HeaderName::from_static("x-lampyr-alias");
pub(crate) const X_LAMPYR_ROUTING_KEY: HeaderName = HeaderName::from_static("x-lampyr-routing-key");
const X_LAMPYR_FUNCTION_ERROR: HeaderName = HeaderName::from_static("x-lampyr-function-error");
const SERVER_TIMING: HeaderName = HeaderName::from_static("server-timing");

pub(crate) async fn invoke_root(
    State(app): State<AppState>,
    Path(name): Path<String>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request<Body>,
) -> Response {
    handle(app, name, String::new(), peer, req).await
}

pub(crate) async fn invoke_rest(
    State(app): State<AppState>,
    Path((name, rest)): Path<(String, String)>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request<Body>,
) -> Response {
    handle(app, name, rest, peer, req).await
}

/// `/fn/NAME`, `/fn/NAME/` and `/fn/NAME/REST` without percent-escapes:
/// the function's name and the rest of the path, exactly what the router's
/// trigger routes would extract from it. `None` for any other path, which
/// the router then serves (and decodes).
pub(crate) fn direct_route(path: &str) -> Option<(&str, &str)> {
    let tail = path.strip_prefix("/fn/")?;
    if tail.contains('%') {
        return None;
    }
    let (name, rest) = tail.split_once('/').unwrap_or((tail, ""));
    (!name.is_empty()).then_some((name, rest))
}

pub(crate) async fn handle(
    app: AppState,
    name: String,
    rest: String,
    peer: SocketAddr,
    req: Request<Body>,
) -> Response {
    let request_id = crate::new_request_id();
    let mut resp = match run(&app, &name, &rest, peer, req, &request_id).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    };
    if !resp.headers().contains_key(X_LAMPYR_REQUEST_ID) {
        if let Ok(v) = HeaderValue::from_str(&request_id) {
            resp.headers_mut().insert(X_LAMPYR_REQUEST_ID, v);
        }
    }
    resp
}

/// How the caller asked to be answered (`x-lampyr-invocation-type`) and
/// its idempotency key (`x-lampyr-idempotency-key`).
pub(crate) fn invocation_headers(
    headers: &axum::http::HeaderMap,
) -> Result<(InvocationType, Option<String>), ApiError> {
    let kind = match headers.get(X_LAMPYR_INVOCATION_TYPE) {
        None => InvocationType::RequestResponse,
        Some(v) => v
            .to_str()
            .map_err(|_| "x-lampyr-invocation-type is not text".to_string())
            .and_then(str::parse)
            .map_err(|m| ApiError::new(StatusCode::BAD_REQUEST, "invalid_invocation_type", m))?,
    };
    let key = match headers.get(X_LAMPYR_IDEMPOTENCY_KEY) {
        None => None,
        Some(v) => {
            let k = v.to_str().ok().filter(|k| !k.is_empty() && k.len() <= 256);
            Some(k.map(str::to_string).ok_or_else(|| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_idempotency_key",
                    "x-lampyr-idempotency-key must be 1 to 256 characters of text",
                )
            })?)
        }
    };
    if key.is_some() && kind != InvocationType::Event {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_idempotency_key",
            "x-lampyr-idempotency-key applies to asynchronous calls: send it with x-lampyr-invocation-type: event",
        ));
    }
    Ok((kind, key))
}

async fn run(
    app: &AppState,
    name: &str,
    rest: &str,
    peer: SocketAddr,
    req: Request<Body>,
    request_id: &str,
) -> Result<Response, ApiError> {
    // Kept past the request, whose headers become the event.
    let given: Option<String> = bearer(req.headers()).map(str::to_string);
    let routing_key = routing_key(req.headers());
    // The server's API token opens every function.
    let credential = match given.as_deref() {
        Some(g) if crate::token_eq(g, &app.token) => Credential::Operator,
        g => Credential::Bearer(g),
    };
    // Refused before the body is read; the call checks again.
    let access = app
        .sched
        .check_access(name, TriggerKind::Http, credential, routing_key.as_deref())
        .map_err(ApiError::from)?;
    let (invocation_type, idempotency_key) = invocation_headers(req.headers())?;
    let (mut parts, body) = req.into_parts();
    if matches!(access, TriggerAccess::Token(_)) {
        // The token that opened the trigger is lampyr's business, not the
        // function's: it never reaches the event.
        parts.headers.remove(axum::http::header::AUTHORIZATION);
    }
    let limit = app.limits.max_request_body;
    let body = read_body(body, limit, app.limits.body_timeout)
        .await
        .map_err(|e| match e {
            BodyError::TooLarge => too_large(name, limit),
            BodyError::Stalled => ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
                format!(
                    "the request body for function '{name}' stopped arriving (nothing for {} s)",
                    app.limits.body_timeout.as_secs()
                ),
            ),
            BodyError::Broken => ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "the request body could not be read",
            ),
        })?;
    let event = build_event(
        name.split('@').next().unwrap_or(name),
        rest,
        &parts.method,
        &parts.uri,
        parts.version,
        &parts.headers,
        &body,
        peer,
        request_id,
    );
    let max = app.limits.max_response_body;
    let call = Call {
        function: name,
        request_id: request_id.to_string(),
        event,
        trigger: TriggerKind::Http,
        invocation_type,
        credential,
        attempt: None,
        idempotency_key: idempotency_key.as_deref(),
        routing_key: routing_key.as_deref(),
        extras: None,
    };
    Ok(call_and_answer(
        app,
        call,
        |inv| respond(inv, max).unwrap_or_else(IntoResponse::into_response),
        StreamAs::Http,
    )
    .await)
}

/// The caller's `x-lampyr-routing-key`: the same key, the same version
/// of a weighted alias.
pub(crate) fn routing_key(headers: &HeaderMap) -> Option<String> {
    headers
        .get(X_LAMPYR_ROUTING_KEY)
        .and_then(|v| v.to_str().ok())
        .filter(|k| !k.is_empty())
        .map(str::to_string)
}

/// Makes a call and answers it: `respond` maps an invocation to the
/// response, a streamed reply is streamed (`streaming.rs`, as `stream`
/// says), a refusal maps to its error. The invocation is held by the
/// response body until the response is sent: its record, and the refill of
/// a pool it took an instance from, wait until then.
pub(crate) async fn call_and_answer(
    app: &AppState,
    call: Call<'_>,
    respond: impl FnOnce(&Invocation) -> Response,
    stream: StreamAs,
) -> Response {
    use hyper::body::Body as _;
    match app.sched.call_streamed(call).await {
        Ok(Answer::Queued(q)) => accepted(&q),
        Ok(Answer::Ran(inv)) if inv.streaming() => {
            crate::streaming::respond(inv, stream, respond).await
        }
        Ok(Answer::Ran(mut inv)) => {
            let resp = respond(&inv);
            inv.delivered(Delivery {
                http_status: Some(resp.status().as_u16()),
                response_bytes: resp.body().size_hint().exact().unwrap_or(0),
            });
            resp.map(|body| Body::new(AfterSent { body, _held: inv }))
        }
        Err(mut refused) => {
            let resp = ApiError::from(refused.error()).into_response();
            refused.delivered(Some(resp.status().as_u16()));
            resp
        }
    }
}

/// `202 Accepted` for a queued event: its request id in the body and in
/// `x-lampyr-request-id`.
fn accepted(q: &lampyr_scheduler::Queued) -> Response {
    let body = serde_json::json!({
        "request_id": q.request_id,
        "status": "queued",
        "duplicate": q.duplicate,
    });
    let mut resp = (StatusCode::ACCEPTED, body.to_string()).into_response();
    let h = resp.headers_mut();
    h.insert("content-type", HeaderValue::from_static("application/json"));
    if let Ok(v) = HeaderValue::from_str(&q.request_id) {
        h.insert(X_LAMPYR_REQUEST_ID, v);
    }
    resp
}

/// A response body that holds a value until the response has been sent
/// (the server drops the body then).
struct AfterSent<T> {
    body: Body,
    _held: T,
}

impl<T: Unpin> hyper::body::Body for AfterSent<T> {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

enum BodyError {
    TooLarge,
    Stalled,
    Broken,
}

/// Reads a whole request body of at most `limit` bytes, failing when no
/// byte arrives for `idle`.
async fn read_body(body: Body, limit: usize, idle: Duration) -> Result<bytes::Bytes, BodyError> {
    use futures_util::StreamExt as _;
    let mut stream = body.into_data_stream();
    let mut first: Option<bytes::Bytes> = None;
    let mut all: Vec<u8> = Vec::new();
    loop {
        let chunk = match tokio::time::timeout(idle, stream.next()).await {
            Err(_) => return Err(BodyError::Stalled),
            Ok(None) => break,
            Ok(Some(Err(_))) => return Err(BodyError::Broken),
            Ok(Some(Ok(c))) => c,
        };
        let have = first.as_ref().map_or(0, |f| f.len()) + all.len();
        if have + chunk.len() > limit {
            return Err(BodyError::TooLarge);
        }
        // One chunk (the usual case) is kept as it is, without a copy.
        match first.take() {
            None if all.is_empty() => first = Some(chunk),
            Some(f) => {
                all.extend_from_slice(&f);
                all.extend_from_slice(&chunk);
            }
            None => all.extend_from_slice(&chunk),
        }
    }
    Ok(first.unwrap_or_else(|| bytes::Bytes::from(all)))
}

fn too_large(name: &str, limit: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        format!(
            "the request body for function '{name}' is over the limit of {} bytes ({:.1} MB)",
            limit,
            limit as f64 / 1e6
        ),
    )
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct HttpEvent<'a> {
    version: &'static str,
    route_key: &'static str,
    raw_path: RawPath<'a>,
    raw_query_string: &'a str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    cookies: Vec<&'a str>,
    headers: JoinedHeaders<'a>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    query_string_parameters: BTreeMap<String, String>,
    request_context: RequestContext<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    body: Option<std::borrow::Cow<'a, str>>,
    is_base64_encoded: bool,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct RequestContext<'a> {
    account_id: &'static str,
    api_id: &'a str,
    domain_name: &'a str,
    domain_prefix: &'a str,
    http: HttpContext<'a>,
    request_id: &'a str,
    route_key: &'static str,
    stage: &'static str,
    time: ClfTime,
    time_epoch: u64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct HttpContext<'a> {
    method: &'a str,
    path: RawPath<'a>,
    protocol: &'static str,
    #[serde(serialize_with = "serde_display")]
    source_ip: std::net::IpAddr,
    user_agent: &'a str,
}

/// Builds the payload-format-2.0 event for one request.
#[allow(clippy::too_many_arguments)]
pub(crate) fn build_event(
    function: &str,
    rest: &str,
    method: &Method,
    uri: &Uri,
    version: Version,
    headers: &HeaderMap,
    body: &[u8],
    peer: SocketAddr,
    request_id: &str,
) -> Vec<u8> {
    let cookies: Vec<&str> = headers
        .get_all("cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';').map(str::trim).filter(|c| !c.is_empty()))
        .collect();
    let query = uri.query().unwrap_or("");
    let mut params: BTreeMap<String, String> = BTreeMap::new();
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        params
            .entry(k.into_owned())
            .and_modify(|e| {
                e.push(',');
                e.push_str(&v);
            })
            .or_insert_with(|| v.into_owned());
    }
    let raw_path = RawPath(rest);
    let host = headers
        .get("host")
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    let domain_prefix = host.split(['.', ':']).next().unwrap_or(host);
    let user_agent = headers
        .get("user-agent")
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    let (body, b64) = if body.is_empty() {
        (None, false)
    } else {
        match std::str::from_utf8(body) {
            Ok(s) => (Some(std::borrow::Cow::Borrowed(s)), false),
            Err(_) => (Some(std::borrow::Cow::Owned(B64.encode(body))), true),
        }
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let event = HttpEvent {
        version: "2.0",
        route_key: "$default",
        raw_path,
        raw_query_string: query,
        cookies,
        headers: JoinedHeaders(headers),
        query_string_parameters: params,
        request_context: RequestContext {
            account_id: "anonymous",
            api_id: function,
            domain_name: host,
            domain_prefix,
            http: HttpContext {
                method: method.as_str(),
                path: raw_path,
                protocol: match version {
                    Version::HTTP_10 => "HTTP/1.0",
                    Version::HTTP_2 => "HTTP/2.0",
                    _ => "HTTP/1.1",
                },
                source_ip: peer.ip(),
                user_agent,
            },
            request_id,
            route_key: "$default",
            stage: "$default",
            time: ClfTime(now.as_secs()),
            time_epoch: now.as_millis() as u64,
        },
        body,
        is_base64_encoded: b64,
    };
    serde_json::to_vec(&event).expect("event serialises")
}

/// The request's headers as payload 2.0 wants them: lower-case names,
/// repeated values joined with commas, cookies left out (they have their own
/// field). Serialised straight from the `HeaderMap`, without copying it.
struct JoinedHeaders<'a>(&'a HeaderMap);

impl Serialize for JoinedHeaders<'_> {
    fn serialize<S: serde::Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = ser.serialize_map(None)?;
        for name in self.0.keys() {
            if name == "cookie" {
                continue;
            }
            let mut values = self.0.get_all(name).iter().filter_map(|v| v.to_str().ok());
            let Some(first) = values.next() else { continue };
            match values.next() {
                None => map.serialize_entry(name.as_str(), first)?,
                Some(second) => {
                    let mut joined = format!("{first},{second}");
                    for v in values {
                        joined.push(',');
                        joined.push_str(v);
                    }
                    map.serialize_entry(name.as_str(), &joined)?;
                }
            }
        }
        map.end()
    }
}

/// Serialises a value as a string through its `Display`, written straight
/// into the output (no intermediate `String`).
fn serde_display<T: std::fmt::Display, S: serde::Serializer>(
    v: &T,
    ser: S,
) -> Result<S::Ok, S::Error> {
    ser.collect_str(v)
}

/// The request's path: `/` and the rest of it after the function's name.
#[derive(Clone, Copy)]
struct RawPath<'a>(&'a str);

impl Serialize for RawPath<'_> {
    fn serialize<S: serde::Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        ser.collect_str(self)
    }
}

impl std::fmt::Display for RawPath<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("/")?;
        f.write_str(self.0)
    }
}

/// A time (Unix seconds) in the common log format of payload 2.0's
/// `requestContext.time`: `12/Mar/2020:19:03:58 +0000`.
struct ClfTime(u64);

impl Serialize for ClfTime {
    fn serialize<S: serde::Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        ser.collect_str(self)
    }
}

impl std::fmt::Display for ClfTime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write_clf_time(f, self.0)
    }
}

#[cfg(test)]
fn clf_time(since_epoch: Duration) -> String {
    ClfTime(since_epoch.as_secs()).to_string()
}

fn write_clf_time(out: &mut impl std::fmt::Write, secs: u64) -> std::fmt::Result {
    let (days, rem) = ((secs / 86400) as i64, secs % 86400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    write!(
        out,
        "{:02}/{}/{}:{:02}:{:02}:{:02} +0000",
        day,
        MONTHS[(month - 1) as usize],
        year,
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The `Server-Timing` header value for an invocation.
pub(crate) fn server_timing(inv: &Invocation) -> String {
    let p = &inv.phases;
    let mut s = String::with_capacity(96);
    let mut add = |name: &str, d: Duration| {
        if !s.is_empty() {
            s.push_str(", ");
        }
        // Milliseconds with three decimals, from integer microseconds
        // (float formatting is needlessly slow on every response).
        let us = d.as_micros();
        let _ = write!(s, "{name};dur={}.{:03}", us / 1000, us % 1000);
    };
    add("queue", p.queue);
    for (name, d) in [
        ("code", p.code),
        ("sandbox", p.sandbox),
        ("runtime", p.runtime),
        ("init", p.init),
    ] {
        if let Some(d) = d {
            add(name, d);
        }
    }
    add("exec", p.exec);
    s
}

pub(crate) fn platform_headers(resp: &mut Response, inv: &Invocation) {
    let h = resp.headers_mut();
    h.insert(X_LAMPYR_START, HeaderValue::from_static(inv.start.as_str()));
    // From the string's own buffer, not a copy of it.
    if let Ok(v) = HeaderValue::from_maybe_shared(bytes::Bytes::from(server_timing(inv))) {
        h.insert(SERVER_TIMING, v);
    }
    h.insert(X_LAMPYR_VERSION, HeaderValue::from(inv.version));
    if let Some(alias) = inv
        .alias
        .as_deref()
        .and_then(|a| HeaderValue::from_str(a).ok())
    {
        h.insert(X_LAMPYR_ALIAS, alias);
    }
}

/// Turns an invocation into the HTTP response.
pub(crate) fn respond(inv: &Invocation, max_body: usize) -> Result<Response, ApiError> {
    let mut resp = match &inv.outcome {
        Outcome::Ok(result) => {
            if result.len() > max_body {
                ApiError::new(
                    StatusCode::BAD_GATEWAY,
                    "response_too_large",
                    format!(
                        "function '{}' returned {} bytes, over the response limit of {} bytes",
                        inv.function,
                        result.len(),
                        max_body
                    ),
                )
                .into_response()
            } else {
                proxy_result(&inv.function, result)?
            }
        }
        Outcome::FunctionError(err) => function_error(err),
        Outcome::Timeout { timeout } => ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "timeout",
            format!(
                "function '{}' timed out after {:.2} s (its timeout); the instance was stopped",
                inv.function,
                timeout.as_secs_f64()
            ),
        )
        .into_response(),
        Outcome::OutOfMemory { limit_mb } => ApiError::new(
            StatusCode::BAD_GATEWAY,
            "out_of_memory",
            format!(
                "function '{}' exceeded its memory limit of {limit_mb} MiB; the instance was replaced (raise memory_mb in lampyr.toml if it needs more)",
                inv.function
            ),
        )
        .into_response(),
        Outcome::Crashed { reason } => ApiError::new(
            StatusCode::BAD_GATEWAY,
            "runtime_exited",
            format!(
                "function '{}' failed: {reason}; the instance was replaced (see `lampyr logs {}`)",
                inv.function, inv.function
            ),
        )
        .into_response(),
    };
    platform_headers(&mut resp, inv);
    Ok(resp)
}

/// A handler error: status 500 with Lambda's `errorType`/`errorMessage` and
/// lampyr's own `error` object side by side.
fn function_error(err: &[u8]) -> Response {
    let FunctionError {
        error_type: etype,
        error_message: emsg,
        ..
    } = FunctionError::parse(err, "Error");
    let body = serde_json::json!({
        "errorType": etype,
        "errorMessage": emsg,
        "error": { "code": "function_error", "message": format!("{etype}: {emsg}") },
    });
    let mut resp = (StatusCode::INTERNAL_SERVER_ERROR, body.to_string()).into_response();
    resp.headers_mut()
        .insert("content-type", HeaderValue::from_static("application/json"));
    resp.headers_mut().insert(
        X_LAMPYR_FUNCTION_ERROR,
        HeaderValue::from_static("Unhandled"),
    );
    resp
}

pub(crate) fn bad_result(function: &str, what: String) -> ApiError {
    ApiError::new(
        StatusCode::BAD_GATEWAY,
        "invalid_response",
        format!("function '{function}' returned an invalid HTTP response: {what}"),
    )
}

/// A string, borrowed from the JSON text when it has no escapes.
#[derive(serde::Deserialize)]
struct Text<'a>(#[serde(borrow)] std::borrow::Cow<'a, str>);

/// A JSON object of strings, in document order.
struct TextPairs<'a>(Vec<(Text<'a>, Text<'a>)>);

impl<'de: 'a, 'a> serde::Deserialize<'de> for TextPairs<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for V<'a> {
            type Value = TextPairs<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object of strings")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut m: A,
            ) -> Result<Self::Value, A::Error> {
                let mut v = Vec::with_capacity(m.size_hint().unwrap_or(2));
                while let Some(kv) = m.next_entry()? {
                    v.push(kv);
                }
                Ok(TextPairs(v))
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

/// The usual shape of a proxy result, read without building a JSON tree: a
/// numeric `statusCode`, string `headers`, a string `body`, string
/// `cookies`, no `multiValueHeaders`. A result of any other shape fails to
/// read as this and takes the general path, which gives it the same
/// meaning.
#[derive(serde::Deserialize)]
struct PlainProxyResult<'a> {
    #[serde(rename = "statusCode")]
    status_code: u16,
    #[serde(default, borrow)]
    headers: Option<TextPairs<'a>>,
    #[serde(default, borrow)]
    body: Option<Text<'a>>,
    #[serde(default, rename = "isBase64Encoded")]
    is_base64_encoded: Option<bool>,
    #[serde(default, borrow)]
    cookies: Option<Vec<Text<'a>>>,
    #[serde(default, rename = "multiValueHeaders")]
    multi_value_headers: Option<serde::de::IgnoredAny>,
}

/// The response for a result of the usual shape, or `None` to take the
/// general path (which then also reports what is wrong with it).
fn plain_proxy_result(result: &[u8]) -> Option<Response> {
    let r: PlainProxyResult<'_> = serde_json::from_slice(result).ok()?;
    if r.multi_value_headers.is_some() {
        return None;
    }
    let status = final_status(u64::from(r.status_code))?;
    let body = match r.body {
        None => Vec::new(),
        Some(Text(s)) if r.is_base64_encoded == Some(true) => B64.decode(s.as_bytes()).ok()?,
        Some(Text(s)) => s.into_owned().into_bytes(),
    };
    let mut resp = Response::new(Body::from(body));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    let mut has_type = false;
    for (Text(k), Text(v)) in r.headers.map(|p| p.0).unwrap_or_default() {
        let name = HeaderName::from_bytes(k.as_bytes()).ok()?;
        let value = HeaderValue::from_str(&v).ok()?;
        if framing(&name) {
            continue;
        }
        has_type |= name == axum::http::header::CONTENT_TYPE;
        // A repeated key: the last one counts, as on the general path.
        h.insert(name, value);
    }
    for Text(c) in r.cookies.unwrap_or_default() {
        h.append(
            axum::http::header::SET_COOKIE,
            HeaderValue::from_str(&c).ok()?,
        );
    }
    if !has_type {
        h.insert(
            axum::http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
    }
    Some(resp)
}

/// A status a response can end with: 200 to 599, checked on the number as
/// the function gave it (never narrowed first: 65736 is not 200).
/// Informational statuses (1xx) precede a response, they cannot be one.
fn final_status(code: u64) -> Option<StatusCode> {
    if (200..=599).contains(&code) {
        StatusCode::from_u16(code as u16).ok()
    } else {
        None
    }
}

/// Headers that frame the HTTP message itself. The server owns them: a
/// function that sets them is ignored there, so it can neither cut a
/// response short nor make the connection carry a response of its own.
fn framing(name: &HeaderName) -> bool {
    use axum::http::header;
    [
        header::CONTENT_LENGTH,
        header::TRANSFER_ENCODING,
        header::CONNECTION,
        header::UPGRADE,
        header::TE,
        header::TRAILER,
    ]
    .contains(name)
        || name == "keep-alive"
        || name.as_str().starts_with("proxy-")
}

/// Applies the proxy-result rules to a handler's result.
fn proxy_result(function: &str, result: &[u8]) -> Result<Response, ApiError> {
    let first = result.iter().find(|b| !b.is_ascii_whitespace()).copied();
    if first == Some(b'{') {
        if let Some(resp) = plain_proxy_result(result) {
            return Ok(resp);
        }
    }
    general_proxy_result(function, result, first)
}

/// Applies the proxy-result rules to a result of any shape.
fn general_proxy_result(
    function: &str,
    result: &[u8],
    first: Option<u8>,
) -> Result<Response, ApiError> {
    let obj = if first == Some(b'{') {
        match serde_json::from_slice::<serde_json::Value>(result) {
            Ok(serde_json::Value::Object(m)) if m.contains_key("statusCode") => Some(m),
            _ => None,
        }
    } else {
        None
    };
    let Some(obj) = obj else {
        // Not a proxy result: 200 with the value as JSON; a string as-is.
        let body = if first == Some(b'"') {
            match serde_json::from_slice::<String>(result) {
                Ok(s) => Body::from(s),
                Err(_) => Body::from(result.to_vec()),
            }
        } else {
            Body::from(result.to_vec())
        };
        let mut resp = Response::new(body);
        resp.headers_mut()
            .insert("content-type", HeaderValue::from_static("application/json"));
        return Ok(resp);
    };
    let b64 = obj
        .get("isBase64Encoded")
        .and_then(|v| v.as_bool())
        .unwrap_or(false);
    let body = match obj.get("body") {
        None | Some(serde_json::Value::Null) => Vec::new(),
        Some(serde_json::Value::String(s)) if b64 => B64
            .decode(s)
            .map_err(|e| bad_result(function, format!("body is not valid base64 ({e})")))?,
        Some(serde_json::Value::String(s)) => s.clone().into_bytes(),
        Some(other) => other.to_string().into_bytes(),
    };
    let mut resp = proxy_head(function, &obj, "application/json")?;
    *resp.body_mut() = Body::from(body);
    Ok(resp)
}

/// A response's head from a proxy result's (or a streamed reply's
/// prelude's) `statusCode`, `headers`, `multiValueHeaders` and `cookies`,
/// with an empty body; `default_type` when it names no content type.
pub(crate) fn proxy_head(
    function: &str,
    obj: &serde_json::Map<String, serde_json::Value>,
    default_type: &'static str,
) -> Result<Response, ApiError> {
    let status = obj
        .get("statusCode")
        .and_then(|v| {
            v.as_u64()
                .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
        })
        .and_then(final_status)
        .ok_or_else(|| {
            bad_result(
                function,
                format!(
                    "statusCode {} is not an HTTP status a response can end with (200 to 599)",
                    obj["statusCode"]
                ),
            )
        })?;
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    let mut has_type = false;
    if let Some(serde_json::Value::Object(headers)) = obj.get("headers") {
        for (k, v) in headers {
            let value = match v {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Null => continue,
                other => other.to_string(),
            };
            let name = HeaderName::from_bytes(k.as_bytes())
                .map_err(|_| bad_result(function, format!("header name {k:?} is invalid")))?;
            let value = HeaderValue::from_str(&value)
                .map_err(|_| bad_result(function, format!("header {k} has an invalid value")))?;
            if framing(&name) {
                continue;
            }
            has_type |= name == "content-type";
            h.append(name, value);
        }
    }
    if let Some(serde_json::Value::Object(multi)) = obj.get("multiValueHeaders") {
        for (k, vs) in multi {
            let Some(vs) = vs.as_array() else { continue };
            let Ok(name) = HeaderName::from_bytes(k.as_bytes()) else {
                continue;
            };
            if framing(&name) {
                continue;
            }
            for v in vs {
                let s = v
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| v.to_string());
                if let Ok(value) = HeaderValue::from_str(&s) {
                    has_type |= name == "content-type";
                    h.append(name.clone(), value);
                }
            }
        }
    }
    if let Some(serde_json::Value::Array(cookies)) = obj.get("cookies") {
        for c in cookies {
            let Some(c) = c.as_str() else { continue };
            let value = HeaderValue::from_str(c)
                .map_err(|_| bad_result(function, "a cookie has an invalid value".into()))?;
            h.append("set-cookie", value);
        }
    }
    if !has_type {
        h.insert("content-type", HeaderValue::from_static(default_type));
    }
    Ok(resp)
}

/// The raw-invoke answer: the handler's result as it is.
pub(crate) fn respond_raw(inv: &Invocation) -> Response {
    let mut resp = match &inv.outcome {
        Outcome::Ok(result) => {
            let mut r = Response::new(Body::from(result.clone()));
            r.headers_mut()
                .insert("content-type", HeaderValue::from_static("application/json"));
            r
        }
        Outcome::FunctionError(err) => {
            let mut r = Response::new(Body::from(err.clone()));
            r.headers_mut()
                .insert("content-type", HeaderValue::from_static("application/json"));
            r.headers_mut().insert(
                X_LAMPYR_FUNCTION_ERROR,
                HeaderValue::from_static("Unhandled"),
            );
            r
        }
        _ => match respond(inv, usize::MAX) {
            Ok(r) => return r,
            Err(e) => e.into_response(),
        },
    };
    platform_headers(&mut resp, inv);
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn direct_route_takes_what_the_trigger_routes_would() {
        assert_eq!(direct_route("/fn/hello"), Some(("hello", "")));
        assert_eq!(direct_route("/fn/hello/"), Some(("hello", "")));
        assert_eq!(direct_route("/fn/hello/a/b/"), Some(("hello", "a/b/")));
        assert_eq!(direct_route("/fn/hello//x"), Some(("hello", "/x")));
        // Left to the router: no name, escapes to decode, other paths.
        for p in [
            "/fn/",
            "/fn",
            "/fn//x",
            "/fn/a%20b",
            "/fn/a/b%2F",
            "/fnx/a",
            "/api/v1/functions",
            "/",
        ] {
            assert_eq!(direct_route(p), None, "{p}");
        }
    }

    #[test]
    fn clf_time_formats() {
        assert_eq!(
            clf_time(Duration::from_secs(1_583_348_638)),
            "04/Mar/2020:19:03:58 +0000"
        );
        assert_eq!(
            clf_time(Duration::from_secs(0)),
            "01/Jan/1970:00:00:00 +0000"
        );
    }

    #[test]
    fn event_follows_payload_2() {
        let mut headers = HeaderMap::new();
        headers.append("x-multi", HeaderValue::from_static("a"));
        headers.append("x-multi", HeaderValue::from_static("b"));
        headers.insert("cookie", HeaderValue::from_static("k1=v1; k2=v2"));
        headers.insert("host", HeaderValue::from_static("localhost:8080"));
        let uri: Uri = "/fn/f/items/42?a=1&a=2&b=x%20y".parse().unwrap();
        let ev = build_event(
            "f",
            "items/42",
            &Method::POST,
            &uri,
            Version::HTTP_11,
            &headers,
            &[0xff, 0x00],
            "127.0.0.1:5000".parse().unwrap(),
            "rid",
        );
        let v: serde_json::Value = serde_json::from_slice(&ev).unwrap();
        assert_eq!(v["version"], "2.0");
        assert_eq!(v["rawPath"], "/items/42");
        assert_eq!(v["rawQueryString"], "a=1&a=2&b=x%20y");
        assert_eq!(v["queryStringParameters"]["a"], "1,2");
        assert_eq!(v["queryStringParameters"]["b"], "x y");
        assert_eq!(v["headers"]["x-multi"], "a,b");
        assert!(v["headers"].get("cookie").is_none());
        assert_eq!(v["cookies"], serde_json::json!(["k1=v1", "k2=v2"]));
        assert_eq!(v["requestContext"]["http"]["method"], "POST");
        assert_eq!(v["requestContext"]["http"]["sourceIp"], "127.0.0.1");
        assert_eq!(v["requestContext"]["domainPrefix"], "localhost");
        assert_eq!(v["isBase64Encoded"], true);
        assert_eq!(v["body"], "/wA=");
    }

    #[test]
    fn results_map_to_responses() {
        let r = proxy_result("f", br#"{"statusCode":201,"headers":{"x-a":"1","content-type":"text/plain"},"cookies":["c=1","d=2"],"body":"hi"}"#).unwrap();
        assert_eq!(r.status(), 201);
        assert_eq!(r.headers()["content-type"], "text/plain");
        assert_eq!(r.headers().get_all("set-cookie").iter().count(), 2);
        let r = proxy_result(
            "f",
            br#"{"statusCode":200,"body":"AAEC","isBase64Encoded":true}"#,
        )
        .unwrap();
        assert_eq!(r.status(), 200);
        let r = proxy_result("f", br#"{"hello":"world"}"#).unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["content-type"], "application/json");
        assert!(proxy_result("f", br#"{"statusCode":"abc"}"#).is_err());
        assert!(proxy_result(
            "f",
            br#"{"statusCode":200,"body":"!!","isBase64Encoded":true}"#
        )
        .is_err());
    }

    /// Status, headers (sorted) and body of a response, or the error code.
    async fn outcome(r: Result<Response, ApiError>) -> String {
        let r = match r {
            Ok(r) => r,
            Err(e) => return format!("error {}", e.into_response().status()),
        };
        let mut headers: Vec<String> = r
            .headers()
            .iter()
            .map(|(k, v)| format!("{k}: {}", v.to_str().unwrap()))
            .collect();
        headers.sort();
        let status = r.status();
        let body = axum::body::to_bytes(r.into_body(), usize::MAX)
            .await
            .unwrap();
        format!("{status} {headers:?} {body:?}")
    }

    #[tokio::test]
    async fn the_server_owns_the_framing_and_statuses_are_checked_whole() {
        for c in [
            r#"{"statusCode":200,"headers":{"content-length":"2","Transfer-Encoding":"chunked","connection":"close","keep-alive":"timeout=5","upgrade":"h2c","te":"trailers","trailer":"x","proxy-authenticate":"Basic","x-kept":"1"},"body":"hello"}"#,
            r#"{"statusCode":200,"multiValueHeaders":{"content-length":["400"],"x-kept":["1"]},"body":"hello"}"#,
        ] {
            let r = proxy_result("f", c.as_bytes()).unwrap();
            let names: Vec<&str> = r.headers().keys().map(|k| k.as_str()).collect();
            assert_eq!(names, ["x-kept", "content-type"], "for {c}");
            let body = axum::body::to_bytes(r.into_body(), usize::MAX)
                .await
                .unwrap();
            assert_eq!(&body[..], b"hello");
        }
        for c in [65736u64, 65536 + 200, 99, 100, 101, 600, 0] {
            let r = proxy_result("f", format!(r#"{{"statusCode":{c}}}"#).as_bytes());
            assert!(r.is_err(), "statusCode {c} is refused");
            let r = proxy_result("f", format!(r#"{{"statusCode":"{c}"}}"#).as_bytes());
            assert!(r.is_err(), "statusCode \"{c}\" is refused");
        }
        assert_eq!(
            proxy_result("f", br#"{"statusCode":599}"#)
                .unwrap()
                .status(),
            599
        );
    }

    #[tokio::test]
    async fn the_fast_path_for_usual_results_means_what_the_general_one_does() {
        let cases: &[&str] = &[
            r#"{"statusCode":200,"headers":{"content-type":"text/plain"},"body":"Hello World\n"}"#,
            r#"{"statusCode":201,"headers":{"x-a":"1","X-B":"two words"},"cookies":["c=1","d=2"],"body":"hi"}"#,
            r#"{"statusCode":200,"body":"AAEC","isBase64Encoded":true}"#,
            r#"{"statusCode":200,"body":"AAEC","isBase64Encoded":false}"#,
            r#"{"statusCode":200,"body":"!!","isBase64Encoded":true}"#,
            r#"{"statusCode":204}"#,
            r#"{"statusCode":404,"body":null,"headers":null,"cookies":null}"#,
            r#"{"statusCode":200,"headers":{"a":"1","a":"2"}}"#,
            r#"{"statusCode":200,"headers":{"a":1,"b":null}}"#,
            r#"{"statusCode":200,"headers":{"bad name":"x"}}"#,
            r#"{"statusCode":200,"headers":{"a":"bad\nvalue"}}"#,
            r#"{"statusCode":200,"multiValueHeaders":{"a":["1","2"]},"headers":{"b":"3"}}"#,
            r#"{"statusCode":200,"cookies":["a=1",2]}"#,
            r#"{"statusCode":200,"body":{"nested":true}}"#,
            r#"{"statusCode":200,"isBase64Encoded":"yes","body":"AAEC"}"#,
            r#"{"statusCode":"201","body":"s"}"#,
            r#"{"statusCode":42}"#,
            r#"{"statusCode":70000}"#,
            r#"{"statusCode":200.5}"#,
            r#"{"statusCode":200,"statusCode":201}"#,
            r#"{"statusCode":200,"other":[1,2,3],"body":"\u00e9t\u00e9"}"#,
            r#"{"no":"status"}"#,
        ];
        for c in cases {
            let first = Some(b'{');
            let general = outcome(general_proxy_result("f", c.as_bytes(), first)).await;
            let chosen = outcome(proxy_result("f", c.as_bytes())).await;
            assert_eq!(chosen, general, "for {c}");
        }
        assert!(
            plain_proxy_result(cases[0].as_bytes()).is_some(),
            "the usual shape takes the fast path"
        );
    }
}

#[cfg(test)]
mod fuzz {
    use super::*;
    use proptest::prelude::*;

    /// `PROPTEST_CASES` when set (for a longer hunt), else `n`.
    fn cases(n: u32) -> u32 {
        std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|c| c.parse().ok())
            .unwrap_or(n)
    }

    fn json() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            any::<u64>().prop_map(serde_json::Value::from),
            any::<f64>().prop_map(|f| serde_json::json!(f)),
            "\\PC{0,8}".prop_map(serde_json::Value::from),
            prop_oneof![
                Just("content-length"),
                Just("Transfer-Encoding"),
                Just("connection"),
                Just("x-a"),
                Just("bad name"),
                Just("proxy-x")
            ]
            .prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
                proptest::collection::btree_map(
                    prop_oneof![
                        Just("statusCode".to_string()),
                        Just("headers".to_string()),
                        Just("body".to_string()),
                        Just("cookies".to_string()),
                        Just("isBase64Encoded".to_string()),
                        Just("multiValueHeaders".to_string()),
                        Just("content-length".to_string()),
                        "[a-z-]{1,6}",
                    ],
                    inner,
                    0..6,
                )
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(cases(500)))]

        /// Whatever a function returns, the mapping never panics, and the
        /// response it gives has a final status and none of the framing.
        #[test]
        fn any_result_maps_to_a_sound_response(v in json(), status in any::<u64>()) {
            let mut cases = vec![v.clone()];
            if let serde_json::Value::Object(mut m) = v {
                m.insert("statusCode".into(), serde_json::Value::from(status % 70_000));
                cases.push(serde_json::Value::Object(m));
            }
            for c in cases {
                let bytes = serde_json::to_vec(&c).unwrap();
                if let Ok(r) = proxy_result("f", &bytes) {
                    prop_assert!((200..=599).contains(&r.status().as_u16()));
                    for h in r.headers().keys() {
                        prop_assert!(!framing(h), "{} in the response to {}", h, c);
                    }
                }
            }
        }
    }
}
