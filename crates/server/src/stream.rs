//! Server-Sent Event streams of journal events, resumable with `Last-Event-ID`.
//!
//! A stream reads the journal (the truth) after the last id it sent, then waits for a change
//! notice (or a short poll, for runs driven by other processes). Ids are journal positions — the
//! run's `seq` for one run, the global event id for all runs — so a client that reconnects with
//! `Last-Event-ID` gets every later event exactly once.

use crate::AppState;
use crate::body::{Path, Query};
use crate::error::ApiError;
use crate::responses::{BadRequest, RunNotFound};
use crate::runs::{RunPath, parse_run_id};
use crate::views::JournalEvent;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use cairn_core::{Envelope, Event, RunId};
use cairn_store::Store;
use futures_util::Stream;
use serde::Deserialize;
use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;
use tokio::sync::{broadcast, watch};
use utoipa::openapi::schema::{AllOfBuilder, ObjectBuilder, Schema, Type};
use utoipa::openapi::{Ref, RefOr};
use utoipa::{IntoParams, PartialSchema, ToSchema};

const POLL: Duration = Duration::from_millis(500);

/// A model call's tokens while it streams (`llm.delta`), or the news that the tokens so far are
/// void (`llm.restart`: the call failed, or another call of the step begins). Never journaled:
/// the final answer is, in the step's `attempt_succeeded`.
#[derive(serde::Serialize, ToSchema)]
pub struct ModelDelta {
    /// `llm.delta` or `llm.restart`.
    #[schema(pattern = "^llm\\.(delta|restart)$")]
    r#type: String,
    run_id: String,
    step: String,
    attempt: u32,
    /// The call's position among the step's calls.
    call: u32,
    /// `llm.delta`: the next tokens.
    text: Option<String>,
    /// `llm.restart`: why the tokens so far are void.
    reason: Option<String>,
}

/// One Server-Sent Event whose `data` is JSON of the schema named `data` (described per event,
/// as OpenAPI 3.2's `itemSchema` does and schema-based tools read `text/event-stream`).
fn sse_event(description: &str, data: &str, id_pattern: &str) -> RefOr<Schema> {
    let text = || ObjectBuilder::new().schema_type(Type::String);
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .description(Some(description))
        .property(
            "id",
            text().pattern(Some(id_pattern)).description(Some("Send as `Last-Event-ID` to resume after it.")),
        )
        .required("id")
        .property("event", text().description(Some("The journal event's `type` (or `llm.delta`, `llm.restart`).")))
        .required("event")
        .property(
            "data",
            text()
                .content_media_type("application/json")
                .content_schema(Some(Ref::from_schema_name(data)))
                .description(Some(format!("The event as JSON (`{data}`)."))),
        )
        .required("data")
        .into()
}

/// An event of one run's stream.
pub struct RunStreamEvent;

impl PartialSchema for RunStreamEvent {
    fn schema() -> RefOr<Schema> {
        sse_event(
            "One event of a run's stream: a journal event (`id` is its `seq`; `data` a `JournalEvent`), or while a \
             model call streams an `llm.delta` / `llm.restart` (`id` is `SEQ.K`; `data` a `ModelDelta`).",
            "JournalEvent",
            "^[0-9]+(\\.[0-9]+)?$",
        )
    }
}

impl ToSchema for RunStreamEvent {
    fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
        schemas.push((JournalEvent::name().into(), JournalEvent::schema()));
        schemas.push((ModelDelta::name().into(), ModelDelta::schema()));
    }
}

/// A journal event in the stream of every run: with the run it belongs to.
pub struct FeedEvent;

impl PartialSchema for FeedEvent {
    fn schema() -> RefOr<Schema> {
        let run = ObjectBuilder::new()
            .schema_type(Type::Object)
            .property("run_id", ObjectBuilder::new().schema_type(Type::String).description(Some("The event's run.")))
            .required("run_id");
        AllOfBuilder::new().item(Ref::from_schema_name("JournalEvent")).item(run).into()
    }
}

impl ToSchema for FeedEvent {}

/// An event of the stream of every run.
pub struct FeedStreamEvent;

impl PartialSchema for FeedStreamEvent {
    fn schema() -> RefOr<Schema> {
        sse_event("One event of the stream of every run: `id` is the global event id.", "FeedEvent", "^[0-9]+$")
    }
}

impl ToSchema for FeedStreamEvent {
    fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
        schemas.push((JournalEvent::name().into(), JournalEvent::schema()));
        schemas.push((FeedEvent::name().into(), FeedEvent::schema()));
    }
}

#[derive(Deserialize, Default, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct StreamQuery {
    /// Start after this event id (as `Last-Event-ID`, which wins when both are given).
    #[param(minimum = 0)]
    after: Option<i64>,
}

