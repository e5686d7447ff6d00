//! Operator requests (cancel, pause, unpause, signal, decisions, migration): what they are, the
//! checks that refuse them with a reason an operator can act on, and how they were answered.
//!
//! A request is accepted into its run's inbox (the store orders a run's requests by acceptance)
//! and answered by whoever drives the run, in that order, in the same commit as the event that
//! records it — so each request takes effect exactly once, whichever process applies it.

use crate::Error;
use cairn_core::event::Event;
use cairn_core::payload::Payload;
use cairn_core::state::RunState;
use cairn_core::{Definition, RunId, RunStatus};
use cairn_store::{RequestOutcome, RequestState};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// An operator's request to a run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "request", rename_all = "snake_case")]
pub enum Control {
    Cancel {
        reason: String,
        by: Option<String>,
    },
    Pause {
        by: Option<String>,
    },
    Unpause {
        by: Option<String>,
    },
    Signal {
        name: String,
        payload: Value,
        by: Option<String>,
    },
    /// Approve or reject a step waiting at an approval gate, or answer an escalated failure.
    Decide {
        step: String,
        approve: bool,
        by: Option<String>,
        comment: Option<String>,
        #[serde(default)]
        escalation: Option<EscalationChoice>,
        /// Approve a tool call with these arguments instead of the asked ones (checked against
        /// the tool's input schema).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        args: Option<Value>,
    },
    /// Move the run to another version of its definition (a compiled definition as JSON).
    Migrate {
        definition: Value,
        by: Option<String>,
    },
    /// A child run of a `subworkflow` step ended (sent by the engine, with the child's final
    /// write): its output, or why it failed (or could not start).
    ChildEnded {
        step: String,
        attempt: u32,
        child: String,
        #[serde(default)]
        output: Option<Value>,
        #[serde(default)]
        failure: Option<cairn_core::event::Failure>,
    },
}

/// An answer to an escalated failure.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "do", rename_all = "snake_case")]
pub enum EscalationChoice {
    /// Try again; for a step stopped by a budget, with the limits given raised.
    Retry {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        raise: Option<Raise>,
    },
    Skip {
        output: Value,
    },
    Abort,
}

/// New limits for the budget a step crossed.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct Raise {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_cost_usd: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u64>,
}

/// How a request was answered.
#[derive(Debug, Clone, PartialEq)]
pub enum Delivery {
    /// Applied: the event at `journal_seq` records it.
    Applied { request: i64, journal_seq: Option<u64> },
    /// Nothing to do: the run already was as asked (the same decision twice). `request` is
    /// `None` when the run had finished (nothing was queued).
    Unchanged { request: Option<i64>, code: String, message: String },
    /// Accepted but not yet applied when the wait ran out: the process driving the run (`owner`)
    /// has not answered. It stays queued and is applied in order when the run is next driven.
    Queued { request: i64, owner: Option<String> },
}

impl Delivery {
    pub fn request(&self) -> Option<i64> {
        match self {
            Delivery::Applied { request, .. } | Delivery::Queued { request, .. } => Some(*request),
            Delivery::Unchanged { request, .. } => *request,
        }
    }

    /// A request's recorded answer as a delivery, or the refusal as an error.
    pub(crate) fn from_outcome(o: RequestOutcome) -> Result<Option<Delivery>, Error> {
        let code = o.code.unwrap_or_default();
        let message = o.message.unwrap_or_default();
        Ok(Some(match o.state {
            RequestState::Pending => return Ok(None),
            RequestState::Applied => Delivery::Applied { request: o.id, journal_seq: o.journal_seq },
            RequestState::Unchanged => Delivery::Unchanged { request: Some(o.id), code, message },
            RequestState::Refused => return Err(Error::Refused { code: static_code(&code), message }),
        }))
    }
}

