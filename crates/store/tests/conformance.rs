//! The storage conformance suite: every test here runs unchanged against SQLite and PostgreSQL
//! (`name::sqlite`, `name::postgres`), each on a fresh database. What one backend does, the other
//! must do too: the commit fence, group-commit isolation, leases and claims, the inbox,
//! idempotency, the registry, tokens, audit, listing, the feed and retention.
//!
//! PostgreSQL comes from `CAIRN_TEST_POSTGRES` (see `common/mod.rs`); unreachable, its cases are
//! skipped with a notice unless `CAIRN_REQUIRE_POSTGRES=1`.

mod common;

use cairn_core::RunId;
use cairn_core::payload::Payload;
use cairn_core::state::RunState;
use cairn_store::{
    Access, AuditRow, CallRow, EffectLog, Error, IdempotencyKey, Inbox, Journal as _, LogLine, Registry,
    RequestOutcome, RequestState, Retention, RunQuery, RunRow, StepRow, Store, Tasks as _, TokenRow, WorkerRow,
};
use common::journal::*;
use common::{Backend, conformance};
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

fn log(step: &str, at_ms: i64, message: &str) -> LogLine {
    LogLine { step_id: step.into(), attempt: 1, at_ms, level: "info".into(), message: message.into() }
}

/// What the store holds of one run, to show that a refused write left no trace.
async fn snapshot(store: &impl Store, id: &RunId) -> (RunRow, Vec<StepRow>, usize) {
    let row = store.get_run(id).await.unwrap_or_else(|e| panic!("get_run {id}: {e}"));
    let steps = store.steps(id).await.unwrap_or_else(|e| panic!("steps {id}: {e}"));
    (row, steps, event_count(store, id).await)
}

