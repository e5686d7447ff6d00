//! The worker protocol: how code outside the engine (a Python function, a TypeScript tool) runs
//! the steps of external kinds. A worker long-polls `claim` for tasks of its queues, heartbeats
//! while it works (the answer says when the task was cancelled or superseded), and settles each
//! task with `complete` or `fail`, naming it by its fencing token. Inside a task, `calls` makes
//! the worker's own calls durable: a call recorded by an earlier attempt of the step comes back
//! instead of being made again. A token whose lease expired (the attempt was retried elsewhere)
//! changes nothing: 409 `stale_token`.

use crate::AppState;
use crate::body::JsonBody;
use crate::error::ApiError;
use crate::responses::{BadRequest, InvalidWorkerRequest, StaleToken, TaskNotFound, UnsupportedMediaType};
use crate::views::reply;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use cairn_core::RunId;
use cairn_core::payload::Payload;
use cairn_store::{CallRow, Store, TaskAnswer, TaskClaim, TaskOutcome, TaskRow, TaskState};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use utoipa::ToSchema;

/// Most tasks one claim takes.
const MAX_TASKS: usize = 100;
/// Longest long poll.
const MAX_WAIT_MS: u64 = 60_000;
const DEFAULT_WAIT_MS: u64 = 20_000;
const LEASE_MS: (u64, u64) = (1_000, 600_000);
const DEFAULT_LEASE_MS: u64 = 30_000;
/// How often a long poll looks at the queue when no bell rings (tasks queued by a process that
/// shares a SQLite file).
const POLL: Duration = Duration::from_millis(500);
/// The failure classes a worker may report.
const CLASSES: &[&str] = &["transient", "timeout", "rate_limited", "permanent", "malformed_output"];
const MAX_MESSAGE_CHARS: usize = 4_096;

/// Tasks to claim.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"worker": "py-worker-1", "queues": ["py-workers"], "max_tasks": 4, "wait_ms": 20000}))]
pub struct Claim {
    /// Who claims (for logs and the dashboard): 1 to 128 printable characters.
    #[schema(example = "py-worker-1", min_length = 1, max_length = 128)]
    worker: String,
    /// Tasks of these queues (1 to 32).
    #[schema(min_items = 1, max_items = 32, inline, value_type = Vec<NameText>)]
    queues: Vec<String>,
    /// And of these kinds only, when given.
    #[serde(default)]
    #[schema(max_items = 64, inline, value_type = Vec<NameText>)]
    kinds: Vec<String>,
    /// At most this many tasks (1 to 100; default 1).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 100)]
    max_tasks: Option<u64>,
    /// How long to wait for a task when none is ready, in ms (0 to 60000; default 20000).
    #[serde(default)]
    #[schema(maximum = 60000)]
    wait_ms: Option<u64>,
    /// How long the worker holds each task without a heartbeat, in ms (1000 to 600000; default
    /// 30000). A worker that stops heartbeating loses the task, and the attempt is retried.
    #[serde(default)]
    #[schema(minimum = 1000, maximum = 600000)]
    lease_ms: Option<u64>,
}

