//! The Lambda Invoke API, `POST /2015-03-31/functions/NAME/invocations`: what
//! the AWS SDKs and the AWS CLI call, so callers written for Lambda call
//! lampyr by pointing their endpoint at it.
//!
//! * **Authentication:** a SigV4 signature made with an access key lampyr
//!   issued (`lampyr keys create`, `sigv4.rs`), or lampyr's own bearer token.
//! * **Invocation types** (`X-Amz-Invocation-Type`): `RequestResponse`,
//!   `Event` (into the durable event queue: 202, empty body) and `DryRun`
//!   (204 once the caller and the function are checked).
//! * **Answers as Lambda gives them:** a function that failed (an error it
//!   threw, a timeout, a crash, out of memory) is 200 with
//!   `X-Amz-Function-Error: Unhandled` and `{"errorMessage","errorType",
//!   "stackTrace"}`; a platform error is its HTTP status with
//!   `x-amzn-ErrorType` and `{"Type","message"}`. `X-Amz-Log-Type: Tail`
//!   adds the invocation's last 4 KB of log, base64, in `X-Amz-Log-Result`.
//!
//! * **`InvokeWithResponseStream`**
//!   (`/2021-11-15/functions/NAME/response-streaming-invocations`): the
//!   answer as an AWS event stream, chunk by chunk (`stream.rs`). A plain
//!   Invoke of a function that streams gets the whole body, within the
//!   response limit.
//!
//! The function is named by its name, its ARN or a partial ARN, with an
//! optional qualifier (`NAME:QUALIFIER` or `?Qualifier=`): a version
//! number, an alias or `$LATEST`, as lampyr's own `NAME@QUALIFIER`.

pub(crate) mod sigv4;
mod stream;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use lampyr_api::FunctionError;
use lampyr_scheduler::{Answer, Call, Credential, Invocation, InvocationType, Outcome};

use crate::error::ApiError;
use crate::AppState;

/// The most log a `Tail` answer carries (as Lambda).
const TAIL_BYTES: usize = 4096;

/// The account id lampyr's ARNs carry.
const ACCOUNT: &str = lampyr_api::ACCOUNT_ID;
const REGION: &str = lampyr_api::REGION;

/// A platform error, as Lambda answers it.
#[derive(Debug)]
pub(crate) struct LambdaError {
    status: StatusCode,
    kind: &'static str,
    message: String,
}

impl LambdaError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        LambdaError {
            status,
            kind,
            message: message.into(),
        }
    }

    fn not_found(name: &str, qualifier: Option<&str>) -> Self {
        let what = match qualifier {
            Some(q) => format!("{name}:{q}"),
            None => name.to_string(),
        };
        Self::new(
            StatusCode::NOT_FOUND,
            "ResourceNotFoundException",
            format!(
                "Function not found: arn:aws:lambda:{REGION}:{ACCOUNT}:function:{what} (deploy it with `lampyr deploy DIR`, or list functions with `lampyr ls`)"
            ),
        )
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "InvalidParameterValueException",
            message,
        )
    }
}

impl From<ApiError> for LambdaError {
    /// lampyr's own error, as the Lambda error of the same meaning.
    fn from(e: ApiError) -> Self {
        let kind = match e.status {
            StatusCode::NOT_FOUND => "ResourceNotFoundException",
            StatusCode::TOO_MANY_REQUESTS => "TooManyRequestsException",
            StatusCode::PAYLOAD_TOO_LARGE => "RequestTooLargeException",
            StatusCode::BAD_REQUEST => "InvalidRequestContentException",
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => "AccessDeniedException",
            StatusCode::SERVICE_UNAVAILABLE => "ResourceNotReadyException",
            _ => "ServiceException",
        };
        LambdaError {
            status: e.status,
            kind,
            message: e.message,
        }
    }
}

