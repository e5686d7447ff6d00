//! `/v1/runs`: start, list, inspect and steer runs.

use crate::AppState;
use crate::auth::Actor;
use crate::body::{JsonBody, OptionalJson, Path, Query};
use crate::error::ApiError;
use crate::responses::{
    BadRequest, InvalidBody, InvalidFork, InvalidRun, RunConflict, RunNotFound, StepNotFound, UnsupportedMediaType,
    WorkflowNotFound,
};
use crate::views::{
    CallDetail, ForkOrigin, ForkedRun, RequestView, RunDetail, RunEvents, RunPage, RunRequests, RunSteps, RunView,
    StartedRun, SteerRequest, SteeredRun, StepDetail, StepLogs, reply,
};
use axum::Extension;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use cairn_core::event::{PlanInfo, RunOptions, RunSource};
use cairn_core::kinds::Kinds;
use cairn_core::payload::sha256_hex;
use cairn_core::{Definition, Event, RunId, RunStatus};
use cairn_engine::calls::answer_line;
use cairn_engine::{Control, Delivery, NewRun, Submit};
use cairn_store::{IdempotencyKey, RunQuery, RunRow, Spend, StepRow, Store};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use std::time::{Duration, Instant};
use utoipa::{IntoParams, ToSchema};

/// Longest `?wait=` a request may ask for.
const MAX_WAIT: Duration = Duration::from_secs(60);

/// What to run: exactly one of `goal` and `workflow`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(examples(
    json!({"goal": "generate summary and send email"}),
    json!({"goal": "summarise the incident report and email it", "planner": "model"}),
    json!({"workflow": "summary-and-email", "inputs": {"topic": "beavers"}}),
    json!({"workflow": {"name": "hello", "steps": [{"id": "greet", "kind": "echo", "with": {"text": "hi"}}]}}),
))]
pub struct CreateRun {
    /// A goal for the planner, which plans it from the catalog (`cairn plan --list`).
    #[schema(value_type = String, required = false, pattern = r"\S", example = "generate summary and send email")]
    goal: Option<String>,
    /// With `goal`: who plans it — `catalog` (default: the deterministic matcher) or `model` (the
    /// configured default model chooses from the same catalog).
    #[schema(pattern = "^(catalog|model)$")]
    planner: Option<String>,
    /// A registered workflow's name, or an inline definition (the same shape as a file).
    #[schema(schema_with = workflow_ref_schema, required = false)]
    workflow: Option<Value>,
    /// With a registered workflow's name: this version instead of the newest.
    #[schema(minimum = 1)]
    version: Option<u32>,
    /// Values for the inputs the definition declares (no others).
    #[serde(default)]
    #[schema(value_type = Object, additional_properties = true)]
    inputs: Map<String, Value>,
    /// The largest output the run may produce, in bytes (default 1 MiB).
    max_output_bytes: Option<u64>,
}

/// `workflow`: a registered name or an inline definition.
fn workflow_ref_schema() -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Type};
    OneOfBuilder::new()
        .item(ObjectBuilder::new().schema_type(Type::String).description(Some("A registered workflow's name.")))
        .item(utoipa::openapi::Ref::from_schema_name("WorkflowDefinition"))
        .into()
}

#[derive(Deserialize, Default, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct WaitQuery {
    /// Hold the answer until the run finishes, up to this long (`250ms`, `10s`, `1m`; a bare
    /// number is milliseconds; at most 60 s). The answer is the same run either way.
    #[param(pattern = r"^[0-9]{1,7}(\.[0-9]{1,3})?(ms|s|m|min|h|d)?$", example = "10s")]
    wait: Option<String>,
}

/// A run's id in the path.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct RunPath {
    /// The run's id.
    #[param(pattern = r"^wf_[A-Za-z0-9_-]{1,64}$", example = "wf_01KBC6X8Y2S7J5W0Q3R4T5V6X7")]
    pub id: String,
}

/// A run's id and one of its steps in the path.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct RunStepPath {
    /// The run's id.
    #[param(pattern = r"^wf_[A-Za-z0-9_-]{1,64}$", example = "wf_01KBC6X8Y2S7J5W0Q3R4T5V6X7")]
    pub id: String,
    /// The step's id, as in the definition.
    #[param(pattern = "^[a-z0-9_-]{1,64}$", example = "generate_summary")]
    pub step: String,
}

