//! Subworkflows: a step whose attempt is a child run. Starting it is a decided event
//! (`ChildStarted`) that names the child by an id derived from the run, the step and the attempt,
//! so the engine can create it idempotently after the commit (and again after a crash). The step
//! waits without a worker; the child's end arrives as `ChildEnded`, and a failed child is a failed
//! attempt, so the step's retry policy (or `on_failure`) decides what happens next.

use super::{Command, Decider};
use crate::event::{ErrorClass, Event, Failure};
use crate::ids::RunId;
use crate::machine::RunStatus;
use crate::payload::Payload;
use crate::state::Error;
use crate::template;
use serde_json::json;

impl Decider<'_> {
    /// Starts step `i`'s next attempt as a child run.
    pub(super) fn begin_child(&mut self, i: usize) -> Result<(), Error> {
        let Some(def) = self.definition() else { return Ok(()) };
        // A paused run starts nothing: the step stays ready and `RunUnpaused` starts it.
        if self.state.status == RunStatus::Paused {
            return Ok(());
        }
        let step = def.steps[i].id.clone();
        let input = match template::render_input(&def.steps[i].with, &self.context(i)) {
            Ok((_, secrets)) if !secrets.is_empty() => {
                let msg = "a subworkflow's inputs are journaled by the child run, so they cannot hold secrets; let \
                           the child read `{{ secrets.NAME }}` in its own steps";
                return self.fail_step(i, Failure::new(ErrorClass::Permanent, msg));
            }
            Ok((input, _)) => input,
            Err(msg) => {
                return self.fail_step(i, Failure::new(ErrorClass::Permanent, format!("input does not render: {msg}")));
            }
        };
        let attempt = self.state.steps[i].attempts + 1;
        let child = child_id(&self.state.run_id, step.as_str(), attempt, self.at);
        let payload = Payload::of(&input);
        self.state.add_payload(&payload, input.clone());
        let reference = payload.reference.clone();
        self.out.push(Command::StorePayload(payload));
        self.record(Event::ChildStarted { step: step.clone(), attempt, child: child.to_string(), input: reference })?;
        self.out.push(Command::StartChild { step, attempt, child, input });
        Ok(())
    }

    /// After a restart or an unpause: every step waiting for a child asks for it again (the
    /// engine starts it only if it does not exist, and reports it if it already ended).
    pub(super) fn restart_children(&mut self) {
        for s in &self.state.steps {
            if !s.awaits_child() {
                continue;
            }
            let Some(c) = &s.child else { continue };
            let (Ok(child), Some(input)) = (RunId::parse(&c.run_id), self.state.payload(&c.input)) else { continue };
            let input = (**input).clone();
            self.out.push(Command::StartChild { step: s.id.clone(), attempt: c.attempt, child, input });
        }
    }
}

/// The id of the child run of `step`'s attempt `attempt` in `run`: the same every time it is
/// derived, and ordered by when the attempt began, like any run id.
fn child_id(run: &RunId, step: &str, attempt: u32, at_ms: i64) -> RunId {
    let hash = Payload::of(&json!([run.as_str(), step, attempt])).reference.hash;
    let random = u128::from_str_radix(&hash[..32.min(hash.len())], 16).unwrap_or(0);
    RunId::from_parts(at_ms.max(0) as u64, random)
}
