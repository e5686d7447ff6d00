//! The in-repo API fuzzer: requests generated from `/openapi.json` itself — valid ones (from the
//! schemas, the examples and real fixtures) and invalid ones (broken JSON, wrong types, missing
//! and unknown fields, bad path and query values, wrong content types, oversized bodies, bad
//! headers) — are sent to the real app with auth off and on (no token, a bad one, every role).
//! Every answer must have a status the operation documents, the documented content type and
//! headers, a body that fits the documented schema and declares nothing more, and an error code
//! the documented response names. Each operation's first request is a canonical one that must
//! succeed, so that every success body is checked too.
//!
//! `CAIRN_CONFORMANCE_CASES` (per operation, kind and auth mode; default 32) and
//! `CAIRN_CONFORMANCE_SEED` (default 1) change how much and what is tried.

mod common;

use axum::body::Body;
use axum::http::{HeaderValue, Request};
use cairn_server::{AuthMode, Role};
use common::{Api, MAX_BODY, misfit, operations, resolve, sse_events, undeclared};
use proptest::strategy::{Strategy, ValueTree};
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Real things to point requests at, by parameter name.
struct Fixtures {
    pools: BTreeMap<&'static str, Vec<String>>,
    /// Runs with their steps (for `{id}` with `{step}`, and a rerun's `from`).
    runs: Vec<(String, Vec<&'static str>)>,
    completed: String,
    tokens: Vec<String>,
}

impl Fixtures {
    /// Fresh runs for the next operation: waiting at a gate, on a retry timer, failed, paused
    /// (the previous operation may have cancelled, decided, resumed or retried the last ones).
    async fn refresh(&mut self, api: &Api) {
        let mut runs = vec![(self.completed.clone(), vec!["generate_summary", "send_email"])];
        // The step waiting for a decision is listed more often: most decisions should meet one.
        let fresh = [
            ("gated", "WAITING", vec!["review", "review", "draft"]),
            ("waits", "WAITING", vec!["flaky"]),
            ("fails", "FAILED", vec!["broken"]),
        ];
        for (workflow, status, steps) in fresh {
            let id = start(api, json!({"workflow": workflow})).await;
            wait_until(api, &id, status).await;
            runs.push((id, steps));
        }
        for _ in 0..2 {
            let paused = start(api, json!({"workflow": "gated"})).await;
            wait_until(api, &paused, "WAITING").await;
            assert_eq!(api.post(&format!("/v1/runs/{paused}/pause"), json!(null)).await.status, 200);
            runs.push((paused, vec!["review"]));
        }
        self.pools.insert("id", runs.iter().map(|(id, _)| id.clone()).collect());
        // The run another is compared with (`/v1/runs/{id}/diff/{other}`).
        self.pools.insert("other", runs.iter().map(|(id, _)| id.clone()).collect());
        self.runs = runs;
    }

    /// A task of an external step, claimed, for the worker operations.
    async fn claim_task(&mut self, api: &Api) {
        let id = start(api, json!({"workflow": "external"})).await;
        let claim = json!({"worker": "fuzz", "queues": ["fuzz"], "wait_ms": 10_000});
        let reply = api.post("/v1/workers/claim", claim).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        let tasks = reply.json.expect("json")["tasks"].clone();
        assert_eq!(tasks[0]["run_id"], id.as_str(), "{tasks}");
        self.pools.insert("task", vec![tasks[0]["token"].as_str().expect("token").to_string()]);
    }

    /// A run and one of its steps, each run as likely as the others.
    fn target(&self, g: &mut Gen) -> (String, String) {
        let (id, steps) = g.pick(&self.runs);
        (id, g.pick(&steps).to_string())
    }

