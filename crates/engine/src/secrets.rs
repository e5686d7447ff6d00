//! Secret values, at the edge: looked up when an attempt runs, put into its input in memory,
//! and redacted from everything the attempt hands back.
//!
//! **Invariant: a secret's value never leaves the attempt that uses it.** The journaled input
//! keeps `{{ secrets.NAME }}` (see `cairn_core::secrets`); the value is read from this process's
//! environment right before the activity runs, and any occurrence of it in the attempt's output,
//! error message or log lines is replaced by `[redacted secret NAME]` before anything is
//! journaled, logged, kept in the effect log or answered. A worker on another host therefore
//! uses its own environment, and a replay needs no secrets at all.
//!
//! Where a value comes from (see [`Source`]): the environment variable that `cairn.toml`'s
//! `[secrets]` table names for it (`API_TOKEN = { env = "VAULT_API_TOKEN" }`), else
//! `CAIRN_SECRET_<NAME>`. The mapping wins when there is one: it is the project's reviewed
//! configuration, and a stray `CAIRN_SECRET_…` in someone's shell must not silently replace it.

use crate::activity::Outcome;
use cairn_core::event::{ErrorClass, Failure};
use cairn_core::secrets::SecretSlot;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;

/// Prefix of the environment variable that holds secret NAME when `cairn.toml` does not map it.
pub const ENV_PREFIX: &str = "CAIRN_SECRET_";

/// Values shorter than this are used but not redacted: replacing every `ab` or `42` in an output
/// would mangle unrelated text, and where the replacements fell would give the value away.
pub const MIN_REDACTED_CHARS: usize = 4;

type Lookup = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// Where this process finds secret values.
#[derive(Clone)]
pub struct Source {
    /// NAME → environment variable, from the config file's `[secrets]` table.
    mapped: BTreeMap<String, String>,
    /// The config file the mapping came from, for messages.
    config: Option<String>,
    env: Lookup,
}

impl fmt::Debug for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Source").field("mapped", &self.mapped).field("config", &self.config).finish_non_exhaustive()
    }
}

impl Default for Source {
    fn default() -> Self {
        Source::from_env()
    }
}

impl Source {
    /// `CAIRN_SECRET_<NAME>` from this process's environment; no mapping.
    pub fn from_env() -> Self {
        let env: Lookup = Arc::new(|var: &str| std::env::var(var).ok());
        Source { mapped: BTreeMap::new(), config: None, env }
    }

    /// Reads variables through `lookup` instead of the process environment (tests).
    pub fn with_lookup(mut self, lookup: impl Fn(&str) -> Option<String> + Send + Sync + 'static) -> Self {
        self.env = Arc::new(lookup);
        self
    }

    /// Secret NAME comes from the environment variable `mapped[NAME]`, as the config file
    /// `config` says.
    pub fn with_mapping(mut self, config: impl Into<String>, mapped: BTreeMap<String, String>) -> Self {
        self.config = Some(config.into());
        self.mapped = mapped;
        self
    }

    /// The value of one secret, or a message naming it and how to provide it (never a value).
    pub fn lookup(&self, name: &str) -> Result<String, String> {
        let value = |var: &str| (self.env)(var).filter(|v| !v.is_empty());
        match self.mapped.get(name) {
            Some(var) => value(var).ok_or_else(|| {
                format!(
                    "secret `{name}` is not available: {} maps it to the environment variable `{var}`, which is not \
                     set (or empty) for this process; set `{var}` for the process that runs the attempt \
                     (`cairn run`, `cairn serve` or `cairn worker`)",
                    self.config.as_deref().unwrap_or("the config file")
                )
            }),
            None => value(&format!("{ENV_PREFIX}{name}")).ok_or_else(|| {
                format!(
                    "secret `{name}` is not available: set the environment variable `{ENV_PREFIX}{name}` for the \
                     process that runs the attempt (`cairn run`, `cairn serve` or `cairn worker`), or name another \
                     variable for it under [secrets] in cairn.toml (`{name} = {{ env = \"VAR\" }}`)"
                )
            }),
        }
    }

