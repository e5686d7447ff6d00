//! The portable export of one run: everything needed to inspect or replay it elsewhere.

use crate::{Error, Store};
use cairn_core::RunId;
use serde_json::{Map, Value, json};

/// Format name and version of [`export_document`]'s output.
pub const EXPORT_FORMAT: &str = "cairn.run-export";

pub async fn export_document(store: &impl Store, id: &RunId) -> Result<Value, Error> {
    let loaded = store.load_run(id).await?;
    let steps = store.steps(id).await?;
    let calls = store.calls(id, None).await?;
    let payloads: Map<String, Value> = loaded.payloads.iter().map(|(h, v)| (h.clone(), (**v).clone())).collect();
    let (step_usage, usage) = crate::Spend::of_calls(&calls);
    Ok(json!({
        "format": EXPORT_FORMAT,
        "format_version": 1,
        "journal_schema": cairn_core::JOURNAL_SCHEMA,
        "run": loaded.run,
        "links": cairn_core::links::RunLinks::of(&loaded.events),
        "steps": steps,
        "calls": calls,
        "usage": usage,
        "step_usage": step_usage,
        "events": loaded.events,
        "payloads": payloads,
    }))
}
