//! `cairn cost`: what model calls spent, summed from the store (each call's cost is recorded with
//! its result, so retried, resumed and replayed runs count each call once).

use crate::inspect::{open_existing, usd};
use crate::output::table;
use crate::{CliError, CliResult, DbArgs};
use cairn_store::{CostBy, EffectLog};
use serde_json::json;

pub async fn cost(db: &DbArgs, since: &str, by: &str, json_out: bool) -> CliResult {
    let window = cairn_core::duration::parse_ms(since)
        .map_err(|e| CliError::usage(format!("--since {since}: {e} (a duration back from now, e.g. 1h, 7d, 30d)")))?;
    let by = match by {
        "workflow" => CostBy::Workflow,
        "model" => CostBy::Model,
        "day" => CostBy::Day,
        other => return Err(CliError::usage(format!("--by {other}: use workflow, model or day"))),
    };
    let store = open_existing(db).await?;
    let since_ms = cairn_engine::now_ms() - i64::try_from(window).unwrap_or(i64::MAX / 2);
    let lines = store.cost_report(since_ms, by).await?;
    let total = lines.iter().fold(cairn_store::Spend::default(), |mut t, l| {
        t.calls += l.spend.calls;
        t.tokens_in += l.spend.tokens_in;
        t.tokens_out += l.spend.tokens_out;
        t.cost_usd += l.spend.cost_usd;
        t
    });
    if json_out {
        crate::out!("{}", json!({"since_ms": since_ms, "groups": lines, "total": total}));
        return Ok(());
    }
    if lines.is_empty() {
        cairn_engine::say!("no model calls in the last {since}");
        return Ok(());
    }
    let mut body: Vec<Vec<String>> = lines
        .iter()
        .map(|l| {
            vec![
                l.key.clone(),
                l.runs.to_string(),
                l.spend.calls.to_string(),
                l.spend.tokens_in.to_string(),
                l.spend.tokens_out.to_string(),
                usd(l.spend.cost_usd),
            ]
        })
        .collect();
    body.push(vec![
        "total".into(),
        "".into(),
        total.calls.to_string(),
        total.tokens_in.to_string(),
        total.tokens_out.to_string(),
        usd(total.cost_usd),
    ]);
    let key = match by {
        CostBy::Workflow => "WORKFLOW",
        CostBy::Model => "MODEL",
        CostBy::Day => "DAY (UTC)",
    };
    crate::output::out(format_args!("{}", table(&[key, "RUNS", "CALLS", "TOKENS IN", "TOKENS OUT", "COST"], &body)));
    Ok(())
}