    /// The values of every secret the slots name. A missing secret fails the attempt for good
    /// (retrying cannot make the environment change), naming each missing one.
    pub fn resolve(&self, slots: &[SecretSlot]) -> Result<Resolved, Failure> {
        let names: BTreeSet<&str> = slots.iter().flat_map(SecretSlot::names).collect();
        let mut values = Vec::new();
        let mut missing = Vec::new();
        let mut notes = Vec::new();
        for name in names {
            match self.lookup(name) {
                Ok(value) => {
                    if let Some(var) = self.mapped.get(name)
                        && (self.env)(&format!("{ENV_PREFIX}{name}")).is_some()
                    {
                        notes.push(format!(
                            "secret `{name}` comes from `{var}` as cairn.toml maps it; `{ENV_PREFIX}{name}` is set too \
                             and not used"
                        ));
                    }
                    if value.chars().count() < MIN_REDACTED_CHARS {
                        notes.push(format!(
                            "secret `{name}` is shorter than {MIN_REDACTED_CHARS} characters, so it is not redacted \
                             from what this attempt returns or logs"
                        ));
                    }
                    values.push((name.to_string(), value));
                }
                Err(why) => missing.push(why),
            }
        }
        if !missing.is_empty() {
            return Err(Failure::new(ErrorClass::Permanent, missing.join("; ")));
        }
        Ok(Resolved::new(values, notes))
    }
}

/// The values of one attempt's secrets, held only while the attempt runs.
pub struct Resolved {
    /// (name, value), longest value first, so a value that contains another is redacted whole.
    values: Vec<(String, String)>,
    /// (name, text) to redact: each value as it is and as JSON strings and Rust's `{:?}` write
    /// it (quotes and backslashes escaped), the forms Cairn itself may put a value in when it
    /// quotes what a service said; longest first.
    needles: Vec<(String, String)>,
    /// Log lines about where values came from (never the values).
    notes: Vec<String>,
}

impl fmt::Debug for Resolved {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.values.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("Resolved").field("names", &names).finish_non_exhaustive()
    }
}

impl Resolved {
    fn new(mut values: Vec<(String, String)>, notes: Vec<String>) -> Self {
        values.sort_by(|a, b| b.1.len().cmp(&a.1.len()).then_with(|| a.0.cmp(&b.0)));
        let inner = |quoted: String| quoted.get(1..quoted.len().saturating_sub(1)).map(str::to_string);
        let mut needles: Vec<(String, String)> = Vec::new();
        for (name, value) in values.iter().filter(|(_, v)| v.chars().count() >= MIN_REDACTED_CHARS) {
            let forms =
                [Some(value.clone()), serde_json::to_string(value).ok().and_then(inner), inner(format!("{value:?}"))];
            for form in forms.into_iter().flatten() {
                if !needles.iter().any(|(_, n)| *n == form) {
                    needles.push((name.clone(), form));
                }
            }
        }
        needles.sort_by(|a, b| b.1.len().cmp(&a.1.len()).then_with(|| a.0.cmp(&b.0)));
        Resolved { values, needles, notes }
    }

    /// Whether the attempt holds any secret value (its output then goes out only once redacted).
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// No secrets: the input as it is, nothing to redact.
    pub fn none() -> Self {
        Resolved { values: Vec::new(), needles: Vec::new(), notes: Vec::new() }
    }

    fn value(&self, name: &str) -> &str {
        self.values.iter().find(|(n, _)| n == name).map_or("", |(_, v)| v.as_str())
    }

    /// The input the activity gets: the journaled one with the values put where the slots say.
    pub fn apply(&self, input: &Value, slots: &[SecretSlot]) -> Value {
        let mut real = input.clone();
        for slot in slots {
            if let Some(target) = real.pointer_mut(&slot.pointer) {
                *target = Value::String(slot.build(|name| self.value(name).to_string()));
            }
        }
        real
    }

