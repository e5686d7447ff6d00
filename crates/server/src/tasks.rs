//! The original task API, kept for existing clients: a task is a run started from a goal.

use crate::AppState;
use crate::body::{JsonBody, Path};
use crate::error::ApiError;
use crate::runs::{CreateRunParts, output_of, parse_run_id, resolve};
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use cairn_core::event::RunOptions;
use cairn_engine::{NewRun, Submit};
use cairn_store::{RunRow, StepRow, Store};
use serde::Deserialize;
use serde_json::{Map, Value, json};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateTask {
    goal: String,
    #[serde(default)]
    inputs: Map<String, Value>,
}

fn task_view(row: &RunRow, result: Option<Value>) -> Value {
    json!({
        "task_id": row.id,
        "goal": row.goal,
        "status": row.status,
        "current_step": row.current_step,
        "result": result,
        "error": row.failure_message,
        "created_at_ms": row.created_at_ms,
        "finished_at_ms": row.finished_at_ms,
    })
}

fn step_view(s: &StepRow) -> Value {
    json!({"name": s.step_id, "status": s.status, "attempts": s.attempts, "error": s.error_message})
}

pub async fn create<S: Store>(
    State(state): State<AppState<S>>,
    JsonBody(req, _): JsonBody<CreateTask>,
) -> Result<Response, ApiError> {
    let parts = CreateRunParts { goal: Some(req.goal), workflow: None, version: None, inputs: req.inputs };
    let (definition, source, plan, inputs, _) = resolve(&state, parts).await?;
    let run_id = cairn_engine::new_run_id();
    let new = NewRun {
        definition,
        source,
        plan,
        inputs,
        options: RunOptions::default(),
        reused: Vec::new(),
        reused_payloads: Vec::new(),
    };
    state.engine.submit(run_id.clone(), new, Submit { idempotency: None, drive_here: state.drive_here }).await?;
    let row = state.store.get_run(&run_id).await?;
    let mut response = (StatusCode::CREATED, axum::Json(task_view(&row, None))).into_response();
    if let Ok(location) = HeaderValue::from_str(&format!("/tasks/{}", row.id)) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

pub async fn get<S: Store>(State(state): State<AppState<S>>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let id = parse_run_id(&id)?;
    let row = state.store.get_run(&id).await?;
    let result = output_of(&*state.store, &row).await?;
    Ok(axum::Json(task_view(&row, result)).into_response())
}

pub async fn steps<S: Store>(State(state): State<AppState<S>>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let id = parse_run_id(&id)?;
    let steps = state.store.steps(&id).await?;
    Ok(axum::Json(json!({"task_id": id, "steps": steps.iter().map(step_view).collect::<Vec<_>>()})).into_response())
}
