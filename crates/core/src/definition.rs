//! The compiled workflow definition: what a run executes. Built from YAML/JSON by
//! [`crate::validate::parse_definition`] (which reports every problem with its location), or by the
//! planner from the catalog. It is stored as a payload and pinned by the run that executes it, so
//! editing a file never changes a run in flight.

use crate::ids::StepId;
use crate::kinds::Role;
use crate::retry::RetryPolicy;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

/// A definition ready to be recorded by a new run: its payload, and the definition as the run's
/// state reads it back from that payload (so a run started from it folds exactly as its replay
/// does). Preparing costs a serialisation, a hash and a parse; a process starting many runs of
/// one workflow prepares it once (see `RunState::add_definition`).
#[derive(Clone, Debug)]
pub struct PreparedDefinition {
    pub payload: crate::payload::Payload,
    pub(crate) value: std::sync::Arc<Value>,
    pub(crate) parsed: std::sync::Arc<Definition>,
}

impl PreparedDefinition {
    pub fn of(definition: &Definition) -> Result<PreparedDefinition, String> {
        let value = serde_json::to_value(definition).map_err(|e| e.to_string())?;
        let payload = crate::payload::Payload::of(&value);
        let parsed = Definition::deserialize(&value).map_err(|e| e.to_string())?;
        Ok(PreparedDefinition { payload, value: std::sync::Arc::new(value), parsed: std::sync::Arc::new(parsed) })
    }
}

/// Version of the definition file format (`cairn: 1` at the top of a file).
pub const FORMAT_VERSION: u32 = 1;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Definition {
    /// File-format version.
    pub format: u32,
    pub name: String,
    /// Definition version chosen by the author (default 1); a run records which one it ran.
    pub version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub inputs: BTreeMap<String, InputSpec>,
    /// File name the CLI writes the run's final output to (`[artifact] PATH`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact: Option<String>,
    /// How long finished runs of this workflow are kept before `cairn gc` deletes them; `None`
    /// means the store's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention_ms: Option<u64>,
    /// What the whole run's model calls may spend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<Budget>,
    /// Tools this workflow defines for its `tool` steps (`tools:`), by name: `http_request`
    /// tools only, which may never reach internal addresses (what a config file may allow, a
    /// workflow may not). Each is the engine's tool configuration as JSON. Shared, so every
    /// attempt can hold it without a copy.
    #[serde(default, skip_serializing_if = "no_tools")]
    pub tools: std::sync::Arc<BTreeMap<String, Value>>,
    /// Kinds this workflow declares as external (`kinds:`): run by workers, by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub kinds: BTreeMap<String, crate::kinds::ExternalKind>,
    pub steps: Vec<Step>,
}

/// `budget:` of a workflow or a step: what its model calls may spend together. Each call reserves
/// its worst case before it is sent, and a call that would cross the limit is not sent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Budget {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_cost_usd: Option<f64>,
    /// Input and output tokens together.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u64>,
    #[serde(default)]
    pub on_exceed: OnExceed,
}

/// What a call that would cross a budget does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum OnExceed {
    /// The step fails with class `budget_exceeded` (default); its `on_failure` applies.
    #[default]
    Fail,
    /// The run waits for a person to raise the budget (or skip the step, or abort).
    Escalate,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
