//! A run's story told from its journal: each step's attempts with durations and error classes,
//! the waits between them, skips, and the first failure with its cause chain. Built from events
//! only (no store, no clock), so it reads the same from a live database or an exported file.

use crate::event::{Envelope, Event, Failure};
use serde::Serialize;
use std::collections::BTreeMap;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Attempt {
    pub number: u32,
    pub started_at_ms: i64,
    pub duration_ms: Option<u64>,
    /// `ok`, `failed`, or `interrupted`/`running` when no result was recorded.
    pub outcome: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure: Option<Failure>,
    /// The backoff waited after this attempt before the next one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub then_waited_ms: Option<u64>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct StepStory {
    pub step: String,
    pub status: String,
    pub attempts: Vec<Attempt>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure: Option<Failure>,
}

impl Attempt {
    /// An attempt that began at `at` and is still running.
    fn began(number: u32, at: i64) -> Attempt {
        Attempt {
            number,
            started_at_ms: at,
            duration_ms: None,
            outcome: "running".into(),
            failure: None,
            then_waited_ms: None,
        }
    }
}

/// The first thing that went wrong and what it led to.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct FirstFailure {
    pub step: String,
    pub attempt: u32,
    pub failure: Failure,
    /// What followed from it, in journal order (retries, the step failing, the run failing …).
    pub led_to: Vec<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Timeline {
    pub workflow: String,
    pub status: String,
    pub events: usize,
    pub started_at_ms: i64,
    pub finished_at_ms: Option<i64>,
    pub steps: Vec<StepStory>,
    /// Waiting, pausing, signals and other run-level moments, as `(at_ms, what)`.
    pub moments: Vec<(i64, String)>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_failure: Option<FirstFailure>,
}

