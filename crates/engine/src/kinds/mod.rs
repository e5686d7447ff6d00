//! Step kinds: the plugins that run attempts at the edge.
//!
//! A kind is one file here implementing [`Activity`], plus one line in [`builtin`]. It describes
//! itself ([`KindSpec`]: name, summary, default retry and timeout, effect class, role, the JSON
//! Schema of its `with` block) and runs one attempt at a time with an [`Attempt`]: the rendered
//! input (with secret values, in memory only), cancellation, its configuration, a log sink and
//! usage reporting. The engine builds a [`Registry`] at start-up; the core receives the
//! descriptions as data ([`Registry::specs`]) and validates definitions against them.
//!
//! How to add a kind: write `kinds/NAME.rs` with a unit struct implementing `Activity`, add
//! `mod NAME;` and one `.with(NAME::Kind)` line to [`builtin`]. `cairn kinds` lists it, `cairn
//! validate` checks its `with` blocks, and steps can use it.

mod agent;
mod approval;
mod context;
mod echo;
mod external;
mod fail;
mod http;
mod llm;
mod mock_model;
mod noop;
mod sleep;
mod subworkflow;
mod tool;
mod wait;

use crate::calls::CallLog;
pub use crate::calls::Meter;
use crate::secrets::Resolved;
use cairn_core::event::{ErrorClass, Failure};
use cairn_core::kinds::{EffectClass, KindSpec, Kinds};
pub use external::{Kind as External, task_queued, task_settled};
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use tokio::sync::watch;

/// What an attempt returns, boxed so that kinds can live in one registry.
pub type AttemptFuture<'a> = Pin<Box<dyn Future<Output = Result<Value, Failure>> + Send + 'a>>;

/// A step kind's code. Attempts may run more than once (after a crash, or a retry): a kind
/// whose effect class writes gets a stable idempotency key in [`Attempt::idempotency_key`], and
/// the engine returns a logged result instead of running such an attempt again.
pub trait Activity: Send + Sync + 'static {
    /// The kind's description, as the core and `cairn kinds` see it.
    fn spec(&self) -> KindSpec;

    /// The effect class of an attempt with this input; by default the kind's own. A kind whose
    /// effect depends on its input refines it (an `http` GET only reads).
    fn effect(&self, declared: EffectClass, _input: &Value) -> EffectClass {
        declared
    }

    /// Runs one attempt. Timeouts and cancellation of the run drop the returned future; a kind
    /// that holds something outside the future watches [`Attempt::cancelled`].
    fn run<'a>(&'a self, attempt: &'a mut Attempt<'_>) -> AttemptFuture<'a>;
}

/// Tokens and money an attempt used (reported by model kinds).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Usage {
    pub tokens_in: u64,
    pub tokens_out: u64,
    pub cost_usd: f64,
}

impl Usage {
    fn add(&mut self, other: Usage) {
        self.tokens_in += other.tokens_in;
        self.tokens_out += other.tokens_out;
        self.cost_usd += other.cost_usd;
    }
}

