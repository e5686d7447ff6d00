//! Timers: the one notion of "this run wakes up at a time".
//!
//! Every timer a run can have is a [`Timer`]: an id saying whose and why ([`TimerId`]) and when
//! it is due. Timers are never stored on their own: they are *derived* from the run's state by
//! [`RunState::pending_timers`], the one list that everything asks — `decide` when it arms them
//! after a restart or an unpause, the engine's driver when it sleeps, and the store's `wake_at`
//! when a released run must be picked up again. A due timer is turned into the event that records
//! it by [`RunState::fire_timer`], which refuses a timer that is no longer pending (an attempt
//! moved on, a decision arrived, the run was paused), the way a result of a stale attempt is
//! refused.

use crate::event::Event;
use crate::ids::StepId;
use crate::machine::{RunStatus, StepStatus};
use crate::state::RunState;
use serde::Serialize;
use std::fmt;

/// Why a run waits on a timer. Purposes that belong to an attempt carry its number, so a timer
/// armed for one attempt cannot fire for a later one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(tag = "purpose", rename_all = "snake_case")]
pub enum TimerPurpose {
    /// Start the step's attempt `attempt` after a retry backoff.
    Retry { attempt: u32 },
    /// The step's approval deadline.
    ApprovalDeadline,
    /// Start the step's compensation attempt `attempt` after its retry backoff.
    CompensationRetry { attempt: u32 },
    /// A durable wait's end (or its signal's timeout).
    Wait,
}

impl TimerPurpose {
    pub fn as_str(&self) -> &'static str {
        match self {
            TimerPurpose::Retry { .. } => "retry",
            TimerPurpose::ApprovalDeadline => "approval_deadline",
            TimerPurpose::CompensationRetry { .. } => "compensation_retry",
            TimerPurpose::Wait => "wait",
        }
    }
}

/// Which timer: the step it belongs to and its purpose. At most one timer per id is pending.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct TimerId {
    pub step: StepId,
    #[serde(flatten)]
    pub purpose: TimerPurpose,
}

impl fmt::Display for TimerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.purpose {
            TimerPurpose::Retry { attempt } => write!(f, "{}/retry-{attempt}", self.step),
            TimerPurpose::ApprovalDeadline => write!(f, "{}/approval-deadline", self.step),
            TimerPurpose::CompensationRetry { attempt } => write!(f, "{}/compensation-retry-{attempt}", self.step),
            TimerPurpose::Wait => write!(f, "{}/wait", self.step),
        }
    }
}

/// A pending timer: which one and when it is due (Unix milliseconds).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Timer {
    #[serde(flatten)]
    pub id: TimerId,
    pub at_ms: i64,
}

/// Why a due timer was not turned into an event.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("timer {timer} is not pending (the run moved on since it was armed); ignored")]
pub struct StaleTimer {
    pub timer: TimerId,
}

impl RunState {
    /// Every timer this run has pending, derived from its state. A paused or finished run has
    /// none (timers wait while paused; `RunUnpaused` arms them again).
    pub fn pending_timers(&self) -> Vec<Timer> {
        if self.status.is_terminal() || self.status == RunStatus::Paused {
            return Vec::new();
        }
        let timer = |step: &StepId, purpose, at_ms| Timer { id: TimerId { step: step.clone(), purpose }, at_ms };
        if self.status == RunStatus::Compensating {
            return self
                .steps
                .iter()
                .filter_map(|s| {
                    let c = s.compensation.as_ref().filter(|c| c.gave_up.is_none() && !c.running)?;
                    let purpose = TimerPurpose::CompensationRetry { attempt: c.attempts + 1 };
                    Some(timer(&s.id, purpose, c.not_before_ms?))
                })
                .collect();
        }
        self.steps
            .iter()
            .filter_map(|s| match s.status {
                StepStatus::RetryWait => {
                    Some(timer(&s.id, TimerPurpose::Retry { attempt: s.attempts + 1 }, s.not_before_ms?))
                }
                StepStatus::Waiting if s.wait.is_some() => {
                    let wait = s.wait.as_ref().filter(|w| !w.elapsed)?;
                    Some(timer(&s.id, TimerPurpose::Wait, wait.until_ms?))
                }
                StepStatus::Waiting => {
                    let approval = s.approval.as_ref().filter(|a| a.decision.is_none() && !a.expired)?;
                    Some(timer(&s.id, TimerPurpose::ApprovalDeadline, approval.deadline_ms?))
                }
                StepStatus::Pending
                | StepStatus::Ready
                | StepStatus::Running
                | StepStatus::Completed
                | StepStatus::Failed
                | StepStatus::Skipped
                | StepStatus::Cancelled
                | StepStatus::Compensating
                | StepStatus::Compensated => None,
            })
            .collect()
    }

    /// The event that records this timer firing, if it is still pending as armed (same id and
    /// due time); a timer the run no longer has, one armed for an earlier attempt, or one of a
    /// wait that began again since, is refused.
    pub fn fire_timer(&self, timer: &Timer) -> Result<Event, StaleTimer> {
        if !self.pending_timers().contains(timer) {
            return Err(StaleTimer { timer: timer.id.clone() });
        }
        let step = timer.id.step.clone();
        Ok(match timer.id.purpose {
            TimerPurpose::Retry { .. } => Event::TimerFired { step },
            TimerPurpose::ApprovalDeadline => Event::ApprovalExpired { step },
            TimerPurpose::CompensationRetry { .. } => Event::CompensationTimerFired { step },
            TimerPurpose::Wait => Event::WaitElapsed { step },
        })
    }
}
