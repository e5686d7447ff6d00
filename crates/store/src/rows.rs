//! The rows a store keeps: projections of a run's state, written with its events.

use cairn_core::payload::Payload;
use cairn_core::state::RunState;
use cairn_core::{Envelope, RunId};
use serde::Serialize;

/// One event, serialized off the writer's thread.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    pub seq: u64,
    pub at_ms: i64,
    pub kind: &'static str,
    pub schema: u16,
    pub step: Option<String>,
    /// The event as JSON (tagged by `type`).
    pub body: String,
}

impl StoredEvent {
    pub fn from_envelope(env: &Envelope) -> StoredEvent {
        StoredEvent {
            seq: env.seq,
            at_ms: env.at_ms,
            kind: env.event.kind(),
            schema: env.schema,
            step: env.event.step().map(|s| s.to_string()),
            body: serde_json::to_string(&env.event).unwrap_or_else(|_| "{}".into()),
        }
    }
}

/// The queryable row of a run.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct RunRow {
    pub id: String,
    pub workflow: String,
    pub definition_version: Option<u32>,
    pub status: String,
    pub goal: Option<String>,
    pub current_step: Option<String>,
    pub failure_class: Option<String>,
    pub failure_message: Option<String>,
    pub failed_step: Option<String>,
    pub last_seq: u64,
    pub owner: Option<String>,
    pub lease_expires_at_ms: Option<i64>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    pub finished_at_ms: Option<i64>,
    pub definition_hash: Option<String>,
    pub output_hash: Option<String>,
    pub artifact: Option<String>,
    /// When a worker should next look at this run (ready work now, or the earliest retry
    /// timer); `None` while nothing can happen without an outside event.
    pub wake_at_ms: Option<i64>,
    /// Finished runs are deleted after this time; `None` uses the store's default retention.
    pub retain_until_ms: Option<i64>,
}

impl RunRow {
    pub fn from_state(state: &RunState) -> RunRow {
        let goal = match &state.source {
            Some(cairn_core::event::RunSource::Goal { goal }) => Some(goal.clone()),
            _ => None,
        };
        RunRow {
            id: state.run_id.to_string(),
            workflow: state.workflow.clone(),
            definition_version: state.definition.as_ref().map(|d| d.version),
            status: state.status.as_str().to_string(),
            goal,
            current_step: state.current_step().map(|s| s.to_string()),
            failure_class: state.failure.as_ref().map(|f| f.class.as_str().to_string()),
            failure_message: state.failure.as_ref().map(|f| f.message.clone()),
            failed_step: state.failed_step.as_ref().map(|s| s.to_string()),
            last_seq: state.last_seq,
            owner: None,
            lease_expires_at_ms: None,
            created_at_ms: state.created_at_ms,
            updated_at_ms: state.updated_at_ms,
            finished_at_ms: state.finished_at_ms,
            definition_hash: state.definition_ref.as_ref().map(|r| r.hash.clone()),
            output_hash: state.output.as_ref().map(|r| r.hash.clone()),
            artifact: state.definition.as_ref().and_then(|d| d.artifact.clone()),
            wake_at_ms: wake_at(state),
            retain_until_ms: state
                .finished_at_ms
                .zip(state.definition.as_ref().and_then(|d| d.retention_ms))
                .map(|(at, keep)| at.saturating_add(keep as i64)),
        }
    }
}

/// When the run next needs a worker, derived from its state: now if it has work to do, else its
/// earliest pending timer (`RunState::pending_timers`, the list `resume` re-arms), else never
/// (it waits for a person or a signal).
fn wake_at(state: &RunState) -> Option<i64> {
    use cairn_core::{RunStatus, StepStatus};
    let next_timer = || state.pending_timers().iter().map(|t| t.at_ms).min();
    match state.status {
        s if s.is_terminal() => None,
        RunStatus::Paused => None,
        RunStatus::Pending | RunStatus::Planning => Some(state.updated_at_ms),
        // Undos run one at a time: one running, or the next to start, or one waiting on its
        // retry timer.
        RunStatus::Compensating => next_timer().or(Some(state.updated_at_ms)),
        _ => {
            let busy = state.steps.iter().any(|s| matches!(s.status, StepStatus::Ready | StepStatus::Running));
            if busy { Some(state.updated_at_ms) } else { next_timer() }
        }
    }
}

/// The queryable row of a step.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct StepRow {
    pub step_id: String,
    pub position: u32,
    pub kind: String,
    pub status: String,
    pub attempts: u32,
    pub not_before_ms: Option<i64>,
    pub started_at_ms: Option<i64>,
    pub finished_at_ms: Option<i64>,
    pub busy_ms: u64,
    pub error_class: Option<String>,
    pub error_message: Option<String>,
    pub output_hash: Option<String>,
    pub skip_reason: Option<String>,
}

