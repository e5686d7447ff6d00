//! A plan printed as a definition file: `cairn plan --format yaml|json` writes the planner's
//! definition in the file format `cairn validate` and `cairn run FILE` read, so a printed plan
//! runs as written (or after editing).
//!
//! The compiled [`Definition`] has resolved every default (retry from the kind, timeouts in ms),
//! so the document states each of them explicitly: it parses back to the same definition
//! whatever the defaults of a later release. The plan's provenance (goal, matched entries, what
//! was left out) goes in `description`, the format's free-text field.

use cairn_core::definition::{Compensate, Definition, Inject, OnDeadline, OnFailure, Step, Trigger};
use cairn_core::event::PlanInfo;
use cairn_core::retry::RetryPolicy;
use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};
use serde_json::{Value, json};

/// A document whose mappings keep the order they were written in (`name` before `steps`, `id`
/// first in a step), as a person would write the file. Values taken from the definition as they
/// are (`with`, input defaults) are plain JSON.
#[derive(Debug, Clone, PartialEq)]
pub enum Doc {
    Map(Vec<(String, Doc)>),
    List(Vec<Doc>),
    Value(Value),
}

impl Doc {
    fn map() -> Doc {
        Doc::Map(Vec::new())
    }

    fn set(&mut self, key: &str, value: impl Into<Doc>) {
        if let Doc::Map(entries) = self {
            let value = value.into();
            match entries.iter_mut().find(|(k, _)| k == key) {
                Some(entry) => entry.1 = value,
                None => entries.push((key.to_string(), value)),
            }
        }
    }

    /// Pretty JSON, in the document's order.
    pub fn json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }
}

impl From<Value> for Doc {
    fn from(v: Value) -> Doc {
        Doc::Value(v)
    }
}

impl Serialize for Doc {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Doc::Map(entries) => {
                let mut m = serializer.serialize_map(Some(entries.len()))?;
                for (k, v) in entries {
                    m.serialize_entry(k, v)?;
                }
                m.end()
            }
            Doc::List(items) => {
                let mut seq = serializer.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(item)?;
                }
                seq.end()
            }
            Doc::Value(v) => v.serialize(serializer),
        }
    }
}

/// The definition file for a plan, with its provenance as the description.
pub fn plan_document(def: &Definition, info: &PlanInfo) -> Doc {
    let mut doc = document(def);
    let left_out = info.left_out_text().map(|t| format!("; {t}")).unwrap_or_default();
    let provenance =
        format!("Planned from the goal \"{}\" (matched: {}{left_out})", info.goal, info.matched.join(" -> "));
    doc.set("description", json!(provenance));
    doc
}

/// `def` in the file format, every resolved value explicit.
pub fn document(def: &Definition) -> Doc {
    let mut doc = Doc::map();
    doc.set("cairn", json!(def.format));
    doc.set("name", json!(def.name));
    doc.set("version", json!(def.version));
    if let Some(d) = &def.description {
        doc.set("description", json!(d));
    }
    if let Some(a) = &def.artifact {
        doc.set("artifact", json!(a));
    }
    if let Some(ms) = def.retention_ms {
        doc.set("retention", json!(duration(ms)));
    }
    if !def.inputs.is_empty() {
        let mut inputs = Doc::map();
        for (name, spec) in &def.inputs {
            let mut i = Doc::map();
            if let Some(d) = &spec.description {
                i.set("description", json!(d));
            }
            if let Some(v) = &spec.default {
                i.set("default", v.clone());
            }
            inputs.set(name, i);
        }
        doc.set("inputs", inputs);
    }
    if let Some(b) = &def.budget {
        doc.set("budget", budget(b));
    }
    if !def.tools.is_empty() {
        let mut tools = Doc::map();
        for (name, spec) in def.tools.iter() {
            tools.set(name, tool(spec));
        }
        doc.set("tools", tools);
    }
    doc.set("steps", Doc::List(def.steps.iter().map(step).collect()));
    doc
}

fn budget(b: &cairn_core::definition::Budget) -> Doc {
    let mut m = Doc::map();
    if let Some(usd) = b.max_cost_usd {
        m.set("max_cost_usd", json!(usd));
    }
    if let Some(tokens) = b.max_tokens {
        m.set("max_tokens", json!(tokens));
    }
    let on_exceed = serde_json::to_value(b.on_exceed).unwrap_or(json!("fail"));
    m.set("on_exceed", on_exceed);
    m
}

