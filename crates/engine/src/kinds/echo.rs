//! `echo`: outputs its `with` block, rendered (wiring data between steps, tests).

use super::{Activity, Attempt, AttemptFuture};
use cairn_core::kinds::KindSpec;

pub struct Kind;

impl Activity for Kind {
    fn spec(&self) -> KindSpec {
        KindSpec::new("echo", "outputs its `with` block, rendered")
    }

    fn run<'a>(&'a self, attempt: &'a mut Attempt<'_>) -> AttemptFuture<'a> {
        Box::pin(async move { Ok(attempt.input.clone()) })
    }
}
