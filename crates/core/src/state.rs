//! A run's state: the fold of its journal. `apply` is the only way state changes, and it changes
//! it only through the transition tables in [`crate::machine`].

use crate::definition::{Definition, PreparedDefinition};
use crate::event::{Envelope, ErrorClass, Event, Failure, PlanInfo, RunOptions, RunSource};
use crate::ids::{RunId, StepId};
use crate::machine::{self, InvalidTransition, RunInput, RunStatus, StepInput, StepStatus};
use crate::payload::{Payload, PayloadRef};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    #[error("event {seq} ({kind}): {source}")]
    Transition { seq: u64, kind: &'static str, source: InvalidTransition },
    #[error("event {got} is out of order: the journal is at {expected}")]
    Sequence { expected: u64, got: u64 },
    #[error("event {seq} ({kind}) names step '{step}', which is not in the plan")]
    UnknownStep { seq: u64, kind: &'static str, step: String },
    #[error("event {seq} ({kind}) is for attempt {got} of step '{step}', but the current attempt is {current}")]
    Attempt { seq: u64, kind: &'static str, step: String, got: u32, current: u32 },
    #[error("event {seq} ({kind}) came before the run was created/planned")]
    Premature { seq: u64, kind: &'static str },
    #[error("payload {hash} is missing")]
    MissingPayload { hash: String },
    #[error("the recorded plan is not a valid definition: {0}")]
    BadDefinition(String),
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StepState {
    pub id: StepId,
    pub status: StepStatus,
    /// Attempts started so far.
    pub attempts: u32,
    pub first_started_at_ms: Option<i64>,
    pub attempt_started_at_ms: Option<i64>,
    pub finished_at_ms: Option<i64>,
    /// Sum of attempt durations.
    pub busy_ms: u64,
    pub last_failure: Option<Failure>,
    pub not_before_ms: Option<i64>,
    pub output: Option<PayloadRef>,
    pub skip_reason: Option<String>,
    pub approval: Option<ApprovalState>,
    /// The current wait is an escalated failure, not an approval gate.
    pub escalated: bool,
    /// Journal position where the step completed (compensations run newest first).
    pub completed_seq: u64,
    pub compensation: Option<CompensationState>,
    /// Attempts made before the run was last retried in place; the retry policy counts from here.
    pub retry_base: u32,
    /// The step's durable wait, while it waits (`wait` kind).
    pub wait: Option<WaitState>,
    /// The instances a `for_each` or `loop` step added, once it added them.
    pub expansion: Option<Expansion>,
    /// A `subworkflow` step's current (or last) child run.
    pub child: Option<ChildState>,
    /// What people answered about the calls of its attempts (tool calls that needed approval),
    /// handed to each new attempt.
    pub call_decisions: Vec<crate::event::CallDecision>,
}

/// The child run of a `subworkflow` step's attempt.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ChildState {
    pub run_id: String,
    pub attempt: u32,
    /// Its end was reported (the step then completed, or its attempt failed).
    pub ended: bool,
    /// What it was started with (which workflow, its inputs).
    pub input: PayloadRef,
}

/// What a `for_each` or `loop` step added to the run.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Expansion {
    /// Positions (in `RunState::steps`) of its instances: items in order, or iterations 1, 2, ….
    pub instances: Vec<usize>,
    /// A `for_each` step's items.
    pub items: Option<PayloadRef>,
    /// Instances that left `PENDING`, and those of them that settled: kept as statuses change,
    /// so moving a step with many instances along never counts them all again.
    pub started: usize,
    pub settled: usize,
    /// Instances ready or running (an attempt is about to start or in flight).
    pub running: usize,
    /// No instance before this position in `instances` is `PENDING`.
    pub next: usize,
}

fn is_running(s: StepStatus) -> bool {
    matches!(s, StepStatus::Ready | StepStatus::Running)
}

impl Expansion {
    /// Instances started and not settled.
    pub fn active(&self) -> usize {
        self.started.saturating_sub(self.settled)
    }
}

/// A durable wait in progress.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct WaitState {
    pub started_at_ms: i64,
    /// When the wait ends (a duration or `until`), or when waiting for the signal times out.
    pub until_ms: Option<i64>,
    /// The signal that ends the wait.
    pub signal: Option<String>,
    /// Its timer fired.
    pub elapsed: bool,
}

/// Where undoing a completed step stands.
#[derive(Clone, Debug, PartialEq, Serialize, Default)]
pub struct CompensationState {
    pub attempts: u32,
    pub running: bool,
    pub not_before_ms: Option<i64>,
    pub last_failure: Option<Failure>,
    /// Set when the compensation failed for good.
    pub gave_up: Option<Failure>,
}

/// Where a step's approval gate stands.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ApprovalState {
    pub requested_at_ms: i64,
    pub prompt: String,
    pub deadline_ms: Option<i64>,
    /// `(approved, by, comment)` once someone decided.
    pub decision: Option<(bool, Option<String>, Option<String>)>,
    /// The deadline passed (its timer fired); an escalated gate keeps waiting without one.
    pub expired: bool,
    /// The request is for a call inside an attempt (a tool call), not a gate before the step.
    pub call: Option<Box<crate::event::CallApproval>>,
}

