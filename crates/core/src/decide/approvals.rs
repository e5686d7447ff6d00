use super::Decider;
use crate::definition::OnDeadline;
use crate::event::{ErrorClass, Escalation, Event, Failure};
use crate::ids::StepId;
use crate::state::Error;
use crate::template;
use crate::timer::TimerPurpose;
use serde_json::Value;

impl Decider<'_> {
    /// A step with an approval gate that nobody approved yet asks first: the request is
    /// journaled (and its deadline armed) before the run can pause. Whether it asked.
    pub(super) fn ask_approval(&mut self, i: usize) -> Result<bool, Error> {
        let Some(def) = self.definition() else { return Ok(false) };
        let step = &def.steps[i];
        let decision = self.state.steps[i].approval.as_ref().and_then(|a| a.decision.clone());
        let Some(gate) = &step.approval else { return Ok(false) };
        // A call inside an attempt was asked about: the gate was passed before that attempt.
        let past_gate = self.state.steps[i].approval.as_ref().is_some_and(|a| a.call.is_some());
        if matches!(decision, Some((true, ..))) || past_gate {
            return Ok(false);
        }
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
            call: None,
        })?;
        if let Some(at_ms) = deadline_ms {
            self.arm(&step.id, TimerPurpose::ApprovalDeadline, at_ms);
        }
        Ok(true)
    }

    /// A person decided: run the step, skip it with the supplied output, or fail it.
    pub(super) fn on_decision(
        &mut self,
        step: &StepId,
        approved: bool,
        action: Option<&Escalation>,
    ) -> Result<(), Error> {
        let Some(i) = self.state.step_index(step.as_str()) else { return Ok(()) };
        let failure = self.state.steps[i].last_failure.clone();
        match action {
            Some(Escalation::Skip { .. }) => Ok(()),
            Some(Escalation::Abort) => self.apply_failure_policy(i, failure, true),
            Some(Escalation::Retry { .. }) | None if approved => self.start_attempt(i),
            Some(Escalation::Retry { .. }) | None => self.apply_failure_policy(i, failure, false),
        }
    }

    /// An approval deadline passed: reject, fail the run, or record the escalation and wait.
    pub(super) fn on_deadline(&mut self, step: &StepId) -> Result<(), Error> {
        let Some(def) = self.definition() else { return Ok(()) };
        let Some(i) = self.state.step_index(step.as_str()) else { return Ok(()) };
        let policy = def.steps[i].approval.as_ref().map(|a| a.on_deadline).unwrap_or_default();
        let failure = Failure::new(ErrorClass::Permanent, "the approval deadline passed without a decision");
        match policy {
            OnDeadline::Reject => self.fail_step(i, failure),
            OnDeadline::Fail => {
                self.record(Event::StepFailed { step: step.clone(), failure: failure.clone() })?;
                self.apply_failure_policy(i, Some(failure), true)
            }
            OnDeadline::Wait => self.record(Event::ApprovalEscalated {
                step: step.clone(),
                note: "approval deadline passed; escalated, still waiting".into(),
            }),
        }
    }
}
