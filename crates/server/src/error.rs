//! One error type for every handler: each becomes `{"error": {"code", "message", "details"}}`
//! with a status that says whose fault it is (4xx: the request's; 5xx: ours or the database's).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::{Value, json};
use utoipa::ToSchema;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub details: Value,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, code, message: message.into(), details: Value::Null }
    }
    pub fn with_details(mut self, details: Value) -> Self {
        self.details = details;
        self
    }
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }
    pub fn unprocessable(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
    }
    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, message)
    }
    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code, message)
    }
}

/// The body of every answer that is not a success.
#[derive(Serialize, ToSchema)]
#[schema(as = Error)]
pub struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable, for programs (`run_not_found`, `malformed_json` ...).
    #[schema(example = "run_not_found")]
    code: &'static str,
    /// For people: what happened, where, and how to fix it.
    message: String,
    /// Structured context (a line and column, the ids involved, what was expected), or `null`.
    #[schema(value_type = Value)]
    details: Value,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody { error: ErrorDetail { code: self.code, message: self.message, details: self.details } };
        crate::views::reply(self.status, &body)
    }
}

impl From<cairn_store::Error> for ApiError {
    fn from(e: cairn_store::Error) -> Self {
        use cairn_store::Error as E;
        let message = e.to_string();
        match e {
            E::NotFound(_) => ApiError::not_found("run_not_found", message),
            E::WorkflowNotFound(_) => ApiError::not_found("workflow_not_found", message),
            E::VersionExists { .. } => ApiError::conflict("version_exists", message),
            E::TokenNameTaken { name, id } => {
                ApiError::conflict("token_name_taken", message).with_details(json!({"name": name, "id": id}))
            }
            E::AmbiguousTokenName { name, ids } => {
                ApiError::conflict("ambiguous_token_name", message).with_details(json!({"name": name, "ids": ids}))
            }
            E::TokenNotFound(_) => ApiError::not_found("token_not_found", message),
            E::IdempotencyKey { run_id, same_request, .. } => {
                let code = if same_request { "idempotency_in_progress" } else { "idempotency_key_reused" };
                ApiError::unprocessable(code, message).with_details(json!({"run_id": run_id}))
            }
            E::Conflict { .. } => ApiError::conflict("run_conflict", format!("{message} (retry the request)")),
            E::Locked { .. } => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "database_busy", message),
            E::Closed => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "shutting_down", message),
            E::Unavailable(_) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "database_unavailable", message),
            E::Full(_) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "disk_full", message),
            E::Contention(_) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "database_busy", message),
            _ => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "store_error", message),
        }
    }
}

impl From<cairn_engine::Error> for ApiError {
    fn from(e: cairn_engine::Error) -> Self {
        use cairn_engine::Error as E;
        match e {
            E::Store(s) => s.into(),
            E::Illegal(m) => ApiError::conflict("illegal_transition", m),
            // Edited arguments that do not fit the tool's schema: the request is wrong, not late.
            E::Refused { code: "invalid_args", message } => ApiError::unprocessable("invalid_args", message),
            E::Refused { code, message } => ApiError::conflict(code, message),
            E::Invalid(m) => ApiError::unprocessable("invalid_request", m),
            E::Owned(_) | E::Lost { .. } => ApiError::conflict("run_busy", e.to_string()),
            E::Journal { .. } => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "journal_error", e.to_string()),
        }
    }
}
