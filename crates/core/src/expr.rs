//! `when` conditions in CEL (the Common Expression Language).
//!
//! Variables: `inputs` (the run's inputs), `steps` (`steps.ID.output`, `steps.ID.status`) and
//! `run` (`run.id`, `run.workflow`). JSON numbers become CEL `int` when they are whole and
//! `double` otherwise, so `steps.a.output.count * 2 > 3` works as written. Referring to a key that
//! does not exist is an error (use `has(steps.a.output.key)` to test first); an erroring condition
//! fails the step permanently with the message, rather than silently skipping it.

use cel::objects::{Key, Map, Value as Cel};
use cel::{Context, Program};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Arc;

/// Checks that a condition compiles. The error names the position inside the expression.
pub fn check(source: &str) -> Result<(), String> {
    Program::compile(source).map(|_| ()).map_err(|e| e.to_string().replace("<input>:", "column "))
}

/// Evaluates a condition against the variables. Non-boolean results are an error.
pub fn eval_bool(source: &str, vars: &[(&str, &Value)]) -> Result<bool, String> {
    let program = Program::compile(source).map_err(|e| e.to_string())?;
    let mut ctx = Context::default();
    for (name, value) in vars {
        ctx.add_variable_from_value(*name, to_cel(value));
    }
    match program.execute(&ctx) {
        Ok(Cel::Bool(b)) => Ok(b),
        Ok(other) => Err(format!("condition `{source}` returned {other:?}, not a bool")),
        Err(e) => Err(format!("condition `{source}` failed: {e}")),
    }
}

/// Converts JSON into CEL values, mapping whole numbers to `int` (not `uint`).
pub fn to_cel(value: &Value) -> Cel {
    match value {
        Value::Null => Cel::Null,
        Value::Bool(b) => Cel::Bool(*b),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                Cel::Int(i)
            } else if let Some(u) = n.as_u64() {
                Cel::UInt(u)
            } else {
                Cel::Float(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        Value::String(s) => Cel::String(Arc::new(s.clone())),
        Value::Array(items) => Cel::List(Arc::new(items.iter().map(to_cel).collect())),
        Value::Object(map) => {
            let m: HashMap<Key, Cel> = map.iter().map(|(k, v)| (Key::String(Arc::new(k.clone())), to_cel(v))).collect();
            Cel::Map(Map::from(m))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn evaluates_over_json_with_int_arithmetic() {
        let steps = json!({"a": {"output": {"count": 3, "label": "big"}, "status": "completed"}});
        let inputs = json!({"mode": "fast"});
        let vars = [("steps", &steps), ("inputs", &inputs)];
        assert_eq!(eval_bool("steps.a.output.count * 2 > 5", &vars), Ok(true));
        assert_eq!(eval_bool("inputs.mode == 'slow'", &vars), Ok(false));
        assert_eq!(eval_bool("has(steps.a.output.missing)", &vars), Ok(false));
        assert!(eval_bool("steps.a.output.missing == 1", &vars).is_err());
        assert!(eval_bool("steps.a.output.count", &vars).is_err());
    }

    #[test]
    fn compile_errors_are_reported() {
        assert!(check("inputs.x == ").is_err());
        assert!(check("inputs.x == 1 && has(steps.a.output)").is_ok());
    }
}
