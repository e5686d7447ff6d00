//! Group commit of run writes on the writer connection: every write waiting is fenced (journal
//! position + owner) and its rows written in one transaction, which one COMMIT makes durable. In
//! the common case the whole transaction, COMMIT included, is one pipelined round trip.

use super::rows::i;
use super::{Conn, Slot, pg};
use crate::{Error, RunRow, RunWrite};
use futures_util::future::join_all;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::Client;
use tokio_postgres::types::ToSql;

const MAX_GROUP: usize = 512;

/// Where a write's outcome goes once its group is done.
pub(super) type Reply = oneshot::Sender<Result<(), Error>>;

pub(super) async fn write_loop(
    slot: Arc<Slot>,
    mut rx: mpsc::UnboundedReceiver<(Arc<RunWrite>, Reply)>,
    health: crate::WriteHealth,
    careful: Arc<AtomicU64>,
) {
    let mut batch = Vec::new();
    let mut carry: Vec<(Arc<RunWrite>, Reply)> = Vec::new();
    loop {
        let first = match carry.is_empty() {
            true => match rx.recv().await {
                Some(w) => w,
                None => return,
            },
            false => carry.remove(0),
        };
        batch.push(first);
        while batch.len() + carry.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(w) => batch.push(w),
                Err(_) => break,
            }
        }
        // One write per run per group: the group's UPDATE fences by run id.
        let mut seen = std::collections::HashSet::new();
        let (now, later): (Vec<_>, Vec<_>) = batch.drain(..).partition(|(w, _)| seen.insert(w.run.id.clone()));
        batch = now;
        carry.extend(later);
        let writes: Vec<&RunWrite> = batch.iter().map(|(w, _)| &**w).collect();
        // While the server is away (a restart, a failover) hold the writes and try again with
        // backoff rather than fail every run in flight; give up after a while.
        let deadline = tokio::time::Instant::now() + OUTAGE_PATIENCE;
        let mut backoff = Duration::from_millis(100);
        let started = std::time::Instant::now();
        let results = loop {
            let attempt = group_once(&slot, &writes, &careful).await;
            match attempt {
                Err(Error::Unavailable(_)) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
                other => break other,
            }
        };
        health.note(results.as_ref().err());
        match results {
            Ok(results) => {
                crate::observe::committed("postgres", writes.len(), started.elapsed());
                for ((_, reply), r) in batch.drain(..).zip(results) {
                    let _ = reply.send(r);
                }
            }
            Err(e) => {
                for (_, reply) in batch.drain(..) {
                    let _ = reply.send(Err(copy(&e)));
                }
            }
        }
    }
}

/// The same outcome for another write of the group (`Error` is not `Clone`): what a caller acts
/// on is kept, anything else becomes a message.
fn copy(e: &Error) -> Error {
    match e {
        Error::Unavailable(m) => Error::Unavailable(m.clone()),
        Error::Full(m) => Error::Full(m.clone()),
        Error::Contention(m) => Error::Contention(m.clone()),
        Error::Conflict { run_id, expected } => Error::Conflict { run_id: run_id.clone(), expected: *expected },
        Error::IdempotencyKey { key, run_id, same_request } => {
            Error::IdempotencyKey { key: key.clone(), run_id: run_id.clone(), same_request: *same_request }
        }
        Error::RequestsWaiting { run_id } => Error::RequestsWaiting { run_id: run_id.clone() },
        other => Error::Postgres(format!("group commit failed: {other}")),
    }
}

/// How long a group of writes waits for the server to come back before failing.
const OUTAGE_PATIENCE: Duration = Duration::from_secs(30);

/// Advisory lock key shared by writers and taken exclusively by gc ("CARNGC").
pub(super) const GC_LOCK: i64 = 0x4341_524E_4743;
/// The group's transaction id, asked first and alone: it is answered at once, even while the
/// lock below waits for gc, so a COMMIT sent behind a wait can still be looked up.
const TXID: &str = "SELECT txid_current()::BIGINT";
/// The same, with BEGIN, as one simple query (the one-round-trip batch).
const BEGIN_TXID: &str = "BEGIN; SELECT txid_current()::BIGINT";
/// Writers share the gc lock; gc takes it alone, so it never deletes a payload a commit in
/// flight is linking.
const GC_SHARED: &str = "SELECT pg_advisory_xact_lock_shared($1)::TEXT";
/// How long one group may take before the connection is presumed dead.
const GROUP_TIMEOUT: Duration = Duration::from_secs(15);

/// What a group's COMMIT, once sent, makes durable: the transaction's id (0 until the server
/// said it) and the outcomes the group then has. Kept outside the group's future so that a
/// COMMIT whose answer never came (a broken connection, a timeout) can be looked up.
#[derive(Default)]
struct Sent {
    xid: AtomicI64,
    outcomes: std::sync::Mutex<Option<Vec<Result<(), Error>>>>,
}

impl Sent {
    fn arm(&self, outcomes: Vec<Result<(), Error>>) {
        if let Ok(mut o) = self.outcomes.lock() {
            *o = Some(outcomes);
        }
    }

    /// The transaction ended without committing (or committed and was answered).
    fn clear(&self) {
        self.xid.store(0, Ordering::Relaxed);
        if let Ok(mut o) = self.outcomes.lock() {
            *o = None;
        }
    }

    /// The outcomes a sent COMMIT stands for, with the transaction id to look it up by.
    fn take(&self) -> Option<(i64, Vec<Result<(), Error>>)> {
        let outcomes = self.outcomes.lock().ok()?.take()?;
        Some((self.xid.load(Ordering::Relaxed), outcomes))
    }
}

