//! The per-run driver: decide → commit → effects, in a loop, until the run settles.

use crate::activity::{self, AttemptContext};
use crate::{Error, now_ms, owner_is_dead};
use cairn_core::decide::{self, Command};
use cairn_core::event::{Envelope, ErrorClass, Event, Failure, JOURNAL_SCHEMA, PlanInfo, RunOptions, RunSource};
use cairn_core::payload::Payload;
use cairn_core::state::RunState;
use cairn_core::{Definition, RunId, RunStatus, StepId, StepStatus};
use cairn_store::{Claim, LogLine, RunRow, RunWrite, StepRow, Store, StoredEvent};
use serde_json::Value;
use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinSet;

#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Lease owner id of this process (`host:pid:nonce`).
    pub owner: String,
    /// Activities allowed in flight at once, across all runs.
    pub concurrency: usize,
    /// How long a lease lasts without a heartbeat.
    pub lease_ms: u64,
    /// Test hook: after an attempt of this step returns, pause (so a test can SIGKILL the process
    /// between "the activity returned" and "its result was committed").
    pub hold_after_activity: Option<String>,
}

impl EngineConfig {
    pub fn new(owner: String) -> Self {
        EngineConfig { owner, concurrency: 64, lease_ms: 30_000, hold_after_activity: None }
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
}

/// Something observers (the CLI's progress lines) may want to know, sent after each commit.
#[derive(Debug, Clone)]
pub enum Notice {
    Committed { run_id: RunId, events: Vec<Envelope> },
}

#[derive(Debug, Clone)]
pub struct RunOutcome {
    pub run_id: RunId,
    pub status: RunStatus,
    pub failure: Option<Failure>,
    pub output: Option<Value>,
    pub artifact: Option<String>,
    /// The engine's final in-memory state; folding the journal must reproduce it exactly.
    pub state: Box<RunState>,
}

/// The task driving one run to its end.
pub type Driving = tokio::task::JoinHandle<Result<RunOutcome, Error>>;

pub struct Engine<S: Store> {
    inner: Arc<Inner<S>>,
}

impl<S: Store> Clone for Engine<S> {
    fn clone(&self) -> Self {
        Engine { inner: self.inner.clone() }
    }
}

struct Inner<S> {
    store: Arc<S>,
    config: EngineConfig,
    permits: Arc<Semaphore>,
    notices: Option<mpsc::UnboundedSender<Notice>>,
}

impl<S: Store> Engine<S> {
    pub fn new(store: Arc<S>, config: EngineConfig, notices: Option<mpsc::UnboundedSender<Notice>>) -> Self {
        let permits = Arc::new(Semaphore::new(config.concurrency.max(1)));
        Engine { inner: Arc::new(Inner { store, config, permits, notices }) }
    }

    pub fn store(&self) -> &Arc<S> {
        &self.inner.store
    }

    pub fn owner(&self) -> &str {
        &self.inner.config.owner
    }

