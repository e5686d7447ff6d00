//! The run and step state machines as explicit transition tables.
//!
//! A transition that is not in a table is an error value ([`InvalidTransition`]), never a silent
//! overwrite. The tables are data so that a test can walk every (state, input) pair.

use serde::{Deserialize, Serialize};
use std::fmt;

macro_rules! status_enum {
    ($(#[$m:meta])* $name:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(rename_all = "SCREAMING_SNAKE_CASE")]
        pub enum $name { $($variant),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }

            pub fn parse(s: &str) -> Option<$name> {
                let upper = s.trim().to_ascii_uppercase();
                Self::ALL.iter().copied().find(|v| v.as_str() == upper)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

status_enum!(
    /// Where a run is in its life.
    RunStatus {
        Pending => "PENDING",
        Planning => "PLANNING",
        Executing => "EXECUTING",
        Waiting => "WAITING",
        Paused => "PAUSED",
        Compensating => "COMPENSATING",
        Completed => "COMPLETED",
        Compensated => "COMPENSATED",
        Failed => "FAILED",
        Cancelled => "CANCELLED",
    }
);

status_enum!(
    /// Where a step is in its life.
    StepStatus {
        Pending => "PENDING",
        Ready => "READY",
        Running => "RUNNING",
        RetryWait => "RETRY_WAIT",
        Waiting => "WAITING",
        Compensating => "COMPENSATING",
        Completed => "COMPLETED",
        Compensated => "COMPENSATED",
        Failed => "FAILED",
        Skipped => "SKIPPED",
        Cancelled => "CANCELLED",
    }
);

impl RunStatus {
    pub fn is_terminal(self) -> bool {
        matches!(self, RunStatus::Completed | RunStatus::Failed | RunStatus::Cancelled | RunStatus::Compensated)
    }
}

impl StepStatus {
    /// Settled: nothing more will happen to this step in this run.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            StepStatus::Completed
                | StepStatus::Failed
                | StepStatus::Skipped
                | StepStatus::Cancelled
                | StepStatus::Compensating
                | StepStatus::Compensated
        )
    }
}

/// What moves a run. Every step-level event counts as `StepActivity` for the run machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RunInput {
    PlanningStarted,
    PlanRecorded,
    StepActivity,
    Waiting,
    Resumed,
    Completed,
    Failed,
    Cancelled,
    Paused,
    Unpaused,
    Signal,
    CompensationStarted,
    Compensated,
    /// A failed run is retried in place.
    Retried,
}

impl RunInput {
    pub const ALL: &'static [RunInput] = &[
        RunInput::PlanningStarted,
        RunInput::PlanRecorded,
        RunInput::StepActivity,
        RunInput::Waiting,
        RunInput::Resumed,
        RunInput::Completed,
        RunInput::Failed,
        RunInput::Cancelled,
        RunInput::Paused,
        RunInput::Unpaused,
        RunInput::Signal,
        RunInput::CompensationStarted,
        RunInput::Compensated,
        RunInput::Retried,
    ];
}

/// What moves a step. `RunEnded` is applied to every unsettled step when the run fails or is
/// cancelled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StepInput {
    Ready,
    Skipped,
    AttemptStarted,
    AttemptSucceeded,
    AttemptFailed,
    RetryScheduled,
    TimerFired,
    Failed,
    RunEnded,
    ApprovalRequested,
    Approved,
    Rejected,
    ApprovalExpired,
    ApprovalEscalated,
    /// A fork takes the step's output from its parent run.
    Reused,
    /// A person skipped an escalated step, supplying its output.
    SkippedWithOutput,
    CompensationStarted,
    CompensationAttempt,
    Compensated,
    CompensationGaveUp,
    /// The run is retried in place: what did not succeed is pending again.
    Retried,
    /// A durable wait began (`wait` kind).
    WaitStarted,
    /// A wait's time came (its end, or its signal's timeout).
    WaitElapsed,
    /// A wait ended: its time passed or its signal arrived.
    WaitEnded,
    /// A `for_each` or `loop` step added instances and waits for them.
    Expanded,
    /// Its instances are done and gave the step its output.
    Joined,
    /// A `subworkflow` step started its child run and waits for it.
    ChildStarted,
    /// The child run completed: its output is the step's.
    ChildCompleted,
    /// The child run failed: the step's attempt failed (a retry may start a new child).
    ChildFailed,
}

