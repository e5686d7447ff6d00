//! The per-run driver: decide → commit → effects, in a loop, until the run settles, goes idle
//! (service mode releases it for any worker), or the engine drains.

use crate::activity::{self, AttemptContext};
use crate::calls;
use crate::engine::{Inner, Notice, RunOutcome};
use crate::requests::{self, Control};
use crate::{Error, now_ms};
use cairn_core::decide::{self, Command};
use cairn_core::event::{Envelope, ErrorClass, Event, Failure, JOURNAL_SCHEMA, RunSource};
use cairn_core::payload::Payload;
use cairn_core::secrets::SecretSlot;
use cairn_core::state::RunState;
use cairn_core::timer::Timer;
use cairn_core::{RunStatus, StepId, StepStatus};
use cairn_store::{
    IdempotencyKey, LogLine, RequestOutcome, RequestState, RunRow, RunWrite, StepRow, Store, StoredEvent,
};
use serde_json::Value;
use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{Notify, OwnedSemaphorePermit, watch};
use tokio::task::JoinSet;
use tracing::Instrument;

/// An attempt decided but not yet started: the step's own, or its compensation.
struct Queued {
    index: usize,
    step: StepId,
    attempt: u32,
    /// As journaled: secrets are references here.
    input: Value,
    /// Where the secrets' values go, when the attempt runs.
    secrets: Vec<SecretSlot>,
    compensation: bool,
}

/// An attempt whose start event is in the batch being committed. Compensations run one at a time
/// per run and take no engine slot, so that a full engine can still undo work.
pub(crate) struct Launch {
    attempt: Queued,
    permit: Option<OwnedSemaphorePermit>,
}

struct Finished {
    index: usize,
    step: StepId,
    attempt: u32,
    compensation: bool,
    outcome: activity::Outcome,
    duration_ms: u64,
}

/// One run being driven: its state plus everything decided but not yet committed.
pub(crate) struct Live<S: Store> {
    inner: Arc<Inner<S>>,
    pub(crate) state: RunState,
    committed_seq: u64,
    events: Vec<Envelope>,
    payloads: Vec<Payload>,
    touched: BTreeSet<usize>,
    logs: Vec<LogLine>,
    start_queue: VecDeque<Queued>,
    launches: Vec<Launch>,
    /// Timers `decide` armed; each is checked against the run's pending timers when due.
    timers: Vec<Timer>,
    /// A slot this driver waited for, used by the next `start_ready` (or given back there).
    /// Dropping it on receipt would hand it to the next waiter and could pass it around forever.
    waited_permit: Option<OwnedSemaphorePermit>,
    running: JoinSet<Finished>,
    /// Rung when operator requests (cancel, pause, signal ...) wait in the run's inbox, while
    /// this run is registered as driven here.
    bell: Option<Arc<Notify>>,
    /// Requests answered since the last commit; the commit records the answers.
    answered: Vec<RequestOutcome>,
    shutdown: watch::Receiver<bool>,
    /// Give up ownership with the next commit (creation for other workers, idle release).
    release: bool,
    /// Keep trying a commit the store cannot take right now (disk full, server away) instead of
    /// failing: set while a driver drives the run, so that its progress is recorded once the
    /// store accepts writes again. One-off commits (a creation, a request) fail fast.
    patient: bool,
    idempotency: Option<IdempotencyKey>,
    /// Child runs to create once the commit that records them lands.
    children: Vec<crate::children::ChildStart>,
}

impl<S: Store> Live<S> {
    pub(crate) fn new(inner: Arc<Inner<S>>, state: RunState, committed_seq: u64) -> Self {
        Live {
            state,
            committed_seq,
            events: Vec::new(),
            payloads: Vec::new(),
            touched: BTreeSet::new(),
            logs: Vec::new(),
            start_queue: VecDeque::new(),
            launches: Vec::new(),
            timers: Vec::new(),
            waited_permit: None,
            running: JoinSet::new(),
            bell: None,
            answered: Vec::new(),
            shutdown: inner.shutdown.subscribe(),
            release: false,
            patient: false,
            idempotency: None,
            children: Vec::new(),
            inner,
        }
    }

    pub(crate) fn add_payload(&mut self, p: Payload) {
        self.payloads.push(p);
    }

    pub(crate) fn set_idempotency(&mut self, key: Option<IdempotencyKey>) {
        self.idempotency = key;
    }

    /// Something decided (or a request answered) but not yet committed.
    pub(crate) fn has_pending(&self) -> bool {
        !self.events.is_empty() || !self.answered.is_empty()
    }

    pub(crate) fn set_release(&mut self) {
        self.release = true;
    }

