//! What waits for a person: approval gates and escalated failures, oldest request first. One
//! listing for the API (`GET /v1/approvals`) and the CLI (`cairn approvals`).

use cairn_core::{Event, RunId};
use cairn_store::{Journal, RunQuery};
use serde::Serialize;

/// A step waiting for a decision.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct WaitingApproval {
    pub run_id: String,
    pub workflow: String,
    pub step: String,
    pub prompt: String,
    /// Who may decide; empty means any operator.
    pub approvers: Vec<String>,
    pub requested_at_ms: i64,
    pub deadline_ms: Option<i64>,
    /// `approval` (a gate) or `escalation` (a failure a person must answer).
    pub kind: &'static str,
    /// The answers that apply.
    pub decisions: &'static [&'static str],
    /// For a tool call waiting inside the step: which call, tool, arguments, effect and why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub call: Option<cairn_core::event::CallApproval>,
}

/// Every step of an unfinished run that waits for a person, oldest request first.
pub async fn waiting_approvals<S: Journal + ?Sized>(store: &S) -> Result<Vec<WaitingApproval>, cairn_store::Error> {
    let mut waiting = Vec::new();
    // A paused or executing run can still have a gate open in one branch.
    for status in ["WAITING", "EXECUTING", "PAUSED"] {
        let mut query = RunQuery { status: Some(status.into()), limit: 500, ..Default::default() };
        loop {
            let runs = store.list_runs(query.clone()).await?;
            for run in &runs {
                let Ok(id) = RunId::parse(&run.id) else { continue };
                let steps = store.steps(&id).await?;
                let gated: Vec<&str> =
                    steps.iter().filter(|s| s.status == "WAITING").map(|s| s.step_id.as_str()).collect();
                if gated.is_empty() {
                    continue;
                }
                // The latest request of each gated step (a step can ask again after a retry).
                let mut latest: Vec<WaitingApproval> = Vec::new();
                for e in store.events(&id).await? {
                    // Decided, or past its gate and in a durable wait: no longer asking.
                    if let Event::ApprovalDecided { step, .. } | Event::WaitStarted { step, .. } = &e.event {
                        latest.retain(|w| w.step != step.as_str());
                    }
                    if let Event::ApprovalRequested { step, prompt, approvers, deadline_ms, escalation, call } = e.event
                        && gated.contains(&step.as_str())
                    {
                        latest.retain(|w| w.step != step.as_str());
                        latest.push(WaitingApproval {
                            run_id: run.id.clone(),
                            workflow: run.workflow.clone(),
                            step: step.to_string(),
                            prompt,
                            approvers,
                            requested_at_ms: e.at_ms,
                            deadline_ms,
                            kind: if escalation { "escalation" } else { "approval" },
                            decisions: if escalation { &["retry", "skip", "abort"] } else { &["approve", "reject"] },
                            call: call.map(|c| *c),
                        });
                    }
                }
                waiting.extend(latest);
            }
            match runs.last() {
                Some(last) if runs.len() == query.limit => query.after = Some((last.created_at_ms, last.id.clone())),
                _ => break,
            }
        }
    }
    waiting.sort_by(|a, b| (a.requested_at_ms, &a.run_id, &a.step).cmp(&(b.requested_at_ms, &b.run_id, &b.step)));
    Ok(waiting)
}
