//! `decide`: apply one event to a run's state and return what should happen next.
//!
//! Events come in two sorts. *External* events report something the edge did or saw: the run was
//! created, a plan was made, an attempt started, succeeded or failed, a timer fired, an operator
//! cancelled. *Decided* events (a step became ready or was skipped, a retry was scheduled, the run
//! completed...) are produced here, already applied to the state, stamped with the triggering
//! event's time, and handed back as [`Command::Record`] for the engine to journal in the same
//! transaction. Because nothing here reads a clock or draws a random number, replaying the
//! external events of a journal must reproduce its decided events exactly; [`replay`] checks it.

use crate::definition::{OnFailure, Trigger};
use crate::event::{Envelope, ErrorClass, Event, Failure, JOURNAL_SCHEMA};
use crate::expr;
use crate::ids::{RunId, StepId};
use crate::machine::{RunStatus, StepStatus};
use crate::payload::Payload;
use crate::secrets::SecretSlot;
use crate::state::{Error, RunState};
use crate::template;
use serde_json::{Map, Value, json};
use std::collections::VecDeque;
use std::sync::Arc;

/// What the engine must do after an event.
#[derive(Clone, Debug, PartialEq)]
pub enum Command {
    /// Journal this decided event; it is already applied to the state.
    Record(Envelope),
    /// Store this payload; a recorded event refers to it.
    StorePayload(Payload),
    /// Make the plan and report it as `PlanRecorded`.
    Plan,
    /// Start this attempt with this (rendered) input: record `AttemptStarted` through `decide`,
    /// commit, then run the activity. `input` is what is journaled, each secret in it still its
    /// reference text; `secrets` says where the engine puts the values when the attempt runs.
    StartAttempt { step: StepId, index: usize, attempt: u32, input: Value, secrets: Vec<SecretSlot> },
    /// At `at_ms`, report `TimerFired` for the step (or the timer its state waits on).
    ArmTimer { step: StepId, at_ms: i64 },
    /// Run the step's compensation: record `CompensationAttemptStarted`, commit, then run it
    /// (`input` and `secrets` as for `StartAttempt`).
    StartCompensation { step: StepId, index: usize, attempt: u32, input: Value, secrets: Vec<SecretSlot> },
}

/// Whether an event is produced by `decide` (as opposed to reported by the edge).
pub fn is_decided(event: &Event) -> bool {
    matches!(
        event,
        Event::PlanningStarted
            | Event::StepReady { .. }
            | Event::StepSkipped { .. }
            | Event::RetryScheduled { .. }
            | Event::StepFailed { .. }
            | Event::RunWaiting { .. }
            | Event::RunResumed
            | Event::RunCompleted { .. }
            | Event::RunFailed { .. }
            | Event::ApprovalRequested { .. }
            | Event::ApprovalEscalated { .. }
            | Event::CompensationStarted { .. }
            | Event::CompensationRetryScheduled { .. }
            | Event::CompensationGaveUp { .. }
            | Event::RunCompensated
    )
}

/// Applies an external event and returns the commands it leads to.
pub fn decide(state: &mut RunState, event: &Envelope) -> Result<Vec<Command>, Error> {
    state.apply(event)?;
    let mut d = Decider { state, at: event.at_ms, out: Vec::new() };
    match &event.event {
        Event::RunCreated { .. } => {
            d.record(Event::PlanningStarted)?;
            d.out.push(Command::Plan);
        }
        Event::PlanRecorded { .. } | Event::AttemptSucceeded { .. } => d.reconcile()?,
        Event::TimerFired { step } => {
            if let Some(i) = d.state.step_index(step.as_str()) {
                d.start_attempt(i)?;
            }
            d.reconcile()?;
        }
        Event::AttemptFailed { step, attempt, failure, .. } => {
            d.on_attempt_failed(step, *attempt, failure)?;
            d.reconcile()?;
        }
        Event::RunRetried { .. } => d.reconcile()?,
        Event::RunUnpaused { .. } => {
            d.restart_work()?;
            d.reconcile()?;
        }
        Event::ApprovalDecided { step, approved, action, .. } => {
            if let Some(i) = d.state.step_index(step.as_str()) {
                let failure = d.state.steps[i].last_failure.clone();
                match action {
                    Some(crate::event::Escalation::Skip { .. }) => {}
                    Some(crate::event::Escalation::Abort) => d.apply_failure_policy(i, failure, true)?,
                    _ if *approved => d.start_attempt(i)?,
                    _ => d.apply_failure_policy(i, failure, false)?,
                }
            }
            d.reconcile()?;
        }
        Event::DefinitionMigrated { .. } => d.reconcile()?,
        Event::RunCancelled { .. } | Event::CompensationAttemptSucceeded { .. } => d.compensate_next()?,
        Event::CompensationAttemptFailed { step, attempt, failure, .. } => {
            d.on_compensation_failed(step, *attempt, failure)?;
            d.compensate_next()?;
        }
        Event::CompensationTimerFired { step } => {
            if let Some(i) = d.state.step_index(step.as_str()) {
                d.start_compensation(i)?;
            }
        }
        Event::ApprovalExpired { step } => {
            d.on_deadline(step)?;
            d.reconcile()?;
        }
        _ => {}
    }
    // While paused nothing new starts and no timer is armed; `RunUnpaused` starts them.
    if d.state.status == RunStatus::Paused {
        d.out.retain(|c| !matches!(c, Command::StartAttempt { .. } | Command::ArmTimer { .. }));
    }
    Ok(d.out)
}

/// Commands needed to pick a run up again after it was loaded from its journal: start the steps
/// that are ready and re-arm the timers of steps waiting to retry. Attempts that were running when
/// the previous owner stopped are the engine's to report (as failed, class `transient`).
pub fn resume_commands(state: &mut RunState) -> Result<Vec<Command>, Error> {
    if state.status.is_terminal() || state.status == RunStatus::Paused || state.definition.is_none() {
        return Ok(Vec::new());
    }
    let at = state.updated_at_ms;
    let mut d = Decider { state, at, out: Vec::new() };
    d.restart_work()?;
    Ok(d.out)
}

struct Decider<'a> {
    state: &'a mut RunState,
    at: i64,
    out: Vec<Command>,
}

