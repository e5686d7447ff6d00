//! Operator requests are applied in the order they were accepted, exactly once, whichever
//! process drives the run — a foreground `cairn run`, `cairn serve`, `cairn worker`, or none
//! (each request's own process takes the run over) — on SQLite and on PostgreSQL; and every
//! command answers only once its request is applied or refused.
//!
//! Each case sends, one after the other, eight signals then pause, unpause, pause, unpause (the
//! sequence that once ended PAUSED with the signals shuffled), then mixes from several shells at
//! once: signals, pause/unpause, the same approval twice, an escalation answer, and finally a
//! cancel racing more signals. The journal is checked against the order of acceptance that the
//! run's request log (`cairn runs requests`) records.

mod common;

use common::pg::Database;
use common::*;
use serde_json::Value;
use std::collections::BTreeMap;
use std::process::{Child, Output};

use std::time::Duration;

// `busy` keeps a driving process holding the run, so requests from other processes reach it
// through its inbox instead of taking an idle run over.
const WORKFLOW: &str = "name: ordering
steps:
  - {id: busy, kind: mock_model, with: {prompt: busy, latency: 60s}, timeout: 120s}
  - {id: gate, kind: approval}
  - {id: flaky, kind: fail, with: {class: permanent, message: down}, on_failure: escalate}
  - {id: after, kind: echo, needs: [gate, flaky], with: {done: true}}
  - {id: final_gate, kind: approval, needs: [after]}
";

const LONG: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, Debug, PartialEq)]
enum Driver {
    /// `cairn run FILE` in the foreground, not on a terminal.
    Foreground,
    Serve,
    Worker,
    /// Nobody: each request's process takes the run over, applies, and hands it back.
    Nobody,
}