/// A workflow's own tool as written: the compiled form without what compiling added.
fn tool(spec: &Value) -> Doc {
    let mut m = Doc::map();
    for (k, v) in spec.as_object().into_iter().flatten() {
        match k.as_str() {
            "name" | "deny_internal" => {}
            "timeout_ms" | "connect_timeout_ms" => {
                m.set(k.trim_end_matches("_ms"), json!(duration(v.as_u64().unwrap_or(0))));
            }
            _ => m.set(k, v.clone()),
        }
    }
    m
}

fn step(s: &Step) -> Doc {
    let mut m = Doc::map();
    m.set("id", json!(s.id.as_str()));
    m.set("kind", json!(s.kind));
    if !s.needs.is_empty() {
        m.set("needs", json!(s.needs.iter().map(|n| n.as_str()).collect::<Vec<_>>()));
    }
    if let Some(when) = &s.when {
        m.set("when", json!(when));
    }
    if let Some(f) = &s.for_each {
        m.set("for_each", f.items.clone());
        if let Some(n) = f.max_parallel {
            m.set("max_parallel", json!(n));
        }
        m.set("max_items", json!(f.max_items));
    }
    if let Some(l) = &s.repeat {
        let mut r = Doc::map();
        r.set("until", json!(l.until));
        r.set("max_iterations", json!(l.max_iterations));
        m.set("loop", r);
    }
    if !s.with.is_null() {
        m.set("with", s.with.clone());
    }
    // A wait has no attempts: nothing shapes them (its end is in `with`); a subworkflow's attempt
    // is a child run, which a timeout does not bound.
    match s.role() {
        cairn_core::kinds::Role::Wait => {}
        cairn_core::kinds::Role::Subworkflow => m.set("retry", retry(&s.retry)),
        _ => {
            m.set("retry", retry(&s.retry));
            m.set("timeout", json!(s.timeout_ms.map(duration).unwrap_or_else(|| "none".into())));
        }
    }
    match &s.on_failure {
        OnFailure::Fail => {}
        OnFailure::Continue => m.set("on_failure", json!("continue")),
        OnFailure::Escalate => m.set("on_failure", json!("escalate")),
        OnFailure::Fallback(f) => m.set("on_failure", json!({"fallback": f.as_str()})),
    }
    match s.trigger {
        Trigger::AllSucceeded => {}
        Trigger::NoneFailed => m.set("trigger", json!("none_failed")),
        Trigger::AllDone => m.set("trigger", json!("all_done")),
    }
    if let Some(i) = &s.inject {
        m.set("inject", inject(i));
    }
    if let Some(a) = &s.approval {
        let mut approval = Doc::map();
        approval.set("prompt", json!(a.prompt));
        if !a.approvers.is_empty() {
            approval.set("approvers", json!(a.approvers));
        }
        if let Some(ms) = a.deadline_ms {
            approval.set("deadline", json!(duration(ms)));
        }
        let on_deadline = match a.on_deadline {
            OnDeadline::Reject => "reject",
            OnDeadline::Fail => "fail",
            OnDeadline::Wait => "wait",
        };
        approval.set("on_deadline", json!(on_deadline));
        m.set("approval", approval);
    }
    if let Some(c) = &s.compensate {
        m.set("compensate", compensate(c));
    }
    if let Some(b) = &s.budget {
        m.set("budget", budget(b));
    }
    m
}

fn retry(r: &RetryPolicy) -> Doc {
    let mut m = Doc::map();
    m.set("max_attempts", json!(r.max_attempts));
    m.set("initial_delay", json!(duration(r.initial_delay_ms)));
    m.set("multiplier", json!(r.multiplier));
    m.set("max_delay", json!(duration(r.max_delay_ms)));
    m.set("jitter", json!(r.jitter));
    m
}

fn inject(i: &Inject) -> Doc {
    let mut m = Doc::map();
    m.set("fail_times", json!(i.fail_times));
    m.set("fail_rate", json!(i.fail_rate));
    m.set("fail_class", json!(i.fail_class.as_str()));
    m.set("delay", json!(duration(i.delay_ms)));
    m.set("hang", json!(i.hang));
    m
}

fn compensate(c: &Compensate) -> Doc {
    let mut m = Doc::map();
    m.set("kind", json!(c.kind));
    if !c.with.is_null() {
        m.set("with", c.with.clone());
    }
    m.set("retry", retry(&c.retry));
    m
}

