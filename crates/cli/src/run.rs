//! `cairn run`, `cairn resume`, `cairn validate`, `cairn plan`.

use crate::output::{self, Paint};
use crate::{CliError, CliResult, DbArgs};
use cairn_core::catalog::Catalog;
use cairn_core::event::{Chaos, PlanInfo, RunOptions, RunSource};
use cairn_core::{Definition, RunId, RunStatus};
use cairn_engine::{Control, Engine, EngineConfig, NewRun, RunOutcome};
use cairn_store::AnyStore;
use clap::Args;
use serde_json::{Map, Value, json};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::sync::mpsc;

#[derive(Args)]
pub struct RunArgs {
    /// Workflow definition (YAML or JSON). Omit it and give --goal instead.
    pub file: Option<PathBuf>,
    /// A goal for the planner, e.g. "generate summary and send email".
    #[arg(long, conflicts_with = "file")]
    pub goal: Option<String>,
    /// An input, `name=value` (value parsed as JSON if it can be, else a string). Repeatable.
    #[arg(long = "input", short = 'i', value_name = "NAME=VALUE")]
    pub inputs: Vec<String>,
    /// Extra step templates for the planner (YAML), on top of the built-in catalog.
    #[arg(long)]
    pub catalog: Option<PathBuf>,
    /// Who turns the goal into a plan: the deterministic catalog matcher, or the configured
    /// default model choosing from the same catalog.
    #[arg(long, value_enum, default_value = "catalog", requires = "goal")]
    pub planner: Planner,
    /// Seeded failure injection for every attempt: `seed=42,rate=0.2`.
    #[arg(long)]
    pub chaos: Option<String>,
    #[command(flatten)]
    pub engine: EngineArgs,
    /// Outputs larger than this many bytes fail their step permanently.
    #[arg(long, default_value_t = 1024 * 1024)]
    pub max_output_bytes: u64,
    /// Where to write the final output (overrides the definition's `artifact`).
    #[arg(long)]
    pub artifact: Option<PathBuf>,
    /// Print the outcome as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Start the run and return at once, printing its id on stdout: a `cairn serve` or
    /// `cairn worker` on this database drives it (or `cairn resume ID` here).
    #[arg(long, conflicts_with_all = ["json", "artifact"])]
    pub detach: bool,
}

#[derive(Args, Clone)]
pub struct EngineArgs {
    /// Activities allowed to run at once.
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// Lease length in ms: how long another process waits before taking over a run whose owner
    /// stopped heartbeating (a dead process on this host is detected at once).
    #[arg(long, default_value_t = 30_000)]
    pub lease_ms: u64,
}

impl EngineArgs {
    /// The defaults, for commands that do not take engine flags.
    pub fn default_args() -> Self {
        EngineArgs { concurrency: 16, lease_ms: 30_000 }
    }

    pub fn config(&self) -> EngineConfig {
        self.config_with(crate::config::get().registry(), crate::config::get().kind_config())
    }

    /// The config with these tools and kind settings instead of the config file's.
    pub fn config_with(
        &self,
        tools: Arc<cairn_engine::tools::Tools>,
        kind_config: std::collections::BTreeMap<String, Value>,
    ) -> EngineConfig {
        let mut config = EngineConfig::new(cairn_engine::owner_id());
        config.concurrency = self.concurrency.max(1);
        config.lease_ms = self.lease_ms.max(1_000);
        config.hold_after_activity = std::env::var("CAIRN_TEST_HOLD_AFTER_ACTIVITY").ok();
        config.hold_after_call = std::env::var("CAIRN_TEST_HOLD_AFTER_CALL").ok();
        config.secrets = std::sync::Arc::new(crate::config::get().secret_source());
        config.kind_config = kind_config;
        let mut kinds = cairn_engine::kinds::with_tools(tools.clone());
        for (name, kind) in &crate::config::get().external {
            kinds = kinds.with(cairn_engine::kinds::External { name: name.clone(), kind: kind.clone() });
        }
        config.kinds = std::sync::Arc::new(kinds);
        config.tools = tools;
        config
    }
}

