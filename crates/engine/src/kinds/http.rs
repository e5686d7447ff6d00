//! `http`: sends `with.body` as JSON to `with.url` with `Idempotency-Key: run/step/call`; the
//! JSON answer is the output. A GET only reads; every other method writes, so its result goes
//! through the effect log and a repeated attempt does not send it again. `with.requests` (a list
//! of such requests) sends them one after the other, each a journaled call (`run/step/call-N`),
//! and outputs the list of answers. `[kinds.http] headers = {NAME = "value"}` in cairn.toml adds
//! headers to every request that does not set them.

use super::{Activity, Attempt, AttemptFuture};
use cairn_core::event::Failure;
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
            "oneOf": [{"required": ["url"]}, {"required": ["requests"]}],
            "properties": {
                "requests": {"type": "array", "items": {"type": "object", "required": ["url"]},
                             "description": "several requests sent in order, each a journaled call"},
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
            let input = attempt.input;
            // `requests: [...]` sends several, one after the other, each a journaled call; the
            // output is the list of answers.
            if let Some(requests) = input.get("requests").and_then(Value::as_array) {
                let mut answers = Vec::with_capacity(requests.len());
                for request in requests {
                    answers.push(send(attempt, request).await?);
                }
                return Ok(Value::Array(answers));
            }
            send(attempt, input).await
        })
    }
}

/// One request, as a journaled call. Headers from the kind's configuration (`[kinds.http]
/// headers = {..}` in cairn.toml) are added unless the request sets them itself.
async fn send(attempt: &mut Attempt<'_>, request: &Value) -> Result<Value, Failure> {
    let (worker, secrets) = (attempt.worker, attempt.secrets);
    let mut sent = request.clone();
    if let (Some(Value::Object(defaults)), Value::Object(req)) = (attempt.config.get("headers"), &mut sent) {
        let headers = req.entry("headers").or_insert_with(|| json!({}));
        if let Value::Object(headers) = headers {
            for (name, value) in defaults {
                if !headers.keys().any(|k| k.eq_ignore_ascii_case(name)) {
                    headers.insert(name.clone(), value.clone());
                }
            }
        }
    }
    let mut logs = Vec::new();
    let lines = &mut logs;
    let sent = &sent;
    let result = attempt
        .call("http", request, |key| async move { crate::http::call(sent, &key, worker, secrets, lines).await })
        .await;
    for line in logs {
        attempt.log(line);
    }
    result
}