impl StepInput {
    pub const ALL: &'static [StepInput] = &[
        StepInput::Ready,
        StepInput::Skipped,
        StepInput::AttemptStarted,
        StepInput::AttemptSucceeded,
        StepInput::AttemptFailed,
        StepInput::RetryScheduled,
        StepInput::TimerFired,
        StepInput::Failed,
        StepInput::RunEnded,
        StepInput::ApprovalRequested,
        StepInput::Approved,
        StepInput::Rejected,
        StepInput::ApprovalExpired,
        StepInput::ApprovalEscalated,
        StepInput::Reused,
        StepInput::SkippedWithOutput,
        StepInput::CompensationStarted,
        StepInput::CompensationAttempt,
        StepInput::Compensated,
        StepInput::CompensationGaveUp,
        StepInput::Retried,
        StepInput::WaitStarted,
        StepInput::WaitElapsed,
        StepInput::WaitEnded,
        StepInput::Expanded,
        StepInput::Joined,
        StepInput::ChildStarted,
        StepInput::ChildCompleted,
        StepInput::ChildFailed,
    ];
}

use RunInput as RI;
use RunStatus as R;

/// Every legal run transition: (from, input, to). `RunCreated` starts a run in `PENDING` and is
/// legal only as the first event of a journal.
pub const RUN_TRANSITIONS: &[(RunStatus, RunInput, RunStatus)] = &[
    (R::Pending, RI::PlanningStarted, R::Planning),
    (R::Pending, RI::Failed, R::Failed),
    (R::Pending, RI::Cancelled, R::Cancelled),
    (R::Planning, RI::PlanRecorded, R::Executing),
    (R::Planning, RI::Failed, R::Failed),
    (R::Planning, RI::Cancelled, R::Cancelled),
    (R::Executing, RI::StepActivity, R::Executing),
    (R::Executing, RI::Waiting, R::Waiting),
    (R::Executing, RI::Completed, R::Completed),
    (R::Executing, RI::Failed, R::Failed),
    (R::Executing, RI::Cancelled, R::Cancelled),
    // A timer fires (and its step becomes ready) while the run waits; `RunResumed` follows.
    (R::Waiting, RI::StepActivity, R::Waiting),
    (R::Waiting, RI::Resumed, R::Executing),
    (R::Waiting, RI::Failed, R::Failed),
    (R::Waiting, RI::Cancelled, R::Cancelled),
    // Pause: attempts in flight may still finish (and even complete the run); nothing new starts.
    (R::Executing, RI::Paused, R::Paused),
    (R::Waiting, RI::Paused, R::Paused),
    (R::Paused, RI::StepActivity, R::Paused),
    (R::Paused, RI::Unpaused, R::Executing),
    (R::Paused, RI::Completed, R::Completed),
    (R::Paused, RI::Failed, R::Failed),
    (R::Paused, RI::Cancelled, R::Cancelled),
    // Signals are recorded in any unfinished state.
    (R::Pending, RI::Signal, R::Pending),
    (R::Planning, RI::Signal, R::Planning),
    (R::Executing, RI::Signal, R::Executing),
    (R::Waiting, RI::Signal, R::Waiting),
    (R::Paused, RI::Signal, R::Paused),
    // Sagas: a failing or cancelled run undoes its completed steps before it ends.
    (R::Executing, RI::CompensationStarted, R::Compensating),
    (R::Waiting, RI::CompensationStarted, R::Compensating),
    (R::Paused, RI::CompensationStarted, R::Compensating),
    (R::Compensating, RI::StepActivity, R::Compensating),
    (R::Compensating, RI::Signal, R::Compensating),
    (R::Compensating, RI::Compensated, R::Compensated),
    (R::Compensating, RI::Failed, R::Failed),
    // Retry in place: a failed run (not one that was undone) executes again.
    (R::Failed, RI::Retried, R::Executing),
];

