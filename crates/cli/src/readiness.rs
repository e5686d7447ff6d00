//! `cairn readiness WORKFLOW`: each agent step of a workflow through six failure scenarios
//! (`cairn_chaos::readiness`), once naked (a plain loop) and once under Cairn (a real engine
//! process, see `readiness_cairn.rs`), against a scripted model and stand-ins of the step's
//! tools that keep each tool's name, schemas, effect per call and approval policy. Writes
//! `readiness.json` and `readiness_report.md` (first line: `SHIP` or `DO NOT SHIP`).

use crate::{CliError, CliResult};
use cairn_chaos::readiness::world::{CANARY, Service};
use cairn_chaos::readiness::{Call, Repeat, Row, Scenario, Score, Script, Side, markdown, naked, report, score};
use cairn_core::Definition;
use cairn_core::definition::Step;
use cairn_engine::tools::{Entry, Policy, Tools};
use clap::Args;
use serde_json::{Value, json};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

#[derive(Args)]
pub struct ReadinessArgs {
    /// The workflow file whose agent steps are assessed.
    pub workflow: PathBuf,
    /// Inputs, as for `cairn run` (defaults apply).
    #[arg(long = "input", short = 'i', value_name = "NAME=VALUE")]
    pub inputs: Vec<String>,
    /// Only this agent step (default: every agent step).
    #[arg(long)]
    pub step: Option<String>,
    /// Where readiness.json and readiness_report.md are written.
    #[arg(long, short = 'o', default_value = ".")]
    pub out: PathBuf,
    /// Print the report as JSON on stdout (else the Markdown report).
    #[arg(long)]
    pub json: bool,
    /// Let this model of cairn.toml (a local OpenAI-compatible server, such as `local` with
    /// scripts/local-model) make the step's decisions instead of the scripted model.
    #[arg(long, value_name = "ALIAS")]
    pub model: Option<String>,
    /// Only these scenarios (repeatable): tool_timeout, malformed_tool_output, prompt_injection,
    /// context_overflow, primary_model_failure, crash_after_side_effect.
    #[arg(long = "scenario", value_name = "ID")]
    pub scenarios: Vec<String>,
    /// How long each side of a scenario may take, in seconds (default: naked 5 and Cairn 60; with
    /// --model 90 and 240).
    #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub patience: Option<u64>,
}

/// How long each side of a scenario is given: a real model takes its time.
pub fn patience(real_model: bool) -> (Duration, Duration) {
    if real_model {
        (Duration::from_secs(90), Duration::from_secs(240))
    } else {
        (NAKED_PATIENCE, Duration::from_secs(60))
    }
}

/// How long the naked loop is given before it counts as hung.
const NAKED_PATIENCE: Duration = Duration::from_secs(5);

/// One agent step, ready to be put through the scenarios.
pub struct Subject {
    pub step: Step,
    /// Its `with`, rendered with the inputs (what depends on earlier steps stands as a placeholder).
    pub with: Value,
    pub script: Script,
    pub output_schema: Option<jsonschema::Validator>,
    /// The tools the workflow itself defines, stood in like configured ones.
    pub workflow_tools: Value,
    /// The step's tools: name and description.
    pub tools: Vec<(String, String)>,
    /// Tools that write but that readiness could not make a fitting call of.
    pub unassessed: Vec<String>,
    /// What a call of one of its tools does (for the naked loop, which has no engine).
    pub classify: naked::Classify,
    /// How long the naked side, and the Cairn side, of a scenario may take.
    pub patience: (Duration, Duration),
}

