//! The engine: creates runs, drives them (one task per run), takes work from the store as a
//! worker, and routes operator requests to whoever drives a run.

use crate::driver::Live;
use crate::requests::{self, Control, Delivery};
use crate::{Error, now_ms, owner_is_dead};
use cairn_core::StepId;
use cairn_core::event::{Event, PlanInfo, ReusedStep, RunOptions, RunSource};
use cairn_core::payload::Payload;
use cairn_core::state::RunState;
use cairn_core::{Definition, RunId, RunStatus};
use cairn_store::{Claim, IdempotencyKey, RequestOutcome, RequestState, Store, WorkerRow};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, Semaphore, mpsc, watch};

#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Lease owner id of this process (`host:pid:nonce`).
    pub owner: String,
    /// Activities allowed in flight at once, across all runs.
    pub concurrency: usize,
    /// Activities one run may have in flight at once, so one wide run cannot starve the others.
    pub max_per_run: usize,
    /// Runs a worker drives at once.
    pub max_runs: usize,
    /// How long a lease lasts without a heartbeat.
    pub lease_ms: u64,
    /// Service mode: hand a run back when nothing runs and no timer is due within this long.
    /// `None` (the CLI's `run`) keeps driving until the run finishes.
    pub release_when_idle_ms: Option<u64>,
    /// How often an idle worker looks for work it was not told about.
    pub poll_ms: u64,
    /// Test hook: after an attempt of this step returns, pause (so a test can SIGKILL the process
    /// between "the activity returned" and "its result was committed").
    pub hold_after_activity: Option<String>,
    /// Test hook: `STEP/N` holds an attempt of STEP right after its call N is recorded (so a
    /// test can SIGKILL the process in the middle of a step's calls).
    pub hold_after_call: Option<String>,
    /// How long a request waits for the process driving its run to answer before it is reported
    /// as queued (it stays queued and is applied in order later).
    pub request_wait_ms: u64,
    /// How this process is listed among the processes that work runs for anyone (`serve`,
    /// `worker`), once it runs the worker loop.
    pub role: &'static str,
    /// Where attempts find the values of `{{ secrets.NAME }}` (default: `CAIRN_SECRET_<NAME>`).
    pub secrets: Arc<crate::secrets::Source>,
    /// The step kinds this process runs (default: the built-ins).
    pub kinds: Arc<crate::kinds::Registry>,
    /// Each kind's configuration, by kind name, handed to its attempts.
    pub kind_config: BTreeMap<String, Value>,
    /// The tools this process can call (the `tool` kind's registry), for checking a person's
    /// edited arguments before they are accepted.
    pub tools: Arc<crate::tools::Tools>,
}

impl EngineConfig {
    pub fn new(owner: String) -> Self {
        EngineConfig {
            owner,
            concurrency: 64,
            max_per_run: 64,
            max_runs: 1024,
            lease_ms: 30_000,
            release_when_idle_ms: None,
            poll_ms: 250,
            hold_after_activity: None,
            hold_after_call: None,
            request_wait_ms: 15_000,
            role: "worker",
            secrets: Arc::new(crate::secrets::Source::from_env()),
            kinds: Arc::new(crate::kinds::builtin()),
            kind_config: BTreeMap::new(),
            tools: Arc::new(crate::tools::Tools::builtin()),
        }
    }
}

/// A run to start.
pub struct NewRun {
    pub definition: Definition,
    pub source: RunSource,
    pub plan: Option<PlanInfo>,
    /// Inputs after defaults were applied.
    pub inputs: Value,
    pub options: RunOptions,
    /// Steps taken as done from another run, with their recorded outputs (a fork).
    pub reused: Vec<cairn_core::event::ReusedStep>,
    /// The values of those outputs.
    pub reused_payloads: Vec<(Payload, Value)>,
    /// Calls made to plan the run before it existed (the model planner's), recorded against it
    /// once it is created so its cost counts.
    pub planning: Vec<cairn_store::CallRow>,
}

impl NewRun {
    /// A run of a definition given as it is (no file, plan or fork), with these inputs and the
    /// default options.
    pub fn inline(definition: Definition, inputs: Value) -> NewRun {
        NewRun {
            definition,
            source: RunSource::Definition { path: None },
            plan: None,
            inputs,
            options: RunOptions::default(),
            reused: Vec::new(),
            reused_payloads: Vec::new(),
            planning: Vec::new(),
        }
    }
}

/// What a counterfactual fork changes (`cairn rerun --turn/--model/--set-output`).
#[derive(Clone, Debug, Default)]
pub struct ForkChanges {
    /// Reuse the recorded calls of the fork's first step before its N-th model turn (1-based);
    /// the step makes its first new call at that turn.
    pub turn: Option<u32>,
    /// The model alias the fork's first step, and the model steps after it, use instead.
    pub model: Option<String>,
    /// Steps before the fork point taken as done with this output instead of the recorded one.
    pub set_outputs: Vec<(String, Value)>,
}

/// How to create a run.
#[derive(Default)]
pub struct Submit {
    pub idempotency: Option<IdempotencyKey>,
    /// Drive it in this process at once (if there is room); otherwise leave it for any worker.
    pub drive_here: bool,
}

/// Something observers (progress lines, event streams) may want to know, sent after each commit.
#[derive(Debug, Clone)]
pub enum Notice {
    Committed {
        run_id: RunId,
        events: Vec<cairn_core::Envelope>,
    },
    /// Tokens of a model call while it streams (never journaled: the final answer is).
    Delta(Delta),
}

