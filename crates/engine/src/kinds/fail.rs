//! `fail`: always fails, with the class and message asked for (testing failure policies).

use super::{Activity, Attempt, AttemptFuture};
use cairn_core::event::{ErrorClass, Failure};
use cairn_core::kinds::KindSpec;
use serde_json::{Value, json};

pub struct Kind;

impl Activity for Kind {
    fn spec(&self) -> KindSpec {
        let classes: Vec<&str> = ErrorClass::ALL.iter().map(|c| c.as_str()).collect();
        KindSpec::new("fail", "always fails with `with.class` (default permanent) and `with.message`").with_schema(
            json!({
                "type": ["object", "null"],
                "properties": {"class": {"enum": classes}, "message": {"type": "string"}},
                "additionalProperties": false
            }),
        )
    }

    fn run<'a>(&'a self, attempt: &'a mut Attempt<'_>) -> AttemptFuture<'a> {
        Box::pin(async move {
            let input = attempt.input;
            let class = input.get("class").and_then(Value::as_str).and_then(ErrorClass::parse);
            let message = input.get("message").and_then(Value::as_str).unwrap_or("the `fail` step failed as asked");
            Err(Failure::new(class.unwrap_or(ErrorClass::Permanent), message))
        })
    }
}
