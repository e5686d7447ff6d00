//! Cairn as a Rust library: durable workflows inside your own program.
//!
//! Build a workflow in code with [`Workflow`] and [`Step`] (checked exactly like a file: unknown
//! kinds, `needs` that name no step, cycles, bad templates and retry policies are refused), add
//! your own async step kinds through the [`Activity`] trait, open a [`Runtime`] on a SQLite file or
//! a PostgreSQL database, then start runs and await them. Every state transition is journaled
//! before the next one is taken: kill the process at any instant, open the runtime again, and
//! [`Runtime::resume`] finishes what was left without running a completed step again.
//!
//! ```no_run
//! use cairn_sdk::{Activity, Attempt, AttemptFuture, Cairn, KindSpec, Step, Workflow, json};
//!
//! /// Counts the words of `with.text`.
//! struct WordCount;
//!
//! impl Activity for WordCount {
//!     fn spec(&self) -> KindSpec {
//!         KindSpec::new("word_count", "counts the words of `with.text`")
//!     }
//!     fn run<'a>(&'a self, attempt: &'a mut Attempt<'_>) -> AttemptFuture<'a> {
//!         Box::pin(async move {
//!             let text = attempt.input["text"].as_str().unwrap_or_default();
//!             Ok(json!({"words": text.split_whitespace().count()}))
//!         })
//!     }
//! }
//!
//! # async fn demo() -> Result<(), cairn_sdk::Error> {
//! let cairn = Cairn::new().kind(WordCount).open_sqlite("app.db")?;
//! cairn.resume().await?; // runs a previous process left go on where they stopped
//! let workflow = Workflow::new("count")
//!     .step(Step::new("count", "word_count").with(json!({"text": "{{ inputs.text }}"})).retry(3))
//!     .step(Step::new("report", "echo").needs(["count"]).with(json!({"n": "{{ steps.count.output.words }}"})));
//! let outcome = cairn.run(&workflow, json!({"text": "the quick brown fox"})).await?;
//! assert_eq!(outcome.output.unwrap()["report"]["n"], 4);
//! # Ok(()) }
//! ```
//!
//! Steps may also be *external kinds* ([`ExternalKind`], [`Cairn::external`]): their attempts wait
//! in a queue for workers in any language, which claim them over HTTP from `cairn serve` on the
//! same database (see the README's "Your own code as steps").

#![warn(missing_docs)]

use std::path::Path;
use std::sync::Arc;

pub use cairn_core::RunStatus;
pub use cairn_core::builder::{Step, Workflow};
pub use cairn_core::definition::Definition;
pub use cairn_core::event::{ErrorClass, Failure};
pub use cairn_core::kinds::{EffectClass, ExternalKind, KindSpec};
pub use cairn_engine::kinds::{Activity, Attempt, AttemptFuture, Registry, Usage};
pub use cairn_engine::{Engine, EngineConfig, RunOutcome};
pub use cairn_store::{Durability, PgStore, SqliteStore, Store};
pub use serde_json::{Value, json};

