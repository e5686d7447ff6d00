//! Talking to model providers: one chat request, its answer or a classified failure. A thin
//! client over reqwest (rustls) rather than a provider SDK, because the engine owns retries and
//! must see each answer's status, `Retry-After` and usage itself.
//!
//! Two APIs are spoken: OpenAI-compatible chat completions (OpenAI, vLLM, Ollama, llama.cpp,
//! LiteLLM) at `BASE_URL/chat/completions`, and Anthropic's Messages API at
//! `BASE_URL/v1/messages`. The step builds one request shape (OpenAI's); an Anthropic request is
//! translated from it (the system message apart, `max_tokens` required, an `output_schema` as a
//! forced tool), and both answers come back as one shape.

mod mock;
mod streaming;

use crate::calls::Tokens;
use crate::models::{Model, Provider, ProviderType};
use cairn_core::event::{ErrorClass, Failure};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// The most of a provider's error body quoted in a failure.
const QUOTED: usize = 300;

/// The Messages API version sent to Anthropic.
const ANTHROPIC_VERSION: &str = "2023-06-01";

/// What an Anthropic request asks for when the step sets no `max_tokens` (the API requires one).
const ANTHROPIC_MAX_TOKENS: u64 = 4_096;

/// The name of the tool an Anthropic request is forced to call for structured output.
const OUTPUT_TOOL: &str = "output";

/// A provider's answer in one shape, whatever API it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub text: String,
    pub finish_reason: String,
    pub provider_model: Option<String>,
    pub input_tokens: Option<u64>,
    pub output_tokens: Option<u64>,
    pub cached_tokens: u64,
    /// The tool calls the model asked for (native tool calling), in its order.
    pub tool_calls: Vec<ToolCall>,
}

/// One tool call a model asked for: the provider's id for it, the tool's name as sent (see
/// `ToolSpec::wire_name`), and its arguments (a JSON value; a string when they were not JSON).
#[derive(Debug, Clone, PartialEq)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    pub args: Value,
}

/// One model's answer, as journaled: what the step's output is built from. Usage the provider
/// left out is counted here (`estimated: true`) from the request's messages and the answer.
pub fn answer(model: &Model, body: &Value, a: Answer) -> Value {
    let input_tokens = a.input_tokens.unwrap_or_else(|| crate::tokens::count_messages(&body["messages"]));
    let output_tokens = a.output_tokens.unwrap_or_else(|| {
        crate::tokens::count(&a.text)
            + a.tool_calls.iter().map(|c| crate::tokens::count(&format!("{}{}", c.name, c.args))).sum::<u64>()
    });
    let mut out = json!({
        "text": a.text,
        "model": model.alias,
        "provider_model": a.provider_model.unwrap_or_else(|| model.model.clone()),
        "finish_reason": a.finish_reason,
        "usage": {
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "cached_tokens": a.cached_tokens,
            "estimated": a.input_tokens.is_none() || a.output_tokens.is_none(),
        },
        "cost_usd": model.cost_usd(input_tokens, a.cached_tokens, output_tokens),
    });
    if !a.tool_calls.is_empty() {
        let calls: Vec<Value> =
            a.tool_calls.into_iter().map(|c| json!({"id": c.id, "name": c.name, "args": c.args})).collect();
        out["tool_calls"] = Value::Array(calls);
    }
    out
}

fn malformed(provider: &Provider, why: &str) -> Failure {
    let message = format!("{} answered 200 but {why}", provider.name);
    Failure { code: Some("malformed_answer".into()), ..Failure::new(ErrorClass::Transient, message) }
}

/// Kept clients, by provider name (with the timeouts they were built with).
type Clients = Mutex<HashMap<String, ((u64, u64), reqwest::Client)>>;

