//! `/openapi.json` describes exactly what the router serves, every example in it fits its
//! schema, every role it states is the one enforced, and the workflow file format it describes
//! is the one the parser reads.

mod common;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use cairn_server::{AuthMode, Role};
use common::{Api, misfit, operations, resolve};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};

/// What the router serves, read from its `Debug` output (axum has no API that lists routes):
/// path → methods (HEAD, which axum adds to every GET, left out).
fn routed(app: &Router) -> BTreeMap<String, BTreeSet<String>> {
    let text = format!("{app:?}");
    // The fallback router holds the catch-all routes; only the main one is the API.
    let main = &text[..text.find("fallback_router").expect("axum's Router Debug names its fallback_router")];
    let (mut paths, mut allowed) = (BTreeMap::new(), BTreeMap::new());
    for piece in main.split("RouteId(").skip(1) {
        let Some((id, rest)) = piece.split_once("): ") else { continue };
        if let Some(path) = rest.strip_prefix('"') {
            paths.insert(id.to_string(), path[..path.find('"').expect("closing quote")].to_string());
        } else if let Some(at) = rest.find("allow_header: Bytes(b\"") {
            let methods = &rest[at + "allow_header: Bytes(b\"".len()..];
            allowed.insert(id.to_string(), methods[..methods.find('"').expect("closing quote")].to_string());
        }
    }
    assert!(
        paths.len() >= 25 && paths.len() == allowed.len(),
        "could not read the routes from axum's Router Debug output (did its format change?): {paths:?} {allowed:?}"
    );
    paths
        .into_iter()
        .map(|(id, path)| {
            let methods = allowed[&id].split(',').filter(|m| *m != "HEAD").map(|m| m.to_ascii_lowercase()).collect();
            (path, methods)
        })
        .collect()
}

fn concrete(path: &str) -> String {
    let run = cairn_engine::new_run_id().to_string();
    path.replace("{id}", if path.starts_with("/v1/tokens") { "tok_0000000000000000" } else { &run })
        .replace("{step}", "s")
        .replace("{name}", "x")
}

#[tokio::test]
async fn every_served_route_is_described_and_every_described_route_is_served() {
    let api = Api::new(AuthMode::Off);
    let doc = api.document().await;
    let mut described: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (method, path, _) in operations(&doc) {
        described.entry(path).or_default().insert(method);
    }
    assert!(described.len() >= 25, "{described:?}");
    // The dashboard's static files are not API routes: they are the only ones not described.
    let mut served = routed(&api.app);
    for ui in ["/", "/ui/{file}"] {
        assert_eq!(served.remove(ui).map(|m| m.into_iter().collect::<Vec<_>>()), Some(vec!["get".to_string()]), "{ui}");
    }
    assert_eq!(served, described, "the router (left) and /openapi.json (right) disagree");

    // And over HTTP: every described method is served, every other one is refused with 405.
    for (path, methods) in &described {
        let uri = concrete(path);
        for method in ["get", "post", "put", "delete", "patch", "options", "trace"] {
            let req = Request::builder().method(method.to_ascii_uppercase().as_str()).uri(&uri);
            let reply = api.send(req.body(Body::empty()).expect("request")).await;
            let code = reply.json.as_ref().and_then(|j| j["error"]["code"].as_str()).unwrap_or("").to_string();
            if methods.contains(method) {
                assert!(
                    reply.status != StatusCode::METHOD_NOT_ALLOWED && code != "no_such_route",
                    "{method} {uri} is described but not served: {} {}",
                    reply.status,
                    reply.text()
                );
                assert!(reply.status.as_u16() < 500, "{method} {uri}: {} {}", reply.status, reply.text());
            } else {
                assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED, "{method} {uri} is served but not described");
                assert_eq!(code, "method_not_allowed", "{}", reply.text());
            }
        }
    }
}

