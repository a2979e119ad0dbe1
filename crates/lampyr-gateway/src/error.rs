//! Errors at the HTTP edge: every failure becomes a status code and the
//! stable body `{ "error": { "code", "message" } }`.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use lampyr_api::ErrorBody;
use lampyr_scheduler::SchedulerError;
use lampyr_store::{PackageError, StoreError};

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Seconds after which a retry may succeed (`Retry-After`).
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// Says, in `Retry-After`, when a retry may succeed.
    pub fn retry_after(mut self, after: std::time::Duration) -> Self {
        self.retry_after = Some(after.as_secs_f64().ceil().max(1.0) as u64);
        self
    }

    pub fn not_found(name: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "function_not_found",
            format!("function '{name}' does not exist: deploy it with `lampyr deploy DIR`, or list functions with `lampyr ls`"),
        )
    }

    pub fn unauthorized(what: &str) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", what.to_string())
    }

    pub fn internal(e: impl std::fmt::Display) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::to_vec(&ErrorBody::new(self.code, self.message))
            .expect("error body serialises");
        let mut resp = (self.status, body).into_response();
        resp.headers_mut()
            .insert("content-type", HeaderValue::from_static("application/json"));
        if let Some(secs) = self.retry_after {
            resp.headers_mut()
                .insert("retry-after", HeaderValue::from(secs));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut()
                .insert("www-authenticate", HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

impl From<SchedulerError> for ApiError {
    fn from(e: SchedulerError) -> Self {
        ApiError::from(&e)
    }
}

impl From<&SchedulerError> for ApiError {
    fn from(e: &SchedulerError) -> Self {
        let msg = e.to_string();
        match e {
            SchedulerError::NotFound(name) | SchedulerError::Deleted(name) => {
                ApiError::not_found(name)
            }
            SchedulerError::Unauthorized { .. } => ApiError::unauthorized(&msg),
            SchedulerError::BadQualifier { .. } => {
                ApiError::new(StatusCode::BAD_REQUEST, "invalid_qualifier", msg)
            }
            SchedulerError::AliasRequired { .. } => {
                ApiError::new(StatusCode::BAD_REQUEST, "alias_required", msg)
            }
            SchedulerError::NoTrigger { .. } => {
                ApiError::new(StatusCode::NOT_FOUND, "no_trigger", msg)
            }
            SchedulerError::QueueFull { .. } | SchedulerError::QueueTimeout { .. } => {
                // Instances free up as invocations end: soon, as a rule.
                ApiError::new(StatusCode::TOO_MANY_REQUESTS, "throttled", msg)
                    .retry_after(std::time::Duration::from_secs(1))
            }
            SchedulerError::NetworkUnavailable { .. } => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "network_unavailable", msg)
            }
            SchedulerError::RuntimeUnavailable { .. } => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "runtime_unavailable", msg)
            }
            SchedulerError::StartFailed { .. } => {
                ApiError::new(StatusCode::BAD_GATEWAY, "start_failed", msg)
            }
            SchedulerError::InitFailed {
                function, retry_in, ..
            } => {
                let e = ApiError::new(
                    StatusCode::BAD_GATEWAY,
                    "init_error",
                    format!("{msg} (see `lampyr logs {function}`)"),
                );
                match retry_in {
                    Some(d) => e.retry_after(*d),
                    None => e,
                }
            }
            SchedulerError::LoadCheckFailed {
                function, version, ..
            } => {
                let kept = if *version > 1 {
                    format!("the current version of '{function}' keeps serving")
                } else {
                    "nothing was deployed".to_string()
                };
                ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "load_failed",
                    format!("{msg}\nThe deploy was refused and {kept}. Fix the code, or deploy with --no-verify if its initialisation needs what only a request brings."),
                )
            }
            SchedulerError::Store(e) => e.into(),
            SchedulerError::Internal(_) => ApiError::internal(msg),
            SchedulerError::AsyncUnavailable(_) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "async_unavailable", msg)
            }
            SchedulerError::EventTooLarge { .. } => {
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "event_too_large", msg)
            }
            SchedulerError::EventQueueFull { .. } => {
                ApiError::new(StatusCode::TOO_MANY_REQUESTS, "event_queue_full", msg)
                    .retry_after(std::time::Duration::from_secs(5))
            }
            SchedulerError::EventStore { .. } => ApiError::internal(msg),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        ApiError::from(&e)
    }
}

impl From<&StoreError> for ApiError {
    fn from(e: &StoreError) -> Self {
        let msg = e.to_string();
        if e.is_no_space() {
            return ApiError::new(
                StatusCode::INSUFFICIENT_STORAGE,
                "insufficient_storage",
                format!("the server's data directory is out of disk space ({msg}): nothing of this request was kept; free some space and try again"),
            );
        }
        match e {
            StoreError::NotFound(name) => ApiError::not_found(name),
            StoreError::Manifest(_) => {
                ApiError::new(StatusCode::BAD_REQUEST, "invalid_manifest", msg)
            }
            StoreError::NameMismatch { .. } => {
                ApiError::new(StatusCode::BAD_REQUEST, "name_mismatch", msg)
            }
            StoreError::Package(PackageError::TooLarge { .. }) => {
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "package_too_large", msg)
            }
            StoreError::Package(PackageError::Io { .. }) => ApiError::internal(msg),
            StoreError::Package(_) => {
                ApiError::new(StatusCode::BAD_REQUEST, "invalid_package", msg)
            }
            StoreError::Sqlite(_) | StoreError::Io { .. } | StoreError::Corrupt(..) => {
                ApiError::internal(msg)
            }
            StoreError::VersionNotFound { .. } => {
                ApiError::new(StatusCode::NOT_FOUND, "version_not_found", msg)
            }
            StoreError::AliasNotFound { .. } => {
                ApiError::new(StatusCode::NOT_FOUND, "alias_not_found", msg)
            }
            StoreError::VersionInUse { .. } => {
                ApiError::new(StatusCode::CONFLICT, "version_in_use", msg)
            }
            StoreError::InvalidAlias { .. } => {
                ApiError::new(StatusCode::BAD_REQUEST, "invalid_alias", msg)
            }
            StoreError::InvalidWeight { .. } => {
                ApiError::new(StatusCode::BAD_REQUEST, "invalid_weight", msg)
            }
        }
    }
}
