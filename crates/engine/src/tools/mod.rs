//! Tools: what steps (the `tool` kind, and later agents) call to act on the world, typed,
//! checked and gated.
//!
//! A tool has a name, a description, a JSON Schema for its arguments (and optionally its result),
//! an effect class and an approval policy. They come from the built-in types configured in
//! `cairn.toml` (`[tools.NAME] type = "http_request" | "sql_query" | "file"`), from MCP servers
//! (`[mcp.NAME]`, registered as `NAME.TOOL`), and one default: `http_request`, to public hosts
//! only. The [`Tools`] registry is built once per process and shared by every attempt.
//!
//! Every call is checked before it is made: the arguments against the input schema (remote
//! `$ref`s are never fetched), then the policy (`never`, `always`, or a CEL condition over
//! `args`). A call that needs a person stops the attempt with class `approval_required`; the
//! step waits, and its next attempt makes the call with the answer (see `kinds/tool.rs`).

mod config;
mod file;
mod http_request;
mod mcp;
mod net;
mod sql_check;
mod sql_query;

pub use config::{McpConfig, ToolConfig, ToolsConfig};
pub use mcp::KEY_META;

use cairn_core::event::{ErrorClass, Failure};
use cairn_core::kinds::EffectClass;
use serde::Serialize;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

/// What a tool call returns.
pub type ToolFuture<'a> = Pin<Box<dyn Future<Output = Result<Value, Failure>> + Send + 'a>>;

/// One call's surroundings.
pub struct CallContext<'a> {
    /// `run/step/call-N`: the same for every attempt of the step, sent to the far side so that a
    /// write it already received takes effect once (HTTP `Idempotency-Key`, MCP `_meta`).
    pub key: &'a str,
    /// Who makes the call (the lease owner), for the far side's logs.
    pub worker: &'a str,
}

/// A tool's code.
pub trait Tool: Send + Sync + 'static {
    /// Makes one call with arguments already checked against the input schema.
    fn call<'a>(&'a self, args: &'a Value, ctx: CallContext<'a>) -> ToolFuture<'a>;

    /// The effect of a call with these arguments, when the tool's configuration does not fix it
    /// (an HTTP GET only reads).
    fn effect(&self, declared: EffectClass, _args: &Value) -> EffectClass {
        declared
    }

    /// The arguments in the one form policies, approvals and the journal see (`delete` → `DELETE`).
    fn normalize(&self, args: Value) -> Value {
        args
    }

    /// What the tool would refuse anyway, said before a person is asked (a host not allowed).
    fn precheck(&self, _args: &Value) -> Result<(), Failure> {
        Ok(())
    }
}

/// When a person must approve a call.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Policy {
    Never,
    Always,
    /// The default: calls that write (by the call's effect class) ask; reads do not.
    ByEffect,
    /// A CEL condition over `args` (e.g. `args.amount > 100`).
    When(String),
}

impl Policy {
    /// The default for an effect class: reads never, writes always — or, when a call's effect
    /// depends on its arguments, by the call's effect.
    pub fn for_effect(effect: EffectClass) -> Policy {
        if effect.needs_effect_key() { Policy::ByEffect } else { Policy::Never }
    }

    /// `never`, `always`, or a CEL condition (checked here).
    pub fn parse(text: &str) -> Result<Policy, String> {
        match text.trim() {
            "never" => Ok(Policy::Never),
            "always" => Ok(Policy::Always),
            "" => Err("an approval policy is `never`, `always`, or a CEL condition over `args`".into()),
            cel => {
                cairn_core::expr::check(cel).map_err(|e| format!("the approval condition `{cel}` is not CEL: {e}"))?;
                Ok(Policy::When(cel.to_string()))
            }
        }
    }

