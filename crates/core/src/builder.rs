//! Workflow definitions built in code, for Cairn used as a library. A builder writes the same
//! document a file would hold and hands it to the same parser, so a definition built here passes
//! exactly the checks a file passes (unknown kinds, `needs` that name no step, cycles, bad
//! templates and conditions, retry and timeout values) and fails with the same messages.
//!
//! ```
//! use cairn_core::builder::{Step, Workflow};
//! use cairn_core::kinds::{KindSpec, Kinds};
//! use serde_json::json;
//!
//! let kinds = Kinds::new([KindSpec::new("echo", "outputs its input")]);
//! let definition = Workflow::new("greet")
//!     .input("name", Some(json!("world")))
//!     .step(Step::new("hello", "echo").with(json!({"text": "hello {{ inputs.name }}"})).retry(3))
//!     .step(Step::new("bye", "echo").needs(["hello"]).when("inputs.name != 'nobody'").timeout("10s"))
//!     .build(&kinds)
//!     .expect("a valid definition");
//! assert_eq!(definition.steps.len(), 2);
//! ```

use crate::definition::Definition;
use crate::kinds::Kinds;
use crate::validate::{Problem, parse_definition};
use serde_json::{Map, Value, json};

/// A workflow definition being built.
#[derive(Clone, Debug)]
pub struct Workflow {
    doc: Map<String, Value>,
    inputs: Map<String, Value>,
    steps: Vec<Value>,
}

impl Workflow {
    /// A workflow named `name` (letters, digits, `_`, `.`, `-`), version 1, no steps yet.
    pub fn new(name: &str) -> Workflow {
        let mut doc = Map::new();
        doc.insert("name".into(), json!(name));
        Workflow { doc, inputs: Map::new(), steps: Vec::new() }
    }

    /// Its version (runs pin the version they started with).
    pub fn version(mut self, version: u32) -> Workflow {
        self.doc.insert("version".into(), json!(version));
        self
    }

    /// An input, required when it has no default.
    pub fn input(mut self, name: &str, default: Option<Value>) -> Workflow {
        let spec = match default {
            Some(d) => json!({"default": d}),
            None => json!({}),
        };
        self.inputs.insert(name.into(), spec);
        self
    }

    /// Any other top-level field of the file format (`description`, `defaults`, `retention`,
    /// `tools`, `budget` …), as it would be written in a file.
    pub fn set(mut self, field: &str, value: Value) -> Workflow {
        self.doc.insert(field.into(), value);
        self
    }

    /// Adds a step (steps run in the order of their `needs`, not of their adding).
    pub fn step(mut self, step: Step) -> Workflow {
        self.steps.push(Value::Object(step.doc));
        self
    }

    /// The document as a file would hold it (JSON).
    pub fn to_value(&self) -> Value {
        let mut doc = self.doc.clone();
        if !self.inputs.is_empty() {
            doc.insert("inputs".into(), Value::Object(self.inputs.clone()));
        }
        doc.insert("steps".into(), Value::Array(self.steps.clone()));
        Value::Object(doc)
    }

    /// The definition, checked like a file against the step kinds `kinds`; or every problem
    /// found, each naming the step and field at fault.
    pub fn build(&self, kinds: &Kinds) -> Result<Definition, Vec<Problem>> {
        let text = serde_json::to_string_pretty(&self.to_value()).unwrap_or_default();
        parse_definition(&text, "<builder>", kinds)
    }
}

/// One step of a [`Workflow`].
#[derive(Clone, Debug)]
pub struct Step {
    doc: Map<String, Value>,
}

impl Step {
    /// A step `id` of kind `kind`.
    pub fn new(id: &str, kind: &str) -> Step {
        let mut doc = Map::new();
        doc.insert("id".into(), json!(id));
        doc.insert("kind".into(), json!(kind));
        Step { doc }
    }

    /// Its input: strings are templates (`{{ inputs.x }}`, `{{ steps.a.output }}`).
    pub fn with(mut self, input: Value) -> Step {
        self.doc.insert("with".into(), input);
        self
    }

