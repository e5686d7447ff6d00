//! `approval`: a gate where a person decides. The core asks before the attempt starts (the
//! step's approval gate) and hands the decision in as the input; the output is that decision.

use super::{Activity, Attempt, AttemptFuture};
use cairn_core::kinds::{KindSpec, Role};
use serde_json::json;

pub struct Kind;

impl Activity for Kind {
    fn spec(&self) -> KindSpec {
        KindSpec::new("approval", "waits for a person to approve or reject; outputs {decision, by, comment}")
            .role(Role::Gate)
            .with_schema(json!({"type": ["object", "null"]}))
    }

    fn run<'a>(&'a self, attempt: &'a mut Attempt<'_>) -> AttemptFuture<'a> {
        Box::pin(async move { Ok(attempt.input.clone()) })
    }
}