/// What one attempt can see and do.
pub struct Attempt<'a> {
    pub run_id: &'a str,
    pub workflow: &'a str,
    /// The step (`STEP.compensate` for its compensation).
    pub step: &'a str,
    pub attempt: u32,
    /// The rendered input with secret values in it: memory only, never journaled or logged.
    pub input: &'a Value,
    /// The values of the secrets in `input`, for kinds that must redact before they shorten
    /// what a service answered (the engine redacts the whole outcome afterwards as well).
    pub secrets: &'a Resolved,
    /// This kind's configuration (`EngineConfig::kind_config`); null when there is none.
    pub config: &'a Value,
    /// Who runs the attempt (the lease owner), for services' logs.
    pub worker: &'a str,
    /// `run/step/call`: the same for every attempt of the step, so the far side can apply a
    /// retried write once (sent as `Idempotency-Key`).
    pub idempotency_key: String,
    cancel: watch::Receiver<bool>,
    logs: Vec<String>,
    usage: Option<Usage>,
    calls: Option<CallLog>,
    /// What people answered about this step's calls that needed approval.
    decisions: Vec<cairn_core::event::CallDecision>,
    /// The tools the run's workflow defines (`tools:`), by name.
    pub workflow_tools: Arc<BTreeMap<String, Value>>,
    /// When the attempt times out (its step's timeout from its start), if it has one.
    pub deadline_ms: Option<i64>,
    /// The input as the journal holds it: secrets as `{{ secrets.X }}` references, never values.
    pub journaled_input: Option<&'a Value>,
    /// The attempt's share of the process's concurrency, while it holds one.
    slot: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl<'a> Attempt<'a> {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        run_id: &'a str,
        workflow: &'a str,
        step: &'a str,
        attempt: u32,
        input: &'a Value,
        secrets: &'a Resolved,
        config: &'a Value,
        worker: &'a str,
        cancel: watch::Receiver<bool>,
        calls: Option<CallLog>,
    ) -> Attempt<'a> {
        Attempt {
            run_id,
            workflow,
            step,
            attempt,
            input,
            secrets,
            config,
            worker,
            idempotency_key: format!("{run_id}/{step}/1"),
            cancel,
            logs: Vec::new(),
            usage: None,
            calls,
            decisions: Vec::new(),
            workflow_tools: Arc::default(),
            deadline_ms: None,
            journaled_input: None,
            slot: None,
        }
    }

    /// Hands the attempt the input as journaled, and its concurrency slot.
    pub(crate) fn with_journal(
        mut self,
        journaled_input: Option<&'a Value>,
        slot: Option<tokio::sync::OwnedSemaphorePermit>,
    ) -> Self {
        self.journaled_input = journaled_input;
        self.slot = slot;
        self
    }

    /// Gives the attempt's concurrency slot back while it only waits (an external kind's task
    /// waiting for a worker), so waiting attempts do not starve the process's other work.
    pub fn release_slot(&mut self) {
        self.slot = None;
    }

    /// What tells the attempt the engine is stopping (see [`Attempt::is_cancelled`]).
    pub(crate) fn stop_signal(&self) -> watch::Receiver<bool> {
        self.cancel.clone()
    }

    /// Hands the attempt its deadline.
    pub(crate) fn with_deadline(mut self, deadline_ms: Option<i64>) -> Self {
        self.deadline_ms = deadline_ms;
        self
    }

    /// The store behind the attempt's calls (none in unit tests).
    pub(crate) fn sink(&self) -> Option<Arc<dyn crate::calls::CallSink>> {
        self.calls.as_ref().map(|c| c.sink.clone())
    }

    /// Hands the attempt what people answered about the step's gated calls.
    pub(crate) fn with_decisions(mut self, decisions: Vec<cairn_core::event::CallDecision>) -> Self {
        self.decisions = decisions;
        self
    }

    /// Hands the attempt the tools its workflow defines.
    pub(crate) fn with_workflow_tools(mut self, tools: Arc<BTreeMap<String, Value>>) -> Self {
        self.workflow_tools = tools;
        self
    }

    /// The position the next call will take (`run/step/call-N`).
    pub fn next_call(&self) -> u32 {
        self.calls.as_ref().map_or(1, |c| c.next_position())
    }

    /// Uses up the next call's position without a call (a rejected tool call), so the calls after
    /// it keep their positions on every attempt.
    pub fn skip_call(&mut self) {
        if let Some(calls) = &mut self.calls {
            calls.skip();
        }
    }

    /// Whether an earlier attempt recorded call `n` (it will come back from the record, unsent).
    pub fn call_recorded(&self, n: u32) -> bool {
        self.calls.as_ref().is_some_and(|c| c.recorded.iter().any(|r| r.n == n))
    }

    /// A person's answer about call `n`, if it was asked about.
    pub fn call_decision(&self, n: u32) -> Option<&cairn_core::event::CallDecision> {
        self.decisions.iter().rev().find(|d| d.call == n)
    }

    /// Makes one outside call through the effect log (see `crate::calls`): `send` gets the
    /// call's idempotency key (`run/step/call-N`) and makes the request. If an earlier attempt of
    /// this step already made this call successfully, its recorded result comes back instead and
    /// `send` is not called; a call whose `request` differs from the recorded one fails with code
    /// `call_divergence`. `request` is what identifies the call (it is hashed with secrets
    /// redacted, never stored).
    pub async fn call<Fut>(
        &mut self,
        kind: &str,
        request: &Value,
        send: impl FnOnce(String) -> Fut,
    ) -> Result<Value, Failure>
    where
        Fut: Future<Output = Result<Value, Failure>>,
    {
        self.metered_call(kind, request, None, send).await
    }

    /// [`Attempt::call`] for a call that costs money (a model call): `meter` names the model and
    /// the most the call may cost. That worst case is reserved against the run's and the step's
    /// budgets before the call is sent (a call that would cross one fails with class
    /// `budget_exceeded`, unsent), and the `usage` and `cost_usd` of its result are recorded with
    /// it, so `cairn cost` and the run's totals count each call once.
    pub async fn metered_call<Fut>(
        &mut self,
        kind: &str,
        request: &Value,
        meter: Option<&Meter>,
        send: impl FnOnce(String) -> Fut,
    ) -> Result<Value, Failure>
    where
        Fut: Future<Output = Result<Value, Failure>>,
    {
        match &mut self.calls {
            Some(log) => log.call(kind, request, meter, self.secrets, &mut self.logs, send).await,
            None => send(self.idempotency_key.clone()).await,
        }
    }

    /// Several calls at once (reads an agent asked for in one turn), each a journaled call as
    /// [`Attempt::call`] makes it: each slot takes the next position in order (`None` uses its
    /// position up without a call, as a rejected call does). Calls not yet recorded are sent
    /// together and recorded in position order when all have answered.
    pub async fn calls_together<'f>(
        &mut self,
        kind: &str,
        slots: Vec<Option<(Value, crate::calls::CallFn<'f>)>>,
    ) -> Vec<Option<Result<Value, Failure>>> {
        match &mut self.calls {
            Some(log) => log.calls_together(kind, slots, self.secrets, &mut self.logs).await,
            None => {
                let mut out = Vec::with_capacity(slots.len());
                for slot in slots {
                    out.push(match slot {
                        Some((_, send)) => Some(send(self.idempotency_key.clone()).await),
                        None => None,
                    });
                }
                out
            }
        }
    }

    /// Where the next call's tokens go as it streams, for watchers of the run. `None` when nobody
    /// can watch, or when the attempt holds a secret's value (a model could echo it before the
    /// answer is redacted).
    pub fn tokens(&self) -> Option<crate::calls::Tokens> {
        if !self.secrets.is_empty() {
            return None;
        }
        self.calls.as_ref()?.tokens()
    }

    /// An answer kept in the response cache across runs under `key`, if one has not expired.
    pub async fn cached_answer(&self, key: &str) -> Option<Value> {
        match &self.calls {
            Some(log) => log.sink.cached(key.to_string()).await,
            None => None,
        }
    }

    /// Keeps an answer in the response cache for `ttl_ms` (best effort: a failure is logged).
    pub async fn cache_answer(&self, key: &str, answer: &Value, ttl_ms: u64) {
        if let Some(log) = &self.calls {
            let expires = crate::now_ms().saturating_add(i64::try_from(ttl_ms).unwrap_or(i64::MAX / 2));
            log.sink.cache(key.to_string(), answer.clone(), expires).await;
        }
    }

    /// Whether a budget applies to this attempt's metered calls (so their worst case is needed).
    pub fn budgeted(&self) -> bool {
        self.calls.as_ref().is_some_and(|c| !c.budgets.is_empty())
    }

    /// Whether the last call came back from the record (made and paid for by an earlier attempt)
    /// instead of being sent.
    pub fn last_call_replayed(&self) -> bool {
        self.calls.as_ref().is_some_and(|c| c.last_replayed)
    }

    /// Keeps a line with the attempt's logs (shown by `cairn logs`, redacted of secrets).
    pub fn log(&mut self, line: impl Into<String>) {
        self.logs.push(line.into());
    }

    /// Adds to what the attempt used.
    pub fn report_usage(&mut self, usage: Usage) {
        self.usage.get_or_insert_with(Usage::default).add(usage);
    }

    /// Whether the engine is stopping (the attempt may be cut off soon).
    pub fn is_cancelled(&self) -> bool {
        *self.cancel.borrow()
    }

    /// Resolves when the engine starts stopping.
    pub async fn cancelled(&mut self) {
        let _ = self.cancel.wait_for(|stop| *stop).await;
    }

    /// The log lines and usage, once the attempt is over.
    pub(crate) fn finish(self) -> (Vec<String>, Option<Usage>) {
        (self.logs, self.usage)
    }
}

