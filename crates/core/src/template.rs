//! `with` templating (minijinja). Every string inside a step's `with` is a template over the same
//! variables as conditions (`inputs`, `steps`, `run`). A string that is exactly one expression,
//! like `"{{ steps.fetch.output.items }}"`, keeps the expression's JSON type instead of becoming
//! text. Rendering is bounded by fuel so a hostile template cannot spin forever.

use minijinja::{Environment, UndefinedBehavior};
use serde_json::Value;
use std::sync::OnceLock;

const FUEL: u64 = 100_000;

fn env() -> &'static Environment<'static> {
    static ENV: OnceLock<Environment<'static>> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.set_fuel(Some(FUEL));
        env
    })
}

fn has_template(s: &str) -> bool {
    s.contains("{{") || s.contains("{%")
}

/// Checks every template string in a `with` block compiles; returns (json path, message) pairs.
pub fn check(with: &Value) -> Vec<(String, String)> {
    let mut problems = Vec::new();
    walk(with, "with", &mut |path, s| {
        if has_template(s)
            && let Err(e) = env().template_from_str(s)
        {
            problems.push((path.to_string(), e.to_string()));
        }
    });
    problems
}

fn walk(v: &Value, path: &str, f: &mut dyn FnMut(&str, &str)) {
    match v {
        Value::String(s) => f(path, s),
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                walk(item, &format!("{path}[{i}]"), f);
            }
        }
        Value::Object(map) => {
            for (k, item) in map {
                walk(item, &format!("{path}.{k}"), f);
            }
        }
        _ => {}
    }
}

/// Renders a `with` block against the context (an object holding `inputs`, `steps`, `run`).
pub fn render(with: &Value, ctx: &Value) -> Result<Value, String> {
    match with {
        Value::String(s) if has_template(s) => render_str(s, ctx),
        Value::Array(items) => items.iter().map(|i| render(i, ctx)).collect::<Result<Vec<_>, _>>().map(Value::Array),
        Value::Object(map) => {
            let mut out = serde_json::Map::with_capacity(map.len());
            for (k, v) in map {
                out.insert(k.clone(), render(v, ctx)?);
            }
            Ok(Value::Object(out))
        }
        other => Ok(other.clone()),
    }
}

fn render_str(s: &str, ctx: &Value) -> Result<Value, String> {
    let ctx_value = minijinja::Value::from(minijinja::value::Serde(ctx));
    let trimmed = s.trim();
    if let Some(inner) = trimmed.strip_prefix("{{").and_then(|r| r.strip_suffix("}}"))
        && !inner.contains("{{")
        && !inner.contains("}}")
        && !inner.contains("{%")
    {
        let expr = env().compile_expression(inner.trim()).map_err(|e| format!("template `{s}`: {e}"))?;
        let value = expr.eval(ctx_value).map_err(|e| format!("template `{s}`: {e}"))?;
        if value.is_undefined() {
            return Err(format!("template `{s}`: `{}` is undefined", inner.trim()));
        }
        return serde_json::to_value(&value).map_err(|e| format!("template `{s}`: {e}"));
    }
    env().render_str(s, ctx_value).map(Value::String).map_err(|e| format!("template `{s}`: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn renders_text_and_keeps_types_of_whole_expressions() {
        let ctx = json!({"inputs": {"topic": "otters"}, "steps": {"a": {"output": {"n": [1, 2]}}}});
        let with = json!({"prompt": "About {{ inputs.topic }}!", "items": "{{ steps.a.output.n }}", "k": 3});
        let out = render(&with, &ctx).expect("renders");
        assert_eq!(out, json!({"prompt": "About otters!", "items": [1, 2], "k": 3}));
    }

    #[test]
    fn undefined_and_bad_templates_are_errors() {
        let ctx = json!({"inputs": {}});
        assert!(render(&json!("{{ inputs.nope }}"), &ctx).is_err());
        assert!(render(&json!("x {{ inputs.nope }} y"), &ctx).is_err());
        assert_eq!(check(&json!({"a": "{{ unclosed"})).len(), 1);
        assert!(check(&json!({"a": "{{ fine }}"})).is_empty());
    }
}
