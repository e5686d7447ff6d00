//! External kinds: the step's attempt is not run here but queued as a task for a worker outside
//! the engine (a Python function, a TypeScript tool), which claims it over HTTP, heartbeats,
//! and settles it with its fencing token (see `cairn_store::Tasks` and the server's worker
//! endpoints). The attempt waits for the task to settle: done → the output (checked against the
//! kind's `output_schema`), failed → the worker's class and message, lost (its worker's lease ran
//! out) → a transient failure the step's retry policy handles. Dropping the attempt (a timeout,
//! the run cancelled) cancels the task, which the worker learns at its next heartbeat.
//!
//! Workers see the input as the journal holds it: secrets are their `{{ secrets.X }}`
//! references, never values, so a worker reads its own credentials from its own environment.
//!
//! A task outlives the engine that queued it: when the engine stops or dies, the step's next
//! attempt (in whichever process resumes the run) adopts the earlier task — its result if a
//! worker delivered one meanwhile, else the task itself — instead of handing the work out again.
//! While it waits for a worker, the attempt gives its concurrency slot back.

use super::{Activity, Attempt, AttemptFuture};
use crate::calls::CallSink;
use cairn_core::event::{ErrorClass, Failure};
use cairn_core::kinds::{ExternalKind, KindSpec};
use cairn_store::{NewTask, TaskRow, TaskState};
use serde_json::Value;
use std::io::Read;
use std::sync::{Arc, LazyLock};
use std::time::Duration;
use tokio::sync::{Notify, watch};

/// Rung when a task is queued in this process: long polls waiting for work answer at once.
/// (Processes that share a PostgreSQL database also hear each other through NOTIFY.)
pub fn task_queued() -> &'static Notify {
    static BELL: LazyLock<Notify> = LazyLock::new(Notify::new);
    &BELL
}

/// Rung when a worker settles a task through this process: the attempt waiting for it reads it
/// at once instead of at its next poll.
pub fn task_settled() -> &'static Notify {
    static BELL: LazyLock<Notify> = LazyLock::new(Notify::new);
    &BELL
}

/// How often a waiting attempt reads its task when no bell rings (a worker settled it through
/// another process).
const POLL: Duration = Duration::from_millis(250);

/// What an earlier attempt left.
enum Adopted {
    Result(Result<Value, Failure>),
    Task(String),
    Nothing,
}

/// A kind whose attempts external workers run.
pub struct Kind {
    pub name: String,
    pub kind: ExternalKind,
}

impl Activity for Kind {
    fn spec(&self) -> KindSpec {
        self.kind.spec(&self.name)
    }

    fn run<'a>(&'a self, attempt: &'a mut Attempt<'_>) -> AttemptFuture<'a> {
        Box::pin(self.attempt(attempt))
    }
}

/// A new fencing token: 128 random bits.
fn new_token() -> Result<String, Failure> {
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes)).map_err(|e| {
        Failure::new(ErrorClass::Transient, format!("cannot read random bytes for the task's token: {e}"))
    })?;
    Ok(format!("tk_{}", bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()))
}

/// Cancels the task when the attempt is dropped before it settled (a timeout, a cancelled run),
/// so its worker stops at its next heartbeat. Not when the engine is stopping: the task stays
/// queued (or with its worker), and the next engine's attempt adopts it.
struct Queued {
    sink: Arc<dyn CallSink>,
    token: String,
    /// The attempt the task is this attempt's under (an engine that lost the run must not
    /// withdraw a task the new owner's attempt adopted).
    attempt: u32,
    settled: bool,
    stopping: watch::Receiver<bool>,
}

impl Drop for Queued {
    fn drop(&mut self) {
        if self.settled || *self.stopping.borrow() {
            return;
        }
        let (sink, token, attempt) = (self.sink.clone(), std::mem::take(&mut self.token), self.attempt);
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                let _ = sink.tasks().withdraw(token, attempt).await;
            });
        }
    }
}

fn schema_problem(schema: &Value, value: &Value) -> Option<String> {
    let validator = match jsonschema::validator_for(schema) {
        Ok(v) => v,
        Err(e) => return Some(format!("the schema does not compile: {e}")),
    };
    let problems: Vec<String> =
        validator.iter_errors(value).take(3).map(|e| format!("{e} at `{}`", e.instance_path())).collect();
    (!problems.is_empty()).then(|| problems.join("; "))
}

