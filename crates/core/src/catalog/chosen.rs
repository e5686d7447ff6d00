//! Plans a model chooses (`--planner model`): the JSON Schema its answer must fit — step templates
//! as an enum of the catalog's names, so even a small model cannot name one that does not exist —,
//! the prompt that lists them, and the definition built from its choice and validated like any
//! file. Also the switch of the catalog's model templates from `mock_model` to `llm` when a model
//! is configured.

use super::{ALTERNATIVES, Catalog, Entry, PlanError, Template, finish};
use crate::definition::Definition;
use crate::event::{LeftOut, PlanInfo};
use crate::kinds::Kinds;
use serde_json::{Map, Value, json};

/// The most steps a model's plan may have.
const MAX_STEPS: usize = 8;

/// What a planner model is told before the catalog and the goal.
pub const MODEL_PLAN_SYSTEM: &str = "You plan workflows. Choose, in order, the steps that achieve the goal, \
    only from the templates listed. Use as few steps as the goal needs. Answer with JSON only.";

impl Catalog {
    /// The schema a model's plan for `goal` must fit: `{steps: [{template, needs?}]}`, each
    /// `template` one of the catalog's names and each step's `needs` the numbers (from 1) of steps
    /// before it — one schema per position, so no answer that fits can name a later step — and at
    /// most as many steps as the goal has clauses that ask for something (a small model otherwise
    /// goes on until the limit).
    pub fn choice_schema(&self, goal: &str) -> Value {
        let (asked, left_out) = self.choice_bounds(goal);
        let names: Vec<&str> = self
            .templates
            .keys()
            .map(String::as_str)
            .filter(|name| !left_out.iter().any(|l| l.entry == *name))
            .collect();
        let positions: Vec<Value> = (0..asked)
            .map(|i| {
                let mut properties = json!({"template": {"enum": names}});
                if i > 0 {
                    properties["needs"] = json!({
                        "type": "array",
                        "maxItems": i,
                        "items": {"type": "integer", "minimum": 1, "maximum": i}
                    });
                }
                json!({"type": "object", "properties": properties, "required": ["template"], "additionalProperties": false})
            })
            .collect();
        json!({
            "type": "object",
            "properties": {
                "steps": {"type": "array", "minItems": 1, "maxItems": asked, "prefixItems": positions}
            },
            "required": ["steps"],
            "additionalProperties": false
        })
    }

    /// How many steps a plan of `goal` may have (its clauses that ask for something), and the
    /// templates (or recipes' templates) the goal negates ("do not send email"), which a plan may
    /// not use. Refuses a goal with nothing to plan, as the catalog planner does.
    pub fn choice_bounds(&self, goal: &str) -> (usize, Vec<LeftOut>) {
        let parts = super::parts(goal);
        let asked = parts.iter().filter(|p| !p.negated).count().clamp(1, MAX_STEPS);
        let mut left_out: Vec<LeftOut> = Vec::new();
        for part in parts.iter().filter(|p| p.negated) {
            for alternative in part.words.split(|w| ALTERNATIVES.contains(&w.as_str())) {
                let names: Vec<String> = match self.match_clause(alternative) {
                    Some(Entry::Template(name, _)) => vec![name.to_string()],
                    Some(Entry::Recipe(recipe)) => recipe.steps.clone(),
                    None => continue,
                };
                for name in names {
                    if !left_out.iter().any(|l| l.entry == name) {
                        left_out.push(LeftOut { entry: name, because: part.text.clone() });
                    }
                }
            }
        }
        (asked, left_out)
    }

    /// Refuses a goal a model cannot be asked to plan: empty, or all negated.
    pub fn check_goal(&self, goal: &str) -> Result<(), PlanError> {
        let parts = super::parts(goal);
        if parts.is_empty() {
            return Err(PlanError::EmptyGoal { can_plan: self.describe() });
        }
        let (_, left_out) = self.choice_bounds(goal);
        if parts.iter().all(|p| p.negated) || left_out.len() >= self.templates.len() {
            return Err(PlanError::NothingLeft { goal: super::one_line(goal), left_out, can_plan: self.describe() });
        }
        Ok(())
    }

    /// The templates a model may choose from, one line each (`- name: description; asked as
    /// "…"`), an example answer, and the goal.
    pub fn choice_prompt(&self, goal: &str) -> String {
        let mut out = String::from("Templates:\n");
        for (name, t) in &self.templates {
            let example = t.example().map(|e| format!("; asked as \"{e}\"")).unwrap_or_default();
            out.push_str(&format!("- {name}: {}{example}\n", t.description));
        }
        out.push_str(
            "\nSteps run in order, each after the one before it; `needs` (optional) lists the numbers of earlier \
             steps a step waits for instead.\nExample: the goal \"research the topic and notify the team\" is \
             {\"steps\": [{\"template\": \"fetch_context\"}, {\"template\": \"notify\"}]}\n\nGoal: ",
        );
        out.push_str(goal);
        out
    }