    /// The run and step an operation's first request aims at: one it can succeed on.
    fn canonical(&self, path: &str) -> (String, String) {
        let index = if path.contains("/approvals/") {
            1 // waiting at its gate
        } else if path.ends_with("/cancel") || path.ends_with("/pause") || path.contains("/signals/") {
            2 // waiting on a timer
        } else if path.ends_with("/retry") {
            3 // failed
        } else if path.ends_with("/resume") {
            4 // paused
        } else {
            0 // completed
        };
        let (id, steps) = &self.runs[index];
        (id.clone(), steps[0].to_string())
    }
}

async fn wait_until(api: &Api, id: &str, status: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let view = api.get(&format!("/v1/runs/{id}")).await.json.unwrap_or(Value::Null);
        if view["status"] == status {
            return;
        }
        assert!(Instant::now() < deadline, "run {id} never became {status}: {view}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn start(api: &Api, body: Value) -> String {
    let reply = api.post("/v1/runs", body).await;
    assert_eq!(reply.status, 201, "{}", reply.text());
    reply.json.expect("json")["id"].as_str().expect("id").to_string()
}

/// Workflows and runs in every state the API can steer: completed, waiting at a gate, waiting
/// on a retry timer, failed; and tokens (ids and names) to revoke.
async fn seed(api: &Api, doc: &Value) -> Fixtures {
    let gated = json!({"name": "gated", "steps": [
        {"id": "draft", "kind": "echo", "with": {"text": "hi"}},
        {"id": "review", "kind": "noop", "needs": ["draft"], "approval": {"prompt": "ship it?"}},
    ]});
    let waits = json!({"name": "waits", "steps": [{"id": "flaky", "kind": "noop", "inject": {"fail_times": 1},
        "retry": {"initial_delay": "1h", "max_delay": "1h", "jitter": 0}}]});
    let fails = json!({"name": "fails", "steps": [{"id": "broken", "kind": "fail", "retry": {"max_attempts": 1}}]});
    let external = json!({"name": "external", "kinds": {"ext": {"queue": "fuzz"}},
        "steps": [{"id": "work", "kind": "ext", "with": {"n": 1}}]});
    for definition in [gated, waits, fails, external] {
        assert_eq!(api.post("/v1/workflows", definition).await.status, 201);
    }
    // The described example, which `POST /v1/runs`'s example starts by name.
    let example = doc["components"]["schemas"]["WorkflowDefinition"]["examples"][0].clone();
    assert_eq!(api.post("/v1/workflows", example).await.status, 201);

    let completed = start(api, json!({"goal": "generate summary and send email"})).await;
    wait_until(api, &completed, "COMPLETED").await;
    let mut token_ids = Vec::new();
    for i in 0..2 {
        token_ids.push(api.token(&format!("fuzz-{i}"), Role::Viewer).await.1);
    }
    let mut tokens = Vec::new();
    for role in [Role::Viewer, Role::Worker, Role::Operator, Role::Admin] {
        tokens.push(api.token(&format!("as-{}", role.as_str()), role).await.0);
    }
    let mut pools = BTreeMap::new();
    pools.insert("token", token_ids.into_iter().chain(["fuzz-0".to_string()]).collect());
    pools.insert("name", ["gated", "waits", "fails", "summary-and-email", "go"].map(String::from).to_vec());
    // Short waits keep the test quick; the schema allows up to the server's 60 s.
    pools.insert("wait", ["0", "50ms", "1s"].map(String::from).to_vec());
    let mut fixtures = Fixtures { pools, runs: Vec::new(), completed, tokens };
    fixtures.refresh(api).await;
    fixtures
}

/// Values drawn from a seeded generator, shaped by the document's schemas.
struct Gen<'a> {
    doc: &'a Value,
    runner: TestRunner,
    /// Take a schema's example whenever it has one (for canonical requests).
    examples_first: bool,
}

impl Gen<'_> {
    fn draw<S: Strategy>(&mut self, s: S) -> S::Value {
        s.new_tree(&mut self.runner).expect("a value").current()
    }

    fn coin(&mut self, p: f64) -> bool {
        self.draw(proptest::bool::weighted(p))
    }

    fn pick<T: Clone>(&mut self, items: &[T]) -> T {
        let i = self.draw(0..items.len());
        items[i].clone()
    }

    fn matching(&mut self, pattern: &str) -> String {
        let bare = pattern.strip_prefix('^').unwrap_or(pattern);
        let bare = bare.strip_suffix('$').unwrap_or(bare);
        let strategy = proptest::string::string_regex(bare).unwrap_or_else(|e| panic!("pattern {pattern}: {e}"));
        self.draw(strategy)
    }

