//! `cairn diff A B`: where two runs diverged — the first step that settled differently, every
//! step side by side, and the difference in model spend (see `cairn_engine::diff`).

use crate::DbArgs;
use crate::inspect::{spent, usd};
use crate::output::table;
use crate::{CliError, CliResult};
use cairn_core::RunId;
use cairn_engine::diff::StepSide;

pub async fn diff(db: &DbArgs, a: &str, b: &str, json: bool) -> CliResult {
    let (a, b) = (RunId::parse(a).map_err(CliError::usage)?, RunId::parse(b).map_err(CliError::usage)?);
    let store = db.open_existing().await?;
    let d = cairn_engine::diff::diff(&store, &a, &b).await?;
    if json {
        crate::out!("{}", serde_json::to_string_pretty(&d).unwrap_or_default());
        return Ok(());
    }
    crate::out!("A {} ({})  B {} ({})", d.a, d.status.0, d.b, d.status.1);
    match &d.first_divergence {
        None => crate::out!("no divergence: every step settled the same"),
        Some(s) => crate::out!(
            "first divergence: step {} ({}): {} → {}",
            s.step,
            match (&s.a, &s.b) {
                (Some(a), Some(b)) => format!("event {} in A, {} in B", a.seq, b.seq),
                (Some(a), None) => format!("event {} in A; not in B", a.seq),
                (None, Some(b)) => format!("not in A; event {} in B", b.seq),
                (None, None) => String::new(),
            },
            shown(s.a.as_ref()),
            shown(s.b.as_ref())
        ),
    }
    let rows: Vec<Vec<String>> = d
        .steps
        .iter()
        .map(|s| {
            let verdict = if s.changed { "changed" } else { "same" };
            vec![s.step.clone(), shown(s.a.as_ref()), shown(s.b.as_ref()), verdict.to_string()]
        })
        .collect();
    crate::output::out(format_args!("{}", table(&["STEP", "A", "B", ""], &rows)));
    let sign = if d.spend.tokens >= 0 { "+" } else { "" };
    let dollars = if d.spend.cost_usd >= 0.0 { format!("+{}", usd(d.spend.cost_usd)) } else { usd(d.spend.cost_usd) };
    crate::out!(
        "spend: A {}; B {}; B − A: {sign}{} tokens, {dollars}",
        spent(&d.spend.a),
        spent(&d.spend.b),
        d.spend.tokens
    );
    Ok(())
}

/// `COMPLETED 1a2b3c4d` / `FAILED (permanent)` / `-`.
fn shown(side: Option<&StepSide>) -> String {
    let Some(s) = side else { return "-".into() };
    match (&s.output_hash, &s.error_class) {
        (Some(hash), _) => format!("{} {}", s.status, hash.get(..8).unwrap_or(hash)),
        (None, Some(class)) => format!("{} ({class})", s.status),
        (None, None) => s.status.clone(),
    }
}
