//! Writes built the way the engine builds them: real events folded by `cairn_core::decide`,
//! projections derived from the resulting `RunState`. No hand-made rows.

use cairn_core::decide::{Command, decide};
use cairn_core::event::{Event, JOURNAL_SCHEMA, RunOptions, RunSource};
use cairn_core::payload::Payload;
use cairn_core::state::RunState;
use cairn_core::{Envelope, RunId, StepId};
use cairn_store::{Claim, RunRow, RunWrite, StepRow, Store, StoredEvent};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};

pub const OWNER: &str = "host-a:1001:AAAA";
pub const OTHER: &str = "host-b:2002:BBBB";
pub const T0: i64 = 1_700_000_000_000;
/// A lease far in the future: "alive" for every test.
pub const LIVE: i64 = T0 + 3_600_000;

pub const TWO_STEPS: &str =
    "name: pair\nsteps:\n  - {id: a, kind: echo, with: {x: 1}}\n  - {id: b, kind: echo, with: {y: 2}}\n";

pub fn run_id(n: u128) -> RunId {
    RunId::from_parts(T0 as u64, n)
}

/// A run's journal being written, as the engine's per-run driver does it: events folded through
/// `decide`, collected until `write` turns them into one `RunWrite`.
#[derive(Clone)]
pub struct Journal {
    pub state: RunState,
    pub committed_seq: u64,
    pub events: Vec<Envelope>,
    pub payloads: Vec<Payload>,
    /// Every payload hash this journal has handed to a write (for gc expectations).
    pub written_hashes: BTreeSet<String>,
    /// Inputs `decide` rendered for attempts it wants started, by step.
    inputs: BTreeMap<String, Value>,
    clock: i64,
}

/// Step kinds for definitions in storage tests (the store does not run them; the engine's
/// registry is not a dependency here).
pub fn kinds() -> cairn_core::kinds::Kinds {
    use cairn_core::kinds::{KindSpec, Kinds, Role};
    Kinds::new([
        KindSpec::new("echo", "outputs its input"),
        KindSpec::new("noop", "does nothing"),
        KindSpec::new("fail", "fails"),
        KindSpec::new("approval", "a person decides").role(Role::Gate),
    ])
}

impl Journal {
    /// Created and planned at `T0`: the first write of a run (`expected_seq` 0).
    pub fn new(id: RunId, yaml: &str) -> Journal {
        Journal::at(id, yaml, T0)
    }

    /// Created and planned with its clock starting at `t0` (each event takes one millisecond).
    pub fn at(id: RunId, yaml: &str, t0: i64) -> Journal {
        let definition = cairn_core::validate::parse_definition(yaml, "test.yaml", &kinds())
            .unwrap_or_else(|p| panic!("test definition is invalid: {p:?}"));
        let mut j = Journal {
            state: RunState::new(id),
            committed_seq: 0,
            events: Vec::new(),
            payloads: Vec::new(),
            written_hashes: BTreeSet::new(),
            inputs: BTreeMap::new(),
            clock: t0,
        };
        j.feed(Event::RunCreated {
            workflow: definition.name.clone(),
            source: RunSource::Definition { path: Some("test.yaml".into()) },
            inputs: json!({}),
            options: RunOptions::default(),
        });
        let value = serde_json::to_value(&definition).expect("definition to json");
        let payload = Payload::of(&value);
        j.state.add_payload(&payload, value);
        let reference = payload.reference.clone();
        j.payloads.push(payload);
        j.feed(Event::PlanRecorded { definition: reference, plan: None, reused: Vec::new() });
        j
    }

    pub fn id(&self) -> RunId {
        self.state.run_id.clone()
    }

    /// The definition payload, as `put_workflow` takes it (the very payload the run refers to).
    pub fn definition_payload(&self) -> Payload {
        let def = self.state.definition.as_ref().expect("planned run has a definition");
        let payload = Payload::of(&serde_json::to_value(&**def).expect("definition to json"));
        let journaled = self.state.definition_ref.as_ref().map(|r| r.hash.as_str());
        assert_eq!(Some(payload.reference.hash.as_str()), journaled, "definition payload does not round-trip");
        payload
    }

    pub fn feed(&mut self, event: Event) {
        self.clock += 1;
        let env = Envelope { seq: self.state.last_seq + 1, at_ms: self.clock, schema: JOURNAL_SCHEMA, event };
        let commands = decide(&mut self.state, &env).unwrap_or_else(|e| panic!("decide rejected {env:?}: {e}"));
        self.events.push(env);
        for c in commands {
            match c {
                Command::Record(e) => self.events.push(e),
                Command::StorePayload(p) => self.payloads.push(p),
                Command::StartAttempt { step, input, .. } => {
                    self.inputs.insert(step.to_string(), input);
                }
                Command::Plan
                | Command::ArmTimer(_)
                | Command::StartCompensation { .. }
                | Command::StartChild { .. } => {}
            }
        }
    }

