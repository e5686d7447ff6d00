//! Approval gates over HTTP: what waits for a person, and the decision.

use crate::AppState;
use crate::auth::{Actor, Role};
use crate::body::{JsonBody, Path};
use crate::error::ApiError;
use crate::runs::{parse_run_id, steer};
use axum::Extension;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use cairn_core::{Event, RunId};
use cairn_engine::{Control, EscalationChoice};
use cairn_store::Store;
use serde::Deserialize;
use serde_json::{Value, json};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Decision {
    /// `approve` or `reject` at an approval gate; `retry`, `skip` (with `output`) or `abort` for
    /// an escalated failure.
    decision: String,
    comment: Option<String>,
    /// The output a skipped step takes.
    output: Option<Value>,
}

/// Who may decide the step's latest approval request (empty: any operator); `None` if the
/// step never asked (the engine then refuses the decision with the reason).
async fn approvers<S: Store>(state: &AppState<S>, id: &RunId, step: &str) -> Result<Option<Vec<String>>, ApiError> {
    let events = state.store.events(id).await?;
    Ok(events.iter().rev().find_map(|e| match &e.event {
        Event::ApprovalRequested { step: s, approvers, .. } if s.as_str() == step => Some(approvers.clone()),
        _ => None,
    }))
}

pub async fn decide<S: Store>(
    State(state): State<AppState<S>>,
    Extension(actor): Extension<Actor>,
    Path((id, step)): Path<(String, String)>,
    JsonBody(body, _): JsonBody<Decision>,
) -> Result<Response, ApiError> {
    let (approve, escalation) = match (body.decision.as_str(), body.output) {
        ("approve" | "approved", None) => (true, None),
        ("reject" | "rejected", None) => (false, None),
        ("retry", None) => (true, Some(EscalationChoice::Retry)),
        ("skip", Some(output)) => (true, Some(EscalationChoice::Skip { output })),
        ("skip", None) => {
            return Err(ApiError::unprocessable("missing_output", "`skip` needs the step's `output` (any JSON)"));
        }
        ("abort", None) => (false, Some(EscalationChoice::Abort)),
        (_, Some(_)) => {
            return Err(ApiError::unprocessable("unexpected_output", "`output` goes only with `skip`"));
        }
        (other, None) => {
            return Err(ApiError::unprocessable(
                "bad_decision",
                format!("decision '{other}' is not approve, reject (a gate) or retry, skip, abort (an escalation)"),
            ));
        }
    };
    let id = parse_run_id(&id)?;
    if let Some(approvers) = approvers(&state, &id, &step).await?
        && !approvers.is_empty()
        && !approvers.contains(&actor.name)
        && actor.role < Role::Admin
    {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "not_an_approver",
            format!("step '{step}' may be decided by {} (or an admin), not '{}'", approvers.join(", "), actor.name),
        ));
    }
    let control = Control::Decide { step, approve, by: Some(actor.name), comment: body.comment, escalation };
    steer(&state, &id, control).await
}

/// Every step waiting for a person, oldest request first.
pub async fn list<S: Store>(State(state): State<AppState<S>>) -> Result<Response, ApiError> {
    let waiting: Vec<Value> = cairn_engine::waiting_approvals(&*state.store)
        .await?
        .into_iter()
        .map(|w| {
            let decide = format!("/v1/runs/{}/approvals/{}", w.run_id, w.step);
            let mut v = json!(w);
            v["decide"] = json!(decide);
            v
        })
        .collect();
    Ok(axum::Json(json!({"approvals": waiting})).into_response())
}