pub struct InputSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Used when the caller does not give the input. An input without a default is required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<Value>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Step {
    pub id: StepId,
    pub kind: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub needs: Vec<StepId>,
    /// A CEL condition over `inputs` and `steps`; false skips the step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<String>,
    /// Activity input; strings are minijinja templates rendered just before the attempt starts.
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub with: Value,
    /// Fully resolved policy (step override, then `defaults`, then the kind's default).
    pub retry: RetryPolicy,
    /// Per-attempt timeout; `None` means the attempt may run as long as it likes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    #[serde(default)]
    pub on_failure: OnFailure,
    #[serde(default)]
    pub trigger: Trigger,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inject: Option<Inject>,
    /// A person must approve before the step runs (kind `approval`, or `requires_approval`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<Approval>,
    /// What undoes this step if the run later fails or is cancelled (a saga's compensation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compensate: Option<Compensate>,
    /// How `decide` treats the step, from its kind's description; absent for plain activities.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
    /// Run the step once per item of this list: a template that renders to a list, or a list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub for_each: Option<ForEach>,
    /// Repeat the step until a condition over an iteration's output holds.
    #[serde(default, rename = "loop", skip_serializing_if = "Option::is_none")]
    pub repeat: Option<Loop>,
    /// Set only on the instances a run adds for a `for_each` item or a `loop` iteration; never
    /// in a definition as written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<Instance>,
    /// What this step's model calls may spend (each instance of a `for_each` or `loop` has its
    /// own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<Budget>,
}

fn no_tools(tools: &std::sync::Arc<BTreeMap<String, Value>>) -> bool {
    tools.is_empty()
}

/// Default cap on the number of items a `for_each` step may run.
pub const DEFAULT_MAX_ITEMS: u32 = 10_000;

/// `for_each`: one instance of the step per item, `ID[0]`, `ID[1]`, …
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ForEach {
    /// A template rendering to a list (`"{{ steps.search.output.urls }}"`), or a literal list.
    pub items: Value,
    /// At most this many items run at once; `None` leaves it to the engine's per-run limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_parallel: Option<u32>,
    /// A longer list fails the step instead of running.
    pub max_items: u32,
}

/// `loop`: instances `ID#1`, `ID#2`, … until `until` holds over an iteration's `output`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Loop {
    /// CEL over `output` (this iteration's), `iteration`, `inputs` and `steps`.
    pub until: String,
    pub max_iterations: u32,
}

/// Which step an instance belongs to and which item or iteration it is.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Instance {
    pub of: StepId,
    /// The item's position (from 0) or the iteration's number (from 1).
    pub index: u32,
}

/// The id of a `for_each` item's instance: `fetch[3]`.
pub fn item_id(step: &StepId, index: u32) -> StepId {
    StepId::new(format!("{step}[{index}]"))
}

/// The id of a `loop` iteration's instance: `review#2`.
pub fn iteration_id(step: &StepId, n: u32) -> StepId {
    StepId::new(format!("{step}#{n}"))
}

impl Step {
    /// The step's role. Definitions pinned before kinds declared roles have none recorded; in
    /// them the one gate kind there was, `approval`, is a gate.
    pub fn role(&self) -> Role {
        self.role.unwrap_or_else(|| legacy_role(&self.kind))
    }
}

/// The role a step of this kind had before kinds declared roles.
pub fn legacy_role(kind: &str) -> Role {
    if kind == "approval" { Role::Gate } else { Role::Activity }
}

/// An activity that undoes a completed step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Compensate {
    pub kind: String,
    /// Templates over the usual variables plus `output` (what the step produced).
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub with: Value,
    pub retry: RetryPolicy,
}

/// What an approval gate asks, of whom, and until when.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Approval {
    /// Shown to the approver; a template over the same variables as `with`.
    pub prompt: String,
    /// Who may decide (token names); empty means any operator.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub approvers: Vec<String>,
    /// How long the request may wait before `on_deadline` applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_ms: Option<u64>,
    #[serde(default)]
    pub on_deadline: OnDeadline,
}

/// What an approval deadline does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum OnDeadline {
    /// Treat it as a rejection: the step fails and its `on_failure` applies (default).
    #[default]
    Reject,
    /// Fail the run at once.
    Fail,
    /// Record the escalation and keep waiting.
    Wait,
}

/// What a step's final failure does to the run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum OnFailure {
    /// Fail the run at once and cancel what has not finished (default).
    #[default]
    Fail,
    /// Mark the step failed, let independent branches finish; the run then ends FAILED with the
    /// partial results recorded.
    Continue,
    /// Ask a person: retry the step, skip it with a supplied output, or abort the run.
    Escalate,
    /// Run this other step instead. It runs only when this one fails for good (it is skipped
    /// when this one succeeds), and the steps that need this one see its result in this one's
    /// place. Written `on_failure: {fallback: STEP}`.
    Fallback(StepId),
}

