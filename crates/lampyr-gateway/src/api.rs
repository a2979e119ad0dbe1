//! The management API under `/api/v1` (bearer-token protected), with
//! `/healthz` and `/metrics`: deploys, deletes, the raw invoke, function
//! listings, logs, invocation records, statistics and pools.

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use lampyr_api::{
    DeployResult, DoctorReport, FunctionInfo, FunctionList, FunctionSummary, Health, LogList,
};
use lampyr_store::{rfc3339, FunctionRecord, LogQuery};
use serde::Deserialize;

use crate::error::ApiError;
use crate::{new_request_id, trigger, AppState};

/// `GET /healthz`, unauthenticated: two counters, whatever the server holds.
pub(crate) async fn health(State(app): State<AppState>) -> Json<Health> {
    Json(Health {
        status: "ok".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        functions: app.sched.function_count(),
        instances: app.sched.live_instances(),
    })
}

pub(crate) async fn pools(State(app): State<AppState>) -> Json<Vec<lampyr_api::PoolStatus>> {
    Json(app.sched.pools())
}

pub(crate) async fn doctor(State(app): State<AppState>) -> Json<DoctorReport> {
    Json(app.doctor.clone())
}

fn info_of(app: &AppState, rec: &FunctionRecord) -> FunctionInfo {
    let counts = app.sched.instance_counts(&rec.name);
    let spec = rec.current.spec.clone();
    FunctionInfo {
        name: rec.name.clone(),
        runtime: spec.runtime.to_string(),
        handler: spec.handler.clone(),
        version: rec.current.version,
        instances: counts.total(),
        instance_states: counts,
        url: app.url_of(&rec.name),
        code_sha256: rec.current.code_sha256.clone(),
        code_size: rec.current.code_size,
        created_at: rfc3339(rec.created_at),
        updated_at: rfc3339(rec.updated_at),
        // Also the webhook token of a storage trigger that sets none.
        trigger_token: (spec.auth == lampyr_api::Auth::Token
            || spec.storage_triggers().any(|t| t.token.is_none()))
        .then(|| rec.trigger_token.clone()),
        events: app.events.as_ref().map(|q| q.counts(&rec.name)),
        timers: app
            .events
            .as_ref()
            .map(|q| lampyr_async::timer_info(q, &spec))
            .unwrap_or_default(),
        sources: app.sources_of(&rec.name),
        aliases: app
            .sched
            .store()
            .aliases(&rec.name)
            .unwrap_or_default()
            .iter()
            .map(crate::versions::alias_info)
            .collect(),
        // Secrets (a database's password) are not shown.
        spec: spec.redacted(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListParams {
    /// With a window (e.g. `1h`), each function's activity in it.
    #[serde(default)]
    since: Option<String>,
}

pub(crate) async fn list_functions(
    State(app): State<AppState>,
    ApiQuery(p): ApiQuery<ListParams>,
) -> Result<Json<FunctionList>, ApiError> {
    let since = since_param(p.since.as_deref())?;
    let store = app.sched.store().clone();
    let records = app.sched.records().clone();
    let list = tokio::task::spawn_blocking(move || -> Result<_, ApiError> {
        let list = store.list()?;
        let mut activity = Vec::with_capacity(list.len());
        for rec in &list {
            activity.push(match since {
                Some(since) => Some(records.list(
                    &rec.name,
                    &lampyr_store::RecordQuery {
                        limit: 100_000,
                        since: Some(since),
                        status: None,
                        ran: false,
                    },
                )?),
                None => None,
            });
        }
        Ok((list, activity))
    })
    .await
    .map_err(ApiError::internal)??;
    let (list, activity) = list;
    let functions = list
        .iter()
        .zip(activity)
        .map(|(rec, recs)| {
            let c = app.sched.instance_counts(&rec.name);
            FunctionSummary {
                name: rec.name.clone(),
                runtime: rec.current.spec.runtime.to_string(),
                version: rec.current.version,
                instances: c.total(),
                url: app.url_of(&rec.name),
                updated_at: rfc3339(rec.updated_at),
                activity: recs.map(|recs| {
                    lampyr_scheduler::stats::activity(&recs, app.sched.init_failure(&rec.name))
                }),
                events: app.events.as_ref().map(|q| q.counts(&rec.name)),
            }
        })
        .collect();
    Ok(Json(FunctionList { functions }))
}

pub(crate) async fn get_function(
    State(app): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<FunctionInfo>, ApiError> {
    let rec = app.sched.store().get(&name)?;
    Ok(Json(info_of(&app, &rec)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DeployParams {
    /// `false`: skip the load check.
    #[serde(default)]
    verify: Option<bool>,
    /// Recorded with the new version.
    #[serde(default)]
    description: Option<String>,
    /// Point this alias at the new version.
    #[serde(default)]
    alias: Option<String>,
    /// With `alias`: `PERCENT%/INTERVAL`, a canary first.
    #[serde(default)]
    canary: Option<String>,
}

pub(crate) async fn deploy(
    State(app): State<AppState>,
    Path(name): Path<String>,
    ApiQuery(p): ApiQuery<DeployParams>,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Json<DeployResult>, ApiError> {
    // A package over the limit is refused before it is read, saying the
    // limit (the store says the same of one that gets that far).
    let body = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::from(&lampyr_store::StoreError::Package(
                lampyr_store::PackageError::TooLarge {
                    what: "package",
                    limit: app.limits.max_package as u64,
                    setting: "max_package",
                },
            ))
        } else {
            ApiError::new(e.status(), "bad_request", e.body_text())
        }
    })?;
    let canary = p
        .canary
        .as_deref()
        .map(lampyr_api::versions::parse_canary)
        .transpose()
        .map_err(|m| ApiError::new(StatusCode::BAD_REQUEST, "invalid_canary", m))?;
    let opts = lampyr_scheduler::DeployOptions {
        verify: p.verify.unwrap_or(true),
        description: p.description.filter(|d| !d.is_empty()),
        alias: p.alias,
        canary,
    };
    let deployed = app.sched.deploy(&name, body, opts).await?;
    let rec = &deployed.record;
    Ok(Json(DeployResult {
        name: rec.name.clone(),
        version: rec.current.version,
        url: app.url_of(&rec.name),
        code_sha256: rec.current.code_sha256.clone(),
        code_size: rec.current.code_size,
        changed: deployed.changed,
        build_ms: lampyr_api::millis(deployed.build_time),
        check_ms: deployed.check_time.map(lampyr_api::millis),
        alias: deployed.alias.as_ref().map(crate::versions::alias_info),
    }))
}

pub(crate) async fn delete_function(
    State(app): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    app.sched.delete(&name).await?;
    Ok(Json(serde_json::json!({ "name": name, "deleted": true })))
}

/// `POST /api/v1/functions/NAME/invoke`: the body is the event itself (any
/// JSON); the answer is the handler's raw result. A handler error answers
/// 200 with `x-lampyr-function-error: Unhandled` and the error object, as
/// Lambda's Invoke API does.
pub(crate) async fn invoke_raw(
    State(app): State<AppState>,
    Path(name): Path<String>,
    query: Result<ApiQuery<InvokeParams>, ApiError>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Response {
    let request_id = new_request_id();
    let target = match query {
        Ok(ApiQuery(InvokeParams { qualifier: Some(q) })) if !name.contains('@') => {
            format!("{name}@{q}")
        }
        Ok(_) => name,
        Err(e) => return e.into_response(),
    };
    let name = target;
    let routing_key = trigger::routing_key(&headers);
    let (invocation_type, idempotency_key) = match trigger::invocation_headers(&headers) {
        Ok(h) => h,
        Err(e) => return e.into_response(),
    };
    let event = if body.is_empty() {
        Bytes::from_static(b"{}")
    } else {
        body
    };
    let mut resp = match serde_json::from_slice::<serde::de::IgnoredAny>(&event) {
        Err(e) => ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_event",
            format!("the event is not valid JSON: {e}"),
        )
        .into_response(),
        Ok(_) => {
            let call = lampyr_scheduler::Call {
                function: &name,
                request_id: request_id.clone(),
                event: event.to_vec(),
                trigger: lampyr_api::TriggerKind::Api,
                invocation_type,
                // The management API's token let this request in.
                credential: lampyr_scheduler::Credential::Operator,
                attempt: None,
                idempotency_key: idempotency_key.as_deref(),
                routing_key: routing_key.as_deref(),
                extras: None,
            };
            trigger::call_and_answer(
                &app,
                call,
                trigger::respond_raw,
                crate::streaming::StreamAs::Raw,
            )
            .await
        }
    };
    if !resp.headers().contains_key(trigger::X_LAMPYR_REQUEST_ID) {
        if let Ok(v) = axum::http::HeaderValue::from_str(&request_id) {
            resp.headers_mut().insert(trigger::X_LAMPYR_REQUEST_ID, v);
        }
    }
    resp
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct InvokeParams {
    /// A version number, an alias or `$LATEST` (as `NAME@QUALIFIER` does).
    #[serde(default)]
    qualifier: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LogParams {
    #[serde(default)]
    tail: Option<usize>,
    #[serde(default)]
    request_id: Option<String>,
    /// A duration back from now, e.g. `10m`.
    #[serde(default)]
    since: Option<String>,
    /// Keep the connection open and stream new records as server-sent events.
    #[serde(default)]
    follow: Option<String>,
    /// Only lines of this version.
    #[serde(default)]
    version: Option<u64>,
}

/// A query string for the API: like axum's `Query`, but a bad parameter
/// answers with lampyr's error body (400 `invalid_parameter`).
pub(crate) struct ApiQuery<T>(pub(crate) T);

impl<T: serde::de::DeserializeOwned, S: Send + Sync> axum::extract::FromRequestParts<S>
    for ApiQuery<T>
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, ApiError> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(v)) => Ok(ApiQuery(v)),
            Err(e) => Err(invalid_parameter(e.body_text())),
        }
    }
}

/// The longest a `since` parameter may reach back.
const MAX_SINCE: std::time::Duration = std::time::Duration::from_secs(10 * 366 * 24 * 3600);

fn invalid_parameter(message: String) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "invalid_parameter", message)
}

/// Parses a `since` parameter (a duration back from now, e.g. `10m`, at
/// most ten years).
fn since_param(since: Option<&str>) -> Result<Option<std::time::SystemTime>, ApiError> {
    let Some(s) = since else { return Ok(None) };
    let d = lampyr_api::manifest::parse_duration(s)
        .map_err(|m| invalid_parameter(format!("since: {m}")))?;
    if d > MAX_SINCE {
        return Err(invalid_parameter(format!(
            "since: {s} reaches back further than ten years: use a shorter duration such as 1h or 7d"
        )));
    }
    std::time::SystemTime::now()
        .checked_sub(d)
        .map(Some)
        .ok_or_else(|| invalid_parameter(format!("since: {s} reaches back before 1970")))
}

/// A request id as given (whole, or any unique beginning, or the short
/// form people see: its end) made whole, among `function`'s invocations or
/// everyone's.
pub(crate) async fn whole_request_id(
    app: &AppState,
    function: Option<&str>,
    given: &str,
) -> Result<String, ApiError> {
    if given.len() == 36 && uuid::Uuid::try_parse(given).is_ok() {
        return Ok(given.to_string());
    }
    let records = app.sched.records().clone();
    let (f, g) = (function.map(str::to_string), given.to_string());
    let found = tokio::task::spawn_blocking(move || records.complete_id(f.as_deref(), &g, 6))
        .await
        .map_err(ApiError::internal)??;
    let of = function.map(|f| format!(" of '{f}'")).unwrap_or_default();
    match found.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "invocation_not_found",
            format!("no invocation{of} has a request id beginning or ending with '{given}' (records are written within a second of an invocation, and pruned after the retention period)"),
        )),
        many => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "ambiguous_request_id",
            format!(
                "'{given}' matches several request ids{of} ({}{}): give more of it",
                many.iter().take(5).cloned().collect::<Vec<_>>().join(", "),
                if many.len() > 5 { ", …" } else { "" }
            ),
        )),
    }
}

