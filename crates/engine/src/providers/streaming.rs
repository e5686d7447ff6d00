//! Reading a streamed answer (Server-Sent Events) from either API: tokens go to watchers as they
//! arrive, and the whole answer comes back in the same shape as an answer that was not streamed.
//! A stream that ends before the provider says it is done is a `transient` failure: what was
//! sent to watchers is void, and a retry streams anew.

use super::Answer;
use crate::calls::Tokens;
use crate::models::ProviderType;
use futures_util::StreamExt;
use serde_json::Value;

/// The answer read from an event stream, or why it is not whole.
pub async fn read(
    kind: ProviderType,
    response: reqwest::Response,
    tokens: &Tokens,
    max_bytes: usize,
) -> Result<Answer, String> {
    let mut answer = Answer {
        text: String::new(),
        finish_reason: "unknown".into(),
        provider_model: None,
        input_tokens: None,
        output_tokens: None,
        cached_tokens: 0,
    };
    // Anthropic: the forced tool's input arrives as pieces of JSON text.
    let mut tool_input = String::new();
    let mut done = false;
    let mut pending = String::new();
    let mut body = response.bytes_stream();
    let mut read = 0usize;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| format!("the answer's stream broke off: {e}"))?;
        read += chunk.len();
        if read > max_bytes {
            return Err(format!("the answer's stream went past {} MiB", max_bytes >> 20));
        }
        pending.push_str(&String::from_utf8_lossy(&chunk));
        // One event per blank line; a partial event waits for the rest.
        while let Some(end) = pending.find("\n\n").or_else(|| pending.find("\r\n\r\n")) {
            let event: String = pending.drain(..end).collect();
            pending = pending.trim_start_matches(['\r', '\n']).to_string();
            for line in event.lines() {
                let Some(data) = line.strip_prefix("data:").map(str::trim) else { continue };
                if data == "[DONE]" {
                    done = true;
                    continue;
                }
                let Ok(v) = serde_json::from_str::<Value>(data) else { continue };
                let piece = match kind {
                    ProviderType::Openai => openai_event(&v, &mut answer, &mut done),
                    ProviderType::Anthropic => anthropic_event(&v, &mut answer, &mut tool_input, &mut done)?,
                };
                if let Some(piece) = piece.filter(|p| !p.is_empty()) {
                    tokens.send(&piece);
                    answer.text.push_str(&piece);
                }
            }
        }
    }
    if !done {
        return Err(format!(
            "the answer's stream ended before the provider said it was done ({} bytes)",
            answer.text.len()
        ));
    }
    if !tool_input.is_empty() {
        answer.text = tool_input;
    }
    Ok(answer)
}

/// One chunk of an OpenAI-compatible stream: its text, if any.
fn openai_event(v: &Value, answer: &mut Answer, done: &mut bool) -> Option<String> {
    if let Some(model) = v.get("model").and_then(Value::as_str) {
        answer.provider_model = Some(model.to_string());
    }
    if let Some(usage) = v.get("usage").filter(|u| u.is_object()) {
        answer.input_tokens = usage.get("prompt_tokens").and_then(Value::as_u64);
        answer.output_tokens = usage.get("completion_tokens").and_then(Value::as_u64);
        answer.cached_tokens =
            usage.pointer("/prompt_tokens_details/cached_tokens").and_then(Value::as_u64).unwrap_or(0);
    }
    let choice = v.pointer("/choices/0")?;
    if let Some(reason) = choice.get("finish_reason").and_then(Value::as_str) {
        answer.finish_reason = reason.to_string();
        // Some servers end without `[DONE]`; a finish reason is the end of the answer.
        *done = true;
    }
    choice.pointer("/delta/content").and_then(Value::as_str).map(str::to_string)
}

/// One event of an Anthropic stream: its text, if any; an `error` event fails the call.
fn anthropic_event(
    v: &Value,
    answer: &mut Answer,
    tool_input: &mut String,
    done: &mut bool,
) -> Result<Option<String>, String> {
    match v.get("type").and_then(Value::as_str) {
        Some("message_start") => {
            let message = &v["message"];
            answer.provider_model = message.get("model").and_then(Value::as_str).map(str::to_string);
            let usage = &message["usage"];
            let cached = usage.get("cache_read_input_tokens").and_then(Value::as_u64).unwrap_or(0);
            let created = usage.get("cache_creation_input_tokens").and_then(Value::as_u64).unwrap_or(0);
            answer.input_tokens = usage.get("input_tokens").and_then(Value::as_u64).map(|n| n + cached + created);
            answer.cached_tokens = cached;
            Ok(None)
        }
        Some("content_block_delta") => match v.pointer("/delta/type").and_then(Value::as_str) {
            Some("text_delta") => Ok(v.pointer("/delta/text").and_then(Value::as_str).map(str::to_string)),
            Some("input_json_delta") => {
                let part = v.pointer("/delta/partial_json").and_then(Value::as_str).unwrap_or_default();
                tool_input.push_str(part);
                Ok(Some(part.to_string()))
            }
            _ => Ok(None),
        },
        Some("message_delta") => {
            if let Some(reason) = v.pointer("/delta/stop_reason").and_then(Value::as_str) {
                answer.finish_reason = reason.to_string();
            }
            if let Some(n) = v.pointer("/usage/output_tokens").and_then(Value::as_u64) {
                answer.output_tokens = Some(n);
            }
            Ok(None)
        }
        Some("message_stop") => {
            *done = true;
            Ok(None)
        }
        Some("error") => Err(format!("the provider's stream reported an error: {}", v["error"])),
        _ => Ok(None),
    }
}
