//! Journal events: the append-only truth of a run. Every projection (run rows, step rows,
//! progress lines) is derived from these.

use crate::ids::StepId;
use crate::payload::PayloadRef;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::fmt;

/// Version of the event schema written by this binary. Each stored event carries the version it
/// was written with, so a newer binary can still read (and upcast) an older journal.
pub const JOURNAL_SCHEMA: u16 = 1;

/// How a failure should be treated. Only `Transient`, `Timeout` and `RateLimited` are retried;
/// the others say why retrying cannot help.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorClass {
    /// Might work on another try (connection reset, 5xx, an interrupted attempt).
    Transient,
    /// The attempt ran past its deadline and was cancelled.
    Timeout,
    /// The far side asked us to slow down; honour `retry_after_ms` when given.
    RateLimited,
    /// Retrying cannot help (bad input, output over the cap, a condition that does not evaluate).
    Permanent,
    /// A model's prompt does not fit its context window.
    ContextOverflow,
    /// A model's answer did not parse or fit the step's `output_schema`, even after a repair.
    MalformedOutput,
    /// The call would have crossed the run's or the step's budget, so it was not sent.
    BudgetExceeded,
    /// The attempt stopped before a call that needs a person's approval (a tool that writes);
    /// the failure's `approval` says which call. Not a fault: the step waits for the decision and
    /// runs again with it.
    ApprovalRequired,
    /// An agent did not finish within its `max_turns`.
    MaxTurns,
}

impl ErrorClass {
    pub const ALL: [ErrorClass; 9] = [
        ErrorClass::Transient,
        ErrorClass::Timeout,
        ErrorClass::RateLimited,
        ErrorClass::Permanent,
        ErrorClass::ContextOverflow,
        ErrorClass::MalformedOutput,
        ErrorClass::BudgetExceeded,
        ErrorClass::ApprovalRequired,
        ErrorClass::MaxTurns,
    ];

    pub fn is_retryable(self) -> bool {
        matches!(self, ErrorClass::Transient | ErrorClass::Timeout | ErrorClass::RateLimited)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Transient => "transient",
            ErrorClass::Timeout => "timeout",
            ErrorClass::RateLimited => "rate_limited",
            ErrorClass::Permanent => "permanent",
            ErrorClass::ContextOverflow => "context_overflow",
            ErrorClass::MalformedOutput => "malformed_output",
            ErrorClass::BudgetExceeded => "budget_exceeded",
            ErrorClass::ApprovalRequired => "approval_required",
            ErrorClass::MaxTurns => "max_turns",
        }
    }

    pub fn parse(s: &str) -> Option<ErrorClass> {
        ErrorClass::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

impl fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failure as stored: serialisable, so it survives restarts and replays unchanged.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Failure {
    pub class: ErrorClass,
    pub message: String,
    /// A hint from the far side (e.g. `Retry-After`); backoff waits at least this long.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
    /// A stable code for failures a program may want to tell apart (e.g. `call_divergence`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// For class `approval_required`: the call that waits for a person.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<Box<CallApproval>>,
}

impl Failure {
    pub fn new(class: ErrorClass, message: impl Into<String>) -> Self {
        Failure { class, message: message.into(), retry_after_ms: None, code: None, approval: None }
    }
}

/// A call inside an attempt that needs a person's approval before it is made (a tool call that
/// writes): which call of the step, to which tool, with which arguments, and why it is asked.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CallApproval {
    /// The call's position among the step's journaled calls (`run/step/call-N`).
    pub call: u32,
    pub tool: String,
    /// The arguments as they would be sent (secret values redacted).
    pub args: Value,
    /// The tool's effect class for this call (`write`, `irreversible` …).
    pub effect: String,
    /// Why a person is asked (the tool's policy, or untrusted content read before).
    pub reason: String,
}

/// A person's answer to a [`CallApproval`], handed to the step's next attempt.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CallDecision {
    pub call: u32,
    pub approved: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    /// Arguments the person edited, used instead of the asked ones (checked against the tool's
    /// schema again before the call).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<Value>,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.class, self.message)
    }
}