pub(crate) async fn function_logs(
    State(app): State<AppState>,
    Path(name): Path<String>,
    ApiQuery(mut p): ApiQuery<LogParams>,
) -> Result<Response, ApiError> {
    app.sched.store().get(&name)?;
    if let Some(given) = p.request_id.take() {
        p.request_id = Some(whole_request_id(&app, Some(&name), &given).await?);
    }
    let since = since_param(p.since.as_deref())?.map(rfc3339);
    if matches!(p.follow.as_deref(), Some("1") | Some("true")) {
        return Ok(follow_logs(
            app,
            name,
            LogQuery {
                request_id: p.request_id,
                since,
                tail: p.tail.unwrap_or(50),
                version: p.version,
            },
        ));
    }
    let q = LogQuery {
        request_id: p.request_id,
        since,
        tail: p.tail.unwrap_or(200),
        version: p.version,
    };
    let hub = app.sched.logs().clone();
    let records = tokio::task::spawn_blocking(move || hub.query(&name, &q))
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)?;
    Ok(Json(LogList { records }).into_response())
}

/// Streams a function's log as server-sent events: the last `tail` records,
/// then every new one as it is written.
fn follow_logs(app: AppState, name: String, q: LogQuery) -> Response {
    use axum::response::sse::{Event, KeepAlive, Sse};
    // Subscribe before reading the backlog, so nothing falls in between.
    let rx = app.sched.logs().subscribe();
    let hub = app.sched.logs().clone();
    let backlog = hub.query(&name, &q).unwrap_or_default();
    let (request_id, version) = (q.request_id, q.version);
    let event = |r: &lampyr_api::LogRecord| {
        Ok::<_, std::convert::Infallible>(
            Event::default().data(serde_json::to_string(r).expect("record serialises")),
        )
    };
    let first: Vec<_> = backlog.iter().map(event).collect();
    let stopping = app.stopping.subscribe();
    let live = futures_util::stream::unfold((rx, stopping), move |(mut rx, mut stopping)| {
        let name = name.clone();
        let request_id = request_id.clone();
        async move {
            loop {
                let got = tokio::select! {
                    r = rx.recv() => r,
                    // The server is shutting down: the stream ends.
                    _ = stopping.wait_for(|s| *s) => return None,
                };
                match got {
                    Ok(r) => {
                        if r.function == name
                            && request_id
                                .as_deref()
                                .is_none_or(|id| r.request_id.as_deref() == Some(id))
                            && version.is_none_or(|v| r.version == v)
                        {
                            let ev = Event::default()
                                .data(serde_json::to_string(&*r).expect("record serialises"));
                            return Some((Ok(ev), (rx, stopping)));
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        let ev = Event::default()
                            .event("lagged")
                            .data(format!("{n} records were skipped"));
                        return Some((Ok(ev), (rx, stopping)));
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
                }
            }
        }
    });
    let stream = futures_util::StreamExt::chain(futures_util::stream::iter(first), live);
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct InvocationParams {
    #[serde(default)]
    limit: Option<usize>,
    #[serde(default)]
    since: Option<String>,
    #[serde(default)]
    status: Option<String>,
}

pub(crate) async fn function_invocations(
    State(app): State<AppState>,
    Path(name): Path<String>,
    ApiQuery(p): ApiQuery<InvocationParams>,
) -> Result<Json<lampyr_api::InvocationList>, ApiError> {
    app.sched.store().get(&name)?;
    let status = p
        .status
        .as_deref()
        .map(str::parse::<lampyr_api::Status>)
        .transpose()
        .map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_parameter",
                format!("status: {e}"),
            )
        })?;
    let q = lampyr_store::RecordQuery {
        limit: p.limit.unwrap_or(50).min(10_000),
        since: since_param(p.since.as_deref())?,
        status,
        ran: false,
    };
    let records = app.sched.records().clone();
    let invocations = tokio::task::spawn_blocking(move || records.list(&name, &q))
        .await
        .map_err(ApiError::internal)??;
    Ok(Json(lampyr_api::InvocationList { invocations }))
}

