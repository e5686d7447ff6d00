//! `cairn chaos`: the same five-stage workload run twice under one seeded failure schedule
//! (`cairn_core::chaos_plan`) against one kind of outside world (`cairn_chaos::world`): once by
//! the naive runner (in-memory retries, no journal, starts over after a kill), once by Cairn — a
//! real `cairn worker` process on a scratch SQLite file (or the `--database` PostgreSQL, where the
//! schedule's database restart cuts every connection), killed with SIGKILL at each scheduled
//! instant and started again. Jobs run one after another in both modes, so the same seed gives the same
//! table (up to wall time). The report: completion, duplicated side effects (counted by the
//! world), wasted work (stage executions done again), cost (priced model calls), wall time,
//! recoveries, human interventions, and the delta.

use crate::{CliError, CliResult};
use cairn_chaos::naive::Outcome;
use cairn_chaos::world::{PRICE_USD, Service, Tally};
use cairn_core::chaos_plan::{Schedule, profile};
use cairn_engine::{Engine, EngineConfig, NewRun, Submit};
use cairn_store::{AnyStore, Durability, Journal, SqliteStore};
use clap::Args;
use serde_json::{Value, json};
use std::os::fd::AsFd;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Args)]
pub struct ChaosArgs {
    /// The failure profile: calm, flaky or hostile.
    #[arg(long, default_value = "hostile")]
    pub profile: String,
    /// The schedule's seed: the same seed, the same failures.
    #[arg(long, default_value_t = 1337)]
    pub seed: u64,
    /// Jobs (workflows of five stages) in the workload.
    #[arg(long, default_value_t = 20)]
    pub workflows: usize,
    /// Print the report as one JSON document.
    #[arg(long)]
    pub json: bool,
    /// Answer the evaluation stage with this model of cairn.toml — a local OpenAI-compatible
    /// server, such as `local` with scripts/local-model — instead of the world's canned score.
    #[arg(long, value_name = "ALIAS")]
    pub model: Option<String>,
    /// With --database: restart the database server for real at the schedule's restart instant by
    /// running this shell command (e.g. `sudo systemctl restart postgresql`), instead of cutting
    /// every connection to the workload's database.
    #[arg(long, value_name = "COMMAND")]
    pub db_restart_command: Option<String>,
}

/// The model of cairn.toml that a harness passes model calls on to: an OpenAI-compatible server
/// on loopback (load and faults go nowhere else).
pub fn local_model(alias: &str) -> CliResult<cairn_chaos::http::Upstream> {
    let models = &crate::config::get().models;
    let model = models.models.get(alias).ok_or_else(|| {
        let known: Vec<&str> = models.models.keys().map(String::as_str).collect();
        CliError::usage(format!("--model {alias} is not a model of cairn.toml (declared: {})", known.join(", ")))
    })?;
    let provider = models
        .providers
        .get(&model.provider)
        .ok_or_else(|| CliError::usage(format!("model {alias}: its provider '{}' is not declared", model.provider)))?;
    if provider.kind != cairn_engine::models::ProviderType::Openai {
        return Err(CliError::usage(format!(
            "--model {alias}: its provider '{}' is of type {}; the harness needs an OpenAI-compatible local server",
            provider.name,
            provider.kind.as_str()
        )));
    }
    let mut upstream = cairn_chaos::http::Upstream::parse(&provider.base_url, &model.model)
        .map_err(|e| CliError::usage(format!("--model {alias}: {e}")))?;
    upstream.api_key = provider.key().map_err(|e| CliError::usage(format!("--model {alias}: {e}")))?;
    Ok(upstream)
}

