//! `subworkflow`: starts a child run of a registered workflow (`with.workflow`, optional
//! `with.version`, newest by default) or of a definition file (`with.file`), with `with.inputs`,
//! and waits for it durably, holding no worker. The core decides it (role `Subworkflow`): the
//! child's output is the step's, its failure the failure of the step's attempt.

use super::{Activity, Attempt, AttemptFuture};
use cairn_core::event::{ErrorClass, Failure};
use cairn_core::kinds::{KindSpec, Role};
use serde_json::json;

pub struct Kind;

impl Activity for Kind {
    fn spec(&self) -> KindSpec {
        KindSpec::new(
            "subworkflow",
            "runs a child workflow and waits for it without a worker: `with.workflow` (+ `version`) or `with.file`, \
             and `with.inputs`; the child's output is the step's",
        )
        .role(Role::Subworkflow)
        .timeout_ms(None)
        // A child run retries its own steps; starting a whole new child is for the step to ask for.
        .retry(cairn_core::retry::RetryPolicy { max_attempts: 1, ..cairn_core::kinds::REMOTE })
        .with_schema(json!({
            "type": "object",
            "properties": {
                "workflow": {"type": "string", "minLength": 1},
                "version": {"type": "integer", "minimum": 1},
                "file": {"type": "string", "minLength": 1},
                "inputs": {"type": "object"}
            },
            "oneOf": [{"required": ["workflow"]}, {"required": ["file"]}],
            "additionalProperties": false
        }))
    }

    fn run<'a>(&'a self, _attempt: &'a mut Attempt<'_>) -> AttemptFuture<'a> {
        // The core never starts an attempt of a subworkflow: it starts a child run.
        Box::pin(async {
            Err(Failure::new(ErrorClass::Permanent, "a subworkflow has no attempts here; its child run is its attempt"))
        })
    }
}
