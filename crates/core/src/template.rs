//! `with` templating (minijinja). Every string inside a step's `with` is a template over the same
//! variables as conditions (`inputs`, `steps`, `run`). A string that is exactly one expression,
//! like `"{{ steps.fetch.output.items }}"`, keeps the expression's JSON type instead of becoming
//! text. Rendering is bounded by fuel so a hostile template cannot spin forever.
//!
//! A string that prints `{{ secrets.NAME }}` renders to text in which each secret stays its
//! reference, plus a [`SecretSlot`] that says where the values go (see [`crate::secrets`]): which
//! printed values were secrets is known from the template, not guessed from the text.

use crate::scope::{Reference, Usage, position};
use crate::secrets::{self, Part, SecretSlot};
use minijinja::machinery::ast;
use minijinja::value::{Object, ObjectRepr};
use minijinja::{Environment, ErrorKind, UndefinedBehavior};
use serde_json::Value;
use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex, OnceLock};

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
/// Secrets stay their reference text (`{{ secrets.NAME }}`); [`render_input`] also says where
/// they are.
pub fn render(with: &Value, ctx: &Value) -> Result<Value, String> {
    render_input(with, ctx).map(|(value, _)| value)
}

/// Renders a `with` block for an attempt: the input to journal, where each secret stays its
/// reference text, and one [`SecretSlot`] per string that holds secrets, for the engine to fill
/// in when the attempt runs.
pub fn render_input(with: &Value, ctx: &Value) -> Result<(Value, Vec<SecretSlot>), String> {
    let mut slots = Vec::new();
    let value = render_at(with, ctx, "", &mut slots)?;
    Ok((value, slots))
}

fn render_at(with: &Value, ctx: &Value, pointer: &str, slots: &mut Vec<SecretSlot>) -> Result<Value, String> {
    match with {
        Value::String(s) if has_template(s) && reads_secrets(s) => {
            let slot = SecretSlot { pointer: pointer.to_string(), parts: render_with_secrets(s, ctx)? };
            let stored = slot.stored();
            if slot.names().next().is_some() {
                slots.push(slot);
            }
            Ok(Value::String(stored))
        }
        Value::String(s) if has_template(s) => render_str(s, ctx),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, item)| render_at(item, ctx, &format!("{pointer}/{i}"), slots))
            .collect::<Result<Vec<_>, _>>()
            .map(Value::Array),
        Value::Object(map) => {
            let mut out = serde_json::Map::with_capacity(map.len());
            for (k, v) in map {
                out.insert(k.clone(), render_at(v, ctx, &secrets::pointer_key(pointer, k), slots)?);
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

/// Whether a template reads `secrets` (not a local of that name).
fn reads_secrets(source: &str) -> bool {
    source.contains(secrets::ROOT)
        && references(source).iter().any(|r| r.path.first().is_some_and(|root| root == secrets::ROOT))
}

/// Brackets a printed secret in the text rendered by [`secret_env`]; private-use characters,
/// refused in printed data, so only the formatter can write them.
const MARK_START: char = '\u{E000}';
const MARK_END: char = '\u{E001}';

/// The names of the secrets the formatter printed, in order, for one rendering.
type Printed = Arc<Mutex<Vec<String>>>;

/// `secrets` in the context of one rendering: any name gives a [`SecretRef`].
#[derive(Debug)]
struct SecretsObject {
    printed: Printed,
}

impl Object for SecretsObject {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Plain
    }

    fn get_value(self: &Arc<Self>, key: &minijinja::Value) -> Option<minijinja::Value> {
        let name = key.as_str()?.to_string();
        Some(minijinja::Value::from_object(SecretRef { name, printed: self.printed.clone() }))
    }

    fn render(self: &Arc<Self>, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Turned into text some other way than printed (validation refuses that): a mark the
        // check after rendering reports.
        write!(f, "{MARK_START}")
    }
}

/// `secrets.NAME`: printed, it becomes a marked name the engine replaces with the value.
#[derive(Debug)]
struct SecretRef {
    name: String,
    printed: Printed,
}

impl Object for SecretRef {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Plain
    }

    fn render(self: &Arc<Self>, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{MARK_START}")
    }
}

