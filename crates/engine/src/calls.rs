//! Journaled calls inside an attempt.
//!
//! An attempt may make several outside calls (an `http` step's requests; later, the model turns
//! and tool calls of an agent loop). Each goes through the effect log as `run/step/call-N` with a
//! hash of its request (secrets redacted), and its result is committed before the next call
//! starts. When the attempt runs again (a retry, or a resume after a crash), calls already
//! recorded as successful return their results in order without being sent again; a call whose
//! request differs from the one recorded at the same position is a divergence, reported with
//! both hashes (code `call_divergence`), never silently sent again.

use crate::secrets::Resolved;
use cairn_core::RunId;
use cairn_core::event::{ErrorClass, Failure};
use cairn_core::payload::Payload;
use cairn_store::{CallCost, CallRow, Limit, Overspend, Reservation};
use serde_json::Value;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tracing::Instrument;

/// The failure code of a call whose request differs from the one recorded at its position.
pub const DIVERGENCE: &str = "call_divergence";

type Recording<'a> = Pin<Box<dyn Future<Output = Result<Option<Recorded>, cairn_store::Error>> + Send + 'a>>;

/// Where calls are recorded (the store's effect log), behind a trait object so that attempts do
/// not depend on the store's type.
/// Recording answers `Some(call)` when another attempt recorded a success at that position
/// first (an attempt that lost its lease and ran on): that call stands, not this one.
pub(crate) trait CallSink: Send + Sync {
    fn record(&self, run: &RunId, call: CallRow, result: Option<Payload>) -> Recording<'_>;
    /// Reserves a budgeted call's worst case (see `EffectLog::reserve_call`).
    fn reserve(&self, run: &RunId, call: CallRow, limits: Vec<Limit>) -> Reserving<'_>;
    /// The response cache across runs (see `EffectLog::cached_answer`).
    fn cached(&self, key: String) -> Pin<Box<dyn Future<Output = Option<Value>> + Send + '_>>;
    fn cache(&self, key: String, answer: Value, expires_at_ms: i64) -> Pin<Box<dyn Future<Output = ()> + Send + '_>>;
    /// External workers' tasks (see `cairn_store::Tasks`), for external kinds.
    fn tasks(&self) -> &dyn TaskSink;
}

type Answer<'a, T> = Pin<Box<dyn Future<Output = Result<T, cairn_store::Error>> + Send + 'a>>;

/// The store's task queue, behind a trait object (see `cairn_store::Tasks`).
pub(crate) trait TaskSink: Send + Sync {
    fn enqueue(&self, task: cairn_store::NewTask) -> Answer<'_, ()>;
    fn task(&self, token: String) -> Answer<'_, Option<cairn_store::TaskRow>>;
    fn expire(&self, token: String, now_ms: i64) -> Answer<'_, bool>;
    fn withdraw(&self, token: String, attempt: u32) -> Answer<'_, bool>;
    fn adopt(&self, token: String, attempt: u32) -> Answer<'_, bool>;
    fn latest(&self, run_id: String, step: String) -> Answer<'_, Option<cairn_store::TaskRow>>;
    /// Rung when work may have changed in another process (PostgreSQL's NOTIFY), if the store
    /// can tell.
    fn wake(&self) -> Option<Arc<tokio::sync::Notify>>;
}

impl<S: cairn_store::Store> TaskSink for StoreSink<S> {
    fn enqueue(&self, task: cairn_store::NewTask) -> Answer<'_, ()> {
        Box::pin(self.0.enqueue_task(task))
    }

    fn task(&self, token: String) -> Answer<'_, Option<cairn_store::TaskRow>> {
        Box::pin(async move { self.0.task(&token).await })
    }

    fn expire(&self, token: String, now_ms: i64) -> Answer<'_, bool> {
        Box::pin(async move { self.0.expire_task(&token, now_ms).await })
    }

    fn withdraw(&self, token: String, attempt: u32) -> Answer<'_, bool> {
        Box::pin(async move { self.0.withdraw_task(&token, attempt).await })
    }

    fn adopt(&self, token: String, attempt: u32) -> Answer<'_, bool> {
        Box::pin(async move { self.0.adopt_task(&token, attempt).await })
    }

    fn wake(&self) -> Option<Arc<tokio::sync::Notify>> {
        self.0.wake_signal()
    }

    fn latest(&self, run_id: String, step: String) -> Answer<'_, Option<cairn_store::TaskRow>> {
        Box::pin(async move { self.0.latest_task(&run_id, &step).await })
    }
}