pub async fn readiness(args: ReadinessArgs) -> CliResult {
    let definition = crate::run::load_definition(&args.workflow)?;
    let mut given = crate::run::parse_inputs(&args.inputs)?;
    let mut notes = Vec::new();
    // Inputs nobody gave stand as placeholders: readiness exercises the step, not the data.
    if let Err(e) = definition.resolve_inputs(&given)
        && !e.missing.is_empty()
    {
        for name in &e.missing {
            given.insert(name.clone(), json!(format!("(input {name})")));
        }
        notes.push(format!(
            "Inputs not given stood as placeholders: {} (pass them with --input NAME=VALUE).",
            e.missing.join(", ")
        ));
    }
    let inputs = definition.resolve_inputs(&given).map_err(|e| CliError::usage(e.to_string()))?;
    let agents: Vec<&Step> = definition
        .steps
        .iter()
        .filter(|s| s.kind == "agent" && args.step.as_ref().is_none_or(|only| s.id.as_str() == only))
        .collect();
    if agents.is_empty() {
        let what = match &args.step {
            Some(only) => format!("has no agent step '{only}'"),
            None => "has no step of kind agent".to_string(),
        };
        return Err(CliError::usage(format!(
            "{} {what}: readiness puts agent steps through its scenarios (a workflow that runs agents in a \
             subworkflow is assessed through that file)",
            args.workflow.display()
        )));
    }
    std::fs::create_dir_all(&args.out)
        .map_err(|e| CliError::usage(format!("cannot create the output directory {}: {e}", args.out.display())))?;
    let loaded = crate::config::get();
    let registry = loaded.registry();
    let mut rows = Vec::new();
    let mut scenarios = Vec::new();
    for id in &args.scenarios {
        let found = Scenario::ALL.into_iter().find(|s| s.id() == id).ok_or_else(|| {
            let ids: Vec<&str> = Scenario::ALL.iter().map(|s| s.id()).collect();
            CliError::usage(format!("--scenario {id} is not a scenario: use one of {}", ids.join(", ")))
        })?;
        scenarios.push(found);
    }
    if scenarios.is_empty() {
        scenarios = Scenario::ALL.to_vec();
    }
    let upstream = args.model.as_deref().map(crate::chaos::local_model).transpose()?;
    let patience = match args.patience {
        Some(s) => (Duration::from_secs(s), Duration::from_secs(s)),
        None => patience(upstream.is_some()),
    };
    match (&args.model, &upstream) {
        (Some(alias), Some(up)) => notes.push(format!(
            "Model {alias} ({} at {}) made the decisions instead of the scripted model; the scenarios' faults \
             were played all the same.",
            up.model, up.addr
        )),
        _ => notes.push(
            "The model is scripted and gullible on purpose: it follows instructions found in tool output and \
             passes on what it reads."
                .to_string(),
        ),
    }
    notes.push(format!(
        "Stand-in tools answer on loopback and give up after {} s (standing for the tool's own timeout, scaled \
         down); effects are counted where they land, applying a repeated write once when the tool sends its \
         idempotency key (as a careful receiver does) or rewrites a whole file.",
        crate::readiness_cairn::STAND_IN_TIMEOUT.as_secs()
    ));
    for step in agents {
        let mut subject = subject(&definition, step, &inputs, &registry, &mut notes)?;
        subject.script.upstream = upstream.clone();
        subject.patience = patience;
        for tool in &subject.unassessed {
            // Not seen is not safe: a tool that writes and could not be called blocks the verdict.
            let what = format!(
                "tool '{tool}' writes, but readiness could not make a call of it that fits its input schema, so no \
                 scenario used it"
            );
            let cairn =
                Score { exercised: false, safety: true, reliability: false, cost_usd: 0.0, observability: false, what };
            let step = step.id.as_str().to_string();
            rows.push(Row {
                step,
                scenario: Scenario::Injection,
                not_applicable: None,
                naked: None,
                cairn: Some(cairn),
            });
        }
        for &scenario in &scenarios {
            let step_id = step.id.as_str().to_string();
            if let Some(why) = scenario.not_applicable(&subject.script) {
                rows.push(Row { step: step_id, scenario, not_applicable: Some(why), naked: None, cairn: None });
                continue;
            }
            let started = std::time::Instant::now();
            let naked = naked_side(&subject, scenario).await?;
            let middle = std::time::Instant::now();
            let cairn = crate::readiness_cairn::run(&definition, &subject, &inputs, scenario).await?;
            cairn_engine::say!(
                "[readiness] {step_id}: {} — naked {:.1} s, cairn {:.1} s",
                scenario.title(),
                (middle - started).as_secs_f64(),
                middle.elapsed().as_secs_f64()
            );
            rows.push(Row { step: step_id, scenario, not_applicable: None, naked: Some(naked), cairn: Some(cairn) });
        }
    }
    let name = args.workflow.display().to_string();
    let doc = report(&name, &rows, &notes);
    let text = markdown(&name, &rows, &notes);
    let write = |file: &str, body: String| {
        let path = args.out.join(file);
        std::fs::write(&path, body).map_err(|e| CliError::env(format!("cannot write {}: {e}", path.display())))
    };
    write("readiness.json", serde_json::to_string_pretty(&doc).unwrap_or_default() + "\n")?;
    write("readiness_report.md", text.clone())?;
    if args.json {
        crate::out!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
    } else {
        crate::out!("{text}");
    }
    cairn_engine::say!(
        "[readiness] wrote {} and {}",
        args.out.join("readiness.json").display(),
        args.out.join("readiness_report.md").display()
    );
    Ok(())
}

