//! `/api/v1/functions/NAME/versions` and `/aliases`: a function's versions
//! (list, delete) and its aliases (list, set, delete, roll back).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use lampyr_api::versions::{
    AliasInfo, AliasList, AliasSet, AliasTarget, CanaryInfo, VersionInfo, VersionList,
};
use lampyr_store::{rfc3339, AliasRecord};

use crate::error::ApiError;
use crate::AppState;

/// An alias as the API shows it.
pub(crate) fn alias_info(a: &AliasRecord) -> AliasInfo {
    AliasInfo {
        alias: a.alias.clone(),
        target: a.target,
        min_instances: a.min_instances,
        updated_at: rfc3339(a.updated_at),
        previous: a.history.last().copied(),
        canary: a.canary.as_ref().map(|c| CanaryInfo {
            from: c.from,
            to: c.to,
            weight: c.weight,
            started_at: rfc3339(c.started_at()),
            decide_at: rfc3339(c.decide_at()),
            threshold: c.threshold,
        }),
        note: a.note.clone(),
    }
}

/// A version number given in a path.
fn version_param(function: &str, v: &str) -> Result<u64, ApiError> {
    v.parse::<u64>().ok().filter(|n| *n > 0).ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_version",
            format!(
                "\"{v}\" is not a version of function '{function}': versions are numbered from 1"
            ),
        )
    })
}

pub(crate) async fn list_versions(
    State(app): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<VersionList>, ApiError> {
    let store = app.sched.store().clone();
    let n = name.clone();
    let (current, versions, aliases) = tokio::task::spawn_blocking(move || {
        Ok::<_, lampyr_store::StoreError>((store.get(&n)?, store.versions(&n)?, store.aliases(&n)?))
    })
    .await
    .map_err(ApiError::internal)??;
    let counts = app.sched.version_counts(&name);
    let versions = versions
        .into_iter()
        .map(|v| VersionInfo {
            instances: counts
                .iter()
                .find(|(n, _)| *n == v.version)
                .map(|(_, c)| *c)
                .unwrap_or_default(),
            latest: v.version == current.current.version,
            aliases: aliases
                .iter()
                .filter(|a| a.versions().any(|n| n == v.version))
                .map(|a| a.alias.clone())
                .collect(),
            version: v.version,
            created_at: rfc3339(v.created_at),
            code_sha256: v.code_sha256,
            code_size: v.code_size,
            description: v.description,
        })
        .collect();
    Ok(Json(VersionList {
        function: name,
        versions,
    }))
}

pub(crate) async fn delete_version(
    State(app): State<AppState>,
    Path((name, version)): Path<(String, String)>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let version = version_param(&name, &version)?;
    app.sched.delete_version(&name, version).await?;
    Ok(Json(
        serde_json::json!({ "function": name, "version": version, "deleted": true }),
    ))
}

pub(crate) async fn list_aliases(
    State(app): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<AliasList>, ApiError> {
    let aliases = app.sched.aliases(&name).await?;
    Ok(Json(AliasList {
        function: name,
        aliases: aliases.iter().map(alias_info).collect(),
    }))
}

pub(crate) async fn get_alias(
    State(app): State<AppState>,
    Path((name, alias)): Path<(String, String)>,
) -> Result<Json<AliasInfo>, ApiError> {
    let store = app.sched.store().clone();
    let a = tokio::task::spawn_blocking(move || {
        store.get(&name)?;
        store.alias(&name, &alias)
    })
    .await
    .map_err(ApiError::internal)??;
    Ok(Json(alias_info(&a)))
}

pub(crate) async fn set_alias(
    State(app): State<AppState>,
    Path((name, alias)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Result<Json<AliasInfo>, ApiError> {
    let set: AliasSet = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_alias",
            format!("alias '{alias}' of function '{name}': the body is not {{\"version\": N, \"weight\": [V, W], \"min_instances\": N}}: {e}"),
        )
    })?;
    let target = AliasTarget {
        version: set.version,
        weight: set.weight,
    };
    let a = app
        .sched
        .set_alias(&name, &alias, target, set.min_instances)
        .await?;
    Ok(Json(alias_info(&a)))
}

pub(crate) async fn delete_alias(
    State(app): State<AppState>,
    Path((name, alias)): Path<(String, String)>,
) -> Result<Json<serde_json::Value>, ApiError> {
    app.sched.delete_alias(&name, &alias).await?;
    Ok(Json(
        serde_json::json!({ "function": name, "alias": alias, "deleted": true }),
    ))
}

pub(crate) async fn rollback_alias(
    State(app): State<AppState>,
    Path((name, alias)): Path<(String, String)>,
) -> Result<Json<AliasInfo>, ApiError> {
    let a = app.sched.rollback(&name, Some(&alias)).await?;
    Ok(Json(alias_info(&a)))
}

/// `POST /functions/NAME/rollback`: the alias the HTTP trigger serves, or
/// the function's only one.
pub(crate) async fn rollback(
    State(app): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<AliasInfo>, ApiError> {
    let a = app.sched.rollback(&name, None).await?;
    Ok(Json(alias_info(&a)))
}