    /// Creates the run (first commit: created, planned, first steps started) and drives it in a
    /// task. The id is known as soon as this returns.
    pub async fn start(
        &self,
        run_id: RunId,
        new: NewRun,
    ) -> Result<tokio::task::JoinHandle<Result<RunOutcome, Error>>, Error> {
        let mut live = Live::new(self.inner.clone(), RunState::new(run_id), 0);
        let workflow = new.definition.name.clone();
        live.feed(Event::RunCreated { workflow, source: new.source, inputs: new.inputs, options: new.options })?;
        // `decide` asked for a plan: the plan was made before the run existed (the planner is
        // pure), so record it now, in the same commit.
        let json = serde_json::to_value(&new.definition).map_err(|e| Error::Invalid(e.to_string()))?;
        let payload = Payload::of(&json);
        live.state.add_payload(&payload, json);
        let definition = payload.reference.clone();
        live.payloads.push(payload);
        live.feed(Event::PlanRecorded { definition, plan: new.plan })?;
        live.start_ready()?;
        live.commit().await?;
        Ok(tokio::spawn(live.drive()))
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

    async fn resume_one(&self, id: &RunId) -> Result<Driving, Error> {
        let loaded = self.inner.store.load_run(id).await?;
        let state = RunState::fold(id.clone(), &loaded.events, loaded.payloads)
            .map_err(|source| Error::Journal { run_id: id.to_string(), source })?;
        let seq = state.last_seq;
        let mut live = Live::new(self.inner.clone(), state, seq);
        live.recover()?;
        live.commit().await?;
        Ok(tokio::spawn(live.drive()))
    }

    /// Keeps this process's leases alive until the returned task is aborted.
    pub fn spawn_heartbeat(&self) -> tokio::task::JoinHandle<()> {
        let inner = self.inner.clone();
        tokio::spawn(async move {
            let every = Duration::from_millis((inner.config.lease_ms / 3).max(100));
            loop {
                tokio::time::sleep(every).await;
                let until = now_ms() + inner.config.lease_ms as i64;
                let _ = inner.store.heartbeat(&inner.config.owner, until).await;
            }
        })
    }

    /// Gives up this process's leases (clean shutdown) so another process can resume at once.
    pub async fn release(&self) -> Result<u64, Error> {
        Ok(self.inner.store.release(&self.inner.config.owner).await?)
    }
}

/// An attempt whose `AttemptStarted` is in the batch being committed.
struct Launch {
    index: usize,
    step: StepId,
    attempt: u32,
    input: Value,
    permit: OwnedSemaphorePermit,
}

struct Finished {
    index: usize,
    step: StepId,
    attempt: u32,
    outcome: activity::Outcome,
    duration_ms: u64,
}

/// One run being driven: its state plus everything decided but not yet committed.
struct Live<S: Store> {
    inner: Arc<Inner<S>>,
    state: RunState,
    committed_seq: u64,
    events: Vec<Envelope>,
    payloads: Vec<Payload>,
    touched: BTreeSet<usize>,
    logs: Vec<LogLine>,
    start_queue: VecDeque<(usize, StepId, u32, Value)>,
    launches: Vec<Launch>,
    timers: Vec<(i64, StepId)>,
    running: JoinSet<Finished>,
}

impl<S: Store> Live<S> {
    fn new(inner: Arc<Inner<S>>, state: RunState, committed_seq: u64) -> Self {
        Live {
            inner,
            state,
            committed_seq,
            events: Vec::new(),
            payloads: Vec::new(),
            touched: BTreeSet::new(),
            logs: Vec::new(),
            start_queue: VecDeque::new(),
            launches: Vec::new(),
            timers: Vec::new(),
            running: JoinSet::new(),
        }
    }

    fn journal_error(&self, source: cairn_core::state::Error) -> Error {
        Error::Journal { run_id: self.state.run_id.to_string(), source }
    }

    /// Reports an external event to the core and queues everything it decides.
    fn feed(&mut self, event: Event) -> Result<(), Error> {
        let env = Envelope { seq: self.state.last_seq + 1, at_ms: now_ms(), schema: JOURNAL_SCHEMA, event };
        let commands = decide::decide(&mut self.state, &env).map_err(|e| self.journal_error(e))?;
        self.note(env);
        self.handle(commands);
        Ok(())
    }

    fn note(&mut self, env: Envelope) {
        if let Some(i) = env.event.step().and_then(|s| self.state.step_index(s.as_str())) {
            self.touched.insert(i);
        }
        if matches!(env.event, Event::RunFailed { .. } | Event::RunCancelled { .. } | Event::PlanRecorded { .. }) {
            self.touched.extend(0..self.state.steps.len());
        }
        self.events.push(env);
    }

    fn handle(&mut self, commands: Vec<Command>) {
        for c in commands {
            match c {
                Command::Record(env) => self.note(env),
                Command::StorePayload(p) => self.payloads.push(p),
                // Plans are made before the run is created (see `Engine::start`).
                Command::Plan => {}
                Command::StartAttempt { step, index, attempt, input } => {
                    self.start_queue.push_back((index, step, attempt, input));
                }
                Command::ArmTimer { step, at_ms } => self.timers.push((at_ms, step)),
            }
        }
    }

    /// After a restart: report attempts that were cut off, then start what is ready and re-arm
    /// timers.
    fn recover(&mut self) -> Result<(), Error> {
        let interrupted: Vec<(StepId, u32)> = self
            .state
            .steps
            .iter()
            .filter(|s| s.status == StepStatus::Running)
            .map(|s| (s.id.clone(), s.attempts))
            .collect();
        let resumed = decide::resume_commands(&mut self.state).map_err(|e| self.journal_error(e))?;
        self.handle(resumed);
        for (step, attempt) in interrupted {
            let failure = Failure::new(
                ErrorClass::Transient,
                format!("attempt {attempt} was interrupted: the process running it stopped before recording a result"),
            );
            self.log(&step, attempt, "warn", failure.message.clone());
            self.feed(Event::AttemptFailed { step, attempt, failure, duration_ms: 0 })?;
        }
        self.start_ready()
    }