    /// `text` with every value (of at least [`MIN_REDACTED_CHARS`]) replaced by
    /// `[redacted secret NAME]`, in one pass, so a marker is never redacted again.
    pub fn redact(&self, text: &str) -> String {
        if self.needles.is_empty() {
            return text.to_string();
        }
        // Matched regardless of ASCII case: a value that went through a URL's host, a header
        // name or any other lower-casing still is the secret. ASCII case folding keeps every
        // byte where it was, so positions in the folded text are positions in the text.
        let folded = text.to_ascii_lowercase();
        let needles: Vec<(&String, String)> =
            self.needles.iter().map(|(name, v)| (name, v.to_ascii_lowercase())).collect();
        let mut out = String::with_capacity(text.len());
        let mut from = 0;
        loop {
            // The earliest occurrence; at the same place the longest value (listed first).
            let next = needles
                .iter()
                .filter_map(|(name, v)| folded[from..].find(v.as_str()).map(|at| (from + at, *name, v.len())))
                .min_by_key(|(at, ..)| *at);
            let Some((at, name, len)) = next else { break };
            out.push_str(&text[from..at]);
            out.push_str(&format!("[redacted secret {name}]"));
            from = at + len;
        }
        out.push_str(&text[from..]);
        out
    }

    /// [`Resolved::redact`] on every string (and key) of a JSON value.
    pub fn redact_value(&self, value: Value) -> Value {
        if self.values.is_empty() {
            return value;
        }
        match value {
            Value::String(s) => Value::String(self.redact(&s)),
            Value::Array(items) => Value::Array(items.into_iter().map(|v| self.redact_value(v)).collect()),
            Value::Object(map) => {
                Value::Object(map.into_iter().map(|(k, v)| (self.redact(&k), self.redact_value(v))).collect())
            }
            other => other,
        }
    }

