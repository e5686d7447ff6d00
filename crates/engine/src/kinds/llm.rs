//! `llm`: one chat call to a configured model (`cairn.toml` `[models.ALIAS]`), or to the first of
//! a list that answers. Each request is a journaled call, so a retried or resumed attempt gets an
//! answer already paid for back instead of asking again. Output: `{text, json, model,
//! provider_model, finish_reason, usage: {input_tokens, output_tokens, cached_tokens, estimated},
//! cost_usd, skipped}` — `skipped` says why each earlier model of the list did not answer.
//!
//! With `output_schema` the provider is asked for JSON fitting it, and the answer is checked: one
//! that does not parse or fit is sent back once, naming what failed, and a second miss fails the
//! step (class `malformed_output`, not retried). A malformed answer is never passed on.

use super::{Activity, Attempt, AttemptFuture, Meter, Usage};
use crate::breakers;
use crate::models::Models;
use cairn_core::event::{ErrorClass, Failure};
use cairn_core::kinds::{EffectClass, KindSpec, REMOTE};
use cairn_store::Reservation;
use serde_json::{Value, json};

pub struct Kind {
    /// The tools `with.context` sources read through.
    pub tools: std::sync::Arc<crate::tools::Tools>,
}

fn permanent(message: String) -> Failure {
    Failure::new(ErrorClass::Permanent, message)
}

impl Activity for Kind {
    fn spec(&self) -> KindSpec {
        KindSpec::new(
            "llm",
            "one chat call to a model from cairn.toml (`with.model`: an alias or a list tried in order; \
             `prompt` or `messages`, `system`, `temperature`, `max_tokens`, `stop`, `output_schema`): {text, json, usage, \
             cost_usd, …}",
        )
        .retry(REMOTE)
        .timeout_ms(Some(300_000))
        .effect(EffectClass::Read)
        .with_schema(json!({
            "type": "object",
            "properties": {
                "model": {"anyOf": [
                    {"type": "string", "minLength": 1},
                    {"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 1}
                ]},
                "system": {"type": "string"},
                "prompt": {"type": "string"},
                "messages": {"type": "array", "minItems": 1, "items": {
                    "type": "object",
                    "required": ["role", "content"],
                    "properties": {
                        "role": {"enum": ["system", "user", "assistant"]},
                        "content": {"type": "string"}
                    },
                    "additionalProperties": false
                }},
                "temperature": {"type": "number", "minimum": 0, "maximum": 2},
                "max_tokens": {"type": "integer", "minimum": 1},
                "stop": {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]},
                "output_schema": {"type": "object", "description": "a JSON Schema the answer must fit"},
                "context": super::context::schema(),
                "cache": {
                    "type": "object",
                    "properties": {"ttl": {"anyOf": [
                        {"type": "string", "pattern": "^[0-9]+(\\.[0-9]+)?(ms|s|m|min|h|d)?$"},
                        {"type": "integer", "minimum": 0, "maximum": MAX_CACHE_TTL_MS}
                    ], "description": "e.g. 1h (a bare number is milliseconds); 0 turns caching off; at most 30d"}},
                    "required": ["ttl"],
                    "additionalProperties": false
                }
            },
            "oneOf": [{"required": ["prompt"]}, {"required": ["messages"]}],
            "additionalProperties": false
        }))
    }

    fn run<'a>(&'a self, attempt: &'a mut Attempt<'_>) -> AttemptFuture<'a> {
        Box::pin(async move {
            let (models, aliases) = chosen(attempt)?;
            let input = attempt.input.clone();
            let schema = match input.get("output_schema") {
                Some(schema) => Some(
                    jsonschema::validator_for(schema)
                        .map_err(|e| permanent(format!("with.output_schema is not a usable JSON Schema: {e}")))?,
                ),
                None => None,
            };
            let mut body = request_body(&input)?;
            if let Some(spec) = input.get("context") {
                let query = body["messages"]
                    .as_array()
                    .and_then(|m| m.iter().rev().find(|m| m["role"] == "user"))
                    .and_then(|m| m["content"].as_str())
                    .unwrap_or_default()
                    .to_string();
                let block = super::context::assemble(attempt, &self.tools, spec, &query).await?;
                with_context(&mut body, block);
            }
            let (alias, mut output) = ask(attempt, &models, &aliases, &body, schema.as_ref()).await?;
            let Some(schema) = schema else { return Ok(output) };
            let text = output["text"].as_str().unwrap_or_default().to_string();
            let problem = match structured(&schema, &text) {
                Ok(json) => {
                    output["json"] = json;
                    return Ok(output);
                }
                Err(problem) => problem,
            };
            // Once more, with the answer and what is wrong with it; a second miss is final.
            attempt.log(format!("the answer of model {alias} does not fit output_schema ({problem}); asking again"));
            let mut again = body.clone();
            if let Some(Value::Array(messages)) = again.get_mut("messages") {
                messages.push(json!({"role": "assistant", "content": text}));
                messages.push(json!({"role": "user", "content": format!(
                    "That answer cannot be used: {problem}. Answer again with only a JSON value that fits the \
                     schema, and nothing else."
                )}));
            }
            let (_, second) = ask(attempt, &models, std::slice::from_ref(&alias), &again, Some(&schema)).await?;
            let text = second["text"].as_str().unwrap_or_default().to_string();
            let json = structured(&schema, &text).map_err(|problem| {
                Failure::new(
                    ErrorClass::MalformedOutput,
                    format!(
                        "model {alias} answered twice without fitting with.output_schema; the second time: {problem}"
                    ),
                )
            })?;
            output = summed(output, second);
            output["json"] = json;
            Ok(output)
        })
    }
}

