//! `cairn`: the command-line face of Cairn. Thin: it parses arguments, opens the store, and
//! hands work to the engine; everything durable happens in the library crates.
//!
//! Exit codes: 0 success · 1 the run failed or was cancelled · 2 bad usage or bad input
//! (flags, files, definitions, unknown ids) · 3 environment (database locked, not ours,
//! unreadable) · 130 interrupted (the run stays resumable).
//!
//! Output goes through `out!` (data on stdout; a reader that went away ends the process quietly)
//! and `cairn_engine::say!` (messages on stderr; never panics): `print!` and friends panic on a
//! closed pipe, so clippy refuses them here.
#![deny(clippy::print_stdout, clippy::print_stderr)]

mod admin;
mod bench;
mod bench_agent;
mod bench_external;
mod bench_http;
mod bench_limits;
mod bench_llm;
mod bench_map;
mod bench_park;
mod chaos;
mod config;
mod config_models;
mod config_tools;
mod cost;
mod detail;
mod diff;
mod inspect;
mod kinds;
mod lineage;
mod output;
mod plan_file;
mod readiness;
mod readiness_cairn;
mod replay;
mod run;
mod serve;
mod steer;
mod steps;
mod tools;
mod top;
mod watch;
mod workflows;

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// An error with the exit code it deserves.
#[derive(Debug)]
pub struct CliError {
    pub code: u8,
    pub message: String,
}

impl CliError {
    pub fn usage(message: impl Into<String>) -> Self {
        CliError { code: 2, message: message.into() }
    }
    pub fn env(message: impl Into<String>) -> Self {
        CliError { code: 3, message: message.into() }
    }
    pub fn failed(message: impl Into<String>) -> Self {
        CliError { code: 1, message: message.into() }
    }
}

impl From<cairn_store::Error> for CliError {
    fn from(e: cairn_store::Error) -> Self {
        match e {
            cairn_store::Error::NotFound(_) | cairn_store::Error::NoSchema { .. } => CliError::usage(e.to_string()),
            _ => CliError::env(e.to_string()),
        }
    }
}

impl From<cairn_engine::Error> for CliError {
    fn from(e: cairn_engine::Error) -> Self {
        match e {
            cairn_engine::Error::Store(s) => s.into(),
            cairn_engine::Error::Invalid(_) | cairn_engine::Error::Owned(_) | cairn_engine::Error::Illegal(_) => {
                CliError::usage(e.to_string())
            }
            _ => CliError::env(e.to_string()),
        }
    }
}

pub type CliResult<T = ()> = Result<T, CliError>;

#[derive(Parser)]
#[command(
    name = "cairn",
    version,
    about = "Durable execution for AI-agent workflows: every step journaled, every crash resumable.",
    after_help = "Examples:\n  cairn run --goal \"generate summary and send email\"\n  cairn run examples/summary_email.yaml --input topic=otters\n  cairn runs list\n  cairn resume"
)]
struct Cli {
    #[command(flatten)]
    db: DbArgs,
    /// Config file (TOML): where secrets come from, [secrets]. Default: ./cairn.toml if present.
    #[arg(long, global = true, env = "CAIRN_CONFIG", value_name = "PATH")]
    config: Option<PathBuf>,
    /// `text` (plain lines) or `json`: one JSON object per line on stderr, with the run, step,
    /// attempt and call each line was said in, plus an event per attempt and per call
    /// (`CAIRN_LOG=debug` or any tracing filter narrows or widens them).
    #[arg(long, global = true, env = "CAIRN_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
pub struct DbArgs {
    /// SQLite database file (the embedded default).
    #[arg(long, global = true, env = "CAIRN_DB", default_value = "cairn.db")]
    pub db: PathBuf,
    /// PostgreSQL instead of the SQLite file, e.g. postgres://cairn@db.internal/cairn — every
    /// `cairn serve` / `cairn worker` pointed at it shares the work.
    #[arg(long, global = true, env = "CAIRN_DATABASE", hide_env_values = true)]
    pub database: Option<String>,
    /// SQLite only. `full`: a finished commit survives power loss (synchronous=FULL); `normal`:
    /// it survives a process crash but maybe not power loss.
    #[arg(long, global = true, env = "CAIRN_DURABILITY", default_value = "full")]
    pub durability: String,
    /// PostgreSQL only: how long to keep trying while the server cannot be reached (not up yet,
    /// restarting) before giving up.
    #[arg(long, global = true, env = "CAIRN_CONNECT_TIMEOUT", default_value = "10s")]
    pub connect_timeout: String,
}

impl DbArgs {
    /// Opens the database for a command that writes: Cairn's schema is created if missing.
    pub async fn open(&self) -> CliResult<cairn_store::AnyStore> {
        self.open_with(cairn_store::Create::Yes).await
    }