#[derive(Args)]
pub struct PlanArgs {
    #[arg(long, required_unless_present = "list")]
    pub goal: Option<String>,
    /// Extra step templates for the planner (YAML), on top of the built-in catalog.
    #[arg(long)]
    pub catalog: Option<PathBuf>,
    /// Who turns the goal into a plan: the catalog matcher, or the configured default model.
    #[arg(long, value_enum, default_value = "catalog")]
    pub planner: Planner,
    /// List what the catalog can plan.
    #[arg(long)]
    pub list: bool,
    /// Print the plan as a workflow definition file and nothing else: `cairn validate` and
    /// `cairn run FILE` take it as written (the goal and what it matched are its description).
    #[arg(long, value_enum, conflicts_with = "json")]
    pub format: Option<PlanFormat>,
    /// Machine output: the goal, the entries it matched, what it left out, and the definition
    /// (the same document as --format json).
    #[arg(long)]
    pub json: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Planner {
    Catalog,
    Model,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum PlanFormat {
    Yaml,
    Json,
}

#[derive(Args)]
pub struct ResumeArgs {
    /// One run to resume; without it, every interrupted run that nobody else is driving.
    pub id: Option<String>,
    #[command(flatten)]
    pub engine: EngineArgs,
    #[arg(long)]
    pub json: bool,
}

fn read_file(path: &Path) -> CliResult<String> {
    std::fs::read_to_string(path).map_err(|e| CliError::usage(format!("cannot read {}: {e}", path.display())))
}

/// Reads and validates a definition file; its warnings (literal credentials …) go to stderr.
pub fn load_definition(path: &Path) -> CliResult<Definition> {
    load_checked(path, None)
}

/// As [`load_definition`], also refusing `subworkflow` targets that do not exist (`targets`).
pub fn load_checked(path: &Path, targets: Option<&crate::workflows::Targets>) -> CliResult<Definition> {
    let source = read_file(path)?;
    let (definition, warnings) = cairn_core::validate::parse_definition_checking(
        &source,
        &path.display().to_string(),
        crate::kinds::kinds(),
        &|with| targets.and_then(|t| t.check(path, with)),
    );
    for w in &warnings {
        cairn_engine::say!("{}", w.as_warning());
    }
    definition.map_err(|problems| {
        let mut msg = format!("{} is not a valid workflow ({} problem(s)):", path.display(), problems.len());
        for p in &problems {
            msg.push_str(&format!("\n  {p}"));
        }
        CliError::usage(msg)
    })
}

/// The built-in catalog with `extra` merged over it; with a `default_model` configured, its model
/// templates call that model instead of the stand-in.
pub(crate) fn load_catalog(extra: Option<&Path>) -> CliResult<Catalog> {
    let mut catalog = Catalog::builtin().map_err(|e| CliError::env(format!("built-in catalog is broken: {e}")))?;
    if let Some(path) = extra {
        let source = read_file(path)?;
        let user = Catalog::from_yaml(&source, &path.display().to_string()).map_err(CliError::usage)?;
        catalog.merge(user);
    }
    if let Some(model) = &crate::config::get().models.default_model {
        catalog.with_model(model);
    }
    Ok(catalog)
}

/// A goal's plan, from the catalog matcher or from the default model (with the calls it made).
async fn plan_goal(
    catalog: &Catalog,
    goal: &str,
    planner: Planner,
) -> CliResult<(Definition, PlanInfo, Vec<cairn_store::CallRow>)> {
    match planner {
        Planner::Catalog => catalog
            .plan(goal, crate::kinds::kinds())
            .map(|(d, i)| (d, i, Vec::new()))
            .map_err(|e| CliError::usage(e.to_string())),
        Planner::Model => {
            use cairn_engine::planner::ModelPlanError;
            cairn_engine::planner::plan(&crate::config::get().models, catalog, crate::kinds::kinds(), goal)
                .await
                .map(|p| (p.definition, p.info, p.calls))
                .map_err(|e| match e {
                    ModelPlanError::Call(_) => CliError::env(e.to_string()),
                    _ => CliError::usage(e.to_string()),
                })
        }
    }
}

pub fn parse_inputs(pairs: &[String]) -> CliResult<Map<String, Value>> {
    let mut map = Map::new();
    for pair in pairs {
        let (k, v) = pair.split_once('=').ok_or_else(|| {
            CliError::usage(format!("--input '{pair}' is not NAME=VALUE (e.g. --input topic=otters)"))
        })?;
        let k = k.trim();
        if k.is_empty() {
            return Err(CliError::usage(format!("--input '{pair}' has an empty name")));
        }
        let value = serde_json::from_str(v).unwrap_or_else(|_| Value::String(v.to_string()));
        map.insert(k.to_string(), value);
    }
    Ok(map)
}

pub fn parse_chaos(spec: &str) -> CliResult<Chaos> {
    let bad = |why: &str| CliError::usage(format!("--chaos '{spec}': {why} (expected seed=N,rate=0.0..1.0)"));
    let (mut seed, mut rate) = (None, None);
    for part in spec.split(',') {
        let (k, v) = part.split_once('=').ok_or_else(|| bad("each part must be key=value"))?;
        match k.trim() {
            "seed" => seed = Some(v.trim().parse::<u64>().map_err(|_| bad("seed must be a whole number"))?),
            "rate" => {
                let r = v.trim().parse::<f64>().map_err(|_| bad("rate must be a number"))?;
                if !(0.0..=1.0).contains(&r) {
                    return Err(bad("rate must be between 0 and 1"));
                }
                rate = Some(r);
            }
            other => return Err(bad(&format!("unknown key '{other}'"))),
        }
    }
    Ok(Chaos { seed: seed.ok_or_else(|| bad("seed is missing"))?, rate: rate.ok_or_else(|| bad("rate is missing"))? })
}

pub async fn validate(db: &DbArgs, files: &[PathBuf]) -> CliResult {
    let targets = crate::workflows::Targets::load(db).await;
    let mut total = 0;
    for path in files {
        let source = match std::fs::read_to_string(path) {
            Ok(s) => s,
            Err(e) => {
                cairn_engine::say!("{}: cannot read: {e}", path.display());
                total += 1;
                continue;
            }
        };
        let (definition, warnings) = cairn_core::validate::parse_definition_checking(
            &source,
            &path.display().to_string(),
            crate::kinds::kinds(),
            &|with| targets.check(path, with),
        );
        // Warnings do not change the exit code: the file is valid.
        for w in &warnings {
            crate::out!("{}", w.as_warning());
        }
        match definition {
            Ok(def) => crate::out!("{}: ok ({} v{}, {} steps)", path.display(), def.name, def.version, def.steps.len()),
            Err(problems) => {
                for p in &problems {
                    crate::out!("{p}");
                }
                total += problems.len();
            }
        }
    }
    if total > 0 { Err(CliError::usage(format!("{total} problem(s) found"))) } else { Ok(()) }
}

pub async fn plan(args: PlanArgs) -> CliResult {
    let catalog = load_catalog(args.catalog.as_deref())?;
    if args.list {
        for line in catalog.describe() {
            crate::out!("{line}");
        }
        return Ok(());
    }
    let goal = args.goal.unwrap_or_default();
    let (def, info, _) = plan_goal(&catalog, &goal, args.planner).await?;
    let document = crate::plan_file::plan_document(&def, &info);
    if let Some(format) = args.format {
        match format {
            PlanFormat::Yaml => crate::output::out(format_args!("{}", crate::plan_file::yaml(&document))),
            PlanFormat::Json => crate::out!("{}", document.json()),
        }
    } else if args.json {
        #[derive(serde::Serialize)]
        struct Machine<'a> {
            goal: &'a str,
            plan: &'a [String],
            left_out: &'a [cairn_core::event::LeftOut],
            #[serde(skip_serializing_if = "Option::is_none")]
            planner: Option<&'a str>,
            definition: &'a crate::plan_file::Doc,
        }
        let machine = Machine {
            goal: &info.goal,
            plan: &info.matched,
            left_out: &info.left_out,
            planner: info.planner.as_deref(),
            definition: &document,
        };
        crate::out!("{}", serde_json::to_string_pretty(&machine).unwrap_or_default());
    } else {
        crate::out!("goal: {}", info.goal);
        if let Some(planner) = &info.planner {
            crate::out!("planned by {planner}");
        }
        for s in &def.steps {
            let needs = if s.needs.is_empty() {
                String::new()
            } else {
                format!(" (after {})", s.needs.iter().map(|n| n.as_str()).collect::<Vec<_>>().join(", "))
            };
            crate::out!("  {} [{}]{needs}", s.id, s.kind);
        }
        if let Some(left_out) = info.left_out_text() {
            crate::out!("{left_out}");
        }
    }
    Ok(())
}

async fn open_engine(db: &DbArgs, engine: &EngineArgs) -> CliResult<(Engine<AnyStore>, tokio::task::JoinHandle<()>)> {
    let store = Arc::new(db.open().await?);
    let (tx, rx) = mpsc::unbounded_channel();
    let interactive = std::io::stdin().is_terminal() && std::io::stderr().is_terminal();
    let (ask_tx, ask_rx) = mpsc::unbounded_channel();
    let printer = tokio::spawn(output::print_progress(rx, interactive.then_some(ask_tx), store.clone()));
    let engine = Engine::new(store, engine.config(), Some(tx));
    engine.sync_clock().await;
    if interactive {
        tokio::spawn(ask_on_terminal(engine.clone(), ask_rx));
    }
    Ok((engine, printer))
}

/// On a terminal, approval gates are answered right there: `y` approves, anything else is a
/// rejection reason (empty input leaves the request waiting for `cairn approve`/the API).
async fn ask_on_terminal(engine: Engine<AnyStore>, mut asks: mpsc::UnboundedReceiver<output::Ask>) {
    while let Some((run, step, prompt)) = asks.recv().await {
        let question = format!(
            "? {prompt}\n  approve {step}? [y = approve, text = reject with that reason, empty = decide later] "
        );
        let answer = tokio::task::spawn_blocking(move || {
            let _ = std::io::Write::write_all(&mut std::io::stderr(), question.as_bytes());
            let mut line = String::new();
            std::io::stdin().read_line(&mut line).map(|_| line.trim().to_string())
        })
        .await;
        let Ok(Ok(answer)) = answer else { continue };
        let by = Some(std::env::var("USER").unwrap_or_else(|_| "terminal".into()));
        let control = match answer.as_str() {
            "" => continue,
            "y" | "yes" => Control::Decide { step, approve: true, by, comment: None, escalation: None, args: None },
            reason => Control::Decide {
                step,
                approve: false,
                by,
                comment: Some(reason.to_string()),
                escalation: None,
                args: None,
            },
        };
        if let Err(e) = engine.request(&run, control).await {
            cairn_engine::say!("error: {e}");
        }
    }
}

pub async fn run(db: &DbArgs, args: RunArgs) -> CliResult {
    let mut planning = Vec::new();
    let (definition, source, plan): (Definition, RunSource, Option<PlanInfo>) = match (&args.file, &args.goal) {
        (Some(path), None) => {
            // The children it names are checked now, not only when their step comes; its path is
            // kept whole, so a `with.file` is found from any process's working directory.
            let targets = crate::workflows::Targets::load(db).await;
            let definition = load_checked(path, Some(&targets))?;
            let whole = std::fs::canonicalize(path).unwrap_or_else(|_| path.clone());
            (definition, RunSource::Definition { path: Some(whole.display().to_string()) }, None)
        }
        (None, Some(goal)) => {
            let catalog = load_catalog(args.catalog.as_deref())?;
            let (def, info, calls) = plan_goal(&catalog, goal, args.planner).await?;
            planning = calls;
            (def, RunSource::Goal { goal: goal.clone() }, Some(info))
        }
        _ => return Err(CliError::usage("give a workflow FILE or --goal \"...\" (see cairn run --help)")),
    };
    let mut given = parse_inputs(&args.inputs)?;
    if let Some(goal) = &args.goal {
        given.entry("goal").or_insert_with(|| Value::String(goal.clone()));
    }
    let inputs = definition.resolve_inputs(&given).map_err(|e| {
        let hint = if e.missing.is_empty() { "" } else { ": pass them with --input NAME=VALUE" };
        CliError::usage(format!("{e}{hint}"))
    })?;
    let chaos = args.chaos.as_deref().map(parse_chaos).transpose()?;
    let options = RunOptions { chaos, max_output_bytes: args.max_output_bytes };
    let new =
        NewRun { definition, source, plan, inputs, options, reused: Vec::new(), reused_payloads: Vec::new(), planning };
    if args.detach {
        return detach(db, &args.engine, new).await;
    }
    let (engine, printer) = open_engine(db, &args.engine).await?;
    let heartbeat = engine.spawn_heartbeat();
    let run_id = cairn_engine::new_run_id();
    let handle = engine.start(run_id.clone(), new).await?;
    let outcome = follow(&engine, &run_id, handle).await;
    heartbeat.abort();
    drop(engine);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), printer).await;
    finish(outcome?, args.artifact.as_deref(), args.json)
}

