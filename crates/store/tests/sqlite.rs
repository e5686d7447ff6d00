//! `SqliteStore` on real files: whose file it is (ours, garbage, another application's, a newer
//! cairn's), the commit fence (journal position + owner), group-commit isolation, leases
//! (claim, heartbeat, release) and payload deduplication.
//!
//! Writes are built the way the engine builds them: real events folded by `cairn_core::decide`,
//! projections derived from the resulting `RunState`.

use cairn_core::decide::{Command, decide};
use cairn_core::event::{Event, JOURNAL_SCHEMA, RunOptions, RunSource};
use cairn_core::payload::Payload;
use cairn_core::state::RunState;
use cairn_core::{Envelope, RunId, StepId};
use cairn_store::{Claim, Durability, Error, RunRow, RunWrite, SqliteStore, StepRow, Store, StoredEvent};
use rusqlite::Connection;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const OWNER: &str = "host-a:1001:AAAA";
const OTHER: &str = "host-b:2002:BBBB";
const T0: i64 = 1_700_000_000_000;
/// A lease far in the future: "alive" for every test.
const LIVE: i64 = T0 + 3_600_000;

const TWO_STEPS: &str =
    "name: pair\nsteps:\n  - {id: a, kind: echo, with: {x: 1}}\n  - {id: b, kind: echo, with: {y: 2}}\n";

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
}

fn open(path: &Path) -> SqliteStore {
    match SqliteStore::open(path, Durability::Normal) {
        Ok(s) => s,
        Err(e) => panic!("opening {} failed: {e}", path.display()),
    }
}

fn open_err(path: &Path) -> Error {
    match SqliteStore::open(path, Durability::Normal) {
        Ok(_) => panic!("opening {} should have failed", path.display()),
        Err(e) => e,
    }
}

fn db_in(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("cairn.db")
}

fn run_id(n: u128) -> RunId {
    RunId::from_parts(T0 as u64, n)
}

/// A run's journal being written, as the engine's per-run driver does it: events folded through
/// `decide`, collected until `write` turns them into one `RunWrite`.
#[derive(Clone)]
struct Journal {
    state: RunState,
    committed_seq: u64,
    events: Vec<Envelope>,
    payloads: Vec<Payload>,
    /// Inputs `decide` rendered for attempts it wants started, by step.
    inputs: BTreeMap<String, Value>,
    clock: i64,
}

impl Journal {
    /// Created and planned: the first write of a run (`expected_seq` 0).
    fn new(id: RunId, yaml: &str) -> Journal {
        let definition = cairn_core::validate::parse_definition(yaml, "test.yaml")
            .unwrap_or_else(|p| panic!("test definition is invalid: {p:?}"));
        let mut j = Journal {
            state: RunState::new(id),
            committed_seq: 0,
            events: Vec::new(),
            payloads: Vec::new(),
            inputs: BTreeMap::new(),
            clock: T0,
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
        j.feed(Event::PlanRecorded { definition: reference, plan: None });
        j
    }

    fn feed(&mut self, event: Event) {
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
                Command::Plan | Command::ArmTimer { .. } => {}
            }
        }
    }

    fn start(&mut self, step: &str) {
        let input = self.inputs.remove(step).unwrap_or_else(|| panic!("step {step} is not ready to start"));
        let payload = Payload::of(&input);
        self.state.add_payload(&payload, input);
        let reference = payload.reference.clone();
        self.payloads.push(payload);
        let attempt = self.state.step_state(step).expect("step").attempts + 1;
        self.feed(Event::AttemptStarted { step: StepId::new(step), attempt, input: reference });
    }

    fn succeed(&mut self, step: &str, output: Value) {
        let payload = Payload::of(&output);
        self.state.add_payload(&payload, output);
        let reference = payload.reference.clone();
        self.payloads.push(payload);
        let attempt = self.state.step_state(step).expect("step").attempts;
        self.feed(Event::AttemptSucceeded { step: StepId::new(step), attempt, output: reference, duration_ms: 1 });
    }

    /// Runs every step to completion (the run ends COMPLETED).
    fn finish(&mut self) {
        let steps: Vec<String> = self.state.steps.iter().map(|s| s.id.to_string()).collect();
        for s in &steps {
            self.start(s);
            self.succeed(s, json!({"done": s}));
        }
        assert_eq!(self.state.status.as_str(), "COMPLETED");
    }

    /// Everything since the last write, as one commit built on the last written position.
    fn write(&mut self, owner: &str, lease_until_ms: i64) -> RunWrite {
        let mut run = RunRow::from_state(&self.state);
        run.owner = Some(owner.to_string());
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
        };
        self.events.clear();
        self.committed_seq = self.state.last_seq;
        write
    }
}

