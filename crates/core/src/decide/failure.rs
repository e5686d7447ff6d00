//! After an attempt failed: schedule a retry, ask a person (escalation), or fail the step and
//! apply its `on_failure` policy.

use super::Decider;
use crate::budget::RUN_BUDGET;
use crate::definition::{OnExceed, OnFailure};
use crate::event::{ErrorClass, Event, Failure};
use crate::ids::StepId;
use crate::state::Error;
use crate::timer::TimerPurpose;

impl Decider<'_> {
    pub(super) fn on_attempt_failed(&mut self, step: &StepId, attempt: u32, failure: &Failure) -> Result<(), Error> {
        let Some(def) = self.definition() else { return Ok(()) };
        let Some(i) = self.state.step_index(step.as_str()) else { return Ok(()) };
        if let (ErrorClass::ApprovalRequired, Some(call)) = (failure.class, &failure.approval) {
            // Not a fault: the step waits for a person's answer about that call.
            let prompt = format!(
                "step '{step}' wants to call tool '{}' ({}): {}. Approve, approve with edited arguments, or reject \
                 with a reason?",
                call.tool, call.effect, call.reason
            );
            return self.record(Event::ApprovalRequested {
                step: step.clone(),
                prompt,
                approvers: Vec::new(),
                deadline_ms: None,
                escalation: false,
                call: Some(call.clone()),
            });
        }
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
                let purpose = TimerPurpose::Retry { attempt: attempt + 1 };
                self.arm(step, purpose, not_before_ms);
                Ok(())
            }
            None if self.state.crossed(i, failure).is_some_and(|b| b.on_exceed == OnExceed::Escalate) => {
                // The budget says: ask a person to raise it (retry with a new limit), skip, or abort.
                let scope = if failure.code.as_deref() == Some(RUN_BUDGET) { "the run's" } else { "the step's" };
                let prompt = format!(
                    "step '{step}' stopped at {scope} budget: {}. Raise the budget and retry, skip the step with an \
                     output, or abort the run?",
                    failure.message
                );
                self.escalate(step, prompt)
            }
            None if def.steps[i].on_failure == OnFailure::Escalate => {
                // Ask a person instead of failing: retry, skip with an output, or abort.
                let prompt = format!(
                    "step '{step}' failed after {attempt} attempt(s): {failure}. Retry it, skip it with an output, or abort the run?"
                );
                self.escalate(step, prompt)
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

    /// Asks any operator what to do about the step's failure (retry, skip with an output, abort).
    fn escalate(&mut self, step: &StepId, prompt: String) -> Result<(), Error> {
        self.record(Event::ApprovalRequested {
            step: step.clone(),
            prompt,
            approvers: Vec::new(),
            deadline_ms: None,
            escalation: true,
            call: None,
        })
    }

    /// Records the step's failure and applies its `on_failure` policy.
    pub(super) fn fail_step(&mut self, i: usize, failure: Failure) -> Result<(), Error> {
        let Some(def) = self.definition() else { return Ok(()) };
        let step = def.steps[i].id.clone();
        let mut failure = failure;
        if let OnFailure::Fallback(f) = &def.steps[i].on_failure {
            failure.message = format!("{} (falls back to '{f}')", failure.message);
        }
        self.record(Event::StepFailed { step, failure: failure.clone() })?;
        if let Some(p) = self.state.parent_of(i) {
            return self.instance_failed(p, i, &failure);
        }
        self.apply_failure_policy(i, Some(failure), false)
    }

    /// After a step failed: fail the run if its `on_failure` says so (or `force`).
    pub(super) fn apply_failure_policy(
        &mut self,
        i: usize,
        failure: Option<Failure>,
        force: bool,
    ) -> Result<(), Error> {
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
    pub(super) fn end_failed(&mut self, failure: Failure, step: Option<StepId>) -> Result<(), Error> {
        if self.state.needs_compensation() {
            self.record(Event::CompensationStarted { reason: failure })?;
            self.compensate_next()
        } else {
            self.record(Event::RunFailed { failure, step })
        }
    }
}
