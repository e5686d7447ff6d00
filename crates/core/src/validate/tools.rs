//! A workflow's own tools (`tools:`): `http_request` tools only, checked here and turned into the
//! engine's tool configuration.

use super::parse::{Node, node_to_json};
use super::problems::Problems;
use serde_json::Value;
use serde_saphyr::Spanned;
use std::collections::HashMap;

/// Keys a workflow's `tools:` entry may have.
const TOOL_KEYS: &[&str] = &[
    "type",
    "description",
    "effect",
    "approval",
    "allow_hosts",
    "timeout",
    "connect_timeout",
    "max_response_bytes",
    "on_oversize",
    "max_redirects",
    "output_schema",
];

/// The workflow's `tools:`: `http_request` tools, each turned into the engine's tool
/// configuration (durations in milliseconds, internal addresses denied).
pub(super) fn compile(
    raw: std::collections::BTreeMap<String, Spanned<Node>>,
    out: &mut Problems<'_>,
) -> std::collections::BTreeMap<String, serde_json::Value> {
    use serde_json::json;
    let mut tools = std::collections::BTreeMap::new();
    for (key, node) in raw {
        let at = node.referenced;
        let spec = node_to_json(&node, format!("tools.{key}"), &mut HashMap::new());
        let valid = (1..=64).contains(&key.len())
            && key.bytes().next().is_some_and(|b| b.is_ascii_alphabetic())
            && key.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'));
        if !valid {
            let message = format!(
                "tool name `{}` must be a letter, then up to 63 letters, digits, `_` or `-`",
                key.escape_debug()
            );
            out.add(at, None, "bad_name", message);
            continue;
        }
        let Value::Object(fields) = spec else {
            out.add(at, None, "bad_value", format!("`tools.{key}` must be a mapping (`type: http_request`, …)"));
            continue;
        };
        match fields.get("type").and_then(Value::as_str) {
            Some("http_request") => {}
            other => {
                let message = format!(
                    "`tools.{key}.type` is {}: a workflow may define `http_request` tools only; sql_query and file \
                     tools and MCP servers are declared in cairn.toml by whoever runs cairn",
                    other.map(|t| format!("`{t}`")).unwrap_or_else(|| "missing".into())
                );
                out.add(at, None, "bad_tool", message);
                continue;
            }
        }
        let mut tool = serde_json::Map::new();
        tool.insert("name".into(), json!(key));
        tool.insert("deny_internal".into(), json!(true));
        for (field, value) in fields {
            let bad = |what: &str| format!("`tools.{key}.{field}` {what}");
            let problem = match (field.as_str(), &value) {
                ("type" | "description", Value::String(_)) | ("output_schema", Value::Object(_)) => {
                    tool.insert(field.clone(), value.clone());
                    None
                }
                ("effect", Value::String(e)) => match e.as_str() {
                    "read" | "idempotent_write" | "write" | "irreversible" => {
                        tool.insert(field.clone(), value.clone());
                        None
                    }
                    _ => Some(bad("is not one of read, idempotent_write, write, irreversible")),
                },
                ("approval", Value::String(p)) => match p.as_str() {
                    "never" | "always" => {
                        tool.insert(field.clone(), value.clone());
                        None
                    }
                    cel => match crate::expr::check(cel) {
                        Ok(()) => {
                            tool.insert(field.clone(), value.clone());
                            None
                        }
                        Err(e) => Some(bad(&format!("is not never, always or a CEL condition over `args`: {e}"))),
                    },
                },
                ("allow_hosts", Value::Array(hosts))
                    if hosts.iter().all(|h| {
                        h.as_str().is_some_and(|h| !h.is_empty() && !h.contains(['/', ' ', '@', '\t']) && h != "*")
                    }) =>
                {
                    tool.insert(field.clone(), value.clone());
                    None
                }
                ("timeout" | "connect_timeout", Value::String(text)) => match crate::duration::parse_ms(text) {
                    Ok(ms) if (1..=3_600_000).contains(&ms) => {
                        tool.insert(format!("{field}_ms"), json!(ms));
                        None
                    }
                    _ => Some(bad("is not a duration from 1ms to 1h (e.g. 10s)")),
                },
                ("max_response_bytes", Value::Number(n)) if n.as_u64().is_some_and(|n| (1..=1 << 30).contains(&n)) => {
                    tool.insert(field.clone(), value.clone());
                    None
                }
                ("max_redirects", Value::Number(n)) if n.as_u64().is_some_and(|n| n <= 20) => {
                    tool.insert(field.clone(), value.clone());
                    None
                }
                ("on_oversize", Value::String(o)) if o == "truncate" || o == "refuse" => {
                    tool.insert(field.clone(), value.clone());
                    None
                }
                (known, _) if TOOL_KEYS.contains(&known) => Some(bad("has a value of the wrong kind")),
                _ => Some(format!(
                    "`tools.{key}` has an unknown key `{}`; the known keys are {}",
                    field.escape_debug(),
                    TOOL_KEYS.join(", ")
                )),
            };
            if let Some(message) = problem {
                out.add(at, None, "bad_tool", message);
            }
        }
        tools.insert(key, Value::Object(tool));
    }
    tools
}