fn not_found<T: std::fmt::Debug>(what: &str, r: Result<T, Error>) {
    match r {
        Err(Error::NotFound(_)) => {}
        other => panic!("{what}: expected NotFound, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Writing and reading a run

conformance!(a_committed_run_loads_back_exactly, |store| async move {
    let mut j = Journal::new(run_id(1), TWO_STEPS);
    j.finish();
    let id = j.id();
    let expected_events = j.events.clone();
    let mut w = j.write(OWNER, LIVE);
    w.logs = vec![log("a", T0 + 3, "first"), log("b", T0 + 4, "other step"), log("a", T0 + 5, "second")];
    let logs = w.logs.clone();
    commit(&*store, w).await;

    let loaded = store.load_run(&id).await.expect("load_run");
    assert_eq!(loaded.events, expected_events, "events come back in order, unchanged");
    assert_eq!(loaded.run, j.expected_row(Some(OWNER), Some(LIVE)));
    assert_eq!(store.get_run(&id).await.expect("get_run"), loaded.run);
    assert_eq!(store.steps(&id).await.expect("steps"), StepRow::from_state(&j.state, None));
    assert_eq!(store.events(&id).await.expect("events"), expected_events);
    // Every payload the journal refers to came back: the fold reproduces the writer's state.
    let folded = RunState::fold(id.clone(), &loaded.events, loaded.payloads.clone()).expect("fold");
    assert_eq!(folded, j.state, "fold of the stored journal differs from the state that wrote it");
    let output = j.state.output.clone().expect("run output").hash;
    assert_eq!(store.payload(&output).await.expect("payload"), Some(json!({"a": {"done": "a"}, "b": {"done": "b"}})));
    assert_eq!(store.payload("0000").await.expect("payload"), None);

    assert_eq!(store.logs(&id, None).await.expect("logs"), logs, "logs in the order written");
    assert_eq!(store.logs(&id, Some("a")).await.expect("logs"), vec![logs[0].clone(), logs[2].clone()]);
    assert!(store.logs(&id, Some("zz")).await.expect("logs").is_empty());

    // Another process (or this one after a restart) sees the same.
    let again = store.reopen().await.expect("reopen");
    let reloaded = again.load_run(&id).await.expect("load after reopen");
    assert_eq!(reloaded.events, expected_events);
    assert_eq!(reloaded.run, loaded.run);
    assert_eq!(again.steps(&id).await.expect("steps"), StepRow::from_state(&j.state, None));
});

conformance!(unknown_runs_are_not_found, |store| async move {
    let id = run_id(404);
    not_found("get_run", store.get_run(&id).await);
    not_found("load_run", store.load_run(&id).await);
    not_found("steps", store.steps(&id).await);
    not_found("events", store.events(&id).await);
    not_found("events_after", store.events_after(&id, 0).await);
    not_found("logs", store.logs(&id, None).await);
    assert_eq!(store.idempotent_run("nope").await.expect("idempotent_run"), None);
});

conformance!(payloads_are_stored_once_per_hash_and_linked_to_every_run, |store| async move {
    // Two runs of the same definition: same definition payload, same inputs, same outputs.
    let mut x = Journal::new(run_id(1), TWO_STEPS);
    let mut y = Journal::new(run_id(2), TWO_STEPS);
    x.finish();
    y.finish();
    let hashes: BTreeSet<String> = x.payloads.iter().chain(&y.payloads).map(|p| p.reference.hash.clone()).collect();
    let def_hash = x.state.definition_ref.clone().expect("definition").hash;
    assert_eq!(Some(def_hash.clone()), y.state.definition_ref.clone().map(|r| r.hash));
    let sent = x.payloads.len() + y.payloads.len();
    assert!(sent > hashes.len(), "the test must send duplicates ({sent} payloads, {} hashes)", hashes.len());
    // Sent together, so on both backends they may share one group commit.
    let (rx, ry) = tokio::join!(store.commit(x.write(OWNER, LIVE)), store.commit(y.write(OWNER, LIVE)));
    rx.expect("commit x");
    ry.expect("commit y");

    assert_eq!(store.raw_count("SELECT count(*) FROM payloads").await as usize, hashes.len(), "one row per hash");
    let links = store.raw_count(&format!("SELECT count(*) FROM run_payloads WHERE hash='{def_hash}'")).await;
    assert_eq!(links, 2, "the shared definition is linked to both runs");

    for id in [run_id(1), run_id(2)] {
        let loaded = store.load_run(&id).await.expect("load");
        let got: BTreeSet<String> = loaded.payloads.iter().map(|(h, _)| h.clone()).collect();
        for e in &loaded.events {
            if let Some(r) = e.event.payload() {
                assert!(got.contains(&r.hash), "run {id} is missing payload {} of event {}", r.hash, e.seq);
            }
        }
        RunState::fold(id, &loaded.events, loaded.payloads).expect("folds with its payloads");
    }
});

// ---------------------------------------------------------------------------------------------
// The commit fence

conformance!(a_stale_expected_seq_conflicts_and_writes_nothing, |store| async move {
    let mut j = create(&*store, 1, OWNER, LIVE).await;
    let id = j.id();
    let mut stale = j.clone();
    j.start("a");
    commit(&*store, j.write(OWNER, LIVE)).await;
    let before = snapshot(&*store, &id).await;

    // A writer that did not see the commit above builds on the old position.
    stale.start("b");
    let w = stale.write(OWNER, LIVE + 1);
    let stale_seq = w.expected_seq;
    match store.commit(w).await {
        Err(Error::Conflict { run_id, expected }) => {
            assert_eq!(run_id, id.to_string());
            assert_eq!(expected, stale_seq);
        }
        other => panic!("expected Conflict, got {other:?}"),
    }
    assert_eq!(snapshot(&*store, &id).await, before, "run row (lease too), steps and events unchanged");

    // Recreating an existing run (expected_seq 0) is a conflict too, and changes nothing.
    let mut again = Journal::new(id.clone(), TWO_STEPS);
    match store.commit(again.write(OTHER, LIVE + 2)).await {
        Err(Error::Conflict { expected: 0, .. }) => {}
        other => panic!("expected Conflict at 0, got {other:?}"),
    }
    assert_eq!(snapshot(&*store, &id).await, before);
});

conformance!(a_different_owner_cannot_commit, |store| async move {
    let mut j = create(&*store, 1, OWNER, LIVE).await;
    let id = j.id();
    let before = snapshot(&*store, &id).await;
    j.start("a");
    let w = j.write(OTHER, LIVE);
    assert!(matches!(store.commit(w).await, Err(Error::Conflict { .. })));
    assert_eq!(snapshot(&*store, &id).await, before);
    assert_eq!(before.0.owner.as_deref(), Some(OWNER));
    assert!(Error::Conflict { run_id: String::new(), expected: 0 }.is_retryable());
});

conformance!(concurrent_commits_land_or_conflict_each_on_its_own, |store| async move {
    let mut good1 = create(&*store, 1, OWNER, LIVE).await;
    let mut wrong_owner = create(&*store, 2, OWNER, LIVE).await;
    let mut good2 = create(&*store, 3, OWNER, LIVE).await;
    let existing = create(&*store, 4, OWNER, LIVE).await;
    let mut moved_on = create(&*store, 5, OWNER, LIVE).await;
    let mut stale = moved_on.clone();
    moved_on.start("a");
    commit(&*store, moved_on.write(OWNER, LIVE)).await;
    let bad_ids = [wrong_owner.id(), existing.id(), moved_on.id()];
    let mut before = Vec::new();
    for id in &bad_ids {
        before.push(snapshot(&*store, id).await);
    }

    good1.start("a");
    good2.start("a");
    wrong_owner.start("a");
    stale.start("b");
    let mut fresh = Journal::new(run_id(6), TWO_STEPS);
    let mut recreate = Journal::new(existing.id(), TWO_STEPS);
    // All six are sent before any is awaited, so the writer folds them into one or a few groups;
    // however they are split, conflicting writes share transactions with good ones.
    let (r1, r2, r3, r4, r5, r6) = tokio::join!(
        store.commit(good1.write(OWNER, LIVE)),
        store.commit(wrong_owner.write(OTHER, LIVE)),
        store.commit(fresh.write(OWNER, LIVE)),
        store.commit(recreate.write(OWNER, LIVE)),
        store.commit(stale.write(OWNER, LIVE)),
        store.commit(good2.write(OWNER, LIVE)),
    );
    assert!(r1.is_ok(), "good write 1: {r1:?}");
    assert!(matches!(r2, Err(Error::Conflict { .. })), "wrong owner: {r2:?}");
    assert!(r3.is_ok(), "fresh run: {r3:?}");
    assert!(matches!(r4, Err(Error::Conflict { expected: 0, .. })), "re-create: {r4:?}");
    assert!(matches!(r5, Err(Error::Conflict { .. })), "stale position: {r5:?}");
    assert!(r6.is_ok(), "good write 2: {r6:?}");

    for j in [&good1, &good2, &fresh] {
        let id = j.id();
        assert_eq!(store.get_run(&id).await.expect("run"), j.expected_row(Some(OWNER), Some(LIVE)), "run {id}");
        assert_eq!(event_count(&*store, &id).await as u64, j.state.last_seq, "events of {id}");
        assert_eq!(store.steps(&id).await.expect("steps"), StepRow::from_state(&j.state, None), "steps of {id}");
    }
    for (id, b) in bad_ids.iter().zip(before) {
        assert_eq!(snapshot(&*store, id).await, b, "refused write left a trace on {id}");
    }
});

conformance!(a_write_that_fails_halfway_is_rolled_back_without_harming_the_group, |store| async move {
    let mut one = create(&*store, 1, OWNER, LIVE).await;
    let mut two = create(&*store, 2, OWNER, LIVE).await;
    let two_id = two.id();
    let before = snapshot(&*store, &two_id).await;
    let two_events = store.events(&two_id).await.expect("events");

    one.start("a");
    two.start("a");
    let good = one.write(OWNER, LIVE);
    // The fence passes (right position, right owner) and the run row is updated, then an
    // event collides with one already journaled: everything of this write must be undone.
    let mut broken = two.write(OWNER, LIVE + 5);
    let mut dup = broken.events[0].clone();
    dup.seq = 1;
    broken.events.push(dup);
    let mut three = Journal::new(run_id(3), TWO_STEPS);
    let fresh = three.write(OWNER, LIVE);
    let (r1, r2, r3) = tokio::join!(store.commit(good), store.commit(broken), store.commit(fresh));
    assert!(r2.is_err(), "a duplicate journal position must fail the write");
    assert!(!matches!(r2, Err(Error::Conflict { .. })), "not a fence conflict: {r2:?}");
    assert_eq!(snapshot(&*store, &two_id).await, before, "run row update rolled back");
    assert_eq!(store.events(&two_id).await.expect("events"), two_events);
    assert!(r1.is_ok(), "the good write sharing the group must land: {r1:?}");
    assert!(r3.is_ok(), "the create sharing the group must land: {r3:?}");
    assert_eq!(store.get_run(&one.id()).await.expect("run").last_seq, one.state.last_seq);
    assert_eq!(event_count(&*store, &three.id()).await as u64, three.state.last_seq);
});

// ---------------------------------------------------------------------------------------------
// Idempotency keys

fn key(key: &str, request: &str) -> Option<IdempotencyKey> {
    Some(IdempotencyKey { key: key.into(), request_hash: request.into() })
}

conformance!(an_idempotency_key_creates_at_most_one_run, |store| async move {
    let mut first = Journal::new(run_id(1), TWO_STEPS);
    let mut w = first.write(OWNER, LIVE);
    w.idempotency = key("k1", "h1");
    commit(&*store, w).await;
    assert_eq!(
        store.idempotent_run("k1").await.expect("idempotent_run"),
        Some((first.id().to_string(), "h1".to_string()))
    );

    // The same request again (another run id, as a retrying client's server would mint).
    for (n, request, same) in [(2, "h1", true), (3, "h2", false)] {
        let mut j = Journal::new(run_id(n), TWO_STEPS);
        let mut w = j.write(OWNER, LIVE);
        w.idempotency = key("k1", request);
        match store.commit(w).await {
            Err(Error::IdempotencyKey { key, run_id, same_request }) => {
                assert_eq!((key.as_str(), run_id.as_str(), same_request), ("k1", first.id().as_str(), same));
            }
            other => panic!("expected IdempotencyKey for request {request}, got {other:?}"),
        }
        not_found("the refused run", store.get_run(&j.id()).await);
    }

    // Two creates with one key at the same moment: exactly one wins.
    let mut a = Journal::new(run_id(4), TWO_STEPS);
    let mut b = Journal::new(run_id(5), TWO_STEPS);
    let (mut wa, mut wb) = (a.write(OWNER, LIVE), b.write(OWNER, LIVE));
    wa.idempotency = key("k2", "h");
    wb.idempotency = key("k2", "h");
    let (ra, rb) = tokio::join!(store.commit(wa), store.commit(wb));
    let winner = match (&ra, &rb) {
        (Ok(()), Err(Error::IdempotencyKey { run_id, same_request: true, .. })) if *run_id == a.id().to_string() => {
            a.id()
        }
        (Err(Error::IdempotencyKey { run_id, same_request: true, .. }), Ok(())) if *run_id == b.id().to_string() => {
            b.id()
        }
        other => panic!("expected one create and one IdempotencyKey naming it, got {other:?}"),
    };
    let loser = if winner == a.id() { b.id() } else { a.id() };
    assert_eq!(store.idempotent_run("k2").await.expect("idempotent_run").map(|(r, _)| r), Some(winner.to_string()));
    not_found("the losing run", store.get_run(&loser).await);
});

conformance!(a_conflicting_create_leaves_its_idempotency_key_unused, |store| async move {
    let existing = create(&*store, 1, OWNER, LIVE).await;
    // A create that collides with an existing run id is refused by the fence…
    let mut clash = Journal::new(existing.id(), TWO_STEPS);
    let mut w = clash.write(OWNER, LIVE);
    w.idempotency = key("k", "h");
    assert!(matches!(store.commit(w).await, Err(Error::Conflict { expected: 0, .. })));
    // …and must not have claimed the key on the way.
    assert_eq!(store.idempotent_run("k").await.expect("idempotent_run"), None, "the refused create kept its key");
    let mut next = Journal::new(run_id(2), TWO_STEPS);
    let mut w = next.write(OWNER, LIVE);
    w.idempotency = key("k", "h");
    store.commit(w).await.expect("the key is still free for a real create");
});

// ---------------------------------------------------------------------------------------------
// Leases: claim_runs, heartbeat, release

conformance!(claim_takes_expired_leases_and_leaves_live_ones, |store| async move {
    let now = T0 + 60_000;
    let expired = create(&*store, 1, OWNER, now - 1).await.id();
    let live = create(&*store, 2, OWNER, now + 10_000).await.id();
    let mut done = create(&*store, 3, OWNER, now - 1).await;
    done.finish();
    commit(&*store, done.write(OWNER, now - 1)).await;

    assert_eq!(claim(&*store, OTHER, now, None, &nobody_dead, 0).await, vec![expired.clone()]);
    let row = store.get_run(&expired).await.expect("run");
    assert_eq!(
        (row.owner.as_deref(), row.lease_expires_at_ms, row.wake_at_ms),
        (Some(OTHER), Some(now + 30_000), None)
    );
    assert_eq!(store.get_run(&live).await.expect("run").owner.as_deref(), Some(OWNER));
    let finished = store.get_run(&done.id()).await.expect("run");
    assert_eq!(finished.owner.as_deref(), Some(OWNER), "finished runs are never claimed");

    // Claimed with a fresh lease: a third process cannot take it.
    assert!(claim(&*store, "host-c:3:C", now + 1, None, &nobody_dead, 0).await.is_empty());
    // `only` does not take a live lease either.
    assert!(claim(&*store, "host-c:3:C", now, Some(&live), &nobody_dead, 0).await.is_empty());

    // The new owner can commit on top of what it claimed; the old one cannot.
    let mut j = Journal::new(expired.clone(), TWO_STEPS);
    j.committed_seq = j.state.last_seq;
    j.events.clear();
    j.payloads.clear();
    j.start("a");
    let mut old_owner = j.clone();
    assert!(matches!(store.commit(old_owner.write(OWNER, LIVE)).await, Err(Error::Conflict { .. })));
    commit(&*store, j.write(OTHER, LIVE)).await;
});

conformance!(claim_takes_a_live_lease_when_its_owner_is_dead, |store| async move {
    let now = T0 + 60_000;
    let mine = create(&*store, 1, OWNER, now + 10_000).await.id();
    let theirs = create(&*store, 2, "host-z:9:Z", now + 10_000).await.id();
    let dead = |o: &str| o == OWNER;
    assert_eq!(claim(&*store, OTHER, now, Some(&theirs), &dead, 0).await, Vec::<RunId>::new());
    assert_eq!(claim(&*store, OTHER, now, None, &dead, 0).await, vec![mine.clone()]);
    assert_eq!(store.get_run(&mine).await.expect("run").owner.as_deref(), Some(OTHER));
    assert_eq!(store.get_run(&theirs).await.expect("run").owner.as_deref(), Some("host-z:9:Z"));
});

conformance!(claim_respects_only_and_limit, |store| async move {
    let now = T0 + 60_000;
    let ids: Vec<RunId> = {
        let mut v = Vec::new();
        for n in 1..=4 {
            v.push(create(&*store, n, OWNER, now - 1).await.id());
        }
        v
    };
    assert_eq!(claim(&*store, OTHER, now, Some(&ids[2]), &nobody_dead, 0).await, vec![ids[2].clone()]);
    let two = claim(&*store, OTHER, now, None, &nobody_dead, 2).await;
    assert_eq!(two.len(), 2, "limit 2 takes two of the three expired runs: {two:?}");
    let rest = claim(&*store, OTHER, now, None, &nobody_dead, 2).await;
    assert_eq!(rest.len(), 1, "one expired run was left: {rest:?}");
    let all: BTreeSet<RunId> = two.into_iter().chain(rest).chain([ids[2].clone()]).collect();
    assert_eq!(all, ids.iter().cloned().collect::<BTreeSet<_>>());
    for id in &ids {
        assert_eq!(store.get_run(id).await.expect("run").owner.as_deref(), Some(OTHER));
    }
});

conformance!(claim_takes_unheld_runs_only_when_they_are_due, |store| async move {
    let now = T0 + 60_000;
    // Let go with work to do (due since creation).
    let due = create_released(&*store, 1).await.id();
    // Let go with a timer in the future, and let go with nothing to do (no wake time).
    let later = create(&*store, 2, OWNER, LIVE).await.id();
    assert!(store.release_run(OWNER, &later, Some(now + 1_000)).await.expect("release_run"));
    let idle = create(&*store, 3, OWNER, LIVE).await.id();
    assert!(store.release_run(OWNER, &idle, None).await.expect("release_run"));
    assert_eq!(store.get_run(&due).await.expect("run").owner, None);

    assert_eq!(claim(&*store, OTHER, now, None, &nobody_dead, 0).await, vec![due.clone()]);
    // The timer comes due.
    assert_eq!(claim(&*store, OTHER, now + 1_000, None, &nobody_dead, 0).await, vec![later.clone()]);
    // An idle run is taken only when asked for by id.
    assert!(claim(&*store, OTHER, now + 5_000, None, &nobody_dead, 0).await.is_empty());
    assert_eq!(claim(&*store, OTHER, now + 5_000, Some(&idle), &nobody_dead, 0).await, vec![idle.clone()]);
    for id in [&due, &later, &idle] {
        let row = store.get_run(id).await.expect("run");
        assert_eq!((row.owner.as_deref(), row.wake_at_ms), (Some(OTHER), None), "{id}");
    }
});

conformance!(heartbeat_extends_only_the_named_unfinished_runs_of_this_owner, |store| async move {
    let a = create(&*store, 1, OWNER, T0 + 1_000).await.id();
    let b = create(&*store, 2, OWNER, T0 + 1_000).await.id();
    let other = create(&*store, 3, OTHER, T0 + 1_000).await.id();
    let mut done = create(&*store, 4, OWNER, T0 + 1_000).await;
    done.finish();
    commit(&*store, done.write(OWNER, T0 + 1_000)).await;

    let all = [a.clone(), b.clone(), other.clone(), done.id()];
    assert_eq!(store.heartbeat(OWNER, &all, T0 + 50_000).await.expect("heartbeat"), 2);
    for id in [&a, &b] {
        assert_eq!(store.get_run(id).await.expect("run").lease_expires_at_ms, Some(T0 + 50_000));
    }
    assert_eq!(store.get_run(&other).await.expect("run").lease_expires_at_ms, Some(T0 + 1_000));
    assert_eq!(store.get_run(&done.id()).await.expect("run").lease_expires_at_ms, Some(T0 + 1_000));
    // At T0+2s only the run that missed the heartbeat has an expired lease.
    assert_eq!(claim(&*store, "host-c:3:C", T0 + 2_000, None, &nobody_dead, 0).await, vec![other]);
    assert_eq!(store.heartbeat("host-nobody:0:0", &all, T0 + 50_000).await.expect("heartbeat"), 0);
    // Only the runs named: one the owner holds but does not drive (not named) keeps its lease.
    assert_eq!(store.heartbeat(OWNER, std::slice::from_ref(&a), T0 + 60_000).await.expect("heartbeat"), 1);
    assert_eq!(store.get_run(&b).await.expect("run").lease_expires_at_ms, Some(T0 + 50_000));
    assert_eq!(store.heartbeat(OWNER, &[], T0 + 60_000).await.expect("heartbeat"), 0);
});

conformance!(release_lets_go_of_an_owners_runs_and_makes_them_due, |store| async move {
    let a = create(&*store, 1, OWNER, LIVE).await.id();
    let b = create(&*store, 2, OTHER, LIVE).await.id();
    let mut done = create(&*store, 3, OWNER, LIVE).await;
    done.finish();
    commit(&*store, done.write(OWNER, LIVE)).await;

    assert_eq!(store.release(OWNER, T0 + 5).await.expect("release"), 1, "only the unfinished run");
    let row = store.get_run(&a).await.expect("run");
    assert_eq!((row.owner, row.lease_expires_at_ms, row.wake_at_ms), (None, None, Some(T0 + 5)));
    assert_eq!(store.get_run(&b).await.expect("run").owner.as_deref(), Some(OTHER));
    assert_eq!(store.get_run(&done.id()).await.expect("run").owner.as_deref(), Some(OWNER));
    // Free although its old lease would still be live, from its wake time on.
    assert!(store.claim_ready("host-c:3:C", T0 + 4, T0 + 30_000, 10).await.expect("claim_ready").is_empty());
    assert_eq!(store.claim_ready("host-c:3:C", T0 + 5, T0 + 30_000, 10).await.expect("claim_ready"), vec![a]);
});

conformance!(release_run_lets_go_of_one_run_for_its_owner_only, |store| async move {
    let a = create(&*store, 1, OWNER, LIVE).await.id();
    let before = snapshot(&*store, &a).await;
    assert!(!store.release_run(OTHER, &a, Some(T0)).await.expect("release_run"), "not OTHER's run");
    assert_eq!(snapshot(&*store, &a).await, before);

    assert!(store.release_run(OWNER, &a, Some(T0 + 7)).await.expect("release_run"));
    let row = store.get_run(&a).await.expect("run");
    assert_eq!((row.owner, row.lease_expires_at_ms, row.wake_at_ms), (None, None, Some(T0 + 7)));
    assert!(!store.release_run(OWNER, &a, Some(T0)).await.expect("release_run"), "no longer held");
    assert!(!store.release_run(OWNER, &run_id(404), None).await.expect("release_run"), "unknown run");
});

conformance!(reopen_takes_an_unheld_failed_run_at_its_seq_once, |store| async move {
    let mut failed = create(&*store, 1, OWNER, LIVE).await;
    let failure = cairn_core::event::Failure::new(cairn_core::event::ErrorClass::Permanent, "boom");
    failed.feed(cairn_core::Event::RunFailed { failure, step: None });
    commit(&*store, failed.write_released(OWNER)).await;
    let seq = store.get_run(&failed.id()).await.expect("run").last_seq;
    let mut done = create(&*store, 2, OWNER, LIVE).await;
    done.finish();
    commit(&*store, done.write_released(OWNER)).await;
    let done_seq = store.get_run(&done.id()).await.expect("run").last_seq;

    assert!(!store.reopen_run(&failed.id(), OTHER, LIVE, seq - 1).await.expect("reopen"), "stale seq");
    assert!(!store.reopen_run(&done.id(), OTHER, LIVE, done_seq).await.expect("reopen"), "only FAILED runs");
    assert!(!store.reopen_run(&run_id(404), OTHER, LIVE, 1).await.expect("reopen"), "unknown run");
    assert!(store.reopen_run(&failed.id(), OTHER, LIVE, seq).await.expect("reopen"));
    let row = store.get_run(&failed.id()).await.expect("run");
    assert_eq!((row.owner.as_deref(), row.lease_expires_at_ms), (Some(OTHER), Some(LIVE)));
    assert!(!store.reopen_run(&failed.id(), OWNER, LIVE, seq).await.expect("reopen"), "already taken");
});

// ---------------------------------------------------------------------------------------------
// Work distribution: claim_ready

conformance!(claim_ready_takes_due_unheld_runs_only, |store| async move {
    let now = T0 + 60_000;
    let due = create_released(&*store, 1).await.id();
    let future = create(&*store, 2, OWNER, LIVE).await.id();
    assert!(store.release_run(OWNER, &future, Some(now + 1)).await.expect("release_run"));
    let idle = create(&*store, 3, OWNER, LIVE).await.id();
    assert!(store.release_run(OWNER, &idle, None).await.expect("release_run"));
    // Held: a request makes it due, but its owner is alive, so it stays where it is…
    let held = create(&*store, 4, OWNER, LIVE).await.id();
    assert!(store.push_inbox(&held, "{}".into(), now - 10).await.expect("push_inbox").is_some());
    // …unless the owner's lease has expired.
    let abandoned = create(&*store, 5, OWNER, now - 1).await.id();
    assert!(store.push_inbox(&abandoned, "{}".into(), now - 10).await.expect("push_inbox").is_some());
    let mut finished = Journal::new(run_id(6), TWO_STEPS);
    finished.finish();
    commit(&*store, finished.write_released(OWNER)).await;

    let mut got = store.claim_ready(OTHER, now, now + 30_000, 10).await.expect("claim_ready");
    got.sort();
    assert_eq!(got, vec![due.clone(), abandoned.clone()]);
    for id in [&due, &abandoned] {
        let row = store.get_run(id).await.expect("run");
        assert_eq!(
            (row.owner.as_deref(), row.lease_expires_at_ms, row.wake_at_ms),
            (Some(OTHER), Some(now + 30_000), None)
        );
    }
    assert_eq!(store.get_run(&held).await.expect("run").owner.as_deref(), Some(OWNER));
    assert!(store.claim_ready(OTHER, now, now + 30_000, 10).await.expect("claim_ready").is_empty(), "taken once");
    assert_eq!(store.claim_ready(OTHER, now + 1, now + 30_000, 10).await.expect("claim_ready"), vec![future]);
    assert_eq!(store.get_run(&idle).await.expect("run").owner, None, "a run without a wake time is never due");
});

conformance!(claim_ready_takes_the_earliest_due_first_up_to_the_limit, |store| async move {
    let now = T0 + 60_000;
    let mut wake = BTreeMap::new();
    for (n, at) in [(1, now - 1), (2, now - 3), (3, now - 2), (4, now - 5)] {
        let id = create(&*store, n, OWNER, LIVE).await.id();
        assert!(store.release_run(OWNER, &id, Some(at)).await.expect("release_run"));
        wake.insert(at, id);
    }
    let mut got = store.claim_ready(OTHER, now, now + 30_000, 2).await.expect("claim_ready");
    got.sort();
    let mut want: Vec<RunId> = wake.values().take(2).cloned().collect();
    want.sort();
    assert_eq!(got, want, "the two runs due longest");
    assert_eq!(store.claim_ready(OTHER, now, now + 30_000, 5).await.expect("claim_ready").len(), 2);
});

conformance!(concurrent_claimers_never_take_the_same_run, |store| async move {
    let now = T0 + 60_000;
    let mut all = BTreeSet::new();
    for n in 1..=24 {
        all.insert(create_released(&*store, n).await.id());
    }
    // Two workers race, each taking a few at a time until nothing is left.
    let worker = |owner: &'static str| {
        let store = store.shared();
        tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let got = store.claim_ready(owner, now, now + 30_000, 3).await.expect("claim_ready");
                if got.is_empty() {
                    break mine;
                }
                assert!(got.len() <= 3, "{owner} got {} runs with limit 3", got.len());
                mine.extend(got);
            }
        })
    };
    let (a, b) = (worker("w-a:1:A"), worker("w-b:2:B"));
    let (a, b) = (a.await.expect("worker a"), b.await.expect("worker b"));
    let (sa, sb): (BTreeSet<RunId>, BTreeSet<RunId>) = (a.iter().cloned().collect(), b.iter().cloned().collect());
    assert_eq!(sa.len(), a.len(), "worker a got a run twice: {a:?}");
    assert_eq!(sb.len(), b.len(), "worker b got a run twice: {b:?}");
    let both: Vec<_> = sa.intersection(&sb).collect();
    assert!(both.is_empty(), "claimed by both workers: {both:?}");
    assert_eq!(sa.union(&sb).cloned().collect::<BTreeSet<_>>(), all, "every due run was taken");
    for (owner, ids) in [("w-a:1:A", &sa), ("w-b:2:B", &sb)] {
        for id in ids {
            assert_eq!(store.get_run(id).await.expect("run").owner.as_deref(), Some(owner), "{id}");
        }
    }
});