fn commit(rt: &tokio::runtime::Runtime, store: &SqliteStore, w: RunWrite) {
    let id = w.run_id.clone();
    if let Err(e) = rt.block_on(store.commit(w)) {
        panic!("commit for {id} failed: {e}");
    }
}

/// Creates a run owned by `owner` with the given lease; returns its journal.
fn create(rt: &tokio::runtime::Runtime, store: &SqliteStore, n: u128, owner: &str, lease: i64) -> Journal {
    let mut j = Journal::new(run_id(n), TWO_STEPS);
    let w = j.write(owner, lease);
    commit(rt, store, w);
    j
}

fn event_count(rt: &tokio::runtime::Runtime, store: &SqliteStore, id: &RunId) -> usize {
    rt.block_on(store.events(id)).expect("events").len()
}

fn claim(
    rt: &tokio::runtime::Runtime,
    store: &SqliteStore,
    owner: &str,
    now_ms: i64,
    only: Option<&RunId>,
    dead: &(dyn Fn(&str) -> bool + Sync),
) -> Vec<RunId> {
    let c = Claim { owner, now_ms, lease_until_ms: now_ms + 30_000, only, owner_is_dead: dead, limit: 0 };
    let mut ids = rt.block_on(store.claim_runs(c)).expect("claim_runs");
    ids.sort();
    ids
}

fn nobody_dead(_: &str) -> bool {
    false
}

/// Tables, rows and header pragmas of a foreign database, read with plain rusqlite.
fn foreign_snapshot(path: &Path) -> (Vec<String>, Vec<i64>, i64, i64) {
    let conn = Connection::open(path).expect("open with rusqlite");
    let mut stmt = conn.prepare("SELECT name FROM sqlite_master ORDER BY name").expect("prepare");
    let tables: Vec<String> = stmt.query_map([], |r| r.get(0)).expect("query").collect::<Result<_, _>>().expect("rows");
    let mut stmt = conn.prepare("SELECT x FROM foo ORDER BY x").expect("prepare");
    let rows: Vec<i64> = stmt.query_map([], |r| r.get(0)).expect("query").collect::<Result<_, _>>().expect("rows");
    let user_version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).expect("user_version");
    let app_id: i64 = conn.query_row("PRAGMA application_id", [], |r| r.get(0)).expect("application_id");
    (tables, rows, user_version, app_id)
}

fn make_foreign_db(path: &Path) {
    let conn = Connection::open(path).expect("create foreign db");
    conn.execute_batch("CREATE TABLE foo(x); INSERT INTO foo VALUES (1), (2);").expect("foreign schema");
}

// ---------------------------------------------------------------------------------------------
// Whose file is it?

#[test]
fn garbage_file_is_not_ours_and_is_left_alone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = db_in(&dir);
    std::fs::write(&path, "hello\n").expect("write");
    match open_err(&path) {
        Error::NotOurs { path: p, detail } => {
            assert_eq!(p, path.display().to_string());
            assert!(detail.contains("not an SQLite database"), "{detail}");
        }
        other => panic!("expected NotOurs, got {other:?}"),
    }
    assert_eq!(std::fs::read_to_string(&path).expect("read"), "hello\n");

    // Larger garbage (several pages of non-SQLite bytes) too.
    let big: Vec<u8> = (0..16_384u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    std::fs::write(&path, &big).expect("write");
    assert!(matches!(open_err(&path), Error::NotOurs { .. }));
    assert_eq!(std::fs::read(&path).expect("read"), big);
}

