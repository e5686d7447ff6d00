//! `when` conditions in CEL (the Common Expression Language).
//!
//! Variables: `inputs` (the run's inputs), `steps` (`steps.ID.output`, `steps.ID.status`) and
//! `run` (`run.id`, `run.workflow`). JSON numbers become CEL `int` when they are whole and
//! `double` otherwise, so `steps.a.output.count * 2 > 3` works as written. Referring to a key that
//! does not exist is an error (use `has(steps.a.output.key)` to test first); an erroring condition
//! fails the step permanently with the message, rather than silently skipping it.

use crate::scope::{Reference, Usage, position};
use cel::common::ast::{EntryExpr, Expr, IdedExpr, LiteralValue, SourceInfo, operators};
use cel::objects::{Key, Map, Value as Cel};
use cel::{Context, Program};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Arc;

/// Checks that a condition compiles. The error names the position inside the expression.
pub fn check(source: &str) -> Result<(), String> {
    Program::compile(source).map(|_| ()).map_err(|e| e.to_string().replace("<input>:", "column "))
}

/// The variables a condition reads, each with where and how (see [`crate::scope`]): every use
/// is a read, except the field a `has(...)` tests and the key of `'key' in map`. Comprehension
/// variables (`x` in `list.exists(x, ...)`) and type names (`int`, `string`) are left out. A
/// condition that does not compile has none (`check` reports it).
pub fn references(source: &str) -> Vec<Reference> {
    let Ok(program) = Program::compile(source) else { return Vec::new() };
    let mut walker = Walker { source, info: program.source_info(), bound: Vec::new(), found: Vec::new() };
    walker.expr(program.expression());
    let empty = Context::default();
    walker
        .found
        .into_iter()
        .filter(|r| {
            // Only a type resolves without variables: `int`, `google.protobuf.Timestamp`.
            matches!(r.path[0].as_str(), "inputs" | "steps" | "run" | "signals" | "secrets")
                || Program::compile(&r.path.join(".")).is_ok_and(|p| p.execute(&empty).is_err())
        })
        .collect()
}

struct Walker<'a> {
    source: &'a str,
    info: &'a SourceInfo,
    /// Comprehension variables in scope.
    bound: Vec<&'a str>,
    found: Vec<Reference>,
}

impl<'a> Walker<'a> {
    fn push(&mut self, path: Vec<String>, usage: Usage, id: u64) {
        let offset = self.info.offset_for(id).map_or(0, |(start, _)| start as usize);
        let (line, column) = position(self.source, offset);
        self.found.push(Reference { path, usage, line, column, printed: false });
    }

    /// `a.b["c"]` as `["a", "b", "c"]` with the id of `a`, unless `a` is a comprehension
    /// variable or the expression is anything else.
    fn chain(&self, e: &IdedExpr) -> Option<(Vec<String>, u64)> {
        match &e.expr {
            Expr::Ident(name) if !self.bound.contains(&name.as_str()) => Some((vec![name.clone()], e.id)),
            Expr::Select(s) if !s.test => {
                let (mut path, id) = self.chain(&s.operand)?;
                path.push(s.field.clone());
                Some((path, id))
            }
            Expr::Call(c) if c.func_name == operators::INDEX && c.target.is_none() => match c.args.as_slice() {
                [target, IdedExpr { expr: Expr::Literal(LiteralValue::String(key)), .. }] => {
                    let (mut path, id) = self.chain(target)?;
                    path.push(key.inner().to_string());
                    Some((path, id))
                }
                _ => None,
            },
            _ => None,
        }
    }

    fn expr(&mut self, e: &'a IdedExpr) {
        if let Some((path, id)) = self.chain(e) {
            self.push(path, Usage::Read, id);
            return;
        }
        match &e.expr {
            Expr::Select(s) if s.test => {
                // `has(a.b.c)` reads `a.b` and tests for `c`.
                if let Some((mut path, id)) = self.chain(&s.operand) {
                    self.push(path.clone(), Usage::Read, id);
                    path.push(s.field.clone());
                    self.push(path, Usage::Tested, id);
                } else {
                    self.expr(&s.operand);
                }
            }
            Expr::Select(s) => self.expr(&s.operand),
            Expr::Call(c) => {
                if c.func_name == operators::IN
                    && let [IdedExpr { expr: Expr::Literal(LiteralValue::String(key)), .. }, map] = c.args.as_slice()
                    && let Some((mut path, id)) = self.chain(map)
                {
                    path.push(key.inner().to_string());
                    self.push(path, Usage::Tested, id);
                }
                if let Some(target) = &c.target {
                    self.expr(target);
                }
                for arg in &c.args {
                    self.expr(arg);
                }
            }
            Expr::Comprehension(c) => {
                self.expr(&c.iter_range);
                self.expr(&c.accu_init);
                let before = self.bound.len();
                self.bound.push(&c.iter_var);
                self.bound.extend(c.iter_var2.as_deref());
                self.bound.push(&c.accu_var);
                self.expr(&c.loop_cond);
                self.expr(&c.loop_step);
                self.expr(&c.result);
                self.bound.truncate(before);
            }
            Expr::List(l) => l.elements.iter().for_each(|item| self.expr(item)),
            Expr::Map(m) => {
                for entry in &m.entries {
                    if let EntryExpr::MapEntry(entry) = &entry.expr {
                        self.expr(&entry.key);
                        self.expr(&entry.value);
                    }
                }
            }
            Expr::Struct(s) => {
                for entry in &s.entries {
                    if let EntryExpr::StructField(field) = &entry.expr {
                        self.expr(&field.value);
                    }
                }
            }
            Expr::Ident(_) | Expr::Literal(_) | Expr::Unspecified => {}
        }
    }
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

    fn refs(source: &str) -> Vec<(String, Usage, usize, usize)> {
        references(source).into_iter().map(|r| (r.path.join("."), r.usage, r.line, r.column)).collect()
    }

    #[test]
    fn references_say_how_each_variable_is_used_and_where() {
        use Usage::{Read, Tested};
        let r = |p: &str, u, l, c| (p.to_string(), u, l, c);
        assert_eq!(
            refs("size(steps.a.output.text) > 0 && inputs['mode'] == 'x'"),
            vec![r("steps.a.output.text", Read, 1, 6), r("inputs.mode", Read, 1, 34)]
        );
        assert_eq!(
            refs("has(steps.b) && steps.b.output.ok\n|| 'c' in steps"),
            vec![
                r("steps", Read, 1, 5),
                r("steps.b", Tested, 1, 5),
                r("steps.b.output.ok", Read, 1, 17),
                r("steps.c", Tested, 2, 11),
                r("steps", Read, 2, 11)
            ]
        );
        // Comprehension variables and type names are not context reads.
        assert_eq!(
            refs("steps.a.output.items.exists(x, x.ok) && type(run.id) == string && imput.x == 1"),
            vec![r("steps.a.output.items", Read, 1, 1), r("run.id", Read, 1, 46), r("imput.x", Read, 1, 67)]
        );
        assert_eq!(refs("'é' == inputs.a"), vec![r("inputs.a", Read, 1, 8)], "columns count characters");
        assert_eq!(refs("inputs.x =="), vec![], "a condition that does not compile is reported by `check`");
    }
}