/// One job of the durable side: five steps against the world, the evaluation with a fallback.
fn workflow(model_wait: Duration) -> String {
    let text = r#"
name: chaos-job
inputs: {job: {}, base: {}}
defaults:
  timeout: 1s
  retry: {max_attempts: 6, initial_delay: 50ms, max_delay: 400ms, jitter: 0}
steps:
  - id: setup
    kind: http
    with: {url: "{{ inputs.base }}/stage/{{ inputs.job }}/setup", method: POST, body: {job: "{{ inputs.job }}"}}
  - id: load_data
    kind: http
    needs: [setup]
    with: {url: "{{ inputs.base }}/stage/{{ inputs.job }}/load_data", method: POST, body: {job: "{{ inputs.job }}"}}
  - id: evaluate
    kind: llm
    needs: [load_data]
    timeout: EVALUATE_TIMEOUT
    with: {model: [primary, fallback], prompt: "score job {{ inputs.job }}", max_tokens: 16}
  - id: write_metrics
    kind: http
    needs: [evaluate]
    with: {url: "{{ inputs.base }}/stage/{{ inputs.job }}/write_metrics", method: POST, body: {job: "{{ inputs.job }}"}}
  - id: upload_artifact
    kind: http
    needs: [write_metrics]
    with: {url: "{{ inputs.base }}/stage/{{ inputs.job }}/upload_artifact", method: POST, body: {job: "{{ inputs.job }}"}}
"#;
    text.replace("EVALUATE_TIMEOUT", &model_wait.as_millis().to_string())
}

/// The models of the durable side: two providers on the world, so the primary's breaker does not
/// stop the fallback.
fn config(base: &str) -> String {
    // Priced per call as the world counts them: 28 tokens a call.
    let per_mtok = PRICE_USD / 28.0 * 1_000_000.0;
    format!(
        "[providers.world_a]\ntype = \"openai\"\nbase_url = \"{base}/v1\"\n\n\
         [providers.world_b]\ntype = \"openai\"\nbase_url = \"{base}/v1\"\n\n\
         [models.primary]\nprovider = \"world_a\"\nmodel = \"primary\"\ninput_usd_per_mtok = {per_mtok}\noutput_usd_per_mtok = {per_mtok}\n\n\
         [models.fallback]\nprovider = \"world_b\"\nmodel = \"fallback\"\ninput_usd_per_mtok = {per_mtok}\noutput_usd_per_mtok = {per_mtok}\n"
    )
}

struct Worker {
    child: Child,
}

