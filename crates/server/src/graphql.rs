//! `POST /graphql`: a read-only GraphQL view of the same data as the REST API — runs (filtered,
//! a page at a time), a run's steps, calls, events, approvals and links, what waits for a person,
//! and cost sums — under the same tokens (`viewer`). There are no mutations: steering stays in
//! REST, where every change is audited.
//!
//! *One query cannot exhaust the server*: depth and complexity are limited (every list field
//! counts its page size times what it selects), list sizes are bounded, and the query text is
//! limited by the body limit like any request.

use crate::AppState;
use crate::body::JsonBody;
use crate::error::ApiError;
use crate::responses::{BadRequest, InvalidBody, UnsupportedMediaType};
use async_graphql::{ComplexObject, Context, EmptyMutation, EmptySubscription, Json, Object, Schema, SimpleObject};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use cairn_core::RunId;
use cairn_store::{CostBy, RunQuery, RunRow, Spend, Store};
use serde::Deserialize;
use serde_json::Value;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use utoipa::ToSchema;

/// Deepest nesting a query may have (the standard introspection query fits).
const MAX_DEPTH: usize = 15;
/// Most a query may cost: each field costs 1, a list field its page size times its selection.
const MAX_COMPLEXITY: usize = 5_000;
/// Largest page of runs or events one field returns.
const MAX_PAGE: i32 = 100;
/// What a list of a run's steps or calls is costed as (they are not paged).
const LIST_COST: usize = 20;
/// What a field that reads the store costs on top of what it selects: aliases that repeat such
/// a field add up quickly.
const READ: usize = 50;
/// What reading every waiting approval costs (it looks at every unfinished run); once a request.
const APPROVALS: usize = 500;

type Fut<'a, T> = Pin<Box<dyn Future<Output = Result<T, cairn_store::Error>> + Send + 'a>>;

/// The store, as the resolvers read it (the `Store` trait's futures are not object-safe).
trait Reader: Send + Sync {
    fn list_runs(&self, q: RunQuery) -> Fut<'_, Vec<RunRow>>;
    fn get_run<'a>(&'a self, id: &'a RunId) -> Fut<'a, RunRow>;
    fn steps<'a>(&'a self, id: &'a RunId) -> Fut<'a, Vec<cairn_store::StepRow>>;
    fn events_after<'a>(&'a self, id: &'a RunId, after: u64) -> Fut<'a, Vec<cairn_core::Envelope>>;
    fn calls<'a>(&'a self, id: &'a RunId) -> Fut<'a, Vec<cairn_store::CallRow>>;
    fn spend<'a>(&'a self, ids: &'a [RunId]) -> Fut<'a, std::collections::BTreeMap<String, Spend>>;
    fn approvals(&self) -> Fut<'_, Vec<cairn_engine::WaitingApproval>>;
    fn costs(&self, since_ms: i64, by: CostBy) -> Fut<'_, Vec<cairn_store::CostLine>>;
}

struct StoreReader<S: Store>(Arc<S>);

impl<S: Store> Reader for StoreReader<S> {
    fn list_runs(&self, q: RunQuery) -> Fut<'_, Vec<RunRow>> {
        Box::pin(self.0.list_runs(q))
    }
    fn get_run<'a>(&'a self, id: &'a RunId) -> Fut<'a, RunRow> {
        Box::pin(self.0.get_run(id))
    }
    fn steps<'a>(&'a self, id: &'a RunId) -> Fut<'a, Vec<cairn_store::StepRow>> {
        Box::pin(self.0.steps(id))
    }
    fn events_after<'a>(&'a self, id: &'a RunId, after: u64) -> Fut<'a, Vec<cairn_core::Envelope>> {
        Box::pin(self.0.events_after(id, after))
    }
    fn calls<'a>(&'a self, id: &'a RunId) -> Fut<'a, Vec<cairn_store::CallRow>> {
        Box::pin(self.0.calls(id, None))
    }
    fn spend<'a>(&'a self, ids: &'a [RunId]) -> Fut<'a, std::collections::BTreeMap<String, Spend>> {
        Box::pin(self.0.spend(ids))
    }
    fn approvals(&self) -> Fut<'_, Vec<cairn_engine::WaitingApproval>> {
        Box::pin(cairn_engine::waiting_approvals(&*self.0))
    }
    fn costs(&self, since_ms: i64, by: CostBy) -> Fut<'_, Vec<cairn_store::CostLine>> {
        Box::pin(self.0.cost_report(since_ms, by))
    }
}

type ReadSchema = Schema<Query, EmptyMutation, EmptySubscription>;