impl Decider<'_> {
    /// Starts every ready step and re-arms every retry timer (after a restart or an unpause).
    fn restart_work(&mut self) -> Result<(), Error> {
        for t in self.state.pending_timers() {
            self.out.push(Command::ArmTimer { step: t.step, at_ms: t.at_ms });
        }
        if self.state.status == RunStatus::Compensating {
            return self.compensate_next();
        }
        for i in 0..self.state.steps.len() {
            if self.state.steps[i].status == StepStatus::Ready {
                self.start_attempt(i)?;
            }
        }
        Ok(())
    }

    /// An approval deadline passed: reject, fail the run, or record the escalation and wait.
    fn on_deadline(&mut self, step: &StepId) -> Result<(), Error> {
        let Some(def) = self.definition() else { return Ok(()) };
        let Some(i) = self.state.step_index(step.as_str()) else { return Ok(()) };
        let policy = def.steps[i].approval.as_ref().map(|a| a.on_deadline).unwrap_or_default();
        let failure = Failure::new(ErrorClass::Permanent, "the approval deadline passed without a decision");
        match policy {
            crate::definition::OnDeadline::Reject => self.fail_step(i, failure),
            crate::definition::OnDeadline::Fail => {
                self.record(Event::StepFailed { step: step.clone(), failure: failure.clone() })?;
                self.apply_failure_policy(i, Some(failure), true)
            }
            crate::definition::OnDeadline::Wait => self.record(Event::ApprovalEscalated {
                step: step.clone(),
                note: "approval deadline passed; escalated, still waiting".into(),
            }),
        }
    }

    fn record(&mut self, event: Event) -> Result<(), Error> {
        let env = Envelope { seq: self.state.last_seq + 1, at_ms: self.at, schema: JOURNAL_SCHEMA, event };
        self.state.apply(&env)?;
        self.out.push(Command::Record(env));
        Ok(())
    }

    /// The pinned definition. Every caller runs after `PlanRecorded` (step events are refused
    /// before it), so a missing plan means there is nothing to decide.
    fn definition(&self) -> Option<Arc<crate::definition::Definition>> {
        self.state.definition.clone()
    }

    /// Variables visible to step `i`'s condition and templates. A step sees only the steps it
    /// needs, directly or transitively: they are all settled before it is decided, so rendering
    /// again after a restart gives the same input as the first time.
    fn context(&self, i: usize) -> Value {
        let Some(def) = self.definition() else { return Value::Null };
        let mut visible = vec![false; def.steps.len()];
        let mut stack: Vec<usize> = vec![i];
        while let Some(j) = stack.pop() {
            let mut deps: Vec<usize> =
                def.steps[j].needs.iter().filter_map(|n| self.state.step_index(n.as_str())).collect();
            // A fallback sees the step it stands in for (and why it failed).
            deps.extend(def.primary_of(j));
            for k in deps {
                // A failed need whose fallback has settled is seen through its fallback, which
                // (with what it needs) is then settled too.
                let mut chain = vec![k];
                if let (r, st) = self.state.outcome(k)
                    && r != k
                    && st.is_terminal()
                {
                    let mut at = k;
                    while let Some(f) = def.fallback_of(at).filter(|_| at != r) {
                        chain.push(f);
                        at = f;
                    }
                }
                for c in chain {
                    if !visible[c] {
                        visible[c] = true;
                        stack.push(c);
                    }
                }
            }
        }
        let mut steps = Map::new();
        for (k, s) in self.state.steps.iter().enumerate().filter(|(k, _)| visible[*k]) {
            let (r, st) = self.state.outcome(k);
            let (r, st) = if r != k && st.is_terminal() { (r, st) } else { (k, s.status) };
            let output = self.state.output_of(r).map(|v| (**v).clone()).unwrap_or(Value::Null);
            let mut entry = json!({"output": output, "status": st.as_str()});
            // `fallback` names the step that stood in (null while none did), for every step
            // that declares one, so a template can use it either way.
            if def.fallback_of(k).is_some() {
                entry["fallback"] = if r != k { json!(self.state.steps[r].id.as_str()) } else { Value::Null };
            }
            if s.status == StepStatus::Failed
                && let Some(f) = &s.last_failure
            {
                entry["error"] = json!({"class": f.class.as_str(), "message": f.message});
            }
            steps.insert(s.id.to_string(), entry);
        }
        let signals: Map<String, Value> = self
            .state
            .signals
            .iter()
            .map(|(name, r)| (name.clone(), self.state.payload(r).map(|v| (**v).clone()).unwrap_or(Value::Null)))
            .collect();
        json!({
            "inputs": self.state.inputs,
            "steps": steps,
            "signals": signals,
            "run": {"id": self.state.run_id.as_str(), "workflow": self.state.workflow},
        })
    }

    fn on_attempt_failed(&mut self, step: &StepId, attempt: u32, failure: &Failure) -> Result<(), Error> {
        let Some(def) = self.definition() else { return Ok(()) };
        let Some(i) = self.state.step_index(step.as_str()) else { return Ok(()) };
        let policy = def.steps[i].retry;
        let key = [self.state.run_id.as_str(), step.as_str()];
        // After a retry in place the budget starts again; attempt numbers keep counting.
        let base = self.state.steps[i].retry_base;
        match policy.next_delay(attempt.saturating_sub(base), failure, &key) {
            Some(delay_ms) => {
                let not_before_ms = self.at + delay_ms as i64;
                self.record(Event::RetryScheduled {
                    step: step.clone(),
                    next_attempt: attempt + 1,
                    max_attempts: policy.max_attempts + base,
                    delay_ms,
                    not_before_ms,
                })?;
                self.out.push(Command::ArmTimer { step: step.clone(), at_ms: not_before_ms });
                Ok(())
            }
            None if def.steps[i].on_failure == OnFailure::Escalate => {
                // Ask a person instead of failing: retry, skip with an output, or abort.
                let prompt = format!(
                    "step '{step}' failed after {attempt} attempt(s): {failure}. Retry it, skip it with an output, or abort the run?"
                );
                self.record(Event::ApprovalRequested {
                    step: step.clone(),
                    prompt,
                    approvers: Vec::new(),
                    deadline_ms: None,
                    escalation: true,
                })
            }
            None => {
                let mut last = failure.clone();
                if failure.class.is_retryable() {
                    last.message = format!("gave up after {attempt} attempts; last error: {}", failure.message);
                }
                self.fail_step(i, last)
            }
        }
    }

    /// Records the step's failure and applies its `on_failure` policy.
    fn fail_step(&mut self, i: usize, failure: Failure) -> Result<(), Error> {
        let Some(def) = self.definition() else { return Ok(()) };
        let step = def.steps[i].id.clone();
        let mut failure = failure;
        if let OnFailure::Fallback(f) = &def.steps[i].on_failure {
            failure.message = format!("{} (falls back to '{f}')", failure.message);
        }
        self.record(Event::StepFailed { step, failure: failure.clone() })?;
        self.apply_failure_policy(i, Some(failure), false)
    }

    /// After a step failed: fail the run if its `on_failure` says so (or `force`).
    fn apply_failure_policy(&mut self, i: usize, failure: Option<Failure>, force: bool) -> Result<(), Error> {
        let Some(def) = self.definition() else { return Ok(()) };
        if force || def.steps[i].on_failure == OnFailure::Fail {
            let step = def.steps[i].id.clone();
            let failure = failure.unwrap_or_else(|| Failure::new(ErrorClass::Permanent, "failed"));
            let failure = Failure { message: format!("step '{step}' failed: {}", failure.message), ..failure };
            self.end_failed(failure, Some(step))?;
        }
        Ok(())
    }

    /// The run fails: directly, or first undoing its completed compensable steps.
    fn end_failed(&mut self, failure: Failure, step: Option<StepId>) -> Result<(), Error> {
        if self.state.needs_compensation() {
            self.record(Event::CompensationStarted { reason: failure })?;
            self.compensate_next()
        } else {
            self.record(Event::RunFailed { failure, step })
        }
    }

    /// Compensations run one at a time, newest completion first; when none is left the run ends
    /// COMPENSATED, or FAILED naming the compensations that failed.
    fn compensate_next(&mut self) -> Result<(), Error> {
        if self.state.status != RunStatus::Compensating {
            return Ok(());
        }
        let busy = self.state.steps.iter().any(|s| {
            s.compensation.as_ref().is_some_and(|c| c.gave_up.is_none() && (c.running || c.not_before_ms.is_some()))
        });
        if busy {
            return Ok(());
        }
        let next = self.state.pending_compensations().next();
        if let Some(i) = next {
            return self.start_compensation(i);
        }
        let gave_up: Vec<String> = self
            .state
            .steps
            .iter()
            .filter_map(|s| {
                s.compensation.as_ref().and_then(|c| c.gave_up.as_ref()).map(|f| format!("{} ({})", s.id, f.message))
            })
            .collect();
        let reason = self.state.failure.clone().unwrap_or_else(|| Failure::new(ErrorClass::Permanent, "failed"));
        if gave_up.is_empty() {
            self.record(Event::RunCompensated)
        } else {
            let failure = Failure {
                message: format!(
                    "compensation failed for {}; the run was undoing: {}",
                    gave_up.join(", "),
                    reason.message
                ),
                ..reason
            };
            self.record(Event::RunFailed { failure, step: None })
        }
    }

    fn start_compensation(&mut self, i: usize) -> Result<(), Error> {
        let Some(def) = self.definition() else { return Ok(()) };
        let Some(comp) = &def.steps[i].compensate else { return Ok(()) };
        let mut ctx = self.context(i);
        ctx["output"] = self.state.output_of(i).map(|v| (**v).clone()).unwrap_or(Value::Null);
        let (input, secrets) = match template::render_input(&comp.with, &ctx) {
            Ok(rendered) => rendered,
            Err(msg) => {
                let failure = Failure::new(ErrorClass::Permanent, format!("compensation input does not render: {msg}"));
                let step = def.steps[i].id.clone();
                // Nothing can be attempted: record the attempt as failed for good.
                self.record(Event::CompensationGaveUp { step, failure })?;
                return self.compensate_next();
            }
        };
        let attempt = self.state.steps[i].compensation.as_ref().map_or(0, |c| c.attempts) + 1;
        let step = def.steps[i].id.clone();
        self.out.push(Command::StartCompensation { step, index: i, attempt, input, secrets });
        Ok(())
    }

    fn on_compensation_failed(&mut self, step: &StepId, attempt: u32, failure: &Failure) -> Result<(), Error> {
        let Some(def) = self.definition() else { return Ok(()) };
        let Some(i) = self.state.step_index(step.as_str()) else { return Ok(()) };
        let Some(comp) = &def.steps[i].compensate else { return Ok(()) };
        let key = [self.state.run_id.as_str(), step.as_str(), "compensate"];
        match comp.retry.next_delay(attempt, failure, &key) {
            Some(delay_ms) => {
                let not_before_ms = self.at + delay_ms as i64;
                self.record(Event::CompensationRetryScheduled {
                    step: step.clone(),
                    next_attempt: attempt + 1,
                    delay_ms,
                    not_before_ms,
                })?;
                self.out.push(Command::ArmTimer { step: step.clone(), at_ms: not_before_ms });
                Ok(())
            }
            None => {
                let failure = Failure {
                    message: format!("gave up after {attempt} attempts: {}", failure.message),
                    ..failure.clone()
                };
                self.record(Event::CompensationGaveUp { step: step.clone(), failure })
            }
        }
    }

    fn start_attempt(&mut self, i: usize) -> Result<(), Error> {
        let Some(def) = self.definition() else { return Ok(()) };
        let step = &def.steps[i];
        let decision = self.state.steps[i].approval.as_ref().and_then(|a| a.decision.clone());
        if let Some(gate) = &step.approval
            && !matches!(decision, Some((true, ..)))
        {
            // Ask first: the request is journaled before the run can pause.
            let prompt = match template::render(&Value::String(gate.prompt.clone()), &self.context(i)) {
                Ok(Value::String(p)) => p,
                Ok(other) => other.to_string(),
                Err(_) => gate.prompt.clone(),
            };
            let deadline_ms = gate.deadline_ms.map(|d| self.at + d as i64);
            self.record(Event::ApprovalRequested {
                step: step.id.clone(),
                prompt,
                approvers: gate.approvers.clone(),
                deadline_ms,
                escalation: false,
            })?;
            if let Some(at_ms) = deadline_ms {
                self.out.push(Command::ArmTimer { step: step.id.clone(), at_ms });
            }
            return Ok(());
        }
        if step.kind == "approval" {
            // The gate itself: its output is the decision.
            let (_, by, comment) = decision.unwrap_or((true, None, None));
            let input = json!({"decision": "approved", "by": by, "comment": comment});
            let attempt = self.state.steps[i].attempts + 1;
            let secrets = Vec::new();
            self.out.push(Command::StartAttempt { step: step.id.clone(), index: i, attempt, input, secrets });
            return Ok(());
        }
        let (input, secrets) = if step.with.is_null() {
            (Value::Null, Vec::new())
        } else {
            match template::render_input(&step.with, &self.context(i)) {
                Ok(rendered) => rendered,
                Err(msg) => {
                    return self
                        .fail_step(i, Failure::new(ErrorClass::Permanent, format!("input does not render: {msg}")));
                }
            }
        };
        let attempt = self.state.steps[i].attempts + 1;
        self.out.push(Command::StartAttempt { step: step.id.clone(), index: i, attempt, input, secrets });
        Ok(())
    }

    /// Moves every step whose dependencies are settled, then checks whether the run is done.
    fn reconcile(&mut self) -> Result<(), Error> {
        let Some(def) = self.definition() else { return Ok(()) };
        if self.state.status == RunStatus::Compensating {
            return Ok(());
        }
        loop {
            if self.state.status.is_terminal() {
                return Ok(());
            }
            let mut progressed = false;
            for (i, step) in def.steps.iter().enumerate() {
                if self.state.steps[i].status != StepStatus::Pending {
                    continue;
                }
                // A fallback is decided once the step it stands in for has settled, and runs only
                // if that step failed.
                if let Some(p) = def.primary_of(i) {
                    let primary = self.state.steps[p].status;
                    if !primary.is_terminal() {
                        continue;
                    }
                    if primary != StepStatus::Failed {
                        progressed = true;
                        let reason = format!(
                            "fallback not needed: step '{}' is {}",
                            def.steps[p].id,
                            primary.as_str().to_lowercase()
                        );
                        self.record(Event::StepSkipped { step: step.id.clone(), reason })?;
                        continue;
                    }
                }
                // Each need counts by its outcome: a failed need with a fallback counts as
                // whatever its fallback did (and is not settled before the fallback is); one whose
                // fallback did not complete counts as failed. A fallback that also lists the step
                // it stands in for (or an earlier link of its chain) has that need met already.
                let mut settled = true;
                let mut not_completed: Option<String> = None;
                let mut failed: Option<String> = None;
                for need in &step.needs {
                    let Some(k) = self.state.step_index(need.as_str()) else { continue };
                    if def.stands_in_for(i, k) {
                        continue;
                    }
                    let (r, st) = self.state.outcome(k);
                    if !st.is_terminal() {
                        settled = false;
                        break;
                    }
                    let (st, via) = if r == k || st == StepStatus::Completed {
                        (st, String::new())
                    } else {
                        let note =
                            format!(" (its fallback '{}' is {})", self.state.steps[r].id, st.as_str().to_lowercase());
                        (StepStatus::Failed, note)
                    };
                    if st != StepStatus::Completed && not_completed.is_none() {
                        not_completed = Some(format!("dependency '{need}' is {}{via}", st.as_str().to_lowercase()));
                    }
                    if matches!(st, StepStatus::Failed | StepStatus::Cancelled) && failed.is_none() {
                        failed = Some(format!("dependency '{need}' failed{via}"));
                    }
                }
                if !settled {
                    continue;
                }
                progressed = true;
                let skip = match step.trigger {
                    Trigger::AllSucceeded => not_completed,
                    Trigger::NoneFailed => failed,
                    Trigger::AllDone => None,
                };
                if let Some(reason) = skip {
                    self.record(Event::StepSkipped { step: step.id.clone(), reason })?;
                    continue;
                }
                if let Some(cond) = &step.when {
                    let ctx = self.context(i);
                    let vars = [
                        ("inputs", &ctx["inputs"]),
                        ("steps", &ctx["steps"]),
                        ("run", &ctx["run"]),
                        ("signals", &ctx["signals"]),
                    ];
                    match expr::eval_bool(cond, &vars) {
                        Ok(true) => {}
                        Ok(false) => {
                            let reason = format!("condition `{cond}` is false");
                            self.record(Event::StepSkipped { step: step.id.clone(), reason })?;
                            continue;
                        }
                        Err(msg) => {
                            self.fail_step(i, Failure::new(ErrorClass::Permanent, msg))?;
                            continue;
                        }
                    }
                }
                self.record(Event::StepReady { step: step.id.clone() })?;
                self.start_attempt(i)?;
            }
            if !progressed {
                break;
            }
        }
        self.finish_or_wait()
    }

    fn finish_or_wait(&mut self) -> Result<(), Error> {
        let steps = &self.state.steps;
        if self.state.status.is_terminal() {
            return Ok(());
        }
        if steps.iter().all(|s| s.status.is_terminal()) {
            // A failed step whose fallback completed in its place does not fail the run.
            let failed: Vec<usize> = (0..steps.len())
                .filter(|&k| steps[k].status == StepStatus::Failed && !self.state.is_covered(k))
                .collect();
            if let Some(&first) = failed.first() {
                let n = failed.len();
                let failed = &steps[first];
                let done = steps.iter().filter(|s| s.status == StepStatus::Completed).count();
                let cause =
                    failed.last_failure.clone().unwrap_or_else(|| Failure::new(ErrorClass::Permanent, "failed"));
                let failure = Failure {
                    message: format!(
                        "{n} step(s) failed ({done} of {} completed; partial results recorded); first: '{}': {}",
                        steps.len(),
                        failed.id,
                        cause.message
                    ),
                    ..cause
                };
                let step = Some(failed.id.clone());
                return self.end_failed(failure, step);
            }
            // A step covered by its fallback reports the fallback's output under its own id too,
            // as the steps that needed it saw it.
            let mut output = Map::new();
            for (i, s) in steps.iter().enumerate() {
                let (r, st) = self.state.outcome(i);
                if st == StepStatus::Completed {
                    let v = self.state.output_of(r).map(|v| (**v).clone()).unwrap_or(Value::Null);
                    output.insert(s.id.to_string(), v);
                }
            }
            let value = Value::Object(output);
            let payload = Payload::of(&value);
            self.state.add_payload(&payload, value);
            let output = payload.reference.clone();
            self.out.push(Command::StorePayload(payload));
            return self.record(Event::RunCompleted { output });
        }
        if self.state.status == RunStatus::Paused {
            return Ok(());
        }
        let active = steps.iter().any(|s| matches!(s.status, StepStatus::Ready | StepStatus::Running));
        let approval = steps.iter().find(|s| s.status == StepStatus::Waiting);
        let retry = steps.iter().filter(|s| s.status == StepStatus::RetryWait).min_by_key(|s| s.not_before_ms);
        let waiting = match (approval, retry) {
            (Some(s), _) if s.escalated => Some(format!("step '{}' failed; a person decides what to do", s.id)),
            (Some(s), _) => Some(format!("step '{}' awaits approval", s.id)),
            (None, Some(s)) => Some(format!("step '{}' waits to retry", s.id)),
            (None, None) => None,
        };
        match (self.state.status, active, waiting) {
            (RunStatus::Executing, false, Some(reason)) => self.record(Event::RunWaiting { reason }),
            (RunStatus::Waiting, true, _) => self.record(Event::RunResumed),
            _ => Ok(()),
        }
    }
}

