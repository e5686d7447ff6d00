//! Model providers and model aliases, as `cairn.toml` declares them (`[providers.NAME]`,
//! `[models.ALIAS]`, `default_model`). Data only: what a provider is (an OpenAI-compatible
//! chat-completions server or the Anthropic Messages API), where it answers, which environment
//! variable holds its key (never the key itself), and each model's price and limits.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The API a provider speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProviderType {
    /// OpenAI chat completions, as OpenAI, vLLM, Ollama, llama.cpp and LiteLLM serve it.
    Openai,
    /// Anthropic's Messages API.
    Anthropic,
    /// A model in this process that answers from `replies` (see `providers::mock`): offline.
    Mock,
}

impl ProviderType {
    pub fn parse(s: &str) -> Option<ProviderType> {
        match s {
            "openai" => Some(ProviderType::Openai),
            "anthropic" => Some(ProviderType::Anthropic),
            "mock" => Some(ProviderType::Mock),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ProviderType::Openai => "openai",
            ProviderType::Anthropic => "anthropic",
            ProviderType::Mock => "mock",
        }
    }
}

/// `[providers.NAME]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Provider {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: ProviderType,
    /// E.g. `http://127.0.0.1:8000/v1` (OpenAI-compatible: `/chat/completions` is appended) or
    /// `https://api.anthropic.com` (`/v1/messages` is appended, `/messages` to one ending in `/v1`).
    pub base_url: String,
    /// The environment variable holding the API key; `None` for local servers without one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_key_env: Option<String>,
    /// How long to wait for a connection, and for a whole request.
    pub connect_timeout_ms: u64,
    pub request_timeout_ms: u64,
    /// Sent with every request (names and values; never secrets — those come from `api_key_env`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// When this process skips the provider for a while (see `crate::breakers`).
    #[serde(default)]
    pub breaker: crate::breakers::BreakerConfig,
    /// A `mock` provider's scripted answers, tried in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replies: Vec<MockReply>,
}

/// One scripted answer of a `mock` provider: `say` answers when `when` is in the conversation's
/// last message (any message when `when` is not given).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MockReply {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<String>,
    pub say: String,
}

impl Provider {
    /// The key to send, read from `api_key_env` now (`None` for a provider without one); `Err`
    /// says which variable is not set (never a value).
    pub fn key(&self) -> Result<Option<String>, String> {
        let Some(var) = &self.api_key_env else { return Ok(None) };
        match std::env::var(var) {
            Ok(key) if !key.is_empty() => Ok(Some(key)),
            _ => Err(format!("${var} (the key of provider '{}') is not set", self.name)),
        }
    }
}

/// `[models.ALIAS]`: what steps name, mapped to a provider's model, with its price and limits.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Model {
    pub alias: String,
    pub provider: String,
    /// The provider's own id for it.
    pub model: String,
    /// USD per million tokens.
    pub input_usd_per_mtok: f64,
    pub output_usd_per_mtok: f64,
    /// Cached input tokens, where the provider discounts them; `None` prices them as input.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cached_input_usd_per_mtok: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub context_window: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_output_tokens: Option<u32>,
    /// Answers kept across runs this long (`cache = {ttl = "1h"}`); a step's `with.cache` wins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_ttl_ms: Option<u64>,
    /// How an `agent` step gives this model its tools.
    #[serde(default)]
    pub tool_calling: ToolCalling,
}

/// How an agent's tools reach a model (`tool_calling` in `[models.ALIAS]`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ToolCalling {
    /// A JSON action format any model can follow, its answers held to a JSON Schema:
    /// `{"tool": NAME, "args": {…}, "reason": "…"}` or `{"final": ANSWER}`.
    #[default]
    Json,
    /// The provider's own tool calling (OpenAI `tools`/`tool_calls`, Anthropic `tool_use`): the
    /// model may ask for several calls in one turn.
    Native,
}

impl ToolCalling {
    pub fn parse(s: &str) -> Option<ToolCalling> {
        match s {
            "json" => Some(ToolCalling::Json),
            "native" => Some(ToolCalling::Native),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ToolCalling::Json => "json",
            ToolCalling::Native => "native",
        }
    }
}

