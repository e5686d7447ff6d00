//! `cairn top`: a terminal view of what is in flight — unfinished runs by state, the stuck
//! signals, what waits for a person (oldest first), the runs executing now, and what model calls
//! cost in the last minute and hour — redrawn every `--every` until Ctrl-C (`--once` prints one
//! frame, for scripts). Read from the database, so it shows every process working on it.

use crate::inspect::{open_existing, usd};
use crate::output::table;
use crate::{CliError, CliResult, DbArgs};
use cairn_store::{CostBy, EffectLog, Journal, RunQuery, Spend};
use std::time::Duration;

pub async fn top(db: &DbArgs, every: &str, once: bool) -> CliResult {
    let every =
        cairn_core::duration::parse_ms(every).map_err(|e| CliError::usage(format!("--every {every}: {e}")))?.max(200);
    let store = open_existing(db).await?;
    loop {
        let frame = frame(&store).await?;
        if once {
            crate::out!("{frame}");
            return Ok(());
        }
        // Clear the screen and draw from its top left.
        crate::out!("\x1b[2J\x1b[H{frame}");
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(every)) => {}
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}

/// Text from runs (prompts, step names) without control characters: a prompt rendered from a
/// fetched page must not drive the terminal.
fn plain(text: &str, max: usize) -> String {
    text.chars().map(|c| if c.is_control() { ' ' } else { c }).take(max).collect()
}

fn seconds(ms: i64) -> String {
    let s = ms.max(0) as f64 / 1000.0;
    if s < 120.0 { format!("{s:.1}s") } else { format!("{:.0}m", s / 60.0) }
}

fn spent(lines: &[cairn_store::CostLine]) -> Spend {
    lines.iter().fold(Spend::default(), |mut t, l| {
        t.calls += l.spend.calls;
        t.tokens_in += l.spend.tokens_in;
        t.tokens_out += l.spend.tokens_out;
        t.cost_usd += l.spend.cost_usd;
        t
    })
}

async fn frame(store: &cairn_store::AnyStore) -> CliResult<String> {
    let now_ms = cairn_engine::now_ms();
    let now = cairn_engine::metrics::now(store).await?;
    let waiting = cairn_engine::waiting_approvals(store).await?;
    let minute = spent(&store.cost_report(now_ms - 60_000, CostBy::Model).await?);
    let hour = spent(&store.cost_report(now_ms - 3_600_000, CostBy::Model).await?);
    let executing =
        store.list_runs(RunQuery { status: Some("EXECUTING".into()), limit: 15, ..Default::default() }).await?;

    let mut out = String::new();
    out.push_str(&format!("cairn top — {} — {}\n\n", crate::output::timestamp(now_ms), store.describe()));
    let states: Vec<String> =
        now.runs_by_status.iter().map(|(s, n)| format!("{} {n}", s.to_ascii_lowercase())).collect();
    out.push_str(&format!("runs      {}\n", states.join(" · ")));
    let flag = |bad: bool| if bad { "  ← stuck" } else { "" };
    out.push_str(&format!(
        "stuck     ready steps {} (oldest waiting {}){} · leases expired {}{} · past timeout {}{}\n",
        now.ready,
        seconds(now.oldest_ready_ms),
        flag(now.oldest_ready_ms > 60_000),
        now.expired_leases,
        flag(now.expired_leases > 0),
        now.past_timeout,
        flag(now.past_timeout > 0),
    ));
    out.push_str(&format!(
        "spend     last minute {} ({} calls, {} tokens) · last hour {} ({} calls)\n",
        usd(minute.cost_usd),
        minute.calls,
        minute.tokens(),
        usd(hour.cost_usd),
        hour.calls
    ));
    out.push_str(&format!("\nWAITING FOR A PERSON ({})\n", waiting.len()));
    if !waiting.is_empty() {
        let rows: Vec<Vec<String>> = waiting
            .iter()
            .take(10)
            .map(|w| {
                let what = match &w.call {
                    Some(c) => format!("tool {} ({})", plain(&c.tool, 64), plain(&c.effect, 32)),
                    None => plain(&w.prompt, 60),
                };
                vec![w.run_id.clone(), plain(&w.step, 64), seconds(now_ms - w.requested_at_ms), what]
            })
            .collect();
        out.push_str(&table(&["RUN", "STEP", "WAITING", "ASKS"], &rows));
    }
    out.push_str(&format!("\nEXECUTING (newest {})\n", executing.len()));
    if !executing.is_empty() {
        let rows: Vec<Vec<String>> = executing
            .iter()
            .map(|r| {
                vec![
                    r.id.clone(),
                    plain(&r.workflow, 64),
                    plain(r.current_step.as_deref().unwrap_or_default(), 64),
                    seconds(now_ms - r.created_at_ms),
                ]
            })
            .collect();
        out.push_str(&table(&["RUN", "WORKFLOW", "STEP", "AGE"], &rows));
    }
    Ok(out)
}