/// A queue or kind name: a letter, then up to 63 letters, digits, `_`, `-` or `.`.
#[derive(ToSchema)]
#[schema(pattern = r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$", example = "py-workers")]
pub struct NameText(#[allow(dead_code)] String);

/// A claimed task: one attempt of a step, the worker's until its lease expires.
#[derive(Serialize, ToSchema)]
pub struct ClaimedTask {
    /// The fencing token: name the task with it in heartbeats, results and calls. It is this
    /// attempt's only; keep it secret.
    #[schema(example = "tk_9f2c4e1a0b3d5f7e9a1c3e5f7b9d1f3a")]
    token: String,
    #[schema(example = "wf_01KBC6X8Y2S7J5W0Q3R4T5V6X7")]
    run_id: String,
    #[schema(example = "summarize")]
    step: String,
    attempt: u32,
    queue: String,
    kind: String,
    /// The step's input (secret values replaced by their references).
    #[schema(value_type = Value)]
    input: Value,
    /// When the attempt times out (ms since the epoch), if its step has a timeout.
    deadline_ms: Option<i64>,
    /// When the claim lapses without a heartbeat (ms since the epoch).
    lease_expires_at_ms: Option<i64>,
    /// When the task was queued (ms since the epoch).
    queued_at_ms: i64,
}

impl From<TaskRow> for ClaimedTask {
    fn from(t: TaskRow) -> Self {
        ClaimedTask {
            token: t.token,
            run_id: t.run_id,
            step: t.step,
            attempt: t.attempt,
            queue: t.queue,
            kind: t.kind,
            input: t.input,
            deadline_ms: t.deadline_ms,
            lease_expires_at_ms: t.lease_expires_at_ms,
            queued_at_ms: t.created_at_ms,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct Claimed {
    /// Empty when the wait ended without a task.
    tasks: Vec<ClaimedTask>,
}

fn is_name(s: &str) -> bool {
    cairn_core::validate::is_kind_name(s)
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::unprocessable("invalid_request", message)
}

fn in_range(field: &str, value: Option<u64>, default: u64, (lo, hi): (u64, u64)) -> Result<u64, ApiError> {
    let v = value.unwrap_or(default);
    if (lo..=hi).contains(&v) { Ok(v) } else { Err(invalid(format!("`{field}` is {v}; use {lo} to {hi}"))) }
}

/// Claims tasks, waiting up to `wait_ms` for one to be ready.
#[utoipa::path(
    post,
    path = "/v1/workers/claim",
    operation_id = "claim_tasks",
    tag = "workers",
    request_body(content = Claim, content_type = "application/json"),
    responses(
        (status = 200, description = "The tasks claimed (none if the wait ended first). A task queued while the claim waits is answered at once.", body = Claimed),
        (status = 400, response = BadRequest),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, response = InvalidWorkerRequest),
    ),
)]
pub async fn claim<S: Store>(
    State(state): State<AppState<S>>,
    JsonBody(body, _): JsonBody<Claim>,
) -> Result<Response, ApiError> {
    let worker = body.worker.trim();
    if worker.is_empty() || worker.chars().count() > 128 || worker.chars().any(char::is_control) {
        return Err(invalid("`worker` is 1 to 128 printable characters (e.g. `py-worker-1`)"));
    }
    if body.queues.is_empty() || body.queues.len() > 32 || body.kinds.len() > 64 {
        return Err(invalid("`queues` names 1 to 32 queues, and `kinds` at most 64 kinds"));
    }
    if let Some(bad) = body.queues.iter().chain(&body.kinds).find(|n| !is_name(n)) {
        return Err(invalid(format!(
            "`{}` is not a queue or kind name: a letter, then up to 63 letters, digits, `_`, `-` or `.`",
            bad.escape_debug()
        )));
    }
    let limit = in_range("max_tasks", body.max_tasks, 1, (1, MAX_TASKS as u64))? as usize;
    let wait = Duration::from_millis(in_range("wait_ms", body.wait_ms, DEFAULT_WAIT_MS, (0, MAX_WAIT_MS))?);
    let lease_ms = in_range("lease_ms", body.lease_ms, DEFAULT_LEASE_MS, LEASE_MS)? as i64;
    let until = Instant::now() + wait;
    let mut shutdown = state.shutdown.clone();
    let signal = state.store.wake_signal();
    loop {
        // Listen before looking, so a task queued in between still wakes this poll.
        let queued = cairn_engine::kinds::task_queued().notified();
        tokio::pin!(queued);
        queued.as_mut().enable();
        let woken = signal.as_ref().map(|s| s.notified());
        let now = cairn_engine::now_ms();
        let claim = TaskClaim {
            worker,
            queues: &body.queues,
            kinds: &body.kinds,
            limit,
            now_ms: now,
            lease_until_ms: now + lease_ms,
        };
        let tasks = state.store.claim_tasks(claim).await?;
        let left = until.saturating_duration_since(Instant::now());
        if !tasks.is_empty() || left.is_zero() || *shutdown.borrow() {
            let tasks = tasks.into_iter().map(ClaimedTask::from).collect();
            return Ok(reply(StatusCode::OK, &Claimed { tasks }));
        }
        tokio::select! {
            _ = queued => {}
            _ = async { match woken { Some(w) => w.await, None => std::future::pending().await } } => {}
            _ = tokio::time::sleep(left.min(POLL)) => {}
            _ = shutdown.changed() => {}
        }
    }
}

/// A task named by its token.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"token": "tk_9f2c4e1a0b3d5f7e9a1c3e5f7b9d1f3a", "lease_ms": 30000}))]
pub struct Heartbeat {
    #[schema(min_length = 1, max_length = 128)]
    token: String,
    /// Extend the lease by this much from now, in ms (1000 to 600000; default 30000).
    #[serde(default)]
    #[schema(minimum = 1000, maximum = 600000)]
    lease_ms: Option<u64>,
}

#[derive(Serialize, ToSchema)]
pub struct HeartbeatAnswer {
    /// Stop: the run was cancelled, the attempt superseded or timed out, or the lease lapsed.
    /// Nothing this worker sends for the task will count.
    cancelled: bool,
    /// `claimed` while the task is the worker's; else where it went (`cancelled`, `lost`, `done`, `failed`).
    state: String,
    /// The new end of the lease, while the task is the worker's.
    lease_expires_at_ms: Option<i64>,
}

/// The task as its holder sees it: the row, if the token names one.
async fn task<S: Store>(state: &AppState<S>, token: &str) -> Result<TaskRow, ApiError> {
    if token.is_empty() || token.len() > 128 {
        return Err(invalid("`token` is the task's token from `claim` (tk_…)"));
    }
    state.store.task(token).await?.ok_or_else(|| {
        ApiError::not_found("task_not_found", "no task has this token; use the token a claim answered with")
    })
}

/// Whether the task's run is over (or gone).
async fn run_ended<S: Store>(state: &AppState<S>, run_id: &str) -> Result<bool, ApiError> {
    let Ok(id) = RunId::parse(run_id) else { return Ok(true) };
    match cairn_store::Journal::get_run(&*state.store, &id).await {
        Ok(run) => Ok(matches!(run.status.as_str(), "COMPLETED" | "FAILED" | "CANCELLED")),
        Err(cairn_store::Error::NotFound(_)) => Ok(true),
        Err(e) => Err(e.into()),
    }
}

/// Extends a task's lease, or says it was cancelled.
#[utoipa::path(
    post,
    path = "/v1/workers/heartbeat",
    operation_id = "heartbeat_task",
    tag = "workers",
    request_body(content = Heartbeat, content_type = "application/json"),
    responses(
        (status = 200, description = "The lease was extended, or `cancelled` says to stop.", body = HeartbeatAnswer),
        (status = 400, response = BadRequest),
        (status = 404, response = TaskNotFound),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, response = InvalidWorkerRequest),
    ),
)]
pub async fn heartbeat<S: Store>(
    State(state): State<AppState<S>>,
    JsonBody(body, _): JsonBody<Heartbeat>,
) -> Result<Response, ApiError> {
    let lease_ms = in_range("lease_ms", body.lease_ms, DEFAULT_LEASE_MS, LEASE_MS)? as i64;
    let row = task(&state, &body.token).await?;
    let worker = row.worker.clone().unwrap_or_default();
    let now = cairn_engine::now_ms();
    // A lapsed lease is lost for good, even if nobody noticed yet.
    let lapsed = row.state == TaskState::Claimed && row.lease_expires_at_ms.is_some_and(|t| t <= now);
    let answer = if lapsed {
        let _ = state.store.expire_task(&body.token, now).await?;
        TaskAnswer::Stale(TaskState::Lost)
    } else if row.state == TaskState::Claimed && run_ended(&state, &row.run_id).await? {
        // Its run ended without it (the engine that waited for it was gone): nobody will read it.
        state.store.cancel_task(&body.token).await?;
        TaskAnswer::Stale(TaskState::Cancelled)
    } else {
        state.store.heartbeat_task(&body.token, &worker, now + lease_ms).await?
    };
    let view = match answer {
        TaskAnswer::Ok => {
            HeartbeatAnswer { cancelled: false, state: "claimed".into(), lease_expires_at_ms: Some(now + lease_ms) }
        }
        TaskAnswer::Stale(s) => {
            HeartbeatAnswer { cancelled: true, state: s.as_str().into(), lease_expires_at_ms: None }
        }
        TaskAnswer::Unknown => return Err(ApiError::not_found("task_not_found", "no task has this token")),
    };
    if lapsed {
        cairn_engine::kinds::task_settled().notify_waiters();
    }
    Ok(reply(StatusCode::OK, &view))
}

