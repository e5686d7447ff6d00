//! `cairn runs show ID --step X` and `cairn runs events ID --payloads`: what the journal says
//! about one step, and the journal itself, with the payloads its events only reference
//! (`{hash, size}`) fetched from the store and shown in place.

use crate::output::timestamp;
use crate::{CliError, CliResult};
use cairn_core::duration::format_ms;
use cairn_core::event::Escalation;
use cairn_core::{Envelope, Event, Failure, PayloadRef, RunId};
use cairn_store::{StepRow, Store};
use serde::Serialize;
use serde_json::{Map, Value};
use std::collections::HashMap;

/// How much of a payload the human view prints before it cuts off (`--full` prints it all).
pub const SHOWN_BYTES: usize = 64 * 1024;

/// Payloads fetched by hash, each once.
pub struct Payloads<'a, S: Store> {
    store: &'a S,
    seen: HashMap<String, Option<Value>>,
}

impl<'a, S: Store> Payloads<'a, S> {
    pub fn new(store: &'a S) -> Self {
        Payloads { store, seen: HashMap::new() }
    }

    async fn value(&mut self, hash: &str) -> CliResult<Option<Value>> {
        if let Some(v) = self.seen.get(hash) {
            return Ok(v.clone());
        }
        let v = self.store.payload(hash).await?;
        self.seen.insert(hash.to_string(), v.clone());
        Ok(v)
    }

    async fn fill(&mut self, shown: &mut Inlined) -> CliResult {
        match self.value(&shown.hash).await? {
            Some(v) => shown.value = Some(v),
            None => shown.missing = true,
        }
        Ok(())
    }

    /// Every payload reference inside `v` (an object that is exactly `{hash, size}`) gets the
    /// payload as `value`, or `missing: true` when the store no longer has it.
    pub async fn inline_all(&mut self, v: &mut Value) -> CliResult {
        let mut hashes = Vec::new();
        collect_refs(v, &mut hashes);
        let mut found = HashMap::new();
        for hash in hashes {
            let value = self.value(&hash).await?;
            found.insert(hash, value);
        }
        insert_values(v, &found);
        Ok(())
    }
}

fn ref_hash(m: &Map<String, Value>) -> Option<&str> {
    let hash = m.get("hash")?.as_str()?;
    let is_ref = m.len() == 2
        && m.get("size").is_some_and(Value::is_u64)
        && hash.len() == 64
        && hash.bytes().all(|b| b.is_ascii_hexdigit());
    is_ref.then_some(hash)
}

fn collect_refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => match ref_hash(m) {
            Some(h) => out.push(h.to_string()),
            None => m.values().for_each(|v| collect_refs(v, out)),
        },
        Value::Array(a) => a.iter().for_each(|v| collect_refs(v, out)),
        _ => {}
    }
}

fn insert_values(v: &mut Value, found: &HashMap<String, Option<Value>>) {
    match v {
        Value::Object(m) => match ref_hash(m).map(str::to_string) {
            Some(h) => match found.get(&h) {
                Some(Some(value)) => {
                    m.insert("value".into(), value.clone());
                }
                _ => {
                    m.insert("missing".into(), Value::Bool(true));
                }
            },
            None => m.values_mut().for_each(|v| insert_values(v, found)),
        },
        Value::Array(a) => a.iter_mut().for_each(|v| insert_values(v, found)),
        _ => {}
    }
}

/// For a one-line view: a payload whose JSON is longer than [`SHOWN_BYTES`] is replaced by a
/// note saying how long it is (`--full` keeps it).
pub fn cut_long_values(v: &mut Value) {
    match v {
        Value::Object(m) if ref_hash(&without_inlined(m)).is_some() => {
            let long = m.get("value").map(|v| v.to_string().len()).filter(|&n| n > SHOWN_BYTES);
            if let Some(n) = long {
                m.remove("value");
                m.insert("cut".into(), Value::String(format!("{} of JSON; --full prints it", bytes(n as u64))));
            }
        }
        Value::Object(m) => m.values_mut().for_each(cut_long_values),
        Value::Array(a) => a.iter_mut().for_each(cut_long_values),
        _ => {}
    }
}