/// When a step whose `needs` are all settled may run. Skips propagate by default.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    /// Run only if every dependency completed; a skipped or failed dependency skips this step.
    #[default]
    AllSucceeded,
    /// Run unless a dependency failed; skipped dependencies are fine (joins after a branch).
    NoneFailed,
    /// Run once every dependency is settled, whatever happened to it (clean-up, reports).
    AllDone,
}

/// Failure injection for one step (demo and tests).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Inject {
    /// The first N attempts fail with `fail_class`.
    #[serde(default)]
    pub fail_times: u32,
    /// Each attempt fails with this probability, decided by a hash of (run, step, attempt).
    #[serde(default)]
    pub fail_rate: f64,
    #[serde(default = "default_fail_class")]
    pub fail_class: crate::event::ErrorClass,
    /// Extra latency added to every attempt.
    #[serde(default)]
    pub delay_ms: u64,
    /// The attempt never returns on its own (only a timeout ends it).
    #[serde(default)]
    pub hang: bool,
}

impl Default for Inject {
    fn default() -> Self {
        Inject { fail_times: 0, fail_rate: 0.0, fail_class: default_fail_class(), delay_ms: 0, hang: false }
    }
}

fn default_fail_class() -> crate::event::ErrorClass {
    crate::event::ErrorClass::Transient
}

impl Definition {
    pub fn step(&self, id: &str) -> Option<&Step> {
        self.steps.iter().find(|s| s.id.as_str() == id)
    }

    /// How many steps the definition was written with: a run appends its instances after them.
    pub fn written(&self) -> usize {
        self.steps.iter().position(|s| s.instance.is_some()).unwrap_or(self.steps.len())
    }

    /// The instance a run adds to step `parent` (a `for_each` item or a `loop` iteration): the
    /// same step under a new id, run on its own, with no dependencies, condition or gate of its
    /// own (the step had them), and failing into the step rather than the run.
    pub fn instance_of(&self, parent: usize, id: StepId, index: u32) -> Step {
        // Field by field: the step's own `for_each` list may be long, and is not the instance's.
        let p = &self.steps[parent];
        Step {
            id,
            kind: p.kind.clone(),
            needs: Vec::new(),
            when: None,
            with: p.with.clone(),
            retry: p.retry,
            timeout_ms: p.timeout_ms,
            on_failure: OnFailure::Fail,
            trigger: Trigger::AllSucceeded,
            inject: p.inject.clone(),
            approval: None,
            compensate: p.compensate.clone(),
            role: p.role,
            for_each: None,
            repeat: None,
            instance: Some(Instance { of: p.id.clone(), index }),
            budget: p.budget.clone(),
        }
    }

    fn index_of(&self, id: &str) -> Option<usize> {
        self.steps.iter().position(|s| s.id.as_str() == id)
    }

    /// The step that runs in place of step `i` if it fails for good (`on_failure: {fallback}`).
    pub fn fallback_of(&self, i: usize) -> Option<usize> {
        match &self.steps.get(i)?.on_failure {
            OnFailure::Fallback(f) => self.index_of(f.as_str()),
            _ => None,
        }
    }

    /// The step that step `i` stands in for, if `i` is a fallback. Validation allows one.
    pub fn primary_of(&self, i: usize) -> Option<usize> {
        let id = self.steps.get(i)?.id.as_str();
        self.steps.iter().position(|s| matches!(&s.on_failure, OnFailure::Fallback(f) if f.as_str() == id))
    }

    /// Whether step `i` is reached from step `k` by following fallbacks: `i` stands in for `k`,
    /// directly or along a chain.
    pub fn stands_in_for(&self, i: usize, k: usize) -> bool {
        let mut at = k;
        for _ in 0..self.steps.len() {
            match self.fallback_of(at) {
                Some(f) if f == i => return true,
                Some(f) => at = f,
                None => return false,
            }
        }
        false
    }

