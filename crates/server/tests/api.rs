//! The HTTP API driven in-process through `app(state)` with `tower::ServiceExt::oneshot`: every
//! bad input gets its 4xx with the `{"error": {code, message, details}}` shape (never a 500),
//! and the documented behaviour of runs, workflows, idempotency, pagination, auth and audit holds.

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use cairn_core::catalog::Catalog;
use cairn_engine::{Engine, EngineConfig};
use cairn_server::{AppState, AuthMode, Role, ServerConfig};
use cairn_store::{Access, Durability, Journal, SqliteStore};
use serde_json::{Value, json};
use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tower::ServiceExt;

const MAX_BODY: usize = 64 * 1024;
const DEADLINE: Duration = Duration::from_secs(20);
const GOAL: &str = "generate summary and send email";

struct Api {
    app: Router,
    store: Arc<SqliteStore>,
    _dir: tempfile::TempDir,
}

/// One response, its body parsed as JSON when it is JSON (`Value::Null` otherwise).
#[derive(Debug)]
struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    text: String,
    json: Value,
}

impl Reply {
    /// Asserts the status and the error shape: `{"error": {"code", "message", "details"}}`.
    #[track_caller]
    fn error(&self, status: u16, code: &str) -> &Reply {
        assert_eq!(self.status.as_u16(), status, "wrong status; body: {}", self.text);
        let e = &self.json["error"];
        assert!(e.is_object(), "no error object in {}", self.text);
        assert_eq!(e["code"], code, "wrong code in {}", self.text);
        assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "no message in {}", self.text);
        assert!(e.as_object().is_some_and(|o| o.contains_key("details")), "no details in {}", self.text);
        self
    }

    #[track_caller]
    fn ok(&self, status: u16) -> &Value {
        assert_eq!(self.status.as_u16(), status, "wrong status; body: {}", self.text);
        &self.json
    }

    fn code(&self) -> &str {
        self.json["error"]["code"].as_str().unwrap_or("")
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

impl Api {
    fn new(auth: AuthMode) -> Api {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open(dir.path().join("api.db"), Durability::Normal).expect("open store");
        let (tx, rx) = mpsc::unbounded_channel();
        let config = EngineConfig { release_when_idle_ms: Some(1000), ..EngineConfig::new("test:1:x".into()) };
        let engine = Engine::new(Arc::new(store), config, Some(tx));
        let store = engine.store().clone();
        let server = ServerConfig {
            auth,
            drive_here: true,
            max_body_bytes: MAX_BODY,
            catalog: Catalog::builtin().expect("builtin catalog"),
        };
        let state = AppState::new(engine, Some(rx), server, watch::channel(false).1);
        Api { app: cairn_server::app(state), store, _dir: dir }
    }

    async fn send(&self, req: Request<Body>) -> Reply {
        let response = self.app.clone().oneshot(req).await.expect("infallible");
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await.expect("body");
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        assert!(status.as_u16() < 500, "a server error is never the answer to a request: {status} {text}");
        Reply { status, headers, text, json }
    }

    /// A request with a raw body, a content type (if any) and extra headers.
    async fn raw(
        &self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        headers: &[(&str, &str)],
        body: impl Into<Body>,
    ) -> Reply {
        let mut b = Request::builder().method(Method::from_bytes(method.as_bytes()).expect("method")).uri(path);
        if let Some(ct) = content_type {
            b = b.header("content-type", ct);
        }
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        self.send(b.body(body.into()).expect("request")).await
    }

    async fn get(&self, path: &str) -> Reply {
        self.raw("GET", path, None, &[], Body::empty()).await
    }

    async fn post(&self, path: &str, body: Value) -> Reply {
        self.raw("POST", path, Some("application/json"), &[], body.to_string()).await
    }

    async fn get_as(&self, token: &str, path: &str) -> Reply {
        let auth = format!("Bearer {token}");
        self.raw("GET", path, None, &[("authorization", &auth)], Body::empty()).await
    }

    async fn post_as(&self, token: &str, path: &str, body: Value) -> Reply {
        let auth = format!("Bearer {token}");
        self.raw("POST", path, Some("application/json"), &[("authorization", &auth)], body.to_string()).await
    }

    /// The SQLite database as it is on disk: the file and its write-ahead log.
    fn db_bytes(&self) -> Vec<u8> {
        let mut bytes = Vec::new();
        for file in ["api.db", "api.db-wal"] {
            if let Ok(b) = std::fs::read(self._dir.path().join(file)) {
                bytes.extend(b);
            }
        }
        assert!(!bytes.is_empty(), "no database file in {}", self._dir.path().display());
        bytes
    }

    async fn token(&self, name: &str, role: Role) -> (String, String) {
        let (secret, row) = cairn_server::new_token(name, role, cairn_engine::now_ms()).expect("token");
        let id = row.id.clone();
        self.store.create_token(row).await.expect("create token");
        (secret, id)
    }

    /// Polls the run until `done` holds for its view, or fails with the last view seen.
    async fn wait_run(&self, id: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let r = self.get(&format!("/v1/runs/{id}")).await;
            let view = r.ok(200).clone();
            if done(&view) {
                return view;
            }
            assert!(Instant::now() < deadline, "timed out waiting for run {id} to be {what}: {view:#}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// POSTs a steering request to an idle run (even while its driver is letting go of it).
    async fn steer_idle(&self, id: &str, action: &str, body: &str) -> Reply {
        self.raw("POST", &format!("/v1/runs/{id}/{action}"), Some("application/json"), &[], body.to_string()).await
    }

    async fn wait_status(&self, id: &str, status: &str) -> Value {
        self.wait_run(id, status, |v| v["status"] == status).await
    }

    /// Starts a run and returns its id.
    async fn start(&self, body: Value) -> String {
        let r = self.post("/v1/runs", body).await;
        r.ok(201)["id"].as_str().expect("id").to_string()
    }
}

fn echo_workflow(name: &str, version: u32, steps: &[&str]) -> Value {
    let steps: Vec<Value> = steps.iter().map(|s| json!({"id": s, "kind": "echo", "with": {"step": s}})).collect();
    json!({"name": name, "version": version, "steps": steps})
}

/// A workflow that stays WAITING: its only step fails once and retries in 30 s.
fn waiting_workflow() -> Value {
    json!({"name": "waits", "steps": [{
        "id": "flaky", "kind": "noop", "inject": {"fail_times": 1},
        "retry": {"initial_delay": "30s", "max_delay": "60s", "jitter": 0}
    }]})
}

/// (method, path, content type, body, expected status, expected error code)
type Case = (&'static str, String, Option<&'static str>, String, u16, &'static str);

fn fresh_run_id() -> String {
    cairn_engine::new_run_id().to_string()
}

#[tokio::test]
async fn every_bad_request_gets_its_4xx_with_the_error_shape() {
    let api = Api::new(AuthMode::Off);
    let unknown = fresh_run_id();
    let json = Some("application/json");
    let big = format!("{{\"goal\": \"{}\"}}", "a".repeat(MAX_BODY + 10));
    let cases: Vec<Case> = vec![
        ("POST", "/v1/runs".into(), json, "{\"goal\": ".into(), 400, "malformed_json"),
        ("POST", "/v1/runs".into(), json, "{\"goal\": \"x\",}".into(), 400, "malformed_json"),
        ("POST", "/v1/runs".into(), json, "{\"goal\": \"x\", \"bogus\": 1}".into(), 422, "invalid_request"),
        ("POST", "/v1/runs".into(), json, "{\"goal\": 5}".into(), 422, "invalid_request"),
        ("POST", "/v1/runs".into(), json, "{\"inputs\": [1]}".into(), 422, "invalid_request"),
        ("POST", "/v1/runs".into(), json, "[]".into(), 422, "invalid_request"),
        ("POST", "/v1/runs".into(), json, String::new(), 400, "empty_body"),
        ("POST", "/v1/runs".into(), json, "  \n".into(), 400, "empty_body"),
        ("POST", "/v1/runs".into(), None, String::new(), 400, "empty_body"),
        ("POST", "/v1/runs".into(), json, big.clone(), 413, "body_too_large"),
        ("POST", "/v1/workflows".into(), json, big, 413, "body_too_large"),
        ("POST", "/v1/runs".into(), Some("text/plain"), "{\"goal\": \"x\"}".into(), 415, "unsupported_media_type"),
        ("POST", "/v1/runs".into(), Some("application/xml"), "<goal/>".into(), 415, "unsupported_media_type"),
        ("POST", "/v1/runs?wait=forever".into(), json, format!("{{\"goal\": \"{GOAL}\"}}"), 400, "bad_query"),
        ("POST", "/v1/runs?version=1".into(), json, format!("{{\"goal\": \"{GOAL}\"}}"), 400, "bad_query"),
        ("GET", format!("/v1/runs/{unknown}"), None, String::new(), 404, "run_not_found"),
        ("GET", format!("/v1/runs/{unknown}/steps"), None, String::new(), 404, "run_not_found"),
        ("GET", format!("/v1/runs/{unknown}/events/stream"), None, String::new(), 404, "run_not_found"),
        ("GET", format!("/v1/runs/{unknown}/export"), None, String::new(), 404, "run_not_found"),
        ("POST", format!("/v1/runs/{unknown}/cancel"), None, String::new(), 404, "run_not_found"),
        ("POST", format!("/v1/runs/{unknown}/cancel"), json, "{\"reason\": ".into(), 400, "malformed_json"),
        ("POST", format!("/v1/runs/{unknown}/cancel"), json, "{\"why\": \"x\"}".into(), 422, "invalid_request"),
        ("GET", format!("/v1/runs/{unknown}/events?after=-1"), None, String::new(), 400, "bad_query"),
        ("GET", "/v1/runs/nope".into(), None, String::new(), 400, "bad_run_id"),
        // The audit's limit is refused out of range like the runs' (it used to be clamped).
        ("GET", "/v1/audit?limit=0".into(), None, String::new(), 400, "bad_query"),
        ("GET", "/v1/audit?limit=1001".into(), None, String::new(), 400, "bad_query"),
        ("GET", "/v1/runs/wf_bad%20id".into(), None, String::new(), 400, "bad_run_id"),
        ("POST", "/v1/runs/nope/pause".into(), None, String::new(), 400, "bad_run_id"),
        ("GET", "/tasks/nope".into(), None, String::new(), 400, "bad_run_id"),
        ("GET", "/v1/nothing".into(), None, String::new(), 404, "no_such_route"),
        ("GET", "/ui/nothing.js".into(), None, String::new(), 404, "no_such_file"),
        ("POST", "/".into(), None, String::new(), 405, "method_not_allowed"),
        ("GET", "/v2/runs".into(), None, String::new(), 404, "no_such_route"),
        ("DELETE", "/v1/runs".into(), None, String::new(), 405, "method_not_allowed"),
        ("PUT", "/healthz".into(), None, String::new(), 405, "method_not_allowed"),
        ("POST", "/v1/audit".into(), None, String::new(), 405, "method_not_allowed"),
        ("GET", "/v1/runs?limit=0".into(), None, String::new(), 400, "bad_query"),
        ("GET", "/v1/runs?limit=501".into(), None, String::new(), 400, "bad_query"),
        ("GET", "/v1/runs?limit=abc".into(), None, String::new(), 400, "bad_query"),
        ("GET", "/v1/runs?status=bogus".into(), None, String::new(), 400, "bad_query"),
        ("GET", "/v1/runs?created_after=yesterday".into(), None, String::new(), 400, "bad_query"),
        ("GET", "/v1/runs?colour=red".into(), None, String::new(), 400, "bad_query"),
        ("GET", "/v1/runs?cursor=xyz".into(), None, String::new(), 400, "bad_cursor"),
        ("GET", "/v1/runs?cursor=12.nope".into(), None, String::new(), 400, "bad_cursor"),
        ("GET", "/v1/runs?cursor=99999999999999999999.wf_x".into(), None, String::new(), 400, "bad_cursor"),
        ("GET", "/v1/runs?limit=-1".into(), None, String::new(), 400, "bad_query"),
        ("GET", "/v1/runs/%FF".into(), None, String::new(), 400, "bad_path"),
        ("GET", format!("/v1/runs/{unknown}/events?after=abc"), None, String::new(), 400, "bad_query"),
        ("GET", format!("/v1/runs/{unknown}/events/stream?after=x"), None, String::new(), 400, "bad_query"),
        ("POST", format!("/v1/runs/{unknown}/signals/ok"), json, "{\"a\": ".into(), 400, "malformed_json"),
        ("POST", "/v1/runs".into(), json, "{\"goal\": \"x\", \"version\": 4294967296}".into(), 422, "invalid_request"),
        ("POST", "/v1/workflows".into(), Some("application/yaml"), "\u{0}\u{1}".into(), 422, "invalid_definition"),
        ("GET", "/v1/workflows/nope".into(), None, String::new(), 404, "workflow_not_found"),
        ("GET", "/v1/workflows/nope?version=x".into(), None, String::new(), 400, "bad_query"),
        ("POST", "/v1/workflows".into(), Some("text/plain"), "name: x".into(), 415, "unsupported_media_type"),
        ("POST", "/v1/workflows".into(), json, String::new(), 400, "empty_body"),
        ("POST", "/v1/workflows".into(), Some("application/yaml"), "name: [".into(), 422, "invalid_definition"),
        ("POST", "/v1/tokens".into(), json, "{\"name\": \"x\", \"role\": \"root\"}".into(), 422, "bad_role"),
        ("POST", "/v1/tokens".into(), json, "{\"name\": \" \", \"role\": \"viewer\"}".into(), 422, "bad_name"),
        ("POST", "/v1/tokens".into(), json, "{\"name\": \"tok_1\", \"role\": \"viewer\"}".into(), 422, "bad_name"),
        ("POST", "/v1/tokens".into(), json, "{\"name\": \"x\"}".into(), 422, "invalid_request"),
        ("POST", "/v1/tokens/tok_nope/revoke".into(), None, String::new(), 404, "token_not_found"),
        ("POST", "/tasks".into(), json, "{}".into(), 422, "invalid_request"),
        ("POST", "/tasks".into(), json, "{\"goal\": \"xyzzy plugh\"}".into(), 422, "unplannable_goal"),
        ("POST", "/tasks".into(), Some("text/csv"), "goal".into(), 415, "unsupported_media_type"),
    ];
    let mut failures = Vec::new();
    for (method, path, ct, body, status, code) in cases {
        let r = api.raw(method, &path, ct, &[], body).await;
        let shape_ok = r.json["error"]["message"].as_str().is_some_and(|m| !m.is_empty())
            && r.json["error"].as_object().is_some_and(|o| o.contains_key("details"));
        if r.status.as_u16() != status || r.code() != code || !shape_ok {
            failures.push(format!("{method} {path}: expected {status} {code}, got {} {}", r.status, r.text));
        }
    }
    assert!(failures.is_empty(), "{} case(s) failed:\n{}", failures.len(), failures.join("\n"));
    // A definition that is not UTF-8.
    let r = api.raw("POST", "/v1/workflows", Some("application/yaml"), &[], vec![0xffu8, 0xfe, 0x00]).await;
    r.error(400, "malformed_body");

    // The syntax error says where.
    let r = api.raw("POST", "/v1/runs", json, &[], "{\n  \"goal\": ?\n}").await;
    r.error(400, "malformed_json");
    assert_eq!(r.json["error"]["details"]["line"], 2, "{}", r.text);
    // A shape error names the field.
    let r = api.raw("POST", "/v1/runs", json, &[], "{\"goal\": \"x\", \"bogus\": 1}").await;
    assert!(r.json["error"]["message"].as_str().unwrap_or("").contains("bogus"), "{}", r.text);
    // A bad signal name is refused before the run is looked up.
    api.raw("POST", &format!("/v1/runs/{unknown}/signals/bad$name"), None, &[], "").await.error(400, "bad_signal_name");
    let long = "s".repeat(65);
    api.raw("POST", &format!("/v1/runs/{unknown}/signals/{long}"), None, &[], "").await.error(400, "bad_signal_name");
    // A bad Last-Event-ID is refused before streaming.
    for stream in [format!("/v1/runs/{unknown}/events/stream"), "/v1/events/stream".to_string()] {
        api.raw("GET", &stream, None, &[("last-event-id", "soon")], "").await.error(400, "bad_last_event_id");
        api.raw("GET", &stream, None, &[("last-event-id", "-3")], "").await.error(400, "bad_last_event_id");
    }
    // An Idempotency-Key must be sensible.
    let long_key = "k".repeat(256);
    let body = json!({"goal": GOAL}).to_string();
    api.raw("POST", "/v1/runs", json, &[("idempotency-key", &long_key)], body.clone())
        .await
        .error(400, "bad_idempotency_key");
    api.raw("POST", "/v1/runs", json, &[("idempotency-key", "  ")], body).await.error(400, "bad_idempotency_key");
    assert!(api.store.list_runs(Default::default()).await.expect("list").is_empty(), "no bad request made a run");
}

#[tokio::test]
async fn what_to_run_must_be_exactly_one_plannable_valid_thing() {
    let api = Api::new(AuthMode::Off);
    let both = api.post("/v1/runs", json!({"goal": GOAL, "workflow": "x"})).await;
    both.error(422, "invalid_request");
    api.post("/v1/runs", json!({})).await.error(422, "invalid_request");
    api.post("/v1/runs", json!({"inputs": {"a": 1}})).await.error(422, "invalid_request");
    api.post("/v1/runs", json!({"workflow": 7})).await.error(422, "invalid_request");
    api.post("/v1/runs", json!({"workflow": "nope"})).await.error(404, "workflow_not_found");
    let inline_versioned = json!({"workflow": echo_workflow("inline", 1, &["a"]), "version": 1});
    api.post("/v1/runs", inline_versioned).await.error(422, "invalid_request");

    // A goal nothing in the catalog matches: the message lists what can be planned.
    let r = api.post("/v1/runs", json!({"goal": "xyzzy plugh frobnicate"})).await;
    r.error(422, "unplannable_goal");
    let message = r.json["error"]["message"].as_str().unwrap_or("");
    assert!(message.contains("xyzzy"), "the message names the goal: {message}");
    assert!(message.contains("summar"), "the message lists what the catalog can plan: {message}");
    api.post("/v1/runs", json!({"goal": "  "})).await.error(422, "unplannable_goal");

    // An inline definition with several problems: all of them, in a list.
    let bad = json!({"workflow": {"name": "bad", "steps": [
        {"id": "a", "kind": "no_such_kind"},
        {"id": "b", "kind": "echo", "needs": ["ghost"]},
        {"id": "a", "kind": "echo"},
    ]}});
    let r = api.post("/v1/runs", bad).await;
    r.error(422, "invalid_definition");
    let details = r.json["error"]["details"].as_array().expect("details is a list of problems");
    assert!(details.len() >= 3, "every problem is listed: {details:#?}");
    let all = details.iter().filter_map(Value::as_str).collect::<Vec<_>>().join("\n");
    for needle in ["no_such_kind", "ghost"] {
        assert!(all.contains(needle), "a problem mentions {needle}: {all}");
    }
    api.post("/v1/runs", json!({"workflow": {"steps": []}})).await.error(422, "invalid_definition");

    // Required inputs.
    let needs_topic = json!({"name": "needs-topic", "inputs": {"topic": {"description": "what about"}},
        "steps": [{"id": "a", "kind": "echo", "with": {"t": "{{ inputs.topic }}"}}]});
    let r = api.post("/v1/runs", json!({"workflow": needs_topic.clone()})).await;
    r.error(422, "missing_inputs");
    assert_eq!(r.json["error"]["details"]["missing"], json!(["topic"]), "{}", r.text);
    // Unknown input names: the declared names and a suggestion, and no run.
    let r = api.post("/v1/runs", json!({"workflow": needs_topic.clone(), "inputs": {"tpoic": "otters"}})).await;
    r.error(422, "unknown_inputs");
    assert_eq!(
        r.json["error"]["details"],
        json!({"unknown": ["tpoic"], "suggestions": {"tpoic": "topic"}, "declared": ["topic"], "missing": ["topic"]}),
        "{}",
        r.text
    );
    let message = r.json["error"]["message"].as_str().unwrap_or("");
    assert!(message.contains("has no input(s) `tpoic` (did you mean `topic`?)"), "{message}");
    let r = api.post("/v1/runs", json!({"goal": GOAL, "inputs": {"colour": "red"}})).await;
    r.error(422, "unknown_inputs");
    assert_eq!(r.json["error"]["details"]["declared"], json!(["goal"]), "{}", r.text);
    let r = api.post("/v1/runs?wait=5s", json!({"workflow": needs_topic, "inputs": {"topic": "otters"}})).await;
    let view = r.ok(201);
    assert_eq!(view["status"], "COMPLETED", "{view:#}");
    assert!(api.store.list_runs(Default::default()).await.expect("list").len() == 1, "only the good request ran");
}

#[tokio::test]
async fn wait_answers_with_the_finished_run_and_its_output() {
    let api = Api::new(AuthMode::Off);
    let r = api.post("/v1/runs?wait=5s", json!({"goal": GOAL})).await;
    let view = r.ok(201);
    assert_eq!(view["status"], "COMPLETED", "{view:#}");
    assert!(!view["output"].is_null(), "a completed run comes with its output: {view:#}");
    assert_eq!(view["goal"], GOAL);
    let id = view["id"].as_str().expect("id");
    assert_eq!(r.header("location"), Some(format!("/v1/runs/{id}").as_str()));
    assert!(view["finished_at_ms"].is_i64());

    // Without ?wait the answer comes at once, before the run is done; GET shows steps and output.
    let inline = json!({"name": "slowish", "steps": [{"id": "nap", "kind": "mock_model", "with": {"prompt": "busy", "latency": "300ms"}}]});
    let r = api.post("/v1/runs", json!({"workflow": inline})).await;
    let view = r.ok(201).clone();
    assert_ne!(view["status"], "COMPLETED", "answered before the 300ms step finished: {view:#}");
    let id = view["id"].as_str().expect("id");
    let done = api.wait_status(id, "COMPLETED").await;
    assert_eq!(done["steps"][0]["step_id"], "nap", "{done:#}");
    assert_eq!(done["steps"][0]["attempts"], 1, "{done:#}");
    // ?wait that runs out answers with the run as it is.
    let long = json!({"name": "long", "steps": [{"id": "nap", "kind": "mock_model", "with": {"prompt": "busy", "latency": "2s"}}]});
    let started = Instant::now();
    let r = api.post("/v1/runs?wait=100ms", json!({"workflow": long})).await;
    assert_eq!(r.ok(201)["status"], "EXECUTING", "{}", r.text);
    assert!(started.elapsed() < Duration::from_millis(1500), "wait is bounded: {:?}", started.elapsed());
    let id = r.json["id"].as_str().expect("id").to_string();
    api.post(&format!("/v1/runs/{id}/cancel"), json!({"reason": "test over"})).await.ok(200);
}

#[tokio::test]
async fn steering_a_finished_run_is_a_conflict() {
    let api = Api::new(AuthMode::Off);
    let r = api.post("/v1/runs?wait=5s", json!({"workflow": echo_workflow("quick", 1, &["a"])})).await;
    let id = r.ok(201)["id"].as_str().expect("id").to_string();
    assert_eq!(r.json["status"], "COMPLETED");
    for action in ["pause", "resume", "cancel", "signals/approved"] {
        let r = api.raw("POST", &format!("/v1/runs/{id}/{action}"), None, &[], "").await;
        r.error(409, "run_finished");
        assert!(r.text.contains("already finished (COMPLETED)"), "{}", r.text);
    }
    // Logs of an unknown step are 404, of a known one 200.
    api.get(&format!("/v1/runs/{id}/steps/nope/logs")).await.error(404, "step_not_found");
    api.get(&format!("/v1/runs/{id}/steps/a/logs")).await.ok(200);
    let finished = api.get(&format!("/v1/runs/{id}")).await;
    assert_eq!(finished.ok(200)["status"], "COMPLETED", "the refused requests changed nothing");
}

#[tokio::test]
async fn pause_resume_signal_and_cancel_a_waiting_run() {
    let api = Api::new(AuthMode::Off);
    let id = api.start(json!({"workflow": waiting_workflow()})).await;
    api.wait_status(&id, "WAITING").await;
    // Resuming a run that is not paused is refused, saying so.
    let r = api.steer_idle(&id, "resume", "").await;
    r.error(409, "not_paused");
    assert!(r.text.contains("is not paused (it is WAITING)"), "{}", r.text);
    let r = api.steer_idle(&id, "pause", "").await;
    assert_eq!(r.ok(200)["delivery"], "applied", "{}", r.text);
    assert_eq!(r.json["status"], "PAUSED", "{}", r.text);
    let r = api.steer_idle(&id, "pause", "").await;
    r.error(409, "already_paused");
    assert!(r.text.contains("already paused"), "{}", r.text);
    let r = api.steer_idle(&id, "resume", "").await;
    assert_eq!(r.ok(200)["status"], "WAITING", "{}", r.text);
    let r = api.steer_idle(&id, "signals/approved", "{\"by\": \"ana\"}").await;
    assert_eq!(r.ok(200)["delivery"], "applied", "{}", r.text);
    let r = api.steer_idle(&id, "cancel", "{\"reason\": \"no longer needed\"}").await;
    assert_eq!(r.ok(200)["status"], "CANCELLED", "{}", r.text);
    let events = api.get(&format!("/v1/runs/{id}/events")).await;
    let kinds: Vec<&str> =
        events.ok(200)["events"].as_array().expect("events").iter().filter_map(|e| e["type"].as_str()).collect();
    let steering = ["run_paused", "run_unpaused", "signal_received", "run_cancelled"];
    let journaled: Vec<&str> = kinds.iter().copied().filter(|k| steering.contains(k)).collect();
    assert_eq!(journaled, steering, "each request journaled once, in order: {kinds:?}");
    assert_eq!(kinds.last(), Some(&"run_cancelled"));
    let signal = events.json["events"].as_array().expect("events").iter().find(|e| e["type"] == "signal_received");
    assert_eq!(signal.expect("signal")["name"], "approved");
    api.raw("POST", &format!("/v1/runs/{id}/cancel"), None, &[], "").await.error(409, "run_finished");
}

/// The description offers `null` as the optional body of cancel (found by schemathesis: it was
/// refused with 422).
#[tokio::test]
async fn a_null_body_cancels_like_an_empty_one() {
    let api = Api::new(AuthMode::Off);
    let id = api.start(json!({"workflow": waiting_workflow()})).await;
    api.wait_status(&id, "WAITING").await;
    let r = api.steer_idle(&id, "cancel", " null ").await;
    assert_eq!(r.ok(200)["status"], "CANCELLED", "{}", r.text);
    let events = api.get(&format!("/v1/runs/{id}/events")).await;
    let cancelled = events.ok(200)["events"].as_array().expect("events").iter().find(|e| e["type"] == "run_cancelled");
    assert_eq!(cancelled.expect("run_cancelled")["reason"], "cancelled by anonymous");
}

#[tokio::test]
async fn workflows_register_once_per_version_and_runs_pin_theirs() {
    let api = Api::new(AuthMode::Off);
    let v1 = echo_workflow("pinned", 1, &["one_a", "one_b"]);
    let r = api.post("/v1/workflows", v1.clone()).await;
    assert_eq!(r.ok(201)["created"], true, "{}", r.text);
    assert_eq!(r.header("location"), Some("/v1/workflows/pinned"));
    let r = api.post("/v1/workflows", v1.clone()).await;
    assert_eq!(r.ok(200)["created"], false, "the same content again is not a new version: {}", r.text);
    let changed = echo_workflow("pinned", 1, &["other"]);
    api.post("/v1/workflows", changed).await.error(409, "version_exists");

    // A run of the newest (only) version, slow enough to be in flight when v2 arrives.
    let slow_v1 = json!({"workflow": "pinned"});
    let r = api.post("/v1/runs?wait=5s", slow_v1).await;
    assert_eq!(r.ok(201)["workflow_version"], 1, "{}", r.text);
    let sleepy = json!({"name": "sleepy", "version": 1,
        "steps": [{"id": "v1_nap", "kind": "mock_model", "with": {"prompt": "busy", "latency": "300ms"}}]});
    api.post("/v1/workflows", sleepy).await.ok(201);
    let in_flight = api.start(json!({"workflow": "sleepy"})).await;

    // Version 2 as YAML.
    let yaml = "name: sleepy\nversion: 2\nsteps:\n  - {id: v2_only, kind: echo, with: {v: 2}}\n";
    let r = api.raw("POST", "/v1/workflows", Some("application/yaml"), &[], yaml).await;
    assert_eq!(r.ok(201)["version"], 2, "{}", r.text);
    let r = api.raw("POST", "/v1/workflows", Some("application/x-yaml; charset=utf-8"), &[], yaml).await;
    assert_eq!(r.ok(200)["created"], false, "{}", r.text);

    let done = api.wait_status(&in_flight, "COMPLETED").await;
    assert_eq!(done["workflow_version"], 1, "a run keeps the version it started with: {done:#}");
    let steps: Vec<&str> =
        done["steps"].as_array().expect("steps").iter().filter_map(|s| s["step_id"].as_str()).collect();
    assert_eq!(steps, ["v1_nap"], "{done:#}");

    let r = api.post("/v1/runs?wait=5s", json!({"workflow": "sleepy"})).await;
    let newest = r.ok(201);
    assert_eq!(newest["workflow_version"], 2, "the newest version by default: {newest:#}");
    let id = newest["id"].as_str().expect("id");
    let run = api.get(&format!("/v1/runs/{id}")).await;
    assert_eq!(run.ok(200)["steps"][0]["step_id"], "v2_only");
    let r = api.post("/v1/runs?wait=5s", json!({"workflow": "sleepy", "version": 1})).await;
    assert_eq!(r.ok(201)["workflow_version"], 1, "`version` pins an older one: {}", r.text);
    api.post("/v1/runs", json!({"workflow": "sleepy", "version": 9})).await.error(404, "workflow_not_found");

    let w = api.get("/v1/workflows/sleepy").await;
    let w = w.ok(200);
    assert_eq!(w["version"], 2);
    let versions: BTreeSet<u64> =
        w["versions"].as_array().expect("versions").iter().filter_map(Value::as_u64).collect();
    assert_eq!(versions, BTreeSet::from([1, 2]));
    let w1 = api.get("/v1/workflows/sleepy?version=1").await;
    assert_eq!(w1.ok(200)["version"], 1);
    assert_eq!(w1.json["definition"]["steps"][0]["id"], "v1_nap", "{}", w1.text);
    let list = api.get("/v1/workflows").await;
    let names: Vec<&str> =
        list.ok(200)["workflows"].as_array().expect("list").iter().filter_map(|w| w["name"].as_str()).collect();
    assert_eq!(names, ["pinned", "sleepy"]);
    // An invalid definition is refused with every problem listed.
    let bad = json!({"name": "bad", "steps": [{"id": "a", "kind": "nope"}, {"id": "a", "kind": "echo"}]});
    let r = api.post("/v1/workflows", bad).await;
    r.error(422, "invalid_definition");
    assert!(r.json["error"]["details"].as_array().is_some_and(|d| d.len() >= 2), "{}", r.text);
}

#[tokio::test]
async fn a_literal_credential_in_a_registered_or_inline_definition_is_answered_with_a_warning() {
    let api = Api::new(AuthMode::Off);
    let yaml =
        "name: leaky\nsteps:\n  - id: call\n    kind: echo\n    with:\n      headers: {Authorization: Bearer abc123}\n";
    let r = api.raw("POST", "/v1/workflows", Some("application/yaml"), &[], yaml).await;
    let body = r.ok(201);
    let warnings: Vec<&str> = body["warnings"].as_array().expect("warnings").iter().filter_map(Value::as_str).collect();
    assert_eq!(warnings.len(), 1, "{body}");
    assert!(
        warnings[0]
            .starts_with("<request.yaml>:6:32: step `call`: `with.headers.Authorization` holds a literal credential"),
        "{}",
        warnings[0]
    );
    assert!(warnings[0].contains("`Bearer {{ secrets.API_TOKEN }}`") && !warnings[0].contains("abc123"));
    // A clean definition has none; an inline one in a run request gets them too.
    let clean = api.post("/v1/workflows", echo_workflow("clean", 1, &["a"])).await;
    assert_eq!(clean.ok(201)["warnings"], json!([]));
    let inline = json!({"name": "inline", "steps": [{"id": "a", "kind": "echo", "with": {"password": "hunter2"}}]});
    let r = api.post("/v1/runs", json!({"workflow": inline})).await;
    let warnings = r.ok(201)["warnings"].as_array().expect("warnings").clone();
    assert_eq!(warnings.len(), 1, "{}", r.text);
    assert!(warnings[0].as_str().is_some_and(|w| w.contains("`with.password` holds a literal credential")));
}

#[tokio::test]
async fn idempotency_key_replays_the_same_run() {
    let api = Api::new(AuthMode::Off);
    let body = json!({"goal": GOAL}).to_string();
    let json = Some("application/json");
    let first = api.raw("POST", "/v1/runs", json, &[("idempotency-key", "order-1")], body.clone()).await;
    let id = first.ok(201)["id"].as_str().expect("id").to_string();
    assert!(first.header("idempotent-replayed").is_none());
    let again = api.raw("POST", "/v1/runs", json, &[("idempotency-key", "order-1")], body.clone()).await;
    assert_eq!(again.ok(200)["id"], id.as_str(), "{}", again.text);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(again.header("location"), Some(format!("/v1/runs/{id}").as_str()));
    let other = json!({"goal": "generate summary"}).to_string();
    let reused = api.raw("POST", "/v1/runs", json, &[("idempotency-key", "order-1")], other).await;
    reused.error(422, "idempotency_key_reused");
    assert_eq!(reused.json["error"]["details"]["run_id"], id.as_str());
    assert_eq!(api.store.list_runs(Default::default()).await.expect("list").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_with_one_idempotency_key_make_one_run() {
    let api = Arc::new(Api::new(AuthMode::Off));
    let body = json!({"goal": GOAL}).to_string();
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let api = api.clone();
            let body = body.clone();
            tokio::spawn(async move {
                api.raw("POST", "/v1/runs", Some("application/json"), &[("idempotency-key", "burst")], body).await
            })
        })
        .collect();
    let mut ids = HashSet::new();
    let mut created = 0;
    for t in tasks {
        let r = t.await.expect("task");
        match r.status.as_u16() {
            201 => created += 1,
            200 => assert_eq!(r.header("idempotent-replayed"), Some("true")),
            _ => panic!("a concurrent retry must be answered with the one run: {} {}", r.status, r.text),
        }
        ids.insert(r.json["id"].as_str().expect("id").to_string());
    }
    assert_eq!(created, 1, "exactly one request created the run");
    assert_eq!(ids.len(), 1, "every request got the same run: {ids:?}");
    let runs = api.store.list_runs(Default::default()).await.expect("list");
    assert_eq!(runs.len(), 1, "one run in the database: {runs:#?}");
}

#[tokio::test]
async fn cursor_pages_return_every_run_once_and_filters_narrow() {
    let api = Api::new(AuthMode::Off);
    let mut ids = Vec::new();
    for _ in 0..7 {
        ids.push(api.start(json!({"goal": GOAL})).await);
    }
    api.post("/v1/workflows", echo_workflow("other", 1, &["x"])).await.ok(201);
    let mut other = Vec::new();
    for _ in 0..2 {
        let r = api.post("/v1/runs?wait=5s", json!({"workflow": "other"})).await;
        other.push(r.ok(201)["id"].as_str().expect("id").to_string());
    }
    let waiting = api.start(json!({"workflow": waiting_workflow()})).await;
    api.wait_status(&waiting, "WAITING").await;
    for id in &ids {
        api.wait_status(id, "COMPLETED").await;
    }

    // Pages of 3 over the 10 runs: each exactly once, newest first, and the last page says so.
    let mut seen = Vec::new();
    let mut path = "/v1/runs?limit=3".to_string();
    let mut pages = 0;
    loop {
        pages += 1;
        assert!(pages <= 10, "pagination does not end");
        let page = api.get(&path).await;
        let page = page.ok(200);
        let runs = page["runs"].as_array().expect("runs");
        assert!(runs.len() <= 3);
        seen.extend(
            runs.iter().map(|r| (r["created_at_ms"].as_i64().expect("at"), r["id"].as_str().expect("id").to_string())),
        );
        match page["next_cursor"].as_str() {
            Some(c) => path = format!("/v1/runs?limit=3&cursor={c}"),
            None => break,
        }
    }
    let unique: HashSet<&String> = seen.iter().map(|(_, id)| id).collect();
    assert_eq!(seen.len(), 10, "every run once: {seen:#?}");
    assert_eq!(unique.len(), 10, "no run twice: {seen:#?}");
    let mut sorted = seen.clone();
    sorted.sort_by(|a, b| b.cmp(a));
    assert_eq!(seen, sorted, "newest first, ties by id");

    // A cursor over exactly 7 goal runs with limit 7 ends cleanly too.
    let by_status = api.get("/v1/runs?status=COMPLETED&limit=500").await;
    let completed: HashSet<String> = by_status.ok(200)["runs"]
        .as_array()
        .expect("runs")
        .iter()
        .map(|r| r["id"].as_str().expect("id").to_string())
        .collect();
    let expected: HashSet<String> = ids.iter().chain(&other).cloned().collect();
    assert_eq!(completed, expected);
    let w = api.get("/v1/runs?status=WAITING").await;
    let w = w.ok(200)["runs"].as_array().expect("runs").clone();
    assert_eq!(w.len(), 1);
    assert_eq!(w[0]["id"], waiting.as_str());
    let by_workflow = api.get("/v1/runs?workflow=other").await;
    let named: HashSet<String> = by_workflow.ok(200)["runs"]
        .as_array()
        .expect("runs")
        .iter()
        .map(|r| r["id"].as_str().expect("id").to_string())
        .collect();
    assert_eq!(named, other.iter().cloned().collect());
    let first_other = api.get(&format!("/v1/runs/{}", other[0])).await;
    let at = first_other.ok(200)["created_at_ms"].as_i64().expect("created_at_ms");
    let after = api.get(&format!("/v1/runs?created_after={at}")).await;
    let after: Vec<Value> = after.ok(200)["runs"].as_array().expect("runs").clone();
    assert!(after.iter().all(|r| r["created_at_ms"].as_i64().expect("at") >= at));
    for id in other.iter().chain([&waiting]) {
        assert!(after.iter().any(|r| r["id"] == id.as_str()), "{id} was created at or after {at}");
    }
    let before = api.get(&format!("/v1/runs?created_before={at}")).await;
    assert!(before.ok(200)["runs"].as_array().expect("runs").iter().all(|r| r["created_at_ms"].as_i64() < Some(at)));
    let none = api.get("/v1/runs?workflow=missing").await;
    assert_eq!(none.ok(200)["runs"], json!([]));
    assert_eq!(none.json["next_cursor"], Value::Null);
    api.steer_idle(&waiting, "cancel", "{}").await.ok(200);
}

#[tokio::test]
async fn roles_gate_requests_and_the_audit_names_every_actor() {
    let api = Api::new(AuthMode::On);
    let (viewer, _) = api.token("vera", Role::Viewer).await;
    let (operator, _) = api.token("otto", Role::Operator).await;
    let (admin, _) = api.token("ada", Role::Admin).await;
    let (revoked, revoked_id) = api.token("rex", Role::Admin).await;
    // A well-formed secret that was never stored.
    let (stranger, _) = cairn_server::new_token("nobody", Role::Admin, 0).expect("token");

    // Public probes need nothing.
    for path in ["/healthz", "/readyz", "/openapi.json"] {
        api.get(path).await.ok(200);
    }
    // No token, a malformed header, an unknown token.
    api.get("/v1/runs").await.error(401, "unauthorized");
    api.raw("GET", "/v1/runs", None, &[("authorization", "Basic abc")], "").await.error(401, "unauthorized");
    api.get_as(&stranger, "/v1/runs").await.error(401, "unauthorized");
    api.post("/v1/runs", json!({"goal": GOAL})).await.error(401, "unauthorized");
    api.get("/v1/nothing").await.error(401, "unauthorized");

    // Viewer: reads only.
    api.get_as(&viewer, "/v1/runs").await.ok(200);
    api.get_as(&viewer, "/v1/workflows").await.ok(200);
    api.post_as(&viewer, "/v1/runs", json!({"goal": GOAL})).await.error(403, "forbidden");
    api.get_as(&viewer, "/v1/audit").await.error(403, "forbidden");
    api.get_as(&viewer, "/v1/tokens").await.error(403, "forbidden");

    // Operator: starts and cancels runs, but does not register workflows or see tokens.
    let r = api.post_as(&operator, "/v1/runs", json!({"workflow": waiting_workflow()})).await;
    let id = r.ok(201)["id"].as_str().expect("id").to_string();
    api.get_as(&viewer, &format!("/v1/runs/{id}")).await.ok(200);
    api.post_as(&viewer, &format!("/v1/runs/{id}/cancel"), json!({})).await.error(403, "forbidden");
    api.post_as(&operator, &format!("/v1/runs/{id}/cancel"), json!({})).await.ok(200);
    let wf = echo_workflow("guarded", 1, &["a"]);
    api.post_as(&operator, "/v1/workflows", wf.clone()).await.error(403, "forbidden");
    api.get_as(&operator, "/v1/tokens").await.error(403, "forbidden");
    // A request that passes auth and is then refused is still audited.
    let bad = format!("Bearer {operator}");
    api.raw("POST", "/v1/runs", Some("application/json"), &[("authorization", &bad)], "{oops")
        .await
        .error(400, "malformed_json");

    // Admin: everything.
    api.post_as(&admin, "/v1/workflows", wf).await.ok(201);
    let created = api.post_as(&admin, "/v1/tokens", json!({"name": "ci", "role": "viewer"})).await;
    let secret = created.ok(201)["token"].as_str().expect("token").to_string();
    api.get_as(&secret, "/v1/runs").await.ok(200);
    let tokens = api.get_as(&admin, "/v1/tokens").await;
    assert!(!tokens.ok(200).to_string().contains(&secret), "secrets are never listed");
    assert!(!tokens.text.contains("hash"), "nor their hashes: {}", tokens.text);

    // Revoked tokens stop working at once.
    api.get_as(&revoked, "/v1/runs").await.ok(200);
    api.store.revoke_token(&revoked_id, cairn_engine::now_ms()).await.expect("revoke");
    api.get_as(&revoked, "/v1/runs").await.error(401, "unauthorized");
    api.post_as(&admin, "/v1/tokens/ci/revoke", json!({})).await.ok(200);
    api.get_as(&secret, "/v1/runs").await.error(401, "unauthorized");

    let audit = api.get_as(&admin, "/v1/audit?limit=1000").await;
    let rows = audit.ok(200)["audit"].as_array().expect("audit").clone();
    // No secret that was presented, valid or not, is in the audit trail or anywhere in the database.
    let db = api.db_bytes();
    for presented in [&viewer, &operator, &admin, &revoked, &stranger, &secret] {
        for piece in windows(presented.trim_start_matches("cairn_"), 12) {
            assert!(!contains(&db, piece.as_bytes()), "the database file holds {piece} of {presented}");
        }
        for piece in windows(presented.trim_start_matches("cairn_"), 8) {
            assert!(!audit.text.contains(piece), "the audit holds {piece} of {presented}: {}", audit.text);
        }
    }
    let got: Vec<(String, String, String, u64)> = rows
        .iter()
        .rev()
        .map(|r| {
            let text = |k: &str| r[k].as_str().unwrap_or_default().to_string();
            (text("actor"), text("method"), text("path"), r["status"].as_u64().unwrap_or_default())
        })
        .collect();
    let row = |actor: &str, method: &str, path: &str, status: u64| (actor.into(), method.into(), path.into(), status);
    let cancel = format!("/v1/runs/{id}/cancel");
    let expected = vec![
        // Refused requests are audited whatever their method; who they were is all that is kept.
        row("anonymous", "GET", "/v1/runs", 401),
        row("anonymous", "GET", "/v1/runs", 401),
        row("unknown-token", "GET", "/v1/runs", 401),
        row("anonymous", "POST", "/v1/runs", 401),
        row("anonymous", "GET", "/v1/nothing", 401),
        row("vera", "POST", "/v1/runs", 403),
        row("vera", "GET", "/v1/audit", 403),
        row("vera", "GET", "/v1/tokens", 403),
        row("otto", "POST", "/v1/runs", 201),
        row("vera", "POST", &cancel, 403),
        row("otto", "POST", &cancel, 200),
        row("otto", "POST", "/v1/workflows", 403),
        row("otto", "GET", "/v1/tokens", 403),
        row("otto", "POST", "/v1/runs", 400),
        row("ada", "POST", "/v1/workflows", 201),
        row("ada", "POST", "/v1/tokens", 201),
        row("unknown-token", "GET", "/v1/runs", 401),
        row("ada", "POST", "/v1/tokens/ci/revoke", 200),
        row("unknown-token", "GET", "/v1/runs", 401),
    ];
    assert_eq!(got, expected, "mutating requests that passed auth and every refused request, in order");
    let start = rows.iter().find(|r| r["status"] == 201 && r["path"] == "/v1/runs").expect("start row");
    assert_eq!(start["run_id"], id.as_str(), "the audit row names the run it made");
    let cancel = rows.iter().find(|r| r["status"] == 200 && r["path"] == cancel.as_str()).expect("cancel");
    assert_eq!(cancel["run_id"], id.as_str());
}

/// Every `n`-character window of `s`.
fn windows(s: &str, n: usize) -> Vec<&str> {
    (0..=s.len().saturating_sub(n)).map(|i| &s[i..i + n]).collect()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test]
async fn token_ids_share_nothing_with_their_secrets_and_a_live_name_is_not_given_twice() {
    let api = Api::new(AuthMode::On);
    let (admin, _) = api.token("ada", Role::Admin).await;
    let mut created = Vec::new();
    for name in ["ci", "dash", "bot"] {
        let r = api.post_as(&admin, "/v1/tokens", json!({"name": name, "role": "viewer"})).await;
        let body = r.ok(201);
        let secret = body["token"].as_str().expect("token").to_string();
        created.push((body["id"].as_str().expect("id").to_string(), secret));
    }
    let listing = api.get_as(&admin, "/v1/tokens").await;
    let ids: Vec<String> = listing.ok(200)["tokens"]
        .as_array()
        .expect("tokens")
        .iter()
        .map(|t| t["id"].as_str().expect("id").into())
        .collect();
    for (id, secret) in &created {
        assert!(ids.contains(id), "{id} is listed: {ids:?}");
        let hex = secret.trim_start_matches("cairn_");
        // Ids were once `tok_` + the secret's first 10 hex characters.
        for piece in windows(hex, 6) {
            for listed in &ids {
                assert!(!listed.contains(piece), "id {listed} holds {piece} of the secret {secret}");
            }
        }
        for piece in windows(hex, 10) {
            assert!(!listing.text.contains(piece), "the listing holds {piece} of {secret}: {}", listing.text);
        }
    }

    // A live name is refused, naming the token that holds it; the refused token does not exist.
    let again = api.post_as(&admin, "/v1/tokens", json!({"name": "ci", "role": "admin"})).await;
    again.error(409, "token_name_taken");
    assert_eq!(again.json["error"]["details"]["id"], created[0].0.as_str(), "{}", again.text);
    assert!(again.json.get("token").is_none());
    let listed = api.get_as(&admin, "/v1/tokens").await;
    assert_eq!(listed.ok(200)["tokens"].as_array().map(Vec::len), Some(4), "{}", listed.text);
    // Revoked, the name is free again; revoking it twice is a 404.
    let r = api.post_as(&admin, "/v1/tokens/ci/revoke", json!({})).await;
    assert_eq!(r.ok(200)["id"], created[0].0.as_str());
    api.post_as(&admin, "/v1/tokens/ci/revoke", json!({})).await.error(404, "token_not_found");
    api.post_as(&admin, &format!("/v1/tokens/{}/revoke", created[0].0), json!({})).await.error(404, "token_not_found");
    api.post_as(&admin, "/v1/tokens", json!({"name": "ci", "role": "viewer"})).await.ok(201);
    // By id works as well as by name.
    let r = api.post_as(&admin, &format!("/v1/tokens/{}/revoke", created[1].0), json!({})).await;
    assert_eq!(r.ok(200)["name"], "dash");
    api.get_as(&created[1].1, "/v1/runs").await.error(401, "unauthorized");
}

#[tokio::test]
async fn a_token_with_an_id_cut_from_its_secret_keeps_working_and_keeps_its_id() {
    let api = Api::new(AuthMode::On);
    // As tokens were made before ids were drawn apart from secrets.
    let (secret, mut row) = cairn_server::new_token("legacy", Role::Admin, cairn_engine::now_ms()).expect("token");
    row.id = format!("tok_{}", &secret["cairn_".len().."cairn_".len() + 10]);
    let old_id = row.id.clone();
    api.store.create_token(row).await.expect("store the legacy token");
    api.get_as(&secret, "/v1/runs").await.ok(200);
    let listing = api.get_as(&secret, "/v1/tokens").await;
    assert_eq!(listing.ok(200)["tokens"][0]["id"], old_id.as_str(), "existing ids are not rewritten");
    let r = api.post_as(&secret, &format!("/v1/tokens/{old_id}/revoke"), json!({})).await;
    assert_eq!(r.ok(200)["name"], "legacy");
    api.get_as(&secret, "/v1/runs").await.error(401, "unauthorized");
}

#[tokio::test]
async fn mutating_requests_are_audited_as_anonymous_without_auth() {
    let api = Api::new(AuthMode::Off);
    api.post("/v1/runs", json!({"goal": "xyzzy"})).await.error(422, "unplannable_goal");
    api.get("/v1/runs").await.ok(200);
    let audit = api.get("/v1/audit").await;
    let rows = audit.ok(200)["audit"].as_array().expect("audit").clone();
    assert_eq!(rows.len(), 1, "{rows:#?}");
    assert_eq!(rows[0]["actor"], "anonymous");
    assert_eq!(rows[0]["status"], 422);
}

/// Parses a finished SSE body into (id, event, data).
fn sse_events(text: &str) -> Vec<(i64, String, Value)> {
    let mut out = Vec::new();
    for block in text.split("\n\n") {
        let (mut id, mut event, mut data) = (None, String::new(), String::new());
        for line in block.lines() {
            if let Some(v) = line.strip_prefix("id:") {
                id = v.trim().parse().ok();
            } else if let Some(v) = line.strip_prefix("event:") {
                event = v.trim().to_string();
            } else if let Some(v) = line.strip_prefix("data:") {
                data.push_str(v.strip_prefix(' ').unwrap_or(v));
            }
        }
        if let Some(id) = id {
            out.push((id, event, serde_json::from_str(&data).unwrap_or(Value::Null)));
        }
    }
    out
}

#[tokio::test]
async fn the_stream_of_a_finished_run_replays_its_journal_and_ends() {
    let api = Api::new(AuthMode::Off);
    let r = api.post("/v1/runs?wait=5s", json!({"goal": GOAL})).await;
    let id = r.ok(201)["id"].as_str().expect("id").to_string();
    let last = r.json["events"].as_u64().expect("events");
    let path = format!("/v1/runs/{id}/events/stream");
    let whole = api.get(&path).await;
    assert!(whole.header("content-type").is_some_and(|c| c.starts_with("text/event-stream")));
    let events = sse_events(&whole.text);
    let ids: Vec<i64> = events.iter().map(|e| e.0).collect();
    assert_eq!(ids, (1..=last as i64).collect::<Vec<_>>(), "{}", whole.text);
    assert_eq!(events.last().expect("events").1, "run_completed");
    assert!(
        events.iter().all(|(id, kind, data)| data["seq"] == *id && data["type"] == kind.as_str()),
        "{}",
        whole.text
    );
    let rest = api.raw("GET", &path, None, &[("last-event-id", "3")], "").await;
    let rest_ids: Vec<i64> = sse_events(&rest.text).iter().map(|e| e.0).collect();
    assert_eq!(rest_ids, (4..=last as i64).collect::<Vec<_>>(), "{}", rest.text);
    let q = api.get(&format!("{path}?after={last}")).await;
    assert!(sse_events(&q.text).is_empty(), "nothing after the end: {}", q.text);
}

#[tokio::test]
async fn tasks_compatibility_api_still_works() {
    let api = Api::new(AuthMode::Off);
    let r = api.post("/tasks", json!({"goal": GOAL})).await;
    let task = r.ok(201).clone();
    let id = task["task_id"].as_str().expect("task_id").to_string();
    assert!(id.starts_with("wf_"));
    assert_eq!(r.header("location"), Some(format!("/tasks/{id}").as_str()));
    assert_eq!(task["goal"], GOAL);
    let deadline = Instant::now() + DEADLINE;
    let done = loop {
        let t = api.get(&format!("/tasks/{id}")).await;
        let t = t.ok(200).clone();
        if t["status"] == "COMPLETED" {
            break t;
        }
        assert!(Instant::now() < deadline, "task never completed: {t:#}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(!done["result"].is_null(), "{done:#}");
    assert!(done["error"].is_null());
    let steps = api.get(&format!("/tasks/{id}/steps")).await;
    let steps = steps.ok(200)["steps"].as_array().expect("steps").clone();
    assert!(!steps.is_empty());
    assert!(
        steps.iter().all(|s| s["status"] == "COMPLETED" && s["attempts"] == 1 && s["name"].is_string()),
        "{steps:#?}"
    );
    api.get(&format!("/tasks/{}", fresh_run_id())).await.error(404, "run_not_found");
    // The same run is visible through /v1.
    api.get(&format!("/v1/runs/{id}")).await.ok(200);
}

#[tokio::test]
async fn health_and_readiness() {
    let api = Api::new(AuthMode::Off);
    assert_eq!(api.get("/healthz").await.ok(200)["status"], "ok");
    let ready = api.get("/readyz").await;
    assert_eq!(ready.ok(200)["status"], "ready", "{}", ready.text);
}

#[tokio::test]
async fn the_dashboard_is_served_without_a_token_under_a_strict_policy_and_its_data_still_needs_one() {
    let api = Api::new(AuthMode::On);
    let page = api.get("/").await;
    assert_eq!(page.status, 200, "{}", page.text);
    assert!(page.text.contains(r#"<script type="module" src="/ui/app.js">"#), "{}", page.text);
    let policy = page.headers.get("content-security-policy").and_then(|v| v.to_str().ok()).unwrap_or_default();
    for part in ["default-src 'none'", "script-src 'self'", "connect-src 'self'", "frame-ancestors 'none'"] {
        assert!(policy.contains(part), "the page's policy has {part}: {policy}");
    }
    assert!(!policy.contains("unsafe-inline") && !policy.contains("http"), "nothing inline, no other origin: {policy}");
    // Every file the page loads is there, with its type, and names no other origin.
    let files = [
        ("app.js", "text/javascript"),
        ("api.js", "text/javascript"),
        ("dom.js", "text/javascript"),
        ("runs.js", "text/javascript"),
        ("run.js", "text/javascript"),
        ("approvals.js", "text/javascript"),
        ("catalog.js", "text/javascript"),
        ("style.css", "text/css"),
    ];
    for (file, kind) in files {
        let r = api.get(&format!("/ui/{file}")).await;
        assert_eq!(r.status, 200, "{file}");
        let ct = r.headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default();
        assert!(ct.starts_with(kind), "{file}: {ct}");
        assert_eq!(r.headers.get("x-content-type-options").map(|v| v.as_bytes()), Some(&b"nosniff"[..]));
        // (The SVG namespace is a name, not an address.)
        let text = r.text.replace("http://www.w3.org/2000/svg", "");
        assert!(!text.contains("http://") && !text.contains("https://"), "{file} fetches nothing from elsewhere");
        for sink in ["innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "javascript:", "eval("] {
            assert!(!r.text.contains(sink), "{file} uses {sink}: data must only ever be written as text");
        }
    }
    api.get("/ui/../Cargo.toml").await.error(404, "no_such_route");
    api.get("/v1/runs").await.error(401, "unauthorized");
}

#[tokio::test]
async fn graphql_reads_runs_steps_calls_events_and_approvals_within_its_limits() {
    let api = Api::new(AuthMode::On);
    let (admin, _) = api.token("ada", Role::Admin).await;
    let (viewer, _) = api.token("vera", Role::Viewer).await;
    let done =
        api.post_as(&admin, "/v1/runs?wait=10s", json!({"workflow": echo_workflow("pair", 1, &["a", "b"])})).await;
    let done = done.ok(201)["id"].as_str().expect("id").to_string();
    let gate = json!({"name": "gate", "steps": [{"id": "ok", "kind": "approval", "approval": {"prompt": "Ship it?"}}]});
    let gated = api.post_as(&admin, "/v1/runs", json!({"workflow": gate})).await.ok(201)["id"]
        .as_str()
        .expect("id")
        .to_string();
    let deadline = Instant::now() + DEADLINE;
    while api.get_as(&viewer, "/v1/approvals").await.json["approvals"].as_array().is_none_or(Vec::is_empty) {
        assert!(Instant::now() < deadline, "the gate never waited");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let ask = |query: &str| json!({"query": query});
    let q = format!(
        r#"{{ run(id: "{done}") {{ id workflow status steps {{ id status attempts calls {{ kind }} }}
              events(first: 3) {{ seq type step }} children {{ runId }} }}
            runs(first: 1) {{ runs {{ id }} nextCursor }}
            approvals {{ runId step prompt kind decisions }} }}"#
    );
    let r = api.post_as(&viewer, "/graphql", ask(&q)).await;
    let body = r.ok(200).clone();
    assert!(body.get("errors").is_none(), "{body:#}");
    let run = &body["data"]["run"];
    assert_eq!(run["status"], "COMPLETED", "{body:#}");
    assert_eq!(run["steps"].as_array().map(Vec::len), Some(2), "{body:#}");
    assert_eq!(run["events"].as_array().map(Vec::len), Some(3), "the page size holds: {body:#}");
    assert_eq!(run["events"][0]["type"], "run_created");
    assert_eq!(body["data"]["runs"]["runs"][0]["id"], gated.as_str(), "newest first");
    let cursor = body["data"]["runs"]["nextCursor"].as_str().expect("a next page").to_string();
    let next = api
        .post_as(
            &viewer,
            "/graphql",
            ask(&format!(r#"{{ runs(first: 5, after: "{cursor}") {{ runs {{ id }} nextCursor }} }}"#)),
        )
        .await;
    assert_eq!(next.ok(200)["data"]["runs"]["runs"], json!([{"id": done}]), "{}", next.text);
    let approvals = &body["data"]["approvals"];
    assert_eq!(approvals[0]["runId"], gated.as_str());
    assert_eq!(approvals[0]["prompt"], "Ship it?");
    // An unknown run is null, not an error; a malformed id is an error in the answer.
    let r = api.post_as(&viewer, "/graphql", ask(&format!(r#"{{ run(id: "{}") {{ id }} }}"#, fresh_run_id()))).await;
    assert_eq!(r.ok(200)["data"]["run"], Value::Null, "{}", r.text);
    let r = api.post_as(&viewer, "/graphql", ask(r#"{ run(id: "nope") { id } }"#)).await;
    assert!(r.ok(200)["errors"][0]["message"].as_str().unwrap_or_default().contains("not a run id"), "{}", r.text);

    // Limits: page size, depth, complexity; and there is nothing to mutate.
    let r = api.post_as(&viewer, "/graphql", ask("{ runs(first: 1000) { runs { id } } }")).await;
    assert!(r.ok(200)["errors"][0]["message"].as_str().unwrap_or_default().contains("use 1 to 100"), "{}", r.text);
    let deep = "{ runs { runs { steps { calls { kind } } } } }".replace("{ kind }", "{ kind step n outcome }");
    assert!(
        api.post_as(&viewer, "/graphql", ask(&deep)).await.ok(200).get("errors").is_none(),
        "a reasonable query runs"
    );
    let costly = "{ runs(first: 100) { runs { steps { calls { kind step n outcome attempt durationMs atMs error } } events(first: 100) { seq type step data } } } }";
    let r = api.post_as(&viewer, "/graphql", ask(costly)).await;
    assert!(
        r.ok(200)["errors"][0]["message"].as_str().unwrap_or_default().to_lowercase().contains("complex"),
        "{}",
        r.text
    );
    // Nesting past the parser's recursion limit is refused before anything runs.
    let nested = format!(
        "{{ __schema {{ types {{ fields {{ type {} name {} }} }} }} }}",
        "{ ofType ".repeat(40),
        "}".repeat(40)
    );
    let r = api.post_as(&viewer, "/graphql", ask(&nested)).await;
    assert!(r.ok(200)["errors"].as_array().is_some_and(|e| !e.is_empty()) && r.json["data"].is_null(), "{}", r.text);
    // The standard introspection query fits; repeating a field that reads the store under
    // aliases adds up and is refused.
    let introspection = "{ __schema { queryType { name } types { name kind fields(includeDeprecated: true) { name args { name type { kind name ofType { kind name ofType { kind name ofType { kind name ofType { kind name } } } } } } type { kind name ofType { kind name ofType { kind name ofType { kind name } } } } } } } }";
    assert!(
        api.post_as(&viewer, "/graphql", ask(introspection)).await.ok(200).get("errors").is_none(),
        "introspection runs"
    );
    let fan_out: String = (0..100).map(|i| format!("a{i}: events(first: 1) {{ seq }} ")).collect();
    let r = api.post_as(&viewer, "/graphql", ask(&format!(r#"{{ run(id: "{done}") {{ {fan_out} }} }}"#))).await;
    assert!(
        r.ok(200)["errors"][0]["message"].as_str().unwrap_or_default().to_lowercase().contains("complex"),
        "{}",
        r.text
    );
    let r = api
        .post_as(&viewer, "/graphql", json!({"query": "{ runs { nextCursor } }", "extensions": {"persistedQuery": {}}}))
        .await;
    assert!(r.ok(200).get("errors").is_none(), "extensions are accepted: {}", r.text);
    let r = api.post_as(&viewer, "/graphql", ask(r#"mutation { cancel(id: "x") }"#)).await;
    assert!(r.ok(200)["errors"].is_array(), "{}", r.text);

    // The same auth as REST, and bad bodies are 4xx with the error shape.
    api.post("/graphql", ask("{ runs { runs { id } } }")).await.error(401, "unauthorized");
    api.raw(
        "POST",
        "/graphql",
        Some("application/json"),
        &[("authorization", &format!("Bearer {viewer}"))],
        "{not json",
    )
    .await
    .error(400, "malformed_json");
    let r = api.post_as(&viewer, "/graphql", json!({"query": "{ runs { runs { id } } }", "variables": [1]})).await;
    r.error(422, "invalid_request");
    let schema = api.get_as(&viewer, "/graphql").await;
    assert_eq!(schema.status, 200);
    assert!(schema.text.contains("type Run") && schema.text.contains("approvals"), "{}", schema.text);
    // Reading is not audited as a change; the refused request is, like any refused one.
    let audit = api.get_as(&admin, "/v1/audit").await;
    let rows: Vec<&Value> =
        audit.json["audit"].as_array().expect("audit").iter().filter(|r| r["path"] == "/graphql").collect();
    assert_eq!(rows.len(), 1, "{}", audit.text);
    assert_eq!(rows[0]["status"], 401);
}

#[tokio::test]
async fn a_decision_naming_an_older_request_is_refused_as_stale() {
    let api = Api::new(AuthMode::Off);
    let gate = json!({"name": "gate", "steps": [{"id": "ok", "kind": "approval"}]});
    let id = api.start(json!({"workflow": gate})).await;
    let deadline = Instant::now() + DEADLINE;
    let asked = loop {
        let list = api.get("/v1/approvals").await;
        if let Some(at) = list.json["approvals"][0]["requested_at_ms"].as_i64() {
            break at;
        }
        assert!(Instant::now() < deadline, "the gate never waited");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let path = format!("/v1/runs/{id}/approvals/ok");
    let r = api.post(&path, json!({"decision": "approve", "requested_at_ms": asked - 1})).await;
    r.error(409, "stale_decision");
    assert!(r.json["error"]["message"].as_str().unwrap_or_default().contains("asked again"), "{}", r.text);
    let r = api.post(&path, json!({"decision": "approve", "requested_at_ms": asked})).await;
    assert!(r.status.is_success(), "{}", r.text);
    api.wait_status(&id, "COMPLETED").await;
}