type Reserving<'a> = Pin<Box<dyn Future<Output = Result<Option<Overspend>, cairn_store::Error>> + Send + 'a>>;

pub(crate) struct StoreSink<S>(pub Arc<S>);

impl<S: cairn_store::Store> CallSink for StoreSink<S> {
    fn record(&self, run: &RunId, call: CallRow, result: Option<Payload>) -> Recording<'_> {
        let run = run.clone();
        Box::pin(async move {
            let (step, n) = (call.step_id.clone(), call.n);
            if self.0.record_call(&run, call, result).await? {
                return Ok(None);
            }
            Ok(recorded(&*self.0, &run, &step).await?.into_iter().find(|r| r.n == n))
        })
    }

    fn reserve(&self, run: &RunId, call: CallRow, limits: Vec<Limit>) -> Reserving<'_> {
        let run = run.clone();
        Box::pin(async move { self.0.reserve_call(&run, call, limits).await })
    }

    fn cached(&self, key: String) -> Pin<Box<dyn Future<Output = Option<Value>> + Send + '_>> {
        // A cache that cannot be read is a miss: the model is asked.
        Box::pin(async move { self.0.cached_answer(&key, crate::now_ms()).await.ok().flatten() })
    }

    fn cache(&self, key: String, answer: Value, expires_at_ms: i64) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(async move {
            if let Err(e) = self.0.cache_answer(&key, &answer, crate::now_ms(), expires_at_ms).await {
                crate::say_limited!("response-cache", "[engine] cannot keep an answer in the response cache: {e}");
            }
        })
    }

    fn tasks(&self) -> &dyn TaskSink {
        self
    }
}

/// A model call's accounting: which model is asked and the most the call may cost. Its worst
/// case is reserved against the attempt's budgets before it is sent; its usage and cost (the
/// `usage` and `cost_usd` of its result) are recorded with the result.
#[derive(Clone, Debug)]
pub struct Meter {
    pub model: String,
    pub worst: Reservation,
}

/// How one of [`CallLog::calls_together`]'s calls is made: given its idempotency key.
pub type CallFn<'f> =
    Box<dyn FnOnce(String) -> Pin<Box<dyn Future<Output = Result<Value, Failure>> + Send + 'f>> + Send + 'f>;

/// A call's position: already settled by the record, or due.
enum Position {
    Recorded(Result<Value, Failure>),
    Due(Due),
}

/// A call to make at position `n`.
struct Due {
    n: u32,
    request_hash: String,
    key: String,
    /// The tool or model it goes to (a metrics label).
    name: String,
    /// The request as sent, secrets redacted (for a trace span).
    #[cfg(feature = "otel")]
    request: Value,
}

/// A call recorded by an earlier attempt of the same step.
#[derive(Clone, Debug)]
pub(crate) struct Recorded {
    pub n: u32,
    /// The attempt that made it; 0 for a call copied from a forked run.
    pub attempt: u32,
    /// `llm`, `tool`, `context`, `http`, …
    pub kind: String,
    pub request_hash: String,
    pub result: Value,
}

/// The calls of one attempt: what earlier attempts recorded, and where new ones go.
pub(crate) struct CallLog {
    pub run: RunId,
    pub step: String,
    pub attempt: u32,
    pub recorded: Vec<Recorded>,
    pub sink: Arc<dyn CallSink>,
    /// Test hook: after the call at this position is recorded, hold (so a test can SIGKILL).
    pub hold_after: Option<u32>,
    pub shutdown: watch::Receiver<bool>,
    /// The budgets metered calls must fit (the run's and the step's, as in force now).
    pub budgets: Vec<Limit>,
    /// Whether the last call came back from the record instead of being made.
    pub last_replayed: bool,
    /// Where streaming calls' tokens go (the engine's notices), if anyone may watch.
    pub deltas: Option<tokio::sync::mpsc::UnboundedSender<crate::Notice>>,
    next: u32,
}

/// The tokens of the next call, for watchers, as it streams.
#[derive(Clone, Debug)]
pub struct Tokens {
    tx: tokio::sync::mpsc::UnboundedSender<crate::Notice>,
    run_id: RunId,
    step: String,
    attempt: u32,
    call: u32,
}

impl Tokens {
    /// The next tokens of the answer.
    pub fn send(&self, text: &str) {
        self.notice(Some(text.to_string()));
    }

