//! What only the PostgreSQL backend has: a connection to a server, which can break while a group
//! of writes is on its way. The writer sends a group and its COMMIT in one batch; when the
//! connection is cut before the answer comes back, the group must be neither lost nor written
//! twice.
//!
//! Everything a store does with its data is in the conformance suite (`tests/conformance.rs`),
//! which runs against SQLite and PostgreSQL alike.

mod common;

use cairn_store::Journal as _;
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
