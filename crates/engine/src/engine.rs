//! The engine: creates runs, drives them (one task per run), takes work from the store as a
//! worker, and routes operator requests to whoever drives a run.

use crate::driver::Live;
use crate::{Error, now_ms, owner_is_dead};
use cairn_core::event::{Event, PlanInfo, RunOptions, RunSource};
use cairn_core::payload::Payload;
use cairn_core::state::RunState;
use cairn_core::{Definition, RunId, RunStatus};
use cairn_store::{Claim, IdempotencyKey, Store};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, Semaphore, mpsc, oneshot, watch};

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
    Committed { run_id: RunId, events: Vec<cairn_core::Envelope> },
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

/// An operator's request to a run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "request", rename_all = "snake_case")]
pub enum Control {
    Cancel {
        reason: String,
        by: Option<String>,
    },
    Pause {
        by: Option<String>,
    },
    Unpause {
        by: Option<String>,
    },
    Signal {
        name: String,
        payload: Value,
        by: Option<String>,
    },
    /// Approve or reject a step waiting at an approval gate, or answer an escalated failure.
    Decide {
        step: String,
        approve: bool,
        by: Option<String>,
        comment: Option<String>,
        #[serde(default)]
        escalation: Option<EscalationChoice>,
    },
    /// Move the run to another version of its definition (a compiled definition as JSON).
    Migrate {
        definition: Value,
        by: Option<String>,
    },
}

/// Why a run in `status` cannot take `control`, when no queued request could change that: a
/// COMPENSATING run only ever ends, so it cannot be paused, resumed or cancelled. (Other states
/// are left to the owner: a pause queued just before an unpause makes the unpause legal.)
fn refused_in(status: RunStatus, control: &Control) -> Option<String> {
    let what = match control {
        Control::Pause { .. } => "paused",
        Control::Unpause { .. } => "resumed",
        Control::Cancel { .. } => "cancelled",
        _ => return None,
    };
    (status == RunStatus::Compensating)
        .then(|| format!("it is undoing its completed steps and runs to its end; it cannot be {what}"))
}

/// An answer to an escalated failure.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "do", rename_all = "snake_case")]
pub enum EscalationChoice {
    Retry,
    Skip { output: Value },
    Abort,
}

impl Control {
    /// The event that records this request against the run's current state.
    pub(crate) fn into_event(self, state: &RunState) -> Result<(Event, Option<(Payload, Value)>), Error> {
        Ok(match self {
            Control::Cancel { reason, by } => (Event::RunCancelled { reason, by }, None),
            Control::Pause { by } => (Event::RunPaused { by }, None),
            Control::Unpause { by } => (Event::RunUnpaused { by }, None),
            Control::Decide { step, approve, by, comment, escalation } => {
                use cairn_core::event::Escalation;
                let (action, payload) = match escalation {
                    None => (None, None),
                    Some(EscalationChoice::Retry) => (Some(Escalation::Retry { fresh_budget: true }), None),
                    Some(EscalationChoice::Abort) => (Some(Escalation::Abort), None),
                    Some(EscalationChoice::Skip { output }) => {
                        let p = Payload::of(&output);
                        (Some(Escalation::Skip { output: p.reference.clone() }), Some((p, output)))
                    }
                };
                let step = cairn_core::StepId::new(step);
                (Event::ApprovalDecided { step, approved: approve, by, comment, action }, payload)
            }
            Control::Migrate { definition, by } => {
                let to: Definition = serde_json::from_value(definition.clone())
                    .map_err(|e| Error::Invalid(format!("not a compiled definition: {e}")))?;
                let from_version = state.definition.as_ref().map(|d| d.version).unwrap_or(0);
                let p = Payload::of(&definition);
                let event = Event::DefinitionMigrated {
                    definition: p.reference.clone(),
                    from_version,
                    to_version: to.version,
                    by,
                };
                (event, Some((p, definition)))
            }
            Control::Signal { name, payload, by } => {
                let p = Payload::of(&payload);
                let reference = p.reference.clone();
                (Event::SignalReceived { name, payload: reference, by }, Some((p, payload)))
            }
        })
    }
}

