//! The original task API, kept for existing clients: a task is a run started from a goal.

use crate::AppState;
use crate::body::{JsonBody, Path};
use crate::error::ApiError;
use crate::responses::{BadRequest, InvalidRun, RunNotFound, UnsupportedMediaType, WorkflowNotFound};
use crate::runs::{CreateRunParts, RunPath, output_of, parse_run_id, resolve};
use crate::views::{RunStatusName, reply};
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use cairn_core::event::RunOptions;
use cairn_engine::{NewRun, Submit};
use cairn_store::{RunRow, StepRow, Store};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

/// A task to start: a goal for the planner.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(examples(json!({"goal": "generate summary and send email"}), json!({"goal": "research brief on otters"})))]
pub struct CreateTask {
    #[schema(pattern = r"\S", example = "generate summary and send email")]
    goal: String,
    /// Values for the planned workflow's inputs.
    #[serde(default)]
    #[schema(value_type = Object, additional_properties = true)]
    inputs: Map<String, Value>,
}

/// A task: a run started from a goal, in the original API's shape.
#[derive(Serialize, ToSchema)]
pub struct TaskView {
    #[schema(example = "wf_01KBC6X8Y2S7J5W0Q3R4T5V6X7")]
    task_id: String,
    goal: Option<String>,
    #[schema(value_type = RunStatusName)]
    status: String,
    current_step: Option<String>,
    /// The output, once completed (any JSON; `null` before).
    #[schema(value_type = Value)]
    result: Option<Value>,
    /// Why it failed.
    error: Option<String>,
    created_at_ms: i64,
    finished_at_ms: Option<i64>,
}

impl TaskView {
    fn of(row: &RunRow, result: Option<Value>) -> TaskView {
        TaskView {
            task_id: row.id.clone(),
            goal: row.goal.clone(),
            status: row.status.clone(),
            current_step: row.current_step.clone(),
            result,
            error: row.failure_message.clone(),
            created_at_ms: row.created_at_ms,
            finished_at_ms: row.finished_at_ms,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct TaskStep {
    name: String,
    status: String,
    attempts: u32,
    error: Option<String>,
}

impl TaskStep {
    fn of(s: &StepRow) -> TaskStep {
        TaskStep {
            name: s.step_id.clone(),
            status: s.status.clone(),
            attempts: s.attempts,
            error: s.error_message.clone(),
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct TaskSteps {
    task_id: String,
    steps: Vec<TaskStep>,
}

/// Start a task (original API)
///
/// Kept for existing clients: a run planned from a goal. New clients use `POST /v1/runs`.
#[utoipa::path(
    post,
    path = "/tasks",
    operation_id = "create_task",
    tag = "tasks",
    request_body(content = CreateTask, content_type = "application/json"),
    responses(
        (status = 201, description = "Started; `Location` is the task.", body = TaskView,
         headers(("Location" = String, description = "The task: `/tasks/{id}`."))),
        (status = 400, response = BadRequest),
        (status = 404, response = WorkflowNotFound),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, response = InvalidRun),
    ),
)]
pub async fn create<S: Store>(
    State(state): State<AppState<S>>,
    JsonBody(req, _): JsonBody<CreateTask>,
) -> Result<Response, ApiError> {
    let parts =
        CreateRunParts { goal: Some(req.goal), planner: None, workflow: None, version: None, inputs: req.inputs };
    let (definition, source, plan, inputs, _, planning) = resolve(&state, parts).await?;
    let run_id = cairn_engine::new_run_id();
    let new = NewRun {
        definition,
        source,
        plan,
        inputs,
        options: RunOptions::default(),
        reused: Vec::new(),
        reused_payloads: Vec::new(),
        planning,
    };
    state.engine.submit(run_id.clone(), new, Submit { idempotency: None, drive_here: state.drive_here }).await?;
    let row = state.store.get_run(&run_id).await?;
    let mut response = reply(StatusCode::CREATED, &TaskView::of(&row, None));
    if let Ok(location) = HeaderValue::from_str(&format!("/tasks/{}", row.id)) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

/// A task (original API)
#[utoipa::path(
    get,
    path = "/tasks/{id}",
    operation_id = "get_task",
    tag = "tasks",
    params(RunPath),
    responses(
        (status = 200, description = "The task.", body = TaskView),
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
    let result = output_of(&*state.store, &row).await?;
    Ok(reply(StatusCode::OK, &TaskView::of(&row, result)))
}

/// A task's steps (original API)
#[utoipa::path(
    get,
    path = "/tasks/{id}/steps",
    operation_id = "list_task_steps",
    tag = "tasks",
    params(RunPath),
    responses(
        (status = 200, description = "The task's steps.", body = TaskSteps),
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
    Ok(reply(StatusCode::OK, &TaskSteps { task_id: id.to_string(), steps: steps.iter().map(TaskStep::of).collect() }))
}
