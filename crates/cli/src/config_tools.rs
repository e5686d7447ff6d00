//! The tool tables of `cairn.toml`: `[tools.NAME]` (a configured tool of a built-in type) and
//! `[mcp.NAME]` (an MCP server), checked into [`cairn_engine::tools::ToolsConfig`]. Each type has
//! its own keys; an unknown key is refused with the known ones listed, at its line. Relative
//! paths (`root`, `sqlite://PATH`) are taken from the config file's directory, and stdio MCP
//! servers start there.

use super::config::{is_variable, located, position};
use cairn_core::kinds::EffectClass;
use cairn_engine::tools::{McpConfig, ToolConfig, ToolsConfig};
use std::collections::BTreeMap;
use std::path::Path;
use toml::Spanned;

const COMMON: &[&str] = &["type", "description", "effect", "approval", "output_schema", "compensate"];
const HTTP: &[&str] = &[
    "url",
    "method",
    "allow_hosts",
    "headers",
    "connect_timeout",
    "timeout",
    "max_response_bytes",
    "on_oversize",
    "max_redirects",
];
const SQL: &[&str] =
    &["connection", "password_env", "max_rows", "max_response_bytes", "statement_timeout", "allow_superuser"];
const FILE: &[&str] = &["root", "max_file_bytes"];
const MCP: &[&str] = &["command", "env", "url", "headers", "headers_env", "effects", "approval", "timeout"];

/// Tool and server names: what steps write after `tool:` (MCP tools become `SERVER.TOOL`).
fn is_name(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes().next().is_some_and(|b| b.is_ascii_alphabetic())
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'))
}

struct Checker<'a> {
    text: &'a str,
    file: &'a str,
    problems: &'a mut Vec<String>,
}

impl Checker<'_> {
    fn problem(&mut self, offset: usize, message: String) {
        self.problems.push(located(self.file, Some(position(self.text, offset)), &message));
    }
}

/// A value as it was written (near enough), for messages.
fn shown(v: &toml::Value) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

/// Reads one setting of a table, with the problem (at the table) when it has the wrong type.
fn get<'t>(table: &'t toml::Table, key: &str) -> Option<&'t toml::Value> {
    table.get(key)
}

fn string(c: &mut Checker, at: usize, table: &toml::Table, path: &str, key: &str) -> Option<String> {
    match get(table, key)? {
        toml::Value::String(s) => Some(s.clone()),
        other => {
            c.problem(at, format!("`{path}.{key}` must be a string, not a {}", other.type_str()));
            None
        }
    }
}

fn count(c: &mut Checker, at: usize, table: &toml::Table, path: &str, key: &str, max: i64) -> Option<i64> {
    match get(table, key)? {
        toml::Value::Integer(n) if (1..=max).contains(n) => Some(*n),
        other => {
            c.problem(at, format!("`{path}.{key}` is `{}`; use a whole number from 1 to {max}", shown(other)));
            None
        }
    }
}

fn seconds(c: &mut Checker, at: usize, table: &toml::Table, path: &str, key: &str) -> Option<u64> {
    let v = get(table, key)?;
    let s = match v {
        toml::Value::Integer(n) => *n as f64,
        toml::Value::Float(f) => *f,
        _ => f64::NAN,
    };
    if s > 0.0 && s <= 86_400.0 {
        Some((s * 1000.0) as u64)
    } else {
        c.problem(at, format!("`{path}.{key}` is `{}`; use seconds, more than 0 and at most 86400", shown(v)));
        None
    }
}

fn strings(c: &mut Checker, at: usize, table: &toml::Table, path: &str, key: &str) -> Vec<String> {
    match get(table, key) {
        None => Vec::new(),
        Some(toml::Value::Array(items)) if items.iter().all(toml::Value::is_str) => {
            items.iter().filter_map(|v| v.as_str().map(str::to_string)).collect()
        }
        Some(_) => {
            c.problem(at, format!("`{path}.{key}` must be a list of strings"));
            Vec::new()
        }
    }
}

fn string_map(c: &mut Checker, at: usize, table: &toml::Table, path: &str, key: &str) -> BTreeMap<String, String> {
    match get(table, key) {
        None => BTreeMap::new(),
        Some(toml::Value::Table(t)) if t.values().all(toml::Value::is_str) => {
            t.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string())).collect()
        }
        Some(_) => {
            c.problem(at, format!("`{path}.{key}` must be a table of strings (`{{ NAME = \"value\" }}`)"));
            BTreeMap::new()
        }
    }
}

fn effect(c: &mut Checker, at: usize, text: &str, path: &str) -> Option<EffectClass> {
    let found = EffectClass::ALL.into_iter().find(|e| e.as_str() == text && *e != EffectClass::Pure);
    if found.is_none() {
        c.problem(at, format!("`{path}` is `{text}`; use read, idempotent_write, write or irreversible"));
    }
    found
}

