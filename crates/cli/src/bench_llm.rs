//! `cairn bench --llm`: runs whose one step is an `llm` call, against a model server on loopback
//! inside this process that answers after `--latency` (an OpenAI-compatible chat completion with
//! usage). Each call goes through the engine as in production: a journaled, metered call (cost
//! accounted on its row) on a durable SQLite file. With `--latency 0ms` it measures the engine's
//! overhead per model call; with `--latency 200ms --in-flight 10000` that many runs wait on a model
//! at once, and the process's memory is reported.

use crate::{CliError, CliResult};
use cairn_engine::{Engine, EngineConfig, NewRun, Notice, Submit};
use cairn_store::{Durability, EffectLog, SqliteStore};
use serde_json::json;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{Semaphore, mpsc};

const DEFINITION: &str =
    "name: ask\nsteps:\n  - {id: ask, kind: llm, with: {model: bench, prompt: \"Say something.\", max_tokens: 16}}\n";

/// A chat completion with usage, the same for every request.
const ANSWER: &str = r#"{"id":"bench","object":"chat.completion","model":"bench-model","choices":[{"index":0,"message":{"role":"assistant","content":"Something."},"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":3,"total_tokens":15}}"#;

/// What a bench server answers to a request body (an HTTP 200 body).
pub(crate) type Answering = Arc<dyn Fn(&[u8]) -> String + Send + Sync>;

/// Serves `answer(body)` to every request on keep-alive connections, after `latency` (POSTs
/// only: a GET is answered at once); counts the POSTs.
pub(crate) async fn model_server(latency: Duration, served: Arc<AtomicUsize>, answer: Answering) -> CliResult<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(|e| CliError::env(e.to_string()))?;
    let addr = listener.local_addr().map_err(|e| CliError::env(e.to_string()))?;
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let (served, answer) = (served.clone(), answer.clone());
            tokio::spawn(async move {
                let mut reader = BufReader::new(socket);
                loop {
                    let mut length = 0usize;
                    let mut line = String::new();
                    let mut post = false;
                    // Request line and headers.
                    loop {
                        line.clear();
                        match reader.read_line(&mut line).await {
                            Ok(0) | Err(_) => return,
                            Ok(_) if line == "\r\n" => break,
                            Ok(_) if line.starts_with("POST ") => post = true,
                            Ok(_) => {
                                if let Some((k, v)) = line.split_once(':')
                                    && k.eq_ignore_ascii_case("content-length")
                                {
                                    length = v.trim().parse().unwrap_or(0);
                                }
                            }
                        }
                    }
                    let mut body = vec![0u8; length];
                    if reader.read_exact(&mut body).await.is_err() {
                        return;
                    }
                    if post {
                        if !latency.is_zero() {
                            tokio::time::sleep(latency).await;
                        }
                        served.fetch_add(1, Ordering::Relaxed);
                    }
                    let text = answer(&body);
                    let reply = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{text}",
                        text.len()
                    );
                    if reader.get_mut().write_all(reply.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    Ok(format!("http://{addr}/v1"))
}

/// The model tables of a bench engine: alias `bench` at the in-process server `base_url`.
pub(crate) fn bench_models(base_url: &str) -> serde_json::Value {
    json!({
        "default_model": "bench",
        "providers": {"local": {"name": "local", "type": "openai", "base_url": base_url,
                                "connect_timeout_ms": 10_000, "request_timeout_ms": 120_000}},
        "models": {"bench": {"alias": "bench", "provider": "local", "model": "bench-model",
                             "input_usd_per_mtok": 0.10, "output_usd_per_mtok": 0.20}}
    })
}

/// Runs `definition` `runs` times, `in_flight` at once, each driven here; the seconds it took.
pub(crate) async fn drive_runs(
    engine: &Engine<SqliteStore>,
    definition: &cairn_core::Definition,
    runs: usize,
    in_flight: usize,
) -> CliResult<f64> {
    let started = Instant::now();
    let gate = Arc::new(Semaphore::new(in_flight));
    let mut tasks = Vec::with_capacity(runs);
    for _ in 0..runs {
        let permit = gate.clone().acquire_owned().await.map_err(|e| CliError::env(e.to_string()))?;
        let (engine, definition) = (engine.clone(), definition.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = permit;
            let new = NewRun::inline(definition, json!({}));
            let submit = Submit { drive_here: true, ..Submit::default() };
            if let Some(driving) = engine.submit(cairn_engine::new_run_id(), new, submit).await? {
                driving.await.map_err(|e| cairn_engine::Error::Invalid(e.to_string()))??;
            }
            Ok::<(), cairn_engine::Error>(())
        }));
    }
    for t in tasks {
        t.await.map_err(|e| CliError::env(e.to_string()))??;
    }
    Ok(started.elapsed().as_secs_f64())
}