/// The refusal codes, as the API reports them.
const CODES: &[&str] = &[
    "run_finished",
    "run_compensating",
    "already_paused",
    "not_paused",
    "not_pausable",
    "no_such_step",
    "not_waiting",
    "already_decided",
    "wrong_decision",
    "invalid_request",
    "illegal_transition",
];

fn static_code(code: &str) -> &'static str {
    CODES.iter().copied().find(|c| *c == code).unwrap_or("illegal_transition")
}

/// A signal's name: what conditions read as `signals.NAME`.
pub fn check_signal_name(name: &str) -> Result<(), String> {
    let valid = !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.');
    if valid { Ok(()) } else { Err(format!("signal name '{name}' must be 1 to 64 letters, digits, '_', '-' or '.'")) }
}

impl Control {
    /// What the request does, in a word (`pause`, `approve` ...), for messages.
    pub fn verb(&self) -> &'static str {
        match self {
            Control::Cancel { .. } => "cancel",
            Control::Pause { .. } => "pause",
            Control::Unpause { .. } => "unpause",
            Control::Signal { .. } => "signal",
            Control::Decide { escalation: Some(EscalationChoice::Retry { .. }), .. } => "retry",
            Control::Decide { escalation: Some(EscalationChoice::Skip { .. }), .. } => "skip",
            Control::Decide { escalation: Some(EscalationChoice::Abort), .. } => "abort",
            Control::Decide { approve: true, .. } => "approve",
            Control::Decide { approve: false, .. } => "reject",
            Control::Migrate { .. } => "migrate",
            Control::ChildEnded { .. } => "child_ended",
        }
    }

    /// Checks what can be checked without the run (the same rules for the CLI and the API).
    pub fn validate(&self) -> Result<(), Error> {
        match self {
            Control::Signal { name, .. } => check_signal_name(name).map_err(Error::Invalid),
            Control::Decide { step, .. } if step.trim().is_empty() => {
                Err(Error::Invalid("the step to decide is empty".into()))
            }
            _ => Ok(()),
        }
    }

    /// The event that records this request against the run's current state.
    pub(crate) fn into_event(self, state: &RunState) -> Result<(Event, Option<(Payload, Value)>), Error> {
        Ok(match self {
            Control::Cancel { reason, by } => (Event::RunCancelled { reason, by }, None),
            Control::Pause { by } => (Event::RunPaused { by }, None),
            Control::Unpause { by } => (Event::RunUnpaused { by }, None),
            Control::Decide { step, approve, by, comment, escalation, args } => {
                use cairn_core::event::Escalation;
                let (action, payload) = match escalation {
                    None => (None, None),
                    Some(EscalationChoice::Retry { raise: None }) => {
                        (Some(Escalation::Retry { fresh_budget: true, raise: None }), None)
                    }
                    Some(EscalationChoice::Retry { raise: Some(raise) }) => (
                        Some(Escalation::Retry { fresh_budget: true, raise: Some(budget_raise(state, &step, raise)?) }),
                        None,
                    ),
                    Some(EscalationChoice::Abort) => (Some(Escalation::Abort), None),
                    Some(EscalationChoice::Skip { output }) => {
                        let p = Payload::of(&output);
                        (Some(Escalation::Skip { output: p.reference.clone() }), Some((p, output)))
                    }
                };
                let step = cairn_core::StepId::new(step);
                (Event::ApprovalDecided { step, approved: approve, by, comment, action, args }, payload)
            }
            Control::Migrate { definition, by } => {
                let to: Definition = serde_json::from_value(definition.clone())
                    .map_err(|e| Error::Invalid(format!("not a compiled definition: {e}")))?;
                let from_version = state.definition.as_ref().map(|d| d.version).unwrap_or(0);
                let p = Payload::of(&definition);
                let event = Event::DefinitionMigrated {
                    definition: p.reference.clone(),
                    from_version,
                    to_version: to.version,
                    by,
                };
                (event, Some((p, definition)))
            }
            Control::Signal { name, payload, by } => {
                let p = Payload::of(&payload);
                let reference = p.reference.clone();
                (Event::SignalReceived { name, payload: reference, by }, Some((p, payload)))
            }
            Control::ChildEnded { step, attempt, child, output, failure } => {
                let step = cairn_core::StepId::new(step);
                match output {
                    Some(value) => {
                        let p = Payload::of(&value);
                        let output = Some(p.reference.clone());
                        (Event::ChildEnded { step, attempt, child, output, failure: None }, Some((p, value)))
                    }
                    None => {
                        let failure = failure.unwrap_or_else(|| {
                            cairn_core::event::Failure::new(
                                cairn_core::event::ErrorClass::Permanent,
                                format!("child run {child} failed"),
                            )
                        });
                        (Event::ChildEnded { step, attempt, child, output: None, failure: Some(failure) }, None)
                    }
                }
            }
        })
    }
}

