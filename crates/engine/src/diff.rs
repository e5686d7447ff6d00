//! Where two runs diverged (`cairn diff A B`, `GET /v1/runs/{a}/diff/{b}`): a run and its fork,
//! or two runs of one workflow. Steps are compared by what they settled on — state, output (by
//! hash), error class — in the order the first run settled them; the first step that differs is
//! the divergence, with the journal position of the event that settled it in each run. A step a
//! fork reused has its parent's output, so reused steps compare equal. Model spend (tokens, cost)
//! is summed from each run's recorded calls.

use cairn_core::RunId;
use cairn_store::{EffectLog, Journal, Spend, StepRow};
use serde::Serialize;
use std::collections::BTreeMap;

/// One step in both runs.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct StepDiff {
    pub step: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub a: Option<StepSide>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub b: Option<StepSide>,
    /// The state, output or error class differ (or the step is in one run only).
    pub changed: bool,
}

/// A step as one run settled it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct StepSide {
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_hash: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_class: Option<String>,
    pub attempts: u32,
    /// The journal position of the last event about this step.
    pub seq: u64,
}

/// What each run's model calls spent.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SpendDiff {
    pub a: Spend,
    pub b: Spend,
    /// b − a.
    pub tokens: i64,
    pub cost_usd: f64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RunDiff {
    pub a: String,
    pub b: String,
    pub status: (String, String),
    /// The first step that differs, in the order run `a` settled its steps; `None` when the
    /// steps agree.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_divergence: Option<StepDiff>,
    pub steps: Vec<StepDiff>,
    pub spend: SpendDiff,
}

fn side(row: &StepRow, seq: u64) -> StepSide {
    StepSide {
        status: row.status.clone(),
        output_hash: row.output_hash.clone(),
        error_class: row.error_class.clone(),
        attempts: row.attempts,
        seq,
    }
}

/// The last journal position of each step's events.
async fn positions<S: Journal + ?Sized>(store: &S, id: &RunId) -> Result<BTreeMap<String, u64>, cairn_store::Error> {
    let mut last = BTreeMap::new();
    for e in store.events(id).await? {
        if let Some(step) = e.event.step() {
            last.insert(step.to_string(), e.seq);
        }
    }
    Ok(last)
}

/// Compares runs `a` and `b`.
pub async fn diff<S: Journal + EffectLog + ?Sized>(store: &S, a: &RunId, b: &RunId) -> Result<RunDiff, crate::Error> {
    let (run_a, run_b) = (store.get_run(a).await?, store.get_run(b).await?);
    let (steps_a, steps_b) = (store.steps(a).await?, store.steps(b).await?);
    let (seq_a, seq_b) = (positions(store, a).await?, positions(store, b).await?);
    // In the order run `a` settled its steps (unsettled ones after, as declared), then the steps
    // only `b` has.
    let mut order: Vec<&StepRow> = steps_a.iter().collect();
    order.sort_by_key(|s| (s.finished_at_ms.is_none(), s.finished_at_ms, s.position));
    let mut steps = Vec::new();
    for row in order {
        let other = steps_b.iter().find(|s| s.step_id == row.step_id);
        let a_side = side(row, seq_a.get(&row.step_id).copied().unwrap_or(0));
        let b_side = other.map(|o| side(o, seq_b.get(&o.step_id).copied().unwrap_or(0)));
        let changed = b_side.as_ref().is_none_or(|b| {
            (&b.status, &b.output_hash, &b.error_class) != (&a_side.status, &a_side.output_hash, &a_side.error_class)
        });
        steps.push(StepDiff { step: row.step_id.clone(), a: Some(a_side), b: b_side, changed });
    }
    for row in steps_b.iter().filter(|s| !steps_a.iter().any(|a| a.step_id == s.step_id)) {
        let b_side = side(row, seq_b.get(&row.step_id).copied().unwrap_or(0));
        steps.push(StepDiff { step: row.step_id.clone(), a: None, b: Some(b_side), changed: true });
    }
    let (_, spend_a) = Spend::of_calls(&store.calls(a, None).await?);
    let (_, spend_b) = Spend::of_calls(&store.calls(b, None).await?);
    let spend = SpendDiff {
        tokens: spend_b.tokens() as i64 - spend_a.tokens() as i64,
        cost_usd: spend_b.cost_usd - spend_a.cost_usd,
        a: spend_a,
        b: spend_b,
    };
    Ok(RunDiff {
        a: a.to_string(),
        b: b.to_string(),
        status: (run_a.status, run_b.status),
        first_divergence: steps.iter().find(|s| s.changed).cloned(),
        steps,
        spend,
    })
}