/// Every `(where, example, schema)` in the document: examples of schemas (and of their
/// properties, at any depth), of parameters, and of request and response bodies.
fn examples(doc: &Value) -> Vec<(String, Value, Value)> {
    fn in_schema(at: &str, schema: &Value, out: &mut Vec<(String, Value, Value)>) {
        let Some(obj) = schema.as_object() else { return };
        let mut bare = obj.clone();
        bare.remove("example");
        bare.remove("examples");
        let bare = Value::Object(bare);
        if let Some(e) = obj.get("example") {
            out.push((format!("{at}/example"), e.clone(), bare.clone()));
        }
        for (i, e) in obj.get("examples").and_then(Value::as_array).into_iter().flatten().enumerate() {
            out.push((format!("{at}/examples/{i}"), e.clone(), bare.clone()));
        }
        for (k, v) in obj.get("properties").and_then(Value::as_object).into_iter().flatten() {
            in_schema(&format!("{at}/properties/{k}"), v, out);
        }
        for key in ["items", "additionalProperties"] {
            if let Some(v) = obj.get(key) {
                in_schema(&format!("{at}/{key}"), v, out);
            }
        }
        for key in ["allOf", "oneOf", "anyOf"] {
            for (i, v) in obj.get(key).and_then(Value::as_array).into_iter().flatten().enumerate() {
                in_schema(&format!("{at}/{key}/{i}"), v, out);
            }
        }
    }
    /// A parameter or a media type: `schema` with `example` / `examples` (a map of Example objects).
    fn in_holder(at: &str, holder: &Value, out: &mut Vec<(String, Value, Value)>) {
        let Some(schema) = holder.get("schema") else { return };
        if let Some(e) = holder.get("example") {
            out.push((format!("{at}/example"), e.clone(), schema.clone()));
        }
        for (name, e) in holder.get("examples").and_then(Value::as_object).into_iter().flatten() {
            let value = e.get("value").unwrap_or_else(|| panic!("{at}/examples/{name} has no value"));
            out.push((format!("{at}/examples/{name}"), value.clone(), schema.clone()));
        }
        in_schema(&format!("{at}/schema"), schema, out);
    }
    let mut out = Vec::new();
    for (name, schema) in doc["components"]["schemas"].as_object().expect("schemas") {
        in_schema(&format!("#/components/schemas/{name}"), schema, &mut out);
    }
    for (name, response) in doc["components"]["responses"].as_object().expect("responses") {
        for (ct, media) in response["content"].as_object().into_iter().flatten() {
            in_holder(&format!("#/components/responses/{name}/content/{ct}"), media, &mut out);
        }
    }
    for (method, path, op) in operations(doc) {
        let at = format!("{method} {path}");
        for (i, p) in op["parameters"].as_array().into_iter().flatten().enumerate() {
            in_holder(&format!("{at} parameters/{i}"), p, &mut out);
        }
        for (ct, media) in op["requestBody"]["content"].as_object().into_iter().flatten() {
            in_holder(&format!("{at} requestBody/{ct}"), media, &mut out);
        }
        for (status, response) in op["responses"].as_object().into_iter().flatten() {
            for (ct, media) in response["content"].as_object().into_iter().flatten() {
                in_holder(&format!("{at} responses/{status}/{ct}"), media, &mut out);
            }
        }
    }
    out
}

#[tokio::test]
async fn every_example_in_the_document_fits_its_schema() {
    let doc = Api::new(AuthMode::Off).document().await;
    let examples = examples(&doc);
    assert!(examples.len() >= 40, "only {} examples found", examples.len());
    let misfits: Vec<String> = examples
        .iter()
        .filter_map(|(at, example, schema)| misfit(&doc, schema, example).map(|why| format!("{at}: {why}")))
        .collect();
    assert!(misfits.is_empty(), "examples that do not fit their schemas:\n{}", misfits.join("\n"));
}

