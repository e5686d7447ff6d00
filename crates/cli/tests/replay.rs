//! `cairn replay`: journals re-derived with no effects, from the database or from exported files
//! (including histories written by earlier releases, kept as fixtures), divergences reported.

mod common;

use common::*;
use serde_json::Value;
use std::path::PathBuf;

fn fixtures() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures"))
}

/// Every journal format this project has released must still load and replay without divergence.
#[test]
fn recorded_journals_from_earlier_releases_still_replay() {
    let env = Env::new();
    let mut seen = 0;
    for entry in std::fs::read_dir(fixtures()).expect("fixtures") {
        let path = entry.expect("entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        seen += 1;
        let out = env.run(&["replay", "--file", path_str(&path), "--json"]);
        assert!(out.status.success(), "{} diverges: {}\n{}", path.display(), stderr(&out), stdout(&out));
        let doc: Value = serde_json::from_str(&stdout(&out)).expect("json");
        assert_eq!(doc["divergence"], Value::Null, "{}", path.display());
        let export: Value = serde_json::from_str(&std::fs::read_to_string(&path).expect("read")).expect("json");
        assert_eq!(doc["timeline"]["status"], export["run"]["status"], "{}", path.display());
    }
    assert!(seen >= 2, "expected journal fixtures in {}", fixtures().display());
}

#[test]
fn the_retry_fixture_tells_its_story() {
    let env = Env::new();
    let path = fixtures().join("journal-v1-retries-and-skip.json");
    let out = env.run(&["replay", "--file", path_str(&path)]);
    let text = stdout(&out);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(text.contains("replay ok"), "{text}");
    assert!(text.contains("#1 failed(transient)") && text.contains("#3 ok"), "{text}");
    assert!(text.contains("skipped: condition"), "{text}");
    assert!(text.contains("first failure: step b attempt 1"), "{text}");
}

#[test]
fn a_changed_definition_is_reported_with_the_first_differing_event() {
    let env = Env::new();
    let v1 = env.write("v1.yaml", "name: w\nsteps:\n  - {id: a, kind: echo, with: {x: 1}}\n  - {id: b, kind: fail, needs: [a], with: {class: transient}, retry: {max_attempts: 2, initial_delay: 5ms}}\n");
    let v2 = env.write("v2.yaml", "name: w\nversion: 2\nsteps:\n  - {id: a, kind: echo, with: {x: 1}}\n  - {id: b, kind: fail, needs: [a], with: {class: transient}, retry: {max_attempts: 4, initial_delay: 5ms}}\n");
    let out = env.run(&["run", path_str(&v1)]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let id = env.only_run().id;
    let same = env.run(&["replay", &id]);
    assert!(same.status.success(), "{}", stderr(&same));
    let changed = env.run(&["replay", &id, "--definition", path_str(&v2), "--json"]);
    assert_eq!(changed.status.code(), Some(1), "{}", stderr(&changed));
    let doc: Value = serde_json::from_str(&stdout(&changed)).expect("json");
    assert!(doc["divergence"]["seq"].as_u64().is_some(), "{doc:#}");
    assert!(doc["divergence"]["decided"].as_str().unwrap_or("").contains("retry_scheduled"), "{doc:#}");
    assert!(stderr(&changed).contains("diverges"), "{}", stderr(&changed));
}

#[test]
fn replay_refuses_bad_input_clearly() {
    let env = Env::new();
    let out = env.run(&["replay"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--file"), "{}", stderr(&out));
    let out = env.run(&["replay", "--file", "nope.json"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("cannot read"), "{}", stderr(&out));
    let jsonl = env.write("run.jsonl", "{\"seq\":1}\n{\"seq\":2}\n");
    let out = env.run(&["replay", "--file", path_str(&jsonl)]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("cairn export"), "{}", stderr(&out));
    let wf = env.write("w.yaml", "name: w\nsteps:\n  - {id: a, kind: echo}\n");
    assert!(env.run(&["run", path_str(&wf)]).status.success());
    let out = env.run(&["replay", "wf_01XXXXXXXXXXXXXXXXXXXXXXXX"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("no run with id"), "{}", stderr(&out));
    assert!(!stderr(&out).contains("panicked"));
}
