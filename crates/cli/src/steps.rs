//! Naming a step of a run on the command line (`runs logs --step`, `runs show --step`): an
//! unknown name is refused with the run's steps and the likely intended one, never answered
//! with an empty listing that looks like "nothing happened".

use crate::{CliError, CliResult};
use cairn_store::StepRow;

/// How many step names an error lists before it counts the rest.
const LISTED: usize = 20;

/// The row of `name` among the run's steps, or a usage error naming them.
pub fn find<'a>(run: &str, steps: &'a [StepRow], name: &str) -> CliResult<&'a StepRow> {
    if let Some(row) = steps.iter().find(|s| s.step_id == name) {
        return Ok(row);
    }
    if steps.is_empty() {
        return Err(CliError::usage(format!("run {run} has no step '{name}'; it has no steps yet (not planned)")));
    }
    let names: Vec<&str> = steps.iter().map(|s| s.step_id.as_str()).collect();
    let mut listed = names.iter().take(LISTED).copied().collect::<Vec<_>>().join(", ");
    if names.len() > LISTED {
        listed.push_str(&format!(", … ({} in all)", names.len()));
    }
    let hint = closest(name, &names).map(|c| format!(" (did you mean '{c}'?)")).unwrap_or_default();
    Err(CliError::usage(format!("run {run} has no step '{name}'{hint}; its steps: {listed}")))
}

/// The candidate within two edits of `word` (and closer than its length), if any.
pub(crate) fn closest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let len = word.chars().count();
    candidates
        .iter()
        .map(|c| (edit_distance(word, c), *c))
        .filter(|&(d, _)| d <= 2 && d < len)
        .min_by_key(|&(d, _)| d)
        .map(|(_, c)| c)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != *cb)).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str) -> StepRow {
        StepRow {
            step_id: id.into(),
            position: 0,
            kind: "noop".into(),
            status: "COMPLETED".into(),
            attempts: 1,
            not_before_ms: None,
            started_at_ms: None,
            finished_at_ms: None,
            busy_ms: 0,
            error_class: None,
            error_message: None,
            output_hash: None,
            skip_reason: None,
        }
    }

    #[test]
    fn an_unknown_step_is_refused_with_the_steps_and_a_suggestion() {
        let steps = [row("fetch"), row("send_email")];
        assert_eq!(find("wf_1", &steps, "send_email").map(|r| r.step_id.as_str()).ok(), Some("send_email"));
        let e = find("wf_1", &steps, "send_emial").err().map(|e| (e.code, e.message));
        assert_eq!(
            e,
            Some((
                2,
                "run wf_1 has no step 'send_emial' (did you mean 'send_email'?); its steps: fetch, send_email".into()
            ))
        );
        let e = find("wf_1", &steps, "nope").err().map(|e| e.message);
        assert_eq!(e.as_deref(), Some("run wf_1 has no step 'nope'; its steps: fetch, send_email"));
        let many: Vec<StepRow> = (0..25).map(|i| row(&format!("s{i}"))).collect();
        let e = find("wf_1", &many, "nope").err().map(|e| e.message).unwrap_or_default();
        assert!(e.ends_with("s19, … (25 in all)"), "{e}");
    }
}
