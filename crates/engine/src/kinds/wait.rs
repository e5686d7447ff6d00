//! `wait`: a durable pause that holds no worker and no memory — until a duration passes, a time
//! comes, or a signal arrives (with an optional timeout). The core decides it (role `Wait`):
//! a timer or a `SignalReceived` ends it, so it survives restarts and is woken by the store.

use super::{Activity, Attempt, AttemptFuture};
use cairn_core::event::{ErrorClass, Failure};
use cairn_core::kinds::{KindSpec, Role};
use serde_json::json;

pub struct Kind;

impl Activity for Kind {
    fn spec(&self) -> KindSpec {
        KindSpec::new(
            "wait",
            "waits durably, holding no worker: `with.duration` (3d), `with.until` (RFC 3339), or `with.signal` \
             (+ optional `timeout`; the signal's payload is the output)",
        )
        .role(Role::Wait)
        .timeout_ms(None)
        .with_schema(json!({
            "type": "object",
            "properties": {
                "duration": {"type": ["string", "integer"], "minimum": 0},
                "until": {"type": "string"},
                "signal": {"type": "string", "pattern": "^[A-Za-z0-9_.-]{1,64}$"},
                "timeout": {"type": ["string", "integer"], "minimum": 0}
            },
            "additionalProperties": false
        }))
    }

    fn run<'a>(&'a self, _attempt: &'a mut Attempt<'_>) -> AttemptFuture<'a> {
        // The core never starts an attempt of a waiting kind.
        Box::pin(async { Err(Failure::new(ErrorClass::Permanent, "a wait has no attempts; the engine decides it")) })
    }
}