pub(crate) async fn get_invocation(
    State(app): State<AppState>,
    Path(request_id): Path<String>,
) -> Result<Response, ApiError> {
    let request_id = whole_request_id(&app, None, &request_id).await?;
    // An asynchronous event: its state and every attempt.
    if let Some(detail) = crate::events::detail(&app, &request_id).await? {
        return Ok(Json(detail).into_response());
    }
    let records = app.sched.records().clone();
    let id = request_id.clone();
    let rec = tokio::task::spawn_blocking(move || records.get(&id))
        .await
        .map_err(ApiError::internal)??;
    rec.map(|r| Json(r).into_response()).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "invocation_not_found",
            format!("no invocation with request id '{request_id}' (records are written within a second, and pruned after the retention period)"),
        )
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct WindowParams {
    #[serde(default)]
    since: Option<String>,
    /// Bucket size in seconds (series only).
    #[serde(default)]
    step: Option<u64>,
}

/// Records of a function in a window, for summaries (at most 100 000).
async fn window(
    app: &AppState,
    name: &str,
    since: Option<&str>,
) -> Result<(std::time::SystemTime, Vec<lampyr_api::InvocationRecord>), ApiError> {
    app.sched.store().get(name)?;
    let since = since_param(Some(since.unwrap_or("1h")))?.expect("a window start");
    let records = app.sched.records().clone();
    let n = name.to_string();
    let q = lampyr_store::RecordQuery {
        limit: 100_000,
        since: Some(since),
        status: None,
        ran: false,
    };
    let list = tokio::task::spawn_blocking(move || records.list(&n, &q))
        .await
        .map_err(ApiError::internal)??;
    Ok((since, list))
}

