//! A run's links to other runs, read from its journal: the run that started it (if it is a
//! child of a `subworkflow` step) and the child runs its own `subworkflow` steps started.

use crate::event::{Envelope, Event, RunSource};
use serde::Serialize;

/// A run's links to other runs, read from its journal: the run that started it (if it is a
/// child) and the child runs its `subworkflow` steps started, in order.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RunLinks {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent: Option<RunLink>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub children: Vec<RunLink>,
}

/// Another run and the step (with its attempt) that links to it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunLink {
    pub run_id: String,
    /// The parent's step that started the child.
    pub step: String,
    pub attempt: u32,
}

impl RunLinks {
    pub fn of(events: &[Envelope]) -> RunLinks {
        let mut links = RunLinks::default();
        for e in events {
            match &e.event {
                Event::RunCreated { source: RunSource::Child { parent, step, attempt, .. }, .. } => {
                    links.parent = Some(RunLink { run_id: parent.clone(), step: step.clone(), attempt: *attempt });
                }
                Event::ChildStarted { step, attempt, child, .. } => {
                    links.children.push(RunLink { run_id: child.clone(), step: step.to_string(), attempt: *attempt });
                }
                _ => {}
            }
        }
        links
    }
}