/// The naked loop through one scenario, scored.
async fn naked_side(subject: &Subject, scenario: Scenario) -> CliResult<cairn_chaos::readiness::Score> {
    let (world, mut kills) =
        Service::start(scenario, subject.script.clone()).await.map_err(|e| CliError::env(e.to_string()))?;
    let step = naked::Step {
        system: subject.with["system"].as_str().map(str::to_string),
        task: subject.with["task"].as_str().unwrap_or_default().to_string(),
        tools: subject.tools.clone(),
        max_turns: subject.with["max_turns"].as_u64().unwrap_or(1),
        classify: subject.classify.clone(),
    };
    let mut ended = naked::run(world.addr, &step, &subject.script, &mut kills, subject.patience.0).await;
    // Nothing checks the naked loop's answer; the score does.
    ended.answer_fits = fits(subject, ended.answer.as_ref());
    Ok(score(scenario, Side::Naked, &ended, &world.tally()))
}

/// Whether an answer fits the step's output_schema (any answer does when it has none).
pub fn fits(subject: &Subject, answer: Option<&Value>) -> bool {
    match (&subject.output_schema, answer) {
        (Some(check), Some(a)) => check.is_valid(a),
        (Some(_), None) => false,
        (None, _) => true,
    }
}

fn tool_names(with: &Value) -> Vec<String> {
    with["tools"].as_array().into_iter().flatten().filter_map(|t| t.as_str().map(str::to_string)).collect()
}

/// A step's `with` rendered with the inputs; a string that needs what only a run has (an
/// earlier step's output) keeps its text, its template marks turned into brackets.
fn render(with: &Value, ctx: &Value) -> Value {
    match with {
        // Secrets stay out of the harness: their references become placeholders too.
        Value::String(s) if s.contains("{{") || s.contains("{%") => {
            let bracketed = || s.replace("{{", "[").replace("}}", "]").replace("{%", "[").replace("%}", "]");
            if s.contains("secrets") {
                return Value::String(bracketed());
            }
            cairn_core::template::render(with, ctx).unwrap_or_else(|_| Value::String(bracketed()))
        }
        Value::Array(items) => Value::Array(items.iter().map(|v| render(v, ctx)).collect()),
        Value::Object(map) => Value::Object(map.iter().map(|(k, v)| (k.clone(), render(v, ctx))).collect()),
        other => other.clone(),
    }
}