impl StepRow {
    /// Step rows for the given positions (or all steps when `only` is None).
    pub fn from_state(state: &RunState, only: Option<&[usize]>) -> Vec<StepRow> {
        let Some(def) = &state.definition else { return Vec::new() };
        let make = |i: usize| {
            let s = &state.steps[i];
            StepRow {
                step_id: s.id.to_string(),
                position: i as u32,
                kind: def.steps[i].kind.clone(),
                status: s.status.as_str().to_string(),
                attempts: s.attempts,
                not_before_ms: s.not_before_ms,
                started_at_ms: s.first_started_at_ms,
                finished_at_ms: s.finished_at_ms,
                busy_ms: s.busy_ms,
                error_class: s.last_failure.as_ref().map(|f| f.class.as_str().to_string()),
                error_message: s.last_failure.as_ref().map(|f| f.message.clone()),
                output_hash: s.output.as_ref().map(|r| r.hash.clone()),
                skip_reason: s.skip_reason.clone(),
            }
        };
        match only {
            Some(idx) => idx.iter().copied().filter(|&i| i < state.steps.len()).map(make).collect(),
            None => (0..state.steps.len()).map(make).collect(),
        }
    }
}

/// A per-attempt log line.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct LogLine {
    pub step_id: String,
    pub attempt: u32,
    pub at_ms: i64,
    pub level: String,
    pub message: String,
}

/// One journaled call made inside a step's attempt (`run/step/call-N`): what it was, the hash of
/// its request, and how it ended. A call that succeeded is final: an attempt that runs again gets
/// its result back instead of calling again. One that failed is made again by the next attempt.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct CallRow {
    /// The step (`STEP.compensate` for its compensation).
    pub step_id: String,
    /// 1-based position among the step's calls.
    pub n: u32,
    /// What kind of call (`http`, later `model`, `tool` …).
    pub kind: String,
    /// SHA-256 of the request as recorded (secrets redacted).
    pub request_hash: String,
    /// `ok`, `failed`, or `reserved` (a budgeted call sent but not settled yet: its worst case is
    /// held against the budgets).
    pub outcome: String,
    /// The result's payload hash (`ok`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result_hash: Option<String>,
    /// Why it failed (`failed`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The attempt that made it.
    pub attempt: u32,
    pub duration_ms: u64,
    pub at_ms: i64,
    /// A model call's tokens and cost.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cost: Option<crate::CallCost>,
    /// A budgeted call's worst case, reserved before it was sent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reserved: Option<crate::Reservation>,
}

impl CallRow {
    /// The call's effect-log key, sent to the far side as its idempotency key.
    pub fn key(run_id: &str, step: &str, n: u32) -> String {
        format!("{run_id}/{step}/call-{n}")
    }
}

/// Makes `POST /v1/runs` with an `Idempotency-Key` create at most one run per key.
#[derive(Debug, Clone)]
pub struct IdempotencyKey {
    pub key: String,
    /// Hash of the request body, so a key reused for a different request is refused.
    pub request_hash: String,
}

/// Everything one commit writes for one run.
#[derive(Debug, Clone)]
pub struct RunWrite {
    pub run_id: RunId,
    /// The journal position the writer built on; 0 creates the run.
    pub expected_seq: u64,
    pub owner: String,
    pub lease_until_ms: i64,
    pub events: Vec<StoredEvent>,
    pub payloads: Vec<Payload>,
    pub run: RunRow,
    pub steps: Vec<StepRow>,
    pub logs: Vec<LogLine>,
    /// Give up ownership with this write (runs created for other workers, idle runs).
    pub release: bool,
    /// Only on the creating write.
    pub idempotency: Option<IdempotencyKey>,
    /// Operator requests this write answers (applied, unchanged or refused), recorded with the
    /// events that apply them so that each request takes effect exactly once.
    pub requests: Vec<RequestOutcome>,
    /// Refuse the write (`Error::RequestsWaiting`, nothing written) if a request it does not
    /// answer waits in the run's inbox: set on the write that ends a run, which must answer
    /// every request accepted before it, without reading the inbox first.
    pub answers_every_request: bool,
    /// Requests for other runs, accepted in the same transaction as this write (a child run's
    /// end for its parent, a parent's cancellation for its children), so that none is lost to
    /// a crash between the two. One for a finished or unknown run is dropped.
    pub notify: Vec<Notify>,
}

impl RunWrite {
    /// Lets go of a run someone else may now take up: released and not finished. A finished
    /// run is never claimed (nor are its requests: it answered every one), so its release
    /// wakes nobody.
    pub fn hands_out_work(&self) -> bool {
        self.release && !cairn_core::RunStatus::parse(&self.run.status).is_some_and(|s| s.is_terminal())
    }
}

/// A request for another run, sent with a write.
#[derive(Debug, Clone, PartialEq)]
pub struct Notify {
    pub run_id: String,
    /// The request, as `Inbox::push_inbox` takes it.
    pub body: String,
}

/// A registered workflow definition version.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct WorkflowRow {
    pub name: String,
    pub version: u32,
    pub definition_hash: String,
    pub created_at_ms: i64,
}

