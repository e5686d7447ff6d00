//! `/v1/workflows`: a registry of versioned definitions. Runs pin the exact definition they
//! started with, so registering a new version never changes a run in flight.

use crate::AppState;
use crate::body::{Path, Query, content_type, read_body};
use crate::definition_schema::DefinitionFile;
use crate::error::ApiError;
use crate::responses::{BadRequest, InvalidDefinition, UnsupportedMediaType, VersionExists, WorkflowNotFound};
use crate::views::reply;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use cairn_core::payload::Payload;
use cairn_store::Store;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use utoipa::{IntoParams, ToSchema};

/// A registered definition version.
#[derive(Serialize, ToSchema)]
pub struct Registered {
    #[schema(example = "summary-and-email")]
    name: String,
    #[schema(example = 1)]
    version: u32,
    /// False when this exact definition was already registered at this version.
    created: bool,
    /// How many steps it has.
    steps: usize,
    /// Valid but probably a mistake, e.g. a literal credential every viewer of the definition
    /// can read: `FILE:LINE:COL: step `ID`: MESSAGE`. The definition is registered anyway.
    warnings: Vec<String>,
}

/// Register a workflow version
///
/// JSON, or YAML with `Content-Type: application/yaml` (or `text/yaml`, `application/x-yaml`).
/// Registering the same definition again at its version changes nothing (200); other content at
/// a registered version is refused (409): bump `version`. The answer lists `warnings` (literal
/// credentials and the like) without refusing the definition.
#[utoipa::path(
    post,
    path = "/v1/workflows",
    operation_id = "register_workflow",
    tag = "workflows",
    request_body(content(
        (DefinitionFile = "application/json"),
        (DefinitionFile = "application/yaml"),
    )),
    responses(
        (status = 201, description = "Registered; `Location` is the workflow.", body = Registered,
         headers(("Location" = String, description = "The workflow: `/v1/workflows/{name}`."))),
        (status = 200, description = "This exact definition was already registered at this version.", body = Registered,
         headers(("Location" = String, description = "The workflow: `/v1/workflows/{name}`."))),
        (status = 400, response = BadRequest),
        (status = 409, response = VersionExists),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, response = InvalidDefinition),
    ),
)]
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
    let (definition, warnings) =
        cairn_core::validate::parse_definition_with_warnings(text, origin, state.engine.kinds());
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
    let body = Registered {
        name: definition.name.clone(),
        version: definition.version,
        created,
        steps: definition.steps.len(),
        warnings: warnings.iter().map(|w| w.to_string()).collect(),
    };
    let mut response = reply(status, &body);
    if let Ok(location) = HeaderValue::from_str(&format!("/v1/workflows/{}", definition.name)) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

#[derive(Serialize, ToSchema)]
pub struct WorkflowVersion {
    version: u32,
    created_at_ms: i64,
}

/// A registered workflow and its versions.
#[derive(Serialize, ToSchema)]
pub struct WorkflowSummary {
    name: String,
    /// The newest version.
    latest: Option<u32>,
    /// Newest first.
    versions: Vec<WorkflowVersion>,
}

#[derive(Serialize, ToSchema)]
pub struct WorkflowList {
    workflows: Vec<WorkflowSummary>,
}

/// Registered workflows
///
/// Every registered workflow with its versions, by name.
#[utoipa::path(
    get,
    path = "/v1/workflows",
    operation_id = "list_workflows",
    tag = "workflows",
    responses((status = 200, description = "The registered workflows.", body = WorkflowList)),
)]
pub async fn list<S: Store>(State(state): State<AppState<S>>) -> Result<Response, ApiError> {
    let mut by_name: BTreeMap<String, Vec<WorkflowVersion>> = BTreeMap::new();
    for w in state.store.workflows().await? {
        by_name.entry(w.name).or_default().push(WorkflowVersion { version: w.version, created_at_ms: w.created_at_ms });
    }
    let workflows = by_name
        .into_iter()
        .map(|(name, versions)| WorkflowSummary { name, latest: versions.first().map(|v| v.version), versions })
        .collect();
    Ok(reply(StatusCode::OK, &WorkflowList { workflows }))
}

/// A workflow's name in the path.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct WorkflowPath {
    /// The workflow's name.
    #[param(pattern = r"^[A-Za-z0-9_.-]{1,64}$", example = "summary-and-email")]
    name: String,
}

#[derive(Deserialize, Default, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct VersionQuery {
    /// This version instead of the newest.
    #[param(minimum = 1)]
    version: Option<u32>,
}

/// A registered definition and the versions registered under its name.
#[derive(Serialize, ToSchema)]
pub struct WorkflowDetail {
    name: String,
    version: u32,
    /// Every registered version, newest first.
    versions: Vec<u32>,
    created_at_ms: i64,
    /// The definition as compiled and stored: the file's fields, with durations in milliseconds
    /// and defaults filled in.
    #[schema(value_type = Object, additional_properties = true)]
    definition: Value,
}

/// A registered workflow
///
/// The newest version, or `?version=N`.
#[utoipa::path(
    get,
    path = "/v1/workflows/{name}",
    operation_id = "get_workflow",
    tag = "workflows",
    params(WorkflowPath, VersionQuery),
    responses(
        (status = 200, description = "The definition.", body = WorkflowDetail),
        (status = 400, response = BadRequest),
        (status = 404, response = WorkflowNotFound),
    ),
)]
pub async fn get<S: Store>(
    State(state): State<AppState<S>>,
    Path(WorkflowPath { name }): Path<WorkflowPath>,
    Query(q): Query<VersionQuery>,
) -> Result<Response, ApiError> {
    let (row, definition) = state.store.workflow(&name, q.version).await?;
    let versions: Vec<u32> =
        state.store.workflows().await?.into_iter().filter(|w| w.name == name).map(|w| w.version).collect();
    let body =
        WorkflowDetail { name: row.name, version: row.version, versions, created_at_ms: row.created_at_ms, definition };
    Ok(reply(StatusCode::OK, &body))
}
