//! The management API of asynchronous events: a function's events and
//! dead letters, redriving and purging them, and an event's state behind
//! `GET /api/v1/invocations/ID`.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use lampyr_api::events::{EventDetail, EventInfo, EventList, EventState};
use serde::Deserialize;

use crate::api::ApiQuery;
use crate::error::ApiError;
use crate::AppState;

fn queue(app: &AppState) -> Result<Arc<lampyr_async::EventQueue>, ApiError> {
    app.events.clone().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "async_unavailable",
            "this server has no event queue",
        )
    })
}

fn store_error(e: lampyr_async::QueueError) -> ApiError {
    ApiError::internal(e)
}

/// Runs queue reads off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, lampyr_async::QueueError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(ApiError::internal)?
        .map_err(store_error)
}

/// An asynchronous event and its attempts' records, if `request_id` is one.
pub(crate) async fn detail(
    app: &AppState,
    request_id: &str,
) -> Result<Option<EventDetail>, ApiError> {
    let Some(q) = app.events.clone() else {
        return Ok(None);
    };
    let id = request_id.to_string();
    let Some(event) = blocking(move || q.get(&id, false)).await? else {
        return Ok(None);
    };
    let records = app.sched.records().clone();
    let (f, id) = (event.function.clone(), request_id.to_string());
    let records = tokio::task::spawn_blocking(move || records.attempts(&f, &id))
        .await
        .map_err(ApiError::internal)??;
    Ok(Some(EventDetail { event, records }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct EventParams {
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    limit: Option<usize>,
}

fn parse_state(s: &str) -> Result<EventState, ApiError> {
    serde_json::from_value(serde_json::Value::String(s.to_string())).map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_parameter",
            format!(
                "state: '{s}' is not one of queued, running, retrying, succeeded, dead_lettered"
            ),
        )
    })
}

/// `GET /api/v1/functions/NAME/events?state=&limit=`: newest first.
pub(crate) async fn list_events(
    State(app): State<AppState>,
    Path(name): Path<String>,
    ApiQuery(p): ApiQuery<EventParams>,
) -> Result<Json<EventList>, ApiError> {
    app.sched.store().get(&name)?;
    let q = queue(&app)?;
    let state = p.state.as_deref().map(parse_state).transpose()?;
    let limit = p.limit.unwrap_or(50).min(10_000);
    let events = blocking(move || q.list(&name, state, limit, false)).await?;
    Ok(Json(EventList { events }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LimitParams {
    #[serde(default)]
    limit: Option<usize>,
}

/// `GET /api/v1/functions/NAME/dlq?limit=`: dead letters, payloads
/// included, newest first.
pub(crate) async fn dead_letters(
    State(app): State<AppState>,
    Path(name): Path<String>,
    ApiQuery(p): ApiQuery<LimitParams>,
) -> Result<Json<EventList>, ApiError> {
    app.sched.store().get(&name)?;
    let q = queue(&app)?;
    let limit = p.limit.unwrap_or(100).min(10_000);
    let events =
        blocking(move || q.list(&name, Some(EventState::DeadLettered), limit, true)).await?;
    Ok(Json(EventList { events }))
}

/// `GET /api/v1/functions/NAME/dlq/ID`: one dead letter.
pub(crate) async fn dead_letter(
    State(app): State<AppState>,
    Path((name, request_id)): Path<(String, String)>,
) -> Result<Json<EventInfo>, ApiError> {
    app.sched.store().get(&name)?;
    let q = queue(&app)?;
    let id = crate::api::whole_request_id(&app, Some(&name), &request_id)
        .await
        .unwrap_or(request_id.clone());
    let found = blocking(move || q.get(&id, true)).await?;
    match found {
        Some(e) if e.function == name && e.state == EventState::DeadLettered => Ok(Json(e)),
        _ => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "dead_letter_not_found",
            format!("function '{name}' has no dead letter '{request_id}': list them with `lampyr dlq {name}`"),
        )),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RedriveBody {
    #[serde(default)]
    request_ids: Vec<String>,
    #[serde(default)]
    all: bool,
}

/// `POST /api/v1/functions/NAME/dlq/redrive` with `{"request_ids": [...]}`
/// or `{"all": true}`: queues dead letters again, attempts from zero.
pub(crate) async fn redrive(
    State(app): State<AppState>,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    app.sched.store().get(&name)?;
    let q = queue(&app)?;
    let b: RedriveBody = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_body",
            format!("the body must be {{\"request_ids\": [...]}} or {{\"all\": true}}: {e}"),
        )
    })?;
    if b.all != b.request_ids.is_empty() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_body",
            "name the dead letters to redrive (\"request_ids\") or say \"all\": true, not both",
        ));
    }
    let ids = (!b.all).then_some(b.request_ids);
    let n = q.redrive(&name, ids).await.map_err(store_error)?;
    Ok(Json(serde_json::json!({ "function": name, "redriven": n })))
}

/// `DELETE /api/v1/functions/NAME/dlq`: deletes the dead letters.
pub(crate) async fn purge(
    State(app): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    app.sched.store().get(&name)?;
    let q = queue(&app)?;
    let n = q.purge(&name).await.map_err(store_error)?;
    Ok(Json(serde_json::json!({ "function": name, "purged": n })))
}