    /// Why a call with `args` needs a person, or `None`. A condition that does not evaluate asks
    /// (a policy never fails open).
    pub fn reason(&self, args: &Value, effect: EffectClass) -> Option<String> {
        match self {
            Policy::Never => None,
            Policy::Always => Some("its approval policy is `always`".into()),
            Policy::ByEffect if effect.needs_effect_key() => Some(format!(
                "this call's effect is {}, and calls that write need approval by default",
                effect.as_str()
            )),
            Policy::ByEffect => None,
            Policy::When(cel) => match cairn_core::expr::eval_bool(cel, &[("args", args)]) {
                Ok(true) => Some(format!("its approval condition `{cel}` holds")),
                Ok(false) => None,
                Err(e) => Some(format!("its approval condition `{cel}` does not evaluate ({e}), so a person decides")),
            },
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Policy::Never => "never".into(),
            Policy::Always => "always".into(),
            Policy::ByEffect => "writes".into(),
            Policy::When(cel) => format!("when {cel}"),
        }
    }
}

/// What a tool is, as `cairn tools` and the models see it.
#[derive(Clone, Debug, Serialize)]
pub struct ToolSpec {
    pub name: String,
    pub description: String,
    /// `http_request`, `sql_query`, `file`, or `mcp`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Where it comes from: `built-in`, `cairn.toml`, or `mcp:SERVER`.
    pub source: String,
    pub input_schema: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_schema: Option<Value>,
    pub effect: EffectClass,
    /// Said when a call's effect depends on its arguments (an HTTP GET only reads).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub effect_note: Option<String>,
    pub approval: Policy,
    /// The tool's undo (`compensate = "OTHER"`): a tool called with this call's arguments and
    /// result when a saga unwinds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compensate: Option<String>,
}

impl ToolSpec {
    /// A name models accept (OpenAI: `^[a-zA-Z0-9_-]{1,64}$`): `.` becomes `__`.
    pub fn wire_name(&self) -> String {
        self.name.replace('.', "__").chars().take(64).collect()
    }

    /// The tool as an OpenAI `tools` entry.
    pub fn openai(&self) -> Value {
        json!({"type": "function", "function": {
            "name": self.wire_name(), "description": self.description, "parameters": self.input_schema
        }})
    }

    /// The tool as an Anthropic Messages `tools` entry.
    pub fn anthropic(&self) -> Value {
        json!({"name": self.wire_name(), "description": self.description, "input_schema": self.input_schema})
    }
}

/// A registered tool: its description, compiled schemas and code.
pub struct Entry {
    pub spec: ToolSpec,
    input: jsonschema::Validator,
    output: Option<jsonschema::Validator>,
    /// The configuration fixed the effect (`effect = …`): the tool's code does not refine it.
    fixed_effect: bool,
    /// Where in a result the output schema applies (a JSON pointer; MCP: `/structured`).
    output_at: &'static str,
    code: Arc<dyn Tool>,
}

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entry").field("spec", &self.spec).finish_non_exhaustive()
    }
}

impl Entry {
    pub fn new(spec: ToolSpec, fixed_effect: bool, code: Arc<dyn Tool>) -> Result<Entry, String> {
        let input = compile(&spec.input_schema).map_err(|e| format!("tool '{}': input schema: {e}", spec.name))?;
        let output = match &spec.output_schema {
            Some(schema) => Some(compile(schema).map_err(|e| format!("tool '{}': output schema: {e}", spec.name))?),
            None => None,
        };
        Ok(Entry { spec, input, output, fixed_effect, output_at: "", code })
    }

    /// The output schema applies to this part of a result (a JSON pointer).
    pub fn output_at(mut self, pointer: &'static str) -> Entry {
        self.output_at = pointer;
        self
    }

    /// The effect of a call with these arguments.
    pub fn effect(&self, args: &Value) -> EffectClass {
        if self.fixed_effect { self.spec.effect } else { self.code.effect(self.spec.effect, args) }
    }

    /// The arguments in their one canonical form (see [`Tool::normalize`]).
    pub fn normalize(&self, args: Value) -> Value {
        self.code.normalize(args)
    }

    /// Checks arguments against the input schema, then what the tool would refuse anyway: `Err`
    /// names each failing field as a JSON pointer, what was expected and what was given (class
    /// `permanent`, code `invalid_args`).
    pub fn check_args(&self, args: &Value) -> Result<(), Failure> {
        let problems = problems(&self.input, args);
        if problems.is_empty() {
            return self.code.precheck(args);
        }
        let message = format!("the arguments of tool '{}' do not fit its input schema: {}", self.spec.name, problems);
        Err(Failure { code: Some("invalid_args".into()), ..Failure::new(ErrorClass::Permanent, message) })
    }