// ---------------------------------------------------------------------------------------------
// The inbox

fn answer(id: i64, state: RequestState, code: Option<&str>, seq: Option<u64>) -> RequestOutcome {
    RequestOutcome {
        id,
        state,
        code: code.map(str::to_string),
        message: code.map(|c| format!("because {c}")),
        journal_seq: seq,
        decided_at_ms: Some(T0 + 1),
    }
}

conformance!(the_inbox_keeps_requests_in_acceptance_order_and_wakes_their_runs, |store| async move {
    let now = T0 + 60_000;
    let held = create(&*store, 1, OWNER, LIVE).await.id();
    let unheld = create_released(&*store, 2).await;
    let unheld_wake = store.get_run(&unheld.id()).await.expect("run").wake_at_ms;
    assert!(unheld_wake.is_some_and(|w| w < now), "a released run with ready steps is due: {unheld_wake:?}");
    let mut done = create(&*store, 3, OWNER, LIVE).await;
    done.finish();
    commit(&*store, done.write(OWNER, LIVE)).await;

    let x = store.push_inbox(&held, "x".into(), now).await.expect("push_inbox").expect("accepted");
    assert_eq!(store.get_run(&held).await.expect("run").wake_at_ms, Some(now), "due now");
    let y = store.push_inbox(&held, "y".into(), now + 5).await.expect("push_inbox").expect("accepted");
    assert!(x < y, "ids grow in acceptance order: {x} {y}");
    assert_eq!(store.get_run(&held).await.expect("run").wake_at_ms, Some(now), "the earliest wake time stays");
    let z = store.push_inbox(&unheld.id(), "z".into(), now).await.expect("push_inbox").expect("accepted");
    assert_eq!(store.get_run(&unheld.id()).await.expect("run").wake_at_ms, unheld_wake, "already due earlier");
    assert_eq!(store.push_inbox(&done.id(), "late".into(), now).await.expect("push_inbox"), None, "finished");
    assert_eq!(store.push_inbox(&run_id(404), "lost".into(), now).await.expect("push_inbox"), None, "unknown");

    let pending = store.pending_inbox(&held).await.expect("pending_inbox");
    let bodies: Vec<(i64, &str)> = pending.iter().map(|r| (r.id, r.body.as_str())).collect();
    assert_eq!(bodies, vec![(x, "x"), (y, "y")], "one run's requests, oldest first");
    assert_eq!(store.runs_with_inbox(OWNER).await.expect("runs_with_inbox"), vec![held.clone()]);
    assert!(store.runs_with_inbox(OTHER).await.expect("runs_with_inbox").is_empty());
    let outcome = store.inbox_outcome(x).await.expect("outcome").expect("known");
    assert_eq!((outcome.state, outcome.journal_seq), (RequestState::Pending, None));
    assert_eq!(store.inbox_outcome(z + 1000).await.expect("outcome"), None, "unknown request");
    assert!(store.pending_inbox(&run_id(404)).await.expect("pending_inbox").is_empty());
});

