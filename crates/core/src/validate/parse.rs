//! Phase 1: text to the raw document. The structs here mirror the file format, with `Spanned`
//! fields wherever a later check needs to point at a value; a parser error becomes the one
//! problem reported, at its line and column.

use super::suggest::closest;
use super::{EMPTY_MESSAGE, Problem};
use crate::duration::parse_ms;
use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;
use serde_saphyr::{Location, Spanned};
use std::collections::{BTreeMap, HashMap};
use std::fmt;

/// Reads the whole document, or returns the one problem that stops the parser.
pub(super) fn read(source: &str, file: &str) -> Result<RawDefinition, Problem> {
    if source.trim().is_empty() {
        return Err(Problem {
            file: file.to_string(),
            line: None,
            column: None,
            step: None,
            code: "empty",
            message: EMPTY_MESSAGE.to_string(),
        });
    }
    // serde-saphyr parses lazily: a shape error (a missing field) early in the file would be
    // reported instead of a syntax error further down. Read the whole document once first, so a
    // syntax error, the more fundamental problem, wins.
    if let Err(e) = serde_saphyr::from_str::<de::IgnoredAny>(source) {
        return Err(parse_problem(&e, file));
    }
    serde_saphyr::from_str(source).map_err(|e| parse_problem(&e, file))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDefinition {
    pub(super) cairn: Option<Spanned<i64>>,
    pub(super) name: Spanned<String>,
    pub(super) version: Option<Spanned<i64>>,
    pub(super) description: Option<String>,
    pub(super) artifact: Option<Spanned<String>>,
    pub(super) retention: Option<Spanned<DurationText>>,
    pub(super) budget: Option<Spanned<RawBudget>>,
    pub(super) inputs: Option<BTreeMap<String, Option<RawInput>>>,
    pub(super) defaults: Option<RawDefaults>,
    /// Tools the workflow defines (`http_request` only), checked in `blocks::compile_tools`.
    pub(super) tools: Option<BTreeMap<String, Spanned<Node>>>,
    /// Kinds the workflow declares as external, checked in `external::compile`.
    pub(super) kinds: Option<BTreeMap<String, Spanned<Node>>>,
    pub(super) steps: Spanned<Vec<Spanned<RawStep>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawInput {
    pub(super) description: Option<String>,
    pub(super) default: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDefaults {
    pub(super) retry: Option<RawRetry>,
    pub(super) timeout: Option<Spanned<DurationText>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStep {
    pub(super) id: Spanned<String>,
    pub(super) kind: Spanned<String>,
    pub(super) needs: Option<Vec<Spanned<String>>>,
    pub(super) when: Option<Spanned<String>>,
    pub(super) with: Option<Spanned<Node>>,
    pub(super) retry: Option<RawRetry>,
    pub(super) timeout: Option<Spanned<DurationText>>,
    pub(super) on_failure: Option<Spanned<RawOnFailure>>,
    pub(super) trigger: Option<Spanned<String>>,
    pub(super) inject: Option<RawInject>,
    pub(super) requires_approval: Option<bool>,
    pub(super) approval: Option<RawApproval>,
    pub(super) compensate: Option<RawCompensate>,
    pub(super) for_each: Option<Spanned<Node>>,
    pub(super) max_parallel: Option<Spanned<i64>>,
    pub(super) max_items: Option<Spanned<i64>>,
    #[serde(rename = "loop")]
    pub(super) repeat: Option<Spanned<RawLoop>>,
    pub(super) budget: Option<Spanned<RawBudget>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBudget {
    pub(super) max_cost_usd: Option<Spanned<f64>>,
    pub(super) max_tokens: Option<Spanned<i64>>,
    pub(super) on_exceed: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLoop {
    pub(super) until: Option<Spanned<String>>,
    pub(super) max_iterations: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCompensate {
    pub(super) kind: Spanned<String>,
    pub(super) with: Option<Spanned<Node>>,
    pub(super) retry: Option<RawRetry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawApproval {
    pub(super) prompt: Option<Spanned<String>>,
    pub(super) approvers: Option<Vec<String>>,
    pub(super) deadline: Option<Spanned<DurationText>>,
    pub(super) on_deadline: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRetry {
    pub(super) max_attempts: Option<Spanned<i64>>,
    pub(super) initial_delay: Option<Spanned<DurationText>>,
    pub(super) multiplier: Option<Spanned<f64>>,
    pub(super) max_delay: Option<Spanned<DurationText>>,
    pub(super) jitter: Option<Spanned<f64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawInject {
    pub(super) fail_times: Option<Spanned<i64>>,
    pub(super) fail_rate: Option<Spanned<f64>>,
    pub(super) fail_class: Option<Spanned<String>>,
    pub(super) delay: Option<Spanned<DurationText>>,
    pub(super) hang: Option<bool>,
}

/// `on_failure` as written: a policy name, or `{fallback: STEP}`.
#[derive(Clone, Debug)]
pub(super) enum RawOnFailure {
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
pub(super) enum DurationText {
    Text(String),
    Millis(f64),
}

impl DurationText {
    pub(super) fn is_none(&self) -> bool {
        matches!(self, DurationText::Text(t) if t.trim() == "none")
    }

    pub(super) fn to_ms(&self) -> Result<u64, String> {
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
pub(super) enum Node {
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
pub(super) fn node_to_json(node: &Spanned<Node>, path: String, places: &mut HashMap<String, Location>) -> Value {
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
    use crate::validate::tests::{problems, summary};

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
}