    /// The tokens sent so far are void: the call failed before it ended.
    pub fn void(&self) {
        self.notice(None);
    }

    fn notice(&self, text: Option<String>) {
        let delta = crate::Delta {
            run_id: self.run_id.clone(),
            step: self.step.clone(),
            attempt: self.attempt,
            call: self.call,
            text,
        };
        let _ = self.tx.send(crate::Notice::Delta(delta));
    }
}

impl CallLog {
    pub fn new(
        run: RunId,
        step: String,
        attempt: u32,
        recorded: Vec<Recorded>,
        sink: Arc<dyn CallSink>,
        shutdown: watch::Receiver<bool>,
    ) -> CallLog {
        CallLog {
            run,
            step,
            attempt,
            recorded,
            sink,
            hold_after: None,
            shutdown,
            budgets: Vec::new(),
            last_replayed: false,
            deltas: None,
            next: 0,
        }
    }

    /// The position the next call will take.
    pub fn next_position(&self) -> u32 {
        self.next + 1
    }

    /// Uses up the next position without a call.
    pub fn skip(&mut self) {
        self.next += 1;
    }

    /// Where the next call's tokens go while it streams, if anyone may watch.
    pub fn tokens(&self) -> Option<Tokens> {
        Some(Tokens {
            tx: self.deltas.clone()?,
            run_id: self.run.clone(),
            step: self.step.clone(),
            attempt: self.attempt,
            call: self.next + 1,
        })
    }

    /// Makes (or replays) the next call: `send` gets the call's idempotency key. A metered call
    /// is reserved against the budgets first, and not sent if one would be crossed.
    #[allow(clippy::too_many_arguments)]
    pub async fn call<Fut>(
        &mut self,
        kind: &str,
        request: &Value,
        meter: Option<&Meter>,
        secrets: &Resolved,
        logs: &mut Vec<String>,
        send: impl FnOnce(String) -> Fut,
    ) -> Result<Value, Failure>
    where
        Fut: Future<Output = Result<Value, Failure>>,
    {
        self.last_replayed = false;
        let due = match self.position(kind, request, secrets, logs) {
            Position::Recorded(result) => return result,
            Position::Due(due) => due,
        };
        let reserved = match meter {
            Some(m) if !self.budgets.is_empty() => {
                self.reserve(due.n, kind, &due.request_hash, m).await?;
                logs.push(format!(
                    "call {} ({kind}): reserved up to ${:.6} / {} tokens for model {}",
                    due.n, m.worst.usd, m.worst.tokens, m.model
                ));
                Some(m.worst)
            }
            _ => None,
        };
        let started = Instant::now();
        let span = tracing::info_span!("call", step = %self.step, n = due.n, kind);
        let result = send(due.key.clone()).instrument(span).await;
        let duration_ms = started.elapsed().as_millis() as u64;
        self.settle(kind, due, result, duration_ms, meter, reserved, secrets, logs).await
    }

    /// Makes (or replays) the next calls at once: each slot takes the next position in order (an
    /// empty slot uses its position up without a call). The calls not yet recorded are sent
    /// together; their results are recorded in position order once all have answered, so an
    /// attempt that dies among them makes again only those not recorded. For calls that may run
    /// side by side (reads); not for metered calls.
    pub async fn calls_together<'f>(
        &mut self,
        kind: &str,
        slots: Vec<Option<(Value, CallFn<'f>)>>,
        secrets: &Resolved,
        logs: &mut Vec<String>,
    ) -> Vec<Option<Result<Value, Failure>>> {
        self.last_replayed = false;
        let mut out: Vec<Option<Result<Value, Failure>>> = Vec::with_capacity(slots.len());
        let mut due = Vec::new();
        let mut sends = Vec::new();
        for (i, slot) in slots.into_iter().enumerate() {
            let Some((request, send)) = slot else {
                self.skip();
                out.push(None);
                continue;
            };
            match self.position(kind, &request, secrets, logs) {
                Position::Recorded(result) => out.push(Some(result)),
                Position::Due(d) => {
                    out.push(None);
                    let key = d.key.clone();
                    due.push((i, d));
                    sends.push(async move {
                        let started = Instant::now();
                        let result = send(key).await;
                        (result, started.elapsed().as_millis() as u64)
                    });
                }
            }
        }
        let answered = futures_util::future::join_all(sends).await;
        for ((i, d), (result, duration_ms)) in due.into_iter().zip(answered) {
            out[i] = Some(self.settle(kind, d, result, duration_ms, None, None, secrets, logs).await);
        }
        out
    }

