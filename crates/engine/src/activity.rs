//! Running one attempt: fault injection (per step, and seeded chaos per run) first, then the
//! step's kind from the registry (`crate::kinds`).
//!
//! Activities may run more than once (at-least-once): an attempt interrupted by a crash is tried
//! again. Kinds whose effect class writes go through the effect log (see the driver), so their
//! *effect* happens once.

use crate::kinds::{Attempt, Registry, Usage};
use crate::secrets::Resolved;
use cairn_core::chaos::unit_hash;
use cairn_core::definition::Inject;
use cairn_core::event::{Chaos, ErrorClass, Failure};
use serde_json::Value;
use std::time::Duration;
use tokio::sync::watch;

/// What one attempt needs to know.
pub struct AttemptContext<'a> {
    pub run_id: &'a str,
    pub workflow: &'a str,
    pub step: &'a str,
    pub kind: &'a str,
    pub attempt: u32,
    /// The input with secret values in it (in memory only; the journal has the references).
    pub input: &'a Value,
    /// The values of the secrets in `input`, for kinds that must redact before they shorten
    /// what a service answered (the caller redacts the whole outcome afterwards).
    pub secrets: &'a Resolved,
    pub inject: Option<&'a Inject>,
    pub chaos: Option<Chaos>,
    /// Who runs the attempt (the lease owner), sent to services for their logs.
    pub worker: &'a str,
    pub kinds: &'a Registry,
    /// The kind's configuration (null when none).
    pub config: &'a Value,
    /// Set when the engine stops.
    pub cancel: watch::Receiver<bool>,
    /// Where the attempt's calls are journaled (none in unit tests: calls are simply made).
    pub(crate) calls: Option<crate::calls::CallLog>,
    /// What people answered about the step's calls that needed approval.
    pub decisions: Vec<cairn_core::event::CallDecision>,
    /// The tools the run's workflow defines.
    pub workflow_tools: std::sync::Arc<std::collections::BTreeMap<String, Value>>,
    /// When the attempt times out, if its step has a timeout.
    pub deadline_ms: Option<i64>,
    /// The input as journaled (secret references, not values).
    pub journaled_input: Option<&'a Value>,
    /// The attempt's concurrency permit, held while it runs (an attempt that only waits may give
    /// it back).
    pub slot: Option<tokio::sync::OwnedSemaphorePermit>,
}

/// The effect-log key of an attempt whose kind writes to the outside (by its effect class, from
/// the journaled input): `run/step/call`, the same for every attempt of the step. `None` for kinds
/// that only read or compute. Give it the journaled input: the key must not depend on a secret's
/// value.
pub fn effect_key(kinds: &Registry, kind: &str, input: &Value, run_id: &str, step: &str) -> Option<String> {
    let effect = kinds.effect(kind, input)?;
    effect.needs_effect_key().then(|| format!("{run_id}/{step}/1"))
}

/// An activity's result and the log lines it wants kept with the attempt.
pub struct Outcome {
    pub result: Result<Value, Failure>,
    pub logs: Vec<String>,
    /// What the attempt used, when its kind reports it.
    pub usage: Option<Usage>,
}

impl Outcome {
    pub fn of(result: Result<Value, Failure>, logs: Vec<String>) -> Outcome {
        Outcome { result, logs, usage: None }
    }
}

