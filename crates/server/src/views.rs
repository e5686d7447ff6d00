//! The JSON shapes of runs as the API shows them. `/openapi.json` is generated from these types
//! (their `ToSchema` derives), so what is described is what is sent.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use cairn_core::RunStatus;
use cairn_store::{CallRow, LogLine, RunRow, Spend, StepRow};
use serde::Serialize;
use serde_json::Value;
use std::borrow::Cow;
use std::collections::BTreeMap;
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::openapi::{RefOr, schema::AdditionalProperties};
use utoipa::{PartialSchema, ToSchema};

/// Answers with `body` as JSON. Keys are written in sorted order, as the API always has (it used
/// to build every answer as a `serde_json::Value`), whatever the order of the type's fields.
pub fn reply<T: Serialize>(status: StatusCode, body: &T) -> Response {
    match serde_json::to_value(body) {
        Ok(value) => (status, axum::Json(value)).into_response(),
        // Not through `ApiError`, which answers through here.
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            r#"{"error":{"code":"internal","details":null,"message":"the answer could not be written as JSON"}}"#,
        )
            .into_response(),
    }
}

/// A run state's name, described with every state the core knows.
pub struct RunStatusName;

impl PartialSchema for RunStatusName {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .enum_values(Some(RunStatus::ALL.iter().map(|s| s.as_str())))
            .description(Some("Where the run is in its life."))
            .into()
    }
}

impl ToSchema for RunStatusName {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("RunStatus")
    }
}

/// One journal event. The event's own fields depend on its `type`; clients should ignore what
/// they do not know (new event types and fields are added over time).
pub struct JournalEvent;

impl PartialSchema for JournalEvent {
    fn schema() -> RefOr<Schema> {
        let integer = |description: &str, format: &str| {
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .format(Some(utoipa::openapi::SchemaFormat::Custom(format.into())))
                .minimum(Some(0))
                .description(Some(description))
        };
        ObjectBuilder::new()
            .schema_type(Type::Object)
            .description(Some(
                "A journal event: `type` names it (`run_created`, `attempt_started`, `run_completed` ...); \
                 the other fields depend on the type. Unknown types and fields must be ignored.",
            ))
            .property(
                "type",
                ObjectBuilder::new().schema_type(Type::String).description(Some("What happened, e.g. `step_ready`.")),
            )
            .required("type")
            .property("seq", integer("1-based position in the run's journal, gap-free.", "int64"))
            .required("seq")
            .property("at_ms", integer("Unix milliseconds when the engine recorded it.", "int64"))
            .required("at_ms")
            .property("schema", integer("The journal schema version the event was written with.", "int32"))
            .required("schema")
            .additional_properties(Some(AdditionalProperties::FreeForm(true)))
            .examples([serde_json::json!({"seq": 4, "at_ms": 1_767_225_600_120_i64, "schema": 3,
                "type": "attempt_started", "step": "generate_summary", "attempt": 1})])
            .into()
    }
}

impl ToSchema for JournalEvent {}

/// Why a run failed.
#[derive(Serialize, ToSchema)]
pub struct Failure {
    /// `transient`, `timeout`, `rate_limited` (retried), or `permanent`, `context_overflow`,
    /// `malformed_output`, `budget_exceeded`.
    class: Option<String>,
    message: String,
    /// The step whose failure failed the run.
    step: Option<String>,
}

/// Where to find the rest of a run.
#[derive(Serialize, ToSchema)]
pub struct RunLinks {
    #[serde(rename = "self")]
    #[schema(example = "/v1/runs/wf_01KBC6X8Y2S7J5W0Q3R4T5V6X7")]
    this: String,
    steps: String,
    events: String,
    stream: String,
    export: String,
}