fn resume_point(headers: &HeaderMap, q: &StreamQuery) -> Result<Option<i64>, ApiError> {
    Ok(resume_at(headers, q, false)?.map(|(seq, _)| seq))
}

/// Where to resume: a journal position, and for a run's stream the piece number of an
/// `llm.delta`/`llm.restart` id (`SEQ.K`).
fn resume_at(headers: &HeaderMap, q: &StreamQuery, pieces: bool) -> Result<Option<(i64, Option<u64>)>, ApiError> {
    let bad = || ApiError::bad_request("bad_last_event_id", "Last-Event-ID must be an id this stream sent");
    let Some(v) = headers.get("last-event-id") else { return Ok(q.after.map(|n| (n, None))) };
    let text = v.to_str().map_err(|_| bad())?.trim();
    let (seq, k) = match text.split_once('.') {
        Some((seq, k)) if pieces => (seq, Some(k.parse::<u64>().map_err(|_| bad())?)),
        Some(_) => return Err(bad()),
        None => (text, None),
    };
    let seq = seq.parse::<i64>().ok().filter(|n| *n >= 0).ok_or_else(bad)?;
    Ok(Some((seq, k)))
}

fn finishes(e: &Envelope) -> bool {
    matches!(e.event, Event::RunCompleted { .. } | Event::RunFailed { .. } | Event::RunCancelled { .. })
}

fn sse(id: i64, env: &Envelope, run_id: Option<&str>) -> SseEvent {
    let mut data = serde_json::to_value(env).unwrap_or_default();
    if let Some(run) = run_id {
        data["run_id"] = serde_json::Value::String(run.to_string());
    }
    SseEvent::default().id(id.to_string()).event(env.event.kind()).data(data.to_string())
}