conformance!(requests_are_answered_once_with_the_commit_that_applies_them, |store| async move {
    let now = T0 + 60_000;
    let mut run = create(&*store, 1, OWNER, LIVE).await;
    let x = store.push_inbox(&run.id(), "x".into(), now).await.expect("push").expect("accepted");
    let y = store.push_inbox(&run.id(), "y".into(), now).await.expect("push").expect("accepted");
    // A write that lost its fence answers nothing.
    run.start("a");
    let mut stale = run.clone().write(OWNER, LIVE);
    stale.expected_seq -= 1;
    stale.requests = vec![answer(x, RequestState::Applied, None, Some(9))];
    assert!(matches!(store.commit(stale).await, Err(Error::Conflict { .. })));
    assert_eq!(store.inbox_outcome(x).await.expect("outcome").expect("known").state, RequestState::Pending);
    // The commit that applies x and refuses y records both answers with its events.
    let seq = run.state.last_seq;
    let mut w = run.write(OWNER, LIVE);
    w.requests = vec![
        answer(x, RequestState::Applied, None, Some(seq)),
        answer(y, RequestState::Refused, Some("already_paused"), None),
    ];
    commit(&*store, w).await;
    let ox = store.inbox_outcome(x).await.expect("outcome").expect("known");
    assert_eq!((ox.state, ox.journal_seq, ox.decided_at_ms), (RequestState::Applied, Some(seq), Some(T0 + 1)));
    let oy = store.inbox_outcome(y).await.expect("outcome").expect("known");
    assert_eq!(
        (oy.state, oy.code.as_deref(), oy.message.as_deref()),
        (RequestState::Refused, Some("already_paused"), Some("because already_paused"))
    );
    assert!(store.pending_inbox(&run.id()).await.expect("pending").is_empty());
    assert!(store.runs_with_inbox(OWNER).await.expect("runs_with_inbox").is_empty());
    // Answering x again fails the whole write: its events are not written either.
    let before = event_count(&*store, &run.id()).await;
    run.succeed("a", json!({"ok": true}));
    let mut again = run.clone().write(OWNER, LIVE);
    again.requests = vec![answer(x, RequestState::Refused, Some("twice"), None)];
    assert!(matches!(store.commit(again).await, Err(Error::Conflict { .. })), "a request is answered once");
    assert_eq!(event_count(&*store, &run.id()).await, before, "nothing of that write landed");
    // The same write sent together with other runs' writes (one group, as a rule): theirs land,
    // nothing of it does.
    let mut others = Vec::new();
    for n in 2..7 {
        let mut other = create(&*store, n, OWNER, LIVE).await;
        other.start("a");
        others.push(other);
    }
    let mut again = run.clone().write(OWNER, LIVE);
    again.requests = vec![answer(x, RequestState::Refused, Some("twice"), None)];
    let theirs = futures_util::future::join_all(others.iter().map(|o| store.commit(o.clone().write(OWNER, LIVE))));
    let (mine, theirs) = tokio::join!(store.commit(again), theirs);
    assert!(matches!(mine, Err(Error::Conflict { .. })), "a request is answered once: {mine:?}");
    assert!(theirs.iter().all(Result::is_ok), "the other writes of the group land: {theirs:?}");
    assert_eq!(event_count(&*store, &run.id()).await, before, "nothing of that write landed");
    for other in &others {
        assert_eq!(store.get_run(&other.id()).await.expect("run").last_seq, other.state.last_seq);
    }
    // A requester answers its own request when the run finished first, unless someone did — and
    // never while the run is unfinished (its driver answers then).
    let z = store.push_inbox(&run.id(), "z".into(), now).await.expect("push").expect("accepted");
    let refuse = |id: i64, why: &str| RequestOutcome {
        message: Some(why.to_string()),
        ..answer(id, RequestState::Refused, Some("run_finished"), None)
    };
    assert!(!store.answer_inbox(refuse(z, "too early")).await.expect("answer"), "the run is unfinished");
    run.start("b");
    run.succeed("b", json!({"ok": true}));
    commit(&*store, run.write(OWNER, LIVE)).await;
    assert_eq!(store.get_run(&run.id()).await.expect("run").status, "COMPLETED");
    assert!(store.answer_inbox(refuse(z, "it finished")).await.expect("answer"));
    assert!(!store.answer_inbox(refuse(z, "again")).await.expect("answer"), "answered once");
    assert!(!store.answer_inbox(refuse(x, "late")).await.expect("answer"), "x was applied");
    let oz = store.inbox_outcome(z).await.expect("outcome").expect("known");
    assert_eq!((oz.state, oz.message.as_deref()), (RequestState::Refused, Some("it finished")));
});

conformance!(a_last_write_is_refused_while_a_request_it_does_not_answer_waits, |store| async move {
    let now = T0 + 60_000;
    let mut run = create(&*store, 1, OWNER, LIVE).await;
    let x = store.push_inbox(&run.id(), "x".into(), now).await.expect("push").expect("accepted");
    let y = store.push_inbox(&run.id(), "y".into(), now).await.expect("push").expect("accepted");
    let before = snapshot(&*store, &run.id()).await;
    run.finish();
    // Held (the run stays this owner's) or let go with the write, as a driver's last write is.
    let finished = |answers: &[i64], release: bool| {
        let mut w = run.clone().write(OWNER, LIVE);
        if release {
            w.release = true;
            w.run.owner = None;
        }
        w.answers_every_request = true;
        w.requests = answers.iter().map(|id| answer(*id, RequestState::Refused, Some("run_finished"), None)).collect();
        w
    };
    // Answering x but not y: refused, with nothing written — alone, and among other runs' writes
    // (whose writes land).
    match store.commit(finished(&[x], false)).await {
        Err(Error::RequestsWaiting { run_id }) => assert_eq!(run_id, run.id().to_string()),
        other => panic!("expected RequestsWaiting, got {other:?}"),
    }
    let mut others = Vec::new();
    for n in 2..6 {
        let mut other = create(&*store, n, OWNER, LIVE).await;
        other.start("a");
        others.push(other);
    }
    let theirs = futures_util::future::join_all(others.iter().map(|o| store.commit(o.clone().write(OWNER, LIVE))));
    let (mine, theirs) = tokio::join!(store.commit(finished(&[], true)), theirs);
    assert!(matches!(mine, Err(Error::RequestsWaiting { .. })), "requests wait: {mine:?}");
    assert!(theirs.iter().all(Result::is_ok), "the other writes of the group land: {theirs:?}");
    for other in &others {
        assert_eq!(store.get_run(&other.id()).await.expect("run").last_seq, other.state.last_seq);
    }
    assert_eq!(snapshot(&*store, &run.id()).await, before, "a refused last write left a trace");
    assert_eq!(store.pending_inbox(&run.id()).await.expect("pending").len(), 2, "both still wait");
    // Answering both, it lands; without the flag, the store does not look.
    commit(&*store, finished(&[x, y], true)).await;
    assert_eq!(store.get_run(&run.id()).await.expect("run").status, "COMPLETED");
    assert!(store.pending_inbox(&run.id()).await.expect("pending").is_empty());
    let mut later = create(&*store, 9, OWNER, LIVE).await;
    store.push_inbox(&later.id(), "z".into(), now).await.expect("push").expect("accepted");
    later.finish();
    commit(&*store, later.write(OWNER, LIVE)).await;
});

conformance!(concurrent_requests_get_distinct_ids_and_one_order, |store| async move {
    let id = create(&*store, 1, OWNER, LIVE).await.id();
    let senders: Vec<_> = (0..4)
        .map(|t| {
            let (store, id) = (store.shared(), id.clone());
            tokio::spawn(async move {
                let mut mine = Vec::new();
                for n in 0..10 {
                    let body = format!("{t}-{n}");
                    mine.push(store.push_inbox(&id, body, T0).await.expect("push").expect("accepted"));
                }
                mine
            })
        })
        .collect();
    let mut accepted = Vec::new();
    for s in senders {
        let mine = s.await.expect("sender");
        assert!(mine.windows(2).all(|w| w[0] < w[1]), "one sender's requests in its order: {mine:?}");
        accepted.extend(mine);
    }
    let pending: Vec<i64> = store.pending_inbox(&id).await.expect("pending").iter().map(|r| r.id).collect();
    accepted.sort();
    assert_eq!(pending, accepted, "every request once, in id order");
});

conformance!(workers_are_listed_while_they_are_seen, |store| async move {
    let row = |owner: &str, seen: i64| WorkerRow {
        owner: owner.into(),
        role: "worker".into(),
        started_at_ms: T0,
        seen_at_ms: seen,
    };
    store.worker_seen(row(OWNER, T0 + 10)).await.expect("seen");
    store.worker_seen(row(OTHER, T0 + 5)).await.expect("seen");
    store.worker_seen(row(OWNER, T0 + 20)).await.expect("seen again");
    let owners = |rows: Vec<WorkerRow>| rows.into_iter().map(|w| (w.owner, w.seen_at_ms)).collect::<Vec<_>>();
    assert_eq!(
        owners(store.workers(T0).await.expect("workers")),
        vec![(OWNER.to_string(), T0 + 20), (OTHER.to_string(), T0 + 5)]
    );
    assert_eq!(owners(store.workers(T0 + 6).await.expect("workers")), vec![(OWNER.to_string(), T0 + 20)]);
    store.worker_gone(OWNER).await.expect("gone");
    assert_eq!(owners(store.workers(T0).await.expect("workers")), vec![(OTHER.to_string(), T0 + 5)]);
});

conformance!(a_run_let_go_while_requests_wait_is_due_at_once, |store| async move {
    let now = T0 + 60_000;
    let a = create(&*store, 1, OWNER, LIVE).await.id();
    assert!(store.push_inbox(&a, "cancel".into(), now).await.expect("push_inbox").is_some());
    assert!(store.release_run(OWNER, &a, Some(now + 99_000)).await.expect("release_run"));
    assert_eq!(store.get_run(&a).await.expect("run").wake_at_ms, Some(now), "release_run");

    // The same through a releasing commit.
    let mut b = create(&*store, 2, OWNER, LIVE).await;
    assert!(store.push_inbox(&b.id(), "pause".into(), now + 1).await.expect("push_inbox").is_some());
    b.start("a");
    let mut w = b.write_released(OWNER);
    w.run.wake_at_ms = None;
    commit(&*store, w).await;
    let row = store.get_run(&b.id()).await.expect("run");
    assert_eq!((row.owner, row.wake_at_ms), (None, Some(now + 1)), "releasing commit");
    let mut got = store.claim_ready(OTHER, now + 1, now + 30_000, 10).await.expect("claim_ready");
    got.sort();
    assert_eq!(got, vec![a, b.id()]);
});

// ---------------------------------------------------------------------------------------------
// Workflow registry, tokens, audit

const V1: &str = "name: greet\nversion: 1\nsteps:\n  - {id: a, kind: echo, with: {x: 1}}\n";
const V1_CHANGED: &str = "name: greet\nversion: 1\nsteps:\n  - {id: a, kind: echo, with: {x: 2}}\n";
const V2: &str = "name: greet\nversion: 2\nsteps:\n  - {id: a, kind: echo, with: {x: 3}}\n";
const OTHER_WF: &str = "name: alpha\nsteps:\n  - {id: a, kind: echo}\n";

fn definition(yaml: &str) -> (Payload, serde_json::Value) {
    let def = cairn_core::validate::parse_definition(yaml, "wf.yaml", &common::journal::kinds())
        .unwrap_or_else(|p| panic!("invalid: {p:?}"));
    let value = serde_json::to_value(&def).expect("definition to json");
    (Payload::of(&value), value)
}