/// One client per provider and timeouts, so connections are kept and reused across calls.
pub(crate) fn client(provider: &Provider) -> Result<reqwest::Client, Failure> {
    static CLIENTS: OnceLock<Clients> = OnceLock::new();
    let timeouts = (provider.connect_timeout_ms, provider.request_timeout_ms);
    let mut clients = CLIENTS.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
    if let Some((built, c)) = clients.get(&provider.name)
        && *built == timeouts
    {
        return Ok(c.clone());
    }
    crate::tls::init();
    let c = reqwest::Client::builder()
        .connect_timeout(Duration::from_millis(provider.connect_timeout_ms))
        .timeout(Duration::from_millis(provider.request_timeout_ms))
        .build()
        .map_err(|e| Failure::new(ErrorClass::Permanent, format!("cannot build an HTTP client: {e}")))?;
    clients.insert(provider.name.clone(), (timeouts, c.clone()));
    Ok(c)
}

/// `BASE_URL/v1/PATH` for Anthropic, whether or not the base URL was written with its `/v1`.
pub fn anthropic_url(base_url: &str, path: &str) -> String {
    let base = base_url.trim_end_matches('/');
    if base.ends_with("/v1") { format!("{base}/{path}") } else { format!("{base}/v1/{path}") }
}

/// Sends one chat request (`body` in OpenAI's shape, without the model id, which comes from
/// `model`) and returns the answer, or a failure classed as the engine's retry policy needs it:
/// 429 is `rate_limited` (with `Retry-After`), 408/5xx (Anthropic's 529 too) and connection
/// trouble `transient`, a read past the timeout `timeout`, a prompt too long `context_overflow`,
/// other 4xx `permanent` saying which.
///
/// With `tokens`, the answer is asked for as a stream and its tokens go there as they arrive (a
/// server that answers in one piece anyway is read as such).
pub async fn chat(
    provider: &Provider,
    model: &Model,
    body: &Value,
    key: Option<&str>,
    tokens: Option<&Tokens>,
) -> Result<Answer, Failure> {
    if provider.kind == ProviderType::Mock {
        return Ok(mock::answer(provider, body));
    }
    let client = client(provider)?;
    let (url, mut sent) = match provider.kind {
        ProviderType::Openai | ProviderType::Mock => {
            let mut sent = body.clone();
            sent["model"] = json!(model.model);
            (format!("{}/chat/completions", provider.base_url), sent)
        }
        ProviderType::Anthropic => (anthropic_url(&provider.base_url, "messages"), anthropic_body(model, body)),
    };
    if tokens.is_some() {
        sent["stream"] = json!(true);
        if provider.kind == ProviderType::Openai {
            sent["stream_options"] = json!({"include_usage": true});
        }
    }
    let mut request = client.post(&url).header("Content-Type", "application/json");
    for (k, v) in &provider.headers {
        request = request.header(k, v);
    }
    request = match (provider.kind, key) {
        (ProviderType::Openai, Some(key)) => request.bearer_auth(key),
        (ProviderType::Anthropic, Some(key)) => request.header("x-api-key", key),
        (ProviderType::Mock, _) | (_, None) => request,
    };
    if provider.kind == ProviderType::Anthropic {
        request = request.header("anthropic-version", ANTHROPIC_VERSION);
    }
    let response = request.body(sent.to_string()).send().await.map_err(|e| {
        let class = if e.is_timeout() { ErrorClass::Timeout } else { ErrorClass::Transient };
        Failure::new(class, format!("{} ({}): {}", provider.name, url, without_url(&e)))
    })?;
    let status = response.status().as_u16();
    let streamed = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("text/event-stream"));
    if let (true, true, Some(tokens)) = ((200..300).contains(&status), streamed, tokens) {
        let read = streaming::read(provider.kind, response, tokens, MAX_ANSWER_BYTES, key).await;
        return read.and_then(|a| sane(a).map_err(|why| (ErrorClass::Transient, why.to_string()))).map_err(
            |(class, why)| {
                tokens.void();
                Failure::new(class, format!("{} ({url}): {why}", provider.name))
            },
        );
    }
    let retry_after_ms = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        // A day at most: a provider's hint must not park a step for ever (or overflow).
        .map(|s| s.min(86_400).saturating_mul(1000));
    let text = read_capped(provider, response).await?;
    if (200..300).contains(&status) {
        let raw: Value =
            serde_json::from_str(&text).map_err(|e| malformed(provider, &format!("the answer is not JSON: {e}")))?;
        return match provider.kind {
            ProviderType::Openai | ProviderType::Mock => openai_answer(&raw),
            ProviderType::Anthropic => anthropic_answer(&raw, body.get("response_format").is_some()),
        }
        .and_then(sane)
        .map_err(|why| malformed(provider, why));
    }
    Err(refusal(provider, model, status, retry_after_ms, &text))
}