/// The configured models, and the ones the step asks for in order (`with.model`, else
/// `default_model`).
pub(super) fn chosen(attempt: &Attempt<'_>) -> Result<(std::sync::Arc<Models>, Vec<String>), Failure> {
    let models = models_of(attempt.config.get("models").unwrap_or(&Value::Null));
    if models.models.is_empty() {
        return Err(permanent(
            "no models are configured: declare [providers.NAME] and [models.ALIAS] in cairn.toml (`cairn models` \
             lists them), or use `mock_model`"
                .into(),
        ));
    }
    let aliases: Vec<String> = match attempt.input.get("model") {
        Some(Value::String(a)) => vec![a.clone()],
        Some(Value::Array(list)) => list.iter().filter_map(|v| v.as_str().map(str::to_string)).collect(),
        _ => models.default_model.clone().into_iter().collect(),
    };
    if aliases.is_empty() {
        return Err(permanent("with.model is not given and cairn.toml has no `default_model`".into()));
    }
    Ok((models, aliases))
}

/// The configuration's models, read once (every attempt of a process gets the same value).
fn models_of(config: &Value) -> std::sync::Arc<Models> {
    type Last = std::sync::Mutex<Option<(Value, std::sync::Arc<Models>)>>;
    static LAST: Last = std::sync::Mutex::new(None);
    let mut last = LAST.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((seen, models)) = &*last
        && seen == config
    {
        return models.clone();
    }
    let models = std::sync::Arc::new(serde_json::from_value::<Models>(config.clone()).unwrap_or_default());
    *last = Some((config.clone(), models.clone()));
    models
}

