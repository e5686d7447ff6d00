//! The planner: turns a goal ("generate a summary and send email") into a plan, an ordinary
//! [`Definition`], built from a catalog of step templates and recipes.
//!
//! Planning is deterministic keyword matching, not a model call. The same goal and catalog always
//! give the same plan, a plan can be explained by the entries it matched, and a goal that matches
//! nothing gets an error listing what the catalog can plan. The plan is composed as a definition
//! document and parsed by [`crate::validate::parse_definition`], so it passes exactly the checks
//! a definition file does. A broken user catalog shows up as a plan error, not as a failed run.
//!
//! The file format is documented at the top of `catalog/default.yaml`, the built-in catalog.

use crate::definition::{Definition, FORMAT_VERSION};
use crate::event::{LeftOut, PlanInfo};
use crate::kinds::Kinds;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::ops::Range;

/// Where the built-in catalog lives in the source tree; error messages name it.
pub const BUILTIN_FILE: &str = "catalog/default.yaml";

/// The built-in catalog's text. It doubles as the reference for the file format, so the CLI can
/// print it for users who want to write their own.
pub const BUILTIN_SOURCE: &str = include_str!("../../../catalog/default.yaml");

/// Version of the catalog file format (`catalog: 1`, optional at the top of a file).
pub const CATALOG_FORMAT: u32 = 1;

/// The file name given to a composed plan, so validation problems say where they come from.
const PLAN_FILE: &str = "<plan>";

mod chosen;
pub use chosen::MODEL_PLAN_SYSTEM;

/// Longest slug of the goal in a plan's name (`goal-<slug>`).
const SLUG_MAX: usize = 40;

/// Words that split a goal into clauses (as do `,`, `;`, new lines and sentence ends).
const CLAUSE_WORDS: [&str; 3] = ["and", "then", "but"];

/// Words that negate the rest of their clause: what it names is left out of the plan. The
/// tokenizer drops apostrophes, so "don't" is `dont`.
const NEGATIONS: [&str; 20] = [
    "not",
    "no",
    "never",
    "without",
    "except",
    "excluding",
    "skip",
    "skipping",
    "omit",
    "neither",
    "nor",
    "dont",
    "doesnt",
    "didnt",
    "wont",
    "cant",
    "cannot",
    "shouldnt",
    "mustnt",
    "avoid",
];

/// A word right before a negation that belongs to it: "do not send email" leaves out "do".
const AUXILIARIES: [&str; 8] = ["do", "does", "did", "should", "must", "will", "would", "please"];

/// Words that plan nothing on their own: a part of a goal made only of these is dropped ("do"
/// in "do NOT notify anyone", "please").
const FILLER: [&str; 12] =
    ["do", "does", "did", "should", "must", "will", "would", "please", "just", "also", "so", "yet"];

/// Words that separate alternatives under a negation: "don't send email or notify" leaves out
/// both.
const ALTERNATIVES: [&str; 3] = ["or", "nor", "either"];

/// Step templates and recipes that goals are planned from. Names are unique per kind; merging a
/// user catalog replaces entries by name.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Catalog {
    templates: BTreeMap<String, Template>,
    recipes: BTreeMap<String, Recipe>,
}

/// One step a goal clause can turn into. Its name becomes the step id.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Template {
    pub description: String,
    /// Phrases that select this template; a phrase matches a clause when all its words occur in
    /// it. A template without keywords is only reachable through recipes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keywords: Vec<String>,
    /// How a user would ask for this; shown by [`Catalog::describe`] (default: first keyword).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub example: Option<String>,
    /// A definition step without `id` and `needs` (the planner supplies those).
    pub step: Map<String, Value>,
    /// The plan's artifact file when this template ends the plan.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact: Option<String>,
}

/// A named sequence of templates, chosen when a clause contains all of its keyword phrases.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    pub name: String,
    pub description: String,
    /// Phrases that must all occur for the recipe to match.
    pub keywords: Vec<String>,
    /// How a user would ask for this (default: the keywords joined).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub example: Option<String>,
    /// Template names, run in this order, each after the one before.
    pub steps: Vec<String>,
    /// The plan's artifact file when this recipe ends the plan.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact: Option<String>,
}

impl Template {
    /// A phrasing that plans this template, if it can be planned on its own.
    pub fn example(&self) -> Option<String> {
        self.example.clone().or_else(|| self.keywords.first().cloned())
    }
}

impl Recipe {
    /// A phrasing that plans this recipe.
    pub fn example(&self) -> String {
        self.example.clone().unwrap_or_else(|| self.keywords.join(" "))
    }
}

/// The catalog file as written; [`Catalog::from_yaml`] checks it and indexes recipes by name.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CatalogFile {
    #[serde(default)]
    catalog: Option<u32>,
    #[serde(default)]
    templates: BTreeMap<String, Template>,
    #[serde(default)]
    recipes: Vec<Recipe>,
}

/// Why a goal could not be planned.
#[derive(Clone, Debug, PartialEq)]
pub enum PlanError {
    /// The goal has no words to match.
    EmptyGoal { can_plan: Vec<String> },
    /// A clause of the goal matches no recipe or template. `can_plan` is [`Catalog::describe`].
    Unmatched { goal: String, clause: String, can_plan: Vec<String> },
    /// Every part of the goal that names something is negated ("do not notify anyone").
    NothingLeft { goal: String, left_out: Vec<LeftOut>, can_plan: Vec<String> },
    /// A recipe names a template the catalog does not define.
    UnknownTemplate { recipe: String, template: String },
    /// The composed plan is not a valid definition: a catalog entry behind it is broken.
    Invalid { goal: String, matched: Vec<String>, problems: Vec<String> },
    /// A plan chosen outside the matcher (by a model) names what is not there.
    Chosen { goal: String, problems: Vec<String> },
}

impl std::error::Error for PlanError {}

