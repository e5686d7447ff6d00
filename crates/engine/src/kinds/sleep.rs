//! `sleep`: waits `with.duration` inside the attempt, then outputs `{slept_ms}`.
//!
//! The wait holds an attempt slot; a durable wait that survives restarts is the `wait` kind.

use super::{Activity, Attempt, AttemptFuture};
use cairn_core::duration::parse_ms;
use cairn_core::event::{ErrorClass, Failure};
use cairn_core::kinds::KindSpec;
use serde_json::{Value, json};
use std::time::Duration;

pub struct Kind;

impl Activity for Kind {
    fn spec(&self) -> KindSpec {
        KindSpec::new("sleep", "waits `with.duration` (e.g. 2s), then outputs {slept_ms}").timeout_ms(None).with_schema(
            json!({
                "type": ["object", "null"],
                "properties": {"duration": {"type": ["string", "integer"], "minimum": 0}},
                "additionalProperties": false
            }),
        )
    }

    fn run<'a>(&'a self, attempt: &'a mut Attempt<'_>) -> AttemptFuture<'a> {
        Box::pin(async move {
            let ms = match attempt.input.get("duration") {
                Some(Value::String(s)) => {
                    parse_ms(s).map_err(|e| Failure::new(ErrorClass::Permanent, format!("with.duration: {e}")))?
                }
                Some(Value::Number(n)) => n.as_u64().unwrap_or(0),
                _ => 0,
            };
            attempt.log(format!("sleeping {ms} ms"));
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok(json!({ "slept_ms": ms }))
        })
    }
}