/// How a request reached its run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Applied and committed.
    Applied,
    /// The run is driven by another live process; the request waits in its inbox.
    Queued,
}

pub(crate) type ControlMsg = (Control, oneshot::Sender<Result<(), Error>>);

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
    pub(crate) drivers: Mutex<HashMap<RunId, mpsc::UnboundedSender<ControlMsg>>>,
    /// Wakes the worker loop (a run was created or handed back).
    pub(crate) wake: Notify,
    /// `true` once the engine drains: nothing new starts, drivers stop when idle.
    pub(crate) shutdown: watch::Sender<bool>,
    claiming: AtomicBool,
    /// Runs whose hand-back failed; the heartbeat retries.
    to_let_go: Mutex<Vec<RunId>>,
}

impl<S: Store> Engine<S> {
    pub fn new(store: Arc<S>, config: EngineConfig, notices: Option<mpsc::UnboundedSender<Notice>>) -> Self {
        let permits = Arc::new(Semaphore::new(config.concurrency.max(1)));
        let (shutdown, _) = watch::channel(false);
        Engine {
            inner: Arc::new(Inner {
                store,
                config,
                permits,
                notices,
                drivers: Mutex::new(HashMap::new()),
                wake: Notify::new(),
                shutdown,
                claiming: AtomicBool::new(false),
                to_let_go: Mutex::new(Vec::new()),
            }),
        }
    }

