//! Talking to model providers: one chat request, its answer or a classified failure. A thin
//! client over reqwest (rustls) rather than a provider SDK, because the engine owns retries and
//! must see each answer's status, `Retry-After` and usage itself.
//!
//! OpenAI-compatible chat completions (OpenAI, vLLM, Ollama, llama.cpp, LiteLLM) are spoken
//! here; the Anthropic Messages API is declared in the config and refused until it lands.

use crate::models::{Model, Provider, ProviderType};
use cairn_core::event::{ErrorClass, Failure};
use serde_json::{Value, json};
use std::time::Duration;

/// The most of a provider's error body quoted in a failure.
const QUOTED: usize = 300;

/// One model's answer, as journaled: what the step's output is built from. Usage the provider
/// left out is counted here (`estimated: true`) from the request's messages and the answer.
pub fn answer(model: &Model, body: &Value, raw: &Value) -> Result<Value, Failure> {
    let choice = raw.pointer("/choices/0").ok_or_else(|| malformed("the answer has no choices"))?;
    let text = choice.pointer("/message/content").and_then(Value::as_str).unwrap_or_default().to_string();
    let finish_reason = choice.get("finish_reason").and_then(Value::as_str).unwrap_or("unknown").to_string();
    let usage = raw.get("usage").cloned().unwrap_or(Value::Null);
    let tokens = |k: &str| usage.get(k).and_then(Value::as_u64);
    let (input, output) = (tokens("prompt_tokens"), tokens("completion_tokens"));
    let cached = usage.pointer("/prompt_tokens_details/cached_tokens").and_then(Value::as_u64).unwrap_or(0);
    let input_tokens = input.unwrap_or_else(|| crate::tokens::count_messages(&body["messages"]));
    let output_tokens = output.unwrap_or_else(|| crate::tokens::count(&text));
    Ok(json!({
        "text": text,
        "model": model.alias,
        "provider_model": raw.get("model").cloned().unwrap_or_else(|| json!(model.model)),
        "finish_reason": finish_reason,
        "usage": {
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "cached_tokens": cached,
            "estimated": input.is_none() || output.is_none(),
        },
        "cost_usd": model.cost_usd(input_tokens, cached, output_tokens),
    }))
}

fn malformed(why: &str) -> Failure {
    Failure { code: Some("malformed_output".into()), ..Failure::new(ErrorClass::Transient, why.to_string()) }
}

/// Sends one chat request (`body` without the model id, which comes from `model`) and returns the
/// provider's JSON answer, or a failure classed as the engine's retry policy needs it: 429 is
/// `rate_limited` (with `Retry-After`), 408/5xx and connection trouble `transient`, a context
/// too long `context_overflow`, other 4xx `permanent` saying which.
pub async fn chat(provider: &Provider, model: &Model, body: &Value, key: Option<&str>) -> Result<Value, Failure> {
    if provider.kind == ProviderType::Anthropic {
        return Err(Failure::new(
            ErrorClass::Permanent,
            format!(
                "provider '{}' is `anthropic`, which this build does not call yet; use an openai-compatible one",
                provider.name
            ),
        ));
    }
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_millis(provider.connect_timeout_ms))
        .timeout(Duration::from_millis(provider.request_timeout_ms))
        .build()
        .map_err(|e| Failure::new(ErrorClass::Permanent, format!("cannot build an HTTP client: {e}")))?;
    let mut body = body.clone();
    body["model"] = json!(model.model);
    let url = format!("{}/chat/completions", provider.base_url);
    let mut request = client.post(&url).header("Content-Type", "application/json");
    for (k, v) in &provider.headers {
        request = request.header(k, v);
    }
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let response = request.body(body.to_string()).send().await.map_err(|e| {
        let class = if e.is_timeout() { ErrorClass::Timeout } else { ErrorClass::Transient };
        Failure::new(class, format!("{} ({}): {}", provider.name, url, without_url(&e)))
    })?;
    let status = response.status().as_u16();
    let retry_after_ms = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|s| s * 1000);
    let text = response.text().await.map_err(|e| {
        Failure::new(ErrorClass::Transient, format!("{}: reading the answer: {}", provider.name, without_url(&e)))
    })?;
    if (200..300).contains(&status) {
        return serde_json::from_str(&text).map_err(|e| malformed(&format!("the answer is not JSON: {e}")));
    }
    let quoted: String = text.chars().take(QUOTED).collect();
    let said = format!("{} answered {status} for model '{}': {quoted}", provider.name, model.model);
    let lower = text.to_ascii_lowercase();
    Err(match status {
        429 => Failure { retry_after_ms, ..Failure::new(ErrorClass::RateLimited, said) },
        408 | 500..=599 => Failure { retry_after_ms, ..Failure::new(ErrorClass::Transient, said) },
        400 if lower.contains("context")
            && (lower.contains("length") || lower.contains("exceed") || lower.contains("too long")) =>
        {
            Failure::new(ErrorClass::ContextOverflow, said)
        }
        401 | 403 => Failure::new(
            ErrorClass::Permanent,
            format!("{said} (the key from ${} was refused)", provider.api_key_env.as_deref().unwrap_or("-")),
        ),
        404 => Failure::new(ErrorClass::Permanent, format!("{said} (is the model id or base_url wrong?)")),
        _ => Failure::new(ErrorClass::Permanent, said),
    })
}

/// A reqwest error's text with its causes ("connection refused" is in a source, not the top),
/// without the request URL's query (none is sent, but be sure).
fn without_url(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    if let Some(i) = text.find('?') {
        text.truncate(i);
    }
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        let said = cause.to_string();
        if !text.contains(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
        source = cause.source();
    }
    text
}