    /// Takes the next position for a call: its recorded result (or the divergence), or what is
    /// needed to make it.
    fn position(&mut self, kind: &str, request: &Value, secrets: &Resolved, logs: &mut Vec<String>) -> Position {
        self.next += 1;
        let n = self.next;
        let request_hash = Payload::of(&secrets.redact_value(request.clone())).reference.hash;
        let key = CallRow::key(self.run.as_str(), &self.step, n);
        let Some(done) = self.recorded.iter().find(|r| r.n == n) else {
            // What metrics call it: the tool, or the model alias; else the kind (bounded).
            let name = ["tool", "model"]
                .iter()
                .find_map(|k| request.get(*k).and_then(Value::as_str))
                .unwrap_or(kind)
                .chars()
                .take(64)
                .collect();
            return Position::Due(Due {
                n,
                request_hash,
                key,
                name,
                #[cfg(feature = "otel")]
                request: secrets.redact_value(request.clone()),
            });
        };
        // Attempt 0: copied from the run this one forked from (`cairn rerun --turn`), where it was
        // asked of the model or tool the operator chose to keep; it stands even if asked
        // differently here (another model, say).
        // Only a model call may differ (the fork changed the model); anything else that differs
        // means the fork went another way, and is a divergence.
        let same = done.request_hash == request_hash;
        if done.attempt == 0 && done.kind == kind && (same || kind == "llm") {
            let same = if same { "" } else { " (asked of another model there)" };
            logs.push(format!("call {n} ({kind}): reused from the run this one forked from{same}; not sent"));
            self.last_replayed = true;
            return Position::Recorded(Ok(done.result.clone()));
        }
        if done.request_hash != request_hash {
            let message = format!(
                "call {n} of step '{}' ({kind}) asks something else than the call recorded at that position \
                 (request hash {} now, {} recorded): the step's input or code changed since; it is not sent \
                 again. Fork the run from this step to start its calls afresh",
                self.step,
                short(&request_hash),
                short(&done.request_hash)
            );
            let failure = Failure { code: Some(DIVERGENCE.into()), ..Failure::new(ErrorClass::Permanent, message) };
            return Position::Recorded(Err(failure));
        }
        logs.push(format!("call {n} ({kind}, {key}): returned the recorded result; not sent again"));
        self.last_replayed = true;
        Position::Recorded(Ok(done.result.clone()))
    }