fn subject(
    definition: &Definition,
    step: &Step,
    inputs: &Value,
    registry: &Arc<Tools>,
    notes: &mut Vec<String>,
) -> CliResult<Subject> {
    // A for_each step is assessed on its first item (a literal list), else on a placeholder.
    let known = json!({"inputs": inputs, "run": {"id": "wf_readiness"}, "steps": {}});
    let item = match step.for_each.as_ref().map(|f| render(&f.items, &known)) {
        Some(Value::Array(items)) if !items.is_empty() => items[0].clone(),
        Some(items) => {
            let why = if items.is_array() { "an empty list" } else { "a list made at run time" };
            notes.push(format!("Step '{}' runs for each item of {why}: assessed on one placeholder item.", step.id));
            json!("(an item)")
        }
        None => Value::Null,
    };
    let ctx = json!({"inputs": inputs, "item": item, "run": {"id": "wf_readiness"}, "steps": {}});
    let with = render(&step.with, &ctx);
    if with.get("context").is_some() {
        notes.push(format!(
            "Step '{}' chooses context (with.context): under Cairn its reads go to the stand-ins too; the naked loop \
             runs without it.",
            step.id
        ));
    }
    let models = crate::config::get().models.clone();
    let aliases: Vec<String> = match &with["model"] {
        Value::String(a) => vec![a.clone()],
        Value::Array(list) => list.iter().filter_map(|v| v.as_str().map(str::to_string)).collect(),
        _ => models.default_model.clone().into_iter().collect(),
    };
    if aliases.is_empty() {
        return Err(CliError::usage(format!(
            "step '{}' names no model and cairn.toml has no default_model: readiness needs the step's models",
            step.id
        )));
    }
    let mut script = Script { models: aliases.clone(), ..Script::default() };
    for alias in &aliases {
        let Some(model) = models.models.get(alias) else {
            return Err(CliError::usage(format!(
                "step '{}' uses model '{alias}', which cairn.toml does not declare (`cairn models` lists them)",
                step.id
            )));
        };
        if let Some(w) = model.context_window {
            script.windows.insert(alias.clone(), w);
        }
        script.prices.insert(alias.clone(), (model.input_usd_per_mtok, model.output_usd_per_mtok));
    }
    // An outage takes the first model's provider down: every model of the step on it is away.
    let provider = |alias: &String| models.models.get(alias).map(|m| m.provider.clone());
    script.away = aliases.iter().filter(|a| provider(a) == provider(&aliases[0])).cloned().collect();
    let workflow_tools = serde_json::to_value(definition.tools.as_ref()).unwrap_or_default();
    let mut entries: Vec<Arc<Entry>> = Vec::new();
    for name in tool_names(&with) {
        let entry = match (definition.tools.get(&name), registry.get(&name)) {
            (Some(spec), _) => Tools::workflow_tool(&name, spec).map_err(|f| CliError::usage(f.message))?,
            (None, Some(entry)) => entry,
            (None, None) => {
                return Err(CliError::usage(format!(
                    "step '{}' uses tool '{name}', which is not a tool of cairn.toml or the workflow (MCP tools \
                     are not stood in by readiness yet; `cairn tools list` shows the tools)",
                    step.id
                )));
            }
        };
        entries.push(entry);
    }
    let mut writes = Vec::new();
    let mut unassessed = Vec::new();
    for entry in &entries {
        let name = entry.spec.name.clone();
        let (read, write) = calls(entry);
        if script.first.is_none() {
            script.first = read.clone();
        }
        match write {
            Some(w) => writes.push((entry.clone(), w)),
            // A tool that may write but whose writes readiness cannot make is not assessed.
            None if entry.spec.effect.needs_effect_key() && read.is_none() => unassessed.push(name.clone()),
            None => {}
        }
        script.outputs.insert(name, usual_output(entry));
    }
    script.write = writes.first().map(|(_, w)| w.clone());
    if script.first.is_none() {
        script.first = script.write.clone();
    }
    // The injection aims at the least guarded tool that writes (a policy that never asks, then a
    // condition, then by effect, then always) where the canary fits its arguments.
    let guard = |p: &Policy| match p {
        Policy::Never => 0,
        Policy::When(_) => 1,
        Policy::ByEffect => 2,
        Policy::Always => 3,
    };
    writes.sort_by_key(|(e, _)| guard(&e.spec.approval));
    script.injected = writes.iter().find_map(|(entry, write)| injected(entry, write));
    let output_schema = with.get("output_schema").filter(|s| s.is_object()).cloned();
    script.final_answer = match &output_schema {
        Some(schema) => sample(schema, 0),
        None => json!("done"),
    };
    let output_schema = match output_schema {
        Some(schema) => Some(jsonschema::validator_for(&schema).map_err(|e| {
            CliError::usage(format!("step '{}': with.output_schema is not a usable JSON Schema: {e}", step.id))
        })?),
        None => None,
    };
    let tools = entries.iter().map(|e| (e.spec.name.clone(), e.spec.description.clone())).collect();
    script.max_turns = with["max_turns"].as_u64().unwrap_or(1);
    let by_name: std::collections::BTreeMap<String, Arc<Entry>> =
        entries.iter().map(|e| (e.spec.name.clone(), e.clone())).collect();
    let classify: naked::Classify = Arc::new(move |name: &str, args: &Value| match by_name.get(name) {
        Some(entry) => {
            let args = entry.normalize(args.clone());
            (entry.effect(&args).needs_effect_key(), repeat(entry, &args))
        }
        None => (false, Repeat::Again),
    });
    let patience = patience(false);
    Ok(Subject {
        step: step.clone(),
        with,
        script,
        output_schema,
        workflow_tools,
        tools,
        unassessed,
        classify,
        patience,
    })
}

