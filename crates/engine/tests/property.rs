//! Property test: random DAGs with random failure schedules run on a real store — an SQLite file
//! and a PostgreSQL schema, each case on a fresh one. Folding the recorded journal through the
//! pure core reproduces the engine's final state exactly, the journal replays without
//! divergence, projections equal the fold, and every step ends the way its failure schedule says
//! it must. Some steps are durable waits (timers in the journal) instead of activities; some run
//! `for_each` over a few items, some `loop` a few iterations.

// The store crate's test harness (fresh store per backend; PostgreSQL from CAIRN_TEST_POSTGRES,
// skipped with a notice when unreachable unless CAIRN_REQUIRE_POSTGRES=1).
#[path = "../../store/tests/common/mod.rs"]
mod common;

use cairn_core::decide::replay;
use cairn_core::definition::{Definition, ForEach, Inject, Loop, OnFailure, Step, Trigger};
use cairn_core::event::ErrorClass;
use cairn_core::kinds::Role;
use cairn_core::retry::RetryPolicy;
use cairn_core::{RunState, RunStatus, StepId, StepStatus};
use cairn_engine::{Engine, EngineConfig, NewRun};
use cairn_store::{Journal, RunRow, StepRow};
use common::{Backend, TestStore};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use serde_json::json;

#[derive(Clone, Debug)]
struct StepSpec {
    needs: Vec<usize>,
    schedule: Schedule,
    when: Option<bool>,
    trigger: Trigger,
    /// The schedule of a fallback step standing in for this one, if it has one.
    fallback: Option<Schedule>,
    shape: Shape,
}

/// A plain step, one that runs for each of `items` items (each following the schedule), or one
/// that loops until its `iterations`-th iteration (each following the schedule).
#[derive(Clone, Copy, Debug)]
enum Shape {
    Plain,
    ForEach { items: u32, max_parallel: u32 },
    Loop { iterations: u32 },
}

fn shape() -> impl Strategy<Value = Shape> {
    prop_oneof![
        7 => Just(Shape::Plain),
        2 => (0u32..4, 1u32..3).prop_map(|(items, max_parallel)| Shape::ForEach { items, max_parallel }),
        2 => (1u32..4).prop_map(|iterations| Shape::Loop { iterations }),
    ]
}

/// How a step's attempts go: the first `fail_times` fail (permanently, or transiently under a
/// budget of `max_attempts`).
#[derive(Clone, Copy, Debug)]
struct Schedule {
    fail_times: u32,
    max_attempts: u32,
    permanent: bool,
    /// A durable wait of a few milliseconds instead of an activity: no attempts, never fails.
    wait: bool,
}

fn schedule() -> impl Strategy<Value = Schedule> {
    (0u32..4, 1u32..5, proptest::bool::weighted(0.15), proptest::bool::weighted(0.15))
        .prop_map(|(fail_times, max_attempts, permanent, wait)| Schedule { fail_times, max_attempts, permanent, wait })
}

fn step_spec(i: usize) -> impl Strategy<Value = StepSpec> {
    (
        proptest::collection::vec(0..i.max(1), 0..=i.min(3)),
        schedule(),
        proptest::option::weighted(0.3, any::<bool>()),
        prop_oneof![Just(Trigger::AllSucceeded), Just(Trigger::NoneFailed), Just(Trigger::AllDone)],
        proptest::option::weighted(0.25, schedule()),
        shape(),
    )
        .prop_map(move |(mut needs, schedule, when, trigger, fallback, shape)| {
            if i == 0 {
                needs.clear();
            }
            needs.sort_unstable();
            needs.dedup();
            StepSpec { needs, schedule, when, trigger, fallback, shape }
        })
}

fn dag() -> impl Strategy<Value = Vec<StepSpec>> {
    (1usize..9).prop_flat_map(|n| (0..n).map(step_spec).collect::<Vec<_>>())
}

