//! Definition files in, a compiled [`Definition`] (or every problem at once) out.
//!
//! **Invariant: once the document has been read, validation reports every problem it finds, each
//! with `file:line:column`**, so one `cairn validate` run is enough to fix a file. Only an error
//! that stops the parser itself (broken syntax, an unknown field, a value of the wrong type) ends
//! early, and it is then the only problem reported.
//!
//! JSON is read by the same YAML parser (a JSON document is YAML flow syntax), so locations work
//! the same for both formats. The raw structs below mirror the file format with
//! [`Spanned`] fields wherever a later check needs to point at a value.

use crate::definition::{Definition, FORMAT_VERSION, Inject, InputSpec, OnFailure, Step, Trigger};
use crate::duration::{format_ms, parse_ms};
use crate::event::ErrorClass;
use crate::ids::StepId;
use crate::kinds;
use crate::retry::{MAX_ATTEMPTS_RANGE, MAX_DELAY_LIMIT_MS, MULTIPLIER_RANGE, RetryPolicy};
use crate::{expr, template};
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::Value;
use serde_saphyr::{Location, Spanned};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

/// The longest timeout or retry delay a definition may ask for.
const DAY_MS: u64 = 24 * 3_600_000;

/// One problem found in a definition. Display: `FILE:LINE:COL: step `ID`: MESSAGE`, leaving out
/// the parts that are unknown. `code` is stable, for tools and docs; the message is for people
/// and says how to fix the problem.
#[derive(Clone, Debug, PartialEq)]
pub struct Problem {
    pub file: String,
    /// 1-based line, when the problem has a place in the file.
    pub line: Option<u64>,
    /// 1-based column (in characters).
    pub column: Option<u64>,
    /// The step the problem belongs to, if any.
    pub step: Option<String>,
    /// Short stable identifier such as `duplicate_id`, `unknown_need` or `cycle`.
    pub code: &'static str,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(column) = self.column {
                write!(f, ":{column}")?;
            }
        }
        f.write_str(": ")?;
        if let Some(step) = &self.step {
            write!(f, "step `{step}`: ")?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for Problem {}

/// Parses a YAML or JSON definition and validates it; returns every problem at once, in source
/// order.
pub fn parse_definition(source: &str, file: &str) -> Result<Definition, Vec<Problem>> {
    if source.trim().is_empty() {
        return Err(vec![Problem {
            file: file.to_string(),
            line: None,
            column: None,
            step: None,
            code: "empty",
            message: EMPTY_MESSAGE.to_string(),
        }]);
    }
    let raw: RawDefinition = serde_saphyr::from_str(source).map_err(|e| vec![parse_problem(&e, file)])?;
    let mut problems = Problems { file, list: Vec::new() };
    let definition = compile(raw, &mut problems);
    if problems.list.is_empty() {
        Ok(definition)
    } else {
        let mut list = problems.list;
        // Stable: problems at the same place keep the order the checks found them in.
        list.sort_by_key(|p| (p.line.is_none(), p.line, p.column));
        Err(list)
    }
}

const EMPTY_MESSAGE: &str = "the file holds no definition: write at least `name:` and a `steps:` list";

// ---------------------------------------------------------------------------------------------
// The file format, as read.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDefinition {
    cairn: Option<Spanned<i64>>,
    name: Spanned<String>,
    version: Option<Spanned<i64>>,
    description: Option<String>,
    artifact: Option<Spanned<String>>,
    inputs: Option<BTreeMap<String, Option<RawInput>>>,
    defaults: Option<RawDefaults>,
    steps: Spanned<Vec<Spanned<RawStep>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInput {
    description: Option<String>,
    default: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDefaults {
    retry: Option<RawRetry>,
    timeout: Option<Spanned<DurationText>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStep {
    id: Spanned<String>,
    kind: Spanned<String>,
    needs: Option<Vec<Spanned<String>>>,
    when: Option<Spanned<String>>,
    with: Option<Spanned<Node>>,
    retry: Option<RawRetry>,
    timeout: Option<Spanned<DurationText>>,
    on_failure: Option<Spanned<String>>,
    trigger: Option<Spanned<String>>,
    inject: Option<RawInject>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetry {
    max_attempts: Option<Spanned<i64>>,
    initial_delay: Option<Spanned<DurationText>>,
    multiplier: Option<Spanned<f64>>,
    max_delay: Option<Spanned<DurationText>>,
    jitter: Option<Spanned<f64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInject {
    fail_times: Option<Spanned<i64>>,
    fail_rate: Option<Spanned<f64>>,
    fail_class: Option<Spanned<String>>,
    delay: Option<Spanned<DurationText>>,
    hang: Option<bool>,
}

/// A duration as written: `250ms`, `2s`, `none`, or a bare number of milliseconds.
#[derive(Clone, Debug)]
enum DurationText {
    Text(String),
    Millis(f64),
}

impl DurationText {
    fn is_none(&self) -> bool {
        matches!(self, DurationText::Text(t) if t.trim() == "none")
    }

    fn to_ms(&self) -> Result<u64, String> {
        match self {
            DurationText::Text(t) => parse_ms(t),
            DurationText::Millis(n) if n.is_finite() && *n >= 0.0 => Ok(n.round() as u64),
            DurationText::Millis(n) => {
                Err(format!("{n} is not a duration: use a positive number of milliseconds or e.g. 250ms, 2s"))
            }
        }
    }
}

impl fmt::Display for DurationText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DurationText::Text(t) => f.write_str(t),
            DurationText::Millis(n) => write!(f, "{n}"),
        }
    }
}

impl<'de> Deserialize<'de> for DurationText {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct DurationVisitor;

        impl Visitor<'_> for DurationVisitor {
            type Value = DurationText;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as 250ms or 2s, or a number of milliseconds")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<DurationText, E> {
                Ok(DurationText::Text(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<DurationText, E> {
                Ok(DurationText::Millis(v as f64))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<DurationText, E> {
                Ok(DurationText::Millis(v as f64))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<DurationText, E> {
                Ok(DurationText::Millis(v))
            }
        }

        deserializer.deserialize_any(DurationVisitor)
    }
}

/// A JSON value that remembers where each of its nodes was written, so a broken template deep
/// inside `with` is reported at its own line rather than at `with:`.
#[derive(Debug)]
enum Node {
    Null,
    Bool(bool),
    Number(serde_json::Number),
    String(String),
    Array(Vec<Spanned<Node>>),
    Object(Vec<(String, Spanned<Node>)>),
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct NodeVisitor;

        impl<'de> Visitor<'de> for NodeVisitor {
            type Value = Node;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_unit<E: de::Error>(self) -> Result<Node, E> {
                Ok(Node::Null)
            }
            fn visit_none<E: de::Error>(self) -> Result<Node, E> {
                Ok(Node::Null)
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Node, D::Error> {
                Node::deserialize(d)
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Node, E> {
                Ok(Node::Bool(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Node, E> {
                Ok(Node::Number(v.into()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Node, E> {
                Ok(Node::Number(v.into()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Node, E> {
                serde_json::Number::from_f64(v)
                    .map(Node::Number)
                    .ok_or_else(|| E::custom(format!("{v} is not a finite number, so JSON cannot hold it")))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Node, E> {
                Ok(Node::String(v.to_string()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Node, E> {
                Ok(Node::String(v))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element::<Spanned<Node>>()? {
                    items.push(item);
                }
                Ok(Node::Array(items))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
                let mut entries = Vec::new();
                while let Some(key) = map.next_key::<String>()? {
                    let value = map.next_value::<Spanned<Node>>()?;
                    entries.push((key, value));
                }
                Ok(Node::Object(entries))
            }
        }

        deserializer.deserialize_any(NodeVisitor)
    }
}

/// Converts to JSON, recording each node's location under the path `template::check` reports
/// (`with.a.b[0]`).
fn node_to_json(node: &Spanned<Node>, path: String, places: &mut HashMap<String, Location>) -> Value {
    let value = match &node.value {
        Node::Null => Value::Null,
        Node::Bool(b) => Value::Bool(*b),
        Node::Number(n) => Value::Number(n.clone()),
        Node::String(s) => Value::String(s.clone()),
        Node::Array(items) => Value::Array(
            items.iter().enumerate().map(|(i, item)| node_to_json(item, format!("{path}[{i}]"), places)).collect(),
        ),
        Node::Object(entries) => Value::Object(
            entries
                .iter()
                .map(|(key, item)| (key.clone(), node_to_json(item, format!("{path}.{key}"), places)))
                .collect(),
        ),
    };
    places.insert(path, node.referenced);
    value
}

// ---------------------------------------------------------------------------------------------
// Collecting problems.

struct Problems<'a> {
    file: &'a str,
    list: Vec<Problem>,
}

impl Problems<'_> {
    fn add(&mut self, at: Location, step: Option<&str>, code: &'static str, message: impl Into<String>) {
        let known = |n: u64| (n > 0).then_some(n);
        let line = known(at.line());
        let problem = Problem {
            file: self.file.to_string(),
            line,
            column: line.and(known(at.column())),
            step: step.map(str::to_string),
            code,
            message: message.into(),
        };
        // Defaults shared by many steps can produce the same problem more than once.
        if !self.list.contains(&problem) {
            self.list.push(problem);
        }
    }

    fn int_in(
        &mut self,
        field: &str,
        raw: &Spanned<i64>,
        step: Option<&str>,
        (lo, hi): (i64, i64),
        hint: &str,
    ) -> Option<i64> {
        let v = raw.value;
        if (lo..=hi).contains(&v) {
            return Some(v);
        }
        self.add(raw.referenced, step, "out_of_range", format!("`{field}` is {v}, but must be between {lo} and {hi}{hint}"));
        None
    }

    fn float_in(
        &mut self,
        field: &str,
        raw: &Spanned<f64>,
        step: Option<&str>,
        (lo, hi): (f64, f64),
        hint: &str,
    ) -> Option<f64> {
        let v = raw.value;
        if (lo..=hi).contains(&v) {
            return Some(v);
        }
        self.add(
            raw.referenced,
            step,
            "out_of_range",
            format!("`{field}` is {v}, but must be between {lo:.1} and {hi:.1}{hint}"),
        );
        None
    }

    /// A duration of at most 24h; `none` is not accepted here.
    fn delay(&mut self, field: &str, raw: &Spanned<DurationText>, step: Option<&str>, limit_ms: u64) -> Option<u64> {
        match raw.value.to_ms() {
            Err(e) => {
                self.add(raw.referenced, step, "bad_duration", format!("`{field}`: {e}"));
                None
            }
            Ok(ms) if ms > limit_ms => {
                self.add(
                    raw.referenced,
                    step,
                    "out_of_range",
                    format!("`{field}` is {}, but must be at most {}; choose a shorter duration", raw.value, format_ms(limit_ms)),
                );
                None
            }
            Ok(ms) => Some(ms),
        }
    }

    /// A timeout: more than zero, at most 24h, or `none`. `Some(None)` means "no timeout".
    fn timeout(&mut self, field: &str, raw: &Spanned<DurationText>, step: Option<&str>) -> Option<Option<u64>> {
        if raw.value.is_none() {
            return Some(None);
        }
        match raw.value.to_ms() {
            Err(e) => {
                self.add(raw.referenced, step, "bad_duration", format!("`{field}`: {e}; or write `none` for no timeout"));
                None
            }
            Ok(ms) if ms == 0 || ms > DAY_MS => {
                self.add(
                    raw.referenced,
                    step,
                    "out_of_range",
                    format!(
                        "`{field}` is {}, but must be more than 0 and at most 24h; write `none` for no timeout",
                        raw.value
                    ),
                );
                None
            }
            Ok(ms) => Some(Some(ms)),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Checks and compilation.

/// Where a resolved retry value came from, so a conflict is reported where it can be fixed.
#[derive(Clone, Copy, PartialEq)]
enum Source {
    Kind,
    Defaults(Location),
    Step(Location),
}

/// The valid fields of one `retry:` block.
#[derive(Clone, Copy, Default)]
struct RetryOverride {
    max_attempts: Option<u32>,
    initial_delay_ms: Option<(u64, Location)>,
    multiplier: Option<f64>,
    max_delay_ms: Option<(u64, Location)>,
    jitter: Option<f64>,
}

fn check_retry(raw: &RawRetry, prefix: &str, step: Option<&str>, out: &mut Problems<'_>) -> RetryOverride {
    let (lo, hi) = MAX_ATTEMPTS_RANGE;
    let max_attempts = raw.max_attempts.as_ref().and_then(|v| {
        out.int_in(
            &format!("{prefix}max_attempts"),
            v,
            step,
            (i64::from(lo), i64::from(hi)),
            " (attempts in total, including the first: 1 means no retries)",
        )
    });
    let multiplier = raw.multiplier.as_ref().and_then(|v| {
        out.float_in(
            &format!("{prefix}multiplier"),
            v,
            step,
            MULTIPLIER_RANGE,
            " (each retry waits this many times longer than the one before: 2.0 doubles it)",
        )
    });
    let jitter = raw.jitter.as_ref().and_then(|v| {
        out.float_in(
            &format!("{prefix}jitter"),
            v,
            step,
            (0.0, 1.0),
            " (a fraction: 0.2 spreads each delay by ±20%)",
        )
    });
    let initial_delay_ms = raw.initial_delay.as_ref().and_then(|v| {
        out.delay(&format!("{prefix}initial_delay"), v, step, MAX_DELAY_LIMIT_MS).map(|ms| (ms, v.referenced))
    });
    let max_delay_ms = raw.max_delay.as_ref().and_then(|v| {
        out.delay(&format!("{prefix}max_delay"), v, step, MAX_DELAY_LIMIT_MS).map(|ms| (ms, v.referenced))
    });
    RetryOverride {
        max_attempts: max_attempts.and_then(|n| u32::try_from(n).ok()),
        initial_delay_ms,
        multiplier,
        max_delay_ms,
        jitter,
    }
}

/// Policy plus where each delay came from.
struct Resolved {
    policy: RetryPolicy,
    initial_from: Source,
    max_from: Source,
}

fn resolve_retry(base: RetryPolicy, defaults: &RetryOverride, step: &RetryOverride) -> Resolved {
    let mut r = Resolved { policy: base, initial_from: Source::Kind, max_from: Source::Kind };
    for (layer, source) in [(defaults, Source::Defaults as fn(Location) -> Source), (step, Source::Step)] {
        let p = &mut r.policy;
        if let Some(n) = layer.max_attempts {
            p.max_attempts = n;
        }
        if let Some((ms, at)) = layer.initial_delay_ms {
            p.initial_delay_ms = ms;
            r.initial_from = source(at);
        }
        if let Some(m) = layer.multiplier {
            p.multiplier = m;
        }
        if let Some((ms, at)) = layer.max_delay_ms {
            p.max_delay_ms = ms;
            r.max_from = source(at);
        }
        if let Some(j) = layer.jitter {
            p.jitter = j;
        }
    }
    r
}

/// Reports `max_delay < initial_delay` where it can be fixed: at the step if the step set either
/// value, else once at `defaults.retry`.
fn check_delays(r: &Resolved, kind: Option<&str>, step: &str, out: &mut Problems<'_>) {
    let p = &r.policy;
    if p.max_delay_ms >= p.initial_delay_ms {
        return;
    }
    let describe = |ms: u64, from: Source| match (from, kind) {
        (Source::Kind, Some(kind)) => format!("{} (the default for kind `{kind}`)", format_ms(ms)),
        (Source::Defaults(_), _) => format!("{} (from `defaults.retry`)", format_ms(ms)),
        _ => format_ms(ms),
    };
    let fix = "raise max_delay or lower initial_delay";
    let (max, initial) = (describe(p.max_delay_ms, r.max_from), describe(p.initial_delay_ms, r.initial_from));
    match (r.max_from, r.initial_from) {
        (Source::Step(at), _) | (_, Source::Step(at)) => out.add(
            at,
            Some(step),
            "out_of_range",
            format!("`retry.max_delay` {max} is less than `retry.initial_delay` {initial}; {fix}"),
        ),
        (Source::Defaults(at), _) | (_, Source::Defaults(at)) => {
            let message = match kind {
                _ if r.max_from != Source::Kind && r.initial_from != Source::Kind => format!(
                    "`defaults.retry.max_delay` {max} is less than `defaults.retry.initial_delay` {initial}; {fix}"
                ),
                Some(kind) => format!(
                    "`defaults.retry` gives steps of kind `{kind}` a max_delay of {max}, less than their \
                     initial_delay of {initial}; {fix}"
                ),
                // The kind is unknown (already reported), so its defaults are too.
                None => return,
            };
            out.add(at, None, "out_of_range", message);
        }
        (Source::Kind, Source::Kind) => {}
    }
}

fn is_definition_name(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
        && s != "."
        && s != ".."
}

fn is_step_id(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'-'))
}

fn artifact_problem(name: &str) -> Option<&'static str> {
    if name.contains(['/', '\\', ':']) || name.contains("..") || name.starts_with('.') {
        Some("must be a plain file name, without directories, `..` or a leading dot")
    } else if name.chars().any(char::is_control) {
        Some("must not contain control characters")
    } else if name.len() <= ".json".len() || !name.ends_with(".json") || name.len() > 128 {
        Some("must be a file name ending in `.json`, at most 128 characters")
    } else {
        None
    }
}

fn compile(raw: RawDefinition, out: &mut Problems<'_>) -> Definition {
    let format = match &raw.cairn {
        Some(v) if v.value != i64::from(FORMAT_VERSION) => {
            out.add(
                v.referenced,
                None,
                "bad_value",
                format!(
                    "`cairn: {}` is not a file format this version understands; write `cairn: {FORMAT_VERSION}`",
                    v.value
                ),
            );
            FORMAT_VERSION
        }
        _ => FORMAT_VERSION,
    };
    if !is_definition_name(&raw.name.value) {
        out.add(
            raw.name.referenced,
            None,
            "bad_name",
            format!(
                "name `{}` is not allowed: use 1 to 64 of A-Z, a-z, 0-9, '_', '.' and '-'",
                raw.name.value.escape_debug()
            ),
        );
    }
    let version = match &raw.version {
        None => 1,
        Some(v) => out
            .int_in("version", v, None, (1, i64::from(u32::MAX)), " (bump it when you change the definition)")
            .and_then(|n| u32::try_from(n).ok())
            .unwrap_or(1),
    };
    if let Some(artifact) = &raw.artifact
        && let Some(why) = artifact_problem(&artifact.value)
    {
        out.add(
            artifact.referenced,
            None,
            "bad_value",
            format!("artifact `{}` {why}, e.g. `summary.json`", artifact.value.escape_debug()),
        );
    }
    let inputs = raw
        .inputs
        .unwrap_or_default()
        .into_iter()
        .map(|(name, spec)| {
            let spec = spec.map(|s| InputSpec { description: s.description, default: s.default }).unwrap_or_default();
            (name, spec)
        })
        .collect();

    let (defaults_retry, defaults_timeout) = match &raw.defaults {
        None => (RetryOverride::default(), None),
        Some(d) => (
            d.retry.as_ref().map(|r| check_retry(r, "defaults.retry.", None, out)).unwrap_or_default(),
            d.timeout.as_ref().and_then(|t| out.timeout("defaults.timeout", t, None)),
        ),
    };

    if raw.steps.value.is_empty() {
        out.add(raw.steps.referenced, None, "no_steps", "`steps` is empty: a definition needs at least one step");
    }

    // First occurrence of each id, for duplicates and for resolving `needs`.
    let mut first_seen: HashMap<&str, (usize, Location)> = HashMap::new();
    for (index, step) in raw.steps.value.iter().enumerate() {
        let id = &step.value.id;
        if let Some((_, first)) = first_seen.get(id.value.as_str()) {
            out.add(
                id.referenced,
                Some(&id.value),
                "duplicate_id",
                format!(
                    "duplicate step id `{}`: line {} already defines a step with this id; give each step a unique id",
                    id.value,
                    first.line()
                ),
            );
        } else {
            first_seen.insert(&id.value, (index, id.referenced));
        }
    }
    let mut ids_in_order: Vec<&str> = Vec::new();
    for step in &raw.steps.value {
        if !ids_in_order.contains(&step.value.id.value.as_str()) {
            ids_in_order.push(&step.value.id.value);
        }
    }

    // Dependency edges between first occurrences, for cycle detection.
    let mut edges: Vec<Vec<usize>> = vec![Vec::new(); raw.steps.value.len()];
    let mut steps = Vec::with_capacity(raw.steps.value.len());
    for (index, spanned) in raw.steps.value.iter().enumerate() {
        let s = &spanned.value;
        let id = s.id.value.as_str();
        let here = Some(id);
        if !is_step_id(id) {
            out.add(
                s.id.referenced,
                here,
                "bad_id",
                "step ids use 1 to 64 of a-z, 0-9, '_' and '-' (they appear in templates as `steps.ID`)",
            );
        }

        let kind = kinds::lookup(&s.kind.value);
        if kind.is_none() {
            let known = kinds::names();
            let hint = closest(&s.kind.value, known.iter().copied())
                .map(|c| format!("did you mean `{c}`? "))
                .unwrap_or_default();
            out.add(
                s.kind.referenced,
                here,
                "unknown_kind",
                format!("unknown kind `{}`; {hint}known kinds: {}", s.kind.value.escape_debug(), known.join(", ")),
            );
        }

        let mut needs: Vec<StepId> = Vec::new();
        for need in s.needs.iter().flatten() {
            let name = need.value.as_str();
            if name == id {
                out.add(need.referenced, here, "self_need", format!("a step cannot need itself; remove `{name}` from `needs`"));
            } else if needs.iter().any(|n| n.as_str() == name) {
                out.add(need.referenced, here, "duplicate_need", format!("`{name}` is listed twice in `needs`; remove one"));
            } else if let Some((target, _)) = first_seen.get(name) {
                if first_seen.get(id).is_some_and(|(first, _)| *first == index) {
                    edges[index].push(*target);
                }
                needs.push(StepId::new(name));
            } else {
                let others = ids_in_order.iter().copied().filter(|other| *other != id);
                let hint = match closest(name, others.clone()) {
                    Some(c) => format!("did you mean `{c}`?"),
                    None => format!("steps in this file: {}", others.collect::<Vec<_>>().join(", ")),
                };
                out.add(
                    need.referenced,
                    here,
                    "unknown_need",
                    format!("needs `{}`, which is not a step in this file; {hint}", name.escape_debug()),
                );
            }
        }

        if let Some(when) = &s.when
            && let Err(e) = expr::check(&when.value)
        {
            out.add(when.referenced, here, "bad_condition", format!("`when` is not a valid CEL condition: {e}"));
        }

        let with = match &s.with {
            None => Value::Null,
            Some(node) => {
                let mut places = HashMap::new();
                let with = node_to_json(node, "with".to_string(), &mut places);
                for (path, message) in template::check(&with) {
                    let at = places.get(&path).copied().unwrap_or(node.referenced);
                    out.add(at, here, "bad_template", format!("template in `{path}` does not compile: {message}"));
                }
                with
            }
        };

        let step_retry = s.retry.as_ref().map(|r| check_retry(r, "retry.", here, out)).unwrap_or_default();
        let base = kind.map_or(RetryPolicy { max_attempts: 1, initial_delay_ms: 0, multiplier: 1.0, max_delay_ms: 0, jitter: 0.0 }, |k| k.retry);
        let resolved = resolve_retry(base, &defaults_retry, &step_retry);
        check_delays(&resolved, kind.map(|k| k.name), id, out);

        let step_timeout = s.timeout.as_ref().and_then(|t| out.timeout("timeout", t, here));
        let timeout_ms = step_timeout.or(defaults_timeout).unwrap_or(kind.and_then(|k| k.timeout_ms));

        let on_failure = match s.on_failure.as_ref().map(|v| (v.value.as_str(), v.referenced)) {
            None | Some(("fail", _)) => OnFailure::Fail,
            Some(("continue", _)) => OnFailure::Continue,
            Some((other, at)) => {
                out.add(
                    at,
                    here,
                    "bad_value",
                    format!(
                        "`on_failure: {}` is not supported; use `fail` (the default: fail the run) or `continue` \
                         (let other branches finish). `escalate` and `fallback` arrive with the human-in-the-loop work",
                        other.escape_debug()
                    ),
                );
                OnFailure::Fail
            }
        };

        let trigger = match s.trigger.as_ref().map(|v| (v.value.as_str(), v.referenced)) {
            None | Some(("all_succeeded", _)) => Trigger::AllSucceeded,
            Some(("none_failed", _)) => Trigger::NoneFailed,
            Some(("all_done", _)) => Trigger::AllDone,
            Some((other, at)) => {
                out.add(
                    at,
                    here,
                    "bad_value",
                    format!(
                        "`trigger: {}` is not a trigger; use `all_succeeded` (the default), `none_failed` or `all_done`",
                        other.escape_debug()
                    ),
                );
                Trigger::AllSucceeded
            }
        };

        let inject = s.inject.as_ref().map(|raw| compile_inject(raw, here, out));

        steps.push(Step {
            id: StepId::new(id),
            kind: s.kind.value.clone(),
            needs,
            when: s.when.as_ref().map(|w| w.value.clone()),
            with,
            retry: resolved.policy,
            timeout_ms,
            on_failure,
            trigger,
            inject,
        });
    }

    for cycle in find_cycles(&edges) {
        let path: Vec<&str> = cycle.iter().map(|&i| raw.steps.value[i].value.id.value.as_str()).collect();
        let entry = &raw.steps.value[cycle[0]].value.id;
        out.add(
            entry.referenced,
            Some(&entry.value),
            "cycle",
            format!(
                "cycle: {} -> {} (each step needs the next, so none can start); remove one of these needs",
                path.join(" -> "),
                path[0]
            ),
        );
    }

    Definition {
        format,
        name: raw.name.value,
        version,
        description: raw.description,
        inputs,
        artifact: raw.artifact.map(|a| a.value),
        steps,
    }
}

fn compile_inject(raw: &RawInject, step: Option<&str>, out: &mut Problems<'_>) -> Inject {
    let mut inject = Inject::default();
    if let Some(v) = &raw.fail_times {
        inject.fail_times = out
            .int_in("inject.fail_times", v, step, (0, i64::from(u32::MAX)), " (the first N attempts fail)")
            .and_then(|n| u32::try_from(n).ok())
            .unwrap_or(0);
    }
    if let Some(v) = &raw.fail_rate {
        inject.fail_rate = out
            .float_in("inject.fail_rate", v, step, (0.0, 1.0), " (the chance that an attempt fails)")
            .unwrap_or(0.0);
    }
    if let Some(v) = &raw.fail_class {
        match ErrorClass::parse(&v.value) {
            Some(class) => inject.fail_class = class,
            None => {
                let known: Vec<&str> = ErrorClass::ALL.iter().map(|c| c.as_str()).collect();
                out.add(
                    v.referenced,
                    step,
                    "bad_value",
                    format!(
                        "`inject.fail_class: {}` is not an error class; use one of {}",
                        v.value.escape_debug(),
                        known.join(", ")
                    ),
                );
            }
        }
    }
    if let Some(v) = &raw.delay {
        inject.delay_ms = out.delay("inject.delay", v, step, DAY_MS).unwrap_or(0);
    }
    inject.hang = raw.hang.unwrap_or(false);
    inject
}

/// Every distinct cycle reachable by a depth-first search in step order, each as the list of
/// steps starting where the search first entered it. Iterative, so a long chain cannot overflow
/// the stack.
fn find_cycles(edges: &[Vec<usize>]) -> Vec<Vec<usize>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        OnPath(usize),
        Done,
    }
    let mut mark = vec![Mark::New; edges.len()];
    let mut seen: HashSet<Vec<usize>> = HashSet::new();
    let mut cycles = Vec::new();
    for root in 0..edges.len() {
        if mark[root] != Mark::New {
            continue;
        }
        // (node, index of the next edge to follow)
        let mut stack: Vec<(usize, usize)> = vec![(root, 0)];
        mark[root] = Mark::OnPath(0);
        while let Some(top) = stack.last_mut() {
            let (node, next) = *top;
            let Some(&target) = edges[node].get(next) else {
                mark[node] = Mark::Done;
                stack.pop();
                continue;
            };
            top.1 += 1;
            match mark[target] {
                Mark::New => {
                    mark[target] = Mark::OnPath(stack.len());
                    stack.push((target, 0));
                }
                Mark::OnPath(depth) => {
                    let cycle: Vec<usize> = stack[depth..].iter().map(|&(n, _)| n).collect();
                    // The same cycle found from another edge is the same rotation of nodes.
                    let mut key = cycle.clone();
                    if let Some(min) = key.iter().enumerate().min_by_key(|&(_, n)| *n).map(|(i, _)| i) {
                        key.rotate_left(min);
                    }
                    if seen.insert(key) {
                        cycles.push(cycle);
                    }
                }
                Mark::Done => {}
            }
        }
    }
    cycles
}

/// The candidate closest to `word` by edit distance, if it is close enough to be a likely typo.
fn closest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let len = word.chars().count();
    candidates
        .into_iter()
        .map(|c| (edit_distance(word, c), c))
        .filter(|&(d, _)| d <= 2 && d < len)
        .min_by_key(|&(d, _)| d)
        .map(|(_, c)| c)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitute = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = substitute.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// Turns a parser error into the one problem it stands for, with a message free of the
/// parser's internals (no snippet, no "set DuplicateKeyPolicy" advice).
fn parse_problem(err: &serde_saphyr::Error, file: &str) -> Problem {
    use serde_saphyr::{Error, MessageFormatter, UserMessageFormatter};
    let mut inner = err.without_snippet();
    while let Error::AliasError { error, .. } = inner {
        inner = error;
    }
    let (code, message) = match inner {
        Error::Eof { .. } => ("empty", EMPTY_MESSAGE.to_string()),
        Error::SerdeUnknownField { field, expected, .. } => {
            let hint = closest(field, expected.iter().copied())
                .map(|c| format!("did you mean `{c}`? "))
                .unwrap_or_default();
            ("unknown_field", format!("unknown field `{field}`; {hint}allowed here: {}", expected.join(", ")))
        }
        Error::SerdeMissingField { field, .. } => ("missing_field", format!("missing required field `{field}`")),
        other => ("parse", UserMessageFormatter.format_message(other).into_owned()),
    };
    // The message may quote the file; keep control characters from reaching a terminal.
    let message = message
        .chars()
        .flat_map(|c| if c.is_control() { c.escape_debug().collect::<Vec<_>>() } else { vec![c] })
        .collect();
    let known = |n: u64| (n > 0).then_some(n);
    let line = err.location().and_then(|l| known(l.line()));
    Problem {
        file: file.to_string(),
        line,
        column: line.and(err.location().and_then(|l| known(l.column()))),
        step: None,
        code,
        message,
    }
}
