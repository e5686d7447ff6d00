//! Shared by the OpenAPI tests: the real app on a real SQLite file, driven with `oneshot`, and
//! the document's own schemas as validators.

#![allow(dead_code)]

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Request, StatusCode};
use cairn_core::catalog::Catalog;
use cairn_engine::{Engine, EngineConfig};
use cairn_server::{AppState, AuthMode, Role, ServerConfig};
use cairn_store::{Access, Durability, SqliteStore};
use futures_util::StreamExt;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tower::ServiceExt;

pub const MAX_BODY: usize = 64 * 1024;

pub struct Api {
    pub app: Router,
    pub store: Arc<SqliteStore>,
    admin: Option<String>,
    _dir: tempfile::TempDir,
}

/// One answer. An event stream is read for a moment only (some never end).
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// The body as JSON, when the answer says it is JSON.
    pub json: Option<Value>,
}

impl Reply {
    pub fn content_type(&self) -> &str {
        self.headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("")
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

impl Api {
    pub fn new(auth: AuthMode) -> Api {
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
        Api { app: cairn_server::app(state), store, admin: None, _dir: dir }
    }

    pub async fn send(&self, req: Request<Body>) -> Reply {
        let response = self.app.clone().oneshot(req).await.expect("infallible");
        let status = response.status();
        let headers = response.headers().clone();
        let streaming = headers.get("content-type").is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
        let body = if streaming {
            // Whatever arrives in a moment; the stream of every run never ends on its own.
            let mut frames = response.into_body().into_data_stream();
            let mut bytes = Vec::new();
            let deadline = tokio::time::Instant::now() + Duration::from_millis(300);
            while let Ok(Some(Ok(chunk))) = tokio::time::timeout_at(deadline, frames.next()).await {
                bytes.extend_from_slice(&chunk);
            }
            Bytes::from(bytes)
        } else {
            axum::body::to_bytes(response.into_body(), usize::MAX).await.expect("body")
        };
        let is_json = headers.get("content-type").is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
        let json = if is_json { serde_json::from_slice(&body).ok() } else { None };
        Reply { status, headers, body, json }
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.send(self.authorized(Request::get(path)).body(Body::empty()).expect("request")).await
    }

    pub async fn post(&self, path: &str, body: Value) -> Reply {
        let req = self.authorized(Request::post(path)).header("content-type", "application/json");
        self.send(req.body(Body::from(body.to_string())).expect("request")).await
    }

    /// Sends `get`, `post` and `post_raw` as an admin from now on (for setting up with auth on).
    pub async fn act_as_admin(&mut self) {
        self.admin = Some(self.token("setup-admin", Role::Admin).await.0);
    }

    pub fn authorized(&self, req: axum::http::request::Builder) -> axum::http::request::Builder {
        match &self.admin {
            Some(secret) => req.header("authorization", format!("Bearer {secret}")),
            None => req,
        }
    }

    /// A live token with this role: (secret, id).
    pub async fn token(&self, name: &str, role: Role) -> (String, String) {
        let (secret, row) = cairn_server::new_token(name, role, cairn_engine::now_ms()).expect("token");
        let id = row.id.clone();
        self.store.create_token(row).await.expect("create token");
        (secret, id)
    }

    /// The document this app serves.
    pub async fn document(&self) -> Value {
        let reply = self.get("/openapi.json").await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        reply.json.expect("/openapi.json is JSON")
    }
}

/// `(method, path)` of every described operation, with the operation.
pub fn operations(doc: &Value) -> Vec<(String, String, Value)> {
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("path item") {
            out.push((method.clone(), path.clone(), op.clone()));
        }
    }
    out
}

/// Follows a local `$ref` (`#/components/...`) until it reaches something that is not one.
pub fn resolve<'a>(doc: &'a Value, mut node: &'a Value) -> &'a Value {
    for _ in 0..16 {
        match node.get("$ref").and_then(Value::as_str) {
            Some(r) => {
                let pointer = r.strip_prefix('#').unwrap_or_else(|| panic!("non-local $ref {r}"));
                node = doc.pointer(pointer).unwrap_or_else(|| panic!("dangling $ref {r}"));
            }
            None => return node,
        }
    }
    panic!("$ref chain too long at {node}")
}

/// A validator for `schema`, whose `$ref`s point into the document's components.
pub fn validator(doc: &Value, schema: &Value) -> jsonschema::Validator {
    let root = json!({"allOf": [schema], "components": doc["components"]});
    jsonschema::draft202012::new(&root).unwrap_or_else(|e| panic!("schema {schema} does not compile: {e}"))
}

/// Why `instance` does not fit `schema`, or `None`.
pub fn misfit(doc: &Value, schema: &Value, instance: &Value) -> Option<String> {
    let v = validator(doc, schema);
    let errors: Vec<String> = v.iter_errors(instance).map(|e| format!("{} at {}", e, e.instance_path())).collect();
    (!errors.is_empty()).then(|| errors.join("; "))
}

/// Properties of `value` that `schema` does not declare (for objects whose schema does not
/// allow others), as JSON pointers. Holds the description to "nothing undocumented is sent".
pub fn undeclared(doc: &Value, schema: &Value, value: &Value, at: &str, out: &mut Vec<String>) {
    let schema = resolve(doc, schema);
    // A schema with alternatives: check against the first alternative the value fits.
    for key in ["oneOf", "anyOf"] {
        if let Some(options) = schema.get(key).and_then(Value::as_array) {
            if let Some(fit) = options.iter().find(|o| misfit(doc, o, value).is_none()) {
                undeclared(doc, fit, value, at, out);
            }
            return;
        }
    }
    match value {
        Value::Object(map) => {
            let mut declared: BTreeMap<String, Value> = BTreeMap::new();
            let mut open = false;
            collect_properties(doc, schema, &mut declared, &mut open);
            for (key, v) in map {
                match declared.get(key) {
                    Some(s) => undeclared(doc, s, v, &format!("{at}/{key}"), out),
                    None if open => {}
                    None => out.push(format!("{at}/{key}")),
                }
            }
        }
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items") {
                for (i, v) in items.iter().enumerate() {
                    undeclared(doc, item_schema, v, &format!("{at}/{i}"), out);
                }
            }
        }
        _ => {}
    }
}

