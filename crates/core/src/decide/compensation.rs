//! Undoing completed steps (sagas): one compensation at a time, newest completion first, each
//! with its own retries.

use super::{Command, Decider};
use crate::event::{ErrorClass, Event, Failure};
use crate::ids::StepId;
use crate::machine::RunStatus;
use crate::state::Error;
use crate::template;
use crate::timer::TimerPurpose;
use serde_json::Value;

impl Decider<'_> {
    /// Compensations run one at a time, newest completion first; when none is left the run ends
    /// COMPENSATED, or FAILED naming the compensations that failed.
    pub(super) fn compensate_next(&mut self) -> Result<(), Error> {
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

    pub(super) fn start_compensation(&mut self, i: usize) -> Result<(), Error> {
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

    pub(super) fn on_compensation_failed(
        &mut self,
        step: &StepId,
        attempt: u32,
        failure: &Failure,
    ) -> Result<(), Error> {
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
                self.arm(step, TimerPurpose::CompensationRetry { attempt: attempt + 1 }, not_before_ms);
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
}
