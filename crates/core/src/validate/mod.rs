//! Definition files in, a compiled [`Definition`] (or every problem at once) out.
//!
//! **Invariant: once the document has been read, validation reports every problem it finds, each
//! with `file:line:column`**, so one `cairn validate` run is enough to fix a file. Only an error
//! that stops the parser itself (broken syntax, an unknown field, a value of the wrong type) ends
//! early, and it is then the only problem reported.
//!
//! JSON is read by the same YAML parser (a JSON document is YAML flow syntax), so locations work
//! the same for both formats.
//!
//! Validation runs in three phases, each in its own module:
//!
//! 1. `parse`: text to the raw document — structs that mirror the file format, with `Spanned`
//!    fields wherever a later check needs to point at a value. A parser error (broken syntax, an
//!    unknown or missing field, a value of the wrong type) is the one problem reported.
//! 2. `compile`: the raw document to a [`Definition`], field by field: names, defaults,
//!    durations, retry policies (`retry`), `on_failure` and `trigger`, and each step's blocks
//!    (`blocks`: templates in `with`, `compensate`, `approval`, `inject`). A value that is not
//!    valid is reported and replaced by a placeholder, so the later checks still run.
//! 3. `check`: what needs the graph: unique ids, `needs` and fallbacks that name other steps,
//!    cycles, and what each condition and template reads against what its step can see.
//!    `compile` calls each check as soon as what it needs exists (the ids before the steps, the
//!    references once the whole definition is built).
//!
//! Every phase after parsing reports into one `problems::Problems` sink (problems and warnings,
//! each with its place, plus the range, delay and timeout checks they share); the entry points
//! sort both by place at the end. `suggest` finds the "did you mean" hints.

use crate::definition::Definition;
use crate::kinds::Kinds;
use std::fmt;

mod blocks;
mod check;
mod compile;
mod dynamic;
mod external;
pub use external::{KIND_KEYS, KindProblem, external_kind, is_name as is_kind_name};
mod parse;
mod problems;
mod retry;
mod schema;
mod suggest;
#[cfg(test)]
mod tests;
mod tools;

pub use suggest::closest;

/// The longest timeout or retry delay a definition may ask for.
const DAY_MS: u64 = 24 * 3_600_000;

/// One problem found in a definition. Displays as FILE:LINE:COL: step `ID`: MESSAGE, leaving out
/// the parts that are unknown. `code` is stable, for tools and docs; the message is for people
/// and says how to fix the problem.
#[derive(Clone, Debug, PartialEq)]
pub struct Problem {
    pub file: String,
    /// 1-based line, when the problem has a place in the file.
    pub line: Option<u64>,
    /// 1-based column (in characters).
    pub column: Option<u64>,
    /// The step the problem belongs to, if any.
    pub step: Option<String>,
    /// Short stable identifier such as `duplicate_id`, `unknown_need` or `cycle`.
    pub code: &'static str,
    pub message: String,
}

impl Problem {
    /// The problem as a warning: FILE:LINE:COL: warning: step `ID`: MESSAGE.
    pub fn as_warning(&self) -> String {
        let mut out = String::new();
        self.write(&mut out, "warning: ").map(|_| out).unwrap_or_default()
    }

    fn write(&self, f: &mut dyn fmt::Write, label: &str) -> fmt::Result {
        f.write_str(&self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(column) = self.column {
                write!(f, ":{column}")?;
            }
        }
        write!(f, ": {label}")?;
        if let Some(step) = &self.step {
            write!(f, "step `{step}`: ")?;
        }
        f.write_str(&self.message)
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.write(f, "")
    }
}

impl std::error::Error for Problem {}

/// Parses a YAML or JSON definition and validates it; returns every problem at once, in source
/// order.
/// `kinds` are the step kinds the binary can run (the engine's registry, as data).
pub fn parse_definition(source: &str, file: &str, kinds: &Kinds) -> Result<Definition, Vec<Problem>> {
    parse_definition_with_warnings(source, file, kinds).0
}

/// [`parse_definition`], plus the warnings: what is valid but probably a mistake, such as a
/// literal credential in `with` (code `literal_credential`; see
/// [`crate::secrets::literal_credentials`]). Warnings come in source order, also when the
/// definition has problems (none when it cannot be read at all).
pub fn parse_definition_with_warnings(
    source: &str,
    file: &str,
    kinds: &Kinds,
) -> (Result<Definition, Vec<Problem>>, Vec<Problem>) {
    parse_definition_checking(source, file, kinds, &|_| None)
}

/// As [`parse_definition_with_warnings`], also asking `targets` about each `subworkflow` step's
/// literal `with` (its `workflow` and `version`, or its `file`): a message means the child it
/// names does not exist, reported at the name as `unknown_workflow`. The core knows no registry
/// and no files; the caller does.
pub fn parse_definition_checking(
    source: &str,
    file: &str,
    kinds: &Kinds,
    targets: &dyn Fn(&serde_json::Value) -> Option<String>,
) -> (Result<Definition, Vec<Problem>>, Vec<Problem>) {
    let raw = match parse::read(source, file) {
        Ok(raw) => raw,
        Err(problem) => return (Err(vec![problem]), Vec::new()),
    };
    let mut problems = problems::Problems { file, list: Vec::new(), warnings: Vec::new(), targets };
    let definition = compile::compile(raw, kinds, &mut problems);
    // Stable: problems at the same place keep the order the checks found them in.
    let by_place = |p: &Problem| (p.line.is_none(), p.line, p.column);
    let mut warnings = problems.warnings;
    warnings.sort_by_key(by_place);
    if problems.list.is_empty() {
        (Ok(definition), warnings)
    } else {
        let mut list = problems.list;
        list.sort_by_key(by_place);
        (Err(list), warnings)
    }
}

const EMPTY_MESSAGE: &str = "the file holds no definition: write at least `name:` and a `steps:` list";