use StepInput as SI;
use StepStatus as S;

/// Every legal step transition: (from, input, to).
pub const STEP_TRANSITIONS: &[(StepStatus, StepInput, StepStatus)] = &[
    (S::Pending, SI::Ready, S::Ready),
    (S::Pending, SI::Skipped, S::Skipped),
    // A `when` that does not evaluate fails the step before it ever runs.
    (S::Pending, SI::Failed, S::Failed),
    (S::Pending, SI::RunEnded, S::Cancelled),
    (S::Ready, SI::AttemptStarted, S::Running),
    // Its `with` templates do not render.
    (S::Ready, SI::Failed, S::Failed),
    (S::Ready, SI::RunEnded, S::Cancelled),
    (S::Running, SI::AttemptSucceeded, S::Completed),
    // The attempt is over; decide, in the same commit, either schedules a retry or fails the step.
    (S::Running, SI::AttemptFailed, S::RetryWait),
    (S::Running, SI::RunEnded, S::Cancelled),
    (S::RetryWait, SI::RetryScheduled, S::RetryWait),
    (S::RetryWait, SI::TimerFired, S::Ready),
    (S::RetryWait, SI::Failed, S::Failed),
    (S::RetryWait, SI::RunEnded, S::Cancelled),
    // Approval gates: a ready step that needs a person waits for one; approval lets it run,
    // rejection fails it; a passed deadline fails it or leaves it waiting (escalated).
    (S::Ready, SI::ApprovalRequested, S::Waiting),
    (S::Waiting, SI::Approved, S::Ready),
    (S::Waiting, SI::Rejected, S::Failed),
    (S::Waiting, SI::ApprovalExpired, S::Waiting),
    (S::Waiting, SI::ApprovalEscalated, S::Waiting),
    (S::Waiting, SI::Failed, S::Failed),
    (S::Waiting, SI::RunEnded, S::Cancelled),
    (S::Pending, SI::Reused, S::Completed),
    // Escalation: a step that failed for good waits for a person instead of failing.
    (S::RetryWait, SI::ApprovalRequested, S::Waiting),
    (S::Waiting, SI::SkippedWithOutput, S::Completed),
    // Compensation of a completed step: attempts (and retries) until it is undone or given up.
    (S::Completed, SI::CompensationStarted, S::Compensating),
    (S::Compensating, SI::CompensationAttempt, S::Compensating),
    (S::Compensating, SI::Compensated, S::Compensated),
    (S::Compensating, SI::CompensationGaveUp, S::Completed),
    // The undo's input could not even be rendered: nothing was attempted.
    (S::Completed, SI::CompensationGaveUp, S::Completed),
    (S::Failed, SI::Retried, S::Pending),
    (S::Cancelled, SI::Retried, S::Pending),
    (S::Skipped, SI::Retried, S::Pending),
    // Durable waits hold no worker: the step waits until its timer or its signal.
    (S::Ready, SI::WaitStarted, S::Waiting),
    (S::Waiting, SI::WaitElapsed, S::Waiting),
    (S::Waiting, SI::WaitEnded, S::Completed),
    // Dynamic steps: a `for_each` or `loop` step waits for the instances it added (a loop adds
    // one at a time) and completes with their joined output.
    (S::Ready, SI::Expanded, S::Waiting),
    (S::Waiting, SI::Expanded, S::Waiting),
    (S::Waiting, SI::Joined, S::Completed),
    // Subworkflows: an attempt is a child run, waited for without a worker; its end is the
    // attempt's end.
    (S::Ready, SI::ChildStarted, S::Waiting),
    (S::Waiting, SI::ChildCompleted, S::Completed),
    (S::Waiting, SI::ChildFailed, S::RetryWait),
];

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("illegal transition: {machine} in state {from} cannot take {input}")]
pub struct InvalidTransition {
    pub machine: &'static str,
    pub from: String,
    pub input: String,
}