/// A run's id and a signal's name in the path.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct SignalPath {
    /// The run's id.
    #[param(pattern = r"^wf_[A-Za-z0-9_-]{1,64}$", example = "wf_01KBC6X8Y2S7J5W0Q3R4T5V6X7")]
    pub id: String,
    /// The signal's name; conditions see its payload as `signals.NAME`.
    #[param(pattern = r"^[A-Za-z0-9_.-]{1,64}$", example = "approved_budget")]
    pub name: String,
}

pub fn parse_run_id(s: &str) -> Result<RunId, ApiError> {
    RunId::parse(s).map_err(|m| ApiError::bad_request("bad_run_id", m))
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
fn definition_from(value: Value, origin: &str, kinds: &Kinds) -> Result<(Definition, Vec<String>), ApiError> {
    let text =
        serde_json::to_string(&value).map_err(|e| ApiError::unprocessable("invalid_definition", e.to_string()))?;
    let (definition, warnings) = cairn_core::validate::parse_definition_with_warnings(&text, origin, kinds);
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
) -> Result<(Definition, RunSource, Option<PlanInfo>, Value, Vec<String>, Vec<cairn_store::CallRow>), ApiError> {
    let mut warnings = Vec::new();
    let mut planning = Vec::new();
    if req.planner.is_some() && req.goal.is_none() {
        return Err(ApiError::unprocessable("invalid_request", "`planner` goes with a `goal`"));
    }
    let (definition, source, plan) = match (req.goal, req.workflow) {
        (Some(goal), None) => {
            let (def, info) = match req.planner.as_deref() {
                None | Some("catalog") => state
                    .catalog
                    .plan(&goal, state.engine.kinds())
                    .map_err(|e| ApiError::unprocessable("unplannable_goal", e.to_string()))?,
                Some("model") => {
                    use cairn_engine::planner::ModelPlanError;
                    let models = state.engine.models();
                    let planned = cairn_engine::planner::plan(&models, &state.catalog, state.engine.kinds(), &goal)
                        .await
                        .map_err(|e| match e {
                            ModelPlanError::Call(_) => {
                                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "planner_unavailable", e.to_string())
                            }
                            ModelPlanError::NoModel(_) => ApiError::unprocessable("no_planner_model", e.to_string()),
                            ModelPlanError::Rejected(_) => ApiError::unprocessable("unplannable_goal", e.to_string()),
                        })?;
                    planning = planned.calls;
                    (planned.definition, planned.info)
                }
                Some(other) => {
                    return Err(ApiError::unprocessable(
                        "invalid_request",
                        format!("`planner` is `{other}`; use `catalog` or `model`"),
                    ));
                }
            };
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
            let (definition, found) = definition_from(inline, "<request>", state.engine.kinds())?;
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
    Ok((definition, source, plan, inputs, warnings, planning))
}

pub struct CreateRunParts {
    pub goal: Option<String>,
    /// `Some("model")`: the model planner.
    pub planner: Option<String>,
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

fn created<T: serde::Serialize>(view: &T, id: &str, status: StatusCode) -> Response {
    let mut response = reply(status, view);
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
    let started = StartedRun { run: RunView::of(&row), output: None, warnings: Vec::new() };
    let mut response = created(&started, &row.id, StatusCode::OK);
    response.headers_mut().insert("idempotent-replayed", HeaderValue::from_static("true"));
    Ok(Some(response))
}

/// Start a run
///
/// From a goal (planned from the catalog), a registered workflow, or an inline definition. With
/// `Idempotency-Key`, a repeated request answers with the run the key already made (200) instead
/// of starting another. With `?wait=`, the answer waits for the run to finish (and then carries
/// its output).
#[utoipa::path(
    post,
    path = "/v1/runs",
    operation_id = "create_run",
    tag = "runs",
    params(
        WaitQuery,
        ("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 255,
         description = "Makes retries safe: the same key with the same body answers with the same run (200); with another body, 422 `idempotency_key_reused`."),
    ),
    request_body(content = CreateRun, content_type = "application/json"),
    responses(
        (status = 201, description = "Started; `Location` is the run.", body = StartedRun,
         headers(("Location" = String, description = "The run: `/v1/runs/{id}`."))),
        (status = 200, description = "The run this `Idempotency-Key` already started (nothing new was started).", body = StartedRun,
         headers(("Location" = String, description = "The run: `/v1/runs/{id}`."),
                 ("Idempotent-Replayed" = String, description = "`true`: this answer replays an earlier request."))),
        (status = 400, response = BadRequest),
        (status = 404, response = WorkflowNotFound),
        (status = 409, response = RunConflict),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, response = InvalidRun),
        (status = 503, response = crate::responses::Unavailable),
    ),
)]
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
    let parts = CreateRunParts {
        goal: req.goal,
        planner: req.planner,
        workflow: req.workflow,
        version: req.version,
        inputs: req.inputs,
    };
    let (definition, source, plan, inputs, warnings, planning) = resolve(&state, parts).await?;
    let run_id = cairn_engine::new_run_id();
    let new = NewRun {
        definition,
        source,
        plan,
        inputs,
        options: RunOptions { chaos: None, max_output_bytes },
        reused: Vec::new(),
        reused_payloads: Vec::new(),
        planning,
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
    Ok(created(&StartedRun { run: RunView::of(&row), output, warnings }, &row.id, StatusCode::CREATED))
}

