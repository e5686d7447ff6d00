//! Tasks for external workers: an attempt of a step whose kind runs outside the engine (a
//! Python function, a TypeScript tool) waits in a queue as a task until a worker claims it. The
//! task's `token` is its fencing token: it names this attempt only, so a worker whose lease
//! expired (and whose attempt was retried elsewhere) can no longer settle it.

use serde::Serialize;
use serde_json::Value;

/// A task to queue: one attempt of an external step.
#[derive(Debug, Clone, PartialEq)]
pub struct NewTask {
    /// The fencing token: unguessable, one per attempt.
    pub token: String,
    pub run_id: String,
    pub step: String,
    pub attempt: u32,
    pub queue: String,
    pub kind: String,
    /// The attempt's input (secrets redacted: workers get what the journal holds).
    pub input: Value,
    /// When the attempt times out, if its step has a timeout.
    pub deadline_ms: Option<i64>,
    pub created_at_ms: i64,
}

/// Where a task is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    /// Waiting for a worker.
    Ready,
    /// A worker holds it until its lease expires.
    Claimed,
    /// Settled with an output.
    Done,
    /// Settled with a failure.
    Failed,
    /// Its run was cancelled or its attempt superseded: nobody may settle it.
    Cancelled,
    /// Its worker's lease expired before it settled: the attempt failed and may be retried.
    Lost,
}

impl TaskState {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Ready => "ready",
            TaskState::Claimed => "claimed",
            TaskState::Done => "done",
            TaskState::Failed => "failed",
            TaskState::Cancelled => "cancelled",
            TaskState::Lost => "lost",
        }
    }

    pub fn parse(s: &str) -> Option<TaskState> {
        [
            TaskState::Ready,
            TaskState::Claimed,
            TaskState::Done,
            TaskState::Failed,
            TaskState::Cancelled,
            TaskState::Lost,
        ]
        .into_iter()
        .find(|t| t.as_str() == s)
    }
}

/// A task as stored.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TaskRow {
    pub token: String,
    pub run_id: String,
    pub step: String,
    pub attempt: u32,
    pub queue: String,
    pub kind: String,
    pub input: Value,
    pub deadline_ms: Option<i64>,
    pub state: TaskState,
    /// The worker that holds (or held) it.
    pub worker: Option<String>,
    pub lease_expires_at_ms: Option<i64>,
    pub created_at_ms: i64,
    /// What it settled with: its output (`Done`) …
    pub output: Option<Value>,
    /// … or its failure (`Failed`): class, message, and when it may be retried.
    pub error_class: Option<String>,
    pub error_message: Option<String>,
    pub retry_after_ms: Option<u64>,
}

/// What a worker asks for.
#[derive(Debug, Clone)]
pub struct TaskClaim<'a> {
    pub worker: &'a str,
    /// Tasks of these queues only.
    pub queues: &'a [String],
    /// And of these kinds only, when not empty.
    pub kinds: &'a [String],
    pub limit: usize,
    pub now_ms: i64,
    pub lease_until_ms: i64,
}

/// How a task settles.
#[derive(Debug, Clone, PartialEq)]
pub enum TaskOutcome {
    Done(Value),
    Failed { class: String, message: String, retry_after_ms: Option<u64> },
}

/// What became of a heartbeat or a result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskAnswer {
    /// Taken: the lease was extended, or the result recorded.
    Ok,
    /// The token is not (or no longer) held by this worker: its lease expired, the attempt was
    /// cancelled or settled. Nothing changed.
    Stale(TaskState),
    /// No task has this token.
    Unknown,
}
