//! Moving steps forward: which steps are ready or skipped, starting attempts, and ending the run
//! (completed, failed, or waiting) once nothing else can move.

use super::{Command, Decider};
use crate::definition::Trigger;
use crate::event::{ErrorClass, Event, Failure};
use crate::expr;
use crate::kinds::Role;
use crate::machine::{RunStatus, StepStatus};
use crate::payload::Payload;
use crate::state::Error;
use crate::template;
use serde_json::{Map, Value, json};

impl Decider<'_> {
    /// Starts step `i`'s next attempt with its rendered input (after its gate, if it has one).
    pub(super) fn start_attempt(&mut self, i: usize) -> Result<(), Error> {
        let Some(def) = self.definition() else { return Ok(()) };
        let step = &def.steps[i];
        if self.ask_approval(i)? || self.begin_expansion(i)? {
            return Ok(());
        }
        if def.steps[i].role() == Role::Wait {
            return self.begin_wait(i);
        }
        if def.steps[i].role() == Role::Subworkflow {
            return self.begin_child(i);
        }
        let decision = self.state.steps[i].approval.as_ref().and_then(|a| a.decision.clone());
        if step.role() == Role::Gate {
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
    pub(super) fn reconcile(&mut self) -> Result<(), Error> {
        let Some(def) = self.definition() else { return Ok(()) };
        if self.state.status == RunStatus::Compensating {
            return Ok(());
        }
        loop {
            if self.state.status.is_terminal() {
                return Ok(());
            }
            let mut progressed = false;
            // The steps as written; the instances a run added are moved by their step.
            for (i, step) in def.steps.iter().enumerate().take(def.written()) {
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
            progressed |= self.advance_expansions()?;
            if !progressed {
                break;
            }
        }
        self.finish_or_wait()
    }

    pub(super) fn finish_or_wait(&mut self) -> Result<(), Error> {
        let steps = &self.state.steps;
        if self.state.status.is_terminal() {
            return Ok(());
        }
        if steps.iter().all(|s| s.status.is_terminal()) {
            // A failed step whose fallback completed in its place does not fail the run. A failed
            // item of a `for_each` that went on without it (`on_failure: continue`) does, as a
            // failed step with `continue` does: once everything else has finished.
            let written = self.definition().map_or(steps.len(), |d| d.written());
            let failed: Vec<usize> = (0..steps.len())
                .filter(|&k| steps[k].status == StepStatus::Failed && !self.state.is_covered(k))
                .filter(|&k| {
                    k < written || self.state.parent_of(k).is_some_and(|p| steps[p].status == StepStatus::Completed)
                })
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
            for (i, s) in steps.iter().enumerate().take(written) {
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
        // Instances are counted by their step, so this does not visit every item of a long list.
        let written = self.definition().map_or(steps.len(), |d| d.written());
        let active = steps[..written].iter().any(|s| {
            matches!(s.status, StepStatus::Ready | StepStatus::Running)
                || s.expansion.as_ref().is_some_and(|e| e.running > 0)
        });
        match (self.state.status, active) {
            (RunStatus::Waiting, true) => return self.record(Event::RunResumed),
            (RunStatus::Executing, false) => {}
            _ => return Ok(()),
        }
        let approval = steps.iter().find(|s| s.awaits_decision());
        let wait = steps.iter().find(|s| s.status == StepStatus::Waiting && s.wait.is_some());
        let child = steps.iter().find(|s| s.awaits_child());
        let retry = steps.iter().filter(|s| s.status == StepStatus::RetryWait).min_by_key(|s| s.not_before_ms);
        let waiting = match (approval, retry) {
            (Some(s), _) if s.escalated => Some(format!("step '{}' failed; a person decides what to do", s.id)),
            (Some(s), _) => Some(format!("step '{}' awaits approval", s.id)),
            (None, Some(s)) => Some(format!("step '{}' waits to retry", s.id)),
            (None, None) => wait
                .map(|s| match s.wait.as_ref().and_then(|w| w.signal.as_deref()) {
                    Some(name) => format!("step '{}' waits for signal '{name}'", s.id),
                    None => format!("step '{}' waits", s.id),
                })
                .or_else(|| {
                    let s = child?;
                    let run = s.child.as_ref().map_or("", |c| c.run_id.as_str());
                    Some(format!("step '{}' waits for child run {run}", s.id))
                }),
        };
        match waiting {
            Some(reason) => self.record(Event::RunWaiting { reason }),
            None => Ok(()),
        }
    }
}