    /// Opens the database for a command that reads (or changes an existing run): a database
    /// without Cairn's schema is refused and left untouched.
    pub async fn open_existing(&self) -> CliResult<cairn_store::AnyStore> {
        if self.database.is_none() && !self.db.exists() {
            return Err(CliError::usage(format!(
                "no database at {} (nothing has run here yet; pass --db or set CAIRN_DB)",
                self.db.display()
            )));
        }
        self.open_with(cairn_store::Create::No).await
    }

    async fn open_with(&self, create: cairn_store::Create) -> CliResult<cairn_store::AnyStore> {
        if let Some(url) = &self.database {
            if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                return Err(CliError::usage(
                    "--database takes a PostgreSQL URL (postgres://user@host/db); for SQLite use --db FILE",
                ));
            }
            let patience = cairn_core::duration::parse_ms(&self.connect_timeout)
                .map_err(|e| CliError::usage(format!("--connect-timeout: {e}")))?;
            let patience = std::time::Duration::from_millis(patience);
            return Ok(cairn_store::AnyStore::Postgres(cairn_store::PgStore::open_with(url, create, patience).await?));
        }
        let durability = cairn_store::Durability::parse(&self.durability).ok_or_else(|| {
            CliError::usage(format!("--durability '{}' is not known: use full or normal", self.durability))
        })?;
        Ok(cairn_store::AnyStore::Sqlite(cairn_store::SqliteStore::open_with(&self.db, durability, create)?))
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run a workflow file, or a goal the planner turns into a plan, and follow it to the end.
    #[command(
        after_help = "Examples:\n  cairn run --goal \"vendor onboarding review\"\n  cairn run examples/parallel_retry.yaml --chaos seed=7,rate=0.3"
    )]
    Run(run::RunArgs),
    /// Check workflow files and report every problem with file, line and column.
    #[command(after_help = "Example:\n  cairn validate examples/*.yaml")]
    Validate {
        /// Definition files (YAML or JSON).
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Register workflow definitions (for `subworkflow` steps and the API) and list them.
    #[command(after_help = "Examples:\n  cairn workflows register onboarding.yaml\n  cairn workflows list")]
    Workflows {
        #[command(subcommand)]
        command: workflows::WorkflowsCommand,
    },
    /// List the step kinds this binary runs, with their defaults and `with` schema.
    #[command(after_help = "Examples:\n  cairn kinds\n  cairn kinds --json | jq '.kinds[] | .name'")]
    Kinds(kinds::KindsArgs),
    /// Show the plan a goal would get, without running it.
    #[command(
        after_help = "Examples:\n  cairn plan --goal \"generate summary and send email\"\n  cairn plan --goal \"generate summary and send email\" --format yaml > plan.yaml && cairn run plan.yaml\n  cairn plan --list"
    )]
    Plan(run::PlanArgs),
    /// Inspect and steer runs.
    #[command(
        after_help = "Examples:\n  cairn runs list --status FAILED\n  cairn runs show wf_01J... --step send_email\n  cairn runs retry wf_01J..."
    )]
    Runs {
        #[command(subcommand)]
        command: inspect::RunsCommand,
    },
    /// Export a run's full transition history (JSON, or JSON Lines).
    #[command(after_help = "Example:\n  cairn export wf_01J... --format jsonl > run.jsonl")]
    Export(inspect::ExportArgs),
    /// List the steps waiting for a person (approval gates and escalated failures), oldest first.
    #[command(after_help = "Example:\n  cairn approvals\n  cairn approvals --json")]
    Approvals {
        #[arg(long)]
        json: bool,
    },
    /// Approve a step waiting at an approval gate, or a tool call waiting for approval (with
    /// `--args`, call it with edited arguments instead).
    #[command(
        after_help = "Examples:\n  cairn approve wf_01J... policy_screen --comment \"controls agreed\"\n  cairn approve wf_01J... notify --args '{\"method\": \"POST\", \"url\": \"https://api.example.com/notes\", \"body\": {\"text\": \"shorter\"}}'"
    )]
    Approve {
        id: String,
        step: String,
        #[arg(long)]
        comment: Option<String>,
        /// For a tool call: the arguments to call it with instead (JSON, checked against the
        /// tool's input schema).
        #[arg(long, value_name = "JSON")]
        args: Option<String>,
        /// Who decides (recorded in the journal).
        #[arg(long, env = "USER", default_value = "cli")]
        by: String,
        /// Return once the decision is recorded, even if nobody drives the run (by default it
        /// continues here, as `cairn resume` would, unless a `cairn serve`/`worker` runs).
        #[arg(long)]
        detach: bool,
    },
    /// Reject a step waiting at an approval gate (it fails; its on_failure applies), or a tool
    /// call waiting for approval (the `tool` step fails with the reason).
    #[command(after_help = "Example:\n  cairn reject wf_01J... policy_screen --reason \"no SOC 2 report\"")]
    Reject {
        id: String,
        step: String,
        #[arg(long)]
        reason: String,
        #[arg(long, env = "USER", default_value = "cli")]
        by: String,
        /// Return once the decision is recorded (see `cairn approve --help`).
        #[arg(long)]
        detach: bool,
    },
    /// Start a new run from a step of an earlier one, reusing the results before it.
    #[command(after_help = "Example:\n  cairn rerun wf_01J... --from send_email")]
    Rerun(run::RerunArgs),
    /// Where two runs diverged (a run and its fork): the first step that settled differently,
    /// every step side by side, and the difference in tokens and cost.
    #[command(after_help = "Examples:\n  cairn diff wf_01J...A wf_01J...B\n  cairn diff wf_01J...A wf_01J...B --json")]
    Diff {
        a: String,
        b: String,
        #[arg(long)]
        json: bool,
    },
    /// Answer an escalated failure (`on_failure: escalate`, or `budget: {on_exceed: escalate}`):
    /// retry the step (raising the budget it stopped at), skip it with an output, or abort the run.
    #[command(
        after_help = "Examples:\n  cairn escalation wf_01J... send retry\n  cairn escalation wf_01J... summarize retry --max-cost-usd 2.50\n  cairn escalation wf_01J... send skip --output '{\"sent\": false}'\n  cairn escalation wf_01J... send abort"
    )]
    Escalation {
        id: String,
        step: String,
        /// retry | skip | abort
        action: String,
        /// The output a skipped step takes (JSON).
        #[arg(long)]
        output: Option<String>,
        /// With retry, for a step stopped by a budget: its new limit in US dollars.
        #[arg(long)]
        max_cost_usd: Option<f64>,
        /// With retry, for a step stopped by a budget: its new limit in tokens.
        #[arg(long)]
        max_tokens: Option<u64>,
        #[arg(long, env = "USER", default_value = "cli")]
        by: String,
        /// Return once the answer is recorded (see `cairn approve --help`).
        #[arg(long)]
        detach: bool,
    },
    /// Re-derive a run from its journal with no effects; report divergences and its timeline.
    Replay(replay::ReplayArgs),
    /// Continue interrupted runs (all of them, or one).
    #[command(after_help = "Examples:\n  cairn resume\n  cairn resume wf_01J...")]
    Resume(run::ResumeArgs),
    /// Put a workflow's agent steps through six failure scenarios, naked and under Cairn, and
    /// say whether to ship it: readiness.json and readiness_report.md (first line SHIP or DO NOT SHIP).
    #[command(
        after_help = "Examples:\n  cd examples && cairn readiness vendor_onboarding.yaml\n  cairn readiness agent.yaml --json -o reports/"
    )]
    Readiness(readiness::ReadinessArgs),
    /// (internal) The engine process of `cairn readiness`.
    #[command(name = "readiness-child", hide = true)]
    ReadinessChild(readiness_cairn::ChildArgs),
    /// Serve the REST API and run workers in one process (127.0.0.1:8080 by default).
    #[command(
        after_help = "Examples:\n  cairn serve\n  cairn serve --listen 0.0.0.0:8080   # auth turns on: create tokens first"
    )]
    Serve(serve::ServeArgs),
    /// Run workers only: take runs from the database and drive them.
    #[command(after_help = "Example:\n  cairn worker --max-runs 256")]
    Worker(serve::WorkerArgs),
    /// Manage API tokens.
    #[command(
        after_help = "Examples:\n  cairn tokens create --role operator --name ci\n  cairn tokens list\n  cairn tokens revoke ci"
    )]
    Tokens {
        #[command(subcommand)]
        command: admin::TokensCommand,
    },
    /// Delete finished runs past their retention, with their journals and unused payloads.
    #[command(after_help = "Example:\n  cairn gc --retention 7d --dry-run")]
    Gc {
        /// Default retention (a workflow's own `retention` wins).
        #[arg(long, default_value = "30d")]
        retention: String,
        #[arg(long)]
        dry_run: bool,
        #[arg(long)]
        json: bool,
    },
    /// Check the config file (cairn.toml) and say where each secret comes from (never its value).
    #[command(after_help = "Examples:\n  cairn config check\n  cairn --config /etc/cairn.toml config check")]
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// List the model providers and aliases cairn.toml declares (prices, limits, where keys come from).
    #[command(after_help = "Examples:\n  cairn models\n  cairn models --json\n  cairn models --check")]
    Models {
        #[arg(long)]
        json: bool,
        /// Also ask each provider whether it answers (GET BASE_URL/models with its key).
        #[arg(long)]
        check: bool,
    },
    /// The tools steps can call: built-ins, [tools.NAME] and the tools of each [mcp.NAME] server.
    #[command(
        after_help = "Examples:\n  cairn tools list\n  cairn tools show orders_db --json\n  cairn tools call orders_db --args '{\"sql\": \"select 1\"}'\n  cairn tools refresh"
    )]
    Tools {
        #[command(subcommand)]
        command: tools::ToolsCommand,
    },
    /// What model calls spent (USD and tokens), summed from the store and grouped.
    #[command(
        after_help = "Examples:\n  cairn cost\n  cairn cost --since 30d --by model\n  cairn cost --by day --json"
    )]
    Cost {
        /// How far back (a duration: 1h, 7d, 30d).
        #[arg(long, default_value = "7d")]
        since: String,
        /// workflow | model | day
        #[arg(long, default_value = "workflow")]
        by: String,
        #[arg(long)]
        json: bool,
    },
    /// A live view of what is in flight: runs by state, stuck signals, waiting approvals, spend.
    #[command(after_help = "Examples:\n  cairn top\n  cairn top --every 5s\n  cairn top --once")]
    Top {
        /// How often to redraw.
        #[arg(long, default_value = "2s")]
        every: String,
        /// Print one frame and exit.
        #[arg(long)]
        once: bool,
    },
    /// Measure throughput and latency of no-op workflows on a real SQLite file.
    #[command(after_help = "Example:\n  cairn bench --workflows 5000")]
    Bench(bench::BenchArgs),
    /// The same workload, naive and under Cairn, through one seeded failure schedule: a table.
    #[command(after_help = "Example:\n  cairn chaos --profile hostile --seed 1337 --workflows 20")]
    Chaos(chaos::ChaosArgs),
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Read the config file, report problems (exit 2), list the secret mapping.
    #[command(after_help = "Examples:\n  cairn config check\n  CAIRN_CONFIG=/etc/cairn.toml cairn config check")]
    Check,
}