impl Model {
    /// What a call costs, in USD, at this model's prices.
    pub fn cost_usd(&self, input_tokens: u64, cached_tokens: u64, output_tokens: u64) -> f64 {
        let cached_price = self.cached_input_usd_per_mtok.unwrap_or(self.input_usd_per_mtok);
        let fresh = input_tokens.saturating_sub(cached_tokens) as f64;
        (fresh * self.input_usd_per_mtok
            + cached_tokens as f64 * cached_price
            + output_tokens as f64 * self.output_usd_per_mtok)
            / 1_000_000.0
    }
}

/// Every provider and model this process knows, and the default model.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Models {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_model: Option<String>,
    pub providers: BTreeMap<String, Provider>,
    pub models: BTreeMap<String, Model>,
}

impl Models {
    pub fn is_empty(&self) -> bool {
        self.providers.is_empty() && self.models.is_empty()
    }

    /// A model and its provider, by alias.
    pub fn resolve(&self, alias: &str) -> Option<(&Model, &Provider)> {
        let model = self.models.get(alias)?;
        Some((model, self.providers.get(&model.provider)?))
    }
}

/// Whether a provider answers: `GET {base_url}/models` with its key (read from `api_key_env`
/// here), within its timeouts. `Ok` says how many models it lists; `Err` says what went wrong
/// (never the key).
pub async fn check(provider: &Provider) -> Result<String, String> {
    if provider.kind == ProviderType::Mock {
        return Ok(format!("answers in this process (type mock, {} scripted replies)", provider.replies.len()));
    }
    let key = provider.key().map_err(|_| {
        format!("${} is not set here, so there is no key to send", provider.api_key_env.as_deref().unwrap_or_default())
    })?;
    let client = crate::providers::client(provider).map_err(|f| f.message)?;
    let url = match provider.kind {
        ProviderType::Anthropic => crate::providers::anthropic_url(&provider.base_url, "models"),
        _ => format!("{}/models", provider.base_url),
    };
    let mut request = client.get(&url);
    for (k, v) in &provider.headers {
        request = request.header(k, v);
    }
    request = match (provider.kind, &key) {
        (ProviderType::Openai, Some(key)) => request.bearer_auth(key),
        (ProviderType::Anthropic, Some(key)) => request.header("x-api-key", key),
        (ProviderType::Mock, _) | (_, None) => request,
    };
    if provider.kind == ProviderType::Anthropic {
        request = request.header("anthropic-version", "2023-06-01");
    }
    let redact = |text: String| match &key {
        Some(key) if key.len() >= 4 => text.replace(key.as_str(), "[redacted]"),
        _ => text,
    };
    let response = request.send().await.map_err(|e| redact(format!("connecting to {url}: {e}")))?;
    let status = response.status();
    let body = response.text().await.map_err(|e| redact(format!("reading from {url}: {e}")))?;
    if !status.is_success() {
        let quoted: String = body.chars().take(200).collect();
        return Err(redact(format!("{url} answered {status}: {quoted}")));
    }
    let body: serde_json::Value =
        serde_json::from_str(&body).map_err(|_| format!("{url} answered, but not with JSON"))?;
    let listed = ["data", "models"].iter().find_map(|k| body.get(*k).and_then(|v| v.as_array()).map(Vec::len));
    match listed {
        Some(n) => Ok(format!("answers at {url}: {n} model(s) listed")),
        None => Err(format!("{url} answered, but not with a list of models")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cost_prices_fresh_cached_and_output_tokens_apart() {
        let m = Model {
            alias: "small".into(),
            provider: "local".into(),
            model: "m".into(),
            input_usd_per_mtok: 1.0,
            output_usd_per_mtok: 4.0,
            cached_input_usd_per_mtok: Some(0.1),
            context_window: None,
            max_output_tokens: None,
            cache_ttl_ms: None,
            tool_calling: ToolCalling::Json,
        };
        let cost = m.cost_usd(1_000_000, 500_000, 250_000);
        assert!((cost - (0.5 + 0.05 + 1.0)).abs() < 1e-9, "{cost}");
        let uncached = Model { cached_input_usd_per_mtok: None, ..m };
        assert!((uncached.cost_usd(2_000, 1_000, 0) - 0.002).abs() < 1e-12);
    }
}
