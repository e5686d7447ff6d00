//! Approval gates over HTTP: what waits for a person, and the decision.

use crate::AppState;
use crate::auth::{Actor, Role};
use crate::body::{JsonBody, Path};
use crate::error::ApiError;
use crate::responses::{BadRequest, InvalidDecision, RunConflict, RunNotFound, UnsupportedMediaType};
use crate::runs::{RunStepPath, parse_run_id, steer};
use crate::views::{SteeredRun, reply};
use axum::Extension;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use cairn_core::{Event, RunId};
use cairn_engine::{Control, EscalationChoice, WaitingApproval};
use cairn_store::Store;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

/// A person's answer to an approval gate or an escalated failure.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(examples(
    json!({"decision": "approve", "comment": "looks right"}),
    json!({"decision": "skip", "output": {"text": "written by hand"}}),
    json!({"decision": "retry", "budget": {"max_cost_usd": 2.5}}),
    json!({"decision": "approve", "args": {"method": "POST", "url": "https://api.example.com/notes", "body": {"text": "edited"}}}),
))]
pub struct Decision {
    /// `approve` or `reject` at an approval gate; `retry`, `skip` (with `output`) or `abort` for
    /// an escalated failure. (`approved` and `rejected` are accepted too.)
    #[schema(pattern = "^(approve|approved|reject|rejected|retry|skip|abort)$", example = "approve")]
    decision: String,
    /// Recorded with the decision.
    comment: Option<String>,
    /// With `skip` only: the output the step takes instead (any JSON).
    #[schema(value_type = Option<Value>)]
    output: Option<Value>,
    /// With `retry` only, for a step stopped by a budget (`budget_exceeded`): the budget's new
    /// limits.
    budget: Option<BudgetRaise>,
    /// With `approve` only, for a tool call waiting for approval: the arguments to call it with
    /// instead (checked against the tool's input schema; a misfit is 422 `invalid_args`).
    #[schema(value_type = Option<Object>)]
    args: Option<Value>,
    /// The request this decision answers: its `requested_at_ms` from `GET /v1/approvals`. When
    /// the step has asked again since (another call of an agent, a retried gate), the decision
    /// is refused (409 `stale_decision`) rather than answer a question its sender did not see.
    requested_at_ms: Option<i64>,
}

/// New limits for the budget a step stopped at; a limit not given stays as it was.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BudgetRaise {
    #[schema(minimum = 0)]
    max_cost_usd: Option<f64>,
    #[schema(minimum = 1)]
    max_tokens: Option<u64>,
}

/// A step that waits for a person.
#[derive(Serialize, ToSchema)]
pub struct ApprovalView {
    run_id: String,
    workflow: String,
    step: String,
    /// What the person is asked.
    prompt: String,
    /// Who may decide; empty means any operator (an admin always may).
    approvers: Vec<String>,
    requested_at_ms: i64,
    /// When the gate times out (its `on_deadline` applies), if it has a deadline.
    deadline_ms: Option<i64>,
    /// `approval` (a gate) or `escalation` (a failure a person must answer).
    #[schema(example = "approval")]
    kind: &'static str,
    /// The answers that apply (`approve`, `reject` / `retry`, `skip`, `abort`).
    decisions: &'static [&'static str],
    /// Where to POST the decision.
    #[schema(example = "/v1/runs/wf_01KBC6X8Y2S7J5W0Q3R4T5V6X7/approvals/review")]
    decide: String,
    /// For a tool call waiting inside the step: the call, tool, arguments (secrets redacted),
    /// effect class and why a person is asked.
    #[serde(skip_serializing_if = "Option::is_none")]
    call: Option<CallView>,
}

/// A tool call that waits for approval.
#[derive(Serialize, ToSchema)]
pub struct CallView {
    /// The call's position among the step's calls (`run/step/call-N`).
    call: u32,
    tool: String,
    #[schema(value_type = Object)]
    args: Value,
    #[schema(example = "write")]
    effect: String,
    reason: String,
}

impl From<WaitingApproval> for ApprovalView {
    fn from(w: WaitingApproval) -> ApprovalView {
        ApprovalView {
            decide: format!("/v1/runs/{}/approvals/{}", w.run_id, path_segment(&w.step)),
            run_id: w.run_id,
            workflow: w.workflow,
            step: w.step,
            prompt: w.prompt,
            approvers: w.approvers,
            requested_at_ms: w.requested_at_ms,
            deadline_ms: w.deadline_ms,
            kind: w.kind,
            decisions: w.decisions,
            call: w.call.map(|c| CallView {
                call: c.call,
                tool: c.tool,
                args: c.args,
                effect: c.effect,
                reason: c.reason,
            }),
        }
    }
}

