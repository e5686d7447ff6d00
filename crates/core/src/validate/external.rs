//! A workflow's external kinds (`kinds:`): kinds run by workers outside the engine, each with its
//! queue, schemas, effect class, retry policy and timeout, checked here.

use super::parse::{Node, node_to_json};
use super::problems::Problems;
use crate::kinds::{EffectClass, ExternalKind, Kinds};
use crate::retry::{MAX_ATTEMPTS_RANGE, MAX_DELAY_LIMIT_MS, MULTIPLIER_RANGE};
use serde_json::Value;
use serde_saphyr::Spanned;
use std::collections::{BTreeMap, HashMap};

/// Whether `name` may name a kind or a queue: a letter, then up to 63 letters, digits, `_`, `-`
/// or `.`.
pub fn is_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name.bytes().next().is_some_and(|b| b.is_ascii_alphabetic())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// The keys an external kind's declaration may have.
pub const KIND_KEYS: &[&str] = &["queue", "description", "input_schema", "output_schema", "effect", "retry", "timeout"];

/// What is wrong with one field of an external kind's declaration.
#[derive(Clone, Debug, PartialEq)]
pub struct KindProblem {
    /// The field (`queue`, `retry.max_delay`), empty for the declaration as a whole.
    pub field: String,
    pub code: &'static str,
    pub message: String,
}

