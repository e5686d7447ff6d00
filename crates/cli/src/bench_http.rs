//! `cairn bench --http`: end-to-end `POST /v1/runs?wait=…` of a 3-step no-op workflow through a
//! real `cairn serve` stack on loopback (server, engine, SQLite with synchronous=FULL), driven by
//! keep-alive HTTP/1.1 clients in the same process. A run counts when its response says
//! COMPLETED, so the numbers are accepted → completed.

use crate::{CliError, CliResult};
use cairn_core::catalog::Catalog;
use cairn_engine::{Engine, EngineConfig};
use cairn_server::{AppState, AuthMode, ServerConfig};
use cairn_store::{Durability, SqliteStore};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};

pub(crate) struct Client {
    io: BufReader<TcpStream>,
}

impl Client {
    pub(crate) async fn connect(addr: SocketAddr) -> std::io::Result<Client> {
        let s = TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        Ok(Client { io: BufReader::new(s) })
    }

    pub(crate) async fn post(&mut self, path: &str, body: &str) -> std::io::Result<(u16, Vec<u8>)> {
        let req = format!(
            "POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        self.io.get_mut().write_all(req.as_bytes()).await?;
        let mut line = String::new();
        self.io.read_line(&mut line).await?;
        let status = line.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        let mut len = 0usize;
        loop {
            line.clear();
            if self.io.read_line(&mut line).await? == 0 || line == "\r\n" {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse().unwrap_or(0);
            }
        }
        let mut buf = vec![0; len];
        self.io.read_exact(&mut buf).await?;
        Ok((status, buf))
    }
}

pub(crate) fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[(((sorted.len() - 1) as f64) * p).round() as usize]
}

/// A real `cairn serve` stack in this process on loopback: server, engine (its worker and
/// heartbeat), SQLite with synchronous=FULL in a scratch directory.
pub(crate) struct Stack {
    pub addr: SocketAddr,
    pub store: Arc<SqliteStore>,
    dir: std::path::PathBuf,
    engine: Engine<SqliteStore>,
    shutdown: watch::Sender<bool>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    tasks: [tokio::task::JoinHandle<()>; 2],
}

impl Stack {
    /// Starts the stack and registers `workflow`; `name` is the bench's, for messages.
    pub(crate) async fn start(name: &str, concurrency: usize, workflow: &Value) -> CliResult<Stack> {
        let dir = std::env::temp_dir().join(format!("cairn-bench-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| CliError::env(format!("cannot create {}: {e}", dir.display())))?;
        let store = Arc::new(SqliteStore::open(dir.join("bench.db"), Durability::Full)?);
        let mut config = EngineConfig::new(cairn_engine::owner_id());
        config.concurrency = concurrency;
        config.max_runs = 8192;
        config.max_per_run = 8;
        config.release_when_idle_ms = Some(1_000);
        let (tx, rx) = mpsc::unbounded_channel();
        let engine = Engine::new(store.clone(), config, Some(tx));
        let (shutdown, shutdown_rx) = watch::channel(false);
        let catalog = Catalog::builtin().map_err(CliError::env)?;
        let state = AppState::new(
            engine.clone(),
            Some(rx),
            ServerConfig { auth: AuthMode::Off, drive_here: true, max_body_bytes: 1 << 20, catalog },
            shutdown_rx.clone(),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| CliError::env(format!("cannot listen: {e}")))?;
        let addr = listener.local_addr().map_err(|e| CliError::env(e.to_string()))?;
        let mut stop = shutdown_rx;
        let server = tokio::spawn(cairn_server::serve(listener, state, async move {
            let _ = stop.changed().await;
        }));
        let tasks = [engine.spawn_heartbeat(), engine.spawn_worker()];
        cairn_engine::say!("cairn bench --{name}: http://{addr}, {}", cairn_store::Journal::describe(&*store));
        let mut admin = Client::connect(addr).await.map_err(|e| CliError::env(e.to_string()))?;
        let (status, _) =
            admin.post("/v1/workflows", &workflow.to_string()).await.map_err(|e| CliError::env(e.to_string()))?;
        if status != 201 && status != 200 {
            return Err(CliError::env(format!("registering the bench workflow answered HTTP {status}")));
        }
        Ok(Stack { addr, store, dir, engine, shutdown, server, tasks })
    }

    /// Stops the server and the engine and removes the scratch directory.
    pub(crate) async fn stop(self) {
        let _ = self.shutdown.send(true);
        self.engine.drain();
        for task in &self.tasks {
            task.abort();
        }
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), self.server).await;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub async fn bench_http(total: usize, in_flight: usize, json_out: bool) -> CliResult {
    let definition = json!({"name": "bench-noop-3", "steps": [
        {"id": "s0", "kind": "noop"},
        {"id": "s1", "kind": "noop", "needs": ["s0"]},
        {"id": "s2", "kind": "noop", "needs": ["s1"]},
    ]});
    let stack = Stack::start("http", 512, &definition).await?;
    let addr = stack.addr;

    let run_once = |warm: usize| {
        let next = Arc::new(AtomicUsize::new(0));
        let latencies = Arc::new(Mutex::new(Vec::with_capacity(warm)));
        let errors = Arc::new(AtomicUsize::new(0));
        (next, latencies, errors)
    };
    let mut results = Vec::new();
    for (label, count) in [("warm-up", (total / 10).max(50)), ("measured", total)] {
        let (next, latencies, errors) = run_once(count);
        let started = Instant::now();
        let mut clients = Vec::new();
        for _ in 0..in_flight.max(1) {
            let (next, latencies, errors) = (next.clone(), latencies.clone(), errors.clone());
            clients.push(tokio::spawn(async move {
                let Ok(mut c) = Client::connect(addr).await else {
                    errors.fetch_add(1, Ordering::Relaxed);
                    return;
                };
                while next.fetch_add(1, Ordering::Relaxed) < count {
                    let t0 = Instant::now();
                    match c.post("/v1/runs?wait=30s", r#"{"workflow":"bench-noop-3"}"#).await {
                        Ok((201, body)) => {
                            let done = serde_json::from_slice::<Value>(&body).is_ok_and(|v| v["status"] == "COMPLETED");
                            if done {
                                if let Ok(mut l) = latencies.lock() {
                                    l.push(t0.elapsed().as_secs_f64() * 1000.0);
                                }
                            } else {
                                errors.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        _ => {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
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
        let r = json!({
            "phase": label,
            "clients": in_flight,
            "requests": count,
            "completed": l.len(),
            "errors": errors.load(Ordering::Relaxed),
            "seconds": secs,
            "completed_runs_per_s": l.len() as f64 / secs,
            "p50_ms": pct(&l, 0.5),
            "p99_ms": pct(&l, 0.99),
        });
        if label == "measured" {
            results.push(r);
        }
    }
    for r in &results {
        if json_out {
            crate::out!("{r}");
        } else {
            crate::out!(
                "POST /v1/runs?wait (3 no-op steps), {} clients: {:.0} completed runs/s | p50 {:.2} ms p99 {:.2} ms | {} completed, {} errors",
                r["clients"],
                r["completed_runs_per_s"].as_f64().unwrap_or(0.0),
                r["p50_ms"].as_f64().unwrap_or(0.0),
                r["p99_ms"].as_f64().unwrap_or(0.0),
                r["completed"],
                r["errors"],
            );
        }
    }
    stack.stop().await;
    if results.iter().any(|r| r["errors"].as_u64().unwrap_or(0) > 0) {
        return Err(CliError::failed("some benchmark requests did not complete"));
    }
    Ok(())
}
