//! `mock_model`: a deterministic stand-in for a language model — the same prompt always gives the
//! same reply, with token counts, so workflows and tests run without a model server.

use super::{Activity, Attempt, AttemptFuture, Usage};
use cairn_core::duration::parse_ms;
use cairn_core::event::{ErrorClass, Failure};
use cairn_core::kinds::{KindSpec, REMOTE};
use serde_json::{Value, json};
use std::time::Duration;

pub struct Kind;

impl Activity for Kind {
    fn spec(&self) -> KindSpec {
        KindSpec::new(
            "mock_model",
            "deterministic stand-in for a model: `with.prompt` in, {text, tokens_in, tokens_out} out; \
             `with.respond` fixes the reply, `with.latency` (e.g. 2s) is how long it thinks",
        )
        .retry(REMOTE)
        .timeout_ms(Some(120_000))
        .with_schema(json!({
            "type": ["object", "null"],
            "properties": {"latency": {"type": ["string", "integer"], "minimum": 0}}
        }))
    }

    fn run<'a>(&'a self, attempt: &'a mut Attempt<'_>) -> AttemptFuture<'a> {
        Box::pin(async move {
            let latency = match attempt.input.get("latency") {
                Some(Value::String(s)) => {
                    parse_ms(s).map_err(|e| Failure::new(ErrorClass::Permanent, format!("with.latency: {e}")))?
                }
                Some(Value::Number(n)) => n.as_u64().unwrap_or(0),
                _ => 0,
            };
            if latency > 0 {
                // Inside the attempt, like a real model's latency: it holds the attempt.
                tokio::time::sleep(Duration::from_millis(latency)).await;
            }
            let (out, usage) = reply(attempt.input);
            attempt.log(format!("mock model: {} tokens in, {} tokens out", usage.tokens_in, usage.tokens_out));
            attempt.report_usage(usage);
            Ok(out)
        })
    }
}

fn reply(input: &Value) -> (Value, Usage) {
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
    let mut out = json!({ "text": text, "model": "mock-1", "tokens_in": tokens_in, "tokens_out": tokens_out });
    if let Some(d) = data {
        out["data"] = d;
    }
    (out, Usage { tokens_in, tokens_out, cost_usd: 0.0 })
}

fn estimate_tokens(text: &str) -> u64 {
    (text.split_whitespace().count() as u64 * 4).div_ceil(3)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_prompt_gives_the_same_reply_and_respond_fixes_it() {
        let input = json!({"prompt": "summarise the quarterly numbers please"});
        let (a, usage) = reply(&input);
        assert_eq!(a, reply(&input).0);
        assert!(a["text"].as_str().unwrap_or("").starts_with("Summary: summarise"));
        assert_eq!(usage.tokens_in, a["tokens_in"].as_u64().unwrap_or(0));
        let (c, _) = reply(&json!({"prompt": "x", "respond": {"risk": "medium"}}));
        assert_eq!(c["data"]["risk"], "medium");
    }
}
