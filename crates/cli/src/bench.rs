//! `cairn bench`: no-op workflows of 3 and 10 steps on a real SQLite file, sequentially and with
//! many in flight. Reports workflows/s and p50/p99 latency per workflow and per step.
//! Per-step latency is the time between consecutive step completions of one run as seen by the
//! engine after commit (so it includes the durable commit), not the activity's own time.

use crate::{CliError, CliResult};
use cairn_core::definition::{Definition, OnFailure, Step, Trigger};
use cairn_core::event::Event;
use cairn_core::{RunId, StepId};
use cairn_engine::{Engine, EngineConfig, NewRun, Notice};
use cairn_store::{Durability, Journal, SqliteStore, Store};
use clap::Args;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{Semaphore, mpsc};

#[derive(Args)]
pub struct BenchArgs {
    /// Workflows per in-flight scenario.
    #[arg(long, default_value_t = 2_000)]
    pub workflows: usize,
    /// Workflows per sequential scenario.
    #[arg(long, default_value_t = 300)]
    pub sequential: usize,
    /// Workflows in flight for the concurrent scenarios.
    #[arg(long, default_value_t = 50)]
    pub in_flight: usize,
    /// Database file (default: a fresh file in a temporary directory, removed afterwards).
    #[arg(long = "bench-db")]
    pub bench_db: Option<PathBuf>,
    /// Print results as JSON lines.
    #[arg(long)]
    pub json: bool,
    /// Benchmark the HTTP API instead: `POST /v1/runs?wait` end to end, `--workflows` requests
    /// from `--in-flight` keep-alive clients.
    #[arg(long)]
    pub http: bool,
    /// Benchmark external workers: 3-step workflows whose steps are an external kind, run by
    /// workers over HTTP on loopback (`--external-client`), started by `--in-flight` clients:
    /// workflows/s, tasks/s, and each task's round trip.
    #[arg(long, conflicts_with = "http")]
    pub external: bool,
    /// With --external: minimal Rust workers in this process, or the Python client in processes.
    #[arg(long, value_enum, default_value = "rust")]
    pub external_client: crate::bench_external::ExternalClient,
    /// With --external: how many workers (Rust connections or Python processes).
    #[arg(long, default_value_t = 4)]
    pub external_workers: usize,
    /// With --external-client python: the Python client's directory.
    #[arg(long, default_value = "clients/python")]
    pub python_client: PathBuf,
    /// Park `--workflows` runs on a durable `wait: {signal: go}` (handed back to the store), then
    /// signal them all: parking and completion rates, and the process's memory while they wait.
    #[arg(long, conflicts_with = "http")]
    pub park: bool,
    /// Runs of one `llm` step each against a model server on loopback in this process answering
    /// after `--latency`: llm calls per second through the engine (journaled, cost accounted),
    /// and the process's memory with `--in-flight` runs waiting on the model at once.
    #[arg(long, conflicts_with_all = ["http", "park"])]
    pub llm: bool,
    /// With --llm or --agent: how long the model takes to answer.
    #[arg(long, default_value = "0ms")]
    pub latency: String,
    /// Runs of one `agent` step each (`--turns` turns with a read tool call, then the final
    /// answer) against a model and a tool on loopback in this process: model turns per second with
    /// `--in-flight` runs at once, the engine's time per turn, and memory.
    #[arg(long, conflicts_with_all = ["http", "park", "llm"])]
    pub agent: bool,
    /// With --agent: tool-calling turns per run.
    #[arg(long, default_value_t = 5)]
    pub turns: usize,
    /// Another workload: `map` is one run with a `for_each` step over `--items` no-op items,
    /// `--max-parallel` at once (item-steps per second; SQLite, or PostgreSQL with --database).
    #[arg(long, value_enum, conflicts_with_all = ["http", "park"])]
    pub shape: Option<Shape>,
    /// Items of the `--shape map` run.
    #[arg(long, default_value_t = 10_000)]
    pub items: usize,
    /// `max_parallel` of the `--shape map` run.
    #[arg(long, default_value_t = 100)]
    pub max_parallel: usize,
}