fn policy(c: &mut Checker, at: usize, text: &str, path: &str) -> Option<String> {
    match cairn_engine::tools::Policy::parse(text) {
        Ok(_) => Some(text.to_string()),
        Err(e) => {
            c.problem(at, format!("`{path}`: {e}"));
            None
        }
    }
}

/// A path from the file, taken from the file's directory when relative.
fn beside(base: Option<&Path>, path: &str) -> String {
    match base {
        Some(dir) if Path::new(path).is_relative() => dir.join(path).display().to_string(),
        _ => path.to_string(),
    }
}

/// A table's name, where it starts and its settings; `None` (with the problem) for a name steps
/// could not write.
fn named(
    c: &mut Checker,
    section: &str,
    what: &str,
    name: Spanned<String>,
    table: Spanned<toml::Table>,
) -> Option<(String, usize, toml::Table)> {
    let key = name.get_ref().clone();
    if !is_name(&key) {
        let message = format!(
            "`{section}.{}`: {what} name is a letter, then up to 63 letters, digits, `_` or `-`",
            key.escape_debug()
        );
        c.problem(name.span().start, message);
        return None;
    }
    Some((key, table.span().start, table.into_inner()))
}

/// Checks the tool tables; problems go to `problems`, one line each.
pub(crate) fn check(
    tools: BTreeMap<Spanned<String>, Spanned<toml::Table>>,
    mcp: BTreeMap<Spanned<String>, Spanned<toml::Table>>,
    base: Option<&Path>,
    text: &str,
    file: &str,
    problems: &mut Vec<String>,
) -> ToolsConfig {
    let mut c = Checker { text, file, problems };
    let mut out = ToolsConfig::default();
    for (name, table) in tools {
        let Some((key, at, t)) = named(&mut c, "tools", "a tool", name, table) else { continue };
        let path = format!("tools.{key}");
        let Some(kind) = string(&mut c, at, &t, &path, "type") else {
            c.problem(at, format!("`{path}` needs `type`: http_request, sql_query or file"));
            continue;
        };
        let own: &[&str] = match kind.as_str() {
            "http_request" => HTTP,
            "sql_query" => SQL,
            "file" => FILE,
            other => {
                c.problem(
                    at,
                    format!(
                        "`{path}.type` is `{other}`; use http_request, sql_query or file (MCP servers go in [mcp.NAME])"
                    ),
                );
                continue;
            }
        };
        for k in t.keys() {
            if !COMMON.contains(&k.as_str()) && !own.contains(&k.as_str()) {
                let known: Vec<&str> = COMMON.iter().chain(own).copied().collect();
                c.problem(
                    at,
                    format!(
                        "`{path}` has an unknown key `{}` for type {kind}; the known keys are {}",
                        k.escape_debug(),
                        known.join(", ")
                    ),
                );
            }
        }
        let mut tool = ToolConfig { name: key.clone(), kind: kind.clone(), ..ToolConfig::default() };
        tool.description = string(&mut c, at, &t, &path, "description");
        tool.effect =
            string(&mut c, at, &t, &path, "effect").and_then(|e| effect(&mut c, at, &e, &format!("{path}.effect")));
        tool.approval =
            string(&mut c, at, &t, &path, "approval").and_then(|p| policy(&mut c, at, &p, &format!("{path}.approval")));
        tool.compensate = string(&mut c, at, &t, &path, "compensate");
        if let Some(schema) = get(&t, "output_schema") {
            match serde_json::to_value(schema) {
                Ok(v @ serde_json::Value::Object(_)) if cairn_engine::tools::compiles(&v).is_ok() => {
                    tool.output_schema = Some(v)
                }
                _ => c.problem(at, format!("`{path}.output_schema` must be a JSON Schema (a table) that compiles")),
            }
        }
        tool.url = string(&mut c, at, &t, &path, "url");
        tool.method = string(&mut c, at, &t, &path, "method");
        tool.allow_hosts = strings(&mut c, at, &t, &path, "allow_hosts");
        tool.headers = string_map(&mut c, at, &t, &path, "headers");
        for h in tool.headers.keys() {
            let lower = h.to_ascii_lowercase();
            if ["auth", "key", "token", "secret", "cookie", "password", "session"].iter().any(|w| lower.contains(w)) {
                c.problem(
                    at,
                    format!(
                        "`{path}.headers.{h}` would put a credential in this file; send it from the step instead \
                     (`args: {{headers: {{{h}: \"Bearer {{{{ secrets.NAME }}}}\"}}}}`)"
                    ),
                );
            }
        }
        tool.connect_timeout_ms = seconds(&mut c, at, &t, &path, "connect_timeout");
        tool.timeout_ms = seconds(&mut c, at, &t, &path, "timeout");
        tool.statement_timeout_ms = seconds(&mut c, at, &t, &path, "statement_timeout");
        tool.max_response_bytes = count(&mut c, at, &t, &path, "max_response_bytes", 1 << 30).map(|n| n as u64);
        tool.max_file_bytes = count(&mut c, at, &t, &path, "max_file_bytes", 1 << 30).map(|n| n as u64);
        tool.max_redirects = get(&t, "max_redirects").and_then(|v| match v {
            toml::Value::Integer(n) if (0..=20).contains(n) => Some(*n as u32),
            _ => {
                c.problem(at, format!("`{path}.max_redirects` is `{}`; use 0 to 20", shown(v)));
                None
            }
        });
        tool.max_rows = count(&mut c, at, &t, &path, "max_rows", 100_000).map(|n| n as u32);
        tool.on_oversize = string(&mut c, at, &t, &path, "on_oversize");
        if let Some(o) = &tool.on_oversize
            && o != "truncate"
            && o != "refuse"
        {
            c.problem(at, format!("`{path}.on_oversize` is `{o}`; use truncate or refuse"));
        }
        tool.connection =
            string(&mut c, at, &t, &path, "connection").map(|conn| match conn.strip_prefix("sqlite://") {
                Some(file) => format!("sqlite://{}", beside(base, file)),
                None => conn,
            });
        tool.password_env = string(&mut c, at, &t, &path, "password_env");
        tool.allow_superuser = match get(&t, "allow_superuser") {
            None => false,
            Some(toml::Value::Boolean(b)) => *b,
            Some(v) => {
                c.problem(at, format!("`{path}.allow_superuser` is `{}`; use true or false", shown(v)));
                false
            }
        };

        if let Some(var) = &tool.password_env
            && !is_variable(var)
        {
            c.problem(at, format!("`{path}.password_env` names the environment variable holding the password, not the password (the value is not shown)"));
        }
        tool.root = string(&mut c, at, &t, &path, "root").map(|r| beside(base, &r));
        match kind.as_str() {
            "sql_query" if tool.connection.is_none() => c.problem(
                at,
                format!("`{path}` (sql_query) needs `connection = \"sqlite://PATH\"` or a postgres:// URL"),
            ),
            "file" if tool.root.is_none() => {
                c.problem(at, format!("`{path}` (file) needs `root`, its sandbox directory"))
            }
            _ => {}
        }
        out.tools.insert(key, tool);
    }
    for (name, table) in mcp {
        let Some((key, at, t)) = named(&mut c, "mcp", "a server", name, table) else { continue };
        let path = format!("mcp.{key}");
        for k in t.keys() {
            if !MCP.contains(&k.as_str()) {
                c.problem(
                    at,
                    format!(
                        "`{path}` has an unknown key `{}`; the known keys are {}",
                        k.escape_debug(),
                        MCP.join(", ")
                    ),
                );
            }
        }
        let cwd = base.map(|b| b.display().to_string());
        let mut server = McpConfig { name: key.clone(), cwd, ..McpConfig::default() };
        server.command = strings(&mut c, at, &t, &path, "command");
        server.env = string_map(&mut c, at, &t, &path, "env");
        server.url = string(&mut c, at, &t, &path, "url");
        server.headers = string_map(&mut c, at, &t, &path, "headers");
        server.headers_env = string_map(&mut c, at, &t, &path, "headers_env");
        for var in server.headers_env.values() {
            if !is_variable(var) {
                c.problem(
                    at,
                    format!("`{path}.headers_env` values name environment variables (the value is not shown)"),
                );
            }
        }
        server.timeout_ms = seconds(&mut c, at, &t, &path, "timeout");
        for (tool, e) in string_map(&mut c, at, &t, &path, "effects") {
            if let Some(e) = effect(&mut c, at, &e, &format!("{path}.effects.{tool}")) {
                server.effects.insert(tool, e);
            }
        }
        for (tool, p) in string_map(&mut c, at, &t, &path, "approval") {
            if let Some(p) = policy(&mut c, at, &p, &format!("{path}.approval.{tool}")) {
                server.approval.insert(tool, p);
            }
        }
        match (&server.url, server.command.is_empty()) {
            (Some(_), false) => c.problem(at, format!("`{path}` has both `command` and `url`; a server is one or the other")),
            (None, true) => c.problem(at, format!(
                "`{path}` needs `command = [\"program\", \"arg\", …]` (stdio) or `url = \"http://…/mcp\"` (streamable HTTP)"
            )),
            (Some(url), true) if !(url.starts_with("http://") || url.starts_with("https://")) => {
                c.problem(at, format!("`{path}.url` is `{url}`, not an http:// or https:// URL"))
            }
            _ => {}
        }
        if let Some(first) = server.command.first()
            && first.is_empty()
        {
            c.problem(at, format!("`{path}.command` starts with an empty program name"));
        }
        out.mcp.insert(key, server);
    }
    out
}
