//! `/v1/runs`: start, list, inspect and steer runs.

use crate::AppState;
use crate::auth::Actor;
use crate::body::{JsonBody, OptionalJson, Path, Query};
use crate::error::ApiError;
use axum::Extension;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use cairn_core::event::{PlanInfo, RunOptions, RunSource};
use cairn_core::payload::sha256_hex;
use cairn_core::{Definition, RunId, RunStatus};
use cairn_engine::{Control, Delivery, NewRun, Submit};
use cairn_store::{IdempotencyKey, RunQuery, RunRow, StepRow, Store};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use std::time::{Duration, Instant};

/// Longest `?wait=` a request may ask for.
const MAX_WAIT: Duration = Duration::from_secs(60);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateRun {
    /// A goal for the planner.
    goal: Option<String>,
    /// A registered workflow's name, or an inline definition (the same shape as a file).
    workflow: Option<Value>,
    /// With a registered workflow: this version instead of the newest.
    version: Option<u32>,
    #[serde(default)]
    inputs: Map<String, Value>,
    max_output_bytes: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct WaitQuery {
    /// Hold the response until the run finishes, up to this long (e.g. `10s`, at most 60s).
    wait: Option<String>,
}

pub fn parse_run_id(s: &str) -> Result<RunId, ApiError> {
    RunId::parse(s).map_err(|m| ApiError::bad_request("bad_run_id", m))
}

/// The public shape of a run.
pub fn run_view(row: &RunRow, steps: Option<&[StepRow]>, output: Option<Value>) -> Value {
    let mut v = json!({
        "id": row.id,
        "workflow": row.workflow,
        "workflow_version": row.definition_version,
        "status": row.status,
        "goal": row.goal,
        "current_step": row.current_step,
        "created_at_ms": row.created_at_ms,
        "updated_at_ms": row.updated_at_ms,
        "finished_at_ms": row.finished_at_ms,
        "events": row.last_seq,
        "failure": row.failure_message.as_ref().map(|m| json!({
            "class": row.failure_class, "message": m, "step": row.failed_step
        })),
        "links": {
            "self": format!("/v1/runs/{}", row.id),
            "steps": format!("/v1/runs/{}/steps", row.id),
            "events": format!("/v1/runs/{}/events", row.id),
            "stream": format!("/v1/runs/{}/events/stream", row.id),
            "export": format!("/v1/runs/{}/export", row.id),
        },
    });
    if let Some(steps) = steps {
        v["steps"] = json!(steps);
    }
    if let Some(output) = output {
        v["output"] = output;
    }
    v
}

pub async fn output_of<S: Store>(store: &S, row: &RunRow) -> Result<Option<Value>, ApiError> {
    match &row.output_hash {
        Some(h) => Ok(store.payload(h).await?),
        None => Ok(None),
    }
}

fn is_terminal(row: &RunRow) -> bool {
    RunStatus::parse(&row.status).is_some_and(|s| s.is_terminal())
}

fn parse_wait(q: &WaitQuery) -> Result<Option<Duration>, ApiError> {
    q.wait
        .as_deref()
        .map(|w| {
            cairn_core::duration::parse_ms(w)
                .map(|ms| Duration::from_millis(ms).min(MAX_WAIT))
                .map_err(|e| ApiError::bad_request("bad_query", format!("wait: {e}")))
        })
        .transpose()
}

/// Waits until the run is finished or the time is up; returns its row either way. Runs driven
/// here wake the waiter directly; runs driven by other processes are polled.
pub async fn wait_for<S: Store>(state: &AppState<S>, id: &RunId, timeout: Duration) -> Result<RunRow, ApiError> {
    let deadline = Instant::now() + timeout;
    loop {
        let (tx, mut rx) = tokio::sync::oneshot::channel();
        if let Ok(mut waiters) = state.finish_waiters.lock() {
            waiters.entry(id.clone()).or_default().push(tx);
        }
        let row = state.store.get_run(id).await?;
        let left = deadline.saturating_duration_since(Instant::now());
        if is_terminal(&row) || left.is_zero() {
            drop(rx);
            if let Ok(mut waiters) = state.finish_waiters.lock()
                && let Some(list) = waiters.get_mut(id)
            {
                list.retain(|w| !w.is_closed());
                if list.is_empty() {
                    waiters.remove(id);
                }
            }
            return Ok(row);
        }
        if *state.shutdown.borrow() {
            // Shutting down: answer with what we have rather than hold the shutdown up.
            return Ok(row);
        }
        let mut shutdown = state.shutdown.clone();
        tokio::select! {
            _ = tokio::time::timeout(left.min(Duration::from_millis(500)), &mut rx) => {}
            _ = shutdown.changed() => {}
        }
    }
}

/// An inline definition, validated, with its warnings (literal credentials …) as text.
fn definition_from(value: Value, origin: &str) -> Result<(Definition, Vec<String>), ApiError> {
    let text =
        serde_json::to_string(&value).map_err(|e| ApiError::unprocessable("invalid_definition", e.to_string()))?;
    let (definition, warnings) = cairn_core::validate::parse_definition_with_warnings(&text, origin);
    let definition = definition.map_err(|problems| {
        ApiError::unprocessable(
            "invalid_definition",
            format!("the workflow definition has {} problem(s); see details", problems.len()),
        )
        .with_details(json!(problems.iter().map(|p| p.to_string()).collect::<Vec<_>>()))
    })?;
    Ok((definition, warnings.iter().map(|w| w.to_string()).collect()))
}

/// Turns a request into what to run: (definition, source, plan, inputs, warnings about an
/// inline definition).
pub async fn resolve<S: Store>(
    state: &AppState<S>,
    req: CreateRunParts,
) -> Result<(Definition, RunSource, Option<PlanInfo>, Value, Vec<String>), ApiError> {
    let mut warnings = Vec::new();
    let (definition, source, plan) = match (req.goal, req.workflow) {
        (Some(goal), None) => {
            let (def, info) =
                state.catalog.plan(&goal).map_err(|e| ApiError::unprocessable("unplannable_goal", e.to_string()))?;
            (def, RunSource::Goal { goal }, Some(info))
        }
        (None, Some(Value::String(name))) => {
            let (_, value) = state.store.workflow(&name, req.version).await?;
            let def: Definition = serde_json::from_value(value)
                .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "store_error", e.to_string()))?;
            (def, RunSource::Definition { path: None }, None)
        }
        (None, Some(inline @ Value::Object(_))) => {
            if req.version.is_some() {
                return Err(ApiError::unprocessable(
                    "invalid_request",
                    "`version` goes with a registered workflow's name, not an inline definition",
                ));
            }
            let (definition, found) = definition_from(inline, "<request>")?;
            warnings = found;
            (definition, RunSource::Definition { path: None }, None)
        }
        (None, Some(other)) => {
            return Err(ApiError::unprocessable(
                "invalid_request",
                format!("`workflow` must be a registered name or a definition object, not {other}"),
            ));
        }
        _ => {
            return Err(ApiError::unprocessable(
                "invalid_request",
                "give exactly one of `goal` (a goal to plan) or `workflow` (a name or a definition)",
            ));
        }
    };
    let mut given = req.inputs;
    if let RunSource::Goal { goal } = &source {
        given.entry("goal").or_insert_with(|| Value::String(goal.clone()));
    }
    let inputs = definition.resolve_inputs(&given).map_err(|e| {
        let suggestions: Map<String, Value> =
            e.unknown.iter().filter_map(|u| Some((u.name.clone(), Value::String(u.suggestion.clone()?)))).collect();
        let unknown: Vec<&str> = e.unknown.iter().map(|u| u.name.as_str()).collect();
        let details =
            json!({"unknown": unknown, "suggestions": suggestions, "declared": e.declared, "missing": e.missing});
        ApiError::unprocessable(e.code(), e.to_string()).with_details(details)
    })?;
    Ok((definition, source, plan, inputs, warnings))
}

