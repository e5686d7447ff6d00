//! `with` templating (minijinja). Every string inside a step's `with` is a template over the same
//! variables as conditions (`inputs`, `steps`, `run`). A string that is exactly one expression,
//! like `"{{ steps.fetch.output.items }}"`, keeps the expression's JSON type instead of becoming
//! text. Rendering is bounded by fuel so a hostile template cannot spin forever.

use crate::scope::{Reference, Usage, position};
use minijinja::machinery::ast;
use minijinja::{Environment, UndefinedBehavior};
use serde_json::Value;
use std::collections::HashSet;
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

/// Calls `f` with the path (`with.a.b[0]`, under `root`) and text of every template string.
pub fn for_each_template(with: &Value, root: &str, f: &mut dyn FnMut(&str, &str)) {
    walk(with, root, &mut |path, s| {
        if has_template(s) {
            f(path, s);
        }
    });
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

/// Filters that take an undefined value without failing under strict undefined behaviour
/// (checked one by one against minijinja 3.0; every other built-in filter fails on one).
const FILTERS_TAKING_UNDEFINED: [&str; 10] =
    ["default", "d", "escape", "e", "join", "groupby", "chain", "zip", "pprint", "tojson"];

/// Names a template defines for itself (`loop` inside a `for`, `self`).
const IMPLICIT_LOCALS: [&str; 2] = ["loop", "self"];

/// The variables a template reads, each with where and how (see [`crate::scope`]). Names the
/// template assigns anywhere (`set`, `for`, `with`) and the environment's
/// globals (`range`, `dict`, ...) are left out: a local that shadows a context variable is not
/// worth a guess. A string that is not a template, or does not compile, has none (`check`
/// reports the latter).
///
/// Uses minijinja's parser (`unstable_machinery`): the public API lists undeclared variables but
/// cannot tell `{{ inputs.x }}`, which fails when `x` is missing, from `{{ inputs.x is defined }}`,
/// which does not.
pub fn references(source: &str) -> Vec<Reference> {
    if !has_template(source) {
        return Vec::new();
    }
    let Ok(template) = minijinja::machinery::parse(source, "<template>", Default::default()) else {
        return Vec::new();
    };
    let mut walker = Walker { source, found: Vec::new(), locals: IMPLICIT_LOCALS.into_iter().collect() };
    walker.stmt(&template);
    let globals: HashSet<&str> = env().globals().map(|(name, _)| name).collect();
    let Walker { found, locals, .. } = walker;
    found
        .into_iter()
        .filter(|r| {
            r.path.first().is_some_and(|root| !locals.contains(root.as_str()) && !globals.contains(root.as_str()))
        })
        .collect()
}

struct Walker<'s> {
    source: &'s str,
    found: Vec<Reference>,
    locals: HashSet<&'s str>,
}

