//! MCP servers (`[mcp.NAME]`): their tools, registered as `NAME.TOOL`, called through the
//! official SDK (`rmcp`) over stdio (a child process) or streamable HTTP.
//!
//! A server is reached when one of its tools is first needed (or at start-up, or on `cairn tools
//! refresh`), and its tool list is read then. A tool's effect is `read` when the server marks it
//! `readOnlyHint`, else `write`, unless `effects` in the config says better; its policy follows
//! its effect unless `approval` says otherwise. A server that dies mid-call fails that call as
//! `transient` and is started again by the next one; a server that never starts is a clear error
//! naming the command and the tail of what it wrote to stderr. Each call carries the call's
//! stable key in its request `_meta` (`cairn.dev/idempotency-key`). A stdio server inherits only
//! a plain environment (`PATH`, `HOME`, `USER`, locale …) plus its configured `env`: the keys
//! and secrets of this process never reach it.

use super::config::McpConfig;
use super::{CallContext, Entry, Policy, Tool, ToolFuture, ToolSpec};
use cairn_core::event::{ErrorClass, Failure};
use cairn_core::kinds::EffectClass;
use rmcp::model::{CallToolRequestParams, MetaObject, RequestMetaObject};
use rmcp::service::{RoleClient, RunningService};
use rmcp::{ServiceError, ServiceExt};
use serde_json::{Value, json};
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

/// The `_meta` key that carries a call's idempotency key.
pub const KEY_META: &str = "cairn.dev/idempotency-key";

/// The variables a stdio server inherits from this process; anything else it needs is given in
/// `[mcp.NAME] env`.
const INHERITED: &[&str] = &["PATH", "HOME", "USER", "LOGNAME", "SHELL", "TERM", "LANG", "LC_ALL", "TMPDIR", "TZ"];

/// Lines of a server's stderr kept for error messages.
const STDERR_LINES: usize = 20;

type Client = RunningService<RoleClient, ()>;

/// One configured server: its connection (made when needed) and the tools it listed.
pub struct McpServer {
    pub config: McpConfig,
    client: tokio::sync::Mutex<Option<Client>>,
    tools: RwLock<BTreeMap<String, Arc<Entry>>>,
    /// Why its tools could not be listed, the last time it was tried.
    unavailable: RwLock<Option<String>>,
    stderr: Arc<Mutex<VecDeque<String>>>,
    /// Itself, for the tools it registers (they call back through it).
    me: std::sync::Weak<McpServer>,
}

impl std::fmt::Debug for McpServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("McpServer").field("name", &self.config.name).finish_non_exhaustive()
    }
}

impl McpServer {
    pub fn new(config: McpConfig) -> Arc<McpServer> {
        Arc::new_cyclic(|me| McpServer {
            config,
            client: tokio::sync::Mutex::new(None),
            tools: RwLock::new(BTreeMap::new()),
            unavailable: RwLock::new(None),
            stderr: Arc::new(Mutex::new(VecDeque::new())),
            me: me.clone(),
        })
    }

    fn timeout(&self) -> Duration {
        Duration::from_millis(self.config.timeout_ms.unwrap_or(60_000))
    }

    /// What the server is, for messages: its command or URL.
    fn describe(&self) -> String {
        match &self.config.url {
            Some(url) => url.clone(),
            None => format!("`{}`", self.config.command.join(" ")),
        }
    }

    pub fn tool(&self, name: &str) -> Option<Arc<Entry>> {
        self.tools.read().unwrap_or_else(|e| e.into_inner()).get(name).cloned()
    }

    pub fn entries(&self) -> Vec<Arc<Entry>> {
        self.tools.read().unwrap_or_else(|e| e.into_inner()).values().cloned().collect()
    }