#[derive(Deserialize, Default, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only runs in this state (any case).
    #[param(value_type = Option<crate::views::RunStatusName>)]
    status: Option<String>,
    /// Only runs of this workflow.
    workflow: Option<String>,
    /// Only runs created at or after this time (Unix milliseconds).
    created_after: Option<i64>,
    /// Only runs created before this time (Unix milliseconds).
    created_before: Option<i64>,
    /// At most this many runs (default 50).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 500, example = 50)]
    limit: Option<usize>,
    /// Where the previous page ended: its `next_cursor`.
    #[param(pattern = r"^-?[0-9]+\.wf_[A-Za-z0-9_-]{1,64}$")]
    cursor: Option<String>,
}

/// List runs
///
/// Newest first, a page at a time: pass the answer's `next_cursor` as `cursor` for the next page.
#[utoipa::path(
    get,
    path = "/v1/runs",
    operation_id = "list_runs",
    tag = "runs",
    params(ListQuery),
    responses(
        (status = 200, description = "A page of runs.", body = RunPage),
        (status = 400, response = BadRequest),
    ),
)]
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
    let ids: Vec<RunId> = rows.iter().filter_map(|r| RunId::parse(&r.id).ok()).collect();
    let usage = state.store.spend(&ids).await?;
    let runs = rows.iter().map(|r| RunView::of(r).with_usage(usage.get(&r.id))).collect();
    Ok(reply(StatusCode::OK, &RunPage { runs, next_cursor: next }))
}

/// A run
///
/// With its steps and, once completed, its output.
#[utoipa::path(
    get,
    path = "/v1/runs/{id}",
    operation_id = "get_run",
    tag = "runs",
    params(RunPath),
    responses(
        (status = 200, description = "The run.", body = RunDetail),
        (status = 400, response = BadRequest),
        (status = 404, response = RunNotFound),
    ),
)]
pub async fn get<S: Store>(
    State(state): State<AppState<S>>,
    Path(RunPath { id }): Path<RunPath>,
) -> Result<Response, ApiError> {
    let id = parse_run_id(&id)?;
    let row = state.store.get_run(&id).await?;
    let steps = state.store.steps(&id).await?;
    let output = output_of(&*state.store, &row).await?;
    let events = state.store.events(&id).await?;
    let links = cairn_engine::RunLinks::of(&events);
    let pinned = events.iter().rev().find_map(|e| match &e.event {
        Event::PlanRecorded { definition, .. } => Some(definition.hash.clone()),
        _ => None,
    });
    let definition = match pinned {
        Some(hash) => state.store.payload(&hash).await?,
        None => None,
    };
    let calls = state.store.calls(&id, None).await?;
    let (step_usage, total) = Spend::of_calls(&calls);
    let detail = RunDetail {
        run: RunView::of(&row).with_usage((total.calls > 0).then_some(&total)),
        parent: links.parent.map(Into::into),
        children: links.children.into_iter().map(Into::into).collect(),
        steps,
        step_usage,
        output,
        definition,
        calls,
    };
    Ok(reply(StatusCode::OK, &detail))
}

