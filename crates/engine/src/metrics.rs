//! Metrics from journaled facts: each commit's events are counted once, when they are committed
//! (a replayed or resumed run adds nothing for what it had already recorded), through the
//! `metrics` facade — nothing is kept unless a process installs a recorder (`cairn serve`
//! renders them at `/metrics`). Labels are bounded: workflow, step kind, error class, final
//! state, model, tool — never run ids.

use cairn_core::event::{Envelope, Event};
use cairn_core::state::RunState;
use std::sync::atomic::{AtomicBool, Ordering};

/// Whether a process installed a recorder: until then nothing is counted (no labels built on the
/// commit path for nobody).
static ON: AtomicBool = AtomicBool::new(false);

/// How many distinct values one label takes in a process: past it, new values count as
/// `other`. Workflow names come from inline definitions any operator may send, so without a cap
/// they could grow the exposition without end.
const MAX_LABEL_VALUES: usize = 200;

static WORKFLOWS: std::sync::Mutex<Option<std::collections::HashSet<String>>> = std::sync::Mutex::new(None);
static KINDS: std::sync::Mutex<Option<std::collections::HashSet<String>>> = std::sync::Mutex::new(None);
static NAMES: std::sync::Mutex<Option<std::collections::HashSet<String>>> = std::sync::Mutex::new(None);

/// `value` as a label value, or `other` once the label has [`MAX_LABEL_VALUES`] others.
fn bounded(seen: &std::sync::Mutex<Option<std::collections::HashSet<String>>>, value: &str) -> String {
    let Ok(mut seen) = seen.lock() else { return "other".into() };
    let seen = seen.get_or_insert_with(Default::default);
    if seen.contains(value) {
        return value.to_string();
    }
    if seen.len() >= MAX_LABEL_VALUES {
        return "other".into();
    }
    seen.insert(value.to_string());
    value.to_string()
}

/// Turns counting on, once a recorder is installed (`cairn serve`).
pub fn enable() {
    ON.store(true, Ordering::Relaxed);
}

/// Counts what one commit of `state`'s run recorded.
pub(crate) fn committed(state: &RunState, events: &[Envelope]) {
    if !ON.load(Ordering::Relaxed) {
        return;
    }
    let workflow = bounded(&WORKFLOWS, &state.workflow);
    let kind_of = |step: &str| {
        let def = state.definition.as_ref();
        let kind = def.and_then(|d| d.step(step)).map(|s| s.kind.clone());
        kind.unwrap_or_else(|| "unknown".into())
    };
    for e in events {
        match &e.event {
            Event::RunCreated { .. } => {
                metrics::counter!("cairn_runs_started_total", "workflow" => workflow.clone()).increment(1);
            }
            Event::AttemptStarted { step, .. } => {
                let kind = kind_of(step.as_str());
                metrics::counter!("cairn_step_attempts_total", "workflow" => workflow.clone(), "kind" => kind)
                    .increment(1);
            }
            Event::AttemptSucceeded { step, duration_ms, .. } => {
                let kind = kind_of(step.as_str());
                metrics::histogram!("cairn_step_attempt_seconds", "kind" => kind, "outcome" => "ok")
                    .record(*duration_ms as f64 / 1000.0);
            }
            Event::AttemptFailed { step, failure, duration_ms, .. } => {
                let kind = kind_of(step.as_str());
                let class = failure.class.as_str();
                metrics::histogram!("cairn_step_attempt_seconds", "kind" => kind.clone(), "outcome" => "failed")
                    .record(*duration_ms as f64 / 1000.0);
                metrics::counter!("cairn_step_errors_total", "kind" => kind, "class" => class).increment(1);
            }
            Event::RetryScheduled { step, .. } => {
                metrics::counter!("cairn_retries_scheduled_total", "kind" => kind_of(step.as_str())).increment(1);
            }
            Event::StepFailed { step, .. } => {
                metrics::counter!("cairn_steps_failed_total", "kind" => kind_of(step.as_str())).increment(1);
            }
            Event::RunCompleted { .. }
            | Event::RunFailed { .. }
            | Event::RunCancelled { .. }
            | Event::RunCompensated => {
                let state_label = match &e.event {
                    Event::RunCompleted { .. } => "completed",
                    Event::RunFailed { .. } => "failed",
                    Event::RunCancelled { .. } => "cancelled",
                    _ => "compensated",
                };
                metrics::counter!("cairn_runs_finished_total", "workflow" => workflow.clone(), "state" => state_label)
                    .increment(1);
                let seconds = (e.at_ms - state.created_at_ms).max(0) as f64 / 1000.0;
                metrics::histogram!("cairn_run_seconds", "workflow" => workflow.clone(), "state" => state_label)
                    .record(seconds);
            }
            _ => {}
        }
    }
}

/// Counts a call an attempt made (not one returned from the record): by kind (`llm`, `tool`,
/// …) and name (the model alias or the tool), with its duration, and a model call's tokens and
/// cost.
pub(crate) fn call(kind: &str, name: &str, ok: bool, duration_ms: u64, cost: Option<&cairn_store::CallCost>) {
    if !ON.load(Ordering::Relaxed) {
        return;
    }
    let (kind, name) = (bounded(&KINDS, kind), bounded(&NAMES, name));
    let outcome = if ok { "ok" } else { "failed" };
    metrics::counter!("cairn_calls_total", "kind" => kind.clone(), "name" => name.clone(), "outcome" => outcome)
        .increment(1);
    metrics::histogram!("cairn_call_seconds", "kind" => kind, "name" => name.clone())
        .record(duration_ms as f64 / 1000.0);
    if let Some(c) = cost {
        metrics::counter!("cairn_model_tokens_total", "model" => name.clone(), "direction" => "input")
            .increment(c.tokens_in);
        metrics::counter!("cairn_model_tokens_total", "model" => name.clone(), "direction" => "output")
            .increment(c.tokens_out);
        // Micro-dollars: counters count whole numbers.
        metrics::counter!("cairn_model_cost_microusd_total", "model" => name)
            .increment((c.cost_usd * 1e6).round() as u64);
    }
}

