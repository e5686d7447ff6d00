//! `sleep`: a durable pause of `with.duration` — a `wait` with only a duration. It holds no
//! worker and no attempt; a run killed halfway through resumes to end at the original time.
//! Its output is `{waited_ms}`. (Work that should take time inside an attempt is a
//! `mock_model` with `with.latency`, or `inject: {delay: …}`.)

use super::{Activity, Attempt, AttemptFuture};
use cairn_core::event::{ErrorClass, Failure};
use cairn_core::kinds::{KindSpec, Role};
use serde_json::json;

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

    fn run<'a>(&'a self, _attempt: &'a mut Attempt<'_>) -> AttemptFuture<'a> {
        // The core never starts an attempt of a waiting kind.
        Box::pin(async { Err(Failure::new(ErrorClass::Permanent, "a sleep has no attempts; the engine decides it")) })
    }
}