pub struct CreateRunParts {
    pub goal: Option<String>,
    pub workflow: Option<Value>,
    pub version: Option<u32>,
    pub inputs: Map<String, Value>,
}

fn idempotency_key(headers: &HeaderMap, body: &[u8]) -> Result<Option<IdempotencyKey>, ApiError> {
    let Some(raw) = headers.get("idempotency-key") else { return Ok(None) };
    let key = raw.to_str().ok().map(str::trim).filter(|k| !k.is_empty() && k.len() <= 255).ok_or_else(|| {
        ApiError::bad_request("bad_idempotency_key", "Idempotency-Key must be 1 to 255 visible ASCII characters")
    })?;
    Ok(Some(IdempotencyKey { key: key.to_string(), request_hash: sha256_hex(body) }))
}

fn created(view: Value, id: &str, status: StatusCode) -> Response {
    let mut response = (status, axum::Json(view)).into_response();
    if let Ok(location) = HeaderValue::from_str(&format!("/v1/runs/{id}")) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response
}

/// Answers a repeated request with the run the key already made.
async fn replay_idempotent<S: Store>(state: &AppState<S>, key: &IdempotencyKey) -> Result<Option<Response>, ApiError> {
    let Some((run_id, hash)) = state.store.idempotent_run(&key.key).await? else { return Ok(None) };
    if hash != key.request_hash {
        return Err(ApiError::unprocessable(
            "idempotency_key_reused",
            format!("Idempotency-Key '{}' was used for a different request (run {run_id})", key.key),
        )
        .with_details(json!({"run_id": run_id})));
    }
    let id = parse_run_id(&run_id)?;
    let row = state.store.get_run(&id).await?;
    let mut response = created(run_view(&row, None, None), &row.id, StatusCode::OK);
    response.headers_mut().insert("idempotent-replayed", HeaderValue::from_static("true"));
    Ok(Some(response))
}