/// The most of an answer's body read; a provider sending more is answering garbage.
const MAX_ANSWER_BYTES: usize = 16 * 1024 * 1024;

/// The most tokens a provider may report for one call before its usage is taken as garbage.
const MAX_REPORTED_TOKENS: u64 = 100_000_000;

/// An answer's body as text, refusing one over [`MAX_ANSWER_BYTES`] as it arrives.
async fn read_capped(provider: &Provider, response: reqwest::Response) -> Result<String, Failure> {
    use futures_util::StreamExt;
    let mut body = Vec::new();
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            let class = if e.is_timeout() { ErrorClass::Timeout } else { ErrorClass::Transient };
            Failure::new(class, format!("{}: reading the answer: {}", provider.name, without_url(&e)))
        })?;
        if body.len() + chunk.len() > MAX_ANSWER_BYTES {
            return Err(malformed(provider, &format!("its answer is over {} MiB", MAX_ANSWER_BYTES >> 20)));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(String::from_utf8_lossy(&body).into_owned())
}

/// Usage a provider reported, unless it cannot be right (then the call is treated as malformed).
fn sane(answer: Answer) -> Result<Answer, &'static str> {
    let too_many = |n: Option<u64>| n.is_some_and(|n| n > MAX_REPORTED_TOKENS);
    if too_many(answer.input_tokens) || too_many(answer.output_tokens) || answer.cached_tokens > MAX_REPORTED_TOKENS {
        return Err("it reported a token usage that cannot be right (over 100 million)");
    }
    Ok(answer)
}

/// A provider's non-2xx answer, classified.
fn refusal(provider: &Provider, model: &Model, status: u16, retry_after_ms: Option<u64>, text: &str) -> Failure {
    let quoted: String = text.chars().take(QUOTED).collect();
    let said = format!("{} answered {status} for model '{}': {quoted}", provider.name, model.model);
    let lower = text.to_ascii_lowercase();
    let too_long = (lower.contains("context") && (lower.contains("length") || lower.contains("exceed")))
        || lower.contains("too long")
        || lower.contains("too many tokens");
    match status {
        429 => Failure { retry_after_ms, ..Failure::new(ErrorClass::RateLimited, said) },
        408 | 500..=599 => Failure { retry_after_ms, ..Failure::new(ErrorClass::Transient, said) },
        400 | 413 if too_long => Failure::new(ErrorClass::ContextOverflow, said),
        401 | 403 => Failure::new(
            ErrorClass::Permanent,
            format!("{said} (the key from ${} was refused)", provider.api_key_env.as_deref().unwrap_or("-")),
        ),
        404 => Failure::new(ErrorClass::Permanent, format!("{said} (is the model id or base_url wrong?)")),
        _ => Failure::new(ErrorClass::Permanent, said),
    }
}

fn openai_answer(raw: &Value) -> Result<Answer, &'static str> {
    let choice = raw.pointer("/choices/0").ok_or("the answer has no choices")?;
    let usage = raw.get("usage");
    let tokens = |k: &str| usage.and_then(|u| u.get(k)).and_then(Value::as_u64);
    Ok(Answer {
        text: choice.pointer("/message/content").and_then(Value::as_str).unwrap_or_default().to_string(),
        finish_reason: choice.get("finish_reason").and_then(Value::as_str).unwrap_or("unknown").to_string(),
        provider_model: raw.get("model").and_then(Value::as_str).map(str::to_string),
        input_tokens: tokens("prompt_tokens"),
        output_tokens: tokens("completion_tokens"),
        cached_tokens: usage
            .and_then(|u| u.pointer("/prompt_tokens_details/cached_tokens"))
            .and_then(Value::as_u64)
            .unwrap_or(0),
        tool_calls: openai_tool_calls(choice.pointer("/message/tool_calls"))?,
    })
}

