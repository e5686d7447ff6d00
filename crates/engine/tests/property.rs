//! Property test: random DAGs with random failure schedules run on a real store — an SQLite file
//! and a PostgreSQL schema, each case on a fresh one. Folding the recorded journal through the
//! pure core reproduces the engine's final state exactly, the journal replays without
//! divergence, projections equal the fold, and every step ends the way its failure schedule says
//! it must.

// The store crate's test harness (fresh store per backend; PostgreSQL from CAIRN_TEST_POSTGRES,
// skipped with a notice when unreachable unless CAIRN_REQUIRE_POSTGRES=1).
#[path = "../../store/tests/common/mod.rs"]
mod common;

use cairn_core::decide::replay;
use cairn_core::definition::{Definition, Inject, OnFailure, Step, Trigger};
use cairn_core::event::{ErrorClass, RunOptions, RunSource};
use cairn_core::retry::RetryPolicy;
use cairn_core::{RunState, RunStatus, StepId, StepStatus};
use cairn_engine::{Engine, EngineConfig, NewRun};
use cairn_store::{RunRow, StepRow, Store};
use common::{Backend, TestStore};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use serde_json::json;

#[derive(Clone, Debug)]
struct StepSpec {
    needs: Vec<usize>,
    fail_times: u32,
    max_attempts: u32,
    permanent: bool,
    when: Option<bool>,
    trigger: Trigger,
}

fn step_spec(i: usize) -> impl Strategy<Value = StepSpec> {
    (
        proptest::collection::vec(0..i.max(1), 0..=i.min(3)),
        0u32..4,
        1u32..5,
        proptest::bool::weighted(0.15),
        proptest::option::weighted(0.3, any::<bool>()),
        prop_oneof![Just(Trigger::AllSucceeded), Just(Trigger::NoneFailed), Just(Trigger::AllDone)],
    )
        .prop_map(move |(mut needs, fail_times, max_attempts, permanent, when, trigger)| {
            if i == 0 {
                needs.clear();
            }
            needs.sort_unstable();
            needs.dedup();
            StepSpec { needs, fail_times, max_attempts, permanent, when, trigger }
        })
}

fn dag() -> impl Strategy<Value = Vec<StepSpec>> {
    (1usize..9).prop_flat_map(|n| (0..n).map(step_spec).collect::<Vec<_>>())
}

fn definition(specs: &[StepSpec]) -> Definition {
    Definition {
        format: 1,
        name: "prop".into(),
        version: 1,
        description: None,
        inputs: Default::default(),
        artifact: None,
        retention_ms: None,
        steps: specs
            .iter()
            .enumerate()
            .map(|(i, s)| Step {
                id: StepId::new(format!("s{i}")),
                kind: "echo".into(),
                needs: s.needs.iter().map(|j| StepId::new(format!("s{j}"))).collect(),
                when: s.when.map(|w| format!("inputs.flag == {w}")),
                with: json!({"i": i, "prev": s.needs.first().map(|j| format!("{{{{ steps.s{j}.status }}}}"))}),
                retry: RetryPolicy {
                    max_attempts: s.max_attempts,
                    initial_delay_ms: 1,
                    multiplier: 2.0,
                    max_delay_ms: 4,
                    jitter: 0.5,
                },
                timeout_ms: Some(10_000),
                on_failure: OnFailure::Continue,
                trigger: s.trigger,
                inject: (s.fail_times > 0).then(|| Inject {
                    fail_times: s.fail_times,
                    fail_class: if s.permanent { ErrorClass::Permanent } else { ErrorClass::Transient },
                    ..Inject::default()
                }),
                approval: None,
                compensate: None,
            })
            .collect(),
    }
}

/// What each step must end as, derived from the schedule alone (steps are in topological order).
fn expected(specs: &[StepSpec]) -> Vec<(StepStatus, u32)> {
    let mut out: Vec<(StepStatus, u32)> = Vec::new();
    for s in specs {
        let deps: Vec<StepStatus> = s.needs.iter().map(|&j| out[j].0).collect();
        let skip = match s.trigger {
            Trigger::AllSucceeded => deps.iter().any(|d| *d != StepStatus::Completed),
            Trigger::NoneFailed => deps.contains(&StepStatus::Failed),
            Trigger::AllDone => false,
        };
        // The runs below use inputs.flag = true.
        if skip || s.when == Some(false) {
            out.push((StepStatus::Skipped, 0));
        } else if s.fail_times > 0 && s.permanent {
            out.push((StepStatus::Failed, 1));
        } else if s.fail_times >= s.max_attempts {
            out.push((StepStatus::Failed, s.max_attempts));
        } else {
            out.push((StepStatus::Completed, s.fail_times + 1));
        }
    }
    out
}

/// Runs one DAG on a fresh store of `backend` and checks the journal against the engine's state.
fn journal_fold_reproduces_the_final_state(backend: Backend, specs: &[StepSpec]) -> Result<(), TestCaseError> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("rt");
    let Some(store) = rt.block_on(TestStore::open(backend)) else {
        return Ok(()); // PostgreSQL unreachable: the harness printed why.
    };
    let engine = Engine::new(store.shared(), EngineConfig::new("prop:1:x".into()), None);
    let def = definition(specs);
    let outcome = rt.block_on(async {
        let new = NewRun {
            definition: def,
            source: RunSource::Definition { path: None },
            plan: None,
            inputs: json!({"flag": true}),
            options: RunOptions::default(),
            reused: Vec::new(),
            reused_payloads: Vec::new(),
        };
        let id = cairn_engine::new_run_id();
        engine.start(id, new).await.expect("start").await.expect("join").expect("run")
    });
    let loaded = rt.block_on(store.load_run(&outcome.run_id)).expect("load");

    let folded = RunState::fold(outcome.run_id.clone(), &loaded.events, loaded.payloads.clone()).expect("fold");
    prop_assert_eq!(&folded, &*outcome.state, "fold differs from the engine's state ({:?})", backend);
    let replayed = replay(outcome.run_id.clone(), &loaded.events, loaded.payloads.clone());
    prop_assert!(replayed.is_ok(), "replay: {:?}", replayed.err());
    prop_assert_eq!(rt.block_on(store.steps(&outcome.run_id)).expect("steps"), StepRow::from_state(&folded, None));
    let mut run_row = RunRow::from_state(&folded);
    run_row.owner = loaded.run.owner.clone();
    run_row.lease_expires_at_ms = loaded.run.lease_expires_at_ms;
    run_row.wake_at_ms = loaded.run.wake_at_ms;
    prop_assert_eq!(&loaded.run, &run_row);

    let want = expected(specs);
    for (i, (status, attempts)) in want.iter().enumerate() {
        let got = &folded.steps[i];
        prop_assert_eq!((got.status, got.attempts), (*status, *attempts), "step s{} of {:?}", i, specs);
    }
    let any_failed = want.iter().any(|(s, _)| *s == StepStatus::Failed);
    prop_assert_eq!(folded.status, if any_failed { RunStatus::Failed } else { RunStatus::Completed });
    // Engine, then store (its PostgreSQL schema is dropped), then the runtime.
    drop(engine);
    drop(store);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]

    #[test]
    fn sqlite_journal_fold_reproduces_the_final_state(specs in dag()) {
        journal_fold_reproduces_the_final_state(Backend::Sqlite, &specs)?;
    }
}

proptest! {
    // Fewer cases: each one creates (and drops) a schema on the server.
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn postgres_journal_fold_reproduces_the_final_state(specs in dag()) {
        journal_fold_reproduces_the_final_state(Backend::Postgres, &specs)?;
    }
}
