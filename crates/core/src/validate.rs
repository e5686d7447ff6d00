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
use crate::scope::View;
use crate::{expr, template};
use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;
use serde_saphyr::{Location, Spanned};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

/// The longest timeout or retry delay a definition may ask for.
const DAY_MS: u64 = 24 * 3_600_000;

/// One problem found in a definition. Displays as FILE:LINE:COL: step `ID`: MESSAGE, leaving out
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

impl Problem {
    /// The problem as a warning: FILE:LINE:COL: warning: step `ID`: MESSAGE.
    pub fn as_warning(&self) -> String {
        let mut out = String::new();
        self.write(&mut out, "warning: ").map(|_| out).unwrap_or_default()
    }

    fn write(&self, f: &mut dyn fmt::Write, label: &str) -> fmt::Result {
        f.write_str(&self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(column) = self.column {
                write!(f, ":{column}")?;
            }
        }
        write!(f, ": {label}")?;
        if let Some(step) = &self.step {
            write!(f, "step `{step}`: ")?;
        }
        f.write_str(&self.message)
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.write(f, "")
    }
}

impl std::error::Error for Problem {}

/// Parses a YAML or JSON definition and validates it; returns every problem at once, in source
/// order.
pub fn parse_definition(source: &str, file: &str) -> Result<Definition, Vec<Problem>> {
    parse_definition_with_warnings(source, file).0
}