#[test]
fn foreign_sqlite_db_is_not_ours_and_its_tables_are_untouched() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = db_in(&dir);
    make_foreign_db(&path);
    let before = foreign_snapshot(&path);
    match open_err(&path) {
        Error::NotOurs { detail, .. } => assert!(detail.contains("another application"), "{detail}"),
        other => panic!("expected NotOurs, got {other:?}"),
    }
    assert_eq!(foreign_snapshot(&path), before, "no table, row, user_version or application_id may change");
    assert_eq!(before.0, vec!["foo".to_string()]);
    assert_eq!(before.1, vec![1, 2]);
}

/// Regression: the store used to switch a file to WAL before finding out it belonged to someone
/// else, so refusing a foreign database still rewrote its header (file format bytes 18–19).
#[test]
fn foreign_sqlite_db_file_is_byte_for_byte_unchanged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = db_in(&dir);
    make_foreign_db(&path);
    let before = std::fs::read(&path).expect("read");
    assert!(matches!(open_err(&path), Error::NotOurs { .. }));
    let after = std::fs::read(&path).expect("read");
    let mode: String = Connection::open(&path)
        .expect("open")
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .expect("journal_mode");
    assert_eq!(mode, "delete", "the foreign db's journal mode was changed");
    assert!(
        before == after,
        "the foreign db's bytes changed (header bytes 18..20: {:?} -> {:?})",
        &before[18..20],
        &after[18..20]
    );
}

#[test]
fn newer_schema_is_refused_with_both_versions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = db_in(&dir);
    drop(open(&path));
    let conn = Connection::open(&path).expect("open with rusqlite");
    let known: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).expect("user_version");
    assert!(known >= 1, "a fresh Cairn db records its migrations in user_version, got {known}");
    conn.pragma_update(None, "user_version", known + 1).expect("bump user_version");
    drop(conn);
    match open_err(&path) {
        Error::NewerSchema { found, known: k, .. } => {
            assert_eq!(found, known + 1);
            assert_eq!(k, known);
        }
        other => panic!("expected NewerSchema, got {other:?}"),
    }
}

#[test]
fn reopening_a_cairn_db_keeps_its_runs_events_and_payloads() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = db_in(&dir);
    let rt = rt();
    let mut j = Journal::new(run_id(1), TWO_STEPS);
    j.finish();
    let id = j.state.run_id.clone();
    let expected_events = j.events.clone();
    let expected_run = {
        let mut r = RunRow::from_state(&j.state);
        r.owner = Some(OWNER.into());
        r.lease_expires_at_ms = Some(LIVE);
        r
    };
    let expected_steps = StepRow::from_state(&j.state, None);
    {
        let store = open(&path);
        commit(&rt, &store, j.write(OWNER, LIVE));
    }
    let store = open(&path);
    let loaded = rt.block_on(store.load_run(&id)).expect("load after reopen");
    assert_eq!(loaded.events, expected_events);
    assert_eq!(loaded.run, expected_run);
    assert_eq!(rt.block_on(store.steps(&id)).expect("steps"), expected_steps);
    // Every payload the journal refers to came back, and the fold reproduces the state.
    let folded = RunState::fold(id.clone(), &loaded.events, loaded.payloads.clone()).expect("fold");
    assert_eq!(folded.status, j.state.status);
    assert_eq!(folded.output, j.state.output);
    let output = rt.block_on(store.payload(&j.state.output.clone().expect("run output").hash)).expect("payload");
    assert_eq!(output, Some(json!({"a": {"done": "a"}, "b": {"done": "b"}})));
}

// ---------------------------------------------------------------------------------------------
// The commit fence

#[test]
fn stale_expected_seq_conflicts_and_writes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = rt();
    let store = open(&db_in(&dir));
    let mut j = create(&rt, &store, 1, OWNER, LIVE);
    let id = j.state.run_id.clone();
    let mut stale = j.clone();

    j.start("a");
    commit(&rt, &store, j.write(OWNER, LIVE));
    let events_before = event_count(&rt, &store, &id);
    let row_before = rt.block_on(store.get_run(&id)).expect("run");
    let steps_before = rt.block_on(store.steps(&id)).expect("steps");

    // A writer that did not see the commit above builds on the old position.
    stale.start("b");
    let w = stale.write(OWNER, LIVE + 1);
    let stale_seq = w.expected_seq;
    match rt.block_on(store.commit(w)) {
        Err(Error::Conflict { run_id, expected }) => {
            assert_eq!(run_id, id.to_string());
            assert_eq!(expected, stale_seq);
        }
        other => panic!("expected Conflict, got {other:?}"),
    }
    assert_eq!(event_count(&rt, &store, &id), events_before, "no event of the stale write is visible");
    assert_eq!(rt.block_on(store.get_run(&id)).expect("run"), row_before, "run row unchanged (lease too)");
    assert_eq!(rt.block_on(store.steps(&id)).expect("steps"), steps_before, "step rows unchanged");

    // Recreating an existing run (expected_seq 0) is a conflict too.
    let mut again = Journal::new(id.clone(), TWO_STEPS);
    match rt.block_on(store.commit(again.write(OWNER, LIVE))) {
        Err(Error::Conflict { expected: 0, .. }) => {}
        other => panic!("expected Conflict at 0, got {other:?}"),
    }
    assert_eq!(event_count(&rt, &store, &id), events_before);
}

