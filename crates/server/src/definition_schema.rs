//! The workflow file format (the body of `POST /v1/workflows`, an inline `workflow` in
//! `POST /v1/runs`) described for `/openapi.json`.
//!
//! The core parses definitions with its own private types (keeping line and column for every
//! value), so these types exist only to be described. A test holds them to the parser: every
//! field here is one it accepts, every field it accepts is here, and the examples parse.

#![allow(dead_code)]

use serde::Deserialize;
use serde_json::Value;
use std::borrow::Cow;
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Schema, Type};
use utoipa::{PartialSchema, ToSchema};

/// A duration: `250ms`, `2s`, `1.5s`, `5m`, `1h`, `7d`, `none` (where a default may be switched
/// off), or a bare number of milliseconds.
pub struct DurationText;

impl PartialSchema for DurationText {
    fn schema() -> RefOr<Schema> {
        OneOfBuilder::new()
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .pattern(Some(r"^\s*(none|[0-9]+(\.[0-9]+)?\s*(ms|s|m|min|h|d)?)\s*$")),
            )
            .item(ObjectBuilder::new().schema_type(Type::Number).minimum(Some(0)))
            .description(Some(
                "A duration: `250ms`, `2s`, `1.5s`, `5m`, `1h`, `7d`, `none`, or a number of milliseconds.",
            ))
            .examples([Value::from("30s")])
            .into()
    }
}

impl ToSchema for DurationText {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("Duration")
    }
}

/// A step kind this binary runs (its built-in kinds).
pub struct KindName;

impl PartialSchema for KindName {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .enum_values(Some(cairn_engine::kinds::builtin().specs().names()))
            .description(Some("The step's kind: what an attempt does."))
            .into()
    }
}

impl ToSchema for KindName {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("StepKind")
    }
}

/// `on_failure`: a policy, or another step that stands in for this one.
pub struct OnFailureSchema;

impl PartialSchema for OnFailureSchema {
    fn schema() -> RefOr<Schema> {
        OneOfBuilder::new()
            .item(ObjectBuilder::new().schema_type(Type::String).enum_values(Some(["fail", "continue", "escalate"])))
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::Object)
                    .property("fallback", ObjectBuilder::new().schema_type(Type::String))
                    .required("fallback")
                    .additional_properties(Some(utoipa::openapi::schema::AdditionalProperties::FreeForm(false))),
            )
            .description(Some(
                "What a failure for good does: `fail` the run (default), `continue`, `escalate` to a person, \
                 or `{fallback: STEP}`: run STEP in its place.",
            ))
            .into()
    }
}

impl ToSchema for OnFailureSchema {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("OnFailure")
    }
}

/// `inputs`: each name declares an input, described (or `null`: no description, no default).
fn inputs_schema() -> Schema {
    let input = OneOfBuilder::new()
        .item(ObjectBuilder::new().schema_type(Type::Null))
        .item(utoipa::openapi::Ref::from_schema_name("WorkflowInput"));
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .additional_properties(Some(Schema::from(input)))
        .description(Some("The inputs a run takes, by name; one without a `default` is required."))
        .into()
}

/// A workflow definition as written in a file (YAML or JSON).
#[derive(Deserialize, ToSchema)]
#[schema(as = WorkflowDefinition, examples(json!({
    "cairn": 1,
    "name": "summary-and-email",
    "version": 1,
    "inputs": {"topic": {"default": "otters"}},
    "steps": [
        {"id": "generate_summary", "kind": "mock_model", "with": {"prompt": "Summarise {{ inputs.topic }}"}},
        {"id": "send_email", "kind": "echo", "needs": ["generate_summary"],
         "with": {"body": "{{ steps.generate_summary.output.text }}"}, "retry": {"max_attempts": 5}}
    ]
})))]
#[serde(deny_unknown_fields)]
pub struct DefinitionFile {
    /// The file format version (1).
    #[schema(minimum = 1)]
    cairn: Option<i64>,
    /// 1 to 64 of A-Z, a-z, 0-9, `_`, `.` and `-`.
    #[schema(pattern = r"^[A-Za-z0-9_.-]{1,64}$")]
    name: String,
    /// The definition's version (default 1); a run pins the one it started with.
    #[schema(minimum = 1, maximum = 4294967295_u64)]
    version: Option<i64>,
    description: Option<String>,
    /// A file name the CLI writes the run's final output to.
    artifact: Option<String>,
    /// How long finished runs of this workflow are kept.
    #[schema(value_type = Option<DurationText>)]
    retention: Option<Value>,
    /// The inputs a run takes, by name; one without a `default` is required.
    #[schema(schema_with = inputs_schema)]
    inputs: Option<Value>,
    /// Defaults for every step.
    defaults: Option<DefaultsFile>,
    /// What the whole run's model calls may spend.
    budget: Option<BudgetFile>,
    /// Tools this workflow defines for its `tool` steps, by name (`http_request` only; they never
    /// reach internal addresses). Other tools come from the server's cairn.toml.
    #[schema(value_type = Option<std::collections::BTreeMap<String, WorkflowToolFile>>)]
    tools: Option<Value>,
    /// Kinds this workflow declares as external, by name: their steps wait in `queue` for
    /// workers (`/v1/workers/*`).
    #[schema(value_type = Option<std::collections::BTreeMap<String, WorkflowExternalKindFile>>)]
    kinds: Option<Value>,
    #[schema(min_items = 1)]
    steps: Vec<StepFile>,
}

