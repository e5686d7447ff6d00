//! Admin-only routes: API tokens and the audit trail.

use crate::AppState;
use crate::auth::{Role, check_token_name, new_token};
use crate::body::{JsonBody, Path, Query};
use crate::error::ApiError;
use crate::responses::{BadRequest, InvalidToken, TokenConflict, TokenNotFound, UnsupportedMediaType};
use crate::views::reply;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use cairn_store::{AuditRow, Store, TokenRow};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// A token to create.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    /// 1 to 64 characters, unique among live tokens, not starting with `tok_`.
    #[schema(example = "ci", min_length = 1, max_length = 64)]
    name: String,
    /// `viewer` reads; `operator` also starts and steers runs; `admin` also registers workflows
    /// and manages tokens.
    #[schema(pattern = "^(viewer|worker|operator|admin)$", example = "operator")]
    role: String,
}

/// A new token, with its secret: shown this once.
#[derive(Serialize, ToSchema)]
pub struct CreatedToken {
    #[schema(example = "tok_5f1c2a9e07b3d846")]
    id: String,
    name: String,
    role: String,
    /// The secret to send as `Authorization: Bearer <token>`. Only its hash is stored.
    #[schema(example = "cairn_3f9a0c1d2e4b5a6978c0d1e2f3a4b5c6d7e8f9a0b1c2d3e4")]
    token: String,
    note: &'static str,
}

/// Create an API token
///
/// The secret is in this answer only; only its SHA-256 is stored.
#[utoipa::path(
    post,
    path = "/v1/tokens",
    operation_id = "create_token",
    tag = "admin",
    request_body(content = NewToken, content_type = "application/json"),
    responses(
        (status = 201, description = "Created.", body = CreatedToken),
        (status = 400, response = BadRequest),
        (status = 409, response = TokenConflict),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, response = InvalidToken),
    ),
)]
pub async fn create_token<S: Store>(
    State(state): State<AppState<S>>,
    JsonBody(req, _): JsonBody<NewToken>,
) -> Result<Response, ApiError> {
    let role = Role::parse(&req.role).ok_or_else(|| {
        ApiError::unprocessable(
            "bad_role",
            format!("role '{}' is not one of viewer, worker, operator, admin", req.role),
        )
    })?;
    let name = check_token_name(&req.name).map_err(|m| ApiError::unprocessable("bad_name", m))?;
    let (secret, row) = new_token(name, role, cairn_engine::now_ms())
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    state.store.create_token(row.clone()).await?;
    let body = CreatedToken {
        id: row.id,
        name: row.name,
        role: row.role,
        token: secret,
        note: "this is the only time the token is shown; only its hash is stored",
    };
    Ok(reply(StatusCode::CREATED, &body))
}

#[derive(Serialize, ToSchema)]
pub struct TokenList {
    tokens: Vec<TokenRow>,
}

/// API tokens
///
/// Every token, revoked ones too: ids, names and roles, never secrets.
#[utoipa::path(
    get,
    path = "/v1/tokens",
    operation_id = "list_tokens",
    tag = "admin",
    responses((status = 200, description = "The tokens.", body = TokenList)),
)]
pub async fn list_tokens<S: Store>(State(state): State<AppState<S>>) -> Result<Response, ApiError> {
    Ok(reply(StatusCode::OK, &TokenList { tokens: state.store.tokens().await? }))
}

/// A token's id or name in the path.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct TokenPath {
    /// The token's id (`tok_…`), or its name when one live token has it.
    #[param(min_length = 1, example = "tok_5f1c2a9e07b3d846")]
    id: String,
}

/// A revoked token.
#[derive(Serialize, ToSchema)]
pub struct RevokedToken {
    /// What the request named (an id or a name).
    revoked: String,
    id: String,
    name: String,
}

/// Revoke a token
///
/// By id, or by name when one live token has it (a name several live tokens share is refused
/// with their ids: revoke by id).
#[utoipa::path(
    post,
    path = "/v1/tokens/{id}/revoke",
    operation_id = "revoke_token",
    tag = "admin",
    params(TokenPath),
    responses(
        (status = 200, description = "Revoked.", body = RevokedToken),
        (status = 400, response = BadRequest),
        (status = 404, response = TokenNotFound),
        (status = 409, response = TokenConflict),
    ),
)]
pub async fn revoke_token<S: Store>(
    State(state): State<AppState<S>>,
    Path(TokenPath { id }): Path<TokenPath>,
) -> Result<Response, ApiError> {
    let token = state.store.revoke_token(&id, cairn_engine::now_ms()).await?;
    Ok(reply(StatusCode::OK, &RevokedToken { revoked: id, id: token.id, name: token.name }))
}

#[derive(Deserialize, Default, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// At most this many rows (default 100).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 1000, example = 100)]
    limit: Option<usize>,
}

#[derive(Serialize, ToSchema)]
pub struct AuditList {
    audit: Vec<AuditRow>,
}

/// The audit trail
///
/// Mutating requests, and requests refused with 401 or 403, with who made them, newest first.
#[utoipa::path(
    get,
    path = "/v1/audit",
    operation_id = "list_audit",
    tag = "admin",
    params(AuditQuery),
    responses(
        (status = 200, description = "Audit rows, newest first.", body = AuditList),
        (status = 400, response = BadRequest),
    ),
)]
pub async fn audit<S: Store>(
    State(state): State<AppState<S>>,
    Query(q): Query<AuditQuery>,
) -> Result<Response, ApiError> {
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad_request("bad_query", format!("limit {limit} is out of range: use 1 to 1000")));
    }
    Ok(reply(StatusCode::OK, &AuditList { audit: state.store.audit_log(limit).await? }))
}