/// One try at committing a group on the writer connection. A group whose COMMIT was sent but
/// not answered (the connection broke, or stopped answering) is looked up by transaction id
/// once the server answers again, so a committed group is never written twice (nor reported as
/// a conflict with itself).
async fn group_once(slot: &Slot, writes: &[&RunWrite], careful: &AtomicU64) -> Result<Vec<Result<(), Error>>, Error> {
    let client = slot.get().await?;
    let sent = Sent::default();
    let lost = match tokio::time::timeout(GROUP_TIMEOUT, group_on(&client, writes, &sent, careful)).await {
        Ok(Ok(outcomes)) => return Ok(outcomes),
        Ok(Err(e @ Error::Unavailable(_))) => e,
        Ok(Err(e)) => return Err(e),
        Err(_) => Error::Unavailable(format!("no answer within {GROUP_TIMEOUT:?}")),
    };
    // A connection that failed mid-group may still hold that transaction open: the next try
    // starts on a new one.
    slot.reset().await;
    // No COMMIT went out: nothing of the group can become durable (the old connection closes
    // once its answers are in, and its transaction with it), and trying again is safe.
    let Some((xid, outcomes)) = sent.take() else { return Err(lost) };
    // A COMMIT went out unanswered: its server process may still be at work (waiting on a lock,
    // say) and could commit later. End it first, so the transaction's fate is settled before it
    // is asked (or, unknown, before the group is sent again).
    let deadline = tokio::time::Instant::now() + OUTAGE_PATIENCE;
    if let Some(backend) = &client.backend {
        end_backend(slot, backend, deadline).await;
    }
    if xid == 0 {
        // The answer naming the transaction never came back. Sent again, a group that did
        // commit fails its own fences: its runs are given up as lost by this process and taken
        // up from the journal once their leases run out.
        return Err(Error::Unavailable(format!("{lost}; whether the group committed is unknown")));
    }
    loop {
        let status = async {
            let c = slot.get().await?;
            let row = c.query_one("SELECT txid_status($1)::TEXT", &[&xid]).await.map_err(pg)?;
            Ok::<Option<String>, Error>(row.get(0))
        }
        .await;
        match status {
            Ok(Some(s)) if s == "committed" => return Ok(outcomes),
            // The old backend has not finished the COMMIT yet (an fsync, a half-open connection,
            // a lock it waits for): ask again rather than send the group twice.
            Ok(Some(s)) if s == "in progress" && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            // Its process could not be ended (no right to, say) and is still at it: unknown.
            Ok(Some(s)) if s == "in progress" => {
                return Err(Error::Unavailable(format!(
                    "transaction {xid} still in progress after {OUTAGE_PATIENCE:?}; whether it commits is unknown"
                )));
            }
            Ok(_) => return Err(Error::Unavailable(format!("transaction {xid} did not commit"))),
            Err(_) if tokio::time::Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(200)).await,
            Err(e) => return Err(e),
        }
    }
}

/// Ends the server process behind a writer connection whose answers were lost (`backend`: its
/// pid and start time, so a reused pid is never touched), and waits until it is gone. Best
/// effort: a server that cannot be reached or refuses leaves the lookup to wait as before.
async fn end_backend(slot: &Slot, backend: &(i32, String), deadline: tokio::time::Instant) {
    let (pid, started) = backend;
    let mut ended = false;
    while tokio::time::Instant::now() < deadline {
        let gone = async {
            let c = slot.get().await?;
            if !ended {
                c.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid = $1 AND backend_start::TEXT = $2",
                    &[pid, started],
                )
                .await
                .map_err(pg)?;
                ended = true;
            }
            let row = c
                .query_one(
                    "SELECT NOT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = $1 AND backend_start::TEXT = $2)",
                    &[pid, started],
                )
                .await
                .map_err(pg)?;
            Ok::<bool, Error>(row.get(0))
        }
        .await;
        match gone {
            Ok(true) => return,
            Ok(false) => tokio::time::sleep(Duration::from_millis(20)).await,
            Err(Error::Unavailable(_)) => tokio::time::sleep(Duration::from_millis(200)).await,
            Err(_) => return,
        }
    }
}

async fn group_on(
    client: &Conn,
    writes: &[&RunWrite],
    sent: &Sent,
    careful: &AtomicU64,
) -> Result<Vec<Result<(), Error>>, Error> {
    match commit_group(client, writes, sent, careful).await {
        // One write broke the whole group (a bug or a constraint we did not fence): commit each
        // alone, so only the broken one fails.
        Err(e) if writes.len() > 1 && !matches!(e, Error::Unavailable(_) | Error::Full(_)) => {
            let mut one_by_one = Vec::with_capacity(writes.len());
            for w in writes {
                // Each its own transaction. A COMMIT lost here is not looked up: the whole group
                // is reported unavailable and sent again, and the writes that did commit come
                // back as conflicts (their runs given up here, taken again once their leases run
                // out). Rare: a surprise, then the connection lost, in one group.
                one_by_one.push(match commit_checked(client, &[*w], &Sent::default()).await {
                    Ok(mut r) => r.pop().unwrap_or(Ok(())),
                    Err(Error::Unavailable(_)) => return Err(Error::Unavailable("connection lost mid-retry".into())),
                    Err(e) => Err(e),
                });
            }
            Ok(one_by_one)
        }
        other => other,
    }
}

/// Commits a group: in one round trip when every write is as expected (the common case), or
/// fence by fence when one is not.
async fn commit_group(
    client: &Conn,
    writes: &[&RunWrite],
    sent: &Sent,
    careful: &AtomicU64,
) -> Result<Vec<Result<(), Error>>, Error> {
    if writes.iter().all(|w| w.notify.is_empty())
        && group_bytes(writes) < PIPELINED_MAX_BYTES
        && let Some(outcomes) = commit_pipelined(client, writes, sent).await?
    {
        return Ok(outcomes);
    }
    careful.fetch_add(1, Ordering::Relaxed);
    commit_checked(client, writes, sent).await
}

/// The largest group sent as one batch. A statement that cannot even be sent (a message past the
/// protocol's 2 GiB) fails in the client while the COMMIT behind it still goes out; far below
/// that, nothing the writer sends can fail before it leaves. Larger groups take the careful
/// path, where COMMIT waits for every answer.
const PIPELINED_MAX_BYTES: usize = 256 << 20;

/// Roughly what a group sends: its payloads, event bodies and log lines.
fn group_bytes(writes: &[&RunWrite]) -> usize {
    writes
        .iter()
        .map(|w| {
            w.payloads.iter().map(|p| p.bytes.len()).sum::<usize>()
                + w.events.iter().map(|e| e.body.len()).sum::<usize>()
                + w.logs.iter().map(|l| l.message.len()).sum::<usize>()
        })
        .sum()
}

/// Awaits every future, polling them in the order given each time: the first poll of each sends
/// its request, so the requests go out in this order (unlike `join_all`, whose order for many
/// futures is its own).
async fn in_order<F: std::future::Future>(futures: Vec<F>) -> Vec<F::Output> {
    use futures_util::future::{MaybeDone, maybe_done};
    use std::future::Future as _;
    let mut each: Vec<std::pin::Pin<Box<MaybeDone<F>>>> =
        futures.into_iter().map(|f| Box::pin(maybe_done(f))).collect();
    std::future::poll_fn(|cx| {
        let mut done = true;
        for f in each.iter_mut() {
            done &= f.as_mut().poll(cx).is_ready();
        }
        match done {
            true => std::task::Poll::Ready(()),
            false => std::task::Poll::Pending,
        }
    })
    .await;
    each.iter_mut().filter_map(|f| f.as_mut().take_output()).collect()
}