/// An external kind's declaration (`kinds.NAME` of a workflow, `[kinds.NAME]` of `cairn.toml`),
/// as JSON, checked: the queue, the schemas (which must compile), the effect class, the retry
/// policy (on top of the defaults for remote work) and the timeout. `known` are the binary's
/// kinds: a built-in kind cannot be redeclared. Every problem names its field.
pub fn external_kind(name: &str, spec: &Value, known: &Kinds) -> Result<ExternalKind, Vec<KindProblem>> {
    let mut problems = Vec::new();
    let mut bad = |field: &str, code: &'static str, why: String| {
        let at = if field.is_empty() { format!("kinds.{name}") } else { format!("kinds.{name}.{field}") };
        problems.push(KindProblem { field: field.to_string(), code, message: format!("`{at}` {why}") });
    };
    if !is_name(name) {
        bad("", "bad_name", "must be named with a letter, then up to 63 letters, digits, `_`, `-` or `.`".into());
        return Err(problems);
    }
    if known.lookup(name).is_some_and(|k| k.queue.is_none()) {
        bad(
            "",
            "bad_kind",
            format!("names a kind built into cairn; give your external kind another name than `{name}`"),
        );
        return Err(problems);
    }
    let Value::Object(fields) = spec else {
        bad("", "bad_value", "must be a mapping with at least `queue` (the queue its workers claim from)".into());
        return Err(problems);
    };
    let mut kind = ExternalKind::new("");
    match fields.get("queue") {
        Some(Value::String(q)) if is_name(q) => kind.queue = q.clone(),
        Some(Value::String(q)) => bad(
            "queue",
            "bad_value",
            format!("`{}` must be a letter, then up to 63 letters, digits, `_`, `-` or `.`", q.escape_debug()),
        ),
        Some(_) => bad("queue", "bad_value", "must be a string, the queue its workers claim from".into()),
        None => bad("", "missing_field", "needs `queue`: the queue its workers claim tasks from".into()),
    }
    for (field, value) in fields {
        match (field.as_str(), value) {
            ("queue", _) => {}
            ("description", Value::String(d)) => kind.description = Some(d.clone()),
            ("input_schema" | "output_schema", Value::Object(_)) => match jsonschema::validator_for(value) {
                Ok(_) if field == "input_schema" => kind.input_schema = Some(value.clone()),
                Ok(_) => kind.output_schema = Some(value.clone()),
                Err(e) => bad(field, "bad_schema", format!("is not a usable JSON Schema: {e}")),
            },
            ("input_schema" | "output_schema", _) => bad(
                field,
                "bad_schema",
                "must be a JSON Schema object (e.g. `{type: object, required: [text]}`)".into(),
            ),
            ("effect", Value::String(e)) => match EffectClass::ALL.into_iter().find(|c| c.as_str() == e) {
                Some(c) => kind.effect = c,
                None => {
                    let names: Vec<&str> = EffectClass::ALL.iter().map(|c| c.as_str()).collect();
                    bad(field, "bad_value", format!("`{}` is not one of {}", e.escape_debug(), names.join(", ")))
                }
            },
            ("retry", Value::Object(retry)) => {
                for (key, v) in retry {
                    let r = &mut kind.retry;
                    let here = format!("retry.{key}");
                    match (key.as_str(), v) {
                        ("max_attempts", Value::Number(n)) => {
                            let (lo, hi) = MAX_ATTEMPTS_RANGE;
                            match n.as_u64().filter(|n| (u64::from(lo)..=u64::from(hi)).contains(n)) {
                                Some(n) => r.max_attempts = n as u32,
                                None => {
                                    bad(&here, "out_of_range", format!("is {n}, but must be between {lo} and {hi}"))
                                }
                            }
                        }
                        ("multiplier" | "jitter", Value::Number(n)) => {
                            let (lo, hi) = if key == "jitter" { (0.0, 1.0) } else { MULTIPLIER_RANGE };
                            match n.as_f64().filter(|n| (lo..=hi).contains(n)) {
                                Some(n) if key == "jitter" => r.jitter = n,
                                Some(n) => r.multiplier = n,
                                None => {
                                    bad(&here, "out_of_range", format!("is {n}, but must be between {lo} and {hi}"))
                                }
                            }
                        }
                        ("initial_delay" | "max_delay", Value::String(text)) => match crate::duration::parse_ms(text) {
                            Ok(ms) if ms <= MAX_DELAY_LIMIT_MS && key == "initial_delay" => r.initial_delay_ms = ms,
                            Ok(ms) if ms <= MAX_DELAY_LIMIT_MS => r.max_delay_ms = ms,
                            Ok(_) => bad(&here, "out_of_range", "must be at most 24h".into()),
                            Err(e) => bad(&here, "bad_duration", e),
                        },
                        ("max_attempts" | "multiplier" | "jitter" | "initial_delay" | "max_delay", _) => {
                            bad(&here, "bad_value", "has a value of the wrong type".into())
                        }
                        _ => bad(
                            &here,
                            "unknown_field",
                            "is not a retry setting; the settings are max_attempts, initial_delay, multiplier, \
                             max_delay, jitter"
                                .into(),
                        ),
                    }
                }
                if kind.retry.max_delay_ms < kind.retry.initial_delay_ms {
                    bad("retry", "out_of_range", "has a max_delay less than its initial_delay; raise max_delay".into());
                }
            }
            ("timeout", Value::String(t)) if t.trim() == "none" => kind.timeout_ms = None,
            ("timeout", Value::String(t)) => match crate::duration::parse_ms(t) {
                Ok(ms) if (1..=86_400_000).contains(&ms) => kind.timeout_ms = Some(ms),
                Ok(_) => bad(field, "out_of_range", "must be more than 0 and at most 24h, or `none`".into()),
                Err(e) => bad(field, "bad_duration", e),
            },
            (known, _) if KIND_KEYS.contains(&known) => bad(field, "bad_value", "has a value of the wrong type".into()),
            (other, _) => bad(
                "",
                "unknown_field",
                format!("has an unknown key `{}`; the keys are {}", other.escape_debug(), KIND_KEYS.join(", ")),
            ),
        }
    }
    if problems.is_empty() { Ok(kind) } else { Err(problems) }
}

/// The workflow's `kinds:`, each reported at its own line.
pub(super) fn compile(
    raw: BTreeMap<String, Spanned<Node>>,
    known: &Kinds,
    out: &mut Problems<'_>,
) -> BTreeMap<String, ExternalKind> {
    let mut kinds = BTreeMap::new();
    for (name, node) in raw {
        let mut places = HashMap::new();
        let root = format!("kinds.{name}");
        let spec = node_to_json(&node, root.clone(), &mut places);
        match external_kind(&name, &spec, known) {
            Ok(kind) => {
                kinds.insert(name, kind);
            }
            Err(problems) => {
                // Its steps are still checked (as a kind taking anything), not reported unknown.
                if is_name(&name) && known.lookup(&name).is_none_or(|k| k.queue.is_some()) {
                    kinds.insert(name.clone(), ExternalKind::new("invalid"));
                }
                for p in problems {
                    let path = if p.field.is_empty() { root.clone() } else { format!("{root}.{}", p.field) };
                    let at = places.get(&path).copied().unwrap_or(node.referenced);
                    out.add(at, None, p.code, p.message);
                }
            }
        }
    }
    kinds
}