impl<'s> Walker<'s> {
    fn stmts(&mut self, body: &[ast::Stmt<'s>]) {
        for stmt in body {
            self.stmt(stmt);
        }
    }

    fn stmt(&mut self, stmt: &ast::Stmt<'s>) {
        use ast::Stmt as S;
        match stmt {
            S::Template(t) => self.stmts(&t.children),
            S::EmitExpr(e) => self.expr(&e.expr, Usage::Read),
            S::EmitRaw(_) => {}
            S::ForLoop(f) => {
                self.assign(&f.target);
                self.expr(&f.iter, Usage::Read);
                if let Some(filter) = &f.filter_expr {
                    self.expr(filter, Usage::Read);
                }
                self.stmts(&f.body);
                self.stmts(&f.else_body);
            }
            S::IfCond(c) => {
                self.expr(&c.expr, Usage::Read);
                self.stmts(&c.true_body);
                self.stmts(&c.false_body);
            }
            S::WithBlock(w) => {
                for (target, value) in &w.assignments {
                    self.assign(target);
                    self.expr(value, Usage::Passed);
                }
                self.stmts(&w.body);
            }
            S::Set(set) => {
                self.assign(&set.target);
                self.expr(&set.expr, Usage::Passed);
            }
            S::SetBlock(set) => {
                self.assign(&set.target);
                if let Some(filter) = &set.filter {
                    self.expr(filter, Usage::Passed);
                }
                self.stmts(&set.body);
            }
            S::AutoEscape(a) => {
                self.expr(&a.enabled, Usage::Passed);
                self.stmts(&a.body);
            }
            S::FilterBlock(f) => {
                self.expr(&f.filter, Usage::Passed);
                self.stmts(&f.body);
            }
            S::Do(d) => self.call(&d.call),
            // Statements of minijinja features Cairn does not enable (macros, blocks, includes,
            // loop controls) cannot occur in its templates.
            #[allow(unreachable_patterns)]
            _ => {}
        }
    }

    fn assign(&mut self, target: &ast::Expr<'s>) {
        match target {
            ast::Expr::Var(v) => {
                self.locals.insert(v.id);
            }
            ast::Expr::List(l) => l.items.iter().for_each(|item| self.assign(item)),
            ast::Expr::Tuple(t) => t.items.iter().for_each(|item| self.assign(item)),
            _ => {}
        }
    }

    fn push(&mut self, path: Vec<String>, usage: Usage, offset: u32) {
        let (line, column) = position(self.source, offset as usize);
        self.found.push(Reference { path, usage, line, column });
    }

    fn expr(&mut self, e: &ast::Expr<'s>, usage: Usage) {
        use ast::Expr as E;
        if let Some((path, offset)) = chain(e) {
            self.push(path, usage, offset);
            return;
        }
        match e {
            E::Var(_) | E::Const(_) => {}
            E::Slice(s) => {
                self.expr(&s.expr, Usage::Read);
                for bound in [&s.start, &s.stop, &s.step].into_iter().flatten() {
                    self.expr(bound, Usage::Read);
                }
            }
            E::UnaryOp(u) => self.expr(&u.expr, Usage::Read),
            E::BinOp(b) => {
                // `'key' in steps` tests for a key, like `steps.key is defined`.
                if matches!(b.op, ast::BinOpKind::In)
                    && let E::Const(key) = &b.left
                    && let Some(key) = key.value.as_str()
                    && let Some((mut path, offset)) = chain(&b.right)
                {
                    path.push(key.to_string());
                    self.push(path, Usage::Tested, offset);
                }
                self.expr(&b.left, Usage::Read);
                self.expr(&b.right, Usage::Read);
            }
            E::Compare(c) => {
                self.expr(&c.expr, Usage::Read);
                for op in &c.ops {
                    self.expr(&op.expr, Usage::Read);
                }
            }
            E::IfExpr(i) => {
                self.expr(&i.test_expr, Usage::Read);
                self.expr(&i.true_expr, usage);
                if let Some(other) = &i.false_expr {
                    self.expr(other, usage);
                }
            }
            E::Filter(f) => {
                if let Some(operand) = &f.expr {
                    let takes_undefined = FILTERS_TAKING_UNDEFINED.contains(&f.name);
                    self.expr(operand, if takes_undefined { Usage::Passed } else { Usage::Read });
                }
                self.args(&f.args);
            }
            E::Test(t) => {
                self.expr(&t.expr, Usage::Tested);
                self.args(&t.args);
            }
            E::GetAttr(g) => self.expr(&g.expr, Usage::Read),
            E::GetItem(g) => {
                self.expr(&g.expr, Usage::Read);
                self.expr(&g.subscript_expr, Usage::Read);
            }
            E::Call(c) => self.call(c),
            E::List(l) => l.items.iter().for_each(|item| self.expr(item, Usage::Passed)),
            E::Tuple(t) => t.items.iter().for_each(|item| self.expr(item, Usage::Passed)),
            E::Map(m) => m.keys.iter().chain(&m.values).for_each(|item| self.expr(item, Usage::Passed)),
        }
    }

    fn call(&mut self, c: &ast::Call<'s>) {
        match &c.expr {
            // A method: its receiver must exist.
            ast::Expr::GetAttr(method) => self.expr(&method.expr, Usage::Read),
            callee => self.expr(callee, Usage::Read),
        }
        self.args(&c.args);
    }

    fn args(&mut self, args: &[ast::CallArg<'s>]) {
        for arg in args {
            match arg {
                ast::CallArg::Pos(e)
                | ast::CallArg::Kwarg(_, e)
                | ast::CallArg::PosSplat(e)
                | ast::CallArg::KwargSplat(e) => self.expr(e, Usage::Passed),
            }
        }
    }
}

/// `a.b["c"][0]` as `["a", "b", "c", "0"]` with the byte offset of `a`; `None` unless the
/// expression is a variable followed by attribute lookups and constant subscripts only.
fn chain(e: &ast::Expr<'_>) -> Option<(Vec<String>, u32)> {
    match e {
        ast::Expr::Var(v) => Some((vec![v.id.to_string()], v.span().start_offset)),
        ast::Expr::GetAttr(g) => {
            let (mut path, offset) = chain(&g.expr)?;
            path.push(g.name.to_string());
            Some((path, offset))
        }
        ast::Expr::GetItem(g) => {
            let ast::Expr::Const(key) = &g.subscript_expr else { return None };
            let key = key.value.as_str().map_or_else(|| key.value.to_string(), str::to_string);
            let (mut path, offset) = chain(&g.expr)?;
            path.push(key);
            Some((path, offset))
        }
        _ => None,
    }
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

    fn refs(source: &str) -> Vec<(String, Usage, usize, usize)> {
        references(source).into_iter().map(|r| (r.path.join("."), r.usage, r.line, r.column)).collect()
    }

    #[test]
    fn references_say_how_each_variable_is_used_and_where() {
        use Usage::{Passed, Read, Tested};
        let r = |p: &str, u, l, c| (p.to_string(), u, l, c);
        assert_eq!(refs("Hi {{ inputs.name }}!"), vec![r("inputs.name", Read, 1, 7)]);
        assert_eq!(
            refs("{{ steps.a.output.text if steps.a is defined else inputs.goal }}"),
            vec![r("steps.a", Tested, 1, 27), r("steps.a.output.text", Read, 1, 4), r("inputs.goal", Read, 1, 51)]
        );
        assert_eq!(
            refs("é\n{{ inputs.x | default('y') }} {{ inputs['y'] | upper }} {{ 'k' in signals }}"),
            vec![
                r("inputs.x", Passed, 2, 4),
                r("inputs.y", Read, 2, 34),
                r("signals.k", Tested, 2, 67),
                r("signals", Read, 2, 67)
            ]
        );
        // Computed keys end the path; locals, loop variables and globals are not context reads.
        assert_eq!(
            refs(
                "{% set n = 2 %}{% for s in steps.a.output.items %}{{ loop.index }}{{ s }}{{ steps[n].x }}{% endfor %}{{ range(n) }}"
            ),
            vec![r("steps.a.output.items", Read, 1, 28), r("steps", Read, 1, 77)]
        );
        assert_eq!(refs("no template here {"), vec![]);
        assert_eq!(refs("{{ broken"), vec![], "a template that does not compile is reported by `check`");
    }
}