/// Asks the first model of `aliases` that answers: each request a journaled call, the next model
/// asked when one is away or busy. The answer, with `skipped` saying why earlier ones did not.
pub(super) async fn ask(
    attempt: &mut Attempt<'_>,
    models: &Models,
    aliases: &[String],
    body: &Value,
    schema: Option<&jsonschema::Validator>,
) -> Result<(String, Value), Failure> {
    let mut skipped = Vec::new();
    let last = aliases.len() - 1;
    for (n, alias) in aliases.iter().enumerate() {
        let Some((model, provider)) = models.resolve(alias) else {
            let known: Vec<&str> = models.models.keys().map(String::as_str).collect();
            return Err(permanent(format!(
                "with.model `{alias}` is not a model of cairn.toml (declared: {})",
                known.join(", ")
            )));
        };
        let key = match provider.key() {
            Ok(key) => key,
            Err(why) if n == last => return Err(permanent(why)),
            Err(why) => {
                skipped.push(json!({"model": alias, "reason": why}));
                continue;
            }
        };
        // What is recorded and hashed: never the key.
        let request = json!({"provider": provider.name, "model": alias, "body": body});
        let meter = Meter { model: alias.clone(), worst: worst_case(attempt, model, body) };
        // The response cache across runs, when the step or the model asks for it.
        let ttl_ms = cache_ttl(attempt.input)?.or(model.cache_ttl_ms).filter(|ms| *ms > 0);
        let cache_key = ttl_ms.map(|_| {
            let canonical = json!({"alias": alias, "provider": provider.name, "base_url": provider.base_url,
                                   "model": model.model, "body": body});
            format!("llm:{}", cairn_core::payload::sha256_hex(canonical.to_string().as_bytes()))
        });
        let hit = match &cache_key {
            Some(key) => attempt.cached_answer(key).await,
            None => None,
        };
        let from_cache = hit.is_some();
        // Tool calls come whole or not at all: a request offering tools is not streamed.
        let tokens = if body.get("tools").is_some() { None } else { attempt.tokens() };
        let (model, provider, sent) = (model.clone(), provider.clone(), body.clone());
        let answered = attempt
            .metered_call("llm", &request, Some(&meter), |_| async move {
                if let Some(mut cached) = hit {
                    // Served from the cache: the call is journaled as a hit and costs nothing.
                    cached["cache"] = json!({"hit": true, "saved_usd": cached["cost_usd"].take()});
                    cached["cost_usd"] = json!(0.0);
                    for k in ["input_tokens", "output_tokens", "cached_tokens"] {
                        cached["usage"][k] = json!(0);
                    }
                    return Ok(cached);
                }
                // Asked inside the call, so a refusal takes the call's position like a failure
                // would: an attempt run again (in a process whose breakers differ) finds the same
                // calls in the same places.
                // A prompt that cannot fit the model's context window is not sent (counted with
                // OpenAI's vocabulary, which takes fewer tokens than most: what it counts over is
                // over). Checked here, only when the call is made, so a recorded call replays.
                if let Some(window) = model.context_window {
                    let input = crate::tokens::count_messages(&sent["messages"]);
                    if input > u64::from(window) {
                        let message = format!(
                            "the prompt takes about {input} tokens, more than the {window} of model {}'s context \
                             window; it was not sent",
                            model.alias
                        );
                        return Err(Failure::new(ErrorClass::ContextOverflow, message));
                    }
                }
                if let Err((why, wait)) = breakers::allow(&provider.name, provider.breaker) {
                    let message = format!("provider {}: {why}", provider.name);
                    let retry_after_ms = Some(wait.as_millis() as u64);
                    return Err(Failure { retry_after_ms, ..Failure::new(ErrorClass::Transient, message) });
                }
                let answered = crate::providers::chat(&provider, &model, &sent, key.as_deref(), tokens.as_ref()).await;
                let health = match &answered {
                    Ok(_) => Some(false),
                    Err(f) if f.class.is_retryable() => Some(true),
                    Err(_) => None,
                };
                breakers::record(&provider.name, health);
                // A provider quoting the request back (an error page, an echo) must not put its
                // key in anything kept or shown.
                let hide = |text: &str| match key.as_deref() {
                    Some(k) if k.len() >= 8 => text.replace(k, "[redacted]"),
                    _ => text.to_string(),
                };
                let mut answer = answered.map_err(|f| Failure { message: hide(&f.message), ..f })?;
                answer.text = hide(&answer.text);
                Ok(crate::providers::answer(&model, &sent, answer))
            })
            .await;
        match answered {
            Ok(mut output) if attempt.last_call_replayed() => {
                // Paid for by an earlier attempt (and counted there): it costs this one nothing.
                output["skipped"] = Value::Array(skipped);
                output["recorded"] = json!(true);
                output["recorded_cost_usd"] = output["cost_usd"].take();
                output["cost_usd"] = json!(0.0);
                return Ok((alias.clone(), output));
            }
            Ok(mut output) => {
                // Only a whole answer that fits what was asked is kept for other runs.
                let usable = output["finish_reason"] != "length"
                    && schema.is_none_or(|s| structured(s, output["text"].as_str().unwrap_or_default()).is_ok());
                if let (Some(key), Some(ttl), false, true) = (&cache_key, ttl_ms, from_cache, usable) {
                    attempt.cache_answer(key, &output, ttl).await;
                }
                let tokens = |k: &str| output.pointer(&format!("/usage/{k}")).and_then(Value::as_u64).unwrap_or(0);
                attempt.report_usage(Usage {
                    tokens_in: tokens("input_tokens"),
                    tokens_out: tokens("output_tokens"),
                    cost_usd: output.get("cost_usd").and_then(Value::as_f64).unwrap_or(0.0),
                });
                output["skipped"] = Value::Array(skipped);
                return Ok((alias.clone(), output));
            }
            // The next model answers instead when this one is away or busy.
            Err(f) if f.class.is_retryable() && n < last => {
                attempt.log(format!("model {alias} did not answer ({f}); trying {}", aliases[n + 1]));
                skipped.push(json!({"model": alias, "reason": f.to_string()}));
            }
            Err(f) => return Err(f),
        }
    }
    Err(permanent("no model answered".into()))
}

/// The longest a cached answer is kept.
const MAX_CACHE_TTL_MS: u64 = 30 * 86_400_000;

/// `with.cache.ttl` in milliseconds (`1h`, or a number of milliseconds as every duration of a
/// definition; 0 turns a model's cache off for the step), at most 30 days.
fn cache_ttl(input: &Value) -> Result<Option<u64>, Failure> {
    let ms = match input.pointer("/cache/ttl") {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Number(n)) => {
            n.as_u64().ok_or_else(|| permanent(format!("with.cache.ttl is {n}; use 0 or more")))?
        }
        Some(Value::String(s)) => {
            cairn_core::duration::parse_ms(s).map_err(|e| permanent(format!("with.cache.ttl: {e}")))?
        }
        Some(other) => return Err(permanent(format!("with.cache.ttl is {other}; use a duration such as 1h"))),
    };
    if ms > MAX_CACHE_TTL_MS {
        return Err(permanent(format!("with.cache.ttl is {ms} ms; at most 30d")));
    }
    Ok(Some(ms))
}