impl Timeline {
    pub fn from_events(events: &[Envelope]) -> Timeline {
        let mut t = Timeline {
            workflow: String::new(),
            status: "PENDING".into(),
            events: events.len(),
            started_at_ms: events.first().map(|e| e.at_ms).unwrap_or(0),
            finished_at_ms: None,
            steps: Vec::new(),
            moments: Vec::new(),
            first_failure: None,
        };
        let mut index: BTreeMap<String, usize> = BTreeMap::new();
        let mut step = |t: &mut Timeline, id: &str| -> usize {
            *index.entry(id.to_string()).or_insert_with(|| {
                t.steps.push(StepStory {
                    step: id.to_string(),
                    status: "PENDING".into(),
                    attempts: Vec::new(),
                    skipped: None,
                    failure: None,
                });
                t.steps.len() - 1
            })
        };
        // Steps whose open request is about a call inside an attempt (a rejection does not fail
        // them: their next attempt gets the answer).
        let mut asking_for_call = std::collections::BTreeSet::new();
        for env in events {
            let at = env.at_ms;
            match &env.event {
                Event::RunCreated { workflow, .. } => t.workflow = workflow.clone(),
                Event::PlanRecorded { plan, .. } => {
                    t.status = "EXECUTING".into();
                    if let Some(p) = plan {
                        let left_out = p.left_out_text().map(|t| format!("; {t}")).unwrap_or_default();
                        let planned = format!("planned \"{}\" as {}{left_out}", p.goal, p.matched.join(" -> "));
                        t.moments.push((at, planned));
                    }
                }
                Event::StepReady { step: s } => {
                    let i = step(&mut t, s.as_str());
                    t.steps[i].status = "READY".into();
                }
                Event::WaitStarted { step: s, until_ms, signal } => {
                    let i = step(&mut t, s.as_str());
                    t.steps[i].status = "WAITING".into();
                    let what = match (signal, until_ms) {
                        (Some(name), Some(_)) => format!("for signal '{name}' (with a timeout)"),
                        (Some(name), None) => format!("for signal '{name}'"),
                        (None, _) => "until its time".to_string(),
                    };
                    t.moments.push((at, format!("step {s} waits {what}")));
                }
                Event::WaitEnded { step: s, .. } => {
                    let i = step(&mut t, s.as_str());
                    t.steps[i].status = "COMPLETED".into();
                    t.moments.push((at, format!("step {s}'s wait ended")));
                }
                Event::WaitElapsed { .. } => {}
                Event::StepExpanded { step: s, count, .. } => {
                    let i = step(&mut t, s.as_str());
                    t.steps[i].status = "WAITING".into();
                    t.moments.push((at, format!("step {s} runs for each of {count} item(s): {s}[0]…")));
                }
                Event::LoopIterated { step: s, iteration } => {
                    let i = step(&mut t, s.as_str());
                    t.steps[i].status = "WAITING".into();
                    t.moments.push((at, format!("step {s} begins iteration {iteration} ({s}#{iteration})")));
                }
                Event::ChildStarted { step: s, attempt, child, .. } => {
                    let i = step(&mut t, s.as_str());
                    t.steps[i].status = "WAITING".into();
                    t.steps[i].attempts.push(Attempt::began(*attempt, at));
                    t.moments.push((at, format!("step {s} started child run {child} (attempt {attempt})")));
                }
                Event::ChildEnded { step: s, child, output, failure, .. } => {
                    let i = step(&mut t, s.as_str());
                    if let Some(a) = t.steps[i].attempts.last_mut() {
                        a.duration_ms = Some((at - a.started_at_ms).max(0) as u64);
                        a.outcome = if output.is_some() { "ok" } else { "failed" }.into();
                        a.failure = failure.clone();
                    }
                    if output.is_some() {
                        t.steps[i].status = "COMPLETED".into();
                    }
                    let how = if output.is_some() { "completed" } else { "failed" };
                    t.moments.push((at, format!("step {s}'s child run {child} {how}")));
                }
                Event::StepJoined { step: s, note, .. } => {
                    let i = step(&mut t, s.as_str());
                    t.steps[i].status = "COMPLETED".into();
                    t.moments.push((at, format!("step {s} completed: {note}")));
                }
                Event::StepSkipped { step: s, reason } => {
                    let i = step(&mut t, s.as_str());
                    t.steps[i].status = "SKIPPED".into();
                    t.steps[i].skipped = Some(reason.clone());
                }
                Event::AttemptStarted { step: s, attempt, .. } => {
                    let i = step(&mut t, s.as_str());
                    t.steps[i].status = "RUNNING".into();
                    t.steps[i].attempts.push(Attempt::began(*attempt, at));
                }
                Event::AttemptSucceeded { step: s, duration_ms, .. } => {
                    let i = step(&mut t, s.as_str());
                    t.steps[i].status = "COMPLETED".into();
                    if let Some(a) = t.steps[i].attempts.last_mut() {
                        a.outcome = "ok".into();
                        a.duration_ms = Some(*duration_ms);
                    }
                }
                Event::AttemptFailed { step: s, attempt, failure, duration_ms } => {
                    let i = step(&mut t, s.as_str());
                    if let Some(a) = t.steps[i].attempts.last_mut() {
                        a.outcome =
                            if failure.message.contains("interrupted") { "interrupted" } else { "failed" }.into();
                        a.duration_ms = Some(*duration_ms);
                        a.failure = Some(failure.clone());
                    }
                    if t.first_failure.is_none() {
                        t.first_failure = Some(FirstFailure {
                            step: s.to_string(),
                            attempt: *attempt,
                            failure: failure.clone(),
                            led_to: Vec::new(),
                        });
                    }
                }
                Event::RetryScheduled { step: s, next_attempt, max_attempts, delay_ms, .. } => {
                    let i = step(&mut t, s.as_str());
                    t.steps[i].status = "RETRY_WAIT".into();
                    if let Some(a) = t.steps[i].attempts.last_mut() {
                        a.then_waited_ms = Some(*delay_ms);
                    }
                    t.follow(format!("step {s}: retry {next_attempt}/{max_attempts} after {delay_ms} ms"));
                }
                Event::StepFailed { step: s, failure } => {
                    let i = step(&mut t, s.as_str());
                    t.steps[i].status = "FAILED".into();
                    t.steps[i].failure = Some(failure.clone());
                    if t.first_failure.is_none() {
                        t.first_failure = Some(FirstFailure {
                            step: s.to_string(),
                            attempt: t.steps[i].attempts.len() as u32,
                            failure: failure.clone(),
                            led_to: Vec::new(),
                        });
                    } else {
                        t.follow(format!("step {s} failed: {failure}"));
                    }
                }
                Event::RunWaiting { reason } => t.moments.push((at, format!("waiting: {reason}"))),
                Event::RunResumed => t.moments.push((at, "resumed".into())),
                Event::RunPaused { by } => {
                    t.status = "PAUSED".into();
                    t.moments
                        .push((at, format!("paused{}", by.as_ref().map(|b| format!(" by {b}")).unwrap_or_default())));
                }
                Event::RunRetried { by } => {
                    t.status = "EXECUTING".into();
                    t.finished_at_ms = None;
                    t.moments.push((
                        at,
                        format!("retried in place{}", by.as_ref().map(|b| format!(" by {b}")).unwrap_or_default()),
                    ));
                }
                Event::RunUnpaused { by } => {
                    t.status = "EXECUTING".into();
                    t.moments
                        .push((at, format!("unpaused{}", by.as_ref().map(|b| format!(" by {b}")).unwrap_or_default())));
                }
                Event::SignalReceived { name, by, .. } => t.moments.push((
                    at,
                    format!("signal {name}{}", by.as_ref().map(|b| format!(" from {b}")).unwrap_or_default()),
                )),
                Event::RunCompleted { .. } => {
                    t.status = "COMPLETED".into();
                    t.finished_at_ms = Some(at);
                }
                Event::RunFailed { failure, .. } => {
                    t.status = "FAILED".into();
                    t.finished_at_ms = Some(at);
                    t.follow(format!("run failed: {}", failure.message));
                }
                Event::RunCancelled { reason, by } => {
                    t.status = "CANCELLED".into();
                    t.finished_at_ms = Some(at);
                    let who = by.as_ref().map(|b| format!(" by {b}")).unwrap_or_default();
                    t.moments.push((at, format!("cancelled{who}: {reason}")));
                    t.follow(format!("run cancelled: {reason}"));
                }
                Event::ApprovalRequested { step: s, prompt, call, .. } => {
                    if call.is_some() {
                        asking_for_call.insert(s.clone());
                    } else {
                        asking_for_call.remove(s);
                    }
                    let i = step(&mut t, s.as_str());
                    t.steps[i].status = "WAITING".into();
                    t.moments.push((at, format!("step {s} asks for approval: {prompt}")));
                }
                Event::ApprovalDecided { step: s, approved, by, comment, action, args } => {
                    let i = step(&mut t, s.as_str());
                    let for_call = asking_for_call.remove(s);
                    let verdict = match action {
                        Some(crate::event::Escalation::Retry { .. }) => "to be retried",
                        Some(crate::event::Escalation::Skip { .. }) => "skipped with a supplied output",
                        Some(crate::event::Escalation::Abort) => "aborted",
                        None if *approved && args.is_some() => "approved with edited arguments",
                        None if *approved => "approved",
                        None => "rejected",
                    };
                    match action {
                        Some(crate::event::Escalation::Skip { .. }) => t.steps[i].status = "COMPLETED".into(),
                        Some(crate::event::Escalation::Abort) => t.steps[i].status = "FAILED".into(),
                        None if !approved && !for_call => t.steps[i].status = "FAILED".into(),
                        _ => {}
                    }
                    let who = by.as_ref().map(|b| format!(" by {b}")).unwrap_or_default();
                    let why = comment.as_ref().map(|c| format!(": {c}")).unwrap_or_default();
                    t.moments.push((at, format!("step {s} {verdict}{who}{why}")));
                }
                Event::ApprovalExpired { step: s } => {
                    t.moments.push((at, format!("step {s}: approval deadline passed")))
                }
                Event::ApprovalEscalated { step: s, note } => t.moments.push((at, format!("step {s}: {note}"))),
                Event::DefinitionMigrated { from_version, to_version, by, .. } => t.moments.push((
                    at,
                    format!(
                        "migrated from v{from_version} to v{to_version}{}",
                        by.as_ref().map(|b| format!(" by {b}")).unwrap_or_default()
                    ),
                )),
                Event::CompensationStarted { reason } => {
                    t.status = "COMPENSATING".into();
                    t.moments.push((at, format!("compensating: {}", reason.message)));
                    t.follow("compensation started".into());
                }
                Event::CompensationAttemptStarted { step: s, attempt, .. } => {
                    t.moments.push((at, format!("compensating step {s} (attempt {attempt})")));
                }
                Event::CompensationAttemptSucceeded { step: s, .. } => {
                    let i = step(&mut t, s.as_str());
                    t.steps[i].status = "COMPENSATED".into();
                    t.follow(format!("step {s} compensated"));
                }
                Event::CompensationAttemptFailed { step: s, failure, .. } => {
                    t.moments.push((at, format!("compensation of {s} failed: {failure}")));
                }
                Event::CompensationRetryScheduled { step: s, delay_ms, .. } => {
                    t.moments.push((at, format!("compensation of {s} retries after {delay_ms} ms")));
                }
                Event::CompensationGaveUp { step: s, failure } => {
                    t.follow(format!("compensation of {s} gave up: {failure}"));
                }
                Event::RunCompensated => {
                    t.status = "COMPENSATED".into();
                    t.finished_at_ms = Some(at);
                    t.follow("run compensated".into());
                }
                Event::CompensationTimerFired { .. } => {}
                Event::StepCancelled { step: s } => {
                    let i = step(&mut t, s.as_str());
                    t.steps[i].status = "CANCELLED".into();
                }
                Event::PlanningStarted | Event::TimerFired { .. } => {}
            }
        }
        // Steps cut off by the run's end.
        let ended = matches!(t.status.as_str(), "FAILED" | "CANCELLED" | "COMPENSATED" | "COMPENSATING");
        for s in &mut t.steps {
            if ended && !matches!(s.status.as_str(), "COMPLETED" | "FAILED" | "SKIPPED" | "COMPENSATED") {
                s.status = "CANCELLED".into();
            }
        }
        t
    }

