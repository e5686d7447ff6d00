//! What a step's templates and conditions can read, checked before anything runs.
//!
//! At run time a step's `when`, the strings of its `with`, its `approval.prompt` and its
//! `compensate.with` see `inputs` (the declared ones: undeclared names are refused when a run
//! starts), `steps` (only the steps it needs, directly or transitively, and the fallbacks
//! standing in for them; see `decide`), `signals`, `run.id` and `run.workflow`, and in
//! `compensate.with` also `output`. Reading anything else fails the step with "undefined value"
//! (or a CEL "no such key"). [`View::check`] refuses such references where they are written.
//!
//! `with` and `compensate.with` may also print secrets, `{{ secrets.NAME }}`, and nothing else
//! may read them: conditions and approval prompts are decided by the core and journaled, and a
//! secret's value is known only to the engine when the attempt runs (see [`crate::secrets`]). A
//! secret can only be printed as it is: tested, filtered, compared or captured, the core would
//! be working on a stand-in, not the value.
//!
//! **Only certain failures are refused.** A reference is refused when the value is missing on
//! every run and the expression needs it: it reads a field of the missing value, or (in a
//! template) prints it, compares it, tests its truth or iterates it. It is not refused when it
//! is only tested for presence (`is defined`, `has(...)`, `'k' in steps`), handed to something
//! that accepts a missing value (`| default`, `| tojson`, a list), computed (`steps[name]`), or
//! read behind a presence test of the same value elsewhere in the same expression — the guard
//! the planner's catalog uses: `steps.a.output.text if steps.a is defined else inputs.goal`.

use std::collections::HashSet;

/// One use of a variable in a template or condition, found by parsing it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reference {
    /// Root first: `steps.fetch.output` is `["steps", "fetch", "output"]`. A computed key ends
    /// the path (`steps[name].output` is `["steps"]`).
    pub path: Vec<String>,
    pub usage: Usage,
    /// 1-based line and column of the root name inside the template or condition.
    pub line: usize,
    pub column: usize,
    /// Printed as it is (`{{ secrets.API_TOKEN }}`, also as a branch of an inline `if`), not
    /// filtered, tested, combined or captured: the only way a secret may be used.
    pub printed: bool,
}

/// How an expression uses the value a [`Reference`] names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Usage {
    /// The value is needed: printed, compared, tested for truth, iterated, or (CEL) used at all.
    Read,
    /// Only its presence is tested: `is defined` (any test), `has(...)`, `'key' in map`.
    Tested,
    /// Handed to something that may accept a missing value (`| default`, a list, `set`).
    Passed,
}

/// 1-based (line, column) of byte `offset` in `source`, counting characters.
pub(crate) fn position(source: &str, offset: usize) -> (usize, usize) {
    let before = source.get(..offset).unwrap_or(source);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// The fields of `steps.ID` that can exist at run time.
const STEP_FIELDS: [&str; 5] = ["output", "status", "error", "fallback", "iterations"];

/// What one step's templates and conditions see at run time.
pub struct View<'a> {
    /// The step whose expressions are checked.
    pub step: &'a str,
    /// Inputs the definition declares.
    pub inputs: Vec<&'a str>,
    /// Every step id in the definition, in file order.
    pub steps: Vec<&'a str>,
    /// Steps whose results this step can see.
    pub visible: HashSet<&'a str>,
    /// Steps that declare `on_failure: {fallback: STEP}` (only they have `steps.ID.fallback`).
    pub with_fallback: HashSet<&'a str>,
    /// Steps that declare `loop` (only they have `steps.ID.iterations`).
    pub loops: HashSet<&'a str>,
    /// `compensate.with` also sees `output`, what the step produced.
    pub output: bool,
    /// `with` and `compensate.with` may print secrets; conditions and prompts may not.
    pub secrets: bool,
    /// Variables of this place only: `item` and `index` in a `for_each` step's `with`,
    /// `iteration` and `previous` in a `loop` step's, `output` and `iteration` in `loop.until`.
    pub locals: Vec<&'static str>,
}

/// A refused reference: a stable code and a message that says how to fix it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    pub code: &'static str,
    pub message: String,
}

/// Why the value at `path[..=depth]` never exists for this step.
struct Missing {
    depth: usize,
    code: &'static str,
    why: String,
}