    /// The steps it waits for.
    pub fn needs<'a>(mut self, steps: impl IntoIterator<Item = &'a str>) -> Step {
        let needs: Vec<Value> = steps.into_iter().map(|s| json!(s)).collect();
        self.doc.insert("needs".into(), Value::Array(needs));
        self
    }

    /// A condition (CEL over `inputs` and `steps`); false skips the step.
    pub fn when(mut self, condition: &str) -> Step {
        self.doc.insert("when".into(), json!(condition));
        self
    }

    /// At most this many attempts, with the default backoff.
    pub fn retry(mut self, max_attempts: u32) -> Step {
        self.doc.insert("retry".into(), json!({"max_attempts": max_attempts}));
        self
    }

    /// Each attempt's timeout, a duration (`500ms`, `10s`, `5m`).
    pub fn timeout(mut self, duration: &str) -> Step {
        self.doc.insert("timeout".into(), json!(duration));
        self
    }

    /// Runs once per item: a list, or a template that renders to one.
    pub fn for_each(mut self, items: Value) -> Step {
        self.doc.insert("for_each".into(), items);
        self
    }

    /// A person approves before it runs, asked `prompt` (a template).
    pub fn approval(mut self, prompt: &str) -> Step {
        self.doc.insert("approval".into(), json!({"prompt": prompt}));
        self
    }

    /// Any other field of a step in the file format (`retry` with a full policy,
    /// `on_failure`, `trigger`, `compensate`, `loop`, `budget` …), as a file would hold it.
    pub fn set(mut self, field: &str, value: Value) -> Step {
        self.doc.insert(field.into(), value);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kinds::KindSpec;

    fn kinds() -> Kinds {
        Kinds::new([
            KindSpec::new("echo", "outputs its input"),
            KindSpec::new("noop", "does nothing"),
            KindSpec::new("approval", "a person decides").role(crate::kinds::Role::Gate),
        ])
    }

    #[test]
    fn a_built_definition_is_the_one_the_same_file_gives() {
        let built = Workflow::new("pair")
            .version(2)
            .input("topic", Some(json!("beavers")))
            .step(Step::new("a", "echo").with(json!({"t": "{{ inputs.topic }}"})).retry(3).timeout("5s"))
            .step(Step::new("b", "noop").needs(["a"]).when("steps.a.output.t != ''"))
            .step(Step::new("c", "echo").needs(["a"]).for_each(json!([1, 2])).with(json!({"n": "{{ item }}"})))
            .step(Step::new("ok", "approval").needs(["b"]).approval("Ship {{ inputs.topic }}?"))
            .build(&kinds())
            .expect("valid");
        let file = "name: pair\nversion: 2\ninputs:\n  topic: {default: beavers}\nsteps:\n  \
                    - {id: a, kind: echo, with: {t: '{{ inputs.topic }}'}, retry: {max_attempts: 3}, timeout: 5s}\n  \
                    - {id: b, kind: noop, needs: [a], when: \"steps.a.output.t != ''\"}\n  \
                    - {id: c, kind: echo, needs: [a], for_each: [1, 2], with: {n: '{{ item }}'}}\n  \
                    - {id: ok, kind: approval, needs: [b], approval: {prompt: 'Ship {{ inputs.topic }}?'}}\n";
        let parsed = parse_definition(file, "pair.yaml", &kinds()).expect("valid file");
        assert_eq!(built, parsed);
    }

    #[test]
    fn a_built_definition_fails_the_checks_a_file_fails() {
        let problems = Workflow::new("broken")
            .step(Step::new("a", "echo").needs(["nowhere"]))
            .step(Step::new("b", "teleport"))
            .step(Step::new("c", "echo").timeout("soon"))
            .build(&kinds())
            .expect_err("invalid");
        let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
        let all = text.join("\n");
        assert!(all.contains("nowhere"), "{all}");
        assert!(all.contains("teleport"), "{all}");
        assert!(all.contains("soon"), "{all}");
    }
}
