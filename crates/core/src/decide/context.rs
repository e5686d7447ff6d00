//! What a step's templates and `when` condition see: its inputs, the steps it needs (through
//! their fallbacks), signals and the run.

use super::Decider;
use crate::machine::StepStatus;
use serde_json::{Map, Value, json};
use std::collections::HashSet;

/// The ids of the steps a `with` block's templates read (`steps.ID…`), or `None` when one reads
/// `steps` as a whole or by a computed key.
fn read_steps(with: &Value) -> Option<HashSet<String>> {
    let mut ids = HashSet::new();
    let mut whole = false;
    crate::template::for_each_template(with, "with", &mut |_, text| {
        for r in crate::template::references(text) {
            match (r.path.first().map(String::as_str), r.path.get(1)) {
                (Some("steps"), Some(id)) => {
                    ids.insert(id.clone());
                }
                (Some("steps"), None) => whole = true,
                _ => {}
            }
        }
    });
    (!whole).then_some(ids)
}

impl Decider<'_> {
    /// Variables visible to step `i`'s condition and templates. A step sees only the steps it
    /// needs, directly or transitively: they are all settled before it is decided, so rendering
    /// again after a restart gives the same input as the first time.
    pub(super) fn context(&self, i: usize) -> Value {
        self.context_seeing(i, None)
    }

    /// As [`Self::context`], with only the steps in `only` (when given) under `steps`. An instance
    /// gets only what its `with` reads: a step's context may hold a long list, and copying it for
    /// each of thousands of items would cost as much as the list times the items.
    fn context_seeing(&self, i: usize, only: Option<&HashSet<String>>) -> Value {
        let Some(def) = self.definition() else { return Value::Null };
        if let Some(p) = self.state.parent_of(i) {
            // What its undo reads counts too: it renders against the same context.
            let undo = def.steps[i].compensate.as_ref().map_or(&Value::Null, |c| &c.with);
            let read = read_steps(&def.steps[i].with).zip(read_steps(undo)).map(|(a, b)| &a | &b);
            return self.instance_context(&def, i, self.context_seeing(p, read.as_ref()));
        }
        // Only steps as written are ever needed: instances are seen through their step.
        let mut visible = vec![false; def.written()];
        let mut stack: Vec<usize> = vec![i];
        while let Some(j) = stack.pop() {
            let mut deps: Vec<usize> =
                def.steps[j].needs.iter().filter_map(|n| self.state.step_index(n.as_str())).collect();
            // A fallback sees the step it stands in for (and why it failed).
            deps.extend(def.primary_of(j));
            for k in deps {
                // A failed need whose fallback has settled is seen through its fallback, which
                // (with what it needs) is then settled too.
                let mut chain = vec![k];
                if let (r, st) = self.state.outcome(k)
                    && r != k
                    && st.is_terminal()
                {
                    let mut at = k;
                    while let Some(f) = def.fallback_of(at).filter(|_| at != r) {
                        chain.push(f);
                        at = f;
                    }
                }
                for c in chain {
                    if !visible[c] {
                        visible[c] = true;
                        stack.push(c);
                    }
                }
            }
        }
        let mut steps = Map::new();
        let wanted = |id: &str| only.is_none_or(|o| o.contains(id));
        for (k, s) in self
            .state
            .steps
            .iter()
            .enumerate()
            .take(visible.len())
            .filter(|(k, s)| visible[*k] && wanted(s.id.as_str()))
        {
            let (r, st) = self.state.outcome(k);
            let (r, st) = if r != k && st.is_terminal() { (r, st) } else { (k, s.status) };
            let output = self.state.output_of(r).map(|v| (**v).clone()).unwrap_or(Value::Null);
            let mut entry = json!({"output": output, "status": st.as_str()});
            // `fallback` names the step that stood in (null while none did), for every step
            // that declares one, so a template can use it either way.
            if def.fallback_of(k).is_some() {
                entry["fallback"] = if r != k { json!(self.state.steps[r].id.as_str()) } else { Value::Null };
            }
            if def.steps[k].repeat.is_some()
                && let Some(e) = &s.expansion
            {
                let outputs: Vec<Value> = e
                    .instances
                    .iter()
                    .map(|&j| self.state.output_of(j).map_or(Value::Null, |v| (**v).clone()))
                    .collect();
                entry["iterations"] = Value::Array(outputs);
            }
            if s.status == StepStatus::Failed
                && let Some(f) = &s.last_failure
            {
                entry["error"] = json!({"class": f.class.as_str(), "message": f.message});
            }
            steps.insert(s.id.to_string(), entry);
        }
        let signals: Map<String, Value> = self
            .state
            .signals
            .iter()
            .map(|(name, r)| (name.clone(), self.state.payload(r).map(|v| (**v).clone()).unwrap_or(Value::Null)))
            .collect();
        json!({
            "inputs": self.state.inputs,
            "steps": steps,
            "signals": signals,
            "run": {"id": self.state.run_id.as_str(), "workflow": self.state.workflow},
        })
    }
}