impl View<'_> {
    /// Checks the references of one template or condition. `field` names it in messages
    /// (`with.body`, `when`); `kind` is "template" or "condition". One finding per missing
    /// value, in the order the references were written.
    pub fn check(&self, refs: &[Reference], field: &str, kind: &str) -> Vec<Finding> {
        let mut findings = Vec::new();
        let mut reported: HashSet<&[String]> = HashSet::new();
        for r in refs {
            if r.path.first().is_some_and(|root| root == crate::secrets::ROOT) {
                if let Some((code, why)) = self.secret_problem(r, kind, field)
                    && reported.insert(&r.path)
                {
                    let message = format!(
                        "`{field}` reads `{}` (at {}:{} in the {kind}), but {why}",
                        r.path.join("."),
                        r.line,
                        r.column
                    );
                    findings.push(Finding { code, message });
                }
                continue;
            }
            let Some(missing) = self.missing(&r.path) else { continue };
            let prefix = &r.path[..=missing.depth];
            let needed = r.path.len() > missing.depth + 1 || r.usage == Usage::Read;
            let guarded = refs.iter().any(|g| g.usage == Usage::Tested && g.path == prefix);
            if !needed || guarded || !reported.insert(prefix) {
                continue;
            }
            findings.push(Finding {
                code: missing.code,
                message: format!(
                    "`{field}` reads `{}` (at {}:{} in the {kind}), but {}",
                    prefix.join("."),
                    r.line,
                    r.column,
                    missing.why
                ),
            });
        }
        findings
    }

    /// Why a use of `secrets` is refused here, if it is.
    fn secret_problem(&self, r: &Reference, kind: &str, field: &str) -> Option<(&'static str, String)> {
        use crate::secrets::{is_name, reference, suggest_name};
        if !self.secrets {
            let what = if kind == "condition" {
                "a condition cannot read secrets: its outcome is decided by the core and journaled"
            } else if field.starts_with("for_each") {
                "`for_each` items cannot hold secrets: they are journaled as they render"
            } else if field.starts_with("with") {
                return Some((
                    "secret_not_allowed",
                    "a subworkflow's `with` cannot hold secrets: the child run journals its inputs; let the child \
                     read `{{ secrets.NAME }}` in its own steps"
                        .to_string(),
                ));
            } else {
                "an approval prompt cannot show secrets: it is journaled and shown to approvers"
            };
            return Some((
                "secret_not_allowed",
                format!(
                    "{what}; secrets can be used only in `with` and `compensate.with`, where the engine puts them in when the attempt runs"
                ),
            ));
        }
        let Some(name) = r.path.get(1) else {
            return Some((
                "bad_secret_reference",
                "`secrets` cannot be read as a whole; print one secret: `{{ secrets.NAME }}`".to_string(),
            ));
        };
        if let Some(field) = r.path.get(2) {
            return Some((
                "bad_secret_reference",
                format!(
                    "a secret is a string and has no field `{}`; print it as `{}`",
                    field.escape_debug(),
                    reference(name)
                ),
            ));
        }
        if !is_name(name) {
            let hint = suggest_name(name).map(|n| format!("; did you mean `{n}`?")).unwrap_or_default();
            return Some((
                "bad_secret_name",
                format!(
                    "`{}` is not a secret name: use an upper-case letter, then upper-case letters, digits and `_` \
                     (at most 64), e.g. `API_TOKEN`{hint}",
                    name.escape_debug()
                ),
            ));
        }
        if !r.printed {
            return Some((
                "secret_not_printed",
                format!(
                    "a secret can only be printed as it is, `{}` (with any text around it): it cannot be tested, \
                     filtered, compared, joined with `~` or assigned, because only the engine knows its value, \
                     when the attempt runs",
                    reference(name)
                ),
            ));
        }
        None
    }

    fn missing(&self, path: &[String]) -> Option<Missing> {
        let at = |depth: usize, code: &'static str, why: String| Some(Missing { depth, code, why });
        let root = path.first()?.as_str();
        let key = path.get(1).map(String::as_str);
        match (root, key) {
            ("inputs", Some(name)) if !self.inputs.contains(&name) => at(1, "unknown_input", self.input_hint(name)),
            ("steps", Some(id)) => self.missing_step(id, path.get(2).map(String::as_str)),
            ("run", Some(field)) if !matches!(field, "id" | "workflow") => {
                at(1, "unknown_variable", "`run` has only `id` and `workflow`".to_string())
            }
            ("inputs" | "steps" | "run" | "signals", _) => None,
            ("output", _) if self.output => None,
            (local, _) if self.locals.contains(&local) => None,
            (other, _) => {
                let mut roots = vec!["inputs", "steps", "signals", "run"];
                roots.extend(self.locals.iter().copied());
                if self.output {
                    roots.push("output");
                }
                if self.secrets {
                    roots.push(crate::secrets::ROOT);
                }
                let hint = match crate::validate::closest(other, roots.iter().copied()) {
                    Some(c) => format!("; did you mean `{c}`?"),
                    None => String::new(),
                };
                let seen = if self.output {
                    "`compensate.with` sees `inputs`, `steps`, `signals`, `run` and `output`"
                } else if other == "output" {
                    "templates and conditions see `inputs`, `steps`, `signals` and `run` (`output` only in \
                     `compensate.with`)"
                } else if !self.locals.is_empty() {
                    &format!("this sees `inputs`, `steps`, `signals`, `run` and `{}`", self.locals.join("`, `"))
                } else {
                    "templates and conditions see `inputs`, `steps`, `signals` and `run`"
                };
                at(0, "unknown_variable", format!("nothing named `{}` exists here: {seen}{hint}", other.escape_debug()))
            }
        }
    }

    fn input_hint(&self, raw: &str) -> String {
        let name = raw.escape_debug();
        match crate::validate::closest(raw, self.inputs.iter().copied()) {
            Some(c) => format!("no input `{name}` is declared; did you mean `{c}`?"),
            None if self.inputs.is_empty() => {
                format!(
                    "the definition declares no inputs; declare it under `inputs:` (e.g. `inputs: {{{name}: {{}}}}`)"
                )
            }
            None => format!(
                "no input `{name}` is declared (declared: {}); declare it under `inputs:`",
                self.inputs.join(", ")
            ),
        }
    }

    fn missing_step(&self, id: &str, field: Option<&str>) -> Option<Missing> {
        let step = |code: &'static str, why: String| Some(Missing { depth: 1, code, why });
        if id == self.step {
            let fix = if self.output {
                "use `output` for what this step produced"
            } else {
                "a step sees only the steps it needs"
            };
            return step("self_reference", format!("a step cannot read its own result; {fix}"));
        }
        if !self.steps.contains(&id) {
            let why = match crate::validate::closest(id, self.steps.iter().copied().filter(|s| *s != self.step)) {
                Some(c) if self.visible.contains(c) => {
                    format!("there is no step `{}`; did you mean `{c}`?", id.escape_debug())
                }
                Some(c) => format!(
                    "there is no step `{}`; did you mean `{c}`? (it must also be in `needs`)",
                    id.escape_debug()
                ),
                None => format!("there is no step `{}`; {}", id.escape_debug(), self.visible_list()),
            };
            return step("unknown_step", why);
        }
        if !self.visible.contains(id) {
            return step(
                "step_not_needed",
                format!(
                    "step `{id}` is not in this step's `needs`, directly or through the steps it needs, so its \
                     result is never visible here; add `{id}` to `needs`"
                ),
            );
        }
        let has_fallback = self.with_fallback.contains(id);
        match field {
            Some("fallback") if !has_fallback => Some(Missing {
                depth: 2,
                code: "unknown_step_field",
                why: format!("`steps.{id}.fallback` exists only for a step with `on_failure: {{fallback: STEP}}`"),
            }),
            Some("iterations") if !self.loops.contains(id) => Some(Missing {
                depth: 2,
                code: "unknown_step_field",
                why: format!("`steps.{id}.iterations` exists only for a step with `loop`"),
            }),
            Some(f) if !STEP_FIELDS.contains(&f) => {
                let fields: Vec<&str> = STEP_FIELDS
                    .iter()
                    .copied()
                    .filter(|s| has_fallback || *s != "fallback")
                    .filter(|s| self.loops.contains(id) || *s != "iterations")
                    .collect();
                let hint = crate::validate::closest(f, fields.iter().copied())
                    .map(|c| format!("; did you mean `{c}`?"))
                    .unwrap_or_default();
                Some(Missing {
                    depth: 2,
                    code: "unknown_step_field",
                    why: format!("`steps.{id}` has only {}{hint}", quoted(&fields)),
                })
            }
            _ => None,
        }
    }

    fn visible_list(&self) -> String {
        let visible: Vec<&str> = self.steps.iter().copied().filter(|s| self.visible.contains(s)).collect();
        if visible.is_empty() {
            "no steps are visible here: add the steps it reads to `needs`".to_string()
        } else {
            format!("steps visible here: {}", visible.join(", "))
        }
    }
}

