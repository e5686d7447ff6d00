//! Which budgets a step's model calls must fit: the run's and the step's own (`budget:` in the
//! definition), each with the limits people raised since (`BudgetRaise`, journaled with the
//! decision that raised it). The engine reserves each call against these before sending it.

use crate::definition::{Budget, OnExceed};
use crate::event::{ErrorClass, Failure};
use crate::state::RunState;

/// The failure code of a call refused by the run's budget.
pub const RUN_BUDGET: &str = "run_budget";
/// The failure code of a call refused by its step's budget.
pub const STEP_BUDGET: &str = "step_budget";

/// One budget in force for a step: the run's (`step: None`) or the step's.
#[derive(Clone, Debug, PartialEq)]
pub struct InForce {
    pub step: Option<String>,
    pub max_cost_usd: Option<f64>,
    pub max_tokens: Option<u64>,
    pub on_exceed: OnExceed,
}

impl RunState {
    /// The budgets step `i`'s calls must fit, the run's first.
    pub fn budgets(&self, i: usize) -> Vec<InForce> {
        let Some(def) = &self.definition else { return Vec::new() };
        let Some(step) = def.steps.get(i) else { return Vec::new() };
        let mut out = Vec::new();
        if let Some(b) = &def.budget {
            out.push(self.raised(None, b));
        }
        if let Some(b) = &step.budget {
            out.push(self.raised(Some(step.id.as_str()), b));
        }
        out
    }

    fn raised(&self, step: Option<&str>, budget: &Budget) -> InForce {
        let mut b = InForce {
            step: step.map(str::to_string),
            max_cost_usd: budget.max_cost_usd,
            max_tokens: budget.max_tokens,
            on_exceed: budget.on_exceed,
        };
        for r in self.budget_raises.iter().filter(|r| r.step.as_ref().map(|s| s.as_str()) == step) {
            b.max_cost_usd = r.max_cost_usd.or(b.max_cost_usd);
            b.max_tokens = r.max_tokens.or(b.max_tokens);
        }
        b
    }

    /// The budget a `budget_exceeded` failure of step `i` crossed, by its code.
    pub fn crossed(&self, i: usize, failure: &Failure) -> Option<InForce> {
        if failure.class != ErrorClass::BudgetExceeded {
            return None;
        }
        let run = failure.code.as_deref() == Some(RUN_BUDGET);
        self.budgets(i).into_iter().find(|b| b.step.is_none() == run)
    }
}