/// Waits for a change notice (for `only`, if given; with `tokens`, also a streaming call's
/// tokens), a poll tick, or shutdown (false).
async fn wait_change(
    rx: &mut broadcast::Receiver<RunId>,
    mut tokens: Option<&mut broadcast::Receiver<RunId>>,
    shutdown: &mut watch::Receiver<bool>,
    only: Option<&RunId>,
) -> bool {
    let sleep = tokio::time::sleep(POLL);
    tokio::pin!(sleep);
    loop {
        let streamed = async {
            match tokens.as_deref_mut() {
                Some(t) => t.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            changed = rx.recv() => match changed {
                Ok(run) if only.is_some_and(|o| *o != run) => continue,
                _ => return true,
            },
            changed = streamed => match changed {
                Ok(run) if only.is_some_and(|o| *o != run) => continue,
                _ => return true,
            },
            _ = &mut sleep => return true,
            _ = shutdown.changed() => return false,
        }
    }
}

struct RunFeed<S: Store> {
    state: AppState<S>,
    id: RunId,
    last: u64,
    /// The last `llm.delta`/`llm.restart` piece sent; before the first, pieces that came after
    /// journal position `floor` are due.
    last_piece: Option<u64>,
    floor: u64,
    tokens: broadcast::Receiver<RunId>,
    buf: VecDeque<SseEvent>,
    rx: broadcast::Receiver<RunId>,
    shutdown: watch::Receiver<bool>,
    done: bool,
}

/// Follow a run's journal
///
/// Server-Sent Events, one per journal event: `id` is the event's `seq`, `event` its `type`,
/// `data` the event as JSON (a `JournalEvent`). It replays the journal after `Last-Event-ID` (or
/// `?after=`), then follows it live, and ends after the run finishes; reconnecting with the last
/// id seen loses and repeats nothing. While a model call of the run streams in this server, its
/// tokens come as `llm.delta` events (`id` `SEQ.K`, `data` a `ModelDelta`), and an `llm.restart`
/// comes before the tokens of a call that replaces one already streamed (a retry, a repair, the
/// next model): watchers drop what they showed of that step, never see it twice.
#[utoipa::path(
    get,
    path = "/v1/runs/{id}/events/stream",
    operation_id = "stream_run_events",
    tag = "runs",
    params(
        RunPath,
        StreamQuery,
        ("Last-Event-ID" = Option<String>, Header, pattern = "^[0-9]+(\\.[0-9]+)?$",
         description = "Resume after this event id (the last `id:` received)."),
    ),
    responses(
        (status = 200, description = "An event stream; each event's `data` is a `JournalEvent`.",
         content_type = "text/event-stream", body = RunStreamEvent,
         example = json!({"id": "1", "event": "run_created",
             "data": "{\"at_ms\":1767225600000,\"schema\":3,\"seq\":1,\"type\":\"run_created\",\"workflow\":\"summary-and-email\"}"})),
        (status = 400, response = BadRequest),
        (status = 404, response = RunNotFound),
    ),
)]
pub async fn run_stream<S: Store>(
    State(state): State<AppState<S>>,
    Path(RunPath { id }): Path<RunPath>,
    Query(q): Query<StreamQuery>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    let id = parse_run_id(&id)?;
    let (after, last_piece) = resume_at(&headers, &q, true)?.unwrap_or((0, None));
    let after = after.max(0) as u64;
    state.store.get_run(&id).await?;
    let feed = RunFeed {
        rx: state.changes.subscribe(),
        tokens: state.token_changes.subscribe(),
        shutdown: state.shutdown.clone(),
        state,
        id,
        last: after,
        last_piece,
        floor: after,
        buf: VecDeque::new(),
        done: false,
    };
    let stream = futures_util::stream::unfold(feed, |mut f| async move {
        loop {
            if let Some(e) = f.buf.pop_front() {
                return Some((Ok(e), f));
            }
            if f.done || *f.shutdown.borrow() {
                return None;
            }
            let events = f.state.store.events_after(&f.id, f.last).await.ok()?;
            if !events.is_empty() {
                for env in &events {
                    f.last = env.seq;
                    f.done |= finishes(env);
                    f.buf.push_back(sse(env.seq as i64, env, None));
                }
                continue;
            }
            // Tokens of calls in flight, after the journal events they followed.
            let pieces = f.state.deltas.after(&f.id, f.floor, f.last_piece);
            if !pieces.is_empty() {
                for p in pieces {
                    f.last_piece = Some(p.k);
                    let event = SseEvent::default().id(p.id()).event(p.event).data(p.data.to_string());
                    f.buf.push_back(event);
                }
                continue;
            }
            let row = f.state.store.get_run(&f.id).await.ok()?;
            if row.last_seq > f.last {
                // Committed between our two reads: fetch it before deciding anything.
                continue;
            }
            if cairn_core::RunStatus::parse(&row.status).is_some_and(|s| s.is_terminal()) {
                return None;
            }
            if !wait_change(&mut f.rx, Some(&mut f.tokens), &mut f.shutdown, Some(&f.id)).await {
                return None;
            }
        }
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

struct AllFeed<S: Store> {
    state: AppState<S>,
    last: i64,
    buf: VecDeque<SseEvent>,
    rx: broadcast::Receiver<RunId>,
    shutdown: watch::Receiver<bool>,
}

/// Follow every run
///
/// Server-Sent Events for every run's journal as it is committed: `id` is the global event id,
/// `event` the event's `type`, `data` the event as JSON with its `run_id`. Without
/// `Last-Event-ID` (or `?after=`) it starts from now. It does not end on its own.
#[utoipa::path(
    get,
    path = "/v1/events/stream",
    operation_id = "stream_all_events",
    tag = "runs",
    params(
        StreamQuery,
        ("Last-Event-ID" = Option<String>, Header, pattern = "^[0-9]+$",
         description = "Resume after this event id (the last `id:` received)."),
    ),
    responses(
        (status = 200, description = "An event stream; each event's `data` is a `JournalEvent` with its `run_id`.",
         content_type = "text/event-stream", body = FeedStreamEvent,
         example = json!({"id": "812", "event": "step_ready",
             "data": "{\"at_ms\":1767225600120,\"run_id\":\"wf_01KBC6X8Y2S7J5W0Q3R4T5V6X7\",\"schema\":3,\"seq\":3,\"step\":\"generate_summary\",\"type\":\"step_ready\"}"})),
        (status = 400, response = BadRequest),
    ),
)]
pub async fn all_stream<S: Store>(
    State(state): State<AppState<S>>,
    Query(q): Query<StreamQuery>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    let after = match resume_point(&headers, &q)? {
        Some(n) => n,
        None => state.store.last_gid().await?,
    };
    let feed = AllFeed {
        rx: state.changes.subscribe(),
        shutdown: state.shutdown.clone(),
        state,
        last: after,
        buf: VecDeque::new(),
    };
    let stream = futures_util::stream::unfold(feed, |mut f| async move {
        loop {
            if let Some(e) = f.buf.pop_front() {
                return Some((Ok(e), f));
            }
            if *f.shutdown.borrow() {
                return None;
            }
            let items = f.state.store.feed(f.last, 500).await.ok()?;
            if !items.is_empty() {
                for item in &items {
                    f.last = item.gid;
                    f.buf.push_back(sse(item.gid, &item.event, Some(&item.run_id)));
                }
                continue;
            }
            if !wait_change(&mut f.rx, None, &mut f.shutdown, None).await {
                return None;
            }
        }
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}