impl StepState {
    /// Whether a person's decision is what this step waits for (an approval gate or an escalated
    /// failure), as opposed to a durable wait or no wait at all.
    pub fn awaits_decision(&self) -> bool {
        self.status == StepStatus::Waiting && self.wait.is_none() && self.expansion.is_none() && !self.awaits_child()
    }

    /// Whether the step waits for its child run to end.
    pub fn awaits_child(&self) -> bool {
        self.status == StepStatus::Waiting && self.child.as_ref().is_some_and(|c| !c.ended)
    }

    fn new(id: StepId) -> Self {
        StepState {
            id,
            status: StepStatus::Pending,
            attempts: 0,
            first_started_at_ms: None,
            attempt_started_at_ms: None,
            finished_at_ms: None,
            busy_ms: 0,
            last_failure: None,
            not_before_ms: None,
            output: None,
            skip_reason: None,
            approval: None,
            escalated: false,
            completed_seq: 0,
            compensation: None,
            retry_base: 0,
            wait: None,
            expansion: None,
            child: None,
            call_decisions: Vec::new(),
        }
    }

    /// Whether the step waits for a person's answer about a call inside its attempt.
    pub fn awaits_call_decision(&self) -> bool {
        self.approval.as_ref().is_some_and(|a| a.call.is_some() && a.decision.is_none())
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct RunState {
    pub run_id: RunId,
    pub status: RunStatus,
    pub workflow: String,
    pub source: Option<RunSource>,
    pub inputs: Value,
    pub options: RunOptions,
    pub definition: Option<Arc<Definition>>,
    pub definition_ref: Option<PayloadRef>,
    pub plan: Option<PlanInfo>,
    /// Parallel to `definition.steps`, which holds the definition as written followed by the
    /// instances the run added (`for_each` items, `loop` iterations).
    pub steps: Vec<StepState>,
    /// Position of each step in `steps`, by id.
    index: HashMap<StepId, usize>,
    /// Payload values this run refers to, by hash.
    pub payloads: BTreeMap<String, Arc<Value>>,
    pub last_seq: u64,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    pub finished_at_ms: Option<i64>,
    pub failure: Option<Failure>,
    pub failed_step: Option<StepId>,
    pub output: Option<PayloadRef>,
    /// Latest payload of each signal received, by name.
    pub signals: BTreeMap<String, PayloadRef>,
    /// Every signal received, by name, in order; waits take them one each, oldest first.
    pub signal_log: BTreeMap<String, Vec<PayloadRef>>,
    /// How many of each name's signals ended a wait.
    pub signals_taken: BTreeMap<String, usize>,
    /// Budgets raised by people, oldest first (see [`RunState::budgets`]).
    pub budget_raises: Vec<crate::event::BudgetRaise>,
    /// A definition already read back from its payload (by hash), for the `PlanRecorded` that
    /// records it: taken by that event, so it never outlives it.
    parsed_definition: Option<(String, Arc<Definition>)>,
}

impl RunState {
    /// An empty state for a run about to be created (or loaded).
    pub fn new(run_id: RunId) -> Self {
        RunState {
            run_id,
            status: RunStatus::Pending,
            workflow: String::new(),
            source: None,
            inputs: Value::Null,
            options: RunOptions::default(),
            definition: None,
            definition_ref: None,
            plan: None,
            steps: Vec::new(),
            index: HashMap::new(),
            payloads: BTreeMap::new(),
            last_seq: 0,
            created_at_ms: 0,
            updated_at_ms: 0,
            finished_at_ms: None,
            failure: None,
            failed_step: None,
            output: None,
            signals: BTreeMap::new(),
            signal_log: BTreeMap::new(),
            signals_taken: BTreeMap::new(),
            budget_raises: Vec::new(),
            parsed_definition: None,
        }
    }

    /// Rebuilds a run from its journal and payloads.
    pub fn fold(
        run_id: RunId,
        events: &[Envelope],
        payloads: impl IntoIterator<Item = (String, Arc<Value>)>,
    ) -> Result<RunState, Error> {
        let mut state = RunState::new(run_id);
        state.payloads.extend(payloads);
        for e in events {
            state.apply(e)?;
        }
        Ok(state)
    }

    /// Makes a payload's value known to the state (before applying the event that refers to it).
    pub fn add_payload(&mut self, payload: &Payload, value: Value) {
        self.payloads.entry(payload.reference.hash.clone()).or_insert_with(|| Arc::new(value));
    }

    /// Adds a prepared definition's payload; the `PlanRecorded` that records it then takes the
    /// definition as prepared instead of reading it back from the payload (the same value: see
    /// [`PreparedDefinition`]).
    pub fn add_definition(&mut self, prepared: &PreparedDefinition) {
        let hash = &prepared.payload.reference.hash;
        self.payloads.entry(hash.clone()).or_insert_with(|| prepared.value.clone());
        self.parsed_definition = Some((hash.clone(), prepared.parsed.clone()));
    }

    /// The definition a payload holds.
    fn definition_in(&mut self, r: &PayloadRef) -> Result<Arc<Definition>, Error> {
        if let Some((hash, parsed)) = self.parsed_definition.take()
            && hash == r.hash
        {
            return Ok(parsed);
        }
        let value = self.payloads.get(&r.hash).ok_or_else(|| Error::MissingPayload { hash: r.hash.clone() })?;
        Definition::deserialize(&**value).map(Arc::new).map_err(|e| Error::BadDefinition(e.to_string()))
    }

    pub fn payload(&self, r: &PayloadRef) -> Option<&Arc<Value>> {
        self.payloads.get(&r.hash)
    }

    pub fn step_index(&self, id: &str) -> Option<usize> {
        self.index.get(id).copied()
    }

    pub fn step_state(&self, id: &str) -> Option<&StepState> {
        self.step_index(id).map(|i| &self.steps[i])
    }

    fn reindex(&mut self) {
        self.index = self.steps.iter().enumerate().map(|(i, s)| (s.id.clone(), i)).collect();
    }

    /// The step that instance `i` belongs to (a `for_each` or `loop` step), if `i` is one.
    pub fn parent_of(&self, i: usize) -> Option<usize> {
        let of = &self.definition.as_ref()?.steps.get(i)?.instance.as_ref()?.of;
        self.step_index(of.as_str())
    }

    /// The step an operator would call "current": the first running, else ready, else waiting one.
    pub fn current_step(&self) -> Option<&StepId> {
        for wanted in [StepStatus::Running, StepStatus::Ready, StepStatus::RetryWait] {
            if let Some(s) = self.steps.iter().find(|s| s.status == wanted) {
                return Some(&s.id);
            }
        }
        None
    }

    /// Completed steps that declare a compensation and have not been undone (or given up on).
    pub fn needs_compensation(&self) -> bool {
        self.pending_compensations().next().is_some()
    }

    /// Indexes of the steps still to undo, newest completion first.
    pub fn pending_compensations(&self) -> impl Iterator<Item = usize> + '_ {
        let mut idx: Vec<usize> = match &self.definition {
            Some(def) => (0..self.steps.len())
                .filter(|&i| {
                    let s = &self.steps[i];
                    // A `for_each` or `loop` step is undone through its instances.
                    def.steps[i].compensate.is_some()
                        && s.expansion.is_none()
                        && matches!(s.status, StepStatus::Completed | StepStatus::Compensating)
                        && s.compensation.as_ref().is_none_or(|c| c.gave_up.is_none())
                })
                .collect(),
            None => Vec::new(),
        };
        idx.sort_by_key(|&i| std::cmp::Reverse(self.steps[i].completed_seq));
        idx.into_iter()
    }

    /// The step whose outcome counts for step `k`: `k` itself, or — when `k` failed for good and
    /// names a fallback — the fallback, followed along chains. The status returned may be
    /// unsettled (the fallback has not run yet); then whatever needs `k` must wait.
    pub fn outcome(&self, k: usize) -> (usize, StepStatus) {
        let mut at = k;
        if let Some(def) = &self.definition {
            // A chain never revisits a step (validation rejects fallback cycles); the bound keeps
            // a hand-written definition from looping.
            for _ in 0..self.steps.len() {
                match (self.steps[at].status, def.fallback_of(at)) {
                    (StepStatus::Failed, Some(f)) if f < self.steps.len() => at = f,
                    _ => break,
                }
            }
        }
        (at, self.steps[at].status)
    }

    /// A failed step whose fallback completed in its place: it does not fail the run.
    pub fn is_covered(&self, k: usize) -> bool {
        self.steps[k].status == StepStatus::Failed && self.outcome(k).1 == StepStatus::Completed
    }

    /// The value of a step's output, if it completed.
    pub fn output_of(&self, index: usize) -> Option<&Arc<Value>> {
        self.steps.get(index).and_then(|s| s.output.as_ref()).and_then(|r| self.payloads.get(&r.hash))
    }

    /// Applies one journaled event. Fails, changing nothing, if the event is illegal here.
    pub fn apply(&mut self, env: &Envelope) -> Result<(), Error> {
        let kind = env.event.kind();
        let seq = env.seq;
        if seq != self.last_seq + 1 {
            return Err(Error::Sequence { expected: self.last_seq + 1, got: seq });
        }
        let tr = |source| Error::Transition { seq, kind, source };
        let at = env.at_ms;
        match &env.event {
            Event::RunCreated { workflow, source, inputs, options } => {
                if seq != 1 {
                    return Err(tr(InvalidTransition {
                        machine: "run",
                        from: self.status.to_string(),
                        input: "RunCreated".into(),
                    }));
                }
                self.workflow = workflow.clone();
                self.source = Some(source.clone());
                self.inputs = inputs.clone();
                self.options = options.clone();
                self.created_at_ms = at;
                self.status = RunStatus::Pending;
            }
            Event::PlanningStarted => {
                self.require_created(seq, kind)?;
                self.status = machine::run_transition(self.status, RunInput::PlanningStarted).map_err(tr)?;
            }
            Event::PlanRecorded { definition, plan, reused } => {
                self.require_created(seq, kind)?;
                let next = machine::run_transition(self.status, RunInput::PlanRecorded).map_err(tr)?;
                let def = self.definition_in(definition)?;
                let mut steps: Vec<StepState> = def.steps.iter().map(|s| StepState::new(s.id.clone())).collect();
                for r in reused {
                    let step = steps.iter_mut().find(|s| s.id == r.step).ok_or_else(|| Error::UnknownStep {
                        seq,
                        kind,
                        step: r.step.to_string(),
                    })?;
                    if !self.payloads.contains_key(&r.output.hash) {
                        return Err(Error::MissingPayload { hash: r.output.hash.clone() });
                    }
                    step.status = machine::step_transition(step.status, StepInput::Reused).map_err(tr)?;
                    step.output = Some(r.output.clone());
                    step.finished_at_ms = Some(at);
                    step.completed_seq = seq;
                }
                self.steps = steps;
                self.reindex();
                self.definition = Some(def);
                self.definition_ref = Some(definition.clone());
                self.plan = plan.clone();
                self.status = next;
            }
            Event::RunWaiting { .. } => {
                self.status = machine::run_transition(self.status, RunInput::Waiting).map_err(tr)?;
            }
            Event::RunResumed => {
                self.status = machine::run_transition(self.status, RunInput::Resumed).map_err(tr)?;
            }
            Event::RunCompleted { output } => {
                self.status = machine::run_transition(self.status, RunInput::Completed).map_err(tr)?;
                self.output = Some(output.clone());
                self.finished_at_ms = Some(at);
            }
            Event::RunFailed { failure, step } => {
                self.require_created(seq, kind)?;
                self.status = machine::run_transition(self.status, RunInput::Failed).map_err(tr)?;
                self.failure = Some(failure.clone());
                self.failed_step = step.clone();
                self.finished_at_ms = Some(at);
                self.end_unsettled_steps(at);
            }
            Event::DefinitionMigrated { definition, .. } => {
                self.require_created(seq, kind)?;
                if self.status.is_terminal() || self.definition.is_none() {
                    return Err(tr(InvalidTransition {
                        machine: "run",
                        from: self.status.to_string(),
                        input: "DefinitionMigrated".into(),
                    }));
                }
                let def = self.definition_in(definition)?;
                if let Some(problem) = crate::fork::migration_problem(self, &def) {
                    return Err(Error::BadDefinition(problem));
                }
                let mut old = std::mem::take(&mut self.steps);
                self.steps = def
                    .steps
                    .iter()
                    .map(|s| match old.iter().position(|o| o.id == s.id) {
                        Some(i) => old.swap_remove(i),
                        None => StepState::new(s.id.clone()),
                    })
                    .collect();
                self.reindex();
                self.definition = Some(def);
                self.definition_ref = Some(definition.clone());
            }
            Event::RunPaused { .. } => {
                self.status = machine::run_transition(self.status, RunInput::Paused).map_err(tr)?;
            }
            Event::RunUnpaused { .. } => {
                self.status = machine::run_transition(self.status, RunInput::Unpaused).map_err(tr)?;
            }
            Event::RunRetried { .. } => {
                if self.steps.iter().any(|s| s.compensation.is_some()) {
                    // Undone work is not redone in place (a fork can start it afresh).
                    return Err(tr(InvalidTransition {
                        machine: "run",
                        from: format!("{} after compensation", self.status),
                        input: "Retried".into(),
                    }));
                }
                self.status = machine::run_transition(self.status, RunInput::Retried).map_err(tr)?;
                self.failure = None;
                self.failed_step = None;
                self.finished_at_ms = None;
                self.output = None;
                // A failed step whose fallback completed stays as it is: its stand-in's result is
                // the one the rest of the run used.
                // An instance runs again only with its step: the items of a step that completed
                // (skipping a failed one, `on_failure: continue`) or was covered stay as they are.
                let mut again: Vec<bool> = (0..self.steps.len())
                    .map(|k| {
                        !self.is_covered(k)
                            && machine::step_transition(self.steps[k].status, StepInput::Retried).is_ok()
                    })
                    .collect();
                for k in 0..self.steps.len() {
                    if let Some(p) = self.parent_of(k) {
                        again[k] &= again[p];
                    }
                }
                for (s, again) in self.steps.iter_mut().zip(again) {
                    if !again {
                        continue;
                    }
                    if let Ok(next) = machine::step_transition(s.status, StepInput::Retried) {
                        let expansion = s.expansion.take();
                        *s = StepState {
                            status: next,
                            attempts: s.attempts,
                            retry_base: s.attempts,
                            first_started_at_ms: s.first_started_at_ms,
                            busy_ms: s.busy_ms,
                            last_failure: s.last_failure.take(),
                            // A step that had begun its instances keeps them (those that completed
                            // are not run again) and the approval it had: it is not asked again.
                            approval: if expansion.is_some() { s.approval.take() } else { None },
                            expansion,
                            // Approved calls stay approved; a rejected one is asked again.
                            call_decisions: std::mem::take(&mut s.call_decisions)
                                .into_iter()
                                .filter(|d| d.approved)
                                .collect(),
                            ..StepState::new(s.id.clone())
                        };
                    }
                }
                self.recount_expansions();
            }
            Event::SignalReceived { name, payload, .. } => {
                self.require_created(seq, kind)?;
                self.status = machine::run_transition(self.status, RunInput::Signal).map_err(tr)?;
                if !self.payloads.contains_key(&payload.hash) {
                    return Err(Error::MissingPayload { hash: payload.hash.clone() });
                }
                self.signals.insert(name.clone(), payload.clone());
                self.signal_log.entry(name.clone()).or_default().push(payload.clone());
            }
            Event::RunCancelled { reason, .. } if self.needs_compensation() => {
                // Cancelling a run with completed compensable steps undoes them first.
                let failure = Failure::new(ErrorClass::Permanent, format!("cancelled: {reason}"));
                self.begin_compensation(failure, at).map_err(tr)?;
            }
            Event::CompensationStarted { reason } => self.begin_compensation(reason.clone(), at).map_err(tr)?,
            Event::RunCompensated => {
                self.status = machine::run_transition(self.status, RunInput::Compensated).map_err(tr)?;
                self.finished_at_ms = Some(at);
            }
            Event::RunCancelled { reason, .. } => {
                self.require_created(seq, kind)?;
                self.status = machine::run_transition(self.status, RunInput::Cancelled).map_err(tr)?;
                if self.failure.is_none() {
                    self.failure =
                        Some(Failure::new(crate::event::ErrorClass::Permanent, format!("cancelled: {reason}")));
                }
                self.finished_at_ms = Some(at);
                self.end_unsettled_steps(at);
            }
            step_event => self.apply_step_event(seq, kind, at, step_event)?,
        }
        self.last_seq = seq;
        self.updated_at_ms = at;
        Ok(())
    }

    /// Adds the instances a `for_each` step's items or a `loop`'s next iteration call for, after
    /// the step's own. A step that already has them (it runs again after a retry in place) keeps
    /// them: the event must then name the same items, or the iteration it is at.
    fn add_instances(&mut self, idx: usize, event: &Event) -> Result<(), Error> {
        let Some(def) = self.definition.as_mut() else { return Ok(()) };
        let parent = self.steps[idx].id.clone();
        let have = self.steps[idx].expansion.as_ref().map_or(0, |e| e.instances.len());
        let (ids, items): (Vec<(StepId, u32)>, Option<PayloadRef>) = match event {
            Event::StepExpanded { items, count, .. } => {
                if !self.payloads.contains_key(&items.hash) {
                    return Err(Error::MissingPayload { hash: items.hash.clone() });
                }
                if have > 0 && have != *count as usize {
                    return Err(Error::BadDefinition(format!(
                        "step '{parent}' has {have} item(s) already, so it cannot be expanded to {count}"
                    )));
                }
                let ids = if have > 0 {
                    Vec::new()
                } else {
                    (0..*count).map(|k| (crate::definition::item_id(&parent, k), k)).collect()
                };
                (ids, Some(items.clone()))
            }
            Event::LoopIterated { iteration, .. } => {
                let n = *iteration as usize;
                if n == have && n > 0 {
                    (Vec::new(), None)
                } else if n == have + 1 {
                    (vec![(crate::definition::iteration_id(&parent, *iteration), *iteration)], None)
                } else {
                    return Err(Error::BadDefinition(format!(
                        "step '{parent}' is at iteration {have}, so it cannot begin iteration {n}"
                    )));
                }
            }
            _ => return Ok(()),
        };
        if let Some((id, _)) = ids.iter().find(|(id, _)| self.index.contains_key(id)) {
            return Err(Error::BadDefinition(format!("step '{parent}' cannot add '{id}': a step of that id exists")));
        }
        let def = Arc::make_mut(def);
        let mut added = Vec::with_capacity(ids.len());
        for (id, k) in ids {
            let at = self.steps.len();
            def.steps.push(def.instance_of(idx, id.clone(), k));
            added.push(at);
            self.index.insert(id.clone(), at);
            self.steps.push(StepState::new(id));
        }
        let expansion = self.steps[idx].expansion.get_or_insert_with(|| Expansion {
            instances: Vec::new(),
            items: None,
            started: 0,
            settled: 0,
            running: 0,
            next: 0,
        });
        expansion.instances.extend(added);
        if items.is_some() {
            expansion.items = items;
        }
        Ok(())
    }

    fn require_created(&self, seq: u64, kind: &'static str) -> Result<(), Error> {
        if self.last_seq == 0 { Err(Error::Premature { seq, kind }) } else { Ok(()) }
    }

    /// The run undoes its completed steps; `failure` (why) stays the run's failure meanwhile.
    fn begin_compensation(&mut self, failure: Failure, at: i64) -> Result<(), machine::InvalidTransition> {
        self.status = machine::run_transition(self.status, RunInput::CompensationStarted)?;
        self.failure = Some(failure);
        self.end_unsettled_steps(at);
        Ok(())
    }

    fn end_unsettled_steps(&mut self, at: i64) {
        for s in &mut self.steps {
            if let Ok(next) = machine::step_transition(s.status, StepInput::RunEnded) {
                s.status = next;
                s.finished_at_ms.get_or_insert(at);
            }
        }
        self.recount_expansions();
    }

    /// Counts every expanded step's instances again (after statuses changed wholesale).
    fn recount_expansions(&mut self) {
        for p in 0..self.steps.len() {
            let Some(e) = &self.steps[p].expansion else { continue };
            let statuses: Vec<StepStatus> = e.instances.iter().map(|&k| self.steps[k].status).collect();
            let started = statuses.iter().filter(|s| **s != StepStatus::Pending).count();
            let settled = statuses.iter().filter(|s| s.is_terminal()).count();
            let running = statuses.iter().filter(|s| is_running(**s)).count();
            let next = statuses.iter().position(|s| *s == StepStatus::Pending).unwrap_or(statuses.len());
            if let Some(e) = &mut self.steps[p].expansion {
                (e.started, e.settled, e.running, e.next) = (started, settled, running, next);
            }
        }
    }

    /// Instance `k` moved from `old` to `new`: its step's counts follow.
    fn instance_moved(&mut self, k: usize, old: StepStatus, new: StepStatus) {
        let Some(p) = self.parent_of(k) else { return };
        let Some(e) = &mut self.steps[p].expansion else { return };
        match (old == StepStatus::Pending, new == StepStatus::Pending) {
            (true, false) => e.started += 1,
            (false, true) => e.started = e.started.saturating_sub(1),
            _ => {}
        }
        match (old.is_terminal(), new.is_terminal()) {
            (false, true) => e.settled += 1,
            (true, false) => e.settled = e.settled.saturating_sub(1),
            _ => {}
        }
        match (is_running(old), is_running(new)) {
            (false, true) => e.running += 1,
            (true, false) => e.running = e.running.saturating_sub(1),
            _ => {}
        }
        let mut next = e.next;
        let len = e.instances.len();
        while next < len {
            let at = self.steps[p].expansion.as_ref().map_or(0, |e| e.instances[next]);
            if self.steps[at].status == StepStatus::Pending {
                break;
            }
            next += 1;
        }
        if let Some(e) = &mut self.steps[p].expansion {
            e.next = next;
        }
    }

    fn apply_step_event(&mut self, seq: u64, kind: &'static str, at: i64, event: &Event) -> Result<(), Error> {
        let Some(step_id) = event.step() else {
            return Err(Error::Premature { seq, kind });
        };
        if self.definition.is_none() {
            return Err(Error::Premature { seq, kind });
        }
        let run_next = machine::run_transition(self.status, RunInput::StepActivity)
            .map_err(|source| Error::Transition { seq, kind, source })?;
        let idx = self.step_index(step_id.as_str()).ok_or_else(|| Error::UnknownStep {
            seq,
            kind,
            step: step_id.to_string(),
        })?;
        if let Event::ApprovalDecided {
            action: Some(crate::event::Escalation::Retry { raise: Some(raise), .. }), ..
        } = event
        {
            self.budget_raises.push(raise.clone());
        }
        let input = match event {
            Event::StepReady { .. } => StepInput::Ready,
            Event::StepSkipped { .. } => StepInput::Skipped,
            Event::AttemptStarted { .. } => StepInput::AttemptStarted,
            Event::AttemptSucceeded { .. } => StepInput::AttemptSucceeded,
            Event::AttemptFailed { .. } => StepInput::AttemptFailed,
            Event::RetryScheduled { .. } => StepInput::RetryScheduled,
            Event::TimerFired { .. } => StepInput::TimerFired,
            Event::StepFailed { .. } => StepInput::Failed,
            Event::ApprovalRequested { .. } => StepInput::ApprovalRequested,
            // A call's approval is answered either way by running the step again with the answer.
            Event::ApprovalDecided { action: None, .. } if self.steps[idx].awaits_call_decision() => {
                StepInput::Approved
            }
            Event::ApprovalDecided { action: Some(crate::event::Escalation::Skip { .. }), .. } => {
                StepInput::SkippedWithOutput
            }
            Event::ApprovalDecided { action: Some(crate::event::Escalation::Abort), .. } => StepInput::Rejected,
            Event::ApprovalDecided { action: Some(crate::event::Escalation::Retry { .. }), .. } => StepInput::Approved,
            Event::ApprovalDecided { approved: true, .. } => StepInput::Approved,
            Event::ApprovalDecided { approved: false, .. } => StepInput::Rejected,
            Event::ApprovalExpired { .. } => StepInput::ApprovalExpired,
            Event::CompensationAttemptStarted { .. } if self.steps[idx].status == StepStatus::Completed => {
                StepInput::CompensationStarted
            }
            Event::CompensationAttemptStarted { .. }
            | Event::CompensationAttemptFailed { .. }
            | Event::CompensationRetryScheduled { .. }
            | Event::CompensationTimerFired { .. } => StepInput::CompensationAttempt,
            Event::CompensationAttemptSucceeded { .. } => StepInput::Compensated,
            Event::CompensationGaveUp { .. } => StepInput::CompensationGaveUp,
            Event::ApprovalEscalated { .. } => StepInput::ApprovalEscalated,
            Event::WaitStarted { .. } => StepInput::WaitStarted,
            Event::WaitElapsed { .. } => StepInput::WaitElapsed,
            Event::WaitEnded { .. } => StepInput::WaitEnded,
            Event::StepExpanded { .. } | Event::LoopIterated { .. } => StepInput::Expanded,
            Event::StepJoined { .. } => StepInput::Joined,
            Event::ChildStarted { .. } => StepInput::ChildStarted,
            Event::ChildEnded { output: Some(_), .. } => StepInput::ChildCompleted,
            Event::ChildEnded { .. } => StepInput::ChildFailed,
            // Run-level events are applied by `apply`; reaching here means one came too early.
            // `StepCancelled` is never journaled (a run's end cancels its unsettled steps).
            Event::StepCancelled { .. }
            | Event::RunCreated { .. }
            | Event::PlanningStarted
            | Event::PlanRecorded { .. }
            | Event::RunWaiting { .. }
            | Event::RunResumed
            | Event::RunCompleted { .. }
            | Event::RunFailed { .. }
            | Event::RunCancelled { .. }
            | Event::RunPaused { .. }
            | Event::RunUnpaused { .. }
            | Event::RunRetried { .. }
            | Event::SignalReceived { .. }
            | Event::DefinitionMigrated { .. }
            | Event::CompensationStarted { .. }
            | Event::RunCompensated => return Err(Error::Premature { seq, kind }),
        };
        if matches!(event, Event::StepExpanded { .. } | Event::LoopIterated { .. }) {
            let next = machine::step_transition(self.steps[idx].status, input).map_err(|source| Error::Transition {
                seq,
                kind,
                source,
            })?;
            self.add_instances(idx, event)?;
            self.steps[idx].status = next;
            self.status = run_next;
            return Ok(());
        }
        let step = &mut self.steps[idx];
        if matches!(event, Event::ApprovalDecided { .. }) && step.wait.is_some() {
            // A durable wait is not a gate: no decision ends it.
            let source = InvalidTransition {
                machine: "step",
                from: format!("{} (in a durable wait)", step.status),
                input: "ApprovalDecided".into(),
            };
            return Err(Error::Transition { seq, kind, source });
        }
        let next =
            machine::step_transition(step.status, input).map_err(|source| Error::Transition { seq, kind, source })?;
        // Attempt fencing: results are accepted only for the attempt that is current.
        let check_attempt = |got: u32, current: u32| {
            if got == current {
                Ok(())
            } else {
                Err(Error::Attempt { seq, kind, step: step_id.to_string(), got, current })
            }
        };
        match event {
            Event::StepSkipped { reason, .. } => {
                step.skip_reason = Some(reason.clone());
                step.finished_at_ms = Some(at);
            }
            Event::AttemptStarted { attempt, .. } => {
                check_attempt(*attempt, step.attempts + 1)?;
                step.attempts = *attempt;
                step.first_started_at_ms.get_or_insert(at);
                step.attempt_started_at_ms = Some(at);
                step.not_before_ms = None;
            }
            Event::AttemptSucceeded { attempt, output, duration_ms, .. } => {
                check_attempt(*attempt, step.attempts)?;
                if !self.payloads.contains_key(&output.hash) {
                    return Err(Error::MissingPayload { hash: output.hash.clone() });
                }
                step.output = Some(output.clone());
                step.busy_ms += duration_ms;
                step.finished_at_ms = Some(at);
                step.completed_seq = seq;
            }
            Event::AttemptFailed { attempt, failure, duration_ms, .. } => {
                check_attempt(*attempt, step.attempts)?;
                step.last_failure = Some(failure.clone());
                step.busy_ms += duration_ms;
            }
            Event::RetryScheduled { next_attempt, not_before_ms, .. } => {
                check_attempt(*next_attempt, step.attempts + 1)?;
                step.not_before_ms = Some(*not_before_ms);
            }
            Event::StepFailed { failure, .. } => {
                step.last_failure = Some(failure.clone());
                step.finished_at_ms = Some(at);
                step.not_before_ms = None;
            }
            Event::CompensationAttemptStarted { attempt, .. } => {
                let c = step.compensation.get_or_insert_with(Default::default);
                check_attempt(*attempt, c.attempts + 1)?;
                c.attempts = *attempt;
                c.running = true;
                c.not_before_ms = None;
            }
            Event::CompensationAttemptSucceeded { attempt, duration_ms, .. }
            | Event::CompensationAttemptFailed { attempt, duration_ms, .. } => {
                let c = step.compensation.get_or_insert_with(Default::default);
                check_attempt(*attempt, c.attempts)?;
                c.running = false;
                if let Event::CompensationAttemptFailed { failure, .. } = event {
                    c.last_failure = Some(failure.clone());
                }
                step.busy_ms += duration_ms;
            }
            Event::CompensationRetryScheduled { next_attempt, not_before_ms, .. } => {
                let c = step.compensation.get_or_insert_with(Default::default);
                check_attempt(*next_attempt, c.attempts + 1)?;
                c.not_before_ms = Some(*not_before_ms);
            }
            Event::CompensationGaveUp { failure, .. } => {
                let c = step.compensation.get_or_insert_with(Default::default);
                c.gave_up = Some(failure.clone());
                c.not_before_ms = None;
            }
            Event::ApprovalRequested { prompt, deadline_ms, escalation, call, .. } => {
                step.escalated = *escalation;
                step.approval = Some(ApprovalState {
                    requested_at_ms: at,
                    prompt: prompt.clone(),
                    deadline_ms: *deadline_ms,
                    decision: None,
                    expired: false,
                    call: call.clone(),
                });
            }
            Event::ApprovalDecided { approved, by, comment, action: None, args, .. } if step.awaits_call_decision() => {
                let call = step.approval.as_ref().and_then(|a| a.call.as_ref()).map(|c| c.call).unwrap_or_default();
                if let Some(a) = &mut step.approval {
                    a.decision = Some((*approved, by.clone(), comment.clone()));
                }
                step.call_decisions.retain(|d| d.call != call);
                step.call_decisions.push(crate::event::CallDecision {
                    call,
                    approved: *approved,
                    by: by.clone(),
                    comment: comment.clone(),
                    args: args.clone(),
                });
                // The attempt that stopped to ask does not count against the retry policy.
                step.retry_base = step.attempts;
            }
            Event::ApprovalDecided { approved, by, comment, action, .. } => {
                if let Some(a) = &mut step.approval {
                    a.decision = Some((*approved, by.clone(), comment.clone()));
                }
                if let Some(crate::event::Escalation::Retry { fresh_budget: true, .. }) = action {
                    step.retry_base = step.attempts;
                }
                if let Some(crate::event::Escalation::Skip { output }) = action {
                    if !self.payloads.contains_key(&output.hash) {
                        return Err(Error::MissingPayload { hash: output.hash.clone() });
                    }
                    step.output = Some(output.clone());
                    step.finished_at_ms = Some(at);
                    step.skip_reason =
                        Some(format!("skipped by {} with a supplied output", by.clone().unwrap_or_default()));
                } else if matches!(action, Some(crate::event::Escalation::Abort)) {
                    let who = by.clone().unwrap_or_else(|| "an operator".into());
                    step.last_failure = Some(Failure::new(ErrorClass::Permanent, format!("aborted by {who}")));
                    step.finished_at_ms = Some(at);
                } else if !approved {
                    let who = by.clone().unwrap_or_else(|| "an operator".into());
                    let why = comment.as_ref().map(|c| format!(": {c}")).unwrap_or_default();
                    step.last_failure = Some(Failure::new(ErrorClass::Permanent, format!("rejected by {who}{why}")));
                    step.finished_at_ms = Some(at);
                }
            }
            Event::ApprovalExpired { .. } => {
                if let Some(a) = &mut step.approval {
                    a.expired = true;
                }
            }
            Event::WaitStarted { until_ms, signal, .. } => {
                step.first_started_at_ms.get_or_insert(at);
                step.wait =
                    Some(WaitState { started_at_ms: at, until_ms: *until_ms, signal: signal.clone(), elapsed: false });
            }
            Event::WaitElapsed { .. } => {
                if let Some(w) = &mut step.wait {
                    w.elapsed = true;
                }
            }
            Event::ChildStarted { attempt, child, input, .. } => {
                check_attempt(*attempt, step.attempts + 1)?;
                step.attempts = *attempt;
                step.first_started_at_ms.get_or_insert(at);
                step.attempt_started_at_ms = Some(at);
                step.not_before_ms = None;
                step.child =
                    Some(ChildState { run_id: child.clone(), attempt: *attempt, ended: false, input: input.clone() });
            }
            Event::ChildEnded { attempt, child, output, failure, .. } => {
                check_attempt(*attempt, step.attempts)?;
                if step.child.as_ref().filter(|c| !c.ended).map(|c| c.run_id.as_str()) != Some(child.as_str()) {
                    let source = InvalidTransition {
                        machine: "step",
                        from: format!("{} (it does not wait for child run {child})", step.status),
                        input: "ChildEnded".into(),
                    };
                    return Err(Error::Transition { seq, kind, source });
                }
                if let Some(c) = &mut step.child {
                    c.ended = true;
                }
                let busy = step.attempt_started_at_ms.map_or(0, |t| (at - t).max(0) as u64);
                step.busy_ms += busy;
                match output {
                    Some(output) => {
                        if !self.payloads.contains_key(&output.hash) {
                            return Err(Error::MissingPayload { hash: output.hash.clone() });
                        }
                        step.output = Some(output.clone());
                        step.finished_at_ms = Some(at);
                        step.completed_seq = seq;
                    }
                    None => {
                        let f = failure
                            .clone()
                            .unwrap_or_else(|| Failure::new(ErrorClass::Permanent, "the child run failed"));
                        step.last_failure = Some(f);
                    }
                }
            }
            Event::StepJoined { output, .. } => {
                if !self.payloads.contains_key(&output.hash) {
                    return Err(Error::MissingPayload { hash: output.hash.clone() });
                }
                step.output = Some(output.clone());
                step.finished_at_ms = Some(at);
                step.completed_seq = seq;
            }
            Event::WaitEnded { output, .. } => {
                if !self.payloads.contains_key(&output.hash) {
                    return Err(Error::MissingPayload { hash: output.hash.clone() });
                }
                if let Some(name) = step.wait.take().and_then(|w| w.signal) {
                    *self.signals_taken.entry(name).or_default() += 1;
                }
                step.output = Some(output.clone());
                step.finished_at_ms = Some(at);
                step.completed_seq = seq;
            }
            // The rest carry nothing beyond the transition.
            _ => {}
        }
        let old = step.status;
        step.status = next;
        self.status = run_next;
        if old != next {
            self.instance_moved(idx, old, next);
        }
        Ok(())
    }
}
