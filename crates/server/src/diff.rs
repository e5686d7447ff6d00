//! `GET /v1/runs/{id}/diff/{other}`: where two runs diverged (see `cairn_engine::diff`).

use crate::AppState;
use crate::body::Path;
use crate::error::ApiError;
use crate::responses::{BadRequest, RunNotFound};
use crate::runs::parse_run_id;
use crate::views::reply;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use cairn_store::Store;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

/// Two runs in the path.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct TwoRuns {
    /// The first run (`a`).
    #[param(pattern = r"^wf_[A-Za-z0-9_-]{1,64}$", example = "wf_01KBC6X8Y2S7J5W0Q3R4T5V6X7")]
    pub id: String,
    /// The run compared with it (`b`), e.g. its fork.
    #[param(pattern = r"^wf_[A-Za-z0-9_-]{1,64}$", example = "wf_01KBC6X8Y2S7J5W0Q3R4T5V6X8")]
    pub other: String,
}

/// Where two runs diverged.
#[derive(Serialize, ToSchema)]
pub struct RunDiffView {
    a: String,
    b: String,
    /// Each run's status, `[a, b]`.
    status: (String, String),
    /// The first step that differs (state, output hash or error class), in the order run `a`
    /// settled its steps; absent when they agree.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    first_divergence: Option<Value>,
    /// Every step: `{step, a: {status, output_hash, error_class, attempts, seq}, b: {…}, changed}`.
    #[schema(value_type = Vec<Object>)]
    steps: Vec<Value>,
    /// What each run's model calls spent, and b − a (`tokens`, `cost_usd`).
    #[schema(value_type = Object)]
    spend: Value,
}

/// Compare two runs
///
/// Where two runs diverged — a run and its fork, or two runs of one workflow: the first step
/// that settled differently, every step side by side, and the difference in tokens and cost.
#[utoipa::path(
    get,
    path = "/v1/runs/{id}/diff/{other}",
    operation_id = "diff_runs",
    tag = "runs",
    params(TwoRuns),
    responses(
        (status = 200, description = "The comparison.", body = RunDiffView),
        (status = 400, response = BadRequest),
        (status = 404, response = RunNotFound),
    ),
)]
pub async fn diff<S: Store>(
    State(state): State<AppState<S>>,
    Path(TwoRuns { id, other }): Path<TwoRuns>,
) -> Result<Response, ApiError> {
    let (a, b) = (parse_run_id(&id)?, parse_run_id(&other)?);
    let d = cairn_engine::diff::diff(&*state.store, &a, &b).await?;
    let json = |v: Result<Value, serde_json::Error>| v.unwrap_or_default();
    let view = RunDiffView {
        first_divergence: d.first_divergence.as_ref().map(|s| json(serde_json::to_value(s))),
        steps: d.steps.iter().map(|s| json(serde_json::to_value(s))).collect(),
        spend: json(serde_json::to_value(&d.spend)),
        a: d.a,
        b: d.b,
        status: d.status,
    };
    Ok(reply(StatusCode::OK, &view))
}
