//! `GET /v1/tools`: the tools this server's steps can call — built-ins, `[tools.NAME]` of its
//! cairn.toml, and each `[mcp.NAME]` server's tools — with their schemas, effect classes,
//! approval policies, and each rendered as an OpenAI and an Anthropic tool definition.

use crate::AppState;
use crate::error::ApiError;
use crate::views::reply;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use cairn_store::Store;
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;
use utoipa::ToSchema;

/// A tool.
#[derive(Serialize, ToSchema)]
pub struct ToolView {
    #[schema(example = "orders_db")]
    name: String,
    description: String,
    /// `http_request`, `sql_query`, `file` or `mcp`.
    #[serde(rename = "type")]
    kind: String,
    /// `built-in`, `cairn.toml` or `mcp:SERVER`.
    source: String,
    #[schema(value_type = Object)]
    input_schema: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    output_schema: Option<Value>,
    /// `read`, `idempotent_write`, `write` or `irreversible`.
    effect: &'static str,
    /// Said when a call's effect depends on its arguments.
    #[serde(skip_serializing_if = "Option::is_none")]
    effect_note: Option<String>,
    /// `never`, `always`, `writes` (the default: calls that write ask) or `when CONDITION`.
    approval: String,
    /// The tool as an OpenAI `tools` entry.
    #[schema(value_type = Object)]
    openai: Value,
    /// The tool as an Anthropic Messages `tools` entry.
    #[schema(value_type = Object)]
    anthropic: Value,
}

#[derive(Serialize, ToSchema)]
pub struct ToolList {
    tools: Vec<ToolView>,
    /// MCP servers whose tools could not be listed, and why.
    unavailable: BTreeMap<String, String>,
}

/// Tools steps can call
///
/// Every tool of this server's registry. MCP servers not reached yet are reached first (their
/// tools are listed; one that does not start is named under `unavailable`).
#[utoipa::path(
    get,
    path = "/v1/tools",
    operation_id = "list_tools",
    tag = "tools",
    responses((status = 200, description = "The tools.", body = ToolList)),
)]
pub async fn list<S: Store>(State(state): State<AppState<S>>) -> Result<Response, ApiError> {
    let registry = state.engine.tools();
    registry.connect_all().await;
    let tools = registry
        .specs()
        .into_iter()
        .map(|s| ToolView {
            openai: s.openai(),
            anthropic: s.anthropic(),
            effect: s.effect.as_str(),
            approval: s.approval.describe(),
            name: s.name,
            description: s.description,
            kind: s.kind,
            source: s.source,
            input_schema: s.input_schema,
            output_schema: s.output_schema,
            effect_note: s.effect_note,
        })
        .collect();
    Ok(reply(StatusCode::OK, &ToolList { tools, unavailable: registry.unavailable() }))
}