    /// What an attempt hands back, redacted: its output or error, and its log lines (with the
    /// notes about where values came from in front).
    pub fn redact_outcome(&self, outcome: Outcome) -> Outcome {
        let mut logs: Vec<String> = self.notes.clone();
        if self.values.is_empty() {
            logs.extend(outcome.logs);
            return Outcome { result: outcome.result, logs, usage: outcome.usage };
        }
        logs.extend(outcome.logs.iter().map(|l| self.redact(l)));
        let result = match outcome.result {
            Ok(value) => Ok(self.redact_value(value)),
            Err(failure) => Err(Failure { message: self.redact(&failure.message), ..failure }),
        };
        Outcome { result, logs, usage: outcome.usage }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_core::secrets::Part;
    use serde_json::json;

    fn source(vars: &[(&str, &str)]) -> Source {
        let vars: BTreeMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Source::from_env().with_lookup(move |k| vars.get(k).cloned())
    }

    fn slot(pointer: &str, parts: Vec<Part>) -> SecretSlot {
        SecretSlot { pointer: pointer.into(), parts }
    }

    #[test]
    fn values_go_where_the_slots_say_and_only_there() {
        let s = source(&[("CAIRN_SECRET_API_TOKEN", "tok-123456")]);
        let slots =
            vec![slot("/headers/Authorization", vec![Part::Text("Bearer ".into()), Part::Secret("API_TOKEN".into())])];
        let resolved = s.resolve(&slots).expect("resolved");
        let input =
            json!({"headers": {"Authorization": "Bearer {{ secrets.API_TOKEN }}"}, "body": "{{ secrets.API_TOKEN }}"});
        let real = resolved.apply(&input, &slots);
        assert_eq!(real["headers"]["Authorization"], "Bearer tok-123456");
        assert_eq!(real["body"], "{{ secrets.API_TOKEN }}", "text that only looks like a reference stays text");
    }

    #[test]
    fn a_value_is_redacted_whatever_its_ascii_case() {
        let s = source(&[("CAIRN_SECRET_TOKEN", "SuperSecret123")]);
        let resolved = s.resolve(&[slot("", vec![Part::Secret("TOKEN".into())])]).expect("resolved");
        let text = "host supersecret123.invalid, or SUPERSECRET123, é SuperSecret123!";
        assert_eq!(
            resolved.redact(text),
            "host [redacted secret TOKEN].invalid, or [redacted secret TOKEN], é [redacted secret TOKEN]!"
        );
    }

    #[test]
    fn the_config_mapping_wins_over_the_conventional_variable() {
        let vars = [("CAIRN_SECRET_API_TOKEN", "from-convention"), ("VAULT_TOKEN", "from-mapping")];
        let mapped = BTreeMap::from([("API_TOKEN".to_string(), "VAULT_TOKEN".to_string())]);
        let s = source(&vars).with_mapping("cairn.toml", mapped.clone());
        assert_eq!(s.lookup("API_TOKEN").as_deref(), Ok("from-mapping"));
        let resolved = s.resolve(&[slot("", vec![Part::Secret("API_TOKEN".into())])]).expect("resolved");
        let logs = resolved.redact_outcome(Outcome::of(Ok(Value::Null), vec![])).logs;
        assert!(logs[0].contains("`CAIRN_SECRET_API_TOKEN` is set too and not used"), "{logs:?}");
        // Mapped but unset: no fallback, and the message names the variable to set.
        let s = source(&[("CAIRN_SECRET_API_TOKEN", "x")]).with_mapping("/etc/cairn.toml", mapped);
        let err = s.lookup("API_TOKEN").expect_err("missing");
        assert!(err.contains("/etc/cairn.toml maps it to the environment variable `VAULT_TOKEN`"), "{err}");
    }

    #[test]
    fn a_missing_secret_fails_the_attempt_for_good_naming_how_to_provide_it() {
        let slots = vec![slot("/a", vec![Part::Secret("API_TOKEN".into()), Part::Secret("OTHER".into())])];
        let failure = source(&[("CAIRN_SECRET_OTHER", "")]).resolve(&slots).expect_err("missing");
        assert_eq!(failure.class, ErrorClass::Permanent);
        assert!(
            failure.message.starts_with(
                "secret `API_TOKEN` is not available: set the environment variable `CAIRN_SECRET_API_TOKEN`"
            ),
            "{}",
            failure.message
        );
        assert!(failure.message.contains("secret `OTHER` is not available"), "an empty value counts as missing");
    }

    #[test]
    fn redaction_replaces_the_longest_value_first_in_one_pass_and_skips_short_values() {
        let resolved = Resolved::new(
            vec![
                ("SHORT".into(), "abc".into()),
                ("INNER".into(), "secret".into()),
                ("OUTER".into(), "my-secret-value".into()),
            ],
            vec![],
        );
        assert_eq!(
            resolved.redact("x my-secret-value y secret z abc"),
            "x [redacted secret OUTER] y [redacted secret INNER] z abc"
        );
        let outcome = Outcome::of(
            Err(Failure::new(ErrorClass::Transient, "answered 500: Bearer my-secret-value")),
            vec!["POST http://h/x?k=secret".into()],
        );
        let out = resolved.redact_outcome(outcome);
        assert_eq!(out.result.map_err(|f| f.message), Err("answered 500: Bearer [redacted secret OUTER]".into()));
        assert_eq!(out.logs, vec!["POST http://h/x?k=[redacted secret INNER]".to_string()]);
        let value = resolved.redact_value(json!({"echo": ["secret"], "secret": 1}));
        assert_eq!(value, json!({"echo": ["[redacted secret INNER]"], "[redacted secret INNER]": 1}));
    }

    #[test]
    fn a_value_cairn_quoted_with_escapes_is_redacted_too() {
        // A service echoed a value with a quote and a backslash in it; Cairn quoted that text in
        // an error with `{:?}` (and a JSON writer would escape it the same way).
        let value = r#"pa"ss\w0rd-very-secret"#;
        let resolved = Resolved::new(vec![("TOK".into(), value.into())], vec![]);
        let quoted = format!("not HTTP: {:?}", format!("X {value} Y"));
        assert!(!resolved.redact(&quoted).contains("w0rd-very-secret"), "{}", resolved.redact(&quoted));
        let json = serde_json::to_string(&json!({"echo": value})).expect("json");
        assert!(!resolved.redact(&json).contains("w0rd-very-secret"), "{}", resolved.redact(&json));
        assert_eq!(resolved.redact(value), "[redacted secret TOK]");
    }
}