/// `cairn run --detach`: creates the run for any worker, prints its id on stdout and says who
/// will drive it.
async fn detach(db: &DbArgs, engine_args: &EngineArgs, new: NewRun) -> CliResult {
    let store = Arc::new(db.open().await?);
    let engine = Engine::new(store, engine_args.config(), None);
    let run_id = cairn_engine::new_run_id();
    let submit = cairn_engine::Submit { idempotency: None, drive_here: false };
    engine.submit(run_id.clone(), new, submit).await?;
    crate::out!("{run_id}");
    let workers = engine.live_workers().await?;
    match workers.first() {
        Some(w) => {
            cairn_engine::say!("[workflow] id={run_id} started; a worker drives it (cairn {} {})", w.role, w.owner)
        }
        None => cairn_engine::say!(
            "[workflow] id={run_id} started; no cairn serve or worker runs on this database yet: \
             `cairn resume {run_id}` drives it here, or start `cairn serve` / `cairn worker`"
        ),
    }
    Ok(())
}

/// Waits for a run, or for Ctrl-C (then releases the lease so `cairn resume` can continue).
async fn follow(
    engine: &Engine<AnyStore>,
    run_id: &RunId,
    handle: tokio::task::JoinHandle<Result<RunOutcome, cairn_engine::Error>>,
) -> CliResult<RunOutcome> {
    tokio::select! {
        joined = handle => match joined {
            Ok(r) => Ok(r?),
            Err(e) => Err(CliError::env(format!("run {run_id} driver stopped: {e}"))),
        },
        _ = tokio::signal::ctrl_c() => {
            let _ = engine.release().await;
            cairn_engine::say!("[workflow] id={run_id} interrupted; `cairn resume {run_id}` continues it");
            Err(CliError { code: 130, message: String::new() })
        }
    }
}