/// Why a request was not applied, in words an operator can act on.
pub(crate) fn refused(code: &'static str, message: impl Into<String>) -> Error {
    Error::Refused { code, message: message.into() }
}

/// The answer for a request that reaches a finished run.
pub(crate) fn finished(id: &RunId, status: RunStatus) -> Error {
    refused("run_finished", format!("run {id} already finished ({status}); nothing can change it now"))
}

/// What a request's turn finds: go ahead (`Ok(None)`), nothing to do (`Ok(Some((code,
/// message)))`, the same decision twice), or a refusal that says why.
pub(crate) fn check(state: &RunState, control: &Control) -> Result<Option<(&'static str, String)>, Error> {
    let id = &state.run_id;
    let status = state.status;
    if status.is_terminal() {
        // The same decision again is answered even after the run finished.
        if let Control::Decide { step, approve, escalation: None, args, .. } = control
            && let Ok(Some(unchanged)) = check_decision(state, step, *approve, None, args.as_ref())
        {
            return Ok(Some(unchanged));
        }
        return Err(finished(id, status));
    }
    let undoing = |what: &str| {
        refused(
            "run_compensating",
            format!(
                "run {id} is COMPENSATING: it is undoing its completed steps and runs to its end; it cannot be {what}"
            ),
        )
    };
    match control {
        Control::Pause { .. } => match status {
            RunStatus::Paused => Err(refused(
                "already_paused",
                format!("run {id} is already paused; `cairn runs unpause {id}` resumes it"),
            )),
            RunStatus::Compensating => Err(undoing("paused")),
            RunStatus::Executing | RunStatus::Waiting => Ok(None),
            other => Err(refused("not_pausable", format!("run {id} is {other}; it cannot be paused yet"))),
        },
        Control::Unpause { .. } => match status {
            RunStatus::Paused => Ok(None),
            RunStatus::Compensating => Err(undoing("resumed")),
            other => Err(refused("not_paused", format!("run {id} is not paused (it is {other}); nothing to resume"))),
        },
        Control::Cancel { .. } if status == RunStatus::Compensating => Err(undoing("cancelled")),
        Control::Cancel { .. } | Control::Signal { .. } | Control::Migrate { .. } => Ok(None),
        Control::ChildEnded { step, child, .. } => {
            // Only the child the step waits for now: a report from an earlier attempt's child
            // (or a second report) changes nothing.
            let current = state.step_state(step).and_then(|s| s.child.as_ref().filter(|_| s.awaits_child()));
            match current {
                Some(c) if c.run_id == *child => Ok(None),
                _ => Ok(Some((
                    "not_waiting",
                    format!("step '{step}' does not wait for child run {child} (any more); nothing to do"),
                ))),
            }
        }
        Control::Decide { step, approve, escalation, args, .. } => {
            check_decision(state, step, *approve, escalation.as_ref(), args.as_ref())
        }
    }
}