/// Milliseconds in the largest unit that states them exactly: `30s`, `250ms`, `7d`.
fn duration(ms: u64) -> String {
    for (unit, size) in [("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1_000)] {
        if ms > 0 && ms.is_multiple_of(size) {
            return format!("{}{unit}", ms / size);
        }
    }
    format!("{ms}ms")
}

/// The document as block-style YAML. Strings that could read as anything but themselves (a
/// number, `yes`, `null`, a template's braces, a leading space…) are double-quoted with
/// escapes, so the text parses back to exactly this document.
pub fn yaml(doc: &Doc) -> String {
    let mut out = String::new();
    match block(doc) {
        Some(Block::Map(entries)) => mapping(&entries, 0, &mut out),
        Some(Block::List(items)) => sequence(&items, 0, &mut out),
        None => {
            out.push_str(&inline(doc));
            out.push('\n');
        }
    }
    out
}

/// A non-empty mapping or sequence, as borrowed entries (from a [`Doc`] or a JSON value).
enum Block<'a> {
    Map(Vec<(&'a str, Node<'a>)>),
    List(Vec<Node<'a>>),
}

#[derive(Clone, Copy)]
enum Node<'a> {
    Doc(&'a Doc),
    Json(&'a Value),
}

impl<'a> From<&'a Doc> for Node<'a> {
    fn from(d: &'a Doc) -> Self {
        Node::Doc(d)
    }
}

fn block<'a>(node: impl Into<Node<'a>>) -> Option<Block<'a>> {
    match node.into() {
        Node::Doc(Doc::Map(e)) if !e.is_empty() => {
            Some(Block::Map(e.iter().map(|(k, v)| (k.as_str(), Node::Doc(v))).collect()))
        }
        Node::Doc(Doc::List(i)) if !i.is_empty() => Some(Block::List(i.iter().map(Node::Doc).collect())),
        Node::Doc(Doc::Value(v)) | Node::Json(v) => match v {
            Value::Object(m) if !m.is_empty() => {
                Some(Block::Map(m.iter().map(|(k, v)| (k.as_str(), Node::Json(v))).collect()))
            }
            Value::Array(a) if !a.is_empty() => Some(Block::List(a.iter().map(Node::Json).collect())),
            _ => None,
        },
        _ => None,
    }
}