#[test]
fn a_different_owner_cannot_commit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = rt();
    let store = open(&db_in(&dir));
    let mut j = create(&rt, &store, 1, OWNER, LIVE);
    let id = j.state.run_id.clone();
    let before = event_count(&rt, &store, &id);
    let row_before = rt.block_on(store.get_run(&id)).expect("run");

    j.start("a");
    let w = j.write(OTHER, LIVE);
    assert!(matches!(rt.block_on(store.commit(w)), Err(Error::Conflict { .. })));
    assert_eq!(event_count(&rt, &store, &id), before);
    let row = rt.block_on(store.get_run(&id)).expect("run");
    assert_eq!(row, row_before);
    assert_eq!(row.owner.as_deref(), Some(OWNER));
    assert!(Error::Conflict { run_id: String::new(), expected: 0 }.is_retryable());
}

#[test]
fn group_commit_isolates_a_conflicting_write_from_its_neighbours() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = rt();
    let store = open(&db_in(&dir));
    let mut one = create(&rt, &store, 1, OWNER, LIVE);
    let mut two = create(&rt, &store, 2, OWNER, LIVE);
    let three_id = run_id(3);
    let (one_id, two_id) = (one.state.run_id.clone(), two.state.run_id.clone());
    let two_before = event_count(&rt, &store, &two_id);

    one.start("a");
    two.start("a");
    let good = one.write(OWNER, LIVE);
    let bad = two.write(OTHER, LIVE); // wrong owner: conflicts
    let mut three = Journal::new(three_id.clone(), TWO_STEPS);
    let fresh = three.write(OWNER, LIVE);
    // All three are sent before any is awaited, so the writer thread folds them into one or
    // two groups; in every split the conflicting write shares a transaction with a good one.
    let (r1, r2, r3) = rt.block_on(async { tokio::join!(store.commit(good), store.commit(bad), store.commit(fresh)) });
    assert!(r1.is_ok(), "{r1:?}");
    assert!(matches!(r2, Err(Error::Conflict { .. })), "{r2:?}");
    assert!(r3.is_ok(), "{r3:?}");

    assert_eq!(rt.block_on(store.get_run(&one_id)).expect("run").last_seq, one.state.last_seq);
    assert_eq!(event_count(&rt, &store, &one_id) as u64, one.state.last_seq);
    assert_eq!(rt.block_on(store.steps(&one_id)).expect("steps")[0].status, "RUNNING");
    assert_eq!(event_count(&rt, &store, &two_id), two_before);
    assert_eq!(rt.block_on(store.steps(&two_id)).expect("steps")[0].status, "READY");
    assert_eq!(event_count(&rt, &store, &three_id) as u64, three.state.last_seq);
}

