//! The parts of `cairn chaos` and `cairn readiness` (issue 16). Chaos: the outside world the
//! workload talks to, playing a seeded failure schedule and counting effects ([`world`]), and
//! the naive runner Cairn is compared with ([`naive`]); the schedule itself is pure and lives in
//! the core (`cairn_core::chaos_plan`). Readiness: six failure scenarios for an agent step, the
//! scripted world that plays them, the naked loop, and the scoring ([`readiness`]).

pub mod http;
pub mod naive;
pub mod readiness;
pub mod restart;
pub mod world;

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_core::chaos_plan::{Schedule, profile};

    /// The naive runner under `hostile`, seed 1337: it loses the jobs whose primary model is away
    /// (no fallback) and, restarted from the top after each kill, applies writes twice.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_naive_runner_loses_work_and_duplicates_effects_under_the_hostile_schedule() {
        let schedule = Schedule::new(&profile("hostile").expect("hostile"), 1337, 20);
        let away = schedule.outage.map_or(0, |(a, b)| b - a);
        let kills = schedule.kills.len();
        let (world, mut orders) = world::Service::start(schedule.clone(), None).await.expect("world");
        let outcome = naive::run(world.addr, 20, &mut orders, std::time::Duration::from_secs(1)).await;
        let tally = world.tally();
        assert_eq!(outcome.completed + outcome.failed, 20);
        assert!(outcome.failed >= away, "the jobs without their model fail: {outcome:?}");
        assert!(outcome.recoveries <= kills, "{outcome:?}");
        assert!(tally.duplicated_effects() > 0, "restarted jobs write again: {tally:?}");
        assert!(tally.wasted_work() > 0);
        // The same seed, the same story.
        let (again, mut orders) = world::Service::start(schedule, None).await.expect("world");
        let second = naive::run(again.addr, 20, &mut orders, std::time::Duration::from_secs(1)).await;
        assert_eq!(
            (second.completed, second.failed, second.recoveries),
            (outcome.completed, outcome.failed, outcome.recoveries)
        );
        let second_tally = again.tally();
        assert_eq!(
            (second_tally.duplicated_effects(), second_tally.wasted_work(), second_tally.model_calls),
            (tally.duplicated_effects(), tally.wasted_work(), tally.model_calls)
        );
    }
}
