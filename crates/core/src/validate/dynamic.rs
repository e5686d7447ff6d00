//! Part of phase 2: the dynamic-step blocks — `for_each` (with `max_parallel` and `max_items`) and
//! `loop` (`until`, `max_iterations`) — and what they cannot be combined with.

use super::check::Site;
use super::parse::{RawOnFailure, RawStep, node_to_json};
use super::problems::Problems;
use crate::definition::{DEFAULT_MAX_ITEMS, ForEach, Loop};
use crate::{expr, template};
use serde_json::Value;
use std::collections::HashMap;

/// The most items a step may allow itself with `max_items`.
pub(super) const MAX_ITEMS_LIMIT: i64 = 100_000;
/// The most iterations a `loop` may allow itself.
pub(super) const MAX_ITERATIONS_LIMIT: i64 = 10_000;

/// `for_each`: a template that renders to a list, or a literal list (whose strings may be
/// templates). `max_parallel` and `max_items` belong to it.
pub(super) fn compile_for_each(
    s: &RawStep,
    index: usize,
    here: Option<&str>,
    sites: &mut Vec<Site>,
    out: &mut Problems<'_>,
) -> Option<ForEach> {
    let Some(node) = &s.for_each else {
        for (name, v) in [("max_parallel", &s.max_parallel), ("max_items", &s.max_items)] {
            if let Some(v) = v {
                let msg = format!("`{name}` applies to a `for_each` step only; add `for_each` or remove `{name}`");
                out.add(v.referenced, here, "bad_for_each", msg);
            }
        }
        return None;
    };
    let mut places = HashMap::new();
    let items = node_to_json(node, "for_each".to_string(), &mut places);
    let is_template = matches!(&items, Value::String(t) if t.contains("{{"));
    if !is_template && !items.is_array() {
        out.add(
            node.referenced,
            here,
            "bad_for_each",
            "`for_each` must be a list, or a template that renders to one, e.g. \"{{ steps.search.output.urls }}\"",
        );
    }
    // The same check as `with`, but the items are journaled as they render: no secrets.
    let wrapped = serde_json::json!({ "for_each": items });
    let broken: Vec<String> = template::check(&wrapped)
        .into_iter()
        .map(|(path, message)| {
            let path = path.strip_prefix("with.").unwrap_or(&path).to_string();
            let at = places.get(&path).copied().unwrap_or(node.referenced);
            out.add(at, here, "bad_template", format!("template in `{path}` does not compile: {message}"));
            path
        })
        .collect();
    template::for_each_template(&items, "for_each", &mut |path, text| {
        if !broken.iter().any(|b| b == path) {
            let at = places.get(path).copied().unwrap_or(node.referenced);
            sites.push(Site::template(index, at, path, text));
        }
    });
    let max_parallel = s.max_parallel.as_ref().and_then(|m| {
        out.in_range("max_parallel", m, here, (1, 10_000), " (how many items run at once)").map(|n| n as u32)
    });
    let max_items = s
        .max_items
        .as_ref()
        .and_then(|m| out.in_range("max_items", m, here, (1, MAX_ITEMS_LIMIT), " (the longest list the step accepts)"))
        .map_or(DEFAULT_MAX_ITEMS, |n| n as u32);
    if let Some(list) = items.as_array()
        && list.len() > max_items as usize
    {
        let msg =
            format!("`for_each` lists {} items, more than `max_items` ({max_items}); raise `max_items`", list.len());
        out.add(node.referenced, here, "bad_for_each", msg);
    }
    Some(ForEach { items, max_parallel, max_items })
}

/// `loop: {until, max_iterations}`; both are required.
pub(super) fn compile_loop(
    s: &RawStep,
    index: usize,
    here: Option<&str>,
    sites: &mut Vec<Site>,
    out: &mut Problems<'_>,
) -> Option<Loop> {
    let raw = s.repeat.as_ref()?;
    let until = match &raw.value.until {
        None => {
            let msg = "`loop` needs `until`: a CEL condition over this iteration's `output` that ends the loop, e.g. \
                       `output.score >= 8`";
            out.add(raw.referenced, here, "bad_loop", msg);
            String::new()
        }
        Some(u) => {
            match expr::check(&u.value) {
                Err(e) => {
                    let first = e.lines().next().unwrap_or_default().to_string();
                    out.add(
                        u.referenced,
                        here,
                        "bad_condition",
                        format!("`loop.until` is not a valid CEL condition: {first}"),
                    );
                }
                Ok(()) => {
                    sites.push(Site { condition: true, ..Site::template(index, u.referenced, "loop.until", &u.value) })
                }
            }
            u.value.clone()
        }
    };
    let max_iterations = match &raw.value.max_iterations {
        None => {
            let msg = format!(
                "`loop` needs `max_iterations` (1 to {MAX_ITERATIONS_LIMIT}): the most iterations it may run, so a \
                 condition that never holds cannot loop forever"
            );
            out.add(raw.referenced, here, "bad_loop", msg);
            1
        }
        Some(m) => out
            .in_range("loop.max_iterations", m, here, (1, MAX_ITERATIONS_LIMIT), " (the most iterations it may run)")
            .map_or(1, |n| n as u32),
    };
    Some(Loop { until, max_iterations })
}

/// What a `for_each` or `loop` step cannot also be: the other one, a gate, or escalated.
pub(super) fn check_dynamic(s: &RawStep, gate: bool, here: Option<&str>, out: &mut Problems<'_>) {
    let what = match (&s.for_each, &s.repeat) {
        (Some(f), Some(_)) => {
            let msg = "a step takes `for_each` or `loop`, not both; put the loop in a step that runs for each item";
            out.add(f.referenced, here, "bad_for_each", msg);
            return;
        }
        (Some(_), None) => "for_each",
        (None, Some(_)) => "loop",
        (None, None) => return,
    };
    if gate {
        let msg = format!(
            "an approval step cannot take `{what}`; put `requires_approval: true` on the step that does the work"
        );
        out.add(s.kind.referenced, here, "bad_for_each", msg);
    }
    if let Some(f) = &s.on_failure
        && matches!(&f.value, RawOnFailure::Policy(p) if p == "escalate")
    {
        let msg = format!(
            "a `{what}` step cannot escalate to a person; use fail, continue or a fallback (each instance retries by \
             the step's `retry`)"
        );
        out.add(f.referenced, here, "bad_value", msg);
    }
}