/// A reference as it was before [`Payloads::inline_all`] added to it.
fn without_inlined(m: &Map<String, Value>) -> Map<String, Value> {
    m.iter().filter(|(k, _)| *k == "hash" || *k == "size").map(|(k, v)| (k.clone(), v.clone())).collect()
}

/// A payload reference with the payload itself once fetched.
#[derive(Debug, Clone, Serialize)]
pub struct Inlined {
    pub hash: String,
    pub size: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<Value>,
    /// The store no longer has it (collected, or the journal came from elsewhere).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub missing: bool,
}

impl Inlined {
    fn of(r: &PayloadRef) -> Inlined {
        Inlined { hash: r.hash.clone(), size: r.size, value: None, missing: false }
    }
}

/// The wait a failed attempt was followed by.
#[derive(Debug, Serialize)]
pub struct RetryWait {
    pub next_attempt: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    pub delay_ms: u64,
    pub not_before_ms: i64,
}

#[derive(Debug, Serialize)]
pub struct AttemptView {
    pub number: u32,
    pub started_at_ms: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// `ok`, `failed`, `interrupted`, or `running` while no result is recorded.
    pub outcome: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<Failure>,
    /// The input it ran with; the payload is inlined when it differs from the step's `input`.
    pub input: Inlined,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryWait>,
}

#[derive(Debug, Serialize)]
pub struct WaitView {
    pub started_at_ms: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub until_ms: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signal: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ended_at_ms: Option<i64>,
}

/// A child run a `subworkflow` step's attempt started.
#[derive(Debug, Serialize)]
pub struct ChildRunView {
    pub attempt: u32,
    pub run_id: String,
    pub started_at_ms: i64,
    /// `completed` or `failed`, once it ended.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ended: Option<String>,
}

/// What a `for_each` or `loop` step added to the run, and how it ended.
#[derive(Debug, Serialize)]
pub struct InstancesView {
    /// `for_each` or `loop`.
    pub kind: &'static str,
    /// Items, or iterations begun.
    pub count: u32,
    /// The first and last instance (`fetch[0]`, `fetch[9]`); `runs show RUN --step ID` shows each.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub joined_at_ms: Option<i64>,
    /// How it ended (`3 of 3 item(s) completed`, `` `output.ok` held after iteration 2 ``).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct ApprovalView {
    pub requested_at_ms: i64,
    /// An escalated failure rather than an approval gate.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub escalation: bool,
    pub prompt: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub approvers: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deadline_ms: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decided_at_ms: Option<i64>,
    /// approved | rejected | retry | skip | abort
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decision: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expired_at_ms: Option<i64>,
    /// What was recorded when the deadline passed and the gate kept waiting.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub escalated: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct CompensationView {
    pub attempts: Vec<AttemptView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gave_up: Option<Failure>,
}

/// One step of a run in full.
#[derive(Debug, Serialize)]
pub struct StepView {
    pub run_id: String,
    pub step: String,
    pub kind: String,
    pub state: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ready_at_ms: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at_ms: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at_ms: Option<i64>,
    /// Time spent in attempts, waits between them excluded.
    pub busy_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
    /// The last error (class and message), even if a later attempt succeeded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<Failure>,
    /// A fork took this step's output from that run instead of executing it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reused_from: Option<String>,
    /// The input of the latest attempt.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub input: Option<Inlined>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<Inlined>,
    pub attempts: Vec<AttemptView>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub approvals: Vec<ApprovalView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compensation: Option<CompensationView>,
    /// The step's durable wait (`wait` kind), if it had one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wait: Option<WaitView>,
    /// The instances of a `for_each` or `loop` step.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instances: Option<InstancesView>,
    /// A `subworkflow` step's child runs, one per attempt.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub child_runs: Vec<ChildRunView>,
    /// The `for_each` or `loop` step this instance belongs to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance_of: Option<String>,
    /// Calls the step's attempts (and its compensation's, under `STEP.compensate`) made through
    /// the effect log, in order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub calls: Vec<cairn_store::CallRow>,
    /// What each call answered, in a line (the text view's conversation); `None` for a call
    /// without a result.
    #[serde(skip)]
    pub said: Vec<Option<String>>,
}