/// An external kind a workflow declares.
#[derive(Deserialize, ToSchema)]
#[schema(as = WorkflowExternalKind)]
#[serde(deny_unknown_fields)]
pub struct WorkflowExternalKindFile {
    /// The queue its workers claim from: a letter, then up to 63 letters, digits, `_`, `-` or `.`.
    #[schema(pattern = r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$", example = "py-workers")]
    queue: String,
    description: Option<String>,
    /// JSON Schema of the step's input (`with`).
    #[schema(value_type = Option<Object>)]
    input_schema: Option<Value>,
    /// JSON Schema the worker's output must fit (else the attempt fails as `malformed_output`).
    #[schema(value_type = Option<Object>)]
    output_schema: Option<Value>,
    /// pure, read, idempotent_write, write (default) or irreversible.
    effect: Option<String>,
    /// The kind's retry policy (default: 5 attempts, 500ms doubling to 30s).
    retry: Option<RetryFile>,
    /// Per attempt, from queued to settled (default 5m; `none` for no timeout).
    #[schema(value_type = Option<DurationText>)]
    timeout: Option<Value>,
}

/// A tool a workflow defines.
#[derive(Deserialize, ToSchema)]
#[schema(as = WorkflowTool)]
#[serde(deny_unknown_fields)]
pub struct WorkflowToolFile {
    /// `http_request` (the only type a workflow may define).
    #[serde(rename = "type")]
    #[schema(pattern = "^http_request$")]
    kind: String,
    description: Option<String>,
    /// read, idempotent_write, write or irreversible (default: GET/HEAD/OPTIONS read, others write).
    effect: Option<String>,
    /// never, always, or a CEL condition over `args` (default: calls that write ask).
    approval: Option<String>,
    /// Hosts it may reach (`api.example.com`, `*.example.com`); empty: any public host.
    allow_hosts: Option<Vec<String>>,
    #[schema(value_type = Option<DurationText>)]
    timeout: Option<Value>,
    #[schema(value_type = Option<DurationText>)]
    connect_timeout: Option<Value>,
    #[schema(minimum = 1)]
    max_response_bytes: Option<u64>,
    /// truncate (default) or refuse.
    on_oversize: Option<String>,
    #[schema(maximum = 20)]
    max_redirects: Option<u32>,
    /// A JSON Schema the result must fit.
    #[schema(value_type = Option<Object>)]
    output_schema: Option<Value>,
}

/// A declared input.
#[derive(Deserialize, ToSchema)]
#[schema(as = WorkflowInput)]
#[serde(deny_unknown_fields)]
pub struct InputFile {
    description: Option<String>,
    /// Used when a run does not give the input (any JSON).
    #[schema(value_type = Option<Value>)]
    default: Option<Value>,
}

#[derive(Deserialize, ToSchema)]
#[schema(as = WorkflowDefaults)]
#[serde(deny_unknown_fields)]
pub struct DefaultsFile {
    retry: Option<RetryFile>,
    #[schema(value_type = Option<DurationText>)]
    timeout: Option<Value>,
}