impl fmt::Display for PlanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PlanError::EmptyGoal { can_plan } => {
                writeln!(f, "the goal is empty: say in words what the run should do")?;
                write_can_plan(f, can_plan)
            }
            PlanError::Unmatched { goal, clause, can_plan } => {
                writeln!(
                    f,
                    "cannot plan \"{clause}\" (part of the goal \"{goal}\"): no recipe or template in the catalog \
                     matches it"
                )?;
                write_can_plan(f, can_plan)
            }
            PlanError::NothingLeft { goal, left_out, can_plan } => {
                let info =
                    PlanInfo { goal: goal.clone(), matched: Vec::new(), left_out: left_out.clone(), planner: None };
                let what = info.left_out_text().unwrap_or_else(|| "everything it names is negated".to_string());
                writeln!(
                    f,
                    "the goal \"{goal}\" leaves nothing to plan ({what}): say what the run should do, not only what \
                     it should not"
                )?;
                write_can_plan(f, can_plan)
            }
            PlanError::UnknownTemplate { recipe, template } => write!(
                f,
                "catalog recipe `{recipe}` uses template `{template}`, which the catalog does not define: \
                 add the template or fix the recipe's `steps` in the file passed with --catalog"
            ),
            PlanError::Chosen { goal, problems } => {
                write!(f, "the plan chosen for \"{goal}\" cannot run:")?;
                for problem in problems {
                    write!(f, "\n  - {problem}")?;
                }
                Ok(())
            }
            PlanError::Invalid { goal, matched, problems } => {
                write!(
                    f,
                    "the plan for \"{goal}\" (from {}) is not a valid definition, so a catalog entry is broken; \
                     fix it in the file passed with --catalog:",
                    matched.join(", ")
                )?;
                for problem in problems {
                    write!(f, "\n  - {problem}")?;
                }
                Ok(())
            }
        }
    }
}

fn write_can_plan(f: &mut fmt::Formatter<'_>, can_plan: &[String]) -> fmt::Result {
    if can_plan.is_empty() {
        writeln!(f, "The catalog is empty.")?;
    } else {
        writeln!(f, "The catalog can plan:")?;
        for line in can_plan {
            writeln!(f, "  {line}")?;
        }
    }
    write!(
        f,
        "Rephrase the goal with these words, or teach the planner new steps: write templates or recipes \
         in a YAML file (format: {BUILTIN_FILE}) and pass --catalog FILE."
    )
}

/// A catalog entry a clause matched.
#[derive(Clone, Copy)]
enum Entry<'a> {
    Recipe(&'a Recipe),
    Template(&'a str, &'a Template),
}

impl Entry<'_> {
    fn name(&self) -> &str {
        match self {
            Entry::Recipe(r) => &r.name,
            Entry::Template(name, _) => name,
        }
    }
}

impl Catalog {
    /// The catalog shipped with Cairn (`catalog/default.yaml`, compiled in).
    pub fn builtin() -> Result<Catalog, String> {
        Catalog::from_yaml(BUILTIN_SOURCE, BUILTIN_FILE)
    }

    /// Parses and checks a catalog file. `file` names it in errors; every problem found is
    /// reported, one per line.
    pub fn from_yaml(source: &str, file: &str) -> Result<Catalog, String> {
        let parsed: CatalogFile =
            serde_saphyr::from_str(source).map_err(|e| format!("{file}: {}", e.without_snippet()))?;
        let mut problems = Vec::new();
        if let Some(version) = parsed.catalog
            && version != CATALOG_FORMAT
        {
            problems.push(format!(
                "`catalog: {version}` is not a catalog format this version of Cairn reads; use `catalog: {CATALOG_FORMAT}`"
            ));
        }
        for (name, template) in &parsed.templates {
            check_template(name, template, &mut problems);
        }
        let mut recipes = BTreeMap::new();
        for recipe in parsed.recipes {
            check_recipe(&recipe, &mut problems);
            if recipes.contains_key(&recipe.name) {
                problems.push(format!("recipe `{}` is defined twice; names must be unique", recipe.name));
            } else {
                recipes.insert(recipe.name.clone(), recipe);
            }
        }
        if problems.is_empty() {
            Ok(Catalog { templates: parsed.templates, recipes })
        } else {
            Err(problems.iter().map(|p| format!("{file}: {p}")).collect::<Vec<_>>().join("\n"))
        }
    }

    /// Adds `other`'s entries; an entry with an existing name replaces it. This is how a user's
    /// `--catalog FILE` extends and overrides the built-in catalog.
    pub fn merge(&mut self, other: Catalog) {
        self.templates.extend(other.templates);
        self.recipes.extend(other.recipes);
    }

    pub fn template(&self, name: &str) -> Option<&Template> {
        self.templates.get(name)
    }

    pub fn recipe(&self, name: &str) -> Option<&Recipe> {
        self.recipes.get(name)
    }

    /// Templates by name, in name order.
    pub fn templates(&self) -> impl Iterator<Item = (&str, &Template)> {
        self.templates.iter().map(|(name, t)| (name.as_str(), t))
    }

    /// Recipes in name order.
    pub fn recipes(&self) -> impl Iterator<Item = &Recipe> {
        self.recipes.values()
    }

    /// One line per recipe, then per template: name, description and a phrasing that plans it.
    pub fn describe(&self) -> Vec<String> {
        let recipes = self.recipes.values().map(|r| {
            format!(
                "{}: {} (e.g. \"{}\"; recipe: {})",
                r.name,
                one_line(&r.description),
                r.example(),
                r.steps.join(" -> ")
            )
        });
        let templates = self.templates.iter().map(|(name, t)| match t.example() {
            Some(example) => format!("{name}: {} (e.g. \"{example}\")", one_line(&t.description)),
            None => format!("{name}: {} (used by recipes only)", one_line(&t.description)),
        });
        recipes.chain(templates).collect()
    }

