//! Part of phase 2: a step's `with` block checked against its kind's JSON Schema, each failure
//! reported at the failing field's own line (`with.headers.Accept`), not at `with:`.
//!
//! Only literal values are checked here. A value that is a template (`"{{ steps.a.output.n }}"`)
//! has no type until it renders when the attempt starts, so a failure at a template (or inside
//! one) is left to the kind, which sees the rendered input.

use super::problems::Problems;
use crate::kinds::KindSpec;
use serde_json::Value;
use serde_saphyr::Location;
use std::collections::HashMap;

/// At most this many schema failures per block: the first few say what to fix.
const MAX_REPORTED: usize = 5;

pub(super) fn check_with(
    kind: &KindSpec,
    with: &Value,
    places: &HashMap<String, Location>,
    block_at: Location,
    prefix: &str,
    step: Option<&str>,
    out: &mut Problems<'_>,
) {
    if kind.with_schema == Value::Bool(true) || is_template(with) {
        return;
    }
    // A JSON Schema given to a kind (an answer's `output_schema`) must compile, or every attempt
    // would fail on it: said now, at its line.
    if let Some(schema) = with.get("output_schema").filter(|s| s.is_object() && !contains_template(s))
        && let Err(e) = jsonschema::validator_for(schema)
    {
        let at = places.get("with.output_schema").copied().unwrap_or(block_at);
        let message = format!("`{prefix}with.output_schema` is not a usable JSON Schema: {e}");
        out.add(at, step, "bad_schema", message);
    }
    let validator = match jsonschema::validator_for(&kind.with_schema) {
        Ok(v) => v,
        Err(e) => {
            // A kind's own schema is broken: the binary's fault, but say so instead of passing.
            let message = format!("kind `{}` has an invalid `with` schema ({e}); report this", kind.name);
            out.add(block_at, step, "bad_kind_schema", message);
            return;
        }
    };
    // No `with` at all is an empty block for kinds that take an object.
    let empty = Value::Object(Default::default());
    let instance = if with.is_null() && schema_wants_object(&kind.with_schema) { &empty } else { with };
    let mut reported = 0;
    for error in validator.iter_errors(instance) {
        let mut path = "with".to_string();
        let mut value = Some(instance);
        let mut templated = false;
        for segment in error.instance_path().segments() {
            match segment {
                jsonschema::paths::LocationSegment::Property(key) => {
                    path.push('.');
                    path.push_str(&key);
                    value = value.and_then(|v| v.get(key.as_ref()));
                }
                jsonschema::paths::LocationSegment::Index(i) => {
                    path.push_str(&format!("[{i}]"));
                    value = value.and_then(|v| v.get(i));
                }
            }
            templated |= value.is_some_and(is_template);
        }
        if templated {
            continue;
        }
        let at = places.get(&path).copied().unwrap_or(block_at);
        let message = format!("`{prefix}{path}` does not fit kind `{}`: {error}", kind.name);
        out.add(at, step, "bad_with", message);
        reported += 1;
        if reported == MAX_REPORTED {
            break;
        }
    }
}

/// A wait needs exactly one of `duration`, `until` or `signal`; literal values are checked the way
/// the wait will read them (a template is checked when it renders).
pub(super) fn check_wait(with: &Value, block_at: Location, step: Option<&str>, out: &mut Problems<'_>) {
    let literal: Value = match with {
        Value::Object(m) => {
            Value::Object(m.iter().filter(|(_, v)| !is_template(v)).map(|(k, v)| (k.clone(), v.clone())).collect())
        }
        _ if is_template(with) => return,
        other => other.clone(),
    };
    let templated = with.as_object().is_some_and(|m| m.values().any(is_template));
    match crate::decide::waits::wait_of(&literal, 0) {
        Ok(_) => {}
        // A key given as a template is there; only its value waits to be checked.
        Err(_)
            if templated
                && with.as_object().is_some_and(|m| {
                    ["duration", "until", "signal"].iter().filter(|k| m.get(**k).is_some_and(|v| !v.is_null())).count()
                        == 1
                }) => {}
        Err(message) => out.add(block_at, step, "bad_wait", message),
    }
}

fn schema_wants_object(schema: &Value) -> bool {
    schema.get("type").and_then(Value::as_str) == Some("object")
}

/// A string that is (or holds) a template renders to a value of any type.
fn is_template(value: &Value) -> bool {
    value.as_str().is_some_and(|s| s.contains("{{") || s.contains("{%"))
}

/// Whether a template appears anywhere in `v`.
fn contains_template(v: &Value) -> bool {
    match v {
        Value::Object(m) => m.values().any(contains_template),
        Value::Array(a) => a.iter().any(contains_template),
        other => is_template(other),
    }
}

#[cfg(test)]
mod tests {
    use crate::validate::tests::{parse, problems, summary};

    #[test]
    fn a_with_block_that_breaks_its_kinds_schema_is_reported_at_the_failing_field() {
        let source = "\
name: t
steps:
  - id: call
    kind: http
    with:
      url: 42
      body: {a: 1}
  - id: bare
    kind: http
  - id: undo
    kind: echo
    compensate:
      kind: http
      with: {body: 1}
";
        let found = problems(source);
        assert_eq!(
            summary(&found),
            vec![
                (Some(6), Some(12), Some("call"), "bad_with"),
                (Some(9), Some(11), Some("bare"), "bad_with"),
                (Some(14), Some(13), Some("undo"), "bad_with"),
            ],
            "{found:#?}"
        );
        assert!(found[0].message.contains("`with.url` does not fit kind `http`"), "{}", found[0].message);
        assert!(found[0].message.contains("42"), "{}", found[0].message);
        assert!(found[1].message.contains("\"url\" is a required property"), "{}", found[1].message);
        assert!(found[2].message.starts_with("`compensate.with` does not fit"), "{}", found[2].message);
    }

    #[test]
    fn templates_are_not_held_to_the_schema_before_they_render() {
        let source = "\
name: t
inputs: {target: {default: 'http://127.0.0.1:9/x'}}
steps:
  - {id: a, kind: http, with: {url: '{{ inputs.target }}'}}
  - {id: b, kind: http, with: '{{ steps.a.output }}', needs: [a]}
";
        let def = parse(source, "t.yaml");
        assert_eq!(def.steps.len(), 2);
    }
}
