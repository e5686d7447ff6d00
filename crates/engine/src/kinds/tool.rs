//! `tool`: one call to a tool of the registry — `with: {tool: NAME, args: {…}}` — whose result is
//! the output.
//!
//! The arguments are checked against the tool's input schema before the call; the call is a
//! journaled call (`run/step/call-1`, sent to the far side as its idempotency key), so a write
//! whose result was recorded is not sent again by a later attempt. A call the tool's approval
//! policy gates stops the attempt (class `approval_required`): the step waits, a person approves
//! (possibly with edited arguments, checked again) or rejects with a reason, and the next attempt
//! makes the call — or fails with the rejection.

use super::{Activity, Attempt, AttemptFuture};
use crate::tools::{CallContext, Tools};
use cairn_core::event::{CallApproval, ErrorClass, Failure};
use cairn_core::kinds::{EffectClass, KindSpec, REMOTE};
use serde_json::{Value, json};
use std::sync::Arc;

pub struct Kind {
    pub tools: Arc<Tools>,
}

impl Activity for Kind {
    fn spec(&self) -> KindSpec {
        KindSpec::new(
            "tool",
            "calls a tool of the registry (`cairn tools list`): `with: {tool: NAME, args: {…}}`; the tool's result is \
             the output; writes wait for approval as the tool's policy says",
        )
        .retry(REMOTE)
        .timeout_ms(Some(120_000))
        .effect(EffectClass::Write)
        .with_schema(json!({
            "type": "object",
            "required": ["tool"],
            "properties": {
                "tool": {"type": "string", "minLength": 1},
                "args": {"description": "the tool's arguments (its input schema says which)"}
            },
            "additionalProperties": false
        }))
    }

    fn effect(&self, declared: EffectClass, input: &Value) -> EffectClass {
        let name = input.get("tool").and_then(Value::as_str).unwrap_or_default();
        match self.tools.get(name) {
            Some(entry) => entry.effect(input.get("args").unwrap_or(&Value::Null)),
            None => declared,
        }
    }

    fn run<'a>(&'a self, attempt: &'a mut Attempt<'_>) -> AttemptFuture<'a> {
        Box::pin(async move {
            let name = attempt.input.get("tool").and_then(Value::as_str).unwrap_or_default().to_string();
            // The workflow's own tools, then the registry; a workflow may not stand in for a
            // tool the server declares (its policy and allowances are the server's to set).
            let entry = match attempt.workflow_tools.get(&name) {
                Some(_) if self.tools.get(&name).is_some() || name.contains('.') => {
                    let message = format!(
                        "the workflow defines a tool named '{name}', which is already a tool of this server's \
                         registry (`cairn tools list`); rename the workflow's tool"
                    );
                    return Err(Failure::new(ErrorClass::Permanent, message));
                }
                Some(spec) => Tools::workflow_tool(&name, spec)?,
                None => self.tools.find(&name).await?,
            };
            let mut args = entry.normalize(attempt.input.get("args").cloned().unwrap_or_else(|| json!({})));
            let n = attempt.next_call();
            if !attempt.call_recorded(n) {
                match attempt.call_decision(n).cloned() {
                    Some(decision) if !decision.approved => {
                        let who = decision.by.as_deref().unwrap_or("an operator");
                        let why = decision.comment.as_deref().map(|c| format!(": {c}")).unwrap_or_default();
                        let message = format!("the call to tool '{name}' was rejected by {who}{why}");
                        return Err(Failure {
                            code: Some("rejected".into()),
                            ..Failure::new(ErrorClass::Permanent, message)
                        });
                    }
                    Some(decision) => {
                        if let Some(edited) = decision.args {
                            attempt.log(format!("call {n} to tool '{name}': approved with edited arguments"));
                            args = entry.normalize(edited);
                        }
                        entry.check_args(&args)?;
                    }
                    None => {
                        entry.check_args(&args)?;
                        if let Some(reason) = entry.approval_reason(&args) {
                            let effect = entry.effect(&args).as_str().to_string();
                            let call = CallApproval {
                                call: n,
                                tool: name.clone(),
                                args: attempt.secrets.redact_value(args.clone()),
                                effect,
                                reason: reason.clone(),
                            };
                            let message = format!("call {n} to tool '{name}' waits for approval: {reason}");
                            return Err(Failure {
                                approval: Some(Box::new(call)),
                                ..Failure::new(ErrorClass::ApprovalRequired, message)
                            });
                        }
                    }
                }
            }
            let request = json!({"tool": name, "args": args});
            let worker = attempt.worker;
            let args = &args;
            attempt
                .call("tool", &request, |key| async move { entry.call(args, CallContext { key: &key, worker }).await })
                .await
        })
    }
}