/// A run: its workflow, state and timings.
#[derive(Serialize, ToSchema)]
pub struct RunView {
    #[schema(example = "wf_01KBC6X8Y2S7J5W0Q3R4T5V6X7")]
    id: String,
    /// The workflow's name (for a goal, the planned workflow's name).
    #[schema(example = "summary-and-email")]
    workflow: String,
    /// The definition version the run pinned.
    workflow_version: Option<u32>,
    #[schema(value_type = RunStatusName)]
    status: String,
    /// The goal the run was planned from, if any.
    goal: Option<String>,
    /// The step the run is at (running, waiting or failed).
    current_step: Option<String>,
    created_at_ms: i64,
    updated_at_ms: i64,
    finished_at_ms: Option<i64>,
    /// How many events the journal holds.
    events: u64,
    failure: Option<Failure>,
    /// What the run's model calls used: calls, tokens and USD (absent when it made none).
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<Spend>,
    links: RunLinks,
}

impl RunView {
    pub fn of(row: &RunRow) -> RunView {
        let id = &row.id;
        RunView {
            id: id.clone(),
            workflow: row.workflow.clone(),
            workflow_version: row.definition_version,
            status: row.status.clone(),
            goal: row.goal.clone(),
            current_step: row.current_step.clone(),
            created_at_ms: row.created_at_ms,
            updated_at_ms: row.updated_at_ms,
            finished_at_ms: row.finished_at_ms,
            events: row.last_seq,
            failure: row.failure_message.as_ref().map(|m| Failure {
                class: row.failure_class.clone(),
                message: m.clone(),
                step: row.failed_step.clone(),
            }),
            usage: None,
            links: RunLinks {
                this: format!("/v1/runs/{id}"),
                steps: format!("/v1/runs/{id}/steps"),
                events: format!("/v1/runs/{id}/events"),
                stream: format!("/v1/runs/{id}/events/stream"),
                export: format!("/v1/runs/{id}/export"),
            },
        }
    }

    /// With what the run's model calls used, if they used anything.
    pub fn with_usage(mut self, usage: Option<&Spend>) -> RunView {
        self.usage = usage.copied();
        self
    }
}

/// A run as `POST /v1/runs` answers it: once it has finished (with `?wait=`), also its output.
#[derive(Serialize, ToSchema)]
pub struct StartedRun {
    #[serde(flatten)]
    pub run: RunView,
    /// The run's output, present once it has completed (`?wait=`); any JSON.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Value>)]
    pub output: Option<Value>,
    /// About an inline definition: valid but probably a mistake (a literal credential ...), as
    /// `FILE:LINE:COL: step `ID`: MESSAGE`; present only when there are some.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// A run with its steps and, once completed, its output.
#[derive(Serialize, ToSchema)]
pub struct RunDetail {
    #[serde(flatten)]
    pub run: RunView,
    /// The run whose `subworkflow` step started this one, if it is a child run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent: Option<RunLinkView>,
    /// The child runs this run's `subworkflow` steps started, in order (one per attempt).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub children: Vec<RunLinkView>,
    pub steps: Vec<StepRow>,
    /// What each step's model calls used, by step (steps that made none are absent).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub step_usage: BTreeMap<String, Spend>,
    /// The run's output, present once it has completed; any JSON.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Value>)]
    pub output: Option<Value>,
    /// The definition the run executes, as pinned when it started (its steps with their kinds,
    /// `needs` and conditions); absent while a goal is still being planned.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub definition: Option<Value>,
    /// Every journaled call of the run (`run/step/call-N`), by step then position: kind,
    /// outcome, attempt, duration, tokens and cost. `GET …/steps/{step}` adds what each answered.
    pub calls: Vec<CallRow>,
}

/// A run's links in an export.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct RunLinksExport {
    parent: Option<RunLinkView>,
    children: Option<Vec<RunLinkView>>,
}

/// Another run, and the `subworkflow` step (and attempt) linking the two.
#[derive(Serialize, ToSchema)]
pub struct RunLinkView {
    pub run_id: String,
    pub step: String,
    pub attempt: u32,
}

impl From<cairn_engine::RunLink> for RunLinkView {
    fn from(l: cairn_engine::RunLink) -> Self {
        RunLinkView { run_id: l.run_id, step: l.step, attempt: l.attempt }
    }
}

