//! Reading a streamed answer (Server-Sent Events) from either API: tokens go to watchers as they
//! arrive, and the whole answer comes back in the same shape as an answer that was not streamed.
//! A stream that ends before the provider says it is done is a `transient` failure (a read past
//! the timeout a `timeout`): what was sent to watchers is void, and a retry streams anew.

use super::Answer;
use crate::calls::Tokens;
use crate::models::ProviderType;
use cairn_core::event::ErrorClass;
use futures_util::StreamExt;
use serde_json::Value;

/// What is sent to watchers as it comes: with a secret to hide (the provider's key, which a
/// provider may quote back), the last characters that could begin it are held back until more
/// text shows they do not.
struct Outgoing<'a> {
    tokens: &'a Tokens,
    hide: Option<&'a str>,
    held: String,
}

impl Outgoing<'_> {
    fn push(&mut self, piece: &str) {
        let Some(secret) = self.hide else {
            self.tokens.send(piece);
            return;
        };
        self.held.push_str(piece);
        self.held = self.held.replace(secret, "[redacted]");
        // Everything but a tail that could still grow into the secret goes out.
        let keep = secret.chars().count().saturating_sub(1);
        let cut = self.held.char_indices().rev().nth(keep.saturating_sub(1)).map_or(0, |(i, _)| i);
        let cut = if keep == 0 { self.held.len() } else { cut };
        if cut > 0 {
            let out: String = self.held.drain(..cut).collect();
            self.tokens.send(&out);
        }
    }

    fn flush(&mut self) {
        if !self.held.is_empty() {
            let out = std::mem::take(&mut self.held);
            self.tokens.send(&out);
        }
    }
}

/// The answer read from an event stream, or why it is not whole (with the class it fails as).
/// `hide` is a value watchers must never see (the provider's key).
pub async fn read(
    kind: ProviderType,
    response: reqwest::Response,
    tokens: &Tokens,
    max_bytes: usize,
    hide: Option<&str>,
) -> Result<Answer, (ErrorClass, String)> {
    let mut answer = Answer {
        text: String::new(),
        finish_reason: "unknown".into(),
        provider_model: None,
        input_tokens: None,
        output_tokens: None,
        cached_tokens: 0,
        tool_calls: Vec::new(),
    };
    let mut out = Outgoing { tokens, hide: hide.filter(|h| h.len() >= 8), held: String::new() };
    // Anthropic: the forced tool's input arrives as pieces of JSON text.
    let mut tool_input = String::new();
    // `done`: the answer is whole; `ended`: the provider said so (`[DONE]`, `message_stop`), so
    // nothing more is read even if it keeps the connection open.
    let (mut done, mut ended) = (false, false);
    // Bytes, not text: a character may be split between two chunks.
    let mut pending: Vec<u8> = Vec::new();
    let mut body = response.bytes_stream();
    let mut read = 0usize;
    while !ended && let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| {
            let class = if e.is_timeout() { ErrorClass::Timeout } else { ErrorClass::Transient };
            (class, format!("the answer's stream broke off: {e}"))
        })?;
        read += chunk.len();
        if read > max_bytes {
            return Err((ErrorClass::Transient, format!("the answer's stream went past {} MiB", max_bytes >> 20)));
        }
        pending.extend_from_slice(&chunk);
        // One event per blank line; a partial event waits for the rest.
        while let Some((end, gap)) = event_end(&pending) {
            let event = String::from_utf8_lossy(&pending[..end]).into_owned();
            pending.drain(..end + gap);
            for line in event.lines() {
                let Some(data) = line.strip_prefix("data:").map(str::trim) else { continue };
                if data == "[DONE]" {
                    done = true;
                    ended = true;
                    continue;
                }
                let Ok(v) = serde_json::from_str::<Value>(data) else { continue };
                let piece = match kind {
                    ProviderType::Openai | ProviderType::Mock => openai_event(&v, &mut answer, &mut done),
                    ProviderType::Anthropic => {
                        let piece = anthropic_event(&v, &mut answer, &mut tool_input, &mut done)?;
                        ended |= done;
                        piece
                    }
                };
                if let Some(piece) = piece.filter(|p| !p.is_empty()) {
                    out.push(&piece);
                    answer.text.push_str(&piece);
                }
            }
        }
    }
    if !done {
        return Err((
            ErrorClass::Transient,
            format!("the answer's stream ended before the provider said it was done ({} bytes)", answer.text.len()),
        ));
    }
    out.flush();
    if !tool_input.is_empty() {
        answer.text = tool_input;
    }
    Ok(answer)
}

/// Where the first complete event of `pending` ends, and the length of the blank line after it.
fn event_end(pending: &[u8]) -> Option<(usize, usize)> {
    let lf = pending.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2));
    let crlf = pending.windows(4).position(|w| w == b"\r\n\r\n").map(|i| (i, 4));
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
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
) -> Result<Option<String>, (ErrorClass, String)> {
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
        Some("error") => {
            // Classed as the same error would be as an HTTP status.
            let class = match v.pointer("/error/type").and_then(Value::as_str) {
                Some("rate_limit_error") => ErrorClass::RateLimited,
                Some("overloaded_error" | "api_error" | "timeout_error") | None => ErrorClass::Transient,
                Some("request_too_large") => ErrorClass::ContextOverflow,
                Some(_) => ErrorClass::Permanent,
            };
            Err((class, format!("the provider's stream reported an error: {}", v["error"])))
        }
        _ => Ok(None),
    }
}
