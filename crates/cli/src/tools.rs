//! `cairn tools list|show|call|refresh`: the tool registry of this process (built-ins,
//! `[tools.NAME]`, and the tools of each `[mcp.NAME]` server), and calling one by hand.

use crate::output::table;
use crate::{CliError, CliResult};
use cairn_engine::tools::{CallContext, Tools};
use clap::Subcommand;
use serde_json::{Value, json};
use std::sync::Arc;

#[derive(Subcommand)]
pub enum ToolsCommand {
    /// List every tool: name, type, effect class, approval policy, where it comes from.
    #[command(after_help = "Examples:\n  cairn tools list\n  cairn tools list --json")]
    List {
        #[arg(long)]
        json: bool,
    },
    /// Show one tool: its schemas, effect, policy, and how models see it (OpenAI and Anthropic).
    #[command(after_help = "Examples:\n  cairn tools show orders_db\n  cairn tools show fs.read_text_file --json")]
    Show {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Call a tool outside any run, for debugging: prints the result, or the classified error.
    /// A tool that writes asks for --yes.
    #[command(
        after_help = "Examples:\n  cairn tools call orders_db --args '{\"sql\": \"select count(*) from orders\"}'\n  cairn tools call workspace --args '{\"op\": \"write\", \"path\": \"a.txt\", \"content\": \"hi\"}' --yes"
    )]
    Call {
        name: String,
        /// The arguments (JSON), checked against the tool's input schema.
        #[arg(long, value_name = "JSON", default_value = "{}")]
        args: String,
        /// Make a call that writes (effect idempotent_write, write or irreversible).
        #[arg(long)]
        yes: bool,
        #[arg(long)]
        json: bool,
    },
    /// Ask each MCP server for its tools again, and list the registry.
    #[command(after_help = "Examples:\n  cairn tools refresh\n  cairn tools refresh --json")]
    Refresh {
        #[arg(long)]
        json: bool,
    },
}

pub async fn tools(command: ToolsCommand) -> CliResult {
    let registry = crate::config::get().registry();
    match command {
        ToolsCommand::List { json } => {
            registry.connect_all().await;
            list(&registry, json)
        }
        ToolsCommand::Refresh { json } => {
            registry.refresh().await;
            list(&registry, json)
        }
        ToolsCommand::Show { name, json } => {
            registry.connect_all().await;
            let entry = registry.find(&name).await.map_err(|f| CliError::usage(f.message))?;
            let spec = &entry.spec;
            if json {
                let mut v = serde_json::to_value(spec).unwrap_or_default();
                v["openai"] = spec.openai();
                v["anthropic"] = spec.anthropic();
                crate::out!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
                return Ok(());
            }
            crate::out!("{} ({}, from {})", spec.name, spec.kind, spec.source);
            crate::out!("  {}", spec.description);
            let note = spec.effect_note.as_ref().map(|n| format!(" ({n})")).unwrap_or_default();
            crate::out!("  effect: {}{note}", spec.effect.as_str());
            crate::out!("  approval: {}", spec.approval.describe());
            if let Some(undo) = &spec.compensate {
                crate::out!("  compensate: {undo}");
            }
            crate::out!("  input schema: {}", serde_json::to_string_pretty(&spec.input_schema).unwrap_or_default());
            if let Some(out) = &spec.output_schema {
                crate::out!("  output schema: {}", serde_json::to_string_pretty(out).unwrap_or_default());
            }
            crate::out!("  as an OpenAI tool: {}", spec.openai());
            crate::out!("  as an Anthropic tool: {}", spec.anthropic());
            Ok(())
        }
        ToolsCommand::Call { name, args, yes, json } => call(&registry, &name, &args, yes, json).await,
    }
}

fn list(registry: &Tools, json: bool) -> CliResult {
    let unavailable = registry.unavailable();
    if json {
        let tools = registry.specs();
        let v = json!({"tools": tools, "unavailable": unavailable});
        crate::out!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        return Ok(());
    }
    let specs = registry.specs();
    let rows: Vec<Vec<String>> = specs
        .iter()
        .map(|s| {
            let effect = match &s.effect_note {
                Some(_) => format!("{}*", s.effect.as_str()),
                None => s.effect.as_str().to_string(),
            };
            let description: String = s.description.chars().take(70).collect();
            vec![s.name.clone(), s.kind.clone(), effect, s.approval.describe(), s.source.clone(), description]
        })
        .collect();
    crate::output::out(format_args!(
        "{}",
        table(&["NAME", "TYPE", "EFFECT", "APPROVAL", "SOURCE", "DESCRIPTION"], &rows)
    ));
    if specs.iter().any(|s| s.effect_note.is_some()) {
        crate::out!("* the effect depends on the arguments (`cairn tools show NAME`)");
    }
    for (server, why) in unavailable {
        crate::out!("mcp.{server}: its tools are not listed: {why}");
    }
    Ok(())
}

async fn call(registry: &Arc<Tools>, name: &str, args: &str, yes: bool, json: bool) -> CliResult {
    let args: Value = serde_json::from_str(args).map_err(|e| CliError::usage(format!("--args is not JSON: {e}")))?;
    registry.connect_all().await;
    let entry = registry.find(name).await.map_err(|f| CliError::usage(f.message))?;
    let args = entry.normalize(args);
    entry.check_args(&args).map_err(|f| CliError::usage(f.message))?;
    let effect = entry.effect(&args);
    if effect.needs_effect_key() && !yes {
        return Err(CliError::usage(format!(
            "tool '{name}' writes with these arguments (effect {}); add --yes to make the call",
            effect.as_str()
        )));
    }
    let key = format!("cli/{}/call-1", cairn_engine::new_run_id());
    let worker = cairn_engine::owner_id();
    match entry.call(&args, CallContext { key: &key, worker: &worker }).await {
        Ok(result) => {
            crate::out!(
                "{}",
                if json { result.to_string() } else { serde_json::to_string_pretty(&result).unwrap_or_default() }
            );
            Ok(())
        }
        Err(failure) => Err(CliError::failed(format!("tool '{name}' failed ({}): {}", failure.class, failure.message))),
    }
}