#[test]
fn a_write_that_fails_halfway_is_rolled_back_without_harming_the_group() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = rt();
    let store = open(&db_in(&dir));
    let mut one = create(&rt, &store, 1, OWNER, LIVE);
    let mut two = create(&rt, &store, 2, OWNER, LIVE);
    let two_id = two.state.run_id.clone();
    let two_row = rt.block_on(store.get_run(&two_id)).expect("run");
    let two_events = rt.block_on(store.events(&two_id)).expect("events");

    one.start("a");
    two.start("a");
    let good = one.write(OWNER, LIVE);
    // The fence passes (right position, right owner) and the run row is updated, then an event
    // collides with one already journaled: everything of this write must be undone.
    let mut broken = two.write(OWNER, LIVE + 5);
    let mut dup = broken.events[0].clone();
    dup.seq = 1;
    broken.events.push(dup);
    let (r1, r2) = rt.block_on(async { tokio::join!(store.commit(good), store.commit(broken)) });
    assert!(r1.is_ok(), "{r1:?}");
    assert!(r2.is_err(), "a duplicate journal position must fail the write");
    assert!(!matches!(r2, Err(Error::Conflict { .. })), "not a fence conflict: {r2:?}");
    assert_eq!(rt.block_on(store.get_run(&two_id)).expect("run"), two_row, "run row update rolled back");
    assert_eq!(rt.block_on(store.events(&two_id)).expect("events"), two_events);
    assert_eq!(rt.block_on(store.steps(&two_id)).expect("steps")[0].status, "READY");
    assert_eq!(rt.block_on(store.get_run(&one.state.run_id)).expect("run").last_seq, one.state.last_seq);
}

// ---------------------------------------------------------------------------------------------
// Leases

#[test]
fn claim_takes_expired_leases_and_leaves_live_ones() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = rt();
    let store = open(&db_in(&dir));
    let now = T0 + 60_000;
    let expired = create(&rt, &store, 1, OWNER, now - 1).state.run_id;
    let live = create(&rt, &store, 2, OWNER, now + 10_000).state.run_id;
    let mut done = create(&rt, &store, 3, OWNER, now - 1);
    done.finish();
    commit(&rt, &store, done.write(OWNER, now - 1));

    assert_eq!(claim(&rt, &store, OTHER, now, None, &nobody_dead), vec![expired.clone()]);
    let row = rt.block_on(store.get_run(&expired)).expect("run");
    assert_eq!(row.owner.as_deref(), Some(OTHER));
    assert_eq!(row.lease_expires_at_ms, Some(now + 30_000));
    assert_eq!(rt.block_on(store.get_run(&live)).expect("run").owner.as_deref(), Some(OWNER));
    let finished = rt.block_on(store.get_run(&done.state.run_id)).expect("run");
    assert_eq!(finished.owner.as_deref(), Some(OWNER), "finished runs are never claimed");

    // Claimed with a fresh lease: a third process cannot take it.
    assert!(claim(&rt, &store, "host-c:3:C", now + 1, None, &nobody_dead).is_empty());
    // `only` restricts the claim even when the run is live.
    assert!(claim(&rt, &store, "host-c:3:C", now, Some(&live), &nobody_dead).is_empty());

    // The new owner can commit on top of what it claimed; the old one cannot.
    let mut j = Journal::new(expired.clone(), TWO_STEPS);
    j.committed_seq = j.state.last_seq;
    j.events.clear();
    j.payloads.clear();
    j.start("a");
    let mut old_owner = j.clone();
    assert!(matches!(rt.block_on(store.commit(old_owner.write(OWNER, LIVE))), Err(Error::Conflict { .. })));
    commit(&rt, &store, j.write(OTHER, LIVE));
}

#[test]
fn claim_takes_a_live_lease_when_its_owner_is_dead() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = rt();
    let store = open(&db_in(&dir));
    let now = T0 + 60_000;
    let mine = create(&rt, &store, 1, OWNER, now + 10_000).state.run_id;
    let theirs = create(&rt, &store, 2, "host-z:9:Z", now + 10_000).state.run_id;
    let dead = |o: &str| o == OWNER;
    assert_eq!(claim(&rt, &store, OTHER, now, Some(&theirs), &dead), Vec::<RunId>::new());
    assert_eq!(claim(&rt, &store, OTHER, now, None, &dead), vec![mine.clone()]);
    assert_eq!(rt.block_on(store.get_run(&mine)).expect("run").owner.as_deref(), Some(OTHER));
    assert_eq!(rt.block_on(store.get_run(&theirs)).expect("run").owner.as_deref(), Some("host-z:9:Z"));
}