fn mapping(entries: &[(&str, Node<'_>)], indent: usize, out: &mut String) {
    for (k, v) in entries {
        out.push_str(&" ".repeat(indent));
        out.push_str(&key(k));
        out.push(':');
        match block(*v) {
            Some(Block::Map(inner)) => {
                out.push('\n');
                mapping(&inner, indent + 2, out);
            }
            Some(Block::List(items)) => {
                out.push('\n');
                sequence(&items, indent + 2, out);
            }
            None => {
                out.push(' ');
                out.push_str(&inline_node(*v));
                out.push('\n');
            }
        }
    }
}

fn sequence(items: &[Node<'_>], indent: usize, out: &mut String) {
    for item in items {
        // A nested block is written two deeper, then its first indent becomes the item's dash.
        let nested = block(*item).map(|b| {
            let mut text = String::new();
            match b {
                Block::Map(entries) => mapping(&entries, indent + 2, &mut text),
                Block::List(inner) => sequence(&inner, indent + 2, &mut text),
            }
            text
        });
        out.push_str(&" ".repeat(indent));
        out.push_str("- ");
        match nested {
            Some(text) => out.push_str(&text[indent + 2..]),
            None => {
                out.push_str(&inline_node(*item));
                out.push('\n');
            }
        }
    }
}

fn inline_node(n: Node<'_>) -> String {
    match n {
        Node::Doc(d) => inline(d),
        Node::Json(v) => inline_value(v),
    }
}

/// An empty mapping or sequence, or a scalar, on one line.
fn inline(d: &Doc) -> String {
    match d {
        Doc::Map(_) => "{}".into(),
        Doc::List(_) => "[]".into(),
        Doc::Value(v) => inline_value(v),
    }
}

fn inline_value(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) if is_plain(s) => s.clone(),
        Value::String(s) => quoted(s),
        Value::Array(_) => "[]".into(),
        Value::Object(_) => "{}".into(),
    }
}

fn key(k: &str) -> String {
    let simple = k.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if simple && !reserved(k) { k.to_string() } else { quoted(k) }
}

/// Whether `s` reads back as this same string when written bare: it starts with a letter,
/// uses only characters with no meaning to YAML in a block value, and is no keyword.
fn is_plain(s: &str) -> bool {
    let worded = s.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && !s.ends_with(' ')
        && s.chars().all(|c| c.is_ascii_alphanumeric() || " _-./@(),'!?+=".contains(c))
        && !reserved(s);
    worded || is_duration(s)
}

/// `250ms`, `1.5s`, `7d`: digits then a unit, which no YAML reader takes for a number.
fn is_duration(s: &str) -> bool {
    let digits = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (number, unit) = s.split_at(digits);
    number.starts_with(|c: char| c.is_ascii_digit())
        && number.chars().filter(|&c| c == '.').count() <= 1
        && !number.ends_with('.')
        && ["ms", "s", "m", "min", "h", "d"].contains(&unit)
}

/// Words a YAML reader may take for a boolean, null or number.
fn reserved(s: &str) -> bool {
    const WORDS: [&str; 13] =
        ["true", "false", "null", "yes", "no", "on", "off", "y", "n", "inf", "nan", "infinity", "~"];
    WORDS.iter().any(|w| w.eq_ignore_ascii_case(s))
}

/// A double-quoted YAML scalar; controls and the characters YAML treats as line breaks are
/// escaped.
fn quoted(s: &str) -> String {
    let mut q = String::with_capacity(s.len() + 2);
    q.push('"');
    for c in s.chars() {
        match c {
            '"' => q.push_str("\\\""),
            '\\' => q.push_str("\\\\"),
            '\n' => q.push_str("\\n"),
            '\t' => q.push_str("\\t"),
            '\r' => q.push_str("\\r"),
            c if c.is_control() || matches!(c, '\u{2028}' | '\u{2029}' | '\u{feff}' | '\u{fffe}' | '\u{ffff}') => {
                q.push_str(&format!("\\u{:04x}", c as u32));
            }
            c => q.push(c),
        }
    }
    q.push('"');
    q
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_core::catalog::Catalog;
    use cairn_core::validate::parse_definition;
    use serde_json::Map;

    fn reparsed(doc: &Doc) -> (Definition, Definition) {
        let from_yaml = parse_definition(&yaml(doc), "plan.yaml", crate::kinds::kinds())
            .unwrap_or_else(|p| panic!("YAML refused: {p:?}\n{}", yaml(doc)));
        let text = doc.json();
        let from_json = parse_definition(&text, "plan.json", crate::kinds::kinds())
            .unwrap_or_else(|p| panic!("JSON refused: {p:?}\n{text}"));
        (from_yaml, from_json)
    }

    #[test]
    fn budgets_and_a_workflows_own_tools_are_written_back() {
        let source = "name: t\nbudget: {max_cost_usd: 2.5, on_exceed: escalate}\ntools:\n  hook: {type: http_request, allow_hosts: [a.example], timeout: 10s, approval: never}\nsteps:\n  - {id: a, kind: tool, budget: {max_tokens: 900}, with: {tool: hook, args: {url: 'https://a.example/'}}}\n";
        let def = parse_definition(source, "t.yaml", crate::kinds::kinds()).expect("valid");
        assert_eq!(def.tools["hook"]["timeout_ms"], 10_000);
        let (from_yaml, from_json) = reparsed(&document(&def));
        assert_eq!(from_yaml, def);
        assert_eq!(from_json, def);
    }

    #[test]
    fn every_shipped_example_written_back_parses_to_the_same_definition() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples");
        let mut checked = 0;
        let entries = std::fs::read_dir(dir).expect("examples").map(|e| e.expect("entry").path());
        let tools =
            std::fs::read_dir(format!("{dir}/tools")).expect("examples/tools").map(|e| e.expect("entry").path());
        for path in entries.chain(tools).filter(|p| p.extension().is_some_and(|e| e == "yaml")) {
            let source = std::fs::read_to_string(&path).expect("read example");
            let Ok(def) = parse_definition(&source, &path.display().to_string(), crate::kinds::kinds()) else {
                continue;
            };
            let (from_yaml, from_json) = reparsed(&document(&def));
            assert_eq!(from_yaml, def, "{}", path.display());
            assert_eq!(from_json, def, "{}", path.display());
            checked += 1;
        }
        assert!(checked >= 3, "only {checked} examples parsed");
    }

    #[test]
    fn every_catalog_plan_written_back_parses_to_the_plan_with_its_provenance() {
        let catalog = Catalog::builtin().expect("catalog");
        let goals = catalog
            .describe()
            .iter()
            .filter_map(|l| l.split("e.g. \"").nth(1)?.split('"').next().map(String::from))
            .collect::<Vec<_>>();
        assert!(goals.len() >= 10, "{goals:?}");
        for goal in goals.iter().map(String::as_str).chain(["summarize the report but do not send email"]) {
            let (def, info) = catalog.plan(goal, crate::kinds::kinds()).unwrap_or_else(|e| panic!("{goal}: {e}"));
            let doc = plan_document(&def, &info);
            let (from_yaml, from_json) = reparsed(&doc);
            let description = description_of(&doc);
            assert!(description.starts_with(&format!("Planned from the goal \"{goal}\" (matched: ")), "{description}");
            let expected = Definition { description: Some(description), ..def };
            assert_eq!(from_yaml, expected, "{goal}");
            assert_eq!(from_json, expected, "{goal}");
        }
        let (def, info) =
            catalog.plan("summarize the report but do not send email", crate::kinds::kinds()).expect("plan");
        assert_eq!(
            description_of(&plan_document(&def, &info)),
            "Planned from the goal \"summarize the report but do not send email\" (matched: generate_summary; left \
             out: send_email (\"do not send email\"))"
        );
    }

    fn description_of(doc: &Doc) -> String {
        let Doc::Map(entries) = doc else { return String::new() };
        match entries.iter().find(|(k, _)| k == "description") {
            Some((_, Doc::Value(Value::String(d)))) => d.clone(),
            _ => String::new(),
        }
    }

    #[test]
    fn a_plan_reads_in_the_order_a_person_writes_it() {
        let catalog = Catalog::builtin().expect("catalog");
        let (def, info) = catalog.plan("generate summary and send email", crate::kinds::kinds()).expect("plan");
        let text = yaml(&plan_document(&def, &info));
        let top: Vec<&str> = text.lines().filter(|l| !l.starts_with(' ')).filter_map(|l| l.split(':').next()).collect();
        assert_eq!(top, ["cairn", "name", "version", "description", "inputs", "steps"], "{text}");
        assert!(text.contains("\n  - id: generate_summary\n    kind: mock_model\n"), "{text}");
        assert!(text.contains("\n      initial_delay: 200ms\n"), "durations stay bare: {text}");
        let json = plan_document(&def, &info).json();
        assert!(json.starts_with("{\n  \"cairn\": 1,\n  \"name\": "), "{json}");
    }

    #[test]
    fn strings_that_yaml_would_read_as_something_else_are_quoted() {
        let awkward = [
            "yes",
            "No",
            "null",
            "~",
            "true",
            "1.5",
            "0x10",
            "",
            " lead",
            "trail ",
            "a: b",
            "a #b",
            "#x",
            "- item",
            "{{ run.id }}",
            "[1]",
            "multi\nline",
            "tab\there",
            "quote \" and \\",
            "nel\u{85}ls\u{2028}",
            "bell\u{7}",
            "é ü 漢字",
            "1.5s",
            "250ms",
            "1.2.3s",
            "5sec",
            "12:30",
            "2026-01-01",
            "!tag",
            "&anchor",
            "*alias",
            "%dir",
            "@at",
            "`tick`",
            "'single'",
            "plain words",
        ];
        let with: Map<String, Value> = awkward.iter().enumerate().map(|(i, s)| (format!("k{i}"), json!(s))).collect();
        let keys: Map<String, Value> = awkward.iter().map(|s| (s.to_string(), json!(1))).collect();
        let value = json!({"with": with, "keys": keys, "nested": [[1, [2]], [{"a": []}], {}, [], null, -3, 2.5e-7]});
        let text = yaml(&Doc::Value(value.clone()));
        let back: Value = parse_definition_free(&text);
        assert_eq!(back, value, "\n{text}");
        assert!(text.contains(": plain words\n") && text.contains(": 250ms\n"), "plain strings stay bare:\n{text}");
    }

    /// Reads YAML as plain JSON through the same parser the definitions use.
    fn parse_definition_free(text: &str) -> Value {
        // A step's `with` is taken as written, so wrap the value there and read it back.
        let doc = json!({"name": "t", "steps": [{"id": "a", "kind": "noop", "with": {"v": "VALUE"}}]});
        let wrapped = yaml(&Doc::Value(doc));
        let indented: String = text.lines().map(|l| format!("        {l}\n")).collect();
        let source = wrapped.replace(" v: VALUE\n", &format!(" v:\n{indented}"));
        let def =
            parse_definition(&source, "t.yaml", crate::kinds::kinds()).unwrap_or_else(|p| panic!("{p:?}\n{source}"));
        def.steps[0].with["v"].clone()
    }
}