/// The `tool_calls` of an OpenAI answer's message: each `{id, function: {name, arguments}}`, its
/// arguments a JSON text (kept as a string when it is not JSON, for the step to report).
fn openai_tool_calls(calls: Option<&Value>) -> Result<Vec<ToolCall>, &'static str> {
    let Some(calls) = calls.filter(|c| !c.is_null()) else { return Ok(Vec::new()) };
    let calls = calls.as_array().ok_or("its tool_calls is not a list")?;
    calls
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let name = c.pointer("/function/name").and_then(Value::as_str).ok_or("a tool call has no function name")?;
            let args = match c.pointer("/function/arguments") {
                Some(Value::String(text)) if text.trim().is_empty() => json!({}),
                Some(Value::String(text)) => serde_json::from_str(text).unwrap_or_else(|_| json!(text)),
                Some(other) => other.clone(),
                None => json!({}),
            };
            let id = c.get("id").and_then(Value::as_str).map_or_else(|| format!("call_{i}"), str::to_string);
            Ok(ToolCall { id, name: name.to_string(), args })
        })
        .collect()
}

/// The Messages API request for an OpenAI-shaped body: system messages joined into `system`,
/// `stop` as `stop_sequences`, `max_tokens` always set, and an `output_schema` (carried as
/// `response_format`) as a tool the model is made to call.
fn anthropic_body(model: &Model, body: &Value) -> Value {
    let mut system = Vec::new();
    let mut messages: Vec<Value> = Vec::new();
    for m in body["messages"].as_array().into_iter().flatten() {
        let content = m.get("content").cloned().unwrap_or(Value::Null);
        match m.get("role").and_then(Value::as_str) {
            Some("system") => system.push(content.as_str().unwrap_or_default().to_string()),
            // An assistant turn that called tools: its text, then a `tool_use` block per call.
            Some("assistant") if m.get("tool_calls").is_some() => {
                let mut blocks = Vec::new();
                if let Some(text) = content.as_str().filter(|t| !t.is_empty()) {
                    blocks.push(json!({"type": "text", "text": text}));
                }
                for call in m["tool_calls"].as_array().into_iter().flatten() {
                    let args = match call.pointer("/function/arguments") {
                        Some(Value::String(text)) => serde_json::from_str(text).unwrap_or_else(|_| json!({})),
                        Some(other) => other.clone(),
                        None => json!({}),
                    };
                    blocks.push(
                        json!({"type": "tool_use", "id": call["id"], "name": call["function"]["name"], "input": args}),
                    );
                }
                messages.push(json!({"role": "assistant", "content": blocks}));
            }
            // Tool results go back as `tool_result` blocks of one user turn.
            Some("tool") => {
                let block = json!({"type": "tool_result", "tool_use_id": m["tool_call_id"], "content": content});
                match messages.last_mut() {
                    Some(last) if last["role"] == "user" && last["content"].is_array() => {
                        if let Some(blocks) = last["content"].as_array_mut() {
                            blocks.push(block);
                        }
                    }
                    _ => messages.push(json!({"role": "user", "content": [block]})),
                }
            }
            Some(role) => messages.push(json!({"role": role, "content": content})),
            None => {}
        }
    }
    let max_tokens = body
        .get("max_tokens")
        .and_then(Value::as_u64)
        .or(model.max_output_tokens.map(u64::from))
        .unwrap_or(ANTHROPIC_MAX_TOKENS);
    let mut sent = json!({"model": model.model, "max_tokens": max_tokens, "messages": messages});
    if !system.is_empty() {
        sent["system"] = json!(system.join("\n\n"));
    }
    if let Some(t) = body.get("temperature") {
        sent["temperature"] = t.clone();
    }
    match body.get("stop") {
        Some(Value::String(s)) => sent["stop_sequences"] = json!([s]),
        Some(list @ Value::Array(_)) => sent["stop_sequences"] = list.clone(),
        _ => {}
    }
    if let Some(tools) = body.get("tools").and_then(Value::as_array) {
        let tools: Vec<Value> = tools
            .iter()
            .map(|t| {
                let f = &t["function"];
                json!({"name": f["name"], "description": f["description"], "input_schema": f["parameters"]})
            })
            .collect();
        sent["tools"] = Value::Array(tools);
    }
    if let Some(schema) = body.pointer("/response_format/json_schema/schema") {
        sent["tools"] = json!([{
            "name": OUTPUT_TOOL,
            "description": "Give the answer, as the input of this tool.",
            "input_schema": schema,
        }]);
        sent["tool_choice"] = json!({"type": "tool", "name": OUTPUT_TOOL});
    }
    sent
}

