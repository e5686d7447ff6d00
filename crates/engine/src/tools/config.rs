//! Tool and MCP server settings, as `cairn.toml` declares them (`[tools.NAME]`, `[mcp.NAME]`),
//! checked by the CLI into these values. Data only; [`build`] makes a registry entry of one.

use super::{Entry, Policy, ToolSpec};
use cairn_core::kinds::EffectClass;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Every configured tool and MCP server.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ToolsConfig {
    pub tools: BTreeMap<String, ToolConfig>,
    pub mcp: BTreeMap<String, McpConfig>,
}

/// `[tools.NAME]`: one configured tool of a built-in type.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ToolConfig {
    pub name: String,
    /// `http_request`, `sql_query` or `file`.
    #[serde(rename = "type")]
    pub kind: String,
    pub description: Option<String>,
    /// Fixes the effect class (else the type's own: `sql_query` and `file` reads … ).
    pub effect: Option<EffectClass>,
    /// `never`, `always`, or a CEL condition over `args`; default: by effect.
    pub approval: Option<String>,
    /// A JSON Schema the result must fit (else `malformed_output`).
    pub output_schema: Option<serde_json::Value>,
    /// Another tool that undoes this one (shown; called by sagas).
    pub compensate: Option<String>,
    // http_request
    /// A fixed endpoint (`https://api.example.com/notes`): calls go there (args then give only
    /// `headers`, `query`, `body`), and its host is allowed unless `allow_hosts` says otherwise.
    pub url: Option<String>,
    /// With `url`: the method every call uses (default: the call's `method`, else GET).
    pub method: Option<String>,
    /// Hosts the tool may reach (`api.example.com`, `*.example.com`); empty: any public host.
    /// Naming a loopback or private host or address here allows it.
    #[serde(default)]
    pub allow_hosts: Vec<String>,
    /// Internal addresses are refused even when `allow_hosts` names them (a workflow's own
    /// tools: only the config file may open the inside of the network).
    #[serde(default)]
    pub deny_internal: bool,
    /// Sent with every request that does not set them.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    pub connect_timeout_ms: Option<u64>,
    pub timeout_ms: Option<u64>,
    pub max_response_bytes: Option<u64>,
    /// `truncate` (default: keep the first bytes, with a marker) or `refuse`.
    pub on_oversize: Option<String>,
    pub max_redirects: Option<u32>,
    // sql_query
    /// `sqlite://PATH` or `postgres://…`.
    pub connection: Option<String>,
    /// The environment variable holding the PostgreSQL password (never written in the file).
    pub password_env: Option<String>,
    /// Let a PostgreSQL superuser run the queries (refused by default: a read-only transaction
    /// does not stop a superuser's functions).
    #[serde(default)]
    pub allow_superuser: bool,
    pub max_rows: Option<u32>,
    pub statement_timeout_ms: Option<u64>,
    // file
    /// The sandbox root (canonicalised once, when the tool is set up).
    pub root: Option<String>,
    /// The largest file `read` returns and `write`/`append` make.
    pub max_file_bytes: Option<u64>,
}

impl ToolConfig {
    /// The tool available without configuration: `http_request` to public hosts.
    pub fn http_request_default() -> ToolConfig {
        ToolConfig { name: "http_request".into(), kind: "http_request".into(), ..ToolConfig::default() }
    }
}

/// `[mcp.NAME]`: an MCP server, started as a child process (`command`, `env`) or reached over
/// streamable HTTP (`url`, `headers`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct McpConfig {
    pub name: String,
    #[serde(default)]
    pub command: Vec<String>,
    /// Where a stdio server runs (the config file's directory, so that relative paths in its
    /// command mean what they mean elsewhere in the file); `None`: this process's directory.
    #[serde(default)]
    pub cwd: Option<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    pub url: Option<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Headers whose values are read from environment variables when the server is reached
    /// (`{ Authorization = "MCP_TOKEN" }`): credentials never sit in the file.
    #[serde(default)]
    pub headers_env: BTreeMap<String, String>,
    /// Effect classes by tool name, where the server's annotations are not enough.
    #[serde(default)]
    pub effects: BTreeMap<String, EffectClass>,
    /// Approval policies by tool name (else by effect).
    #[serde(default)]
    pub approval: BTreeMap<String, String>,
    pub timeout_ms: Option<u64>,
}

/// Sets up one configured tool: its code, schemas, effect and policy.
pub(crate) fn build(config: &ToolConfig) -> Result<Entry, String> {
    let name = &config.name;
    let built = match config.kind.as_str() {
        "http_request" => super::http_request::build(config),
        "sql_query" => super::sql_query::build(config),
        "file" => super::file::build(config),
        other => Err(format!("its type `{other}` is not http_request, sql_query or file")),
    };
    let built = built.map_err(|e| format!("tool '{name}': {e}"))?;
    let effect = config.effect.unwrap_or(built.effect);
    let approval = match &config.approval {
        Some(text) => Policy::parse(text).map_err(|e| format!("tool '{name}': {e}"))?,
        None => Policy::for_effect(effect),
    };
    let spec = ToolSpec {
        name: name.clone(),
        description: config.description.clone().unwrap_or(built.description),
        kind: config.kind.clone(),
        source: if config == &ToolConfig::http_request_default() {
            "built-in"
        } else if config.deny_internal {
            "workflow"
        } else {
            "cairn.toml"
        }
        .into(),
        input_schema: built.input_schema,
        output_schema: config.output_schema.clone(),
        effect,
        effect_note: if config.effect.is_some() { None } else { built.effect_note },
        approval,
        compensate: config.compensate.clone(),
    };
    Entry::new(spec, config.effect.is_some(), built.code)
}

/// What a tool type makes of its configuration.
pub(crate) struct Built {
    pub description: String,
    pub input_schema: serde_json::Value,
    pub effect: EffectClass,
    pub effect_note: Option<String>,
    pub code: std::sync::Arc<dyn super::Tool>,
}