/// The group's statements for one pipelined batch, prepared (once per connection) before any of
/// it is sent: a statement prepared inside the batch would go out late, after COMMIT.
struct Batch {
    gc_shared: tokio_postgres::Statement,
    insert_run: tokio_postgres::Statement,
    insert_key: tokio_postgres::Statement,
    group: tokio_postgres::Statement,
    wake_released: tokio_postgres::Statement,
    wake: tokio_postgres::Statement,
}

impl Batch {
    async fn prepare(client: &Conn) -> Result<Batch, Error> {
        Ok(Batch {
            gc_shared: client.stmt(GC_SHARED).await?,
            insert_run: client.stmt(INSERT_RUN_NEW).await?,
            insert_key: client.stmt(INSERT_KEY_NEW).await?,
            group: client.stmt(GROUP_ALL.as_str()).await?,
            wake_released: client.stmt(WAKE_RELEASED_ALL).await?,
            wake: client.stmt(WAKE_OTHERS).await?,
        })
    }
}

/// The whole group and its COMMIT in one pipelined batch — BEGIN, the group's start, every
/// creation and fence, every row, the wake-up, COMMIT — so one round trip to the server
/// whatever the group holds (the careful path takes six or more). Every statement that could
/// meet a surprise fails instead of answering "0 rows" (a creation whose run or idempotency key
/// exists, a fence that did not hold, a request already answered), so the server turns the
/// COMMIT into a rollback and nothing is committed; `None` then hands the group to
/// `commit_checked`, which finds the write at fault. `sent` holds the outcomes from the start,
/// and the transaction id as soon as the server names it.
async fn commit_pipelined(
    client: &Conn,
    writes: &[&RunWrite],
    sent: &Sent,
) -> Result<Option<Vec<Result<(), Error>>>, Error> {
    let s = Batch::prepare(client).await?;
    let (creates, updates): (Vec<Indexed>, Vec<Indexed>) =
        writes.iter().copied().enumerate().partition(|(_, w)| w.expected_seq == 0);
    // A statement that fails in the client (parameters that would not encode) never leaves, and
    // the server would commit the rest without it: then the batch ends in ROLLBACK instead.
    let unsent = AtomicBool::new(false);
    let created = in_order(creates.iter().map(|(_, w)| create_new(client, &s, w, &unsent)).collect());
    let fence_cols = FenceCols::of(&updates);
    let rows = RowCols::of(writes);
    let (fenced_n, answered_n) = (updates.len() as i64, rows.rq.id.len() as i64);
    let grouped = async {
        let mut params: Vec<&(dyn ToSql + Sync)> = fence_cols.params().to_vec();
        params.extend(rows.all());
        params.push(&fenced_n);
        params.push(&answered_n);
        client.execute(&s.group, &params).await.map(drop).map_err(pg)
    };
    // Delivered at COMMIT, only if a run someone else may take up is let go.
    let woken = async {
        match writes.iter().any(|w| w.hands_out_work()) {
            true => client.execute(&s.wake, &[]).await.map(drop).map_err(pg),
            false => Ok(()),
        }
    };
    // Released runs get their wake time, and runs at their last write are checked for
    // requests still waiting: a statement of its own, after the group's answers.
    let mut looked_at: Vec<&str> = rows.released.clone();
    looked_at.extend(rows.last_writes.iter().filter(|id| !rows.released.contains(id)));
    let checked = async {
        match looked_at.is_empty() {
            true => Ok(()),
            false => client.execute(&s.wake_released, &[&looked_at, &rows.last_writes]).await.map(drop).map_err(pg),
        }
    };
    sent.arm(writes.iter().map(|_| Ok(())).collect());
    // BEGIN and the transaction id in one message, answered before anything can wait.
    let began = async {
        let answer = client.simple_query(BEGIN_TXID).await.map_err(pg)?;
        let xid = answer.iter().find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0)?.parse::<i64>().ok(),
            _ => None,
        });
        let xid = xid.ok_or_else(|| Error::Postgres("BEGIN did not name its transaction".into()))?;
        sent.xid.store(xid, Ordering::Relaxed);
        Ok(())
    };
    let locked = async { client.execute(&s.gc_shared, &[&GC_LOCK]).await.map(drop).map_err(pg) };
    // Polled after every statement before it has been polled once, so has sent itself or failed.
    let end = async {
        match unsent.load(Ordering::Relaxed) {
            true => {
                // No COMMIT goes out: nothing to look up, whether or not the ROLLBACK is answered.
                sent.clear();
                let _ = client.batch_execute("ROLLBACK").await;
                Err(Error::Unavailable("a statement of the group could not be sent; rolled back".into()))
            }
            false => client.batch_execute("COMMIT").await.map_err(pg),
        }
    };
    // Biased: the requests go out in this order (BEGIN first, COMMIT last), each when first
    // polled; none awaits anything before it sends.
    let (began, locked, created, grouped, checked, woken, committed) = tokio::join!(
        biased;
        noting(began, &unsent),
        noting(locked, &unsent),
        created,
        noting(grouped, &unsent),
        noting(checked, &unsent),
        noting(woken, &unsent),
        end,
    );
    let answers = [began, locked, grouped, checked, woken, committed].into_iter().chain(created);
    let (mut refused, mut lost) = (None, None);
    for a in answers {
        match a {
            Ok(()) => {}
            Err(e @ Error::Unavailable(_)) => lost = lost.or(Some(e)),
            Err(e) => refused = refused.or(Some(e)),
        }
    }
    match (refused, lost) {
        (None, None) => {
            sent.clear();
            Ok(Some(writes.iter().map(|_| Ok(())).collect()))
        }
        // Answers lost with the connection: the COMMIT may have gone through (`group_once`
        // looks it up).
        (None, Some(lost)) => Err(lost),
        // A statement failed, so the transaction could not commit: COMMIT ended it as a rollback.
        (Some(refused), lost) => {
            sent.clear();
            match (refused, lost) {
                (_, Some(lost)) => Err(lost),
                // The server is out of disk: the careful path would meet the same.
                (e @ Error::Full(_), None) => Err(e),
                (_, None) => Ok(None),
            }
        }
    }
}

/// `statement`'s outcome, noting in `unsent` a failure that did not come from the server (a
/// statement that could not be sent, a connection gone).
async fn noting(statement: impl Future<Output = Result<(), Error>>, unsent: &AtomicBool) -> Result<(), Error> {
    let outcome = statement.await;
    if let Err(Error::Unavailable(_)) = &outcome {
        unsent.store(true, Ordering::Relaxed);
    }
    outcome
}