#[test]
fn heartbeat_extends_only_this_owners_unfinished_runs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = rt();
    let store = open(&db_in(&dir));
    let a = create(&rt, &store, 1, OWNER, T0 + 1_000).state.run_id;
    let b = create(&rt, &store, 2, OWNER, T0 + 1_000).state.run_id;
    let other = create(&rt, &store, 3, OTHER, T0 + 1_000).state.run_id;
    let mut done = create(&rt, &store, 4, OWNER, T0 + 1_000);
    done.finish();
    commit(&rt, &store, done.write(OWNER, T0 + 1_000));

    let n = rt.block_on(store.heartbeat(OWNER, T0 + 50_000)).expect("heartbeat");
    assert_eq!(n, 2);
    for id in [&a, &b] {
        assert_eq!(rt.block_on(store.get_run(id)).expect("run").lease_expires_at_ms, Some(T0 + 50_000));
    }
    assert_eq!(rt.block_on(store.get_run(&other)).expect("run").lease_expires_at_ms, Some(T0 + 1_000));
    assert_eq!(rt.block_on(store.get_run(&done.state.run_id)).expect("run").lease_expires_at_ms, Some(T0 + 1_000));
    // The extended lease now protects the runs from a claim that would have taken them before.
    // At T0+2s only the run that missed the heartbeat has an expired lease.
    assert_eq!(claim(&rt, &store, "host-c:3:C", T0 + 2_000, None, &nobody_dead), vec![other]);
}

#[test]
fn release_clears_the_owner_so_anyone_can_claim_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = rt();
    let store = open(&db_in(&dir));
    let a = create(&rt, &store, 1, OWNER, LIVE).state.run_id;
    let b = create(&rt, &store, 2, OTHER, LIVE).state.run_id;
    assert_eq!(rt.block_on(store.release(OWNER, T0)).expect("release"), 1);
    let row = rt.block_on(store.get_run(&a)).expect("run");
    assert_eq!((row.owner, row.lease_expires_at_ms), (None, None));
    assert_eq!(rt.block_on(store.get_run(&b)).expect("run").owner.as_deref(), Some(OTHER));
    // A released run is free even though its old lease would still be live.
    assert_eq!(claim(&rt, &store, "host-c:3:C", T0, None, &nobody_dead), vec![a]);
}

// ---------------------------------------------------------------------------------------------
// Payloads

#[test]
fn payloads_are_stored_once_per_hash_and_linked_to_every_run() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = db_in(&dir);
    let rt = rt();
    let store = open(&path);
    // Two runs of the same definition: same definition payload, same inputs, same outputs.
    let mut x = Journal::new(run_id(1), TWO_STEPS);
    let mut y = Journal::new(run_id(2), TWO_STEPS);
    x.finish();
    y.finish();
    let hashes: std::collections::BTreeSet<String> =
        x.payloads.iter().chain(&y.payloads).map(|p| p.reference.hash.clone()).collect();
    let def_hash = x.state.definition_ref.clone().expect("definition").hash;
    assert_eq!(Some(def_hash.clone()), y.state.definition_ref.clone().map(|r| r.hash));
    let sent = x.payloads.len() + y.payloads.len();
    assert!(sent > hashes.len(), "the test must send duplicates ({sent} payloads, {} hashes)", hashes.len());
    commit(&rt, &store, x.write(OWNER, LIVE));
    commit(&rt, &store, y.write(OWNER, LIVE));

    let conn = Connection::open(&path).expect("open with rusqlite");
    let stored: i64 = conn.query_row("SELECT count(*) FROM payloads", [], |r| r.get(0)).expect("count");
    assert_eq!(stored as usize, hashes.len(), "one row per distinct hash");
    let links: i64 =
        conn.query_row("SELECT count(*) FROM run_payloads WHERE hash=?1", [&def_hash], |r| r.get(0)).expect("count");
    assert_eq!(links, 2, "the shared definition is linked to both runs");

    for id in [run_id(1), run_id(2)] {
        let loaded = rt.block_on(store.load_run(&id)).expect("load");
        let got: std::collections::BTreeSet<String> = loaded.payloads.iter().map(|(h, _)| h.clone()).collect();
        for e in &loaded.events {
            if let Some(r) = e.event.payload() {
                assert!(got.contains(&r.hash), "run {id} is missing payload {} of event {}", r.hash, e.seq);
            }
        }
        RunState::fold(id, &loaded.events, loaded.payloads).expect("folds with its payloads");
    }
    assert_eq!(rt.block_on(store.payload("0000")).expect("payload"), None);
}