/// The environment for strings that read secrets: like [`env`], with a formatter that marks
/// printed secrets and refuses printed data holding the marks.
fn secret_env() -> &'static Environment<'static> {
    static ENV: OnceLock<Environment<'static>> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.set_fuel(Some(FUEL));
        env.set_formatter(|out, _state, value| {
            let text = match value.downcast_object_ref::<SecretRef>() {
                Some(secret) => {
                    if let Ok(mut printed) = secret.printed.lock() {
                        printed.push(secret.name.clone());
                    }
                    format!("{MARK_START}{}{MARK_END}", secret.name)
                }
                None => {
                    let text = value.to_string();
                    if text.contains([MARK_START, MARK_END]) {
                        return Err(minijinja::Error::new(
                            ErrorKind::InvalidOperation,
                            "a secret can only be printed as it is, `{{ secrets.NAME }}`, not combined or filtered (or \
                             a printed value holds U+E000 or U+E001, characters Cairn reserves here)",
                        ));
                    }
                    text
                }
            };
            out.write_str(&text).map_err(|e| minijinja::Error::new(ErrorKind::WriteFailure, e.to_string()))
        });
        env
    })
}

/// Renders a string that prints secrets into its parts: text, and the secrets where they were
/// printed. Always text, even when the string is one expression (a secret is a string).
fn render_with_secrets(s: &str, ctx: &Value) -> Result<Vec<Part>, String> {
    let fail = |why: &str| format!("template `{s}`: {why}");
    if s.contains([MARK_START, MARK_END]) {
        return Err(fail("it holds U+E000 or U+E001, characters Cairn reserves in templates that print secrets"));
    }
    let printed: Printed = Arc::default();
    let mut vars: BTreeMap<String, minijinja::Value> = match ctx {
        Value::Object(map) => {
            map.iter().map(|(k, v)| (k.clone(), minijinja::Value::from(minijinja::value::Serde(v)))).collect()
        }
        _ => BTreeMap::new(),
    };
    vars.insert(secrets::ROOT.to_string(), minijinja::Value::from_object(SecretsObject { printed: printed.clone() }));
    let text = secret_env().render_str(s, minijinja::Value::from(vars)).map_err(|e| fail(&e.to_string()))?;
    let printed = printed.lock().map(|p| p.clone()).unwrap_or_default();
    // Every mark in the text must be one the formatter wrote, in the same order.
    let misuse = || fail("a secret can only be printed as it is, `{{ secrets.NAME }}`");
    let mut parts = Vec::new();
    let mut names = printed.iter();
    let mut rest = text.as_str();
    while let Some(start) = rest.find(MARK_START) {
        if start > 0 {
            parts.push(Part::Text(rest[..start].to_string()));
        }
        let after = &rest[start + MARK_START.len_utf8()..];
        let end = after.find(MARK_END).ok_or_else(misuse)?;
        let name = &after[..end];
        if names.next().map(String::as_str) != Some(name) || name.contains(MARK_START) {
            return Err(misuse());
        }
        parts.push(Part::Secret(name.to_string()));
        rest = &after[end + MARK_END.len_utf8()..];
    }
    if rest.contains(MARK_END) || names.next().is_some() {
        return Err(misuse());
    }
    if !rest.is_empty() {
        parts.push(Part::Text(rest.to_string()));
    }
    Ok(parts)
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
    let mut walker = Walker { source, found: Vec::new(), locals: IMPLICIT_LOCALS.into_iter().collect(), captured: 0 };
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
    /// Inside a `set` or `filter` block, whose output is captured, not printed as it is.
    captured: usize,
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
            S::EmitExpr(e) => self.emitted(&e.expr),
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
                self.captured += 1;
                self.stmts(&set.body);
                self.captured -= 1;
            }
            S::AutoEscape(a) => {
                self.expr(&a.enabled, Usage::Passed);
                self.stmts(&a.body);
            }
            S::FilterBlock(f) => {
                self.expr(&f.filter, Usage::Passed);
                self.captured += 1;
                self.stmts(&f.body);
                self.captured -= 1;
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
        self.found.push(Reference { path, usage, line, column, printed: false });
    }

    /// The expression of `{{ … }}`: a variable printed as it is (directly, or as a branch of an
    /// inline `if`) is marked `printed`; anything else is read as usual.
    fn emitted(&mut self, e: &ast::Expr<'s>) {
        if self.captured == 0 {
            if let Some((path, offset)) = chain(e) {
                self.push(path, Usage::Read, offset);
                if let Some(r) = self.found.last_mut() {
                    r.printed = true;
                }
                return;
            }
            if let ast::Expr::IfExpr(i) = e {
                self.expr(&i.test_expr, Usage::Read);
                self.emitted(&i.true_expr);
                if let Some(other) = &i.false_expr {
                    self.emitted(other);
                }
                return;
            }
        }
        self.expr(e, Usage::Read);
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

    #[test]
    fn a_secret_renders_to_its_reference_and_a_slot_says_where_it_goes() {
        use crate::secrets::{Part, SecretSlot};
        let ctx = json!({"inputs": {"host": "api.test", "n": [1, 2]}});
        let with = json!({
            "headers": {"Authorization": "Bearer {{ secrets.API_TOKEN }}", "a/b": "{{ secrets.B }}"},
            "url": "http://{{ inputs.host }}/x",
            "list": ["{% for i in inputs.n %}{{ secrets.C if i > 1 else '-' }}{% endfor %}", 3],
        });
        let (value, slots) = render_input(&with, &ctx).expect("renders");
        assert_eq!(
            value,
            json!({
                "headers": {"Authorization": "Bearer {{ secrets.API_TOKEN }}", "a/b": "{{ secrets.B }}"},
                "url": "http://api.test/x",
                "list": ["-{{ secrets.C }}", 3],
            })
        );
        let text = |t: &str| Part::Text(t.to_string());
        let secret = |n: &str| Part::Secret(n.to_string());
        assert_eq!(
            slots,
            vec![
                SecretSlot {
                    pointer: "/headers/Authorization".into(),
                    parts: vec![text("Bearer "), secret("API_TOKEN")]
                },
                SecretSlot { pointer: "/headers/a~1b".into(), parts: vec![secret("B")] },
                SecretSlot { pointer: "/list/0".into(), parts: vec![text("-"), secret("C")] },
            ]
        );
        assert_eq!(render(&with, &ctx).expect("renders"), value, "`render` journals the same text");
    }

    #[test]
    fn data_that_looks_like_a_secret_reference_is_never_taken_for_one() {
        use crate::secrets::Part;
        let ctx = json!({"inputs": {"evil": "{{ secrets.API_TOKEN }}", "marked": "\u{E000}API_TOKEN\u{E001}"}});
        // Printed data is text, whatever it looks like: only the printed secret is a secret.
        let (value, slots) = render_input(&json!("{{ inputs.evil }} {{ secrets.API_TOKEN }}"), &ctx).expect("renders");
        assert_eq!(value, json!("{{ secrets.API_TOKEN }} {{ secrets.API_TOKEN }}"));
        assert_eq!(slots.len(), 1);
        assert_eq!(
            slots[0].parts,
            vec![Part::Text("{{ secrets.API_TOKEN }} ".into()), Part::Secret("API_TOKEN".into())]
        );
        let (_, none) = render_input(&json!("{{ inputs.evil }}"), &ctx).expect("renders");
        assert!(none.is_empty(), "a string that prints no secret has no slot");
        // Data holding the marks the formatter uses is refused rather than trusted.
        let err = render_input(&json!("{{ inputs.marked }}{{ secrets.API_TOKEN }}"), &ctx).expect_err("refused");
        assert!(err.contains("U+E000"), "{err}");
    }

    #[test]
    fn a_secret_used_other_than_printed_does_not_render() {
        let ctx = json!({"inputs": {}});
        for misuse in ["{{ secrets.A | upper }}", "{{ 'Bearer ' ~ secrets.A }}", "{{ secrets }}"] {
            let err = render_input(&json!(misuse), &ctx).expect_err(misuse);
            assert!(err.contains("can only be printed as it is"), "{misuse}: {err}");
        }
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