impl IntoResponse for LambdaError {
    fn into_response(self) -> Response {
        let who = if self.status.is_server_error() {
            "Service"
        } else {
            "User"
        };
        let body = serde_json::json!({ "Type": who, "message": self.message });
        let mut resp = (self.status, body.to_string()).into_response();
        let h = resp.headers_mut();
        h.insert("content-type", HeaderValue::from_static("application/json"));
        if let Ok(v) = HeaderValue::from_str(self.kind) {
            h.insert("x-amzn-errortype", v);
        }
        resp
    }
}

/// `POST /2015-03-31/functions/NAME/invocations` (`STREAMED` false) and
/// `POST /2021-11-15/functions/NAME/response-streaming-invocations`
/// (`STREAMED` true).
pub(crate) async fn invoke<const STREAMED: bool>(
    State(app): State<AppState>,
    Path(function): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let req = Req {
        function: &function,
        method: &method,
        uri: &uri,
        headers: &headers,
    };
    invoke_as(&app, req, body, STREAMED).await
}

/// What an Invoke request names and carries, besides its body.
#[derive(Clone, Copy)]
struct Req<'a> {
    function: &'a str,
    method: &'a Method,
    uri: &'a Uri,
    headers: &'a HeaderMap,
}

/// Answers an Invoke (`streamed`: as an event stream), with its request id.
async fn invoke_as(app: &AppState, req: Req<'_>, body: Bytes, streamed: bool) -> Response {
    let request_id = crate::new_request_id();
    let mut resp = match run_invoke(app, req, body, streamed, &request_id).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    };
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        resp.headers_mut().insert("x-amzn-requestid", v.clone());
        resp.headers_mut()
            .insert(crate::trigger::X_LAMPYR_REQUEST_ID, v);
    }
    resp
}

async fn run_invoke(
    app: &AppState,
    req: Req<'_>,
    body: Bytes,
    streamed: bool,
    request_id: &str,
) -> Result<Response, LambdaError> {
    let Req {
        function,
        method,
        uri,
        headers,
    } = req;
    authenticate(app, method, uri, headers, &body)?;
    let query_qualifier = uri.query().and_then(|q| {
        form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == "Qualifier")
            .map(|(_, v)| v.into_owned())
    });
    let (name, qualifier) = function_name(function, query_qualifier.as_deref())?;
    if app.sched.current(&name).is_none() {
        return Err(LambdaError::not_found(&name, qualifier.as_deref()));
    }
    // A qualifier is a version number, an alias or `$LATEST`, as lampyr's
    // own `NAME@QUALIFIER`.
    let target = match &qualifier {
        Some(q) => format!("{name}@{q}"),
        None => name.clone(),
    };
    let invocation_type = match headers
        .get("x-amz-invocation-type")
        .map(|v| v.to_str().unwrap_or(""))
    {
        None | Some("RequestResponse") => InvocationType::RequestResponse,
        // A response stream has no event form (as on Lambda).
        Some("Event") if !streamed => InvocationType::Event,
        Some("DryRun") => return Ok(StatusCode::NO_CONTENT.into_response()),
        Some(other) => {
            return Err(LambdaError::bad_request(format!(
                "X-Amz-Invocation-Type {other:?} is not one of RequestResponse, Event, DryRun"
            )))
        }
    };
    let tail = match headers
        .get("x-amz-log-type")
        .map(|v| v.to_str().unwrap_or(""))
    {
        None | Some("None") => false,
        Some("Tail") => true,
        Some(other) => {
            return Err(LambdaError::bad_request(format!(
                "X-Amz-Log-Type {other:?} is not one of None, Tail"
            )))
        }
    };
    let event = if body.is_empty() {
        Bytes::from_static(b"{}")
    } else {
        body
    };
    if serde_json::from_slice::<serde::de::IgnoredAny>(&event).is_err() {
        return Err(LambdaError::new(
            StatusCode::BAD_REQUEST,
            "InvalidRequestContentException",
            "Could not parse request body into json: the payload must be JSON",
        ));
    }
    let extras = match invocation_type {
        InvocationType::RequestResponse => call_extras(headers)?,
        // As on Lambda, the client context is for synchronous calls only.
        _ => None,
    };
    let call = Call {
        function: &target,
        request_id: request_id.to_string(),
        event: event.to_vec(),
        trigger: lampyr_api::TriggerKind::Api,
        invocation_type,
        // A signature by an issued key, or the management token.
        credential: Credential::Operator,
        attempt: None,
        idempotency_key: None,
        routing_key: None,
        extras,
    };
    match app.sched.call_streamed(call).await {
        Ok(Answer::Queued(_)) => {
            let mut r = StatusCode::ACCEPTED.into_response();
            r.headers_mut()
                .insert("content-length", HeaderValue::from_static("0"));
            Ok(r)
        }
        Ok(Answer::Ran(inv)) if streamed => Ok(stream::respond(app, inv, tail)),
        Ok(Answer::Ran(mut inv)) => {
            // A streamed reply, whole (as Lambda answers a plain Invoke of
            // a streaming function), within the response limit.
            inv.collect(app.limits.max_response_body).await;
            let log = if tail {
                Some(log_tail(app, &inv).await)
            } else {
                None
            };
            let resp = answer(&inv, log);
            inv.delivered(lampyr_scheduler::Delivery {
                http_status: Some(resp.status().as_u16()),
                response_bytes: 0,
            });
            Ok(resp)
        }
        Err(mut refused) => {
            let e = ApiError::from(refused.error());
            refused.delivered(Some(e.status.as_u16()));
            Err(e.into())
        }
    }
}