impl Worker {
    fn start(dir: &Path, database: Option<&str>) -> CliResult<Worker> {
        let exe = std::env::current_exe().map_err(|e| CliError::env(format!("cannot find this binary: {e}")))?;
        let mut cmd = Command::new(exe);
        cmd.args(["worker", "--lease-ms", "2000"])
            .env("CAIRN_DB", dir.join("chaos.db"))
            .env("CAIRN_CONFIG", dir.join("cairn.toml"))
            .env_remove("CAIRN_DATABASE");
        if let Some(url) = database {
            cmd.env("CAIRN_DATABASE", url);
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| CliError::env(format!("cannot start a cairn worker: {e}")))?;
        Ok(Worker { child })
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The durable side: returns how the jobs went and what the world counted. On PostgreSQL
/// (`database`) the schedule's database restart is played: every connection is cut.
async fn durable(
    schedule: &Schedule,
    db: &crate::DbArgs,
    upstream: Option<cairn_chaos::http::Upstream>,
    model_wait: Duration,
    restart_command: Option<&str>,
) -> CliResult<(Outcome, Tally)> {
    let (world, mut orders) =
        Service::start(schedule.clone(), upstream).await.map_err(|e| CliError::env(e.to_string()))?;
    let base = format!("http://{}", world.addr);
    // Removed on every way out, errors included.
    let scratch = tempfile::Builder::new()
        .prefix("cairn-chaos-")
        .tempdir()
        .map_err(|e| CliError::env(format!("cannot create a scratch directory: {e}")))?;
    let dir = scratch.path().to_path_buf();
    std::fs::write(dir.join("cairn.toml"), config(&base)).map_err(|e| CliError::env(e.to_string()))?;
    let database = db.database.as_deref();
    let store = Arc::new(match database {
        Some(_) => db.open().await?,
        None => AnyStore::Sqlite(SqliteStore::open(dir.join("chaos.db"), Durability::Full)?),
    });
    // Its worker would drive whatever runs the database holds, and the restart cuts every
    // connection to it: only a database with no runs yet is taken.
    if database.is_some()
        && !store.list_runs(cairn_store::RunQuery { limit: 1, ..Default::default() }).await?.is_empty()
    {
        return Err(CliError::usage(
            "--database holds runs already: give `cairn chaos` a scratch database (it starts workers on it and cuts \
             its connections)",
        ));
    }
    let engine = Engine::new(store.clone(), EngineConfig::new(cairn_engine::owner_id()), None);
    let definition = cairn_core::validate::parse_definition(&workflow(model_wait), "chaos-job.yaml", engine.kinds())
        .map_err(|p| CliError::env(format!("the chaos workflow does not validate: {p:?}")))?;
    let mut worker = Worker::start(&dir, database)?;
    let started = Instant::now();
    let mut outcome = Outcome::default();
    for job in 0..schedule.jobs {
        if let (Some(url), Some(at)) = (database, schedule.db_restart_at_job)
            && at == job
        {
            match restart_command {
                Some(command) => {
                    // No terminal to ask for a password, its output kept off stdout (the report's),
                    // at most two minutes.
                    let mut child = Command::new("sh")
                        .args(["-c", command])
                        .stdin(Stdio::null())
                        .stdout(Stdio::from(
                            std::io::stderr().as_fd().try_clone_to_owned().map_err(|e| CliError::env(e.to_string()))?,
                        ))
                        .spawn()
                        .map_err(|e| CliError::env(format!("--db-restart-command could not start: {e}")))?;
                    let started = Instant::now();
                    let status = loop {
                        if let Some(status) = child.try_wait().map_err(|e| CliError::env(e.to_string()))? {
                            break status;
                        }
                        if started.elapsed() > Duration::from_secs(120) {
                            let _ = child.kill();
                            let _ = child.wait();
                            return Err(CliError::env(format!(
                                "--db-restart-command `{command}` did not end within 120 s"
                            )));
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    };
                    if !status.success() {
                        return Err(CliError::env(format!("--db-restart-command `{command}` failed ({status})")));
                    }
                    cairn_engine::say!("[chaos] database restart: ran `{command}`");
                }
                None => {
                    let cut = cairn_chaos::restart::cut_connections(url).await.map_err(CliError::env)?;
                    cairn_engine::say!("[chaos] database restart: cut {cut} connection(s)");
                }
            }
        }
        let id = cairn_engine::new_run_id();
        let new = NewRun::inline(definition.clone(), json!({"job": job, "base": base}));
        engine.submit(id.clone(), new, Submit { idempotency: None, drive_here: false }).await?;
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            tokio::select! {
                Some(order) = orders.recv() => {
                    // SIGKILL right after the effect, then the supervisor starts a new process.
                    worker.kill();
                    let _ = order.done.send(());
                    if order.job == job {
                        outcome.recoveries += 1;
                    }
                    worker = Worker::start(&dir, database)?;
                }
                _ = tokio::time::sleep(Duration::from_millis(20)) => {
                    // Right after a connection cut the read may fail: ask again.
                    let Ok(run) = store.get_run(&id).await else { continue };
                    match run.status.as_str() {
                        "COMPLETED" => { outcome.completed += 1; break; }
                        "FAILED" | "CANCELLED" => { outcome.failed += 1; break; }
                        _ if Instant::now() > deadline => { outcome.failed += 1; break; }
                        _ => {}
                    }
                }
            }
        }
    }
    outcome.wall = started.elapsed();
    drop(worker);
    let tally = world.tally();
    drop(scratch);
    Ok((outcome, tally))
}

fn row(mode: &str, jobs: usize, o: &Outcome, t: &Tally) -> Value {
    json!({
        "mode": mode,
        "completed": o.completed,
        "completion_pct": if jobs == 0 { 100.0 } else { 100.0 * o.completed as f64 / jobs as f64 },
        "duplicated_effects": t.duplicated_effects(),
        "wasted_work": t.wasted_work(),
        "cost_usd": t.cost_usd(),
        "wall_s": o.wall.as_secs_f64(),
        "recoveries": o.recoveries,
        // Jobs that ended failed need a person to look at them and run them again.
        "human_interventions": o.failed,
    })
}

pub async fn chaos(db: &crate::DbArgs, args: ChaosArgs) -> CliResult {
    let profile = profile(&args.profile).map_err(CliError::usage)?;
    if args.workflows == 0 || args.workflows > 1_000 {
        return Err(CliError::usage(format!("--workflows {} is out of range: use 1 to 1000", args.workflows)));
    }
    if args.db_restart_command.is_some() && db.database.is_none() {
        return Err(CliError::usage(
            "--db-restart-command restarts a PostgreSQL server: give the workload's database with --database",
        ));
    }
    let schedule = Schedule::new(&profile, args.seed, args.workflows);
    for line in schedule.describe() {
        cairn_engine::say!("[chaos] {line}");
    }
    if schedule.db_restart_at_job.is_some() && db.database.is_none() {
        // A database restart needs a server: with `--database` the workload runs on it.
        cairn_engine::say!("[chaos] (the database restart is played with --database only: this run is on SQLite)");
    }
    cairn_engine::say!("[chaos] naive runner …");
    // A real model is given time to answer; the world's own answers come at once.
    let upstream = args.model.as_deref().map(local_model).transpose()?;
    let model_wait = Duration::from_secs(if upstream.is_some() { 30 } else { 1 });
    if let (Some(alias), Some(up)) = (&args.model, &upstream) {
        cairn_engine::say!("[chaos] the evaluation stage is answered by model {alias} at {} ({})", up.addr, up.model);
    }
    let (world, mut orders) =
        Service::start(schedule.clone(), upstream.clone()).await.map_err(|e| CliError::env(e.to_string()))?;
    let naive = cairn_chaos::naive::run(world.addr, args.workflows, &mut orders, model_wait).await;
    let naive = row("naive", args.workflows, &naive, &world.tally());
    drop(world);
    cairn_engine::say!("[chaos] cairn (a cairn worker process, SIGKILLed at each kill) …");
    let (outcome, tally) = durable(&schedule, db, upstream, model_wait, args.db_restart_command.as_deref()).await?;
    let durable = row("cairn", args.workflows, &outcome, &tally);
    let report = json!({"schedule": schedule, "rows": [naive, durable]});
    if args.json {
        crate::out!("{}", serde_json::to_string_pretty(&report).unwrap_or_default());
    } else {
        crate::out!("{}", table(&report));
    }
    Ok(())
}

fn table(report: &Value) -> String {
    let mut out = String::from(
        "| mode | completion | duplicated effects | wasted work | cost | wall time | recoveries | human interventions |\n\
         |---|---|---|---|---|---|---|---|\n",
    );
    let rows = report["rows"].as_array().cloned().unwrap_or_default();
    for r in &rows {
        out.push_str(&format!(
            "| {} | {:.0} % | {} | {} | ${:.4} | {:.1} s | {} | {} |\n",
            r["mode"].as_str().unwrap_or(""),
            r["completion_pct"].as_f64().unwrap_or(0.0),
            r["duplicated_effects"],
            r["wasted_work"],
            r["cost_usd"].as_f64().unwrap_or(0.0),
            r["wall_s"].as_f64().unwrap_or(0.0),
            r["recoveries"],
            r["human_interventions"],
        ));
    }
    if let [naive, cairn] = rows.as_slice() {
        let d = |k: &str| cairn[k].as_f64().unwrap_or(0.0) - naive[k].as_f64().unwrap_or(0.0);
        out.push_str(&format!(
            "| **delta** | {:+.0} pts | {:+} | {:+} | ${:+.4} | {:+.1} s | {:+} | {:+} |\n",
            d("completion_pct"),
            d("duplicated_effects"),
            d("wasted_work"),
            d("cost_usd"),
            d("wall_s"),
            d("recoveries"),
            d("human_interventions"),
        ));
    }
    out
}
