//! The OpenAPI 3.1 description served at `/openapi.json`, generated from the route table
//! (`routes.rs`) and the types the handlers use. Built once, on its first request.
//!
//! What every operation shares is added here rather than repeated on each: its role and
//! security (from the same rule the auth layer applies), and the answers any request can get
//! whatever it asks (401/403 with auth on, 413 for a declared body over the limit, 408 for a
//! body that does not arrive, 503 when the server is full or the database is away, 500).

use crate::auth::required_role;
use crate::definition_schema::{DefinitionFile, InputFile};
use crate::error::ErrorBody;
use crate::routes::{Described, table};
use axum::body::Bytes;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use cairn_store::Store;
use serde_json::{Map, Value, json};
use std::sync::OnceLock;
use utoipa::openapi::path::Paths;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::tag::TagBuilder;
use utoipa::openapi::{ComponentsBuilder, InfoBuilder, OpenApiBuilder};
use utoipa::{PartialSchema, ToSchema};

const DESCRIPTION: &str = "Durable execution for AI-agent workflows: start runs from goals or \
definitions, follow their journals live, and steer them (cancel, pause, signal, approve, rerun).\n\n\
Every answer that is not a success is `{\"error\": {\"code\", \"message\", \"details\"}}` (the `Error` \
schema): `code` is stable for programs, `message` says what happened and how to fix it. A path \
that is no route answers 404 `no_such_route`; a method a route does not serve answers 405 \
`method_not_allowed`.\n\n\
With auth on, every operation but the probes and this document needs `Authorization: Bearer \
<token>` with at least the role in its `x-cairn-role` (`viewer` < `worker` < `operator` < `admin`).";

fn tags() -> Vec<utoipa::openapi::tag::Tag> {
    [
        ("runs", "Start runs and read them: state, steps, logs, journal, live events."),
        ("steering", "Change a run's course: cancel, pause, resume, signal, rerun, retry."),
        ("approvals", "What waits for a person, and the decision."),
        ("providers", "Model providers from the configuration, and their circuit breakers."),
        ("tools", "The tools steps can call: schemas, effect classes, approval policies."),
        ("workflows", "A registry of versioned definitions; runs pin the version they started with."),
        ("graphql", "A read-only GraphQL view of runs, steps, calls, events, approvals and costs."),
        ("admin", "API tokens and the audit trail."),
        ("workers", "The worker protocol: external workers claim the tasks of external kinds, heartbeat, settle them, and make durable calls. Needs the `worker` role."),
        ("tasks", "The original task API, kept for existing clients."),
        ("probes", "Liveness, readiness and this document."),
    ]
    .into_iter()
    .map(|(name, description)| TagBuilder::new().name(name).description(Some(description)).build())
    .collect()
}

/// The document, from the table's entries.
pub fn build(described: &[Described]) -> Value {
    let mut paths = Paths::new();
    let mut schemas = Vec::new();
    for d in described {
        paths.add_path_operation((d.path)(), (d.methods)(), (d.operation)());
        (d.schemas)(&mut schemas);
    }
    // Referred to from the error responses and hand-built schemas rather than from an
    // operation's types, so not collected above.
    for (name, schema) in [
        (ErrorBody::name(), ErrorBody::schema()),
        (DefinitionFile::name(), DefinitionFile::schema()),
        (InputFile::name(), InputFile::schema()),
    ] {
        schemas.push((name.into_owned(), schema));
    }
    ErrorBody::schemas(&mut schemas);
    DefinitionFile::schemas(&mut schemas);
    let mut bearer = Http::new(HttpAuthScheme::Bearer);
    bearer.description = Some("A token from `cairn tokens create --role ROLE --name NAME`.".into());
    let components = ComponentsBuilder::new()
        .schemas_from_iter(schemas)
        .responses_from_iter(crate::responses::all())
        .security_scheme("bearer", SecurityScheme::Http(bearer))
        .build();
    let info =
        InfoBuilder::new().title("Cairn API").version(env!("CARGO_PKG_VERSION")).description(Some(DESCRIPTION)).build();
    let api = OpenApiBuilder::new().info(info).paths(paths).components(Some(components)).tags(Some(tags())).build();
    let mut doc = serde_json::to_value(&api).unwrap_or_default();
    for (name, constraint) in constraints() {
        if let Some(schema) = doc.pointer_mut(&format!("/components/schemas/{name}")).and_then(Value::as_object_mut) {
            schema.extend(constraint.as_object().into_iter().flatten().map(|(k, v)| (k.clone(), v.clone())));
        }
    }
    if let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) {
        for (path, item) in paths.iter_mut() {
            for (method, operation) in item.as_object_mut().into_iter().flatten() {
                if let Some(operation) = operation.as_object_mut() {
                    complete(path, method, operation);
                }
            }
        }
    }
    doc
}

