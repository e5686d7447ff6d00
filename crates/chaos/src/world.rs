//! The outside world of the chaos workload, on loopback: one HTTP service that every stage of
//! every job talks to (`POST /stage/{job}/{stage}`), plus an OpenAI-compatible model
//! (`POST /v1/chat/completions`, models `primary` and `fallback`) for the evaluation stage. It
//! plays the seeded [`Schedule`] (a real local model may answer the evaluation instead of the
//! canned score): a stage's first requests fail (503) or hang past the stage's
//! timeout, the primary model is away for the outage's jobs, and at a kill point it asks its
//! owner to kill the process that sent the request — after the effect was applied, before the
//! answer leaves. It counts what happened: requests and successes per stage, effects applied
//! per write (a request with an `Idempotency-Key` seen before is not applied again, as a
//! careful service does), priced model calls.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use cairn_core::chaos_plan::{Fault, STAGES, Schedule};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// The evaluation stage: a model call.
pub const EVALUATE: usize = 2;
/// How long a stage's hung first attempt takes to answer (its timeout must be shorter).
pub const HANG: Duration = Duration::from_secs(3);
/// What one answered model call costs.
pub const PRICE_USD: f64 = 0.002;

/// A request to kill the process running `job`; answer when it is dead.
pub struct KillOrder {
    pub job: usize,
    pub stage: usize,
    pub done: oneshot::Sender<()>,
}

/// What one stage of one job saw.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StageCount {
    pub requests: u32,
    /// Answered with success.
    pub ok: u32,
    /// Effects applied (write stages: at most once per idempotency key).
    pub applied: u32,
}

#[derive(Default)]
struct Counts {
    stages: BTreeMap<(usize, usize), StageCount>,
    keys: HashSet<String>,
    killed: HashSet<(usize, usize)>,
    model_calls: u32,
}

struct World {
    schedule: Schedule,
    /// A real model answering the evaluation stage instead of the canned score.
    upstream: Option<crate::http::Upstream>,
    counts: Mutex<Counts>,
    kills: mpsc::UnboundedSender<KillOrder>,
}

/// The running service.
pub struct Service {
    pub addr: SocketAddr,
    world: Arc<World>,
    _served: crate::http::Served,
}

/// What the world counted, for the report.
#[derive(Clone, Debug, PartialEq)]
pub struct Tally {
    pub stages: BTreeMap<(usize, usize), StageCount>,
    pub model_calls: u32,
}

impl Tally {
    /// Effects applied more than once (write stages).
    pub fn duplicated_effects(&self) -> u32 {
        self.stages.iter().filter(|((_, s), _)| *s >= 3).map(|(_, c)| c.applied.saturating_sub(1)).sum()
    }

    /// Stage executions that succeeded and were thrown away (a stage done again).
    pub fn wasted_work(&self) -> u32 {
        self.stages.values().map(|c| c.ok.saturating_sub(1)).sum()
    }

    pub fn cost_usd(&self) -> f64 {
        f64::from(self.model_calls) * PRICE_USD
    }
}

impl Service {
    /// Starts the world on loopback; kill orders arrive on the returned channel.
    pub async fn start(
        schedule: Schedule,
        upstream: Option<crate::http::Upstream>,
    ) -> std::io::Result<(Service, mpsc::UnboundedReceiver<KillOrder>)> {
        let (tx, rx) = mpsc::unbounded_channel();
        let world = Arc::new(World { schedule, upstream, counts: Mutex::default(), kills: tx });
        let app = Router::new()
            .route("/stage/{job}/{stage}", post(stage))
            .route("/v1/chat/completions", post(model))
            .with_state(world.clone());
        let served = crate::http::serve(app).await?;
        Ok((Service { addr: served.addr, world, _served: served }, rx))
    }

    /// What was counted so far.
    pub fn tally(&self) -> Tally {
        let counts = self.world.counts.lock().unwrap_or_else(|p| p.into_inner());
        Tally { stages: counts.stages.clone(), model_calls: counts.model_calls }
    }
}

