//! Phase 2: the raw document to a [`Definition`], field by field — names, defaults, durations,
//! retry policies, `on_failure`, `trigger` and each step's blocks. A value that is not valid is
//! reported at its place and replaced by a placeholder, so the remaining checks still run and one
//! pass finds every problem. The graph checks are called from here once what they need exists.

use super::blocks::{compile_approval, compile_budget, compile_compensate, compile_inject, places_of, templates_of};
use super::check::{Graph, Site, check_fallbacks, check_needs, check_references, report_cycles};
use super::dynamic::{check_dynamic, compile_for_each, compile_loop};
use super::parse::{RawDefinition, RawOnFailure, RawStep};
use super::problems::Problems;
use super::retry::{RetryOverride, check_delays, check_retry, resolve_retry};
use super::schema::{check_wait, check_with};
use super::suggest::closest;
use crate::definition::{Definition, FORMAT_VERSION, InputSpec, OnFailure, Step, Trigger};
use crate::expr;
use crate::ids::StepId;
use crate::kinds::{Kinds, Role};
use crate::retry::RetryPolicy;
use serde_json::Value;

/// Checks and compiles the whole definition. What is wrong goes to `out`; the definition returned
/// is only meaningful when `out` holds no problem.
pub(super) fn compile(mut raw: RawDefinition, kinds: &Kinds, out: &mut Problems<'_>) -> Definition {
    // The workflow's own external kinds join the binary's before any step is checked.
    let external = raw.kinds.take().map(|k| super::external::compile(k, kinds, out)).unwrap_or_default();
    let kinds = &kinds.and(external.iter().map(|(name, kind)| kind.spec(name)));
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
        .map(|(index, step)| {
            let edges = &mut edges[index];
            compile_step(index, &step.value, &graph, &defaults, kinds, edges, &mut sites, out)
        })
        .collect();
    let steps = check_fallbacks(steps, raw_steps, &graph, &mut edges, out);

    report_cycles(raw_steps, &steps, &edges, out);

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
        budget: raw.budget.as_ref().and_then(|b| compile_budget(b, None, out)),
        tools: std::sync::Arc::new(raw.tools.map(|t| super::tools::compile(t, out)).unwrap_or_default()),
        kinds: external,
        steps,
    };
    check_references(&definition, &sites, out);
    definition
}

/// The file-wide `defaults:` block, checked.
pub(super) struct Defaults {
    pub(super) retry: RetryOverride,
    /// `Some(None)` is `timeout: none`.
    pub(super) timeout: Option<Option<u64>>,
}

