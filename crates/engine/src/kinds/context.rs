//! `with.context` of an `llm` or `agent` step: the sources read (files through a `file` tool,
//! rows through a `sql_query` tool, each a journaled call), ranked, packed under the budget (see
//! `crate::context`), and the lineage ledger recorded as a journaled call of kind `context` before
//! the model is asked.
//!
//! ```yaml
//! context:
//!   query: "{{ inputs.email }}"          # what candidates are ranked by (default: the task/prompt)
//!   max_tokens: 4096
//!   sources:
//!     - {name: email, text: "{{ inputs.email }}"}
//!     - {name: kb, documents: "{{ steps.load.output }}"}     # strings, or {id, text}
//!     - {name: notes, file: {tool: workspace, path: notes.md}}
//!     - {name: orders, sql: {tool: orders_db, sql: "SELECT * FROM orders"}}
//! ```

use super::Attempt;
use super::tool::{Gate, gate, lookup};
use crate::context::{Candidate, block, chunks, pack};
use crate::tools::{CallContext, Tools};
use cairn_core::event::{ErrorClass, Failure};
use cairn_core::kinds::EffectClass;
use serde_json::{Value, json};

/// The JSON Schema of `with.context`.
pub(super) fn schema() -> Value {
    let tool_read = |extra: Value| {
        let mut properties = json!({"tool": {"type": "string", "minLength": 1}});
        if let (Some(p), Some(more)) = (properties.as_object_mut(), extra.as_object()) {
            p.extend(more.clone());
        }
        let mut required = vec!["tool"];
        required.extend(
            extra.as_object().into_iter().flat_map(|m| m.keys()).filter(|k| *k != "params").map(String::as_str),
        );
        json!({"type": "object", "required": required, "properties": properties, "additionalProperties": false})
    };
    json!({
        "type": "object",
        "description": "candidates ranked against `query` (BM25) and packed under `max_tokens`; see the README's Agents section",
        "required": ["sources", "max_tokens"],
        "properties": {
            "query": {"type": "string"},
            "max_tokens": {"type": "integer", "minimum": 1, "maximum": 2_000_000},
            "sources": {"type": "array", "minItems": 1, "items": {
                "type": "object",
                "required": ["name"],
                "properties": {
                    "name": {"type": "string", "minLength": 1, "pattern": "^[A-Za-z0-9_.-]+$"},
                    "text": {"description": "one document (a value that is not a string is used as JSON)"},
                    "documents": {"type": "array", "description": "strings, objects {id, text}, or what a file tool read ({path, content})"},
                    "file": tool_read(json!({"path": {"type": "string", "minLength": 1}})),
                    "sql": tool_read(json!({"sql": {"type": "string", "minLength": 1}, "params": {"type": "array"}}))
                },
                "oneOf": [{"required": ["text"]}, {"required": ["documents"]}, {"required": ["file"]}, {"required": ["sql"]}],
                "additionalProperties": false
            }}
        },
        "additionalProperties": false
    })
}

fn permanent(message: String) -> Failure {
    Failure::new(ErrorClass::Permanent, message)
}

fn as_text(v: &Value) -> String {
    v.as_str().map_or_else(|| v.to_string(), str::to_string)
}

/// Reads the sources of `spec` (a step's `with.context`), packs them and records the ledger;
/// the text the prompt gets. `default_query` is the step's task or prompt.
pub(super) async fn assemble(
    attempt: &mut Attempt<'_>,
    tools: &Tools,
    spec: &Value,
    default_query: &str,
) -> Result<String, Failure> {
    let query = spec.get("query").and_then(Value::as_str).unwrap_or(default_query).to_string();
    let max_tokens = spec.get("max_tokens").and_then(Value::as_u64).unwrap_or(4_096);
    let mut candidates: Vec<Candidate> = Vec::new();
    for source in spec.get("sources").and_then(Value::as_array).into_iter().flatten() {
        let name = source["name"].as_str().unwrap_or("source").to_string();
        if let Some(text) = source.get("text") {
            candidates.extend(chunks(&name, &format!("{name}#0"), &as_text(text)));
        } else if let Some(docs) = source.get("documents") {
            let docs = docs.as_array().ok_or_else(|| {
                permanent(format!("with.context source '{name}': `documents` must give a list, but it gave {docs}"))
            })?;
            for (i, doc) in docs.iter().enumerate() {
                // `{id, text}`, or what a tool read (`{path, content}`), or any value as JSON.
                let (id, text) = match doc {
                    Value::Object(m) if m.contains_key("text") || m.contains_key("content") => {
                        let id = m.get("id").or_else(|| m.get("path")).map_or_else(|| i.to_string(), as_text);
                        (id, as_text(m.get("text").unwrap_or_else(|| &m["content"])))
                    }
                    other => (i.to_string(), as_text(other)),
                };
                candidates.extend(chunks(&name, &format!("{name}#{id}"), &text));
            }
        } else if let Some(file) = source.get("file") {
            let args = json!({"op": "read", "path": file["path"]});
            let read = read_through(attempt, tools, &name, file["tool"].as_str().unwrap_or_default(), args).await?;
            candidates.extend(chunks(&name, &format!("{name}#0"), &as_text(&read["content"])));
        } else if let Some(sql) = source.get("sql") {
            let mut args = json!({"sql": sql["sql"]});
            if let Some(params) = sql.get("params") {
                args["params"] = params.clone();
            }
            let read = read_through(attempt, tools, &name, sql["tool"].as_str().unwrap_or_default(), args).await?;
            for (i, row) in read["rows"].as_array().into_iter().flatten().enumerate() {
                candidates.push(Candidate {
                    source: name.clone(),
                    reference: format!("{name}#{i}"),
                    text: row.to_string(),
                });
            }
        }
    }
    let packed = pack(&query, &candidates, max_tokens);
    let ledger = packed.ledger.clone();
    // The ledger is the call: journaled before the model is asked, the same on every attempt.
    let recorded = attempt.call("context", &packed.ledger, |_| async move { Ok(ledger) }).await?;
    attempt.log(format!(
        "context: {} of {} candidate(s) selected, {} of {} tokens",
        recorded["selected"], recorded["observed"], recorded["used_tokens"], recorded["max_tokens"]
    ));
    Ok(block(&candidates, &packed))
}

/// One read of a context source through a tool (a journaled call): only reads, as the tool's
/// policy allows them.
async fn read_through(
    attempt: &mut Attempt<'_>,
    tools: &Tools,
    source: &str,
    name: &str,
    args: Value,
) -> Result<Value, Failure> {
    let entry = lookup(tools, &attempt.workflow_tools, name).await?;
    let args = entry.normalize(args);
    if entry.effect(&args) != EffectClass::Read {
        return Err(permanent(format!(
            "with.context source '{source}': tool '{name}' is not a read ({}); context sources only read",
            entry.effect(&args).as_str()
        )));
    }
    let n = attempt.next_call();
    let args = match gate(attempt, n, &entry, name, args, None, Some(&format!("context source '{source}'")))? {
        Gate::Go(args) => args,
        Gate::Rejected(message) => return Err(Failure { code: Some("rejected".into()), ..permanent(message) }),
    };
    let request = json!({"tool": name, "args": args});
    let worker = attempt.worker;
    let args = &args;
    attempt
        .call("tool", &request, |key| async move { entry.call(args, CallContext { key: &key, worker }).await })
        .await
        .map_err(|f| Failure { message: format!("with.context source '{source}': {}", f.message), ..f })
}
