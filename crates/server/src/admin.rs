//! Admin-only routes: API tokens and the audit trail.

use crate::AppState;
use crate::auth::{Role, check_token_name, new_token};
use crate::body::{JsonBody, Path, Query};
use crate::error::ApiError;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use cairn_store::Store;
use serde::Deserialize;
use serde_json::json;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    name: String,
    role: String,
}

pub async fn create_token<S: Store>(
    State(state): State<AppState<S>>,
    JsonBody(req, _): JsonBody<NewToken>,
) -> Result<Response, ApiError> {
    let role = Role::parse(&req.role).ok_or_else(|| {
        ApiError::unprocessable("bad_role", format!("role '{}' is not one of viewer, operator, admin", req.role))
    })?;
    let name = check_token_name(&req.name).map_err(|m| ApiError::unprocessable("bad_name", m))?;
    let (secret, row) = new_token(name, role, cairn_engine::now_ms())
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    state.store.create_token(row.clone()).await?;
    let body = json!({"id": row.id, "name": row.name, "role": row.role, "token": secret,
        "note": "this is the only time the token is shown; only its hash is stored"});
    Ok((StatusCode::CREATED, axum::Json(body)).into_response())
}

pub async fn list_tokens<S: Store>(State(state): State<AppState<S>>) -> Result<Response, ApiError> {
    Ok(axum::Json(json!({"tokens": state.store.tokens().await?})).into_response())
}

/// Revokes by id, or by name when one live token has it.
pub async fn revoke_token<S: Store>(
    State(state): State<AppState<S>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let token = state.store.revoke_token(&id, cairn_engine::now_ms()).await?;
    Ok(axum::Json(json!({"revoked": id, "id": token.id, "name": token.name})).into_response())
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    limit: Option<usize>,
}

pub async fn audit<S: Store>(
    State(state): State<AppState<S>>,
    Query(q): Query<AuditQuery>,
) -> Result<Response, ApiError> {
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    Ok(axum::Json(json!({"audit": state.store.audit_log(limit).await?})).into_response())
}