    fn text(&mut self, min: usize, max: usize) -> String {
        let len = self.draw(min..=max.max(min));
        let alphabet: Vec<char> = "abcxyz_-.09 AZé✓".chars().collect();
        (0..len).map(|_| self.pick(&alphabet)).collect()
    }

    fn any(&mut self, depth: u32) -> Value {
        match self.draw(0..if depth > 1 { 4 } else { 6 }) {
            0 => Value::Null,
            1 => json!(self.coin(0.5)),
            2 => json!(self.draw(-1000i64..1000)),
            3 => json!(self.text(0, 8)),
            4 => Value::Array((0..self.draw(0..3usize)).map(|_| self.any(depth + 1)).collect()),
            _ => {
                let mut m = Map::new();
                for _ in 0..self.draw(0..3usize) {
                    let k = self.text(1, 6);
                    m.insert(k, self.any(depth + 1));
                }
                Value::Object(m)
            }
        }
    }

    /// A value the schema accepts (mostly: the generator does not solve every constraint, and
    /// the checks do not depend on it).
    fn value(&mut self, schema: &Value, depth: u32) -> Value {
        let doc = self.doc;
        let schema = resolve(doc, schema);
        if let Some(examples) = schema.get("examples").and_then(Value::as_array).filter(|e| !e.is_empty())
            && (self.examples_first || self.coin(0.3))
        {
            return if self.examples_first { examples[0].clone() } else { self.pick(examples) };
        }
        if let Some(example) = schema.get("example").filter(|_| self.examples_first) {
            return example.clone();
        }
        if let Some(c) = schema.get("const") {
            return c.clone();
        }
        if let Some(values) = schema.get("enum").and_then(Value::as_array) {
            return self.pick(values);
        }
        if let Some(parts) = schema.get("allOf").and_then(Value::as_array) {
            let mut merged = Map::new();
            for part in parts {
                if let Value::Object(m) = self.value(part, depth) {
                    merged.extend(m);
                }
            }
            return Value::Object(merged);
        }
        let alternatives = schema.get("oneOf").or_else(|| schema.get("anyOf")).and_then(Value::as_array);
        if let Some(options) = alternatives
            && schema.get("properties").is_none()
        {
            let option = self.pick(options);
            return self.value(&option, depth);
        }
        let types: Vec<&str> = match schema.get("type") {
            Some(Value::String(t)) => vec![t.as_str()],
            Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
            _ if schema.get("properties").is_some() => vec!["object"],
            _ => return self.any(depth),
        };
        let non_null: Vec<&str> = types.iter().copied().filter(|t| *t != "null").collect();
        let ty = if non_null.is_empty() || (types.contains(&"null") && self.coin(0.1)) {
            "null"
        } else {
            self.pick(&non_null)
        };
        let number = |key: &str| schema.get(key).and_then(Value::as_f64);
        match ty {
            "null" => Value::Null,
            "boolean" => json!(self.coin(0.5)),
            "string" => match schema.get("pattern").and_then(Value::as_str) {
                Some(p) => json!(self.matching(p)),
                None => {
                    let min = number("minLength").unwrap_or(0.0) as usize;
                    let max = number("maxLength").map_or(12, |m| (m as usize).min(min + 12));
                    json!(self.text(min, max))
                }
            },
            "integer" => {
                let min = number("minimum").map_or(-1_000_000, |m| m as i64);
                let max = number("maximum").map_or(1_000_000, |m| m as i64).max(min);
                if self.coin(0.1) { json!(max) } else { json!(self.draw(min..=max)) }
            }
            "number" => {
                let min = number("minimum").unwrap_or(-1e6);
                let max = number("maximum").unwrap_or(1e6).max(min);
                json!(self.draw(min..=max))
            }
            "array" => {
                let min = number("minItems").unwrap_or(0.0) as usize;
                let items = schema.get("items").cloned().unwrap_or(json!({}));
                let n = if depth > 3 { min } else { self.draw(min..=min + 2) };
                Value::Array((0..n).map(|_| self.value(&items, depth + 1)).collect())
            }
            _ => self.object(schema, depth),
        }
    }

