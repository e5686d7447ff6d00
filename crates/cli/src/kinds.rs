//! `cairn kinds`: the step kinds this binary runs, each with its `with` schema — and the one
//! place the CLI gets their descriptions from, to validate definitions against.

use crate::CliResult;
use cairn_core::kinds::Kinds;
use clap::Args;
use serde_json::json;
use std::sync::LazyLock;

static KINDS: LazyLock<Kinds> = LazyLock::new(|| {
    let external = &crate::config::get().external;
    cairn_engine::kinds::builtin().specs().and(external.iter().map(|(name, kind)| kind.spec(name)))
});

/// The kinds the engine this CLI builds runs: the built-ins and the external kinds of the config
/// file (read at start, before anything validates).
pub fn kinds() -> &'static Kinds {
    &KINDS
}

#[derive(Args)]
pub struct KindsArgs {
    /// One JSON document: every kind with its defaults and `with` schema.
    #[arg(long)]
    pub json: bool,
}

pub fn list(args: KindsArgs) -> CliResult {
    if args.json {
        let list: Vec<_> = kinds().iter().collect();
        crate::out!("{}", serde_json::to_string_pretty(&json!({ "kinds": list })).unwrap_or_default());
        return Ok(());
    }
    for kind in kinds().iter() {
        let timeout = kind.timeout_ms.map_or("none".to_string(), cairn_core::duration::format_ms);
        let role = match &kind.queue {
            Some(queue) => format!("external, queue {queue}"),
            None => kind.role.as_str().to_string(),
        };
        crate::out!(
            "{}  ({}, {role}; retries: {} attempts; timeout: {timeout})",
            kind.name,
            kind.effect.as_str(),
            kind.retry.max_attempts
        );
        crate::out!("    {}", kind.summary);
        if kind.with_schema != serde_json::Value::Bool(true) {
            crate::out!("    with: {}", kind.with_schema);
        }
    }
    Ok(())
}
