//! `cairn chaos` end to end: the naive runner and Cairn (a real `cairn worker` process SIGKILLed
//! at each scheduled instant) through the `hostile` schedule of seed 1337.

mod common;

use common::*;
use serde_json::Value;
use std::time::Duration;

#[test]
fn under_the_hostile_schedule_cairn_completes_everything_once_and_the_naive_runner_does_not() {
    let env = Env::new();
    let mut cmd = env.cmd();
    cmd.args(["chaos", "--profile", "hostile", "--seed", "1337", "--workflows", "20", "--json"]);
    let out = output_within(&mut cmd, Duration::from_secs(240));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).expect("one JSON document");
    let (naive, cairn) = (&report["rows"][0], &report["rows"][1]);
    let kills = report["schedule"]["kills"].as_array().map_or(0, Vec::len);
    assert_eq!(kills, 6, "{}", report["schedule"]);
    // Cairn: every job done, no effect applied twice, every kill recovered without a person.
    assert_eq!(cairn["completion_pct"], 100.0, "{cairn}");
    assert_eq!(cairn["duplicated_effects"], 0, "{cairn}");
    assert_eq!(cairn["recoveries"], kills as u64, "{cairn}");
    assert_eq!(cairn["human_interventions"], 0, "{cairn}");
    // The naive runner, same schedule: the jobs without their primary model are lost, and jobs
    // started over after a kill write again.
    // (Exactly 15 and 9 on a machine where a 1 s request timeout does not pass by load alone.)
    assert!(naive["completed"].as_u64().is_some_and(|c| c <= 15), "{naive}");
    assert!(naive["duplicated_effects"].as_u64().is_some_and(|d| d >= 9), "{naive}");
    assert!(naive["wasted_work"].as_u64() > cairn["wasted_work"].as_u64(), "{naive} vs {cairn}");
    // A profile that does not exist is a usage error naming the ones there are.
    let bad = env.run(&["chaos", "--profile", "hostle"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("calm, flaky, hostile"));
}

/// On PostgreSQL the schedule's database restart is played too: every connection to the
/// workload's database is cut mid-workload, and the worker reconnects and finishes.
#[test]
fn on_postgresql_a_database_restart_mid_workload_loses_and_duplicates_nothing() {
    let Some(db) = common::pg::Database::create("chaos") else { return };
    let env = Env::new();
    let mut cmd = env.cmd();
    cmd.args(["--database", &db.url, "chaos", "--profile", "hostile", "--seed", "7", "--workflows", "8", "--json"]);
    let out = output_within(&mut cmd, Duration::from_secs(240));
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{stderr}");
    let cut: u64 = stderr
        .split("database restart: cut ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no restart in {stderr}"));
    assert!(cut >= 2, "the worker's and this process's connections were cut: {cut}");
    let report: Value = serde_json::from_slice(&out.stdout).expect("one JSON document");
    let cairn = &report["rows"][1];
    assert_eq!(
        (cairn["completion_pct"].as_f64(), cairn["duplicated_effects"].as_u64()),
        (Some(100.0), Some(0)),
        "{cairn}"
    );
    assert_eq!(cairn["human_interventions"], 0, "{cairn}");
}

/// `--db-restart-command` restarts the database for real at the schedule's instant (here a
/// command that leaves a mark: the shared test server is not restarted); it needs --database.
#[test]
fn a_database_restart_command_runs_at_the_scheduled_instant() {
    let env = Env::new();
    let bad = env.run(&["chaos", "--db-restart-command", "true"]);
    assert_eq!(bad.status.code(), Some(2), "{bad:?}");
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--database"));
    let Some(db) = common::pg::Database::create("chaos_cmd") else { return };
    let mark = env.dir.path().join("restarted");
    let command = format!("touch {}", mark.display());
    let mut cmd = env.cmd();
    cmd.args(["--database", &db.url, "chaos", "--profile", "hostile", "--seed", "7", "--workflows", "8"]);
    cmd.args(["--db-restart-command", &command, "--json"]);
    let out = output_within(&mut cmd, Duration::from_secs(240));
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("database restart: ran `touch"), "{stderr}");
    assert!(mark.exists());
    let report: Value = serde_json::from_slice(&out.stdout).expect("one JSON document");
    assert_eq!(report["rows"][1]["completion_pct"], 100.0, "{report}");
}
