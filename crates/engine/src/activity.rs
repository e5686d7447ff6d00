//! The demo activities that run at the edge until the model and tool layer lands: `noop`, `echo`,
//! `sleep`, `mock_model` and `fail`, plus failure injection (per step, and seeded chaos per run).
//!
//! Activities may run more than once (at-least-once): an attempt interrupted by a crash is tried
//! again. These demo activities have no outside effects, so that is harmless here.

use crate::secrets::Resolved;
use cairn_core::chaos::unit_hash;
use cairn_core::definition::Inject;
use cairn_core::duration::parse_ms;
use cairn_core::event::{Chaos, ErrorClass, Failure};
use serde_json::{Value, json};
use std::time::Duration;

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
}

/// The effect-log key of an attempt that writes to the outside (an `http` call other than GET):
/// `run/step/call`, the same for every attempt of the step. `None` for side-effect-free kinds.
/// Give it the journaled input: the key must not depend on a secret's value.
pub fn effect_key(kind: &str, input: &Value, run_id: &str, step: &str) -> Option<String> {
    let method = input.get("method").and_then(Value::as_str).unwrap_or("POST");
    (kind == "http" && !method.eq_ignore_ascii_case("GET")).then(|| call_key(run_id, step))
}

/// `run/step/call`: the same for every attempt of this step, so the far side applies a retried
/// write once (sent as `Idempotency-Key`; the effect log's key too).
fn call_key(run_id: &str, step: &str) -> String {
    format!("{run_id}/{step}/1")
}

/// An activity's result and the log lines it wants kept with the attempt.
pub struct Outcome {
    pub result: Result<Value, Failure>,
    pub logs: Vec<String>,
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
            return Outcome { result: Err(Failure::new(inject.fail_class, msg)), logs };
        }
        if inject.fail_rate > 0.0 && unit_hash(0, &[ctx.run_id, ctx.step, &ctx.attempt.to_string()]) < inject.fail_rate
        {
            let msg = format!("injected failure (fail_rate={})", inject.fail_rate);
            return Outcome { result: Err(Failure::new(inject.fail_class, msg)), logs };
        }
    }
    if let Some(chaos) = ctx.chaos
        && unit_hash(chaos.seed, &[ctx.workflow, ctx.step, &ctx.attempt.to_string()]) < chaos.rate
    {
        let msg = format!("chaos: injected transient failure (seed={}, rate={})", chaos.seed, chaos.rate);
        return Outcome { result: Err(Failure::new(ErrorClass::Transient, msg)), logs };
    }
    let result = match ctx.kind {
        "noop" => Ok(Value::Null),
        "echo" => Ok(ctx.input.clone()),
        // The gate was passed before the attempt started; its output is the recorded decision.
        "approval" => Ok(ctx.input.clone()),
        "http" => {
            let key = call_key(ctx.run_id, ctx.step);
            crate::http::call(ctx.input, &key, ctx.worker, ctx.secrets, &mut logs).await
        }
        "sleep" => sleep(ctx.input, &mut logs).await,
        "mock_model" => Ok(mock_model(ctx.input, &mut logs)),
        "fail" => {
            let class = ctx.input.get("class").and_then(Value::as_str).and_then(ErrorClass::parse);
            let message = ctx.input.get("message").and_then(Value::as_str).unwrap_or("the `fail` step failed as asked");
            Err(Failure::new(class.unwrap_or(ErrorClass::Permanent), message))
        }
        other => Err(Failure::new(
            ErrorClass::Permanent,
            format!("step kind '{other}' is not known to this cairn binary; upgrade cairn or change the step's kind"),
        )),
    };
    Outcome { result, logs }
}

async fn sleep(input: &Value, logs: &mut Vec<String>) -> Result<Value, Failure> {
    let ms = match input.get("duration") {
        Some(Value::String(s)) => {
            parse_ms(s).map_err(|e| Failure::new(ErrorClass::Permanent, format!("with.duration: {e}")))?
        }
        Some(Value::Number(n)) => n.as_u64().unwrap_or(0),
        _ => 0,
    };
    logs.push(format!("sleeping {ms} ms"));
    tokio::time::sleep(Duration::from_millis(ms)).await;
    Ok(json!({ "slept_ms": ms }))
}

/// A deterministic stand-in for a language model: the same prompt always gives the same reply.
fn mock_model(input: &Value, logs: &mut Vec<String>) -> Value {
    let prompt = match input.get("prompt") {
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
        None => input.to_string(),
    };
    let tokens_in = estimate_tokens(&prompt);
    let (text, data) = match input.get("respond") {
        Some(Value::String(s)) => (s.clone(), None),
        Some(other) => (other.to_string(), Some(other.clone())),
        None => {
            let words: Vec<&str> = prompt.split_whitespace().take(16).collect();
            let tag = cairn_core::chaos::hash64(0, &[&prompt]) % 10_000;
            (format!("Summary: {} [mock {tag:04}]", words.join(" ")), None)
        }
    };
    let tokens_out = estimate_tokens(&text);
    logs.push(format!("mock model: {tokens_in} tokens in, {tokens_out} tokens out"));
    let mut out = json!({ "text": text, "model": "mock-1", "tokens_in": tokens_in, "tokens_out": tokens_out });
    if let Some(d) = data {
        out["data"] = d;
    }
    out
}

fn estimate_tokens(text: &str) -> u64 {
    (text.split_whitespace().count() as u64 * 4).div_ceil(3)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx<'a>(kind: &'a str, input: &'a Value, inject: Option<&'a Inject>, attempt: u32) -> AttemptContext<'a> {
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
        }
    }

    #[tokio::test]
    async fn mock_model_is_deterministic() {
        let input = json!({"prompt": "summarise the quarterly numbers please"});
        let a = execute(ctx("mock_model", &input, None, 1)).await.result.expect("ok");
        let b = execute(ctx("mock_model", &input, None, 2)).await.result.expect("ok");
        assert_eq!(a, b);
        assert!(a["text"].as_str().unwrap_or("").starts_with("Summary: summarise"));
        let fixed = json!({"prompt": "x", "respond": {"risk": "medium"}});
        let c = execute(ctx("mock_model", &fixed, None, 1)).await.result.expect("ok");
        assert_eq!(c["data"]["risk"], "medium");
    }

    #[tokio::test]
    async fn fail_times_fails_the_first_attempts_only() {
        let inject = Inject { fail_times: 2, ..Inject::default() };
        let input = Value::Null;
        for attempt in 1..=3 {
            let r = execute(ctx("noop", &input, Some(&inject), attempt)).await.result;
            assert_eq!(r.is_err(), attempt <= 2, "attempt {attempt}");
        }
        let r = execute(ctx("fail", &json!({"class": "rate_limited"}), None, 1)).await.result;
        assert_eq!(r.map_err(|f| f.class), Err(ErrorClass::RateLimited));
    }
}
