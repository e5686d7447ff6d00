//! `decide`: apply one event to a run's state and return what should happen next.
//!
//! Events come in two sorts. *External* events report something the edge did or saw: the run was
//! created, a plan was made, an attempt started, succeeded or failed, a timer fired, an operator
//! cancelled. *Decided* events (a step became ready or was skipped, a retry was scheduled, the run
//! completed...) are produced here, already applied to the state, stamped with the triggering
//! event's time, and handed back as [`Command::Record`] for the engine to journal in the same
//! transaction. Because nothing here reads a clock or draws a random number, replaying the
//! external events of a journal must reproduce its decided events exactly; [`replay`] checks it.
//!
//! The decider is split by concern: `steps` (readiness, starting attempts, finishing the run),
//! `failure` (retries and `on_failure` policies), `approvals` (gates, deadlines, escalations),
//! `compensation` (undoing completed steps), `waits` (durable waits), `expand` (`for_each` and
//! `loop` instances), `context` (what templates and conditions see) and `replay` (checking a
//! journal against the current core).

mod approvals;
mod children;
#[cfg(test)]
mod children_tests;
mod compensation;
mod context;
mod expand;
#[cfg(test)]
mod expand_tests;
mod failure;
mod replay;
mod steps;
#[cfg(test)]
mod tests;
pub(crate) mod waits;

pub use replay::{ReplayError, replay};

use crate::event::{Envelope, ErrorClass, Event, Failure, JOURNAL_SCHEMA};
use crate::ids::StepId;
use crate::machine::{RunStatus, StepStatus};
use crate::payload::Payload;
use crate::secrets::SecretSlot;
use crate::state::{Error, RunState};
use crate::timer::{Timer, TimerId, TimerPurpose};
use serde_json::Value;
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
    /// When the timer is due, turn it into its event with `RunState::fire_timer` (which refuses
    /// a timer the run no longer has) and report that event.
    ArmTimer(Timer),
    /// Start the child run `child` of a `subworkflow` step's attempt (after the commit that
    /// records `ChildStarted`) unless it exists; if it already ended, report how. Its end comes
    /// back as a `ChildEnded` request in this run's inbox.
    StartChild { step: StepId, attempt: u32, child: crate::ids::RunId, input: Value },
    /// Run the step's compensation: record `CompensationAttemptStarted`, commit, then run it
    /// (`input` and `secrets` as for `StartAttempt`).
    StartCompensation { step: StepId, index: usize, attempt: u32, input: Value, secrets: Vec<SecretSlot> },
}

/// Whether an event is produced by `decide` (as opposed to reported by the edge).
pub fn is_decided(event: &Event) -> bool {
    match event {
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
        | Event::WaitStarted { .. }
        | Event::WaitEnded { .. }
        | Event::StepExpanded { .. }
        | Event::LoopIterated { .. }
        | Event::StepJoined { .. }
        | Event::ChildStarted { .. } => true,
        Event::RunCreated { .. }
        | Event::PlanRecorded { .. }
        | Event::AttemptStarted { .. }
        | Event::AttemptSucceeded { .. }
        | Event::AttemptFailed { .. }
        | Event::TimerFired { .. }
        | Event::StepCancelled { .. }
        | Event::RunCancelled { .. }
        | Event::RunPaused { .. }
        | Event::RunUnpaused { .. }
        | Event::RunRetried { .. }
        | Event::SignalReceived { .. }
        | Event::DefinitionMigrated { .. }
        | Event::CompensationAttemptStarted { .. }
        | Event::CompensationAttemptSucceeded { .. }
        | Event::CompensationAttemptFailed { .. }
        | Event::CompensationTimerFired { .. }
        | Event::ApprovalDecided { .. }
        | Event::ApprovalExpired { .. }
        | Event::WaitElapsed { .. }
        | Event::ChildEnded { .. } => false,
    }
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
            d.take_waiting_signals()?;
            d.reconcile()?;
        }
        Event::ApprovalDecided { step, approved, action, .. } => {
            // Folded already: a call's decision is with the step, which runs again to use it.
            let for_call = action.is_none()
                && d.state
                    .step_index(step.as_str())
                    .is_some_and(|i| d.state.steps[i].approval.as_ref().is_some_and(|a| a.call.is_some()));
            d.on_decision(step, *approved || for_call, action.as_ref())?;
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
        Event::WaitElapsed { step } => {
            d.on_wait_elapsed(step)?;
            d.reconcile()?;
        }
        Event::SignalReceived { name, .. } => {
            d.on_signal(name)?;
            d.reconcile()?;
        }
        Event::ChildEnded { step, attempt, failure, output, .. } => {
            // The run moves again (it may wait again at once).
            if d.state.status == RunStatus::Waiting {
                d.record(Event::RunResumed)?;
            }
            if output.is_none() {
                let failure =
                    failure.clone().unwrap_or_else(|| Failure::new(ErrorClass::Permanent, "the child run failed"));
                d.on_attempt_failed(step, *attempt, &failure)?;
            }
            d.reconcile()?;
        }
        // Facts that need no decision: an attempt or undo began, a signal arrived (its value is
        // read when a step that uses it is decided), a pause took effect.
        Event::AttemptStarted { .. }
        | Event::CompensationAttemptStarted { .. }
        | Event::RunPaused { .. }
        | Event::StepCancelled { .. } => {}
        // Decided events are made here, never fed in; `replay` refuses them before this point.
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
        | Event::WaitStarted { .. }
        | Event::WaitEnded { .. }
        | Event::StepExpanded { .. }
        | Event::LoopIterated { .. }
        | Event::StepJoined { .. }
        | Event::ChildStarted { .. } => {}
    }
    // While paused nothing new starts and no timer is armed; `RunUnpaused` starts them.
    if d.state.status == RunStatus::Paused {
        d.out.retain(|c| !matches!(c, Command::StartAttempt { .. } | Command::ArmTimer(_)));
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
            self.out.push(Command::ArmTimer(t));
        }
        self.restart_children();
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

    fn arm(&mut self, step: &StepId, purpose: TimerPurpose, at_ms: i64) {
        self.out.push(Command::ArmTimer(Timer { id: TimerId { step: step.clone(), purpose }, at_ms }));
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
}