    /// Why a call with these arguments needs a person, or `None`.
    pub fn approval_reason(&self, args: &Value) -> Option<String> {
        self.spec.approval.reason(args, self.effect(args))
    }

    /// Makes the call (arguments already checked) and checks the result against the output
    /// schema: a result that does not fit is `malformed_output`.
    pub async fn call(&self, args: &Value, ctx: CallContext<'_>) -> Result<Value, Failure> {
        let result = self.code.call(args, ctx).await?;
        if let Some(output) = &self.output {
            let checked = result.pointer(self.output_at).unwrap_or(&Value::Null);
            let problems = problems(output, checked);
            if !problems.is_empty() {
                let message = format!(
                    "tool '{}' answered something that does not fit its output schema: {problems}",
                    self.spec.name
                );
                return Err(Failure::new(ErrorClass::MalformedOutput, message));
            }
        }
        Ok(result)
    }
}

/// Whether a JSON Schema compiles (for checking configuration).
pub fn compiles(schema: &Value) -> Result<(), String> {
    compile(schema).map(|_| ())
}

/// A JSON Schema compiled without fetching anything (no remote or file `$ref`).
pub(crate) fn compile(schema: &Value) -> Result<jsonschema::Validator, String> {
    jsonschema::validator_for(schema).map_err(|e| e.to_string())
}

/// What fails in `value`, one clause per problem (at most five): `at /amount: "x" is not of type
/// "integer"` — the pointer, what was given, what was expected.
fn problems(schema: &jsonschema::Validator, value: &Value) -> String {
    let found: Vec<String> = schema
        .iter_errors(value)
        .take(5)
        .map(|e| {
            let at = e.instance_path().to_string();
            format!("at {}: {e}", if at.is_empty() { "/" } else { at.as_str() })
        })
        .collect();
    found.join("; ")
}

/// Every tool this process can call, by name.
#[derive(Clone, Default)]
pub struct Tools {
    entries: BTreeMap<String, Arc<Entry>>,
    /// MCP servers by name; their tools are `SERVER.TOOL`, listed when a server is reached.
    mcp: BTreeMap<String, Arc<mcp::McpServer>>,
}

impl std::fmt::Debug for Tools {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.entries.keys()).entries(self.mcp.keys()).finish()
    }
}

impl Tools {
    /// The tools with no configuration: `http_request` (public hosts only).
    pub fn builtin() -> Tools {
        let mut tools = Tools::default();
        let default = ToolConfig::http_request_default();
        if let Ok(entry) = config::build(&default) {
            tools.entries.insert(entry.spec.name.clone(), Arc::new(entry));
        }
        tools
    }

    /// The built-ins, then each `[tools.NAME]` (a configured tool may take a built-in's name),
    /// and each `[mcp.NAME]` (reached when first needed). `Err` lists every tool that could not
    /// be set up.
    pub fn from_config(config: &ToolsConfig) -> Result<Tools, String> {
        let mut tools = Tools::builtin();
        let mut problems = Vec::new();
        for tool in config.tools.values() {
            match config::build(tool) {
                Ok(entry) => {
                    tools.entries.insert(entry.spec.name.clone(), Arc::new(entry));
                }
                Err(e) => problems.push(e),
            }
        }
        for server in config.mcp.values() {
            tools.mcp.insert(server.name.clone(), mcp::McpServer::new(server.clone()));
        }
        for tool in config.tools.values() {
            if let Some(undo) = &tool.compensate {
                let known = tools.entries.contains_key(undo)
                    || undo.split_once('.').is_some_and(|(server, _)| tools.mcp.contains_key(server));
                if !known {
                    problems.push(format!("tool '{}': its compensate tool '{undo}' is not declared", tool.name));
                }
            }
        }
        if problems.is_empty() { Ok(tools) } else { Err(problems.join("\n")) }
    }

    /// Adds a tool (replacing one of the same name).
    pub fn insert(&mut self, entry: Entry) {
        self.entries.insert(entry.spec.name.clone(), Arc::new(entry));
    }