/// One step of a workflow.
#[derive(Deserialize, ToSchema)]
#[schema(as = WorkflowStep)]
#[serde(deny_unknown_fields)]
pub struct StepFile {
    /// 1 to 64 of a-z, 0-9, `_` and `-`; templates read it as `steps.ID`.
    #[schema(pattern = "^[a-z0-9_-]{1,64}$")]
    id: String,
    #[schema(value_type = KindName)]
    kind: String,
    /// Steps that must be settled first.
    needs: Option<Vec<String>>,
    /// A CEL condition; false skips the step.
    when: Option<String>,
    /// The attempt's input; strings are templates (any JSON).
    #[schema(value_type = Option<Value>)]
    with: Option<Value>,
    retry: Option<RetryFile>,
    /// Per attempt.
    #[schema(value_type = Option<DurationText>)]
    timeout: Option<Value>,
    #[schema(value_type = Option<OnFailureSchema>)]
    on_failure: Option<Value>,
    /// When the step runs, given its needs: `all_succeeded` (default), `none_failed`, `all_done`.
    #[schema(pattern = "^(all_succeeded|none_failed|all_done)$")]
    trigger: Option<String>,
    inject: Option<InjectFile>,
    /// Shorthand for an approval gate with the default prompt.
    requires_approval: Option<bool>,
    approval: Option<ApprovalFile>,
    compensate: Option<CompensateFile>,
    /// Run the step once per item: a list, or a template rendering to one
    /// (`"{{ steps.search.output.urls }}"`). Instances are `ID[0]`, `ID[1]`, …; their `with`
    /// sees `item` and `index`; the step's output is the list of their outputs.
    #[schema(value_type = Option<Value>)]
    for_each: Option<Value>,
    /// With `for_each`: at most this many items run at once.
    #[schema(minimum = 1, maximum = 10000)]
    max_parallel: Option<i64>,
    /// With `for_each`: a longer list fails the step (default 10,000).
    #[schema(minimum = 1, maximum = 100000)]
    max_items: Option<i64>,
    #[serde(rename = "loop")]
    #[schema(rename = "loop")]
    repeat: Option<LoopFile>,
    /// What this step's model calls may spend.
    budget: Option<BudgetFile>,
}

/// What model calls may spend: each call reserves its worst case first, and a call that would
/// cross a limit is not sent.
#[derive(Deserialize, ToSchema)]
#[schema(as = WorkflowBudget)]
#[serde(deny_unknown_fields)]
pub struct BudgetFile {
    /// US dollars (at least one of the two limits).
    #[schema(minimum = 0.000001, maximum = 1000000)]
    max_cost_usd: Option<f64>,
    /// Input and output tokens together.
    #[schema(minimum = 1)]
    max_tokens: Option<i64>,
    /// `fail` (default: the step fails as `budget_exceeded`) or `escalate` (a person may raise it).
    #[schema(pattern = "^(fail|escalate)$")]
    on_exceed: Option<String>,
}

/// Repeat a step (instances `ID#1`, `ID#2`, …) until `until` holds over an iteration's output.
/// Its `with` sees `iteration` and `previous` (the last iteration's output, null at first).
#[derive(Deserialize, ToSchema)]
#[schema(as = WorkflowLoop)]
#[serde(deny_unknown_fields)]
pub struct LoopFile {
    /// A CEL condition over `output` (this iteration's) and `iteration`.
    until: String,
    #[schema(minimum = 1, maximum = 10000)]
    max_iterations: i64,
}

/// How a step retries.
#[derive(Deserialize, ToSchema)]
#[schema(as = WorkflowRetry)]
#[serde(deny_unknown_fields)]
pub struct RetryFile {
    #[schema(minimum = 1)]
    max_attempts: Option<i64>,
    #[schema(value_type = Option<DurationText>)]
    initial_delay: Option<Value>,
    multiplier: Option<f64>,
    #[schema(value_type = Option<DurationText>)]
    max_delay: Option<Value>,
    #[schema(minimum = 0, maximum = 1)]
    jitter: Option<f64>,
}

/// Failure injection, for trying out failure handling.
#[derive(Deserialize, ToSchema)]
#[schema(as = WorkflowInject)]
#[serde(deny_unknown_fields)]
pub struct InjectFile {
    #[schema(minimum = 0)]
    fail_times: Option<i64>,
    #[schema(minimum = 0, maximum = 1)]
    fail_rate: Option<f64>,
    /// `transient`, `timeout`, `rate_limited` (retried), or `permanent`, `context_overflow`,
    /// `malformed_output`, `budget_exceeded`.
    fail_class: Option<String>,
    #[schema(value_type = Option<DurationText>)]
    delay: Option<Value>,
    hang: Option<bool>,
}

/// An approval gate: the step waits for a person before it runs.
#[derive(Deserialize, ToSchema)]
#[schema(as = WorkflowApproval)]
#[serde(deny_unknown_fields)]
pub struct ApprovalFile {
    /// What the person is asked (a template).
    prompt: Option<String>,
    /// Who may decide (token names); empty: any operator.
    approvers: Option<Vec<String>>,
    #[schema(value_type = Option<DurationText>)]
    deadline: Option<Value>,
    /// At the deadline: `reject`, `fail` or `wait`.
    #[schema(pattern = "^(reject|fail|wait)$")]
    on_deadline: Option<String>,
}

/// The undo action of a completed step, run if the run later fails.
#[derive(Deserialize, ToSchema)]
#[schema(as = WorkflowCompensation)]
#[serde(deny_unknown_fields)]
pub struct CompensateFile {
    #[schema(value_type = KindName)]
    kind: String,
    #[schema(value_type = Option<Value>)]
    with: Option<Value>,
    retry: Option<RetryFile>,
}
