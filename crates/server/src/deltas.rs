//! Tokens of model calls while they stream, kept per run for the run's event stream (in this
//! process: calls made by a worker elsewhere reach watchers when their answer is journaled).
//!
//! Each piece is an `llm.delta` event with the id `SEQ.K`: `SEQ` the run's last journal position
//! when it came, `K` a counter of the run's pieces, so a client that reconnects with
//! `Last-Event-ID` gets what it missed and nothing twice. When a step's tokens so far are void —
//! its call failed, or a new call of the step begins after another streamed (a retry, a repair,
//! the next model) — an `llm.restart` event comes first: tokens are never silently repeated.
//! Pieces are dropped once the step's attempt is journaled (the answer is then in the journal).

use cairn_core::{Envelope, Event, RunId};
use cairn_engine::Delta;
use serde_json::{Value, json};
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

/// The most pieces kept per run; older ones are dropped first.
const MAX_PER_RUN: usize = 20_000;

/// The most runs followed at once before those without tokens in flight are let go.
const MAX_RUNS: usize = 10_000;

/// One piece of a run's stream that is not a journal event.
#[derive(Clone, Debug)]
pub struct Piece {
    pub seq: u64,
    pub k: u64,
    /// `llm.delta` or `llm.restart`.
    pub event: &'static str,
    pub data: Value,
}

impl Piece {
    pub fn id(&self) -> String {
        format!("{}.{}", self.seq, self.k)
    }
}

#[derive(Default)]
struct RunPieces {
    last_seq: u64,
    next_k: u64,
    pieces: VecDeque<(String, Piece)>,
    /// Per step: the (attempt, call) whose tokens watchers hold now, if any.
    streaming: HashMap<String, (u32, u32)>,
}

#[derive(Default)]
pub struct Deltas {
    runs: Mutex<HashMap<RunId, RunPieces>>,
}

impl Deltas {
    /// Keeps a piece of a call's answer (or the news that its tokens are void).
    pub fn push(&self, d: Delta) {
        let mut runs = self.runs.lock().unwrap_or_else(|e| e.into_inner());
        let run = runs.entry(d.run_id.clone()).or_default();
        let this = (d.attempt, d.call);
        let held = run.streaming.get(&d.step).copied();
        let reason = match (&d.text, held) {
            (None, Some(_)) => Some("the call failed before its answer ended; its tokens are void"),
            (Some(_), Some(other)) if other != this => Some("a new call of the step begins; earlier tokens are void"),
            _ => None,
        };
        if let Some(reason) = reason {
            run.streaming.remove(&d.step);
            let data = json!({"type": "llm.restart", "run_id": d.run_id.as_str(), "step": d.step,
                              "attempt": d.attempt, "call": d.call, "reason": reason});
            run.add(&d.step, "llm.restart", data);
        }
        if let Some(text) = d.text {
            run.streaming.insert(d.step.clone(), this);
            let data = json!({"type": "llm.delta", "run_id": d.run_id.as_str(), "step": d.step,
                              "attempt": d.attempt, "call": d.call, "text": text});
            run.add(&d.step, "llm.delta", data);
        }
    }

    /// Follows the run's journal: pieces of steps whose attempt was journaled are dropped (and a
    /// finished run's all), and later pieces are numbered after its last event.
    pub fn committed(&self, run_id: &RunId, events: &[Envelope]) {
        let mut runs = self.runs.lock().unwrap_or_else(|e| e.into_inner());
        let finished = events.iter().any(|e| {
            matches!(e.event, Event::RunCompleted { .. } | Event::RunFailed { .. } | Event::RunCancelled { .. })
        });
        if finished {
            runs.remove(run_id);
            return;
        }
        let run = runs.entry(run_id.clone()).or_default();
        for e in events {
            run.last_seq = run.last_seq.max(e.seq);
            if let Event::AttemptSucceeded { step, .. } | Event::StepFailed { step, .. } = &e.event {
                run.pieces.retain(|(s, _)| s != step.as_str());
                run.streaming.remove(step.as_str());
            }
        }
        // A run without tokens in flight keeps only its last position; past many runs (handed
        // back to other workers, never seen finishing here), those are let go.
        if runs.len() > MAX_RUNS {
            runs.retain(|_, r| !r.pieces.is_empty() || !r.streaming.is_empty());
        }
    }