    /// A tool by name (or by the name models see: `SERVER__TOOL`), among those listed so far.
    pub fn get(&self, name: &str) -> Option<Arc<Entry>> {
        if let Some(entry) = self.entries.get(name) {
            return Some(entry.clone());
        }
        if let Some((server, tool)) = name.split_once('.')
            && let Some(entry) = self.mcp.get(server).and_then(|s| s.tool(tool))
        {
            return Some(entry);
        }
        self.all().into_iter().find(|e| e.spec.wire_name() == name)
    }

    fn all(&self) -> Vec<Arc<Entry>> {
        let mut all: Vec<Arc<Entry>> = self.entries.values().cloned().collect();
        for server in self.mcp.values() {
            all.extend(server.entries());
        }
        all
    }

    pub fn names(&self) -> Vec<String> {
        self.all().iter().map(|e| e.spec.name.clone()).collect()
    }

    /// Every tool listed so far, by name.
    pub fn specs(&self) -> Vec<ToolSpec> {
        let mut specs: Vec<ToolSpec> = self.all().iter().map(|e| e.spec.clone()).collect();
        specs.sort_by(|a, b| a.name.cmp(&b.name));
        specs
    }

    /// MCP servers whose tools could not be listed, and why.
    pub fn unavailable(&self) -> BTreeMap<String, String> {
        self.mcp.iter().filter_map(|(name, s)| Some((name.clone(), s.unavailable()?))).collect()
    }

    /// Reaches every MCP server not reached yet and lists its tools (failures are kept, see
    /// [`Tools::unavailable`]).
    pub async fn connect_all(&self) {
        let waiting = self.mcp.values().filter(|s| !s.listed()).map(|s| async move {
            let _ = s.refresh().await;
        });
        futures_util::future::join_all(waiting).await;
    }

    /// Lists every MCP server's tools again.
    pub async fn refresh(&self) {
        futures_util::future::join_all(self.mcp.values().map(|s| async move {
            let _ = s.refresh().await;
        }))
        .await;
    }

    /// A tool a workflow defines (`tools:` in its definition), set up once per definition.
    pub fn workflow_tool(name: &str, spec: &Value) -> Result<Arc<Entry>, Failure> {
        type Cache = std::sync::Mutex<BTreeMap<String, Arc<Entry>>>;
        static BUILT: std::sync::LazyLock<Cache> = std::sync::LazyLock::new(Default::default);
        let key = format!("{name}\u{0}{spec}");
        let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = built.get(&key) {
            return Ok(entry.clone());
        }
        let mut config: ToolConfig = serde_json::from_value(spec.clone()).map_err(|e| {
            Failure::new(ErrorClass::Permanent, format!("the workflow's tool '{name}' is not a tool definition: {e}"))
        })?;
        config.name = name.to_string();
        config.deny_internal = true;
        let entry = Arc::new(config::build(&config).map_err(|e| Failure::new(ErrorClass::Permanent, e))?);
        if built.len() >= 256 {
            built.clear();
        }
        built.insert(key, entry.clone());
        Ok(entry)
    }

    /// A tool by name, reaching its MCP server first if needed; else a failure naming the known
    /// tools (or why the server's tools are not there).
    pub async fn find(&self, name: &str) -> Result<Arc<Entry>, Failure> {
        if let Some(entry) = self.get(name) {
            return Ok(entry);
        }
        if let Some((server, _)) = name.split_once('.')
            && let Some(server) = self.mcp.get(server)
        {
            if let Err(why) = server.refresh().await {
                return Err(Failure::new(ErrorClass::Transient, why));
            }
            if let Some(entry) = self.get(name) {
                return Ok(entry);
            }
        }
        Err(Failure::new(
            ErrorClass::Permanent,
            match name.split_once('.') {
                Some((server, tool)) => format!(
                    "tool '{name}' is not known to this process: there is no MCP server `{server}` serving `{tool}` \
                     (known tools: {})",
                    self.names().join(", ")
                ),
                None => format!(
                    "tool '{name}' is not known to this process (known: {}); declare it as [tools.{name}] in \
                     cairn.toml",
                    self.names().join(", ")
                ),
            },
        ))
    }
}
