//! Part of phase 2: the blocks of a step that compile on their own — `with` (and
//! `compensate.with`): JSON with each template checked at its own line, kept as a site for the
//! reference check, and literal credentials warned about; `compensate`, `approval`, `inject` and
//! `budget`.

use super::DAY_MS;
use super::check::Site;
use super::compile::Defaults;
use super::parse::{Node, RawBudget, RawCompensate, RawInject, RawStep, node_to_json};
use super::problems::Problems;
use super::retry::{check_retry, resolve_retry};
use super::schema::check_with;
use crate::definition::{Budget, Inject, OnExceed};
use crate::event::ErrorClass;
use crate::kinds::{Kinds, Role};
use crate::template;
use serde_json::Value;
use serde_saphyr::Location;
use serde_saphyr::Spanned;
use std::collections::{HashMap, HashSet};

/// Where each value of a `with` block is, by its path (`with.a.b[0]`), and where the block is.
pub(super) fn places_of(node: &Spanned<Node>) -> (Location, HashMap<String, Location>) {
    let mut places = HashMap::new();
    node_to_json(node, "with".to_string(), &mut places);
    (node.referenced, places)
}

/// Converts a `with` block (under `prefix`, e.g. `compensate.`) to JSON, reports templates that do
/// not compile at their own line, and keeps the others as sites for the reference check.
pub(super) fn templates_of(
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

pub(super) fn compile_compensate(
    c: &RawCompensate,
    index: usize,
    defaults: &Defaults,
    kinds: &Kinds,
    step: Option<&str>,
    sites: &mut Vec<Site>,
    out: &mut Problems<'_>,
) -> Option<crate::definition::Compensate> {
    let Some(kind) = kinds.lookup(&c.kind.value) else {
        out.add(
            c.kind.referenced,
            step,
            "unknown_kind",
            format!("compensate.kind `{}` is not a step kind; known kinds: {}", c.kind.value, kinds.names().join(", ")),
        );
        return None;
    };
    if kind.role != Role::Activity {
        let msg = match kind.role {
            Role::Gate => format!(
                "compensate.kind cannot be `{}`: a compensation runs unattended; use `on_failure: escalate` on a step to involve a person",
                kind.name
            ),
            _ => format!("compensate.kind cannot be `{}`: a compensation must run an activity", kind.name),
        };
        out.add(c.kind.referenced, step, "bad_compensation", msg);
        return None;
    }
    let with = c.with.as_ref().map_or(Value::Null, |node| templates_of(node, index, "compensate.", step, sites, out));
    let (at, places) = c.with.as_ref().map_or((c.kind.referenced, HashMap::new()), places_of);
    check_with(kind, &with, &places, at, "compensate.", step, out);
    let own = c.retry.as_ref().map(|r| check_retry(r, "compensate.retry.", step, out)).unwrap_or_default();
    let retry = resolve_retry(kind.retry, &defaults.retry, &own).policy;
    Some(crate::definition::Compensate { kind: kind.name.to_string(), with, retry })
}

/// A step needs approval if its kind is a gate (`approval`), it sets `requires_approval: true`,
/// or it has an `approval:` block.
pub(super) fn compile_approval(
    s: &RawStep,
    gate: bool,
    index: usize,
    step: Option<&str>,
    sites: &mut Vec<Site>,
    out: &mut Problems<'_>,
) -> Option<crate::definition::Approval> {
    use crate::definition::{Approval, OnDeadline};
    let wanted = gate || s.requires_approval == Some(true) || s.approval.is_some();
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

pub(super) fn compile_inject(raw: &RawInject, step: Option<&str>, out: &mut Problems<'_>) -> Inject {
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

/// `budget: {max_cost_usd, max_tokens, on_exceed}` of the workflow (`step: None`) or a step.
pub(super) fn compile_budget(raw: &Spanned<RawBudget>, step: Option<&str>, out: &mut Problems<'_>) -> Option<Budget> {
    let b = &raw.value;
    let max_cost_usd = b
        .max_cost_usd
        .as_ref()
        .and_then(|v| out.in_range("budget.max_cost_usd", v, step, (0.000_001, 1_000_000.0), " (US dollars)"));
    let max_tokens = b
        .max_tokens
        .as_ref()
        .and_then(|v| out.in_range("budget.max_tokens", v, step, (1, 1_000_000_000_000), " (input and output tokens)"))
        .map(|n| n as u64);
    if b.max_cost_usd.is_none() && b.max_tokens.is_none() {
        out.add(
            raw.referenced,
            step,
            "missing_field",
            "`budget` needs `max_cost_usd`, `max_tokens` or both".to_string(),
        );
    }
    let on_exceed = match b.on_exceed.as_ref().map(|v| v.value.as_str()) {
        None | Some("fail") => OnExceed::Fail,
        Some("escalate") => OnExceed::Escalate,
        Some(other) => {
            let at = b.on_exceed.as_ref().map_or(raw.referenced, |v| v.referenced);
            out.add(
                at,
                step,
                "bad_value",
                format!("`budget.on_exceed: {}` is not one of fail, escalate", other.escape_debug()),
            );
            OnExceed::Fail
        }
    };
    (max_cost_usd.is_some() || max_tokens.is_some()).then_some(Budget { max_cost_usd, max_tokens, on_exceed })
}

#[cfg(test)]
mod tests {
    use crate::validate::parse_definition_with_warnings;
    use crate::validate::tests::{problems, summary};

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
        let (definition, warnings) = parse_definition_with_warnings(source, "wf.yaml", &crate::kinds::for_tests());
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
        let (definition, warnings) = parse_definition_with_warnings(
            &source.replace("kind: http\n    with", "kind: htp\n    with"),
            "wf.yaml",
            &crate::kinds::for_tests(),
        );
        assert!(definition.is_err());
        assert_eq!(warnings.len(), 2);
    }
}