/// [`parse_definition`], plus the warnings: what is valid but probably a mistake, such as a
/// literal credential in `with` (code `literal_credential`; see
/// [`crate::secrets::literal_credentials`]). Warnings come in source order, also when the
/// definition has problems (none when it cannot be read at all).
pub fn parse_definition_with_warnings(source: &str, file: &str) -> (Result<Definition, Vec<Problem>>, Vec<Problem>) {
    if source.trim().is_empty() {
        let problem = Problem {
            file: file.to_string(),
            line: None,
            column: None,
            step: None,
            code: "empty",
            message: EMPTY_MESSAGE.to_string(),
        };
        return (Err(vec![problem]), Vec::new());
    }
    // serde-saphyr parses lazily: a shape error (a missing field) early in the file would be
    // reported instead of a syntax error further down. Read the whole document once first, so a
    // syntax error, the more fundamental problem, wins.
    if let Err(e) = serde_saphyr::from_str::<de::IgnoredAny>(source) {
        return (Err(vec![parse_problem(&e, file)]), Vec::new());
    }
    let raw: RawDefinition = match serde_saphyr::from_str(source) {
        Ok(raw) => raw,
        Err(e) => return (Err(vec![parse_problem(&e, file)]), Vec::new()),
    };
    let mut problems = Problems { file, list: Vec::new(), warnings: Vec::new() };
    let definition = compile(raw, &mut problems);
    // Stable: problems at the same place keep the order the checks found them in.
    let by_place = |p: &Problem| (p.line.is_none(), p.line, p.column);
    let mut warnings = problems.warnings;
    warnings.sort_by_key(by_place);
    if problems.list.is_empty() {
        (Ok(definition), warnings)
    } else {
        let mut list = problems.list;
        list.sort_by_key(by_place);
        (Err(list), warnings)
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
    retention: Option<Spanned<DurationText>>,
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
    on_failure: Option<Spanned<RawOnFailure>>,
    trigger: Option<Spanned<String>>,
    inject: Option<RawInject>,
    requires_approval: Option<bool>,
    approval: Option<RawApproval>,
    compensate: Option<RawCompensate>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCompensate {
    kind: Spanned<String>,
    with: Option<Spanned<Node>>,
    retry: Option<RawRetry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApproval {
    prompt: Option<Spanned<String>>,
    approvers: Option<Vec<String>>,
    deadline: Option<Spanned<DurationText>>,
    on_deadline: Option<Spanned<String>>,
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

/// `on_failure` as written: a policy name, or `{fallback: STEP}`.
#[derive(Clone, Debug)]
enum RawOnFailure {
    Policy(String),
    Fallback(String),
}

impl<'de> Deserialize<'de> for RawOnFailure {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct OnFailureVisitor;

        impl<'de> Visitor<'de> for OnFailureVisitor {
            type Value = RawOnFailure;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("`fail`, `continue`, `escalate`, or `{fallback: STEP}`")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawOnFailure, E> {
                Ok(RawOnFailure::Policy(v.to_string()))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawOnFailure, A::Error> {
                let mut fallback = None;
                while let Some(key) = map.next_key::<String>()? {
                    if key != "fallback" || fallback.is_some() {
                        return Err(de::Error::custom(format!(
                            "`on_failure` as a mapping takes one key, `fallback: STEP`; found `{}`",
                            key.escape_debug()
                        )));
                    }
                    fallback = Some(map.next_value::<String>()?);
                }
                fallback
                    .map(RawOnFailure::Fallback)
                    .ok_or_else(|| de::Error::custom("`on_failure: {}` is empty; write `on_failure: {fallback: STEP}`"))
            }
        }

        deserializer.deserialize_any(OnFailureVisitor)
    }
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
    warnings: Vec<Problem>,
}

impl Problems<'_> {
    fn problem(&self, at: Location, step: Option<&str>, code: &'static str, message: String) -> Problem {
        let known = |n: u64| (n > 0).then_some(n);
        let line = known(at.line());
        Problem {
            file: self.file.to_string(),
            line,
            column: line.and(known(at.column())),
            step: step.map(str::to_string),
            code,
            message,
        }
    }

    fn add(&mut self, at: Location, step: Option<&str>, code: &'static str, message: impl Into<String>) {
        let problem = self.problem(at, step, code, message.into());
        // Defaults shared by many steps can produce the same problem more than once.
        if !self.list.contains(&problem) {
            self.list.push(problem);
        }
    }

    /// Something valid that is probably a mistake; it does not make the definition invalid.
    fn warn(&mut self, at: Location, step: Option<&str>, code: &'static str, message: impl Into<String>) {
        let warning = self.problem(at, step, code, message.into());
        if !self.warnings.contains(&warning) {
            self.warnings.push(warning);
        }
    }

    /// Checks a number against an inclusive range; the problem states the range and a hint.
    fn in_range<T: PartialOrd + Copy + fmt::Debug>(
        &mut self,
        field: &str,
        raw: &Spanned<T>,
        step: Option<&str>,
        (lo, hi): (T, T),
        hint: &str,
    ) -> Option<T> {
        let v = raw.value;
        if lo <= v && v <= hi {
            return Some(v);
        }
        self.add(
            raw.referenced,
            step,
            "out_of_range",
            format!("`{field}` is {v:?}, but must be between {lo:?} and {hi:?}{hint}"),
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
                    format!(
                        "`{field}` is {}, but must be at most {}; choose a shorter duration",
                        raw.value,
                        format_ms(limit_ms)
                    ),
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
                self.add(
                    raw.referenced,
                    step,
                    "bad_duration",
                    format!("`{field}`: {e}; or write `none` for no timeout"),
                );
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
        out.in_range(
            &format!("{prefix}max_attempts"),
            v,
            step,
            (i64::from(lo), i64::from(hi)),
            " (attempts in total, including the first: 1 means no retries)",
        )
    });
    let multiplier = raw.multiplier.as_ref().and_then(|v| {
        out.in_range(
            &format!("{prefix}multiplier"),
            v,
            step,
            MULTIPLIER_RANGE,
            " (each retry waits this many times longer than the one before: 2.0 doubles it)",
        )
    });
    let jitter = raw.jitter.as_ref().and_then(|v| {
        out.in_range(&format!("{prefix}jitter"), v, step, (0.0, 1.0), " (a fraction: 0.2 spreads each delay by ±20%)")
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
    let from_kind = r.max_from == Source::Kind || r.initial_from == Source::Kind;
    // With an unknown kind (already reported) the kind's half of the comparison is unknown too.
    if p.max_delay_ms >= p.initial_delay_ms || (kind.is_none() && from_kind) {
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
                Some(kind) if from_kind => format!(
                    "`defaults.retry` gives steps of kind `{kind}` a max_delay of {max}, less than their \
                     initial_delay of {initial}; {fix}"
                ),
                _ => format!(
                    "`defaults.retry.max_delay` {} is less than `defaults.retry.initial_delay` {}; {fix}",
                    format_ms(p.max_delay_ms),
                    format_ms(p.initial_delay_ms)
                ),
            };
            out.add(at, None, "out_of_range", message);
        }
        (Source::Kind, Source::Kind) => {}
    }
}

/// The CEL compiler's first line, without its caret diagram (a problem is one line):
/// `ERROR: column 1:12: Syntax error: ...` becomes `... (at 1:12 in the condition): Syntax error: ...`.
fn condition_message(error: &str) -> String {
    let first = error.lines().next().unwrap_or_default();
    let first = first.strip_prefix("ERROR: ").unwrap_or(first);
    match first.strip_prefix("column ").and_then(|rest| rest.split_once(": ")) {
        Some((position, detail)) => {
            format!("`when` is not a valid CEL condition (at {position} in the condition): {detail}")
        }
        None => format!("`when` is not a valid CEL condition: {first}"),
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
    if let Some(v) = &raw.cairn
        && v.value != i64::from(FORMAT_VERSION)
    {
        out.add(
            v.referenced,
            None,
            "bad_value",
            format!(
                "`cairn: {}` is not a file format this version understands; write `cairn: {FORMAT_VERSION}`",
                v.value
            ),
        );
    }
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
    let version = raw.version.as_ref().map_or(1, |v| {
        out.in_range("version", v, None, (1, i64::from(u32::MAX)), " (bump it when you change the definition)")
            .and_then(|n| u32::try_from(n).ok())
            .unwrap_or(1)
    });
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

    let defaults = match &raw.defaults {
        None => Defaults { retry: RetryOverride::default(), timeout: None },
        Some(d) => Defaults {
            retry: d.retry.as_ref().map(|r| check_retry(r, "defaults.retry.", None, out)).unwrap_or_default(),
            timeout: d.timeout.as_ref().and_then(|t| out.timeout("defaults.timeout", t, None)),
        },
    };

    let raw_steps = &raw.steps.value;
    if raw_steps.is_empty() {
        out.add(raw.steps.referenced, None, "no_steps", "`steps` is empty: a definition needs at least one step");
    }
    let graph = Graph::new(raw_steps, out);
    let mut edges: Vec<Vec<usize>> = vec![Vec::new(); raw_steps.len()];
    let mut sites = Vec::new();
    let steps = raw_steps
        .iter()
        .enumerate()
        .map(|(index, step)| compile_step(index, &step.value, &graph, &defaults, &mut edges[index], &mut sites, out))
        .collect();
    let steps = check_fallbacks(steps, raw_steps, &graph, &mut edges, out);

    for cycle in find_cycles(&edges) {
        let path: Vec<&str> = cycle.iter().map(|&i| raw_steps[i].value.id.value.as_str()).collect();
        let entry = &raw_steps[cycle[0]].value.id;
        let is_fallback =
            |i: usize| steps.iter().any(|s| matches!(&s.on_failure, OnFailure::Fallback(f) if *f == steps[i].id));
        let through_fallback =
            cycle.iter().any(|&i| matches!(steps[i].on_failure, OnFailure::Fallback(_)) || is_fallback(i));
        let note = if through_fallback {
            " (a fallback waits for the step it stands in for, and whatever needs that step waits for the fallback)"
        } else {
            ""
        };
        out.add(
            entry.referenced,
            Some(&entry.value),
            "cycle",
            format!(
                "cycle: {} -> {} (each step needs the next, so none can start); remove one of these needs{note}",
                path.join(" -> "),
                path[0]
            ),
        );
    }

    // Kept for at most ten years; at least a minute, so a run is never collected as it ends.
    let retention_ms = raw.retention.as_ref().and_then(|r| {
        let ms = out.delay("retention", r, None, 3_650 * 86_400_000)?;
        if ms < 60_000 {
            out.add(r.referenced, None, "out_of_range", format!("`retention` is {}, but must be at least 1m", r.value));
            return None;
        }
        Some(ms)
    });
    let definition = Definition {
        format: FORMAT_VERSION,
        name: raw.name.value,
        version,
        description: raw.description,
        inputs,
        artifact: raw.artifact.map(|a| a.value),
        retention_ms,
        steps,
    };
    check_references(&definition, &sites, out);
    definition
}

/// A condition or template string of one step, kept until the whole graph is known, so what it
/// reads can be checked against what the step can see.
struct Site {
    step: usize,
    at: Location,
    /// Its name in messages: `when`, `with.body`, `approval.prompt`, `compensate.with.to`.
    field: String,
    text: String,
    condition: bool,
    /// `compensate.with` also sees `output`.
    compensation: bool,
    /// A string of `with` or `compensate.with`, which may print secrets.
    secrets: bool,
}

impl Site {
    fn template(step: usize, at: Location, field: &str, text: &str) -> Site {
        Site {
            step,
            at,
            field: field.to_string(),
            text: text.to_string(),
            condition: false,
            compensation: false,
            secrets: false,
        }
    }
}

/// Refuses what a step's conditions and templates read but can never see (see [`crate::scope`]).
fn check_references(def: &Definition, sites: &[Site], out: &mut Problems<'_>) {
    let ids: Vec<&str> = def.steps.iter().map(|s| s.id.as_str()).collect();
    let inputs: Vec<&str> = def.inputs.keys().map(String::as_str).collect();
    let with_fallback: HashSet<&str> =
        def.steps.iter().filter(|s| matches!(s.on_failure, OnFailure::Fallback(_))).map(|s| s.id.as_str()).collect();
    let mut visible: HashMap<usize, HashSet<&str>> = HashMap::new();
    for site in sites {
        let seen = visible.entry(site.step).or_insert_with(|| {
            let flags = def.visible_to(site.step);
            ids.iter().zip(flags).filter(|(_, v)| *v).map(|(id, _)| *id).collect()
        });
        let view = View {
            step: ids[site.step],
            inputs: inputs.clone(),
            steps: ids.clone(),
            visible: seen.clone(),
            with_fallback: with_fallback.clone(),
            output: site.compensation,
            secrets: site.secrets,
        };
        let (refs, kind) = if site.condition {
            (expr::references(&site.text), "condition")
        } else {
            (template::references(&site.text), "template")
        };
        for finding in view.check(&refs, &site.field, kind) {
            out.add(site.at, Some(view.step), finding.code, finding.message);
        }
    }
}

/// Checks every `on_failure: {fallback: STEP}` against the other steps and adds the edges a
/// fallback brings to the graph: the fallback waits for the step it stands in for, and whatever
/// needs that step waits for its fallback. A fallback that cannot be used is reported and the
/// step falls back to `fail`.
fn check_fallbacks(
    mut steps: Vec<Step>,
    raw_steps: &[Spanned<RawStep>],
    graph: &Graph<'_>,
    edges: &mut [Vec<usize>],
    out: &mut Problems<'_>,
) -> Vec<Step> {
    let mut taken: HashMap<usize, usize> = HashMap::new();
    for p in 0..steps.len() {
        let OnFailure::Fallback(target) = &steps[p].on_failure else { continue };
        let id = steps[p].id.to_string();
        let here = Some(id.as_str());
        let at = raw_steps[p].value.on_failure.as_ref().map_or(raw_steps[p].value.id.referenced, |v| v.referenced);
        let target = target.as_str();
        let problem = if target == id {
            Some(("self_fallback", "a step cannot be its own fallback; name another step".to_string()))
        } else if let Some((f, _)) = graph.first.get(target) {
            taken.get(f).map(|&other| {
                let message = format!(
                    "`{target}` is already the fallback of `{}`; a step can stand in for one step only — add a \
                     separate fallback step",
                    steps[other].id
                );
                ("duplicate_fallback", message)
            })
        } else {
            let others = graph.ids_in_order.iter().copied().filter(|other| *other != id);
            let hint = match closest(target, others.clone()) {
                Some(c) => format!("did you mean `{c}`?"),
                None => format!("steps in this file: {}", others.collect::<Vec<_>>().join(", ")),
            };
            Some((
                "unknown_fallback",
                format!("`on_failure: {{fallback: {}}}` names no step in this file; {hint}", target.escape_debug()),
            ))
        };
        if let Some((code, message)) = problem {
            out.add(at, here, code, message);
            steps[p].on_failure = OnFailure::Fail;
            continue;
        }
        let f = graph.first[target].0;
        taken.insert(f, p);
        // Only the first step with an id takes part in the graph (see `Graph`).
        if graph.first.get(id.as_str()).is_some_and(|(first, _)| *first == p) {
            edges[f].push(p);
        }
    }
    // A step that needs another also waits for the fallbacks standing in for it, along chains.
    let fallback: HashMap<usize, usize> = taken.iter().map(|(&f, &p)| (p, f)).collect();
    for (d, step) in steps.iter().enumerate() {
        if graph.first.get(step.id.as_str()).is_none_or(|(first, _)| *first != d) {
            continue;
        }
        for need in &step.needs {
            let Some(&(mut k, _)) = graph.first.get(need.as_str()) else { continue };
            while let Some(&f) = fallback.get(&k) {
                if f == d || edges[d].contains(&f) || f == k {
                    break;
                }
                edges[d].push(f);
                k = f;
            }
        }
    }
    steps
}

/// The file-wide `defaults:` block, checked.
struct Defaults {
    retry: RetryOverride,
    /// `Some(None)` is `timeout: none`.
    timeout: Option<Option<u64>>,
}

/// Step ids and where each was first defined; later steps with the same id are duplicates and
/// take no part in the graph.
struct Graph<'a> {
    first: HashMap<&'a str, (usize, Location)>,
    ids_in_order: Vec<&'a str>,
}

impl<'a> Graph<'a> {
    /// Also reports duplicate ids, at the second occurrence.
    fn new(steps: &'a [Spanned<RawStep>], out: &mut Problems<'_>) -> Self {
        let mut graph = Graph { first: HashMap::new(), ids_in_order: Vec::new() };
        for (index, step) in steps.iter().enumerate() {
            let id = &step.value.id;
            if let Some((_, first)) = graph.first.get(id.value.as_str()) {
                out.add(
                    id.referenced,
                    Some(&id.value),
                    "duplicate_id",
                    format!(
                        "duplicate step id `{}`: line {} already defines a step with this id; give each step a \
                         unique id",
                        id.value,
                        first.line()
                    ),
                );
            } else {
                graph.first.insert(&id.value, (index, id.referenced));
                graph.ids_in_order.push(&id.value);
            }
        }
        graph
    }
}

/// Checks one step and compiles it; pushes its dependency edges (by step index) onto `edges`.
fn compile_step(
    index: usize,
    s: &RawStep,
    graph: &Graph<'_>,
    defaults: &Defaults,
    edges: &mut Vec<usize>,
    sites: &mut Vec<Site>,
    out: &mut Problems<'_>,
) -> Step {
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
        let hint =
            closest(&s.kind.value, known.iter().copied()).map(|c| format!("did you mean `{c}`? ")).unwrap_or_default();
        out.add(
            s.kind.referenced,
            here,
            "unknown_kind",
            format!("unknown kind `{}`; {hint}known kinds: {}", s.kind.value.escape_debug(), known.join(", ")),
        );
    }

    let is_first = graph.first.get(id).is_some_and(|(first, _)| *first == index);
    let mut needs: Vec<StepId> = Vec::new();
    for need in s.needs.iter().flatten() {
        let name = need.value.as_str();
        if name == id {
            out.add(
                need.referenced,
                here,
                "self_need",
                format!("a step cannot need itself; remove `{name}` from `needs`"),
            );
        } else if needs.iter().any(|n| n.as_str() == name) {
            out.add(
                need.referenced,
                here,
                "duplicate_need",
                format!("`{name}` is listed twice in `needs`; remove one"),
            );
        } else if let Some((target, _)) = graph.first.get(name) {
            if is_first {
                edges.push(*target);
            }
            needs.push(StepId::new(name));
        } else {
            let others = graph.ids_in_order.iter().copied().filter(|other| *other != id);
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

    if let Some(when) = &s.when {
        match expr::check(&when.value) {
            Err(e) => out.add(when.referenced, here, "bad_condition", condition_message(&e)),
            Ok(()) => {
                sites.push(Site { condition: true, ..Site::template(index, when.referenced, "when", &when.value) })
            }
        }
    }

    let with = match &s.with {
        None => Value::Null,
        Some(node) => templates_of(node, index, "", here, sites, out),
    };

    let step_retry = s.retry.as_ref().map(|r| check_retry(r, "retry.", here, out)).unwrap_or_default();
    // An unknown kind is already reported; the placeholder only lets the other checks run.
    let base = kind.map_or(
        RetryPolicy { max_attempts: 1, initial_delay_ms: 0, multiplier: 1.0, max_delay_ms: 0, jitter: 0.0 },
        |k| k.retry,
    );
    let resolved = resolve_retry(base, &defaults.retry, &step_retry);
    check_delays(&resolved, kind.map(|k| k.name), id, out);

    let step_timeout = s.timeout.as_ref().and_then(|t| out.timeout("timeout", t, here));
    let timeout_ms = step_timeout.or(defaults.timeout).unwrap_or(kind.and_then(|k| k.timeout_ms));

    let on_failure = match s.on_failure.as_ref().map(|v| (&v.value, v.referenced)) {
        None => OnFailure::Fail,
        Some((RawOnFailure::Policy(p), at)) => match p.as_str() {
            "fail" => OnFailure::Fail,
            "continue" => OnFailure::Continue,
            "escalate" => OnFailure::Escalate,
            "fallback" => {
                out.add(
                    at,
                    here,
                    "bad_value",
                    "`on_failure: fallback` needs the step to run instead: write `on_failure: {fallback: STEP}`",
                );
                OnFailure::Fail
            }
            other => {
                out.add(
                    at,
                    here,
                    "bad_value",
                    format!(
                        "`on_failure: {}` is not supported; use `fail` (the default: fail the run), `continue` \
                         (let other branches finish), `escalate` (ask a person: retry, skip or abort) or \
                         `{{fallback: STEP}}` (run another step instead)",
                        other.escape_debug()
                    ),
                );
                OnFailure::Fail
            }
        },
        // Checked against the other steps in `check_fallbacks`, once every step is compiled.
        Some((RawOnFailure::Fallback(f), _)) => OnFailure::Fallback(StepId::new(f)),
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

    Step {
        id: StepId::new(id),
        kind: s.kind.value.clone(),
        needs,
        when: s.when.as_ref().map(|w| w.value.clone()),
        with,
        retry: resolved.policy,
        timeout_ms,
        on_failure,
        trigger,
        inject: s.inject.as_ref().map(|raw| compile_inject(raw, here, out)),
        approval: compile_approval(s, index, here, sites, out),
        compensate: s.compensate.as_ref().and_then(|c| compile_compensate(c, index, defaults, here, sites, out)),
    }
}

/// Converts a `with` block (under `prefix`, e.g. `compensate.`) to JSON, reports templates that do
/// not compile at their own line, and keeps the others as sites for the reference check.
fn templates_of(
    node: &Spanned<Node>,
    index: usize,
    prefix: &str,
    step: Option<&str>,
    sites: &mut Vec<Site>,
    out: &mut Problems<'_>,
) -> Value {
    let mut places = HashMap::new();
    let with = node_to_json(node, "with".to_string(), &mut places);
    let broken: HashSet<String> = template::check(&with)
        .into_iter()
        .map(|(path, message)| {
            let at = places.get(&path).copied().unwrap_or(node.referenced);
            out.add(at, step, "bad_template", format!("template in `{prefix}{path}` does not compile: {message}"));
            path
        })
        .collect();
    template::for_each_template(&with, "with", &mut |path, text| {
        if !broken.contains(path) {
            let at = places.get(path).copied().unwrap_or(node.referenced);
            let compensation = !prefix.is_empty();
            let site = Site::template(index, at, &format!("{prefix}{path}"), text);
            sites.push(Site { compensation, secrets: true, ..site });
        }
    });
    for found in crate::secrets::literal_credentials(&with, "with") {
        let at = places.get(&found.path).copied().unwrap_or(node.referenced);
        out.warn(at, step, "literal_credential", found.message(prefix));
    }
    with
}

fn compile_compensate(
    c: &RawCompensate,
    index: usize,
    defaults: &Defaults,
    step: Option<&str>,
    sites: &mut Vec<Site>,
    out: &mut Problems<'_>,
) -> Option<crate::definition::Compensate> {
    let Some(kind) = kinds::lookup(&c.kind.value) else {
        out.add(
            c.kind.referenced,
            step,
            "unknown_kind",
            format!(
                "compensate.kind `{}` is not a step kind; known kinds: {}",
                c.kind.value,
                kinds::names().join(", ")
            ),
        );
        return None;
    };
    if kind.name == "approval" {
        let msg = "compensate.kind cannot be `approval`: a compensation runs unattended; use `on_failure: escalate` on a step to involve a person";
        out.add(c.kind.referenced, step, "bad_compensation", msg.to_string());
        return None;
    }
    let with = c.with.as_ref().map_or(Value::Null, |node| templates_of(node, index, "compensate.", step, sites, out));
    let own = c.retry.as_ref().map(|r| check_retry(r, "compensate.retry.", step, out)).unwrap_or_default();
    let retry = resolve_retry(kind.retry, &defaults.retry, &own).policy;
    Some(crate::definition::Compensate { kind: kind.name.to_string(), with, retry })
}

/// A step needs approval if it is an `approval` step, sets `requires_approval: true`, or has an
/// `approval:` block.
fn compile_approval(
    s: &RawStep,
    index: usize,
    step: Option<&str>,
    sites: &mut Vec<Site>,
    out: &mut Problems<'_>,
) -> Option<crate::definition::Approval> {
    use crate::definition::{Approval, OnDeadline};
    let wanted = s.kind.value == "approval" || s.requires_approval == Some(true) || s.approval.is_some();
    if !wanted {
        return None;
    }
    let raw = s.approval.as_ref();
    let prompt = match raw.and_then(|a| a.prompt.as_ref()) {
        Some(p) => {
            match template::check(&Value::String(p.value.clone())).pop() {
                Some((_, message)) => out.add(
                    p.referenced,
                    step,
                    "bad_template",
                    format!("template in `approval.prompt` does not compile: {message}"),
                ),
                None => sites.push(Site::template(index, p.referenced, "approval.prompt", &p.value)),
            }
            p.value.clone()
        }
        None => format!("Approve step `{}`?", s.id.value),
    };
    let deadline_ms =
        raw.and_then(|a| a.deadline.as_ref()).and_then(|d| out.delay("approval.deadline", d, step, 365 * 86_400_000));
    let on_deadline = match raw.and_then(|a| a.on_deadline.as_ref()) {
        None => OnDeadline::Reject,
        Some(v) => match v.value.as_str() {
            "reject" => OnDeadline::Reject,
            "fail" => OnDeadline::Fail,
            "wait" | "notify" => OnDeadline::Wait,
            other => {
                out.add(
                    v.referenced,
                    step,
                    "bad_value",
                    format!("`approval.on_deadline: {}` is not one of reject, fail, wait", other.escape_debug()),
                );
                OnDeadline::Reject
            }
        },
    };
    Some(Approval {
        prompt,
        approvers: raw.and_then(|a| a.approvers.clone()).unwrap_or_default(),
        deadline_ms,
        on_deadline,
    })
}

fn compile_inject(raw: &RawInject, step: Option<&str>, out: &mut Problems<'_>) -> Inject {
    let mut inject = Inject::default();
    if let Some(v) = &raw.fail_times {
        inject.fail_times = out
            .in_range("inject.fail_times", v, step, (0, i64::from(u32::MAX)), " (the first N attempts fail)")
            .and_then(|n| u32::try_from(n).ok())
            .unwrap_or(0);
    }
    if let Some(v) = &raw.fail_rate {
        inject.fail_rate =
            out.in_range("inject.fail_rate", v, step, (0.0, 1.0), " (the chance that an attempt fails)").unwrap_or(0.0);
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
pub(crate) fn closest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
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
            let hint =
                closest(field, expected.iter().copied()).map(|c| format!("did you mean `{c}`? ")).unwrap_or_default();
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
    let known = |n: u64| (n > 0 && code != "empty").then_some(n);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(source: &str) -> Vec<Problem> {
        match parse_definition(source, "test.yaml") {
            Ok(def) => panic!("expected problems, got a definition: {def:#?}"),
            Err(p) => p,
        }
    }

    fn parse(source: &str, file: &str) -> Definition {
        parse_definition(source, file).unwrap_or_else(|problems| {
            let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
            panic!("unexpected problems:\n{}", text.join("\n"))
        })
    }

    /// (line, column, step, code) of a problem, for compact exact assertions.
    type Brief<'a> = (Option<u64>, Option<u64>, Option<&'a str>, &'a str);

    fn summary(problems: &[Problem]) -> Vec<Brief<'_>> {
        problems.iter().map(|p| (p.line, p.column, p.step.as_deref(), p.code)).collect()
    }

    const VALID_YAML: &str = r#"
cairn: 1
name: demo.flow
version: 2
inputs:
  topic: {default: otters, description: what to write about}
  audience:
defaults:
  retry: {max_attempts: 4, initial_delay: 250ms}
  timeout: 30s
steps:
  - id: gen
    kind: mock_model
    with: {prompt: "Write about {{ inputs.topic }}", n: [1, 2.5, true, null]}
    retry: {max_delay: 2s, jitter: 0}
  - id: send
    kind: echo
    needs: [gen]
    when: "steps.gen.status == 'completed'"
    timeout: none
    on_failure: continue
    trigger: all_done
    inject: {fail_times: 2, fail_rate: 0.5, fail_class: rate_limited, delay: 100, hang: false}
"#;

    const VALID_JSON: &str = r#"{
  "cairn": 1,
  "name": "demo.flow",
  "version": 2,
  "inputs": {
    "topic": {"default": "otters", "description": "what to write about"},
    "audience": null
  },
  "defaults": {"retry": {"max_attempts": 4, "initial_delay": "250ms"}, "timeout": "30s"},
  "steps": [
    {
      "id": "gen",
      "kind": "mock_model",
      "with": {"prompt": "Write about {{ inputs.topic }}", "n": [1, 2.5, true, null]},
      "retry": {"max_delay": "2s", "jitter": 0}
    },
    {
      "id": "send",
      "kind": "echo",
      "needs": ["gen"],
      "when": "steps.gen.status == 'completed'",
      "timeout": "none",
      "on_failure": "continue",
      "trigger": "all_done",
      "inject": {"fail_times": 2, "fail_rate": 0.5, "fail_class": "rate_limited", "delay": 100, "hang": false}
    }
  ]
}"#;

    #[test]
    fn validate_yaml_and_json_compile_to_the_same_resolved_definition() {
        let def = parse(VALID_YAML, "demo.yaml");
        assert_eq!(def, parse(VALID_JSON, "demo.json"));

        assert_eq!((def.format, def.name.as_str(), def.version), (1, "demo.flow", 2));
        assert_eq!(def.inputs["topic"].default, Some(serde_json::json!("otters")));
        assert_eq!(def.inputs["audience"], InputSpec::default());

        let model = def.step("gen").expect("gen");
        // max_attempts and initial_delay from defaults, max_delay and jitter from the step,
        // multiplier from the mock_model kind; timeout from defaults.
        assert_eq!(
            model.retry,
            RetryPolicy { max_attempts: 4, initial_delay_ms: 250, multiplier: 2.0, max_delay_ms: 2_000, jitter: 0.0 }
        );
        assert_eq!(model.timeout_ms, Some(30_000));
        assert_eq!(
            model.with,
            serde_json::json!({"prompt": "Write about {{ inputs.topic }}", "n": [1, 2.5, true, null]})
        );
        assert_eq!((&model.on_failure, model.trigger, &model.inject), (&OnFailure::Fail, Trigger::AllSucceeded, &None));

        let send = def.step("send").expect("send");
        assert_eq!(
            send.retry,
            RetryPolicy { max_attempts: 4, initial_delay_ms: 250, multiplier: 2.0, max_delay_ms: 5_000, jitter: 0.2 }
        );
        assert_eq!(send.timeout_ms, None, "`timeout: none` overrides the default");
        assert_eq!(send.needs, vec![StepId::new("gen")]);
        assert_eq!((&send.on_failure, send.trigger), (&OnFailure::Continue, Trigger::AllDone));
        assert_eq!(
            send.inject,
            Some(Inject {
                fail_times: 2,
                fail_rate: 0.5,
                fail_class: ErrorClass::RateLimited,
                delay_ms: 100,
                hang: false
            })
        );
    }

    #[test]
    fn validate_kind_defaults_apply_without_overrides() {
        let def = parse("name: x\nsteps:\n  - {id: a, kind: sleep}\n  - {id: b, kind: mock_model}\n", "x.yaml");
        let sleep = kinds::lookup("sleep").expect("sleep kind");
        let model = kinds::lookup("mock_model").expect("mock_model kind");
        assert_eq!((def.steps[0].retry, def.steps[0].timeout_ms), (sleep.retry, sleep.timeout_ms));
        assert_eq!((def.steps[1].retry, def.steps[1].timeout_ms), (model.retry, model.timeout_ms));
        assert_eq!((def.format, def.version), (FORMAT_VERSION, 1));
        assert!(def.steps.iter().all(|s| s.with.is_null() && s.needs.is_empty() && s.inject.is_none()));
    }

    const BROKEN: &str = "\
name: broken
steps:
  - id: a
    kind: echo
    needs: [c]
  - id: b
    kind: echo
    needs: [a]
  - id: c
    kind: echo
    needs: [b]
  - id: a
    kind: mock_modle
  - id: d
    kind: echo
    needs: [a, bb]
    when: \"inputs.x ==\"
    retry: {max_attempts: 0, jitter: 2.0}
";

    #[test]
    fn validate_reports_every_problem_in_source_order() {
        let found = problems(BROKEN);
        assert_eq!(
            summary(&found),
            vec![
                (Some(3), Some(9), Some("a"), "cycle"),
                (Some(12), Some(9), Some("a"), "duplicate_id"),
                (Some(13), Some(11), Some("a"), "unknown_kind"),
                (Some(16), Some(16), Some("d"), "unknown_need"),
                (Some(17), Some(11), Some("d"), "bad_condition"),
                (Some(18), Some(27), Some("d"), "out_of_range"),
                (Some(18), Some(38), Some("d"), "out_of_range"),
            ],
            "{found:#?}"
        );
        assert!(found[1].message.contains("line 3 already defines"), "{}", found[1].message);
        assert!(found[2].message.contains("did you mean `mock_model`?"), "{}", found[2].message);
        assert!(
            found[3].message.contains("`bb`") && found[3].message.contains("did you mean `b`?"),
            "{}",
            found[3].message
        );
        assert_eq!(
            found[4].message,
            "`when` is not a valid CEL condition (at 1:12 in the condition): Syntax error: mismatched input '<EOF>' \
             expecting {'[', '{', '(', '.', '-', '!', 'true', 'false', 'null', NUM_FLOAT, NUM_INT, NUM_UINT, STRING, \
             BYTES, IDENTIFIER}"
        );
        assert!(found[5].message.contains("between 1 and 100"), "{}", found[5].message);
        assert!(found[6].message.contains("between 0.0 and 1.0"), "{}", found[6].message);
    }

    #[test]
    fn validate_cycle_message_prints_the_path_and_display_has_the_location() {
        let found = problems(BROKEN);
        assert_eq!(
            found[0].to_string(),
            "test.yaml:3:9: step `a`: cycle: a -> c -> b -> a (each step needs the next, so none can start); \
             remove one of these needs"
        );
        let cycles: Vec<_> = found.iter().filter(|p| p.code == "cycle").collect();
        assert_eq!(cycles.len(), 1, "one cycle, reported once");
    }

    #[test]
    fn validate_finds_each_distinct_cycle_once() {
        let source = "\
name: loops
steps:
  - {id: a, kind: noop, needs: [b]}
  - {id: b, kind: noop, needs: [a, c]}
  - {id: c, kind: noop, needs: [b, c]}
  - {id: d, kind: noop, needs: [e]}
  - {id: e, kind: noop, needs: [d]}
";
        let found = problems(source);
        let messages: Vec<String> = found.iter().map(|p| format!("{}:{}", p.line.unwrap_or(0), p.message)).collect();
        assert_eq!(
            summary(&found).iter().map(|s| (s.2, s.3)).collect::<Vec<_>>(),
            [(Some("a"), "cycle"), (Some("b"), "cycle"), (Some("c"), "self_need"), (Some("d"), "cycle")],
            "{messages:#?}"
        );
        assert!(messages[0].starts_with("3:cycle: a -> b -> a "), "{messages:#?}");
        // Found from b's second edge while a -> b was still on the search path.
        assert!(messages[1].starts_with("4:cycle: b -> c -> b "), "{messages:#?}");
        assert!(messages[3].starts_with("6:cycle: d -> e -> d "), "{messages:#?}");
    }

    #[test]
    fn validate_template_problems_point_at_the_string() {
        let source = "\
name: t
inputs: {x: {}}
steps:
  - id: a
    kind: echo
    with:
      ok: \"{{ inputs.x }}\"
      nested:
        list: [fine, \"{{ broken\"]
";
        let found = problems(source);
        assert_eq!(summary(&found), vec![(Some(9), Some(22), Some("a"), "bad_template")], "{found:#?}");
        assert!(found[0].message.contains("with.nested.list[1]"), "{}", found[0].message);
    }

    #[test]
    fn validate_checks_values_ranges_and_durations() {
        let source = "\
cairn: 2
name: \"bad name!\"
version: 0
artifact: ../out.json
defaults:
  retry: {initial_delay: 2m}
  timeout: 0s
steps:
  - id: Upper
    kind: echo
    retry: {multiplier: 0.5, max_delay: 5 parsecs}
    timeout: 25h
    on_failure: shrug
    trigger: sometimes
    inject: {fail_rate: 1.5, fail_class: flaky, delay: -3, fail_times: -1}
";
        let found = problems(source);
        assert_eq!(
            summary(&found),
            vec![
                (Some(1), Some(8), None, "bad_value"),
                (Some(2), Some(7), None, "bad_name"),
                (Some(3), Some(10), None, "out_of_range"),
                (Some(4), Some(11), None, "bad_value"),
                (Some(6), Some(26), None, "out_of_range"),
                (Some(7), Some(12), None, "out_of_range"),
                (Some(9), Some(9), Some("Upper"), "bad_id"),
                (Some(11), Some(25), Some("Upper"), "out_of_range"),
                (Some(11), Some(41), Some("Upper"), "bad_duration"),
                (Some(12), Some(14), Some("Upper"), "out_of_range"),
                (Some(13), Some(17), Some("Upper"), "bad_value"),
                (Some(14), Some(14), Some("Upper"), "bad_value"),
                (Some(15), Some(25), Some("Upper"), "out_of_range"),
                (Some(15), Some(42), Some("Upper"), "bad_value"),
                (Some(15), Some(56), Some("Upper"), "bad_duration"),
                (Some(15), Some(72), Some("Upper"), "out_of_range"),
            ],
            "{found:#?}"
        );
        let on_failure = &found[10].message;
        assert!(on_failure.contains("`fail`") && on_failure.contains("`continue`"), "{on_failure}");
        assert!(on_failure.contains("escalate"), "{on_failure}");
        assert!(found[4].message.contains("gives steps of kind `echo` a max_delay of 5.0s"), "{}", found[4].message);
    }

    #[test]
    fn validate_malformed_yaml_gives_line_and_column() {
        let found = problems("name: x\nsteps:\n  - id: a\n  id: b\n");
        assert_eq!(summary(&found), vec![(Some(4), Some(3), None, "parse")]);
        assert!(!found[0].message.contains('\n') && !found[0].message.contains("at line"), "{}", found[0].message);
    }

    #[test]
    fn validate_unknown_and_missing_fields_are_problems() {
        let found = problems("name: x\nsteps:\n  - id: a\n    kinds: echo\n");
        assert_eq!(summary(&found), vec![(Some(4), Some(5), None, "unknown_field")]);
        assert!(found[0].message.starts_with("unknown field `kinds`; did you mean `kind`?"), "{}", found[0].message);

        let found = problems("name: x\nsteps:\n  - id: a\n");
        assert_eq!(summary(&found), vec![(Some(3), Some(5), None, "missing_field")]);
        assert_eq!(found[0].message, "missing required field `kind`");
    }

    #[test]
    fn validate_empty_input_is_one_clear_problem() {
        for source in ["", "  \n", "# only a comment\n"] {
            let found = problems(source);
            assert_eq!(found.len(), 1, "{source:?}: {found:#?}");
            assert_eq!(found[0].code, "empty", "{source:?}");
            assert!(found[0].to_string().starts_with("test.yaml: the file holds no definition"), "{}", found[0]);
        }
        let found = problems("name: x\nsteps: []\n");
        assert_eq!(summary(&found), vec![(Some(2), Some(8), None, "no_steps")]);
    }

    #[test]
    fn validate_problem_display_omits_unknown_parts() {
        let mut p = Problem {
            file: "f.yaml".into(),
            line: Some(4),
            column: Some(2),
            step: Some("a".into()),
            code: "x",
            message: "m".into(),
        };
        assert_eq!(p.to_string(), "f.yaml:4:2: step `a`: m");
        p.column = None;
        p.step = None;
        assert_eq!(p.to_string(), "f.yaml:4: m");
        p.line = None;
        assert_eq!(p.to_string(), "f.yaml: m");
    }

    const EXAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples");

    #[test]
    fn validate_examples_parse_and_invalid_yaml_fails_loudly() {
        let mut checked = 0;
        let entries = std::fs::read_dir(EXAMPLES).expect("examples directory");
        for entry in entries {
            let path = entry.expect("directory entry").path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
            if !(name.ends_with(".yaml") || name.ends_with(".yml") || name.ends_with(".json")) {
                continue;
            }
            let text = std::fs::read_to_string(&path).expect("example readable");
            let result = parse_definition(&text, &name);
            if name == "invalid.yaml" {
                let found = result.expect_err("invalid.yaml must not validate");
                assert!(found.len() >= 4, "{found:#?}");
                assert!(found.iter().all(|p| p.line.is_some()), "{found:#?}");
            } else if let Err(found) = result {
                let text: Vec<String> = found.iter().map(ToString::to_string).collect();
                panic!("example {name} does not validate:\n{}", text.join("\n"));
            }
            checked += 1;
        }
        assert!(checked >= 3, "expected the three examples, checked {checked}");
    }

    #[test]
    fn validate_fallbacks_name_another_step_once_and_make_no_cycle() {
        let ok = parse(
            "name: f\nsteps:\n  - {id: fetch, kind: noop, on_failure: {fallback: cached}}\n  - {id: cached, kind: noop}\n",
            "f.yaml",
        );
        assert_eq!(ok.steps[0].on_failure, OnFailure::Fallback(StepId::new("cached")));
        assert_eq!((ok.fallback_of(0), ok.primary_of(1), ok.effective_needs(1)), (Some(1), Some(0), vec![0]));

        let source = "\
name: f
steps:
  - {id: a, kind: noop, on_failure: {fallback: a}}
  - {id: b, kind: noop, on_failure: {fallback: cachd}}
  - {id: cached, kind: noop}
  - {id: c, kind: noop, on_failure: {fallback: cached}}
  - {id: d, kind: noop, on_failure: {fallback: cached}}
  - {id: e, kind: noop, on_failure: fallback}
  - {id: p, kind: noop, on_failure: {fallback: q}}
  - {id: q, kind: noop, needs: [r]}
  - {id: r, kind: noop, needs: [p]}
";
        let found = problems(source);
        assert_eq!(
            summary(&found),
            vec![
                (Some(3), Some(37), Some("a"), "self_fallback"),
                (Some(4), Some(37), Some("b"), "unknown_fallback"),
                (Some(7), Some(37), Some("d"), "duplicate_fallback"),
                (Some(8), Some(37), Some("e"), "bad_value"),
                (Some(10), Some(10), Some("q"), "cycle"),
            ],
            "{found:#?}"
        );
        assert!(found[1].message.contains("did you mean `cached`?"), "{}", found[1].message);
        assert!(found[2].message.contains("already the fallback of `c`"), "{}", found[2].message);
        assert!(found[3].message.contains("{fallback: STEP}"), "{}", found[3].message);
        assert!(found[4].message.contains("q -> r -> q") && found[4].message.contains("a fallback waits"));

        let found =
            problems("name: f\nsteps:\n  - {id: a, kind: noop, on_failure: {fallbak: b}}\n  - {id: b, kind: noop}\n");
        assert_eq!(found.len(), 1, "{found:#?}");
        assert!(found[0].message.contains("`fallback: STEP`; found `fallbak`"), "{}", found[0].message);
    }

    #[test]
    fn a_literal_authorization_header_is_a_warning_with_its_position_not_a_problem() {
        let source = "\
name: t
steps:
  - id: call
    kind: http
    with:
      url: http://127.0.0.1:9/x
      headers:
        Authorization: Bearer abc123
        X-Trace: fine
    compensate:
      kind: http
      with: {url: http://127.0.0.1:9/undo, body: {password: hunter2}, token: \"{{ secrets.API_TOKEN }}\"}
";
        let (definition, warnings) = parse_definition_with_warnings(source, "wf.yaml");
        assert!(definition.is_ok(), "{definition:?}");
        let brief: Vec<String> = warnings.iter().map(|w| w.as_warning()).collect();
        assert_eq!(brief.len(), 2, "{brief:#?}");
        assert!(
            brief[0].starts_with(
                "wf.yaml:8:24: warning: step `call`: `with.headers.Authorization` holds a literal credential"
            ),
            "{}",
            brief[0]
        );
        assert!(brief[0].contains("write `Bearer {{ secrets.API_TOKEN }}`"), "{}", brief[0]);
        assert!(
            brief[1].starts_with("wf.yaml:12:61: warning: step `call`: `compensate.with.body.password`"),
            "{}",
            brief[1]
        );
        assert!(brief.iter().all(|w| !w.contains("abc123") && !w.contains("hunter2")), "values are never repeated");
        assert!(warnings.iter().all(|w| w.code == "literal_credential"));
        // The same definition with a problem keeps its warnings.
        let (definition, warnings) =
            parse_definition_with_warnings(&source.replace("kind: http\n    with", "kind: htp\n    with"), "wf.yaml");
        assert!(definition.is_err());
        assert_eq!(warnings.len(), 2);
    }

    #[test]
    fn validate_suggestions_need_a_close_match() {
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("", "ab"), 2);
        assert_eq!(closest("genrate", ["send", "generate"]), Some("generate"));
        assert_eq!(closest("x", ["a", "b"]), None);
    }
}