    /// The definition for a model's answer (`{steps: [{template, needs?}]}`), validated like a
    /// file. Every problem is listed (an unknown template, a need that is not an earlier step, a
    /// definition that does not validate), so the model can be told what to fix.
    pub fn plan_choice(&self, goal: &str, answer: &Value, kinds: &Kinds) -> Result<(Definition, PlanInfo), PlanError> {
        self.check_goal(goal)?;
        let (asked, left_out) = self.choice_bounds(goal);
        let goal = super::one_line(goal);
        let mut problems = Vec::new();
        let chosen = answer.get("steps").and_then(Value::as_array).cloned().unwrap_or_default();
        if chosen.is_empty() {
            problems.push("the plan has no steps: give at least one".to_string());
        }
        if chosen.len() > asked {
            problems.push(format!("the plan has {} steps; the goal asks for at most {asked}", chosen.len()));
        }
        let mut ids: Vec<String> = Vec::new();
        let mut steps = Vec::new();
        let mut matched = Vec::new();
        for (i, c) in chosen.iter().enumerate().take(MAX_STEPS) {
            let n = i + 1;
            let Some(name) = c.get("template").and_then(Value::as_str) else {
                problems.push(format!("step {n} has no `template`"));
                ids.push(format!("step{n}"));
                continue;
            };
            let Some((name, template)) = self.templates.get_key_value(name) else {
                let known: Vec<&str> = self.templates.keys().map(String::as_str).collect();
                problems.push(format!("step {n}: `{name}` is not a template; choose from {}", known.join(", ")));
                ids.push(format!("step{n}"));
                continue;
            };
            if let Some(l) = left_out.iter().find(|l| l.entry == *name) {
                problems.push(format!("step {n}: `{name}` is what the goal says not to do (\"{}\")", l.because));
                continue;
            }
            let needs = match c.get("needs") {
                None | Some(Value::Null) => ids.last().cloned().into_iter().collect(),
                Some(Value::Array(list)) => {
                    let mut needs: Vec<String> = Vec::new();
                    for need in list {
                        match need.as_u64().filter(|k| (1..n as u64).contains(k)) {
                            Some(k) => {
                                let id = ids[k as usize - 1].clone();
                                if !needs.contains(&id) {
                                    needs.push(id);
                                }
                            }
                            None => problems.push(format!(
                                "step {n} (`{name}`) needs {need}, which is not the number of an earlier step (1 to {})",
                                n - 1
                            )),
                        }
                    }
                    needs
                }
                Some(other) => {
                    problems.push(format!("step {n} (`{name}`): `needs` is {other}, not a list of step numbers"));
                    Vec::new()
                }
            };
            let id = unique(name, &ids);
            steps.push(step(template, &id, &needs));
            ids.push(id);
            matched.push(name.clone());
        }
        if !problems.is_empty() {
            return Err(PlanError::Chosen { goal, problems });
        }
        let artifact = matched.last().and_then(|name| self.templates.get(name)).and_then(|t| t.artifact.clone());
        let (definition, mut info) = finish(&goal, steps, artifact, matched, kinds)?;
        info.left_out = left_out;
        Ok((definition, info))
    }

    /// Makes the catalog's model templates (`mock_model`) call a real model: kind `llm` with
    /// the same prompt and `model`; a fixed demo answer (`respond: {…}`) becomes an
    /// `output_schema` of the same shape.
    pub fn with_model(&mut self, model: &str) {
        for template in self.templates.values_mut() {
            if template.step.get("kind").and_then(Value::as_str) != Some("mock_model") {
                continue;
            }
            let old = template.step.get("with").and_then(Value::as_object).cloned().unwrap_or_default();
            let mut with = Map::new();
            with.insert("model".into(), json!(model));
            with.insert("prompt".into(), old.get("prompt").cloned().unwrap_or_else(|| json!("{{ inputs.goal }}")));
            with.insert("max_tokens".into(), json!(256));
            if let Some(Value::Object(fixed)) = old.get("respond") {
                with.insert("output_schema".into(), shape_of(fixed));
            }
            template.step.insert("kind".into(), json!("llm"));
            template.step.insert("with".into(), Value::Object(with));
            // A real model's timeout, not a stand-in's.
            template.step.insert("timeout".into(), json!("120s"));
        }
    }
}

/// A step id for `name` not used yet (`name`, `name_2`, …).
fn unique(name: &str, used: &[String]) -> String {
    let mut id = name.to_string();
    let mut n = 1;
    while used.contains(&id) {
        n += 1;
        id = format!("{name}_{n}");
    }
    id
}

fn step(template: &Template, id: &str, needs: &[String]) -> Value {
    let mut step = template.step.clone();
    step.insert("id".into(), json!(id));
    if !needs.is_empty() {
        step.insert("needs".into(), json!(needs));
    }
    Value::Object(step)
}