/// A task's output.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"token": "tk_9f2c4e1a0b3d5f7e9a1c3e5f7b9d1f3a", "output": {"summary": "Otters hold hands."}}))]
pub struct Complete {
    #[schema(min_length = 1, max_length = 128)]
    token: String,
    /// The step's output (any JSON).
    #[schema(value_type = Value)]
    output: Value,
}

/// A task's failure.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"token": "tk_9f2c4e1a0b3d5f7e9a1c3e5f7b9d1f3a", "class": "rate_limited", "message": "upstream said 429", "retry_after_ms": 2000}))]
pub struct Fail {
    #[schema(min_length = 1, max_length = 128)]
    token: String,
    /// `transient` (default), `timeout` or `rate_limited` are retried under the step's policy;
    /// `permanent` and `malformed_output` are not.
    #[serde(default)]
    #[schema(pattern = "^(transient|timeout|rate_limited|permanent|malformed_output)$")]
    class: Option<String>,
    /// What went wrong (at most 4096 characters).
    #[schema(max_length = 4096)]
    message: String,
    /// Wait at least this long before the next attempt (at most a day).
    #[serde(default)]
    #[schema(maximum = 86400000)]
    retry_after_ms: Option<u64>,
}

#[derive(Serialize, ToSchema)]
pub struct Settled {
    /// `done` or `failed`.
    state: String,
}