/// The kinds this process can run, by name.
#[derive(Clone, Default)]
pub struct Registry {
    kinds: BTreeMap<String, (KindSpec, Arc<dyn Activity>)>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.kinds.keys()).finish()
    }
}

impl Registry {
    /// Adds a kind (replacing one of the same name).
    pub fn with(mut self, kind: impl Activity) -> Registry {
        let spec = kind.spec();
        self.kinds.insert(spec.name.clone(), (spec, Arc::new(kind)));
        self
    }

    pub fn get(&self, name: &str) -> Option<(&KindSpec, &Arc<dyn Activity>)> {
        self.kinds.get(name).map(|(spec, kind)| (spec, kind))
    }

    /// The descriptions, as the core validates against them.
    pub fn specs(&self) -> Kinds {
        Kinds::new(self.kinds.values().map(|(spec, _)| spec.clone()))
    }

    /// The effect class of an attempt of `kind` with this (journaled) input; `None` for a kind
    /// this binary does not have.
    pub fn effect(&self, kind: &str, input: &Value) -> Option<EffectClass> {
        self.get(kind).map(|(spec, activity)| activity.effect(spec.effect, input))
    }

    /// Runs an attempt of `kind`.
    pub(crate) async fn run(&self, kind: &str, attempt: &mut Attempt<'_>) -> Result<Value, Failure> {
        match self.get(kind) {
            Some((_, activity)) => activity.run(attempt).await,
            None => Err(Failure::new(
                ErrorClass::Permanent,
                format!(
                    "step kind '{kind}' is not known to this cairn binary; upgrade cairn or change the step's kind"
                ),
            )),
        }
    }
}