/// A piece of a streaming call's answer, for watchers: `text` is the next tokens, or `None` when
/// the call's tokens so far are void (the call failed; a retry streams anew).
#[derive(Debug, Clone, PartialEq)]
pub struct Delta {
    pub run_id: RunId,
    pub step: String,
    pub attempt: u32,
    /// The call's position among the step's calls (`run/step/call-N`).
    pub call: u32,
    pub text: Option<String>,
}

#[derive(Debug, Clone)]
pub struct RunOutcome {
    pub run_id: RunId,
    /// Not terminal when the driver handed the run back (idle in service mode, or draining).
    pub status: RunStatus,
    pub failure: Option<cairn_core::Failure>,
    pub output: Option<Value>,
    pub artifact: Option<String>,
    /// The engine's final in-memory state; folding the journal must reproduce it exactly.
    pub state: Box<RunState>,
}

/// Runs `work` to its end even if the caller stops waiting for it. An HTTP handler's future is
/// dropped when its client disconnects; work that claims a run (a creation, a take-over to apply
/// requests, a retry) must still finish by driving the run or handing it back, never stop halfway
/// with the run held and nobody driving it.
async fn detached<T: Send + 'static>(
    work: impl std::future::Future<Output = Result<T, Error>> + Send + 'static,
) -> Result<T, Error> {
    tokio::spawn(work).await.map_err(|e| Error::Invalid(format!("the engine's task stopped: {e}")))?
}

/// The task driving one run until it finishes or is handed back.
pub type Driving = tokio::task::JoinHandle<Result<RunOutcome, Error>>;

pub struct Engine<S: Store> {
    inner: Arc<Inner<S>>,
}

impl<S: Store> Clone for Engine<S> {
    fn clone(&self) -> Self {
        Engine { inner: self.inner.clone() }
    }
}

pub(crate) struct Inner<S> {
    pub(crate) store: Arc<S>,
    pub(crate) config: EngineConfig,
    pub(crate) permits: Arc<Semaphore>,
    pub(crate) notices: Option<mpsc::UnboundedSender<Notice>>,
    /// The runs this process drives, each with the bell that tells its driver requests wait.
    pub(crate) drivers: Mutex<HashMap<RunId, Arc<Notify>>>,
    /// Wakes the worker loop (a run was created or handed back).
    pub(crate) wake: Notify,
    /// `true` once the engine drains: nothing new starts, drivers stop when idle.
    pub(crate) shutdown: watch::Sender<bool>,
    claiming: AtomicBool,
    /// Runs whose hand-back failed; the heartbeat retries.
    to_let_go: Mutex<Vec<RunId>>,
    /// Set once this process runs the worker loop: it is then listed among the workers (with
    /// this start time) so that clients can tell whether anyone will pick up a run.
    working_since: Mutex<Option<i64>>,
    /// The kinds' descriptions, as definitions are validated against them.
    specs: cairn_core::kinds::Kinds,
    /// Definitions of recently created runs, serialised and read back once.
    definitions: crate::definitions::Prepared,
}

impl<S: Store> Engine<S> {
    pub fn new(store: Arc<S>, config: EngineConfig, notices: Option<mpsc::UnboundedSender<Notice>>) -> Self {
        let permits = Arc::new(Semaphore::new(config.concurrency.max(1)));
        let (shutdown, _) = watch::channel(false);
        let specs = config.kinds.specs();
        Engine {
            inner: Arc::new(Inner {
                specs,
                store,
                config,
                permits,
                notices,
                drivers: Mutex::new(HashMap::new()),
                wake: Notify::new(),
                shutdown,
                claiming: AtomicBool::new(false),
                to_let_go: Mutex::new(Vec::new()),
                working_since: Mutex::new(None),
                definitions: Default::default(),
            }),
        }
    }

    pub(crate) fn from_inner(inner: Arc<Inner<S>>) -> Self {
        Engine { inner }
    }

    pub(crate) fn inner(&self) -> &Arc<Inner<S>> {
        &self.inner
    }

    pub fn store(&self) -> &Arc<S> {
        &self.inner.store
    }

    /// The step kinds this engine runs, as the core validates definitions against them.
    pub fn kinds(&self) -> &cairn_core::kinds::Kinds {
        &self.inner.specs
    }

    /// The model providers and aliases the `llm` kind was configured with (cairn.toml).
    pub fn models(&self) -> crate::models::Models {
        let configured = self.inner.config.kind_config.get("llm").and_then(|c| c.get("models")).cloned();
        configured.and_then(|v| serde_json::from_value(v).ok()).unwrap_or_default()
    }

    /// The tools this process's steps can call.
    pub fn tools(&self) -> Arc<crate::tools::Tools> {
        self.inner.config.tools.clone()
    }

    pub fn owner(&self) -> &str {
        &self.inner.config.owner
    }

    /// Runs driven by this process right now.
    pub fn active_runs(&self) -> usize {
        self.inner.drivers.lock().map(|d| d.len()).unwrap_or(0)
    }

    /// Creates the run and drives it here. The id is known as soon as this returns.
    pub async fn start(&self, run_id: RunId, new: NewRun) -> Result<Driving, Error> {
        let driving = self.submit(run_id, new, Submit { idempotency: None, drive_here: true }).await?;
        driving.ok_or_else(|| Error::Invalid("the engine is shutting down".into()))
    }