/// The properties an object schema declares (through `allOf`), and whether it allows others.
fn collect_properties(doc: &Value, schema: &Value, declared: &mut BTreeMap<String, Value>, open: &mut bool) {
    let schema = resolve(doc, schema);
    if let Some(props) = schema.get("properties").and_then(Value::as_object) {
        for (k, v) in props {
            declared.insert(k.clone(), v.clone());
        }
    }
    match schema.get("additionalProperties") {
        Some(Value::Bool(false)) => {}
        Some(_) => *open = true,
        // An object schema with no properties at all is free-form.
        None if schema.get("properties").is_none() && schema.get("allOf").is_none() => *open = true,
        None => {}
    }
    for part in schema.get("allOf").and_then(Value::as_array).into_iter().flatten() {
        collect_properties(doc, part, declared, open);
    }
}

/// Parses the complete events of an SSE body into (id, event, data).
pub fn sse_events(text: &str) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    let complete = match text.rfind("\n\n") {
        Some(end) => &text[..end],
        None => return out,
    };
    for block in complete.split("\n\n") {
        let (mut id, mut event, mut data) = (String::new(), String::new(), String::new());
        for line in block.lines() {
            if let Some(v) = line.strip_prefix("id:") {
                id = v.trim().to_string();
            } else if let Some(v) = line.strip_prefix("event:") {
                event = v.trim().to_string();
            } else if let Some(v) = line.strip_prefix("data:") {
                data.push_str(v.strip_prefix(' ').unwrap_or(v));
            }
        }
        if !data.is_empty() {
            out.push((id, event, data));
        }
    }
    out
}
