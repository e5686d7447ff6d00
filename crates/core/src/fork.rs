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
    if def.step(from).is_none() {
        let names: Vec<&str> = def.steps.iter().map(|s| s.id.as_str()).collect();
        return Err(format!("run {} has no step '{from}'; its steps are {}", parent.run_id, names.join(", ")));
    }
    // `from` and everything downstream of it run again.
    let mut again: BTreeSet<&str> = BTreeSet::from([from]);
    loop {
        let before = again.len();
        for s in &def.steps {
            if s.needs.iter().any(|n| again.contains(n.as_str())) {
                again.insert(s.id.as_str());
            }
        }
        if again.len() == before {
            break;
        }
    }
    Ok(parent
        .steps
        .iter()
        .filter(|s| s.status == StepStatus::Completed && !again.contains(s.id.as_str()))
        .filter_map(|s| {
            s.output.clone().map(|output| ReusedStep {
                step: s.id.clone(),
                output,
                from_run: parent.run_id.to_string(),
            })
        })
        .collect())
}