pub async fn create<S: Store>(
    State(state): State<AppState<S>>,
    Query(q): Query<WaitQuery>,
    headers: HeaderMap,
    JsonBody(req, raw): JsonBody<CreateRun>,
) -> Result<Response, ApiError> {
    let wait = parse_wait(&q)?;
    let key = idempotency_key(&headers, &raw)?;
    if let Some(key) = &key
        && let Some(response) = replay_idempotent(&state, key).await?
    {
        return Ok(response);
    }
    let max_output_bytes = req.max_output_bytes.unwrap_or(RunOptions::default().max_output_bytes);
    let parts = CreateRunParts { goal: req.goal, workflow: req.workflow, version: req.version, inputs: req.inputs };
    let (definition, source, plan, inputs, warnings) = resolve(&state, parts).await?;
    let run_id = cairn_engine::new_run_id();
    let new = NewRun {
        definition,
        source,
        plan,
        inputs,
        options: RunOptions { chaos: None, max_output_bytes },
        reused: Vec::new(),
        reused_payloads: Vec::new(),
    };
    let submit = Submit { idempotency: key.clone(), drive_here: state.drive_here };
    match state.engine.submit(run_id.clone(), new, submit).await {
        Ok(_) => {}
        Err(cairn_engine::Error::Store(cairn_store::Error::IdempotencyKey { .. })) if key.is_some() => {
            // Lost a race with the same key: answer like the winner.
            if let Some(key) = &key
                && let Some(response) = replay_idempotent(&state, key).await?
            {
                return Ok(response);
            }
        }
        Err(e) => return Err(e.into()),
    }
    let row = match wait {
        Some(timeout) => wait_for(&state, &run_id, timeout).await?,
        None => state.store.get_run(&run_id).await?,
    };
    let output = if is_terminal(&row) { output_of(&*state.store, &row).await? } else { None };
    let mut view = run_view(&row, None, output);
    if !warnings.is_empty() {
        view["warnings"] = json!(warnings);
    }
    Ok(created(view, &row.id, StatusCode::CREATED))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    status: Option<String>,
    workflow: Option<String>,
    /// Unix milliseconds (inclusive).
    created_after: Option<i64>,
    /// Unix milliseconds (exclusive).
    created_before: Option<i64>,
    limit: Option<usize>,
    cursor: Option<String>,
}