#[tokio::test]
async fn every_reference_resolves_and_every_operation_is_complete() {
    let doc = Api::new(AuthMode::Off).document().await;
    assert_eq!(doc["openapi"], "3.1.0");
    fn refs(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                if let Some(Value::String(r)) = m.get("$ref") {
                    out.push(r.clone());
                }
                m.values().for_each(|v| refs(v, out));
            }
            Value::Array(a) => a.iter().for_each(|v| refs(v, out)),
            _ => {}
        }
    }
    let mut all = Vec::new();
    refs(&doc, &mut all);
    for r in &all {
        let pointer = r.strip_prefix('#').unwrap_or_else(|| panic!("non-local $ref {r}"));
        assert!(doc.pointer(pointer).is_some(), "dangling $ref {r}");
    }
    let mut ids = BTreeSet::new();
    for (method, path, op) in operations(&doc) {
        let at = format!("{method} {path}");
        let id = op["operationId"].as_str().unwrap_or_else(|| panic!("{at} has no operationId"));
        assert!(ids.insert(id.to_string()), "{at}: operationId {id} is used twice");
        assert!(op["summary"].as_str().is_some_and(|s| !s.is_empty()), "{at} has no summary");
        let role = op["x-cairn-role"].as_str().unwrap_or_else(|| panic!("{at} has no x-cairn-role"));
        let responses = op["responses"].as_object().unwrap_or_else(|| panic!("{at} has no responses"));
        assert!(responses.keys().any(|s| s.starts_with('2')), "{at} has no success");
        if role != "public" {
            assert_eq!(op["security"], json!([{"bearer": []}]), "{at}");
            for status in ["401", "403"] {
                assert!(responses.contains_key(status), "{at} lacks {status}");
            }
        }
        if op.get("requestBody").is_some() {
            assert!(responses.contains_key("408"), "{at} reads a body but lacks 408");
        }
        for (status, response) in responses {
            let response = resolve(&doc, response);
            assert!(response["description"].as_str().is_some_and(|d| !d.is_empty()), "{at} {status}");
            if status.starts_with('4') || status.starts_with('5') {
                let schema = &response["content"]["application/json"]["schema"];
                assert_eq!(schema["$ref"], "#/components/schemas/Error", "{at} {status} is not the Error shape");
            }
        }
        // A creation says where the new thing is.
        if let Some(created) = responses.get("201").filter(|_| path != "/v1/tokens") {
            assert!(created["headers"]["Location"]["required"] == true, "{at} 201 lacks a required Location");
        }
        for p in op["parameters"].as_array().into_iter().flatten() {
            assert!(p["schema"].is_object(), "{at}: parameter {} has no schema", p["name"]);
            let types = &p["schema"]["type"];
            assert!(!types.as_array().is_some_and(|t| t.contains(&json!("null"))), "{at}: {} may be null", p["name"]);
            if p["in"] == "path" {
                assert_eq!(p["required"], true, "{at}: {}", p["name"]);
                assert!(path.contains(&format!("{{{}}}", p["name"].as_str().unwrap_or(""))), "{at}: {}", p["name"]);
            }
        }
        let in_path = path.matches('{').count();
        let described = op["parameters"].as_array().map_or(0, |ps| ps.iter().filter(|p| p["in"] == "path").count());
        assert_eq!(in_path, described, "{at}: every path parameter is described");
    }
    assert!(ids.len() >= 30, "{ids:?}");
}

#[tokio::test]
async fn every_operation_needs_exactly_the_role_it_documents() {
    let api = Api::new(AuthMode::On);
    let doc = api.document().await;
    let mut tokens = BTreeMap::new();
    for role in [Role::Viewer, Role::Operator, Role::Admin] {
        tokens.insert(role, api.token(role.as_str(), role).await.0);
    }
    for (method, path, op) in operations(&doc) {
        let role = op["x-cairn-role"].as_str().expect("x-cairn-role");
        let uri = concrete(&path);
        let send = |token: Option<&String>| {
            let mut req = Request::builder().method(method.to_ascii_uppercase().as_str()).uri(&uri);
            if let Some(t) = token {
                req = req.header("authorization", format!("Bearer {t}"));
            }
            if method == "post" {
                req = req.header("content-type", "application/json");
            }
            api.send(req.body(Body::from(if method == "post" { "{}" } else { "" })).expect("request"))
        };
        let anonymous = send(None).await;
        if role == "public" {
            assert!(anonymous.status.as_u16() < 400, "{method} {path} is public: {}", anonymous.text());
            continue;
        }
        assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED, "{method} {path} without a token");
        let needed = Role::parse(role).unwrap_or_else(|| panic!("{method} {path}: unknown role {role}"));
        for (have, token) in &tokens {
            let reply = send(Some(token)).await;
            let refused = reply.status == StatusCode::FORBIDDEN;
            assert_eq!(
                refused,
                *have < needed,
                "{method} {path} (needs {role}) as {have:?}: {} {}",
                reply.status,
                reply.text()
            );
            assert_ne!(reply.status, StatusCode::UNAUTHORIZED, "{method} {path}: {}", reply.text());
        }
    }
}