/// Where a run's plan came from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "from", rename_all = "snake_case")]
pub enum RunSource {
    /// A definition file (or inline definition).
    Definition { path: Option<String> },
    /// A goal that the planner turned into a plan.
    Goal { goal: String },
    /// A new run that reuses another run's results up to a step (`cairn rerun ID --from STEP`),
    /// with what the operator changed (a counterfactual fork).
    Fork {
        parent: String,
        from_step: String,
        /// `--turn N`: the recorded calls of `from_step` before its N-th model turn are reused.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        turn: Option<u32>,
        /// `--model ALIAS`: the model of `from_step` and the model steps after it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        model: Option<String>,
        /// `--set-output STEP=JSON`: the steps whose output the operator set.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        set_outputs: Vec<String>,
    },
    /// A child run started by attempt `attempt` of a `subworkflow` step of run `parent`; `path`
    /// is its definition file when it was started from one (`with.file`).
    Child {
        parent: String,
        step: String,
        attempt: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        path: Option<String>,
        /// How deep it is: 1 for a child of a run that is no child, and so on.
        #[serde(default = "first_level")]
        depth: u32,
        /// The workflows of the runs above it, the top one first.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        lineage: Vec<String>,
    },
}

fn first_level() -> u32 {
    1
}

/// Seeded failure injection for a whole run, recorded so a resumed run keeps the same schedule.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Chaos {
    pub seed: u64,
    /// Probability that any attempt fails with a transient error.
    pub rate: f64,
}

/// Options fixed when the run is created and honoured for its whole life.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunOptions {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chaos: Option<Chaos>,
    /// Outputs larger than this fail the step permanently.
    pub max_output_bytes: u64,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions { chaos: None, max_output_bytes: 1024 * 1024 }
    }
}

/// What a person decided for an escalated failure.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "do", rename_all = "snake_case")]
pub enum Escalation {
    /// Try the step again. With `fresh_budget` (set on every decision Cairn records now) the step
    /// gets its whole retry policy again; decisions journaled before it existed keep their
    /// meaning, one more attempt each. Attempt numbers keep counting either way.
    Retry {
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        fresh_budget: bool,
        /// The budget the step crossed, raised by the person who decided (a `budget_exceeded`
        /// escalation).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        raise: Option<BudgetRaise>,
    },
    /// Take the step as done with this output.
    Skip { output: PayloadRef },
    /// Fail the run.
    Abort,
}

/// A budget raised by a person: the run's (`step: None`) or one step's. Each limit given replaces
/// the one in force; a limit not given stays as it was.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BudgetRaise {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<StepId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_cost_usd: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u64>,
}

/// A step a forked run does not execute again: it takes the output the parent recorded.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReusedStep {
    pub step: StepId,
    pub output: PayloadRef,
    pub from_run: String,
}

/// What the planner decided, recorded once and never recomputed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PlanInfo {
    pub goal: String,
    /// The catalog entries the goal matched, in order.
    pub matched: Vec<String>,
    /// Entries the goal mentioned only under a negation ("do not send email"), so not planned.
    /// Absent from journals written before negation was understood.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub left_out: Vec<LeftOut>,
    /// Who chose the steps when it was not the catalog's matcher: `model:ALIAS`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub planner: Option<String>,
}

/// A catalog entry the planner left out, and the words of the goal that said so.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeftOut {
    pub entry: String,
    /// The negated part of the goal as written, e.g. `do not send email`.
    pub because: String,
}

impl PlanInfo {
    /// `left out: send_email ("do not send email"), notify ("never notify")`, or `None`.
    pub fn left_out_text(&self) -> Option<String> {
        if self.left_out.is_empty() {
            return None;
        }
        let items: Vec<String> = self.left_out.iter().map(|l| format!("{} (\"{}\")", l.entry, l.because)).collect();
        Some(format!("left out: {}", items.join(", ")))
    }
}