/// `a`, `b` and `c`.
fn quoted(items: &[&str]) -> String {
    let items: Vec<String> = items.iter().map(|i| format!("`{i}`")).collect();
    match items.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} and {last}", rest.join(", ")),
        _ => items.concat(),
    }
}

#[cfg(test)]
mod tests {
    use crate::validate::{Problem, parse_definition};

    fn problems(source: &str) -> Vec<Problem> {
        parse_definition(source, "t.yaml", &crate::kinds::for_tests()).err().unwrap_or_default()
    }

    /// (line, column, step, code, message) of each problem.
    fn brief(found: &[Problem]) -> Vec<(u64, u64, &str, &str, &str)> {
        found
            .iter()
            .map(|p| {
                (
                    p.line.unwrap_or(0),
                    p.column.unwrap_or(0),
                    p.step.as_deref().unwrap_or(""),
                    p.code,
                    p.message.as_str(),
                )
            })
            .collect()
    }

    #[track_caller]
    fn valid(source: &str) {
        let found = problems(source);
        assert!(found.is_empty(), "{:#?}", brief(&found));
    }

    #[test]
    fn a_template_reading_a_step_not_in_needs_is_refused_with_its_position() {
        let found = problems(
            "\
name: t
steps:
  - {id: a, kind: echo}
  - {id: b, kind: echo}
  - id: c
    kind: echo
    needs: [a]
    with:
      deep:
        list: [fine, \"x {{ steps.b.output.text }}\"]
",
        );
        assert_eq!(
            brief(&found),
            vec![(
                10,
                22,
                "c",
                "step_not_needed",
                "`with.deep.list[1]` reads `steps.b` (at 1:6 in the template), but step `b` is not in this step's \
                 `needs`, directly or through the steps it needs, so its result is never visible here; add `b` to \
                 `needs`"
            )]
        );
    }

    #[test]
    fn a_condition_reading_a_step_not_in_needs_is_refused_with_its_position() {
        let found = problems(
            "name: t\nsteps:\n  - {id: a, kind: echo}\n  - {id: b, kind: echo}\n  - {id: c, kind: echo, needs: [a], when: \"steps.a.status == 'completed' && steps.b.output.ok\"}\n",
        );
        assert_eq!(brief(&found).len(), 1, "{found:#?}");
        assert_eq!((found[0].line, found[0].column, found[0].code), (Some(5), Some(43), "step_not_needed"));
        assert!(
            found[0].message.starts_with("`when` reads `steps.b` (at 1:34 in the condition), but step `b`"),
            "{}",
            found[0].message
        );
    }

    #[test]
    fn a_template_reading_an_undeclared_input_is_refused_with_a_suggestion() {
        let found = problems(
            "name: t\ninputs:\n  topic: {default: otters}\n  tone: {default: dry}\nsteps:\n  - {id: a, kind: echo, with: {p: \"About {{ inputs.tpoic }}\", q: \"{{ inputs.colour | upper }}\"}}\n",
        );
        assert_eq!(
            brief(&found),
            vec![
                (
                    6,
                    35,
                    "a",
                    "unknown_input",
                    "`with.p` reads `inputs.tpoic` (at 1:10 in the template), but no input `tpoic` is declared; did \
                     you mean `topic`?"
                ),
                (
                    6,
                    66,
                    "a",
                    "unknown_input",
                    "`with.q` reads `inputs.colour` (at 1:4 in the template), but no input `colour` is declared \
                     (declared: tone, topic); declare it under `inputs:`"
                ),
            ]
        );
        // Without an `inputs:` block there are no inputs to read.
        let found = problems("name: t\nsteps:\n  - {id: a, kind: echo, when: \"inputs.go\"}\n");
        assert_eq!(
            brief(&found),
            vec![(
                3,
                31,
                "a",
                "unknown_input",
                "`when` reads `inputs.go` (at 1:1 in the condition), but the definition declares no inputs; declare \
                 it under `inputs:` (e.g. `inputs: {go: {}}`)"
            )]
        );
    }

    #[test]
    fn misspelt_steps_fields_and_variables_are_refused_with_a_suggestion() {
        let found = problems(
            "\
name: t
steps:
  - {id: fetch, kind: echo}
  - id: use
    kind: echo
    needs: [fetch]
    with:
      a: \"{{ steps.fecth.output }}\"
      b: \"{{ steps.fetch.outptu }}\"
      c: \"{{ steps.fetch.fallback }}\"
      d: \"{{ input.x }}\"
      e: \"{{ run.idd }}\"
      f: \"{{ steps.use.output }}\"
      g: \"{{ output }}\"
",
        );
        let codes: Vec<_> = brief(&found).iter().map(|b| (b.0, b.3)).collect();
        assert_eq!(
            codes,
            vec![
                (8, "unknown_step"),
                (9, "unknown_step_field"),
                (10, "unknown_step_field"),
                (11, "unknown_variable"),
                (12, "unknown_variable"),
                (13, "self_reference"),
                (14, "unknown_variable"),
            ],
            "{found:#?}"
        );
        let message = |i: usize| found[i].message.split_once(", but ").map_or("", |(_, why)| why);
        assert_eq!(message(0), "there is no step `fecth`; did you mean `fetch`?");
        assert_eq!(message(1), "`steps.fetch` has only `output`, `status` and `error`; did you mean `output`?");
        assert_eq!(message(2), "`steps.fetch.fallback` exists only for a step with `on_failure: {fallback: STEP}`");
        assert_eq!(
            message(3),
            "nothing named `input` exists here: templates and conditions see `inputs`, `steps`, `signals` and \
             `run`; did you mean `inputs`?"
        );
        assert_eq!(message(4), "`run` has only `id` and `workflow`");
        assert_eq!(message(5), "a step cannot read its own result; a step sees only the steps it needs");
        assert!(message(6).contains("(`output` only in `compensate.with`)"), "{}", message(6));
    }

    #[test]
    fn transitive_needs_signals_and_run_are_visible() {
        valid(
            "\
name: t
inputs: {topic: {}}
steps:
  - {id: a, kind: echo}
  - {id: b, kind: echo, needs: [a]}
  - id: c
    kind: echo
    needs: [b]
    when: \"steps.a.status == 'completed' && signals.go.ok && run.workflow == 't'\"
    with: {x: \"{{ steps.a.output.text }} {{ run.id }} {{ signals.anything }} {{ inputs.topic }}\"}
",
        );
    }

    #[test]
    fn a_fallback_and_the_steps_after_it_see_what_can_stand_in() {
        valid(
            "\
name: t
steps:
  - {id: fetch, kind: echo, on_failure: {fallback: cached}}
  - id: cached
    kind: echo
    with: {why: \"{{ steps.fetch.error.message }}\"}
  - id: use
    kind: echo
    needs: [fetch]
    when: \"steps.fetch.fallback == null || steps.cached.status == 'completed'\"
    with: {x: \"{{ steps.fetch.output }} {{ steps.cached.output if steps.fetch.fallback else '' }}\"}
",
        );
    }

    #[test]
    fn guarded_computed_and_tolerated_references_are_not_refused() {
        valid(
            "\
name: t
steps:
  - {id: a, kind: echo}
  - {id: b, kind: echo}
  - id: c
    kind: echo
    needs: [a]
    when: \"has(steps.b) && steps.b.output.ok || 'b' in steps\"
    with:
      guarded: \"{{ steps.b.output.text if steps.b is defined else 'none' }}\"
      tested: \"{{ inputs.x is defined }}\"
      defaulted: \"{{ inputs.x | default('y') }}\"
      computed: \"{% for n in ['a', 'b'] %}{{ steps[n] | tojson }}{% endfor %}\"
      local: \"{% set steps = 1 %}{{ steps.zzz }}\"
",
        );
    }

    #[test]
    fn a_secret_in_a_condition_or_an_approval_prompt_is_refused_with_its_position() {
        let found = problems(
            "\
name: t
steps:
  - id: a
    kind: echo
    when: \"secrets.API_TOKEN != ''\"
    approval: {prompt: \"Use {{ secrets.API_TOKEN }}?\"}
    with: {h: \"Bearer {{ secrets.API_TOKEN }}\"}
",
        );
        assert_eq!(
            brief(&found),
            vec![
                (
                    5,
                    11,
                    "a",
                    "secret_not_allowed",
                    "`when` reads `secrets.API_TOKEN` (at 1:1 in the condition), but a condition cannot read \
                     secrets: its outcome is decided by the core and journaled; secrets can be used only in `with` \
                     and `compensate.with`, where the engine puts them in when the attempt runs"
                ),
                (
                    6,
                    24,
                    "a",
                    "secret_not_allowed",
                    "`approval.prompt` reads `secrets.API_TOKEN` (at 1:8 in the template), but an approval prompt \
                     cannot show secrets: it is journaled and shown to approvers; secrets can be used only in \
                     `with` and `compensate.with`, where the engine puts them in when the attempt runs"
                ),
            ]
        );
    }

    #[test]
    fn secrets_printed_as_they_are_in_with_and_compensate_with_pass() {
        valid(
            "\
name: t
inputs: {host: {}}
steps:
  - id: a
    kind: http
    with:
      url: \"http://{{ inputs.host }}/x?key={{ secrets.API_KEY }}\"
      headers: {Authorization: \"Bearer {{ secrets.API_TOKEN }}\"}
      body: {t: \"{{ secrets.API_TOKEN if inputs.host else '' }}\"}
    compensate:
      kind: http
      with: {url: \"http://{{ inputs.host }}/undo\", headers: {X-Api-Key: \"{{ secrets.API_KEY }}\"}}
",
        );
    }

    #[test]
    fn a_secret_that_is_not_printed_as_it_is_is_refused() {
        let found = problems(
            "\
name: t
steps:
  - id: a
    kind: echo
    with:
      filtered: \"{{ secrets.API_TOKEN | upper }}\"
      tested: \"{{ 'x' if secrets.B is defined }}\"
      joined: \"{{ 'Bearer ' ~ secrets.C }}\"
      captured: \"{% filter upper %}{{ secrets.D }}{% endfilter %}\"
      lower: \"{{ secrets.api_token }}\"
      field: \"{{ secrets.E.value }}\"
      whole: \"{{ secrets }}\"
      root: \"{{ secret.F }}\"
",
        );
        let codes: Vec<_> = brief(&found).iter().map(|b| (b.0, b.3)).collect();
        assert_eq!(
            codes,
            vec![
                (6, "secret_not_printed"),
                (7, "secret_not_printed"),
                (8, "secret_not_printed"),
                (9, "secret_not_printed"),
                (10, "bad_secret_name"),
                (11, "bad_secret_reference"),
                (12, "bad_secret_reference"),
                (13, "unknown_variable"),
            ],
            "{found:#?}"
        );
        assert!(found[0].message.contains("can only be printed as it is, `{{ secrets.API_TOKEN }}`"));
        assert!(found[4].message.ends_with("did you mean `API_TOKEN`?"), "{}", found[4].message);
        assert!(found[7].message.ends_with("did you mean `secrets`?"), "{}", found[7].message);
    }

    #[test]
    fn approval_prompts_and_compensations_are_checked_too() {
        let found = problems(
            "\
name: t
steps:
  - {id: a, kind: echo}
  - id: pay
    kind: echo
    approval: {prompt: \"Pay {{ steps.a.output.amount }}?\"}
    compensate:
      kind: echo
      with: {refund: \"{{ output.id }}\", of: \"{{ steps.pay.output.id }}\"}
  - id: ship
    kind: echo
    needs: [a]
    approval: {prompt: \"Ship {{ broken\"}
",
        );
        assert_eq!(
            brief(&found).iter().map(|b| (b.0, b.1, b.3)).collect::<Vec<_>>(),
            vec![(6, 24, "step_not_needed"), (9, 45, "self_reference"), (13, 24, "bad_template")],
            "{found:#?}"
        );
        assert!(found[0].message.starts_with("`approval.prompt` reads `steps.a` (at 1:8 in the template)"));
        assert!(found[1].message.starts_with("`compensate.with.of` reads `steps.pay`"), "{}", found[1].message);
        assert!(found[1].message.ends_with("use `output` for what this step produced"), "{}", found[1].message);
    }
}