    fn log(&mut self, step: &StepId, attempt: u32, level: &str, message: String) {
        self.logs.push(LogLine { step_id: step.to_string(), attempt, at_ms: now_ms(), level: level.into(), message });
    }

    /// Records `AttemptStarted` for queued attempts while concurrency permits are free.
    fn start_ready(&mut self) -> Result<(), Error> {
        while let Some((index, ..)) = self.start_queue.front() {
            let index = *index;
            if self.state.status.is_terminal()
                || self.state.steps.get(index).map(|s| s.status) != Some(StepStatus::Ready)
            {
                self.start_queue.pop_front();
                continue;
            }
            let Ok(permit) = self.inner.permits.clone().try_acquire_owned() else { break };
            let Some((index, step, attempt, input)) = self.start_queue.pop_front() else { break };
            self.launch(index, step, attempt, input, permit)?;
        }
        Ok(())
    }

    fn launch(
        &mut self,
        index: usize,
        step: StepId,
        attempt: u32,
        input: Value,
        permit: OwnedSemaphorePermit,
    ) -> Result<(), Error> {
        let payload = Payload::of(&input);
        let reference = payload.reference.clone();
        self.state.add_payload(&payload, input.clone());
        self.payloads.push(payload);
        self.log(&step, attempt, "info", format!("attempt {attempt} started"));
        self.feed(Event::AttemptStarted { step: step.clone(), attempt, input: reference })?;
        self.launches.push(Launch { index, step, attempt, input, permit });
        Ok(())
    }

    async fn commit(&mut self) -> Result<(), Error> {
        if self.events.is_empty() {
            return Ok(());
        }
        let touched: Vec<usize> = std::mem::take(&mut self.touched).into_iter().collect();
        let mut run = RunRow::from_state(&self.state);
        run.owner = Some(self.inner.config.owner.clone());
        let write = RunWrite {
            run_id: self.state.run_id.clone(),
            expected_seq: self.committed_seq,
            owner: self.inner.config.owner.clone(),
            lease_until_ms: now_ms() + self.inner.config.lease_ms as i64,
            events: self.events.iter().map(StoredEvent::from_envelope).collect(),
            payloads: std::mem::take(&mut self.payloads),
            run,
            steps: StepRow::from_state(&self.state, Some(&touched)),
            logs: std::mem::take(&mut self.logs),
        };
        match self.inner.store.commit(write).await {
            Ok(()) => {}
            Err(cairn_store::Error::Conflict { .. }) => {
                return Err(Error::Lost { run_id: self.state.run_id.to_string() });
            }
            Err(e) => return Err(e.into()),
        }
        self.committed_seq = self.state.last_seq;
        let events = std::mem::take(&mut self.events);
        if let Some(tx) = &self.inner.notices {
            let _ = tx.send(Notice::Committed { run_id: self.state.run_id.clone(), events });
        }
        // Effects only after the commit: start the attempts just journaled.
        for launch in std::mem::take(&mut self.launches) {
            self.spawn_attempt(launch);
        }
        Ok(())
    }

    fn spawn_attempt(&mut self, l: Launch) {
        let Some(def) = self.state.definition.clone() else { return };
        let step_def = def.steps[l.index].clone();
        let run_id = self.state.run_id.to_string();
        let workflow = self.state.workflow.clone();
        let chaos = self.state.options.chaos;
        let hold = self.inner.config.hold_after_activity.as_deref() == Some(step_def.id.as_str());
        self.running.spawn(async move {
            let _permit = l.permit;
            let started = Instant::now();
            let ctx = AttemptContext {
                run_id: &run_id,
                workflow: &workflow,
                step: step_def.id.as_str(),
                kind: &step_def.kind,
                attempt: l.attempt,
                input: &l.input,
                inject: step_def.inject.as_ref(),
                chaos,
            };
            let fut = activity::execute(ctx);
            let outcome = match step_def.timeout_ms {
                Some(ms) => match tokio::time::timeout(Duration::from_millis(ms), fut).await {
                    Ok(o) => o,
                    Err(_) => activity::Outcome {
                        result: Err(Failure::new(
                            ErrorClass::Timeout,
                            format!(
                                "attempt {} ran past its timeout of {} and was cancelled",
                                l.attempt,
                                cairn_core::duration::format_ms(ms)
                            ),
                        )),
                        logs: Vec::new(),
                    },
                },
                None => fut.await,
            };
            if hold {
                eprintln!("[debug] holding after activity {} attempt {}", step_def.id, l.attempt);
                tokio::time::sleep(Duration::from_secs(3600)).await;
            }
            Finished {
                index: l.index,
                step: l.step,
                attempt: l.attempt,
                outcome,
                duration_ms: started.elapsed().as_millis() as u64,
            }
        });
    }