/// `s` as one URL path segment: an instance's step id (`rounds#2`, `fetch[3]`) keeps its `#`
/// and brackets as `%23`, `%5B`, `%5D`.
fn path_segment(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect()
}

#[derive(Serialize, ToSchema)]
pub struct ApprovalList {
    approvals: Vec<ApprovalView>,
}

/// Who may decide the step's latest approval request (empty: any operator); `None` if the
/// step never asked (the engine then refuses the decision with the reason).
/// The step's latest request for a decision: who may decide it, and when it was asked.
async fn latest_request<S: Store>(
    state: &AppState<S>,
    id: &RunId,
    step: &str,
) -> Result<Option<(Vec<String>, i64)>, ApiError> {
    let events = state.store.events(id).await?;
    Ok(events.iter().rev().find_map(|e| match &e.event {
        Event::ApprovalRequested { step: s, approvers, .. } if s.as_str() == step => Some((approvers.clone(), e.at_ms)),
        _ => None,
    }))
}

/// Decide an approval gate or an escalation
///
/// Repeating a decision already made is answered as unchanged (200), not refused. A gate with
/// `approvers` may be decided only by them (or an admin).
#[utoipa::path(
    post,
    path = "/v1/runs/{id}/approvals/{step}",
    operation_id = "decide_approval",
    tag = "approvals",
    params(RunStepPath),
    request_body(content = Decision, content_type = "application/json"),
    responses(
        (status = 200, description = "Applied (or the same decision again: `delivery` says which).", body = SteeredRun),
        (status = 202, description = "Accepted; the process driving the run applies it when the run is next driven.", body = SteeredRun),
        (status = 400, response = BadRequest),
        (status = 403, response = crate::responses::Forbidden),
        (status = 404, response = RunNotFound),
        (status = 409, response = RunConflict),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, response = InvalidDecision),
    ),
)]
pub async fn decide<S: Store>(
    State(state): State<AppState<S>>,
    Extension(actor): Extension<Actor>,
    Path(RunStepPath { id, step }): Path<RunStepPath>,
    JsonBody(body, _): JsonBody<Decision>,
) -> Result<Response, ApiError> {
    let raise = body.budget.map(|b| cairn_engine::Raise { max_cost_usd: b.max_cost_usd, max_tokens: b.max_tokens });
    if raise.is_some() && body.decision != "retry" {
        return Err(ApiError::unprocessable("unexpected_budget", "`budget` goes only with `retry`"));
    }
    if body.args.is_some() && !matches!(body.decision.as_str(), "approve" | "approved") {
        return Err(ApiError::unprocessable("unexpected_args", "`args` (edited arguments) go only with `approve`"));
    }
    let (approve, escalation) = match (body.decision.as_str(), body.output) {
        ("approve" | "approved", None) => (true, None),
        ("reject" | "rejected", None) => (false, None),
        ("retry", None) => (true, Some(EscalationChoice::Retry { raise })),
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
    let latest = latest_request(&state, &id, &step).await?;
    if let Some(seen) = body.requested_at_ms
        && latest.as_ref().is_some_and(|(_, at)| *at != seen)
    {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "stale_decision",
            format!(
                "step '{step}' has asked again since the request you answered (asked at {seen}); read it again with GET /v1/approvals"
            ),
        ));
    }
    if let Some((approvers, _)) = latest
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
    let control =
        Control::Decide { step, approve, by: Some(actor.name), comment: body.comment, escalation, args: body.args };
    steer(&state, &id, control).await
}

/// What waits for a person
///
/// Every step of an unfinished run that waits for a decision (a gate or an escalated failure),
/// oldest request first.
#[utoipa::path(
    get,
    path = "/v1/approvals",
    operation_id = "list_approvals",
    tag = "approvals",
    responses((status = 200, description = "The waiting steps.", body = ApprovalList)),
)]
pub async fn list<S: Store>(State(state): State<AppState<S>>) -> Result<Response, ApiError> {
    let approvals = cairn_engine::waiting_approvals(&*state.store).await?.into_iter().map(ApprovalView::from).collect();
    Ok(reply(StatusCode::OK, &ApprovalList { approvals }))
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_instance_step_is_one_path_segment() {
        assert_eq!(super::path_segment("review"), "review");
        assert_eq!(super::path_segment("rounds#2"), "rounds%232");
        assert_eq!(super::path_segment("fetch[3]"), "fetch%5B3%5D");
    }
}