    pub fn unavailable(&self) -> Option<String> {
        self.unavailable.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn listed(&self) -> bool {
        !self.tools.read().unwrap_or_else(|e| e.into_inner()).is_empty()
    }

    /// Reaches the server if needed and (re)reads its tools; failures are kept for `cairn tools`.
    pub async fn refresh(&self) -> Result<(), String> {
        let result = self.list().await;
        *self.unavailable.write().unwrap_or_else(|e| e.into_inner()) = result.as_ref().err().cloned();
        result
    }

    async fn list(&self) -> Result<(), String> {
        let mut guard = self.client.lock().await;
        let client = self.connected(&mut guard).await?;
        let listed = tokio::time::timeout(self.timeout(), client.peer().list_all_tools())
            .await
            .map_err(|_| format!("MCP server {} did not list its tools within {:?}", self.config.name, self.timeout()))?
            .map_err(|e| format!("MCP server {} could not list its tools: {e}", self.config.name))?;
        let mut tools = BTreeMap::new();
        for tool in listed {
            match self.entry(&tool) {
                Ok(entry) => {
                    tools.insert(tool.name.to_string(), Arc::new(entry));
                }
                Err(e) => crate::say!("[tools] {e}; it is not registered"),
            }
        }
        *self.tools.write().unwrap_or_else(|e| e.into_inner()) = tools;
        Ok(())
    }

    /// A registry entry for one of the server's tools.
    fn entry(&self, tool: &rmcp::model::Tool) -> Result<Entry, String> {
        let server = &self.config.name;
        let read_only = tool.annotations.as_ref().and_then(|a| a.read_only_hint).unwrap_or(false);
        let configured = self.config.effects.get(tool.name.as_ref()).copied();
        let effect = configured.unwrap_or(if read_only { EffectClass::Read } else { EffectClass::Write });
        let approval = match self.config.approval.get(tool.name.as_ref()) {
            Some(text) => Policy::parse(text).map_err(|e| format!("mcp.{server}.approval.{}: {e}", tool.name))?,
            None => Policy::for_effect(effect),
        };
        let spec = ToolSpec {
            name: format!("{server}.{}", tool.name),
            description: tool.description.as_deref().unwrap_or_default().to_string(),
            kind: "mcp".into(),
            source: format!("mcp:{server}"),
            input_schema: Value::Object((*tool.input_schema).clone()),
            output_schema: tool.output_schema.as_ref().map(|s| Value::Object((**s).clone())),
            effect,
            effect_note: match configured {
                Some(_) => None,
                None if read_only => Some("the server marks it read-only".into()),
                None => Some("the server does not mark it read-only".into()),
            },
            approval,
            compensate: None,
        };
        let code = Arc::new(McpTool { server: self.me.clone(), tool: tool.name.to_string() });
        // A tool with an output schema answers `structuredContent` fitting it.
        Ok(Entry::new(spec, true, code)?.output_at("/structured"))
    }

    /// The running client, started (or started again, after it died) when needed.
    async fn connected<'g>(&self, guard: &'g mut Option<Client>) -> Result<&'g Client, String> {
        if guard.as_ref().is_some_and(|c| c.is_closed()) {
            *guard = None;
        }
        if guard.is_none() {
            *guard = Some(self.start().await?);
        }
        guard.as_ref().ok_or_else(|| "no client".to_string())
    }

    async fn start(&self) -> Result<Client, String> {
        crate::tls::init();
        let name = &self.config.name;
        let starting = async {
            match &self.config.url {
                Some(url) => {
                    use rmcp::transport::StreamableHttpClientTransport;
                    use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
                    let mut headers = std::collections::HashMap::new();
                    let from_env =
                        self.config.headers_env.iter().map(|(k, var)| (k, std::env::var(var).unwrap_or_default()));
                    for (k, v) in self.config.headers.iter().map(|(k, v)| (k, v.clone())).chain(from_env) {
                        let name = reqwest::header::HeaderName::from_bytes(k.as_bytes())
                            .map_err(|_| format!("header name `{k}` is not valid"))?;
                        let value = reqwest::header::HeaderValue::from_str(&v)
                            .map_err(|_| format!("the value of header `{k}` is not valid"))?;
                        headers.insert(name, value);
                    }
                    let config = StreamableHttpClientTransportConfig::with_uri(url.as_str()).custom_headers(headers);
                    let transport = StreamableHttpClientTransport::from_config(config);
                    ().serve(transport).await.map_err(|e| e.to_string())
                }
                None => {
                    let Some((program, args)) = self.config.command.split_first() else {
                        return Err("no command".to_string());
                    };
                    let mut command = tokio::process::Command::new(program);
                    // The child sees a plain environment plus what the config gives it: never
                    // this process's keys and secrets.
                    let plain = INHERITED.iter().filter_map(|k| Some((*k, std::env::var_os(k)?)));
                    command.env_clear().envs(plain).args(args).envs(&self.config.env).kill_on_drop(true);
                    if let Some(dir) = &self.config.cwd {
                        command.current_dir(dir);
                    }
                    let (transport, stderr) = rmcp::transport::TokioChildProcess::builder(command)
                        .stderr(std::process::Stdio::piped())
                        .spawn()
                        .map_err(|e| format!("cannot start it: {e}"))?;
                    if let Some(stderr) = stderr {
                        tokio::spawn(keep_tail(stderr, self.stderr.clone()));
                    }
                    ().serve(transport).await.map_err(|e| e.to_string())
                }
            }
        };
        let started = tokio::time::timeout(self.timeout(), starting)
            .await
            .unwrap_or_else(|_| Err(format!("it did not answer the MCP handshake within {:?}", self.timeout())));
        started.map_err(|why| {
            // Give the process a moment to write why it stopped.
            let tail = self.stderr_tail();
            let tail = if tail.is_empty() { String::new() } else { format!("; its stderr ended with:\n{tail}") };
            format!("MCP server {name} ({}) did not start: {why}{tail}", self.describe())
        })
    }

    fn stderr_tail(&self) -> String {
        let lines = self.stderr.lock().unwrap_or_else(|e| e.into_inner());
        lines.iter().cloned().collect::<Vec<_>>().join("\n")
    }

    /// One call of tool `tool`.
    async fn call(&self, tool: &str, args: &Value, key: &str) -> Result<Value, Failure> {
        let name = &self.config.name;
        let mut guard = self.client.lock().await;
        let client = self.connected(&mut guard).await.map_err(|e| Failure::new(ErrorClass::Transient, e))?;
        let peer = client.peer().clone();
        drop(guard);
        let mut params = CallToolRequestParams::new(tool.to_string());
        params.arguments = args.as_object().cloned();
        let mut meta = serde_json::Map::new();
        meta.insert(KEY_META.into(), json!(key));
        params.meta = Some(RequestMetaObject(MetaObject(meta)));
        let answer = tokio::time::timeout(self.timeout(), peer.call_tool(params)).await;
        let result = match answer {
            Err(_) => {
                return Err(Failure::new(
                    ErrorClass::Timeout,
                    format!("MCP server {name} did not answer {tool} within {:?}", self.timeout()),
                ));
            }
            Ok(Err(
                e @ (ServiceError::TransportClosed | ServiceError::TransportSend(_) | ServiceError::Cancelled { .. }),
            )) => {
                // The server died (or its connection did): start it again on the next call.
                *self.client.lock().await = None;
                let tail = self.stderr_tail();
                let tail = if tail.is_empty() { String::new() } else { format!("; its stderr ended with:\n{tail}") };
                return Err(Failure::new(
                    ErrorClass::Transient,
                    format!(
                        "MCP server {name} went away during {tool} ({e}); it is started again for the next attempt{tail}"
                    ),
                ));
            }
            Ok(Err(e)) => return Err(Failure::new(ErrorClass::Permanent, format!("MCP server {name}, {tool}: {e}"))),
            Ok(Ok(result)) => result,
        };
        let value = serde_json::to_value(&result).unwrap_or_default();
        let text: Vec<&str> = value["content"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|block| (block["type"] == "text").then(|| block["text"].as_str()).flatten())
            .collect();
        let text = text.join("\n");
        if result.is_error == Some(true) {
            let short: String = text.chars().take(500).collect();
            return Err(Failure::new(
                ErrorClass::Permanent,
                format!("MCP tool {name}.{tool} answered an error: {short}"),
            ));
        }
        Ok(json!({
            "text": text,
            "structured": value.get("structuredContent").cloned().unwrap_or(Value::Null),
            "content": value.get("content").cloned().unwrap_or(json!([])),
        }))
    }
}

/// Keeps the last lines a child wrote to stderr.
async fn keep_tail(stderr: tokio::process::ChildStderr, tail: Arc<Mutex<VecDeque<String>>>) {
    use tokio::io::AsyncBufReadExt;
    let mut lines = tokio::io::BufReader::new(stderr).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let mut kept = tail.lock().unwrap_or_else(|e| e.into_inner());
        if kept.len() == STDERR_LINES {
            kept.pop_front();
        }
        kept.push_back(line.chars().take(500).collect());
    }
}

struct McpTool {
    server: std::sync::Weak<McpServer>,
    tool: String,
}

impl Tool for McpTool {
    fn call<'a>(&'a self, args: &'a Value, ctx: CallContext<'a>) -> ToolFuture<'a> {
        Box::pin(async move {
            let Some(server) = self.server.upgrade() else {
                return Err(Failure::new(ErrorClass::Transient, "the MCP server's registry is gone"));
            };
            server.call(&self.tool, args, ctx.key).await
        })
    }
}