    fn follow(&mut self, what: String) {
        if let Some(f) = &mut self.first_failure {
            f.led_to.push(what);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{ErrorClass, JOURNAL_SCHEMA};
    use crate::ids::StepId;
    use crate::payload::PayloadRef;

    fn env(seq: u64, at: i64, event: Event) -> Envelope {
        Envelope { seq, at_ms: at, schema: JOURNAL_SCHEMA, event }
    }

    #[test]
    fn tells_attempts_waits_and_the_first_failure() {
        let s = StepId::new("b");
        let r = PayloadRef { hash: "h".into(), size: 1 };
        let f = Failure::new(ErrorClass::Transient, "boom");
        let events = vec![
            env(1, 0, Event::StepReady { step: s.clone() }),
            env(2, 1, Event::AttemptStarted { step: s.clone(), attempt: 1, input: r.clone() }),
            env(3, 5, Event::AttemptFailed { step: s.clone(), attempt: 1, failure: f.clone(), duration_ms: 4 }),
            env(
                4,
                5,
                Event::RetryScheduled {
                    step: s.clone(),
                    next_attempt: 2,
                    max_attempts: 3,
                    delay_ms: 100,
                    not_before_ms: 105,
                },
            ),
            env(5, 105, Event::TimerFired { step: s.clone() }),
            env(6, 105, Event::AttemptStarted { step: s.clone(), attempt: 2, input: r.clone() }),
            env(7, 110, Event::AttemptSucceeded { step: s.clone(), attempt: 2, output: r, duration_ms: 5 }),
        ];
        let t = Timeline::from_events(&events);
        let b = &t.steps[0];
        assert_eq!(b.status, "COMPLETED");
        assert_eq!(b.attempts.len(), 2);
        assert_eq!((b.attempts[0].outcome.as_str(), b.attempts[0].then_waited_ms), ("failed", Some(100)));
        assert_eq!((b.attempts[1].outcome.as_str(), b.attempts[1].duration_ms), ("ok", Some(5)));
        let first = t.first_failure.expect("a first failure");
        assert_eq!((first.step.as_str(), first.attempt, first.failure.message.as_str()), ("b", 1, "boom"));
        assert_eq!(first.led_to, vec!["step b: retry 2/3 after 100 ms".to_string()]);
    }
}