    /// Creates the run (first commit: created, planned, first steps decided). With `drive_here`
    /// and room in this engine it is driven here at once; otherwise it is left for any worker.
    pub async fn submit(&self, run_id: RunId, new: NewRun, submit: Submit) -> Result<Option<Driving>, Error> {
        let engine = self.clone();
        detached(async move { engine.submit_now(run_id, new, submit).await }).await
    }

    async fn submit_now(&self, run_id: RunId, new: NewRun, submit: Submit) -> Result<Option<Driving>, Error> {
        let mut live = Live::new(self.inner.clone(), RunState::new(run_id), 0);
        let workflow = new.definition.name.clone();
        live.feed(Event::RunCreated { workflow, source: new.source, inputs: new.inputs, options: new.options })?;
        // `decide` asked for a plan: the plan was made before the run existed (the planner is
        // pure), so record it now, in the same commit.
        let prepared = self.inner.definitions.get(&new.definition).map_err(Error::Invalid)?;
        live.state.add_definition(&prepared);
        let definition = prepared.payload.reference.clone();
        live.add_payload(prepared.payload.clone());
        for (p, value) in new.reused_payloads {
            live.state.add_payload(&p, value);
            live.add_payload(p);
        }
        live.feed(Event::PlanRecorded { definition, plan: new.plan, reused: new.reused })?;
        live.set_idempotency(submit.idempotency);
        let run_id = live.state.run_id.clone();
        let driving = self.commit_and_drive(live, submit.drive_here).await?;
        for call in new.planning {
            if let Err(e) = self.inner.store.record_call(&run_id, call, None).await {
                crate::say!("[engine] {run_id}: the planner's call could not be accounted: {e}");
            }
        }
        Ok(driving)
    }

    /// Commits what `live` decided, then drives the run here (with `drive_here` and room) or
    /// leaves it, released, for any worker.
    async fn commit_and_drive(&self, mut live: Live<S>, drive_here: bool) -> Result<Option<Driving>, Error> {
        let here = drive_here && !*self.inner.shutdown.borrow() && self.active_runs() < self.inner.config.max_runs;
        if here {
            live.start_ready()?;
            live.commit().await?;
            live.attach();
            Ok(Some(self.spawn_drive(live)))
        } else {
            live.set_release();
            live.commit().await?;
            self.inner.wake.notify_one();
            Ok(None)
        }
    }

    /// Claims unfinished runs that nobody drives (lease expired, or owner process gone) and drives
    /// them. `only` restricts it to one run, which is then an error if it cannot be claimed.
    pub async fn resume(&self, only: Option<&RunId>) -> Result<Vec<(RunId, Result<Driving, Error>)>, Error> {
        let store = &self.inner.store;
        let now = now_ms();
        let claimed = store
            .claim_runs(Claim {
                owner: &self.inner.config.owner,
                now_ms: now,
                lease_until_ms: now + self.inner.config.lease_ms as i64,
                only,
                owner_is_dead: &owner_is_dead,
                limit: self.inner.config.max_runs.saturating_sub(self.active_runs()).max(1),
            })
            .await?;
        if let Some(id) = only
            && claimed.is_empty()
        {
            let row = store.get_run(id).await?;
            if RunStatus::parse(&row.status).is_some_and(|s| s.is_terminal()) {
                return Err(Error::Invalid(format!("run {id} already finished ({}); nothing to resume", row.status)));
            }
            return Err(Error::Owned(id.to_string()));
        }
        // One run that cannot be resumed (a damaged journal, say) must not stop the others.
        let mut handles = Vec::new();
        for id in claimed {
            if self.is_driven_here(&id) {
                // Its lease lapsed while this process could not write (disk full): the claim
                // renewed it; the driver here still has it.
                continue;
            }
            let driving = self.resume_one(&id).await;
            handles.push((id, driving));
        }
        Ok(handles)
    }

    /// Starts a new run that reuses `parent`'s recorded results for every completed step except
    /// `from` and what depends on it, and executes from there (pinned to the parent's
    /// definition, with its inputs), with `changes` made (see [`ForkChanges`]). Returns the new
    /// run's id.
    pub async fn fork(
        &self,
        parent: &RunId,
        from: &str,
        changes: ForkChanges,
        drive_here: bool,
    ) -> Result<(RunId, Option<Driving>), Error> {
        let (engine, parent, from) = (self.clone(), parent.clone(), from.to_string());
        detached(async move { engine.fork_now(&parent, &from, changes, drive_here).await }).await
    }