/// How many ready or running steps a scrape looks at, at most (the stuck signals are about the
/// oldest; a backlog larger than this is itself the signal).
const SCRAPE_STEPS: usize = 10_000;
/// How far past its timeout a running attempt must be before it counts as stuck: its owner
/// cancels it at the timeout, then commits.
const TIMEOUT_GRACE_MS: i64 = 2_000;

/// What is in flight now and what looks stuck, from the store (every process sharing the
/// database sees the same).
#[derive(Debug, Clone, Default)]
pub struct Now {
    /// Unfinished runs by state (every unfinished state, zeros included).
    pub runs_by_status: Vec<(&'static str, u64)>,
    /// Unfinished runs whose owner's lease expired and that nobody has taken over.
    pub expired_leases: u64,
    /// Steps ready to start (a due retry counts) …
    pub ready: u64,
    /// … and how long the oldest of them has waited.
    pub oldest_ready_ms: i64,
    /// Steps still RUNNING in the database past their attempt timeout (plus a grace).
    pub past_timeout: u64,
}

/// Reads [`Now`] from the store.
pub async fn now<S: cairn_store::Store + ?Sized>(store: &S) -> Result<Now, cairn_store::Error> {
    let now = crate::now_ms();
    let work = store.active_work(now, SCRAPE_STEPS).await?;
    let runs_by_status = cairn_core::RunStatus::ALL
        .iter()
        .filter(|s| !s.is_terminal())
        .map(|state| {
            let n = work.runs_by_status.iter().find(|(s, _)| s == state.as_str()).map_or(0, |(_, n)| *n);
            (state.as_str(), n)
        })
        .collect();
    let mut out = Now { runs_by_status, expired_leases: work.expired_leases, ..Now::default() };
    let mut timeouts: std::collections::HashMap<String, Option<cairn_core::Definition>> = Default::default();
    for step in &work.steps {
        match step.status.as_str() {
            "READY" => {
                out.ready += 1;
                out.oldest_ready_ms = out.oldest_ready_ms.max(now - step.run_updated_at_ms);
            }
            "RETRY_WAIT" => {
                if let Some(due) = step.not_before_ms.filter(|t| *t <= now) {
                    out.ready += 1;
                    out.oldest_ready_ms = out.oldest_ready_ms.max(now - due);
                }
            }
            _ => {
                let (Some(started), Some(hash)) = (step.attempt_started_at_ms, &step.definition_hash) else { continue };
                if !timeouts.contains_key(hash) {
                    let definition = store.payload(hash).await?.and_then(|v| serde_json::from_value(v).ok());
                    timeouts.insert(hash.clone(), definition);
                }
                // An instance (`fetch[3]`, `rounds#2`) has its step's timeout.
                let base = step.step_id.split(['[', '#']).next().unwrap_or(&step.step_id);
                let timeout = timeouts[hash]
                    .as_ref()
                    .and_then(|d: &cairn_core::Definition| d.steps.iter().find(|s| s.id.as_str() == base))
                    .and_then(|s| s.timeout_ms);
                if timeout.is_some_and(|t| now - started > t as i64 + TIMEOUT_GRACE_MS) {
                    out.past_timeout += 1;
                }
            }
        }
    }
    out.oldest_ready_ms = out.oldest_ready_ms.max(0);
    Ok(out)
}

/// The gauges that describe now, read from the store at each scrape (every process sharing the
/// database sees the same): unfinished runs by state; leases expired and not taken over; the
/// age of the oldest step ready to start and not started (a due retry counts); steps still
/// running past their attempt timeout; approvals waiting and the oldest's age. And, from this
/// process, each model provider's circuit breaker.
pub async fn scrape<S: cairn_store::Store>(engine: &crate::Engine<S>) -> Result<(), cairn_store::Error> {
    let store = engine.store();
    let now = crate::now_ms();
    let current = self::now(&**store).await?;
    for (state, n) in &current.runs_by_status {
        metrics::gauge!("cairn_runs_active", "state" => state.to_ascii_lowercase()).set(*n as f64);
    }
    metrics::gauge!("cairn_runs_lease_expired").set(current.expired_leases as f64);
    metrics::gauge!("cairn_steps_ready").set(current.ready as f64);
    metrics::gauge!("cairn_step_ready_oldest_age_seconds").set(current.oldest_ready_ms as f64 / 1000.0);
    metrics::gauge!("cairn_steps_running_past_timeout").set(current.past_timeout as f64);

    let waiting = crate::waiting_approvals(&**store).await?;
    let oldest = waiting.iter().map(|w| now - w.requested_at_ms).max().unwrap_or(0).max(0);
    metrics::gauge!("cairn_approvals_waiting").set(waiting.len() as f64);
    metrics::gauge!("cairn_approval_oldest_age_seconds").set(oldest as f64 / 1000.0);

    let breakers = crate::breakers::snapshot();
    for provider in engine.models().providers.keys() {
        let state = breakers.get(provider).map_or("closed", |b| b.state);
        for s in ["closed", "open", "half_open"] {
            metrics::gauge!("cairn_breaker_state", "provider" => provider.clone(), "state" => s).set(if s == state {
                1.0
            } else {
                0.0
            });
        }
    }
    Ok(())
}