async fn settle<S: Store>(state: &AppState<S>, token: &str, outcome: TaskOutcome) -> Result<Response, ApiError> {
    let row = task(state, token).await?;
    let worker = row.worker.clone().unwrap_or_default();
    let done = matches!(outcome, TaskOutcome::Done(_));
    match state.store.finish_task(token, &worker, outcome, cairn_engine::now_ms()).await? {
        TaskAnswer::Ok => {
            cairn_engine::kinds::task_settled().notify_waiters();
            Ok(reply(StatusCode::OK, &Settled { state: if done { "done" } else { "failed" }.into() }))
        }
        TaskAnswer::Stale(s) => Err(stale(s)),
        TaskAnswer::Unknown => Err(ApiError::not_found("task_not_found", "no task has this token")),
    }
}

fn stale(s: TaskState) -> ApiError {
    let why = match s {
        TaskState::Ready => "it was never claimed",
        TaskState::Claimed => "its lease or the attempt's deadline passed before this arrived",
        TaskState::Done | TaskState::Failed => "it is already settled",
        TaskState::Cancelled => "its run was cancelled or its attempt superseded",
        TaskState::Lost => "its lease lapsed and the attempt was given up (it may be retried under a new token)",
    };
    ApiError::conflict("stale_token", format!("this token no longer holds its task: {why}; nothing changed"))
        .with_details(json!({"state": s.as_str()}))
}

/// Settles a task with its output.
#[utoipa::path(
    post,
    path = "/v1/workers/complete",
    operation_id = "complete_task",
    tag = "workers",
    request_body(content = Complete, content_type = "application/json"),
    responses(
        (status = 200, description = "Recorded: the step's attempt ends with this output.", body = Settled),
        (status = 400, response = BadRequest),
        (status = 404, response = TaskNotFound),
        (status = 409, response = StaleToken),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, response = InvalidWorkerRequest),
    ),
)]
pub async fn complete<S: Store>(
    State(state): State<AppState<S>>,
    JsonBody(body, _): JsonBody<Complete>,
) -> Result<Response, ApiError> {
    if cairn_core::payload::nesting(&body.output) > cairn_core::payload::MAX_NESTING {
        return Err(invalid(format!("`output` nests deeper than {} levels", cairn_core::payload::MAX_NESTING)));
    }
    settle(&state, &body.token, TaskOutcome::Done(body.output)).await
}