    fn on_finished(&mut self, f: Finished) -> Result<(), Error> {
        if self.state.status.is_terminal()
            || self.state.steps.get(f.index).map(|s| s.status) != Some(StepStatus::Running)
        {
            return Ok(());
        }
        for line in f.outcome.logs {
            self.log(&f.step, f.attempt, "info", line);
        }
        let result = f.outcome.result.and_then(|value| {
            let payload = Payload::of(&value);
            let cap = self.state.options.max_output_bytes;
            if payload.reference.size > cap {
                Err(Failure::new(
                    ErrorClass::Permanent,
                    format!(
                        "step '{}' produced an output of {} bytes, over the cap of {cap} bytes; make the step return less or raise --max-output-bytes",
                        f.step, payload.reference.size
                    ),
                ))
            } else {
                Ok((payload, value))
            }
        });
        match result {
            Ok((payload, value)) => {
                let output = payload.reference.clone();
                self.state.add_payload(&payload, value);
                self.payloads.push(payload);
                self.log(
                    &f.step,
                    f.attempt,
                    "info",
                    format!("attempt {} succeeded in {} ms", f.attempt, f.duration_ms),
                );
                self.feed(Event::AttemptSucceeded {
                    step: f.step,
                    attempt: f.attempt,
                    output,
                    duration_ms: f.duration_ms,
                })
            }
            Err(failure) => {
                self.log(&f.step, f.attempt, "error", format!("attempt {} failed: {failure}", f.attempt));
                self.feed(Event::AttemptFailed {
                    step: f.step,
                    attempt: f.attempt,
                    failure,
                    duration_ms: f.duration_ms,
                })
            }
        }
    }

    fn fire_due_timers(&mut self) -> Result<(), Error> {
        let now = now_ms();
        let (due, later): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.timers).into_iter().partition(|(at, _)| *at <= now);
        self.timers = later;
        for (_, step) in due {
            let waiting = self.state.step_state(step.as_str()).map(|s| s.status) == Some(StepStatus::RetryWait);
            if waiting && !self.state.status.is_terminal() {
                self.feed(Event::TimerFired { step })?;
            }
        }
        Ok(())
    }

    async fn drive(mut self) -> Result<RunOutcome, Error> {
        loop {
            self.start_ready()?;
            self.commit().await?;
            if self.state.status.is_terminal() {
                self.running.abort_all();
                return Ok(self.outcome());
            }
            let next_timer = self.timers.iter().map(|(at, _)| *at).min();
            let waiting_for_permit = !self.start_queue.is_empty();
            let permits = self.inner.permits.clone();
            if self.running.is_empty() && next_timer.is_none() && !waiting_for_permit {
                return Err(Error::Invalid(format!(
                    "run {} is stuck in {} with nothing running or scheduled (this is a bug; the journal is intact)",
                    self.state.run_id, self.state.status
                )));
            }
            let sleep_ms = next_timer.map(|at| (at - now_ms()).max(0) as u64).unwrap_or(3_600_000);
            tokio::select! {
                Some(joined) = self.running.join_next(), if !self.running.is_empty() => {
                    match joined {
                        Ok(finished) => self.on_finished(finished)?,
                        Err(e) if e.is_cancelled() => {}
                        Err(e) => return Err(Error::Invalid(format!("an activity task panicked: {e}"))),
                    }
                    // Fold every other result that is already in into the same commit.
                    while let Some(joined) = self.running.try_join_next() {
                        match joined {
                            Ok(finished) => self.on_finished(finished)?,
                            Err(e) if e.is_cancelled() => {}
                            Err(e) => return Err(Error::Invalid(format!("an activity task panicked: {e}"))),
                        }
                    }
                }
                _ = tokio::time::sleep(Duration::from_millis(sleep_ms)), if next_timer.is_some() => {
                    self.fire_due_timers()?;
                }
                permit = permits.acquire_owned(), if waiting_for_permit => {
                    if let Ok(p) = permit {
                        drop(p);
                    }
                }
            }
        }
    }

    fn outcome(&self) -> RunOutcome {
        let output = self.state.output.as_ref().and_then(|r| self.state.payload(r)).map(|v| (**v).clone());
        RunOutcome {
            run_id: self.state.run_id.clone(),
            status: self.state.status,
            failure: self.state.failure.clone(),
            output,
            artifact: self.state.definition.as_ref().and_then(|d| d.artifact.clone()),
            state: Box::new(self.state.clone()),
        }
    }
}