fn check_decision(
    state: &RunState,
    step: &str,
    approve: bool,
    escalation: Option<&EscalationChoice>,
    edited: Option<&Value>,
) -> Result<Option<(&'static str, String)>, Error> {
    let id = &state.run_id;
    let waiting: Vec<&str> = state.steps.iter().filter(|s| s.awaits_decision()).map(|s| s.id.as_str()).collect();
    let waiting_list = || match waiting.as_slice() {
        [] => "no step of this run is waiting for a decision".to_string(),
        list => format!("waiting for a decision: {}", list.join(", ")),
    };
    let Some(s) = state.step_state(step) else {
        return Err(refused("no_such_step", format!("run {id} has no step '{step}'; {}", waiting_list())));
    };
    let previous = s.approval.as_ref().and_then(|a| a.decision.as_ref());
    if !s.awaits_decision() {
        // Asked once and answered: the same answer again is answered, not repeated.
        if let Some((approved, by, _)) = previous {
            let who = by.as_deref().map(|b| format!(" by {b}")).unwrap_or_default();
            let was = if *approved { "approved" } else { "rejected" };
            // A tool call approved with other arguments than these: not the same decision.
            let call_args = s.approval.as_ref().and_then(|a| a.call.as_ref()).map(|asked| {
                s.call_decisions.iter().rev().find(|d| d.call == asked.call).and_then(|d| d.args.as_ref())
            });
            if let Some(before) = call_args
                && before != edited
            {
                return Err(refused(
                    "already_decided",
                    format!(
                        "step '{step}' was already {was}{who} with {}; it cannot be decided again with other arguments",
                        if before.is_some() { "edited arguments" } else { "its own arguments" }
                    ),
                ));
            }
            if escalation.is_none() && !s.escalated {
                if *approved == approve {
                    return Ok(Some(("already_decided", format!("step '{step}' was already {was}{who}"))));
                }
                return Err(refused(
                    "already_decided",
                    format!(
                        "step '{step}' was already {was}{who}; it cannot be {} now",
                        if approve { "approved" } else { "rejected" }
                    ),
                ));
            }
            return Err(refused(
                "already_decided",
                format!(
                    "step '{step}' is not waiting for a decision any more: it was answered{who} (it is {})",
                    s.status
                ),
            ));
        }
        if state.status == RunStatus::Compensating {
            return Err(refused(
                "run_compensating",
                format!("run {id} is COMPENSATING: it is undoing its completed steps; no decision can change it now"),
            ));
        }
        let what = if s.wait.is_some() { "in a durable wait".to_string() } else { s.status.to_string() };
        return Err(refused(
            "not_waiting",
            format!("step '{step}' of run {id} is not waiting for a decision (it is {what}); {}", waiting_list()),
        ));
    }
    if edited.is_some() && !s.awaits_call_decision() {
        return Err(refused(
            "wrong_decision",
            format!(
                "step '{step}' does not wait on a tool call: edited arguments apply only to a tool call's approval"
            ),
        ));
    }
    if edited.is_some() && !approve {
        return Err(refused("wrong_decision", "edited arguments go with an approval, not a rejection".to_string()));
    }
    match (s.escalated, escalation) {
        (true, None) => Err(refused(
            "wrong_decision",
            format!(
                "step '{step}' is an escalated failure, not an approval gate: answer it with retry, skip or abort \
                 (`cairn escalation {id} {step} retry|skip --output JSON|abort`)"
            ),
        )),
        (false, Some(_)) => Err(refused(
            "wrong_decision",
            format!(
                "step '{step}' waits at an approval gate, not on an escalated failure: approve or reject it \
                 (`cairn approve {id} {step}` / `cairn reject {id} {step} --reason …`)"
            ),
        )),
        _ => Ok(None),
    }
}

/// A request as operators see it: what was asked, by whom, when, and what became of it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RequestView {
    /// The order of acceptance among all requests.
    pub id: i64,
    /// `pause`, `approve`, `signal` ...
    pub request: String,
    pub by: Option<String>,
    /// The step a decision is for, or a signal's name.
    pub target: Option<String>,
    /// `pending`, `applied`, `unchanged` or `refused`.
    pub state: RequestState,
    pub code: Option<String>,
    pub message: Option<String>,
    /// The journal event that records an applied request.
    pub journal_seq: Option<u64>,
    pub accepted_at_ms: i64,
    pub decided_at_ms: Option<i64>,
}

