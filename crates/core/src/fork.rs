//! Forks: a new run that reuses a parent run's recorded results up to a chosen step and executes
//! from there — the one-command way to retry a failed run after a fix.

use crate::event::ReusedStep;
use crate::machine::StepStatus;
use crate::state::RunState;
use std::collections::BTreeSet;

/// The completed steps of `parent` a fork from step `from` takes as done: all of them except
/// `from` itself and every step that depends on it, directly or through others.
pub fn reusable(parent: &RunState, from: &str) -> Result<Vec<ReusedStep>, String> {
    let def = parent.definition.as_ref().ok_or_else(|| format!("run {} has no plan to fork", parent.run_id))?;
    if let Some(instance) = def.step(from).and_then(|s| s.instance.as_ref()) {
        return Err(format!(
            "'{from}' is an instance of step '{}'; fork from '{}' (its instances run again, each as before)",
            instance.of, instance.of
        ));
    }
    if def.step(from).is_none() {
        let names: Vec<&str> = def.steps[..def.written()].iter().map(|s| s.id.as_str()).collect();
        return Err(format!("run {} has no step '{from}'; its steps are {}", parent.run_id, names.join(", ")));
    }
    // `from` and everything downstream of it run again.
    // A fallback counts as downstream of the step it stands in for, and what needs that step as
    // downstream of the fallback.
    let mut again: BTreeSet<&str> = BTreeSet::from([from]);
    loop {
        let before = again.len();
        for (i, s) in def.steps.iter().enumerate() {
            if def.effective_needs(i).iter().any(|&n| again.contains(def.steps[n].id.as_str())) {
                again.insert(s.id.as_str());
            }
        }
        if again.len() == before {
            break;
        }
    }
    // A completed fallback stood in for a step that failed; that step runs again in the fork
    // (only completed steps are reused), so its fallback is decided afresh after it.
    Ok(parent
        .steps
        .iter()
        .enumerate()
        .filter(|(i, s)| {
            // Instances are not reused on their own: their step's joined output is.
            s.status == StepStatus::Completed
                && !again.contains(s.id.as_str())
                && def.primary_of(*i).is_none()
                && def.steps[*i].instance.is_none()
        })
        .map(|(_, s)| s)
        .filter_map(|s| {
            s.output.clone().map(|output| ReusedStep {
                step: s.id.clone(),
                output,
                from_run: parent.run_id.to_string(),
            })
        })
        .collect())
}

/// The steps a fork from `from` runs again: `from` and every step downstream of it (a fallback
/// counts as downstream of the step it stands in for).
pub fn runs_again(parent: &RunState, from: &str) -> BTreeSet<String> {
    let Some(def) = parent.definition.as_ref() else { return BTreeSet::new() };
    let mut again: BTreeSet<String> = BTreeSet::from([from.to_string()]);
    loop {
        let before = again.len();
        for (i, s) in def.steps[..def.written()].iter().enumerate() {
            if def.effective_needs(i).iter().any(|&n| again.contains(def.steps[n].id.as_str())) {
                again.insert(s.id.to_string());
            }
        }
        if again.len() == before {
            return again;
        }
    }
}

/// Whether a run can move to `new` without rewriting what it already did: every step that has
/// made progress must exist in `new` with the same kind and the same `needs`, and the new steps
/// may only depend on steps that have not finished (so nothing already decided would have been
/// decided differently). Returns the first incompatibility.
pub fn migration_problem(run: &RunState, new: &crate::definition::Definition) -> Option<String> {
    let old = run.definition.as_ref()?;
    if old.written() < old.steps.len() {
        return Some(
            "the run added `for_each` or `loop` instances, and a run that did cannot move to another version yet; fork              it instead"
                .into(),
        );
    }
    if old.name != new.name {
        return Some(format!("the run is workflow '{}', not '{}'", old.name, new.name));
    }
    let primary = |def: &crate::definition::Definition, id: &str| {
        def.steps
            .iter()
            .position(|s| s.id.as_str() == id)
            .and_then(|i| def.primary_of(i))
            .map(|p| def.steps[p].id.clone())
    };
    for (s, spec) in run.steps.iter().zip(&old.steps) {
        let Some(n) = new.step(s.id.as_str()) else {
            return Some(format!(
                "step '{}' is not in version {} (removing steps is not supported)",
                s.id, new.version
            ));
        };
        if s.status == StepStatus::Pending {
            continue;
        }
        match Some(n) {
            None => {}
            Some(n) if n.kind != spec.kind => {
                return Some(format!("step '{}' changed kind ({} → {})", s.id, spec.kind, n.kind));
            }
            Some(n) if n.needs != spec.needs => return Some(format!("step '{}' changed its needs", s.id)),
            Some(_) if primary(old, s.id.as_str()) != primary(new, s.id.as_str()) => {
                return Some(format!(
                    "step '{}' already started; version {} changes which step it is the fallback of",
                    s.id, new.version
                ));
            }
            Some(n) if s.status == StepStatus::Failed && n.on_failure != spec.on_failure => {
                return Some(format!(
                    "step '{}' already failed under its old `on_failure`; version {} changes what that failure does",
                    s.id, new.version
                ));
            }
            Some(_) => {}
        }
    }
    for (i, n) in new.steps.iter().enumerate() {
        if old.step(n.id.as_str()).is_some() {
            continue;
        }
        // What the new step waits for, including the step it would be the fallback of.
        for need in new.effective_needs(i).into_iter().map(|k| &new.steps[k].id) {
            let settled = run.step_state(need.as_str()).is_some_and(|s| s.status.is_terminal());
            if settled {
                return Some(format!(
                    "new step '{}' needs '{need}', which already finished; it would have been decided earlier",
                    n.id
                ));
            }
        }
    }
    None
}
