//! Lines for operators on stderr. Writing never panics and never stops the process (a closed or
//! broken stderr loses the line, not the run), and a line that repeats — the same failure for
//! every run while the disk is full, say — is printed at most once per interval per kind, with a
//! count of the ones left out.

use std::collections::HashMap;
use std::io::Write;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Whether lines go out as JSON through `tracing` (`--log-format json`).
static JSON: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Sends every line through `tracing` from now on: the process installed a JSON subscriber, which
/// writes each line with the spans it was said in (run, step, attempt, call).
pub fn use_tracing() {
    JSON.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// Writes one line to stderr, ignoring failures.
pub fn line(args: std::fmt::Arguments<'_>) {
    if JSON.load(std::sync::atomic::Ordering::Relaxed) {
        // Warnings and errors keep their level, so a `warn` filter still shows them.
        let text = args.to_string();
        if text.contains("WARNING") {
            tracing::warn!(target: "cairn", "{text}");
        } else if text.starts_with("error") || text.contains(": error") {
            tracing::error!(target: "cairn", "{text}");
        } else {
            tracing::info!(target: "cairn", "{text}");
        }
        return;
    }
    let mut err = std::io::stderr().lock();
    let _ = err.write_fmt(args);
    let _ = err.write_all(b"\n");
}

/// How often one kind of repeated line is printed.
const EVERY: Duration = Duration::from_secs(10);

static SEEN: Mutex<Option<HashMap<&'static str, (Instant, u64)>>> = Mutex::new(None);

/// Writes a line of kind `kind` unless one of that kind was written in the last ten seconds
/// (then it is counted, and the next line of that kind says how many were left out).
pub fn limited(kind: &'static str, args: std::fmt::Arguments<'_>) {
    let now = Instant::now();
    let left_out = {
        let Ok(mut seen) = SEEN.lock() else {
            line(args);
            return;
        };
        let seen = seen.get_or_insert_with(HashMap::new);
        match seen.get_mut(kind) {
            Some((last, skipped)) if now.duration_since(*last) < EVERY => {
                *skipped += 1;
                return;
            }
            Some((last, skipped)) => {
                *last = now;
                std::mem::take(skipped)
            }
            None => {
                seen.insert(kind, (now, 0));
                0
            }
        }
    };
    if left_out > 0 {
        line(format_args!("{args} ({left_out} similar line(s) left out in the last {}s)", EVERY.as_secs()));
    } else {
        line(args);
    }
}

/// `say!("…", args)`: a line on stderr that cannot panic (see [`line`]).
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => { $crate::log::line(format_args!($($arg)*)) };
}

/// `say_limited!("kind", "…", args)`: like `say!`, at most once per interval per kind.
#[macro_export]
macro_rules! say_limited {
    ($kind:expr, $($arg:tt)*) => { $crate::log::limited($kind, format_args!($($arg)*)) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeated_kind_is_counted_not_printed() {
        limited("test-kind", format_args!("first"));
        limited("test-kind", format_args!("second"));
        limited("test-kind", format_args!("third"));
        let seen = SEEN.lock().expect("lock");
        let (_, skipped) = seen.as_ref().and_then(|s| s.get("test-kind")).copied().expect("seen");
        assert_eq!(skipped, 2);
    }
}