/// The kinds built into this binary: one line each.
pub fn builtin() -> Registry {
    Registry::default()
        .with(noop::Kind)
        .with(echo::Kind)
        .with(sleep::Kind)
        .with(mock_model::Kind)
        .with(llm::Kind { tools: Arc::new(crate::tools::Tools::builtin()) })
        .with(http::Kind)
        .with(approval::Kind)
        .with(fail::Kind)
        .with(subworkflow::Kind)
        .with(wait::Kind)
        .with(tool::Kind { tools: Arc::new(crate::tools::Tools::builtin()) })
        .with(agent::Kind { tools: Arc::new(crate::tools::Tools::builtin()) })
}

/// The built-in kinds, with `tool` and `agent` calling these tools.
pub fn with_tools(tools: Arc<crate::tools::Tools>) -> Registry {
    builtin()
        .with(llm::Kind { tools: tools.clone() })
        .with(tool::Kind { tools: tools.clone() })
        .with(agent::Kind { tools })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_builtin_describes_itself_with_a_schema_the_validator_accepts() {
        let registry = builtin();
        let specs = registry.specs();
        assert_eq!(
            specs.names(),
            [
                "agent",
                "approval",
                "echo",
                "fail",
                "http",
                "llm",
                "mock_model",
                "noop",
                "sleep",
                "subworkflow",
                "tool",
                "wait"
            ]
        );
        for spec in specs.iter() {
            assert!(!spec.summary.is_empty(), "{}", spec.name);
            // The core compiles each schema when it validates a step; a broken one must not ship.
            let def = format!("name: t\nsteps:\n  - {{id: a, kind: {}}}\n", spec.name);
            let result = cairn_core::validate::parse_definition(&def, "t.yaml", &specs);
            if let Err(problems) = result {
                assert!(problems.iter().all(|p| p.code != "bad_kind_schema"), "{}: {problems:?}", spec.name);
            }
        }
    }
}