    fn journal_error(&self, source: cairn_core::state::Error) -> Error {
        Error::Journal { run_id: self.state.run_id.to_string(), source }
    }

    /// Reports an external event to the core and queues everything it decides.
    pub(crate) fn feed(&mut self, event: Event) -> Result<(), Error> {
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
        if matches!(
            env.event,
            Event::RunFailed { .. }
                | Event::RunCancelled { .. }
                | Event::PlanRecorded { .. }
                | Event::DefinitionMigrated { .. }
                | Event::RunRetried { .. }
                | Event::CompensationStarted { .. }
        ) {
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
                Command::StartAttempt { step, index, attempt, input, secrets } => {
                    self.start_queue.push_back(Queued { index, step, attempt, input, secrets, compensation: false });
                }
                Command::StartCompensation { step, index, attempt, input, secrets } => {
                    self.start_queue.push_front(Queued { index, step, attempt, input, secrets, compensation: true });
                }
                Command::ArmTimer(timer) => self.timers.push(timer),
                Command::StartChild { step, attempt, child, input } => {
                    self.children.push(crate::children::ChildStart { step, attempt, child, input });
                }
            }
        }
    }

    /// After a restart: report attempts that were cut off, then start what is ready and re-arm
    /// timers.
    pub(crate) fn recover(&mut self) -> Result<(), Error> {
        let interrupted: Vec<(StepId, u32)> = self
            .state
            .steps
            .iter()
            .filter(|s| s.status == StepStatus::Running)
            .map(|s| (s.id.clone(), s.attempts))
            .collect();
        let interrupted_compensation: Option<(StepId, u32)> = self.state.steps.iter().find_map(|s| {
            let c = s.compensation.as_ref().filter(|c| c.running)?;
            Some((s.id.clone(), c.attempts))
        });
        let resumed = decide::resume_commands(&mut self.state).map_err(|e| self.journal_error(e))?;
        self.handle(resumed);
        let message = |what: &str, attempt: u32| {
            Failure::new(
                ErrorClass::Transient,
                format!("{what} {attempt} was interrupted: the process running it stopped before recording a result"),
            )
        };
        for (step, attempt) in interrupted {
            let failure = message("attempt", attempt);
            self.log(&step, attempt, "warn", failure.message.clone());
            self.feed(Event::AttemptFailed { step, attempt, failure, duration_ms: 0 })?;
        }
        if let Some((step, attempt)) = interrupted_compensation {
            // Not known to have run to the end: the compensation runs again (its retry policy
            // decides whether it may).
            let failure = message("compensation attempt", attempt);
            self.log(&step, attempt, "warn", failure.message.clone());
            self.feed(Event::CompensationAttemptFailed { step, attempt, failure, duration_ms: 0 })?;
        }
        self.start_ready()
    }

    fn log(&mut self, step: &StepId, attempt: u32, level: &str, message: String) {
        self.logs.push(LogLine { step_id: step.to_string(), attempt, at_ms: now_ms(), level: level.into(), message });
    }

    /// Records `AttemptStarted` for queued attempts while concurrency permits are free.
    pub(crate) fn start_ready(&mut self) -> Result<(), Error> {
        while let Some(front) = self.start_queue.front() {
            let status = self.state.steps.get(front.index).map(|s| s.status);
            let startable = if front.compensation {
                self.state.status == RunStatus::Compensating
                    && matches!(status, Some(StepStatus::Completed | StepStatus::Compensating))
            } else {
                // Queued before a pause: dropped here; unpausing decides them again.
                !self.state.status.is_terminal()
                    && self.state.status != RunStatus::Paused
                    && status == Some(StepStatus::Ready)
            };
            if !startable {
                self.start_queue.pop_front();
                continue;
            }
            if *self.shutdown.borrow() {
                break;
            }
            let permit = if front.compensation {
                None
            } else {
                // Fairness: one run never holds more than its share of the engine's slots.
                let in_flight = self.running.len() + self.launches.len();
                if in_flight >= self.inner.config.max_per_run.max(1) {
                    break;
                }
                let permit = match self.waited_permit.take() {
                    Some(p) => p,
                    None => match self.inner.permits.clone().try_acquire_owned() {
                        Ok(p) => p,
                        Err(_) => break,
                    },
                };
                Some(permit)
            };
            let Some(queued) = self.start_queue.pop_front() else { break };
            self.launch(queued, permit)?;
        }
        // Not needed after all: another run may be waiting for it.
        self.waited_permit = None;
        Ok(())
    }

    fn launch(&mut self, q: Queued, permit: Option<OwnedSemaphorePermit>) -> Result<(), Error> {
        let payload = Payload::of(&q.input);
        let input = payload.reference.clone();
        self.state.add_payload(&payload, q.input.clone());
        self.payloads.push(payload);
        let (step, attempt) = (q.step.clone(), q.attempt);
        if q.compensation {
            self.log(&step, attempt, "info", format!("compensation attempt {attempt} started"));
            self.feed(Event::CompensationAttemptStarted { step, attempt, input })?;
        } else {
            self.log(&step, attempt, "info", format!("attempt {attempt} started"));
            self.feed(Event::AttemptStarted { step, attempt, input })?;
        }
        self.launches.push(Launch { attempt: q, permit });
        Ok(())
    }

    /// Records everything decided since the last commit. The write that ends the run must answer
    /// every request waiting for it: the store refuses it while one waits (rather than the
    /// driver reading the inbox before every run's end), and it is answered then and sent again.
    pub(crate) async fn commit(&mut self) -> Result<(), Error> {
        // A flood of requests cannot hold the run's end off for ever: the last try is sent as is
        // (requests accepted meanwhile are answered by their requesters, the run being finished).
        for _ in 0..2 {
            match self.commit_once(true).await {
                Err(Error::Store(cairn_store::Error::RequestsWaiting { .. })) => self.answer_requests().await?,
                other => return other,
            }
        }
        self.commit_once(false).await
    }

    async fn commit_once(&mut self, answers_every_request: bool) -> Result<(), Error> {
        if !self.has_pending() {
            // Children asked for again after a take-over, with nothing new to record.
            self.start_children(false).await;
            return Ok(());
        }
        let touched: Vec<usize> = std::mem::take(&mut self.touched).into_iter().collect();
        let mut run = RunRow::from_state(&self.state);
        run.owner = Some(self.inner.config.owner.clone());
        // A finished run needs no owner: leases only ever cover unfinished work. A run with
        // children to create is let go only once they exist (below): if this process died
        // first, the run would be nobody's with nothing to wake it.
        let let_go = std::mem::take(&mut self.release);
        let hold_for_children = let_go && !self.children.is_empty() && !self.state.status.is_terminal();
        let release = (let_go && !hold_for_children) || self.state.status.is_terminal();
        // Requests for other runs go in the same transaction: this child run's end for its
        // parent; cancellations for the children of steps this run's end cancelled.
        let ends = |e: &Envelope| {
            matches!(
                e.event,
                Event::RunCompleted { .. }
                    | Event::RunFailed { .. }
                    | Event::RunCancelled { .. }
                    | Event::RunCompensated
                    | Event::CompensationStarted { .. }
            )
        };
        let mut notify = Vec::new();
        if self.events.iter().any(ends) {
            notify.extend(crate::children::ended(&self.state));
            notify.extend(crate::children::cascade(&self.state));
        }
        let mut write = Arc::new(RunWrite {
            release,
            idempotency: self.idempotency.take(),
            run_id: self.state.run_id.clone(),
            expected_seq: self.committed_seq,
            owner: self.inner.config.owner.clone(),
            lease_until_ms: now_ms() + self.inner.config.lease_ms as i64,
            events: self.events.iter().map(StoredEvent::from_envelope).collect(),
            payloads: std::mem::take(&mut self.payloads),
            run,
            steps: StepRow::from_state(&self.state, Some(&touched)),
            logs: std::mem::take(&mut self.logs),
            requests: std::mem::take(&mut self.answered),
            answers_every_request: answers_every_request && self.state.status.is_terminal(),
            notify,
        });
        let mut backoff = Duration::from_millis(50);
        loop {
            match self.inner.store.commit(write.clone()).await {
                Ok(()) => break,
                Err(cairn_store::Error::Conflict { .. }) => {
                    return Err(Error::Lost { run_id: self.state.run_id.to_string() });
                }
                // Nothing was written: take back what the write took, to be sent again with
                // the answers.
                Err(e @ cairn_store::Error::RequestsWaiting { .. }) => {
                    let w = Arc::unwrap_or_clone(write);
                    self.payloads = w.payloads;
                    self.logs = w.logs;
                    self.answered = w.requests;
                    self.idempotency = w.idempotency;
                    self.touched = touched.into_iter().collect();
                    self.release = let_go;
                    return Err(e.into());
                }
                // The store cannot take writes now: keep what was decided and try the same write
                // again (its fence still holds: if another process took the run meanwhile, the
                // retry fails as a conflict).
                Err(e) if e.is_transient() && self.patient && !*self.shutdown.borrow() => {
                    crate::say_limited!(
                        "commit-retry",
                        "[worker] run {}: cannot record its progress yet ({e}); keeping it and retrying",
                        self.state.run_id
                    );
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    // The lease it lands with counts from when it lands.
                    let lease_until_ms = now_ms() + self.inner.config.lease_ms as i64;
                    write = Arc::new(RunWrite { lease_until_ms, ..(*write).clone() });
                }
                Err(e) => return Err(e.into()),
            }
        }
        self.committed_seq = self.state.last_seq;
        for n in &write.notify {
            if let Ok(id) = cairn_core::RunId::parse(&n.run_id) {
                let delivery = crate::engine::Engine::from_inner(self.inner.clone()).deliver(id);
                // A one-off commit (a request answered by taking the run over) belongs to a
                // process that may exit as soon as it returns: deliver before that.
                if self.patient {
                    tokio::spawn(delivery);
                } else {
                    delivery.await;
                }
            }
        }
        if !write.notify.is_empty() {
            self.inner.wake.notify_one();
        }
        if hold_for_children {
            // Not driven by this process, which may be about to exit (`run --detach`): the
            // children are created first, then the run is let go for any worker.
            if self.start_children(true).await {
                let wake_at = RunRow::from_state(&self.state).wake_at_ms;
                self.inner.store.release_run(&self.inner.config.owner, &self.state.run_id, wake_at).await?;
            }
        } else {
            self.start_children(false).await;
        }
        let events = std::mem::take(&mut self.events);
        crate::metrics::committed(&self.state, &events);
        #[cfg(feature = "otel")]
        crate::otel::committed(&self.state, &events);
        if let Some(tx) = &self.inner.notices {
            let _ = tx.send(Notice::Committed { run_id: self.state.run_id.clone(), events });
        }
        // Effects only after the commit: start the attempts just journaled (unless the same
        // commit ended the run, or began undoing it).
        let status = self.state.status;
        self.launches
            .retain(|l| !status.is_terminal() && (l.attempt.compensation || status != RunStatus::Compensating));
        for launch in std::mem::take(&mut self.launches) {
            self.spawn_attempt(launch);
        }
        Ok(())
    }

    /// Creates the child runs decided so far: in the background while this process drives the
    /// run (their ends come back through its inbox), or right now, left for any worker, when it
    /// lets the run go. Whether every child now exists.
    async fn start_children(&mut self, letting_go: bool) -> bool {
        let children = std::mem::take(&mut self.children);
        if children.is_empty() || self.state.status.is_terminal() {
            return true;
        }
        let parent = Arc::new(crate::children::Parent::of(&self.state, !letting_go));
        let mut all = true;
        for start in children {
            let engine = crate::engine::Engine::from_inner(self.inner.clone());
            if letting_go {
                all &= engine.start_child(parent.clone(), start).await;
            } else {
                tokio::spawn(engine.start_child(parent.clone(), start));
            }
        }
        all
    }

    fn spawn_attempt(&mut self, launch: Launch) {
        let Some(def) = self.state.definition.clone() else { return };
        let Launch { attempt: l, permit } = launch;
        let mut step_def = def.steps[l.index].clone();
        // A compensation is its own activity: its kind and input, no fault injection, and an
        // effect-log key of its own.
        let effect_step = if l.compensation {
            let Some(comp) = step_def.compensate.clone() else { return };
            step_def.kind = comp.kind;
            step_def.inject = None;
            step_def.timeout_ms = None;
            format!("{}.compensate", step_def.id)
        } else {
            step_def.id.to_string()
        };
        let run_id = self.state.run_id.to_string();
        let workflow = self.state.workflow.clone();
        let chaos = self.state.options.chaos;
        // What the attempt's model calls must fit (a compensation is not budgeted).
        let budgets: Vec<cairn_store::Limit> = if l.compensation {
            Vec::new()
        } else {
            let limit = |b: cairn_core::budget::InForce| cairn_store::Limit {
                step: b.step,
                max_cost_usd: b.max_cost_usd,
                max_tokens: b.max_tokens,
            };
            self.state.budgets(l.index).into_iter().map(limit).collect()
        };
        let deltas = self.inner.notices.clone();
        let decisions = if l.compensation { Vec::new() } else { self.state.steps[l.index].call_decisions.clone() };
        let workflow_tools = def.tools.clone();
        let hold = self.inner.config.hold_after_activity.as_deref() == Some(effect_step.as_str());
        let hold_call = self.inner.config.hold_after_call.as_deref().and_then(|h| {
            let (step, n) = h.rsplit_once('/')?;
            (step == effect_step).then(|| n.parse::<u32>().ok()).flatten()
        });
        let worker = self.inner.config.owner.clone();
        // A fork at a turn copied the parent's calls of its first step into this run's effect
        // log before it started: its first attempt reads them too.
        let seeded = !l.compensation
            && matches!(&self.state.source, Some(RunSource::Fork { from_step, turn: Some(_), .. })
                if *from_step == effect_step);
        let store = self.inner.store.clone();
        let run = self.state.run_id.clone();
        let secrets = self.inner.config.secrets.clone();
        let mut kinds = self.inner.config.kinds.clone();
        // A kind the workflow declares as external runs in its workers (it may also replace an
        // external kind of the same name from the configuration, for this workflow).
        if let Some(external) = def.kinds.get(&step_def.kind) {
            let own = crate::kinds::External { name: step_def.kind.clone(), kind: external.clone() };
            kinds = Arc::new((*kinds).clone().with(own));
        }
        // A compensation has no timeout of its own, but one run by workers is bounded by its
        // kind's: a queue nobody serves must not hold the run forever.
        if l.compensation
            && let Some((spec, _)) = kinds.get(&step_def.kind)
            && spec.queue.is_some()
        {
            step_def.timeout_ms = spec.timeout_ms;
        }
        let config = self.inner.config.kind_config.get(&step_def.kind).cloned().unwrap_or(Value::Null);
        let shutdown = self.shutdown.clone();
        let span = tracing::info_span!(
            "attempt",
            run_id = %run_id,
            step = %effect_step,
            attempt = l.attempt,
            kind = %step_def.kind
        );
        let work = async move {
            let mut permit = permit;
            let started = Instant::now();
            // Side effects go through the effect log: a result logged by an earlier attempt is
            // returned instead of calling again (the call's key is the same for every attempt,
            // and comes from the journaled input, whatever the secrets' values).
            let effect_key = activity::effect_key(&kinds, &step_def.kind, &l.input, &run_id, &effect_step);
            if let Some(key) = &effect_key
                && let Ok(Some(logged)) = store.effect(key).await
            {
                return Finished {
                    index: l.index,
                    step: l.step,
                    attempt: l.attempt,
                    compensation: l.compensation,
                    outcome: activity::Outcome::of(
                        Ok(logged),
                        vec![format!("returned the logged result of {key}; the effect was not repeated")],
                    ),
                    duration_ms: started.elapsed().as_millis() as u64,
                };
            }
            // Secret values exist from here to the redaction below, in memory only.
            let resolved = match secrets.resolve(&l.secrets) {
                Ok(resolved) => resolved,
                Err(failure) => {
                    return Finished {
                        index: l.index,
                        step: l.step,
                        attempt: l.attempt,
                        compensation: l.compensation,
                        outcome: activity::Outcome::of(Err(failure), Vec::new()),
                        duration_ms: started.elapsed().as_millis() as u64,
                    };
                }
            };
            // Calls an earlier attempt of this step made come back from the effect log. A first
            // attempt has none (an interrupted attempt is reported, and the next one numbered on).
            let recorded = if l.attempt > 1 || seeded {
                match calls::recorded(&*store, &run, &effect_step).await {
                    Ok(recorded) => recorded,
                    Err(e) => {
                        let failure =
                            Failure::new(ErrorClass::Transient, format!("cannot read the step's recorded calls: {e}"));
                        return Finished {
                            index: l.index,
                            step: l.step,
                            attempt: l.attempt,
                            compensation: l.compensation,
                            outcome: activity::Outcome::of(Err(failure), Vec::new()),
                            duration_ms: started.elapsed().as_millis() as u64,
                        };
                    }
                }
            } else {
                Vec::new()
            };
            let sink = Arc::new(calls::StoreSink(store.clone()));
            let mut call_log =
                calls::CallLog::new(run.clone(), effect_step.clone(), l.attempt, recorded, sink, shutdown.clone());
            call_log.hold_after = hold_call;
            call_log.budgets = budgets;
            call_log.deltas = deltas;
            let input = resolved.apply(&l.input, &l.secrets);
            let ctx = AttemptContext {
                run_id: &run_id,
                workflow: &workflow,
                step: &effect_step,
                kind: &step_def.kind,
                attempt: l.attempt,
                input: &input,
                secrets: &resolved,
                inject: step_def.inject.as_ref(),
                chaos,
                worker: &worker,
                kinds: &kinds,
                config: &config,
                cancel: shutdown.clone(),
                calls: Some(call_log),
                decisions,
                workflow_tools,
                deadline_ms: step_def.timeout_ms.map(|ms| crate::now_ms().saturating_add(ms as i64)),
                journaled_input: Some(&l.input),
                slot: permit.take(),
            };
            let queue = kinds.get(&step_def.kind).and_then(|(spec, _)| spec.queue.clone());
            let fut = activity::execute(ctx);
            let outcome = match step_def.timeout_ms {
                Some(ms) => match tokio::time::timeout(Duration::from_millis(ms), fut).await {
                    Ok(o) => o,
                    Err(_) => activity::Outcome::of(
                        Err(Failure::new(
                            ErrorClass::Timeout,
                            format!(
                                "attempt {} ran past its timeout of {} and was cancelled{}",
                                l.attempt,
                                cairn_core::duration::format_ms(ms),
                                match &queue {
                                    Some(q) => format!(
                                        " (its task waited for a worker on queue `{q}` and was not settled in \
                                         time: is a worker claiming from that queue?)"
                                    ),
                                    None => String::new(),
                                }
                            ),
                        )),
                        Vec::new(),
                    ),
                },
                None => fut.await,
            };
            let outcome = resolved.redact_outcome(outcome);
            drop((input, resolved));
            if let (Some(key), Ok(value)) = (&effect_key, &outcome.result) {
                // Kept before the step's completion is journaled. While the store cannot take it
                // (disk full), keep trying: without it, an attempt run again after a take-over
                // would repeat the effect.
                let payload = cairn_core::payload::Payload::of(value);
                let mut backoff = Duration::from_millis(50);
                loop {
                    match store.record_effect(&run, key, payload.clone(), crate::now_ms()).await {
                        Ok(()) => break,
                        Err(e) if e.is_transient() && !*shutdown.borrow() => {
                            crate::say_limited!(
                                "effect-log",
                                "[engine] {key}: cannot log the effect's result yet ({e}); retrying"
                            );
                            tokio::time::sleep(backoff).await;
                            backoff = (backoff * 2).min(Duration::from_secs(2));
                        }
                        Err(e) => {
                            crate::say_limited!(
                                "effect-log",
                                "[engine] {key}: the effect's result could not be logged ({e})"
                            );
                            break;
                        }
                    }
                }
            }
            if hold {
                crate::say!("[debug] holding after activity {effect_step} attempt {}", l.attempt);
                tokio::time::sleep(Duration::from_secs(3600)).await;
            }
            Finished {
                index: l.index,
                step: l.step,
                attempt: l.attempt,
                compensation: l.compensation,
                outcome,
                duration_ms: started.elapsed().as_millis() as u64,
            }
        };
        self.running.spawn(traced(work).instrument(span));
    }

    fn on_finished(&mut self, f: Finished) -> Result<(), Error> {
        if f.compensation {
            return self.on_compensation_finished(f);
        }
        if self.state.status.is_terminal()
            || self.state.steps.get(f.index).map(|s| s.status) != Some(StepStatus::Running)
        {
            return Ok(());
        }
        for line in f.outcome.logs {
            self.log(&f.step, f.attempt, "info", line);
        }
        let result = f.outcome.result.and_then(|value| {
            let depth = cairn_core::payload::nesting(&value);
            if depth > cairn_core::payload::MAX_NESTING {
                return Err(Failure::new(
                    ErrorClass::Permanent,
                    format!(
                        "step '{}' produced an output that nests {depth} levels deep, over the limit of {}; a loop \
                         that wraps `previous` in each output grows one level per iteration: pass on only what the \
                         next iteration needs",
                        f.step,
                        cairn_core::payload::MAX_NESTING
                    ),
                ));
            }
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

    fn on_compensation_finished(&mut self, f: Finished) -> Result<(), Error> {
        let running = self.state.steps.get(f.index).and_then(|s| s.compensation.as_ref()).is_some_and(|c| c.running);
        if self.state.status != RunStatus::Compensating || !running {
            return Ok(());
        }
        for line in f.outcome.logs {
            self.log(&f.step, f.attempt, "info", line);
        }
        let (step, attempt, duration_ms) = (f.step, f.attempt, f.duration_ms);
        match f.outcome.result {
            Ok(_) => {
                self.log(
                    &step,
                    attempt,
                    "info",
                    format!("compensation attempt {attempt} succeeded in {duration_ms} ms"),
                );
                self.feed(Event::CompensationAttemptSucceeded { step, attempt, duration_ms })
            }
            Err(failure) => {
                self.log(&step, attempt, "error", format!("compensation attempt {attempt} failed: {failure}"));
                self.feed(Event::CompensationAttemptFailed { step, attempt, failure, duration_ms })
            }
        }
    }

    /// Reports every due timer the run still has; one it no longer has (a decision came first,
    /// an unpause armed it again) is dropped, as the core refuses it.
    fn fire_due_timers(&mut self) -> Result<(), Error> {
        let now = now_ms();
        let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.timers).into_iter().partition(|t| t.at_ms <= now);
        self.timers = later;
        for timer in due {
            if self.state.status.is_terminal() {
                break;
            }
            if let Ok(event) = self.state.fire_timer(&timer) {
                self.feed(event)?;
            }
        }
        Ok(())
    }

    /// Forgets armed timers the run no longer has, so they neither wake it nor keep it held.
    fn prune_timers(&mut self) {
        if self.timers.is_empty() {
            return;
        }
        let pending = self.state.pending_timers();
        self.timers.retain(|t| pending.contains(t));
    }

    /// Registers this run as driven here, so operator requests reach it.
    pub(crate) fn attach(&mut self) {
        let bell = Arc::new(Notify::new());
        if let Ok(mut drivers) = self.inner.drivers.lock() {
            drivers.insert(self.state.run_id.clone(), bell.clone());
        }
        self.bell = Some(bell);
    }

    fn detach(&mut self) {
        let Some(bell) = self.bell.take() else { return };
        if let Ok(mut drivers) = self.inner.drivers.lock()
            && drivers.get(&self.state.run_id).is_some_and(|b| Arc::ptr_eq(b, &bell))
        {
            drivers.remove(&self.state.run_id);
        }
    }

    /// Applies an operator request now: `Ok(Some(seq))` with the journal position of the event
    /// that records it, `Ok(None)` when there was nothing to do (the same decision twice, noted
    /// in `unchanged`), or `Error::Refused` saying why it cannot apply. A refusal changes nothing.
    pub(crate) fn apply_control(&mut self, control: Control) -> Result<Applied, Error> {
        if let Some((code, message)) = requests::check(&self.state, &control)? {
            return Ok(Applied::Unchanged { code, message });
        }
        let (event, payload) = control.into_event(&self.state)?;
        if let Some((p, value)) = payload {
            self.state.add_payload(&p, value);
            self.payloads.push(p);
        }
        let seq = self.state.last_seq + 1;
        match self.feed(event) {
            Ok(()) => Ok(Applied::Recorded { seq }),
            Err(Error::Journal { source, .. }) => Err(requests::refused(
                "illegal_transition",
                format!("run {} is {}: {source}", self.state.run_id, self.state.status.as_str()),
            )),
            Err(e) => Err(e),
        }
    }

    /// Answers the requests waiting in the run's inbox, in the order they were accepted; the
    /// answers are recorded by the next commit, with the events that apply them.
    pub(crate) async fn answer_requests(&mut self) -> Result<(), Error> {
        let pending = self.inner.store.pending_inbox(&self.state.run_id).await?;
        for request in pending {
            if self.answered.iter().any(|a| a.id == request.id) {
                continue;
            }
            let answer = match serde_json::from_str::<Control>(&request.body) {
                Ok(control) => self.apply_control(control),
                Err(e) => Err(requests::refused("invalid_request", format!("the request could not be read: {e}"))),
            };
            let (state, code, message, journal_seq) = match answer {
                Ok(Applied::Recorded { seq }) => (RequestState::Applied, None, None, Some(seq)),
                Ok(Applied::Unchanged { code, message }) => {
                    (RequestState::Unchanged, Some(code.to_string()), Some(message), None)
                }
                Err(Error::Refused { code, message }) => {
                    (RequestState::Refused, Some(code.to_string()), Some(message), None)
                }
                Err(Error::Invalid(message)) | Err(Error::Illegal(message)) => {
                    (RequestState::Refused, Some("invalid_request".to_string()), Some(message), None)
                }
                Err(e) => return Err(e),
            };
            self.answered.push(RequestOutcome {
                id: request.id,
                state,
                code,
                message,
                journal_seq,
                decided_at_ms: Some(now_ms()),
            });
        }
        Ok(())
    }

    pub(crate) async fn drive(mut self) -> Result<RunOutcome, Error> {
        self.patient = true;
        let span = tracing::info_span!("run", run_id = %self.state.run_id, workflow = %self.state.workflow);
        let result = self.drive_loop().instrument(span).await;
        self.detach();
        if result.is_err() {
            self.running.abort_all();
        }
        result
    }

    async fn drive_loop(&mut self) -> Result<RunOutcome, Error> {
        loop {
            self.start_ready()?;
            // Requests still waiting get their answer (the run finished) in the commit that ends
            // the run, rather than wait for a requester that may be gone (`commit`).
            self.commit().await?;
            if self.state.status.is_terminal() {
                self.running.abort_all();
                return Ok(self.outcome());
            }
            let idle = self.running.is_empty() && self.launches.is_empty();
            let draining = *self.shutdown.borrow();
            if draining && idle {
                return Ok(self.outcome());
            }
            self.prune_timers();
            let next_timer = if draining { None } else { self.timers.iter().map(|t| t.at_ms).min() };
            if idle && self.start_queue.is_empty() && self.should_release(next_timer) {
                return self.release_idle().await;
            }
            let in_flight = self.running.len() + self.launches.len();
            let waiting_for_permit =
                !self.start_queue.is_empty() && !draining && in_flight < self.inner.config.max_per_run.max(1);
            let permits = self.inner.permits.clone();
            let sleep_ms = next_timer.map(|at| (at - now_ms()).max(0) as u64).unwrap_or(3_600_000);
            let bell = self.bell.clone();
            let mut shutdown = self.shutdown.clone();
            tokio::select! {
                Some(joined) = self.running.join_next(), if !self.running.is_empty() => {
                    self.on_joined(joined)?;
                    // Fold every other result that is already in into the same commit.
                    while let Some(joined) = self.running.try_join_next() {
                        self.on_joined(joined)?;
                    }
                }
                _ = tokio::time::sleep(Duration::from_millis(sleep_ms)), if next_timer.is_some() => {
                    self.fire_due_timers()?;
                }
                permit = permits.acquire_owned(), if waiting_for_permit => {
                    self.waited_permit = permit.ok();
                }
                _ = rung(bell.as_deref()), if bell.is_some() => {
                    // Committed at the top of the loop, with the events that apply them. A store
                    // that cannot be read just now is asked again at the next ring (requesters
                    // keep ringing while they wait).
                    match self.answer_requests().await {
                        Err(Error::Store(e)) if e.is_transient() => crate::say_limited!(
                            "inbox-read",
                            "[worker] run {}: cannot read its requests yet ({e})",
                            self.state.run_id
                        ),
                        other => other?,
                    }
                }
                _ = shutdown.changed(), if !draining => {}
            }
        }
    }

    fn on_joined(&mut self, joined: Result<Finished, tokio::task::JoinError>) -> Result<(), Error> {
        match joined {
            Ok(finished) => self.on_finished(finished),
            Err(e) if e.is_cancelled() => Ok(()),
            Err(e) => Err(Error::Invalid(format!("an activity task panicked: {e}"))),
        }
    }

    /// In service mode a run with nothing in flight and no timer due soon is handed back, so it
    /// does not occupy a worker while it waits.
    fn should_release(&self, next_timer: Option<i64>) -> bool {
        match self.inner.config.release_when_idle_ms {
            None => false,
            Some(idle_ms) => next_timer.is_none_or(|at| at - now_ms() > idle_ms as i64),
        }
    }

    async fn release_idle(&mut self) -> Result<RunOutcome, Error> {
        // Stop taking requests, then answer any that raced in before letting go (a request
        // accepted after this is answered by whoever takes the run next, or its requester).
        self.detach();
        self.answer_requests().await?;
        if self.has_pending() {
            // Commit the answers and let the next worker pick the run up from the journal.
            self.release = true;
            self.commit().await?;
        } else {
            let wake_at = RunRow::from_state(&self.state).wake_at_ms;
            self.inner.store.release_run(&self.inner.config.owner, &self.state.run_id, wake_at).await?;
        }
        self.inner.wake.notify_one();
        Ok(self.outcome())
    }

    /// What the run came to, its state moved out (the driver is done with it: only the run's id
    /// stays, for `detach`).
    pub(crate) fn outcome(&mut self) -> RunOutcome {
        let empty = RunState::new(self.state.run_id.clone());
        let state = std::mem::replace(&mut self.state, empty);
        let output = state.output.as_ref().and_then(|r| state.payload(r)).map(|v| (**v).clone());
        RunOutcome {
            run_id: state.run_id.clone(),
            status: state.status,
            failure: state.failure.clone(),
            output,
            artifact: state.definition.as_ref().and_then(|d| d.artifact.clone()),
            state: Box::new(state),
        }
    }
}

/// An attempt, with an event when it starts and one when it ends (in its span: run, step,
/// attempt, kind), for `--log-format json`.
async fn traced(work: impl std::future::Future<Output = Finished>) -> Finished {
    tracing::info!("attempt started");
    let finished = work.await;
    match &finished.outcome.result {
        Ok(_) => tracing::info!(outcome = "ok", duration_ms = finished.duration_ms, "attempt finished"),
        Err(f) => tracing::info!(
            outcome = "failed",
            class = f.class.as_str(),
            duration_ms = finished.duration_ms,
            "attempt finished"
        ),
    }
    finished
}

async fn rung(bell: Option<&Notify>) {
    match bell {
        Some(bell) => bell.notified().await,
        None => std::future::pending().await,
    }
}

/// How a request applied.
pub(crate) enum Applied {
    /// The event at `seq` records it.
    Recorded { seq: u64 },
    /// Nothing to do: the run already is as asked.
    Unchanged { code: &'static str, message: String },
}

impl<S: Store> Drop for Live<S> {
    /// A run that stops being driven here (finished, handed back, or a failed start) stops
    /// taking requests here.
    fn drop(&mut self) {
        self.detach();
    }
}
