//! `cairn bench --agent`: runs of one `agent` step each — `--turns` model turns that each call a
//! read tool, then a final answer — against a model and a tool on loopback inside this process
//! (the model answers after `--latency`). Every turn and tool call goes through the engine as in
//! production: journaled calls on a durable SQLite file. Two passes: the throughput of
//! `--workflows` runs with `--in-flight` at once (model turns per second, CPU time per turn,
//! memory), and the time a turn takes one run at a time with a model that answers at once.

use crate::bench_llm::{Answering, model_server};
use crate::{CliError, CliResult};
use cairn_engine::{Engine, EngineConfig, Notice};
use cairn_store::{Durability, SqliteStore};
use serde_json::{Value, json};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// The model: a tool call while fewer than `turns` results are in the conversation, then the
/// final answer; the tool (a GET, without a body): a small JSON document.
fn answering(turns: usize) -> Answering {
    Arc::new(move |body: &[u8]| {
        if body.is_empty() {
            return r#"{"stock": 42, "warehouse": "north"}"#.to_string();
        }
        let request: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        let seen = request["messages"]
            .as_array()
            .map(|m| {
                m.iter().filter(|m| m["content"].as_str().is_some_and(|c| c.starts_with("Result of tool"))).count()
            })
            .unwrap_or(0);
        let action = if seen < turns {
            json!({"tool": "lookup", "args": {}, "reason": format!("turn {}", seen + 1)})
        } else {
            json!({"final": {"stock": 42}})
        };
        json!({
            "id": "bench", "object": "chat.completion", "model": "bench-model",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": action.to_string()}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 40 + 30 * seen, "completion_tokens": 12, "total_tokens": 52 + 30 * seen}
        })
        .to_string()
    })
}

/// The CPU time this process has used (user and system), in milliseconds, from
/// `/proc/self/stat` (clock ticks of 10 ms; 0 where there is no /proc).
fn cpu_ms() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // The fields after the command name (which may hold spaces) end with `)`.
    let fields: Vec<&str> =
        stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    (ticks(11) + ticks(12)) * 10.0
}

/// One pass: `runs` agent runs, `in_flight` at once. Seconds taken and model calls served.
async fn pass(path: &Path, runs: usize, in_flight: usize, latency_ms: u64, turns: usize) -> CliResult<(f64, usize)> {
    let served = Arc::new(AtomicUsize::new(0));
    let base_url = model_server(Duration::from_millis(latency_ms), served.clone(), answering(turns)).await?;
    let store = Arc::new(SqliteStore::open(path, Durability::Full)?);
    let (tx, rx) = mpsc::unbounded_channel::<Notice>();
    let completed = crate::bench_park::count_completions(rx);
    let mut config = EngineConfig::new(cairn_engine::owner_id());
    config.concurrency = in_flight;
    config.max_runs = in_flight;
    let models = crate::bench_llm::bench_models(&base_url);
    config.kind_config.insert("agent".into(), json!({"models": models}));
    let tool_url = base_url.replace("/v1", "/stock");
    let tools: cairn_engine::tools::ToolsConfig = serde_json::from_value(json!({
        "tools": {"lookup": {"name": "lookup", "type": "http_request", "url": tool_url, "method": "GET",
                             "description": "Looks up the stock."}},
        "mcp": {}
    }))
    .map_err(|e| CliError::env(format!("the bench tool: {e}")))?;
    let tools = Arc::new(cairn_engine::tools::Tools::from_config(&tools).map_err(CliError::env)?);
    config.kinds = Arc::new(cairn_engine::kinds::with_tools(tools.clone()));
    config.tools = tools;
    let engine = Engine::new(store, config, Some(tx));
    let text = format!(
        "name: agent\nsteps:\n  - {{id: work, kind: agent, with: {{model: bench, task: Count the stock., tools: [lookup], max_turns: {}}}}}\n",
        turns + 1
    );
    let definition = cairn_core::validate::parse_definition(&text, "agent.yaml", crate::kinds::kinds())
        .map_err(|p| CliError::env(format!("the bench definition is invalid: {p:?}")))?;
    let seconds = crate::bench_llm::drive_runs(&engine, &definition, runs, in_flight).await?;
    // The last notices may still be on their way to the counter.
    let deadline = Instant::now() + Duration::from_secs(5);
    while completed.load(Ordering::Relaxed) < runs && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    engine.drain();
    let done = completed.load(Ordering::Relaxed);
    let asked = served.load(Ordering::Relaxed);
    if done != runs || asked != runs * (turns + 1) {
        return Err(CliError::env(format!(
            "{done} of {runs} runs completed and the model answered {asked} times (expected {}): every turn must be \
             made once",
            runs * (turns + 1)
        )));
    }
    Ok((seconds, asked))
}