impl Kind {
    async fn attempt(&self, attempt: &mut Attempt<'_>) -> Result<Value, Failure> {
        if let Some(schema) = &self.kind.input_schema
            && let Some(why) = schema_problem(schema, attempt.input)
        {
            let message = format!("the input of kind `{}` does not fit its input_schema: {why}", self.name);
            return Err(Failure::new(ErrorClass::Permanent, message));
        }
        let Some(sink) = attempt.sink() else {
            let message = format!("kind `{}` runs in external workers, which need the engine's store", self.name);
            return Err(Failure::new(ErrorClass::Permanent, message));
        };
        let token = match self.adopt(&sink, attempt).await? {
            Adopted::Result(result) => return result,
            Adopted::Task(token) => token,
            Adopted::Nothing => self.enqueue(&sink, attempt).await?,
        };
        // Waiting for a worker gives the process's concurrency slot back (it still counts toward
        // the run's `--max-per-run`).
        attempt.release_slot();
        let mut queued = Queued {
            sink: sink.clone(),
            token: token.clone(),
            attempt: attempt.attempt,
            settled: false,
            stopping: attempt.stop_signal(),
        };
        let wake = sink.tasks().wake();
        let mut backoff = POLL;
        loop {
            let settled = task_settled().notified();
            tokio::pin!(settled);
            settled.as_mut().enable();
            // A worker may settle the task through another process (PostgreSQL: NOTIFY).
            let elsewhere = wake.as_ref().map(|w| w.notified());
            let wait = match sink.tasks().task(token.clone()).await {
                Ok(Some(row)) => {
                    backoff = POLL;
                    if let Some(result) = self.settle(&row, attempt) {
                        queued.settled = true;
                        return result;
                    }
                    let now = crate::now_ms();
                    // An adopted task keeps the deadline of the attempt that queued it: past
                    // it, no result is taken any more (the worker's is refused).
                    if row.deadline_ms.is_some_and(|d| d <= now) {
                        let message = format!(
                            "the task (queued by attempt {}) passed its deadline before a worker settled it",
                            row.attempt
                        );
                        return Err(Failure::new(ErrorClass::Timeout, message));
                    }
                    match (row.state, row.lease_expires_at_ms) {
                        (TaskState::Claimed, Some(t)) if t <= now => {
                            match sink.tasks().expire(token.clone(), now).await {
                                Ok(true) => {
                                    attempt
                                        .log(format!("worker {} lost its lease", row.worker.as_deref().unwrap_or("?")));
                                    Duration::ZERO
                                }
                                Ok(false) => Duration::ZERO,
                                Err(_) => POLL,
                            }
                        }
                        (TaskState::Claimed, Some(t)) => Duration::from_millis((t - now).clamp(1, 1_000) as u64),
                        _ => POLL,
                    }
                }
                Ok(None) => {
                    queued.settled = true;
                    return Err(Failure::new(ErrorClass::Transient, "the task vanished from the store (collected?)"));
                }
                // A store that cannot be read now may be readable soon: keep waiting, slower.
                Err(_) => {
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    backoff
                }
            };
            if wait.is_zero() {
                continue;
            }
            tokio::select! {
                _ = settled => {}
                _ = async { match elsewhere { Some(w) => w.await, None => std::future::pending().await } } => {}
                _ = tokio::time::sleep(wait) => {}
            }
            // An engine that stops waits for its attempts like for any kind's; if it exits
            // first, the task stays where it is (see `Queued`) for the next engine to adopt.
        }
    }

