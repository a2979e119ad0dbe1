//! The HTTP edge of lampyr, one listener ([`HttpTrigger`], the HTTP trigger
//! of the trigger layer) serving:
//!
//! * the HTTP trigger, `ANY /fn/NAME[/REST]` (`trigger.rs`): a request
//!   becomes a payload-2.0 event and a `lampyr_scheduler::Call`, the answer
//!   becomes the response (the proxy-result rules); a streamed reply is
//!   written to the client as it arrives (`streaming.rs`);
//! * the management API under `/api/v1`, bearer-token protected, with
//!   `/healthz` and `/metrics` (`api.rs`);
//! * the dashboard under `/ui`;
//! * Lambda's Invoke API, `POST /2015-03-31/functions/NAME/invocations`
//!   (`lambda/`), for AWS SDKs and the AWS CLI, and its
//!   `InvokeWithResponseStream` (`lambda/stream.rs`).
//!
//! Every error leaving this crate is a status code plus the stable body
//! `{ "error": { "code", "message" } }` (see [`error`]).
#![forbid(unsafe_code)]

mod api;
mod edge;
pub mod error;
mod events;
mod keys;
mod lambda;
pub mod listen;
mod sources;
mod streaming;
mod trigger;
mod ui;
mod versions;

pub use edge::HttpTrigger;

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, delete, get, post};
use axum::Router;
use lampyr_api::DoctorReport;
use lampyr_scheduler::Scheduler;

use error::ApiError;

/// Size limits at the edge.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest request body an HTTP trigger accepts.
    pub max_request_body: usize,
    /// Largest result a function may return.
    pub max_response_body: usize,
    /// Largest code package a deploy accepts.
    pub max_package: usize,
    /// How long a request body may go without a byte arriving.
    pub body_timeout: std::time::Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_request_body: 6 * 1000 * 1000,
            max_response_body: 6 * 1000 * 1000,
            max_package: 64 << 20,
            body_timeout: std::time::Duration::from_secs(30),
        }
    }
}

/// Everything a request handler can reach.
#[derive(Clone)]
pub struct AppState(Arc<App>);

/// What every handler shares, behind one reference count: axum clones the
/// state for every request.
pub struct App {
    pub(crate) sched: Scheduler,
    pub(crate) token: String,
    pub(crate) public_url: String,
    pub(crate) limits: Limits,
    pub(crate) doctor: DoctorReport,
    /// Set when the server begins to shut down: live log streams end.
    pub(crate) stopping: tokio::sync::watch::Sender<bool>,
    /// The last rendering of `/metrics`, and when it was made.
    metrics_cache: parking_lot::Mutex<Option<(std::time::Instant, Bytes)>>,
    /// The asynchronous event queue, where the server has one.
    pub(crate) events: Option<Arc<lampyr_async::EventQueue>>,
    /// Event-source triggers served at `/sources/KIND/...`, by kind.
    pub(crate) webhooks: Vec<(&'static str, Arc<dyn lampyr_triggers::webhook::Webhook>)>,
    /// The event sources' states, once the triggers are assembled.
    sources: std::sync::OnceLock<lampyr_triggers::Statuses>,
    /// Access keys for SigV4-signed calls (the Lambda Invoke API).
    pub(crate) keys: Option<Arc<lampyr_store::KeyStore>>,
}

impl std::ops::Deref for AppState {
    type Target = App;

    fn deref(&self) -> &App {
        &self.0
    }
}

impl AppState {
    pub fn new(
        sched: Scheduler,
        token: String,
        public_url: String,
        limits: Limits,
        doctor: DoctorReport,
    ) -> Self {
        AppState(Arc::new(App {
            sched,
            token,
            public_url: public_url.trim_end_matches('/').to_string(),
            limits,
            doctor,
            stopping: tokio::sync::watch::Sender::new(false),
            metrics_cache: parking_lot::Mutex::new(None),
            events: None,
            webhooks: Vec::new(),
            sources: std::sync::OnceLock::new(),
            keys: None,
        }))
    }

    /// The same state with the asynchronous event queue (for dead letters,
    /// event states and timers). Call before the state is shared.
    pub fn with_events(mut self, events: Arc<lampyr_async::EventQueue>) -> Self {
        match Arc::get_mut(&mut self.0) {
            Some(app) => app.events = Some(events),
            None => panic!("AppState::with_events called after the state was shared"),
        }
        self
    }

    /// The same state with access keys: `/api/v1/keys` manages them, and
    /// the Lambda Invoke API takes requests signed with them. Call before
    /// the state is shared.
    pub fn with_keys(mut self, keys: Arc<lampyr_store::KeyStore>) -> Self {
        match Arc::get_mut(&mut self.0) {
            Some(app) => app.keys = Some(keys),
            None => panic!("AppState::with_keys called after the state was shared"),
        }
        self
    }