/// Runs the attempt (timeouts are applied by the caller).
pub async fn execute(ctx: AttemptContext<'_>) -> Outcome {
    let mut logs = Vec::new();
    if let Some(inject) = ctx.inject {
        if inject.delay_ms > 0 {
            tokio::time::sleep(Duration::from_millis(inject.delay_ms)).await;
        }
        if inject.hang {
            logs.push("inject: hanging until the timeout cancels the attempt".into());
            std::future::pending::<()>().await;
        }
        if ctx.attempt <= inject.fail_times {
            let msg = format!("injected failure (attempt {} of fail_times={})", ctx.attempt, inject.fail_times);
            return Outcome::of(Err(Failure::new(inject.fail_class, msg)), logs);
        }
        if inject.fail_rate > 0.0 && unit_hash(0, &[ctx.run_id, ctx.step, &ctx.attempt.to_string()]) < inject.fail_rate
        {
            let msg = format!("injected failure (fail_rate={})", inject.fail_rate);
            return Outcome::of(Err(Failure::new(inject.fail_class, msg)), logs);
        }
    }
    if let Some(chaos) = ctx.chaos
        && unit_hash(chaos.seed, &[ctx.workflow, ctx.step, &ctx.attempt.to_string()]) < chaos.rate
    {
        let msg = format!("chaos: injected transient failure (seed={}, rate={})", chaos.seed, chaos.rate);
        return Outcome::of(Err(Failure::new(ErrorClass::Transient, msg)), logs);
    }
    let mut attempt = Attempt::new(
        ctx.run_id,
        ctx.workflow,
        ctx.step,
        ctx.attempt,
        ctx.input,
        ctx.secrets,
        ctx.config,
        ctx.worker,
        ctx.cancel,
        ctx.calls,
    )
    .with_decisions(ctx.decisions)
    .with_workflow_tools(ctx.workflow_tools)
    .with_deadline(ctx.deadline_ms)
    .with_journal(ctx.journaled_input, ctx.slot);
    let result = ctx.kinds.run(ctx.kind, &mut attempt).await;
    let (lines, usage) = attempt.finish();
    logs.extend(lines);
    Outcome { result, logs, usage }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ctx<'a>(
        kinds: &'a Registry,
        kind: &'a str,
        input: &'a Value,
        inject: Option<&'a Inject>,
        attempt: u32,
    ) -> AttemptContext<'a> {
        static NONE: std::sync::LazyLock<Resolved> = std::sync::LazyLock::new(Resolved::none);
        AttemptContext {
            run_id: "wf_x",
            workflow: "w",
            step: "s",
            kind,
            attempt,
            input,
            secrets: &NONE,
            inject,
            chaos: None,
            worker: "t",
            kinds,
            config: &Value::Null,
            cancel: watch::channel(false).1,
            calls: None,
            decisions: Vec::new(),
            workflow_tools: Default::default(),
            deadline_ms: None,
            journaled_input: None,
            slot: None,
        }
    }

    #[tokio::test]
    async fn fail_times_fails_the_first_attempts_only_and_unknown_kinds_fail_for_good() {
        let kinds = crate::kinds::builtin();
        let inject = Inject { fail_times: 2, ..Inject::default() };
        let null = Value::Null;
        for attempt in 1..=3 {
            let r = execute(ctx(&kinds, "noop", &null, Some(&inject), attempt)).await.result;
            assert_eq!(r.is_err(), attempt <= 2, "attempt {attempt}");
        }
        let input = json!({"class": "rate_limited"});
        let r = execute(ctx(&kinds, "fail", &input, None, 1)).await.result;
        assert_eq!(r.map_err(|f| f.class), Err(ErrorClass::RateLimited));
        let r = execute(ctx(&kinds, "nope", &null, None, 1)).await.result;
        assert_eq!(r.map_err(|f| f.class), Err(ErrorClass::Permanent));
    }

    #[tokio::test]
    async fn a_kinds_usage_and_logs_come_back_with_the_outcome() {
        let kinds = crate::kinds::builtin();
        let input = json!({"prompt": "one two three"});
        let out = execute(ctx(&kinds, "mock_model", &input, None, 1)).await;
        assert_eq!(out.usage.map(|u| u.tokens_in), Some(4));
        assert!(out.logs.iter().any(|l| l.starts_with("mock model:")), "{:?}", out.logs);
    }

    #[test]
    fn only_kinds_that_write_get_an_effect_key() {
        let kinds = crate::kinds::builtin();
        let key = |kind, input: Value| effect_key(&kinds, kind, &input, "wf_1", "s");
        assert_eq!(key("http", json!({"url": "http://x/"})).as_deref(), Some("wf_1/s/1"));
        assert_eq!(key("http", json!({"url": "http://x/", "method": "get"})), None);
        assert_eq!(key("echo", json!({})), None);
        assert_eq!(key("nope", json!({})), None);
    }
}