fn reader<'a>(ctx: &Context<'a>) -> async_graphql::Result<&'a Arc<dyn Reader>> {
    ctx.data::<Arc<dyn Reader>>()
}

/// What waits for a person, read once per request however many fields ask.
#[derive(Default)]
struct Waiting(tokio::sync::OnceCell<Vec<cairn_engine::WaitingApproval>>);

async fn waiting<'a>(ctx: &Context<'a>) -> async_graphql::Result<&'a [cairn_engine::WaitingApproval]> {
    let memo = ctx.data::<Waiting>()?;
    let all = memo.0.get_or_try_init(|| async { reader(ctx)?.approvals().await.map_err(failed) }).await?;
    Ok(all)
}

fn failed(e: cairn_store::Error) -> async_graphql::Error {
    async_graphql::Error::new(e.to_string())
}

fn run_id(text: &str) -> async_graphql::Result<RunId> {
    RunId::parse(text).map_err(|m| async_graphql::Error::new(format!("'{text}' is not a run id: {m}")))
}

fn page(first: i32, what: &str) -> async_graphql::Result<usize> {
    if !(1..=MAX_PAGE).contains(&first) {
        return Err(async_graphql::Error::new(format!("{what}: `first` is {first}; use 1 to {MAX_PAGE}")));
    }
    Ok(first as usize)
}

pub struct Query;

#[Object]
impl Query {
    /// Runs, newest first, a page at a time: pass `nextCursor` as `after` for the next page.
    #[allow(clippy::too_many_arguments)]
    #[graphql(complexity = "first.clamp(0, MAX_PAGE) as usize * child_complexity + 1")]
    async fn runs(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "Only runs in this state (any case).")] status: Option<String>,
        #[graphql(desc = "Only runs of this workflow.")] workflow: Option<String>,
        #[graphql(desc = "Only runs created at or after this time (Unix ms).")] created_after: Option<i64>,
        #[graphql(desc = "Only runs created before this time (Unix ms).")] created_before: Option<i64>,
        #[graphql(default = 20, desc = "At most this many runs (1 to 100).")] first: i32,
        #[graphql(desc = "Where the previous page ended: its `nextCursor`.")] after: Option<String>,
    ) -> async_graphql::Result<RunPage> {
        let limit = page(first, "runs")?;
        let status = status
            .map(|s| {
                cairn_core::RunStatus::parse(&s)
                    .map(|s| s.as_str().to_string())
                    .ok_or_else(|| async_graphql::Error::new(format!("status '{s}' is not a run state")))
            })
            .transpose()?;
        let after = after
            .map(|c| {
                c.split_once('.')
                    .and_then(|(at, id)| Some((at.parse::<i64>().ok()?, id.to_string())))
                    .filter(|(_, id)| id.starts_with("wf_"))
                    .ok_or_else(|| async_graphql::Error::new("`after` is not a cursor this API returned"))
            })
            .transpose()?;
        let query = RunQuery {
            status,
            workflow,
            created_after_ms: created_after,
            created_before_ms: created_before,
            after,
            limit,
        };
        let rows = reader(ctx)?.list_runs(query).await.map_err(failed)?;
        let next_cursor =
            (rows.len() == limit).then(|| rows.last().map(|r| format!("{}.{}", r.created_at_ms, r.id))).flatten();
        Ok(RunPage { runs: rows.into_iter().map(Run::of).collect(), next_cursor })
    }

    /// One run, or null when there is none with this id.
    async fn run(&self, ctx: &Context<'_>, id: String) -> async_graphql::Result<Option<Run>> {
        let id = run_id(&id)?;
        match reader(ctx)?.get_run(&id).await {
            Ok(row) => Ok(Some(Run::of(row))),
            Err(cairn_store::Error::NotFound(_)) => Ok(None),
            Err(e) => Err(failed(e)),
        }
    }

    /// What waits for a person, oldest first.
    #[graphql(complexity = "APPROVALS + LIST_COST * child_complexity")]
    async fn approvals(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<Approval>> {
        Ok(waiting(ctx).await?.iter().cloned().map(Approval::of).collect())
    }

    /// What model calls cost since a time, summed by `workflow`, `model` or `day` (UTC).
    #[graphql(complexity = "READ + LIST_COST * child_complexity")]
    async fn costs(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "From this time (Unix ms).")] since: i64,
        #[graphql(default_with = "\"workflow\".to_string()", desc = "`workflow`, `model` or `day`.")] by: String,
    ) -> async_graphql::Result<Vec<CostSum>> {
        let grouping = match by.as_str() {
            "workflow" => CostBy::Workflow,
            "model" => CostBy::Model,
            "day" => CostBy::Day,
            other => return Err(async_graphql::Error::new(format!("by '{other}': use workflow, model or day"))),
        };
        let lines = reader(ctx)?.costs(since, grouping).await.map_err(failed)?;
        Ok(lines.into_iter().map(|l| CostSum { key: l.key, runs: l.runs, usage: Usage::of(&l.spend) }).collect())
    }
}