pub async fn bench_llm(path: &Path, runs: usize, in_flight: usize, latency: &str, json_out: bool) -> CliResult {
    let latency_ms = cairn_core::duration::parse_ms(latency).map_err(|e| CliError::usage(format!("--latency: {e}")))?;
    let served = Arc::new(AtomicUsize::new(0));
    let base_url =
        model_server(Duration::from_millis(latency_ms), served.clone(), Arc::new(|_: &[u8]| ANSWER.to_string()))
            .await?;
    let store = Arc::new(SqliteStore::open(path, Durability::Full)?);
    let (tx, rx) = mpsc::unbounded_channel::<Notice>();
    let completed = crate::bench_park::count_completions(rx);
    let in_flight = in_flight.clamp(1, runs.max(1));
    let mut config = EngineConfig::new(cairn_engine::owner_id());
    config.concurrency = in_flight;
    config.max_runs = in_flight;
    let models = bench_models(&base_url);
    config.kind_config.insert("llm".into(), json!({"models": models}));
    let engine = Engine::new(store.clone(), config, Some(tx));
    let definition = cairn_core::validate::parse_definition(DEFINITION, "llm.yaml", crate::kinds::kinds())
        .map_err(|p| CliError::env(format!("the bench definition is invalid: {p:?}")))?;
    let (rss_start, _) = crate::bench_park::memory_mib();
    let seconds = drive_runs(&engine, &definition, runs, in_flight).await?;
    let (rss_end, rss_peak) = crate::bench_park::memory_mib();
    let done = completed.load(Ordering::Relaxed);
    if done != runs {
        return Err(CliError::env(format!("only {done} of {runs} runs completed")));
    }
    let report = store.cost_report(0, cairn_store::CostBy::Model).await?;
    let calls: u64 = report.iter().map(|l| l.spend.calls).sum();
    let cost: f64 = report.iter().map(|l| l.spend.cost_usd).sum();
    if calls != runs as u64 || served.load(Ordering::Relaxed) != runs {
        return Err(CliError::env(format!(
            "{runs} runs made {calls} priced calls and the model server answered {} times: every call must be made and \
             counted once",
            served.load(Ordering::Relaxed)
        )));
    }
    engine.drain();
    let row = json!({
        "shape": "llm",
        "runs": runs,
        "in_flight": in_flight,
        "model_latency_ms": latency_ms,
        "seconds": seconds,
        "llm_calls_per_s": runs as f64 / seconds,
        "calls_priced": calls,
        "cost_usd": cost,
        "rss_mib_start": rss_start,
        "rss_mib_peak": rss_peak,
        "rss_mib_end": rss_end,
    });
    if json_out {
        crate::out!("{row}");
    } else {
        crate::out!(
            "{runs} runs, each one llm call answered after {latency_ms} ms, {in_flight} in flight: {seconds:.2} s, {:.0} \
             llm calls/s through the engine (journaled, metered: {calls} calls priced, ${cost:.6})",
            runs as f64 / seconds
        );
        crate::out!("RSS: {rss_start:.0} MiB at start, {rss_peak:.0} MiB at the peak, {rss_end:.0} MiB at the end");
    }
    Ok(())
}