    pub fn start(&mut self, step: &str) {
        let input = self.inputs.remove(step).unwrap_or_else(|| panic!("step {step} is not ready to start"));
        let payload = Payload::of(&input);
        self.state.add_payload(&payload, input);
        let reference = payload.reference.clone();
        self.payloads.push(payload);
        let attempt = self.state.step_state(step).expect("step").attempts + 1;
        self.feed(Event::AttemptStarted { step: StepId::new(step), attempt, input: reference });
    }

    pub fn succeed(&mut self, step: &str, output: Value) {
        let payload = Payload::of(&output);
        self.state.add_payload(&payload, output);
        let reference = payload.reference.clone();
        self.payloads.push(payload);
        let attempt = self.state.step_state(step).expect("step").attempts;
        self.feed(Event::AttemptSucceeded { step: StepId::new(step), attempt, output: reference, duration_ms: 1 });
    }

    /// Runs every step to completion (the run ends COMPLETED).
    pub fn finish(&mut self) {
        self.finish_with(|s| json!({"done": s}));
    }

    /// Runs every step to completion with the given outputs.
    pub fn finish_with(&mut self, output: impl Fn(&str) -> Value) {
        let steps: Vec<String> = self.state.steps.iter().map(|s| s.id.to_string()).collect();
        for s in &steps {
            self.start(s);
            self.succeed(s, output(s));
        }
        assert_eq!(self.state.status.as_str(), "COMPLETED");
    }

    /// Everything since the last write, as one commit built on the last written position.
    pub fn write(&mut self, owner: &str, lease_until_ms: i64) -> RunWrite {
        let mut run = RunRow::from_state(&self.state);
        run.owner = Some(owner.to_string());
        self.written_hashes.extend(self.payloads.iter().map(|p| p.reference.hash.clone()));
        let write = RunWrite {
            run_id: self.state.run_id.clone(),
            expected_seq: self.committed_seq,
            owner: owner.to_string(),
            lease_until_ms,
            events: self.events.iter().map(StoredEvent::from_envelope).collect(),
            payloads: std::mem::take(&mut self.payloads),
            run,
            steps: StepRow::from_state(&self.state, None),
            logs: Vec::new(),
            release: false,
            idempotency: None,
            requests: Vec::new(),
            answers_every_request: false,
            notify: Vec::new(),
        };
        self.events.clear();
        self.committed_seq = self.state.last_seq;
        write
    }

    /// Like `write`, but the writer lets go of the run with it (it is due at its `wake_at`).
    pub fn write_released(&mut self, owner: &str) -> RunWrite {
        let mut w = self.write(owner, 0);
        w.release = true;
        w.run.owner = None;
        w
    }

    /// The run row the store should hold after the last write by `owner` with this lease.
    pub fn expected_row(&self, owner: Option<&str>, lease: Option<i64>) -> RunRow {
        let mut r = RunRow::from_state(&self.state);
        r.owner = owner.map(str::to_string);
        r.lease_expires_at_ms = lease;
        if owner.is_some() {
            // Held runs carry no wake time (their owner drives them).
            r.wake_at_ms = None;
        }
        r
    }
}

pub async fn commit(store: &impl Store, w: RunWrite) {
    let id = w.run_id.clone();
    if let Err(e) = store.commit(w).await {
        panic!("commit for {id} failed: {e}");
    }
}

/// Creates run `n` (of `TWO_STEPS`) owned by `owner` with the given lease; returns its journal.
pub async fn create(store: &impl Store, n: u128, owner: &str, lease: i64) -> Journal {
    let mut j = Journal::new(run_id(n), TWO_STEPS);
    commit(store, j.write(owner, lease)).await;
    j
}

/// Creates run `n` and lets go of it at once: unheld, due at its `wake_at`.
pub async fn create_released(store: &impl Store, n: u128) -> Journal {
    let mut j = Journal::new(run_id(n), TWO_STEPS);
    commit(store, j.write_released(OWNER)).await;
    j
}

pub async fn event_count(store: &impl Store, id: &RunId) -> usize {
    store.events(id).await.unwrap_or_else(|e| panic!("events of {id}: {e}")).len()
}

pub async fn claim(
    store: &impl Store,
    owner: &str,
    now_ms: i64,
    only: Option<&RunId>,
    dead: &(dyn Fn(&str) -> bool + Sync),
    limit: usize,
) -> Vec<RunId> {
    let c = Claim { owner, now_ms, lease_until_ms: now_ms + 30_000, only, owner_is_dead: dead, limit };
    let mut ids = store.claim_runs(c).await.expect("claim_runs");
    ids.sort();
    ids
}

pub fn nobody_dead(_: &str) -> bool {
    false
}