    /// What step `i` waits for before it is decided: its `needs`, the step it is the fallback
    /// of, and the fallbacks standing in for any of those (followed along chains).
    pub fn effective_needs(&self, i: usize) -> Vec<usize> {
        let Some(step) = self.steps.get(i) else { return Vec::new() };
        let mut out: Vec<usize> = step.needs.iter().filter_map(|n| self.index_of(n.as_str())).collect();
        out.extend(self.primary_of(i));
        let mut k = 0;
        while k < out.len() {
            if let Some(f) = self.fallback_of(out[k])
                && f != i
                && !out.contains(&f)
            {
                out.push(f);
            }
            k += 1;
        }
        out
    }

    /// The steps whose results step `i`'s condition and templates may see: those it needs, the
    /// step it stands in for if it is a fallback, the fallbacks standing in for any of those
    /// (followed along chains), and so on transitively. `decide` shows a fallback only once it
    /// stood in, so this is what can be visible on *some* run; validation refuses only what is
    /// visible on none.
    pub fn visible_to(&self, i: usize) -> Vec<bool> {
        let mut visible = vec![false; self.steps.len()];
        let mut stack = vec![i];
        while let Some(j) = stack.pop() {
            let Some(step) = self.steps.get(j) else { continue };
            let mut deps: Vec<usize> = step.needs.iter().filter_map(|n| self.index_of(n.as_str())).collect();
            deps.extend(self.primary_of(j));
            for k in deps {
                let mut at = Some(k);
                // Bounded: a chain of fallbacks visits each step at most once.
                for _ in 0..self.steps.len() {
                    let Some(c) = at else { break };
                    if c != i && !visible[c] {
                        visible[c] = true;
                        stack.push(c);
                    }
                    at = self.fallback_of(c);
                }
            }
        }
        visible
    }

    /// Applies defaults to the caller's inputs. Refuses inputs the definition does not declare
    /// (a misspelt name would otherwise be ignored and its default used) and required inputs
    /// left out.
    pub fn resolve_inputs(&self, given: &serde_json::Map<String, Value>) -> Result<Value, InputsError> {
        let declared: Vec<&str> = self.inputs.keys().map(String::as_str).collect();
        let unknown: Vec<UnknownInput> = given
            .keys()
            .filter(|name| !self.inputs.contains_key(*name))
            .map(|name| UnknownInput {
                name: name.clone(),
                suggestion: crate::validate::closest(name, declared.iter().copied()).map(str::to_string),
            })
            .collect();
        let mut out = given.clone();
        let mut missing = Vec::new();
        for (name, spec) in &self.inputs {
            if !out.contains_key(name) {
                match &spec.default {
                    Some(v) => {
                        out.insert(name.clone(), v.clone());
                    }
                    None => missing.push(name.clone()),
                }
            }
        }
        if unknown.is_empty() && missing.is_empty() {
            Ok(Value::Object(out))
        } else {
            let declared = declared.into_iter().map(str::to_string).collect();
            Err(InputsError { workflow: self.name.clone(), unknown, missing, declared })
        }
    }
}

/// Why a run's inputs do not fit its definition. Displays as one sentence naming the workflow,
/// the unknown names (with a likely intended one) and the missing ones.
#[derive(Clone, Debug, PartialEq)]
pub struct InputsError {
    pub workflow: String,
    /// Given but not declared under `inputs:`.
    pub unknown: Vec<UnknownInput>,
    /// Declared without a default and not given.
    pub missing: Vec<String>,
    /// Every input the definition declares, in name order.
    pub declared: Vec<String>,
}

/// An input name the definition does not declare.
#[derive(Clone, Debug, PartialEq)]
pub struct UnknownInput {
    pub name: String,
    /// The declared name it is closest to, when it is close enough to be a typo.
    pub suggestion: Option<String>,
}

