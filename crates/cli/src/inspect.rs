//! `cairn runs …` and `cairn export`: read-only views of the journal and its projections.

use crate::output::{table, timestamp};
use crate::{CliError, CliResult, DbArgs};
use cairn_core::RunId;
use cairn_core::duration::format_ms;
use cairn_store::{EffectLog, Inbox, Journal, Registry, RunQuery};
use clap::{Args, Subcommand, ValueEnum};
use serde_json::{Value, json};
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum RunsCommand {
    /// List runs, newest first.
    #[command(after_help = "Example:\n  cairn runs list --status FAILED")]
    List {
        /// Only runs in this state (PENDING, EXECUTING, WAITING, COMPLETED, FAILED, ...).
        #[arg(long)]
        status: Option<String>,
        #[arg(long)]
        workflow: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: usize,
        #[arg(long)]
        json: bool,
    },
    /// A run and a table of its steps: state, attempts, duration, last error. With --step, one
    /// step in full: its attempts (start, duration, outcome, error, the wait before the next),
    /// approval and compensation, and its input and output.
    #[command(
        after_help = "Examples:\n  cairn runs show wf_01J...\n  cairn runs show wf_01J... --step send_email\n  cairn runs show wf_01J... --step send_email --json"
    )]
    Show {
        id: String,
        /// One step in full, with its input and output payloads.
        #[arg(long)]
        step: Option<String>,
        /// Print payloads whole (the text view cuts each at 64 KiB; --json never cuts).
        #[arg(long, requires = "step")]
        full: bool,
        #[arg(long)]
        json: bool,
    },
    /// The run's journal, one event per line.
    #[command(
        after_help = "Examples:\n  cairn runs events wf_01J...\n  cairn runs events wf_01J... --payloads --json   # inputs, outputs and plans in place"
    )]
    Events {
        id: String,
        #[arg(long)]
        json: bool,
        /// Show each payload an event refers to (`{hash, size}`) in place, as `value`.
        #[arg(long)]
        payloads: bool,
        /// With --payloads, print payloads whole (the text view cuts each at 64 KiB).
        #[arg(long, requires = "payloads")]
        full: bool,
    },
    /// Operator requests sent to the run, in the order they were accepted, and what became of
    /// each: applied (with the journal event that records it), unchanged, refused (why), pending.
    #[command(after_help = "Example:\n  cairn runs requests wf_01J... --json")]
    Requests {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// What each model call was given as context: the lineage ledger of every `context:` —
    /// candidates observed, selected and rejected (why), with scores, tokens and digests.
    #[command(
        after_help = "Examples:\n  cairn runs context wf_01J...\n  cairn runs context wf_01J... --step draft --json"
    )]
    Context {
        id: String,
        /// Only this step (its `for_each`/`loop` instances too).
        #[arg(long)]
        step: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Per-attempt log lines, of the whole run or of one step.
    #[command(after_help = "Examples:\n  cairn runs logs wf_01J...\n  cairn runs logs wf_01J... --step send_email")]
    Logs {
        id: String,
        #[arg(long)]
        step: Option<String>,
    },
    /// Follow a run's events live from a `cairn serve` (reconnects without losing events).
    #[command(after_help = "Example:\n  cairn runs watch wf_01J... --server http://127.0.0.1:8080")]
    Watch(crate::watch::WatchArgs),
    /// Cancel a run.
    #[command(after_help = "Example:\n  cairn runs cancel wf_01J... --reason \"wrong vendor\"")]
    Cancel {
        id: String,
        #[arg(long, default_value = "cancelled from the CLI")]
        reason: String,
    },
    /// Pause a run: attempts in flight finish, nothing new starts.
    #[command(after_help = "Example:\n  cairn runs pause wf_01J...   # later: cairn runs unpause wf_01J...")]
    Pause { id: String },
    /// Unpause a paused run. If nobody drives it then, it continues here (as `cairn resume`
    /// would) unless a `cairn serve`/`cairn worker` runs on the database or --detach is given.
    #[command(after_help = "Examples:\n  cairn runs unpause wf_01J...\n  cairn runs unpause wf_01J... --detach")]
    Unpause {
        id: String,
        /// Return once the request is applied; say what continues the run.
        #[arg(long)]
        detach: bool,
    },
    /// Move a parked run to another version of its workflow (registered with POST /v1/workflows,
    /// or given as a file) when what it already did is compatible; otherwise name the first
    /// incompatibility.
    #[command(
        after_help = "Examples:\n  cairn runs migrate wf_01J... --to-version 2\n  cairn runs migrate wf_01J... --to-version 2 --file workflow-v2.yaml"
    )]
    Migrate {
        id: String,
        #[arg(long)]
        to_version: u32,
        /// The new version's definition file (else the registered version is used).
        #[arg(long)]
        file: Option<std::path::PathBuf>,
    },
    /// Retry a FAILED run in place: its failed, cancelled and skipped steps run again (fresh
    /// retry budgets), completed steps keep their outputs (so does a failed step whose fallback
    /// completed); followed to its end.
    #[command(after_help = "Example:\n  cairn runs retry wf_01J...")]
    Retry {
        id: String,
        #[command(flatten)]
        engine: crate::run::EngineArgs,
        #[arg(long)]
        json: bool,
    },
    /// Send a named signal with a JSON payload.
    #[command(
        after_help = "Examples:\n  cairn runs signal wf_01J... approved --data '{\"by\": \"ana\"}'\n  cairn runs signal wf_01J... note --data '\"a JSON string\"'"
    )]
    Signal {
        id: String,
        /// 1 to 64 letters, digits, '_', '-' or '.' (conditions read it as signals.NAME).
        name: String,
        /// The payload, as JSON (a string needs its quotes: '"text"').
        #[arg(long, default_value = "null")]
        data: String,
    },
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Format {
    Json,
    Jsonl,
}