#[derive(SimpleObject)]
pub struct RunPage {
    runs: Vec<Run>,
    /// Pass as `after` for the next page; null on the last page.
    next_cursor: Option<String>,
}

/// What model calls used.
#[derive(SimpleObject, Clone, Copy)]
pub struct Usage {
    calls: u64,
    tokens_in: u64,
    tokens_out: u64,
    cost_usd: f64,
}

impl Usage {
    fn of(s: &Spend) -> Usage {
        Usage { calls: s.calls, tokens_in: s.tokens_in, tokens_out: s.tokens_out, cost_usd: s.cost_usd }
    }
}

#[derive(SimpleObject)]
pub struct CostSum {
    /// The workflow, model alias or `YYYY-MM-DD`.
    key: String,
    runs: u64,
    usage: Usage,
}

#[derive(SimpleObject)]
pub struct Failure {
    class: Option<String>,
    message: String,
    step: Option<String>,
}

/// A run.
#[derive(SimpleObject)]
#[graphql(complex)]
pub struct Run {
    id: String,
    workflow: String,
    workflow_version: Option<u32>,
    status: String,
    goal: Option<String>,
    current_step: Option<String>,
    created_at_ms: i64,
    updated_at_ms: i64,
    finished_at_ms: Option<i64>,
    /// How many events its journal holds.
    event_count: u64,
    failure: Option<Failure>,
}

impl Run {
    fn of(row: RunRow) -> Run {
        Run {
            failure: row.failure_message.map(|message| Failure {
                class: row.failure_class,
                message,
                step: row.failed_step,
            }),
            id: row.id,
            workflow: row.workflow,
            workflow_version: row.definition_version,
            status: row.status,
            goal: row.goal,
            current_step: row.current_step,
            created_at_ms: row.created_at_ms,
            updated_at_ms: row.updated_at_ms,
            finished_at_ms: row.finished_at_ms,
            event_count: row.last_seq,
        }
    }

    fn run_id(&self) -> async_graphql::Result<RunId> {
        run_id(&self.id)
    }
}