/// Settles a task with a failure.
#[utoipa::path(
    post,
    path = "/v1/workers/fail",
    operation_id = "fail_task",
    tag = "workers",
    request_body(content = Fail, content_type = "application/json"),
    responses(
        (status = 200, description = "Recorded: the step's attempt fails with this class and message.", body = Settled),
        (status = 400, response = BadRequest),
        (status = 404, response = TaskNotFound),
        (status = 409, response = StaleToken),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, response = InvalidWorkerRequest),
    ),
)]
pub async fn fail<S: Store>(
    State(state): State<AppState<S>>,
    JsonBody(body, _): JsonBody<Fail>,
) -> Result<Response, ApiError> {
    let class = body.class.unwrap_or_else(|| "transient".into());
    if !CLASSES.contains(&class.as_str()) {
        return Err(invalid(format!("`class` `{}` is not one of {}", class.escape_debug(), CLASSES.join(", "))));
    }
    if body.message.chars().count() > MAX_MESSAGE_CHARS {
        return Err(invalid(format!("`message` is longer than {MAX_MESSAGE_CHARS} characters")));
    }
    if body.retry_after_ms.is_some_and(|ms| ms > 86_400_000) {
        return Err(invalid("`retry_after_ms` is at most 86400000 (a day)"));
    }
    let outcome = TaskOutcome::Failed { class, message: body.message, retry_after_ms: body.retry_after_ms };
    settle(&state, &body.token, outcome).await
}

/// A durable call made by worker code.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"token": "tk_9f2c4e1a0b3d5f7e9a1c3e5f7b9d1f3a", "n": 1, "name": "fetch_page", "request_hash": "sha256:3f5a9c0e", "result": {"status": 200}}))]
pub struct Call {
    #[schema(min_length = 1, max_length = 128)]
    token: String,
    /// The call's position among the task's calls (1, 2, …): the same call must take the same
    /// position in every attempt.
    #[schema(minimum = 1, maximum = 10000)]
    n: u32,
    /// What the call is (`fetch_page`, `model`): a letter, then up to 63 letters, digits, `_`, `-` or `.`.
    #[schema(pattern = r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$")]
    name: String,
    /// A hash of the call's request (1 to 128 of `0-9a-zA-Z_:-`), e.g. SHA-256 of its arguments:
    /// a recorded call whose hash differs is a divergence.
    #[schema(pattern = "^[0-9A-Za-z_:-]{1,128}$")]
    request_hash: String,
    /// The call's result (any JSON, `null` too), to record it; without the field, only look it up.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<Value>)]
    result: Option<Value>,
}

#[derive(Serialize, ToSchema)]
pub struct CallAnswer {
    /// Whether the call is recorded: `result` is its result, made by this or an earlier attempt
    /// (do not make the call again). `false`: make it, then send its result.
    recorded: bool,
    #[schema(value_type = Option<Value>)]
    result: Option<Value>,
    /// The attempt that made it.
    attempt: Option<u32>,
}

/// A field that is present is `Some`, even when it is `null`; an absent one is `None` (by `default`).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