    fn object(&mut self, schema: &Value, depth: u32) -> Value {
        let required: BTreeSet<&str> =
            schema.get("required").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str).collect();
        let mut out = Map::new();
        if let Some(props) = schema.get("properties").and_then(Value::as_object) {
            // With alternatives that each require fields, satisfy one and leave out the others'.
            let names = |option: &Value| -> BTreeSet<String> {
                option["required"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .map(String::from)
                    .collect()
            };
            let mut must: BTreeSet<String> = required.iter().map(|s| s.to_string()).collect();
            let mut never = BTreeSet::new();
            if let Some(options) = schema.get("oneOf").and_then(Value::as_array) {
                let chosen = self.pick(options);
                for option in options {
                    never.extend(names(option));
                }
                must.extend(names(&chosen));
            }
            for (k, s) in props {
                // A canonical request is the plainest that must succeed: what is required only.
                let optional = depth < 3 && !never.contains(k) && !self.examples_first && self.coin(0.4);
                if must.contains(k) || optional {
                    out.insert(k.clone(), self.value(s, depth + 1));
                }
            }
        }
        match schema.get("additionalProperties") {
            Some(Value::Object(s)) if depth < 3 && self.coin(0.3) => {
                let k = self.text(1, 8);
                out.insert(k, self.value(&Value::Object(s.clone()), depth + 1));
            }
            Some(Value::Bool(true)) if depth < 3 && self.coin(0.3) => {
                let k = self.text(1, 8);
                out.insert(k, self.any(depth + 1));
            }
            _ => {}
        }
        Value::Object(out)
    }

    /// A value of another type than the schema wants.
    fn wrong(&mut self, schema: &Value) -> Value {
        let schema = resolve(self.doc, schema);
        let ty = schema.get("type").map(|t| t.to_string()).unwrap_or_default();
        let candidates: Vec<Value> = [json!("text"), json!(42), json!(-1), json!(true), json!([1, 2]), json!({"k": 1})]
            .into_iter()
            .filter(|v| {
                let kind = match v {
                    Value::String(_) => "string",
                    Value::Number(_) => "integer",
                    Value::Bool(_) => "boolean",
                    Value::Array(_) => "array",
                    _ => "object",
                };
                !ty.contains(kind)
            })
            .collect();
        if candidates.is_empty() { json!(null) } else { self.pick(&candidates) }
    }
}

/// One request, kept whole so that a failure can show it.
#[derive(Clone, Debug)]
struct Case {
    kind: &'static str,
    method: String,
    uri: String,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
}

impl Case {
    fn request(&self) -> Request<Body> {
        let mut b = Request::builder().method(self.method.to_ascii_uppercase().as_str()).uri(&self.uri);
        for (k, v) in &self.headers {
            b = b.header(k.as_str(), HeaderValue::from_bytes(v).expect("header value"));
        }
        b.body(Body::from(self.body.clone())).expect("request")
    }
}

fn encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Builds a valid or an invalid request for the operation.
/// What a generated request is: each operation's first is canonical (aimed at a run it can
/// succeed on, with the first example of each body: it must succeed), then valid and invalid
/// ones alternate.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Canonical,
    Valid,
    Invalid,
}