fn finish(outcome: RunOutcome, artifact: Option<&Path>, json_out: bool) -> CliResult {
    let paint = Paint(output::colour_enabled());
    let target = artifact.map(Path::to_path_buf).or_else(|| outcome.artifact.as_ref().map(PathBuf::from));
    let mut artifact_path = None;
    // Steps whose output carries a decision say it plainly.
    if let Some(Value::Object(steps)) = &outcome.output {
        for (step, out) in steps {
            if let Some(d) = out.get("decision").or_else(|| out.get("data").and_then(|d| d.get("decision"))) {
                cairn_engine::say!("[step] {step}={}", d.as_str().map(str::to_string).unwrap_or_else(|| d.to_string()));
            }
        }
    }
    if outcome.status == RunStatus::Completed
        && let Some(path) = target
    {
        let doc = json!({"run_id": outcome.run_id, "status": outcome.status, "output": outcome.output});
        let text = serde_json::to_string_pretty(&doc).unwrap_or_default();
        std::fs::write(&path, text + "\n").map_err(|e| {
            CliError::env(format!("run completed but the artifact {} could not be written: {e}", path.display()))
        })?;
        cairn_engine::say!("[artifact] {}", path.display());
        artifact_path = Some(path);
    }
    if json_out {
        let doc = json!({
            "run_id": outcome.run_id,
            "status": outcome.status,
            "failure": outcome.failure,
            "output": outcome.output,
            "artifact": artifact_path,
        });
        crate::out!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
    }
    match outcome.status {
        RunStatus::Completed => Ok(()),
        status => Err(CliError::failed(format!(
            "run {} ended {}{}; `cairn runs show {}` has the details",
            outcome.run_id,
            paint.red(status.as_str()),
            outcome.failure.map(|f| format!(": {}", f.message)).unwrap_or_default(),
            outcome.run_id
        ))),
    }
}

