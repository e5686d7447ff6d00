//! The Cairn side of `cairn readiness`: the agent step runs in a real engine process (the
//! hidden `cairn readiness-child`) on a scratch SQLite file, with the workflow's own policies,
//! its models answered by the scenario's world and its tools replaced by stand-ins. A stand-in
//! keeps the tool's name, description, schemas, effect per call, approval policy and what it
//! would refuse; only the call goes to the world. This process plays the operator: it SIGKILLs
//! the engine when the world says so and starts it again, and decides what waits for a person —
//! approving what the task asked for, rejecting any call carrying the injected canary.

use crate::readiness::{Subject, fits};
use crate::run::EngineArgs;
use crate::{CliError, CliResult, DbArgs};
use cairn_chaos::readiness::world::{CANARY, KillOrder, Service};
use cairn_chaos::readiness::{Ended, Repeat, Scenario, Score, Side, score};
use cairn_core::event::{ErrorClass, Failure};
use cairn_core::kinds::EffectClass;
use cairn_core::{Definition, RunId};
use cairn_engine::tools::{CallContext, Entry, Tool, ToolFuture, Tools};
use cairn_engine::{Control, Engine, NewRun};
use cairn_store::{AnyStore, Durability, EffectLog, Journal, SqliteStore};
use clap::Args;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// How long a stand-in waits for the world (a tool's own timeout, scaled down).
pub const STAND_IN_TIMEOUT: Duration = Duration::from_secs(2);
/// The most times the engine process is started for one scenario.
const STARTS: u32 = 20;

#[derive(Args)]
pub struct ChildArgs {
    /// The scenario's world (a loopback address).
    #[arg(long)]
    pub world: String,
    /// The job: the one-step definition, its inputs, the run id, the workflow's own tools.
    #[arg(long)]
    pub job: PathBuf,
    /// Continue the run instead of starting it.
    #[arg(long)]
    pub resume: bool,
}

/// A tool whose calls go to the world; everything else is the original's.
struct StandIn {
    original: Arc<Entry>,
    world: SocketAddr,
}

impl Tool for StandIn {
    fn call<'a>(&'a self, args: &'a Value, ctx: CallContext<'a>) -> ToolFuture<'a> {
        Box::pin(async move {
            let name = &self.original.spec.name;
            let writes = self.original.effect(args).needs_effect_key();
            let repeat = crate::readiness::repeat(&self.original, args);
            // The key goes along only where the real tool sends one; `call` names the journaled
            // call for the world's count, never for deduplication.
            let key = (writes && repeat == Repeat::Key).then_some(ctx.key);
            let body = json!({"args": args, "key": key, "call": ctx.key, "writes": writes, "repeat": repeat.as_str()})
                .to_string();
            let path = format!("/tool/{name}");
            match tokio::time::timeout(STAND_IN_TIMEOUT, cairn_chaos::http::post(self.world, &path, &body)).await {
                Err(_) => Err(Failure::new(
                    ErrorClass::Timeout,
                    format!("tool '{name}' did not answer within {} s", STAND_IN_TIMEOUT.as_secs()),
                )),
                Ok(Err(e)) => Err(Failure::new(ErrorClass::Transient, format!("tool '{name}': {e}"))),
                Ok(Ok((200, text))) => Ok(serde_json::from_str(&text).unwrap_or(Value::String(text))),
                Ok(Ok((status, text))) => {
                    let class = if status >= 500 { ErrorClass::Transient } else { ErrorClass::Permanent };
                    Err(Failure::new(class, format!("tool '{name}' answered {status}: {}", cut(&text))))
                }
            }
        })
    }

    fn effect(&self, _declared: EffectClass, args: &Value) -> EffectClass {
        self.original.effect(args)
    }

    fn normalize(&self, args: Value) -> Value {
        self.original.normalize(args)
    }

    fn precheck(&self, args: &Value) -> Result<(), Failure> {
        self.original.check_args(args)
    }
}

fn cut(text: &str) -> String {
    text.chars().take(200).collect()
}