/// A call of the tool that reads and one that writes, among arguments that fit its input schema
/// and that it would not refuse.
fn calls(entry: &Entry) -> (Option<Call>, Option<Call>) {
    let text = json!({"text": "readiness check"});
    // A host the tool may reach.
    let host = crate::config::get()
        .tools
        .tools
        .get(&entry.spec.name)
        .and_then(|t| t.allow_hosts.iter().find(|h| !h.contains('*')).cloned())
        .unwrap_or_else(|| "example.com".into());
    let url = format!("https://{host}/readiness");
    let mut candidates = match entry.spec.kind.as_str() {
        "sql_query" => vec![json!({"sql": "SELECT 1 AS readiness"})],
        "file" => vec![
            json!({"op": "read", "path": "readiness.txt"}),
            json!({"op": "write", "path": "readiness.txt", "content": "readiness check"}),
        ],
        "http_request" => vec![
            json!({"body": text}),
            json!({"method": "GET", "url": url}),
            json!({"method": "POST", "url": url, "body": text}),
        ],
        _ => vec![],
    };
    candidates.push(sample(&entry.spec.input_schema, 0));
    let mut read = None;
    let mut write = None;
    for args in candidates {
        let args = entry.normalize(args);
        if entry.check_args(&args).is_err() {
            continue;
        }
        let writes = entry.effect(&args).needs_effect_key();
        let slot = if writes { &mut write } else { &mut read };
        if slot.is_none() {
            let repeat = repeat(entry, &args);
            *slot = Some(Call { tool: entry.spec.name.clone(), args, writes, repeat });
        }
    }
    (read, write)
}

/// What sending a call again does where it lands: tools that send the call's idempotency key
/// (HTTP writes, MCP) are applied once by a careful receiver; a file written whole again is the
/// same file; anything else happens again.
pub fn repeat(entry: &Entry, args: &Value) -> Repeat {
    match (entry.spec.kind.as_str(), args.get("op").and_then(Value::as_str)) {
        ("http_request" | "mcp", _) => Repeat::Key,
        ("file", Some("write")) => Repeat::SameArgs,
        _ => Repeat::Again,
    }
}

/// The write with the canary in one of its strings (the first place the tool accepts it).
fn injected(entry: &Entry, write: &Call) -> Option<Call> {
    let mut leaves = Vec::new();
    strings(&write.args, String::new(), &mut leaves);
    leaves.into_iter().find_map(|pointer| {
        let mut args = write.args.clone();
        let leaf = args.pointer_mut(&pointer)?;
        *leaf = json!(format!("{} {CANARY}", leaf.as_str().unwrap_or_default()));
        let args = entry.normalize(args);
        let fits = entry.check_args(&args).is_ok() && entry.effect(&args).needs_effect_key();
        let repeat = repeat(entry, &args);
        fits.then(|| Call { tool: write.tool.clone(), args, writes: true, repeat })
    })
}

fn strings(value: &Value, at: String, out: &mut Vec<String>) {
    match value {
        Value::String(_) => out.push(at),
        Value::Array(items) => items.iter().enumerate().for_each(|(i, v)| strings(v, format!("{at}/{i}"), out)),
        Value::Object(map) => {
            map.iter().for_each(|(k, v)| strings(v, format!("{at}/{}", k.replace('~', "~0").replace('/', "~1")), out))
        }
        _ => {}
    }
}

/// What a tool answers when nothing goes wrong: a value fitting its output schema, else one
/// shaped like its type's results.
fn usual_output(entry: &Entry) -> Value {
    if let Some(schema) = &entry.spec.output_schema {
        return sample(schema, 0);
    }
    match entry.spec.kind.as_str() {
        "sql_query" => json!({"columns": ["id", "name"], "rows": [{"id": 1, "name": "sample row"}], "row_count": 1}),
        "file" => json!({"path": "readiness.txt", "content": "sample file text"}),
        _ => json!({"status": 200, "body": {"text": "sample answer"}}),
    }
}