/// A page of runs, newest first.
#[derive(Serialize, ToSchema)]
pub struct RunPage {
    pub runs: Vec<RunView>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct RunSteps {
    pub run_id: String,
    pub steps: Vec<StepRow>,
}

/// One step with its latest input, its output and the calls its attempts made (its
/// compensation's too, under `STEP.compensate`).
#[derive(Serialize, ToSchema)]
pub struct StepDetail {
    pub run_id: String,
    pub step: StepRow,
    /// What the latest attempt ran with (templates rendered, secrets redacted); absent before
    /// the first attempt.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Value>)]
    pub input: Option<Value>,
    /// The step's recorded output, once it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Value>)]
    pub output: Option<Value>,
    /// Journaled calls (`run/step/call-N`) in order: kind, request hash, outcome, duration, and
    /// what each answered in a line.
    pub calls: Vec<CallDetail>,
}

/// A journaled call and what it answered.
#[derive(Serialize, ToSchema)]
pub struct CallDetail {
    #[serde(flatten)]
    pub call: CallRow,
    /// The answer in one line, cut at 600 characters: a model's text (or the tools it called),
    /// a tool's result, a context selection's counts. Absent without a result.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub answer: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct StepLogs {
    pub run_id: String,
    pub step: String,
    pub logs: Vec<LogLine>,
}

#[derive(Serialize, ToSchema)]
pub struct RunEvents {
    pub run_id: String,
    #[schema(value_type = Vec<JournalEvent>)]
    pub events: Vec<cairn_core::Envelope>,
}

/// An operator request as operators see it: what was asked, by whom, when, and what became of it.
#[derive(Serialize, ToSchema)]
pub struct RequestView {
    /// The order of acceptance among all requests.
    id: i64,
    /// `pause`, `unpause`, `cancel`, `signal`, `approve`, `reject`, `retry`, `skip`, `abort`, `migrate`.
    request: String,
    by: Option<String>,
    /// The step a decision is for, or a signal's name.
    target: Option<String>,
    state: cairn_store::RequestState,
    /// Why it was refused or left unchanged (`already_paused` ...).
    code: Option<String>,
    message: Option<String>,
    /// The journal event that records an applied request.
    journal_seq: Option<u64>,
    accepted_at_ms: i64,
    decided_at_ms: Option<i64>,
}

impl From<cairn_engine::RequestView> for RequestView {
    fn from(v: cairn_engine::RequestView) -> RequestView {
        RequestView {
            id: v.id,
            request: v.request,
            by: v.by,
            target: v.target,
            state: v.state,
            code: v.code,
            message: v.message,
            journal_seq: v.journal_seq,
            accepted_at_ms: v.accepted_at_ms,
            decided_at_ms: v.decided_at_ms,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct RunRequests {
    pub run_id: String,
    pub requests: Vec<RequestView>,
}

/// What became of a steering request (cancel, pause, resume, a signal, a decision).
#[derive(Serialize, ToSchema)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum SteerRequest {
    /// Applied; `journal_seq` is the event that records it.
    Applied { id: i64, journal_seq: Option<u64> },
    /// Nothing to do: the run already was as asked (the same decision twice). `id` is `null` when
    /// the run had finished and nothing was queued.
    Unchanged { id: Option<i64>, code: String, message: String },
    /// Accepted, but the process driving the run has not applied it yet (202): it is applied in
    /// order when the run is next driven.
    Pending { id: i64, message: String },
}

/// A run after a steering request, with what became of the request.
#[derive(Serialize, ToSchema)]
pub struct SteeredRun {
    #[serde(flatten)]
    pub run: RunView,
    /// `applied`, `queued`, or the code of an unchanged request (`already_decided` ...).
    #[schema(example = "applied")]
    pub delivery: String,
    pub request: SteerRequest,
}

/// Which run and step a new run was forked from.
#[derive(Serialize, ToSchema)]
pub struct ForkOrigin {
    pub run: String,
    pub step: String,
}

/// A run forked from another (`rerun`).
#[derive(Serialize, ToSchema)]
pub struct ForkedRun {
    #[serde(flatten)]
    pub run: RunView,
    pub forked_from: ForkOrigin,
}

/// The export of one run (`cairn.run-export`, as `cairn export` writes it): everything needed to
/// inspect or replay it elsewhere. The store builds it (the CLI shares it); this type only
/// describes it, and the conformance tests hold the description to real exports.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct RunExport {
    #[schema(example = "cairn.run-export")]
    format: String,
    #[schema(example = 1)]
    format_version: u32,
    /// The journal schema version of this build (events carry their own `schema`).
    journal_schema: u16,
    run: cairn_store::RunRow,
    /// The run that started this one (`parent`) and the child runs it started (`children`).
    links: RunLinksExport,
    steps: Vec<StepRow>,
    /// The calls the run's attempts made through the effect log (`run/step/call-N`).
    calls: Vec<CallRow>,
    /// What the run's model calls used in all (calls, tokens, USD).
    usage: Spend,
    /// The same by step (steps that made none are absent).
    step_usage: BTreeMap<String, Spend>,
    #[schema(value_type = Vec<JournalEvent>)]
    events: Vec<Value>,
    /// Every payload the journal refers to, by its SHA-256.
    #[schema(value_type = Object, additional_properties = true)]
    payloads: Value,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn row() -> RunRow {
        RunRow {
            id: "wf_01KBC6X8Y2S7J5W0Q3R4T5V6X7".into(),
            workflow: "w".into(),
            definition_version: Some(2),
            status: "FAILED".into(),
            goal: None,
            current_step: Some("b".into()),
            failure_class: Some("permanent".into()),
            failure_message: Some("boom".into()),
            failed_step: Some("b".into()),
            last_seq: 9,
            owner: None,
            lease_expires_at_ms: None,
            created_at_ms: 1,
            updated_at_ms: 2,
            finished_at_ms: Some(3),
            definition_hash: None,
            output_hash: None,
            artifact: None,
            wake_at_ms: None,
            retain_until_ms: None,
        }
    }

    /// The JSON the API sent before these types existed, byte for byte.
    #[test]
    fn a_run_view_is_the_json_the_api_always_sent() {
        let body = json!({
            "id": "wf_01KBC6X8Y2S7J5W0Q3R4T5V6X7", "workflow": "w", "workflow_version": 2,
            "status": "FAILED", "goal": null, "current_step": "b", "created_at_ms": 1, "updated_at_ms": 2,
            "finished_at_ms": 3, "events": 9,
            "failure": {"class": "permanent", "message": "boom", "step": "b"},
            "links": {
                "self": "/v1/runs/wf_01KBC6X8Y2S7J5W0Q3R4T5V6X7",
                "steps": "/v1/runs/wf_01KBC6X8Y2S7J5W0Q3R4T5V6X7/steps",
                "events": "/v1/runs/wf_01KBC6X8Y2S7J5W0Q3R4T5V6X7/events",
                "stream": "/v1/runs/wf_01KBC6X8Y2S7J5W0Q3R4T5V6X7/events/stream",
                "export": "/v1/runs/wf_01KBC6X8Y2S7J5W0Q3R4T5V6X7/export",
            },
        });
        let view = serde_json::to_value(RunView::of(&row())).expect("json");
        assert_eq!(view.to_string(), body.to_string());
        let started = StartedRun { run: RunView::of(&row()), output: Some(Value::Null), warnings: Vec::new() };
        let mut with_output = body.clone();
        with_output["output"] = Value::Null;
        assert_eq!(serde_json::to_value(started).expect("json").to_string(), with_output.to_string());
    }

    #[test]
    fn a_steering_answer_keeps_its_keys_per_outcome() {
        let cases = [
            (
                SteerRequest::Applied { id: 3, journal_seq: None },
                json!({"id": 3, "state": "applied", "journal_seq": null}),
            ),
            (
                SteerRequest::Unchanged { id: None, code: "already_decided".into(), message: "m".into() },
                json!({"id": null, "state": "unchanged", "code": "already_decided", "message": "m"}),
            ),
            (
                SteerRequest::Pending { id: 4, message: "m".into() },
                json!({"id": 4, "state": "pending", "message": "m"}),
            ),
        ];
        for (request, expected) in cases {
            assert_eq!(serde_json::to_value(request).expect("json").to_string(), expected.to_string());
        }
    }
}
