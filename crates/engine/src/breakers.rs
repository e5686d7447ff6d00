//! Circuit breakers, one per model provider and per process: after a run of failures (or too
//! high a failure rate over a window) a provider is skipped for a cool-down, so steps fall back to
//! the next model at once instead of waiting out timeouts; then one probe call is let through
//! (half-open), and its outcome closes or reopens the breaker.
//!
//! Only failures that say the provider is unwell count (`transient`, `timeout`, `rate_limited`);
//! a refused key or a bad request says nothing about its health.

use serde::{Deserialize, Serialize};
use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// `[providers.NAME] breaker = {…}` in cairn.toml.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct BreakerConfig {
    /// Open after this many failures in a row.
    pub failures: u32,
    /// Or when at least `min_calls` calls in the last `window_ms` failed at this rate or more.
    pub failure_rate: f64,
    pub min_calls: u32,
    pub window_ms: u64,
    /// How long an open breaker refuses calls before it lets one probe through.
    pub cool_down_ms: u64,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig { failures: 5, failure_rate: 0.5, min_calls: 10, window_ms: 60_000, cool_down_ms: 30_000 }
    }
}

/// A breaker's state as `/v1/providers` shows it.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub struct BreakerView {
    /// `closed`, `open` or `half_open`.
    pub state: &'static str,
    pub consecutive_failures: u32,
    /// Calls and failures within the window.
    pub recent_calls: u32,
    pub recent_failures: u32,
    /// While open: how long until a probe is let through.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_in_ms: Option<u64>,
    /// Why it opened, while it is open.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Debug)]
enum State {
    Closed,
    Open {
        until: Instant,
        reason: String,
    },
    /// One probe is out since then; others are refused until it comes back, or — a probe that
    /// never reports (its attempt was cancelled or timed out) — until a cool-down passes.
    HalfOpen {
        since: Instant,
    },
}

#[derive(Debug)]
struct Breaker {
    config: BreakerConfig,
    state: State,
    consecutive: u32,
    /// When each recent call ended, and whether it failed.
    recent: VecDeque<(Instant, bool)>,
}

impl Breaker {
    fn new(config: BreakerConfig) -> Breaker {
        Breaker { config, state: State::Closed, consecutive: 0, recent: VecDeque::new() }
    }

    fn trim(&mut self, now: Instant) {
        let window = Duration::from_millis(self.config.window_ms);
        while self.recent.front().is_some_and(|(at, _)| now.duration_since(*at) > window) {
            self.recent.pop_front();
        }
    }

    fn view(&mut self, now: Instant) -> BreakerView {
        self.trim(now);
        let recent_failures = self.recent.iter().filter(|(_, failed)| *failed).count() as u32;
        let (state, retry_in_ms, reason) = match &self.state {
            State::Closed => ("closed", None, None),
            State::Open { until, reason } if *until > now => {
                ("open", Some(until.duration_since(now).as_millis() as u64), Some(reason.clone()))
            }
            State::Open { reason, .. } => ("half_open", Some(0), Some(reason.clone())),
            State::HalfOpen { .. } => ("half_open", None, None),
        };
        BreakerView {
            state,
            consecutive_failures: self.consecutive,
            recent_calls: self.recent.len() as u32,
            recent_failures,
            retry_in_ms,
            reason,
        }
    }
}

fn breakers() -> &'static Mutex<HashMap<String, Breaker>> {
    static ALL: OnceLock<Mutex<HashMap<String, Breaker>>> = OnceLock::new();
    ALL.get_or_init(Default::default)
}

/// Whether a call to `provider` may go out now. `Err` says why not and how long until a probe
/// may (an open breaker, or a half-open one whose probe is still out).
pub fn allow(provider: &str, config: BreakerConfig) -> Result<(), (String, Duration)> {
    let now = Instant::now();
    let mut all = breakers().lock().unwrap_or_else(|e| e.into_inner());
    if !all.contains_key(provider) {
        all.insert(provider.to_string(), Breaker::new(config));
    }
    let Some(b) = all.get_mut(provider) else { return Ok(()) };
    b.config = config;
    match &b.state {
        State::Closed => Ok(()),
        State::Open { until, reason } if *until > now => {
            let wait = until.duration_since(now);
            Err((format!("breaker open ({reason}); a probe in {} ms", wait.as_millis()), wait))
        }
        // The cool-down is over: this call is the probe.
        State::Open { .. } => {
            b.state = State::HalfOpen { since: now };
            Ok(())
        }
        // The probe never reported: another one goes.
        State::HalfOpen { since } if now.duration_since(*since) >= Duration::from_millis(b.config.cool_down_ms) => {
            b.state = State::HalfOpen { since: now };
            Ok(())
        }
        State::HalfOpen { .. } => {
            Err(("breaker half-open (its probe call is still out)".into(), Duration::from_secs(1)))
        }
    }
}