fn generate(g: &mut Gen, fx: &Fixtures, method: &str, path: &str, op: &Value, kind: Kind) -> Case {
    let canonical = kind == Kind::Canonical;
    let params: Vec<Value> = op["parameters"].as_array().cloned().unwrap_or_default();
    let pool_of = |name: &str| {
        let key = if path.starts_with("/v1/tokens") && name == "id" { "token" } else { name };
        fx.pools.get(key)
    };
    // The one thing this invalid request gets wrong.
    let mistakes = [
        "path",
        "query",
        "header",
        "body-syntax",
        "body-type",
        "body-field",
        "body-missing",
        "content-type",
        "oversize",
        "empty",
    ];
    let mistake = if kind == Kind::Invalid { g.pick(&mistakes) } else { "" };

    // Most requests aim at a real run and one of its steps.
    let target = if canonical { Some(fx.canonical(path)) } else { g.coin(0.8).then(|| fx.target(g)) };
    let mut uri = path.to_string();
    let mut query = Vec::new();
    let mut headers: Vec<(String, Vec<u8>)> = Vec::new();
    for p in &params {
        let name = p["name"].as_str().expect("name");
        let schema = &p["schema"];
        let aimed = match (&target, name) {
            (Some((id, _)), "id") if !path.starts_with("/v1/tokens") => Some(id.clone()),
            (Some((_, step)), "step") => Some(step.clone()),
            _ => None,
        };
        let value = match pool_of(name) {
            _ if aimed.is_some() => aimed.unwrap_or_default(),
            Some(pool) if canonical => pool[0].clone(),
            Some(pool) if g.coin(0.7) => g.pick(pool),
            _ => match g.value(schema, 0) {
                Value::String(s) => s,
                other => other.to_string(),
            },
        };
        match p["in"].as_str() {
            Some("path") => {
                let value = if mistake == "path" && g.coin(0.7) {
                    g.pick(&[
                        "not an id".to_string(),
                        "wf_".to_string(),
                        format!("wf_{}", "x".repeat(70)),
                        "%00".into(),
                    ])
                } else {
                    value
                };
                uri = uri.replace(&format!("{{{name}}}"), &encode(&value));
            }
            Some("query") => {
                if mistake == "query" && g.coin(0.6) {
                    query.push(format!(
                        "{name}={}",
                        g.pick(&["abc", "-1", "0", "1.5", "99999999999999999999999", "!!"])
                    ));
                } else if !canonical && g.coin(0.5) {
                    query.push(format!("{name}={}", encode(&value)));
                }
            }
            Some("header") => {
                if mistake == "header" && g.coin(0.7) {
                    let bad: Vec<u8> = g.pick(&[vec![b'x'; 300], b"abc".to_vec(), vec![0xE9, b'a'], b"   ".to_vec()]);
                    headers.push((name.to_string(), bad));
                } else if !canonical
                    && g.coin(0.5)
                    && !value.is_empty()
                    && value.bytes().all(|b| (0x20..0x7F).contains(&b))
                {
                    headers.push((name.to_string(), value.into_bytes()));
                }
            }
            _ => {}
        }
    }
    if mistake == "query" && query.is_empty() {
        query.push("zz_unknown=1".into());
    }
    if !query.is_empty() {
        uri = format!("{uri}?{}", query.join("&"));
    }

    let mut body = Vec::new();
    if let Some(content) = op["requestBody"]["content"].as_object() {
        let types: Vec<&String> = content.keys().collect();
        let ct = if canonical { types[0].clone() } else { g.pick(&types).clone() };
        let schema = &content[&ct]["schema"];
        let examples: Vec<Value> = resolve(g.doc, schema)["examples"].as_array().cloned().unwrap_or_default();
        let mut value = match examples.first() {
            Some(first) if canonical => first.clone(),
            Some(_) if g.coin(0.5) => g.pick(&examples),
            _ => g.value(schema, 0),
        };
        if let (Some(from), Some((_, step))) = (value.get_mut("from"), &target) {
            *from = json!(step);
        }
        // Worker requests mostly name a real task (claimed for this operation), and claims wait
        // briefly: the schema allows a minute.
        if let Some(obj) = value.as_object_mut() {
            if let (Some(token), Some(pool)) = (obj.get_mut("token"), fx.pools.get("task"))
                && (canonical || g.coin(0.8))
            {
                *token = json!(pool[0]);
            }
            if path == "/v1/workers/claim" {
                obj.insert("wait_ms".into(), json!(g.pick(&[0, 50])));
            }
        }
        let resolved = resolve(g.doc, schema);
        match mistake {
            "body-type" => value = g.wrong(schema),
            "body-field" => {
                if let (Some(obj), Some(props)) = (value.as_object_mut(), resolved["properties"].as_object()) {
                    let keys: Vec<&String> = props.keys().collect();
                    let key = g.pick(&keys).clone();
                    let wrong = g.wrong(&props[&key]);
                    obj.insert(key, wrong);
                } else if let Some(obj) = value.as_object_mut() {
                    obj.insert("zz_unknown".into(), json!(1));
                }
                if g.coin(0.5)
                    && let Some(obj) = value.as_object_mut()
                {
                    obj.insert("zz_unknown".into(), json!(1));
                }
            }
            "body-missing" => {
                if let (Some(obj), Some(required)) = (value.as_object_mut(), resolved["required"].as_array()) {
                    for r in required.iter().filter_map(Value::as_str) {
                        obj.remove(r);
                    }
                }
            }
            _ => {}
        }
        body = match mistake {
            "body-syntax" => {
                g.pick(&[b"{\"goal\": ".to_vec(), b"not json".to_vec(), b"{\"a\":1,}".to_vec(), b"\xff\xfe".to_vec()])
            }
            "empty" => Vec::new(),
            "oversize" => format!("{{\"goal\": \"{}\"}}", "x".repeat(MAX_BODY)).into_bytes(),
            _ => value.to_string().into_bytes(),
        };
        let ct = if mistake == "content-type" {
            g.pick(&["text/plain", "application/xml", "multipart/form-data"]).to_string()
        } else {
            ct
        };
        headers.push(("content-type".into(), ct.into_bytes()));
        if mistake == "oversize" && g.coin(0.5) {
            headers.push(("content-length".into(), body.len().to_string().into_bytes()));
        }
    } else if mistake.starts_with("body") || mistake == "oversize" || mistake == "content-type" {
        // An operation without a body gets one anyway.
        body = if mistake == "oversize" { vec![b'x'; MAX_BODY + 1] } else { b"{\"unexpected\": true}".to_vec() };
        headers.push(("content-type".into(), b"application/json".to_vec()));
        if mistake == "oversize" {
            headers.push(("content-length".into(), body.len().to_string().into_bytes()));
        }
    }
    let kind = match kind {
        Kind::Canonical => "canonical",
        Kind::Valid => "valid",
        Kind::Invalid => mistake,
    };
    Case { kind, method: method.to_string(), uri, headers, body }
}