/// Lets in a SigV4 signature by an issued key, or lampyr's bearer token.
fn authenticate(
    app: &AppState,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(), LambdaError> {
    let denied = |kind, message: String| LambdaError::new(StatusCode::FORBIDDEN, kind, message);
    if let Some(token) = crate::bearer(headers) {
        return if crate::token_eq(token, &app.token) {
            Ok(())
        } else {
            Err(denied(
                "UnrecognizedClientException",
                "the bearer token is wrong: use the server's token (`lampyr` reads it from the data directory) or sign the request with an access key (`lampyr keys create`)".into(),
            ))
        };
    }
    let Some(value) = headers.get("authorization").and_then(|v| v.to_str().ok()) else {
        return Err(denied(
            "MissingAuthenticationTokenException",
            "the request is not signed: give the SDK or the AWS CLI an access key from `lampyr keys create` (or send `Authorization: Bearer TOKEN`)".into(),
        ));
    };
    let auth = sigv4::parse_authorization(value)
        .map_err(|e| denied("IncompleteSignatureException", e.to_string()))?;
    let Some(secret) = app.keys.as_ref().and_then(|k| k.secret(auth.access_key)) else {
        return Err(denied(
            "UnrecognizedClientException",
            format!(
                "access key {} is not one of this server's keys: create one with `lampyr keys create`, list them with `lampyr keys ls`",
                auth.access_key
            ),
        ));
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let req = sigv4::Signed {
        method: method.as_str(),
        path: uri.path(),
        query: uri.query().unwrap_or(""),
        headers,
        body,
    };
    sigv4::verify(&auth, &req, &secret, now).map_err(|e| {
        let kind = match e {
            sigv4::SigError::Skewed(_) => "InvalidSignatureException",
            sigv4::SigError::Mismatch => "InvalidSignatureException",
            _ => "IncompleteSignatureException",
        };
        denied(kind, e.to_string())
    })
}

/// The function's name and qualifier from a name, an ARN
/// (`arn:aws:lambda:REGION:ACCOUNT:function:NAME[:QUALIFIER]`) or a partial
/// ARN (`ACCOUNT:function:NAME`, `NAME:QUALIFIER`), and `?Qualifier=`.
fn function_name(
    given: &str,
    query_qualifier: Option<&str>,
) -> Result<(String, Option<String>), LambdaError> {
    let parts: Vec<&str> = given.split(':').collect();
    let (name, in_name) = match parts.as_slice() {
        [name] => (*name, None),
        [name, q] => (*name, Some(*q)),
        ["arn", _, "lambda", _, _, "function", name] => (*name, None),
        ["arn", _, "lambda", _, _, "function", name, q] => (*name, Some(*q)),
        [_, "function", name] => (*name, None),
        [_, "function", name, q] => (*name, Some(*q)),
        _ => {
            return Err(LambdaError::bad_request(format!(
                "{given:?} is not a function name, an ARN (arn:aws:lambda:REGION:ACCOUNT:function:NAME) or a partial ARN"
            )))
        }
    };
    let qualifier = match (in_name, query_qualifier) {
        (Some(a), Some(b)) if a != b => {
            return Err(LambdaError::bad_request(format!(
                "the qualifier in the function name ({a}) and the Qualifier parameter ({b}) differ"
            )))
        }
        (Some(q), _) | (None, Some(q)) => Some(q.to_string()),
        (None, None) => None,
    };
    if lampyr_api::manifest::validate_name(name).is_err() {
        return Err(LambdaError::not_found(name, qualifier.as_deref()));
    }
    Ok((name.to_string(), qualifier))
}

/// The response to a call that ran.
fn answer(inv: &Invocation, log: Option<String>) -> Response {
    let (body, failed) = outcome_body(inv, &inv.outcome);
    let mut resp = Response::new(axum::body::Body::from(body));
    let h = resp.headers_mut();
    let content_type = match inv.streamed() {
        Some(t) if !failed => HeaderValue::from_str(t).ok(),
        _ => None,
    };
    h.insert(
        "content-type",
        content_type.unwrap_or(HeaderValue::from_static("application/json")),
    );
    h.insert("x-amz-executed-version", HeaderValue::from(inv.version));
    h.insert(
        crate::trigger::X_LAMPYR_VERSION,
        HeaderValue::from(inv.version),
    );
    if failed {
        h.insert(
            "x-amz-function-error",
            HeaderValue::from_static("Unhandled"),
        );
    }
    if let Some(log) = log {
        if let Ok(v) = HeaderValue::from_str(&log) {
            h.insert("x-amz-log-result", v);
        }
    }
    resp
}

/// Lambda's body for an outcome, and whether it is a function error.
fn outcome_body(inv: &Invocation, outcome: &Outcome) -> (Bytes, bool) {
    match outcome {
        Outcome::Ok(result) => (result.clone(), false),
        Outcome::FunctionError(err) => {
            let e = FunctionError::parse(err, "Error");
            (lambda_error_body(&e), true)
        }
        Outcome::Timeout { timeout } => (
            lambda_error_body(&FunctionError {
                error_type: "Sandbox.Timedout".into(),
                error_message: format!(
                    "{} Task timed out after {:.2} seconds",
                    inv.request_id,
                    timeout.as_secs_f64()
                ),
                stack_trace: Vec::new(),
            }),
            true,
        ),
        Outcome::OutOfMemory { limit_mb } => (
            lambda_error_body(&FunctionError {
                error_type: "Runtime.OutOfMemory".into(),
                error_message: format!(
                    "RequestId: {} Error: Runtime exited with error: the function used more than its {limit_mb} MB (memory_mb)",
                    inv.request_id
                ),
                stack_trace: Vec::new(),
            }),
            true,
        ),
        Outcome::Crashed { reason } => (
            lambda_error_body(&FunctionError {
                error_type: "Runtime.ExitError".into(),
                error_message: format!(
                    "RequestId: {} Error: Runtime exited with error: {reason}",
                    inv.request_id
                ),
                stack_trace: Vec::new(),
            }),
            true,
        ),
    }
}

/// What a call carries to the function's `context` besides its event:
/// `X-Amz-Client-Context` (base64 JSON, the mobile SDKs' client context)
/// and the caller's X-Ray trace header (`X-Amzn-Trace-Id`), as the JSON
/// the runtimes read (`docs/protocol.md`); `None` when there is neither.
fn call_extras(headers: &HeaderMap) -> Result<Option<Vec<u8>>, LambdaError> {
    let mut extras = serde_json::Map::new();
    if let Some(v) = headers.get("x-amz-client-context") {
        let bad = || {
            LambdaError::new(
                StatusCode::BAD_REQUEST,
                "InvalidRequestContentException",
                "Client context must be a valid Base64-encoded JSON object (X-Amz-Client-Context)",
            )
        };
        let raw = base64::engine::general_purpose::STANDARD
            .decode(v.as_bytes())
            .map_err(|_| bad())?;
        // Lambda's limit on the encoded context.
        if v.len() > 3583 {
            return Err(LambdaError::new(
                StatusCode::BAD_REQUEST,
                "InvalidRequestContentException",
                format!(
                    "Client context is {} bytes base64-encoded, over Lambda's limit of 3583",
                    v.len()
                ),
            ));
        }
        match serde_json::from_slice::<serde_json::Value>(&raw) {
            Ok(obj @ serde_json::Value::Object(_)) => {
                extras.insert("client_context".into(), obj);
            }
            _ => return Err(bad()),
        }
    }
    if let Some(t) = headers
        .get("x-amzn-trace-id")
        .and_then(|v| v.to_str().ok())
        .filter(|t| !t.is_empty())
    {
        extras.insert("trace_id".into(), t.into());
    }
    if extras.is_empty() {
        return Ok(None);
    }
    Ok(Some(serde_json::to_vec(&extras).expect("extras serialise")))
}

/// `{"errorMessage","errorType","stackTrace"}`, as Lambda's clients read it.
fn lambda_error_body(e: &FunctionError) -> Bytes {
    Bytes::from(
        serde_json::json!({
            "errorMessage": e.error_message,
            "errorType": e.error_type,
            "stackTrace": e.stack_trace,
        })
        .to_string(),
    )
}

/// The invocation's log, its last [`TAIL_BYTES`], base64.
async fn log_tail(app: &AppState, inv: &Invocation) -> String {
    let hub = app.sched.logs().clone();
    let function = inv.function.clone();
    let request_id = inv.request_id.clone();
    let lines = tokio::task::spawn_blocking(move || {
        hub.written_up_to_now(std::time::Duration::from_millis(200));
        hub.query(
            &function,
            &lampyr_store::LogQuery {
                request_id: Some(request_id),
                since: None,
                tail: 0,
                version: None,
            },
        )
    })
    .await
    .ok()
    .and_then(Result::ok)
    .unwrap_or_default();
    let mut text = String::new();
    for l in &lines {
        text.push_str(&l.message);
        if !l.message.ends_with('\n') {
            text.push('\n');
        }
    }
    let start = text.len().saturating_sub(TAIL_BYTES);
    let start = (start..text.len())
        .find(|i| text.is_char_boundary(*i))
        .unwrap_or(text.len());
    base64::engine::general_purpose::STANDARD.encode(&text.as_bytes()[start..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn functions_are_named_by_name_arn_or_partial_arn() {
        let ok = |g: &str, q: Option<&str>| function_name(g, q).unwrap();
        assert_eq!(ok("hello", None), ("hello".into(), None));
        assert_eq!(ok("hello:3", None), ("hello".into(), Some("3".into())));
        assert_eq!(
            ok("hello", Some("$LATEST")),
            ("hello".into(), Some("$LATEST".into()))
        );
        assert_eq!(
            ok("arn:aws:lambda:us-east-1:123456789012:function:hello", None),
            ("hello".into(), None)
        );
        assert_eq!(
            ok(
                "arn:aws:lambda:us-east-1:123456789012:function:hello:live",
                None
            ),
            ("hello".into(), Some("live".into()))
        );
        assert_eq!(
            ok("123456789012:function:hello", None),
            ("hello".into(), None)
        );
        assert!(function_name("hello:1", Some("2")).is_err());
        assert!(function_name("a:b:c:d:e", None).is_err());
        assert_eq!(
            function_name("Not A Name", None).unwrap_err().status,
            StatusCode::NOT_FOUND
        );
    }
}