/// A creation in the pipelined batch: fails if its run or its idempotency key exists.
async fn create_new(client: &Conn, s: &Batch, w: &RunWrite, unsent: &AtomicBool) -> Result<(), Error> {
    let r = &w.run;
    let row = NewRunRow::of(w);
    let params = row.params();
    // Each noted alone: one that could not be sent must stop the COMMIT even while the other
    // still awaits its answer.
    let run = noting(async { client.execute(&s.insert_run, &params).await.map(drop).map_err(pg) }, unsent);
    let key = noting(
        async {
            match &w.idempotency {
                Some(idem) => client
                    .execute(&s.insert_key, &[&idem.key, &r.id, &idem.request_hash, &r.created_at_ms])
                    .await
                    .map(drop)
                    .map_err(pg),
                None => Ok(()),
            }
        },
        unsent,
    );
    let (run, key) = tokio::join!(biased; run, key);
    run.and(key)
}

/// Fences every write, writes the rows of those that passed, and commits once, a round trip at a
/// time: updates and rows go as arrays (`UNNEST`), only creations go one by one.
async fn commit_checked(client: &Conn, writes: &[&RunWrite], sent: &Sent) -> Result<Vec<Result<(), Error>>, Error> {
    client.batch_execute("BEGIN").await.map_err(pg)?;
    let result = async {
        let row = client.query_one(&client.stmt(TXID).await?, &[]).await.map_err(pg)?;
        sent.xid.store(row.get(0), Ordering::Relaxed);
        client.execute(&client.stmt(GC_SHARED).await?, &[&GC_LOCK]).await.map_err(pg)?;
        let mut outcomes: Vec<Result<(), Error>> = (0..writes.len()).map(|_| Ok(())).collect();
        // A run's last write that leaves a request unanswered is refused before anything else.
        let last_writes: Vec<&str> =
            writes.iter().filter(|w| w.answers_every_request).map(|w| w.run.id.as_str()).collect();
        if !last_writes.is_empty() {
            let answered: Vec<i64> = writes.iter().flat_map(|w| w.requests.iter().map(|q| q.id)).collect();
            // The runs' rows first: a request being accepted for one holds it until it commits
            // (then is seen below), and one not yet accepted waits for this transaction and
            // finds the run finished.
            client.execute(LOCK_RUNS, &[&last_writes]).await.map_err(pg)?;
            let waiting = client.query(WAITING, &[&last_writes, &answered]).await.map_err(pg)?;
            for row in waiting {
                let run_id: String = row.get(0);
                for (i, w) in writes.iter().enumerate() {
                    if w.answers_every_request && w.run.id == run_id {
                        outcomes[i] = Err(Error::RequestsWaiting { run_id: run_id.clone() });
                    }
                }
            }
        }
        let (creates, updates): (Vec<Indexed>, Vec<Indexed>) = writes
            .iter()
            .copied()
            .enumerate()
            .filter(|(i, _)| outcomes[*i].is_ok())
            .partition(|(_, w)| w.expected_seq == 0);
        for ((i, _), fenced) in creates.iter().zip(join_all(creates.iter().map(|(_, w)| fence_create(client, w))).await)
        {
            match fenced {
                Ok(()) => {}
                Err(e @ (Error::Conflict { .. } | Error::IdempotencyKey { .. })) => outcomes[*i] = Err(e),
                Err(e) => return Err(e),
            }
        }
        if !updates.is_empty() {
            let landed = fence_updates(client, &updates).await?;
            for (i, w) in &updates {
                if !landed.contains(&w.run.id) {
                    outcomes[*i] = Err(Error::Conflict { run_id: w.run.id.clone(), expected: w.expected_seq });
                }
            }
        }
        let rows: Vec<&RunWrite> = writes.iter().zip(&outcomes).filter(|(_, o)| o.is_ok()).map(|(w, _)| *w).collect();
        if !rows.is_empty() {
            write_rows(client, &RowStatements::prepare(client).await?, &rows).await?;
        }
        // Requests for other runs (a child's end, a parent's cancellation), in this transaction.
        let notify: Vec<(&RunWrite, &crate::Notify)> =
            rows.iter().flat_map(|w| w.notify.iter().map(move |n| (*w, n))).collect();
        if !notify.is_empty() {
            let sql = super::queries::push_request_sql();
            for (w, n) in &notify {
                client.execute(sql.as_str(), &[&n.run_id, &n.body, &w.run.updated_at_ms]).await.map_err(pg)?;
            }
        }
        if rows.iter().any(|w| w.hands_out_work()) || !notify.is_empty() {
            // Delivered at COMMIT: idle workers elsewhere look for the runs just handed out
            // (a finished run hands out nothing: its release wakes nobody).
            client.execute(&client.stmt(WAKE_OTHERS).await?, &[]).await.map_err(pg)?;
        }
        Ok(outcomes)
    }
    .await;
    match result {
        Ok(outcomes) => {
            sent.arm(outcomes.iter().map(|o| o.as_ref().map_err(copy).copied()).collect());
            match client.batch_execute("COMMIT").await.map_err(pg) {
                Ok(()) => {
                    sent.clear();
                    Ok(outcomes)
                }
                // The connection broke around COMMIT: the group may or may not have committed
                // (`sent` says what to look up).
                Err(e @ Error::Unavailable(_)) => Err(e),
                Err(e) => {
                    sent.clear();
                    Err(e)
                }
            }
        }
        Err(e) => {
            sent.clear();
            let _ = client.batch_execute("ROLLBACK").await;
            Err(e)
        }
    }
}

/// A write and its position in the group.
type Indexed<'a> = (usize, &'a RunWrite);

/// The fence's parameters: one array per column of the runs being updated.
struct FenceCols {
    ids: Vec<String>,
    versions: Vec<Option<i64>>,
    statuses: Vec<String>,
    current: Vec<Option<String>>,
    fclass: Vec<Option<String>>,
    fmsg: Vec<Option<String>>,
    fstep: Vec<Option<String>>,
    last: Vec<i64>,
    updated: Vec<i64>,
    finished: Vec<Option<i64>>,
    dhash: Vec<Option<String>>,
    ohash: Vec<Option<String>>,
    artifact: Vec<Option<String>>,
    new_owner: Vec<Option<String>>,
    lease: Vec<Option<i64>>,
    wake: Vec<Option<i64>>,
    retain: Vec<Option<i64>>,
    expected: Vec<i64>,
    owners: Vec<String>,
}