    async fn fork_now(
        &self,
        parent: &RunId,
        from: &str,
        changes: ForkChanges,
        drive_here: bool,
    ) -> Result<(RunId, Option<Driving>), Error> {
        let loaded = self.inner.store.load_run(parent).await?;
        let state = RunState::fold(parent.clone(), &loaded.events, loaded.payloads)
            .map_err(|source| Error::Journal { run_id: parent.to_string(), source })?;
        let mut reused = cairn_core::fork::reusable(&state, from).map_err(Error::Invalid)?;
        let mut definition = state
            .definition
            .as_ref()
            .map(|d| {
                // The definition as written: a fork adds its own instances as it runs.
                let mut d = (**d).clone();
                d.steps.truncate(d.written());
                d
            })
            .ok_or_else(|| Error::Invalid(format!("run {parent} has no recorded plan to fork")))?;
        let again = cairn_core::fork::runs_again(&state, from);
        let mut reused_payloads: Vec<(Payload, Value)> = reused
            .iter()
            .filter_map(|r| state.payload(&r.output).map(|v| ((**v).clone(), r)))
            .map(|(v, _)| (Payload::of(&v), v))
            .collect();
        // What the operator set stands in for what the parent recorded (or did not); what
        // depends on a set step runs again too.
        let mut downstream = std::collections::BTreeSet::new();
        for (step, _) in &changes.set_outputs {
            downstream.extend(cairn_core::fork::runs_again(&state, step).into_iter().filter(|s| s != step));
        }
        reused.retain(|r| !downstream.contains(r.step.as_str()));
        for (step, value) in &changes.set_outputs {
            if definition.step(step).is_none_or(|s| s.instance.is_some()) {
                return Err(Error::Invalid(format!(
                    "--set-output names step '{step}', which run {parent} does not have"
                )));
            }
            if again.contains(step) || downstream.contains(step) {
                return Err(Error::Invalid(format!(
                    "set_output {step}: step '{step}' runs again in the fork (it is '{from}', after it, or after \
                     another step whose output is set); set the output of a step before those"
                )));
            }
            let payload = Payload::of(value);
            reused.retain(|r| r.step.as_str() != step);
            reused.push(ReusedStep {
                step: StepId::new(step.clone()),
                output: payload.reference.clone(),
                from_run: parent.to_string(),
            });
            reused_payloads.push((payload, value.clone()));
        }
        let models = self.models();
        if let Some(model) = &changes.model {
            if !models.models.contains_key(model) {
                let known: Vec<&str> = models.models.keys().map(String::as_str).collect();
                return Err(Error::Invalid(format!(
                    "model '{model}' is not a model of this configuration (declared: {})",
                    if known.is_empty() { "none".to_string() } else { known.join(", ") }
                )));
            }
            // A fork inside a step reuses turns written in the step's tool-calling format.
            let step_model = definition.step(from).and_then(|s| match s.with.get("model") {
                Some(Value::String(m)) => Some(m.clone()),
                Some(Value::Array(list)) => list.first().and_then(Value::as_str).map(str::to_string),
                _ => models.default_model.clone(),
            });
            let way = |alias: &str| models.models.get(alias).map(|m| m.tool_calling);
            if let (Some(_), Some(old)) = (changes.turn, step_model.as_deref())
                && way(old).is_some()
                && way(old) != way(model)
            {
                return Err(Error::Invalid(format!(
                    "model '{model}' takes tools differently from '{old}' (tool_calling), so it cannot go on from \
                     turns '{old}' took; fork from the step without a turn"
                )));
            }
            for s in definition.steps.iter_mut().filter(|s| again.contains(s.id.as_str())) {
                if matches!(s.kind.as_str(), "llm" | "agent")
                    && let Some(with) = s.with.as_object_mut()
                {
                    with.insert("model".into(), json!(model));
                }
            }
        }
        let id = crate::new_run_id();
        if let Some(turn) = changes.turn {
            self.seed_calls(parent, &id, from, turn, &definition).await?;
        }
        let new = NewRun {
            definition,
            source: RunSource::Fork {
                parent: parent.to_string(),
                from_step: from.to_string(),
                turn: changes.turn,
                model: changes.model.clone(),
                set_outputs: changes.set_outputs.iter().map(|(s, _)| s.clone()).collect(),
            },
            plan: state.plan.clone(),
            inputs: state.inputs.clone(),
            options: state.options.clone(),
            reused,
            reused_payloads,
            planning: Vec::new(),
        };
        let driving = self.submit(id.clone(), new, Submit { idempotency: None, drive_here }).await?;
        Ok((id, driving))
    }

    /// Copies the calls `parent`'s step `step` recorded before its `turn`-th model call into the
    /// new run's effect log (as attempt 0: reused, costing nothing), so the fork's step gets them
    /// back in order and makes its first new call at that turn.
    async fn seed_calls(
        &self,
        parent: &RunId,
        fork: &RunId,
        step: &str,
        turn: u32,
        definition: &Definition,
    ) -> Result<(), Error> {
        let kind = definition.step(step).map(|s| s.kind.clone()).unwrap_or_default();
        if !matches!(kind.as_str(), "agent" | "llm") {
            return Err(Error::Invalid(format!(
                "a fork at a turn needs a model step to fork inside (kind agent or llm); step '{step}' is a {kind} step"
            )));
        }
        let rows = self.inner.store.calls(parent, Some(step)).await?;
        let turns: Vec<u32> = rows.iter().filter(|r| r.kind == "llm" && r.outcome == "ok").map(|r| r.n).collect();
        let Some(&cut) = turn.checked_sub(1).and_then(|i| turns.get(i as usize)) else {
            let range =
                if turns.is_empty() { "none to fork at".to_string() } else { format!("use 1 to {}", turns.len()) };
            return Err(Error::Invalid(format!(
                "turn {turn}: step '{step}' of run {parent} made {} model turn(s); {range}",
                turns.len()
            )));
        };
        // Every position before the cut must hold a result, or the fork's calls would not line
        // up with the parent's (a model that failed over to the next one, a call that failed).
        if let Some(gap) = rows.iter().find(|r| r.n < cut && r.outcome != "ok") {
            return Err(Error::Invalid(format!(
                "turn {turn}: call {} of step '{step}' before that turn has no result ({}), so the calls before the \
                 turn cannot be reused in order; fork from the step without a turn",
                gap.n, gap.outcome
            )));
        }
        if (1..cut).any(|n| !rows.iter().any(|r| r.n == n)) {
            return Err(Error::Invalid(format!(
                "turn {turn}: step '{step}' skipped a call position before that turn (a rejected call), so its calls \
                 cannot be reused in order; fork from the step without a turn"
            )));
        }
        let results = crate::calls::recorded(&*self.inner.store, parent, step).await?;
        for row in rows.into_iter().filter(|r| r.n < cut && r.outcome == "ok") {
            let Some(result) = results.iter().find(|r| r.n == row.n) else { continue };
            let copy =
                cairn_store::CallRow { attempt: 0, cost: None, reserved: None, duration_ms: 0, at_ms: now_ms(), ..row };
            self.inner.store.record_call(fork, copy, Some(Payload::of(&result.result))).await?;
        }
        Ok(())
    }