pub async fn list<S: Store>(
    State(state): State<AppState<S>>,
    Query(q): Query<ListQuery>,
) -> Result<Response, ApiError> {
    let status = q
        .status
        .map(|s| {
            RunStatus::parse(&s).map(|s| s.as_str().to_string()).ok_or_else(|| {
                ApiError::bad_request(
                    "bad_query",
                    format!(
                        "status '{s}' is not a run state; use one of {}",
                        RunStatus::ALL.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
                    ),
                )
            })
        })
        .transpose()?;
    let limit = q.limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::bad_request("bad_query", format!("limit {limit} is out of range: use 1 to 500")));
    }
    let after = q
        .cursor
        .map(|c| {
            c.split_once('.')
                .and_then(|(at, id)| Some((at.parse::<i64>().ok()?, id.to_string())))
                .filter(|(_, id)| id.starts_with("wf_"))
                .ok_or_else(|| ApiError::bad_request("bad_cursor", "cursor is not one this API returned"))
        })
        .transpose()?;
    let rows = state
        .store
        .list_runs(RunQuery {
            status,
            workflow: q.workflow,
            created_after_ms: q.created_after,
            created_before_ms: q.created_before,
            after,
            limit,
        })
        .await?;
    let next = (rows.len() == limit).then(|| rows.last().map(|r| format!("{}.{}", r.created_at_ms, r.id))).flatten();
    let runs: Vec<Value> = rows.iter().map(|r| run_view(r, None, None)).collect();
    Ok(axum::Json(json!({"runs": runs, "next_cursor": next})).into_response())
}

pub async fn get<S: Store>(State(state): State<AppState<S>>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let id = parse_run_id(&id)?;
    let row = state.store.get_run(&id).await?;
    let steps = state.store.steps(&id).await?;
    let output = output_of(&*state.store, &row).await?;
    Ok(axum::Json(run_view(&row, Some(&steps), output)).into_response())
}

pub async fn steps<S: Store>(State(state): State<AppState<S>>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let id = parse_run_id(&id)?;
    let steps = state.store.steps(&id).await?;
    Ok(axum::Json(json!({"run_id": id, "steps": steps})).into_response())
}