/// Records how a call that [`allow`] let through ended: `Some(true)` a failure that counts,
/// `Some(false)` a success, `None` an outcome that says nothing about the provider's health.
pub fn record(provider: &str, failed: Option<bool>) {
    let now = Instant::now();
    let mut all = breakers().lock().unwrap_or_else(|e| e.into_inner());
    let Some(b) = all.get_mut(provider) else { return };
    let Some(failed) = failed else {
        // The provider answered (a refusal of this request): it is up.
        if matches!(b.state, State::HalfOpen { .. }) {
            b.state = State::Closed;
        }
        return;
    };
    b.trim(now);
    b.recent.push_back((now, failed));
    if !failed {
        b.consecutive = 0;
        b.state = State::Closed;
        return;
    }
    b.consecutive += 1;
    let c = b.config;
    let failures = b.recent.iter().filter(|(_, f)| *f).count() as u32;
    let calls = b.recent.len() as u32;
    let reason = if matches!(b.state, State::HalfOpen { .. }) {
        Some("the probe call failed".to_string())
    } else if b.consecutive >= c.failures {
        Some(format!("{} failures in a row", b.consecutive))
    } else if calls >= c.min_calls && f64::from(failures) >= c.failure_rate * f64::from(calls) {
        Some(format!("{failures} of the last {calls} calls failed"))
    } else {
        None
    };
    if let Some(reason) = reason {
        b.state = State::Open { until: now + Duration::from_millis(c.cool_down_ms), reason };
    }
}

/// Every provider this process has called, with its breaker's state.
pub fn snapshot() -> HashMap<String, BreakerView> {
    let now = Instant::now();
    let mut all = breakers().lock().unwrap_or_else(|e| e.into_inner());
    all.iter_mut().map(|(name, b)| (name.clone(), b.view(now))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> BreakerConfig {
        BreakerConfig { failures: 3, failure_rate: 0.5, min_calls: 4, window_ms: 60_000, cool_down_ms: 50 }
    }

    #[test]
    fn a_run_of_failures_opens_it_a_probe_after_the_cool_down_closes_or_reopens_it() {
        let p = "test-consecutive";
        for _ in 0..3 {
            assert!(allow(p, config()).is_ok());
            record(p, Some(true));
        }
        let (why, _) = allow(p, config()).expect_err("open");
        assert!(why.contains("3 failures in a row"), "{why}");
        assert_eq!(snapshot()[p].state, "open");
        std::thread::sleep(Duration::from_millis(60));
        assert!(allow(p, config()).is_ok(), "the probe");
        assert!(allow(p, config()).is_err(), "only one probe at a time");
        // A probe that never reports (its attempt was cancelled) does not hold the breaker.
        std::thread::sleep(Duration::from_millis(60));
        assert!(allow(p, config()).is_ok(), "another probe once a cool-down passed");
        record(p, Some(true));
        assert!(allow(p, config()).expect_err("reopened").0.contains("the probe call failed"));
        std::thread::sleep(Duration::from_millis(60));
        assert!(allow(p, config()).is_ok());
        record(p, Some(false));
        assert_eq!(snapshot()[p].state, "closed");
        assert!(allow(p, config()).is_ok());
    }

    #[test]
    fn a_high_failure_rate_opens_it_and_health_neutral_outcomes_do_not_count() {
        let p = "test-rate";
        for failed in [false, true, false, true] {
            assert!(allow(p, config()).is_ok());
            record(p, Some(failed));
        }
        // 2 of 4 failed: the rate (50%) is reached.
        assert!(allow(p, config()).expect_err("open").0.contains("2 of the last 4 calls failed"));
        let q = "test-neutral";
        for _ in 0..10 {
            assert!(allow(q, config()).is_ok());
            record(q, None);
        }
        assert_eq!(snapshot()[q].state, "closed");
    }
}
