//! The naked agent loop a step is compared with: the same model, task and tools, run the way a
//! hand-written loop runs them — no journal (a process that dies starts the task over), no
//! approvals, no checking of arguments or answers, no timeouts, no retries, no fallback model,
//! every tool result put into the conversation whole, no idempotency keys.

use super::world::KillOrder;
use super::{Ended, Script};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::sync::mpsc;

/// What a call of a tool does: whether it writes, and what sending it again does (from the
/// tool's own definition).
pub type Classify = std::sync::Arc<dyn Fn(&str, &Value) -> (bool, super::Repeat) + Send + Sync>;

/// The step as the naked loop sees it.
#[derive(Clone)]
pub struct Step {
    pub system: Option<String>,
    pub task: String,
    /// Name and description of each tool.
    pub tools: Vec<(String, String)>,
    pub max_turns: u64,
    pub classify: Classify,
}

/// The most times the supervisor starts the loop over after its process died.
const RESTARTS: u32 = 3;

/// Runs the step against the world at `addr` until it finishes, fails, or `patience` runs out
/// (`hung`). A kill order ends the loop where it is; it starts again from the top.
pub async fn run(
    addr: SocketAddr,
    step: &Step,
    script: &Script,
    kills: &mut mpsc::UnboundedReceiver<KillOrder>,
    patience: Duration,
) -> Ended {
    let deadline = tokio::time::Instant::now() + patience;
    let mut ended = Ended { status: "failed".into(), answer_fits: true, ..Ended::default() };
    loop {
        tokio::select! {
            result = attempt(addr, step, script) => {
                match result {
                    Ok(answer) => {
                        ended.status = "completed".into();
                        ended.answer = Some(answer);
                    }
                    Err(why) => ended.why = Some(why),
                }
                return ended;
            }
            Some(order) = kills.recv() => {
                // The process dies with everything it held; a supervisor starts it again.
                let _ = order.done.send(());
                ended.recoveries += 1;
                if ended.recoveries > RESTARTS {
                    ended.why = Some("it died more often than its supervisor restarts it".into());
                    return ended;
                }
            }
            _ = tokio::time::sleep_until(deadline) => {
                ended.status = "hung".into();
                ended.why = Some(format!("no answer within {} s; it would wait forever", patience.as_secs()));
                return ended;
            }
        }
    }
}

async fn attempt(addr: SocketAddr, step: &Step, script: &Script) -> Result<Value, String> {
    let tools: Vec<String> = step.tools.iter().map(|(n, d)| format!("- {n}: {d}")).collect();
    let system = format!(
        "{}\n\nAnswer with one JSON object: {{\"tool\": NAME, \"args\": {{...}}}} to call a tool, or {{\"final\": \
         ANSWER}}.\nTools:\n{}",
        step.system.clone().unwrap_or_default(),
        tools.join("\n")
    );
    let mut messages =
        vec![json!({"role": "system", "content": system}), json!({"role": "user", "content": step.task})];
    let model = script.models.first().cloned().unwrap_or_default();
    for _ in 0..step.max_turns.max(1) {
        let body = json!({"model": model, "messages": messages});
        let (status, text) = crate::http::post(addr, "/v1/chat/completions", &body.to_string())
            .await
            .map_err(|e| format!("the model could not be reached: {e}"))?;
        if status != 200 {
            return Err(format!("the model answered {status}: {}", text.chars().take(200).collect::<String>()));
        }
        let answer: Value = serde_json::from_str(&text).map_err(|e| format!("the model's answer is not JSON: {e}"))?;
        let content = answer.pointer("/choices/0/message/content").and_then(Value::as_str).unwrap_or_default();
        messages.push(json!({"role": "assistant", "content": content}));
        let action: Value =
            serde_json::from_str(content).map_err(|e| format!("the model's action is not JSON: {e}"))?;
        if let Some(done) = action.get("final") {
            return Ok(done.clone());
        }
        let name = action["tool"].as_str().unwrap_or_default();
        let args = action.get("args").cloned().unwrap_or(Value::Null);
        let (writes, repeat) = (step.classify)(name, &args);
        // No key: a plain loop sends none.
        let body = json!({"args": args, "writes": writes, "repeat": repeat.as_str()});
        let (status, result) = crate::http::post(addr, &format!("/tool/{name}"), &body.to_string())
            .await
            .map_err(|e| format!("tool '{name}' could not be reached: {e}"))?;
        if status != 200 {
            return Err(format!("tool '{name}' answered {status}"));
        }
        messages.push(json!({"role": "user", "content": format!("Result of tool '{name}':\n{result}")}));
    }
    Err(format!("no final answer within {} turns", step.max_turns))
}