/// The field names the parser accepts at one place in a definition, from its own message for an
/// unknown field ("allowed here: a, b, c").
fn accepted_fields(definition: Value) -> BTreeSet<String> {
    let text = definition.to_string();
    let problems = cairn_core::validate::parse_definition(&text, "probe.json", &cairn_engine::kinds::builtin().specs())
        .expect_err("zzz is refused");
    let message = problems
        .iter()
        .map(|p| p.to_string())
        .find(|m| m.contains("allowed here: "))
        .unwrap_or_else(|| panic!("the parser no longer lists the fields it allows: {problems:?}"));
    let list = &message[message.find("allowed here: ").expect("list") + "allowed here: ".len()..];
    list.split(", ").map(|f| f.trim().trim_matches('`').to_string()).collect()
}

fn described_fields(doc: &Value, schema: &str) -> BTreeSet<String> {
    let s = &doc["components"]["schemas"][schema];
    assert_eq!(s["additionalProperties"], false, "{schema} allows fields the parser refuses");
    s["properties"].as_object().unwrap_or_else(|| panic!("{schema} has no properties")).keys().cloned().collect()
}

#[tokio::test]
async fn the_described_workflow_format_is_the_one_the_parser_reads() {
    let doc = Api::new(AuthMode::Off).document().await;
    let step = |extra: Value| {
        let mut s = json!({"id": "a", "kind": "noop"});
        s.as_object_mut().expect("object").extend(extra.as_object().expect("object").clone());
        json!({"name": "w", "steps": [s]})
    };
    let cases = [
        ("WorkflowDefinition", json!({"name": "w", "steps": [{"id": "a", "kind": "noop"}], "zzz": 1})),
        ("WorkflowStep", step(json!({"zzz": 1}))),
        ("WorkflowRetry", step(json!({"retry": {"zzz": 1}}))),
        ("WorkflowInject", step(json!({"inject": {"zzz": 1}}))),
        ("WorkflowApproval", step(json!({"approval": {"zzz": 1}}))),
        ("WorkflowCompensation", step(json!({"compensate": {"kind": "noop", "zzz": 1}}))),
        ("WorkflowDefaults", json!({"name": "w", "defaults": {"zzz": 1}, "steps": [{"id": "a", "kind": "noop"}]})),
        ("WorkflowInput", json!({"name": "w", "inputs": {"x": {"zzz": 1}}, "steps": [{"id": "a", "kind": "noop"}]})),
    ];
    for (schema, probe) in cases {
        assert_eq!(
            described_fields(&doc, schema),
            accepted_fields(probe),
            "{schema}: described (left) vs parsed (right)"
        );
    }
    // The described examples are definitions the parser accepts.
    let definition = &doc["components"]["schemas"]["WorkflowDefinition"];
    for example in definition["examples"].as_array().expect("examples") {
        cairn_core::validate::parse_definition(
            &example.to_string(),
            "example.json",
            &cairn_engine::kinds::builtin().specs(),
        )
        .unwrap_or_else(|p| panic!("the described example does not parse: {p:?}"));
    }
    let kinds = &doc["components"]["schemas"]["StepKind"]["enum"];
    assert_eq!(kinds, &json!(cairn_engine::kinds::builtin().specs().names()));
}

#[tokio::test]
async fn every_example_workflow_in_the_repository_fits_the_described_format() {
    let doc = Api::new(AuthMode::Off).document().await;
    let schema = json!({"$ref": "#/components/schemas/WorkflowDefinition"});
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).expect("examples/") {
        let path = entry.expect("entry").path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("read");
        let value: Value = serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let why = misfit(&doc, &schema, &value);
        // `invalid.yaml` shows `cairn validate` reporting problems: the schema sees them too.
        if path.file_name().is_some_and(|n| n.to_string_lossy().starts_with("invalid")) {
            assert!(why.is_some(), "{} fits WorkflowDefinition, but it is invalid", path.display());
        } else if let Some(why) = why {
            panic!("{} does not fit WorkflowDefinition: {why}", path.display());
        }
        checked += 1;
    }
    assert!(checked >= 3, "only {checked} examples in {}", dir.display());
}
