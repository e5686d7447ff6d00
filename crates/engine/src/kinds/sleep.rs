//! `sleep`: a durable pause of `with.duration` — a `wait` with only a duration. It holds no
//! worker and no attempt; a run killed halfway through resumes to end at the original time.
//! Its output is `{waited_ms}`. (Work that should take time inside an attempt is a
//! `mock_model` with `with.latency`, or `inject: {delay: …}`.)

use super::{Activity, Attempt, AttemptFuture};
use cairn_core::duration::parse_ms;
use cairn_core::event::{ErrorClass, Failure};
use cairn_core::kinds::{KindSpec, Role};
use serde_json::{Value, json};
use std::time::Duration;

pub struct Kind;

impl Activity for Kind {
    fn spec(&self) -> KindSpec {
        KindSpec::new("sleep", "waits `with.duration` (e.g. 2s) durably, holding no worker; outputs {waited_ms}")
            .role(Role::Wait)
            .timeout_ms(None)
            .with_schema(json!({
                "type": "object",
                "required": ["duration"],
                "properties": {"duration": {"type": ["string", "integer"], "minimum": 0}},
                "additionalProperties": false
            }))
    }

    /// Only runs pinned before `sleep` became a durable wait (their definitions record no role)
    /// still start attempts of it: those sleep inside the attempt, as they did then.
    fn run<'a>(&'a self, attempt: &'a mut Attempt<'_>) -> AttemptFuture<'a> {
        Box::pin(async move {
            let ms = match attempt.input.get("duration") {
                Some(Value::String(s)) => {
                    parse_ms(s).map_err(|e| Failure::new(ErrorClass::Permanent, format!("with.duration: {e}")))?
                }
                Some(Value::Number(n)) => n.as_u64().unwrap_or(0),
                _ => 0,
            };
            attempt.log(format!("sleeping {ms} ms (a run pinned before sleep became a durable wait)"));
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok(json!({ "slept_ms": ms }))
        })
    }
}