/// One step of the generated workflow: a spec's step, or the fallback placed right after it.
#[derive(Clone, Debug)]
struct Node {
    id: String,
    needs: Vec<usize>,
    schedule: Schedule,
    when: Option<bool>,
    trigger: Trigger,
    fallback: Option<usize>,
    primary: Option<usize>,
    shape: Shape,
}

/// Lays the specs out in order, each fallback right after its step (needs point at steps only).
fn nodes(specs: &[StepSpec]) -> Vec<Node> {
    let mut at = Vec::with_capacity(specs.len());
    let mut out: Vec<Node> = Vec::new();
    for (i, s) in specs.iter().enumerate() {
        let index = out.len();
        at.push(index);
        out.push(Node {
            id: format!("s{i}"),
            needs: s.needs.iter().map(|&j| at[j]).collect(),
            schedule: s.schedule,
            when: s.when,
            trigger: s.trigger,
            fallback: s.fallback.map(|_| index + 1),
            primary: None,
            shape: s.shape,
        });
        if let Some(schedule) = s.fallback {
            out.push(Node {
                id: format!("s{i}_fb"),
                needs: Vec::new(),
                schedule,
                when: None,
                trigger: Trigger::AllSucceeded,
                fallback: None,
                primary: Some(index),
                shape: Shape::Plain,
            });
        }
    }
    out
}

fn definition(nodes: &[Node]) -> Definition {
    Definition {
        format: 1,
        name: "prop".into(),
        version: 1,
        description: None,
        inputs: Default::default(),
        artifact: None,
        retention_ms: None,
        budget: None,
        tools: Default::default(),
        kinds: Default::default(),
        steps: nodes
            .iter()
            .enumerate()
            .map(|(i, n)| Step {
                id: StepId::new(&n.id),
                kind: if n.schedule.wait { "wait" } else { "echo" }.into(),
                needs: n.needs.iter().map(|&j| StepId::new(&nodes[j].id)).collect(),
                when: n.when.map(|w| format!("inputs.flag == {w}")),
                with: if n.schedule.wait {
                    json!({"duration": format!("{}ms", 1 + i % 4)})
                } else if !matches!(n.shape, Shape::Plain) {
                    json!({"i": i, "item": "{{ item if item is defined else iteration }}"})
                } else {
                    json!({"i": i, "prev": n.needs.first().map(|&j| format!("{{{{ steps.{}.status }}}}", nodes[j].id))})
                },
                retry: RetryPolicy {
                    max_attempts: n.schedule.max_attempts,
                    initial_delay_ms: 1,
                    multiplier: 2.0,
                    max_delay_ms: 4,
                    jitter: 0.5,
                },
                timeout_ms: Some(10_000),
                on_failure: match n.fallback {
                    Some(f) => OnFailure::Fallback(StepId::new(&nodes[f].id)),
                    None => OnFailure::Continue,
                },
                trigger: n.trigger,
                inject: (n.schedule.fail_times > 0 && !n.schedule.wait).then(|| Inject {
                    fail_times: n.schedule.fail_times,
                    fail_class: if n.schedule.permanent { ErrorClass::Permanent } else { ErrorClass::Transient },
                    ..Inject::default()
                }),
                approval: None,
                compensate: None,
                role: n.schedule.wait.then_some(Role::Wait),
                for_each: match n.shape {
                    Shape::ForEach { items, max_parallel } => Some(ForEach {
                        items: json!((0..items).collect::<Vec<_>>()),
                        max_parallel: Some(max_parallel),
                        max_items: 10,
                    }),
                    _ => None,
                },
                repeat: match n.shape {
                    Shape::Loop { iterations } => {
                        Some(Loop { until: format!("iteration >= {iterations}"), max_iterations: 5 })
                    }
                    _ => None,
                },
                instance: None,
                budget: None,
            })
            .collect(),
    }
}