    /// Plans `goal`. The goal is split into clauses ("and", "then", "but", `,`, `;`, sentence
    /// ends); each clause becomes the recipe whose keyword phrases all occur in it, or else the
    /// template whose keywords match it best. Steps run in clause order, each after the one
    /// before.
    ///
    /// A negation ("not", "don't", "never", "without", "except", "skip", "no", ...) covers the
    /// rest of its clause: what that part names is left out, even from a recipe planned by
    /// another clause, unless another clause asks for it outright. The plan lists what was left
    /// out and the words that said so.
    ///
    /// If some clause matches nothing, a recipe whose keywords are spread over the whole goal
    /// ("onboard the vendor, onboarding checks first") is tried before giving up.
    /// The plan is checked like any definition, against `kinds`.
    pub fn plan(&self, goal: &str, kinds: &Kinds) -> Result<(Definition, PlanInfo), PlanError> {
        // Clauses come from the raw text: a new line separates clauses, so it must not be
        // collapsed first. The plan records the goal on one line.
        let parts = parts(goal);
        let goal_line = one_line(goal);
        if parts.is_empty() {
            return Err(PlanError::EmptyGoal { can_plan: self.describe() });
        }
        let (negated, positive): (Vec<&Part>, Vec<&Part>) = parts.iter().partition(|p| p.negated);
        let mut entries = Vec::with_capacity(positive.len());
        let mut unmatched = None;
        for part in &positive {
            match self.match_clause(&part.words) {
                Some(entry) => entries.push(entry),
                None => {
                    unmatched.get_or_insert_with(|| part.words.join(" "));
                }
            }
        }
        if let Some(clause) = unmatched {
            let words: Vec<String> = positive.iter().flat_map(|p| p.words.iter().cloned()).collect();
            match self.best_recipe(&words) {
                Some(recipe) => entries = vec![Entry::Recipe(recipe)],
                None => return Err(PlanError::Unmatched { goal: goal_line, clause, can_plan: self.describe() }),
            }
        }
        let mut left_out: Vec<LeftOut> = Vec::new();
        for part in negated {
            for alternative in part.words.split(|w| ALTERNATIVES.contains(&w.as_str())) {
                let Some(entry) = self.match_clause(alternative) else { continue };
                let asked = entries.iter().any(|e| e.name() == entry.name());
                if !asked && !left_out.iter().any(|l| l.entry == entry.name()) {
                    left_out.push(LeftOut { entry: entry.name().to_string(), because: part.text.clone() });
                }
            }
        }
        if entries.is_empty() {
            return Err(PlanError::NothingLeft { goal: goal_line, left_out, can_plan: self.describe() });
        }
        self.build(&goal_line, &entries, left_out, kinds)
    }

    /// Checks every entry: each must compose into a valid definition on its own, and its example
    /// phrasing must plan to that entry (not to a better-matching neighbour). Returns problems,
    /// one line each; empty means the catalog is sound. Meant for the built-in catalog's tests
    /// and for checking a user catalog after [`Catalog::merge`].
    pub fn check(&self, kinds: &Kinds) -> Vec<String> {
        let mut problems = Vec::new();
        for (name, recipe) in &self.recipes {
            let example = recipe.example();
            match self.build(&example, &[Entry::Recipe(recipe)], Vec::new(), kinds) {
                Ok(_) => self.check_routing(&format!("recipe `{name}`"), name, &example, kinds, &mut problems),
                Err(e) => problems.push(format!("recipe `{name}`: {e}")),
            }
        }
        for (name, template) in &self.templates {
            let example = template.example();
            let goal = example.clone().unwrap_or_else(|| name.clone());
            match self.build(&goal, &[Entry::Template(name, template)], Vec::new(), kinds) {
                Ok(_) => {
                    if let Some(example) = example {
                        self.check_routing(&format!("template `{name}`"), name, &example, kinds, &mut problems);
                    }
                }
                Err(e) => problems.push(format!("template `{name}`: {e}")),
            }
        }
        problems
    }

    fn check_routing(&self, what: &str, name: &str, example: &str, kinds: &Kinds, problems: &mut Vec<String>) {
        match self.plan(example, kinds) {
            Ok((_, info)) if info.matched == [name] => {}
            Ok((_, info)) => problems.push(format!(
                "{what}: its example \"{example}\" plans as {} instead; make the example or keywords more specific",
                info.matched.join(" -> ")
            )),
            Err(e) => problems.push(format!("{what}: its example \"{example}\" does not plan: {e}")),
        }
    }

    fn match_clause(&self, clause: &[String]) -> Option<Entry<'_>> {
        if let Some(recipe) = self.best_recipe(clause) {
            return Some(Entry::Recipe(recipe));
        }
        self.best_template(clause).map(|(name, t)| Entry::Template(name, t))
    }

    /// The recipe whose keyword phrases all occur in `words`: most phrases, then most keyword
    /// words, then first by name.
    fn best_recipe(&self, words: &[String]) -> Option<&Recipe> {
        let mut best: Option<((usize, usize), &Recipe)> = None;
        for recipe in self.recipes.values() {
            let Some(score) = recipe_score(recipe, words) else { continue };
            if best.is_none_or(|(top, _)| score > top) {
                best = Some((score, recipe));
            }
        }
        best.map(|(_, recipe)| recipe)
    }

    /// The template matching `clause` best: longest matching phrase, then most clause words
    /// covered, then the earliest matched word (goals lead with the verb: "summarise the
    /// documents" is a summary), then first by name.
    fn best_template(&self, clause: &[String]) -> Option<(&str, &Template)> {
        let mut best: Option<(TemplateScore, &str, &Template)> = None;
        for (name, template) in &self.templates {
            let Some(score) = template_score(template, clause) else { continue };
            if best.as_ref().is_none_or(|(top, _, _)| score > *top) {
                best = Some((score, name.as_str(), template));
            }
        }
        best.map(|(_, name, template)| (name, template))
    }

    /// Composes the definition for `entries` and validates it like a file. A recipe's templates
    /// that the goal left out are dropped from it.
    fn build(
        &self,
        goal: &str,
        entries: &[Entry<'_>],
        left_out: Vec<LeftOut>,
        kinds: &Kinds,
    ) -> Result<(Definition, PlanInfo), PlanError> {
        let mut chain: Vec<(&str, &Template)> = Vec::new();
        for entry in entries {
            match *entry {
                Entry::Template(name, template) => chain.push((name, template)),
                Entry::Recipe(recipe) => {
                    for name in recipe.steps.iter().filter(|name| !left_out.iter().any(|l| l.entry == **name)) {
                        let template = self.templates.get(name).ok_or_else(|| PlanError::UnknownTemplate {
                            recipe: recipe.name.clone(),
                            template: name.clone(),
                        })?;
                        chain.push((name, template));
                    }
                }
            }
        }
        // The artifact holds the run's final output, so only the entry that ends the plan may
        // name it: "vendor onboarding review and notify the team" ends with a notification, not
        // with the onboarding decision.
        let artifact = match entries.last() {
            Some(Entry::Recipe(recipe)) => {
                recipe.artifact.clone().or_else(|| chain.last().and_then(|(_, t)| t.artifact.clone()))
            }
            Some(Entry::Template(_, template)) => template.artifact.clone(),
            None => None,
        };

        if chain.is_empty() {
            return Err(PlanError::NothingLeft { goal: goal.to_string(), left_out, can_plan: self.describe() });
        }
        let mut used = BTreeSet::new();
        let mut previous: Option<String> = None;
        let mut steps = Vec::with_capacity(chain.len());
        for (name, template) in chain {
            // The same template twice ("summarise, translate, summarise") needs distinct ids.
            let mut id = name.to_string();
            let mut n = 1;
            while used.contains(&id) {
                n += 1;
                id = format!("{name}_{n}");
            }
            used.insert(id.clone());
            let mut step = template.step.clone();
            step.insert("id".into(), Value::String(id.clone()));
            if let Some(previous) = previous.replace(id) {
                step.insert("needs".into(), json!([previous]));
            }
            steps.push(Value::Object(step));
        }

        let matched: Vec<String> = entries.iter().map(|e| e.name().to_string()).collect();
        let (definition, mut info) = finish(goal, steps, artifact, matched, kinds)?;
        info.left_out = left_out;
        Ok((definition, info))
    }
}

