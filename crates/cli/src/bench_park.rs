//! `cairn bench --park`: many runs parked on a durable `wait: {signal: go}`, then all signalled.
//! It shows that a waiting run costs the process nothing: parked runs are handed back to the
//! store (no driver, no attempt, no timer in memory), so the process's memory stays flat however
//! many wait, and every run completes once its signal arrives.

use crate::{CliError, CliResult};
use cairn_core::event::Event;
use cairn_engine::{Control, Engine, EngineConfig, NewRun, Notice, Submit};
use cairn_store::{Durability, SqliteStore};
use serde_json::json;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{Semaphore, mpsc};

const DEFINITION: &str = "name: parked\nsteps:\n  - {id: wait_for_go, kind: wait, with: {signal: go}}\n  - {id: done, kind: noop, needs: [wait_for_go]}\n";

/// Resident memory of this process, from /proc (Linux); 0 where it cannot be read.
fn rss_mib() -> f64 {
    memory_mib().0
}

/// Resident memory of this process now and at its peak, in MiB (Linux; 0 where it cannot be read).
pub(crate) fn memory_mib() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let read = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|n| n.parse::<f64>().ok())
            .unwrap_or(0.0)
            / 1024.0
    };
    (read("VmRSS:"), read("VmHWM:"))
}

/// Counts the runs that complete, from the engine's notices.
pub(crate) fn count_completions(mut rx: mpsc::UnboundedReceiver<Notice>) -> Arc<AtomicUsize> {
    let completed = Arc::new(AtomicUsize::new(0));
    let counter = completed.clone();
    tokio::spawn(async move {
        while let Some(notice) = rx.recv().await {
            let Notice::Committed { events, .. } = notice else { continue };
            let done = events.iter().filter(|e| matches!(e.event, Event::RunCompleted { .. })).count();
            counter.fetch_add(done, Ordering::Relaxed);
        }
    });
    completed
}

pub async fn bench_park(path: &Path, runs: usize, in_flight: usize, json_out: bool) -> CliResult {
    let store = Arc::new(SqliteStore::open(path, Durability::Full)?);
    let (tx, rx) = mpsc::unbounded_channel::<Notice>();
    let completed = count_completions(rx);
    let mut config = EngineConfig::new(cairn_engine::owner_id());
    config.concurrency = 64;
    config.max_runs = runs.max(1);
    // Hand a run back as soon as it only waits, as `cairn serve` does (there after 1 s).
    config.release_when_idle_ms = Some(100);
    let engine = Engine::new(store, config, Some(tx));
    let background = [engine.spawn_heartbeat(), engine.spawn_worker()];
    let definition = cairn_core::validate::parse_definition(DEFINITION, "park.yaml", crate::kinds::kinds())
        .map_err(|p| CliError::env(format!("the bench definition is invalid: {p:?}")))?;
    let rss_start = rss_mib();

    // Park: each run is driven to its wait, then handed back.
    let started = Instant::now();
    let gate = Arc::new(Semaphore::new(in_flight.max(1)));
    let mut tasks = Vec::with_capacity(runs);
    let mut ids = Vec::with_capacity(runs);
    for _ in 0..runs {
        let permit = gate.clone().acquire_owned().await.map_err(|e| CliError::env(e.to_string()))?;
        let (engine, definition, id) = (engine.clone(), definition.clone(), cairn_engine::new_run_id());
        ids.push(id.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = permit;
            let new = NewRun::inline(definition, json!({}));
            let submit = Submit { drive_here: true, ..Submit::default() };
            if let Some(driving) = engine.submit(id, new, submit).await? {
                driving.await.map_err(|e| cairn_engine::Error::Invalid(e.to_string()))??;
            }
            Ok::<(), cairn_engine::Error>(())
        }));
    }
    for t in tasks {
        t.await.map_err(|e| CliError::env(e.to_string()))??;
    }
    let park_s = started.elapsed().as_secs_f64();
    let rss_parked = rss_mib();
    // They go on waiting: nothing of them is held here.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_still = rss_mib();

    // Signal every run; each completes.
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(runs);
    for (i, id) in ids.into_iter().enumerate() {
        let permit = gate.clone().acquire_owned().await.map_err(|e| CliError::env(e.to_string()))?;
        let engine = engine.clone();
        tasks.push(tokio::spawn(async move {
            let _permit = permit;
            let signal = Control::Signal { name: "go".into(), payload: json!({ "n": i }), by: None };
            engine.request(&id, signal).await.map(|_| ())
        }));
    }
    for t in tasks {
        t.await.map_err(|e| CliError::env(e.to_string()))??;
    }
    let deadline = Instant::now() + Duration::from_secs(600);
    while completed.load(Ordering::Relaxed) < runs {
        if Instant::now() > deadline {
            return Err(CliError::env(format!(
                "only {} of {runs} parked runs completed within 10 minutes of their signals",
                completed.load(Ordering::Relaxed)
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let done_s = started.elapsed().as_secs_f64();
    let rss_done = rss_mib();
    engine.drain();
    for task in background {
        task.abort();
    }
    let row = json!({
        "shape": "park",
        "runs": runs,
        "park_seconds": park_s,
        "parked_per_s": runs as f64 / park_s,
        "signal_to_completed_seconds": done_s,
        "completed_per_s": runs as f64 / done_s,
        "rss_mib_start": rss_start,
        "rss_mib_parked": rss_parked,
        "rss_mib_parked_2s_later": rss_still,
        "rss_mib_done": rss_done,
    });
    if json_out {
        crate::out!("{row}");
    } else {
        crate::out!(
            "{runs} runs parked on wait{{signal}} in {park_s:.1} s ({:.0}/s); all signalled and completed in {done_s:.1} s ({:.0}/s)",
            runs as f64 / park_s,
            runs as f64 / done_s
        );
        crate::out!(
            "RSS: {rss_start:.0} MiB at start, {rss_parked:.0} MiB with all parked, {rss_still:.0} MiB 2 s later, {rss_done:.0} MiB when done"
        );
    }
    Ok(())
}
