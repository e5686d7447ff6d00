//! `cairn replay`: re-derive a run from its journal with no effects, check that the current
//! engine (and the pinned definition, or one you name) makes every recorded decision, and tell
//! the run's story. Works on the database or on an exported history from another machine.

use crate::output::{Paint, colour_enabled, timestamp};
use crate::{CliError, CliResult, DbArgs};
use cairn_core::decide::{ReplayError, replay};
use cairn_core::timeline::Timeline;
use cairn_core::{Envelope, Event, RunId};
use cairn_store::Journal;
use clap::Args;
use serde_json::{Value, json};
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Args)]
#[command(
    after_help = "Examples:\n  cairn replay wf_01J...\n  cairn export wf_01J... > run.json && cairn replay --file run.json --json\n  cairn replay wf_01J... --definition workflow-v2.yaml   # would v2 decide the same?"
)]
pub struct ReplayArgs {
    /// The run to replay (from the database).
    pub id: Option<String>,
    /// An exported history (`cairn export ID > run.json`), e.g. from another machine.
    #[arg(long, conflicts_with = "id")]
    pub file: Option<PathBuf>,
    /// Check the journal against this definition instead of the one the run pinned.
    #[arg(long)]
    pub definition: Option<PathBuf>,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// (run, journal, payloads, the calls its steps made as exported).
type Loaded = (RunId, Vec<Envelope>, Vec<(String, Arc<Value>)>, Vec<Value>);

fn from_file(path: &PathBuf) -> CliResult<Loaded> {
    let text =
        std::fs::read_to_string(path).map_err(|e| CliError::usage(format!("cannot read {}: {e}", path.display())))?;
    let doc: Value = serde_json::from_str(&text).map_err(|e| {
        CliError::usage(format!(
            "{} is not an export document ({e}); make one with `cairn export ID > run.json` (JSON, not --format jsonl)",
            path.display()
        ))
    })?;
    if doc["format"] != cairn_store::EXPORT_FORMAT {
        return Err(CliError::usage(format!(
            "{} is not a Cairn run export (format is {}); make one with `cairn export ID`",
            path.display(),
            doc["format"]
        )));
    }
    let id = doc["run"]["id"].as_str().ok_or_else(|| CliError::usage("the export has no run.id"))?;
    let id = RunId::parse(id).map_err(CliError::usage)?;
    let events: Vec<Envelope> = serde_json::from_value(doc["events"].clone())
        .map_err(|e| CliError::usage(format!("the export's events do not load: {e}")))?;
    let payloads = doc["payloads"]
        .as_object()
        .map(|m| m.iter().map(|(h, v)| (h.clone(), Arc::new(v.clone()))).collect())
        .unwrap_or_default();
    // Exports made before calls were journaled have none.
    let calls = doc["calls"].as_array().cloned().unwrap_or_default();
    Ok((id, events, payloads, calls))
}

pub async fn run(db: &DbArgs, args: ReplayArgs) -> CliResult {
    let (id, events, mut payloads, calls) = match (&args.id, &args.file) {
        (_, Some(path)) => from_file(path)?,
        (Some(id), None) => {
            let id = RunId::parse(id).map_err(CliError::usage)?;
            let store = db.open_existing().await?;
            let loaded = store.load_run(&id).await?;
            let calls = cairn_store::EffectLog::calls(&store, &id, None).await?;
            let calls = calls.iter().filter_map(|c| serde_json::to_value(c).ok()).collect();
            (id, loaded.events, loaded.payloads, calls)
        }
        (None, None) => return Err(CliError::usage("give a run id or --file run.json (see cairn replay --help)")),
    };
    let mut against = "the definition the run pinned".to_string();
    if let Some(path) = &args.definition {
        let def = crate::run::load_definition(path)?;
        let value = serde_json::to_value(&def).map_err(|e| CliError::env(e.to_string()))?;
        let pinned = events.iter().find_map(|e| match &e.event {
            Event::PlanRecorded { definition, .. } => Some(definition.hash.clone()),
            _ => None,
        });
        let hash = pinned.ok_or_else(|| CliError::usage("the journal has no recorded plan to compare against"))?;
        payloads.retain(|(h, _)| *h != hash);
        payloads.push((hash, Arc::new(value)));
        against = format!("{} (v{})", path.display(), def.version);
    }
    let verdict = replay(id.clone(), &events, payloads);
    let timeline = Timeline::from_events(&events);
    let divergence = match &verdict {
        Ok(_) => None,
        Err(ReplayError::Divergence { seq, recorded, decided }) => {
            Some(json!({"seq": seq, "recorded": recorded, "decided": decided}))
        }
        Err(ReplayError::Fold(e)) => {
            Some(json!({"seq": null, "recorded": e.to_string(), "decided": "the journal does not fold"}))
        }
    };
    if args.json {
        let doc =
            json!({"run_id": id, "against": against, "divergence": divergence, "timeline": timeline, "calls": calls});
        crate::out!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
    } else {
        print_story(&id, &timeline, &calls, &against, verdict.as_ref().err());
    }
    match verdict {
        Ok(_) => Ok(()),
        Err(e) => Err(CliError::failed(format!("replay of {id} diverges: {e}"))),
    }
}

fn ms(v: Option<u64>) -> String {
    v.map(cairn_core::duration::format_ms).unwrap_or_else(|| "?".into())
}

fn print_story(id: &RunId, t: &Timeline, calls: &[Value], against: &str, error: Option<&ReplayError>) {
    let paint = Paint(colour_enabled());
    let took = t
        .finished_at_ms
        .map(|f| format!(" in {}", cairn_core::duration::format_ms((f - t.started_at_ms).max(0) as u64)));
    crate::out!(
        "run {id} ({}) {}{} — {} events, started {}",
        t.workflow,
        t.status,
        took.unwrap_or_default(),
        t.events,
        timestamp(t.started_at_ms)
    );
    match error {
        None => crate::out!(
            "{} the current engine makes every recorded decision (against {against})",
            paint.green("replay ok:")
        ),
        Some(e) => crate::out!("{} {e} (against {against})", paint.red("divergence:")),
    }
    crate::out!();
    let width = t.steps.iter().map(|s| s.step.len()).max().unwrap_or(4);
    for s in &t.steps {
        let mut parts = Vec::new();
        for a in &s.attempts {
            let what = match (&a.failure, a.outcome.as_str()) {
                (Some(f), outcome) => {
                    format!("#{} {outcome}({}) {} \"{}\"", a.number, f.class, ms(a.duration_ms), f.message)
                }
                (None, outcome) => format!("#{} {outcome} {}", a.number, ms(a.duration_ms)),
            };
            parts.push(match a.then_waited_ms {
                Some(w) => format!("{what} → waited {}", cairn_core::duration::format_ms(w)),
                None => what,
            });
        }
        let made: Vec<String> = calls
            .iter()
            .filter(|c| c["step_id"] == s.step.as_str())
            .map(|c| {
                let took = cairn_core::duration::format_ms(c["duration_ms"].as_u64().unwrap_or(0));
                let (kind, outcome) = (c["kind"].as_str().unwrap_or("?"), c["outcome"].as_str().unwrap_or("?"));
                format!("call-{} {kind} {outcome} {took}", c["n"])
            })
            .collect();
        if !made.is_empty() {
            parts.push(format!("calls: {}", made.join(", ")));
        }
        if let Some(reason) = &s.skipped {
            parts.push(format!("skipped: {reason}"));
        }
        if let Some(f) = &s.failure {
            parts.push(format!("failed: {f}"));
        }
        crate::out!("  {:<width$}  {:<10}  {}", s.step, s.status, parts.join(", "));
    }
    if !t.moments.is_empty() {
        crate::out!();
        for (at, what) in &t.moments {
            crate::out!("  {} {what}", timestamp(*at));
        }
    }
    if let Some(f) = &t.first_failure {
        crate::out!();
        crate::out!("first failure: step {} attempt {}: {}", f.step, f.attempt, f.failure);
        for next in &f.led_to {
            crate::out!("  → {next}");
        }
    }
}
