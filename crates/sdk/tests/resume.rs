//! The facade end to end on a real SQLite file: a workflow built in code with a Rust kind beside
//! built-in ones (`for_each`, `when`, a gate skipped by its condition), and a "process" whose
//! runtime dies mid-attempt (its Tokio runtime shut down, as a crash would stop it) resumed by
//! the next one without running its completed step again.

use cairn_sdk::{Activity, Attempt, AttemptFuture, Cairn, KindSpec, RunStatus, Step, Workflow, json};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

static FIRST_RUNS: AtomicUsize = AtomicUsize::new(0);
static SLOW_RUNS: AtomicUsize = AtomicUsize::new(0);

/// Counts its attempts.
struct First;

impl Activity for First {
    fn spec(&self) -> KindSpec {
        KindSpec::new("first", "counts how often it runs")
    }
    fn run<'a>(&'a self, _: &'a mut Attempt<'_>) -> AttemptFuture<'a> {
        Box::pin(async move { Ok(json!({"n": FIRST_RUNS.fetch_add(1, Ordering::SeqCst) + 1})) })
    }
}

/// Hangs on its first attempt (the process dies there), answers on the next.
struct Slow;

impl Activity for Slow {
    fn spec(&self) -> KindSpec {
        KindSpec::new("slow", "hangs the first time")
    }
    fn run<'a>(&'a self, attempt: &'a mut Attempt<'_>) -> AttemptFuture<'a> {
        Box::pin(async move {
            if SLOW_RUNS.fetch_add(1, Ordering::SeqCst) == 0 {
                std::future::pending::<()>().await;
            }
            Ok(json!({"item": attempt.input["item"]}))
        })
    }
}

fn workflow() -> Workflow {
    Workflow::new("facade")
        .step(Step::new("one", "first"))
        .step(Step::new("each", "slow").needs(["one"]).for_each(json!([1, 2])).with(json!({"item": "{{ item }}"})))
        .step(Step::new("gate", "approval").needs(["each"]).when("steps.one.output.n > 5"))
        .step(Step::new("done", "echo").needs(["each"]).with(json!({"first": "{{ steps.one.output.n }}"})))
}

#[test]
fn a_run_cut_off_by_a_dying_process_is_resumed_by_the_next_without_repeating_its_finished_step() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("app.db");
    // Process 1: starts the run and dies while `each` hangs.
    let first = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("rt");
    first.block_on(async {
        let cairn = Cairn::new().kind(First).kind(Slow).lease_ms(1_000).open_sqlite(&db).expect("open");
        let handle = cairn.start(&workflow(), json!({})).await.expect("start");
        assert!(handle.id.starts_with("wf_"));
        while SLOW_RUNS.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        std::mem::forget(cairn); // no goodbye: the heartbeat just stops with the runtime
    });
    first.shutdown_background();

    // Process 2: after the lease lapses, takes the run over and finishes it.
    let second = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("rt");
    second.block_on(async {
        let cairn = Cairn::new().kind(First).kind(Slow).lease_ms(1_000).open_sqlite(&db).expect("open");
        let mut outcomes = Vec::new();
        for _ in 0..50 {
            outcomes = cairn.resume().await.expect("resume");
            if !outcomes.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(outcomes.len(), 1, "the run was taken over");
        let outcome = outcomes[0].as_ref().expect("driven");
        assert_eq!(outcome.status, RunStatus::Completed, "{:?}", outcome.failure);
        let output = outcome.output.clone().expect("output");
        assert_eq!(output["done"], json!({"first": 1}), "{output}");
        assert_eq!(FIRST_RUNS.load(Ordering::SeqCst), 1, "the finished step did not run again");
        // An async function as a kind.
        let upper = KindSpec::new("upper", "upper-cases `with.text`");
        let fns = Cairn::new()
            .kind_fn(upper, |input: cairn_sdk::Value| async move {
                Ok(json!({"text": input["text"].as_str().unwrap_or_default().to_uppercase()}))
            })
            .open_sqlite(dir.path().join("fns.db"))
            .expect("open");
        let shout = Workflow::new("shout").step(Step::new("up", "upper").with(json!({"text": "quiet"})));
        let out = fns.run(&shout, json!({})).await.expect("run").output.expect("output");
        assert_eq!(out["up"]["text"], "QUIET");
        // A run that waits for a person is handed back, not awaited forever.
        let gated = Workflow::new("gated").step(Step::new("ask", "approval").approval("ship it?"));
        let waiting = tokio::time::timeout(Duration::from_secs(10), cairn.run(&gated, json!({})))
            .await
            .expect("handed back while it waits")
            .expect("run");
        assert!(!waiting.status.is_terminal(), "{:?}", waiting.status);
        // A definition with problems is refused before anything is written.
        let bad = Workflow::new("bad").step(Step::new("x", "nope")).step(Step::new("y", "echo").needs(["z"]));
        let err = cairn.start(&bad, json!({})).await.err().expect("refused").to_string();
        assert!(err.contains("unknown kind `nope`") && err.contains("z"), "{err}");
    });
}
