//! `GET /v1/runs/{id}/context`: what each model call was given as context — the lineage ledgers
//! of a run's `context:` selections (see `cairn_engine::context`).

use crate::AppState;
use crate::body::{Path, Query};
use crate::error::ApiError;
use crate::responses::{BadRequest, StepNotFound};
use crate::runs::{RunPath, parse_run_id};
use crate::views::reply;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use cairn_store::Store;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

/// Which step's selections.
#[derive(Deserialize, Default, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ContextQuery {
    /// Only this step (its `for_each`/`loop` instances too).
    #[param(pattern = "^[a-z0-9_-]{1,64}$", example = "draft")]
    step: Option<String>,
}

/// A run's lineage ledgers, in the order they were recorded.
#[derive(Serialize, ToSchema)]
pub struct RunContext {
    run_id: String,
    /// Each `{step, call, attempt, at_ms, ledger}`; a ledger is `{method, tokenizer, query_sha256,
    /// query_tokens, max_tokens, used_tokens, observed, selected, rejected, candidates: [{ref,
    /// source, sha256, tokens, score, selected, why}]}` — digests and references, never the text.
    #[schema(value_type = Vec<Object>)]
    ledgers: Vec<Value>,
}

/// What the model saw
///
/// The context each `llm`/`agent` step with `context:` chose under its token budget: every
/// candidate observed, whether it was selected or why not (`over_budget`, `no_match`), its score,
/// tokens and digest.
#[utoipa::path(
    get,
    path = "/v1/runs/{id}/context",
    operation_id = "run_context",
    tag = "runs",
    params(RunPath, ContextQuery),
    responses(
        (status = 200, description = "The run's lineage ledgers.", body = RunContext),
        (status = 400, response = BadRequest),
        (status = 404, response = StepNotFound),
    ),
)]
pub async fn context<S: Store>(
    State(state): State<AppState<S>>,
    Path(RunPath { id }): Path<RunPath>,
    Query(q): Query<ContextQuery>,
) -> Result<Response, ApiError> {
    let run = parse_run_id(&id)?;
    state.store.get_run(&run).await?;
    if let Some(step) = &q.step {
        let steps = state.store.steps(&run).await?;
        let known = steps.iter().any(|s| s.step_id == *step || s.step_id.starts_with(&format!("{step}[")));
        if !known {
            return Err(ApiError::not_found("step_not_found", format!("run {id} has no step '{step}'")));
        }
    }
    let ledgers = cairn_engine::context::ledgers(&*state.store, &run, q.step.as_deref()).await?;
    Ok(reply(StatusCode::OK, &RunContext { run_id: run.to_string(), ledgers }))
}
