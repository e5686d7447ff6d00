//! Dynamic steps. A `for_each` step runs once per item of a list and a `loop` step repeats until a
//! condition over an iteration's output holds. Each adds *instances* to the run — `fetch[0]`,
//! `fetch[1]`, … or `review#1`, `review#2`, … — ordinary steps with their own attempts, retries,
//! timeouts and logs. The step itself holds no worker while they run: it waits, then completes
//! with their joined output (`StepJoined`). Adding instances is a decided event (`StepExpanded`,
//! `LoopIterated`), so replaying the journal grows the graph the same way.

use super::{Command, Decider};
use crate::definition::{Definition, OnFailure};
use crate::event::{ErrorClass, Event, Failure};
use crate::expr;
use crate::machine::StepStatus;
use crate::payload::Payload;
use crate::state::Error;
use crate::template;
use serde_json::{Value, json};
use std::sync::Arc;

impl Decider<'_> {
    /// Step `i`, ready and past its gate, adds its instances instead of running an attempt (or,
    /// run again after a retry in place, takes up the ones it has). Whether it is such a step.
    pub(super) fn begin_expansion(&mut self, i: usize) -> Result<bool, Error> {
        let Some(def) = self.definition() else { return Ok(false) };
        let step = &def.steps[i];
        let had = self.state.steps[i].expansion.clone();
        if let Some(each) = &step.for_each {
            if let Some(e) = had {
                let items = e.items.unwrap_or_else(|| Payload::of(&Value::Null).reference);
                let count = e.instances.len() as u32;
                self.record(Event::StepExpanded { step: step.id.clone(), items, count })?;
                return Ok(true);
            }
            let list = match template::render(&each.items, &self.context(i)) {
                Ok(Value::Array(list)) => list,
                Ok(other) => {
                    let msg =
                        format!("`for_each` must give a list, but it gave {} ({})", type_name(&other), preview(&other));
                    self.fail_step(i, Failure::new(ErrorClass::Permanent, msg))?;
                    return Ok(true);
                }
                Err(msg) => {
                    let msg = format!("`for_each` does not render: {msg}");
                    self.fail_step(i, Failure::new(ErrorClass::Permanent, msg))?;
                    return Ok(true);
                }
            };
            if list.len() > each.max_items as usize {
                let msg = format!(
                    "`for_each` gave {} items, more than the step's `max_items` of {}; raise `max_items` or split the \
                     list",
                    list.len(),
                    each.max_items
                );
                self.fail_step(i, Failure::new(ErrorClass::Permanent, msg))?;
                return Ok(true);
            }
            let count = list.len() as u32;
            let value = Value::Array(list);
            let payload = Payload::of(&value);
            self.state.add_payload(&payload, value);
            let items = payload.reference.clone();
            self.out.push(Command::StorePayload(payload));
            self.record(Event::StepExpanded { step: step.id.clone(), items, count })?;
            return Ok(true);
        }
        if step.repeat.is_some() {
            let iteration = had.map_or(1, |e| (e.instances.len() as u32).max(1));
            self.record(Event::LoopIterated { step: step.id.clone(), iteration })?;
            return Ok(true);
        }
        Ok(false)
    }

    /// Moves every expanded step along: starts the instances it may run now, begins a loop's
    /// next iteration, and joins a step whose instances are done. Whether anything moved.
    pub(super) fn advance_expansions(&mut self) -> Result<bool, Error> {
        let Some(def) = self.definition() else { return Ok(false) };
        let mut progressed = false;
        for i in 0..def.written() {
            if self.state.status.is_terminal() {
                break;
            }
            let s = &self.state.steps[i];
            if s.status != StepStatus::Waiting || s.expansion.is_none() {
                continue;
            }
            progressed |= if def.steps[i].for_each.is_some() { self.advance_items(i)? } else { self.advance_loop(i)? };
        }
        Ok(progressed)
    }

    fn advance_items(&mut self, i: usize) -> Result<bool, Error> {
        let Some(def) = self.definition() else { return Ok(false) };
        let Some(each) = &def.steps[i].for_each else { return Ok(false) };
        let limit = each.max_parallel.map_or(usize::MAX, |m| m.max(1) as usize);
        // The step's counts say how many run and where the first pending item is, so starting the
        // next items costs the same however many there are.
        let mut progressed = false;
        loop {
            let s = &self.state.steps[i];
            let Some(e) = s.expansion.as_ref().filter(|_| s.status == StepStatus::Waiting) else { return Ok(true) };
            if e.active() >= limit || e.next >= e.instances.len() || self.state.status.is_terminal() {
                break;
            }
            let k = e.instances[e.next];
            progressed = true;
            self.record(Event::StepReady { step: self.state.steps[k].id.clone() })?;
            self.start_attempt(k)?;
        }
        let e = self.state.steps[i].expansion.as_ref();
        if e.is_some_and(|e| e.settled == e.instances.len()) {
            let instances = e.map(|e| e.instances.clone()).unwrap_or_default();
            let outputs: Vec<Value> =
                instances.iter().map(|&k| self.state.output_of(k).map_or(Value::Null, |v| (**v).clone())).collect();
            let failed = instances.iter().filter(|&&k| self.state.steps[k].status != StepStatus::Completed).count();
            let mut note = format!("{} of {} item(s) completed", instances.len() - failed, instances.len());
            if failed > 0 {
                note.push_str(&format!("; {failed} failed, recorded as null (on_failure: continue)"));
            }
            self.join(i, Value::Array(outputs), note)?;
            progressed = true;
        }
        Ok(progressed)
    }

    fn advance_loop(&mut self, i: usize) -> Result<bool, Error> {
        let Some(def) = self.definition() else { return Ok(false) };
        let Some(repeat) = &def.steps[i].repeat else { return Ok(false) };
        let Some(&last) = self.state.steps[i].expansion.as_ref().and_then(|e| e.instances.last()) else {
            return Ok(false);
        };
        let n = self.state.steps[i].expansion.as_ref().map_or(0, |e| e.instances.len()) as u32;
        match self.state.steps[last].status {
            StepStatus::Pending => {
                self.record(Event::StepReady { step: self.state.steps[last].id.clone() })?;
                self.start_attempt(last)?;
                Ok(true)
            }
            StepStatus::Completed => {
                let output = self.state.output_of(last).map_or(Value::Null, |v| (**v).clone());
                let ctx = self.context(i);
                let iteration = json!(n);
                let vars = [
                    ("output", &output),
                    ("iteration", &iteration),
                    ("inputs", &ctx["inputs"]),
                    ("steps", &ctx["steps"]),
                    ("run", &ctx["run"]),
                    ("signals", &ctx["signals"]),
                ];
                let done = match expr::eval_bool(&repeat.until, &vars) {
                    Ok(done) => done,
                    Err(msg) => {
                        let msg = format!("loop `until` after iteration {n}: {msg}");
                        self.fail_step(i, Failure::new(ErrorClass::Permanent, msg))?;
                        return Ok(true);
                    }
                };
                if done {
                    self.join(i, output, format!("`{}` held after iteration {n}", repeat.until))?;
                } else if n >= repeat.max_iterations {
                    let note = format!("stopped at max_iterations ({n}); `{}` never held", repeat.until);
                    self.join(i, output, note)?;
                } else {
                    let step = def.steps[i].id.clone();
                    self.record(Event::LoopIterated { step, iteration: n + 1 })?;
                    let next = self.state.steps.len() - 1;
                    self.record(Event::StepReady { step: self.state.steps[next].id.clone() })?;
                    self.start_attempt(next)?;
                }
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    fn join(&mut self, i: usize, output: Value, note: String) -> Result<(), Error> {
        let payload = Payload::of(&output);
        self.state.add_payload(&payload, output);
        let output = payload.reference.clone();
        self.out.push(Command::StorePayload(payload));
        let step = self.state.steps[i].id.clone();
        self.record(Event::StepJoined { step, output, note })
    }

    /// Instance `k` of step `p` failed for good. A `for_each` step with `on_failure: continue`
    /// records it and goes on with the other items; otherwise the step fails (what has not started
    /// is skipped) and its own `on_failure` applies.
    pub(super) fn instance_failed(&mut self, p: usize, k: usize, failure: &Failure) -> Result<(), Error> {
        let Some(def) = self.definition() else { return Ok(()) };
        if self.state.steps[p].status != StepStatus::Waiting {
            return Ok(());
        }
        if def.steps[p].for_each.is_some() && def.steps[p].on_failure == OnFailure::Continue {
            return Ok(());
        }
        let parent = def.steps[p].id.clone();
        let instances = self.state.steps[p].expansion.as_ref().map(|e| e.instances.clone()).unwrap_or_default();
        for j in instances {
            if self.state.steps[j].status == StepStatus::Pending {
                let reason = format!("step '{parent}' failed: its instance '{}' failed", self.state.steps[k].id);
                self.record(Event::StepSkipped { step: self.state.steps[j].id.clone(), reason })?;
            }
        }
        let what = if def.steps[p].for_each.is_some() { "item" } else { "iteration" };
        let index = def.steps[k].instance.as_ref().map_or(0, |i| i.index);
        let failure = Failure {
            message: format!("{what} {index} ('{}') failed: {}", self.state.steps[k].id, failure.message),
            ..failure.clone()
        };
        self.fail_step(p, failure)
    }

    /// What an instance's templates see on top of its step's: `item` and `index` for a
    /// `for_each` item; `iteration` and `previous` (the last iteration's output, null at first)
    /// for a `loop` iteration.
    pub(super) fn instance_context(&self, def: &Arc<Definition>, k: usize, mut ctx: Value) -> Value {
        let Some(instance) = &def.steps[k].instance else { return ctx };
        let Some(p) = self.state.step_index(instance.of.as_str()) else { return ctx };
        let index = instance.index;
        if def.steps[p].for_each.is_some() {
            let items = self.state.steps[p].expansion.as_ref().and_then(|e| e.items.as_ref());
            let item = items.and_then(|r| self.state.payload(r)).and_then(|v| v.get(index as usize).cloned());
            ctx["item"] = item.unwrap_or(Value::Null);
            ctx["index"] = json!(index);
        } else {
            let instances = self.state.steps[p].expansion.as_ref().map(|e| e.instances.as_slice()).unwrap_or(&[]);
            let previous = (index as usize)
                .checked_sub(2)
                .and_then(|at| instances.get(at))
                .and_then(|&j| self.state.output_of(j))
                .map_or(Value::Null, |v| (**v).clone());
            ctx["iteration"] = json!(index);
            ctx["previous"] = previous;
        }
        ctx
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

fn preview(v: &Value) -> String {
    let text = v.to_string();
    match text.char_indices().nth(80) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text,
    }
}
