//! Terminal output: progress lines, colour (only on a terminal, never with NO_COLOR), tables and
//! timestamps.

use cairn_core::duration::format_ms;
use cairn_core::{Envelope, Event, RunId};
use cairn_engine::Notice;
use cairn_store::Store;
use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::Arc;
use tokio::sync::mpsc;

/// Writes data to stdout. When its reader has gone (`cairn runs list | head -1`), the process
/// exits quietly with 0 instead of panicking: everything it had to do is done, and a reader
/// that stops early asked for no more.
pub fn out(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    if stdout.write_fmt(args).is_err() {
        std::process::exit(0);
    }
}

/// `out!("…", args)`: a line of data on stdout (see [`out`]).
#[macro_export]
macro_rules! out {
    () => { $crate::output::out(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::output::out(format_args!("{}\n", format_args!($($arg)*))) };
}

pub fn colour_enabled() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}

pub struct Paint(pub bool);

impl Paint {
    fn wrap(&self, code: &str, s: &str) -> String {
        if self.0 { format!("\x1b[{code}m{s}\x1b[0m") } else { s.to_string() }
    }
    pub fn green(&self, s: &str) -> String {
        self.wrap("32", s)
    }
    pub fn red(&self, s: &str) -> String {
        self.wrap("31", s)
    }
    pub fn yellow(&self, s: &str) -> String {
        self.wrap("33", s)
    }
    pub fn dim(&self, s: &str) -> String {
        self.wrap("2", s)
    }
}

/// A step waiting for a person: (run, step, prompt).
pub type Ask = (RunId, String, String);

/// Prints `[workflow] …` / `[step] …` lines for committed events until the channel closes, and
/// hands approval requests to `asks` (an interactive prompt) when there is one.
///
/// A run this process did not create (resumed, retried in place, continued after a decision)
/// takes its start from the store, so its `completed in …` counts from when it was created, as
/// `cairn runs list` does.
pub async fn print_progress<S: Store>(
    mut rx: mpsc::UnboundedReceiver<Notice>,
    asks: Option<mpsc::UnboundedSender<Ask>>,
    store: Arc<S>,
) {
    let paint = Paint(colour_enabled());
    let mut started: HashMap<RunId, i64> = HashMap::new();
    let mut last_failure: HashMap<(RunId, String), cairn_core::Failure> = HashMap::new();
    while let Some(notice) = rx.recv().await {
        let Notice::Committed { run_id, events } = notice else { continue };
        let created_here = events.iter().any(|e| matches!(e.event, Event::RunCreated { .. }));
        if !created_here
            && !started.contains_key(&run_id)
            && let Ok(run) = store.get_run(&run_id).await
        {
            started.insert(run_id.clone(), run.created_at_ms);
        }
        for env in &events {
            if let Some(line) = progress_line(&paint, &run_id, env, &mut started, &mut last_failure) {
                cairn_engine::say!("{line}");
            }
            if let Event::ApprovalRequested { step, prompt, .. } = &env.event {
                match &asks {
                    Some(tx) => {
                        let _ = tx.send((run_id.clone(), step.to_string(), prompt.clone()));
                    }
                    // Nobody can answer here: say who can, and that this process goes on waiting.
                    None => cairn_engine::say!(
                        "[workflow] id={run_id} waits for a decision on {step}; decide from another shell or the \
                         API (`cairn approvals` lists what waits) and this process continues the run; Ctrl-C leaves \
                         it waiting for `cairn resume {run_id}`"
                    ),
                }
            }
        }
    }
}

