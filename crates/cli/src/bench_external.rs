//! `cairn bench --external`: 3-step workflows whose every step is an external kind, run by
//! workers over HTTP on loopback through a real `cairn serve` stack in this process (server,
//! engine, SQLite with synchronous=FULL). Workers are either minimal Rust clients in this process
//! (keep-alive connections that claim up to 32 tasks and complete each) or the Python client
//! (`clients/python`) in worker processes. Runs are started with `POST /v1/runs?wait` by
//! `--in-flight` clients; a run counts when its answer says COMPLETED. Reported: workflows/s,
//! tasks/s, the run's latency, and each task's round trip (queued → settled, from the journal).

use crate::bench_http::{Client, Stack, pct};
use crate::{CliError, CliResult};
use cairn_store::Journal;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Who runs the tasks.
#[derive(Clone, Copy, Debug, PartialEq, clap::ValueEnum)]
pub enum ExternalClient {
    /// Minimal Rust workers in this process (keep-alive HTTP/1.1).
    Rust,
    /// The Python client (`clients/python`), in worker processes.
    Python,
}

/// One minimal worker: claim up to 32 tasks, complete each, until told to stop.
async fn rust_worker(addr: SocketAddr, n: usize, stop: Arc<AtomicBool>, errors: Arc<AtomicUsize>) {
    let Ok(mut c) = Client::connect(addr).await else {
        errors.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let claim =
        json!({"worker": format!("bench-{n}"), "queues": ["bench"], "max_tasks": 32, "wait_ms": 200}).to_string();
    while !stop.load(Ordering::Relaxed) {
        let tasks = match c.post("/v1/workers/claim", &claim).await {
            Ok((200, body)) => serde_json::from_slice::<Value>(&body).unwrap_or(Value::Null)["tasks"].clone(),
            _ => {
                errors.fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        for task in tasks.as_array().into_iter().flatten() {
            let done = json!({"token": task["token"], "output": {"n": task["input"]["n"]}}).to_string();
            if !matches!(c.post("/v1/workers/complete", &done).await, Ok((200, _))) {
                errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// The Python worker processes, killed when dropped.
struct Processes(Vec<std::process::Child>);

impl Drop for Processes {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn python_workers(addr: SocketAddr, count: usize, client_dir: &std::path::Path) -> CliResult<Processes> {
    let script = client_dir.join("bench_worker.py");
    if !script.exists() {
        return Err(CliError::usage(format!(
            "--external-client python needs the Python client: no {} (run from the repository root, or pass --python-client DIR)",
            script.display()
        )));
    }
    let python = std::env::var("CAIRN_PYTHON").unwrap_or_else(|_| "python3".into());
    let mut children = Processes(Vec::new());
    for n in 0..count {
        let child = std::process::Command::new(&python)
            .arg(&script)
            .arg(format!("http://{addr}"))
            .arg(format!("bench-py-{n}"))
            .stdout(std::process::Stdio::null())
            .spawn()
            .map_err(|e| CliError::env(format!("cannot start {python} {}: {e}", script.display())))?;
        children.0.push(child);
    }
    Ok(children)
}

pub async fn bench_external(
    total: usize,
    in_flight: usize,
    workers: usize,
    client: ExternalClient,
    client_dir: PathBuf,
    json_out: bool,
) -> CliResult {
    let definition = json!({"name": "bench-ext-3", "kinds": {"work": {"queue": "bench", "effect": "pure"}}, "steps": [
        {"id": "s0", "kind": "work", "with": {"n": 0}},
        {"id": "s1", "kind": "work", "needs": ["s0"], "with": {"n": 1}},
        {"id": "s2", "kind": "work", "needs": ["s1"], "with": {"n": 2}},
    ]});
    let stack = Stack::start("external", 1024, &definition).await?;
    let (addr, store) = (stack.addr, stack.store.clone());

    let stop = Arc::new(AtomicBool::new(false));
    let worker_errors = Arc::new(AtomicUsize::new(0));
    let workers = workers.max(1);
    let mut rust_workers = Vec::new();
    let python = match client {
        ExternalClient::Rust => {
            for n in 0..workers {
                rust_workers.push(tokio::spawn(rust_worker(addr, n, stop.clone(), worker_errors.clone())));
            }
            None
        }
        ExternalClient::Python => Some(python_workers(addr, workers, &client_dir)?),
    };

    let mut results = Vec::new();
    for (label, count) in [("warm-up", (total / 10).max(30)), ("measured", total)] {
        let next = Arc::new(AtomicUsize::new(0));
        let latencies = Arc::new(Mutex::new(Vec::with_capacity(count)));
        let ids = Arc::new(Mutex::new(Vec::with_capacity(count)));
        let errors = Arc::new(AtomicUsize::new(0));
        let started = Instant::now();
        let mut clients = Vec::new();
        for _ in 0..in_flight.max(1) {
            let (next, latencies, ids, errors) = (next.clone(), latencies.clone(), ids.clone(), errors.clone());
            clients.push(tokio::spawn(async move {
                let Ok(mut c) = Client::connect(addr).await else {
                    errors.fetch_add(1, Ordering::Relaxed);
                    return;
                };
                while next.fetch_add(1, Ordering::Relaxed) < count {
                    let t0 = Instant::now();
                    let answer = c.post("/v1/runs?wait=60s", r#"{"workflow":"bench-ext-3"}"#).await;
                    let run = match answer {
                        Ok((201, body)) => serde_json::from_slice::<Value>(&body).unwrap_or(Value::Null),
                        _ => Value::Null,
                    };
                    if run["status"] == "COMPLETED" {
                        if let Ok(mut l) = latencies.lock() {
                            l.push(t0.elapsed().as_secs_f64() * 1000.0);
                        }
                        if let (Ok(mut ids), Some(id)) = (ids.lock(), run["id"].as_str()) {
                            ids.push(id.to_string());
                        }
                    } else {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }));
        }
        for c in clients {
            let _ = c.await;
        }
        let secs = started.elapsed().as_secs_f64();
        let mut l = latencies.lock().map(|l| l.clone()).unwrap_or_default();
        l.sort_by(f64::total_cmp);
        // Each task's round trip, queued → settled, from the journal (up to 1,000 runs).
        let mut trips = Vec::new();
        let ids = ids.lock().map(|i| i.clone()).unwrap_or_default();
        for id in ids.iter().take(1_000) {
            let Ok(run) = cairn_core::RunId::parse(id) else { continue };
            for step in store.steps(&run).await.unwrap_or_default() {
                if let (Some(a), Some(b)) = (step.started_at_ms, step.finished_at_ms) {
                    trips.push((b - a) as f64);
                }
            }
        }
        trips.sort_by(f64::total_cmp);
        let r = json!({
            "phase": label,
            "client": format!("{client:?}").to_lowercase(),
            "workers": workers,
            "in_flight": in_flight,
            "workflows": count,
            "completed": l.len(),
            "errors": errors.load(Ordering::Relaxed) + worker_errors.load(Ordering::Relaxed),
            "seconds": secs,
            "workflows_per_s": l.len() as f64 / secs,
            "tasks_per_s": 3.0 * l.len() as f64 / secs,
            "run_p50_ms": pct(&l, 0.5),
            "run_p99_ms": pct(&l, 0.99),
            "task_round_trip_p50_ms": pct(&trips, 0.5),
            "task_round_trip_p99_ms": pct(&trips, 0.99),
        });
        if label == "measured" {
            results.push(r);
        }
    }
    stop.store(true, Ordering::Relaxed);
    drop(python);
    for r in &results {
        if json_out {
            crate::out!("{r}");
        } else {
            crate::out!(
                "3 external steps per workflow, {} {} worker(s), {} in flight: {:.0} workflows/s = {:.0} tasks/s | run p50 {:.1} ms p99 {:.1} ms | task round trip p50 {:.0} ms p99 {:.0} ms | {} completed, {} errors",
                r["workers"],
                r["client"].as_str().unwrap_or(""),
                r["in_flight"],
                r["workflows_per_s"].as_f64().unwrap_or(0.0),
                r["tasks_per_s"].as_f64().unwrap_or(0.0),
                r["run_p50_ms"].as_f64().unwrap_or(0.0),
                r["run_p99_ms"].as_f64().unwrap_or(0.0),
                r["task_round_trip_p50_ms"].as_f64().unwrap_or(0.0),
                r["task_round_trip_p99_ms"].as_f64().unwrap_or(0.0),
                r["completed"],
                r["errors"],
            );
        }
    }
    for w in rust_workers {
        let _ = w.await;
    }
    stack.stop().await;
    if results.iter().any(|r| r["errors"].as_u64().unwrap_or(0) > 0) {
        return Err(CliError::failed("some benchmark workflows did not complete"));
    }
    Ok(())
}