/// What the derives cannot say: which fields of a body go together.
fn constraints() -> Vec<(&'static str, Value)> {
    vec![
        // Exactly one of `goal` and `workflow`.
        ("CreateRun", json!({"oneOf": [{"required": ["goal"]}, {"required": ["workflow"]}]})),
        // `output` goes with `skip`, and only with it.
        (
            "Decision",
            json!({"oneOf": [
                {"properties": {"decision": {"const": "skip"}}, "required": ["output"]},
                {"properties": {"decision": {"not": {"const": "skip"}}}, "not": {"required": ["output"]}},
            ]}),
        ),
    ]
}

fn response_ref(name: &str) -> Value {
    json!({"$ref": format!("#/components/responses/{name}")})
}

/// Adds what the operation shares with every other (see the module's comment).
fn complete(path: &str, method: &str, operation: &mut Map<String, Value>) {
    let method = Method::from_bytes(method.to_ascii_uppercase().as_bytes()).unwrap_or(Method::GET);
    let role = required_role(&method, path);
    let reads_body = operation.contains_key("requestBody");
    operation.insert("x-cairn-role".into(), json!(role.map_or("public", |r| r.as_str())));
    if role.is_some() {
        operation.insert("security".into(), json!([{"bearer": []}]));
    }
    // Parameters are text: one may be absent, never `null`.
    for parameter in operation.get_mut("parameters").and_then(Value::as_array_mut).into_iter().flatten() {
        if let Some(types) = parameter.pointer_mut("/schema/type")
            && let Some(list) = types.as_array()
        {
            let kept: Vec<Value> = list.iter().filter(|t| *t != "null").cloned().collect();
            *types = if kept.len() == 1 { kept[0].clone() } else { Value::Array(kept) };
        }
    }
    let Some(responses) = operation.get_mut("responses").and_then(Value::as_object_mut) else { return };
    let mut shared = vec![("413", "PayloadTooLarge"), ("503", "Unavailable")];
    if role.is_some() {
        shared.extend([("401", "Unauthorized"), ("403", "Forbidden"), ("500", "Internal")]);
    }
    if reads_body {
        shared.push(("408", "RequestTimeout"));
    }
    for (status, name) in shared {
        responses.entry(status).or_insert_with(|| response_ref(name));
    }
    for response in responses.values_mut() {
        // Every header this API documents on an answer is always sent with it.
        for header in
            response.get_mut("headers").and_then(Value::as_object_mut).into_iter().flat_map(|h| h.values_mut())
        {
            header["required"] = json!(true);
        }
    }
}

/// The document as served (the same for every store type, so built once for the process).
fn served<S: Store>() -> Bytes {
    static DOCUMENT: OnceLock<Bytes> = OnceLock::new();
    DOCUMENT.get_or_init(|| Bytes::from(build(&table::<S>().described).to_string())).clone()
}

/// This description
///
/// OpenAPI 3.1, generated from the server's own types and route table.
#[utoipa::path(
    get,
    path = "/openapi.json",
    operation_id = "openapi",
    tag = "probes",
    responses((status = 200, description = "The OpenAPI document.", body = Object)),
)]
pub async fn document<S: Store>() -> Response {
    let mut response = (StatusCode::OK, served::<S>()).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}