/// The most a call may cost: its input counted, and as much output as it may produce (its
/// `max_tokens`, else the model's `max_output_tokens`, else what is left of the context window,
/// else 4,096), at the model's prices. Counted only when a budget needs it.
fn worst_case(attempt: &Attempt<'_>, model: &crate::models::Model, body: &Value) -> Reservation {
    if !attempt.budgeted() {
        return Reservation { usd: 0.0, tokens: 0 };
    }
    // Counted with OpenAI's vocabulary; a model's own tokenizer and chat template can take more,
    // so the input is held with a margin (the call is settled at what the provider reports).
    let input = crate::tokens::count_messages(&body["messages"]) * 3 / 2 + 32;
    let output = body
        .get("max_tokens")
        .and_then(Value::as_u64)
        .or(model.max_output_tokens.map(u64::from))
        .or(model.context_window.map(|w| u64::from(w).saturating_sub(input)))
        .unwrap_or(4_096);
    Reservation { usd: model.cost_usd(input, 0, output), tokens: input + output }
}

/// The JSON in an answer, checked against the schema; or what is wrong with it, in a sentence the
/// model can act on.
pub(super) fn structured(schema: &jsonschema::Validator, text: &str) -> Result<Value, String> {
    let trimmed = text.trim();
    // Small models wrap JSON in a Markdown fence now and then.
    let bare = trimmed
        .strip_prefix("```json")
        .or_else(|| trimmed.strip_prefix("```"))
        .and_then(|t| t.strip_suffix("```"))
        .map(str::trim)
        .unwrap_or(trimmed);
    let value: Value = serde_json::from_str(bare).map_err(|e| {
        let quoted: String = bare.chars().take(80).collect();
        format!("it is not JSON ({e}; it begins `{quoted}`)")
    })?;
    let problems: Vec<String> = schema
        .iter_errors(&value)
        .take(3)
        .map(|e| {
            let at = e.instance_path().to_string();
            format!("{} {e}", if at.is_empty() { "the value:".to_string() } else { format!("at {at}:") })
        })
        .collect();
    if problems.is_empty() { Ok(value) } else { Err(format!("it does not fit the schema ({})", problems.join("; "))) }
}

/// The second answer, with the usage and cost of both calls.
fn summed(first: Value, mut second: Value) -> Value {
    for k in ["input_tokens", "output_tokens", "cached_tokens"] {
        let n = |v: &Value| v.pointer(&format!("/usage/{k}")).and_then(Value::as_u64).unwrap_or(0);
        second["usage"][k] = json!(n(&first) + n(&second));
    }
    let estimated = |v: &Value| v.pointer("/usage/estimated").and_then(Value::as_bool).unwrap_or(false);
    second["usage"]["estimated"] = json!(estimated(&first) || estimated(&second));
    let cost = |v: &Value| v.get("cost_usd").and_then(Value::as_f64).unwrap_or(0.0);
    second["cost_usd"] = json!(cost(&first) + cost(&second));
    second["skipped"] = first["skipped"].clone();
    second
}

/// Puts the context block before the text of the request's last user message (data beside the
/// ask, never in the system message's instructions); a message of its own when there is none.
pub(super) fn with_context(body: &mut Value, block: String) {
    let Some(messages) = body.get_mut("messages").and_then(Value::as_array_mut) else { return };
    match messages.iter_mut().rev().find(|m| m["role"] == "user") {
        Some(last) => {
            let text = last["content"].as_str().unwrap_or_default();
            last["content"] = json!(format!("{block}\n\n{text}"));
        }
        None => messages.push(json!({"role": "user", "content": block})),
    }
}

/// The chat request's body (without the model id) from the step's `with`.
fn request_body(input: &Value) -> Result<Value, Failure> {
    let mut messages = Vec::new();
    if let Some(system) = input.get("system").and_then(Value::as_str) {
        messages.push(json!({"role": "system", "content": system}));
    }
    match (input.get("prompt"), input.get("messages")) {
        (Some(Value::String(prompt)), None) => messages.push(json!({"role": "user", "content": prompt})),
        (None, Some(Value::Array(list))) => messages.extend(list.iter().cloned()),
        _ => return Err(permanent("with takes `prompt` (a string) or `messages` (a list), one of them".into())),
    }
    let mut body = json!({"messages": messages});
    for k in ["temperature", "max_tokens", "stop"] {
        if let Some(v) = input.get(k).filter(|v| !v.is_null()) {
            body[k] = v.clone();
        }
    }
    if let Some(schema) = input.get("output_schema") {
        body["response_format"] = json!({"type": "json_schema", "json_schema": {"name": "output", "schema": schema}});
    }
    Ok(body)
}