/// How a journal disagrees with what the current core would decide.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ReplayError {
    #[error("the journal does not fold: {0}")]
    Fold(#[from] Error),
    #[error("divergence at event {seq}: the journal has {recorded}, the core decides {decided}")]
    Divergence { seq: u64, recorded: String, decided: String },
}

/// Re-derives a run from its journal with no effects, checking every decided event against what
/// `decide` produces now. Returns the final state.
pub fn replay(
    run_id: RunId,
    events: &[Envelope],
    payloads: impl IntoIterator<Item = (String, Arc<Value>)>,
) -> Result<RunState, ReplayError> {
    let mut state = RunState::new(run_id);
    state.payloads.extend(payloads);
    let mut expected: VecDeque<Envelope> = VecDeque::new();
    let show = |e: &Envelope| serde_json::to_string(&e.event).unwrap_or_else(|_| e.event.kind().to_string());
    for env in events {
        if let Some(exp) = expected.pop_front() {
            if exp != *env {
                return Err(ReplayError::Divergence { seq: env.seq, recorded: show(env), decided: show(&exp) });
            }
            continue;
        }
        if is_decided(&env.event) {
            return Err(ReplayError::Divergence { seq: env.seq, recorded: show(env), decided: "nothing".into() });
        }
        for c in decide(&mut state, env)? {
            if let Command::Record(e) = c {
                expected.push_back(e);
            }
        }
    }
    if let Some(exp) = expected.pop_front() {
        return Err(ReplayError::Divergence { seq: exp.seq, recorded: "end of journal".into(), decided: show(&exp) });
    }
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{RunOptions, RunSource};

    struct Harness {
        state: RunState,
    }

    impl Harness {
        fn new(yaml: &str) -> (Harness, Vec<Command>) {
            Harness::with(crate::validate::parse_definition(yaml, "t.yaml").expect("valid definition"))
        }

        /// A run of a definition as given, even one validation would refuse (stored before a
        /// check existed, or built by hand).
        fn with(def: crate::definition::Definition) -> (Harness, Vec<Command>) {
            let mut h = Harness { state: RunState::new(RunId::from_parts(1, 1)) };
            let created = Event::RunCreated {
                workflow: def.name.clone(),
                source: RunSource::Definition { path: None },
                inputs: json!({}),
                options: RunOptions::default(),
            };
            h.feed(created);
            let value = serde_json::to_value(&def).expect("json");
            let payload = Payload::of(&value);
            h.state.add_payload(&payload, value);
            let cmds = h.feed(Event::PlanRecorded { definition: payload.reference, plan: None, reused: Vec::new() });
            (h, cmds)
        }

        fn feed(&mut self, event: Event) -> Vec<Command> {
            let env = Envelope { seq: self.state.last_seq + 1, at_ms: 1_000, schema: JOURNAL_SCHEMA, event };
            decide(&mut self.state, &env).expect("legal event")
        }

        fn succeed(&mut self, step: &str, output: Value) -> Vec<Command> {
            let step = StepId::new(step);
            let input = Payload::of(&Value::Null);
            self.state.add_payload(&input, Value::Null);
            self.feed(Event::AttemptStarted { step: step.clone(), attempt: 1, input: input.reference });
            let out = Payload::of(&output);
            self.state.add_payload(&out, output);
            self.feed(Event::AttemptSucceeded { step, attempt: 1, output: out.reference, duration_ms: 1 })
        }
    }

    fn started(cmds: &[Command]) -> Vec<(String, Value)> {
        cmds.iter()
            .filter_map(|c| match c {
                Command::StartAttempt { step, input, .. } => Some((step.to_string(), input.clone())),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn independent_steps_start_together_and_a_step_starts_when_its_needs_settle() {
        let yaml = "name: t\nsteps:\n  - {id: a, kind: echo}\n  - {id: b, kind: echo}\n  - {id: c, kind: echo, needs: [a, b], with: {x: '{{ steps.a.output }}'}}\n";
        let (mut h, cmds) = Harness::new(yaml);
        let first: Vec<String> = started(&cmds).into_iter().map(|(s, _)| s).collect();
        assert_eq!(first, vec!["a", "b"]);
        assert!(started(&h.succeed("a", json!(7))).is_empty(), "c waits for b");
        assert_eq!(started(&h.succeed("b", json!(8))), vec![("c".to_string(), json!({"x": 7}))]);
    }

    #[test]
    fn the_journaled_input_keeps_the_secret_reference_and_the_command_says_where_it_goes() {
        let yaml = "\
name: t
steps:
  - id: call
    kind: http
    with: {url: http://127.0.0.1:9/x, headers: {Authorization: \"Bearer {{ secrets.API_TOKEN }}\"}}
    compensate: {kind: http, with: {url: http://127.0.0.1:9/undo, body: {k: \"{{ secrets.UNDO_KEY }}\"}}}
  - {id: boom, kind: fail, needs: [call]}
";
        let (mut h, cmds) = Harness::new(yaml);
        let Some(Command::StartAttempt { input, secrets, .. }) =
            cmds.iter().find(|c| matches!(c, Command::StartAttempt { .. }))
        else {
            panic!("no attempt: {cmds:#?}")
        };
        assert_eq!(input["headers"]["Authorization"], json!("Bearer {{ secrets.API_TOKEN }}"));
        assert_eq!(secrets.len(), 1);
        assert_eq!(secrets[0].pointer, "/headers/Authorization");
        assert_eq!(secrets[0].names().collect::<Vec<_>>(), vec!["API_TOKEN"]);
        h.succeed("call", json!({"id": 1}));
        let input = Payload::of(&Value::Null);
        h.state.add_payload(&input, Value::Null);
        h.feed(Event::AttemptStarted { step: StepId::new("boom"), attempt: 1, input: input.reference });
        let failure = Failure::new(ErrorClass::Permanent, "no");
        let cmds = h.feed(Event::AttemptFailed { step: StepId::new("boom"), attempt: 1, failure, duration_ms: 1 });
        let Some(Command::StartCompensation { input, secrets, .. }) =
            cmds.iter().find(|c| matches!(c, Command::StartCompensation { .. }))
        else {
            panic!("no compensation: {cmds:#?}")
        };
        assert_eq!(input["body"]["k"], json!("{{ secrets.UNDO_KEY }}"));
        assert_eq!(secrets[0].pointer, "/body/k");
    }

    #[test]
    fn a_step_sees_only_the_steps_it_needs() {
        // c needs a only; b (done before c is decided) is invisible to it, so the input is the
        // same whenever c is decided or re-decided after a restart. Validation refuses such a
        // template; a definition that bypassed it (stored earlier) fails at run time.
        let yaml = "name: t\nsteps:\n  - {id: a, kind: echo}\n  - {id: b, kind: echo}\n  - {id: c, kind: echo, needs: [a], with: {x: '{{ steps.b.status }}'}}\n";
        let refused = crate::validate::parse_definition(yaml, "t.yaml").expect_err("refused by validation");
        assert_eq!(refused.iter().map(|p| p.code).collect::<Vec<_>>(), ["step_not_needed"]);
        let valid = yaml.replace("steps.b.status", "steps.a.status");
        let mut def = crate::validate::parse_definition(&valid, "t.yaml").expect("valid definition");
        def.steps[2].with = json!({"x": "{{ steps.b.status }}"});
        let (mut h, _) = Harness::with(def);
        h.succeed("b", json!(1));
        let cmds = h.succeed("a", json!(2));
        assert!(started(&cmds).is_empty());
        let failed = cmds.iter().any(|c| {
            matches!(c, Command::Record(Envelope { event: Event::StepFailed { step, failure }, .. })
                if step.as_str() == "c" && failure.class == ErrorClass::Permanent && failure.message.contains("steps.b"))
        });
        assert!(failed, "{cmds:#?}");
        assert_eq!(h.state.status, RunStatus::Failed);
    }

    #[test]
    fn paused_runs_start_nothing_until_unpaused() {
        let yaml = "name: t\nsteps:\n  - {id: a, kind: echo}\n  - {id: b, kind: echo, needs: [a]}\n";
        let (mut h, _) = Harness::new(yaml);
        h.feed(Event::RunPaused { by: Some("op".into()) });
        let cmds = h.succeed("a", json!(1));
        assert!(started(&cmds).is_empty(), "nothing starts while paused: {cmds:#?}");
        assert_eq!(h.state.step_state("b").map(|s| s.status), Some(StepStatus::Ready));
        assert_eq!(h.state.status, RunStatus::Paused);
        let cmds = h.feed(Event::RunUnpaused { by: None });
        assert_eq!(started(&cmds).into_iter().map(|(s, _)| s).collect::<Vec<_>>(), vec!["b"]);
        assert_eq!(h.state.status, RunStatus::Executing);
    }

    #[test]
    fn a_failed_run_retried_in_place_reruns_what_did_not_succeed_with_a_fresh_budget() {
        let yaml = "name: t\nsteps:\n  - {id: a, kind: echo}\n  - {id: b, kind: echo, needs: [a], retry: {max_attempts: 2, jitter: 0}}\n  - {id: c, kind: echo, needs: [b]}\n";
        let (mut h, _) = Harness::new(yaml);
        h.succeed("a", json!(1));
        let fail = |h: &mut Harness, attempt: u32| {
            let input = Payload::of(&Value::Null);
            let step = StepId::new("b");
            h.feed(Event::AttemptStarted { step: step.clone(), attempt, input: input.reference });
            let failure = Failure::new(ErrorClass::Transient, "down");
            h.feed(Event::AttemptFailed { step, attempt, failure, duration_ms: 1 })
        };
        fail(&mut h, 1);
        h.feed(Event::TimerFired { step: StepId::new("b") });
        fail(&mut h, 2);
        assert_eq!(h.state.status, RunStatus::Failed);
        assert_eq!(h.state.step_state("c").map(|s| s.status), Some(StepStatus::Cancelled));

        let cmds = h.feed(Event::RunRetried { by: Some("ops".into()) });
        assert_eq!(h.state.status, RunStatus::Executing);
        assert_eq!(h.state.failure, None);
        assert_eq!(started(&cmds).into_iter().map(|(s, _)| s).collect::<Vec<_>>(), vec!["b"], "a keeps its output");
        let cmds = fail(&mut h, 3);
        let retried = cmds.iter().any(|c| {
            matches!(
                c,
                Command::Record(Envelope { event: Event::RetryScheduled { next_attempt: 4, max_attempts: 4, .. }, .. })
            )
        });
        assert!(retried, "the budget of 2 starts again after the retry: {cmds:?}");
        h.feed(Event::TimerFired { step: StepId::new("b") });
        assert_eq!(h.state.step_state("c").map(|s| s.status), Some(StepStatus::Pending));
        let out = Payload::of(&json!(2));
        h.state.add_payload(&out, json!(2));
        let input = Payload::of(&Value::Null);
        h.feed(Event::AttemptStarted { step: StepId::new("b"), attempt: 4, input: input.reference });
        let cmds = h.feed(Event::AttemptSucceeded {
            step: StepId::new("b"),
            attempt: 4,
            output: out.reference,
            duration_ms: 1,
        });
        assert_eq!(started(&cmds).into_iter().map(|(s, _)| s).collect::<Vec<_>>(), vec!["c"]);
    }

    fn fail_for_good(h: &mut Harness, step: &str, message: &str) -> Vec<Command> {
        let input = Payload::of(&Value::Null);
        let step = StepId::new(step);
        let attempt = h.state.step_state(step.as_str()).map_or(0, |s| s.attempts) + 1;
        h.feed(Event::AttemptStarted { step: step.clone(), attempt, input: input.reference });
        let failure = Failure::new(ErrorClass::Permanent, message);
        h.feed(Event::AttemptFailed { step, attempt, failure, duration_ms: 1 })
    }

    fn status(h: &Harness, step: &str) -> Option<StepStatus> {
        h.state.step_state(step).map(|s| s.status)
    }

    const FALLBACK: &str = "name: t\nsteps:\n  - {id: fetch, kind: echo, on_failure: {fallback: cached}}\n  - {id: cached, kind: echo, with: {why: '{{ steps.fetch.error.message }}'}}\n  - {id: report, kind: echo, needs: [fetch], with: {data: '{{ steps.fetch.output }}', via: '{{ steps.fetch.fallback }}', status: '{{ steps.fetch.status }}'}}\n";

    #[test]
    fn a_fallback_runs_when_its_step_fails_and_dependents_see_its_output_in_that_steps_place() {
        let (mut h, cmds) = Harness::new(FALLBACK);
        assert_eq!(started(&cmds).into_iter().map(|(s, _)| s).collect::<Vec<_>>(), vec!["fetch"], "the fallback waits");
        let cmds = fail_for_good(&mut h, "fetch", "upstream said 500");
        assert_eq!(
            started(&cmds),
            vec![("cached".to_string(), json!({"why": "upstream said 500 (falls back to 'cached')"}))]
        );
        assert_eq!(h.state.status, RunStatus::Executing, "the failure does not fail the run");
        assert_eq!(status(&h, "report"), Some(StepStatus::Pending), "report waits for the fallback");
        let cmds = h.succeed("cached", json!("stale"));
        assert_eq!(
            started(&cmds),
            vec![("report".to_string(), json!({"data": "stale", "via": "cached", "status": "COMPLETED"}))]
        );
        h.succeed("report", json!("ok"));
        assert_eq!(h.state.status, RunStatus::Completed);
        let out = h.state.output.clone().and_then(|r| h.state.payload(&r).map(|v| Value::clone(v)));
        assert_eq!(out, Some(json!({"fetch": "stale", "cached": "stale", "report": "ok"})));
    }

    #[test]
    fn a_fallback_is_skipped_when_its_step_succeeds() {
        let (mut h, _) = Harness::new(FALLBACK);
        let cmds = h.succeed("fetch", json!("fresh"));
        assert_eq!(
            started(&cmds),
            vec![("report".to_string(), json!({"data": "fresh", "via": null, "status": "COMPLETED"}))]
        );
        assert_eq!(status(&h, "cached"), Some(StepStatus::Skipped));
        let reason = cmds.iter().find_map(|c| match c {
            Command::Record(Envelope { event: Event::StepSkipped { step, reason }, .. })
                if step.as_str() == "cached" =>
            {
                Some(reason.clone())
            }
            _ => None,
        });
        assert_eq!(reason.as_deref(), Some("fallback not needed: step 'fetch' is completed"));
        h.succeed("report", json!("ok"));
        assert_eq!(h.state.status, RunStatus::Completed, "a skipped fallback is no failure");
    }

    #[test]
    fn a_failing_fallback_fails_the_run_naming_it() {
        let (mut h, _) = Harness::new(FALLBACK);
        fail_for_good(&mut h, "fetch", "down");
        fail_for_good(&mut h, "cached", "cache empty");
        assert_eq!(h.state.status, RunStatus::Failed);
        assert_eq!(h.state.failed_step.as_ref().map(|s| s.as_str()), Some("cached"));
        assert_eq!(status(&h, "report"), Some(StepStatus::Cancelled));
    }

    #[test]
    fn fallbacks_chain_and_a_continuing_fallback_skips_the_dependents_with_the_reason() {
        let yaml = "name: t\nsteps:\n  - {id: a, kind: echo, on_failure: {fallback: b}}\n  - {id: b, kind: echo, on_failure: {fallback: c}}\n  - {id: c, kind: echo, on_failure: continue}\n  - {id: d, kind: echo, needs: [a], with: {x: '{{ steps.a.output }}'}}\n  - {id: e, kind: echo}\n";
        let (mut h, _) = Harness::new(yaml);
        fail_for_good(&mut h, "a", "1");
        let cmds = fail_for_good(&mut h, "b", "2");
        assert_eq!(started(&cmds).into_iter().map(|(s, _)| s).collect::<Vec<_>>(), vec!["c"]);
        let cmds = fail_for_good(&mut h, "c", "3");
        let reason = cmds.iter().find_map(|c| match c {
            Command::Record(Envelope { event: Event::StepSkipped { step, reason }, .. }) if step.as_str() == "d" => {
                Some(reason.clone())
            }
            _ => None,
        });
        assert_eq!(reason.as_deref(), Some("dependency 'a' is failed (its fallback 'c' is failed)"));
        h.succeed("e", json!(1));
        assert_eq!(h.state.status, RunStatus::Failed, "nothing stood in for a");

        // The same chain where the last fallback works: d gets c's output for a.
        let (mut h, _) = Harness::new(yaml);
        fail_for_good(&mut h, "a", "1");
        fail_for_good(&mut h, "b", "2");
        let cmds = h.succeed("c", json!("third"));
        assert_eq!(started(&cmds), vec![("d".to_string(), json!({"x": "third"}))]);
        h.succeed("d", json!(1));
        h.succeed("e", json!(1));
        assert_eq!(h.state.status, RunStatus::Completed, "{:?}", h.state.failure);
    }

    #[test]
    fn a_run_retried_in_place_keeps_a_step_its_fallback_covered() {
        let yaml = "name: t\nsteps:\n  - {id: a, kind: echo, on_failure: {fallback: b}}\n  - {id: b, kind: echo}\n  - {id: c, kind: echo, needs: [a]}\n";
        let (mut h, _) = Harness::new(yaml);
        fail_for_good(&mut h, "a", "down");
        h.succeed("b", json!("spare"));
        fail_for_good(&mut h, "c", "bug");
        assert_eq!(h.state.status, RunStatus::Failed);
        let cmds = h.feed(Event::RunRetried { by: None });
        assert_eq!(started(&cmds).into_iter().map(|(s, _)| s).collect::<Vec<_>>(), vec!["c"]);
        assert_eq!((status(&h, "a"), status(&h, "b")), (Some(StepStatus::Failed), Some(StepStatus::Completed)));
    }

    #[test]
    fn an_escalation_retry_grants_a_fresh_budget_but_old_journals_keep_one_attempt_per_decision() {
        let old: crate::event::Escalation = serde_json::from_str(r#"{"do":"retry"}"#).expect("old decision");
        assert_eq!(old, crate::event::Escalation::Retry { fresh_budget: false });
        let new = crate::event::Escalation::Retry { fresh_budget: true };
        assert_eq!(serde_json::to_string(&new).expect("json"), r#"{"do":"retry","fresh_budget":true}"#);

        let yaml =
            "name: t\nsteps:\n  - {id: a, kind: echo, on_failure: escalate, retry: {max_attempts: 2, jitter: 0}}\n";
        let escalated = |cmds: &[Command]| {
            cmds.iter().any(|c| {
                matches!(c, Command::Record(Envelope { event: Event::ApprovalRequested { escalation: true, .. }, .. }))
            })
        };
        for (action, retried) in [(old, false), (new, true)] {
            let (mut h, _) = Harness::new(yaml);
            let attempt = |h: &mut Harness, n: u32| {
                let input = Payload::of(&Value::Null);
                h.feed(Event::AttemptStarted { step: StepId::new("a"), attempt: n, input: input.reference });
                let failure = Failure::new(ErrorClass::Transient, "down");
                h.feed(Event::AttemptFailed { step: StepId::new("a"), attempt: n, failure, duration_ms: 1 })
            };
            attempt(&mut h, 1);
            h.feed(Event::TimerFired { step: StepId::new("a") });
            assert!(escalated(&attempt(&mut h, 2)));
            h.feed(Event::ApprovalDecided {
                step: StepId::new("a"),
                approved: true,
                by: None,
                comment: None,
                action: Some(action.clone()),
            });
            let cmds = attempt(&mut h, 3);
            assert_eq!(escalated(&cmds), !retried, "{action:?}: {cmds:#?}");
            let scheduled = cmds.iter().any(|c| {
                matches!(
                    c,
                    Command::Record(Envelope {
                        event: Event::RetryScheduled { next_attempt: 4, max_attempts: 4, .. },
                        ..
                    })
                )
            });
            assert_eq!(scheduled, retried, "{action:?}: {cmds:#?}");
        }
    }

    #[test]
    fn a_duplicated_or_late_attempt_result_is_refused_and_changes_nothing() {
        let yaml = "name: t\nsteps:\n  - {id: a, kind: echo, retry: {max_attempts: 3, jitter: 0}}\n  - {id: b, kind: echo, needs: [a]}\n";
        let (mut h, _) = Harness::new(yaml);
        let a = StepId::new("a");
        let input = Payload::of(&Value::Null);
        h.state.add_payload(&input, Value::Null);
        // Attempt 1 is lost (its worker died); attempt 2 runs after the timer.
        h.feed(Event::AttemptStarted { step: a.clone(), attempt: 1, input: input.reference.clone() });
        let lost = Failure::new(ErrorClass::Transient, "interrupted: worker gone");
        h.feed(Event::AttemptFailed { step: a.clone(), attempt: 1, failure: lost, duration_ms: 1 });
        h.feed(Event::TimerFired { step: a.clone() });
        h.feed(Event::AttemptStarted { step: a.clone(), attempt: 2, input: input.reference });
        let out = Payload::of(&json!("late"));
        h.state.add_payload(&out, json!("late"));
        let at = |seq| Envelope {
            seq,
            at_ms: 1_000,
            schema: JOURNAL_SCHEMA,
            event: Event::AttemptSucceeded {
                step: a.clone(),
                attempt: 1,
                output: out.reference.clone(),
                duration_ms: 1,
            },
        };
        // The lost attempt's result arrives late: refused, nothing changes.
        let before = h.state.clone();
        let late = decide(&mut h.state, &at(before.last_seq + 1));
        assert!(matches!(late, Err(Error::Attempt { got: 1, current: 2, .. })), "{late:?}");
        assert_eq!(h.state, before);
        // Attempt 2's result, delivered twice: the first counts, the duplicate is refused.
        let done =
            Event::AttemptSucceeded { step: a.clone(), attempt: 2, output: out.reference.clone(), duration_ms: 1 };
        h.feed(done.clone());
        let before = h.state.clone();
        let again = decide(
            &mut h.state,
            &Envelope { seq: before.last_seq + 1, at_ms: 1_000, schema: JOURNAL_SCHEMA, event: done },
        );
        assert!(again.is_err(), "a duplicate result must be refused");
        assert_eq!(h.state, before, "a refused event changes nothing");
        assert_eq!(h.state.step_state("b").map(|s| s.status), Some(StepStatus::Ready), "b started once");
    }

    #[test]
    fn a_fallback_may_list_its_step_in_needs_and_a_dependent_that_tolerates_skips_still_sees_the_failure() {
        // `cached` names `fetch` in needs too (the natural "after fetch"): it runs, not waits on
        // itself. `audit` (none_failed) is skipped when fetch failed and nothing stood in for it.
        let yaml = "name: t\ninputs: {use_cache: {}}\nsteps:\n  - {id: fetch, kind: echo, on_failure: {fallback: cached}}\n  - {id: cached, kind: echo, needs: [fetch], when: 'inputs.use_cache == true'}\n  - {id: audit, kind: echo, needs: [fetch], trigger: none_failed}\n";
        let (mut h, _) = Harness::new(yaml);
        h.state.inputs = json!({"use_cache": true});
        let cmds = fail_for_good(&mut h, "fetch", "down");
        assert_eq!(started(&cmds).into_iter().map(|(s, _)| s).collect::<Vec<_>>(), vec!["cached"]);
        let cmds = h.succeed("cached", json!(1));
        assert_eq!(started(&cmds).into_iter().map(|(s, _)| s).collect::<Vec<_>>(), vec!["audit"]);

        let (mut h, _) = Harness::new(yaml);
        h.state.inputs = json!({"use_cache": false});
        fail_for_good(&mut h, "fetch", "down");
        assert_eq!(status(&h, "cached"), Some(StepStatus::Skipped));
        assert_eq!(status(&h, "audit"), Some(StepStatus::Skipped));
        assert_eq!(
            h.state.step_state("audit").and_then(|s| s.skip_reason.clone()).as_deref(),
            Some("dependency 'fetch' failed (its fallback 'cached' is skipped)")
        );
        assert_eq!(h.state.status, RunStatus::Failed, "nothing stood in for fetch");
    }

    #[test]
    fn a_fork_decides_a_fallback_afresh_after_the_step_it_stood_in_for() {
        let (mut h, _) = Harness::new(FALLBACK);
        fail_for_good(&mut h, "fetch", "down");
        h.succeed("cached", json!("stale"));
        fail_for_good(&mut h, "report", "bug");
        let reused = crate::fork::reusable(&h.state, "report").expect("fork");
        assert!(reused.is_empty(), "fetch failed, so neither it nor its stand-in is reused: {reused:?}");
    }

    #[test]
    fn migration_refuses_to_make_a_step_that_already_ran_into_a_fallback() {
        let yaml = "name: t\nsteps:\n  - {id: p, kind: echo}\n  - {id: g, kind: echo}\n";
        let (mut h, _) = Harness::new(yaml);
        h.succeed("g", json!(1));
        let v2 = crate::validate::parse_definition(
            "name: t\nversion: 2\nsteps:\n  - {id: p, kind: echo, on_failure: {fallback: g}}\n  - {id: g, kind: echo}\n",
            "v2.yaml",
        )
        .expect("valid");
        let problem = crate::fork::migration_problem(&h.state, &v2);
        assert_eq!(
            problem.as_deref(),
            Some("step 'g' already started; version 2 changes which step it is the fallback of")
        );
        let v3 = crate::validate::parse_definition(
            "name: t\nversion: 3\nsteps:\n  - {id: p, kind: echo, on_failure: {fallback: h}}\n  - {id: g, kind: echo}\n  - {id: h, kind: echo}\n",
            "v3.yaml",
        )
        .expect("valid");
        assert_eq!(crate::fork::migration_problem(&h.state, &v3), None, "a new fallback for a running step is fine");
    }
}