pub async fn resume(db: &DbArgs, args: ResumeArgs) -> CliResult {
    let only = args.id.as_deref().map(RunId::parse).transpose().map_err(CliError::usage)?;
    let (engine, printer) = open_engine(db, &args.engine).await?;
    let heartbeat = engine.spawn_heartbeat();
    let handles = engine.resume(only.as_ref()).await?;
    if handles.is_empty() {
        cairn_engine::say!("nothing to resume: no unfinished run is free to take");
    }
    let mut worst: CliResult = Ok(());
    for (id, driving) in handles {
        let result = match driving {
            Ok(handle) => {
                cairn_engine::say!("[workflow] id={id} resumed");
                follow(&engine, &id, handle).await.and_then(|o| finish(o, None, args.json))
            }
            Err(e) => Err(CliError::from(e)),
        };
        if let Err(e) = result {
            if e.code == 130 {
                worst = Err(e);
                break;
            }
            cairn_engine::say!("error: {}", e.message);
            worst = Err(CliError { code: e.code, message: String::new() });
        }
    }
    heartbeat.abort();
    drop(engine);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), printer).await;
    worst
}

#[derive(Args)]
pub struct RerunArgs {
    /// The run to start again from a step (usually a failed one, after a fix).
    pub id: String,
    /// The first step to execute again; completed steps before it are reused, not re-run.
    #[arg(long)]
    pub from: String,
    /// Fork inside STEP (an agent or llm step): reuse its recorded calls before its N-th model
    /// turn, at no cost, and go on live from that turn.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub turn: Option<u32>,
    /// The model (an alias of cairn.toml) STEP and the model steps after it use instead.
    #[arg(long)]
    pub model: Option<String>,
    /// Take this output as the recorded one of a step before STEP: `STEP=JSON` (repeatable).
    #[arg(long = "set-output", value_name = "STEP=JSON")]
    pub set_output: Vec<String>,
    #[command(flatten)]
    pub engine: EngineArgs,
    #[arg(long)]
    pub artifact: Option<PathBuf>,
    #[arg(long)]
    pub json: bool,
}