#[ComplexObject]
impl Run {
    /// What its model calls used (null when it made none).
    #[graphql(complexity = "READ + child_complexity")]
    async fn usage(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<Usage>> {
        let ids = [self.run_id()?];
        let spend = reader(ctx)?.spend(&ids).await.map_err(failed)?;
        Ok(spend.get(&self.id).filter(|s| s.calls > 0).map(Usage::of))
    }

    /// Its steps in definition order (instances of `for_each` / `loop` after their step).
    #[graphql(complexity = "READ + LIST_COST * child_complexity")]
    async fn steps(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<Step>> {
        let id = self.run_id()?;
        let reader = reader(ctx)?;
        let calls = reader.calls(&id).await.map_err(failed)?;
        let (usage, _) = Spend::of_calls(&calls);
        let mut by_step: std::collections::HashMap<&str, Vec<Call>> = std::collections::HashMap::new();
        for c in &calls {
            by_step.entry(c.step_id.as_str()).or_default().push(Call::of(c));
        }
        let rows = reader.steps(&id).await.map_err(failed)?;
        Ok(rows
            .into_iter()
            .map(|r| Step {
                usage: usage.get(&r.step_id).map(Usage::of),
                calls: by_step.remove(r.step_id.as_str()).unwrap_or_default(),
                id: r.step_id,
                position: r.position,
                kind: r.kind,
                status: r.status,
                attempts: r.attempts,
                not_before_ms: r.not_before_ms,
                started_at_ms: r.started_at_ms,
                finished_at_ms: r.finished_at_ms,
                busy_ms: r.busy_ms,
                error_class: r.error_class,
                error_message: r.error_message,
                skip_reason: r.skip_reason,
            })
            .collect())
    }

    /// Its journaled calls (`run/step/call-N`), by step then position; `step` narrows them.
    #[graphql(complexity = "READ + LIST_COST * child_complexity")]
    async fn calls(&self, ctx: &Context<'_>, step: Option<String>) -> async_graphql::Result<Vec<Call>> {
        let calls = reader(ctx)?.calls(&self.run_id()?).await.map_err(failed)?;
        Ok(calls.iter().filter(|c| step.as_ref().is_none_or(|s| &c.step_id == s)).map(Call::of).collect())
    }

    /// Its journal, in order: the events after position `after`, at most `first` (1 to 100).
    #[graphql(complexity = "READ + first.clamp(0, MAX_PAGE) as usize * child_complexity")]
    async fn events(
        &self,
        ctx: &Context<'_>,
        #[graphql(default = 0)] after: u64,
        #[graphql(default = 100)] first: i32,
    ) -> async_graphql::Result<Vec<JournalEvent>> {
        let limit = page(first, "events")?;
        let events = reader(ctx)?.events_after(&self.run_id()?, after).await.map_err(failed)?;
        Ok(events
            .into_iter()
            .take(limit)
            .map(|e| {
                let mut data = serde_json::to_value(&e.event).unwrap_or(Value::Null);
                if let Some(map) = data.as_object_mut() {
                    map.remove("type");
                }
                JournalEvent {
                    seq: e.seq,
                    at_ms: e.at_ms,
                    r#type: e.event.kind().to_string(),
                    step: e.event.step().map(|s| s.to_string()),
                    data: Json(data),
                }
            })
            .collect())
    }

    /// Its steps that wait for a person now.
    #[graphql(complexity = "APPROVALS + LIST_COST * child_complexity")]
    async fn approvals(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<Approval>> {
        Ok(waiting(ctx).await?.iter().filter(|a| a.run_id == self.id).cloned().map(Approval::of).collect())
    }

    /// The run whose `subworkflow` step started this one.
    #[graphql(complexity = "READ + child_complexity")]
    async fn parent(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<RunLink>> {
        Ok(self.links(ctx).await?.parent.map(RunLink::of))
    }

    /// The runs its `subworkflow` steps started, one per attempt.
    #[graphql(complexity = "READ + LIST_COST * child_complexity")]
    async fn children(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<RunLink>> {
        Ok(self.links(ctx).await?.children.into_iter().map(RunLink::of).collect())
    }
}

impl Run {
    async fn links(&self, ctx: &Context<'_>) -> async_graphql::Result<cairn_engine::RunLinks> {
        let events = reader(ctx)?.events_after(&self.run_id()?, 0).await.map_err(failed)?;
        Ok(cairn_engine::RunLinks::of(&events))
    }
}

#[derive(SimpleObject)]
pub struct RunLink {
    run_id: String,
    step: String,
    attempt: u32,
}

impl RunLink {
    fn of(l: cairn_engine::RunLink) -> RunLink {
        RunLink { run_id: l.run_id, step: l.step, attempt: l.attempt }
    }
}

#[derive(SimpleObject)]
pub struct Step {
    id: String,
    position: u32,
    kind: String,
    status: String,
    attempts: u32,
    not_before_ms: Option<i64>,
    started_at_ms: Option<i64>,
    finished_at_ms: Option<i64>,
    busy_ms: u64,
    error_class: Option<String>,
    error_message: Option<String>,
    skip_reason: Option<String>,
    /// What its model calls used.
    usage: Option<Usage>,
    calls: Vec<Call>,
}

#[derive(SimpleObject)]
pub struct Call {
    step: String,
    n: u32,
    /// `llm`, `tool`, `http`, `context`.
    kind: String,
    /// `ok`, `failed`, or `reserved` (sent, not settled).
    outcome: String,
    attempt: u32,
    duration_ms: u64,
    at_ms: i64,
    error: Option<String>,
    request_hash: String,
    result_hash: Option<String>,
    /// The model alias that answered a model call.
    model: Option<String>,
    tokens_in: Option<u64>,
    tokens_out: Option<u64>,
    cost_usd: Option<f64>,
}

impl Call {
    fn of(c: &cairn_store::CallRow) -> Call {
        Call {
            step: c.step_id.clone(),
            n: c.n,
            kind: c.kind.clone(),
            outcome: c.outcome.clone(),
            attempt: c.attempt,
            duration_ms: c.duration_ms,
            at_ms: c.at_ms,
            error: c.error.clone(),
            request_hash: c.request_hash.clone(),
            result_hash: c.result_hash.clone(),
            model: c.cost.as_ref().map(|x| x.model.clone()),
            tokens_in: c.cost.as_ref().map(|x| x.tokens_in),
            tokens_out: c.cost.as_ref().map(|x| x.tokens_out),
            cost_usd: c.cost.as_ref().map(|x| x.cost_usd),
        }
    }
}

/// One event of a run's journal.
#[derive(SimpleObject)]
pub struct JournalEvent {
    seq: u64,
    at_ms: i64,
    /// `step_ready`, `attempt_started`, `run_completed` …
    r#type: String,
    step: Option<String>,
    /// The event's other fields, as in `GET /v1/runs/{id}/events`.
    data: Json<Value>,
}

/// A step that waits for a person.
#[derive(SimpleObject)]
pub struct Approval {
    run_id: String,
    workflow: String,
    step: String,
    prompt: String,
    approvers: Vec<String>,
    requested_at_ms: i64,
    deadline_ms: Option<i64>,
    /// `approval` or `escalation`.
    kind: String,
    decisions: Vec<String>,
    /// For a tool call waiting inside an agent step: the tool, its arguments (secrets redacted),
    /// its effect and why a person is asked.
    tool_call: Option<ToolCall>,
}

#[derive(SimpleObject)]
pub struct ToolCall {
    call: u32,
    tool: String,
    args: Json<Value>,
    effect: String,
    reason: String,
}

impl Approval {
    fn of(w: cairn_engine::WaitingApproval) -> Approval {
        Approval {
            run_id: w.run_id,
            workflow: w.workflow,
            step: w.step,
            prompt: w.prompt,
            approvers: w.approvers,
            requested_at_ms: w.requested_at_ms,
            deadline_ms: w.deadline_ms,
            kind: w.kind.to_string(),
            decisions: w.decisions.iter().map(|d| d.to_string()).collect(),
            tool_call: w.call.map(|c| ToolCall {
                call: c.call,
                tool: c.tool,
                args: Json(c.args),
                effect: c.effect,
                reason: c.reason,
            }),
        }
    }
}

fn schema() -> ReadSchema {
    Schema::build(Query, EmptyMutation, EmptySubscription)
        .limit_depth(MAX_DEPTH)
        .limit_complexity(MAX_COMPLEXITY)
        .finish()
}

/// The schema in GraphQL's SDL (for `cairn`'s docs and clients).
pub fn sdl() -> String {
    static SDL: OnceLock<String> = OnceLock::new();
    SDL.get_or_init(|| schema().sdl()).clone()
}

/// A GraphQL request.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(example = json!({"query": "{ runs(first: 5, status: \"FAILED\") { runs { id workflow failure { message } } nextCursor } }"}))]
pub struct GraphqlRequest {
    /// The query document (read-only: there are no mutations).
    query: String,
    /// Which operation of the document to run, when it has several.
    #[serde(default)]
    operation_name: Option<String>,
    /// Values for the query's variables.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    variables: Option<serde_json::Map<String, Value>>,
    /// Accepted and ignored (clients send it; no extension is supported).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    #[allow(dead_code)]
    extensions: Option<Value>,
}

/// Query with GraphQL
///
/// A read-only GraphQL view of runs (filters, pages), a run's steps, calls, events, approvals and
/// links, what waits for a person, and cost sums. Queries deeper than 15 levels or costing more
/// than 5,000 (each field 1, each field that reads the store 50 more, what waits for a person
/// 500; a list its page size times its selection) are refused. Errors in a
/// query are answered `200` with `errors`, as GraphQL does; the schema is the SDL at
/// `GET /graphql`.
#[utoipa::path(
    post,
    path = "/graphql",
    operation_id = "graphql",
    tag = "graphql",
    request_body(content = GraphqlRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "`{data, errors?}` as GraphQL answers.", body = Object),
        (status = 400, response = BadRequest),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, response = InvalidBody),
    ),
)]
pub async fn query<S: Store>(
    State(state): State<AppState<S>>,
    JsonBody(body, _): JsonBody<GraphqlRequest>,
) -> Result<Response, ApiError> {
    static SCHEMA: OnceLock<ReadSchema> = OnceLock::new();
    let schema = SCHEMA.get_or_init(schema);
    let mut request = async_graphql::Request::new(body.query);
    if let Some(name) = body.operation_name {
        request = request.operation_name(name);
    }
    if let Some(variables) = body.variables {
        request = request.variables(async_graphql::Variables::from_json(Value::Object(variables)));
    }
    let reader: Arc<dyn Reader> = Arc::new(StoreReader(state.store.clone()));
    let answer = schema.execute(request.data(reader).data(Waiting::default())).await;
    Ok((StatusCode::OK, axum::Json(answer)).into_response())
}

/// The GraphQL schema
///
/// The schema of `POST /graphql` in GraphQL's schema language.
#[utoipa::path(
    get,
    path = "/graphql",
    operation_id = "graphql_schema",
    tag = "graphql",
    responses((status = 200, description = "The schema (SDL).", content_type = "text/plain", body = String)),
)]
pub async fn schema_text() -> Response {
    (StatusCode::OK, [(axum::http::header::CONTENT_TYPE, "text/plain; charset=utf-8")], sdl()).into_response()
}
