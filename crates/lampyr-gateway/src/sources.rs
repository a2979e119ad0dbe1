//! `POST /sources/KIND/FUNCTION/TRIGGER`: the webhooks of event-source
//! triggers (see `lampyr_triggers::webhook`). The edge passes the request
//! to the trigger registered for `KIND` and sends its answer.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use lampyr_triggers::webhook::WebhookRequest;

use crate::error::ApiError;
use crate::AppState;

pub(crate) async fn receive(
    State(app): State<AppState>,
    Path((kind, function, trigger)): Path<(String, String, String)>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    // A body over the limit is refused before it is read, saying the limit
    // and where it is set.
    let body = match body {
        Ok(b) => b,
        Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            let limit = app.limits.max_request_body;
            return ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!(
                    "the notification body for {kind} trigger '{trigger}' of function '{function}' is over the limit of {limit} bytes ({:.1} MB), `max_request_body` in the server configuration's [limits]: send fewer records per notification, or raise the limit",
                    limit as f64 / 1e6
                ),
            )
            .into_response();
        }
        Err(e) => return ApiError::new(e.status(), "bad_request", e.body_text()).into_response(),
    };
    let Some(hook) = app
        .webhooks
        .iter()
        .find(|(k, _)| *k == kind)
        .map(|(_, h)| h.clone())
    else {
        return ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no event source of type '{kind}' takes webhooks here: storage triggers are at /sources/storage/FUNCTION/TRIGGER"),
        )
        .into_response();
    };
    let reply = hook
        .receive(WebhookRequest {
            function,
            trigger,
            authorization: headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
            query: uri.query().map(str::to_string),
            body: body.to_vec(),
        })
        .await;
    let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp = (status, reply.body).into_response();
    let h = resp.headers_mut();
    h.insert("content-type", HeaderValue::from_static("application/json"));
    if let Some(secs) = reply.retry_after {
        h.insert("retry-after", HeaderValue::from(secs));
    }
    if status == StatusCode::UNAUTHORIZED {
        h.insert("www-authenticate", HeaderValue::from_static("Bearer"));
    }
    resp
}