impl FenceCols {
    fn of(updates: &[Indexed<'_>]) -> FenceCols {
        let runs: Vec<&RunRow> = updates.iter().map(|(_, w)| &w.run).collect();
        let col = |f: &dyn Fn(&RunRow) -> Option<String>| runs.iter().map(|r| f(r)).collect::<Vec<Option<String>>>();
        let num = |f: &dyn Fn(&RunRow) -> Option<i64>| runs.iter().map(|r| f(r)).collect::<Vec<Option<i64>>>();
        FenceCols {
            ids: runs.iter().map(|r| r.id.clone()).collect(),
            versions: num(&|r| r.definition_version.map(i64::from)),
            statuses: runs.iter().map(|r| r.status.clone()).collect(),
            current: col(&|r| r.current_step.clone()),
            fclass: col(&|r| r.failure_class.clone()),
            fmsg: col(&|r| r.failure_message.clone()),
            fstep: col(&|r| r.failed_step.clone()),
            last: runs.iter().map(|r| i(r.last_seq)).collect(),
            updated: runs.iter().map(|r| r.updated_at_ms).collect(),
            finished: num(&|r| r.finished_at_ms),
            dhash: col(&|r| r.definition_hash.clone()),
            ohash: col(&|r| r.output_hash.clone()),
            artifact: col(&|r| r.artifact.clone()),
            new_owner: updates.iter().map(|(_, w)| (!w.release).then(|| w.owner.clone())).collect(),
            lease: updates.iter().map(|(_, w)| (!w.release).then_some(w.lease_until_ms)).collect(),
            wake: updates.iter().map(|(_, w)| if w.release { w.run.wake_at_ms } else { None }).collect(),
            retain: num(&|r| r.retain_until_ms),
            expected: updates.iter().map(|(_, w)| i(w.expected_seq)).collect(),
            owners: updates.iter().map(|(_, w)| w.owner.clone()).collect(),
        }
    }

    fn params(&self) -> [&(dyn ToSql + Sync); 19] {
        [
            &self.ids,
            &self.versions,
            &self.statuses,
            &self.current,
            &self.fclass,
            &self.fmsg,
            &self.fstep,
            &self.last,
            &self.updated,
            &self.finished,
            &self.dhash,
            &self.ohash,
            &self.artifact,
            &self.new_owner,
            &self.lease,
            &self.wake,
            &self.retain,
            &self.expected,
            &self.owners,
        ]
    }
}

/// One UPDATE for every run write in the group, each fenced on journal position and owner;
/// returns the ids that passed.
async fn fence_updates(client: &Conn, updates: &[Indexed<'_>]) -> Result<std::collections::HashSet<String>, Error> {
    let cols = FenceCols::of(updates);
    let rows = client.query(&client.stmt(FENCE_UPDATES).await?, &cols.params()).await.map_err(pg)?;
    Ok(rows.iter().map(|r| r.get::<_, String>(0)).collect())
}

/// A new run's row: the parameters of `INSERT_RUN`.
struct NewRunRow<'a> {
    r: &'a RunRow,
    version: Option<i64>,
    last_seq: i64,
    owner: Option<&'a str>,
    lease: Option<i64>,
    wake_at: Option<i64>,
}

impl<'a> NewRunRow<'a> {
    fn of(w: &'a RunWrite) -> NewRunRow<'a> {
        let r = &w.run;
        NewRunRow {
            r,
            version: r.definition_version.map(i64::from),
            last_seq: i(r.last_seq),
            // A run let go of at once is nobody's and carries its wake time; a held one needs none.
            owner: (!w.release).then_some(w.owner.as_str()),
            lease: (!w.release).then_some(w.lease_until_ms),
            wake_at: if w.release { r.wake_at_ms } else { None },
        }
    }

    fn params(&self) -> [&(dyn ToSql + Sync); 20] {
        let r = self.r;
        [
            &r.id,
            &r.workflow,
            &self.version,
            &r.status,
            &r.goal,
            &r.current_step,
            &r.failure_class,
            &r.failure_message,
            &r.failed_step,
            &self.last_seq,
            &self.owner,
            &self.lease,
            &r.created_at_ms,
            &r.updated_at_ms,
            &r.finished_at_ms,
            &r.definition_hash,
            &r.output_hash,
            &r.artifact,
            &self.wake_at,
            &r.retain_until_ms,
        ]
    }
}

/// Fences one creation (the run row must not exist; its idempotency key must be free).
async fn fence_create(client: &Client, w: &RunWrite) -> Result<(), Error> {
    let r = &w.run;
    let row = NewRunRow::of(w);
    let n = client.execute(INSERT_RUN, &row.params()).await.map_err(pg)?;
    if n == 0 {
        return Err(Error::Conflict { run_id: r.id.clone(), expected: 0 });
    }
    if let Some(idem) = &w.idempotency {
        let inserted =
            client.execute(INSERT_KEY, &[&idem.key, &r.id, &idem.request_hash, &r.created_at_ms]).await.map_err(pg)?;
        if inserted == 0 {
            // The key belongs to another run: take back the row this write just made.
            client.execute("DELETE FROM runs WHERE id=$1", &[&r.id]).await.map_err(pg)?;
            let row = client
                .query_one("SELECT run_id, request_hash FROM idempotency WHERE key=$1", &[&idem.key])
                .await
                .map_err(pg)?;
            let (run_id, hash): (String, String) = (row.get(0), row.get(1));
            return Err(Error::IdempotencyKey {
                key: idem.key.clone(),
                run_id,
                same_request: hash == idem.request_hash,
            });
        }
    }
    Ok(())
}

macro_rules! insert_run {
    () => {
        "INSERT INTO runs (id, workflow, definition_version, status, goal, current_step, failure_class, \
         failure_message, failed_step, last_seq, owner, lease_expires_at, created_at, updated_at, finished_at, \
         definition_hash, output_hash, artifact, wake_at, retain_until) \
         VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,$15,$16,$17,$18,$19,$20)"
    };
}
macro_rules! insert_key {
    () => {
        "INSERT INTO idempotency (key, run_id, request_hash, created_at) VALUES ($1,$2,$3,$4)"
    };
}
const INSERT_RUN: &str = concat!(insert_run!(), " ON CONFLICT (id) DO NOTHING");
const INSERT_KEY: &str = concat!(insert_key!(), " ON CONFLICT (key) DO NOTHING");
/// In the one-round-trip batch a run or key that exists fails the statement (a unique key).
const INSERT_RUN_NEW: &str = insert_run!();
const INSERT_KEY_NEW: &str = insert_key!();
const LOCK_RUNS: &str = "SELECT 1 FROM runs WHERE id = ANY($1) ORDER BY id FOR UPDATE";
/// The runs (`$1`) among a group's last writes with a pending request the group does not answer
/// (`$2`: the ids it answers).
const WAITING: &str =
    "SELECT DISTINCT run_id FROM inbox WHERE run_id = ANY($1) AND state = 'pending' AND NOT (id = ANY($2))";
/// Delivered at COMMIT: idle workers elsewhere look for the runs just handed out.
const WAKE_OTHERS: &str = "SELECT pg_notify('cairn_wake', '')";
macro_rules! fence_updates {
    () => {
        "UPDATE runs AS r SET definition_version=v.definition_version, status=v.status, current_step=v.current_step, \
             failure_class=v.failure_class, failure_message=v.failure_message, failed_step=v.failed_step, \
             last_seq=v.last_seq, updated_at=v.updated_at, finished_at=v.finished_at, \
             definition_hash=v.definition_hash, output_hash=v.output_hash, artifact=v.artifact, owner=v.new_owner, \
             lease_expires_at=v.lease, wake_at=v.wake_at, retain_until=v.retain_until \
             FROM UNNEST($1::TEXT[], $2::BIGINT[], $3::TEXT[], $4::TEXT[], $5::TEXT[], $6::TEXT[], $7::TEXT[], \
                         $8::BIGINT[], $9::BIGINT[], $10::BIGINT[], $11::TEXT[], $12::TEXT[], $13::TEXT[], $14::TEXT[], \
                         $15::BIGINT[], $16::BIGINT[], $17::BIGINT[], $18::BIGINT[], $19::TEXT[]) \
               AS v(id, definition_version, status, current_step, failure_class, failure_message, failed_step, \
                    last_seq, updated_at, finished_at, definition_hash, output_hash, artifact, new_owner, lease, \
                    wake_at, retain_until, expected_seq, owner) \
             WHERE r.id = v.id AND r.last_seq = v.expected_seq AND r.owner = v.owner \
             RETURNING r.id"
    };
}
const FENCE_UPDATES: &str = fence_updates!();
const INSERT_EVENTS: &str = "INSERT INTO events (run_id, seq, at, kind, schema, step_id, body) \
                 SELECT * FROM UNNEST($1::TEXT[], $2::BIGINT[], $3::BIGINT[], $4::TEXT[], $5::BIGINT[], $6::TEXT[], $7::TEXT[])";
const INSERT_PAYLOADS: &str = "INSERT INTO payloads (hash, size, body) SELECT * FROM UNNEST($1::TEXT[], $2::BIGINT[], $3::BYTEA[]) \
                 ON CONFLICT (hash) DO NOTHING";
const INSERT_LINKS: &str =
    "INSERT INTO run_payloads (run_id, hash) SELECT * FROM UNNEST($1::TEXT[], $2::TEXT[]) ON CONFLICT DO NOTHING";
const UPSERT_STEPS: &str = "INSERT INTO steps (run_id, step_id, position, kind, status, attempts, not_before, started_at, \
                 finished_at, busy_ms, error_class, error_message, output_hash, skip_reason) \
                 SELECT * FROM UNNEST($1::TEXT[], $2::TEXT[], $3::BIGINT[], $4::TEXT[], $5::TEXT[], $6::BIGINT[], \
                   $7::BIGINT[], $8::BIGINT[], $9::BIGINT[], $10::BIGINT[], $11::TEXT[], $12::TEXT[], $13::TEXT[], $14::TEXT[]) \
                 ON CONFLICT (run_id, step_id) DO UPDATE SET position=excluded.position, status=excluded.status, attempts=excluded.attempts, \
                 not_before=excluded.not_before, started_at=excluded.started_at, finished_at=excluded.finished_at, \
                 busy_ms=excluded.busy_ms, error_class=excluded.error_class, error_message=excluded.error_message, \
                 output_hash=excluded.output_hash, skip_reason=excluded.skip_reason";
const INSERT_LOGS: &str = "INSERT INTO logs (run_id, step_id, attempt, at, level, message) \
                 SELECT * FROM UNNEST($1::TEXT[], $2::TEXT[], $3::BIGINT[], $4::BIGINT[], $5::TEXT[], $6::TEXT[])";
/// Sets the wake time of released runs that still have requests waiting.
macro_rules! wake_released {
    () => {
        "UPDATE runs AS r SET wake_at = \
                 (SELECT MIN(created_at) FROM inbox i WHERE i.run_id = r.id AND i.state = 'pending') \
                 WHERE r.id = ANY($1) AND EXISTS (SELECT 1 FROM inbox i WHERE i.run_id = r.id AND i.state = 'pending') \
                 RETURNING r.id"
    };
}
const WAKE_RELEASED: &str = wake_released!();
/// The wake-up in the one-round-trip batch, which also checks the runs' last writes (`$2`):
/// it fails if one of them still has a request waiting, after the group's answers. Its snapshot
/// is taken after the fence locked the runs, so a request accepted meanwhile is seen, and one
/// not yet accepted waits for the lock and then finds the run finished.
const WAKE_RELEASED_ALL: &str =
    concat!("WITH w AS (", wake_released!(), ") SELECT 1 / (NOT EXISTS (SELECT 1 FROM w WHERE w.id = ANY($2)))::INT");
/// Answers requests; only pending ones (an answered request is never answered again).
macro_rules! answer_requests {
    () => {
        "UPDATE inbox AS i SET state=v.state, code=v.code, message=v.message, \
                 journal_seq=v.journal_seq, decided_at=v.decided_at \
                 FROM UNNEST($1::BIGINT[], $2::TEXT[], $3::TEXT[], $4::TEXT[], $5::BIGINT[], $6::BIGINT[], $7::TEXT[]) \
                   AS v(id, state, code, message, journal_seq, decided_at, run_id) \
                 WHERE i.id = v.id AND i.run_id = v.run_id AND i.state = 'pending'"
    };
}
const ANSWER_REQUESTS: &str = answer_requests!();
/// The statements `write_rows` sends, prepared before the rows are sent (the careful path).
struct RowStatements {
    insert_events: tokio_postgres::Statement,
    insert_payloads: tokio_postgres::Statement,
    insert_links: tokio_postgres::Statement,
    upsert_steps: tokio_postgres::Statement,
    insert_logs: tokio_postgres::Statement,
    wake_released: tokio_postgres::Statement,
    answer_requests: tokio_postgres::Statement,
}

impl RowStatements {
    async fn prepare(client: &Conn) -> Result<RowStatements, Error> {
        Ok(RowStatements {
            insert_events: client.stmt(INSERT_EVENTS).await?,
            insert_payloads: client.stmt(INSERT_PAYLOADS).await?,
            insert_links: client.stmt(INSERT_LINKS).await?,
            upsert_steps: client.stmt(UPSERT_STEPS).await?,
            insert_logs: client.stmt(INSERT_LOGS).await?,
            wake_released: client.stmt(WAKE_RELEASED).await?,
            answer_requests: client.stmt(ANSWER_REQUESTS).await?,
        })
    }
}

/// The fence, every row statement and the answers of a group as one statement (data-modifying
/// CTEs), for the one-round-trip batch: the server runs one statement and sends one answer
/// where it ran seven and sent seven (each flushed to the socket at its own `Sync`). It fails
/// (division by zero, so the transaction cannot commit) unless every run passed its fence and
/// every request answered was still pending. Parameters: the fence's, then each row
/// statement's in this order, then how many runs were fenced and how many requests answered.
static GROUP_ALL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    let parts = [
        ("f", FENCE_UPDATES),
        ("e", INSERT_EVENTS),
        ("p", INSERT_PAYLOADS),
        ("l", INSERT_LINKS),
        ("s", UPSERT_STEPS),
        ("g", INSERT_LOGS),
        ("a", concat!(answer_requests!(), " RETURNING 1")),
    ];
    let mut taken = 0;
    let mut ctes = Vec::new();
    for (name, sql) in parts {
        ctes.push(format!("{name} AS ({})", renumbered(sql, taken)));
        taken += highest_parameter(sql);
    }
    format!(
        "WITH {} SELECT 1 / ((SELECT COUNT(*) FROM f) = ${} AND (SELECT COUNT(*) FROM a) = ${})::INT",
        ctes.join(", "),
        taken + 1,
        taken + 2
    )
});