impl InputsError {
    /// Stable code for tools: unknown names come first, since a misspelt input usually also
    /// leaves the intended one missing.
    pub fn code(&self) -> &'static str {
        if self.unknown.is_empty() { "missing_inputs" } else { "unknown_inputs" }
    }
}

impl std::fmt::Display for InputsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "workflow '{}'", self.workflow)?;
        if !self.unknown.is_empty() {
            let names: Vec<String> = self
                .unknown
                .iter()
                .map(|u| match &u.suggestion {
                    Some(s) => format!("`{}` (did you mean `{s}`?)", u.name.escape_debug()),
                    None => format!("`{}`", u.name.escape_debug()),
                })
                .collect();
            write!(f, " has no input(s) {}; ", names.join(", "))?;
            if self.declared.is_empty() {
                write!(f, "it declares no inputs (add them under `inputs:` in the definition)")?;
            } else {
                write!(f, "it declares: {}", self.declared.join(", "))?;
            }
            if !self.missing.is_empty() {
                write!(f, "; and it")?;
            }
        }
        if !self.missing.is_empty() {
            write!(f, " needs input(s) {}", self.missing.join(", "))?;
        }
        Ok(())
    }
}

impl std::error::Error for InputsError {}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn definition(source: &str) -> Definition {
        crate::validate::parse_definition(source, "test.yaml", &crate::kinds::for_tests())
            .unwrap_or_else(|p| panic!("{p:?}"))
    }

    fn given(value: Value) -> serde_json::Map<String, Value> {
        value.as_object().cloned().unwrap_or_default()
    }

    const TOPIC: &str = "name: t\ninputs:\n  topic: {}\n  tone: {default: dry}\nsteps:\n  - {id: a, kind: noop}\n";

    #[test]
    fn an_unknown_input_name_is_refused_with_the_declared_names_and_a_suggestion() {
        let def = definition(TOPIC);
        let err = def.resolve_inputs(&given(json!({"tpoic": "otters"}))).expect_err("tpoic is not declared");
        assert_eq!(err.code(), "unknown_inputs");
        assert_eq!(err.unknown, vec![UnknownInput { name: "tpoic".into(), suggestion: Some("topic".into()) }]);
        assert_eq!(
            (err.declared.clone(), err.missing.clone()),
            (vec!["tone".into(), "topic".into()], vec!["topic".into()])
        );
        assert_eq!(
            err.to_string(),
            "workflow 't' has no input(s) `tpoic` (did you mean `topic`?); it declares: tone, topic; and it needs \
             input(s) topic"
        );

        let err = def.resolve_inputs(&given(json!({"topic": "otters", "colour": "red"}))).expect_err("colour");
        assert_eq!(err.unknown, vec![UnknownInput { name: "colour".into(), suggestion: None }]);
        assert!(err.missing.is_empty());
        assert_eq!(err.to_string(), "workflow 't' has no input(s) `colour`; it declares: tone, topic");
    }

    #[test]
    fn a_definition_without_inputs_refuses_every_given_input() {
        let def = definition("name: bare\nsteps:\n  - {id: a, kind: noop}\n");
        assert_eq!(def.resolve_inputs(&given(json!({}))), Ok(json!({})));
        let err = def.resolve_inputs(&given(json!({"x": 1}))).expect_err("no inputs are declared");
        assert_eq!(
            err.to_string(),
            "workflow 'bare' has no input(s) `x`; it declares no inputs (add them under `inputs:` in the definition)"
        );
    }

    #[test]
    fn declared_inputs_get_their_defaults_and_required_ones_are_named() {
        let def = definition(TOPIC);
        assert_eq!(
            def.resolve_inputs(&given(json!({"topic": "otters"}))),
            Ok(json!({"topic": "otters", "tone": "dry"}))
        );
        let err = def.resolve_inputs(&given(json!({}))).expect_err("topic is required");
        assert_eq!((err.code(), err.to_string()), ("missing_inputs", "workflow 't' needs input(s) topic".to_string()));
    }
}