pub async fn logs<S: Store>(
    State(state): State<AppState<S>>,
    Path((id, step)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let id = parse_run_id(&id)?;
    let steps = state.store.steps(&id).await?;
    if !steps.iter().any(|s| s.step_id == step) {
        return Err(ApiError::not_found("step_not_found", format!("run {id} has no step '{step}'")));
    }
    let logs = state.store.logs(&id, Some(&step)).await?;
    Ok(axum::Json(json!({"run_id": id, "step": step, "logs": logs})).into_response())
}

/// Every operator request the run was sent, in the order they were accepted, with what became
/// of each (applied at journal event N, unchanged, refused with the reason, or pending).
pub async fn requests<S: Store>(
    State(state): State<AppState<S>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_run_id(&id)?;
    let rows = state.store.run_requests(&id).await?;
    let views: Vec<cairn_engine::RequestView> = rows.iter().map(cairn_engine::RequestView::of).collect();
    Ok(axum::Json(json!({"run_id": id, "requests": views})).into_response())
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    /// Only events after this journal position.
    after: Option<u64>,
}

pub async fn events<S: Store>(
    State(state): State<AppState<S>>,
    Path(id): Path<String>,
    Query(q): Query<EventsQuery>,
) -> Result<Response, ApiError> {
    let id = parse_run_id(&id)?;
    let events = state.store.events_after(&id, q.after.unwrap_or(0)).await?;
    Ok(axum::Json(json!({"run_id": id, "events": events})).into_response())
}

pub async fn export<S: Store>(State(state): State<AppState<S>>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let id = parse_run_id(&id)?;
    Ok(axum::Json(cairn_store::export_document(&*state.store, &id).await?).into_response())
}

/// Sends an operator request and answers once it is applied (200), found unchanged (200),
/// refused (409 with the reason), or still queued when the wait ran out (202).
pub async fn steer<S: Store>(state: &AppState<S>, id: &RunId, control: Control) -> Result<Response, ApiError> {
    let delivery = state.engine.request(id, control).await?;
    let row = state.store.get_run(id).await?;
    let mut view = run_view(&row, None, None);
    let status = match &delivery {
        Delivery::Applied { request, journal_seq } => {
            view["delivery"] = json!("applied");
            view["request"] = json!({"id": request, "state": "applied", "journal_seq": journal_seq});
            StatusCode::OK
        }
        Delivery::Unchanged { request, code, message } => {
            view["delivery"] = json!(code);
            view["request"] = json!({"id": request, "state": "unchanged", "code": code, "message": message});
            StatusCode::OK
        }
        Delivery::Queued { request, owner } => {
            view["delivery"] = json!("queued");
            view["request"] = json!({
                "id": request,
                "state": "pending",
                "message": format!(
                    "accepted, but the process driving the run ({}) has not applied it yet; it is applied in order when the run is next driven",
                    owner.as_deref().unwrap_or("none")
                ),
            });
            StatusCode::ACCEPTED
        }
    };
    Ok((status, axum::Json(view)).into_response())
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct CancelBody {
    reason: Option<String>,
}

pub async fn cancel<S: Store>(
    State(state): State<AppState<S>>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<String>,
    OptionalJson(body): OptionalJson<CancelBody>,
) -> Result<Response, ApiError> {
    let id = parse_run_id(&id)?;
    let reason = body.reason.unwrap_or_else(|| format!("cancelled by {}", actor.name));
    steer(&state, &id, Control::Cancel { reason, by: Some(actor.name) }).await
}

pub async fn pause<S: Store>(
    State(state): State<AppState<S>>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_run_id(&id)?;
    steer(&state, &id, Control::Pause { by: Some(actor.name) }).await
}

pub async fn resume<S: Store>(
    State(state): State<AppState<S>>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_run_id(&id)?;
    steer(&state, &id, Control::Unpause { by: Some(actor.name) }).await
}

pub async fn signal<S: Store>(
    State(state): State<AppState<S>>,
    Extension(actor): Extension<Actor>,
    Path((id, name)): Path<(String, String)>,
    OptionalJson(payload): OptionalJson<Value>,
) -> Result<Response, ApiError> {
    let id = parse_run_id(&id)?;
    cairn_engine::check_signal_name(&name).map_err(|m| ApiError::bad_request("bad_signal_name", m))?;
    steer(&state, &id, Control::Signal { name, payload, by: Some(actor.name) }).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RerunBody {
    /// The first step to execute again.
    from: String,
}

/// Retries a FAILED run in place from what did not succeed (the same run id; `RunRetried` in
/// its journal). 409 unless the run is FAILED.
pub async fn retry<S: Store>(
    State(state): State<AppState<S>>,
    Path(id): Path<String>,
    Extension(actor): Extension<Actor>,
) -> Result<Response, ApiError> {
    let id = parse_run_id(&id)?;
    state.engine.retry(&id, Some(actor.name), state.drive_here).await?;
    let row = state.store.get_run(&id).await?;
    Ok(axum::Json(run_view(&row, None, None)).into_response())
}

/// A new run from a step of this one, reusing the results before it (linked to its parent).
pub async fn rerun<S: Store>(
    State(state): State<AppState<S>>,
    Path(id): Path<String>,
    JsonBody(body, _): JsonBody<RerunBody>,
) -> Result<Response, ApiError> {
    let parent = parse_run_id(&id)?;
    state.store.get_run(&parent).await?;
    let (run_id, _) = state.engine.fork(&parent, &body.from, state.drive_here).await?;
    let row = state.store.get_run(&run_id).await?;
    let mut view = run_view(&row, None, None);
    view["forked_from"] = json!({"run": parent, "step": body.from});
    Ok(created(view, &row.id, StatusCode::CREATED))
}