#[derive(Args)]
pub struct ExportArgs {
    pub id: String,
    #[arg(long, value_enum, default_value = "json")]
    pub format: Format,
    /// Write to this file instead of stdout.
    #[arg(long, short = 'o')]
    pub output: Option<PathBuf>,
}

/// An amount in US dollars, with the digits small amounts need.
pub(crate) fn usd(amount: f64) -> String {
    if amount != 0.0 && amount.abs() < 0.01 { format!("${amount:.6}") } else { format!("${amount:.4}") }
}

/// `$0.000123 (2 model calls, 120 tokens in, 30 out)`.
pub(crate) fn spent(s: &cairn_store::Spend) -> String {
    format!("{} ({} model call(s), {} tokens in, {} out)", usd(s.cost_usd), s.calls, s.tokens_in, s.tokens_out)
}

fn run_id(s: &str) -> CliResult<RunId> {
    RunId::parse(s).map_err(CliError::usage)
}

pub(crate) async fn open_existing(db: &DbArgs) -> CliResult<cairn_store::AnyStore> {
    db.open_existing().await
}

fn print_json(v: &impl serde::Serialize) {
    crate::out!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

/// `cairn approvals`: every step waiting for a person, oldest request first, with the command
/// that answers it.
pub async fn approvals(db: &DbArgs, json: bool) -> CliResult {
    let store = db.open_existing().await?;
    let waiting = cairn_engine::waiting_approvals(&store).await?;
    if json {
        print_json(&waiting);
        return Ok(());
    }
    if waiting.is_empty() {
        cairn_engine::say!("nothing waits for a decision");
        return Ok(());
    }
    let body: Vec<Vec<String>> = waiting
        .iter()
        .map(|w| {
            let answer = match (w.kind, &w.call) {
                ("escalation", _) => format!("cairn escalation {} {} retry|skip|abort", w.run_id, w.step),
                (_, Some(_)) => {
                    format!("cairn approve {0} {1} [--args JSON] | cairn reject {0} {1} --reason …", w.run_id, w.step)
                }
                _ => format!("cairn approve|reject {} {}", w.run_id, w.step),
            };
            let prompt = match &w.call {
                Some(call) => {
                    let args: String = call.args.to_string().chars().take(300).collect();
                    format!("{} args: {args}", w.prompt)
                }
                None => w.prompt.clone(),
            };
            let who = if w.approvers.is_empty() { "any operator".to_string() } else { w.approvers.join(", ") };
            let deadline = w.deadline_ms.map(timestamp).unwrap_or_else(|| "-".into());
            vec![timestamp(w.requested_at_ms), w.step.clone(), prompt, who, deadline, answer]
        })
        .collect();
    crate::output::out(format_args!(
        "{}",
        table(&["ASKED", "STEP", "PROMPT", "WHO", "DEADLINE", "ANSWER WITH"], &body)
    ));
    Ok(())
}

pub async fn runs(db: &DbArgs, command: RunsCommand) -> CliResult {
    use crate::steer::Follow;
    use cairn_engine::Control;
    let by = Some("cli".to_string());
    match command {
        RunsCommand::Watch(args) => return crate::watch::watch(args).await,
        RunsCommand::Cancel { id, reason } => {
            return crate::steer::steer(db, &id, Control::Cancel { reason, by }, Follow::No).await;
        }
        RunsCommand::Retry { id, engine, json } => {
            open_existing(db).await?;
            return crate::run::retry(db, &id, engine, json).await;
        }
        RunsCommand::Pause { id } => {
            return crate::steer::steer(db, &id, Control::Pause { by }, Follow::No).await;
        }
        RunsCommand::Unpause { id, detach } => {
            let follow = if detach { Follow::Detach } else { Follow::Continue };
            return crate::steer::steer(db, &id, Control::Unpause { by }, follow).await;
        }
        RunsCommand::Migrate { id, to_version, file } => {
            let store = open_existing(db).await?;
            let run = store.get_run(&run_id(&id)?).await?;
            let definition = match file {
                Some(path) => {
                    let def = crate::run::load_definition(&path)?;
                    if def.version != to_version {
                        return Err(CliError::usage(format!(
                            "{} is version {}, not {to_version}",
                            path.display(),
                            def.version
                        )));
                    }
                    serde_json::to_value(&def).map_err(|e| CliError::env(e.to_string()))?
                }
                None => store.workflow(&run.workflow, Some(to_version)).await?.1,
            };
            // Check here too, so a refusal names the problem even when another process drives
            // the run (the request is then queued for it, and checked again when applied).
            let loaded = store.load_run(&run_id(&id)?).await?;
            let state = cairn_core::RunState::fold(run_id(&id)?, &loaded.events, loaded.payloads)
                .map_err(|e| CliError::env(format!("run {id} does not fold: {e}")))?;
            let target: cairn_core::Definition =
                serde_json::from_value(definition.clone()).map_err(|e| CliError::env(e.to_string()))?;
            if state.status.is_terminal() {
                return Err(CliError::usage(format!(
                    "run {id} already finished ({}); nothing to migrate",
                    state.status
                )));
            }
            if let Some(problem) = cairn_core::fork::migration_problem(&state, &target) {
                return Err(CliError::usage(format!("run {id} cannot move to version {to_version}: {problem}")));
            }
            return crate::steer::steer(db, &id, Control::Migrate { definition, by }, Follow::No).await;
        }
        RunsCommand::Signal { id, name, data } => {
            run_id(&id)?;
            cairn_engine::check_signal_name(&name).map_err(CliError::usage)?;
            let payload: Value = serde_json::from_str(&data).map_err(|e| {
                CliError::usage(format!(
                    "--data is not JSON ({e}); a string needs its quotes, e.g. --data '\"{}\"'",
                    data.replace('\'', "")
                ))
            })?;
            return crate::steer::steer(db, &id, Control::Signal { name, payload, by }, Follow::No).await;
        }
        _ => {}
    }
    let store = open_existing(db).await?;
    match command {
        RunsCommand::Watch(_)
        | RunsCommand::Migrate { .. }
        | RunsCommand::Retry { .. }
        | RunsCommand::Cancel { .. }
        | RunsCommand::Pause { .. }
        | RunsCommand::Unpause { .. }
        | RunsCommand::Signal { .. } => {}
        RunsCommand::List { status, workflow, limit, json } => {
            let status = status
                .map(|s| {
                    cairn_core::RunStatus::parse(&s).map(|s| s.as_str().to_string()).ok_or_else(|| {
                        CliError::usage(format!(
                            "--status '{s}' is not a run state; use one of {}",
                            cairn_core::RunStatus::ALL.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
                        ))
                    })
                })
                .transpose()?;
            let rows = store.list_runs(RunQuery { status, workflow, limit, ..Default::default() }).await?;
            let ids: Vec<RunId> = rows.iter().filter_map(|r| RunId::parse(&r.id).ok()).collect();
            let usage = store.spend(&ids).await?;
            if json {
                let rows: Vec<Value> = rows
                    .iter()
                    .map(|r| {
                        let mut v = serde_json::to_value(r).unwrap_or(Value::Null);
                        if let Some(u) = usage.get(&r.id) {
                            v["usage"] = json!(u);
                        }
                        v
                    })
                    .collect();
                print_json(&rows);
                return Ok(());
            }
            let body: Vec<Vec<String>> = rows
                .iter()
                .map(|r| {
                    let mut line = vec![
                        r.id.clone(),
                        r.status.clone(),
                        r.workflow.clone(),
                        r.current_step.clone().unwrap_or_else(|| "-".into()),
                        timestamp(r.created_at_ms),
                        r.finished_at_ms
                            .map(|f| format_ms((f - r.created_at_ms).max(0) as u64))
                            .unwrap_or_else(|| "-".into()),
                    ];
                    if !usage.is_empty() {
                        line.push(usage.get(&r.id).map_or_else(|| "-".into(), |u| usd(u.cost_usd)));
                    }
                    line
                })
                .collect();
            let mut head = vec!["RUN", "STATE", "WORKFLOW", "CURRENT STEP", "CREATED", "TOOK"];
            if !usage.is_empty() {
                head.push("COST");
            }
            crate::output::out(format_args!("{}", table(&head, &body)));
        }
        RunsCommand::Show { id, step: Some(step), json, full } => {
            crate::detail::show_step(&store, &run_id(&id)?, &step, json, full).await?;
        }
        RunsCommand::Show { id, step: None, json, .. } => {
            let id = run_id(&id)?;
            let run = store.get_run(&id).await?;
            let steps = store.steps(&id).await?;
            let links = cairn_engine::RunLinks::of(&store.events(&id).await?);
            let (step_usage, usage) = cairn_store::Spend::of_calls(&store.calls(&id, None).await?);
            if json {
                let mut doc = json!({"run": run, "links": links, "steps": steps});
                if usage.calls > 0 {
                    doc["usage"] = json!(usage);
                    doc["step_usage"] = json!(step_usage);
                }
                print_json(&doc);
                return Ok(());
            }
            crate::out!("run       {}", run.id);
            crate::out!(
                "workflow  {}{}",
                run.workflow,
                run.definition_version.map(|v| format!(" v{v}")).unwrap_or_default()
            );
            if let Some(goal) = &run.goal {
                crate::out!("goal      {goal}");
            }
            crate::out!("state     {}", run.status);
            crate::out!("created   {}", timestamp(run.created_at_ms));
            if let Some(f) = run.finished_at_ms {
                crate::out!("finished  {} ({})", timestamp(f), format_ms((f - run.created_at_ms).max(0) as u64));
            }
            if let Some(msg) = &run.failure_message {
                crate::out!("failure   {}: {msg}", run.failure_class.as_deref().unwrap_or("error"));
            }
            if usage.calls > 0 {
                crate::out!("cost      {}", spent(&usage));
            }
            if let Some(p) = &links.parent {
                crate::out!("parent    {} (step {}, attempt {})", p.run_id, p.step, p.attempt);
            }
            for c in &links.children {
                crate::out!("child     {} (step {}, attempt {})", c.run_id, c.step, c.attempt);
            }
            crate::out!();
            // A `for_each` or `loop` step may have thousands of instances: the first few and the
            // failed ones are listed, the rest counted (`--json` has them all).
            const SHOWN: usize = 3;
            let parent_of = |id: &str| id.split(['[', '#']).next().filter(|p| p.len() < id.len()).map(str::to_string);
            let mut seen: std::collections::HashMap<String, usize> = Default::default();
            let mut hidden: std::collections::BTreeMap<(String, &str), usize> = Default::default();
            let steps: Vec<&cairn_store::StepRow> = steps
                .iter()
                .filter(|s| {
                    let Some(parent) = parent_of(&s.step_id) else { return true };
                    let n = seen.entry(parent.clone()).or_default();
                    *n += 1;
                    let show = *n <= SHOWN || s.status == "FAILED";
                    if !show {
                        let which = if s.step_id.contains('#') { "#N" } else { "[N]" };
                        *hidden.entry((parent, which)).or_default() += 1;
                    }
                    show
                })
                .collect();
            let body: Vec<Vec<String>> = steps
                .iter()
                .map(|s| {
                    let duration = match (s.started_at_ms, s.finished_at_ms) {
                        (Some(a), Some(b)) => format_ms((b - a).max(0) as u64),
                        _ => "-".into(),
                    };
                    let error = match (&s.error_class, &s.error_message, &s.skip_reason) {
                        (Some(c), Some(m), _) => format!("{c}: {m}"),
                        (_, _, Some(skip)) => format!("skipped: {skip}"),
                        _ => "-".into(),
                    };
                    let mut line = vec![s.step_id.clone(), s.status.clone(), s.attempts.to_string(), duration];
                    if usage.calls > 0 {
                        line.push(step_usage.get(&s.step_id).map_or_else(|| "-".into(), |u| usd(u.cost_usd)));
                    }
                    line.push(error);
                    line
                })
                .collect();
            let head: &[&str] = if usage.calls > 0 {
                &["STEP", "STATE", "ATTEMPTS", "DURATION", "COST", "LAST ERROR"]
            } else {
                &["STEP", "STATE", "ATTEMPTS", "DURATION", "LAST ERROR"]
            };
            crate::output::out(format_args!("{}", table(head, &body)));
            for ((parent, which), n) in hidden {
                crate::out!(
                    "… and {n} more instance(s) of {parent} (cairn runs show {} --step '{parent}{which}')",
                    run.id
                );
            }
        }
        RunsCommand::Events { id, json, payloads, full } => {
            let events = store.events(&run_id(&id)?).await?;
            let mut inline = crate::detail::Payloads::new(&store);
            for e in events {
                if json && payloads {
                    let mut v = serde_json::to_value(&e).unwrap_or(Value::Null);
                    inline.inline_all(&mut v).await?;
                    crate::out!("{v}");
                } else if json {
                    crate::out!("{}", serde_json::to_string(&e).unwrap_or_default());
                } else {
                    let mut body = serde_json::to_value(&e.event).unwrap_or(Value::Null);
                    if let Some(fields) = body.as_object_mut() {
                        fields.remove("type");
                    }
                    if payloads {
                        inline.inline_all(&mut body).await?;
                        if !full {
                            crate::detail::cut_long_values(&mut body);
                        }
                    }
                    crate::out!("{:>4} {} {:<18} {body}", e.seq, timestamp(e.at_ms), e.event.kind());
                }
            }
        }
        RunsCommand::Requests { id, json } => {
            let rows = store.run_requests(&run_id(&id)?).await?;
            let views: Vec<cairn_engine::RequestView> = rows.iter().map(cairn_engine::RequestView::of).collect();
            if json {
                print_json(&views);
                return Ok(());
            }
            if views.is_empty() {
                cairn_engine::say!("no requests were sent to {id}");
                return Ok(());
            }
            let body: Vec<Vec<String>> = views
                .iter()
                .map(|v| {
                    let answer = match (v.journal_seq, &v.message) {
                        (Some(seq), _) => format!("journal event {seq}"),
                        (None, Some(m)) => m.clone(),
                        (None, None) => "-".into(),
                    };
                    vec![
                        v.id.to_string(),
                        timestamp(v.accepted_at_ms),
                        format!("{}{}", v.request, v.target.as_ref().map(|t| format!(" {t}")).unwrap_or_default()),
                        v.by.clone().unwrap_or_else(|| "-".into()),
                        v.state.as_str().to_string(),
                        answer,
                    ]
                })
                .collect();
            crate::output::out(format_args!(
                "{}",
                table(&["ID", "ACCEPTED", "REQUEST", "BY", "STATE", "ANSWER"], &body)
            ));
        }
        RunsCommand::Context { id, step, json } => {
            let run = run_id(&id)?;
            let steps = store.steps(&run).await?;
            if let Some(name) = &step {
                crate::steps::find(&id, &steps, name)?;
            }
            let ledgers = cairn_engine::context::ledgers(&store, &run, step.as_deref()).await?;
            if json {
                print_json(&ledgers);
            } else {
                crate::lineage::print(&id, step.as_deref(), &ledgers);
            }
        }
        RunsCommand::Logs { id, step } => {
            let run = run_id(&id)?;
            // Also refuses an unknown run: an empty listing must mean "no lines", nothing else.
            let steps = store.steps(&run).await?;
            if let Some(name) = &step {
                crate::steps::find(&id, &steps, name)?;
            }
            let lines = store.logs(&run, step.as_deref()).await?;
            if lines.is_empty() {
                match &step {
                    Some(name) => cairn_engine::say!("step '{name}' of run {id} has no log lines"),
                    None => cairn_engine::say!("run {id} has no log lines"),
                }
            }
            for l in lines {
                crate::out!("{} {} #{} {:<5} {}", timestamp(l.at_ms), l.step_id, l.attempt, l.level, l.message);
            }
        }
    }
    Ok(())
}

pub async fn export(db: &DbArgs, args: ExportArgs) -> CliResult {
    let store = open_existing(db).await?;
    let id = run_id(&args.id)?;
    let text = match args.format {
        Format::Json => {
            serde_json::to_string_pretty(&cairn_store::export_document(&store, &id).await?).unwrap_or_default() + "\n"
        }
        Format::Jsonl => {
            let mut text = String::new();
            for e in store.events(&id).await? {
                let mut v = serde_json::to_value(&e).unwrap_or(Value::Null);
                v["run_id"] = Value::String(id.to_string());
                text.push_str(&serde_json::to_string(&v).unwrap_or_default());
                text.push('\n');
            }
            text
        }
    };
    match args.output {
        Some(path) => {
            std::fs::write(&path, text).map_err(|e| CliError::env(format!("cannot write {}: {e}", path.display())))?
        }
        None => crate::output::out(format_args!("{text}")),
    }
    Ok(())
}