/// Attempts (of the step, or of its compensation) as the journal tells them.
#[derive(Default)]
struct Attempts(Vec<AttemptView>);

impl Attempts {
    fn started(&mut self, number: u32, at: i64, input: &PayloadRef) {
        self.0.push(AttemptView {
            number,
            started_at_ms: at,
            duration_ms: None,
            outcome: "running".into(),
            error: None,
            input: Inlined::of(input),
            retry: None,
        });
    }

    fn ended(&mut self, number: u32, duration_ms: u64, failure: Option<&Failure>) {
        if let Some(a) = self.0.iter_mut().rev().find(|a| a.number == number) {
            a.duration_ms = Some(duration_ms);
            a.outcome = match failure {
                None => "ok".into(),
                Some(f) if f.message.contains("interrupted") => "interrupted".into(),
                Some(_) => "failed".into(),
            };
            a.error = failure.cloned();
        }
    }

    fn retry(&mut self, wait: RetryWait) {
        if let Some(a) = self.0.last_mut() {
            a.retry = Some(wait);
        }
    }
}

/// Builds the view of `row`'s step from the run's journal, then fetches its payloads.
pub async fn step_view<S: Store>(store: &S, run: &RunId, row: &StepRow, events: &[Envelope]) -> CliResult<StepView> {
    let name = row.step_id.as_str();
    let mut view = StepView {
        run_id: run.to_string(),
        step: name.to_string(),
        kind: row.kind.clone(),
        state: row.status.clone(),
        ready_at_ms: None,
        started_at_ms: row.started_at_ms,
        finished_at_ms: row.finished_at_ms,
        busy_ms: row.busy_ms,
        skipped: row.skip_reason.clone(),
        last_error: None,
        reused_from: None,
        input: None,
        output: None,
        attempts: Vec::new(),
        approvals: Vec::new(),
        compensation: None,
        wait: None,
        instances: None,
        child_runs: Vec::new(),
        // Written step ids have neither `[` nor `#`: only a run's instances do.
        instance_of: name.split(['[', '#']).next().filter(|of| of.len() < name.len()).map(str::to_string),
        calls: Vec::new(),
        said: Vec::new(),
    };
    let mut attempts = Attempts::default();
    let mut undo = Attempts::default();
    let mut gave_up = None;
    let mut output: Option<PayloadRef> = None;
    for env in events {
        if let Event::PlanRecorded { reused, .. } = &env.event
            && let Some(r) = reused.iter().find(|r| r.step.as_str() == name)
        {
            view.reused_from = Some(r.from_run.clone());
            output = Some(r.output.clone());
        }
        if env.event.step().is_none_or(|s| s.as_str() != name) {
            continue;
        }
        let at = env.at_ms;
        match &env.event {
            Event::StepReady { .. } => view.ready_at_ms = view.ready_at_ms.or(Some(at)),
            Event::WaitStarted { until_ms, signal, .. } => {
                let (until_ms, signal) = (*until_ms, signal.clone());
                view.wait = Some(WaitView { started_at_ms: at, until_ms, signal, ended_at_ms: None });
            }
            Event::WaitEnded { output: out, .. } => {
                if let Some(w) = &mut view.wait {
                    w.ended_at_ms = Some(at);
                }
                output = Some(out.clone());
            }
            Event::StepExpanded { step, count, .. } => {
                let (first, last) = match count {
                    0 => (None, None),
                    n => (Some(format!("{step}[0]")), Some(format!("{step}[{}]", n - 1))),
                };
                let (joined_at_ms, note) = (None, None);
                view.instances =
                    Some(InstancesView { kind: "for_each", count: *count, first, last, joined_at_ms, note });
            }
            Event::LoopIterated { step, iteration } => {
                let v = view.instances.get_or_insert(InstancesView {
                    kind: "loop",
                    count: 0,
                    first: Some(format!("{step}#1")),
                    last: None,
                    joined_at_ms: None,
                    note: None,
                });
                v.count = *iteration;
                v.last = Some(format!("{step}#{iteration}"));
            }
            Event::ChildStarted { attempt, child, input, .. } => {
                attempts.started(*attempt, at, input);
                view.child_runs.push(ChildRunView {
                    attempt: *attempt,
                    run_id: child.clone(),
                    started_at_ms: at,
                    ended: None,
                });
            }
            Event::ChildEnded { attempt, output: out, failure, .. } => {
                let took = view.child_runs.last().map_or(0, |c| (at - c.started_at_ms).max(0) as u64);
                attempts.ended(*attempt, took, failure.as_ref());
                if let Some(c) = view.child_runs.last_mut() {
                    c.ended = Some(if out.is_some() { "completed".into() } else { "failed".into() });
                }
                if out.is_some() {
                    output = out.clone();
                }
            }
            Event::StepJoined { output: out, note, .. } => {
                if let Some(v) = &mut view.instances {
                    v.joined_at_ms = Some(at);
                    v.note = Some(note.clone());
                }
                output = Some(out.clone());
            }
            Event::AttemptStarted { attempt, input, .. } => attempts.started(*attempt, at, input),
            Event::AttemptSucceeded { attempt, output: out, duration_ms, .. } => {
                attempts.ended(*attempt, *duration_ms, None);
                output = Some(out.clone());
            }
            Event::AttemptFailed { attempt, failure, duration_ms, .. } => {
                attempts.ended(*attempt, *duration_ms, Some(failure));
            }
            Event::RetryScheduled { next_attempt, max_attempts, delay_ms, not_before_ms, .. } => {
                attempts.retry(RetryWait {
                    next_attempt: *next_attempt,
                    max_attempts: Some(*max_attempts),
                    delay_ms: *delay_ms,
                    not_before_ms: *not_before_ms,
                });
            }
            Event::ApprovalRequested { prompt, approvers, deadline_ms, escalation, .. } => {
                view.approvals.push(ApprovalView {
                    requested_at_ms: at,
                    escalation: *escalation,
                    prompt: prompt.clone(),
                    approvers: approvers.clone(),
                    deadline_ms: *deadline_ms,
                    decided_at_ms: None,
                    decision: None,
                    by: None,
                    comment: None,
                    expired_at_ms: None,
                    escalated: None,
                });
            }
            Event::ApprovalDecided { approved, by, comment, action, .. } => {
                if let Some(a) = view.approvals.last_mut() {
                    a.decided_at_ms = Some(at);
                    a.decision = Some(
                        match action {
                            Some(Escalation::Retry { .. }) => "retry",
                            Some(Escalation::Skip { .. }) => "skip",
                            Some(Escalation::Abort) => "abort",
                            None if *approved => "approved",
                            None => "rejected",
                        }
                        .into(),
                    );
                    a.by = by.clone();
                    a.comment = comment.clone();
                }
                if let Some(Escalation::Skip { output: out }) = action {
                    output = Some(out.clone());
                }
            }
            Event::ApprovalExpired { .. } => {
                if let Some(a) = view.approvals.last_mut() {
                    a.expired_at_ms = Some(at);
                }
            }
            Event::ApprovalEscalated { note, .. } => {
                if let Some(a) = view.approvals.last_mut() {
                    a.escalated = Some(note.clone());
                }
            }
            Event::CompensationAttemptStarted { attempt, input, .. } => undo.started(*attempt, at, input),
            Event::CompensationAttemptSucceeded { attempt, duration_ms, .. } => {
                undo.ended(*attempt, *duration_ms, None)
            }
            Event::CompensationAttemptFailed { attempt, failure, duration_ms, .. } => {
                undo.ended(*attempt, *duration_ms, Some(failure));
            }
            Event::CompensationRetryScheduled { next_attempt, delay_ms, not_before_ms, .. } => {
                undo.retry(RetryWait {
                    next_attempt: *next_attempt,
                    max_attempts: None,
                    delay_ms: *delay_ms,
                    not_before_ms: *not_before_ms,
                });
            }
            Event::CompensationGaveUp { failure, .. } => gave_up = Some(failure.clone()),
            _ => {}
        }
    }
    view.last_error = match (&row.error_class, &row.error_message) {
        (Some(class), Some(message)) => Some(Failure::new(
            cairn_core::ErrorClass::parse(class).unwrap_or(cairn_core::ErrorClass::Permanent),
            message.clone(),
        )),
        _ => None,
    };
    // The step's output is what the projection says it is (a completed step may have been
    // retried in place since); the journal gives its size.
    let output = match (&row.output_hash, output) {
        (Some(hash), Some(r)) if r.hash == *hash => Some(r),
        (Some(hash), _) => Some(PayloadRef { hash: hash.clone(), size: 0 }),
        (None, _) => None,
    };
    let mut payloads = Payloads::new(store);
    if let Some(r) = output {
        let mut shown = Inlined::of(&r);
        payloads.fill(&mut shown).await?;
        if shown.size == 0
            && let Some(v) = &shown.value
        {
            shown.size = serde_json::to_vec(v).map(|b| b.len() as u64).unwrap_or(0);
        }
        view.output = Some(shown);
    }
    if let Some(last) = attempts.0.last() {
        let mut shown = last.input.clone();
        payloads.fill(&mut shown).await?;
        view.input = Some(shown);
    }
    // An attempt's input is shown when it is not the step's (latest) input; a compensation's
    // always, as it is not the step's input at all.
    let latest = view.input.as_ref().map(|i| i.hash.clone());
    for a in attempts.0.iter_mut().filter(|a| Some(&a.input.hash) != latest.as_ref()) {
        payloads.fill(&mut a.input).await?;
    }
    for a in undo.0.iter_mut() {
        payloads.fill(&mut a.input).await?;
    }
    view.attempts = attempts.0;
    if !undo.0.is_empty() || gave_up.is_some() {
        view.compensation = Some(CompensationView { attempts: undo.0, gave_up });
    }
    view.calls = store.calls(run, Some(name)).await?;
    view.calls.extend(store.calls(run, Some(&format!("{name}.compensate"))).await?);
    for c in &view.calls {
        let result = match (&c.result_hash, c.outcome.as_str()) {
            (Some(hash), "ok") => payloads.value(hash).await?,
            _ => None,
        };
        view.said.push(result.map(|r| cairn_engine::calls::answer_line(&c.kind, &r, 110)));
    }
    Ok(view)
}

