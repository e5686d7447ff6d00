//! `http`: sends `with.body` as JSON to `with.url` with `Idempotency-Key: run/step/call`; the
//! JSON answer is the output. A GET only reads; every other method writes, so its result goes
//! through the effect log and a repeated attempt does not send it again.

use super::{Activity, Attempt, AttemptFuture};
use cairn_core::kinds::{EffectClass, KindSpec, REMOTE};
use serde_json::{Value, json};

pub struct Kind;

impl Activity for Kind {
    fn spec(&self) -> KindSpec {
        KindSpec::new(
            "http",
            "sends `with.body` as JSON to `with.url` (http://) with `Idempotency-Key: run/step/call`; \
             the JSON answer is the output",
        )
        .retry(REMOTE)
        .timeout_ms(Some(30_000))
        .effect(EffectClass::Write)
        .with_schema(json!({
            "type": "object",
            "required": ["url"],
            "properties": {
                "url": {"type": "string", "pattern": "^http://"},
                "method": {"type": "string", "description": "GET, POST (default), PUT, PATCH or DELETE"},
                "headers": {"type": "object"},
                "body": {}
            }
        }))
    }

    fn effect(&self, declared: EffectClass, input: &Value) -> EffectClass {
        let method = input.get("method").and_then(Value::as_str).unwrap_or("POST");
        if method.eq_ignore_ascii_case("GET") { EffectClass::Read } else { declared }
    }

    fn run<'a>(&'a self, attempt: &'a mut Attempt<'_>) -> AttemptFuture<'a> {
        Box::pin(async move {
            let mut logs = Vec::new();
            let result =
                crate::http::call(attempt.input, &attempt.idempotency_key, attempt.worker, attempt.secrets, &mut logs)
                    .await;
            for line in logs {
                attempt.log(line);
            }
            result
        })
    }
}