    /// What an earlier attempt of this step left with a worker, when no engine waited for it (the
    /// engine that queued it stopped or died): a result delivered meanwhile is taken as this
    /// attempt's (a write is not handed to a worker again), a task still queued or held is waited
    /// for instead of queuing another.
    async fn adopt(&self, sink: &Arc<dyn CallSink>, attempt: &mut Attempt<'_>) -> Result<Adopted, Failure> {
        if attempt.attempt <= 1 {
            return Ok(Adopted::Nothing);
        }
        let latest =
            sink.tasks().latest(attempt.run_id.to_string(), attempt.step.to_string()).await.map_err(|e| {
                Failure::new(ErrorClass::Transient, format!("cannot read the step's earlier task: {e}"))
            })?;
        // Only the same work: this kind, on this queue, with this input (a retry after the
        // definition or the input changed queues anew).
        let same = |r: &TaskRow| {
            r.attempt < attempt.attempt
                && r.kind == self.name
                && r.queue == self.kind.queue
                && attempt.journaled_input.is_none_or(|input| *input == r.input)
        };
        let Some(row) = latest.filter(same) else { return Ok(Adopted::Nothing) };
        // An output that broke the kind's schema was refused once: a worker does it again.
        if row.state == TaskState::Done
            && let (Some(schema), Some(output)) = (&self.kind.output_schema, &row.output)
            && schema_problem(schema, output).is_some()
        {
            return Ok(Adopted::Nothing);
        }
        // A failed, lost or cancelled task is over; one still open past its deadline belonged to an
        // attempt that timed out and gave it up: queue anew.
        let adoptable = match row.state {
            TaskState::Done => true,
            TaskState::Ready | TaskState::Claimed => row.deadline_ms.is_none_or(|d| d > crate::now_ms()),
            TaskState::Failed | TaskState::Lost | TaskState::Cancelled => false,
        };
        // Named by this attempt from now on: an engine that lost the run can no longer withdraw it.
        if !adoptable || !sink.tasks().adopt(row.token.clone(), attempt.attempt).await.unwrap_or(false) {
            return Ok(Adopted::Nothing);
        }
        Ok(if row.state == TaskState::Done {
            attempt.log(format!("took the result attempt {}'s worker delivered while no engine waited", row.attempt));
            Adopted::Result(self.settle(&row, attempt).unwrap_or(Ok(Value::Null)))
        } else {
            attempt.log(format!("waiting for attempt {}'s task, still with its queue or worker", row.attempt));
            Adopted::Task(row.token)
        })
    }

    /// Queues this attempt's task; returns its token.
    async fn enqueue(&self, sink: &Arc<dyn CallSink>, attempt: &mut Attempt<'_>) -> Result<String, Failure> {
        let token = new_token()?;
        // What the journal holds: secret values never leave the engine.
        let input = match attempt.journaled_input {
            Some(journaled) => journaled.clone(),
            None => attempt.secrets.redact_value(attempt.input.clone()),
        };
        let task = NewTask {
            token: token.clone(),
            run_id: attempt.run_id.to_string(),
            step: attempt.step.to_string(),
            attempt: attempt.attempt,
            queue: self.kind.queue.clone(),
            kind: self.name.clone(),
            input,
            deadline_ms: attempt.deadline_ms,
            created_at_ms: crate::now_ms(),
        };
        sink.tasks().enqueue(task).await.map_err(|e| {
            Failure::new(ErrorClass::Transient, format!("cannot queue the task for queue `{}`: {e}", self.kind.queue))
        })?;
        task_queued().notify_waiters();
        attempt.log(format!("queued for a worker on queue `{}`", self.kind.queue));
        Ok(token)
    }

    /// The attempt's result once the task settled; `None` while it waits or runs.
    fn settle(&self, row: &TaskRow, attempt: &mut Attempt<'_>) -> Option<Result<Value, Failure>> {
        let worker = row.worker.as_deref().unwrap_or("?");
        match row.state {
            TaskState::Ready | TaskState::Claimed => None,
            TaskState::Done => {
                let output = row.output.clone().unwrap_or(Value::Null);
                attempt.log(format!("worker {worker} completed the task"));
                if let Some(schema) = &self.kind.output_schema
                    && let Some(why) = schema_problem(schema, &output)
                {
                    let message = format!(
                        "worker {worker}'s output does not fit the output_schema of kind `{}`: {why}",
                        self.name
                    );
                    return Some(Err(Failure::new(ErrorClass::MalformedOutput, message)));
                }
                Some(Ok(output))
            }
            TaskState::Failed => {
                let class = row
                    .error_class
                    .as_deref()
                    .and_then(|c| ErrorClass::ALL.into_iter().find(|e| e.as_str() == c))
                    .unwrap_or(ErrorClass::Transient);
                let message = row.error_message.clone().unwrap_or_default();
                let mut failure = Failure::new(class, format!("worker {worker}: {message}"));
                failure.retry_after_ms = row.retry_after_ms;
                Some(Err(failure))
            }
            TaskState::Lost => Some(Err(Failure::new(
                ErrorClass::Transient,
                format!("worker {worker} lost its lease before it settled the task (it stopped heartbeating)"),
            ))),
            TaskState::Cancelled => {
                Some(Err(Failure::new(ErrorClass::Transient, "the task was cancelled before a worker settled it")))
            }
        }
    }
}