/// Why the reply breaks the operation's description, if it does.
fn check(doc: &Value, op: &Value, reply: &common::Reply) -> Option<String> {
    let status = reply.status.as_u16().to_string();
    let Some(documented) = op["responses"].get(&status) else {
        return Some(format!("status {status} is not documented"));
    };
    let documented = resolve(doc, documented);
    for (name, header) in documented["headers"].as_object().into_iter().flatten() {
        if header["required"] == true && reply.headers.get(name.as_str()).is_none() {
            return Some(format!("the documented header {name} is missing"));
        }
    }
    let Some(content) = documented["content"].as_object() else {
        return (!reply.body.is_empty()).then(|| "a body where none is documented".to_string());
    };
    let ct = reply.content_type().split(';').next().unwrap_or("").trim().to_string();
    let Some(media) = content.get(&ct) else {
        return Some(format!("content type {ct:?}, documented: {:?}", content.keys().collect::<Vec<_>>()));
    };
    let schema = &media["schema"];
    if ct == "text/event-stream" {
        for (id, event, data) in sse_events(&reply.text()) {
            let event_value = json!({"id": id, "event": event, "data": data});
            if let Some(why) = misfit(doc, schema, &event_value) {
                return Some(format!("event {event_value}: {why}"));
            }
            let data_schema = &resolve(doc, schema)["properties"]["data"]["contentSchema"];
            let parsed: Value = serde_json::from_str(&data).unwrap_or(Value::Null);
            if let Some(why) = misfit(doc, data_schema, &parsed) {
                return Some(format!("event data {data}: {why}"));
            }
        }
        return None;
    }
    if ct == "text/plain" && op["operationId"] == "graphql_schema" {
        let text = reply.text();
        return (!text.contains("type Query")).then(|| format!("not a GraphQL schema: {text:.200}"));
    }
    if ct == "text/plain" {
        // Prometheus text: lines of `# TYPE`/`# HELP` comments and `name{labels} value` samples.
        let text = reply.text();
        let misfit = text.lines().find(|l| {
            !l.is_empty() && !l.starts_with('#') && l.rsplit_once(' ').is_none_or(|(_, v)| v.parse::<f64>().is_err())
        });
        return misfit.map(|l| format!("a line that is not a sample: {l:?}"));
    }
    let Some(json) = &reply.json else {
        return Some("the body is not JSON".to_string());
    };
    if let Some(why) = misfit(doc, schema, json) {
        return Some(format!("the body does not fit: {why}"));
    }
    let mut extra = Vec::new();
    undeclared(doc, schema, json, "", &mut extra);
    if !extra.is_empty() {
        return Some(format!("undocumented fields: {extra:?}"));
    }
    if let Some(code) = json["error"]["code"].as_str() {
        let description = documented["description"].as_str().unwrap_or("");
        if !description.contains(&format!("`{code}`")) {
            return Some(format!("error code `{code}` is not named in the documented response: {description}"));
        }
    }
    None
}