/// `sql` with each parameter `$n` as `$(n + by)` (the writer's statements hold no other `$`).
fn renumbered(sql: &str, by: usize) -> String {
    let mut out = String::with_capacity(sql.len() + 16);
    let mut rest = sql;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..=at]);
        rest = &rest[at + 1..];
        let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        match rest[..digits].parse::<usize>() {
            Ok(n) => out.push_str(&(n + by).to_string()),
            Err(_) => out.push_str(&rest[..digits]),
        }
        rest = &rest[digits..];
    }
    out.push_str(rest);
    out
}

/// The highest parameter number in `sql`.
fn highest_parameter(sql: &str) -> usize {
    sql.split('$')
        .skip(1)
        .filter_map(|s| s[..s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len())].parse::<usize>().ok())
        .max()
        .unwrap_or(0)
}

/// Column arrays for one multi-row INSERT each.
#[derive(Default)]
struct EventCols {
    run: Vec<String>,
    seq: Vec<i64>,
    at: Vec<i64>,
    kind: Vec<String>,
    schema: Vec<i64>,
    step: Vec<Option<String>>,
    body: Vec<String>,
}

#[derive(Default)]
struct StepCols {
    run: Vec<String>,
    step: Vec<String>,
    position: Vec<i64>,
    kind: Vec<String>,
    status: Vec<String>,
    attempts: Vec<i64>,
    not_before: Vec<Option<i64>>,
    started: Vec<Option<i64>>,
    finished: Vec<Option<i64>>,
    busy: Vec<i64>,
    error_class: Vec<Option<String>>,
    error_message: Vec<Option<String>>,
    output: Vec<Option<String>>,
    skip: Vec<Option<String>>,
}