/// Pretty JSON of `v`, cut at [`SHOWN_BYTES`] unless `full`.
pub fn pretty(v: &Value, full: bool) -> String {
    let text = serde_json::to_string_pretty(v).unwrap_or_default();
    if full || text.len() <= SHOWN_BYTES {
        return text;
    }
    let mut cut = SHOWN_BYTES;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    // At a line end when one is near, else inside the (long) line.
    let cut = text[..cut].rfind('\n').filter(|&n| cut - n < 4096).unwrap_or(cut);
    format!(
        "{}\n… (cut at {} of {}; --full prints it all, --json gives it whole)",
        &text[..cut],
        bytes(cut as u64),
        bytes(text.len() as u64)
    )
}

fn bytes(n: u64) -> String {
    match n {
        n if n >= 1024 * 1024 => format!("{:.1} MiB", n as f64 / (1024.0 * 1024.0)),
        n if n >= 1024 => format!("{} KiB", n / 1024),
        n => format!("{n} bytes"),
    }
}

fn payload_text(p: &Inlined, full: bool) -> String {
    match (&p.value, p.missing) {
        (Some(v), _) => pretty(v, full),
        (None, true) => format!("(payload {} is no longer in this database)", p.hash),
        (None, false) => format!("(payload {}, {} bytes)", p.hash, p.size),
    }
}