    /// The same state with `hook` serving `POST /sources/KIND/FUNCTION/TRIGGER`
    /// for `kind`. Call before the state is shared.
    pub fn with_webhook(
        mut self,
        kind: &'static str,
        hook: Arc<dyn lampyr_triggers::webhook::Webhook>,
    ) -> Self {
        match Arc::get_mut(&mut self.0) {
            Some(app) => app.webhooks.push((kind, hook)),
            None => panic!("AppState::with_webhook called after the state was shared"),
        }
        self
    }

    /// Where `GET /api/v1/functions/NAME`, the dashboard and `/metrics`
    /// read how the function's event sources are doing (set once).
    pub fn set_sources(&self, statuses: lampyr_triggers::Statuses) {
        let _ = self.sources.set(statuses);
    }

    pub(crate) fn sources_of(&self, function: &str) -> Vec<lampyr_api::sources::SourceStatus> {
        self.sources
            .get()
            .map(|s| s.of(function))
            .unwrap_or_default()
    }

    /// The function service behind the edge.
    pub fn scheduler(&self) -> &Scheduler {
        &self.sched
    }

    pub(crate) fn url_of(&self, name: &str) -> String {
        format!("{}/fn/{name}", self.public_url)
    }
}

/// The full router.
pub fn router(app: AppState) -> Router {
    let api = Router::new()
        .route("/functions", get(api::list_functions))
        .route(
            "/functions/{name}",
            get(api::get_function)
                .put(api::deploy)
                .delete(api::delete_function),
        )
        .route("/functions/{name}/invoke", post(api::invoke_raw))
        .route("/functions/{name}/logs", get(api::function_logs))
        .route(
            "/functions/{name}/invocations",
            get(api::function_invocations),
        )
        .route("/functions/{name}/stats", get(api::function_stats))
        .route("/functions/{name}/series", get(api::function_series))
        .route("/invocations/{request_id}", get(api::get_invocation))
        .route("/functions/{name}/events", get(events::list_events))
        .route(
            "/functions/{name}/dlq",
            get(events::dead_letters).delete(events::purge),
        )
        .route("/functions/{name}/dlq/redrive", post(events::redrive))
        .route(
            "/functions/{name}/dlq/{request_id}",
            get(events::dead_letter),
        )
        .route("/keys", get(keys::list).post(keys::create))
        .route("/keys/{id}", axum::routing::delete(keys::delete))
        .route("/functions/{name}/versions", get(versions::list_versions))
        .route(
            "/functions/{name}/versions/{version}",
            delete(versions::delete_version),
        )
        .route("/functions/{name}/aliases", get(versions::list_aliases))
        .route(
            "/functions/{name}/aliases/{alias}",
            get(versions::get_alias)
                .put(versions::set_alias)
                .delete(versions::delete_alias),
        )
        .route(
            "/functions/{name}/aliases/{alias}/rollback",
            post(versions::rollback_alias),
        )
        .route("/functions/{name}/rollback", post(versions::rollback))
        .route("/doctor", get(api::doctor))
        .route("/pools", get(api::pools))
        .layer(DefaultBodyLimit::max(app.limits.max_package))
        .route_layer(middleware::from_fn_with_state(app.clone(), require_token));
    Router::new()
        .route("/fn/{name}", any(trigger::invoke_root))
        .route("/fn/{name}/", any(trigger::invoke_root))
        .route("/fn/{name}/{*rest}", any(trigger::invoke_rest))
        .route("/", get(|| async { axum::response::Redirect::to("/ui") }))
        .route(
            "/sources/{kind}/{function}/{trigger}",
            post(sources::receive).layer(DefaultBodyLimit::max(app.limits.max_request_body)),
        )
        .route(
            "/2015-03-31/functions/{function}/invocations",
            post(lambda::invoke::<false>).layer(DefaultBodyLimit::max(app.limits.max_request_body)),
        )
        .route(
            "/2021-11-15/functions/{function}/response-streaming-invocations",
            post(lambda::invoke::<true>).layer(DefaultBodyLimit::max(app.limits.max_request_body)),
        )
        .route("/healthz", get(api::health))
        .route("/metrics", get(api::metrics))
        .route("/ui", get(ui::index))
        .route("/ui/", get(ui::index))
        .route("/ui/app.js", get(ui::app_js))
        .route("/ui/style.css", get(ui::style_css))
        .nest("/api/v1", api)
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such endpoint: functions are at /fn/NAME, the management API at /api/v1",
            )
        })
        .with_state(app)
}

pub(crate) use lampyr_scheduler::new_request_id;

/// The bearer token in `Authorization`, if any.
pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get("authorization")?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

pub(crate) use lampyr_scheduler::token_eq;

async fn require_token(State(app): State<AppState>, req: Request, next: Next) -> Response {
    match bearer(req.headers()) {
        Some(t) if token_eq(t, &app.token) => next.run(req).await,
        Some(_) => ApiError::unauthorized("the bearer token is wrong: the CLI reads it from the data directory, or set LAMPYR_TOKEN").into_response(),
        None => ApiError::unauthorized("the management API needs `Authorization: Bearer TOKEN`: the CLI reads it from the data directory, or set LAMPYR_TOKEN").into_response(),
    }
}
