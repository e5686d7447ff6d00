//! `/v1/workflows`: a registry of versioned definitions. Runs pin the exact definition they
//! started with, so registering a new version never changes a run in flight.

use crate::AppState;
use crate::body::{Path, Query, content_type, read_body};
use crate::error::ApiError;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use cairn_core::payload::Payload;
use cairn_store::Store;
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::BTreeMap;

/// Accepts a definition as JSON, or as YAML with `Content-Type: application/yaml`. The answer
/// lists `warnings` (literal credentials and the like) without refusing the definition.
pub async fn register<S: Store>(State(state): State<AppState<S>>, req: Request) -> Result<Response, ApiError> {
    let ct = content_type(&req).unwrap_or_else(|| "application/json".into());
    let yaml = ct.contains("yaml");
    if !yaml && !ct.starts_with("application/json") {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!("send the definition as application/json or application/yaml, not {ct}"),
        ));
    }
    let bytes = read_body(req, &()).await?;
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| ApiError::bad_request("malformed_body", "the definition is not UTF-8 text"))?;
    if text.trim().is_empty() {
        return Err(ApiError::bad_request("empty_body", "the request body is empty: send a workflow definition"));
    }
    let origin = if yaml { "<request.yaml>" } else { "<request.json>" };
    let (definition, warnings) = cairn_core::validate::parse_definition_with_warnings(text, origin);
    let definition = definition.map_err(|problems| {
        ApiError::unprocessable(
            "invalid_definition",
            format!("the workflow definition has {} problem(s); see details", problems.len()),
        )
        .with_details(json!(problems.iter().map(|p| p.to_string()).collect::<Vec<_>>()))
    })?;
    let value = serde_json::to_value(&definition)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    let created = state
        .store
        .put_workflow(&definition.name, definition.version, Payload::of(&value), cairn_engine::now_ms())
        .await?;
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    let body = json!({
        "name": definition.name,
        "version": definition.version,
        "created": created,
        "steps": definition.steps.len(),
        // Valid but probably a mistake, e.g. a literal credential every viewer of the
        // definition can read: `FILE:LINE:COL: step `ID`: MESSAGE`.
        "warnings": warnings.iter().map(|w| w.to_string()).collect::<Vec<_>>(),
    });
    let mut response = (status, axum::Json(body)).into_response();
    if let Ok(location) = HeaderValue::from_str(&format!("/v1/workflows/{}", definition.name)) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

pub async fn list<S: Store>(State(state): State<AppState<S>>) -> Result<Response, ApiError> {
    let mut by_name: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for w in state.store.workflows().await? {
        by_name
            .entry(w.name.clone())
            .or_default()
            .push(json!({"version": w.version, "created_at_ms": w.created_at_ms}));
    }
    let workflows: Vec<Value> = by_name
        .into_iter()
        .map(|(name, versions)| json!({"name": name, "latest": versions.first().map(|v| v["version"].clone()), "versions": versions}))
        .collect();
    Ok(axum::Json(json!({"workflows": workflows})).into_response())
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct VersionQuery {
    version: Option<u32>,
}

pub async fn get<S: Store>(
    State(state): State<AppState<S>>,
    Path(name): Path<String>,
    Query(q): Query<VersionQuery>,
) -> Result<Response, ApiError> {
    let (row, definition) = state.store.workflow(&name, q.version).await?;
    let versions: Vec<u32> =
        state.store.workflows().await?.into_iter().filter(|w| w.name == name).map(|w| w.version).collect();
    Ok(axum::Json(json!({
        "name": row.name,
        "version": row.version,
        "versions": versions,
        "created_at_ms": row.created_at_ms,
        "definition": definition,
    }))
    .into_response())
}