    /// Retries a FAILED run in place (journaled as `RunRetried`): its failed, cancelled and
    /// skipped steps run again with fresh retry budgets; completed steps keep their outputs.
    /// Driven here with `drive_here` (and room), else left for any worker.
    pub async fn retry(&self, id: &RunId, by: Option<String>, drive_here: bool) -> Result<Option<Driving>, Error> {
        let (engine, id) = (self.clone(), id.clone());
        detached(async move { engine.retry_now(&id, by, drive_here).await }).await
    }

    async fn retry_now(&self, id: &RunId, by: Option<String>, drive_here: bool) -> Result<Option<Driving>, Error> {
        let row = self.inner.store.get_run(id).await?;
        if row.status != RunStatus::Failed.as_str() {
            return Err(Error::Illegal(format!(
                "run {id} is {}; only a FAILED run can be retried in place (`cairn rerun {id} --from STEP` starts a new run from any run)",
                row.status
            )));
        }
        let lease_until = now_ms() + self.inner.config.lease_ms as i64;
        if !self.inner.store.reopen_run(id, &self.inner.config.owner, lease_until, row.last_seq).await? {
            return Err(Error::Illegal(format!("run {id} changed while it was being retried; look at it again")));
        }
        let mut live = match self.load(id).await {
            Ok(live) => live,
            Err(e) => {
                self.let_go(id, None).await;
                return Err(e);
            }
        };
        if live.state.steps.iter().any(|s| s.compensation.is_some()) {
            self.let_go(id, None).await;
            return Err(Error::Illegal(format!(
                "run {id} undid its completed steps before it failed, so it cannot be retried in place; `cairn rerun {id} --from STEP` starts it afresh"
            )));
        }
        if let Err(e) = live.feed(Event::RunRetried { by }) {
            self.let_go(id, None).await;
            return Err(e);
        }
        let driving = self.commit_and_drive(live, drive_here).await;
        if driving.is_err() {
            // Still FAILED: hand it back so that it can be retried again.
            self.let_go(id, None).await;
        }
        driving
    }

    /// Loads a run this process has claimed and drives it.
    async fn resume_one(&self, id: &RunId) -> Result<Driving, Error> {
        let mut live = self.load(id).await?;
        live.attach();
        // Requests accepted while nobody drove the run go first, in the order they were
        // accepted, before anything starts: a queued cancel or pause takes effect at once.
        live.answer_requests().await?;
        live.recover()?;
        live.commit().await?;
        Ok(self.spawn_drive(live))
    }

    /// Drives a run in a task; a driver that fails hands the run back instead of keeping it
    /// behind a lease this process would go on renewing.
    fn spawn_drive(&self, live: Live<S>) -> Driving {
        let engine = self.clone();
        let id = live.state.run_id.clone();
        tokio::spawn(async move {
            let result = live.drive().await;
            match &result {
                Err(Error::Lost { .. }) => {
                    // Usually another process took the run over. But a commit whose
                    // acknowledgement was lost (the database restarted) looks the same while
                    // the run is still ours: then hand it back for a clean recovery.
                    let still_ours = engine
                        .inner
                        .store
                        .get_run(&id)
                        .await
                        .is_ok_and(|r| r.owner.as_deref() == Some(engine.inner.config.owner.as_str()));
                    if still_ours {
                        engine.let_go(&id, None).await;
                    }
                }
                Err(e) => {
                    crate::say_limited!("driver-stopped", "[worker] run {id} stopped: {e}; handing it back");
                    engine.let_go(&id, None).await;
                }
                Ok(_) => {}
            }
            result
        })
    }

    async fn load(&self, id: &RunId) -> Result<Live<S>, Error> {
        let loaded = self.inner.store.load_run(id).await?;
        let state = RunState::fold(id.clone(), &loaded.events, loaded.payloads)
            .map_err(|source| Error::Journal { run_id: id.to_string(), source })?;
        let seq = state.last_seq;
        Ok(Live::new(self.inner.clone(), state, seq))
    }

    /// Delivers an operator request and answers once it is applied or refused: it is accepted
    /// into the run's inbox behind the requests accepted before it, then applied in that order by
    /// whoever drives the run — the driver in this process, the process that holds the run, or
    /// (nobody does) this process after taking the run over. Each request is answered in the
    /// same commit as the event that records it, so it takes effect exactly once.
    ///
    /// A refusal is `Error::Refused` with the reason. If the process driving the run does not
    /// answer within `request_wait_ms`, the answer is `Delivery::Queued`.
    pub async fn request(&self, id: &RunId, control: Control) -> Result<Delivery, Error> {
        let (engine, id) = (self.clone(), id.clone());
        detached(async move { engine.request_now(&id, control).await }).await
    }

