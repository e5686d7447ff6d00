//! The planner that asks a model (`--planner model`, `"planner": "model"`): the configured default
//! model gets the goal and the catalog's templates and answers with structured output against
//! the catalog's choice schema. The plan is validated like any file; a rejected plan is sent back
//! once with its problems, then refused with them. The run journals the plan it gets
//! (`PlanRecorded`), so replay never asks the model again.

use crate::models::Models;
use cairn_core::catalog::{Catalog, MODEL_PLAN_SYSTEM, PlanError};
use cairn_core::event::PlanInfo;
use cairn_core::kinds::Kinds;
use cairn_core::{Definition, Failure};
use cairn_store::{CallCost, CallRow};
use serde_json::{Value, json};

/// Where the planner's calls are accounted in the run they planned (`cairn cost`, `runs show`).
pub const PLAN_STEP: &str = "(plan)";

/// Why the model planner gave no plan.
#[derive(Debug)]
pub enum ModelPlanError {
    /// No `default_model` is configured (or it names no model).
    NoModel(String),
    /// The model could not be asked (unreachable, refused, no key).
    Call(Failure),
    /// Its plan was refused twice; the problems of the second.
    Rejected(PlanError),
}

impl std::fmt::Display for ModelPlanError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ModelPlanError::NoModel(why) => f.write_str(why),
            ModelPlanError::Call(failure) => write!(f, "the planner model could not be asked: {failure}"),
            ModelPlanError::Rejected(e) => write!(f, "the planner model's plan was refused twice: {e}"),
        }
    }
}

/// A plan, and the calls made to get it (to be accounted against the run once it exists).
pub struct ModelPlan {
    pub definition: Definition,
    pub info: PlanInfo,
    pub calls: Vec<CallRow>,
}

/// Asks the default model for a plan of `goal` from `catalog`.
pub async fn plan(models: &Models, catalog: &Catalog, kinds: &Kinds, goal: &str) -> Result<ModelPlan, ModelPlanError> {
    catalog.check_goal(goal).map_err(ModelPlanError::Rejected)?;
    let alias = models.default_model.clone().ok_or_else(|| {
        ModelPlanError::NoModel(
            "the model planner uses `default_model` of cairn.toml, and none is set (`cairn models` lists what is \
             configured)"
                .into(),
        )
    })?;
    let Some((model, provider)) = models.resolve(&alias) else {
        return Err(ModelPlanError::NoModel(format!("default_model `{alias}` is not a model of cairn.toml")));
    };
    let key = provider.key().map_err(ModelPlanError::NoModel)?;
    let schema = catalog.choice_schema(goal);
    let mut messages = vec![
        json!({"role": "system", "content": MODEL_PLAN_SYSTEM}),
        json!({"role": "user", "content": catalog.choice_prompt(goal)}),
    ];
    let mut refused = None;
    let mut calls = Vec::new();
    for n in 1..=2u32 {
        let body = json!({
            "messages": messages,
            "temperature": 0,
            "max_tokens": 400,
            "response_format": {"type": "json_schema", "json_schema": {"name": "plan", "schema": schema}},
        });
        if let Err((why, _)) = crate::breakers::allow(&provider.name, provider.breaker) {
            let failure = Failure::new(cairn_core::ErrorClass::Transient, format!("provider {}: {why}", provider.name));
            return Err(ModelPlanError::Call(failure));
        }
        let started = std::time::Instant::now();
        let answered = crate::providers::chat(provider, model, &body, key.as_deref(), None).await;
        crate::breakers::record(
            &provider.name,
            match &answered {
                Ok(_) => Some(false),
                Err(f) if f.class.is_retryable() => Some(true),
                Err(_) => None,
            },
        );
        let answer = answered.map_err(ModelPlanError::Call)?;
        let priced = crate::providers::answer(model, &body, answer.clone());
        let tokens = |k: &str| priced.pointer(&format!("/usage/{k}")).and_then(Value::as_u64).unwrap_or(0);
        calls.push(CallRow {
            step_id: PLAN_STEP.into(),
            n,
            kind: "llm".into(),
            request_hash: cairn_core::payload::Payload::of(&body).reference.hash,
            outcome: "ok".into(),
            result_hash: None,
            error: None,
            attempt: 1,
            duration_ms: started.elapsed().as_millis() as u64,
            at_ms: crate::now_ms(),
            cost: Some(CallCost {
                model: alias.clone(),
                tokens_in: tokens("input_tokens"),
                tokens_out: tokens("output_tokens"),
                cost_usd: priced["cost_usd"].as_f64().unwrap_or(0.0),
            }),
            reserved: None,
        });
        let parsed: Value = serde_json::from_str(answer.text.trim()).unwrap_or(Value::Null);
        let result = if parsed.is_null() {
            Err(PlanError::Chosen {
                goal: goal.to_string(),
                problems: vec![format!(
                    "the answer is not JSON: {}",
                    answer.text.chars().take(120).collect::<String>()
                )],
            })
        } else {
            catalog.plan_choice(goal, &parsed, kinds)
        };
        match result {
            Ok((definition, mut info)) => {
                info.planner = Some(format!("model:{alias}"));
                return Ok(ModelPlan { definition, info, calls });
            }
            Err(e) => {
                let problems = match &e {
                    PlanError::Chosen { problems, .. } | PlanError::Invalid { problems, .. } => problems.join("; "),
                    other => other.to_string(),
                };
                messages.push(json!({"role": "assistant", "content": answer.text}));
                messages.push(json!({"role": "user", "content": format!(
                    "That plan cannot run: {problems}. Answer again with a plan that fixes this."
                )}));
                refused = Some(e);
            }
        }
    }
    Err(ModelPlanError::Rejected(refused.unwrap_or(PlanError::EmptyGoal { can_plan: Vec::new() })))
}