/// A run's steps
///
/// Each step's state, attempts, timings and last error, in definition order.
#[utoipa::path(
    get,
    path = "/v1/runs/{id}/steps",
    operation_id = "list_run_steps",
    tag = "runs",
    params(RunPath),
    responses(
        (status = 200, description = "The run's steps.", body = RunSteps),
        (status = 400, response = BadRequest),
        (status = 404, response = RunNotFound),
    ),
)]
pub async fn steps<S: Store>(
    State(state): State<AppState<S>>,
    Path(RunPath { id }): Path<RunPath>,
) -> Result<Response, ApiError> {
    let id = parse_run_id(&id)?;
    let steps = state.store.steps(&id).await?;
    Ok(reply(StatusCode::OK, &RunSteps { run_id: id.to_string(), steps }))
}

/// A step
///
/// One step's state with the calls its attempts made through the effect log (`run/step/call-N`),
/// each with its kind, request hash, outcome and duration; a compensation's calls are listed
/// under `STEP.compensate`.
#[utoipa::path(
    get,
    path = "/v1/runs/{id}/steps/{step}",
    operation_id = "get_run_step",
    tag = "runs",
    params(RunStepPath),
    responses(
        (status = 200, description = "The step and its calls.", body = StepDetail),
        (status = 400, response = BadRequest),
        (status = 404, response = StepNotFound),
    ),
)]
pub async fn step<S: Store>(
    State(state): State<AppState<S>>,
    Path(RunStepPath { id, step }): Path<RunStepPath>,
) -> Result<Response, ApiError> {
    let id = parse_run_id(&id)?;
    let row = step_of(&state, &id, &step).await?;
    let undo = format!("{step}.compensate");
    let mut rows = state.store.calls(&id, Some(&step)).await?;
    rows.extend(state.store.calls(&id, Some(&undo)).await?);
    let latest_input = state.store.events(&id).await?.into_iter().rev().find_map(|e| match e.event {
        Event::AttemptStarted { step: s, input, .. } if s.as_str() == step => Some(input.hash),
        _ => None,
    });
    let input = match latest_input {
        Some(hash) => state.store.payload(&hash).await?,
        None => None,
    };
    let output = match &row.output_hash {
        Some(hash) => state.store.payload(hash).await?,
        None => None,
    };
    let mut calls = Vec::with_capacity(rows.len());
    for call in rows {
        let answer = match (&call.result_hash, call.outcome.as_str()) {
            (Some(hash), "ok") => state.store.payload(hash).await?.map(|r| answer_line(&call.kind, &r, 600)),
            _ => None,
        };
        calls.push(CallDetail { call, answer });
    }
    Ok(reply(StatusCode::OK, &StepDetail { run_id: id.to_string(), step: row, input, output, calls }))
}

/// A run's step by name: `run_not_found` for an unknown run, `step_not_found` for a run
/// without that step.
async fn step_of<S: Store>(state: &AppState<S>, id: &RunId, step: &str) -> Result<StepRow, ApiError> {
    state.store.get_run(id).await?;
    let steps = state.store.steps(id).await?;
    steps
        .into_iter()
        .find(|s| s.step_id == step)
        .ok_or_else(|| ApiError::not_found("step_not_found", format!("run {id} has no step '{step}'")))
}

/// A step's logs
///
/// The log lines of every attempt of one step, oldest first.
#[utoipa::path(
    get,
    path = "/v1/runs/{id}/steps/{step}/logs",
    operation_id = "list_step_logs",
    tag = "runs",
    params(RunStepPath),
    responses(
        (status = 200, description = "The step's log lines.", body = StepLogs),
        (status = 400, response = BadRequest),
        (status = 404, response = StepNotFound),
    ),
)]
pub async fn logs<S: Store>(
    State(state): State<AppState<S>>,
    Path(RunStepPath { id, step }): Path<RunStepPath>,
) -> Result<Response, ApiError> {
    let id = parse_run_id(&id)?;
    step_of(&state, &id, &step).await?;
    let logs = state.store.logs(&id, Some(&step)).await?;
    Ok(reply(StatusCode::OK, &StepLogs { run_id: id.to_string(), step, logs }))
}