impl RequestView {
    pub fn of(row: &cairn_store::RequestRow) -> RequestView {
        let control = serde_json::from_str::<Control>(&row.body).ok();
        let (request, by, target) = match &control {
            Some(c) => {
                let (by, target) = match c {
                    Control::Cancel { by, .. } | Control::Pause { by } | Control::Unpause { by } => (by, None),
                    Control::Migrate { by, .. } => (by, None),
                    Control::Signal { name, by, .. } => (by, Some(name.clone())),
                    Control::Decide { step, by, .. } => (by, Some(step.clone())),
                    Control::ChildEnded { step, .. } => (&None, Some(step.clone())),
                };
                (c.verb().to_string(), by.clone(), target)
            }
            None => ("unreadable".to_string(), None, None),
        };
        let o = &row.outcome;
        RequestView {
            id: row.id,
            request,
            by,
            target,
            state: o.state,
            code: o.code.clone(),
            message: o.message.clone(),
            journal_seq: o.journal_seq,
            accepted_at_ms: row.accepted_at_ms,
            decided_at_ms: o.decided_at_ms,
        }
    }
}

/// The budget a step stopped at, with the limits a person gave: refused unless the step did stop
/// at a budget, unless each limit given is one that budget has and goes above it, and for values
/// a definition could not hold either.
fn budget_raise(state: &RunState, step: &str, raise: Raise) -> Result<cairn_core::event::BudgetRaise, Error> {
    if raise.max_cost_usd.is_none() && raise.max_tokens.is_none() {
        return Err(Error::Invalid("a budget raise needs max_cost_usd, max_tokens or both".into()));
    }
    if raise.max_cost_usd.is_some_and(|usd| !(usd.is_finite() && usd > 0.0 && usd <= 1_000_000.0)) {
        return Err(Error::Invalid("max_cost_usd must be a number above 0, at most 1000000 (US dollars)".into()));
    }
    if raise.max_tokens.is_some_and(|n| !(1..=1_000_000_000_000).contains(&n)) {
        return Err(Error::Invalid("max_tokens must be from 1 to 1000000000000".into()));
    }
    let crossed =
        state.step_index(step).and_then(|i| state.steps[i].last_failure.as_ref().and_then(|f| state.crossed(i, f)));
    let Some(crossed) = crossed else {
        return Err(Error::Invalid(format!(
            "step '{step}' did not stop at a budget, so there is no budget to raise; decide `retry` without one"
        )));
    };
    let whose = match &crossed.step {
        Some(s) => format!("step '{s}''s budget"),
        None => "the run's budget".to_string(),
    };
    match (raise.max_cost_usd, crossed.max_cost_usd) {
        (Some(_), None) => {
            return Err(Error::Invalid(format!("{whose} has no max_cost_usd to raise; raise its max_tokens")));
        }
        (Some(new), Some(old)) if new <= old => {
            return Err(Error::Invalid(format!("{whose} is ${old}; a raise must be above it, not ${new}")));
        }
        _ => {}
    }
    match (raise.max_tokens, crossed.max_tokens) {
        (Some(_), None) => {
            return Err(Error::Invalid(format!("{whose} has no max_tokens to raise; raise its max_cost_usd")));
        }
        (Some(new), Some(old)) if new <= old => {
            return Err(Error::Invalid(format!("{whose} is {old} tokens; a raise must be above it, not {new}")));
        }
        _ => {}
    }
    Ok(cairn_core::event::BudgetRaise {
        step: crossed.step.map(cairn_core::StepId::new),
        max_cost_usd: raise.max_cost_usd,
        max_tokens: raise.max_tokens,
    })
}