conformance!(the_workflow_registry_keeps_versions_apart, |store| async move {
    let (v1, v1_value) = definition(V1);
    let (v2, v2_value) = definition(V2);
    assert!(store.put_workflow("greet", 1, v1.clone(), T0).await.expect("put v1"));
    assert!(!store.put_workflow("greet", 1, v1.clone(), T0 + 1).await.expect("put v1 again"), "same: no-op");
    match store.put_workflow("greet", 1, definition(V1_CHANGED).0, T0 + 2).await {
        Err(Error::VersionExists { name, version }) => assert_eq!((name.as_str(), version), ("greet", 1)),
        other => panic!("expected VersionExists, got {other:?}"),
    }
    assert!(store.put_workflow("greet", 2, v2.clone(), T0 + 3).await.expect("put v2"));
    assert!(store.put_workflow("alpha", 1, definition(OTHER_WF).0, T0 + 4).await.expect("put alpha"));

    let (row, value) = store.workflow("greet", None).await.expect("newest");
    assert_eq!((row.version, row.definition_hash.as_str(), row.created_at_ms), (2, v2.reference.hash.as_str(), T0 + 3));
    assert_eq!(value, v2_value);
    let (row, value) = store.workflow("greet", Some(1)).await.expect("pinned");
    assert_eq!((row.version, row.definition_hash.as_str(), row.created_at_ms), (1, v1.reference.hash.as_str(), T0));
    assert_eq!(value, v1_value, "the first definition stays, not the refused one");
    assert!(matches!(store.workflow("greet", Some(3)).await, Err(Error::WorkflowNotFound(_))));
    assert!(matches!(store.workflow("nope", None).await, Err(Error::WorkflowNotFound(_))));

    let listed: Vec<(String, u32)> =
        store.workflows().await.expect("workflows").into_iter().map(|w| (w.name, w.version)).collect();
    assert_eq!(listed, vec![("alpha".into(), 1), ("greet".into(), 2), ("greet".into(), 1)]);
});

fn token(id: &str, name: &str, hash: &str, at: i64) -> TokenRow {
    TokenRow {
        id: id.into(),
        name: name.into(),
        role: "admin".into(),
        hash: hash.into(),
        created_at_ms: at,
        revoked_at_ms: None,
    }
}

conformance!(tokens_are_found_by_hash_until_revoked, |store| async move {
    let (t1, t2, t3) =
        (token("tok_1", "ci", "h1", T0), token("tok_2", "ops", "h2", T0 + 1), token("tok_3", "bot", "h3", T0 + 2));
    for t in [&t2, &t1, &t3] {
        store.create_token(t.clone()).await.expect("create_token");
    }
    assert!(store.create_token(token("tok_4", "dup", "h1", T0 + 3)).await.is_err(), "a hash is unique");
    assert_eq!(store.token_by_hash("h1").await.expect("by hash"), Some(t1.clone()));
    assert_eq!(store.token_by_hash("nope").await.expect("by hash"), None);
    assert_eq!(store.tokens().await.expect("tokens"), vec![t1.clone(), t2.clone(), t3.clone()], "oldest first");

    let revoked = store.revoke_token("tok_1", T0 + 10).await.expect("revoke by id");
    assert_eq!(revoked, TokenRow { revoked_at_ms: Some(T0 + 10), ..t1.clone() }, "the revoked token comes back");
    assert_eq!(store.revoke_token("ops", T0 + 11).await.expect("revoke by name").id, "tok_2");
    token_not_found("revoke again", store.revoke_token("tok_1", T0 + 12).await);
    token_not_found("revoke unknown", store.revoke_token("nope", T0 + 12).await);
    assert_eq!(store.token_by_hash("h1").await.expect("by hash"), None);
    assert_eq!(store.token_by_hash("h2").await.expect("by hash"), None);
    assert_eq!(store.token_by_hash("h3").await.expect("by hash"), Some(t3.clone()));
    let revoked: Vec<Option<i64>> = store.tokens().await.expect("tokens").iter().map(|t| t.revoked_at_ms).collect();
    assert_eq!(revoked, vec![Some(T0 + 10), Some(T0 + 11), None]);
});

fn token_not_found<T: std::fmt::Debug>(what: &str, r: Result<T, Error>) {
    match r {
        Err(Error::TokenNotFound(_)) => {}
        other => panic!("{what}: expected TokenNotFound, got {other:?}"),
    }
}

conformance!(a_name_held_by_a_live_token_is_refused_until_that_token_is_revoked, |store| async move {
    store.create_token(token("tok_a", "ci", "ha", T0)).await.expect("create ci");
    match store.create_token(token("tok_b", "ci", "hb", T0 + 1)).await {
        Err(Error::TokenNameTaken { name, id }) => assert_eq!((name.as_str(), id.as_str()), ("ci", "tok_a")),
        other => panic!("a second live 'ci': expected TokenNameTaken, got {other:?}"),
    }
    assert_eq!(store.token_by_hash("hb").await.expect("by hash"), None, "the refused token was not stored");
    assert_eq!(store.tokens().await.expect("tokens").len(), 1);

    store.revoke_token("ci", T0 + 2).await.expect("revoke ci");
    store.create_token(token("tok_b", "ci", "hb", T0 + 3)).await.expect("the name is free once revoked");
    assert_eq!(store.token_by_hash("hb").await.expect("by hash").map(|t| t.id), Some("tok_b".into()));
});

conformance!(concurrent_creates_of_one_name_store_exactly_one_token, |store| async move {
    // Two handles on one database (two processes), each racing several creates of one name.
    let other = Arc::new(store.reopen().await.expect("reopen"));
    let mut tasks = Vec::new();
    for i in 0..8 {
        let s = if i % 2 == 0 { store.shared() } else { other.clone() };
        tasks.push(tokio::spawn(async move {
            s.create_token(token(&format!("tok_{i}"), "race", &format!("h{i}"), T0 + i)).await
        }));
    }
    let mut created = 0;
    for t in tasks {
        match t.await.expect("task") {
            Ok(()) => created += 1,
            Err(Error::TokenNameTaken { .. }) => {}
            Err(e) => panic!("a racing create failed otherwise: {e:?}"),
        }
    }
    assert_eq!(created, 1, "exactly one create of 'race' wins");
    let live: Vec<TokenRow> = store.tokens().await.expect("tokens").into_iter().filter(|t| t.name == "race").collect();
    assert_eq!(live.len(), 1, "{live:?}");
});

conformance!(revoking_a_name_two_live_tokens_share_is_refused_with_their_ids, |store| async move {
    // A database from before names were unique: two live tokens named "ci".
    store.create_token(token("tok_old1", "ci", "h1", T0)).await.expect("create");
    store
        .raw_execute(&format!(
            "INSERT INTO tokens (id, name, role, hash, created_at) VALUES ('tok_old2', 'ci', 'viewer', 'h2', {})",
            T0 + 1
        ))
        .await;
    match store.revoke_token("ci", T0 + 2).await {
        Err(Error::AmbiguousTokenName { name, ids }) => {
            assert_eq!(name, "ci");
            assert_eq!(ids, vec!["tok_old1".to_string(), "tok_old2".to_string()], "oldest first");
        }
        other => panic!("expected AmbiguousTokenName, got {other:?}"),
    }
    let message = store.revoke_token("ci", T0 + 2).await.expect_err("still ambiguous").to_string();
    assert!(message.contains("tok_old1") && message.contains("tok_old2"), "the message lists the ids: {message}");
    assert!(store.token_by_hash("h1").await.expect("by hash").is_some(), "neither was revoked");
    assert!(store.token_by_hash("h2").await.expect("by hash").is_some(), "neither was revoked");
    // Both keep authenticating, and a new token cannot take the name either.
    assert!(matches!(store.create_token(token("tok_c", "ci", "h3", T0 + 3)).await, Err(Error::TokenNameTaken { .. })));

    assert_eq!(store.revoke_token("tok_old2", T0 + 4).await.expect("revoke by id").name, "ci");
    assert_eq!(store.token_by_hash("h2").await.expect("by hash"), None);
    assert_eq!(store.revoke_token("ci", T0 + 5).await.expect("the name is unique again").id, "tok_old1");
    assert_eq!(store.token_by_hash("h1").await.expect("by hash"), None);
    token_not_found("nothing live is left", store.revoke_token("ci", T0 + 6).await);
});

conformance!(the_audit_log_lists_newest_first, |store| async move {
    let rows: Vec<AuditRow> = (0..5)
        .map(|i| AuditRow {
            at_ms: T0 + i,
            actor: format!("actor-{i}"),
            method: "POST".into(),
            path: format!("/v1/runs/{i}"),
            status: 200 + i as u16,
            run_id: (i % 2 == 0).then(|| run_id(i as u128).to_string()),
        })
        .collect();
    for r in &rows {
        store.audit(r.clone()).await.expect("audit");
    }
    let newest: Vec<AuditRow> = rows.iter().rev().cloned().collect();
    assert_eq!(store.audit_log(100).await.expect("audit_log"), newest);
    assert_eq!(store.audit_log(2).await.expect("audit_log"), newest[..2].to_vec());
    // Kept as long as finished runs: gc deletes rows past the retention (a dry run none).
    store.gc(T0 + 1_003, 1_000, true).await.expect("gc dry run");
    assert_eq!(store.audit_log(100).await.expect("audit_log").len(), 5);
    store.gc(T0 + 1_003, 1_000, false).await.expect("gc");
    assert_eq!(store.audit_log(100).await.expect("audit_log"), newest[..2].to_vec());
});

// ---------------------------------------------------------------------------------------------
// Listing and reading the journal

const SOLO: &str = "name: solo\nsteps:\n  - {id: a, kind: echo}\n";

conformance!(list_runs_filters_and_pages_newest_first, |store| async move {
    // Runs 1..=6 a second apart; 7 and 8 created in the same millisecond (ordered by id).
    let mut created = Vec::new();
    for n in 1..=8u128 {
        let t0 = T0 + 1_000 * (n.min(7) as i64);
        let yaml = if n % 3 == 0 { SOLO } else { TWO_STEPS };
        let mut j = Journal::at(run_id(n), yaml, t0);
        if n % 2 == 0 {
            j.finish();
        }
        commit(&*store, j.write(OWNER, LIVE)).await;
        created.push(j);
    }
    let ids = |rows: Vec<RunRow>| rows.into_iter().map(|r| r.id).collect::<Vec<_>>();
    let order = |mut js: Vec<&Journal>| {
        js.sort_by_key(|j| std::cmp::Reverse((j.state.created_at_ms, j.id())));
        js.into_iter().map(|j| j.id().to_string()).collect::<Vec<_>>()
    };
    let q = |f: &dyn Fn(&mut RunQuery)| {
        let mut q = RunQuery::default();
        f(&mut q);
        q
    };

    let all = ids(store.list_runs(RunQuery::default()).await.expect("list"));
    assert_eq!(all, order(created.iter().collect()), "newest first, ties by id");
    assert_eq!(all[0], run_id(8).to_string(), "8 and 7 share a timestamp; the larger id first");

    let completed = ids(store.list_runs(q(&|q| q.status = Some("COMPLETED".into()))).await.expect("list"));
    assert_eq!(completed, order(created.iter().filter(|j| j.state.status.as_str() == "COMPLETED").collect()));
    assert_eq!(completed.len(), 4);
    let solo = ids(store.list_runs(q(&|q| q.workflow = Some("solo".into()))).await.expect("list"));
    assert_eq!(solo, order(created.iter().filter(|j| j.state.workflow == "solo").collect()));
    let (from, to) = (created[1].state.created_at_ms, created[4].state.created_at_ms);
    let window = ids(store
        .list_runs(q(&|q| {
            q.created_after_ms = Some(from);
            q.created_before_ms = Some(to);
        }))
        .await
        .expect("list"));
    assert_eq!(window, order(created[1..4].iter().collect()), "from inclusive, to exclusive");
    let none = store.list_runs(q(&|q| q.workflow = Some("nope".into()))).await.expect("list");
    assert!(none.is_empty());

    // Keyset pagination: pages of 3 continue after the last row and add up to the whole list.
    let mut pages = Vec::new();
    let mut after = None;
    loop {
        let page =
            store.list_runs(RunQuery { limit: 3, after: after.clone(), ..RunQuery::default() }).await.expect("page");
        assert!(page.len() <= 3);
        let Some(last) = page.last() else { break };
        after = Some((last.created_at_ms, last.id.clone()));
        pages.extend(ids(page));
    }
    assert_eq!(pages, all, "pages concatenate to the full list, without gaps or repeats");
    let filtered = store
        .list_runs(RunQuery { limit: 1, status: Some("RUNNING".into()), after: None, ..RunQuery::default() })
        .await
        .expect("list");
    assert!(filtered.len() <= 1);
});

