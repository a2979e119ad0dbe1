//! The management API of access keys (`/api/v1/keys`): issue one (its
//! secret is in that answer only), list them, revoke one. SigV4-signed
//! requests to the Lambda Invoke API are checked against them.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use lampyr_store::{KeyError, KeyInfo, KeyStore, NewKey};
use serde::Deserialize;

use crate::error::ApiError;
use crate::AppState;

fn store(app: &AppState) -> Result<Arc<KeyStore>, ApiError> {
    app.keys.clone().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "keys_unavailable",
            "this server keeps no access keys",
        )
    })
}

fn key_error(e: KeyError) -> ApiError {
    match e {
        KeyError::InvalidName(_) => {
            ApiError::new(StatusCode::BAD_REQUEST, "invalid_key_name", e.to_string())
        }
        KeyError::Sqlite(_) => ApiError::internal(e),
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct CreateKey {
    #[serde(default)]
    name: String,
}

/// `POST /api/v1/keys` with `{"name": "…"}` (optional).
pub(crate) async fn create(
    State(app): State<AppState>,
    body: Bytes,
) -> Result<(StatusCode, Json<NewKey>), ApiError> {
    let req: CreateKey = if body.is_empty() {
        CreateKey::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                format!("the body must be {{\"name\": \"…\"}}: {e}"),
            )
        })?
    };
    let keys = store(&app)?;
    let key = tokio::task::spawn_blocking(move || keys.create(&req.name))
        .await
        .map_err(ApiError::internal)?
        .map_err(key_error)?;
    Ok((StatusCode::CREATED, Json(key)))
}

/// `GET /api/v1/keys`: ids, names and creation times (no secrets).
pub(crate) async fn list(State(app): State<AppState>) -> Result<Json<Vec<KeyInfo>>, ApiError> {
    let keys = store(&app)?;
    let list = tokio::task::spawn_blocking(move || keys.list())
        .await
        .map_err(ApiError::internal)?
        .map_err(key_error)?;
    Ok(Json(list))
}

/// `DELETE /api/v1/keys/ID`.
pub(crate) async fn delete(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let keys = store(&app)?;
    let id2 = id.clone();
    let deleted = tokio::task::spawn_blocking(move || keys.delete(&id2))
        .await
        .map_err(ApiError::internal)?
        .map_err(key_error)?;
    if !deleted {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "key_not_found",
            format!("there is no access key {id}: list them with `lampyr keys ls`"),
        ));
    }
    Ok(Json(serde_json::json!({ "id": id, "deleted": true })))
}