/// A Messages answer in one shape; `forced`: the request made the model call [`OUTPUT_TOOL`].
fn anthropic_answer(raw: &Value, forced: bool) -> Result<Answer, &'static str> {
    let content =
        raw.get("content").and_then(Value::as_array).filter(|c| !c.is_empty()).ok_or("the answer has no content")?;
    // A forced tool call carries the structured answer as its input; text blocks carry the rest.
    let output = content.iter().find(|b| forced && b["type"] == "tool_use" && b["name"] == OUTPUT_TOOL);
    let text = match output {
        Some(call) => call.get("input").map(Value::to_string).unwrap_or_default(),
        None => content.iter().filter(|b| b["type"] == "text").filter_map(|b| b["text"].as_str()).collect(),
    };
    let tool_calls = if forced {
        Vec::new()
    } else {
        content
            .iter()
            .filter(|b| b["type"] == "tool_use")
            .enumerate()
            .map(|(i, b)| ToolCall {
                id: b["id"].as_str().map_or_else(|| format!("toolu_{i}"), str::to_string),
                name: b["name"].as_str().unwrap_or_default().to_string(),
                args: b.get("input").cloned().unwrap_or_else(|| json!({})),
            })
            .collect()
    };
    let usage = raw.get("usage");
    let tokens = |k: &str| usage.and_then(|u| u.get(k)).and_then(Value::as_u64);
    let cached = tokens("cache_read_input_tokens").unwrap_or(0);
    Ok(Answer {
        text,
        finish_reason: raw.get("stop_reason").and_then(Value::as_str).unwrap_or("unknown").to_string(),
        provider_model: raw.get("model").and_then(Value::as_str).map(str::to_string),
        // Anthropic counts cached input apart; the engine's input includes it.
        input_tokens: tokens("input_tokens").map(|n| n + cached + tokens("cache_creation_input_tokens").unwrap_or(0)),
        output_tokens: tokens("output_tokens"),
        cached_tokens: cached,
        tool_calls,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn model() -> Model {
        Model {
            alias: "claude".into(),
            provider: "a".into(),
            model: "claude-x".into(),
            input_usd_per_mtok: 3.0,
            output_usd_per_mtok: 15.0,
            cached_input_usd_per_mtok: Some(0.3),
            context_window: None,
            max_output_tokens: Some(1000),
            cache_ttl_ms: None,
            tool_calling: crate::models::ToolCalling::Native,
        }
    }

    #[test]
    fn an_openai_shaped_request_becomes_a_messages_request_with_its_schema_as_a_forced_tool() {
        let body = json!({
            "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}],
            "temperature": 0, "stop": "END",
            "response_format": {"type": "json_schema", "json_schema": {"name": "output", "schema": {"type": "object"}}}
        });
        let sent = anthropic_body(&model(), &body);
        assert_eq!(sent["system"], "Be brief.");
        assert_eq!(sent["messages"], json!([{"role": "user", "content": "hi"}]));
        assert_eq!((sent["max_tokens"].as_u64(), sent["model"].as_str()), (Some(1000), Some("claude-x")));
        assert_eq!(sent["stop_sequences"], json!(["END"]));
        assert_eq!(sent["tool_choice"], json!({"type": "tool", "name": "output"}));
        assert_eq!(sent["tools"][0]["input_schema"], json!({"type": "object"}));
    }

    #[test]
    fn tool_calls_and_their_results_become_tool_use_and_tool_result_blocks_and_come_back_as_calls() {
        let body = json!({
            "messages": [
                {"role": "user", "content": "go"},
                {"role": "assistant", "content": "Looking.", "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "a", "arguments": "{\"q\":1}"}},
                    {"id": "c2", "type": "function", "function": {"name": "mcp__b", "arguments": "{}"}}
                ]},
                {"role": "tool", "tool_call_id": "c1", "content": "one"},
                {"role": "tool", "tool_call_id": "c2", "content": "two"}
            ],
            "tools": [{"type": "function", "function": {"name": "a", "description": "A.", "parameters": {"type": "object"}}}]
        });
        let sent = anthropic_body(&model(), &body);
        assert_eq!(
            sent["messages"][1]["content"][1],
            json!({"type": "tool_use", "id": "c1", "name": "a", "input": {"q": 1}})
        );
        assert_eq!(sent["messages"][1]["content"][0], json!({"type": "text", "text": "Looking."}));
        let results = &sent["messages"][2];
        assert_eq!((results["role"].as_str(), results["content"].as_array().map(Vec::len)), (Some("user"), Some(2)));
        assert_eq!(results["content"][1], json!({"type": "tool_result", "tool_use_id": "c2", "content": "two"}));
        assert_eq!(sent["tools"], json!([{"name": "a", "description": "A.", "input_schema": {"type": "object"}}]));
        assert!(sent.get("tool_choice").is_none());
        // A tool named like the forced output tool is a call when nothing was forced.
        let raw = json!({"content": [{"type": "tool_use", "id": "t1", "name": "output", "input": {"x": 1}}],
                         "stop_reason": "tool_use", "usage": {"input_tokens": 1, "output_tokens": 1}});
        let a = anthropic_answer(&raw, false).expect("answer");
        assert_eq!(
            (a.text.as_str(), a.tool_calls[0].name.as_str(), &a.tool_calls[0].args),
            ("", "output", &json!({"x": 1}))
        );
        let raw = json!({"choices": [{"finish_reason": "tool_calls", "message": {"content": null, "tool_calls": [
            {"id": "k", "function": {"name": "a", "arguments": "{\"q\": 2}"}},
            {"id": "j", "function": {"name": "a", "arguments": "not json"}}]}}]});
        let a = openai_answer(&raw).expect("answer");
        assert_eq!(
            a.tool_calls.iter().map(|c| c.args.clone()).collect::<Vec<_>>(),
            [json!({"q": 2}), json!("not json")]
        );
        let out = answer(&model(), &json!({"messages": []}), a);
        assert_eq!(out["tool_calls"][0], json!({"id": "k", "name": "a", "args": {"q": 2}}));
    }

    #[test]
    fn a_messages_answer_reads_as_text_or_as_the_forced_tools_input_with_cached_input_counted() {
        let raw = json!({"model": "claude-x", "stop_reason": "end_turn",
            "content": [{"type": "text", "text": "Hello"}, {"type": "text", "text": " there"}],
            "usage": {"input_tokens": 10, "output_tokens": 3, "cache_read_input_tokens": 90}});
        let a = anthropic_answer(&raw, false).expect("answer");
        assert_eq!((a.text.as_str(), a.input_tokens, a.cached_tokens), ("Hello there", Some(100), 90));
        let out = answer(&model(), &json!({}), a);
        let expected = (10.0 * 3.0 + 90.0 * 0.3 + 3.0 * 15.0) / 1e6;
        assert!((out["cost_usd"].as_f64().unwrap_or(0.0) - expected).abs() < 1e-12, "{out}");
        let raw = json!({"content": [{"type": "tool_use", "name": "output", "input": {"city": "Paris"}}],
                         "stop_reason": "tool_use", "usage": {"input_tokens": 1, "output_tokens": 1}});
        assert_eq!(anthropic_answer(&raw, true).expect("tool").text, r#"{"city":"Paris"}"#);
        assert_eq!(anthropic_url("https://api.anthropic.com/", "messages"), "https://api.anthropic.com/v1/messages");
        assert_eq!(anthropic_url("http://127.0.0.1:9/v1", "messages"), "http://127.0.0.1:9/v1/messages");
    }
}