/// Checks one step and compiles it; pushes its dependency edges (by step index) onto `edges`.
#[allow(clippy::too_many_arguments)]
fn compile_step(
    index: usize,
    s: &RawStep,
    graph: &Graph<'_>,
    defaults: &Defaults,
    kinds: &Kinds,
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

    let kind = kinds.lookup(&s.kind.value);
    if kind.is_none() {
        let known = kinds.names();
        let hint =
            closest(&s.kind.value, known.iter().copied()).map(|c| format!("did you mean `{c}`? ")).unwrap_or_default();
        out.add(
            s.kind.referenced,
            here,
            "unknown_kind",
            format!("unknown kind `{}`; {hint}known kinds: {}", s.kind.value.escape_debug(), known.join(", ")),
        );
    }

    let needs = check_needs(index, s, graph, edges, out);

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
    if let Some(kind) = kind {
        let (at, places) = s.with.as_ref().map_or((s.kind.referenced, Default::default()), places_of);
        check_with(kind, &with, &places, at, "", here, out);
        if kind.role == Role::Wait {
            check_wait(&with, at, here, out);
            // A wait has no attempts: what shapes attempts does not apply to it.
            let name = &kind.name;
            if let Some(t) = &s.timeout {
                let msg = format!(
                    "a `{name}` step has no attempts to time out; write its timeout in `with` (a signal wait's `with.timeout`)"
                );
                out.add(t.referenced, here, "bad_wait", msg);
            }
            if s.retry.is_some() || s.inject.is_some() {
                let msg =
                    format!("a `{name}` step has no attempts: `retry` and `inject` do not apply to it; remove them");
                out.add(s.kind.referenced, here, "bad_wait", msg);
            }
            if let Some(f) = &s.on_failure
                && matches!(&f.value, RawOnFailure::Policy(p) if p == "escalate")
            {
                let msg = format!("a `{name}` step cannot escalate to a person; use fail, continue or a fallback");
                out.add(f.referenced, here, "bad_wait", msg);
            }
        }
        if kind.role == Role::Subworkflow {
            // Its attempt is a child run, not work done here; what it passes on is journaled by
            // the child, so no secret may be in it.
            for site in sites.iter_mut().filter(|s| s.step == index && s.field.starts_with("with")) {
                site.secrets = false;
            }
            let name = &kind.name;
            if let Some(t) = &s.timeout {
                let msg = format!(
                    "a `{name}` step's attempt is a child run, which a per-attempt timeout does not stop; bound the \
                     child's own steps with timeouts instead"
                );
                out.add(t.referenced, here, "bad_subworkflow", msg);
            }
            if s.inject.is_some() {
                let msg = format!("a `{name}` step runs no attempt here: put `inject` on a step of the child workflow");
                out.add(s.kind.referenced, here, "bad_subworkflow", msg);
            }
            // A target written as a template is known only when it renders.
            let literal = |k: &str| with.get(k).and_then(serde_json::Value::as_str).is_some_and(|v| !v.contains("{{"));
            if literal("workflow") || literal("file") {
                let (at, places) = s.with.as_ref().map_or((s.kind.referenced, Default::default()), places_of);
                if let Some(why) = (out.targets)(&with) {
                    let field = if literal("workflow") { "with.workflow" } else { "with.file" };
                    out.add(places.get(field).copied().unwrap_or(at), here, "unknown_workflow", why);
                }
            }
        }
    }

    let step_retry = s.retry.as_ref().map(|r| check_retry(r, "retry.", here, out)).unwrap_or_default();
    // An unknown kind is already reported; the placeholder only lets the other checks run.
    let base = kind.map_or(
        RetryPolicy { max_attempts: 1, initial_delay_ms: 0, multiplier: 1.0, max_delay_ms: 0, jitter: 0.0 },
        |k| k.retry,
    );
    let resolved = resolve_retry(base, &defaults.retry, &step_retry);
    check_delays(&resolved, kind.map(|k| k.name.as_str()), id, out);

    let step_timeout = s.timeout.as_ref().and_then(|t| out.timeout("timeout", t, here));
    let timeout_ms = step_timeout.or(defaults.timeout).unwrap_or(kind.and_then(|k| k.timeout_ms));
    // A wait has no attempts: `defaults` do not shape it (so a written-back plan, which leaves
    // them out for waits, compiles to the same step).
    // A subworkflow's attempt is a child run: it retries, but no per-attempt timeout stops it.
    let (retry, timeout_ms) = match kind.map(|k| (k, k.role)) {
        Some((k, Role::Wait)) => (k.retry, None),
        Some((_, Role::Subworkflow)) => (resolved.policy, None),
        _ => (resolved.policy, timeout_ms),
    };

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

    let gate = kind.is_some_and(|k| k.role == Role::Gate);
    check_dynamic(s, gate, here, out);
    Step {
        id: StepId::new(id),
        kind: s.kind.value.clone(),
        needs,
        when: s.when.as_ref().map(|w| w.value.clone()),
        with,
        retry,
        timeout_ms,
        on_failure,
        trigger,
        inject: s.inject.as_ref().map(|raw| compile_inject(raw, here, out)),
        approval: compile_approval(s, gate, index, here, sites, out),
        compensate: s.compensate.as_ref().and_then(|c| compile_compensate(c, index, defaults, kinds, here, sites, out)),
        for_each: compile_for_each(s, index, here, sites, out),
        repeat: compile_loop(s, index, here, sites, out),
        instance: None,
        budget: s.budget.as_ref().and_then(|b| compile_budget(b, here, out)),
        // Written only where the legacy rule (`approval` is the gate) would not say it, so a
        // definition registered before kinds had roles serializes (and hashes) the same.
        role: kind.map(|k| k.role).filter(|r| *r != crate::definition::legacy_role(&s.kind.value)),
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

#[cfg(test)]
mod tests {
    use crate::definition::FORMAT_VERSION;
    use crate::validate::tests::{parse, problems, summary};

    #[test]
    fn validate_kind_defaults_apply_without_overrides() {
        let def = parse("name: x\nsteps:\n  - {id: a, kind: sleep}\n  - {id: b, kind: mock_model}\n", "x.yaml");
        let kinds = crate::kinds::for_tests();
        let sleep = kinds.lookup("sleep").expect("sleep kind");
        let model = kinds.lookup("mock_model").expect("mock_model kind");
        assert_eq!((def.steps[0].retry, def.steps[0].timeout_ms), (sleep.retry, sleep.timeout_ms));
        assert_eq!((def.steps[1].retry, def.steps[1].timeout_ms), (model.retry, model.timeout_ms));
        assert_eq!((def.format, def.version), (FORMAT_VERSION, 1));
        assert!(def.steps.iter().all(|s| s.with.is_null() && s.needs.is_empty() && s.inject.is_none()));
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
}