    async fn request_now(&self, id: &RunId, control: Control) -> Result<Delivery, Error> {
        control.validate()?;
        if let Control::Decide { step, args: Some(args), approve: true, .. } = &control {
            self.check_edited_args(id, step, args).await?;
        }
        let row = self.inner.store.get_run(id).await?;
        if RunStatus::parse(&row.status).is_some_and(|s| s.is_terminal()) {
            return self.to_finished_run(id, &control).await;
        }
        let body = serde_json::to_string(&control).map_err(|e| Error::Invalid(e.to_string()))?;
        match self.inner.store.push_inbox(id, body, now_ms()).await? {
            Some(request) => self.await_request(id, request).await,
            // It finished in the meantime.
            None => self.to_finished_run(id, &control).await,
        }
    }

    /// Edited arguments must fit the input schema of the tool whose call waits: refused here,
    /// before the request is accepted, naming what does not fit.
    async fn check_edited_args(&self, id: &RunId, step: &str, args: &Value) -> Result<(), Error> {
        let live = self.load(id).await?;
        let asked = live.state.step_state(step).filter(|s| s.awaits_call_decision()).and_then(|s| s.approval.as_ref());
        let Some(call) = asked.and_then(|a| a.call.as_ref()) else { return Ok(()) };
        let own = live.state.definition.as_ref().and_then(|d| d.tools.get(&call.tool));
        let tool = match own {
            Some(spec) => crate::tools::Tools::workflow_tool(&call.tool, spec),
            None => self.inner.config.tools.find(&call.tool).await,
        };
        let tool = tool.map_err(|f| Error::Invalid(f.message))?;
        tool.check_args(&tool.normalize(args.clone()))
            .map_err(|f| Error::Refused { code: "invalid_args", message: f.message })
    }

    /// Nothing can change a finished run, but the same decision again is answered as such.
    async fn to_finished_run(&self, id: &RunId, control: &Control) -> Result<Delivery, Error> {
        let live = self.load(id).await?;
        match requests::check(&live.state, control)? {
            Some((code, message)) => Ok(Delivery::Unchanged { request: None, code: code.to_string(), message }),
            None => Err(requests::finished(id, live.state.status)),
        }
    }

    /// Waits for a request's answer, making sure someone gives it (see [`Engine::request`]).
    /// Once accepted, a request is applied whatever happens to this wait: a store error while
    /// waiting answers `Queued` (it is applied in order when the run is next driven), never an
    /// error that would invite the caller to send it again.
    pub async fn await_request(&self, id: &RunId, request: i64) -> Result<Delivery, Error> {
        match self.await_answer(id, request).await {
            Err(Error::Store(e)) => {
                crate::say_limited!(
                    "request-wait",
                    "[engine] request {request} for {id}: stopped waiting for its answer ({e})"
                );
                Ok(Delivery::Queued { request, owner: None })
            }
            other => other,
        }
    }

