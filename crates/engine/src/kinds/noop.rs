//! `noop`: does nothing and outputs null (benchmarks, placeholders).

use super::{Activity, Attempt, AttemptFuture};
use cairn_core::kinds::KindSpec;
use serde_json::{Value, json};

pub struct Kind;

impl Activity for Kind {
    fn spec(&self) -> KindSpec {
        KindSpec::new("noop", "does nothing and outputs null").with_schema(json!({"type": ["object", "null"]}))
    }

    fn run<'a>(&'a self, _attempt: &'a mut Attempt<'_>) -> AttemptFuture<'a> {
        Box::pin(async { Ok(Value::Null) })
    }
}
