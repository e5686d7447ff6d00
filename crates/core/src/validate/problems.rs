//! The sink every phase reports into, and the value checks they share (a number in a range, a
//! delay, a timeout), each reporting at the value's own place.

use super::parse::DurationText;
use super::{DAY_MS, Problem};
use crate::duration::format_ms;
use serde_saphyr::{Location, Spanned};
use std::fmt;

/// The problems and warnings found so far in one file.
pub(super) struct Problems<'a> {
    pub(super) file: &'a str,
    pub(super) list: Vec<Problem>,
    pub(super) warnings: Vec<Problem>,
    /// Says why a `subworkflow` step's literal target (its `with`) does not exist, if it does not.
    pub(super) targets: &'a dyn Fn(&serde_json::Value) -> Option<String>,
}

impl Problems<'_> {
    fn problem(&self, at: Location, step: Option<&str>, code: &'static str, message: String) -> Problem {
        let known = |n: u64| (n > 0).then_some(n);
        let line = known(at.line());
        Problem {
            file: self.file.to_string(),
            line,
            column: line.and(known(at.column())),
            step: step.map(str::to_string),
            code,
            message,
        }
    }

    pub(super) fn add(&mut self, at: Location, step: Option<&str>, code: &'static str, message: impl Into<String>) {
        let problem = self.problem(at, step, code, message.into());
        // Defaults shared by many steps can produce the same problem more than once.
        if !self.list.contains(&problem) {
            self.list.push(problem);
        }
    }

    /// Something valid that is probably a mistake; it does not make the definition invalid.
    pub(super) fn warn(&mut self, at: Location, step: Option<&str>, code: &'static str, message: impl Into<String>) {
        let warning = self.problem(at, step, code, message.into());
        if !self.warnings.contains(&warning) {
            self.warnings.push(warning);
        }
    }

    /// Checks a number against an inclusive range; the problem states the range and a hint.
    pub(super) fn in_range<T: PartialOrd + Copy + fmt::Debug>(
        &mut self,
        field: &str,
        raw: &Spanned<T>,
        step: Option<&str>,
        (lo, hi): (T, T),
        hint: &str,
    ) -> Option<T> {
        let v = raw.value;
        if lo <= v && v <= hi {
            return Some(v);
        }
        self.add(
            raw.referenced,
            step,
            "out_of_range",
            format!("`{field}` is {v:?}, but must be between {lo:?} and {hi:?}{hint}"),
        );
        None
    }

    /// A duration of at most 24h; `none` is not accepted here.
    pub(super) fn delay(
        &mut self,
        field: &str,
        raw: &Spanned<DurationText>,
        step: Option<&str>,
        limit_ms: u64,
    ) -> Option<u64> {
        match raw.value.to_ms() {
            Err(e) => {
                self.add(raw.referenced, step, "bad_duration", format!("`{field}`: {e}"));
                None
            }
            Ok(ms) if ms > limit_ms => {
                self.add(
                    raw.referenced,
                    step,
                    "out_of_range",
                    format!(
                        "`{field}` is {}, but must be at most {}; choose a shorter duration",
                        raw.value,
                        format_ms(limit_ms)
                    ),
                );
                None
            }
            Ok(ms) => Some(ms),
        }
    }

    /// A timeout: more than zero, at most 24h, or `none`. `Some(None)` means "no timeout".
    pub(super) fn timeout(
        &mut self,
        field: &str,
        raw: &Spanned<DurationText>,
        step: Option<&str>,
    ) -> Option<Option<u64>> {
        if raw.value.is_none() {
            return Some(None);
        }
        match raw.value.to_ms() {
            Err(e) => {
                self.add(
                    raw.referenced,
                    step,
                    "bad_duration",
                    format!("`{field}`: {e}; or write `none` for no timeout"),
                );
                None
            }
            Ok(ms) if ms == 0 || ms > DAY_MS => {
                self.add(
                    raw.referenced,
                    step,
                    "out_of_range",
                    format!(
                        "`{field}` is {}, but must be more than 0 and at most 24h; write `none` for no timeout",
                        raw.value
                    ),
                );
                None
            }
            Ok(ms) => Some(Some(ms)),
        }
    }
}