/// A run's operator requests
///
/// Every request the run was sent (cancel, pause, signal, a decision ...), in the order they were
/// accepted, with what became of each: applied (at journal event `journal_seq`), unchanged,
/// refused (with the reason) or still pending.
#[utoipa::path(
    get,
    path = "/v1/runs/{id}/requests",
    operation_id = "list_run_requests",
    tag = "runs",
    params(RunPath),
    responses(
        (status = 200, description = "The run's requests.", body = RunRequests),
        (status = 400, response = BadRequest),
        (status = 404, response = RunNotFound),
    ),
)]
pub async fn requests<S: Store>(
    State(state): State<AppState<S>>,
    Path(RunPath { id }): Path<RunPath>,
) -> Result<Response, ApiError> {
    let id = parse_run_id(&id)?;
    let rows = state.store.run_requests(&id).await?;
    let requests = rows.iter().map(|r| RequestView::from(cairn_engine::RequestView::of(r))).collect();
    Ok(reply(StatusCode::OK, &RunRequests { run_id: id.to_string(), requests }))
}

#[derive(Deserialize, Default, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// Only events after this journal position (`seq`).
    #[param(example = 0)]
    after: Option<u64>,
}

/// A run's journal
///
/// Its events in order; `?after=SEQ` for the ones after a position.
#[utoipa::path(
    get,
    path = "/v1/runs/{id}/events",
    operation_id = "list_run_events",
    tag = "runs",
    params(RunPath, EventsQuery),
    responses(
        (status = 200, description = "The run's events.", body = RunEvents),
        (status = 400, response = BadRequest),
        (status = 404, response = RunNotFound),
    ),
)]
pub async fn events<S: Store>(
    State(state): State<AppState<S>>,
    Path(RunPath { id }): Path<RunPath>,
    Query(q): Query<EventsQuery>,
) -> Result<Response, ApiError> {
    let id = parse_run_id(&id)?;
    let events = state.store.events_after(&id, q.after.unwrap_or(0)).await?;
    Ok(reply(StatusCode::OK, &RunEvents { run_id: id.to_string(), events }))
}

/// Export a run
///
/// The run's full history (its row, steps, journal and every payload), for `cairn replay --file`
/// on another machine.
#[utoipa::path(
    get,
    path = "/v1/runs/{id}/export",
    operation_id = "export_run",
    tag = "runs",
    params(RunPath),
    responses(
        (status = 200, description = "The export document.", body = crate::views::RunExport),
        (status = 400, response = BadRequest),
        (status = 404, response = RunNotFound),
    ),
)]
pub async fn export<S: Store>(
    State(state): State<AppState<S>>,
    Path(RunPath { id }): Path<RunPath>,
) -> Result<Response, ApiError> {
    let id = parse_run_id(&id)?;
    Ok(axum::Json(cairn_store::export_document(&*state.store, &id).await?).into_response())
}

/// Sends an operator request and answers once it is applied (200), found unchanged (200),
/// refused (409 with the reason), or still queued when the wait ran out (202).
pub async fn steer<S: Store>(state: &AppState<S>, id: &RunId, control: Control) -> Result<Response, ApiError> {
    let delivery = state.engine.request(id, control).await?;
    // The request is in: answer with the run as it is now, trying the read a few times rather
    // than report a failure that would invite sending the request again.
    let mut row = state.store.get_run(id).await;
    for _ in 0..5 {
        if row.is_ok() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        row = state.store.get_run(id).await;
    }
    let row = row?;
    let (status, delivery, request) = match delivery {
        Delivery::Applied { request, journal_seq } => {
            (StatusCode::OK, "applied".to_string(), SteerRequest::Applied { id: request, journal_seq })
        }
        Delivery::Unchanged { request, code, message } => {
            (StatusCode::OK, code.clone(), SteerRequest::Unchanged { id: request, code, message })
        }
        Delivery::Queued { request, owner } => {
            let message = format!(
                "accepted, but the process driving the run ({}) has not applied it yet; it is applied in order when the run is next driven",
                owner.as_deref().unwrap_or("none")
            );
            (StatusCode::ACCEPTED, "queued".to_string(), SteerRequest::Pending { id: request, message })
        }
    };
    Ok(reply(status, &SteeredRun { run: RunView::of(&row), delivery, request }))
}

