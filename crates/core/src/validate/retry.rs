//! `retry:` blocks, checked and layered: the kind's default policy, then `defaults.retry`, then
//! the step's own block. Each resolved delay remembers where it came from, so a policy whose
//! `max_delay` ends up below its `initial_delay` is reported where it can be fixed.

use super::parse::RawRetry;
use super::problems::Problems;
use crate::duration::format_ms;
use crate::retry::{MAX_ATTEMPTS_RANGE, MAX_DELAY_LIMIT_MS, MULTIPLIER_RANGE, RetryPolicy};
use serde_saphyr::Location;

/// Where a resolved retry value came from, so a conflict is reported where it can be fixed.
#[derive(Clone, Copy, PartialEq)]
enum Source {
    Kind,
    Defaults(Location),
    Step(Location),
}

/// The valid fields of one `retry:` block.
#[derive(Clone, Copy, Default)]
pub(super) struct RetryOverride {
    max_attempts: Option<u32>,
    initial_delay_ms: Option<(u64, Location)>,
    multiplier: Option<f64>,
    max_delay_ms: Option<(u64, Location)>,
    jitter: Option<f64>,
}

pub(super) fn check_retry(raw: &RawRetry, prefix: &str, step: Option<&str>, out: &mut Problems<'_>) -> RetryOverride {
    let (lo, hi) = MAX_ATTEMPTS_RANGE;
    let max_attempts = raw.max_attempts.as_ref().and_then(|v| {
        out.in_range(
            &format!("{prefix}max_attempts"),
            v,
            step,
            (i64::from(lo), i64::from(hi)),
            " (attempts in total, including the first: 1 means no retries)",
        )
    });
    let multiplier = raw.multiplier.as_ref().and_then(|v| {
        out.in_range(
            &format!("{prefix}multiplier"),
            v,
            step,
            MULTIPLIER_RANGE,
            " (each retry waits this many times longer than the one before: 2.0 doubles it)",
        )
    });
    let jitter = raw.jitter.as_ref().and_then(|v| {
        out.in_range(&format!("{prefix}jitter"), v, step, (0.0, 1.0), " (a fraction: 0.2 spreads each delay by ±20%)")
    });
    let initial_delay_ms = raw.initial_delay.as_ref().and_then(|v| {
        out.delay(&format!("{prefix}initial_delay"), v, step, MAX_DELAY_LIMIT_MS).map(|ms| (ms, v.referenced))
    });
    let max_delay_ms = raw.max_delay.as_ref().and_then(|v| {
        out.delay(&format!("{prefix}max_delay"), v, step, MAX_DELAY_LIMIT_MS).map(|ms| (ms, v.referenced))
    });
    RetryOverride {
        max_attempts: max_attempts.and_then(|n| u32::try_from(n).ok()),
        initial_delay_ms,
        multiplier,
        max_delay_ms,
        jitter,
    }
}

/// Policy plus where each delay came from.
pub(super) struct Resolved {
    pub(super) policy: RetryPolicy,
    initial_from: Source,
    max_from: Source,
}

pub(super) fn resolve_retry(base: RetryPolicy, defaults: &RetryOverride, step: &RetryOverride) -> Resolved {
    let mut r = Resolved { policy: base, initial_from: Source::Kind, max_from: Source::Kind };
    for (layer, source) in [(defaults, Source::Defaults as fn(Location) -> Source), (step, Source::Step)] {
        let p = &mut r.policy;
        if let Some(n) = layer.max_attempts {
            p.max_attempts = n;
        }
        if let Some((ms, at)) = layer.initial_delay_ms {
            p.initial_delay_ms = ms;
            r.initial_from = source(at);
        }
        if let Some(m) = layer.multiplier {
            p.multiplier = m;
        }
        if let Some((ms, at)) = layer.max_delay_ms {
            p.max_delay_ms = ms;
            r.max_from = source(at);
        }
        if let Some(j) = layer.jitter {
            p.jitter = j;
        }
    }
    r
}

/// Reports `max_delay < initial_delay` where it can be fixed: at the step if the step set either
/// value, else once at `defaults.retry`.
pub(super) fn check_delays(r: &Resolved, kind: Option<&str>, step: &str, out: &mut Problems<'_>) {
    let p = &r.policy;
    let from_kind = r.max_from == Source::Kind || r.initial_from == Source::Kind;
    // With an unknown kind (already reported) the kind's half of the comparison is unknown too.
    if p.max_delay_ms >= p.initial_delay_ms || (kind.is_none() && from_kind) {
        return;
    }
    let describe = |ms: u64, from: Source| match (from, kind) {
        (Source::Kind, Some(kind)) => format!("{} (the default for kind `{kind}`)", format_ms(ms)),
        (Source::Defaults(_), _) => format!("{} (from `defaults.retry`)", format_ms(ms)),
        _ => format_ms(ms),
    };
    let fix = "raise max_delay or lower initial_delay";
    let (max, initial) = (describe(p.max_delay_ms, r.max_from), describe(p.initial_delay_ms, r.initial_from));
    match (r.max_from, r.initial_from) {
        (Source::Step(at), _) | (_, Source::Step(at)) => out.add(
            at,
            Some(step),
            "out_of_range",
            format!("`retry.max_delay` {max} is less than `retry.initial_delay` {initial}; {fix}"),
        ),
        (Source::Defaults(at), _) | (_, Source::Defaults(at)) => {
            let message = match kind {
                Some(kind) if from_kind => format!(
                    "`defaults.retry` gives steps of kind `{kind}` a max_delay of {max}, less than their \
                     initial_delay of {initial}; {fix}"
                ),
                _ => format!(
                    "`defaults.retry.max_delay` {} is less than `defaults.retry.initial_delay` {}; {fix}",
                    format_ms(p.max_delay_ms),
                    format_ms(p.initial_delay_ms)
                ),
            };
            out.add(at, None, "out_of_range", message);
        }
        (Source::Kind, Source::Kind) => {}
    }
}
