//! The step kinds this binary can execute and their defaults. Validation rejects other kinds.
//! The per-kind retry policy and timeout apply unless the definition overrides them.

use crate::retry::RetryPolicy;

#[derive(Clone, Copy, Debug)]
pub struct KindSpec {
    pub name: &'static str,
    pub summary: &'static str,
    pub retry: RetryPolicy,
    /// Default per-attempt timeout; `None` means no timeout unless the step sets one.
    pub timeout_ms: Option<u64>,
}

const QUICK: RetryPolicy =
    RetryPolicy { max_attempts: 3, initial_delay_ms: 100, multiplier: 2.0, max_delay_ms: 5_000, jitter: 0.2 };

const MODEL: RetryPolicy =
    RetryPolicy { max_attempts: 5, initial_delay_ms: 500, multiplier: 2.0, max_delay_ms: 30_000, jitter: 0.2 };

pub const KINDS: &[KindSpec] = &[
    KindSpec { name: "noop", summary: "does nothing and outputs null", retry: QUICK, timeout_ms: Some(60_000) },
    KindSpec { name: "echo", summary: "outputs its `with` block, rendered", retry: QUICK, timeout_ms: Some(60_000) },
    KindSpec {
        name: "sleep",
        summary: "waits `with.duration` (e.g. 2s), then outputs {slept_ms}",
        retry: QUICK,
        timeout_ms: None,
    },
    KindSpec {
        name: "mock_model",
        summary: "deterministic stand-in for a model: `with.prompt` in, {text, tokens_in, tokens_out} out; \
                  `with.respond` fixes the reply",
        retry: MODEL,
        timeout_ms: Some(120_000),
    },
    KindSpec {
        name: "http",
        summary: "sends `with.body` as JSON to `with.url` (http://) with `Idempotency-Key: run/step/call`; \
                  the JSON answer is the output",
        retry: MODEL,
        timeout_ms: Some(30_000),
    },
    KindSpec {
        name: "approval",
        summary: "waits for a person to approve or reject; outputs {decision, by, comment}",
        retry: QUICK,
        timeout_ms: Some(60_000),
    },
    KindSpec {
        name: "fail",
        summary: "always fails with `with.class` (default permanent) and `with.message`",
        retry: QUICK,
        timeout_ms: Some(60_000),
    },
];

pub fn lookup(name: &str) -> Option<&'static KindSpec> {
    KINDS.iter().find(|k| k.name == name)
}

pub fn names() -> Vec<&'static str> {
    KINDS.iter().map(|k| k.name).collect()
}
