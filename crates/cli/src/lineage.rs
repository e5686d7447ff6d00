//! `cairn runs context RUN [--step S]`: the lineage ledgers of a run's `context:` selections,
//! as tables (see `cairn_engine::context`).

use crate::output::{table, timestamp};
use serde_json::Value;

/// Prints each ledger: what was asked for, then one row per candidate, selected first.
pub fn print(id: &str, step: Option<&str>, ledgers: &[Value]) {
    if ledgers.is_empty() {
        match step {
            Some(s) => {
                cairn_engine::say!("step '{s}' of run {id} chose no context (it has no `context:`, or has not run)")
            }
            None => cairn_engine::say!("run {id} chose no context (no step has `context:`, or none has run)"),
        }
        return;
    }
    for (i, entry) in ledgers.iter().enumerate() {
        let l = &entry["ledger"];
        let hash = l["query_sha256"].as_str().unwrap_or_default();
        crate::out!(
            "{}step {} · call {} · attempt {} · {}\n{} of {} candidate(s) selected · {} of {} tokens · {} ranking, {} \
             tokens · query sha256 {}",
            if i == 0 { "" } else { "\n" },
            entry["step"].as_str().unwrap_or_default(),
            entry["call"],
            entry["attempt"],
            entry["at_ms"].as_i64().map(timestamp).unwrap_or_default(),
            l["selected"],
            l["observed"],
            l["used_tokens"],
            l["max_tokens"],
            l["method"].as_str().unwrap_or_default(),
            l["tokenizer"].as_str().unwrap_or_default(),
            hash.get(..12).unwrap_or(hash),
        );
        let mut rows: Vec<&Value> = l["candidates"].as_array().map(|c| c.iter().collect()).unwrap_or_default();
        rows.sort_by_key(|r| !r["selected"].as_bool().unwrap_or(false));
        let body: Vec<Vec<String>> = rows
            .iter()
            .map(|r| {
                let sha = r["sha256"].as_str().unwrap_or_default();
                vec![
                    r["ref"].as_str().unwrap_or_default().to_string(),
                    r["source"].as_str().unwrap_or_default().to_string(),
                    r["tokens"].to_string(),
                    format!("{:.3}", r["score"].as_f64().unwrap_or(0.0)),
                    r["why"].as_str().unwrap_or_default().replace('_', " "),
                    sha.get(..12).unwrap_or(sha).to_string(),
                ]
            })
            .collect();
        crate::output::out(format_args!(
            "{}",
            table(&["REF", "SOURCE", "TOKENS", "SCORE", "VERDICT", "SHA256"], &body)
        ));
    }
}
