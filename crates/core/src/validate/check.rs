//! Phase 3: the checks that need the whole graph. Step ids are unique; `needs` and
//! `on_failure: {fallback: STEP}` name other steps; the graph, with the edges fallbacks add, has
//! no cycle; and each condition and template reads only what its step can see (see
//! [`crate::scope`]). Compilation calls these as soon as what each one needs is known, so every
//! problem is still found in one pass.

use super::parse::RawStep;
use super::problems::Problems;
use super::suggest::closest;
use crate::definition::{Definition, OnFailure, Step};
use crate::ids::StepId;
use crate::scope::View;
use crate::{expr, template};
use serde_saphyr::{Location, Spanned};
use std::collections::{HashMap, HashSet};

/// Step ids and where each was first defined; later steps with the same id are duplicates and
/// take no part in the graph.
pub(super) struct Graph<'a> {
    first: HashMap<&'a str, (usize, Location)>,
    ids_in_order: Vec<&'a str>,
}

impl<'a> Graph<'a> {
    /// Also reports duplicate ids, at the second occurrence.
    pub(super) fn new(steps: &'a [Spanned<RawStep>], out: &mut Problems<'_>) -> Self {
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

/// Checks one step's `needs` against the other steps and returns the valid ones; pushes their
/// dependency edges (by step index) onto `edges` if this is the first step with its id.
pub(super) fn check_needs(
    index: usize,
    s: &RawStep,
    graph: &Graph<'_>,
    edges: &mut Vec<usize>,
    out: &mut Problems<'_>,
) -> Vec<StepId> {
    let id = s.id.value.as_str();
    let here = Some(id);
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
    needs
}

/// Checks every `on_failure: {fallback: STEP}` against the other steps and adds the edges a
/// fallback brings to the graph: the fallback waits for the step it stands in for, and whatever
/// needs that step waits for its fallback. A fallback that cannot be used is reported and the
/// step falls back to `fail`.
pub(super) fn check_fallbacks(
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

/// Reports each distinct cycle of the graph once, at the step where the search entered it.
pub(super) fn report_cycles(
    raw_steps: &[Spanned<RawStep>],
    steps: &[Step],
    edges: &[Vec<usize>],
    out: &mut Problems<'_>,
) {
    for cycle in find_cycles(edges) {
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

/// A condition or template string of one step, kept until the whole graph is known, so what it
/// reads can be checked against what the step can see.
pub(super) struct Site {
    pub(super) step: usize,
    pub(super) at: Location,
    /// Its name in messages: `when`, `with.body`, `approval.prompt`, `compensate.with.to`.
    pub(super) field: String,
    pub(super) text: String,
    pub(super) condition: bool,
    /// `compensate.with` also sees `output`.
    pub(super) compensation: bool,
    /// A string of `with` or `compensate.with`, which may print secrets.
    pub(super) secrets: bool,
}

impl Site {
    pub(super) fn template(step: usize, at: Location, field: &str, text: &str) -> Site {
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

/// What only this place of the step sees: a `for_each` step's item, a `loop` step's iteration.
fn locals_of(step: &crate::definition::Step, field: &str) -> Vec<&'static str> {
    let in_with = field.starts_with("with") || field.starts_with("compensate.with");
    if field == "loop.until" {
        vec!["output", "iteration"]
    } else if in_with && step.for_each.is_some() {
        vec!["item", "index"]
    } else if in_with && step.repeat.is_some() {
        vec!["iteration", "previous"]
    } else {
        Vec::new()
    }
}

/// Refuses what a step's conditions and templates read but can never see (see [`crate::scope`]).
pub(super) fn check_references(def: &Definition, sites: &[Site], out: &mut Problems<'_>) {
    let ids: Vec<&str> = def.steps.iter().map(|s| s.id.as_str()).collect();
    let inputs: Vec<&str> = def.inputs.keys().map(String::as_str).collect();
    let with_fallback: HashSet<&str> =
        def.steps.iter().filter(|s| matches!(s.on_failure, OnFailure::Fallback(_))).map(|s| s.id.as_str()).collect();
    let loops: HashSet<&str> = def.steps.iter().filter(|s| s.repeat.is_some()).map(|s| s.id.as_str()).collect();
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
            loops: loops.clone(),
            output: site.compensation,
            secrets: site.secrets,
            locals: locals_of(&def.steps[site.step], &site.field),
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

#[cfg(test)]
mod tests {
    use crate::definition::OnFailure;
    use crate::ids::StepId;
    use crate::validate::tests::{BROKEN, parse, problems, summary};

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
}