#[cfg(test)]
mod tests {
    use crate::kinds::EffectClass;
    use crate::validate::parse_definition;
    use serde_json::json;

    const FILE: &str = r#"
name: summarize-docs
kinds:
  summarize:
    queue: py-workers
    description: summarizes a text in Python
    input_schema: {type: object, required: [text], properties: {text: {type: string}}}
    output_schema: {type: object, required: [summary]}
    effect: read
    retry: {max_attempts: 4, initial_delay: 1s}
    timeout: 2m
steps:
  - id: one
    kind: summarize
    with: {text: "a long text"}
  - id: two
    kind: summarize
    needs: [one]
    retry: {max_attempts: 2}
    with: {text: "{{ steps.one.output.summary }}"}
"#;

    #[test]
    fn a_workflow_declares_an_external_kind_and_its_steps_take_its_policy() {
        let def = parse_definition(FILE, "w.yaml", &crate::kinds::for_tests()).expect("valid");
        let kind = &def.kinds["summarize"];
        assert_eq!(kind.queue, "py-workers");
        assert_eq!(kind.effect, EffectClass::Read);
        assert_eq!((kind.retry.max_attempts, kind.retry.initial_delay_ms), (4, 1_000));
        assert_eq!(kind.timeout_ms, Some(120_000));
        assert_eq!(kind.output_schema, Some(json!({"type": "object", "required": ["summary"]})));
        assert_eq!((def.steps[0].retry.max_attempts, def.steps[0].timeout_ms), (4, Some(120_000)));
        assert_eq!(def.steps[1].retry.max_attempts, 2, "a step's own retry still wins");
        // The declaration travels with the pinned definition.
        let back: crate::definition::Definition =
            serde_json::from_value(serde_json::to_value(&def).expect("json")).expect("read back");
        assert_eq!(back, def);
    }

    #[test]
    fn bad_declarations_and_inputs_are_reported_at_their_place() {
        let file = r#"
name: bad
kinds:
  echo: {queue: q}
  "9lives": {queue: q}
  good:
    queue: q
    input_schema: {type: object, required: [text], properties: {text: {type: string}}}
  render:
    queue: "has space"
    output_schema: [not, a, schema]
    effect: delete
    retry: {initial_delay: 10s, max_delay: 1s}
    timeout: 0s
steps:
  - {id: a, kind: good, with: {text: 5}}
  - {id: b, kind: rendr}
  - {id: c, kind: render}
"#;
        let problems = parse_definition(file, "w.yaml", &crate::kinds::for_tests()).expect_err("invalid");
        let text: Vec<String> = problems.iter().map(|p| format!("{}:{}", p.code, p.message)).collect();
        let has = |needle: &str| assert!(text.iter().any(|t| t.contains(needle)), "{needle} in {text:#?}");
        has("bad_kind:`kinds.echo` names a kind built into cairn");
        has("bad_name:`kinds.9lives` must be named with a letter");
        has("bad_value:`kinds.render.queue` `has space`");
        has("bad_schema:`kinds.render.output_schema` must be a JSON Schema object");
        has("bad_value:`kinds.render.effect` `delete` is not one of pure, read");
        has("out_of_range:`kinds.render.retry` has a max_delay less than its initial_delay");
        has("out_of_range:`kinds.render.timeout` must be more than 0");
        has("bad_with:`with.text` does not fit kind `good`");
        has("unknown_kind:unknown kind `rendr`; did you mean `render`?");
        let missing = "name: m\nkinds: {x: {description: no queue}}\nsteps: [{id: a, kind: x}]\n";
        let problems = parse_definition(missing, "w.yaml", &crate::kinds::for_tests()).expect_err("invalid");
        assert_eq!(problems[0].code, "missing_field", "{problems:?}");
        assert_eq!(problems[0].line, Some(2), "{problems:?}");
    }
}
