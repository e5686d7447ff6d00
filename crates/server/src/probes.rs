//! `/healthz` and `/readyz`: for load balancers and orchestrators; public, and served on the
//! connections kept in reserve when the server is full.

use crate::AppState;
use crate::error::ApiError;
use crate::responses::{Internal, Unavailable};
use crate::views::reply;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use cairn_store::Store;
use serde::Serialize;
use utoipa::ToSchema;

#[derive(Serialize, ToSchema)]
pub struct Health {
    #[schema(pattern = "^ok$", example = "ok")]
    status: &'static str,
}

/// The process is up
#[utoipa::path(
    get,
    path = "/healthz",
    operation_id = "healthz",
    tag = "probes",
    responses((status = 200, description = "Up.", body = Health)),
)]
pub async fn healthz() -> Response {
    reply(StatusCode::OK, &Health { status: "ok" })
}

#[derive(Serialize, ToSchema)]
pub struct Ready {
    #[schema(pattern = "^ready$", example = "ready")]
    status: &'static str,
    /// Which database the server uses (no credentials).
    #[schema(example = "sqlite:/var/lib/cairn/cairn.db")]
    store: String,
}

/// The server can take work
///
/// The database answers, its schema is current and it takes writes. 503 otherwise (`not_ready`,
/// or a store error such as `disk_full`), and while the server shuts down (`draining`).
#[utoipa::path(
    get,
    path = "/readyz",
    operation_id = "readyz",
    tag = "probes",
    responses(
        (status = 200, description = "Ready.", body = Ready),
        (status = 500, response = Internal),
        (status = 503, response = Unavailable),
    ),
)]
pub async fn readyz<S: Store>(State(state): State<AppState<S>>) -> Response {
    if state.engine.is_draining() {
        return ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "draining", "the server is shutting down")
            .into_response();
    }
    if let Err(e) = state.store.ping().await {
        return ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_ready", e.to_string()).into_response();
    }
    // Reads may work while writes do not (a full disk): not ready to take work then.
    if let Some(e) = state.store.write_failure() {
        let mut error = ApiError::from(e);
        error.message = format!("the store cannot take writes: {}", error.message);
        return error.into_response();
    }
    reply(StatusCode::OK, &Ready { status: "ready", store: state.store.describe() })
}