/// Looks up or records a durable call of worker code.
#[utoipa::path(
    post,
    path = "/v1/workers/calls",
    operation_id = "worker_call",
    tag = "workers",
    request_body(content = Call, content_type = "application/json"),
    responses(
        (status = 200, description = "The call's recorded result (`recorded: true`), or `recorded: false`: make the call, then send its `result`.", body = CallAnswer),
        (status = 400, response = BadRequest),
        (status = 404, response = TaskNotFound),
        (status = 409, response = StaleToken),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, response = InvalidWorkerRequest),
    ),
)]
pub async fn call<S: Store>(
    State(state): State<AppState<S>>,
    JsonBody(body, _): JsonBody<Call>,
) -> Result<Response, ApiError> {
    if !(1..=10_000).contains(&body.n) {
        return Err(invalid(format!("`n` is {}; calls are numbered from 1 to 10000", body.n)));
    }
    if !is_name(&body.name) {
        return Err(invalid("`name` is a letter, then up to 63 letters, digits, `_`, `-` or `.`"));
    }
    let hash_ok = (1..=128).contains(&body.request_hash.len())
        && body.request_hash.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b':' | b'-'));
    if !hash_ok {
        return Err(invalid("`request_hash` is 1 to 128 of 0-9, a-z, A-Z, `_`, `:`, `-` (e.g. a SHA-256 in hex)"));
    }
    if let Some(result) = &body.result
        && cairn_core::payload::nesting(result) > cairn_core::payload::MAX_NESTING
    {
        return Err(invalid(format!("`result` nests deeper than {} levels", cairn_core::payload::MAX_NESTING)));
    }
    let row = task(&state, &body.token).await?;
    let now = cairn_engine::now_ms();
    if row.state != TaskState::Claimed || row.lease_expires_at_ms.is_none_or(|t| t <= now) {
        return Err(stale(if row.state == TaskState::Claimed { TaskState::Lost } else { row.state }));
    }
    let run =
        RunId::parse(&row.run_id).map_err(|_| ApiError::from(cairn_store::Error::Corrupt("bad run id".into())))?;
    if let Some(answer) = recorded(&state, &run, &row.step, &body).await? {
        return Ok(answer);
    }
    let Some(result) = body.result.clone() else {
        return Ok(reply(StatusCode::OK, &CallAnswer { recorded: false, result: None, attempt: None }));
    };
    let payload = Payload::of(&result);
    let call = CallRow {
        step_id: row.step.clone(),
        n: body.n,
        kind: body.name.clone(),
        request_hash: body.request_hash.clone(),
        outcome: "ok".into(),
        result_hash: Some(payload.reference.hash.clone()),
        error: None,
        attempt: row.attempt,
        duration_ms: 0,
        at_ms: now,
        cost: None,
        reserved: None,
    };
    if state.store.record_call(&run, call, Some(payload)).await? {
        return Ok(reply(
            StatusCode::OK,
            &CallAnswer { recorded: true, result: Some(result), attempt: Some(row.attempt) },
        ));
    }
    // Another attempt recorded this position first: its result stands.
    match recorded(&state, &run, &row.step, &body).await? {
        Some(answer) => Ok(answer),
        None => Err(ApiError::conflict("call_conflict", "the call could not be recorded; try again")),
    }
}

/// The recorded call at the body's position, as the answer; a divergence is 409.
async fn recorded<S: Store>(
    state: &AppState<S>,
    run: &RunId,
    step: &str,
    body: &Call,
) -> Result<Option<Response>, ApiError> {
    let calls = state.store.calls(run, Some(step)).await?;
    let Some(found) = calls.into_iter().find(|c| c.n == body.n && c.outcome == "ok") else { return Ok(None) };
    if found.request_hash != body.request_hash {
        let message = format!(
            "call {} was recorded with request hash {} but is now made with {}: the worker's code or input changed; \
             the task cannot go on from the record",
            body.n, found.request_hash, body.request_hash
        );
        return Err(ApiError::conflict("call_divergence", message)
            .with_details(json!({"n": body.n, "recorded": found.request_hash, "now": body.request_hash})));
    }
    let Some(hash) = found.result_hash else { return Ok(None) };
    let result = cairn_store::Journal::payload(&*state.store, &hash)
        .await?
        .ok_or_else(|| cairn_store::Error::Corrupt(format!("call {} is recorded but its result is missing", body.n)))?;
    Ok(Some(reply(StatusCode::OK, &CallAnswer { recorded: true, result: Some(result), attempt: Some(found.attempt) })))
}