    /// The run's pieces after a resume point: after `SEQ.K` (`k: Some(K)`), or — after a plain
    /// journal position `SEQ` — those that came after that event.
    pub fn after(&self, run_id: &RunId, seq: u64, k: Option<u64>) -> Vec<Piece> {
        let runs = self.runs.lock().unwrap_or_else(|e| e.into_inner());
        let Some(run) = runs.get(run_id) else { return Vec::new() };
        run.pieces
            .iter()
            .map(|(_, p)| p)
            .filter(|p| match k {
                Some(k) => p.k > k,
                None => p.seq >= seq,
            })
            .cloned()
            .collect()
    }
}

impl RunPieces {
    fn add(&mut self, step: &str, event: &'static str, data: Value) {
        self.next_k += 1;
        let piece = Piece { seq: self.last_seq, k: self.next_k, event, data };
        self.pieces.push_back((step.to_string(), piece));
        if self.pieces.len() > MAX_PER_RUN {
            self.pieces.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delta(step: &str, attempt: u32, call: u32, text: Option<&str>) -> Delta {
        Delta {
            run_id: RunId::parse("wf_01KBC6X8Y2S7J5W0Q3R4T5V6X7").expect("id"),
            step: step.into(),
            attempt,
            call,
            text: text.map(str::to_string),
        }
    }

    #[test]
    fn a_retried_call_is_announced_before_its_tokens_and_resuming_skips_what_was_seen() {
        let d = Deltas::default();
        let run = delta("a", 1, 1, None).run_id;
        d.push(delta("a", 1, 1, Some("Hel")));
        d.push(delta("a", 1, 1, Some("lo")));
        d.push(delta("a", 1, 1, None));
        d.push(delta("a", 2, 1, Some("Hi")));
        let all = d.after(&run, 0, None);
        let kinds: Vec<&str> = all.iter().map(|p| p.event).collect();
        assert_eq!(kinds, ["llm.delta", "llm.delta", "llm.restart", "llm.delta"]);
        assert_eq!(all[3].data["attempt"], 2);
        assert_eq!(d.after(&run, 0, Some(2)).len(), 2, "after piece 2: the restart and the new token");
        // A second call of the step that streams after a first one that did not fail (a repair).
        d.push(delta("a", 2, 2, Some("{")));
        let last: Vec<&str> = d.after(&run, 0, Some(4)).iter().map(|p| p.event).collect();
        assert_eq!(last, ["llm.restart", "llm.delta"]);
    }

    #[test]
    fn pieces_go_once_the_attempt_is_journaled_and_are_numbered_after_the_last_event() {
        let d = Deltas::default();
        let run = delta("a", 1, 1, None).run_id;
        let env = |seq: u64, event: Event| Envelope { seq, at_ms: 0, schema: 1, event };
        d.committed(&run, &[env(7, Event::RunResumed)]);
        d.push(delta("a", 1, 1, Some("x")));
        d.push(delta("b", 1, 1, Some("y")));
        assert_eq!(d.after(&run, 7, None)[0].id(), "7.1");
        assert!(d.after(&run, 8, None).is_empty(), "came before event 8");
        let done = Event::AttemptSucceeded {
            step: cairn_core::StepId::new("a"),
            attempt: 1,
            output: cairn_core::payload::Payload::of(&json!(1)).reference,
            duration_ms: 1,
        };
        d.committed(&run, &[env(8, done)]);
        let left: Vec<String> = d.after(&run, 0, None).iter().map(|p| p.data["step"].to_string()).collect();
        assert_eq!(left, ["\"b\""]);
    }
}