/// What a decision does about a run nobody drives afterwards.
fn follow(detach: bool) -> steer::Follow {
    if detach { steer::Follow::Detach } else { steer::Follow::Continue }
}

/// Trace export to `OTEL_EXPORTER_OTLP_ENDPOINT`, in a build with the `otel` feature; kept until
/// the process ends (dropping it sends what is left).
#[cfg(feature = "otel")]
fn traces() -> Option<cairn_engine::otel::Exporting> {
    let endpoint = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").ok().filter(|e| !e.trim().is_empty())?;
    let service = std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| "cairn".into());
    match cairn_engine::otel::install(endpoint.trim(), &service) {
        Ok(exporting) => Some(exporting),
        Err(e) => {
            cairn_engine::say!("cairn: WARNING: no traces: {e}");
            None
        }
    }
}

#[cfg(not(feature = "otel"))]
fn traces() -> Option<()> {
    if std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").is_ok_and(|e| !e.trim().is_empty()) {
        cairn_engine::say!(
            "cairn: WARNING: OTEL_EXPORTER_OTLP_ENDPOINT is set but this cairn was built without traces; \
             build it with `cargo build --release --features otel`"
        );
    }
    None
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.log_format == "json" {
        let filter = tracing_subscriber::EnvFilter::try_from_env("CAIRN_LOG")
            // Cairn's own lines and events; only warnings from the libraries under it.
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,cairn=info,cairn_engine=info"));
        tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(true)
            .with_writer(std::io::stderr)
            .with_env_filter(filter)
            .init();
        cairn_engine::log::use_tracing();
    }
    let _traces = traces();
    // Every command reads the config, so a broken file is reported at once, whatever runs.
    let config = match config::load(cli.config.as_deref()) {
        Ok(config) => config,
        Err(e) => {
            cairn_engine::say!("error: {}", e.message);
            return ExitCode::from(e.code);
        }
    };
    config::set(config);
    #[cfg(feature = "otel")]
    cairn_engine::otel::know_models(&config::get().models);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            cairn_engine::say!("error: cannot start the runtime: {e}");
            return ExitCode::from(3);
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Run(args) => run::run(&cli.db, args).await,
            Command::Validate { files } => run::validate(&cli.db, &files).await,
            Command::Workflows { command } => workflows::workflows(&cli.db, command).await,
            Command::Plan(args) => run::plan(args).await,
            Command::Kinds(args) => kinds::list(args),
            Command::Runs { command } => inspect::runs(&cli.db, command).await,
            Command::Export(args) => inspect::export(&cli.db, args).await,
            Command::Resume(args) => run::resume(&cli.db, args).await,
            Command::Replay(args) => replay::run(&cli.db, args).await,
            Command::Rerun(args) => run::rerun(&cli.db, args).await,
            Command::Diff { a, b, json } => diff::diff(&cli.db, &a, &b, json).await,
            Command::Escalation { id, step, action, output, max_cost_usd, max_tokens, by, detach } => {
                use cairn_engine::EscalationChoice;
                let raise = (max_cost_usd.is_some() || max_tokens.is_some())
                    .then_some(cairn_engine::Raise { max_cost_usd, max_tokens });
                if raise.is_some() && action != "retry" {
                    return Err(CliError::usage("--max-cost-usd and --max-tokens go only with retry"));
                }
                // Checked here too: a value JSON cannot carry (NaN, infinity) must not reach the run.
                if max_cost_usd.is_some_and(|usd| !(usd.is_finite() && usd > 0.0 && usd <= 1_000_000.0)) {
                    return Err(CliError::usage(
                        "--max-cost-usd: max_cost_usd must be a number above 0, at most 1000000",
                    ));
                }
                let choice = match (action.as_str(), output) {
                    ("retry", None) => EscalationChoice::Retry { raise },
                    ("abort", None) => EscalationChoice::Abort,
                    ("skip", Some(text)) => EscalationChoice::Skip {
                        output: serde_json::from_str(&text)
                            .map_err(|e| CliError::usage(format!("--output is not JSON: {e}")))?,
                    },
                    ("skip", None) => return Err(CliError::usage("skip needs --output JSON (the step's output)")),
                    (_, Some(_)) => return Err(CliError::usage("--output goes only with skip")),
                    (other, None) => return Err(CliError::usage(format!("'{other}' is not retry, skip or abort"))),
                };
                let approve = !matches!(choice, EscalationChoice::Abort);
                let control = cairn_engine::Control::Decide {
                    step,
                    approve,
                    by: Some(by),
                    comment: None,
                    escalation: Some(choice),
                    args: None,
                };
                steer::steer(&cli.db, &id, control, follow(detach)).await
            }
            Command::Approvals { json } => inspect::approvals(&cli.db, json).await,
            Command::Approve { id, step, comment, args, by, detach } => {
                let args = match args {
                    Some(text) => Some(
                        serde_json::from_str::<serde_json::Value>(&text)
                            .map_err(|e| CliError::usage(format!("--args is not JSON: {e}")))?,
                    ),
                    None => None,
                };
                let control = cairn_engine::Control::Decide {
                    step,
                    approve: true,
                    by: Some(by),
                    comment,
                    escalation: None,
                    args,
                };
                steer::steer(&cli.db, &id, control, follow(detach)).await
            }
            Command::Reject { id, step, reason, by, detach } => {
                let control = cairn_engine::Control::Decide {
                    step,
                    approve: false,
                    by: Some(by),
                    comment: Some(reason),
                    escalation: None,
                    args: None,
                };
                steer::steer(&cli.db, &id, control, follow(detach)).await
            }
            Command::Bench(args) => bench::bench(&cli.db, args).await,
            Command::Chaos(args) => chaos::chaos(&cli.db, args).await,
            Command::Readiness(args) => readiness::readiness(args).await,
            Command::ReadinessChild(args) => readiness_cairn::child(&cli.db, args).await,
            Command::Serve(args) => serve::serve(&cli.db, args).await,
            Command::Worker(args) => serve::worker(&cli.db, args).await,
            Command::Tokens { command } => admin::tokens(&cli.db, command).await,
            Command::Gc { retention, dry_run, json } => admin::gc(&cli.db, &retention, dry_run, json).await,
            Command::Config { command: ConfigCommand::Check } => config::check(config::get()),
            Command::Models { json, check } => config_models::list(&config::get().models, json, check).await,
            Command::Cost { since, by, json } => cost::cost(&cli.db, &since, &by, json).await,
            Command::Top { every, once } => top::top(&cli.db, &every, once).await,
            Command::Tools { command } => tools::tools(command).await,
        }
    });
    runtime.shutdown_timeout(std::time::Duration::from_millis(200));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if !e.message.is_empty() {
                cairn_engine::say!("error: {}", e.message);
            }
            ExitCode::from(e.code)
        }
    }
}