/// What each step must end as, derived from the schedule alone (steps are in topological order,
/// a fallback right after its step), and whether the run fails.
fn expected(nodes: &[Node]) -> (Vec<(StepStatus, u32)>, bool) {
    let mut out: Vec<(StepStatus, u32)> = Vec::new();
    // A `for_each` that went on past failed items (`continue`) still fails the run at the end.
    let mut items_failed = false;
    // What a step counts as for the steps that need it: its fallback's outcome if it failed.
    // A failed step whose fallback did not complete counts as failed.
    let counts_as = |out: &[(StepStatus, u32)], j: usize| match (out[j].0, nodes[j].fallback) {
        (StepStatus::Failed, Some(f)) if out[f].0 == StepStatus::Completed => StepStatus::Completed,
        (status, _) => status,
    };
    for n in nodes {
        let one = |s: Schedule| {
            if s.wait {
                (StepStatus::Completed, 0)
            } else if s.fail_times > 0 && s.permanent {
                (StepStatus::Failed, 1)
            } else if s.fail_times >= s.max_attempts {
                (StepStatus::Failed, s.max_attempts)
            } else {
                (StepStatus::Completed, s.fail_times + 1)
            }
        };
        // A dynamic step runs no attempt itself. Its items or iterations each go as the schedule
        // says: a failed item is skipped (the step continues) unless the step has a fallback; a
        // failed iteration fails the step.
        let run = |s: Schedule| match n.shape {
            Shape::Plain => one(s),
            Shape::ForEach { items, .. } => match one(s).0 {
                StepStatus::Failed if items > 0 && n.fallback.is_some() => (StepStatus::Failed, 0),
                _ => (StepStatus::Completed, 0),
            },
            Shape::Loop { .. } => (one(s).0, 0),
        };
        if let Some(p) = n.primary {
            out.push(if out[p].0 == StepStatus::Failed { run(n.schedule) } else { (StepStatus::Skipped, 0) });
            continue;
        }
        let deps: Vec<StepStatus> = n.needs.iter().map(|&j| counts_as(&out, j)).collect();
        let skip = match n.trigger {
            Trigger::AllSucceeded => deps.iter().any(|d| *d != StepStatus::Completed),
            Trigger::NoneFailed => deps.contains(&StepStatus::Failed),
            Trigger::AllDone => false,
        };
        // The runs below use inputs.flag = true.
        if skip || n.when == Some(false) {
            out.push((StepStatus::Skipped, 0));
        } else {
            let ran = run(n.schedule);
            if let Shape::ForEach { items, .. } = n.shape {
                items_failed |= items > 0 && ran.0 == StepStatus::Completed && one(n.schedule).0 == StepStatus::Failed;
            }
            out.push(ran);
        }
    }
    let fails = items_failed
        || (0..nodes.len()).any(|j| out[j].0 == StepStatus::Failed && counts_as(&out, j) != StepStatus::Completed);
    (out, fails)
}

/// Runs one DAG on a fresh store of `backend` and checks the journal against the engine's state.
fn journal_fold_reproduces_the_final_state(backend: Backend, specs: &[StepSpec]) -> Result<(), TestCaseError> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("rt");
    let Some(store) = rt.block_on(TestStore::open(backend)) else {
        return Ok(()); // PostgreSQL unreachable: the harness printed why.
    };
    let engine = Engine::new(store.shared(), EngineConfig::new("prop:1:x".into()), None);
    let nodes = nodes(specs);
    let def = definition(&nodes);
    let outcome = rt.block_on(async {
        let new = NewRun::inline(def, json!({"flag": true}));
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

    let (want, fails) = expected(&nodes);
    for (i, (status, attempts)) in want.iter().enumerate() {
        let got = &folded.steps[i];
        prop_assert_eq!((got.status, got.attempts), (*status, *attempts), "step {} of {:?}", nodes[i].id, nodes);
    }
    prop_assert_eq!(folded.status, if fails { RunStatus::Failed } else { RunStatus::Completed });
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