pub(crate) async fn function_stats(
    State(app): State<AppState>,
    Path(name): Path<String>,
    ApiQuery(p): ApiQuery<WindowParams>,
) -> Result<Json<lampyr_api::FunctionStats>, ApiError> {
    let (since, list) = window(&app, &name, p.since.as_deref()).await?;
    Ok(Json(lampyr_scheduler::stats::stats(&name, since, &list)))
}

pub(crate) async fn function_series(
    State(app): State<AppState>,
    Path(name): Path<String>,
    ApiQuery(p): ApiQuery<WindowParams>,
) -> Result<Json<lampyr_api::Series>, ApiError> {
    let step = match p.step.unwrap_or(60) {
        s @ 1..=86_400 => std::time::Duration::from_secs(s),
        s => {
            return Err(invalid_parameter(format!(
                "step: {s} is out of range: use a bucket size from 1 to 86400 seconds"
            )))
        }
    };
    let (since, list) = window(&app, &name, p.since.as_deref()).await?;
    let samples = app.sched.instance_samples(&name);
    Ok(Json(lampyr_scheduler::stats::series(
        &name,
        since,
        std::time::SystemTime::now(),
        step,
        &list,
        &samples,
    )))
}

/// `GET /metrics`: Prometheus text format. Unauthenticated, so it is
/// rendered at most once a second whatever the rate of requests.
pub(crate) async fn metrics(State(app): State<AppState>) -> Response {
    let text = {
        let mut cache = app.metrics_cache.lock();
        match &*cache {
            Some((at, text)) if at.elapsed() < std::time::Duration::from_secs(1) => text.clone(),
            _ => {
                let mut text = app.sched.metrics_text();
                if let Some(q) = &app.events {
                    text.push_str(&q.metrics_text());
                }
                text.push_str(&sources_metrics(&app));
                let text: Bytes = text.into();
                *cache = Some((std::time::Instant::now(), text.clone()));
                text
            }
        }
    };
    let mut r = text.into_response();
    r.headers_mut().insert(
        "content-type",
        axum::http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    r
}

/// The event sources' gauges, per function and trigger.
fn sources_metrics(app: &AppState) -> String {
    use lampyr_api::sources::SourceState;
    use std::fmt::Write;
    let mut rows = Vec::new();
    for f in app.sched.functions() {
        for s in app.sources_of(&f.name) {
            rows.push((f.name.clone(), s));
        }
    }
    if rows.is_empty() {
        return String::new();
    }
    let label = |v: &str| {
        v.replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n")
    };
    let mut out = String::new();
    out.push_str("# HELP lampyr_source_state Whether an event source is in each state (1) or not (0).\n# TYPE lampyr_source_state gauge\n");
    for (f, s) in &rows {
        for st in [
            SourceState::Connecting,
            SourceState::Connected,
            SourceState::Retrying,
            SourceState::Stopped,
        ] {
            let _ =
                writeln!(
                out,
                "lampyr_source_state{{function=\"{}\",trigger=\"{}\",kind=\"{}\",state=\"{}\"}} {}",
                label(f), label(&s.trigger), s.kind, st.as_str(), u8::from(s.state == st)
            );
        }
    }
    out.push_str("# HELP lampyr_source_lag How far behind its source a trigger is, in the source's unit (unit label).\n# TYPE lampyr_source_lag gauge\n");
    for (f, s) in &rows {
        if let Some(lag) = s.lag {
            let _ =
                writeln!(
                out,
                "lampyr_source_lag{{function=\"{}\",trigger=\"{}\",kind=\"{}\",unit=\"{}\"}} {lag}",
                label(f), label(&s.trigger), s.kind, label(s.lag_unit.as_deref().unwrap_or(""))
            );
        }
    }
    out.push_str("# HELP lampyr_source_delivered Events an event source delivered to its function since the server started.\n# TYPE lampyr_source_delivered gauge\n");
    for (f, s) in &rows {
        let _ = writeln!(
            out,
            "lampyr_source_delivered{{function=\"{}\",trigger=\"{}\",kind=\"{}\"}} {}",
            label(f),
            label(&s.trigger),
            s.kind,
            s.delivered
        );
    }
    out
}