pub(crate) fn progress_line(
    paint: &Paint,
    run_id: &RunId,
    env: &Envelope,
    started: &mut HashMap<RunId, i64>,
    last_failure: &mut HashMap<(RunId, String), cairn_core::Failure>,
) -> Option<String> {
    // ` in 1.2s` / ` after 1.2s`, or nothing when the run's start is unknown (never an empty
    // duration).
    let since = |started: &HashMap<RunId, i64>, word: &str| {
        started.get(run_id).map(|t| format!(" {word} {}", format_ms((env.at_ms - t).max(0) as u64))).unwrap_or_default()
    };
    match &env.event {
        Event::RunCreated { workflow, source, .. } => {
            started.insert(run_id.clone(), env.at_ms);
            let of = match source {
                cairn_core::event::RunSource::Child { parent, step, .. } => format!(", child of {parent} step {step}"),
                _ => String::new(),
            };
            Some(format!("[workflow] id={run_id} started ({workflow}{of})"))
        }
        Event::PlanRecorded { plan: Some(plan), .. } => {
            let left_out = plan.left_out_text().map(|t| format!("; {t}")).unwrap_or_default();
            let by = plan.planner.as_ref().map(|p| format!(" (planned by {p})")).unwrap_or_default();
            Some(format!("[plan] goal \"{}\" -> {}{left_out}{by}", plan.goal, plan.matched.join(" -> ")))
        }
        Event::AttemptSucceeded { step, attempt, duration_ms, .. } => {
            let on = if *attempt > 1 { format!(" on attempt {attempt}") } else { String::new() };
            Some(format!("[step] {step}={}{on} ({duration_ms} ms)", paint.green("ok")))
        }
        Event::AttemptFailed { step, failure, .. } => {
            last_failure.insert((run_id.clone(), step.to_string()), failure.clone());
            None
        }
        Event::RetryScheduled { step, next_attempt, max_attempts, delay_ms, .. } => {
            let f = last_failure.get(&(run_id.clone(), step.to_string()));
            let class = f.map(|f| f.class.as_str()).unwrap_or("transient");
            let msg = f.map(|f| f.message.as_str()).unwrap_or("");
            Some(format!(
                "[step] {step}={} retry {next_attempt}/{max_attempts} in {}: {}",
                paint.yellow(&format!("failed({class})")),
                format_ms(*delay_ms),
                paint.dim(msg)
            ))
        }
        Event::StepFailed { step, failure } => {
            Some(format!("[step] {step}={}: {}", paint.red(&format!("failed({})", failure.class)), failure.message))
        }
        Event::StepSkipped { step, reason } => Some(format!("[step] {step}=skipped ({reason})")),
        Event::WaitStarted { step, until_ms, signal } => {
            let until = until_ms.map(|t| format!("until {}", timestamp(t)));
            let what = match (signal, until) {
                (Some(name), Some(until)) => format!("for signal '{name}' ({until})"),
                (Some(name), None) => format!("for signal '{name}' (cairn runs signal {run_id} {name} --data JSON)"),
                (None, Some(until)) => until,
                (None, None) => String::new(),
            };
            Some(format!("[step] {step}={} {what}", paint.yellow("waiting")))
        }
        Event::WaitEnded { step, .. } => Some(format!("[step] {step}={} (wait ended)", paint.green("ok"))),
        Event::StepExpanded { step, count: 0, .. } => Some(format!("[step] {step}: no items to run")),
        Event::StepExpanded { step, count, .. } => {
            Some(format!("[step] {step}={} for each of {count} item(s) ({step}[0]…)", paint.yellow("running")))
        }
        Event::LoopIterated { step, iteration } => {
            Some(format!("[step] {step}={} iteration {iteration} ({step}#{iteration})", paint.yellow("running")))
        }
        Event::StepJoined { step, note, .. } => Some(format!("[step] {step}={} ({note})", paint.green("ok"))),
        Event::ChildStarted { step, child, .. } => {
            Some(format!("[step] {step}={} for child run {child}", paint.yellow("waiting")))
        }
        Event::ChildEnded { step, child, output: Some(_), .. } => {
            Some(format!("[step] {step}={} (child run {child} completed)", paint.green("ok")))
        }
        Event::ChildEnded { step, failure, .. } => {
            if let Some(f) = failure {
                last_failure.insert((run_id.clone(), step.to_string()), f.clone());
            }
            let why = failure.as_ref().map(|f| f.message.as_str()).unwrap_or("failed");
            Some(format!("[step] {step}={}: {why}", paint.red("child failed")))
        }
        Event::RunWaiting { reason } => Some(format!("[workflow] waiting: {reason}")),
        Event::RunCompleted { .. } => Some(format!("[workflow] {}{}", paint.green("completed"), since(started, "in"))),
        Event::RunFailed { failure, .. } => {
            Some(format!("[workflow] {}{}: {}", paint.red("failed"), since(started, "after"), failure.message))
        }
        Event::RunCancelled { reason, .. } => Some(format!("[workflow] cancelled: {reason}")),
        Event::RunPaused { .. } => Some("[workflow] paused".to_string()),
        Event::RunUnpaused { .. } => Some("[workflow] unpaused".to_string()),
        Event::SignalReceived { name, .. } => Some(format!("[signal] {name} received")),
        Event::ApprovalRequested { step, prompt, escalation: true, .. } => Some(format!(
            "[step] {step}={}: {prompt} (cairn escalation {run_id} {step} retry|skip --output JSON|abort)",
            paint.yellow("escalated(needs a decision)")
        )),
        Event::ApprovalRequested { step, prompt, call: Some(call), .. } => Some(format!(
            "[step] {step}={}: {prompt} args: {} (cairn approve {run_id} {step} [--args JSON] | cairn reject {run_id} \
             {step} --reason …)",
            paint.yellow("blocked(tool call approval)"),
            call.args.to_string().chars().take(300).collect::<String>()
        )),
        Event::ApprovalRequested { step, prompt, .. } => Some(format!(
            "[step] {step}={}: {prompt} (cairn approve {run_id} {step} | cairn reject {run_id} {step} --reason …)",
            paint.yellow("blocked(manual approval)")
        )),
        Event::ApprovalDecided { step, approved, by, comment, action, args } => Some(format!(
            "[approval] {step} {}{}{}",
            match action {
                Some(cairn_core::event::Escalation::Retry { .. }) => paint.yellow("to be retried"),
                Some(cairn_core::event::Escalation::Skip { .. }) => paint.yellow("skipped with a supplied output"),
                Some(cairn_core::event::Escalation::Abort) => paint.red("aborted"),
                None if *approved && args.is_some() => paint.green("approved with edited arguments"),
                None if *approved => paint.green("approved"),
                None => paint.red("rejected"),
            },
            by.as_ref().map(|b| format!(" by {b}")).unwrap_or_default(),
            comment.as_ref().map(|c| format!(": {c}")).unwrap_or_default()
        )),
        Event::ApprovalEscalated { step, note } => Some(format!("[approval] {step}: {note}")),
        Event::CompensationStarted { reason } => {
            Some(format!("[workflow] {}: {}", paint.yellow("compensating"), reason.message))
        }
        Event::CompensationAttemptSucceeded { step, duration_ms, .. } => {
            Some(format!("[step] {step}={} ({duration_ms} ms)", paint.yellow("compensated")))
        }
        Event::CompensationAttemptFailed { step, attempt, failure, .. } => {
            Some(format!("[step] {step} compensation attempt {attempt} failed: {}", failure.message))
        }
        Event::CompensationGaveUp { step, failure } => {
            Some(format!("[step] {step} compensation {}: {}", paint.red("gave up"), failure.message))
        }
        Event::RunCompensated => Some(format!("[workflow] {}{}", paint.yellow("compensated"), since(started, "in"))),
        _ => None,
    }
}

/// `2026-11-21T17:01:04.123Z` from unix milliseconds.
pub fn timestamp(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let millis = ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + if m <= 2 { 1 } else { 0 };
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z", rem / 3600, (rem % 3600) / 60, rem % 60)
}

/// A plain left-aligned table.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<&str>, out: &mut String| {
        let n = cells.len();
        for (i, c) in cells.into_iter().enumerate() {
            if i + 1 == n {
                out.push_str(c);
            } else {
                out.push_str(&format!("{c:<w$}  ", w = widths[i]));
            }
        }
        out.push('\n');
    };
    line(headers.to_vec(), &mut out);
    for row in rows {
        line(row.iter().map(String::as_str).collect(), &mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_timestamps() {
        assert_eq!(timestamp(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(timestamp(1_795_280_464_123), "2026-11-21T17:01:04.123Z");
    }
}
