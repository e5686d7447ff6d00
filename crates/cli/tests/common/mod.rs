//! Helpers for driving the real `cairn` binary against a real SQLite file.
#![allow(dead_code)]

use cairn_core::decide::replay;
use cairn_core::{Envelope, Event, RunId};
use cairn_store::{RunQuery, RunRow, SqliteStore, StepRow, Store};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub struct Env {
    pub dir: tempfile::TempDir,
    pub db: PathBuf,
    rt: tokio::runtime::Runtime,
}

impl Env {
    pub fn new() -> Env {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("cairn.db");
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        Env { dir, db, rt }
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, text).expect("write file");
        p
    }

    pub fn cmd(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_cairn"));
        c.env("CAIRN_DB", &self.db).env("NO_COLOR", "1").current_dir(self.dir.path());
        c.env_remove("CAIRN_TEST_HOLD_AFTER_ACTIVITY");
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().expect("run cairn")
    }

    /// Starts cairn with stderr lines delivered on a channel.
    pub fn spawn(&self, args: &[&str], envs: &[(&str, &str)]) -> (Child, mpsc::Receiver<String>) {
        let mut c = self.cmd();
        c.args(args).stdout(Stdio::null()).stderr(Stdio::piped());
        for (k, v) in envs {
            c.env(k, v);
        }
        let mut child = c.spawn().expect("spawn cairn");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        (child, rx)
    }

    pub fn store(&self) -> SqliteStore {
        SqliteStore::open(&self.db, cairn_store::Durability::Normal).expect("open store")
    }

    pub fn block<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    pub fn runs(&self) -> Vec<RunRow> {
        if !self.db.exists() {
            return Vec::new();
        }
        let store = self.store();
        self.block(store.list_runs(RunQuery { limit: 1000, ..Default::default() })).expect("list runs")
    }

    pub fn only_run(&self) -> RunRow {
        let runs = self.runs();
        assert_eq!(runs.len(), 1, "expected exactly one run, found {runs:#?}");
        runs.into_iter().next().expect("one run")
    }

    pub fn steps(&self, id: &str) -> Vec<StepRow> {
        let store = self.store();
        self.block(store.steps(&RunId::parse(id).expect("id"))).expect("steps")
    }

    pub fn step(&self, id: &str, step: &str) -> StepRow {
        self.steps(id).into_iter().find(|s| s.step_id == step).unwrap_or_else(|| panic!("no step {step}"))
    }

    pub fn events(&self, id: &str) -> Vec<Envelope> {
        let store = self.store();
        self.block(store.events(&RunId::parse(id).expect("id"))).expect("events")
    }

    /// The journal must be a legal path through the state machines and replay without
    /// divergence; the projection rows must equal the fold.
    pub fn assert_journal_is_sound(&self, id: &str) {
        let store = self.store();
        let run_id = RunId::parse(id).expect("id");
        let loaded = self.block(store.load_run(&run_id)).expect("load");
        let state = replay(run_id.clone(), &loaded.events, loaded.payloads.clone())
            .unwrap_or_else(|e| panic!("journal of {id} does not replay: {e}\n{}", dump(&loaded.events)));
        let expected_steps = StepRow::from_state(&state, None);
        let stored_steps = self.block(store.steps(&run_id)).expect("steps");
        assert_eq!(stored_steps, expected_steps, "step rows differ from the fold of the journal");
        let mut expected_run = RunRow::from_state(&state);
        expected_run.owner = loaded.run.owner.clone();
        expected_run.lease_expires_at_ms = loaded.run.lease_expires_at_ms;
        assert_eq!(loaded.run, expected_run, "run row differs from the fold of the journal");
    }

    /// How many attempts of a step the journal records as started.
    pub fn started(&self, id: &str, step: &str) -> usize {
        self.events(id)
            .iter()
            .filter(|e| matches!(&e.event, Event::AttemptStarted { step: s, .. } if s.as_str() == step))
            .count()
    }
}

pub fn dump(events: &[Envelope]) -> String {
    events.iter().map(|e| serde_json::to_string(e).unwrap_or_default()).collect::<Vec<_>>().join("\n")
}

/// Waits for a condition, failing with context if the deadline passes.
pub fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if cond() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("timed out after {timeout:?} waiting for {what}");
}

/// Waits for a stderr line containing `needle`; returns all lines seen.
pub fn wait_line(rx: &mpsc::Receiver<String>, needle: &str, timeout: Duration) -> Vec<String> {
    let deadline = Instant::now() + timeout;
    let mut seen = Vec::new();
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(line) => {
                let hit = line.contains(needle);
                seen.push(line);
                if hit {
                    return seen;
                }
            }
            Err(_) => break,
        }
    }
    panic!("timed out waiting for a line containing {needle:?}; saw:\n{}", seen.join("\n"));
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn sigkill(child: &mut Child) {
    child.kill().expect("SIGKILL");
    child.wait().expect("reap");
}

pub fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}