/// The plan's definition document around its steps, validated like a file.
fn finish(
    goal: &str,
    steps: Vec<Value>,
    artifact: Option<String>,
    matched: Vec<String>,
    kinds: &Kinds,
) -> Result<(Definition, PlanInfo), PlanError> {
    {
        let mut doc = Map::new();
        doc.insert("cairn".into(), json!(FORMAT_VERSION));
        doc.insert("name".into(), Value::String(plan_name(goal)));
        doc.insert("description".into(), Value::String(goal.to_string()));
        doc.insert(
            "inputs".into(),
            json!({"goal": {"description": "The goal this plan was made from.", "default": goal}}),
        );
        if let Some(artifact) = artifact {
            doc.insert("artifact".into(), Value::String(artifact));
        }
        doc.insert("steps".into(), Value::Array(steps));

        let invalid =
            |problems: Vec<String>| PlanError::Invalid { goal: goal.to_string(), matched: matched.clone(), problems };
        let text = serde_json::to_string_pretty(&Value::Object(doc)).map_err(|e| invalid(vec![e.to_string()]))?;
        let definition = crate::validate::parse_definition(&text, PLAN_FILE, kinds)
            .map_err(|problems| invalid(problems.iter().map(ToString::to_string).collect()))?;
        Ok((definition, PlanInfo { goal: goal.to_string(), matched, left_out: Vec::new(), planner: None }))
    }
}

fn check_template(name: &str, template: &Template, problems: &mut Vec<String>) {
    if !is_step_id(name) {
        problems.push(format!(
            "template `{name}`: a template's name becomes its step id, so use only a-z, 0-9, '_' and '-'"
        ));
    }
    for key in ["id", "needs"] {
        if template.step.contains_key(key) {
            problems.push(format!(
                "template `{name}`: remove `step.{key}`; the planner sets `id` (the template name) and `needs` \
                 (the step before it)"
            ));
        }
    }
    if !matches!(template.step.get("kind"), Some(Value::String(_))) {
        problems.push(format!("template `{name}`: `step.kind` is required (a step kind; `cairn kinds` lists them)"));
    }
    for keyword in &template.keywords {
        if let Some(problem) = keyword_problem(keyword) {
            problems.push(format!("template `{name}`: {problem}"));
        }
    }
}

fn check_recipe(recipe: &Recipe, problems: &mut Vec<String>) {
    let name = &recipe.name;
    if !is_step_id(name) {
        problems.push(format!("recipe `{name}`: use only a-z, 0-9, '_' and '-' in recipe names"));
    }
    if recipe.keywords.is_empty() {
        problems.push(format!("recipe `{name}`: give it at least one keyword phrase, or it would match every goal"));
    }
    if recipe.steps.is_empty() {
        problems.push(format!("recipe `{name}`: `steps` must name at least one template"));
    }
    for keyword in &recipe.keywords {
        if let Some(problem) = keyword_problem(keyword) {
            problems.push(format!("recipe `{name}`: {problem}"));
        }
    }
}

/// Why a keyword phrase could never match a clause, if it could not.
fn keyword_problem(keyword: &str) -> Option<String> {
    let tokens: Vec<Token> = tokenize(keyword).into_iter().map(|(t, _)| t).collect();
    if tokens.contains(&Token::Break) {
        return Some(format!(
            "keyword `{keyword}` contains punctuation that splits a goal into clauses (, ; . ! ? or a new line), \
             so it could never match"
        ));
    }
    let words: Vec<&str> = tokens
        .iter()
        .filter_map(|t| match t {
            Token::Word(w) => Some(w.as_str()),
            Token::Break => None,
        })
        .collect();
    if words.is_empty() {
        return Some(format!("keyword `{keyword}` has no words"));
    }
    if let Some(word) = words.iter().copied().find(|w| CLAUSE_WORDS.contains(w)) {
        return Some(format!(
            "keyword `{keyword}` contains `{word}`, which splits a goal into clauses, so it could never match"
        ));
    }
    if let Some(word) = words.iter().copied().find(|w| NEGATIONS.contains(w)) {
        return Some(format!(
            "keyword `{keyword}` contains `{word}`, which negates the rest of a clause, so it could only ever \
             leave the entry out"
        ));
    }
    None
}

