//! The OpenAPI 3.1 description served at `/openapi.json`, written by hand next to the routes
//! (a test checks that every route is described).

use axum::response::IntoResponse;
use serde_json::{Value, json};

/// (method, path, summary, role) for every route; the document is built from this table.
pub const ROUTES: &[(&str, &str, &str, &str)] = &[
    (
        "post",
        "/v1/runs",
        "Start a run from a goal, a registered workflow or an inline definition. `Idempotency-Key` makes retries safe; `?wait=10s` answers when it finishes.",
        "operator",
    ),
    (
        "get",
        "/v1/runs",
        "List runs, newest first. Filters: status, workflow, created_after, created_before (unix ms); cursor pagination.",
        "viewer",
    ),
    ("get", "/v1/runs/{id}", "A run with its steps and, once completed, its output.", "viewer"),
    ("get", "/v1/runs/{id}/steps", "The run's steps: state, attempts, timings, last error.", "viewer"),
    ("get", "/v1/runs/{id}/steps/{step}/logs", "Per-attempt log lines of one step.", "viewer"),
    ("get", "/v1/runs/{id}/events", "The run's journal (`?after=SEQ` for the rest).", "viewer"),
    (
        "get",
        "/v1/runs/{id}/events/stream",
        "The journal as Server-Sent Events; reconnect with Last-Event-ID (the event's seq). Ends when the run finishes.",
        "viewer",
    ),
    ("get", "/v1/runs/{id}/export", "Full transition history with payloads, for replay elsewhere.", "viewer"),
    (
        "post",
        "/v1/runs/{id}/cancel",
        "Cancel the run (optional body {\"reason\"}). 409 if it already finished.",
        "operator",
    ),
    (
        "post",
        "/v1/runs/{id}/pause",
        "Pause: attempts in flight finish, nothing new starts. 409 unless executing or waiting.",
        "operator",
    ),
    ("post", "/v1/runs/{id}/resume", "Unpause a paused run. 409 unless paused.", "operator"),
    (
        "post",
        "/v1/runs/{id}/signals/{name}",
        "Deliver a named signal with any JSON payload; visible to conditions as signals.NAME.",
        "operator",
    ),
    (
        "get",
        "/v1/runs/{id}/requests",
        "Operator requests sent to the run, in the order they were accepted, each applied (with its journal event), unchanged, refused (with the reason) or pending.",
        "viewer",
    ),
    (
        "post",
        "/v1/runs/{id}/approvals/{step}",
        "Decide an approval gate {\"decision\": \"approve\"|\"reject\", \"comment\"} or an escalation {\"decision\": \"retry\"|\"skip\"|\"abort\", \"output\"}; repeating a decision is idempotent.",
        "operator",
    ),
    ("get", "/v1/approvals", "What waits for a person, oldest first.", "viewer"),
    (
        "post",
        "/v1/runs/{id}/rerun",
        "Fork: a new run {\"from\": STEP} reusing this run's results before STEP, linked to it.",
        "operator",
    ),
    (
        "post",
        "/v1/runs/{id}/retry",
        "Retry a FAILED run in place: failed, cancelled and skipped steps run again with fresh retry budgets. 409 unless FAILED.",
        "operator",
    ),
    (
        "get",
        "/v1/events/stream",
        "Every run's events as Server-Sent Events (id = global event id); starts from now unless Last-Event-ID is sent.",
        "viewer",
    ),
    (
        "post",
        "/v1/workflows",
        "Register a definition version (JSON, or YAML with Content-Type application/yaml). 409 if that version exists with other content.",
        "admin",
    ),
    ("get", "/v1/workflows", "Registered workflows and their versions.", "viewer"),
    ("get", "/v1/workflows/{name}", "A registered definition (newest, or `?version=N`).", "viewer"),
    ("post", "/v1/tokens", "Create an API token {name, role}; the secret is returned once.", "admin"),
    ("get", "/v1/tokens", "List tokens (never their secrets).", "admin"),
    ("post", "/v1/tokens/{id}/revoke", "Revoke a token by id or name.", "admin"),
    ("get", "/v1/audit", "Mutating requests with who made them, newest first.", "admin"),
    ("post", "/tasks", "Compatibility: start a task from {\"goal\"}.", "operator"),
    ("get", "/tasks/{id}", "Compatibility: a task's status and result.", "viewer"),
    ("get", "/tasks/{id}/steps", "Compatibility: a task's steps.", "viewer"),
    ("get", "/healthz", "The process is up.", "public"),
    (
        "get",
        "/readyz",
        "The database answers and the schema is current (503 otherwise, or while shutting down).",
        "public",
    ),
    ("get", "/openapi.json", "This document.", "public"),
];

fn parameters(path: &str) -> Vec<Value> {
    path.split('/')
        .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
        .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
        .collect()
}

pub fn build() -> Value {
    let mut paths = serde_json::Map::new();
    for (method, path, summary, role) in ROUTES {
        let entry = paths.entry(path.to_string()).or_insert_with(|| json!({}));
        let mut op = json!({
            "summary": summary,
            "x-cairn-role": role,
            "parameters": parameters(path),
            "responses": {
                "200": {"description": "OK"},
                "4XX": {"description": "The request's mistake", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
            },
        });
        if *method == "post" {
            op["requestBody"] =
                json!({"required": false, "content": {"application/json": {"schema": {"type": "object"}}}});
        }
        if *role != "public" {
            op["security"] = json!([{"bearer": []}]);
        }
        entry[*method] = op;
    }
    json!({
        "openapi": "3.1.0",
        "info": {"title": "Cairn API", "version": env!("CARGO_PKG_VERSION"),
                 "description": "Durable execution for AI-agent workflows. Errors are {\"error\": {code, message, details}}."},
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {"Error": {
                "type": "object",
                "required": ["error"],
                "properties": {"error": {"type": "object", "required": ["code", "message"], "properties": {
                    "code": {"type": "string"}, "message": {"type": "string"}, "details": {}
                }}}
            }}
        }
    })
}

pub async fn document() -> impl IntoResponse {
    axum::Json(build())
}