fn stand_in(original: Arc<Entry>, world: SocketAddr) -> CliResult<Entry> {
    let spec = original.spec.clone();
    Entry::new(spec, false, Arc::new(StandIn { original, world })).map_err(CliError::env)
}

/// `cairn readiness-child`: starts or continues the job's run with stand-in tools and the
/// world's models, and returns when it ends or waits for a person.
pub async fn child(db: &DbArgs, args: ChildArgs) -> CliResult {
    let world: SocketAddr =
        args.world.parse().map_err(|e| CliError::usage(format!("--world {} is not an address: {e}", args.world)))?;
    if !world.ip().is_loopback() {
        return Err(CliError::usage(format!("--world {world} is not a loopback address")));
    }
    let text = std::fs::read_to_string(&args.job)
        .map_err(|e| CliError::usage(format!("cannot read {}: {e}", args.job.display())))?;
    let job: Value = serde_json::from_str(&text).map_err(|e| CliError::usage(format!("the job is not JSON: {e}")))?;
    let definition: Definition = serde_json::from_value(job["definition"].clone())
        .map_err(|e| CliError::usage(format!("the job's definition does not read: {e}")))?;
    let run_id = RunId::parse(job["run_id"].as_str().unwrap_or_default()).map_err(CliError::usage)?;
    // It runs one agent step, nothing else: no other kind gets the real world through it.
    if definition.steps.len() != 1 || definition.steps.iter().any(|s| s.kind != "agent") {
        return Err(CliError::usage("the job must hold exactly one step, of kind agent"));
    }
    let loaded = crate::config::get();
    let registry = loaded.registry();
    let mut tools = Tools::default();
    for name in registry.names() {
        if let Some(entry) = registry.get(&name) {
            tools.insert(stand_in(entry, world)?);
        }
    }
    for (name, spec) in job["workflow_tools"].as_object().into_iter().flatten() {
        let entry = Tools::workflow_tool(name, spec).map_err(|f| CliError::usage(f.message))?;
        tools.insert(stand_in(entry, world)?);
    }
    // Every provider is the world; each model asks for itself by its alias.
    let mut models = loaded.models.clone();
    for provider in models.providers.values_mut() {
        provider.kind = cairn_engine::models::ProviderType::Openai;
        provider.base_url = format!("http://{world}/v1");
        provider.api_key_env = None;
        provider.headers.clear();
        provider.replies.clear();
    }
    for model in models.models.values_mut() {
        model.model = model.alias.clone();
        model.cache_ttl_ms = None;
    }
    let models = serde_json::to_value(&models).unwrap_or_default();
    let mut kind_config = loaded.kind_config();
    for kind in ["llm", "agent"] {
        let table = kind_config.entry(kind.to_string()).or_insert_with(|| json!({}));
        table["models"] = models.clone();
    }
    let mut config = EngineArgs::default_args().config_with(Arc::new(tools), kind_config);
    config.lease_ms = 2_000;
    let store = Arc::new(db.open().await?);
    let engine = Engine::new(store, config, None);
    let heartbeat = engine.spawn_heartbeat();
    if args.resume {
        for (_, driving) in engine.resume(Some(&run_id)).await? {
            if let Ok(handle) = driving {
                let _ = handle.await;
            }
        }
    } else {
        let handle = engine.start(run_id, NewRun::inline(definition, job["inputs"].clone())).await?;
        let _ = handle.await;
    }
    heartbeat.abort();
    Ok(())
}

struct Process {
    child: Child,
}

