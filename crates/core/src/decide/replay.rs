//! Replay: re-deriving a run from its journal and checking every decided event against what the
//! current core decides.

use super::{Command, decide, is_decided};
use crate::event::Envelope;
use crate::ids::RunId;
use crate::state::{Error, RunState};
use serde_json::Value;
use std::collections::VecDeque;
use std::sync::Arc;

/// How a journal disagrees with what the current core would decide.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ReplayError {
    #[error("the journal does not fold: {0}")]
    Fold(#[from] Error),
    #[error("divergence at event {seq}: the journal has {recorded}, the core decides {decided}")]
    Divergence { seq: u64, recorded: String, decided: String },
}

/// Re-derives a run from its journal with no effects, checking every decided event against what
/// `decide` produces now. Returns the final state.
pub fn replay(
    run_id: RunId,
    events: &[Envelope],
    payloads: impl IntoIterator<Item = (String, Arc<Value>)>,
) -> Result<RunState, ReplayError> {
    let mut state = RunState::new(run_id);
    state.payloads.extend(payloads);
    let mut expected: VecDeque<Envelope> = VecDeque::new();
    let show = |e: &Envelope| serde_json::to_string(&e.event).unwrap_or_else(|_| e.event.kind().to_string());
    for env in events {
        if let Some(exp) = expected.pop_front() {
            if exp != *env {
                return Err(ReplayError::Divergence { seq: env.seq, recorded: show(env), decided: show(&exp) });
            }
            continue;
        }
        if is_decided(&env.event) {
            return Err(ReplayError::Divergence { seq: env.seq, recorded: show(env), decided: "nothing".into() });
        }
        for c in decide(&mut state, env)? {
            if let Command::Record(e) = c {
                expected.push_back(e);
            }
        }
    }
    if let Some(exp) = expected.pop_front() {
        return Err(ReplayError::Divergence { seq: exp.seq, recorded: "end of journal".into(), decided: show(&exp) });
    }
    Ok(state)
}