fn is_step_id(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

#[derive(Debug, PartialEq)]
enum Token {
    Word(String),
    /// Punctuation that ends a clause.
    Break,
}

/// Lowercased words and clause breaks, each with the bytes of `text` it came from. Apostrophes
/// vanish ("vendor's" is "vendors", "don't" is "dont"); other punctuation separates words; `,`
/// `;` new lines and sentence ends (`.` `!` `?` before a space or the end) are breaks.
fn tokenize(text: &str) -> Vec<(Token, Range<usize>)> {
    let mut tokens = Vec::new();
    let mut word = String::new();
    let mut span = 0..0;
    let mut chars = text.char_indices().peekable();
    while let Some((at, c)) = chars.next() {
        if c.is_alphanumeric() {
            if word.is_empty() {
                span.start = at;
            }
            word.extend(c.to_lowercase());
            span.end = at + c.len_utf8();
            continue;
        }
        if matches!(c, '\'' | '\u{2019}') {
            continue;
        }
        if !word.is_empty() {
            tokens.push((Token::Word(std::mem::take(&mut word)), span.clone()));
        }
        let sentence_end = matches!(c, '.' | '!' | '?') && chars.peek().is_none_or(|(_, next)| next.is_whitespace());
        if matches!(c, ',' | ';' | '\n') || sentence_end {
            tokens.push((Token::Break, at..at + c.len_utf8()));
        }
    }
    if !word.is_empty() {
        tokens.push((Token::Word(word), span));
    }
    tokens
}

/// The goal's clauses, each a list of words with their spans, without the words and breaks that
/// separate them.
fn clauses(goal: &str) -> Vec<Vec<(String, Range<usize>)>> {
    let mut out = Vec::new();
    let mut current = Vec::new();
    for (token, span) in tokenize(goal) {
        match token {
            Token::Word(word) if !CLAUSE_WORDS.contains(&word.as_str()) => current.push((word, span)),
            _ => {
                if !current.is_empty() {
                    out.push(std::mem::take(&mut current));
                }
            }
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// A stretch of a goal planned as a unit: a clause, or the part of a clause before a negation,
/// or the negated rest of it.
#[derive(Debug, PartialEq)]
struct Part {
    words: Vec<String>,
    /// The goal's own text for it; a negated part starts at its negation ("do NOT notify anyone").
    text: String,
    negated: bool,
}

/// The goal's clauses, each split at its first negation word: the words before it (unless they
/// are only filler such as "do" or "please") and the negated rest.
fn parts(goal: &str) -> Vec<Part> {
    let mut out = Vec::new();
    for clause in clauses(goal) {
        let text = |words: &[(String, Range<usize>)]| match (words.first(), words.last()) {
            (Some((_, first)), Some((_, last))) => goal[first.start..last.end].to_string(),
            _ => String::new(),
        };
        let plain = |words: &[(String, Range<usize>)]| words.iter().map(|(w, _)| w.clone()).collect::<Vec<_>>();
        let has_content = |words: &[(String, Range<usize>)]| words.iter().any(|(w, _)| !FILLER.contains(&w.as_str()));
        let Some(n) = clause.iter().position(|(w, _)| NEGATIONS.contains(&w.as_str())) else {
            if has_content(&clause) {
                out.push(Part { words: plain(&clause), text: text(&clause), negated: false });
            }
            continue;
        };
        let from = if n > 0 && AUXILIARIES.contains(&clause[n - 1].0.as_str()) { n - 1 } else { n };
        if has_content(&clause[..from]) {
            out.push(Part { words: plain(&clause[..from]), text: text(&clause[..from]), negated: false });
        }
        out.push(Part { words: plain(&clause[n + 1..]), text: text(&clause[from..]), negated: true });
    }
    out
}

fn words(text: &str) -> Vec<String> {
    tokenize(text)
        .into_iter()
        .filter_map(|(t, _)| match t {
            Token::Word(w) => Some(w),
            Token::Break => None,
        })
        .collect()
}

/// A keyword word matches the same word or a plural of it ("document" matches "documents").
fn word_matches(keyword: &str, word: &str) -> bool {
    word.strip_prefix(keyword).is_some_and(|rest| matches!(rest, "" | "s" | "es"))
}

/// Where each word of `phrase` occurs in `clause`, or `None` if one is missing.
fn phrase_hits(phrase: &[String], clause: &[String]) -> Option<Vec<usize>> {
    if phrase.is_empty() {
        return None;
    }
    phrase.iter().map(|p| clause.iter().position(|w| word_matches(p, w))).collect()
}

/// (keyword phrases, keyword words) if every phrase of the recipe occurs in `words`.
fn recipe_score(recipe: &Recipe, words_in: &[String]) -> Option<(usize, usize)> {
    if recipe.keywords.is_empty() {
        return None;
    }
    let mut total = 0;
    for keyword in &recipe.keywords {
        let phrase = words(keyword);
        phrase_hits(&phrase, words_in)?;
        total += phrase.len();
    }
    Some((recipe.keywords.len(), total))
}

/// Larger is better: (words in the longest matching phrase, clause words covered by matching
/// phrases, earliness of the first matched word).
type TemplateScore = (usize, usize, std::cmp::Reverse<usize>);

fn template_score(template: &Template, clause: &[String]) -> Option<TemplateScore> {
    let mut longest = 0;
    let mut covered = vec![false; clause.len()];
    for keyword in &template.keywords {
        let phrase = words(keyword);
        let Some(hits) = phrase_hits(&phrase, clause) else { continue };
        longest = longest.max(phrase.len());
        for hit in hits {
            covered[hit] = true;
        }
    }
    let first = covered.iter().position(|c| *c)?;
    Some((longest, covered.iter().filter(|c| **c).count(), std::cmp::Reverse(first)))
}

/// `goal-<slug>`: the goal's ASCII words joined by '-', cut at a word boundary to 40 characters.
/// A goal with no ASCII words gets a short hash instead, so the name stays valid and stable.
fn plan_name(goal: &str) -> String {
    let mut slug = String::new();
    for word in words(goal) {
        let word: String = word.chars().filter(|c| c.is_ascii_alphanumeric()).collect();
        if word.is_empty() {
            continue;
        }
        let needed = if slug.is_empty() { word.len() } else { word.len() + 1 };
        if slug.len() + needed > SLUG_MAX {
            if slug.is_empty() {
                slug.push_str(&word[..SLUG_MAX]);
            }
            break;
        }
        if !slug.is_empty() {
            slug.push('-');
        }
        slug.push_str(&word);
    }
    if slug.is_empty() {
        use sha2::{Digest, Sha256};
        let digest = Sha256::digest(goal.as_bytes());
        slug = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
    }
    format!("goal-{slug}")
}

/// Collapses all whitespace runs (new lines included) to single spaces.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn builtin() -> Catalog {
        Catalog::builtin().unwrap_or_else(|e| panic!("built-in catalog: {e}"))
    }

    fn plan(catalog: &Catalog, goal: &str) -> (Definition, PlanInfo) {
        catalog.plan(goal, &crate::kinds::for_tests()).unwrap_or_else(|e| panic!("planning {goal:?}: {e}"))
    }

    /// (step id, its needs) for each step, in order.
    fn shape(def: &Definition) -> Vec<(String, Vec<String>)> {
        def.steps.iter().map(|s| (s.id.to_string(), s.needs.iter().map(ToString::to_string).collect())).collect()
    }

    fn chain(ids: &[&str]) -> Vec<(String, Vec<String>)> {
        ids.iter()
            .enumerate()
            .map(|(i, id)| (id.to_string(), if i == 0 { vec![] } else { vec![ids[i - 1].to_string()] }))
            .collect()
    }

    #[test]
    fn builtin_catalog_parses_and_every_entry_plans_and_routes_to_itself() {
        let catalog = builtin();
        assert!(catalog.templates().count() >= 9, "{:?}", catalog.describe());
        assert!(catalog.recipes().count() >= 2);
        let problems = catalog.check(&crate::kinds::for_tests());
        assert!(problems.is_empty(), "built-in catalog problems:\n{}", problems.join("\n"));
        for line in catalog.describe() {
            assert!(line.contains("e.g. \""), "describe line without an example: {line}");
        }
    }

    #[test]
    fn summary_then_email() {
        let catalog = builtin();
        let goal = "generate summary and send email";
        let (def, info) = plan(&catalog, goal);
        assert_eq!(shape(&def), chain(&["generate_summary", "send_email"]));
        let matched = vec!["generate_summary".into(), "send_email".into()];
        assert_eq!(info, PlanInfo { goal: goal.into(), matched, left_out: Vec::new(), planner: None });
        assert_eq!(def.name, "goal-generate-summary-and-send-email");
        assert_eq!(def.description.as_deref(), Some(goal));
        assert_eq!(def.inputs["goal"].default, Some(json!(goal)));
        assert_eq!(def.artifact, None);
        assert_eq!(def.steps[0].kind, "mock_model");
        assert_eq!(def.steps[1].with["to"], json!("team@example.com"));
        // Deterministic: planning again gives the identical plan.
        assert_eq!(catalog.plan(goal, &crate::kinds::for_tests()), Ok((def, info)));
    }

    #[test]
    fn vendor_onboarding_uses_the_recipe_and_its_artifact() {
        let (def, info) = plan(&builtin(), "vendor onboarding review");
        assert_eq!(shape(&def), chain(&["docs_collect", "policy_screen", "final_decision"]));
        assert_eq!(info.matched, vec!["vendor_onboarding"]);
        assert_eq!(def.artifact.as_deref(), Some("onboarding_decision.json"));
        assert_eq!(def.steps[1].with["respond"]["risk"], json!("medium"));
        assert_eq!(def.steps[2].with["respond"]["decision"], json!("approved_with_controls"));
    }

    #[test]
    fn clauses_keep_their_order() {
        let catalog = builtin();
        let (def, _) = plan(&catalog, "send email, then generate a summary");
        assert_eq!(shape(&def), chain(&["send_email", "generate_summary"]));
        let (def, info) =
            plan(&catalog, "research the topic; summarise it then translate to French and notify the team");
        assert_eq!(shape(&def), chain(&["fetch_context", "generate_summary", "translate", "notify"]));
        assert_eq!(info.matched.len(), 4);
    }

    #[test]
    fn case_punctuation_and_spacing_do_not_matter() {
        let catalog = builtin();
        let (reference, _) = plan(&catalog, "generate summary and send email");
        for goal in [
            "Generate SUMMARY and Send Email",
            "  generate   a summary...   then, SEND the e-mail!!  ",
            "Generate a summary. Send emails.",
            "generate summary\nsend email",
        ] {
            let (def, _) = plan(&catalog, goal);
            assert_eq!(shape(&def), shape(&reference), "goal {goal:?}");
        }
        let (def, _) = plan(&catalog, "VENDOR-ONBOARDING review!");
        assert_eq!(def.artifact.as_deref(), Some("onboarding_decision.json"));
    }

    #[test]
    fn the_leading_verb_breaks_ties() {
        let catalog = builtin();
        let (def, _) = plan(&catalog, "summarise the documents");
        assert_eq!(shape(&def), chain(&["generate_summary"]));
        let (def, _) = plan(&catalog, "email the summary");
        assert_eq!(shape(&def), chain(&["send_email"]));
    }

    #[test]
    fn a_recipe_can_be_followed_by_templates_and_the_last_entry_owns_the_artifact() {
        let (def, info) = plan(&builtin(), "vendor onboarding review and notify the team");
        assert_eq!(shape(&def), chain(&["docs_collect", "policy_screen", "final_decision", "notify"]));
        assert_eq!(info.matched, vec!["vendor_onboarding", "notify"]);
        assert_eq!(def.artifact, None);
        let (def, _) = plan(&builtin(), "decide");
        assert_eq!(def.artifact.as_deref(), Some("decision.json"));
    }

    fn left_out(info: &PlanInfo) -> Vec<(&str, &str)> {
        info.left_out.iter().map(|l| (l.entry.as_str(), l.because.as_str())).collect()
    }

    #[test]
    fn a_negated_clause_adds_no_step_and_the_plan_says_what_it_left_out() {
        let (def, info) = plan(&builtin(), "summarize the report but do not send email");
        assert_eq!(shape(&def), chain(&["generate_summary"]));
        assert_eq!(info.matched, vec!["generate_summary"]);
        assert_eq!(left_out(&info), [("send_email", "do not send email")]);
        assert_eq!(info.left_out_text().as_deref(), Some("left out: send_email (\"do not send email\")"));
    }

    #[test]
    fn every_negation_phrasing_leaves_its_step_out() {
        let catalog = builtin();
        for negated in [
            "do not send email",
            "don't send email",
            "DON'T SEND EMAIL",
            "never send email",
            "without sending email",
            "except the email",
            "skip the email",
            "no email",
            "do NOT email anyone",
        ] {
            let goal = format!("generate a summary, {negated}");
            let (def, info) = plan(&catalog, &goal);
            assert_eq!(shape(&def), chain(&["generate_summary"]), "{goal:?}");
            assert_eq!(left_out(&info), [("send_email", negated)], "{goal:?}");
        }
    }

    #[test]
    fn a_negated_clause_and_a_positive_one_naming_different_steps_plan_only_the_positive() {
        let catalog = builtin();
        let (def, info) = plan(&catalog, "don't notify the team, send email");
        assert_eq!(shape(&def), chain(&["send_email"]));
        assert_eq!(left_out(&info), [("notify", "don't notify the team")]);

        // A negation covers the rest of its clause, alternatives included; "but" ends it.
        let (def, info) = plan(&catalog, "never send email or notify anyone; summarise");
        assert_eq!(shape(&def), chain(&["generate_summary"]));
        assert_eq!(
            left_out(&info),
            [("send_email", "never send email or notify anyone"), ("notify", "never send email or notify anyone")]
        );
        let (def, info) = plan(&catalog, "do not send email but notify the team");
        assert_eq!(shape(&def), chain(&["notify"]));
        assert_eq!(left_out(&info), [("send_email", "do not send email")]);

        // Asked for outright wins over a negation elsewhere in the goal.
        let (def, info) = plan(&catalog, "send email, but do not send email");
        assert_eq!((shape(&def), info.left_out), (chain(&["send_email"]), Vec::new()));
    }

    #[test]
    fn a_negated_template_is_dropped_from_a_recipe() {
        let (def, info) = plan(&builtin(), "vendor onboarding review but skip the policy screen");
        assert_eq!(shape(&def), chain(&["docs_collect", "final_decision"]));
        assert_eq!(info.matched, vec!["vendor_onboarding"]);
        assert_eq!(left_out(&info), [("policy_screen", "skip the policy screen")]);
    }

    #[test]
    fn uppercase_not_plans_nothing_and_the_error_says_what_was_left_out() {
        let catalog = builtin();
        let err = catalog.plan("do NOT notify anyone", &crate::kinds::for_tests()).err();
        let Some(PlanError::NothingLeft { goal, left_out, can_plan }) = &err else { panic!("{err:?}") };
        assert_eq!(goal, "do NOT notify anyone");
        assert_eq!(left_out, &vec![LeftOut { entry: "notify".into(), because: "do NOT notify anyone".into() }]);
        assert_eq!(can_plan, &catalog.describe());
        let text = err.map(|e| e.to_string()).unwrap_or_default();
        assert!(
            text.starts_with(
                "the goal \"do NOT notify anyone\" leaves nothing to plan (left out: notify (\"do NOT notify anyone\")): \
                 say what the run should do"
            ),
            "{text}"
        );
        assert!(text.contains("The catalog can plan:") && text.contains("--catalog FILE"), "{text}");

        // Negated words that name nothing leave nothing out, and plan nothing either.
        let err = catalog.plan("please don't do anything", &crate::kinds::for_tests()).err();
        assert!(matches!(&err, Some(PlanError::NothingLeft { left_out, .. }) if left_out.is_empty()), "{err:?}");
    }

    #[test]
    fn recipe_keywords_may_span_clauses() {
        let (_, info) = plan(&builtin(), "check the vendor, onboarding first");
        assert_eq!(info.matched, vec!["vendor_onboarding"]);
    }

    #[test]
    fn a_repeated_template_gets_distinct_step_ids() {
        let (def, _) = plan(&builtin(), "summarise then translate then summarise");
        assert_eq!(shape(&def), chain(&["generate_summary", "translate", "generate_summary_2"]));
    }

    #[test]
    fn unmatched_clause_lists_what_the_catalog_can_plan() {
        let catalog = builtin();
        let err = catalog.plan("generate summary and bake a cake", &crate::kinds::for_tests()).err();
        let Some(PlanError::Unmatched { goal, clause, can_plan }) = &err else { panic!("{err:?}") };
        assert_eq!(goal, "generate summary and bake a cake");
        assert_eq!(clause, "bake a cake");
        assert_eq!(can_plan, &catalog.describe());
        let text = err.map(|e| e.to_string()).unwrap_or_default();
        for needle in ["bake a cake", "vendor_onboarding", "generate_summary", "\"send email\"", "--catalog FILE"] {
            assert!(text.contains(needle), "{needle:?} missing from:\n{text}");
        }
    }

    #[test]
    fn empty_goals_are_rejected_clearly() {
        for goal in ["", "   ", " and then , ; "] {
            let err = builtin().plan(goal, &crate::kinds::for_tests()).err();
            assert!(matches!(err, Some(PlanError::EmptyGoal { .. })), "{goal:?}: {err:?}");
            let text = err.map(|e| e.to_string()).unwrap_or_default();
            assert!(text.contains("the goal is empty") && text.contains("--catalog"), "{text}");
        }
    }

    #[test]
    fn plan_names_are_short_valid_slugs() {
        let long = "generate a summary of the quarterly vendor landscape and send email to everyone";
        let (def, _) = plan(&builtin(), long);
        assert!(def.name.len() <= "goal-".len() + SLUG_MAX, "{}", def.name);
        assert_eq!(def.name, "goal-generate-a-summary-of-the-quarterly");
        assert_eq!(plan_name("résumé"), "goal-rsum");
        let hashed = plan_name("日本語");
        assert!(hashed.starts_with("goal-") && hashed.len() == "goal-".len() + 8, "{hashed}");
        assert_eq!(plan_name(&"x".repeat(100)), format!("goal-{}", "x".repeat(SLUG_MAX)));
    }

    const USER: &str = r#"
catalog: 1
templates:
  post_to_wiki:
    description: Publish the summary on the team wiki.
    keywords: [wiki, publish]
    example: publish to the wiki
    step:
      kind: echo
      with:
        page: "Summaries/{{ inputs.goal }}"
  send_email:
    description: Email the ops list instead of the team.
    keywords: [email]
    step:
      kind: echo
      with: {to: ops@example.com}
recipes:
  - name: weekly_digest
    description: Summarise the week and publish it.
    keywords: [weekly digest]
    steps: [generate_summary, post_to_wiki]
"#;

    #[test]
    fn a_user_catalog_adds_and_overrides_entries() {
        let mut catalog = builtin();
        let user = Catalog::from_yaml(USER, "mine.yaml").unwrap_or_else(|e| panic!("{e}"));
        catalog.merge(user);
        assert!(
            catalog.check(&crate::kinds::for_tests()).is_empty(),
            "{:?}",
            catalog.check(&crate::kinds::for_tests())
        );

        let (def, _) = plan(&catalog, "summarise and publish to the wiki");
        assert_eq!(shape(&def), chain(&["generate_summary", "post_to_wiki"]));
        let (def, _) = plan(&catalog, "send email");
        assert_eq!(def.steps[0].with, json!({"to": "ops@example.com"}));
        let (_, info) = plan(&catalog, "the weekly digest");
        assert_eq!(info.matched, vec!["weekly_digest"]);
        // Built-in entries not overridden are still there.
        assert!(catalog.recipe("vendor_onboarding").is_some());
        assert!(catalog.describe().iter().any(|l| l.starts_with("post_to_wiki: ")));
    }

    #[test]
    fn catalog_file_problems_name_the_file_and_the_fix() {
        let err = |src: &str| Catalog::from_yaml(src, "mine.yaml").err().unwrap_or_default();

        let e = err("templates:\n  x:\n    description: d\n    step: {kind: echo}\n    bogus: 1\n");
        assert!(e.starts_with("mine.yaml: ") && e.contains("line"), "{e}");
        let e = err("templates: [\n");
        assert!(e.starts_with("mine.yaml: ") && e.contains("line"), "{e}");

        let e =
            err("catalog: 2\ntemplates:\n  Bad Name:\n    description: d\n    keywords: [this and that, '...']\n    \
             step: {id: x, needs: [y]}\nrecipes:\n  - {name: r, description: d, keywords: [], steps: []}\n");
        for needle in [
            "`catalog: 2`",
            "template `Bad Name`: a template's name becomes its step id",
            "remove `step.id`",
            "remove `step.needs`",
            "`step.kind` is required",
            "contains `and`",
            "punctuation",
            "recipe `r`: give it at least one keyword",
            "recipe `r`: `steps` must name",
        ] {
            assert!(e.contains(needle), "{needle:?} missing from:\n{e}");
        }
        assert!(e.lines().all(|l| l.starts_with("mine.yaml: ")), "{e}");

        let e =
            err("templates:\n  quiet:\n    description: d\n    keywords: [do not disturb]\n    step: {kind: noop}\n");
        assert!(e.contains("keyword `do not disturb` contains `not`, which negates the rest of a clause"), "{e}");
    }

    #[test]
    fn a_broken_user_catalog_is_a_plan_error_not_a_failed_run() {
        let mut catalog = builtin();
        let user = "templates:\n  teleport:\n    description: d\n    keywords: [teleport]\n    step: {kind: warp_drive}\n\
                    recipes:\n  - {name: ghost, description: d, keywords: [ghost], steps: [summon]}\n";
        catalog.merge(Catalog::from_yaml(user, "mine.yaml").unwrap_or_else(|e| panic!("{e}")));

        let err = catalog.plan("teleport home", &crate::kinds::for_tests()).err();
        let Some(PlanError::Invalid { matched, problems, .. }) = &err else { panic!("{err:?}") };
        assert_eq!(matched, &vec!["teleport".to_string()]);
        assert!(!problems.is_empty());
        assert!(err.map(|e| e.to_string()).unwrap_or_default().contains("--catalog"));

        let err = catalog.plan("ghost", &crate::kinds::for_tests()).err();
        assert_eq!(err, Some(PlanError::UnknownTemplate { recipe: "ghost".into(), template: "summon".into() }));

        let problems = catalog.check(&crate::kinds::for_tests());
        assert!(problems.iter().any(|p| p.starts_with("template `teleport`")), "{problems:?}");
        assert!(problems.iter().any(|p| p.starts_with("recipe `ghost`")), "{problems:?}");
    }

    /// Runs a plan's templates the way the engine feeds them: each step's `with` rendered against
    /// `inputs` and the outputs of the steps before it, with demo stand-ins for the activities.
    fn render_chain(def: &Definition) -> Vec<Value> {
        let mut steps = Map::new();
        let mut rendered = Vec::new();
        for step in &def.steps {
            let ctx = json!({"inputs": {"goal": def.description}, "steps": steps, "run": {"id": "wf_test"}});
            let with = crate::template::render(&step.with, &ctx)
                .unwrap_or_else(|e| panic!("step `{}` of {:?}: {e}", step.id, def.name));
            let output = match step.kind.as_str() {
                "mock_model" => {
                    let text = match &with["respond"] {
                        Value::Null => format!("mock reply to: {}", with["prompt"].as_str().unwrap_or_default()),
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    json!({"text": text, "tokens_in": 1, "tokens_out": 1, "model": "mock"})
                }
                "sleep" => json!({"waited_ms": 2000}),
                _ => with.clone(),
            };
            steps.insert(step.id.to_string(), json!({"status": "completed", "output": output}));
            rendered.push(with);
        }
        rendered
    }

    #[test]
    fn every_builtin_template_renders_alone_and_after_its_usual_predecessors() {
        let catalog = builtin();
        for (name, template) in catalog.templates() {
            let goal = template.example().unwrap_or_else(|| name.to_string());
            render_chain(&plan(&catalog, &goal).0);
        }
        let (def, _) = plan(&catalog, "generate summary and send email");
        let with = render_chain(&def);
        assert_eq!(
            with[1]["body"],
            json!(format!("mock reply to: {}", with[0]["prompt"].as_str().unwrap_or_default()))
        );
        let (def, _) = plan(&catalog, "send email");
        assert_eq!(render_chain(&def)[0]["body"], json!("send email"));

        let (def, _) = plan(&catalog, "vendor onboarding review");
        let with = render_chain(&def);
        let screen = with[1]["prompt"].as_str().unwrap_or_default();
        assert!(screen.contains("W-9 tax form, SOC 2 Type II report"), "{screen}");
        let decide = with[2]["prompt"].as_str().unwrap_or_default();
        assert!(decide.contains("medium"), "{decide}");
        render_chain(&plan(&catalog, "research brief on otters, translate it, wait, classify and notify").0);
    }

    #[test]
    fn tokenizer_rules() {
        let goal = "Check the vendor's docs, then e.g.x; AND   wait! But don't";
        let found = clauses(goal);
        let words: Vec<Vec<&str>> = found.iter().map(|c| c.iter().map(|(w, _)| w.as_str()).collect()).collect();
        assert_eq!(
            words,
            vec![vec!["check", "the", "vendors", "docs"], vec!["e", "g", "x"], vec!["wait"], vec!["dont"]]
        );
        let spans: Vec<&str> = found.iter().flatten().map(|(_, span)| &goal[span.clone()]).collect();
        assert_eq!(spans, ["Check", "the", "vendor's", "docs", "e", "g", "x", "wait", "don't"]);
        assert!(word_matches("document", "documents"));
        assert!(word_matches("box", "boxes"));
        assert!(!word_matches("document", "documentary"));
        assert!(!word_matches("mail", "email"));
    }
}