conformance!(events_after_and_the_feed_follow_commit_order, |store| async move {
    assert_eq!(store.last_gid().await.expect("last_gid"), 0, "empty store");
    assert!(store.feed(0, 100).await.expect("feed").is_empty());

    let mut one = Journal::new(run_id(1), TWO_STEPS);
    let mut two = Journal::new(run_id(2), TWO_STEPS);
    // Interleaved commits: the feed must show them in commit order, not grouped by run.
    let mut expected: Vec<(String, u64)> = Vec::new();
    let mut record = |j: &Journal, w: &cairn_store::RunWrite| {
        expected.extend(w.events.iter().map(|e| (j.id().to_string(), e.seq)));
    };
    let w = one.write(OWNER, LIVE);
    record(&one, &w);
    commit(&*store, w).await;
    let w = two.write(OWNER, LIVE);
    record(&two, &w);
    commit(&*store, w).await;
    one.start("a");
    let w = one.write(OWNER, LIVE);
    record(&one, &w);
    commit(&*store, w).await;
    two.start("a");
    two.succeed("a", json!(1));
    let w = two.write(OWNER, LIVE);
    record(&two, &w);
    commit(&*store, w).await;

    let feed = store.feed(0, 1_000).await.expect("feed");
    let got: Vec<(String, u64)> = feed.iter().map(|f| (f.run_id.clone(), f.event.seq)).collect();
    assert_eq!(got, expected, "the feed is in commit order");
    assert!(feed.windows(2).all(|w| w[0].gid < w[1].gid), "gids increase");
    assert_eq!(store.last_gid().await.expect("last_gid"), feed.last().expect("events").gid);
    assert!(store.feed(feed.last().expect("events").gid, 100).await.expect("feed").is_empty());
    for j in [&one, &two] {
        let events = store.events(&j.id()).await.expect("events");
        let from_feed: Vec<_> =
            feed.iter().filter(|f| f.run_id == j.id().to_string()).map(|f| f.event.clone()).collect();
        assert_eq!(from_feed, events, "the feed carries the same envelopes as the run's journal");
    }

    // Paging through the feed gives the same.
    let mut paged = Vec::new();
    let mut after = 0;
    loop {
        let page = store.feed(after, 3).await.expect("feed");
        assert!(page.len() <= 3);
        let Some(last) = page.last() else { break };
        after = last.gid;
        paged.extend(page.into_iter().map(|f| f.gid));
    }
    assert_eq!(paged, feed.iter().map(|f| f.gid).collect::<Vec<_>>());

    let events = store.events(&one.id()).await.expect("events");
    assert_eq!(store.events_after(&one.id(), 2).await.expect("events_after"), events[2..].to_vec());
    assert!(store.events_after(&one.id(), one.state.last_seq).await.expect("events_after").is_empty());
    assert_eq!(store.events_after(&one.id(), 0).await.expect("events_after"), events);
});

// ---------------------------------------------------------------------------------------------
// Retention

const KEEP_10M: &str = "name: short\nretention: 10m\nsteps:\n  - {id: a, kind: echo, with: {k: short}}\n";
const KEEP_1D: &str = "name: long\nretention: 1d\nsteps:\n  - {id: a, kind: echo, with: {k: long}}\n";

conformance!(gc_collects_finished_runs_past_retention_and_their_orphan_payloads, |store| async move {
    let now = T0 + 10_000_000;
    let default_retention: u64 = 3_600_000; // 1h: the default keeps runs finished after now - 1h.
    let finish = |n: u128, yaml: &str, t0: i64| {
        let mut j = Journal::at(run_id(n), yaml, t0);
        // Step a's output is shared by every run; b's (and so the run's output) is its own.
        j.finish_with(|s| if s == "a" { json!({"shared": true}) } else { json!({"only": n as u64}) });
        j
    };
    // Default retention: old (collected) and recent (kept).
    let mut old = finish(1, TWO_STEPS, T0);
    let mut recent = finish(2, TWO_STEPS, now - 1_000_000);
    // Their own retention: 10 minutes after a recent finish (collected although the default would
    // keep it), a day after an old finish (kept although the default would collect it).
    let mut short = finish(3, KEEP_10M, now - 1_000_000);
    let mut long = finish(4, KEEP_1D, T0);
    // Unfinished and long abandoned: never collected.
    let mut open = Journal::at(run_id(5), TWO_STEPS, T0);
    let mut w = old.write(OWNER, LIVE);
    w.idempotency = key("old-key", "h");
    w.logs = vec![log("a", T0 + 3, "gone with the run")];
    commit(&*store, w).await;
    for j in [&mut recent, &mut short, &mut long, &mut open] {
        commit(&*store, j.write(OWNER, T0 + 1)).await;
    }
    assert_eq!(
        store.get_run(&short.id()).await.expect("run").retain_until_ms,
        short.state.finished_at_ms.map(|f| f + 600_000)
    );
    // The short run's definition is registered: the registry keeps it.
    assert!(store.put_workflow("short", 1, short.definition_payload(), T0).await.expect("put_workflow"));

    let gone = [&old, &short];
    let kept = [&recent, &long, &open];
    let still_used: BTreeSet<String> = kept
        .iter()
        .flat_map(|j| j.written_hashes.iter().cloned())
        .chain([short.definition_payload().reference.hash])
        .collect();
    let orphans: BTreeSet<String> =
        gone.iter().flat_map(|j| j.written_hashes.iter().cloned()).filter(|h| !still_used.contains(h)).collect();
    for j in gone {
        assert!(j.written_hashes.iter().any(|h| orphans.contains(h)), "the test needs orphans of run {}", j.id());
    }
    let expected = cairn_store::GcReport {
        runs: 2,
        events: gone.iter().map(|j| j.state.last_seq).sum(),
        payloads: orphans.len() as u64,
    };
    let payload_rows = store.raw_count("SELECT count(*) FROM payloads").await;

    // A dry run counts exactly what the real one deletes, and deletes nothing.
    assert_eq!(store.gc(now, default_retention, true).await.expect("dry gc"), expected, "dry run");
    for j in gone.iter().chain(&kept) {
        store.get_run(&j.id()).await.unwrap_or_else(|e| panic!("dry run deleted {}: {e}", j.id()));
    }
    assert_eq!(store.raw_count("SELECT count(*) FROM payloads").await, payload_rows, "dry run deleted payloads");

    assert_eq!(store.gc(now, default_retention, false).await.expect("gc"), expected, "real run");
    for j in gone {
        not_found("collected run", store.get_run(&j.id()).await);
        not_found("collected run's events", store.events(&j.id()).await);
    }
    for h in &orphans {
        assert_eq!(store.payload(h).await.expect("payload"), None, "orphan payload {h} survived");
    }
    for h in &still_used {
        assert!(store.payload(h).await.expect("payload").is_some(), "payload {h} still in use was deleted");
    }
    assert_eq!(store.raw_count("SELECT count(*) FROM payloads").await, payload_rows - orphans.len() as i64);
    assert_eq!(store.idempotent_run("old-key").await.expect("idempotent_run"), None, "its idempotency key went too");
    for j in kept {
        let loaded = store.load_run(&j.id()).await.expect("kept run loads");
        assert_eq!(loaded.events.len() as u64, j.state.last_seq);
        RunState::fold(j.id(), &loaded.events, loaded.payloads).expect("kept run still folds with its payloads");
    }
    let (_, def) = store.workflow("short", None).await.expect("registered workflow survives");
    assert_eq!(Payload::of(&def).reference.hash, short.definition_payload().reference.hash);
    assert_eq!(store.gc(now, default_retention, false).await.expect("gc again"), cairn_store::GcReport::default());
});

// ---------------------------------------------------------------------------------------------
// Health

conformance!(ping_answers_until_the_schema_is_newer_than_this_binary, |store| async move {
    store.ping().await.expect("a fresh store pings");
    let describe = store.describe();
    match store.backend() {
        Backend::Sqlite => assert!(describe.starts_with("sqlite "), "{describe}"),
        Backend::Postgres => assert!(describe.starts_with("postgres "), "{describe}"),
    }
    // A newer cairn migrated the database behind our back.
    let known = match store.backend() {
        Backend::Sqlite => {
            let v = store.raw_count("PRAGMA user_version").await;
            store.raw_execute(&format!("PRAGMA user_version = {}", v + 1)).await;
            v
        }
        Backend::Postgres => {
            let v = store.raw_count("SELECT value::BIGINT FROM cairn_meta WHERE key='schema_version'").await;
            store.raw_execute(&format!("UPDATE cairn_meta SET value='{}' WHERE key='schema_version'", v + 1)).await;
            v
        }
    };
    assert!(known >= 1, "a fresh store records its migrations, got {known}");
    match store.ping().await {
        Err(Error::NewerSchema { found, known: k, .. }) => assert_eq!((found, k), (known + 1, known)),
        other => panic!("ping: expected NewerSchema, got {other:?}"),
    }
    match store.reopen().await {
        Err(Error::NewerSchema { found, known: k, .. }) => assert_eq!((found, k), (known + 1, known)),
        Err(other) => panic!("reopen: expected NewerSchema, got {other:?}"),
        Ok(_) => panic!("reopen: expected NewerSchema, got a store"),
    }
});

conformance!(the_clock_offset_is_the_databases_view_of_this_hosts_clock, |store| async move {
    // The database runs on this host (SQLite: it is this host), so the offset is small.
    let offset = store.clock_offset_ms().await.expect("clock_offset_ms");
    assert!(offset.abs() < 5_000, "{offset} ms between this host and a database on this host");
});

/// Whether `wake` fires within a deadline once `action` is done (the waiter is registered
/// before, so a wake-up during the action counts).
async fn woken_by(wake: &tokio::sync::Notify, action: impl std::future::Future<Output = ()>) -> bool {
    let notified = wake.notified();
    tokio::pin!(notified);
    notified.as_mut().enable();
    action.await;
    tokio::time::timeout(std::time::Duration::from_secs(10), notified).await.is_ok()
}

conformance!(work_handed_out_by_another_process_wakes_idle_workers, |store| async move {
    // SQLite has no signal (one file, one host: workers poll); where there is one, work made
    // ready by another process must fire it. (PostgreSQL's channel is database-wide, so a wake
    // from a test running alongside could also satisfy this: it can pass spuriously, not fail.)
    let Some(wake) = store.wake_signal() else { return };
    let other = store.reopen().await.expect("second store");
    let held = create(&other, 1, OTHER, LIVE).await.id();
    let mut fresh = Journal::new(run_id(2), TWO_STEPS);
    let w = fresh.write_released(OTHER);
    // The first wake-up also shows our listener is in place.
    assert!(woken_by(&wake, commit(&other, w)).await, "a run created for any worker");
    assert!(
        woken_by(&wake, async { assert!(other.push_inbox(&held, "{}".into(), T0).await.expect("push").is_some()) })
            .await,
        "a request queued"
    );
    assert!(
        woken_by(&wake, async { assert!(other.release_run(OTHER, &held, Some(T0)).await.expect("release_run")) }).await,
        "a run handed back"
    );
    create(&other, 3, OTHER, LIVE).await;
    assert!(
        woken_by(&wake, async { assert_eq!(other.release(OTHER, T0).await.expect("release"), 1) }).await,
        "an owner shutting down"
    );
});