    pub fn store(&self) -> &Arc<S> {
        &self.inner.store
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
        let mut live = Live::new(self.inner.clone(), RunState::new(run_id), 0);
        let workflow = new.definition.name.clone();
        live.feed(Event::RunCreated { workflow, source: new.source, inputs: new.inputs, options: new.options })?;
        // `decide` asked for a plan: the plan was made before the run existed (the planner is
        // pure), so record it now, in the same commit.
        let json = serde_json::to_value(&new.definition).map_err(|e| Error::Invalid(e.to_string()))?;
        let payload = Payload::of(&json);
        live.state.add_payload(&payload, json);
        let definition = payload.reference.clone();
        live.add_payload(payload);
        for (p, value) in new.reused_payloads {
            live.state.add_payload(&p, value);
            live.add_payload(p);
        }
        live.feed(Event::PlanRecorded { definition, plan: new.plan, reused: new.reused })?;
        live.set_idempotency(submit.idempotency);
        self.commit_and_drive(live, submit.drive_here).await
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
            let driving = self.resume_one(&id).await;
            handles.push((id, driving));
        }
        Ok(handles)
    }

    /// Starts a new run that reuses `parent`'s recorded results for every completed step except
    /// `from` and what depends on it, and executes from there (pinned to the parent's
    /// definition, with its inputs). Returns the new run's id.
    pub async fn fork(&self, parent: &RunId, from: &str, drive_here: bool) -> Result<(RunId, Option<Driving>), Error> {
        let loaded = self.inner.store.load_run(parent).await?;
        let state = RunState::fold(parent.clone(), &loaded.events, loaded.payloads)
            .map_err(|source| Error::Journal { run_id: parent.to_string(), source })?;
        let reused = cairn_core::fork::reusable(&state, from).map_err(Error::Invalid)?;
        let definition = state
            .definition
            .as_ref()
            .map(|d| (**d).clone())
            .ok_or_else(|| Error::Invalid(format!("run {parent} has no recorded plan to fork")))?;
        let reused_payloads = reused
            .iter()
            .filter_map(|r| state.payload(&r.output).map(|v| ((**v).clone(), r)))
            .map(|(v, _)| (Payload::of(&v), v))
            .collect();
        let new = NewRun {
            definition,
            source: RunSource::Fork { parent: parent.to_string(), from_step: from.to_string() },
            plan: state.plan.clone(),
            inputs: state.inputs.clone(),
            options: state.options.clone(),
            reused,
            reused_payloads,
        };
        let id = crate::new_run_id();
        let driving = self.submit(id.clone(), new, Submit { idempotency: None, drive_here }).await?;
        Ok((id, driving))
    }

    /// Retries a FAILED run in place (journaled as `RunRetried`): its failed, cancelled and
    /// skipped steps run again with fresh retry budgets; completed steps keep their outputs.
    /// Driven here with `drive_here` (and room), else left for any worker.
    pub async fn retry(&self, id: &RunId, by: Option<String>, drive_here: bool) -> Result<Option<Driving>, Error> {
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
        // Requests left for whoever drives this run next; before anything starts, so a queued
        // cancel or pause takes effect first.
        let queued = self.inner.store.take_inbox_for(id).await?;
        for request in &queued {
            match serde_json::from_str::<Control>(&request.body) {
                Ok(control) => {
                    if let Err(e) = live.apply_control(control) {
                        eprintln!("[worker] run {id}: queued request not applied: {e}");
                    }
                }
                Err(e) => eprintln!("[worker] run {id}: unreadable queued request: {e}"),
            }
        }
        let committed = match live.recover() {
            Ok(()) => live.commit().await,
            Err(e) => Err(e),
        };
        if let Err(e) = committed {
            // Put the requests back for the next driver.
            for request in queued {
                let _ = self.inner.store.push_inbox(id, request.body, now_ms()).await;
            }
            return Err(e);
        }
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
                    eprintln!("[worker] run {id} stopped: {e}; handing it back");
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

    /// Delivers an operator request: to the local driver, else by taking the run over briefly,
    /// else (another live process drives it) through the store's inbox.
    pub async fn request(&self, id: &RunId, control: Control) -> Result<Delivery, Error> {
        for _ in 0..200 {
            let local = self.inner.drivers.lock().ok().and_then(|d| d.get(id).cloned());
            if let Some(tx) = local {
                let (reply, rx) = oneshot::channel();
                if tx.send((control.clone(), reply)).is_ok()
                    && let Ok(result) = rx.await
                {
                    return result.map(|()| Delivery::Applied);
                }
                // The driver let go of the run in the meantime: try again.
                continue;
            }
            let row = self.inner.store.get_run(id).await?;
            if RunStatus::parse(&row.status).is_some_and(|s| s.is_terminal()) {
                return Err(Error::Illegal(format!("run {id} already finished ({})", row.status)));
            }
            // Refuse now what the run's state cannot take, rather than queue it for an owner that
            // would only log the refusal.
            if let Some(why) = RunStatus::parse(&row.status).and_then(|s| refused_in(s, &control)) {
                return Err(Error::Illegal(format!("run {id} is {}: {why}", row.status)));
            }
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
                if row.owner.as_deref() == Some(self.inner.config.owner.as_str()) {
                    // Our own driver is letting go of the run this very moment: wait for it.
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                }
                let body = serde_json::to_string(&control).map_err(|e| Error::Invalid(e.to_string()))?;
                if self.inner.store.push_inbox(id, body, now_ms()).await? {
                    return Ok(Delivery::Queued);
                }
                continue;
            }
            let mut live = match self.load(id).await {
                Ok(live) => live,
                Err(e) => {
                    self.let_go(id, None).await;
                    return Err(e);
                }
            };
            let applied = live.apply_control(control.clone());
            // Drive it here if this process works runs; otherwise record the request and hand
            // the run back untouched (recovering it would start attempts this process cannot
            // see through).
            let works_here = self.inner.config.release_when_idle_ms.is_some()
                && !*self.inner.shutdown.borrow()
                && self.active_runs() < self.inner.config.max_runs;
            if works_here {
                live.attach();
                if let Err(e) = live.recover() {
                    self.let_go(id, None).await;
                    return Err(e);
                }
                live.commit().await?;
                self.spawn_drive(live);
            } else {
                let wake_at = cairn_store::RunRow::from_state(&live.state).wake_at_ms.or(Some(now_ms()));
                if live.has_pending() {
                    live.set_release();
                    if let Err(e) = live.commit().await {
                        self.let_go(id, wake_at).await;
                        return Err(e);
                    }
                } else {
                    // Nothing was recorded (an illegal request): just let go again.
                    self.let_go(id, wake_at).await;
                }
                self.inner.wake.notify_one();
            }
            return applied.map(|()| Delivery::Applied);
        }
        Err(Error::Invalid(format!("run {id} kept changing hands; try the request again")))
    }

    /// Works as a worker until the engine drains: claims runs that need attention and drives
    /// them, and delivers inbox requests for runs it holds.
    pub fn spawn_worker(&self) -> tokio::task::JoinHandle<()> {
        let engine = self.clone();
        tokio::spawn(async move {
            engine.sync_clock().await;
            let signal = engine.inner.store.wake_signal();
            // Runs left by processes that died on this host are taken at once.
            if let Ok(resumed) = engine.resume(None).await {
                for (id, driving) in resumed {
                    if let Err(e) = driving {
                        eprintln!("[worker] cannot drive run {id}: {e}; handing it back");
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
                                eprintln!("[worker] cannot drive run {id}: {e}; handing it back");
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
                for id in ids {
                    if let Err(e) = self.resume_one(&id).await {
                        eprintln!("[worker] cannot drive run {id}: {e}; handing it back");
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
            eprintln!("[worker] run {id}: could not hand it back yet ({e}); retrying");
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
            Err(e) => eprintln!("[engine] cannot read the database clock ({e}); using this host's"),
        }
    }

    /// Wakes the worker loop now (e.g. after runs were created elsewhere in this process).
    pub fn nudge(&self) {
        self.inner.wake.notify_one();
    }

    /// Keeps this process's leases alive and delivers inbox requests, until aborted.
    pub fn spawn_heartbeat(&self) -> tokio::task::JoinHandle<()> {
        let engine = self.clone();
        tokio::spawn(async move {
            let inner = &engine.inner;
            let every = Duration::from_millis((inner.config.lease_ms / 3).clamp(100, 1_000));
            let mut beats: u64 = 0;
            loop {
                tokio::time::sleep(every).await;
                beats += 1;
                if beats.is_multiple_of(60) {
                    engine.sync_clock().await;
                }
                engine.retry_let_go().await;
                let lease_every = ((inner.config.lease_ms / 3) / every.as_millis().max(1) as u64).max(1);
                if beats.is_multiple_of(lease_every) {
                    let until = now_ms() + inner.config.lease_ms as i64;
                    let _ = inner.store.heartbeat(&inner.config.owner, until).await;
                }
                if let Ok(requests) = inner.store.take_inbox(&inner.config.owner).await {
                    for r in requests {
                        let (Ok(id), Ok(control)) = (RunId::parse(&r.run_id), serde_json::from_str::<Control>(&r.body))
                        else {
                            continue;
                        };
                        let engine = engine.clone();
                        tokio::spawn(async move {
                            match engine.request(&id, control).await {
                                Ok(_) => {}
                                Err(Error::Illegal(m)) => {
                                    eprintln!("[worker] queued request for {id} not applied: {m}")
                                }
                                Err(e) => {
                                    eprintln!("[worker] queued request for {id} failed ({e}); keeping it queued");
                                    let _ = engine.inner.store.push_inbox(&id, r.body, now_ms()).await;
                                }
                            }
                        });
                    }
                }
            }
        })
    }

    /// Stops starting work: drivers finish the attempts in flight, commit them, and stop.
    pub fn drain(&self) {
        let _ = self.inner.shutdown.send(true);
        self.inner.wake.notify_waiters();
    }

    pub fn is_draining(&self) -> bool {
        *self.inner.shutdown.borrow()
    }

    /// Gives up this process's leases (clean shutdown) so another process can resume at once.
    pub async fn release(&self) -> Result<u64, Error> {
        Ok(self.inner.store.release(&self.inner.config.owner, now_ms()).await?)
    }
}