/// One thing that happened to a run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    RunCreated {
        workflow: String,
        source: RunSource,
        inputs: Value,
        options: RunOptions,
    },
    PlanningStarted,
    /// The definition this run executes, pinned by content hash (its JSON is a payload).
    PlanRecorded {
        definition: PayloadRef,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        plan: Option<PlanInfo>,
        /// Steps this run takes as already done, with the outputs another run recorded (a fork).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        reused: Vec<ReusedStep>,
    },
    StepReady {
        step: StepId,
    },
    StepSkipped {
        step: StepId,
        reason: String,
    },
    AttemptStarted {
        step: StepId,
        attempt: u32,
        input: PayloadRef,
    },
    AttemptSucceeded {
        step: StepId,
        attempt: u32,
        output: PayloadRef,
        duration_ms: u64,
    },
    AttemptFailed {
        step: StepId,
        attempt: u32,
        failure: Failure,
        duration_ms: u64,
    },
    RetryScheduled {
        step: StepId,
        next_attempt: u32,
        max_attempts: u32,
        delay_ms: u64,
        not_before_ms: i64,
    },
    TimerFired {
        step: StepId,
    },
    StepFailed {
        step: StepId,
        failure: Failure,
    },
    StepCancelled {
        step: StepId,
    },
    RunWaiting {
        reason: String,
    },
    RunResumed,
    RunCompleted {
        output: PayloadRef,
    },
    RunFailed {
        failure: Failure,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        step: Option<StepId>,
    },
    RunCancelled {
        reason: String,
        /// Who asked (an API token's name, `cli`, ...).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        by: Option<String>,
    },
    /// An operator paused the run: attempts in flight finish, nothing new starts, timers wait.
    RunPaused {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        by: Option<String>,
    },
    RunUnpaused {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        by: Option<String>,
    },
    /// A failed run is retried in place: its failed, cancelled and skipped steps are pending
    /// again (completed ones keep their outputs), each failed step with a fresh retry budget.
    RunRetried {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        by: Option<String>,
    },
    /// A person is asked to approve the step before it runs, or (an escalation) what to do
    /// after it failed for good; recorded before the run pauses.
    ApprovalRequested {
        step: StepId,
        /// The question, rendered.
        prompt: String,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        approvers: Vec<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        deadline_ms: Option<i64>,
        /// An escalated failure (answers: retry, skip with an output, abort).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        escalation: bool,
        /// A call inside the step's attempt waits for the decision (approve, approve with edited
        /// arguments, or reject with a reason); the step's next attempt gets the answer.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        call: Option<Box<CallApproval>>,
    },
    /// Someone decided. For an escalated failure, `action` says what to do.
    ApprovalDecided {
        step: StepId,
        approved: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        by: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        comment: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        action: Option<Escalation>,
        /// For a call's approval: the arguments as the person edited them.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        args: Option<Value>,
    },
    /// The approval deadline passed (reported by the timer).
    ApprovalExpired {
        step: StepId,
    },
    /// The deadline passed and the policy is to keep waiting: recorded for operators.
    ApprovalEscalated {
        step: StepId,
        note: String,
    },
    /// The run moved to another version of its definition (`cairn runs migrate`); steps keep
    /// their progress, new steps start pending.
    DefinitionMigrated {
        definition: PayloadRef,
        from_version: u32,
        to_version: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        by: Option<String>,
    },
    /// The run failed after steps with a `compensate` completed: they are undone, newest first,
    /// before the run ends.
    CompensationStarted {
        reason: Failure,
    },
    CompensationAttemptStarted {
        step: StepId,
        attempt: u32,
        input: PayloadRef,
    },
    CompensationAttemptSucceeded {
        step: StepId,
        attempt: u32,
        duration_ms: u64,
    },
    CompensationAttemptFailed {
        step: StepId,
        attempt: u32,
        failure: Failure,
        duration_ms: u64,
    },
    CompensationRetryScheduled {
        step: StepId,
        next_attempt: u32,
        delay_ms: u64,
        not_before_ms: i64,
    },
    CompensationTimerFired {
        step: StepId,
    },
    /// The compensation failed for good; the run will end FAILED listing it.
    CompensationGaveUp {
        step: StepId,
        failure: Failure,
    },
    /// Every completed step with a compensation was undone.
    RunCompensated,
    /// A step of a waiting kind began its durable wait: until a time, for a signal, or both
    /// (a signal with a timeout).
    WaitStarted {
        step: StepId,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        until_ms: Option<i64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        signal: Option<String>,
    },
    /// A wait's timer fired (reported by the edge).
    WaitElapsed {
        step: StepId,
    },
    /// A wait ended with this output (the signal's payload, or `{waited_ms}`).
    WaitEnded {
        step: StepId,
        output: PayloadRef,
    },
    /// A `for_each` step's items were rendered: the run adds one instance per item (`ID[0]`, …).
    StepExpanded {
        step: StepId,
        items: PayloadRef,
        count: u32,
    },
    /// A `loop` step begins iteration `iteration` (from 1): the run adds the instance `ID#N`.
    LoopIterated {
        step: StepId,
        iteration: u32,
    },
    /// A `for_each` or `loop` step finished with this output: its items' outputs in order, or its
    /// last iteration's output. `note` says how it ended.
    StepJoined {
        step: StepId,
        output: PayloadRef,
        note: String,
    },
    /// A `subworkflow` step's attempt starts the child run `child` (its id derives from the run,
    /// the step and the attempt, so starting it again after a crash finds the same run).
    ChildStarted {
        step: StepId,
        attempt: u32,
        child: String,
        /// The rendered `with`: which workflow, and its inputs.
        input: PayloadRef,
    },
    /// The child run ended: completed with `output`, or failed (or was cancelled) with `failure`.
    ChildEnded {
        step: StepId,
        attempt: u32,
        child: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        output: Option<PayloadRef>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        failure: Option<Failure>,
    },
    /// A named message from outside; the latest payload per name is visible as `signals.NAME`.
    SignalReceived {
        name: String,
        payload: PayloadRef,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        by: Option<String>,
    },
}