/// What can go wrong opening a runtime, starting or awaiting a run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The workflow has problems: each says where and what (as `cairn validate` would).
    #[error("the workflow has problems:\n{}", .0.join("\n"))]
    Invalid(Vec<String>),
    /// The database refused or failed.
    #[error(transparent)]
    Store(#[from] cairn_store::Error),
    /// The engine refused (the run is owned elsewhere, the engine is stopping, …).
    #[error(transparent)]
    Engine(#[from] cairn_engine::Error),
    /// The task driving the run panicked or was cancelled.
    #[error("the run's driver stopped: {0}")]
    Driver(String),
}

/// The kinds and settings of a runtime, before it is opened on a database.
pub struct Cairn {
    kinds: Registry,
    concurrency: usize,
    lease_ms: u64,
}

impl Default for Cairn {
    fn default() -> Self {
        Cairn::new()
    }
}

impl Cairn {
    /// The built-in kinds (`echo`, `http`, `llm`, `agent`, `approval`, `wait`, …), 16 activities at
    /// once, 30 s leases.
    pub fn new() -> Cairn {
        Cairn { kinds: cairn_engine::kinds::builtin(), concurrency: 16, lease_ms: 30_000 }
    }

    /// Adds a step kind written in Rust (replacing a kind of the same name).
    pub fn kind(mut self, kind: impl Activity) -> Cairn {
        self.kinds = self.kinds.with(kind);
        self
    }

    /// Adds a step kind from an async function of the step's input (its rendered `with`; secret
    /// values in memory only) to its output. For more (logs, usage, journaled calls inside the
    /// attempt, cancellation) implement [`Activity`].
    ///
    /// ```no_run
    /// # use cairn_sdk::{Cairn, KindSpec, Value, json};
    /// let cairn = Cairn::new().kind_fn(KindSpec::new("upper", "upper-cases `with.text`"), |input: Value| async move {
    ///     Ok(json!({"text": input["text"].as_str().unwrap_or_default().to_uppercase()}))
    /// });
    /// ```
    pub fn kind_fn<F, Fut>(self, spec: KindSpec, f: F) -> Cairn
    where
        F: Fn(Value) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<Value, Failure>> + Send + 'static,
    {
        self.kind(FnKind { spec, f })
    }

    /// Adds an external kind: its steps wait in `kind.queue` for workers (any language, over
    /// `cairn serve`'s worker protocol on the same database).
    pub fn external(mut self, name: &str, kind: ExternalKind) -> Cairn {
        self.kinds = self.kinds.with(cairn_engine::kinds::External { name: name.to_string(), kind });
        self
    }

    /// How many attempts run at once in this process.
    pub fn concurrency(mut self, n: usize) -> Cairn {
        self.concurrency = n.max(1);
        self
    }

    /// How long a run stays this process's without a heartbeat (another process may take it over
    /// after that if this one died).
    pub fn lease_ms(mut self, ms: u64) -> Cairn {
        self.lease_ms = ms.max(1_000);
        self
    }

    /// Opens (or creates) the SQLite file at `path`, every commit fsynced. Call it inside a Tokio
    /// runtime: the lease heartbeat runs as a task.
    pub fn open_sqlite(self, path: impl AsRef<Path>) -> Result<Runtime<SqliteStore>, Error> {
        let store = SqliteStore::open(path, Durability::Full)?;
        Ok(self.open(store))
    }

    /// Connects to the PostgreSQL database at `url` (migrating it if needed).
    pub async fn open_postgres(self, url: &str) -> Result<Runtime<PgStore>, Error> {
        let store = PgStore::open(url).await?;
        Ok(self.open(store))
    }

    /// Opens a runtime on a store already opened.
    pub fn open<S: Store>(self, store: S) -> Runtime<S> {
        let mut config = EngineConfig::new(cairn_engine::owner_id());
        config.concurrency = self.concurrency;
        config.lease_ms = self.lease_ms;
        config.kinds = Arc::new(self.kinds);
        // A run that waits on a person, a long timer or a worker is handed back to the database
        // (its `wait` answers with the waiting status) instead of holding this process.
        config.release_when_idle_ms = Some(1_000);
        let engine = Engine::new(Arc::new(store), config, None);
        let heartbeat = engine.spawn_heartbeat();
        Runtime { engine, heartbeat }
    }
}

/// A kind made of an async function (see [`Cairn::kind_fn`]).
struct FnKind<F> {
    spec: KindSpec,
    f: F,
}

impl<F, Fut> Activity for FnKind<F>
where
    F: Fn(Value) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<Value, Failure>> + Send + 'static,
{
    fn spec(&self) -> KindSpec {
        self.spec.clone()
    }

    fn run<'a>(&'a self, attempt: &'a mut Attempt<'_>) -> AttemptFuture<'a> {
        Box::pin((self.f)(attempt.input.clone()))
    }
}

/// A durable engine on a database: starts runs, awaits them, resumes what was left.
pub struct Runtime<S: Store> {
    engine: Engine<S>,
    heartbeat: tokio::task::JoinHandle<()>,
}

impl<S: Store> Drop for Runtime<S> {
    fn drop(&mut self) {
        self.heartbeat.abort();
    }
}

/// A run started and driven by this process.
pub struct RunHandle {
    /// The run's id (`wf_…`), as `cairn runs show` and the API name it.
    pub id: String,
    driving: cairn_engine::Driving,
}

impl RunHandle {
    /// Waits for the run to finish, or to wait (on a person, a long timer, a worker: then its
    /// status is not terminal, the run is handed back to the database, and a later `resume`
    /// or any `cairn worker` on the same database drives it on).
    pub async fn wait(self) -> Result<RunOutcome, Error> {
        Ok(self.driving.await.map_err(|e| Error::Driver(e.to_string()))??)
    }
}

impl<S: Store> Runtime<S> {
    /// The workflow, checked against this runtime's kinds like a file.
    pub fn check(&self, workflow: &Workflow) -> Result<Definition, Error> {
        workflow
            .build(self.engine.kinds())
            .map_err(|problems| Error::Invalid(problems.iter().map(ToString::to_string).collect()))
    }

    /// Starts a run of `workflow` with `inputs` (a JSON object); it is driven in this process.
    pub async fn start(&self, workflow: &Workflow, inputs: Value) -> Result<RunHandle, Error> {
        let definition = self.check(workflow)?;
        let id = cairn_engine::new_run_id();
        let driving = self.engine.start(id.clone(), cairn_engine::NewRun::inline(definition, inputs)).await?;
        Ok(RunHandle { id: id.to_string(), driving })
    }

    /// Starts a run and waits for it to finish.
    pub async fn run(&self, workflow: &Workflow, inputs: Value) -> Result<RunOutcome, Error> {
        self.start(workflow, inputs).await?.wait().await
    }

    /// Takes over every unfinished run no live process holds (a previous process of this
    /// program that died, or stopped) and drives each until it ends or waits (on a person, a
    /// long timer, a worker); returns how each of them stands, one result per run.
    pub async fn resume(&self) -> Result<Vec<Result<RunOutcome, Error>>, Error> {
        let mut handles = Vec::new();
        for (id, driving) in self.engine.resume(None).await? {
            handles.push(driving.map(|driving| RunHandle { id: id.to_string(), driving }));
        }
        let mut outcomes = Vec::with_capacity(handles.len());
        for handle in handles {
            outcomes.push(match handle {
                Ok(handle) => handle.wait().await,
                Err(e) => Err(e.into()),
            });
        }
        Ok(outcomes)
    }

    /// The engine underneath, for everything else (signals, approvals, cancel, the store).
    pub fn engine(&self) -> &Engine<S> {
        &self.engine
    }
}
