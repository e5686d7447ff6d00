//! `GET /v1/providers`: the model providers this server's cairn.toml declares, the model aliases
//! on each, and the state of each one's circuit breaker in this process. Keys are never shown:
//! only the name of the variable that holds one, and whether it is set.

use crate::AppState;
use crate::error::ApiError;
use crate::views::reply;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use cairn_store::Store;
use serde::Serialize;
use utoipa::ToSchema;

/// A model provider and its breaker.
#[derive(Serialize, ToSchema)]
pub struct ProviderView {
    name: String,
    /// `openai` (any OpenAI-compatible server) or `anthropic`.
    #[serde(rename = "type")]
    kind: &'static str,
    base_url: String,
    /// The environment variable holding the key (never the key).
    #[serde(skip_serializing_if = "Option::is_none")]
    api_key_env: Option<String>,
    /// Whether that variable is set in the server's environment.
    key_set: bool,
    /// The model aliases served by this provider.
    models: Vec<String>,
    breaker: BreakerState,
}

/// A provider's circuit breaker in this process.
#[derive(Serialize, ToSchema)]
pub struct BreakerState {
    /// `closed` (calls go out), `open` (skipped until the cool-down ends) or `half_open` (one
    /// probe call decides).
    #[schema(pattern = "^(closed|open|half_open)$")]
    state: &'static str,
    consecutive_failures: u32,
    /// Calls and failures in the breaker's window.
    recent_calls: u32,
    recent_failures: u32,
    /// While open: milliseconds until a probe call is let through.
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_in_ms: Option<u64>,
    /// Why it opened.
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct ProviderList {
    /// `default_model` of the configuration, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    default_model: Option<String>,
    providers: Vec<ProviderView>,
}

/// Model providers and their circuit breakers
///
/// What this server's configuration declares, with each provider's breaker as this process sees
/// it (breakers are per process). Empty when no models are configured.
#[utoipa::path(
    get,
    path = "/v1/providers",
    operation_id = "list_providers",
    tag = "providers",
    responses((status = 200, description = "The providers.", body = ProviderList)),
)]
pub async fn list<S: Store>(State(state): State<AppState<S>>) -> Result<Response, ApiError> {
    let models = state.engine.models();
    let breakers = cairn_engine::breakers::snapshot();
    let providers = models
        .providers
        .values()
        .map(|p| {
            let b = breakers.get(&p.name);
            ProviderView {
                name: p.name.clone(),
                kind: p.kind.as_str(),
                base_url: p.base_url.clone(),
                api_key_env: p.api_key_env.clone(),
                key_set: p.api_key_env.as_ref().is_some_and(|v| std::env::var(v).is_ok_and(|k| !k.is_empty())),
                models: models.models.values().filter(|m| m.provider == p.name).map(|m| m.alias.clone()).collect(),
                breaker: BreakerState {
                    state: b.map_or("closed", |b| b.state),
                    consecutive_failures: b.map_or(0, |b| b.consecutive_failures),
                    recent_calls: b.map_or(0, |b| b.recent_calls),
                    recent_failures: b.map_or(0, |b| b.recent_failures),
                    retry_in_ms: b.and_then(|b| b.retry_in_ms),
                    reason: b.and_then(|b| b.reason.clone()),
                },
            }
        })
        .collect();
    Ok(reply(StatusCode::OK, &ProviderList { default_model: models.default_model, providers }))
}