impl Event {
    /// The event's tag as stored in the `type` column.
    pub fn kind(&self) -> &'static str {
        match self {
            Event::RunCreated { .. } => "run_created",
            Event::PlanningStarted => "planning_started",
            Event::PlanRecorded { .. } => "plan_recorded",
            Event::StepReady { .. } => "step_ready",
            Event::StepSkipped { .. } => "step_skipped",
            Event::AttemptStarted { .. } => "attempt_started",
            Event::AttemptSucceeded { .. } => "attempt_succeeded",
            Event::AttemptFailed { .. } => "attempt_failed",
            Event::RetryScheduled { .. } => "retry_scheduled",
            Event::TimerFired { .. } => "timer_fired",
            Event::StepFailed { .. } => "step_failed",
            Event::StepCancelled { .. } => "step_cancelled",
            Event::RunWaiting { .. } => "run_waiting",
            Event::RunResumed => "run_resumed",
            Event::RunCompleted { .. } => "run_completed",
            Event::RunFailed { .. } => "run_failed",
            Event::RunCancelled { .. } => "run_cancelled",
            Event::RunPaused { .. } => "run_paused",
            Event::RunUnpaused { .. } => "run_unpaused",
            Event::RunRetried { .. } => "run_retried",
            Event::SignalReceived { .. } => "signal_received",
            Event::DefinitionMigrated { .. } => "definition_migrated",
            Event::CompensationStarted { .. } => "compensation_started",
            Event::CompensationAttemptStarted { .. } => "compensation_attempt_started",
            Event::CompensationAttemptSucceeded { .. } => "compensation_attempt_succeeded",
            Event::CompensationAttemptFailed { .. } => "compensation_attempt_failed",
            Event::CompensationRetryScheduled { .. } => "compensation_retry_scheduled",
            Event::CompensationTimerFired { .. } => "compensation_timer_fired",
            Event::CompensationGaveUp { .. } => "compensation_gave_up",
            Event::RunCompensated => "run_compensated",
            Event::ApprovalRequested { .. } => "approval_requested",
            Event::ApprovalDecided { .. } => "approval_decided",
            Event::ApprovalExpired { .. } => "approval_expired",
            Event::ApprovalEscalated { .. } => "approval_escalated",
            Event::WaitStarted { .. } => "wait_started",
            Event::WaitElapsed { .. } => "wait_elapsed",
            Event::WaitEnded { .. } => "wait_ended",
            Event::StepExpanded { .. } => "step_expanded",
            Event::LoopIterated { .. } => "loop_iterated",
            Event::StepJoined { .. } => "step_joined",
            Event::ChildStarted { .. } => "child_started",
            Event::ChildEnded { .. } => "child_ended",
        }
    }

    /// The step this event is about, if any.
    pub fn step(&self) -> Option<&StepId> {
        match self {
            Event::StepReady { step }
            | Event::StepSkipped { step, .. }
            | Event::AttemptStarted { step, .. }
            | Event::AttemptSucceeded { step, .. }
            | Event::AttemptFailed { step, .. }
            | Event::RetryScheduled { step, .. }
            | Event::TimerFired { step }
            | Event::StepFailed { step, .. }
            | Event::StepCancelled { step }
            | Event::ApprovalRequested { step, .. }
            | Event::ApprovalDecided { step, .. }
            | Event::ApprovalExpired { step }
            | Event::ApprovalEscalated { step, .. }
            | Event::CompensationAttemptStarted { step, .. }
            | Event::CompensationAttemptSucceeded { step, .. }
            | Event::CompensationAttemptFailed { step, .. }
            | Event::CompensationRetryScheduled { step, .. }
            | Event::CompensationTimerFired { step }
            | Event::CompensationGaveUp { step, .. }
            | Event::WaitStarted { step, .. }
            | Event::WaitElapsed { step }
            | Event::WaitEnded { step, .. }
            | Event::StepExpanded { step, .. }
            | Event::LoopIterated { step, .. }
            | Event::StepJoined { step, .. }
            | Event::ChildStarted { step, .. }
            | Event::ChildEnded { step, .. } => Some(step),
            Event::RunCreated { .. }
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
            | Event::RunCompensated => None,
        }
    }

    /// Payloads this event refers to (so stores can link them to the run).
    pub fn payload(&self) -> Option<&PayloadRef> {
        match self {
            Event::PlanRecorded { definition, .. } => Some(definition),
            Event::AttemptStarted { input, .. } => Some(input),
            Event::AttemptSucceeded { output, .. } => Some(output),
            Event::RunCompleted { output } => Some(output),
            Event::SignalReceived { payload, .. } => Some(payload),
            Event::DefinitionMigrated { definition, .. } => Some(definition),
            Event::CompensationAttemptStarted { input, .. } => Some(input),
            Event::WaitEnded { output, .. } => Some(output),
            Event::StepExpanded { items, .. } => Some(items),
            Event::StepJoined { output, .. } => Some(output),
            Event::ChildStarted { input, .. } => Some(input),
            Event::ChildEnded { output, .. } => output.as_ref(),
            // A skip's supplied output is stored with the decision (see `ApprovalDecided`).
            Event::ApprovalDecided { action: Some(Escalation::Skip { output }), .. } => Some(output),
            Event::ApprovalDecided { .. }
            | Event::RunCreated { .. }
            | Event::PlanningStarted
            | Event::StepReady { .. }
            | Event::StepSkipped { .. }
            | Event::AttemptFailed { .. }
            | Event::RetryScheduled { .. }
            | Event::TimerFired { .. }
            | Event::StepFailed { .. }
            | Event::StepCancelled { .. }
            | Event::RunWaiting { .. }
            | Event::RunResumed
            | Event::RunFailed { .. }
            | Event::RunCancelled { .. }
            | Event::RunPaused { .. }
            | Event::RunUnpaused { .. }
            | Event::RunRetried { .. }
            | Event::CompensationStarted { .. }
            | Event::CompensationAttemptSucceeded { .. }
            | Event::CompensationAttemptFailed { .. }
            | Event::CompensationRetryScheduled { .. }
            | Event::CompensationTimerFired { .. }
            | Event::CompensationGaveUp { .. }
            | Event::RunCompensated
            | Event::ApprovalRequested { .. }
            | Event::ApprovalExpired { .. }
            | Event::ApprovalEscalated { .. }
            | Event::WaitStarted { .. }
            | Event::WaitElapsed { .. }
            | Event::LoopIterated { .. } => None,
        }
    }
}

/// An event as journaled: its position in the run, when it was recorded, and its schema version.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// 1-based position in the run's journal; gap-free.
    pub seq: u64,
    /// Unix milliseconds when the engine recorded it. The only clock `decide` ever sees.
    pub at_ms: i64,
    #[serde(default = "default_schema")]
    pub schema: u16,
    #[serde(flatten)]
    pub event: Event,
}

fn default_schema() -> u16 {
    JOURNAL_SCHEMA
}
