//! What only the PostgreSQL backend has: a connection to a server, which can break while a group
//! of writes is on its way. The writer sends a group and its COMMIT in one batch; when the
//! connection is cut before the answer comes back, the group must be neither lost nor written
//! twice.
//!
//! Everything a store does with its data is in the conformance suite (`tests/conformance.rs`),
//! which runs against SQLite and PostgreSQL alike.

mod common;

use cairn_store::{Error, Inbox as _, Journal as _};
use common::journal::*;
use common::{Backend, TestStore};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_whose_connection_is_cut_mid_batch_is_looked_up_then_sent_again_once() {
    let Some(store) = TestStore::open(Backend::Postgres).await else { return };
    let mut j = create(&*store, 1, OWNER, LIVE).await;
    let id = j.id();
    let holder = store.raw_client().await.expect("a PostgreSQL store");
    let watcher = store.raw_client().await.expect("a PostgreSQL store");

    // Hold the run's row, so the group's fence waits for it with the whole batch (COMMIT too)
    // already sent.
    holder.batch_execute("BEGIN").await.expect("BEGIN");
    holder.execute("SELECT 1 FROM runs WHERE id = $1 FOR UPDATE", &[&id.to_string()]).await.expect("lock the row");
    let holder_pid: i32 = holder.query_one("SELECT pg_backend_pid()", &[]).await.expect("pid").get(0);

    j.start("a");
    let shared = store.shared();
    let write = j.write(OWNER, LIVE);
    let commit = tokio::spawn(async move { shared.commit(write).await });

    // The writer's backend, waiting on that lock: cut its connection.
    let mut waiting = None;
    for _ in 0..200 {
        let rows = watcher
            .query("SELECT pid FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))", &[&holder_pid])
            .await
            .expect("pg_stat_activity");
        if let Some(row) = rows.first() {
            waiting = Some(row.get::<_, i32>(0));
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let writer_pid = waiting.expect("the group's fence never waited on the held row");
    let cut: bool =
        watcher.query_one("SELECT pg_terminate_backend($1)", &[&writer_pid]).await.expect("terminate").get(0);
    assert!(cut, "the writer's backend {writer_pid} could not be terminated");
    holder.batch_execute("ROLLBACK").await.expect("ROLLBACK");

    // The cut transaction did not commit (its id says so); the writer sends the group again on a
    // new connection, where it lands once.
    let landed = tokio::time::timeout(Duration::from_secs(20), commit).await.expect("the commit never returned");
    landed.expect("commit task").expect("the group, sent again after the cut, lands");
    let row = store.get_run(&id).await.expect("run");
    assert_eq!(row.last_seq, j.state.last_seq);
    assert_eq!(store.events(&id).await.expect("events").len() as u64, j.state.last_seq, "every event once");
}

/// Every kind of row a driver writes — creations (one with an idempotency key), steps and
/// payloads, answers to requests, a run let go, a run's last write — goes in the one-round-trip
/// batch when nothing is amiss; a surprise (a fence that does not hold) sends its group the
/// careful way. Counted by the store, so a batch that always failed and fell back (which no
/// outcome would show) fails here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_without_surprises_go_in_one_batch_and_a_stale_write_takes_the_careful_way() {
    let Some(store) = TestStore::open(Backend::Postgres).await else { return };
    let shared = store.shared();
    let cairn_store::AnyStore::Postgres(pg) = &*shared else { panic!("a PostgreSQL store") };
    let now = T0 + 60_000;
    // Creations, together (one of them with an idempotency key).
    let mut runs: Vec<Journal> = (1..=4).map(|n| Journal::new(run_id(n), TWO_STEPS)).collect();
    let mut firsts: Vec<_> = runs.iter_mut().map(|j| j.write(OWNER, LIVE)).collect();
    firsts[0].idempotency = Some(cairn_store::IdempotencyKey { key: "order-1".into(), request_hash: "h".into() });
    let created = futures_util::future::join_all(firsts.into_iter().map(|w| store.commit(w))).await;
    assert!(created.iter().all(Result::is_ok), "{created:?}");
    // A step each, with payloads; requests answered; one run let go, one finished.
    let x = store.push_inbox(&runs[0].id(), "x".into(), now).await.expect("push").expect("accepted");
    for j in runs.iter_mut() {
        j.start("a");
    }
    let mut writes: Vec<_> = runs.iter_mut().map(|j| j.write(OWNER, LIVE)).collect();
    writes[0].requests = vec![cairn_store::RequestOutcome {
        id: x,
        state: cairn_store::RequestState::Refused,
        code: Some("no".into()),
        message: Some("because no".into()),
        journal_seq: None,
        decided_at_ms: Some(now),
    }];
    writes[1].release = true;
    writes[1].run.owner = None;
    let done = futures_util::future::join_all(writes.into_iter().map(|w| store.commit(w))).await;
    assert!(done.iter().all(Result::is_ok), "{done:?}");
    runs[2].succeed("a", serde_json::json!(1));
    runs[2].start("b");
    runs[2].succeed("b", serde_json::json!(2));
    let mut last = runs[2].write(OWNER, LIVE);
    last.answers_every_request = true;
    commit(&*store, last).await;
    assert_eq!(pg.groups_sent_carefully(), 0, "every group above went in one batch");
    assert!(store.pending_inbox(&runs[0].id()).await.expect("pending").is_empty(), "x answered");
    assert_eq!(store.get_run(&runs[2].id()).await.expect("run").status, "COMPLETED");

    // A write built on an old position: its batch is rolled back, the careful way refuses it.
    let mut stale = runs[3].clone();
    stale.committed_seq -= 1;
    stale.succeed("a", serde_json::json!(1));
    match store.commit(stale.write(OWNER, LIVE)).await {
        Err(Error::Conflict { .. }) => {}
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert_eq!(pg.groups_sent_carefully(), 1, "the stale write's group went the careful way");
}