pub fn run_transition(from: RunStatus, input: RunInput) -> Result<RunStatus, InvalidTransition> {
    RUN_TRANSITIONS.iter().find(|(f, i, _)| *f == from && *i == input).map(|t| t.2).ok_or_else(|| InvalidTransition {
        machine: "run",
        from: from.to_string(),
        input: format!("{input:?}"),
    })
}

pub fn step_transition(from: StepStatus, input: StepInput) -> Result<StepStatus, InvalidTransition> {
    STEP_TRANSITIONS.iter().find(|(f, i, _)| *f == from && *i == input).map(|t| t.2).ok_or_else(|| InvalidTransition {
        machine: "step",
        from: from.to_string(),
        input: format!("{input:?}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{HashSet, VecDeque};

    /// The expected behaviour, written independently of the tables: walking every pair checks
    /// the tables say exactly this and nothing else.
    fn expected_run(from: RunStatus, input: RunInput) -> Option<RunStatus> {
        use RunInput::*;
        if (from, input) == (R::Failed, Retried) {
            return Some(R::Executing);
        }
        if from.is_terminal() {
            return None;
        }
        if from == R::Compensating {
            return match input {
                StepActivity | Signal => Some(R::Compensating),
                Compensated => Some(R::Compensated),
                Failed => Some(R::Failed),
                _ => None,
            };
        }
        match (from, input) {
            (_, Cancelled) => Some(R::Cancelled),
            (_, Failed) => Some(R::Failed),
            (R::Pending, PlanningStarted) => Some(R::Planning),
            (R::Planning, PlanRecorded) => Some(R::Executing),
            (R::Executing, StepActivity) => Some(R::Executing),
            (R::Executing, Waiting) => Some(R::Waiting),
            (R::Executing, Completed) => Some(R::Completed),
            (R::Waiting, StepActivity) => Some(R::Waiting),
            (R::Waiting, Resumed) => Some(R::Executing),
            (_, Signal) => Some(from),
            (R::Executing | R::Waiting, Paused) => Some(R::Paused),
            (R::Paused, StepActivity) => Some(R::Paused),
            (R::Paused, Unpaused) => Some(R::Executing),
            (R::Paused, Completed) => Some(R::Completed),
            (R::Executing | R::Waiting | R::Paused, CompensationStarted) => Some(R::Compensating),
            _ => None,
        }
    }

    fn expected_step(from: StepStatus, input: StepInput) -> Option<StepStatus> {
        use StepInput::*;
        match (from, input) {
            (S::Completed, CompensationStarted) => return Some(S::Compensating),
            (S::Compensating, CompensationAttempt) => return Some(S::Compensating),
            (S::Compensating, Compensated) => return Some(S::Compensated),
            (S::Compensating | S::Completed, CompensationGaveUp) => return Some(S::Completed),
            (S::Failed | S::Cancelled | S::Skipped, Retried) => return Some(S::Pending),
            _ => {}
        }
        if from.is_terminal() {
            return None;
        }
        match (from, input) {
            (_, RunEnded) => Some(S::Cancelled),
            (S::Pending, Ready) => Some(S::Ready),
            (S::Pending, Skipped) => Some(S::Skipped),
            (S::Pending | S::Ready | S::RetryWait | S::Waiting, Failed) => Some(S::Failed),
            (S::Ready, ApprovalRequested) => Some(S::Waiting),
            (S::Waiting, Approved) => Some(S::Ready),
            (S::Waiting, Rejected) => Some(S::Failed),
            (S::Waiting, ApprovalExpired | ApprovalEscalated) => Some(S::Waiting),
            (S::Pending, Reused) => Some(S::Completed),
            (S::RetryWait, ApprovalRequested) => Some(S::Waiting),
            (S::Waiting, SkippedWithOutput) => Some(S::Completed),
            (S::Ready, AttemptStarted) => Some(S::Running),
            (S::Running, AttemptSucceeded) => Some(S::Completed),
            (S::Running, AttemptFailed) => Some(S::RetryWait),
            (S::RetryWait, RetryScheduled) => Some(S::RetryWait),
            (S::RetryWait, TimerFired) => Some(S::Ready),
            (S::Ready, WaitStarted) => Some(S::Waiting),
            (S::Waiting, WaitElapsed) => Some(S::Waiting),
            (S::Waiting, WaitEnded) => Some(S::Completed),
            (S::Ready | S::Waiting, Expanded) => Some(S::Waiting),
            (S::Waiting, Joined) => Some(S::Completed),
            (S::Ready, ChildStarted) => Some(S::Waiting),
            (S::Waiting, ChildCompleted) => Some(S::Completed),
            (S::Waiting, ChildFailed) => Some(S::RetryWait),
            _ => None,
        }
    }

    #[test]
    fn every_run_state_and_input_pair() {
        for &from in RunStatus::ALL {
            for &input in RunInput::ALL {
                let got = run_transition(from, input).ok();
                assert_eq!(got, expected_run(from, input), "run {from} + {input:?}");
            }
        }
    }

    #[test]
    fn every_step_state_and_input_pair() {
        for &from in StepStatus::ALL {
            for &input in StepInput::ALL {
                let got = step_transition(from, input).ok();
                assert_eq!(got, expected_step(from, input), "step {from} + {input:?}");
            }
        }
    }

    #[test]
    fn tables_have_no_duplicate_pairs_and_every_state_can_finish() {
        let mut seen = HashSet::new();
        for (f, i, _) in RUN_TRANSITIONS {
            assert!(seen.insert((f.as_str(), format!("{i:?}"))), "duplicate run pair {f} {i:?}");
        }
        let mut seen = HashSet::new();
        for (f, i, _) in STEP_TRANSITIONS {
            assert!(seen.insert((f.as_str(), format!("{i:?}"))), "duplicate step pair {f} {i:?}");
        }
        // From every state a terminal state is reachable, and every state is reachable from the start.
        for &start in RunStatus::ALL {
            let reach = reachable(start, |s| RUN_TRANSITIONS.iter().filter(move |t| t.0 == s).map(|t| t.2));
            assert!(reach.iter().any(|s| s.is_terminal()), "run {start} cannot finish");
        }
        let from_pending = reachable(R::Pending, |s| RUN_TRANSITIONS.iter().filter(move |t| t.0 == s).map(|t| t.2));
        assert_eq!(from_pending.len(), RunStatus::ALL.len());
        let from_pending = reachable(S::Pending, |s| STEP_TRANSITIONS.iter().filter(move |t| t.0 == s).map(|t| t.2));
        assert_eq!(from_pending.len(), StepStatus::ALL.len());
    }

    fn reachable<T: Copy + Eq + std::hash::Hash, I: Iterator<Item = T>>(start: T, next: impl Fn(T) -> I) -> HashSet<T> {
        let mut seen = HashSet::from([start]);
        let mut queue = VecDeque::from([start]);
        while let Some(s) = queue.pop_front() {
            for n in next(s) {
                if seen.insert(n) {
                    queue.push_back(n);
                }
            }
        }
        seen
    }

    #[test]
    fn statuses_parse_case_insensitively() {
        assert_eq!(RunStatus::parse("executing"), Some(RunStatus::Executing));
        assert_eq!(StepStatus::parse("RETRY_WAIT"), Some(StepStatus::RetryWait));
        assert_eq!(StepStatus::parse("nope"), None);
    }
}