/// An API token (only its hash is stored).
#[derive(Debug, Clone, Serialize, PartialEq)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct TokenRow {
    pub id: String,
    pub name: String,
    pub role: String,
    #[serde(skip)]
    pub hash: String,
    pub created_at_ms: i64,
    pub revoked_at_ms: Option<i64>,
}

/// One mutating request, recorded with who made it.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct AuditRow {
    pub at_ms: i64,
    pub actor: String,
    pub method: String,
    pub path: String,
    pub status: u16,
    pub run_id: Option<String>,
}

/// An operator's request for a run (cancel, pause, signal, a decision ...), waiting in the run's
/// inbox. Its id is the order of acceptance: a run's requests are applied in id order.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct InboxRow {
    pub id: i64,
    pub run_id: String,
    pub body: String,
}

/// What became of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum RequestState {
    /// Accepted, not yet applied.
    Pending,
    /// Applied: an event in the run's journal records it.
    Applied,
    /// Nothing to do: the run already was as asked (the same decision twice).
    Unchanged,
    /// Not legal for the run when its turn came; `message` says why.
    Refused,
}

impl RequestState {
    pub fn as_str(self) -> &'static str {
        match self {
            RequestState::Pending => "pending",
            RequestState::Applied => "applied",
            RequestState::Unchanged => "unchanged",
            RequestState::Refused => "refused",
        }
    }

    pub fn parse(s: &str) -> Option<RequestState> {
        [RequestState::Pending, RequestState::Applied, RequestState::Unchanged, RequestState::Refused]
            .into_iter()
            .find(|r| r.as_str() == s)
    }
}

/// A request's answer, written in the same transaction as the events that apply it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RequestOutcome {
    pub id: i64,
    pub state: RequestState,
    /// A stable code for refusals and unchanged answers (`already_paused`, `already_decided` ...).
    pub code: Option<String>,
    pub message: Option<String>,
    /// The journal position of the event that recorded an applied request.
    pub journal_seq: Option<u64>,
    pub decided_at_ms: Option<i64>,
}

/// A request as the inbox keeps it: what was asked, when, and what became of it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RequestRow {
    pub id: i64,
    pub run_id: String,
    /// The request as JSON (see `cairn_engine::Control`).
    pub body: String,
    pub accepted_at_ms: i64,
    #[serde(flatten)]
    pub outcome: RequestOutcome,
}

/// A process that works runs for any client (`cairn serve`, `cairn worker`), seen recently.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct WorkerRow {
    pub owner: String,
    /// `serve` or `worker`.
    pub role: String,
    pub started_at_ms: i64,
    pub seen_at_ms: i64,
}

/// What is in flight now: see [`crate::Journal::active_work`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ActiveWork {
    /// Unfinished runs by state.
    pub runs_by_status: Vec<(String, u64)>,
    /// Unfinished runs still held by an owner whose lease has expired: its process died or
    /// hangs, and no other process has taken them over yet.
    pub expired_leases: u64,
    /// Steps READY, RETRY_WAIT or RUNNING in executing or compensating runs.
    pub steps: Vec<ActiveStep>,
}

/// A step that is ready, waiting to retry, or running.
#[derive(Debug, Clone, PartialEq)]
pub struct ActiveStep {
    pub run_id: String,
    pub step_id: String,
    pub status: String,
    /// When a retry may start (RETRY_WAIT).
    pub not_before_ms: Option<i64>,
    /// The run's last commit (for a READY step, when it became ready at the latest).
    pub run_updated_at_ms: i64,
    /// When the attempt in flight started (RUNNING).
    pub attempt_started_at_ms: Option<i64>,
    /// The run's pinned definition (a payload), for the step's timeout.
    pub definition_hash: Option<String>,
}

/// An event in the all-runs feed, with its global position.
#[derive(Debug, Clone)]
pub struct FeedItem {
    pub gid: i64,
    pub run_id: String,
    pub event: Envelope,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_released_unfinished_run_hands_out_work() {
        let id = RunId::from_parts(1, 7);
        let run = RunRow::from_state(&cairn_core::state::RunState::new(id.clone()));
        let write = |status: &str, release: bool| RunWrite {
            run_id: id.clone(),
            expected_seq: 1,
            owner: "o".into(),
            lease_until_ms: 0,
            events: Vec::new(),
            payloads: Vec::new(),
            run: RunRow { status: status.into(), ..run.clone() },
            steps: Vec::new(),
            logs: Vec::new(),
            release,
            idempotency: None,
            requests: Vec::new(),
            answers_every_request: false,
            notify: Vec::new(),
        };
        for s in cairn_core::RunStatus::ALL {
            assert_eq!(write(s.as_str(), true).hands_out_work(), !s.is_terminal(), "{s:?} released");
            assert!(!write(s.as_str(), false).hands_out_work(), "{s:?} held");
        }
    }
}