/// Why the run is cancelled (optional; the body may be empty).
#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CancelBody {
    /// Recorded in the journal; default `cancelled by <who>`.
    #[schema(example = "the customer withdrew the order")]
    reason: Option<String>,
}

/// Cancel a run
///
/// Attempts in flight are abandoned and the run ends CANCELLED (its completed steps'
/// compensations run first, if it has any).
#[utoipa::path(
    post,
    path = "/v1/runs/{id}/cancel",
    operation_id = "cancel_run",
    tag = "steering",
    params(RunPath),
    request_body(content = Option<CancelBody>, content_type = "application/json",
                 description = "Optional: an empty body (or `null`) cancels with the default reason."),
    responses(
        (status = 200, description = "Applied (or nothing to do: `delivery` says which).", body = SteeredRun),
        (status = 202, description = "Accepted; the process driving the run applies it when the run is next driven.", body = SteeredRun),
        (status = 400, response = BadRequest),
        (status = 404, response = RunNotFound),
        (status = 409, response = RunConflict),
        (status = 422, response = InvalidBody),
    ),
)]
pub async fn cancel<S: Store>(
    State(state): State<AppState<S>>,
    Extension(actor): Extension<Actor>,
    Path(RunPath { id }): Path<RunPath>,
    OptionalJson(body): OptionalJson<CancelBody>,
) -> Result<Response, ApiError> {
    let id = parse_run_id(&id)?;
    let reason = body.reason.unwrap_or_else(|| format!("cancelled by {}", actor.name));
    steer(&state, &id, Control::Cancel { reason, by: Some(actor.name) }).await
}

/// Pause a run
///
/// Attempts in flight finish; nothing new starts until the run is resumed. Only an EXECUTING or
/// WAITING run can be paused.
#[utoipa::path(
    post,
    path = "/v1/runs/{id}/pause",
    operation_id = "pause_run",
    tag = "steering",
    params(RunPath),
    responses(
        (status = 200, description = "Applied.", body = SteeredRun),
        (status = 202, description = "Accepted; the process driving the run applies it when the run is next driven.", body = SteeredRun),
        (status = 400, response = BadRequest),
        (status = 404, response = RunNotFound),
        (status = 409, response = RunConflict),
    ),
)]
pub async fn pause<S: Store>(
    State(state): State<AppState<S>>,
    Extension(actor): Extension<Actor>,
    Path(RunPath { id }): Path<RunPath>,
) -> Result<Response, ApiError> {
    let id = parse_run_id(&id)?;
    steer(&state, &id, Control::Pause { by: Some(actor.name) }).await
}

/// Resume a paused run
#[utoipa::path(
    post,
    path = "/v1/runs/{id}/resume",
    operation_id = "resume_run",
    tag = "steering",
    params(RunPath),
    responses(
        (status = 200, description = "Applied.", body = SteeredRun),
        (status = 202, description = "Accepted; the process driving the run applies it when the run is next driven.", body = SteeredRun),
        (status = 400, response = BadRequest),
        (status = 404, response = RunNotFound),
        (status = 409, response = RunConflict),
    ),
)]
pub async fn resume<S: Store>(
    State(state): State<AppState<S>>,
    Extension(actor): Extension<Actor>,
    Path(RunPath { id }): Path<RunPath>,
) -> Result<Response, ApiError> {
    let id = parse_run_id(&id)?;
    steer(&state, &id, Control::Unpause { by: Some(actor.name) }).await
}

/// Signal a run
///
/// Delivers a named signal with any JSON payload (an empty body is `null`); conditions see the
/// latest payload of each signal as `signals.NAME`.
#[utoipa::path(
    post,
    path = "/v1/runs/{id}/signals/{name}",
    operation_id = "signal_run",
    tag = "steering",
    params(SignalPath),
    request_body(content = Option<Value>, content_type = "application/json",
                 description = "The signal's payload: any JSON; optional.",
                 example = json!({"ok": true})),
    responses(
        (status = 200, description = "Applied.", body = SteeredRun),
        (status = 202, description = "Accepted; the process driving the run applies it when the run is next driven.", body = SteeredRun),
        (status = 400, response = BadRequest),
        (status = 404, response = RunNotFound),
        (status = 409, response = RunConflict),
    ),
)]
pub async fn signal<S: Store>(
    State(state): State<AppState<S>>,
    Extension(actor): Extension<Actor>,
    Path(SignalPath { id, name }): Path<SignalPath>,
    OptionalJson(payload): OptionalJson<Value>,
) -> Result<Response, ApiError> {
    let id = parse_run_id(&id)?;
    cairn_engine::check_signal_name(&name).map_err(|m| ApiError::bad_request("bad_signal_name", m))?;
    steer(&state, &id, Control::Signal { name, payload, by: Some(actor.name) }).await
}