/// `cairn runs retry ID`: the same run again from what did not succeed.
pub async fn retry(db: &DbArgs, id: &str, engine_args: EngineArgs, json: bool) -> CliResult {
    let id = RunId::parse(id).map_err(CliError::usage)?;
    let (engine, printer) = open_engine(db, &engine_args).await?;
    let heartbeat = engine.spawn_heartbeat();
    let handle = engine.retry(&id, Some("cli".into()), true).await?;
    let handle = handle.ok_or_else(|| CliError::env("the engine is shutting down"))?;
    cairn_engine::say!("[workflow] id={id} retried in place");
    let outcome = follow(&engine, &id, handle).await;
    heartbeat.abort();
    drop(engine);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), printer).await;
    finish(outcome?, None, json)
}

/// `cairn rerun ID --from STEP`: a new run linked to its parent, reusing the parent's recorded
/// outputs for the steps before STEP.
pub async fn rerun(db: &DbArgs, args: RerunArgs) -> CliResult {
    let parent = RunId::parse(&args.id).map_err(CliError::usage)?;
    let mut set_outputs = Vec::new();
    for given in &args.set_output {
        let (step, json) = given.split_once('=').ok_or_else(|| {
            CliError::usage(format!(
                "--set-output {given}: write STEP=JSON, e.g. --set-output classify='{{\"intent\":\"order\"}}'"
            ))
        })?;
        let value: serde_json::Value = serde_json::from_str(json)
            .map_err(|e| CliError::usage(format!("--set-output {step}: the value is not JSON ({e})")))?;
        set_outputs.push((step.to_string(), value));
    }
    let changes = cairn_engine::ForkChanges { turn: args.turn, model: args.model.clone(), set_outputs };
    let (engine, printer) = open_engine(db, &args.engine).await?;
    let heartbeat = engine.spawn_heartbeat();
    let (run_id, handle) = engine.fork(&parent, &args.from, changes, true).await?;
    let handle = handle.ok_or_else(|| CliError::env("the engine is shutting down"))?;
    let at = args.turn.map(|t| format!(", turn {t}")).unwrap_or_default();
    cairn_engine::say!("[workflow] id={run_id} forked from {parent} at step {}{at}", args.from);
    let outcome = follow(&engine, &run_id, handle).await;
    heartbeat.abort();
    drop(engine);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), printer).await;
    finish(outcome?, args.artifact.as_deref(), args.json)
}