#[derive(Default)]
struct RequestCols {
    id: Vec<i64>,
    state: Vec<&'static str>,
    code: Vec<Option<String>>,
    message: Vec<Option<String>>,
    seq: Vec<Option<i64>>,
    at: Vec<Option<i64>>,
    run: Vec<String>,
}

#[derive(Default)]
struct LogCols {
    run: Vec<String>,
    step: Vec<String>,
    attempt: Vec<i64>,
    at: Vec<i64>,
    level: Vec<String>,
    message: Vec<String>,
}

/// The journal and projection rows of a group's writes, one array per column.
struct RowCols<'a> {
    ev: EventCols,
    hashes: Vec<&'a str>,
    sizes: Vec<i64>,
    bodies: Vec<&'a [u8]>,
    link_runs: Vec<&'a str>,
    link_hashes: Vec<&'a str>,
    st: StepCols,
    lg: LogCols,
    rq: RequestCols,
    /// Runs let go of with their write (their wake time depends on requests still waiting).
    released: Vec<&'a str>,
    /// Runs whose write is their last (`answers_every_request`).
    last_writes: Vec<&'a str>,
}

impl<'a> RowCols<'a> {
    fn of(writes: &[&'a RunWrite]) -> RowCols<'a> {
        let mut ev = EventCols::default();
        let mut payloads: std::collections::BTreeMap<&str, (i64, &[u8])> = Default::default();
        let mut links: std::collections::BTreeSet<(&str, &str)> = Default::default();
        let mut st = StepCols::default();
        let mut lg = LogCols::default();
        let mut rq = RequestCols::default();
        let mut released = Vec::new();
        let mut last_writes = Vec::new();
        for w in writes {
            for q in &w.requests {
                rq.id.push(q.id);
                rq.state.push(q.state.as_str());
                rq.code.push(q.code.clone());
                rq.message.push(q.message.clone());
                rq.seq.push(q.journal_seq.map(i));
                rq.at.push(q.decided_at_ms);
                rq.run.push(w.run.id.clone());
            }
            let id = &w.run.id;
            for e in &w.events {
                ev.run.push(id.clone());
                ev.seq.push(i(e.seq));
                ev.at.push(e.at_ms);
                ev.kind.push(e.kind.to_string());
                ev.schema.push(i64::from(e.schema));
                ev.step.push(e.step.clone());
                ev.body.push(e.body.clone());
            }
            for p in &w.payloads {
                payloads.entry(p.reference.hash.as_str()).or_insert((i(p.reference.size), p.bytes.as_slice()));
                links.insert((id.as_str(), p.reference.hash.as_str()));
            }
            for s in &w.steps {
                st.run.push(id.clone());
                st.step.push(s.step_id.clone());
                st.position.push(i64::from(s.position));
                st.kind.push(s.kind.clone());
                st.status.push(s.status.clone());
                st.attempts.push(i64::from(s.attempts));
                st.not_before.push(s.not_before_ms);
                st.started.push(s.started_at_ms);
                st.finished.push(s.finished_at_ms);
                st.busy.push(i(s.busy_ms));
                st.error_class.push(s.error_class.clone());
                st.error_message.push(s.error_message.clone());
                st.output.push(s.output_hash.clone());
                st.skip.push(s.skip_reason.clone());
            }
            for l in &w.logs {
                lg.run.push(id.clone());
                lg.step.push(l.step_id.clone());
                lg.attempt.push(i64::from(l.attempt));
                lg.at.push(l.at_ms);
                lg.level.push(l.level.clone());
                lg.message.push(l.message.clone());
            }
            if w.release {
                released.push(id.as_str());
            }
            if w.answers_every_request {
                last_writes.push(id.as_str());
            }
        }
        let (link_runs, link_hashes) = links.into_iter().unzip();
        RowCols {
            ev,
            hashes: payloads.keys().copied().collect(),
            sizes: payloads.values().map(|(size, _)| *size).collect(),
            bodies: payloads.values().map(|(_, body)| *body).collect(),
            link_runs,
            link_hashes,
            st,
            lg,
            rq,
            released,
            last_writes,
        }
    }

    fn events(&self) -> [&(dyn ToSql + Sync); 7] {
        let e = &self.ev;
        [&e.run, &e.seq, &e.at, &e.kind, &e.schema, &e.step, &e.body]
    }

    fn payloads(&self) -> [&(dyn ToSql + Sync); 3] {
        [&self.hashes, &self.sizes, &self.bodies]
    }

    fn links(&self) -> [&(dyn ToSql + Sync); 2] {
        [&self.link_runs, &self.link_hashes]
    }

    fn steps(&self) -> [&(dyn ToSql + Sync); 14] {
        let s = &self.st;
        [
            &s.run,
            &s.step,
            &s.position,
            &s.kind,
            &s.status,
            &s.attempts,
            &s.not_before,
            &s.started,
            &s.finished,
            &s.busy,
            &s.error_class,
            &s.error_message,
            &s.output,
            &s.skip,
        ]
    }

    fn logs(&self) -> [&(dyn ToSql + Sync); 6] {
        let l = &self.lg;
        [&l.run, &l.step, &l.attempt, &l.at, &l.level, &l.message]
    }

    fn answers(&self) -> [&(dyn ToSql + Sync); 7] {
        let q = &self.rq;
        [&q.id, &q.state, &q.code, &q.message, &q.seq, &q.at, &q.run]
    }

    /// Every row statement's parameters, in `GROUP_ALL`'s order (after the fence's).
    fn all(&self) -> impl Iterator<Item = &(dyn ToSql + Sync)> {
        let (e, p, l, s, g, a) =
            (self.events(), self.payloads(), self.links(), self.steps(), self.logs(), self.answers());
        e.into_iter().chain(p).chain(l).chain(s).chain(g).chain(a)
    }
}

/// A statement for some rows, sent only if there are any (an empty array would still cost the
/// server a statement).
async fn some_rows(
    client: &Conn,
    stmt: &tokio_postgres::Statement,
    empty: bool,
    params: &[&(dyn ToSql + Sync)],
) -> Result<u64, tokio_postgres::Error> {
    match empty {
        true => Ok(0),
        false => client.execute(stmt, params).await,
    }
}

/// The journal and projection rows of the writes that passed their fence, as arrays, one
/// statement each (the careful path).
async fn write_rows(client: &Conn, prepared: &RowStatements, writes: &[&RunWrite]) -> Result<(), Error> {
    let c = RowCols::of(writes);
    let released: [&(dyn ToSql + Sync); 1] = [&c.released];
    let (ev, pl, ln, st, lg, rq) = (c.events(), c.payloads(), c.links(), c.steps(), c.logs(), c.answers());
    let events = some_rows(client, &prepared.insert_events, c.ev.run.is_empty(), &ev);
    let payload_rows = some_rows(client, &prepared.insert_payloads, c.hashes.is_empty(), &pl);
    let link_rows = some_rows(client, &prepared.insert_links, c.link_runs.is_empty(), &ln);
    let step_rows = some_rows(client, &prepared.upsert_steps, c.st.run.is_empty(), &st);
    let log_rows = some_rows(client, &prepared.insert_logs, c.lg.run.is_empty(), &lg);
    let request_rows = some_rows(client, &prepared.answer_requests, c.rq.id.is_empty(), &rq);
    let wake_rows = some_rows(client, &prepared.wake_released, c.released.is_empty(), &released);
    // In this order: a request answered here no longer wakes its run.
    let (a, b, d, e, f, g, h) =
        tokio::join!(biased; events, payload_rows, link_rows, step_rows, log_rows, request_rows, wake_rows);
    for r in [a, b, d, e, f, h] {
        r.map_err(pg)?;
    }
    // Only the run's one decider answers its requests (the fence above): an answer that finds
    // its request already answered means the store was written behind our back.
    if g.map_err(pg)? != c.rq.id.len() as u64 {
        // Answered by someone else meanwhile: the write lost a race, like a failed fence.
        let run_id = writes.iter().find(|w| !w.requests.is_empty()).map(|w| w.run.id.clone()).unwrap_or_default();
        return Err(Error::Conflict { run_id, expected: 0 });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{GROUP_ALL, highest_parameter, in_order, renumbered};
    use std::sync::Mutex;

    #[test]
    fn parameters_are_renumbered_past_those_taken() {
        assert_eq!(
            renumbered("a = $1 AND b = ANY($12::TEXT[]) OR c = $2", 19),
            "a = $20 AND b = ANY($31::TEXT[]) OR c = $21"
        );
        assert_eq!(renumbered("no parameters", 5), "no parameters");
        assert_eq!(highest_parameter("x = $3, y = $12, z = $7"), 12);
        assert_eq!(highest_parameter("none"), 0);
        // The fence's 19, the rows' 39 (events 7, payloads 3, links 2, steps 14, logs 6,
        // answers 7), then the two counts; each number once per use, none skipped.
        assert_eq!(highest_parameter(&GROUP_ALL), 19 + 39 + 2);
        for n in 1..=60 {
            let p = format!("${n}");
            assert!(
                GROUP_ALL
                    .match_indices(&p)
                    .any(|(at, _)| !GROUP_ALL[at + p.len()..].starts_with(|c: char| c.is_ascii_digit())),
                "{p} unused"
            );
        }
    }

    #[tokio::test]
    async fn in_order_polls_each_future_first_in_the_order_given_and_keeps_their_outputs() {
        let first_polls = Mutex::new(Vec::new());
        let futures: Vec<_> = (0..100)
            .map(|i| {
                let first_polls = &first_polls;
                async move {
                    first_polls.lock().expect("lock").push(i);
                    // Not ready at the first poll, as a request awaiting its answer.
                    tokio::task::yield_now().await;
                    i * 2
                }
            })
            .collect();
        let outputs = in_order(futures).await;
        assert_eq!(outputs, (0..100).map(|i| i * 2).collect::<Vec<_>>());
        assert_eq!(*first_polls.lock().expect("lock"), (0..100).collect::<Vec<_>>());
    }
}