/// Workloads besides the default chains.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Shape {
    /// One run, `for_each` over many items.
    Map,
}

fn chain(steps: usize) -> Definition {
    let spec = crate::kinds::kinds().lookup("noop").map(|k| k.retry);
    let retry = spec.unwrap_or(cairn_core::retry::RetryPolicy {
        max_attempts: 3,
        initial_delay_ms: 100,
        multiplier: 2.0,
        max_delay_ms: 5000,
        jitter: 0.2,
    });
    Definition {
        format: 1,
        name: format!("bench-noop-{steps}"),
        version: 1,
        description: None,
        inputs: Default::default(),
        artifact: None,
        retention_ms: None,
        budget: None,
        tools: Default::default(),
        kinds: Default::default(),
        steps: (0..steps)
            .map(|i| Step {
                id: StepId::new(format!("s{i}")),
                kind: "noop".into(),
                needs: if i == 0 { vec![] } else { vec![StepId::new(format!("s{}", i - 1))] },
                when: None,
                with: Value::Null,
                retry,
                timeout_ms: Some(60_000),
                on_failure: OnFailure::Fail,
                trigger: Trigger::AllSucceeded,
                inject: None,
                approval: None,
                compensate: None,
                role: None,
                for_each: None,
                repeat: None,
                instance: None,
                budget: None,
            })
            .collect(),
    }
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

type StepClock = Arc<Mutex<(HashMap<RunId, Instant>, Vec<f64>)>>;

/// Runs `total` workflows, `in_flight` at a time, spread round-robin over one engine per store
/// (each its own "worker" with its own connections).
async fn scenario<S: Store>(stores: &[Arc<S>], steps: usize, total: usize, in_flight: usize) -> CliResult<Value> {
    let (tx, mut rx) = mpsc::unbounded_channel::<Notice>();
    let clock: StepClock = Arc::new(Mutex::new((HashMap::new(), Vec::new())));
    // Every notice is one commit of a run's journal: how many a workflow needs is a property of
    // the engine, not of the machine (the CI guard holds it).
    let commits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let watcher = {
        let clock = clock.clone();
        let commits = commits.clone();
        tokio::spawn(async move {
            while let Some(notice) = rx.recv().await {
                let Notice::Committed { run_id, events } = notice else { continue };
                commits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let now = Instant::now();
                let Ok(mut guard) = clock.lock() else { return };
                let (last, samples) = &mut *guard;
                for e in &events {
                    match e.event {
                        Event::RunCreated { .. } => {
                            last.insert(run_id.clone(), now);
                        }
                        Event::AttemptSucceeded { .. } => {
                            if let Some(t) = last.insert(run_id.clone(), now) {
                                samples.push(now.duration_since(t).as_secs_f64() * 1000.0);
                            }
                        }
                        Event::RunCompleted { .. } => {
                            last.remove(&run_id);
                        }
                        _ => {}
                    }
                }
            }
        })
    };
    let engines: Vec<Engine<S>> = stores
        .iter()
        .map(|store| {
            let mut config = EngineConfig::new(cairn_engine::owner_id());
            config.concurrency = (in_flight * 2).max(4);
            Engine::new(store.clone(), config, Some(tx.clone()))
        })
        .collect();
    drop(tx);
    let definition = chain(steps);
    let gate = Arc::new(Semaphore::new(in_flight));
    let latencies = Arc::new(Mutex::new(Vec::with_capacity(total)));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(total);
    for _ in 0..total {
        let permit = gate.clone().acquire_owned().await.map_err(|e| CliError::env(e.to_string()))?;
        let engine = engines[tasks.len() % engines.len()].clone();
        let definition = definition.clone();
        let latencies = latencies.clone();
        tasks.push(tokio::spawn(async move {
            let _permit = permit;
            let t0 = Instant::now();
            let new = NewRun::inline(definition, json!({}));
            let handle = engine.start(cairn_engine::new_run_id(), new).await?;
            let outcome = handle.await.map_err(|e| cairn_engine::Error::Invalid(e.to_string()))??;
            if outcome.status != cairn_core::RunStatus::Completed {
                return Err(cairn_engine::Error::Invalid(format!("bench run ended {}", outcome.status)));
            }
            if let Ok(mut l) = latencies.lock() {
                l.push(t0.elapsed().as_secs_f64() * 1000.0);
            }
            Ok::<(), cairn_engine::Error>(())
        }));
    }
    for t in tasks {
        t.await.map_err(|e| CliError::env(e.to_string()))??;
    }
    let elapsed = started.elapsed().as_secs_f64();
    drop(engines);
    let _ = tokio::time::timeout(Duration::from_secs(2), watcher).await;
    let mut wf = latencies.lock().map(|l| l.clone()).unwrap_or_default();
    let mut st = clock.lock().map(|c| c.1.clone()).unwrap_or_default();
    wf.sort_by(f64::total_cmp);
    st.sort_by(f64::total_cmp);
    Ok(json!({
        "steps": steps,
        "in_flight": in_flight,
        "workflows": total,
        "seconds": elapsed,
        "workflows_per_s": total as f64 / elapsed,
        "steps_per_s": (total * steps) as f64 / elapsed,
        "workflow_p50_ms": pct(&wf, 0.5),
        "workflow_p99_ms": pct(&wf, 0.99),
        "step_p50_ms": pct(&st, 0.5),
        "step_p99_ms": pct(&st, 0.99),
        "commits_per_workflow": commits.load(std::sync::atomic::Ordering::Relaxed) as f64 / total as f64,
    }))
}

fn print_row(r: &Value, json_out: bool) {
    if json_out {
        crate::out!("{r}");
        return;
    }
    let workers = r["workers"].as_u64().map(|w| format!("{w} worker(s), ")).unwrap_or_default();
    let mut ratio = r["ratio_to_commit_limit"]
        .as_f64()
        .map(|x| format!(" | {x:.2}× the single-row commit rate"))
        .unwrap_or_default();
    if let Some(x) = r["p50_in_commit_times"].as_f64() {
        ratio.push_str(&format!(", p50 = {x:.1} commit times"));
    }
    crate::out!(
        "{workers}{:>2} steps, {:>3} in flight: {:>7.0} workflows/s ({:>7.0} steps/s) | workflow p50 {:>6.2} ms p99 {:>6.2} ms | step p50 {:>5.2} ms p99 {:>5.2} ms{ratio}",
        r["steps"],
        r["in_flight"],
        r["workflows_per_s"].as_f64().unwrap_or(0.0),
        r["steps_per_s"].as_f64().unwrap_or(0.0),
        r["workflow_p50_ms"].as_f64().unwrap_or(0.0),
        r["workflow_p99_ms"].as_f64().unwrap_or(0.0),
        r["step_p50_ms"].as_f64().unwrap_or(0.0),
        r["step_p99_ms"].as_f64().unwrap_or(0.0),
    );
}

/// The limits first: a line on stderr, or a `{"limits": …}` JSON line.
pub(crate) fn print_limits(limits: &Value, json_out: bool) {
    if json_out {
        crate::out!("{}", json!({"limits": limits}));
    } else {
        cairn_engine::say!("{}", crate::bench_limits::describe(limits));
    }
}

/// On PostgreSQL: the same workflows with 1, 2 and 4 workers (engines with their own
/// connections) sharing the database.
async fn bench_postgres(url: &str, args: &BenchArgs) -> CliResult {
    let mut stores = Vec::new();
    for _ in 0..4 {
        stores.push(Arc::new(cairn_store::PgStore::open(url).await?));
    }
    cairn_engine::say!("cairn bench: {}", stores[0].describe());
    cairn_engine::say!("host: {} cores", std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
    let limits = crate::bench_limits::postgres_limits(url).await?;
    print_limits(&limits, args.json);
    scenario(&stores[..1], 3, 50.min(args.workflows), 10).await?;
    for workers in [1usize, 2, 4] {
        // The 10-step shapes with one worker; the 3-step ones with each count of workers.
        let tens = if workers == 1 {
            vec![(10, 1, args.sequential), (10, args.in_flight, args.workflows)]
        } else {
            Vec::new()
        };
        for (steps, in_flight, total) in
            [(3, 1, args.sequential), (3, args.in_flight, args.workflows)].into_iter().chain(tens)
        {
            if total == 0 {
                continue;
            }
            let mut r = scenario(&stores[..workers], steps, total, in_flight.max(1)).await?;
            r["workers"] = serde_json::json!(workers);
            crate::bench_limits::ratios(&mut r, &limits);
            print_row(&r, args.json);
        }
    }
    Ok(())
}

pub async fn bench(db: &crate::DbArgs, args: BenchArgs) -> CliResult {
    if args.http {
        return crate::bench_http::bench_http(args.workflows, args.in_flight, args.json).await;
    }
    if args.external {
        return crate::bench_external::bench_external(
            args.workflows,
            args.in_flight,
            args.external_workers,
            args.external_client,
            args.python_client,
            args.json,
        )
        .await;
    }
    if let (Some(Shape::Map), Some(url)) = (args.shape, &db.database) {
        let store = Arc::new(cairn_store::PgStore::open(url).await?);
        return crate::bench_map::bench_map(store, args.items, args.max_parallel, args.json).await;
    }
    if let Some(url) = &db.database {
        if args.park || args.llm || args.agent {
            return Err(CliError::usage(
                "--park, --llm and --agent run on the embedded SQLite store; leave out --database",
            ));
        }
        return bench_postgres(url, &args).await;
    }
    let tmp = std::env::temp_dir().join(format!("cairn-bench-{}", std::process::id()));
    let path = match &args.bench_db {
        Some(p) => p.clone(),
        None => {
            std::fs::create_dir_all(&tmp)
                .map_err(|e| CliError::env(format!("cannot create {}: {e}", tmp.display())))?;
            tmp.join("bench.db")
        }
    };
    if let Some(Shape::Map) = args.shape {
        let store = Arc::new(SqliteStore::open(&path, Durability::Full)?);
        let result = crate::bench_map::bench_map(store, args.items, args.max_parallel, args.json).await;
        if args.bench_db.is_none() {
            let _ = std::fs::remove_dir_all(&tmp);
        }
        return result;
    }
    if args.agent {
        let dir = path.parent().map(std::path::Path::to_path_buf).unwrap_or_else(|| tmp.clone());
        let result =
            crate::bench_agent::bench_agent(&dir, args.workflows, args.in_flight, &args.latency, args.turns, args.json)
                .await;
        if args.bench_db.is_none() {
            let _ = std::fs::remove_dir_all(&tmp);
        }
        return result;
    }
    if args.llm {
        let result = crate::bench_llm::bench_llm(&path, args.workflows, args.in_flight, &args.latency, args.json).await;
        if args.bench_db.is_none() {
            let _ = std::fs::remove_dir_all(&tmp);
        }
        return result;
    }
    if args.park {
        let result = crate::bench_park::bench_park(&path, args.workflows, args.in_flight, args.json).await;
        if args.bench_db.is_none() {
            let _ = std::fs::remove_dir_all(&tmp);
        }
        return result;
    }
    let store = Arc::new(SqliteStore::open(&path, Durability::Full)?);
    cairn_engine::say!("cairn bench: {}", cairn_store::Journal::describe(&*store));
    cairn_engine::say!("host: {} cores", std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
    let stores = [store];
    let dir = path.parent().map(std::path::Path::to_path_buf).unwrap_or_else(|| tmp.clone());
    let limits = crate::bench_limits::sqlite_limits(&dir).await?;
    print_limits(&limits, args.json);
    // Warm up (page cache, prepared statements).
    scenario(&stores, 3, 50.min(args.workflows), 10).await?;
    for (steps, in_flight, total) in [
        (3, 1, args.sequential),
        (10, 1, args.sequential),
        (3, args.in_flight, args.workflows),
        (10, args.in_flight, args.workflows),
    ] {
        if total == 0 {
            continue;
        }
        let mut r = scenario(&stores, steps, total, in_flight.max(1)).await?;
        crate::bench_limits::ratios(&mut r, &limits);
        print_row(&r, args.json);
    }
    drop(stores);
    if args.bench_db.is_none() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    Ok(())
}