    /// Records a call's result (redacted of secrets) before the next call may start.
    #[allow(clippy::too_many_arguments)]
    async fn settle(
        &mut self,
        kind: &str,
        due: Due,
        result: Result<Value, Failure>,
        duration_ms: u64,
        meter: Option<&Meter>,
        reserved: Option<Reservation>,
        secrets: &Resolved,
        logs: &mut Vec<String>,
    ) -> Result<Value, Failure> {
        #[cfg(feature = "otel")]
        let sent = due.request.clone();
        let Due { n, request_hash, key, name, .. } = due;
        // What is kept never holds a secret's value.
        let result = match result {
            Ok(value) => Ok(secrets.redact_value(value)),
            Err(failure) => Err(Failure { message: secrets.redact(&failure.message), ..failure }),
        };
        let payload = result.as_ref().ok().map(Payload::of);
        let row = CallRow {
            step_id: self.step.clone(),
            n,
            kind: kind.to_string(),
            request_hash: request_hash.clone(),
            outcome: if result.is_ok() { "ok" } else { "failed" }.into(),
            result_hash: payload.as_ref().map(|p| p.reference.hash.clone()),
            error: result.as_ref().err().map(ToString::to_string),
            attempt: self.attempt,
            duration_ms,
            at_ms: crate::now_ms(),
            // Settles the reservation: what the call cost (nothing, if it failed).
            cost: meter.map(|m| priced(m, result.as_ref().ok())),
            reserved,
        };
        let row_cost = row.cost.clone();
        if let Some(first) = self.keep(row, payload).await? {
            // Another attempt of this step recorded this call first: its result stands (and was
            // paid for there).
            logs.push(format!("call {n} ({kind}, {key}): another attempt recorded it first; its result stands"));
            self.last_replayed = true;
            if first.request_hash != request_hash {
                let message = format!(
                    "call {n} of step '{}' ({kind}) was recorded by another attempt with another request (hash {} \
                     there, {} here)",
                    self.step,
                    short(&first.request_hash),
                    short(&request_hash)
                );
                return Err(Failure { code: Some(DIVERGENCE.into()), ..Failure::new(ErrorClass::Permanent, message) });
            }
            return Ok(first.result);
        }
        crate::metrics::call(kind, &name, result.is_ok(), duration_ms, row_cost.as_ref());
        #[cfg(feature = "otel")]
        crate::otel::call(crate::otel::CallFacts {
            run: self.run.as_str(),
            step: &self.step,
            attempt: self.attempt,
            key: &key,
            kind,
            name: &name,
            request: &sent,
            result: result.as_ref().map_err(|f| f.message.as_str()),
            duration_ms,
            at_ms: crate::now_ms(),
        });
        tracing::info!(
            n,
            kind,
            name = %name,
            outcome = if result.is_ok() { "ok" } else { "failed" },
            duration_ms,
            "call finished"
        );
        logs.push(format!(
            "call {n} ({kind}, {key}): {} in {duration_ms} ms",
            if result.is_ok() { "succeeded" } else { "failed" }
        ));
        if self.hold_after == Some(n) {
            crate::say!("[debug] holding after call {n} of {}", self.step);
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
        result
    }

    /// Reserves call `n`'s worst case against the budgets, or says which budget it would cross.
    async fn reserve(&self, n: u32, kind: &str, request_hash: &str, meter: &Meter) -> Result<(), Failure> {
        let row = CallRow {
            step_id: self.step.clone(),
            n,
            kind: kind.to_string(),
            request_hash: request_hash.to_string(),
            outcome: "reserved".into(),
            result_hash: None,
            error: None,
            attempt: self.attempt,
            duration_ms: 0,
            at_ms: crate::now_ms(),
            cost: None,
            reserved: Some(meter.worst),
        };
        let over = self.sink.reserve(&self.run, row, self.budgets.clone()).await.map_err(|e| {
            Failure::new(ErrorClass::Transient, format!("cannot reserve call {n} against the budget yet: {e}"))
        })?;
        let Some(over) = over else { return Ok(()) };
        let (scope, code) = match &over.limit.step {
            Some(step) => (format!("step '{step}'"), cairn_core::budget::STEP_BUDGET),
            None => ("the run".to_string(), cairn_core::budget::RUN_BUDGET),
        };
        let limit = match (over.limit.max_cost_usd, over.limit.max_tokens) {
            (Some(usd), Some(tokens)) => format!("${usd} / {tokens} tokens"),
            (Some(usd), None) => format!("${usd}"),
            (None, Some(tokens)) => format!("{tokens} tokens"),
            (None, None) => "none".into(),
        };
        let message = format!(
            "the budget of {scope} is {limit}; ${:.6} and {} tokens are spent or held, and call {n} to model {} may \
             cost up to ${:.6} / {} tokens, so it was not sent",
            over.spent_usd, over.spent_tokens, meter.model, over.asked.usd, over.asked.tokens
        );
        Err(Failure { code: Some(code.into()), ..Failure::new(ErrorClass::BudgetExceeded, message) })
    }

    /// Records the call before the next one may start. While the store cannot take it (disk
    /// full, server away) keep trying; if it cannot be kept, the attempt fails (transient): going
    /// on would make a call that a later attempt could repeat.
    async fn keep(&self, row: CallRow, payload: Option<Payload>) -> Result<Option<Recorded>, Failure> {
        let mut backoff = Duration::from_millis(50);
        loop {
            match self.sink.record(&self.run, row.clone(), payload.clone()).await {
                Ok(first) => return Ok(first),
                Err(e) if e.is_transient() && !*self.shutdown.borrow() => {
                    crate::say_limited!(
                        "call-log",
                        "[engine] {}: cannot record call {} yet ({e}); retrying",
                        self.step,
                        row.n
                    );
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
                Err(e) => {
                    return Err(Failure::new(
                        ErrorClass::Transient,
                        format!("call {} was made but its result could not be recorded: {e}", row.n),
                    ));
                }
            }
        }
    }
}

/// What a metered call cost, from its result's `usage` and `cost_usd` (nothing when it failed).
fn priced(meter: &Meter, result: Option<&Value>) -> CallCost {
    let tokens = |k: &str| result.and_then(|v| v.pointer(&format!("/usage/{k}"))).and_then(Value::as_u64).unwrap_or(0);
    CallCost {
        model: meter.model.clone(),
        tokens_in: tokens("input_tokens"),
        tokens_out: tokens("output_tokens"),
        cost_usd: result.and_then(|v| v.get("cost_usd")).and_then(Value::as_f64).unwrap_or(0.0),
    }
}

/// The calls an earlier attempt of this step recorded as successful, with their results.
pub(crate) async fn recorded<S: cairn_store::Store>(
    store: &S,
    run: &RunId,
    step: &str,
) -> Result<Vec<Recorded>, cairn_store::Error> {
    let mut out = Vec::new();
    for row in store.calls(run, Some(step)).await? {
        let (true, Some(hash)) = (row.outcome == "ok", &row.result_hash) else { continue };
        // A success whose result is gone must not be made again: the read fails the attempt.
        let result = cairn_store::Journal::payload(store, hash).await?.ok_or_else(|| {
            cairn_store::Error::Corrupt(format!(
                "call {} of step '{step}' is recorded but its result {hash} is missing",
                row.n
            ))
        })?;
        out.push(Recorded { n: row.n, attempt: row.attempt, kind: row.kind, request_hash: row.request_hash, result });
    }
    Ok(out)
}

fn short(hash: &str) -> &str {
    hash.get(..12).unwrap_or(hash)
}

/// A call's result in one line: a model's text (or the tools it called), a tool's result, a
/// context selection's counts; cut to `max_chars` characters.
pub fn answer_line(kind: &str, result: &serde_json::Value, max_chars: usize) -> String {
    let line = match kind {
        "llm" => {
            let calls: Vec<&str> =
                result["tool_calls"].as_array().into_iter().flatten().filter_map(|c| c["name"].as_str()).collect();
            let text = result["text"].as_str().unwrap_or_default();
            if calls.is_empty() { text.to_string() } else { format!("{text} → calls {}", calls.join(", ")) }
        }
        "context" => format!(
            "{} of {} candidate(s) selected, {} of {} tokens",
            result["selected"], result["observed"], result["used_tokens"], result["max_tokens"]
        ),
        _ => result.to_string(),
    };
    let line = line.split_whitespace().collect::<Vec<_>>().join(" ");
    if line.chars().count() <= max_chars {
        line
    } else {
        format!("{}…", line.chars().take(max_chars).collect::<String>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_store::{Durability, EffectLog, SqliteStore};
    use serde_json::json;

    fn log(store: &Arc<SqliteStore>, run: &RunId, attempt: u32, recorded: Vec<Recorded>) -> CallLog {
        let (_stop, shutdown) = watch::channel(false);
        CallLog::new(run.clone(), "s".into(), attempt, recorded, Arc::new(StoreSink(store.clone())), shutdown)
    }

    #[tokio::test]
    async fn a_call_another_attempt_recorded_first_returns_that_result_not_this_one() {
        let dir = tempfile::tempdir().expect("dir");
        let store = Arc::new(SqliteStore::open(dir.path().join("c.db"), Durability::Normal).expect("open"));
        let run = RunId::from_parts(1, 1);
        let none = Resolved::none();
        let request = json!({"url": "http://x/"});
        // Attempt 1 (which lost its lease but ran on) records call 1 ...
        let mut first = log(&store, &run, 1, Vec::new());
        let mut logs = Vec::new();
        let got = first.call("http", &request, None, &none, &mut logs, |_| async { Ok(json!("first")) }).await;
        assert_eq!(got, Ok(json!("first")));
        // ... while attempt 2, started before that was recorded, makes the same call: the first
        // success stands, and attempt 2 goes on with it.
        let mut second = log(&store, &run, 2, Vec::new());
        let got = second.call("http", &request, None, &none, &mut logs, |_| async { Ok(json!("second")) }).await;
        assert_eq!(got, Ok(json!("first")), "{logs:?}");
        let calls = store.calls(&run, Some("s")).await.expect("calls");
        assert_eq!(calls.iter().map(|c| (c.n, c.attempt)).collect::<Vec<_>>(), [(1, 1)]);
        // A later attempt that asks something else at that position diverges.
        let mut third = log(&store, &run, 3, Vec::new());
        let other = json!({"url": "http://y/"});
        let got = third.call("http", &other, None, &none, &mut logs, |_| async { Ok(json!("third")) }).await;
        assert_eq!(got.map_err(|f| f.code), Err(Some(DIVERGENCE.to_string())));
    }
}
