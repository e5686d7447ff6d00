//! Money and tokens as the store keeps them: each model call's cost is recorded with its result
//! (`calls.cost_usd`, …), and a budgeted call's worst case is reserved on its row before it is
//! sent (`outcome = 'reserved'`). Settling is recording the call's result on the same row, so a
//! call retried after a crash replaces its own reservation instead of adding one.

use serde::Serialize;
use std::collections::BTreeMap;

/// Tokens and money one call used, recorded with its result.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct CallCost {
    /// The model alias that answered.
    pub model: String,
    pub tokens_in: u64,
    pub tokens_out: u64,
    pub cost_usd: f64,
}

/// The most a call may cost, held against its budgets until the call is settled.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct Reservation {
    pub usd: f64,
    pub tokens: u64,
}

/// What was spent: settled calls at their cost, reserved ones at their worst case.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct Spend {
    pub calls: u64,
    pub tokens_in: u64,
    pub tokens_out: u64,
    pub cost_usd: f64,
}

impl Spend {
    pub fn tokens(&self) -> u64 {
        self.tokens_in + self.tokens_out
    }

    /// What the settled model calls among `calls` spent, by step, and in all.
    pub fn of_calls(calls: &[crate::CallRow]) -> (BTreeMap<String, Spend>, Spend) {
        let (mut by_step, mut total) = (BTreeMap::<String, Spend>::new(), Spend::default());
        for call in calls.iter().filter(|c| c.outcome != "reserved") {
            let Some(cost) = &call.cost else { continue };
            for s in [by_step.entry(call.step_id.clone()).or_default(), &mut total] {
                s.calls += 1;
                s.tokens_in += cost.tokens_in;
                s.tokens_out += cost.tokens_out;
                s.cost_usd += cost.cost_usd;
            }
        }
        (by_step, total)
    }
}

/// One budget a reservation must fit: the whole run's (`step: None`) or one step's.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Limit {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_cost_usd: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u64>,
}

/// A reservation refused: which limit, what its scope had used (settled and reserved), and what
/// the call asked for.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Overspend {
    pub limit: Limit,
    pub spent_usd: f64,
    pub spent_tokens: u64,
    pub asked: Reservation,
}

impl Overspend {
    /// Whether `limit` refuses `asked` on top of what its scope holds.
    pub fn check(limit: &Limit, spent_usd: f64, spent_tokens: u64, asked: Reservation) -> Option<Overspend> {
        let over_usd = limit.max_cost_usd.is_some_and(|max| spent_usd + asked.usd > max + 1e-12);
        let over_tokens = limit.max_tokens.is_some_and(|max| spent_tokens + asked.tokens > max);
        (over_usd || over_tokens).then(|| Overspend { limit: limit.clone(), spent_usd, spent_tokens, asked })
    }
}

/// How `cairn cost` groups what was spent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CostBy {
    Workflow,
    Model,
    /// The UTC day the call was made.
    Day,
}

/// One group of `cairn cost`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CostLine {
    /// The workflow, model alias or `YYYY-MM-DD`.
    pub key: String,
    pub runs: u64,
    #[serde(flatten)]
    pub spend: Spend,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_limit_refuses_what_would_cross_it_and_takes_what_fits_exactly() {
        let limit = Limit { step: None, max_cost_usd: Some(1.0), max_tokens: Some(100) };
        let ask = |usd, tokens| Reservation { usd, tokens };
        assert!(Overspend::check(&limit, 0.5, 50, ask(0.5, 50)).is_none());
        assert!(Overspend::check(&limit, 0.5, 50, ask(0.51, 0)).is_some());
        assert!(Overspend::check(&limit, 0.0, 99, ask(0.0, 2)).is_some());
        let unlimited = Limit { step: None, max_cost_usd: None, max_tokens: None };
        assert!(Overspend::check(&unlimited, 1e9, u64::MAX / 2, ask(1e9, 1)).is_none());
    }
}
