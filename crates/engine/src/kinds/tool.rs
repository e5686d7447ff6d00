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
            let entry = lookup(&self.tools, &attempt.workflow_tools, &name).await?;
            let args = entry.normalize(attempt.input.get("args").cloned().unwrap_or_else(|| json!({})));
            let n = attempt.next_call();
            let args = match gate(attempt, n, &entry, &name, args, None, None)? {
                Gate::Go(args) => args,
                Gate::Rejected(message) => {
                    return Err(Failure {
                        code: Some("rejected".into()),
                        ..Failure::new(ErrorClass::Permanent, message)
                    });
                }
            };
            let request = json!({"tool": name, "args": args});
            let worker = attempt.worker;
            let args = &args;
            attempt
                .call("tool", &request, |key| async move { entry.call(args, CallContext { key: &key, worker }).await })
                .await
        })
    }
}

/// A tool by name: the workflow's own tools, then the registry. A workflow may not stand in for a
/// tool the server declares (its policy and allowances are the server's to set).
pub(super) async fn lookup(
    tools: &Tools,
    own: &std::collections::BTreeMap<String, Value>,
    name: &str,
) -> Result<Arc<crate::tools::Entry>, Failure> {
    match own.get(name) {
        Some(_) if tools.get(name).is_some() || name.contains('.') => {
            let message = format!(
                "the workflow defines a tool named '{name}', which is already a tool of this server's registry \
                 (`cairn tools list`); rename the workflow's tool"
            );
            Err(Failure::new(ErrorClass::Permanent, message))
        }
        Some(spec) => Tools::workflow_tool(name, spec),
        None => tools.find(name).await,
    }
}

/// What a person decided about the next call, if it needs one.
pub(super) enum Gate {
    /// Make the call with these arguments (as asked, or as edited).
    Go(Value),
    /// A person rejected it: "the call to tool 'X' was rejected by NAME: reason". The caller
    /// uses the call's position up (`Attempt::skip_call`), so the calls after it keep theirs.
    Rejected(String),
}

/// Decides whether call `n` (to `entry`, with `args` already normalized) may be made: a call
/// an earlier attempt recorded goes ahead (it comes back from the record); otherwise the arguments
/// are checked, and a call the tool's policy gates — or any write after untrusted content
/// (`untrusted`: why, naming the source) — stops the attempt with class `approval_required` until
/// a person answers; `context` is added to what the person is told (an agent's turn and reason).
/// `Err` is a failure of the attempt (arguments that do not fit, or the stop).
pub(super) fn gate(
    attempt: &mut Attempt<'_>,
    n: u32,
    entry: &crate::tools::Entry,
    name: &str,
    args: Value,
    untrusted: Option<&str>,
    context: Option<&str>,
) -> Result<Gate, Failure> {
    if attempt.call_recorded(n) {
        // It comes back from the record; asked with the arguments it was made with (a person's
        // edit included), so that it matches what was recorded.
        let edited = attempt.call_decision(n).filter(|d| d.approved).and_then(|d| d.args.clone());
        return Ok(Gate::Go(edited.map(|e| entry.normalize(e)).unwrap_or(args)));
    }
    match attempt.call_decision(n).cloned() {
        Some(decision) if !decision.approved => {
            let who = decision.by.as_deref().unwrap_or("an operator");
            let why = decision.comment.as_deref().map(|c| format!(": {c}")).unwrap_or_default();
            Ok(Gate::Rejected(format!("the call to tool '{name}' was rejected by {who}{why}")))
        }
        Some(decision) => {
            let args = match decision.args {
                Some(edited) => {
                    attempt.log(format!("call {n} to tool '{name}': approved with edited arguments"));
                    entry.normalize(edited)
                }
                None => args,
            };
            entry.check_args(&args)?;
            Ok(Gate::Go(args))
        }
        None => {
            entry.check_args(&args)?;
            let effect = entry.effect(&args);
            let reason = match (entry.approval_reason(&args), untrusted) {
                (Some(policy), _) => Some(policy),
                (None, Some(source)) if effect.needs_effect_key() => Some(format!(
                    "this call writes ({}) after untrusted content was read ({source}); a person decides (the \
                     workflow may opt out with trust_tool_output: true)",
                    effect.as_str()
                )),
                (None, _) => None,
            };
            let Some(mut reason) = reason else { return Ok(Gate::Go(args)) };
            if let Some(context) = context {
                reason = format!("{reason} ({context})");
            }
            let call = CallApproval {
                call: n,
                tool: name.to_string(),
                args: attempt.secrets.redact_value(args),
                effect: effect.as_str().to_string(),
                reason: reason.clone(),
            };
            let message = format!("call {n} to tool '{name}' waits for approval: {reason}");
            Err(Failure { approval: Some(Box::new(call)), ..Failure::new(ErrorClass::ApprovalRequired, message) })
        }
    }
}