/// Where a rerun starts.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RerunBody {
    /// The first step to execute again; the steps before it keep their recorded results.
    #[schema(example = "send_email")]
    from: String,
    /// Fork inside `from` (an `agent` or `llm` step): its recorded calls before its N-th model
    /// turn are reused at no cost, and it goes on live from that turn.
    #[serde(default)]
    #[schema(minimum = 1, example = 3)]
    turn: Option<u32>,
    /// The model alias `from` and the model steps after it use instead.
    #[serde(default)]
    #[schema(example = "spare")]
    model: Option<String>,
    /// Outputs to take as the recorded ones of steps before `from`: `{STEP: VALUE}`.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    set_output: Option<serde_json::Map<String, Value>>,
}

/// Retry a failed run in place
///
/// The same run (same id, same definition) goes back to EXECUTING: its failed, cancelled and
/// skipped steps run again with fresh retry budgets; completed steps keep their outputs. Only a
/// FAILED run whose completed steps were not compensated qualifies (409 otherwise).
#[utoipa::path(
    post,
    path = "/v1/runs/{id}/retry",
    operation_id = "retry_run",
    tag = "steering",
    params(RunPath),
    responses(
        (status = 200, description = "The run, executing again.", body = RunView),
        (status = 400, response = BadRequest),
        (status = 404, response = RunNotFound),
        (status = 409, response = RunConflict),
    ),
)]
pub async fn retry<S: Store>(
    State(state): State<AppState<S>>,
    Path(RunPath { id }): Path<RunPath>,
    Extension(actor): Extension<Actor>,
) -> Result<Response, ApiError> {
    let id = parse_run_id(&id)?;
    state.engine.retry(&id, Some(actor.name), state.drive_here).await?;
    let row = state.store.get_run(&id).await?;
    Ok(reply(StatusCode::OK, &RunView::of(&row)))
}

/// Rerun from a step
///
/// A new run of the same definition, linked to this one, that reuses this run's recorded results
/// for the steps before `from` and executes the rest.
#[utoipa::path(
    post,
    path = "/v1/runs/{id}/rerun",
    operation_id = "rerun_run",
    tag = "steering",
    params(RunPath),
    request_body(content = RerunBody, content_type = "application/json"),
    responses(
        (status = 201, description = "The new run; `Location` is its address.", body = ForkedRun,
         headers(("Location" = String, description = "The new run: `/v1/runs/{id}`."))),
        (status = 400, response = BadRequest),
        (status = 404, response = RunNotFound),
        (status = 409, response = RunConflict),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, response = InvalidFork),
    ),
)]
pub async fn rerun<S: Store>(
    State(state): State<AppState<S>>,
    Path(RunPath { id }): Path<RunPath>,
    JsonBody(body, _): JsonBody<RerunBody>,
) -> Result<Response, ApiError> {
    let parent = parse_run_id(&id)?;
    state.store.get_run(&parent).await?;
    let changes = cairn_engine::ForkChanges {
        turn: body.turn,
        model: body.model,
        set_outputs: body.set_output.unwrap_or_default().into_iter().collect(),
    };
    if changes.turn == Some(0) {
        return Err(ApiError::unprocessable("invalid_fork", "turn counts from 1 (the first model turn)".to_string()));
    }
    let (run_id, _) = state.engine.fork(&parent, &body.from, changes, state.drive_here).await?;
    let row = state.store.get_run(&run_id).await?;
    let view =
        ForkedRun { run: RunView::of(&row), forked_from: ForkOrigin { run: parent.to_string(), step: body.from } };
    Ok(created(&view, &row.id, StatusCode::CREATED))
}
