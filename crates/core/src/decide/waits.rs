//! Durable waits (`wait` kind): a step that waits until a time, or for a signal (with an optional
//! timeout), holding no worker and no attempt. Its end is a timer (`TimerPurpose::Wait`) or a
//! `SignalReceived`; both are journaled, so a wait survives restarts and replays to the same end.
//!
//! Signals are taken one per wait, oldest first: a wait for `NAME` ends with the first `NAME`
//! signal of the run that no earlier wait took — one sent before the wait began counts too.

use super::{Command, Decider};
use crate::duration::{parse_ms, parse_rfc3339};
use crate::event::{ErrorClass, Event, Failure};
use crate::ids::StepId;
use crate::machine::{RunStatus, StepStatus};
use crate::payload::Payload;
use crate::state::Error;
use crate::template;
use crate::timer::TimerPurpose;
use serde_json::{Value, json};

impl Decider<'_> {
    /// Starts step `i`'s wait from its rendered `with`.
    pub(super) fn begin_wait(&mut self, i: usize) -> Result<(), Error> {
        let Some(def) = self.definition() else { return Ok(()) };
        // A paused run starts nothing: the step stays ready and `RunUnpaused` begins its wait.
        if self.state.status == RunStatus::Paused {
            return Ok(());
        }
        let step = def.steps[i].id.clone();
        let with = match template::render_input(&def.steps[i].with, &self.context(i)) {
            Ok((with, _)) => with,
            Err(msg) => {
                return self.fail_step(i, Failure::new(ErrorClass::Permanent, format!("input does not render: {msg}")));
            }
        };
        let (until_ms, signal) = match wait_of(&with, self.at) {
            Ok(w) => w,
            Err(msg) => return self.fail_step(i, Failure::new(ErrorClass::Permanent, msg)),
        };
        self.record(Event::WaitStarted { step: step.clone(), until_ms, signal: signal.clone() })?;
        if let Some(name) = &signal
            && self.take_signal(i, name)?
        {
            return Ok(());
        }
        if let Some(at_ms) = until_ms {
            self.arm(&step, TimerPurpose::Wait, at_ms);
        }
        Ok(())
    }

    /// A wait's timer fired: a timed wait ends; a signal wait times out and fails (class
    /// `timeout`, so its `on_failure` applies).
    pub(super) fn on_wait_elapsed(&mut self, step: &StepId) -> Result<(), Error> {
        let Some(i) = self.state.step_index(step.as_str()) else { return Ok(()) };
        let Some(wait) = self.state.steps[i].wait.clone() else { return Ok(()) };
        match wait.signal {
            Some(name) => {
                let waited = crate::duration::format_ms((self.at - wait.started_at_ms).max(0) as u64);
                let failure = Failure::new(ErrorClass::Timeout, format!("no signal '{name}' arrived within {waited}"));
                self.fail_step(i, failure)
            }
            None => {
                let waited_ms = (self.at - wait.started_at_ms).max(0);
                self.end_wait(i, json!({ "waited_ms": waited_ms }))
            }
        }
    }

    /// A signal arrived: the first step waiting for that name (in definition order) takes it.
    pub(super) fn on_signal(&mut self, name: &str) -> Result<(), Error> {
        // While paused the signal is kept; `RunUnpaused` hands it to the wait.
        if self.state.status == RunStatus::Paused {
            return Ok(());
        }
        let waiting = self.state.steps.iter().position(|s| {
            s.status == StepStatus::Waiting && s.wait.as_ref().is_some_and(|w| w.signal.as_deref() == Some(name))
        });
        if let Some(i) = waiting {
            self.take_signal(i, name)?;
        }
        Ok(())
    }

    /// After an unpause or a restart: signal waits take the signals that arrived meanwhile.
    pub(super) fn take_waiting_signals(&mut self) -> Result<(), Error> {
        let waits: Vec<(usize, String)> = (self.state.steps.iter().enumerate())
            .filter(|(_, s)| s.status == StepStatus::Waiting)
            .filter_map(|(i, s)| Some((i, s.wait.as_ref()?.signal.clone()?)))
            .collect();
        for (i, name) in waits {
            self.take_signal(i, &name)?;
        }
        Ok(())
    }

    /// Ends step `i`'s wait with the oldest `name` signal no wait took yet, if there is one.
    fn take_signal(&mut self, i: usize, name: &str) -> Result<bool, Error> {
        let taken = self.state.signals_taken.get(name).copied().unwrap_or(0);
        let Some(payload) = self.state.signal_log.get(name).and_then(|log| log.get(taken)).cloned() else {
            return Ok(false);
        };
        let value = self.state.payload(&payload).map(|v| (**v).clone()).unwrap_or(Value::Null);
        self.end_wait(i, value)?;
        Ok(true)
    }

    fn end_wait(&mut self, i: usize, output: Value) -> Result<(), Error> {
        let payload = Payload::of(&output);
        self.state.add_payload(&payload, output);
        let reference = payload.reference.clone();
        self.out.push(Command::StorePayload(payload));
        let step = self.state.steps[i].id.clone();
        self.record(Event::WaitEnded { step, output: reference })?;
        // The run moves again (it may wait again at once, on the next step).
        if self.state.status == RunStatus::Waiting {
            self.record(Event::RunResumed)?;
        }
        Ok(())
    }
}

/// When a wait ends and for which signal, from its rendered `with`: exactly one of `duration`,
/// `until` (RFC 3339) or `signal` (with an optional `timeout`).
pub(crate) fn wait_of(with: &Value, now_ms: i64) -> Result<(Option<i64>, Option<String>), String> {
    let span = |field: &str, v: &Value| -> Result<i64, String> {
        let ms = match v {
            Value::String(s) => parse_ms(s).map_err(|e| format!("with.{field}: {e}"))?,
            Value::Number(n) => n.as_u64().ok_or_else(|| format!("with.{field} must be a duration, e.g. 3d"))?,
            other => return Err(format!("with.{field} must be a duration such as 3d, not {other}")),
        };
        Ok(now_ms.saturating_add(i64::try_from(ms).unwrap_or(i64::MAX / 2)))
    };
    let get = |k: &str| with.get(k).filter(|v| !v.is_null());
    let given: Vec<&str> = ["duration", "until", "signal"].into_iter().filter(|k| get(k).is_some()).collect();
    if given.len() != 1 {
        return Err(format!(
            "a wait takes exactly one of `duration` (e.g. 3d), `until` (an RFC 3339 time) or `signal` (a name, with an \
             optional `timeout`); got {}",
            if given.is_empty() { "none".to_string() } else { given.join(" and ") }
        ));
    }
    if get("timeout").is_some() && given[0] != "signal" {
        return Err("with.timeout applies to a `signal` wait only".into());
    }
    match given[0] {
        "duration" => Ok((Some(span("duration", &with["duration"])?), None)),
        "until" => match &with["until"] {
            Value::String(s) => Ok((Some(parse_rfc3339(s).map_err(|e| format!("with.until: {e}"))?), None)),
            other => Err(format!("with.until must be an RFC 3339 time such as 2027-01-01T00:00:00Z, not {other}")),
        },
        _ => {
            let Value::String(name) = &with["signal"] else {
                return Err("with.signal must be the signal's name".into());
            };
            let until = get("timeout").map(|t| span("timeout", t)).transpose()?;
            Ok((until, Some(name.clone())))
        }
    }
}
