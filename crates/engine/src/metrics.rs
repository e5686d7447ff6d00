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

/// Turns counting on, once a recorder is installed (`cairn serve`).
pub fn enable() {
    ON.store(true, Ordering::Relaxed);
}

/// Counts what one commit of `state`'s run recorded.
pub(crate) fn committed(state: &RunState, events: &[Envelope]) {
    if !ON.load(Ordering::Relaxed) {
        return;
    }
    let workflow = state.workflow.clone();
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
    let (kind, name) = (kind.to_string(), name.to_string());
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