    async fn await_answer(&self, id: &RunId, request: i64) -> Result<Delivery, Error> {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(self.inner.config.request_wait_ms);
        let mut pause = Duration::from_millis(1);
        loop {
            let outcome = self
                .inner
                .store
                .inbox_outcome(request)
                .await?
                .ok_or_else(|| Error::Invalid(format!("request {request} is not known")))?;
            if let Some(delivery) = Delivery::from_outcome(outcome)? {
                return Ok(delivery);
            }
            if !self.poke(id) {
                let row = self.inner.store.get_run(id).await?;
                if RunStatus::parse(&row.status).is_some_and(|s| s.is_terminal()) {
                    // The run finished before this request's turn came: answer it here (the
                    // same decision again is answered as such; anything else is refused).
                    self.answer_late(id, request).await?;
                    continue;
                }
                let now = now_ms();
                let held_elsewhere = row.owner.as_deref().is_some_and(|o| {
                    o != self.inner.config.owner
                        && row.lease_expires_at_ms.is_some_and(|l| l >= now)
                        && !owner_is_dead(o)
                });
                // Nobody drives the run (or its driver died): take it over and answer the
                // requests here. Held by our own process but not driven, it is being let go.
                if !held_elsewhere && row.owner.as_deref() != Some(self.inner.config.owner.as_str()) {
                    self.take_over_for_requests(id).await?;
                    continue;
                }
            }
            if tokio::time::Instant::now() >= deadline {
                let owner = self.inner.store.get_run(id).await.ok().and_then(|r| r.owner);
                return Ok(Delivery::Queued { request, owner });
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }

    /// Answers a request whose run finished before its turn came (unless someone answered it).
    async fn answer_late(&self, id: &RunId, request: i64) -> Result<(), Error> {
        let pending = self.inner.store.pending_inbox(id).await?;
        let Some(row) = pending.into_iter().find(|r| r.id == request) else { return Ok(()) };
        let live = self.load(id).await?;
        let checked = serde_json::from_str::<Control>(&row.body)
            .map_err(|e| Error::Invalid(e.to_string()))
            .and_then(|control| requests::check(&live.state, &control));
        let (state, code, message) = match checked {
            Ok(Some((code, message))) => (RequestState::Unchanged, code, message),
            Ok(None) => (RequestState::Refused, "run_finished", format!("run {id} already finished")),
            Err(Error::Refused { code, message }) => (RequestState::Refused, code, message),
            Err(e) => (RequestState::Refused, "invalid_request", e.to_string()),
        };
        let answer = RequestOutcome {
            id: request,
            state,
            code: Some(code.to_string()),
            message: Some(message),
            journal_seq: None,
            decided_at_ms: Some(now_ms()),
        };
        self.inner.store.answer_inbox(answer).await?;
        Ok(())
    }

    /// A driver in this process drives the run.
    fn is_driven_here(&self, id: &RunId) -> bool {
        self.inner.drivers.lock().is_ok_and(|d| d.contains_key(id))
    }

    /// Rings the bell of this run's driver in this process, if there is one.
    pub(crate) fn poke(&self, id: &RunId) -> bool {
        match self.inner.drivers.lock().ok().and_then(|d| d.get(id).cloned()) {
            Some(bell) => {
                bell.notify_one();
                true
            }
            None => false,
        }
    }

    /// Takes over a run nobody drives to answer its requests; then drives it here if this
    /// process works runs, else hands it back (with what the requests changed committed).
    pub(crate) async fn take_over_for_requests(&self, id: &RunId) -> Result<(), Error> {
        let now = now_ms();
        let claimed = self
            .inner
            .store
            .claim_runs(Claim {
                owner: &self.inner.config.owner,
                now_ms: now,
                lease_until_ms: now + self.inner.config.lease_ms as i64,
                only: Some(id),
                owner_is_dead: &owner_is_dead,
                limit: 1,
            })
            .await?;
        if claimed.is_empty() {
            // Someone else took it (or finished it): they answer.
            return Ok(());
        }
        let works_here = self.inner.config.release_when_idle_ms.is_some()
            && !*self.inner.shutdown.borrow()
            && self.active_runs() < self.inner.config.max_runs;
        if works_here {
            if let Err(e) = self.resume_one(id).await {
                self.let_go(id, None).await;
                return Err(e);
            }
            return Ok(());
        }
        // Record the answers and hand the run back untouched otherwise (recovering it would
        // start attempts this process does not drive).
        let mut live = match self.load(id).await {
            Ok(live) => live,
            Err(e) => {
                self.let_go(id, None).await;
                return Err(e);
            }
        };
        let answered = match live.answer_requests().await {
            Ok(()) if live.has_pending() => {
                live.set_release();
                live.commit().await
            }
            Ok(()) => {
                let wake_at = cairn_store::RunRow::from_state(&live.state).wake_at_ms;
                self.let_go(id, wake_at).await;
                Ok(())
            }
            Err(e) => Err(e),
        };
        if let Err(e) = answered {
            self.let_go(id, None).await;
            return Err(e);
        }
        self.inner.wake.notify_one();
        Ok(())
    }

    /// Works as a worker until the engine drains: claims runs that need attention and drives
    /// them. The process is listed among the workers meanwhile (see [`Engine::live_workers`]).
    pub fn spawn_worker(&self) -> tokio::task::JoinHandle<()> {
        let engine = self.clone();
        tokio::spawn(async move {
            engine.sync_clock().await;
            if let Ok(mut w) = engine.inner.working_since.lock() {
                *w = Some(now_ms());
            }
            engine.seen_working().await;
            let signal = engine.inner.store.wake_signal();
            // Runs left by processes that died on this host are taken at once.
            if let Ok(resumed) = engine.resume(None).await {
                for (id, driving) in resumed {
                    if let Err(e) = driving {
                        crate::say_limited!("cannot-drive", "[worker] cannot drive run {id}: {e}; handing it back");
                        engine.let_go(&id, None).await;
                    }
                }
            }
            let mut shutdown = engine.inner.shutdown.subscribe();
            let poll = Duration::from_millis(engine.inner.config.poll_ms.max(10));
            // Held runs carry no wake time, so runs whose owner stopped heartbeating are found
            // by their expired lease, swept this often.
            let sweep_every = Duration::from_millis((engine.inner.config.lease_ms / 2).max(100));
            let mut last_sweep = tokio::time::Instant::now();
            loop {
                if *shutdown.borrow() {
                    return;
                }
                if last_sweep.elapsed() >= sweep_every {
                    last_sweep = tokio::time::Instant::now();
                    if let Ok(resumed) = engine.resume(None).await {
                        for (id, driving) in resumed {
                            if let Err(e) = driving {
                                crate::say_limited!(
                                    "cannot-drive",
                                    "[worker] cannot drive run {id}: {e}; handing it back"
                                );
                                engine.let_go(&id, None).await;
                            }
                        }
                    }
                }
                engine.claim_some().await;
                let elsewhere = async {
                    match &signal {
                        Some(n) => n.notified().await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    _ = engine.inner.wake.notified() => {}
                    _ = elsewhere => {}
                    _ = tokio::time::sleep(poll) => {}
                    _ = shutdown.changed() => {}
                }
            }
        })
    }

    async fn claim_some(&self) {
        if self.inner.claiming.swap(true, Ordering::AcqRel) {
            return;
        }
        let free = self.inner.config.max_runs.saturating_sub(self.active_runs());
        if free > 0 {
            let now = now_ms();
            let until = now + self.inner.config.lease_ms as i64;
            if let Ok(ids) = self.inner.store.claim_ready(&self.inner.config.owner, now, until, free.min(256)).await {
                for id in ids.into_iter().filter(|id| !self.is_driven_here(id)) {
                    if let Err(e) = self.resume_one(&id).await {
                        crate::say_limited!("cannot-drive", "[worker] cannot drive run {id}: {e}; handing it back");
                        self.let_go(&id, None).await;
                    }
                }
            }
        }
        self.inner.claiming.store(false, Ordering::Release);
    }

    /// Hands a run this process holds back to any worker (after an error, or when there is
    /// nothing to record), so it is never stranded behind a lease this process keeps renewing.
    /// If the database cannot be reached now, the heartbeat keeps trying.
    pub(crate) async fn let_go(&self, id: &RunId, wake_at_ms: Option<i64>) {
        let wake = wake_at_ms.or(Some(now_ms() + 1_000));
        if let Err(e) = self.inner.store.release_run(&self.inner.config.owner, id, wake).await {
            crate::say_limited!("let-go", "[worker] run {id}: could not hand it back yet ({e}); retrying");
            if let Ok(mut pending) = self.inner.to_let_go.lock() {
                pending.push(id.clone());
            }
        }
    }

    /// Retries hand-backs that failed (the database was away).
    async fn retry_let_go(&self) {
        let pending = self.inner.to_let_go.lock().map(|mut p| std::mem::take(&mut *p)).unwrap_or_default();
        for id in pending {
            let driven = self.inner.drivers.lock().is_ok_and(|d| d.contains_key(&id));
            if !driven {
                self.let_go(&id, None).await;
            }
        }
    }

    /// Measures this host's clock against the database's and adopts the database's.
    pub async fn sync_clock(&self) {
        match self.inner.store.clock_offset_ms().await {
            Ok(offset) => crate::set_clock_offset(offset),
            Err(e) => crate::say_limited!("clock", "[engine] cannot read the database clock ({e}); using this host's"),
        }
    }

    /// Wakes the worker loop now (e.g. after runs were created elsewhere in this process).
    pub fn nudge(&self) {
        self.inner.wake.notify_one();
    }

    /// Keeps this process's leases alive, tells its drivers when requests wait for their runs,
    /// and (once it works runs) keeps it listed among the workers; until aborted.
    pub fn spawn_heartbeat(&self) -> tokio::task::JoinHandle<()> {
        let engine = self.clone();
        tokio::spawn(async move {
            let inner = &engine.inner;
            let every = Duration::from_millis((inner.config.lease_ms / 3).clamp(100, 1_000));
            let signal = inner.store.wake_signal();
            // Requests from other processes reach a run's driver within this long (PostgreSQL
            // also notifies at once; the poll is the fallback there).
            let inbox_every = Duration::from_millis(if signal.is_some() { 250 } else { 50 });
            let mut last_beat = tokio::time::Instant::now();
            let mut beats: u64 = 0;
            let mut lease_failing = false;
            loop {
                let elsewhere = async {
                    match &signal {
                        Some(n) => n.notified().await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    _ = tokio::time::sleep(inbox_every) => {}
                    _ = elsewhere => {
                        // Wake-ups come for every run created or handed back anywhere: look at
                        // most every 20 ms however many arrive.
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
                if let Ok(runs) = inner.store.runs_with_inbox(&inner.config.owner).await {
                    for id in runs {
                        engine.poke(&id);
                    }
                }
                if last_beat.elapsed() < every {
                    continue;
                }
                last_beat = tokio::time::Instant::now();
                beats += 1;
                if beats.is_multiple_of(60) {
                    engine.sync_clock().await;
                }
                engine.retry_let_go().await;
                let lease_every = ((inner.config.lease_ms / 3) / every.as_millis().max(1) as u64).max(1);
                // While renewing fails (disk full, database away), try at every beat: once writes
                // work again, the leases must be renewed before they run out.
                if lease_failing || beats.is_multiple_of(lease_every) {
                    let until = now_ms() + inner.config.lease_ms as i64;
                    let driven: Vec<RunId> =
                        inner.drivers.lock().map(|d| d.keys().cloned().collect()).unwrap_or_default();
                    lease_failing = match inner.store.heartbeat(&inner.config.owner, &driven, until).await {
                        Ok(_) => false,
                        Err(e) => {
                            crate::say_limited!("heartbeat", "[engine] could not renew this process's leases ({e})");
                            true
                        }
                    };
                }
                engine.seen_working().await;
            }
        })
    }

    /// Refreshes this process's entry among the workers, if it works runs.
    async fn seen_working(&self) {
        let since = self.inner.working_since.lock().ok().and_then(|w| *w);
        if let Some(started_at_ms) = since {
            let row = WorkerRow {
                owner: self.inner.config.owner.clone(),
                role: self.inner.config.role.to_string(),
                started_at_ms,
                seen_at_ms: now_ms(),
            };
            if let Err(e) = self.inner.store.worker_seen(row).await {
                crate::say_limited!("worker-seen", "[worker] could not record this worker as alive ({e})");
            }
        }
    }

    /// Processes that work runs for anyone and were seen in the last few seconds, most recent
    /// first, without those known to be dead (a process on this host that is gone).
    pub async fn live_workers(&self) -> Result<Vec<WorkerRow>, Error> {
        let every = (self.inner.config.lease_ms / 3).clamp(100, 1_000) as i64;
        let rows = self.inner.store.workers(now_ms() - 5 * every - 2_000).await?;
        Ok(rows.into_iter().filter(|w| !owner_is_dead(&w.owner)).collect())
    }

    /// Stops starting work: drivers finish the attempts in flight, commit them, and stop.
    pub fn drain(&self) {
        let _ = self.inner.shutdown.send(true);
        self.inner.wake.notify_waiters();
    }

    pub fn is_draining(&self) -> bool {
        *self.inner.shutdown.borrow()
    }

    /// Gives up this process's leases (clean shutdown) so another process can resume at once,
    /// and its place among the workers.
    pub async fn release(&self) -> Result<u64, Error> {
        let was_working = self.inner.working_since.lock().ok().and_then(|mut w| w.take()).is_some();
        if was_working {
            let _ = self.inner.store.worker_gone(&self.inner.config.owner).await;
        }
        Ok(self.inner.store.release(&self.inner.config.owner, now_ms()).await?)
    }
}