async fn fuzz(auth: AuthMode) {
    let mut api = Api::new(auth);
    if auth == AuthMode::On {
        api.act_as_admin().await;
    }
    let doc = api.document().await;
    let mut fx = seed(&api, &doc).await;
    let cases = env_number("CAIRN_CONFORMANCE_CASES", 32) as usize;
    let seed = env_number("CAIRN_CONFORMANCE_SEED", 1);
    let mut seed_bytes = [0u8; 32];
    seed_bytes[..8].copy_from_slice(&seed.to_le_bytes());
    let runner = TestRunner::new_with_rng(Config::default(), TestRng::from_seed(RngAlgorithm::ChaCha, &seed_bytes));
    let mut g = Gen { doc: &doc, runner, examples_first: false };
    let mut failures = Vec::new();
    let mut sent = 0;
    for (method, path, op) in operations(&doc) {
        let at = format!("{} {path}", method.to_ascii_uppercase());
        fx.refresh(&api).await;
        if path.starts_with("/v1/workers/") {
            fx.claim_task(&api).await;
        }
        let streaming = path.ends_with("/stream");
        let n = if streaming { cases.div_ceil(2) } else { cases };
        let mut previous: Option<Case> = None;
        for i in 0..2 * n {
            let kind = match i {
                0 => Kind::Canonical,
                _ if i % 2 == 0 => Kind::Valid,
                _ => Kind::Invalid,
            };
            let valid = kind != Kind::Invalid;
            let mut case = match &previous {
                // The same request again: replays (idempotency keys, decisions) answer too.
                Some(p) if kind == Kind::Valid && g.coin(0.15) => p.clone(),
                _ => {
                    g.examples_first = kind == Kind::Canonical;
                    generate(&mut g, &fx, &method, &path, &op, kind)
                }
            };
            if auth == AuthMode::On && kind == Kind::Canonical {
                let admin = fx.tokens.last().expect("an admin token");
                case.headers.push(("authorization".into(), format!("Bearer {admin}").into_bytes()));
            } else if auth == AuthMode::On {
                // Mostly a real token of some role; sometimes none, or one that is not a token.
                let token = if g.coin(0.8) {
                    Some(g.pick(&fx.tokens))
                } else {
                    g.pick(&[None, Some("cairn_not_a_token".to_string())])
                };
                if let Some(token) = token {
                    case.headers.push(("authorization".into(), format!("Bearer {token}").into_bytes()));
                }
            }
            let reply = api.send(case.request()).await;
            sent += 1;
            let why = match check(&doc, &op, &reply) {
                // So that every operation's success body is checked too.
                None if kind == Kind::Canonical && !reply.status.is_success() => {
                    Some("the canonical request (a real target, the examples) did not succeed".to_string())
                }
                why => why,
            };
            if let Some(why) = why {
                failures.push(format!(
                    "{at} ({} request) {} {}\n  headers: {:?}\n  body: {}\n  answer: {} {}\n  why: {why}",
                    case.kind,
                    case.method.to_ascii_uppercase(),
                    case.uri,
                    case.headers
                        .iter()
                        .map(|(k, v)| (k.clone(), String::from_utf8_lossy(v).into_owned()))
                        .collect::<Vec<_>>(),
                    String::from_utf8_lossy(&case.body[..case.body.len().min(300)]),
                    reply.status,
                    &reply.text()[..reply.text().len().min(400)],
                ));
            }
            if valid {
                previous = Some(case);
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {sent} answers break the description (seed {seed}):\n{}",
        failures.len(),
        failures.iter().take(15).cloned().collect::<Vec<_>>().join("\n")
    );
}

#[tokio::test]
async fn generated_requests_get_only_documented_answers_with_auth_off() {
    fuzz(AuthMode::Off).await;
}

#[tokio::test]
async fn generated_requests_get_only_documented_answers_with_auth_on() {
    fuzz(AuthMode::On).await;
}