pub async fn bench_agent(
    dir: &Path,
    runs: usize,
    in_flight: usize,
    latency: &str,
    turns: usize,
    json_out: bool,
) -> CliResult {
    let latency_ms = cairn_core::duration::parse_ms(latency).map_err(|e| CliError::usage(format!("--latency: {e}")))?;
    let turns = turns.clamp(1, 100);
    let runs = runs.max(1);
    let in_flight = in_flight.clamp(1, runs.max(1));
    let limits = crate::bench_limits::sqlite_limits(dir).await?;
    crate::bench::print_limits(&limits, json_out);
    let (rss_start, _) = crate::bench_park::memory_mib();
    let cpu_start = cpu_ms();
    let (seconds, asked) = pass(&dir.join("agent.db"), runs, in_flight, latency_ms, turns).await?;
    let cpu_per_turn_ms = (cpu_ms() - cpu_start) / asked as f64;
    let (rss_end, rss_peak) = crate::bench_park::memory_mib();
    // The engine's own time per turn: one run at a time, the model answering at once.
    let solo_runs = runs.clamp(1, 200);
    let (solo_seconds, solo_asked) = pass(&dir.join("agent-solo.db"), solo_runs, 1, 0, turns).await?;
    let per_turn_ms = solo_seconds * 1000.0 / solo_asked as f64;
    let mut row = json!({
        "shape": "agent",
        "runs": runs,
        "in_flight": in_flight,
        "tool_turns_per_run": turns,
        "model_turns": asked,
        "model_latency_ms": latency_ms,
        "seconds": seconds,
        "turns_per_s": asked as f64 / seconds,
        "cpu_ms_per_turn": cpu_per_turn_ms,
        "cpu_ms_per_turn_target": 1.0,
        "solo_ms_per_turn": per_turn_ms,
        "rss_mib_start": rss_start,
        "rss_mib_peak": rss_peak,
        "rss_mib_end": rss_end,
    });
    // Against the disk, measured just before: turns a second per single-row commit a second,
    // and one turn's time (one at a time) in fdatasyncs.
    if let Some(commits) = limits["sqlite_commits_per_s"].as_f64().filter(|c| *c > 0.0) {
        row["ratio_to_commit_limit"] = json!(asked as f64 / seconds / commits);
    }
    if let Some(sync_ms) = limits["fdatasync_ms"].as_f64().filter(|ms| *ms > 0.0) {
        row["solo_turn_in_commit_times"] = json!(per_turn_ms / sync_ms);
    }
    if json_out {
        crate::out!("{row}");
    } else {
        crate::out!(
            "{runs} agent runs ({turns} turns with a read tool call each, then the final answer; the model answers after \
             {latency_ms} ms), {in_flight} in flight: {seconds:.2} s, {:.0} model turns/s through the engine \
             ({:.2} × single-row commits/s)",
            asked as f64 / seconds,
            row["ratio_to_commit_limit"].as_f64().unwrap_or(0.0)
        );
        crate::out!(
            "CPU per turn: {cpu_per_turn_ms:.2} ms (the engine with the model and the tool it talks to, all in this \
             process; target ≤ 1 ms)"
        );
        crate::out!(
            "one run at a time, the model answering at once: {per_turn_ms:.2} ms a turn = {:.1} fdatasyncs ({solo_runs} \
             runs; each turn commits its model call and its tool call, fsynced)",
            row["solo_turn_in_commit_times"].as_f64().unwrap_or(0.0)
        );
        crate::out!("RSS: {rss_start:.0} MiB at start, {rss_peak:.0} MiB at the peak, {rss_end:.0} MiB at the end");
    }
    Ok(())
}