conformance!(the_effect_log_keeps_the_first_result_and_goes_with_its_run, |store| async move {
    let mut j = create(&*store, 1, OWNER, LIVE).await;
    let id = j.id();
    let key = format!("{id}/pay/1");
    assert_eq!(store.effect(&key).await.expect("effect"), None);
    store.record_effect(&id, &key, Payload::of(&json!({"charged": 5})), T0).await.expect("record");
    // A second result for the same call (a retried attempt that ran anyway) does not replace it.
    store.record_effect(&id, &key, Payload::of(&json!({"charged": 6})), T0 + 1).await.expect("record again");
    assert_eq!(store.effect(&key).await.expect("effect"), Some(json!({"charged": 5})));
    // Collected with its run.
    j.finish();
    commit(&*store, j.write(OWNER, LIVE)).await;
    let report = store.gc(T0 + 10 * 86_400_000, 1, false).await.expect("gc");
    assert_eq!(report.runs, 1);
    assert_eq!(store.effect(&key).await.expect("effect"), None);
});

conformance!(calls_inside_an_attempt_keep_their_first_success_and_are_replaced_after_a_failure, |store| async move {
    let mut j = create(&*store, 1, OWNER, LIVE).await;
    let id = j.id();
    let call = |n: u32, hash: &str, outcome: &str, result: Option<&Payload>, attempt: u32| CallRow {
        step_id: "fetch".into(),
        n,
        kind: "http".into(),
        request_hash: hash.into(),
        outcome: outcome.into(),
        result_hash: result.map(|p| p.reference.hash.clone()),
        error: (outcome == "failed").then(|| "transient: 503".to_string()),
        attempt,
        duration_ms: 7,
        at_ms: T0 + i64::from(n),
        cost: None,
        reserved: None,
    };
    assert!(store.calls(&id, None).await.expect("calls").is_empty());
    let first = Payload::of(&json!({"page": 1}));
    let written = store.record_call(&id, call(1, "h1", "ok", Some(&first), 1), Some(first.clone())).await;
    assert!(written.expect("record 1"));
    assert!(store.record_call(&id, call(2, "h2", "failed", None, 1), None).await.expect("record 2"));
    // The next attempt: call 1 again (a success is kept as it was, and the caller is told),
    // call 2 succeeds this time.
    let other = Payload::of(&json!({"page": "other"}));
    let kept = store.record_call(&id, call(1, "hX", "ok", Some(&other), 2), Some(other.clone())).await;
    assert!(!kept.expect("again"), "the first success stays");
    let second = Payload::of(&json!({"page": 2}));
    assert!(
        store.record_call(&id, call(2, "h2", "ok", Some(&second), 2), Some(second.clone())).await.expect("retry 2")
    );
    // Another step's calls are its own.
    let mut elsewhere = call(1, "z", "ok", Some(&first), 1);
    elsewhere.step_id = "zeta".into();
    store.record_call(&id, elsewhere, Some(first.clone())).await.expect("other step");

    let got = store.calls(&id, Some("fetch")).await.expect("calls");
    assert_eq!(got, vec![call(1, "h1", "ok", Some(&first), 1), call(2, "h2", "ok", Some(&second), 2)]);
    assert_eq!(store.calls(&id, None).await.expect("all").len(), 3);
    assert_eq!(store.payload(&second.reference.hash).await.expect("payload"), Some(json!({"page": 2})));
    // Collected with its run.
    j.finish();
    commit(&*store, j.write(OWNER, LIVE)).await;
    store.gc(T0 + 10 * 86_400_000, 1, false).await.expect("gc");
    assert!(store.calls(&id, None).await.expect("calls").is_empty());
});

conformance!(budgets_hold_reservations_until_settled_and_spend_is_summed_per_run_and_group, |store| async move {
    use cairn_store::{CallCost, CostBy, Limit, Reservation};
    let j = create(&*store, 1, OWNER, LIVE).await;
    let id = j.id();
    let model_call = |step: &str, n: u32, outcome: &str, usd: f64, tokens: u64| CallRow {
        step_id: step.into(),
        n,
        kind: "llm".into(),
        request_hash: format!("h{n}"),
        outcome: outcome.into(),
        result_hash: None,
        error: None,
        attempt: 1,
        duration_ms: 3,
        at_ms: T0 + i64::from(n),
        cost: (outcome != "reserved").then(|| CallCost {
            model: "small".into(),
            tokens_in: tokens / 2,
            tokens_out: tokens - tokens / 2,
            cost_usd: usd,
        }),
        reserved: Some(Reservation { usd: 0.4, tokens: 400 }),
    };
    let run_limit = Limit { step: None, max_cost_usd: Some(1.0), max_tokens: None };
    let step_limit = Limit { step: Some("a".into()), max_cost_usd: None, max_tokens: Some(500) };
    let limits = vec![run_limit.clone(), step_limit];
    // Step a reserves 0.4 / 400 tokens; settling at 0.1 / 100 frees the rest.
    assert_eq!(
        store.reserve_call(&id, model_call("a", 1, "reserved", 0.0, 0), limits.clone()).await.expect("r1"),
        None
    );
    // A second reservation of step a would hold 800 tokens of its 500.
    let over = store.reserve_call(&id, model_call("a", 2, "reserved", 0.0, 0), limits.clone()).await.expect("r2");
    let over = over.expect("step a's tokens are held");
    assert_eq!((over.limit.step.as_deref(), over.spent_tokens, over.asked.tokens), (Some("a"), 400, 400));
    // The same position reserved again (an attempt after a crash) replaces its own reservation.
    assert_eq!(
        store.reserve_call(&id, model_call("a", 1, "reserved", 0.0, 0), limits.clone()).await.expect("again"),
        None
    );
    assert!(store.spend(std::slice::from_ref(&id)).await.expect("spend").is_empty(), "nothing settled yet");
    store.record_call(&id, model_call("a", 1, "ok", 0.1, 100), None).await.expect("settle 1");
    assert_eq!(
        store.reserve_call(&id, model_call("a", 2, "reserved", 0.0, 0), limits.clone()).await.expect("r2"),
        None
    );
    store.record_call(&id, model_call("a", 2, "ok", 0.2, 100), None).await.expect("settle 2");
    // Step b is under the run's limit only: 0.3 spent, 0.4 asked, fits; another 0.4 does not.
    let run_only = vec![run_limit];
    assert_eq!(
        store.reserve_call(&id, model_call("b", 1, "reserved", 0.0, 0), run_only.clone()).await.expect("b1"),
        None
    );
    let over = store.reserve_call(&id, model_call("b", 2, "reserved", 0.0, 0), run_only).await.expect("b2");
    let over = over.expect("the run's limit");
    assert_eq!(over.limit.step, None);
    assert!((over.spent_usd - 0.7).abs() < 1e-9, "{over:?}");
    store.record_call(&id, model_call("b", 1, "failed", 0.0, 0), None).await.expect("settle b1");

    let spend = store.spend(std::slice::from_ref(&id)).await.expect("spend");
    let run = spend.get(id.as_str()).expect("the run spent");
    assert_eq!((run.calls, run.tokens_in + run.tokens_out), (3, 200));
    assert!((run.cost_usd - 0.3).abs() < 1e-9, "{run:?}");
    let by_model = store.cost_report(T0, CostBy::Model).await.expect("report");
    assert_eq!(by_model.len(), 1);
    assert_eq!((by_model[0].key.as_str(), by_model[0].runs, by_model[0].spend.calls), ("small", 1, 3));
    let by_day = store.cost_report(T0, CostBy::Day).await.expect("by day");
    assert_eq!(by_day.len(), 1);
    assert_eq!(by_day[0].key.len(), 10, "YYYY-MM-DD: {by_day:?}");
    let by_workflow = store.cost_report(T0, CostBy::Workflow).await.expect("by workflow");
    assert_eq!(by_workflow.len(), 1);
    assert!(store.cost_report(T0 + 1_000_000, CostBy::Model).await.expect("later").is_empty());
});

conformance!(the_response_cache_answers_until_an_entry_expires_and_gc_drops_expired_ones, |store| async move {
    assert_eq!(store.cached_answer("k1", T0).await.expect("miss"), None);
    store.cache_answer("k1", &json!({"text": "Paris"}), T0, T0 + 1_000).await.expect("keep");
    assert_eq!(store.cached_answer("k1", T0 + 999).await.expect("hit"), Some(json!({"text": "Paris"})));
    assert_eq!(store.cached_answer("k1", T0 + 1_000).await.expect("expired"), None);
    // Kept again: the newer answer and expiry replace the old.
    store.cache_answer("k1", &json!({"text": "Lyon"}), T0 + 2_000, T0 + 5_000).await.expect("again");
    assert_eq!(store.cached_answer("k1", T0 + 3_000).await.expect("hit"), Some(json!({"text": "Lyon"})));
    store.gc(T0 + 6_000, 86_400_000, false).await.expect("gc");
    store.cache_answer("k2", &json!(1), T0 + 6_000, T0 + 9_000).await.expect("k2");
    assert_eq!(store.cached_answer("k1", T0 + 1).await.expect("gone"), None, "gc dropped the expired entry");
    assert_eq!(store.cached_answer("k2", T0 + 7_000).await.expect("k2"), Some(json!(1)));
});

// ---------------------------------------------------------------------------------------------
// What is in flight, for the stuck signals

conformance!(active_work_counts_unfinished_runs_expired_leases_and_ready_or_running_steps, |store| async move {
    // Run 1: created, both its (independent) steps READY, held by a live owner.
    let one = create(&*store, 1, OWNER, LIVE).await;
    // Run 2: its step `a` RUNNING (attempt started), held by an owner whose lease expired.
    let mut two = Journal::new(run_id(2), TWO_STEPS);
    two.start("a");
    commit(&*store, two.write(OTHER, T0 + 10)).await;
    // Run 3: finished — counted nowhere.
    let mut three = Journal::new(run_id(3), TWO_STEPS);
    three.finish();
    commit(&*store, three.write(OWNER, LIVE)).await;

    let work = store.active_work(T0 + 1_000, 100).await.expect("active_work");
    assert_eq!(work.runs_by_status, vec![("EXECUTING".to_string(), 2)], "{work:?}");
    assert_eq!(work.expired_leases, 1, "run 2's owner is past its lease: {work:?}");
    let mut steps: Vec<(String, String, String)> =
        work.steps.iter().map(|s| (s.run_id.clone(), s.step_id.clone(), s.status.clone())).collect();
    steps.sort();
    assert_eq!(
        steps,
        vec![
            (one.id().to_string(), "a".to_string(), "READY".to_string()),
            (one.id().to_string(), "b".to_string(), "READY".to_string()),
            (two.id().to_string(), "a".to_string(), "RUNNING".to_string()),
            (two.id().to_string(), "b".to_string(), "READY".to_string()),
        ]
    );
    let running = work.steps.iter().find(|s| s.status == "RUNNING").expect("running");
    let started = two.state.step_state("a").and_then(|s| s.first_started_at_ms);
    assert_eq!(running.attempt_started_at_ms, started, "the attempt's start comes from its event");
    assert_eq!(running.definition_hash, two.state.definition_ref.clone().map(|r| r.hash));
    let ready = work.steps.iter().find(|s| s.status == "READY" && s.run_id == one.id().as_str()).expect("ready");
    assert_eq!(ready.attempt_started_at_ms, None);
    assert_eq!(ready.run_updated_at_ms, one.state.updated_at_ms);
    // The limit bounds the steps read.
    assert_eq!(store.active_work(T0 + 1_000, 1).await.expect("active_work").steps.len(), 1);
});

// ---------------------------------------------------------------------------------------------
// Tasks for external workers

fn new_task(n: usize, queue: &str, kind: &str) -> cairn_store::NewTask {
    cairn_store::NewTask {
        token: format!("tk_{n:04}"),
        run_id: run_id(n as u128).to_string(),
        step: "work".into(),
        attempt: 1,
        queue: queue.into(),
        kind: kind.into(),
        input: json!({"n": n}),
        deadline_ms: Some(T0 + 60_000),
        created_at_ms: T0 + n as i64,
    }
}

