//! What the core knows about step kinds: their descriptions, as data.
//!
//! A kind's code lives at the edge (the engine's `kinds` module: one file per kind, one
//! registration line). The engine builds a registry at start-up and hands the core a [`Kinds`]
//! value; validation checks steps against it (name, `with` schema, role) and takes each kind's
//! default retry policy and timeout from it. The core never learns what a kind does.

use crate::retry::RetryPolicy;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;

/// What a kind's call does to the world outside. It decides whether a call gets an effect key
/// (so a repeated attempt does not repeat the effect) and, later, whether it needs approval.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EffectClass {
    /// Computes from its input only.
    Pure,
    /// Reads from outside; repeating it changes nothing.
    Read,
    /// Writes outside, and the far side deduplicates by the idempotency key it receives.
    IdempotentWrite,
    /// Writes outside; repeating it would repeat the write.
    Write,
    /// Writes outside and cannot be undone (money moved, mail sent).
    Irreversible,
}

impl EffectClass {
    pub const ALL: [EffectClass; 5] = [
        EffectClass::Pure,
        EffectClass::Read,
        EffectClass::IdempotentWrite,
        EffectClass::Write,
        EffectClass::Irreversible,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EffectClass::Pure => "pure",
            EffectClass::Read => "read",
            EffectClass::IdempotentWrite => "idempotent_write",
            EffectClass::Write => "write",
            EffectClass::Irreversible => "irreversible",
        }
    }

    /// Whether a call of this class goes through the effect log with a stable key: every class
    /// that writes. Reads and pure computations are simply done again.
    pub fn needs_effect_key(self) -> bool {
        match self {
            EffectClass::Pure | EffectClass::Read => false,
            EffectClass::IdempotentWrite | EffectClass::Write | EffectClass::Irreversible => true,
        }
    }
}

/// How `decide` treats a step of the kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Runs attempts at the edge (the usual case).
    #[default]
    Activity,
    /// A person's decision: the step always has an approval gate, and its output is the
    /// decision (`{decision, by, comment}`). It cannot be a compensation.
    Gate,
    /// A durable wait decided by the core (`with: {duration | until | signal [, timeout]}`):
    /// it holds no worker and no attempt; a timer or a signal ends it.
    Wait,
    /// Starts a child run (`with: {workflow [, version] | file, inputs}`) and waits for it
    /// durably, holding no worker: the child's output is the step's output, its failure the
    /// failure of the step's attempt (so the step's retry policy may start a new child).
    Subworkflow,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Activity => "activity",
            Role::Gate => "gate",
            Role::Wait => "wait",
            Role::Subworkflow => "subworkflow",
        }
    }

    pub fn is_activity(&self) -> bool {
        *self == Role::Activity
    }
}

/// A kind as the core sees it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct KindSpec {
    pub name: String,
    /// One line for `cairn kinds` and error messages.
    pub summary: String,
    /// The retry policy a step of this kind gets unless it (or `defaults`) says otherwise.
    pub retry: RetryPolicy,
    /// Default per-attempt timeout; `None` means no timeout unless the step sets one.
    pub timeout_ms: Option<u64>,
    /// The kind's effect class (a kind may refine it per call, e.g. `http` GET is a read).
    pub effect: EffectClass,
    pub role: Role,
    /// JSON Schema of the step's `with` block; `cairn validate` checks literal values against it
    /// (a value that is a template is checked when it renders, by the kind).
    pub with_schema: Value,
    /// For an external kind (run by workers outside the engine): the queue its tasks wait in.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
}

impl KindSpec {
    /// A kind with the usual defaults: quick retries, a one-minute timeout, a pure activity,
    /// and any `with` accepted. Kinds set what differs.
    pub fn new(name: impl Into<String>, summary: impl Into<String>) -> KindSpec {
        KindSpec {
            name: name.into(),
            summary: summary.into(),
            retry: QUICK,
            timeout_ms: Some(60_000),
            effect: EffectClass::Pure,
            role: Role::Activity,
            with_schema: Value::Bool(true),
            queue: None,
        }
    }

    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    pub fn timeout_ms(mut self, timeout_ms: Option<u64>) -> Self {
        self.timeout_ms = timeout_ms;
        self
    }

    pub fn effect(mut self, effect: EffectClass) -> Self {
        self.effect = effect;
        self
    }

    pub fn role(mut self, role: Role) -> Self {
        self.role = role;
        self
    }

    pub fn with_schema(mut self, schema: Value) -> Self {
        self.with_schema = schema;
        self
    }
}