/// A request, sent through the CLI or (to `cairn serve`) the API.
#[derive(Clone, Debug)]
enum Req {
    Signal(String),
    Pause,
    Unpause,
    Approve(&'static str),
    Skip(&'static str),
    Cancel,
}

impl Req {
    fn cli(&self, id: &str) -> Vec<String> {
        let v = |parts: &[&str]| parts.iter().map(|p| p.to_string()).collect::<Vec<String>>();
        match self {
            Req::Signal(name) => v(&["runs", "signal", id, name, "--data", "{\"n\": 1}"]),
            Req::Pause => v(&["runs", "pause", id]),
            Req::Unpause => v(&["runs", "unpause", id, "--detach"]),
            Req::Approve(step) => v(&["approve", id, step, "--detach"]),
            Req::Skip(step) => v(&["escalation", id, step, "skip", "--output", "{\"skipped\": true}", "--detach"]),
            Req::Cancel => v(&["runs", "cancel", id, "--reason", "enough"]),
        }
    }

    fn http(&self, id: &str) -> (String, String) {
        match self {
            Req::Signal(name) => (format!("/v1/runs/{id}/signals/{name}"), "{\"n\": 1}".into()),
            Req::Pause => (format!("/v1/runs/{id}/pause"), String::new()),
            Req::Unpause => (format!("/v1/runs/{id}/resume"), String::new()),
            Req::Approve(step) => (format!("/v1/runs/{id}/approvals/{step}"), "{\"decision\": \"approve\"}".into()),
            Req::Skip(step) => (
                format!("/v1/runs/{id}/approvals/{step}"),
                "{\"decision\": \"skip\", \"output\": {\"skipped\": true}}".into(),
            ),
            Req::Cancel => (format!("/v1/runs/{id}/cancel"), "{\"reason\": \"enough\"}".into()),
        }
    }
}

/// What a request's command answered.
#[derive(Debug)]
enum Answer {
    /// Applied or unchanged, with the request's id.
    Done(i64),
    /// Refused with this message.
    Refused(String),
}

struct Case {
    env: Env,
    db: Option<Database>,
    /// The API of the `cairn serve` driving the run, when requests go through it.
    api: Option<String>,
}

/// The process driving the run.
enum Process {
    Child(Child),
    Server(Server),
    Nobody,
}

impl Case {
    fn new(tag: &str, postgres: bool) -> Option<Case> {
        let db = if postgres { Some(Database::create(tag)?) } else { None };
        Some(Case { env: Env::new(), db, api: None })
    }

    fn args<'a>(&'a self, args: &[&'a str]) -> Vec<&'a str> {
        let mut all: Vec<&str> = match &self.db {
            Some(db) => vec!["--database", db.url.as_str()],
            None => Vec::new(),
        };
        all.extend_from_slice(args);
        all
    }

    fn cairn(&self, args: &[&str]) -> Output {
        let mut cmd = self.env.cmd();
        cmd.args(self.args(args)).stdin(std::process::Stdio::null());
        output_within(&mut cmd, LONG)
    }

    fn json(&self, args: &[&str]) -> Value {
        let out = self.cairn(args);
        assert!(out.status.success(), "cairn {args:?}: {}", stderr(&out));
        serde_json::from_str(&stdout(&out)).unwrap_or_else(|e| panic!("cairn {args:?} printed no JSON ({e})"))
    }

    /// Sends a request (through the API for even `n` when a server drives the run, else the
    /// CLI) and returns what it answered; anything but an answer fails the test.
    fn send(&self, id: &str, req: &Req, n: usize) -> Answer {
        if let Some(addr) = self.api.as_deref().filter(|_| n.is_multiple_of(2)) {
            let (path, body) = req.http(id);
            let body = (!body.is_empty()).then_some(body.as_str());
            let r = call(addr, "POST", &path, &[("content-type", "application/json")], body);
            return match r.status {
                200 => {
                    Answer::Done(r.json()["request"]["id"].as_i64().unwrap_or_else(|| panic!("{req:?}: {}", r.body)))
                }
                409 => Answer::Refused(r.json()["error"]["message"].as_str().unwrap_or_default().to_string()),
                other => panic!("{req:?} over the API answered {other}: {}", r.body),
            };
        }
        let args = req.cli(id);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = self.cairn(&args);
        let err = stderr(&out);
        match out.status.code() {
            Some(0) => Answer::Done(request_id(&err).unwrap_or_else(|| panic!("{req:?} names its request: {err}"))),
            Some(2) => Answer::Refused(err),
            other => panic!("cairn {args:?} exited {other:?}: {err}"),
        }
    }

    /// A CLI command that must succeed; its stderr.
    fn ok_cli(&self, args: &[&str]) -> String {
        let out = self.cairn(args);
        assert!(out.status.success(), "cairn {args:?} failed ({:?}): {}", out.status.code(), stderr(&out));
        stderr(&out)
    }

    fn done(&self, id: &str, req: &Req, n: usize) -> i64 {
        match self.send(id, req, n) {
            Answer::Done(r) => r,
            Answer::Refused(why) => panic!("{req:?} was refused: {why}"),
        }
    }

    fn events(&self, id: &str) -> Vec<Value> {
        let out = self.cairn(&["runs", "events", id, "--json"]);
        assert!(out.status.success(), "{}", stderr(&out));
        stdout(&out).lines().map(|l| serde_json::from_str(l).expect("an event per line")).collect()
    }

    fn requests(&self, id: &str) -> Vec<Value> {
        self.json(&["runs", "requests", id, "--json"]).as_array().cloned().expect("a list of requests")
    }

    fn status(&self, id: &str) -> String {
        self.json(&["runs", "list", "--json"])
            .as_array()
            .and_then(|runs| runs.iter().find(|r| r["id"] == id).cloned())
            .and_then(|r| r["status"].as_str().map(str::to_string))
            .unwrap_or_default()
    }

    /// Waits until both decisions are asked for.
    fn wait_for_gates(&self, id: &str) {
        wait_for(&format!("run {id} to wait for its decisions"), LONG, || {
            let waiting = self.json(&["approvals", "--json"]);
            let steps: Vec<&str> = waiting
                .as_array()
                .map(|w| w.iter().filter(|a| a["run_id"] == id).filter_map(|a| a["step"].as_str()).collect())
                .unwrap_or_default();
            steps.contains(&"gate") && steps.contains(&"flaky")
        });
    }

    /// Starts the run the way `driver` drives it; returns its id and the driving process.
    fn start(&mut self, driver: Driver) -> (String, Process) {
        let wf = self.env.write("ordering.yaml", WORKFLOW);
        let wf = path_str(&wf).to_string();
        let process = match driver {
            Driver::Foreground | Driver::Nobody => {
                let (mut child, lines) = self.env.spawn(&self.args(&["run", &wf]), &[]);
                wait_line(&lines, "waits for a decision on", LONG);
                let runs = self.json(&["runs", "list", "--json"]);
                let id = runs[0]["id"].as_str().expect("the run").to_string();
                if driver == Driver::Foreground {
                    // Keep reading its output: a reader that goes away must not matter, but
                    // this test wants the process's exit status.
                    std::thread::spawn(move || for _ in lines {});
                    return (id, Process::Child(child));
                }
                // Interrupted: it lets go of the run, which nobody drives from then on.
                send_signal(&child, "INT");
                assert_eq!(wait_exit(&mut child, LONG).code(), Some(130));
                return (id, Process::Nobody);
            }
            Driver::Serve => {
                let server = self.env.serve(&self.args(&[]));
                self.api = Some(server.addr.clone());
                Process::Server(server)
            }
            Driver::Worker => Process::Child(self.env.spawn(&self.args(&["worker"]), &[]).0),
        };
        // Listed among the workers before the run is created.
        std::thread::sleep(Duration::from_millis(300));
        let out = self.cairn(&["run", "--detach", &wf]);
        assert!(out.status.success(), "{}", stderr(&out));
        let id = stdout(&out).trim().to_string();
        assert!(id.starts_with("wf_"), "run --detach prints the id: {:?}", stdout(&out));
        assert!(stderr(&out).contains("a worker drives it"), "{}", stderr(&out));
        (id, process)
    }
}

/// The journal events that record operator requests, as short labels (`signal s1`, `paused`,
/// `decided gate` ...), with their journal positions.
fn request_events(events: &[Value]) -> Vec<(u64, String)> {
    events
        .iter()
        .filter_map(|e| {
            let seq = e["seq"].as_u64()?;
            let label = match e["type"].as_str()? {
                "signal_received" => format!("signal {}", e["name"].as_str()?),
                "run_paused" => "paused".into(),
                "run_unpaused" => "unpaused".into(),
                "run_cancelled" => "cancelled".into(),
                "approval_decided" => format!("decided {}", e["step"].as_str()?),
                _ => return None,
            };
            Some((seq, label))
        })
        .collect()
}

/// The label a request's event carries (see `request_events`).
fn request_label(r: &Value) -> String {
    let target = r["target"].as_str().unwrap_or_default();
    match r["request"].as_str().unwrap_or_default() {
        "signal" => format!("signal {target}"),
        "pause" => "paused".into(),
        "unpause" => "unpaused".into(),
        "cancel" => "cancelled".into(),
        "approve" | "reject" | "retry" | "skip" | "abort" => format!("decided {target}"),
        other => other.to_string(),
    }
}

/// The run's request log against its journal: every request answered; the applied ones recorded
/// exactly once, by the event their answer names, in the order they were accepted; nothing in
/// the journal that no request asked for.
fn assert_journal_follows_acceptance(case: &Case, id: &str) -> Vec<Value> {
    let requests = case.requests(id);
    let events = case.events(id);
    let journaled = request_events(&events);
    let by_seq: BTreeMap<u64, String> = journaled.iter().cloned().collect();
    let mut last_seq = 0;
    let mut applied = 0;
    for r in &requests {
        let state = r["state"].as_str().unwrap_or_default();
        assert_ne!(state, "pending", "every request was answered: {r}");
        if state != "applied" {
            assert!(r["journal_seq"].is_null(), "only applied requests name an event: {r}");
            continue;
        }
        applied += 1;
        let seq = r["journal_seq"].as_u64().unwrap_or_else(|| panic!("an applied request names its event: {r}"));
        assert!(
            seq > last_seq,
            "request {} applied at event {seq}, before an earlier-accepted one (at {last_seq})",
            r["id"]
        );
        last_seq = seq;
        assert_eq!(by_seq.get(&seq), Some(&request_label(r)), "event {seq} records request {r}");
    }
    assert_eq!(
        journaled.len(),
        applied,
        "the journal holds exactly the applied requests: {journaled:?}\n{requests:#?}"
    );
    requests
}

/// The ids of the requests a batch of commands made, from their messages.
fn request_id(stderr: &str) -> Option<i64> {
    let at = stderr.find("(request ")? + "(request ".len();
    stderr[at..].split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

fn ordering(driver: Driver, postgres: bool) {
    let tag = format!("req_{driver:?}").to_lowercase();
    let Some(mut case) = Case::new(&tag, postgres) else { return };
    let (id, process) = case.start(driver);
    case.wait_for_gates(&id);

    // 1. One after the other: eight signals, then pause, unpause, pause, unpause.
    let mut sequence: Vec<Req> = (1..=8).map(|n| Req::Signal(format!("s{n}"))).collect();
    sequence.extend([Req::Pause, Req::Unpause, Req::Pause, Req::Unpause]);
    let mut accepted = Vec::new();
    for (n, req) in sequence.iter().enumerate() {
        accepted.push(case.done(&id, req, n));
    }
    assert!(accepted.windows(2).all(|w| w[0] < w[1]), "accepted in the order sent: {accepted:?}");
    let expected: Vec<String> = sequence
        .iter()
        .map(|r| match r {
            Req::Signal(name) => format!("signal {name}"),
            Req::Pause => "paused".into(),
            _ => "unpaused".into(),
        })
        .collect();
    let journaled: Vec<String> = request_events(&case.events(&id)).into_iter().map(|(_, l)| l).collect();
    assert_eq!(journaled, expected, "{driver:?}: applied once each, in the order sent");
    assert_ne!(case.status(&id), "PAUSED", "the operator's last word was unpause");
    assert_journal_follows_acceptance(&case, &id);

    // 2. From four shells at once: signals, a pause then an unpause, the same approval twice,
    //    an escalation answer.
    let shells: Vec<Vec<Req>> = (0..4)
        .map(|t| {
            let mut reqs: Vec<Req> = (0..3).map(|k| Req::Signal(format!("c{t}_{k}"))).collect();
            match t {
                0 => {
                    reqs.insert(1, Req::Pause);
                    reqs.push(Req::Unpause);
                }
                1 | 3 => reqs.insert(1, Req::Approve("gate")),
                _ => reqs.insert(2, Req::Skip("flaky")),
            }
            reqs
        })
        .collect();
    let ids_by_shell: Vec<Vec<i64>> = std::thread::scope(|scope| {
        let handles: Vec<_> = shells
            .iter()
            .enumerate()
            .map(|(t, reqs)| {
                let (case, id) = (&case, &id);
                scope.spawn(move || reqs.iter().enumerate().map(|(k, r)| case.done(id, r, t + k)).collect())
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("a shell")).collect()
    });
    for ids in &ids_by_shell {
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "one shell's requests accepted in its order: {ids:?}");
    }
    let requests = assert_journal_follows_acceptance(&case, &id);
    let mut gate: Vec<&str> =
        requests.iter().filter(|r| r["target"] == "gate").filter_map(|r| r["state"].as_str()).collect();
    gate.sort();
    assert_eq!(gate, ["applied", "unchanged"], "the same approval twice: applied once, then answered");
    assert_ne!(case.status(&id), "PAUSED", "shell 0's last word was unpause");

    // 3. A cancel racing signals: what was accepted before it is applied, what came after is
    //    refused because the run had finished.
    let (cancel_id, applied_signals): (i64, Vec<i64>) = std::thread::scope(|scope| {
        let signals: Vec<_> = (0..2)
            .map(|t| {
                let (case, id) = (&case, &id);
                scope.spawn(move || {
                    (0..3)
                        .filter_map(|k| match case.send(id, &Req::Signal(format!("late{t}_{k}")), t + k + 1) {
                            Answer::Done(r) => Some(r),
                            Answer::Refused(why) => {
                                assert!(why.contains("already finished"), "{why}");
                                None
                            }
                        })
                        .collect::<Vec<i64>>()
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(30));
        let cancel = case.done(&id, &Req::Cancel, 0);
        let applied: Vec<i64> = signals.into_iter().flat_map(|h| h.join().expect("signals")).collect();
        (cancel, applied)
    });
    let requests = assert_journal_follows_acceptance(&case, &id);
    for r in &requests {
        let rid = r["id"].as_i64().expect("id");
        if rid > cancel_id {
            assert_eq!((r["state"].as_str(), r["code"].as_str()), (Some("refused"), Some("run_finished")), "{r}");
        } else if r["request"] == "signal" {
            // Accepted before the cancel: applied, whatever raced it.
            assert_eq!(r["state"], "applied", "{r}");
        }
    }
    assert!(applied_signals.iter().all(|&r| r < cancel_id), "applied after the cancel: {applied_signals:?}");
    let events = case.events(&id);
    assert_eq!(events.last().map(|e| e["type"].clone()), Some(Value::from("run_cancelled")), "cancel ends the run");
    assert_eq!(case.status(&id), "CANCELLED");
    let out = case.cairn(&["runs", "pause", &id]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("already finished (CANCELLED)"), "{}", stderr(&out));

    match process {
        Process::Child(mut child) if driver == Driver::Foreground => {
            assert_eq!(wait_exit(&mut child, LONG).code(), Some(1), "the foreground run ends CANCELLED");
        }
        Process::Child(mut child) => {
            send_signal(&child, "TERM");
            wait_exit(&mut child, LONG);
        }
        Process::Server(mut server) => {
            server.signal("TERM");
            server.wait_exit(LONG);
        }
        Process::Nobody => {}
    }
    if !postgres {
        case.env.assert_journal_is_sound(&id);
    }
}

#[test]
fn requests_to_a_foreground_run_apply_in_acceptance_order_on_sqlite() {
    ordering(Driver::Foreground, false);
}

#[test]
fn requests_to_a_run_serve_drives_apply_in_acceptance_order_on_sqlite() {
    ordering(Driver::Serve, false);
}

#[test]
fn requests_to_a_run_a_worker_drives_apply_in_acceptance_order_on_sqlite() {
    ordering(Driver::Worker, false);
}

#[test]
fn requests_to_a_run_nobody_drives_apply_in_acceptance_order_on_sqlite() {
    ordering(Driver::Nobody, false);
}

#[test]
fn requests_to_a_foreground_run_apply_in_acceptance_order_on_postgres() {
    ordering(Driver::Foreground, true);
}

#[test]
fn requests_to_a_run_serve_drives_apply_in_acceptance_order_on_postgres() {
    ordering(Driver::Serve, true);
}

#[test]
fn requests_to_a_run_a_worker_drives_apply_in_acceptance_order_on_postgres() {
    ordering(Driver::Worker, true);
}

#[test]
fn requests_to_a_run_nobody_drives_apply_in_acceptance_order_on_postgres() {
    ordering(Driver::Nobody, true);
}

/// `cairn approve RUN no_such_step`, an escalation answer for a step that is not escalated, a
/// pause of a paused run: once "queued" with exit 0 and dropped later by the owner. Now each is
/// refused when its turn comes, with the reason, exit 2 — even while another process drives the
/// run — and the same approval twice is answered, not an error.
#[test]
fn requests_the_run_cannot_take_are_refused_with_the_reason_and_exit_2() {
    let Some(mut case) = Case::new("refusals", false) else { return };
    let (id, process) = case.start(Driver::Foreground);
    case.wait_for_gates(&id);
    let refused = |args: &[&str], why: &str| {
        let out = case.cairn(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(why), "{args:?} should say {why:?}: {}", stderr(&out));
        assert!(!stderr(&out).contains("queued") && !stderr(&out).contains("illegal transition"), "{}", stderr(&out));
    };
    refused(&["approve", &id, "no_such_step"], "has no step 'no_such_step'; waiting for a decision: gate, flaky");
    refused(&["escalation", &id, "gate", "retry"], "waits at an approval gate, not on an escalated failure");
    refused(&["approve", &id, "flaky"], "is an escalated failure, not an approval gate");
    refused(&["escalation", &id, "busy", "retry"], "step 'busy' of run");
    refused(&["runs", "unpause", &id], "is not paused");
    case.ok_cli(&["runs", "pause", &id]);
    refused(&["runs", "pause", &id], "is already paused");
    case.ok_cli(&["runs", "unpause", &id, "--detach"]);
    let first = case.ok_cli(&["approve", &id, "gate", "--detach"]);
    assert!(first.contains("approve: applied to"), "{first}");
    let again = case.ok_cli(&["approve", &id, "gate", "--detach"]);
    assert!(again.contains("nothing to do") && again.contains("already approved"), "{again}");
    refused(&["reject", &id, "gate", "--reason", "changed my mind"], "was already approved");
    let retry = case.ok_cli(&["escalation", &id, "flaky", "skip", "--output", "{}", "--detach"]);
    assert!(retry.starts_with("skip: applied to"), "the answer names itself: {retry}");
    let out = case.cairn(&["runs", "signal", &id, "note", "--data", "nope"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--data is not JSON"), "{}", stderr(&out));
    let out = case.cairn(&["runs", "signal", &id, "no spaces"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("must be 1 to 64 letters"), "{}", stderr(&out));
    // Nothing refused reached the journal.
    let requests = assert_journal_follows_acceptance(&case, &id);
    let refusals = requests.iter().filter(|r| r["state"] == "refused").count();
    assert_eq!(refusals, 7, "{requests:#?}");
    case.ok_cli(&["runs", "cancel", &id]);
    if let Process::Child(mut child) = process {
        assert_eq!(wait_exit(&mut child, LONG).code(), Some(1));
    }
}

/// Attempts waiting for an engine slot when a run is paused once still started afterwards, and
/// the run could complete while PAUSED. Nothing new starts while paused; unpausing starts them.
#[test]
fn a_paused_run_starts_nothing_new_until_it_is_unpaused() {
    let Some(case) = Case::new("paused", false) else { return };
    let wf = case.env.write(
        "wide.yaml",
        "name: wide\nsteps:\n  - {id: p1, kind: mock_model, with: {prompt: busy, latency: 600ms}}\n  - {id: p2, kind: mock_model, with: {prompt: busy, latency: 600ms}}\n  - {id: p3, kind: mock_model, with: {prompt: busy, latency: 600ms}}\n  - {id: p4, kind: mock_model, with: {prompt: busy, latency: 600ms}}\n",
    );
    let (mut child, _lines) = case.env.spawn(&case.args(&["run", "--concurrency", "1", path_str(&wf)]), &[]);
    wait_for("a run to start", LONG, || !case.env.runs().is_empty());
    let id = case.env.only_run().id;
    wait_for("its first attempt", LONG, || case.env.events(&id).iter().any(|e| e.event.kind() == "attempt_started"));
    case.ok_cli(&["runs", "pause", &id]);
    std::thread::sleep(Duration::from_millis(1500));
    let events = request_events(&case.events(&id));
    let paused_at = events.iter().find(|(_, l)| l == "paused").map(|(s, _)| *s).expect("paused");
    let started_after: Vec<u64> = case
        .events(&id)
        .iter()
        .filter(|e| e["type"] == "attempt_started")
        .filter_map(|e| e["seq"].as_u64())
        .filter(|s| *s > paused_at)
        .collect();
    assert!(started_after.is_empty(), "attempts started while paused at events {started_after:?}");
    assert_eq!(case.status(&id), "PAUSED", "the attempt in flight finished; nothing else ran");
    case.ok_cli(&["runs", "unpause", &id, "--detach"]);
    assert!(wait_exit(&mut child, LONG).success(), "unpaused, it runs the rest and completes");
    assert_eq!(case.env.step(&id, "p4").status, "COMPLETED");
    case.env.assert_journal_is_sound(&id);
}