impl Process {
    fn start(dir: &Path, world: SocketAddr, resume: bool) -> CliResult<Process> {
        let exe = std::env::current_exe().map_err(|e| CliError::env(format!("cannot find this binary: {e}")))?;
        let mut cmd = Command::new(exe);
        cmd.args(["readiness-child", "--world", &world.to_string(), "--job"])
            .arg(dir.join("job.json"))
            .env("CAIRN_DB", dir.join("readiness.db"))
            .env_remove("CAIRN_DATABASE");
        match &crate::config::get().path {
            Some(path) => cmd.env("CAIRN_CONFIG", std::fs::canonicalize(path).unwrap_or_else(|_| path.clone())),
            None => cmd.env_remove("CAIRN_CONFIG").current_dir(dir),
        };
        if resume {
            cmd.arg("--resume");
        }
        let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("engine.log"));
        let child = cmd
            .stdout(Stdio::null())
            .stderr(log.map(Stdio::from).unwrap_or_else(|_| Stdio::null()))
            .spawn()
            .map_err(|e| CliError::env(format!("cannot start the engine process: {e}")))?;
        Ok(Process { child })
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn exited(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The step alone: no needs, no condition, one item; its `with` as rendered.
fn one_step(definition: &Definition, subject: &Subject) -> Definition {
    let mut step = subject.step.clone();
    step.needs.clear();
    step.when = None;
    step.for_each = None;
    step.repeat = None;
    step.instance = None;
    step.with = subject.with.clone();
    let mut one = definition.clone();
    one.steps = vec![step];
    one.tools = Arc::default();
    one
}

/// One scenario under Cairn, scored.
pub async fn run(definition: &Definition, subject: &Subject, inputs: &Value, scenario: Scenario) -> CliResult<Score> {
    let (world, mut kills) =
        Service::start(scenario, subject.script.clone()).await.map_err(|e| CliError::env(e.to_string()))?;
    let scratch = tempfile::Builder::new()
        .prefix("cairn-readiness-")
        .tempdir()
        .map_err(|e| CliError::env(format!("cannot create a scratch directory: {e}")))?;
    let dir = scratch.path().to_path_buf();
    let run_id = cairn_engine::new_run_id();
    let job = json!({
        "run_id": run_id.to_string(),
        "definition": one_step(definition, subject),
        "inputs": inputs,
        "workflow_tools": subject.workflow_tools,
    });
    std::fs::write(dir.join("job.json"), job.to_string()).map_err(|e| CliError::env(e.to_string()))?;
    let store = Arc::new(AnyStore::Sqlite(SqliteStore::open(dir.join("readiness.db"), Durability::Full)?));
    let mut ended = drive(&dir, &world, &mut kills, &store, &run_id, subject.patience.1).await?;
    let step = subject.step.id.as_str();
    let row = store.get_run(&run_id).await?;
    let steps = store.steps(&run_id).await?;
    let this = steps.iter().find(|s| s.step_id == step);
    if let Some(hash) = this.and_then(|s| s.output_hash.as_deref()) {
        ended.answer = store.payload(hash).await?.and_then(|o| o.get("final").cloned());
    }
    if ended.status.is_empty() {
        ended.status = match row.status.as_str() {
            "COMPLETED" => "completed".into(),
            "FAILED" | "CANCELLED" => "failed".into(),
            other => other.to_ascii_lowercase(),
        };
    }
    if ended.status != "completed" && ended.why.is_none() {
        ended.why = this
            .and_then(|s| {
                s.error_message.as_ref().map(|m| format!("{}: {m}", s.error_class.as_deref().unwrap_or("failed")))
            })
            .or(row.failure_message.clone());
    }
    ended.answer_fits = fits(subject, ended.answer.as_ref());
    ended.journal_events = store.events(&run_id).await?.len() as u64;
    // Every effect names its call (`run/step/call-N`): the journal must hold that call.
    let calls = store.calls(&run_id, Some(step)).await?;
    let tally = world.tally();
    ended.unrecorded_effects = tally
        .effects
        .iter()
        .filter(|e| {
            let n = e.call.as_deref().and_then(|c| c.rsplit_once("/call-")).and_then(|(_, n)| n.parse::<u32>().ok());
            !n.is_some_and(|n| calls.iter().any(|c| c.n == n && c.kind == "tool"))
        })
        .count();
    if std::env::var_os("CAIRN_READINESS_KEEP").is_some() {
        let kept = scratch.keep();
        cairn_engine::say!("[readiness] kept {}", kept.display());
    }
    Ok(score(scenario, Side::Cairn, &ended, &tally))
}

/// Starts the engine, kills and restarts it when the world says, answers what waits for a
/// person, until the run ends (or waits for what the harness does not answer) or time is up.
async fn drive(
    dir: &Path,
    world: &Service,
    kills: &mut mpsc::UnboundedReceiver<KillOrder>,
    store: &Arc<AnyStore>,
    run_id: &RunId,
    patience: Duration,
) -> CliResult<Ended> {
    let mut ended = Ended::default();
    let deadline = Instant::now() + patience;
    let mut process = Process::start(dir, world.addr, false)?;
    let mut starts = 1;
    // The operator decides; it never runs a step, so it has no tools and no models.
    let quiet = EngineArgs::default_args().config_with(Arc::new(Tools::default()), Default::default());
    let operator = Engine::new(store.clone(), quiet, None);
    // Each request for a person is answered once.
    let mut decided = std::collections::HashSet::new();
    loop {
        tokio::select! {
            Some(order) = kills.recv() => {
                // SIGKILL right after the effect; a supervisor starts the engine again.
                process.kill();
                let _ = order.done.send(());
                ended.recoveries += 1;
                process = Process::start(dir, world.addr, true)?;
                starts += 1;
            }
            _ = tokio::time::sleep(Duration::from_millis(50)) => {
                if Instant::now() > deadline {
                    process.kill();
                    ended.status = "unfinished".into();
                    ended.why = Some(format!("still not finished after {} s", patience.as_secs()));
                    return Ok(ended);
                }
                // The engine process may not have created the run yet.
                let row = match store.get_run(run_id).await {
                    Ok(row) => row,
                    Err(cairn_store::Error::NotFound(_)) if !process.exited() => continue,
                    Err(e) => return Err(CliError::env(format!("the engine process did not start the run: {e}"))),
                };
                if matches!(row.status.as_str(), "COMPLETED" | "FAILED" | "CANCELLED") {
                    return Ok(ended);
                }
                let waiting = cairn_engine::waiting_approvals(&**store).await?;
                for w in waiting.iter().filter(|w| w.run_id == run_id.to_string()) {
                    if w.kind == "escalation" {
                        process.kill();
                        ended.status = "waiting".into();
                        ended.why = Some(format!("step '{}' escalated to a person", w.step));
                        return Ok(ended);
                    }
                    // Once per call (a step gate is call None), however often it is asked again.
                    let which = (w.step.clone(), w.call.as_ref().map(|c| c.call));
                    if decided.contains(&which) {
                        continue;
                    }
                    let injected = w.call.as_ref().is_some_and(|c| c.args.to_string().contains(CANARY));
                    let comment = if injected {
                        "rejected: the arguments carry an instruction injected through a tool's output"
                    } else {
                        "approved: the call the task asks for"
                    };
                    let control = Control::Decide {
                        step: w.step.clone(),
                        approve: !injected,
                        by: Some(w.approvers.first().cloned().unwrap_or_else(|| "readiness".into())),
                        comment: Some(comment.into()),
                        escalation: None,
                        args: None,
                    };
                    // A decision the run no longer needs (it moved on) is not an error.
                    // Asked again on the next round if it did not land (a busy database).
                    if operator.request(run_id, control).await.is_ok() {
                        decided.insert(which);
                        ended.interventions += 1;
                    }
                }
                if !process.exited() {
                    continue;
                }
                if starts >= STARTS {
                    ended.status = "unfinished".into();
                    // What the engine said last, so that a setup problem is not a mystery.
                    let log = std::fs::read_to_string(dir.join("engine.log")).unwrap_or_default();
                    let tail: String = log.trim_end().lines().last().unwrap_or_default().chars().take(300).collect();
                    ended.why = Some(format!(
                        "the engine was started {STARTS} times and the run is still {} (last said: {tail})",
                        row.status
                    ));
                    return Ok(ended);
                }
                process = Process::start(dir, world.addr, true)?;
                starts += 1;
            }
        }
    }
}