/// A kind run by workers outside the engine (a Python function, a TypeScript tool): each attempt
/// of its steps waits in `queue` as a task until a worker claims it over HTTP. Declared in a
/// workflow's `kinds:` or in `cairn.toml`'s `[kinds.NAME]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExternalKind {
    pub queue: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// JSON Schema of the step's input (its `with`): literal values are checked by `cairn
    /// validate`, the rendered input before the task is queued.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_schema: Option<Value>,
    /// JSON Schema a worker's output must fit; an output that does not fails the attempt with
    /// class `malformed_output`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_schema: Option<Value>,
    /// What the worker's code does to the world (default `write`: an attempt whose result was
    /// logged is not handed to a worker again).
    pub effect: EffectClass,
    pub retry: RetryPolicy,
    /// Per-attempt timeout, from when the task is queued until a worker settles it.
    pub timeout_ms: Option<u64>,
}

/// An external kind's defaults: retries for remote work, five minutes per attempt, and `write`.
pub const EXTERNAL_TIMEOUT_MS: u64 = 300_000;

impl ExternalKind {
    /// A kind on `queue` with the defaults.
    pub fn new(queue: impl Into<String>) -> ExternalKind {
        ExternalKind {
            queue: queue.into(),
            description: None,
            input_schema: None,
            output_schema: None,
            effect: EffectClass::Write,
            retry: REMOTE,
            timeout_ms: Some(EXTERNAL_TIMEOUT_MS),
        }
    }

    /// The kind as the core validates steps against it.
    pub fn spec(&self, name: &str) -> KindSpec {
        let summary = match &self.description {
            Some(d) => d.clone(),
            None => format!("runs in an external worker (queue `{}`)", self.queue),
        };
        let mut spec = KindSpec::new(name, summary)
            .retry(self.retry)
            .timeout_ms(self.timeout_ms)
            .effect(self.effect)
            .with_schema(self.input_schema.clone().unwrap_or(Value::Bool(true)));
        spec.queue = Some(self.queue.clone());
        spec
    }
}

/// Retries for quick local work: 3 attempts, 100 ms doubling to at most 5 s.
pub const QUICK: RetryPolicy =
    RetryPolicy { max_attempts: 3, initial_delay_ms: 100, multiplier: 2.0, max_delay_ms: 5_000, jitter: 0.2 };

/// Retries for calls to remote services: 5 attempts, 500 ms doubling to at most 30 s.
pub const REMOTE: RetryPolicy =
    RetryPolicy { max_attempts: 5, initial_delay_ms: 500, multiplier: 2.0, max_delay_ms: 30_000, jitter: 0.2 };

/// The kinds a binary can run, by name. Cheap to clone.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Kinds {
    by_name: Arc<BTreeMap<String, KindSpec>>,
}

impl Kinds {
    pub fn new(specs: impl IntoIterator<Item = KindSpec>) -> Kinds {
        Kinds { by_name: Arc::new(specs.into_iter().map(|k| (k.name.clone(), k)).collect()) }
    }

    pub fn lookup(&self, name: &str) -> Option<&KindSpec> {
        self.by_name.get(name)
    }

    /// Names in alphabetical order.
    pub fn names(&self) -> Vec<&str> {
        self.by_name.keys().map(String::as_str).collect()
    }

    pub fn iter(&self) -> impl Iterator<Item = &KindSpec> {
        self.by_name.values()
    }

    /// These kinds and `more` (which replace kinds of the same name).
    pub fn and(&self, more: impl IntoIterator<Item = KindSpec>) -> Kinds {
        let mut by_name = (*self.by_name).clone();
        by_name.extend(more.into_iter().map(|k| (k.name.clone(), k)));
        Kinds { by_name: Arc::new(by_name) }
    }
}

/// Kinds for the core's own tests, shaped like the engine's built-ins.
#[cfg(test)]
pub(crate) fn for_tests() -> Kinds {
    use serde_json::json;
    Kinds::new([
        KindSpec::new("noop", "does nothing"),
        KindSpec::new("echo", "outputs its input"),
        KindSpec::new("fail", "fails"),
        KindSpec::new("sleep", "sleeps").timeout_ms(None),
        KindSpec::new("mock_model", "a stand-in model").retry(REMOTE).timeout_ms(Some(120_000)),
        KindSpec::new("http", "calls a URL")
            .retry(REMOTE)
            .timeout_ms(Some(30_000))
            .effect(EffectClass::Write)
            .with_schema(json!({"type": "object", "required": ["url"], "properties": {"url": {"type": "string"}}})),
        KindSpec::new("approval", "a person decides").role(Role::Gate),
        KindSpec::new("wait", "waits durably").role(Role::Wait).timeout_ms(None),
        KindSpec::new("subworkflow", "runs a child workflow").role(Role::Subworkflow).timeout_ms(None),
    ])
}