/// A JSON Schema requiring an object with the keys of `example`, each of its value's type.
fn shape_of(example: &Map<String, Value>) -> Value {
    let properties: Map<String, Value> = example
        .iter()
        .map(|(k, v)| {
            let kind = match v {
                Value::String(_) => "string",
                Value::Number(_) => "number",
                Value::Bool(_) => "boolean",
                Value::Array(_) => "array",
                Value::Object(_) => "object",
                Value::Null => "null",
            };
            (k.clone(), json!({"type": kind}))
        })
        .collect();
    let required: Vec<&String> = example.keys().collect();
    json!({"type": "object", "properties": properties, "required": required})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalog() -> Catalog {
        Catalog::builtin().expect("catalog")
    }

    #[test]
    fn a_models_choice_becomes_a_valid_plan_with_the_step_before_as_the_default_need() {
        let kinds = crate::kinds::for_tests();
        let answer = json!({"steps": [{"template": "generate_summary"}, {"template": "send_email"}]});
        let (def, info) = catalog().plan_choice("summarise and email", &answer, &kinds).expect("plan");
        assert_eq!(info.matched, ["generate_summary", "send_email"]);
        assert_eq!(def.steps[1].needs[0].as_str(), "generate_summary");
        let twice = json!({"steps": [{"template": "notify"}, {"template": "notify", "needs": []}]});
        let fan = json!({"steps": [{"template": "fetch_context"}, {"template": "classify", "needs": [1]},
                                   {"template": "notify", "needs": [1, 2, 2]}]});
        let (def, _) =
            catalog().plan_choice("research it, classify it and notify the team", &fan, &kinds).expect("plan");
        let needs: Vec<&str> = def.steps[2].needs.iter().map(|n| n.as_str()).collect();
        assert_eq!(needs, ["fetch_context", "classify"]);
        let (def, _) = catalog().plan_choice("notify the team, then notify them again", &twice, &kinds).expect("plan");
        assert_eq!((def.steps[1].id.as_str(), def.steps[1].needs.len()), ("notify_2", 0));
    }

    #[test]
    fn a_choice_naming_no_template_or_a_later_step_is_refused_with_every_problem() {
        let kinds = crate::kinds::for_tests();
        let answer = json!({"steps": [
            {"template": "send_email", "needs": [1]},
            {"template": "write_poem"},
            {"template": "generate_summary"}
        ]});
        let Err(PlanError::Chosen { problems, .. }) = catalog().plan_choice("one, two and three", &answer, &kinds)
        else {
            panic!("refused")
        };
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].contains("step 1 (`send_email`) needs 1, which is not the number of an earlier step"));
        assert!(problems[1].starts_with("step 2: `write_poem` is not a template; choose from"));
        let schema = catalog().choice_schema("research it, classify it, summarise it, then notify the team");
        assert_eq!(schema["properties"]["steps"]["maxItems"], 4);
        let positions = &schema["properties"]["steps"]["prefixItems"];
        let names = &positions[0]["properties"]["template"]["enum"];
        assert!(names.as_array().is_some_and(|n| n.iter().any(|t| t == "send_email")), "{schema}");
        assert!(positions[0]["properties"].get("needs").is_none(), "the first step needs nothing");
        assert_eq!(positions[3]["properties"]["needs"]["items"]["maximum"], 3);
    }

    #[test]
    fn a_negated_template_is_out_of_the_schema_and_refused_and_an_empty_goal_is_refused() {
        let kinds = crate::kinds::for_tests();
        let goal = "summarise the report but do not send email";
        let schema = catalog().choice_schema(goal);
        let names = &schema["properties"]["steps"]["prefixItems"][0]["properties"]["template"]["enum"];
        assert!(!names.as_array().expect("names").iter().any(|n| n == "send_email"), "{names}");
        let answer = json!({"steps": [{"template": "send_email"}]});
        let Err(PlanError::Chosen { problems, .. }) = catalog().plan_choice(goal, &answer, &kinds) else {
            panic!("refused")
        };
        assert!(problems[0].contains("is what the goal says not to do"), "{problems:?}");
        let ok = json!({"steps": [{"template": "generate_summary"}]});
        let (_, info) = catalog().plan_choice(goal, &ok, &kinds).expect("plan");
        assert_eq!(info.left_out[0].entry, "send_email");
        assert!(matches!(catalog().check_goal("  "), Err(PlanError::EmptyGoal { .. })));
        assert!(matches!(catalog().check_goal("do NOT notify anyone"), Err(PlanError::NothingLeft { .. })));
    }

    #[test]
    fn with_a_model_the_model_templates_call_it_and_fixed_answers_become_a_schema() {
        let mut c = catalog();
        c.with_model("small");
        let summary = &c.template("generate_summary").expect("template").step;
        assert_eq!((summary["kind"].as_str(), summary["with"]["model"].as_str()), (Some("llm"), Some("small")));
        let classify = &c.template("classify").expect("template").step;
        assert_eq!(classify["with"]["output_schema"]["properties"]["confidence"]["type"], "number");
        assert_eq!(c.template("send_email").expect("template").step["kind"], "echo", "others stay as they are");
    }
}