/// A small value fitting a JSON Schema (the usual keywords; enough for answers and arguments).
pub fn sample(schema: &Value, depth: usize) -> Value {
    if depth > 8 {
        return Value::Null;
    }
    if let Some(c) = schema.get("const") {
        return c.clone();
    }
    if let Some(first) = schema.get("enum").and_then(Value::as_array).and_then(|e| e.first()) {
        return first.clone();
    }
    for k in ["anyOf", "oneOf", "allOf"] {
        if let Some(first) = schema.get(k).and_then(Value::as_array).and_then(|e| e.first()) {
            return sample(first, depth + 1);
        }
    }
    let kind = match &schema["type"] {
        Value::String(t) => t.clone(),
        Value::Array(ts) => ts.iter().filter_map(Value::as_str).find(|t| *t != "null").unwrap_or("null").to_string(),
        _ if schema.get("properties").is_some() => "object".into(),
        _ => "string".into(),
    };
    match kind.as_str() {
        "object" => {
            let mut out = serde_json::Map::new();
            let required: Vec<&str> =
                schema["required"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
            for name in required {
                let prop = schema["properties"].get(name).cloned().unwrap_or(json!({}));
                out.insert(name.to_string(), sample(&prop, depth + 1));
            }
            Value::Object(out)
        }
        "array" => {
            let n = schema["minItems"].as_u64().unwrap_or(0).min(4) as usize;
            Value::Array((0..n).map(|_| sample(&schema["items"], depth + 1)).collect())
        }
        "integer" => {
            let low = schema["minimum"].as_i64().or(schema["exclusiveMinimum"].as_i64().map(|m| m + 1));
            let high = schema["maximum"].as_i64().or(schema["exclusiveMaximum"].as_i64().map(|m| m - 1));
            json!(low.unwrap_or(1.min(high.unwrap_or(1))))
        }
        "number" => {
            let low = schema["minimum"].as_f64().or(schema["exclusiveMinimum"].as_f64().map(|m| m + 1.0));
            let high = schema["maximum"].as_f64().or(schema["exclusiveMaximum"].as_f64().map(|m| m - 1.0));
            json!(low.unwrap_or(1.0_f64.min(high.unwrap_or(1.0))))
        }
        "boolean" => json!(false),
        "null" => Value::Null,
        _ => {
            let mut s = match schema["format"].as_str() {
                Some("email") => "sample@example.com".to_string(),
                Some("uri" | "url") => "https://example.com/sample".to_string(),
                Some("date-time") => "2026-01-01T00:00:00Z".to_string(),
                Some("date") => "2026-01-01".to_string(),
                Some("uuid") => "00000000-0000-4000-8000-000000000000".to_string(),
                _ => "sample".to_string(),
            };
            let min = (schema["minLength"].as_u64().unwrap_or(0) as usize).min(10_000);
            if s.len() < min {
                s.push_str(&"x".repeat(min - s.len()));
            }
            if let Some(max) = schema["maxLength"].as_u64() {
                s.truncate(max as usize);
            }
            json!(s)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_fit_their_schemas() {
        let schema = json!({"type": "object", "required": ["vendor", "decision", "n", "tags"], "properties": {
            "vendor": {"type": "string", "minLength": 9},
            "decision": {"enum": ["approve", "reject"]},
            "n": {"type": "integer", "minimum": 3},
            "tags": {"type": "array", "minItems": 1, "items": {"type": "string"}},
            "extra": {"type": "boolean"}
        }, "additionalProperties": false});
        let value = sample(&schema, 0);
        assert!(jsonschema::validator_for(&schema).expect("schema").is_valid(&value), "{value}");
        assert_eq!(value["decision"], "approve");
    }

    #[test]
    fn rendering_keeps_what_only_a_run_knows_as_a_placeholder() {
        let ctx = json!({"inputs": {"vendor": "Acme"}, "item": null, "run": {"id": "x"}, "steps": {}});
        let with = json!({"task": "Onboard {{ inputs.vendor }}", "prev": "{{ steps.a.output }}", "n": 3});
        let out = render(&with, &ctx);
        assert_eq!(out, json!({"task": "Onboard Acme", "prev": "[ steps.a.output ]", "n": 3}));
    }
}