fn attempt_line(a: &AttemptView, input_differs: bool) -> String {
    let mut line = format!("  #{:<3} {}", a.number, timestamp(a.started_at_ms));
    line.push_str(&format!("  {:>7}", a.duration_ms.map(format_ms).unwrap_or_else(|| "-".into())));
    match &a.error {
        Some(f) => line.push_str(&format!("  {}({}): {}", a.outcome, f.class, f.message)),
        None => line.push_str(&format!("  {}", a.outcome)),
    }
    if let Some(r) = &a.retry {
        let of = r.max_attempts.map(|m| format!("/{m}")).unwrap_or_default();
        line.push_str(&format!(
            "; waited {} for attempt {}{of} (due {})",
            format_ms(r.delay_ms),
            r.next_attempt,
            timestamp(r.not_before_ms)
        ));
    }
    if input_differs {
        line.push_str(&format!("; input {}", a.input.hash.get(..12).unwrap_or(&a.input.hash)));
    }
    line
}

/// The human view of a step.
pub fn print_step(v: &StepView, full: bool) {
    crate::out!("run       {}", v.run_id);
    crate::out!("step      {} ({})", v.step, v.kind);
    crate::out!("state     {}", v.state);
    if let Some(at) = v.ready_at_ms {
        crate::out!("ready     {}", timestamp(at));
    }
    if let Some(at) = v.started_at_ms {
        crate::out!("started   {}", timestamp(at));
    }
    if let Some(at) = v.finished_at_ms {
        let took = v.started_at_ms.map(|s| format!("took {}, ", format_ms((at - s).max(0) as u64))).unwrap_or_default();
        crate::out!("finished  {} ({took}busy {})", timestamp(at), format_ms(v.busy_ms));
    }
    if let Some(reason) = &v.skipped {
        crate::out!("skipped   {reason}");
    }
    // A completed step's earlier errors are in its attempts.
    if let Some(e) = v.last_error.as_ref().filter(|_| v.state != "COMPLETED") {
        crate::out!("error     {}: {}", e.class, e.message);
    }
    if let Some(run) = &v.reused_from {
        crate::out!("reused    the output run {run} recorded (not executed here)");
    }
    crate::out!();
    if v.attempts.is_empty() {
        crate::out!("attempts  none");
    } else {
        crate::out!("attempts");
        let latest = v.input.as_ref().map(|i| i.hash.as_str());
        for a in &v.attempts {
            crate::out!("{}", attempt_line(a, Some(a.input.hash.as_str()) != latest));
        }
    }
    for a in &v.approvals {
        crate::out!();
        crate::out!("{}", if a.escalation { "escalation" } else { "approval" });
        let mut asked = format!("  {} asked: {}", timestamp(a.requested_at_ms), a.prompt);
        if !a.approvers.is_empty() {
            asked.push_str(&format!(" (approvers: {})", a.approvers.join(", ")));
        }
        if let Some(d) = a.deadline_ms {
            asked.push_str(&format!(" (deadline {})", timestamp(d)));
        }
        crate::out!("{asked}");
        if let Some(at) = a.expired_at_ms {
            crate::out!(
                "  {} deadline passed{}",
                timestamp(at),
                a.escalated.as_ref().map(|n| format!(": {n}")).unwrap_or_default()
            );
        }
        match (&a.decision, a.decided_at_ms) {
            (Some(d), Some(at)) => crate::out!(
                "  {} {d}{}{}",
                timestamp(at),
                a.by.as_ref().map(|b| format!(" by {b}")).unwrap_or_default(),
                a.comment.as_ref().map(|c| format!(": {c}")).unwrap_or_default()
            ),
            _ => crate::out!("  waiting for a decision"),
        }
    }
    if let Some(w) = &v.wait {
        crate::out!();
        crate::out!("wait");
        let mut line = format!("  {} began", timestamp(w.started_at_ms));
        if let Some(name) = &w.signal {
            line.push_str(&format!(", for signal '{name}'"));
        }
        if let Some(until) = w.until_ms {
            line.push_str(&format!(
                ", {} {}",
                if w.signal.is_some() { "times out at" } else { "until" },
                timestamp(until)
            ));
        }
        crate::out!("{line}");
        match w.ended_at_ms {
            Some(at) => crate::out!("  {} ended", timestamp(at)),
            None if v.state == "WAITING" => crate::out!("  still waiting"),
            None => {}
        }
    }
    if !v.child_runs.is_empty() {
        crate::out!();
        crate::out!("child runs");
        for c in &v.child_runs {
            let how = c.ended.as_deref().unwrap_or("running");
            crate::out!(
                "  #{} {} {} {how} (cairn runs show {})",
                c.attempt,
                timestamp(c.started_at_ms),
                c.run_id,
                c.run_id
            );
        }
    }
    if let Some(of) = &v.instance_of {
        crate::out!();
        crate::out!("instance of step '{of}' (cairn runs show {} --step {of})", v.run_id);
    }
    if let Some(d) = &v.instances {
        crate::out!();
        crate::out!("{}", d.kind);
        let what = if d.kind == "loop" { "iteration(s)" } else { "item(s)" };
        let span = match (&d.first, &d.last) {
            (Some(a), Some(b)) if a != b => format!(": {a} … {b}"),
            (Some(a), _) => format!(": {a}"),
            _ => String::new(),
        };
        crate::out!("  {} {what}{span}", d.count);
        match (d.joined_at_ms, &d.note) {
            (Some(at), Some(note)) => crate::out!("  {} joined: {note}", timestamp(at)),
            _ if v.state == "WAITING" => crate::out!("  still running"),
            _ => {}
        }
    }
    if !v.calls.is_empty() {
        crate::out!();
        crate::out!("calls");
        for (i, c) in v.calls.iter().enumerate() {
            let mut line = format!(
                "  {}#{:<3} {}  {:>7}  {:<6} {}  attempt {}  request {}",
                if c.step_id == v.step { String::new() } else { format!("{} ", c.step_id) },
                c.n,
                timestamp(c.at_ms),
                format_ms(c.duration_ms),
                c.kind,
                c.outcome,
                c.attempt,
                c.request_hash.get(..12).unwrap_or(&c.request_hash)
            );
            if let Some(e) = &c.error {
                line.push_str(&format!(": {e}"));
            }
            crate::out!("{line}");
            if let Some(Some(text)) = v.said.get(i) {
                crate::out!("        {text}");
            }
        }
    }
    if let Some(c) = &v.compensation {
        crate::out!();
        crate::out!("compensation");
        for a in &c.attempts {
            crate::out!("{}", attempt_line(a, false));
        }
        if let Some(f) = &c.gave_up {
            crate::out!("  gave up: {f}");
        }
    }
    if let Some(input) = &v.input {
        crate::out!();
        crate::out!("input{}", if v.attempts.len() > 1 { " (latest attempt)" } else { "" });
        crate::out!("{}", payload_text(input, full));
    }
    for a in v
        .attempts
        .iter()
        .filter(|a| a.input.value.is_some() && Some(&a.input.hash) != v.input.as_ref().map(|i| &i.hash))
    {
        crate::out!();
        crate::out!("input of attempt {}", a.number);
        crate::out!("{}", payload_text(&a.input, full));
    }
    if let Some(output) = &v.output {
        crate::out!();
        crate::out!("output");
        crate::out!("{}", payload_text(output, full));
    }
    if let Some(c) = &v.compensation {
        for a in &c.attempts {
            crate::out!();
            crate::out!("compensation input (attempt {})", a.number);
            crate::out!("{}", payload_text(&a.input, full));
        }
    }
}

/// `cairn runs show ID --step NAME`.
pub async fn show_step<S: Store>(store: &S, id: &RunId, name: &str, json: bool, full: bool) -> CliResult {
    let steps = store.steps(id).await?;
    let row = crate::steps::find(id.as_str(), &steps, name)?;
    let events = store.events(id).await?;
    let view = step_view(store, id, row, &events).await?;
    if json {
        crate::out!("{}", serde_json::to_string_pretty(&view).map_err(|e| CliError::env(e.to_string()))?);
    } else {
        print_step(&view, full);
    }
    Ok(())
}