async fn claim_some(store: &impl Store, worker: &str, queues: &[&str], kinds: &[&str], limit: usize) -> Vec<String> {
    let queues: Vec<String> = queues.iter().map(|q| q.to_string()).collect();
    let kinds: Vec<String> = kinds.iter().map(|k| k.to_string()).collect();
    let claim = cairn_store::TaskClaim {
        worker,
        queues: &queues,
        kinds: &kinds,
        limit,
        now_ms: T0 + 1_000,
        lease_until_ms: T0 + 31_000,
    };
    store.claim_tasks(claim).await.expect("claim_tasks").into_iter().map(|t| t.token).collect()
}

conformance!(each_task_is_claimed_by_one_worker_however_many_ask_at_once, |store| async move {
    for n in 0..60 {
        store.enqueue_task(new_task(n, "py", "summarize")).await.expect("enqueue");
    }
    // Queuing a token again changes nothing.
    store.enqueue_task(new_task(0, "py", "other")).await.expect("enqueue again");
    let workers: Vec<_> = (0..8)
        .map(|w| {
            let store = store.shared();
            tokio::spawn(async move {
                let mut mine = Vec::new();
                loop {
                    let got = claim_some(&*store, &format!("worker-{w}"), &["py"], &[], 4).await;
                    if got.is_empty() {
                        return mine;
                    }
                    mine.extend(got);
                }
            })
        })
        .collect();
    let mut all = Vec::new();
    for w in workers {
        all.extend(w.await.expect("worker"));
    }
    let count = all.len();
    all.sort();
    all.dedup();
    assert_eq!((count, all.len()), (60, 60), "every task claimed exactly once");
    let first = store.task("tk_0000").await.expect("task").expect("exists");
    assert_eq!(first.kind, "summarize", "the second enqueue did not replace the first");
    assert_eq!(first.state, cairn_store::TaskState::Claimed);
    assert_eq!(first.input, json!({"n": 0}));
    assert_eq!(first.lease_expires_at_ms, Some(T0 + 31_000));
});

conformance!(claims_take_their_queues_and_kinds_oldest_first, |store| async move {
    store.enqueue_task(new_task(3, "ts", "render")).await.expect("enqueue");
    store.enqueue_task(new_task(2, "py", "summarize")).await.expect("enqueue");
    store.enqueue_task(new_task(1, "py", "translate")).await.expect("enqueue");
    assert_eq!(claim_some(&*store, "a", &["nope"], &[], 10).await, Vec::<String>::new());
    assert_eq!(claim_some(&*store, "a", &["py"], &["summarize"], 10).await, vec!["tk_0002"]);
    assert_eq!(claim_some(&*store, "a", &["py", "ts"], &[], 10).await, vec!["tk_0001", "tk_0003"]);
    assert!(claim_some(&*store, "a", &[], &[], 10).await.is_empty(), "no queue, no task");
});

conformance!(a_task_is_settled_once_by_the_worker_holding_it_while_its_lease_holds, |store| async move {
    use cairn_store::{TaskAnswer, TaskOutcome, TaskState};
    for n in 1..=3 {
        store.enqueue_task(new_task(n, "py", "summarize")).await.expect("enqueue");
    }
    assert_eq!(claim_some(&*store, "a", &["py"], &[], 3).await.len(), 3);
    let done = TaskOutcome::Done(json!({"summary": "short"}));
    let now = T0 + 2_000;
    // Another worker's result and heartbeat change nothing.
    assert_eq!(
        store.finish_task("tk_0001", "b", done.clone(), now).await.expect("finish"),
        TaskAnswer::Stale(TaskState::Claimed)
    );
    assert_eq!(
        store.heartbeat_task("tk_0001", "b", T0 + 90_000).await.expect("hb"),
        TaskAnswer::Stale(TaskState::Claimed)
    );
    assert_eq!(store.heartbeat_task("tk_0001", "a", T0 + 60_000).await.expect("hb"), TaskAnswer::Ok);
    assert_eq!(store.task("tk_0001").await.expect("task").expect("row").lease_expires_at_ms, Some(T0 + 60_000));
    assert_eq!(store.finish_task("tk_0001", "a", done.clone(), now).await.expect("finish"), TaskAnswer::Ok);
    let row = store.task("tk_0001").await.expect("task").expect("row");
    assert_eq!((row.state, row.output), (TaskState::Done, Some(json!({"summary": "short"}))));
    assert_eq!(
        store.finish_task("tk_0001", "a", done.clone(), now).await.expect("again"),
        TaskAnswer::Stale(TaskState::Done)
    );
    assert_eq!(store.finish_task("tk_none", "a", done.clone(), now).await.expect("unknown"), TaskAnswer::Unknown);

    // A failure keeps its class, message and retry hint.
    let failed =
        TaskOutcome::Failed { class: "transient".into(), message: "upstream down".into(), retry_after_ms: Some(1500) };
    assert_eq!(store.finish_task("tk_0002", "a", failed, now).await.expect("fail"), TaskAnswer::Ok);
    let row = store.task("tk_0002").await.expect("task").expect("row");
    assert_eq!(row.state, TaskState::Failed);
    assert_eq!((row.error_class.as_deref(), row.retry_after_ms), (Some("transient"), Some(1500)));

    // Past its lease, a task is no longer the worker's to settle; once marked lost, nobody's.
    let late = T0 + 31_001;
    assert_eq!(
        store.finish_task("tk_0003", "a", done.clone(), late).await.expect("late"),
        TaskAnswer::Stale(TaskState::Claimed)
    );
    assert!(!store.expire_task("tk_0003", T0 + 30_000).await.expect("not yet"), "the lease still holds then");
    assert!(store.expire_task("tk_0003", late).await.expect("expire"));
    assert_eq!(
        store.finish_task("tk_0003", "a", done.clone(), late).await.expect("lost"),
        TaskAnswer::Stale(TaskState::Lost)
    );
    assert_eq!(
        store.heartbeat_task("tk_0003", "a", late + 30_000).await.expect("hb"),
        TaskAnswer::Stale(TaskState::Lost)
    );

    // A cancelled task is neither claimed nor settled.
    store.enqueue_task(new_task(4, "py", "summarize")).await.expect("enqueue");
    assert!(store.cancel_task("tk_0004").await.expect("cancel"));
    assert!(!store.cancel_task("tk_0001").await.expect("cancel a settled one"), "a settled task stays settled");
    assert!(claim_some(&*store, "a", &["py"], &[], 10).await.is_empty());
    assert_eq!(store.heartbeat_task("tk_0004", "a", late).await.expect("hb"), TaskAnswer::Stale(TaskState::Cancelled));
});

conformance!(a_newer_attempts_task_supersedes_the_older_ones_of_its_step, |store| async move {
    use cairn_store::{TaskAnswer, TaskOutcome, TaskState};
    let first = new_task(1, "py", "summarize");
    store.enqueue_task(first.clone()).await.expect("enqueue");
    assert_eq!(claim_some(&*store, "a", &["py"], &[], 1).await, vec!["tk_0001"]);
    // Another step of the same run, and another run, are left alone.
    let other_step = cairn_store::NewTask { token: "tk_other_step".into(), step: "other".into(), ..first.clone() };
    store.enqueue_task(other_step).await.expect("enqueue");
    let other_run = new_task(2, "py", "summarize");
    store.enqueue_task(other_run).await.expect("enqueue");
    // The engine tried the step again (the first worker went silent, or the engine restarted).
    let retry = cairn_store::NewTask { token: "tk_retry".into(), attempt: 2, ..first.clone() };
    store.enqueue_task(retry).await.expect("enqueue retry");
    let state = |t: &'static str| {
        let store = store.shared();
        async move { store.task(t).await.expect("task").expect("row").state }
    };
    assert_eq!(state("tk_0001").await, TaskState::Cancelled);
    assert_eq!(state("tk_other_step").await, TaskState::Ready);
    assert_eq!(state("tk_0002").await, TaskState::Ready);
    assert_eq!(state("tk_retry").await, TaskState::Ready);
    let latest = store.latest_task(&first.run_id, "work").await.expect("latest").expect("a task");
    assert_eq!((latest.token.as_str(), latest.attempt), ("tk_retry", 2));
    assert!(store.latest_task(&first.run_id, "nope").await.expect("latest").is_none());
    let done = TaskOutcome::Done(json!(1));
    assert_eq!(
        store.finish_task("tk_0001", "a", done, T0 + 2_000).await.expect("finish"),
        TaskAnswer::Stale(TaskState::Cancelled),
        "the superseded attempt's result changes nothing"
    );
});

conformance!(tasks_of_finished_runs_are_not_handed_out_and_late_results_are_refused, |store| async move {
    use cairn_store::{TaskAnswer, TaskOutcome, TaskState};
    let now = T0 + 1_000;
    let mut done = create(&*store, 1, OWNER, now + 30_000).await;
    let live = create(&*store, 2, OWNER, now + 30_000).await;
    let task = |run: &RunId, token: &str| cairn_store::NewTask {
        token: token.into(),
        run_id: run.to_string(),
        ..new_task(0, "py", "summarize")
    };
    // A task queued by an engine that died before it could retire it; its run ended since.
    store.enqueue_task(task(&done.id(), "tk_orphan")).await.expect("enqueue");
    done.finish();
    commit(&*store, done.write(OWNER, now)).await;
    store.enqueue_task(task(&live.id(), "tk_live")).await.expect("enqueue");
    assert_eq!(claim_some(&*store, "a", &["py"], &[], 10).await, vec!["tk_live"], "only the live run's task");
    assert_eq!(store.task("tk_orphan").await.expect("task").expect("row").state, TaskState::Ready);
    // A result after the attempt's deadline (T0 + 60 s) is refused, lease or not: the engine
    // gave up on it.
    assert_eq!(store.heartbeat_task("tk_live", "a", T0 + 90_000).await.expect("hb"), TaskAnswer::Ok);
    let late = TaskOutcome::Done(json!(1));
    assert_eq!(
        store.finish_task("tk_live", "a", late.clone(), T0 + 60_000).await.expect("finish"),
        TaskAnswer::Stale(TaskState::Claimed)
    );
    assert_eq!(store.finish_task("tk_live", "a", late, T0 + 59_999).await.expect("finish"), TaskAnswer::Ok);
});

conformance!(an_adopted_task_is_the_adopters_and_the_old_attempt_cannot_withdraw_it, |store| async move {
    use cairn_store::TaskState;
    let first = new_task(1, "py", "summarize");
    store.enqueue_task(first.clone()).await.expect("enqueue");
    // A past deadline keeps a task from being handed out.
    let late =
        cairn_store::NewTask { token: "tk_late".into(), step: "late".into(), deadline_ms: Some(T0), ..first.clone() };
    store.enqueue_task(late).await.expect("enqueue");
    assert_eq!(claim_some(&*store, "a", &["py"], &[], 10).await, vec!["tk_0001"], "the late task is not handed out");
    assert!(store.adopt_task("tk_0001", 2).await.expect("adopt"), "attempt 2 takes the task over");
    assert!(!store.adopt_task("tk_0001", 2).await.expect("adopt again"), "only once");
    assert!(!store.withdraw_task("tk_0001", 1).await.expect("withdraw"), "attempt 1 no longer holds it");
    assert_eq!(store.task("tk_0001").await.expect("task").expect("row").state, TaskState::Claimed);
    assert!(store.withdraw_task("tk_0001", 2).await.expect("withdraw"), "its adopter may withdraw it");
    assert_eq!(store.task("tk_0001").await.expect("task").expect("row").state, TaskState::Cancelled);
});