fn unavailable(why: &str) -> Response {
    (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"error": why}))).into_response()
}

/// Plays the schedule for one request of `(job, stage)`: `Err` is the answer to give at once;
/// `Ok(true)` means the work is done but its answer hangs past the caller's timeout (counted now,
/// so the tally does not depend on when the late answer leaves).
async fn play(world: &World, job: usize, stage: usize, key: Option<&str>) -> Result<bool, Response> {
    let n = {
        let mut counts = world.counts.lock().unwrap_or_else(|p| p.into_inner());
        let c = counts.stages.entry((job, stage)).or_default();
        c.requests += 1;
        c.requests
    };
    let late = match world.schedule.fault(job, stage) {
        Some(Fault::Transient { times }) if n <= times => return Err(unavailable("scheduled transient failure")),
        Some(Fault::Timeout) => n == 1,
        _ => false,
    };
    let kill = {
        let mut counts = world.counts.lock().unwrap_or_else(|p| p.into_inner());
        let fresh = key.is_none_or(|k| counts.keys.insert(k.to_string()));
        let c = counts.stages.entry((job, stage)).or_default();
        if fresh {
            c.applied += 1;
        }
        world.schedule.kill_after(job, stage) && counts.killed.insert((job, stage))
    };
    if kill {
        // The effect is applied; the process that asked for it dies before it hears back.
        let (done, dead) = oneshot::channel();
        if world.kills.send(KillOrder { job, stage, done }).is_ok() {
            let _ = dead.await;
        }
        return Err(unavailable("the caller was killed"));
    }
    let mut counts = world.counts.lock().unwrap_or_else(|p| p.into_inner());
    counts.stages.entry((job, stage)).or_default().ok += 1;
    if stage == EVALUATE {
        counts.model_calls += 1;
    }
    Ok(late)
}

/// A late answer waits past every caller's timeout.
async fn hang(late: bool) {
    if late {
        tokio::time::sleep(HANG).await;
    }
}

async fn stage(
    State(world): State<Arc<World>>,
    Path((job, stage)): Path<(usize, String)>,
    headers: HeaderMap,
) -> Response {
    let Some(index) = STAGES.iter().position(|s| *s == stage) else {
        return (StatusCode::NOT_FOUND, Json(json!({"error": "no such stage"}))).into_response();
    };
    if job >= world.schedule.jobs {
        return (StatusCode::NOT_FOUND, Json(json!({"error": "no such job"}))).into_response();
    }
    let key = headers.get("idempotency-key").and_then(|v| v.to_str().ok());
    match play(&world, job, index, key).await {
        Err(answer) => return answer,
        Ok(late) => hang(late).await,
    }
    Json(json!({"job": job, "stage": stage, "rows": 100 + job})).into_response()
}

/// The model: the job is named in the prompt (`job N`).
async fn model(State(world): State<Arc<World>>, Json(body): Json<Value>) -> Response {
    let prompt = body["messages"].as_array().and_then(|m| m.last()).and_then(|m| m["content"].as_str()).unwrap_or("");
    let Some(job) = prompt
        .split("job ")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse::<usize>().ok())
        .filter(|j| *j < world.schedule.jobs)
    else {
        return (StatusCode::BAD_REQUEST, Json(json!({"error": "name the job in the prompt: `job N`"})))
            .into_response();
    };
    let model = body["model"].as_str().unwrap_or("primary").to_string();
    if model == "primary" && world.schedule.model_away(job) {
        return unavailable("the primary model is away");
    }
    match play(&world, job, EVALUATE, None).await {
        Err(answer) => return answer,
        Ok(late) => hang(late).await,
    }
    if let Some(up) = &world.upstream {
        return crate::http::relay(up.chat(&body).await);
    }
    Json(json!({
        "id": format!("chaos-{job}"),
        "object": "chat.completion",
        "model": model,
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": format!("score for job {job}: 0.9")}}],
        "usage": {"prompt_tokens": 20, "completion_tokens": 8, "total_tokens": 28},
    }))
    .into_response()
}
