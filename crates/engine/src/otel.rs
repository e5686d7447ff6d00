//! OpenTelemetry traces (cargo feature `otel`), exported over OTLP/HTTP and following the GenAI
//! semantic conventions: a run is `invoke_workflow {workflow}`, an attempt of an `agent` step
//! `invoke_agent {step}` (of any other step `step {step}`), a model call `chat {model}`, a tool
//! call `execute_tool {tool}`.
//!
//! *Spans come from journaled facts*, like metrics: a run's and an attempt's span when the
//! commit that ends them is made, a call's when the call is recorded (not when an attempt gets it
//! back from the record) — so a replayed or resumed run never reports anything twice. Their ids
//! are derived from the run (trace = the run; span = the run, `run/step/attempt`, or the call's
//! key), so the spans of one run link up even when different processes report them.

use cairn_core::event::{Envelope, Event};
use cairn_core::state::RunState;
use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId, TraceState, Tracer as _,
    TracerProvider as _,
};
use opentelemetry::{Array, Context, KeyValue, StringValue, Value as OtelValue};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

static TRACER: OnceLock<SdkTracer> = OnceLock::new();
/// Model alias → (provider type, model name), from the configuration.
static MODELS: OnceLock<HashMap<String, (String, String)>> = OnceLock::new();

/// What the configuration's model aliases stand for: a `chat` span names the provider's type
/// (`openai`, `anthropic`) and the model as the provider knows it.
pub fn know_models(models: &crate::models::Models) {
    let known = models
        .models
        .values()
        .map(|m| {
            let kind = models.providers.get(&m.provider).map_or("", |p| p.kind.as_str()).to_string();
            (m.alias.clone(), (kind, m.model.clone()))
        })
        .collect();
    let _ = MODELS.set(known);
}

/// Exports until dropped; dropping it sends what is left.
pub struct Exporting(SdkTracerProvider);

impl Drop for Exporting {
    fn drop(&mut self) {
        let _ = self.0.shutdown();
    }
}

/// Starts exporting to the OTLP/HTTP collector at `endpoint` (its base URL, as
/// `OTEL_EXPORTER_OTLP_ENDPOINT` gives it: spans go to `{endpoint}/v1/traces`, as JSON).
pub fn install(endpoint: &str, service: &str) -> Result<Exporting, String> {
    // The exporter's HTTP client uses the process's TLS provider (an https collector).
    crate::tls::init();
    let url = format!("{}/v1/traces", endpoint.trim_end_matches('/'));
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(opentelemetry_otlp::Protocol::HttpJson)
        .with_endpoint(url)
        .with_timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| format!("cannot export traces to {endpoint}: {e}"))?;
    let provider = SdkTracerProvider::builder()
        .with_id_generator(Derived)
        .with_batch_exporter(exporter)
        .with_resource(opentelemetry_sdk::Resource::builder().with_service_name(service.to_string()).build())
        .build();
    let _ = TRACER.set(provider.tracer("cairn"));
    Ok(Exporting(provider))
}

thread_local! {
    /// The ids the span being built on this thread gets (see [`Derived`]).
    static NEXT: std::cell::Cell<(TraceId, SpanId)> = const { std::cell::Cell::new((TraceId::INVALID, SpanId::INVALID)) };
}

/// Hands the SDK the ids [`emit`] derived for the span it is building (on the same thread, just
/// before): the SDK's span builder takes no ids of its own.
#[derive(Debug)]
struct Derived;

impl opentelemetry_sdk::trace::IdGenerator for Derived {
    fn new_trace_id(&self) -> TraceId {
        NEXT.with(|n| n.get().0)
    }
    fn new_span_id(&self) -> SpanId {
        NEXT.with(|n| n.get().1)
    }
}

fn hex(parts: &[&str]) -> String {
    cairn_core::payload::sha256_hex(parts.join("\u{0}").as_bytes())
}

fn trace_id(run: &str) -> TraceId {
    TraceId::from_hex(&hex(&[run])[..32]).unwrap_or(TraceId::INVALID)
}

fn span_id(parts: &[&str]) -> SpanId {
    SpanId::from_hex(&hex(parts)[..16]).unwrap_or(SpanId::INVALID)
}

fn run_span(run: &str) -> SpanId {
    span_id(&[run, "run"])
}

fn attempt_span(run: &str, step: &str, attempt: u32) -> SpanId {
    span_id(&[run, step, &attempt.to_string()])
}

fn time(ms: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64)
}

struct Spec {
    name: String,
    run: String,
    id: SpanId,
    parent: Option<SpanId>,
    start_ms: i64,
    end_ms: i64,
    attributes: Vec<KeyValue>,
    error: Option<String>,
}

fn emit(s: Spec) {
    let Some(tracer) = TRACER.get() else { return };
    let trace = trace_id(&s.run);
    let parent = match s.parent {
        Some(p) => Context::new().with_remote_span_context(SpanContext::new(
            trace,
            p,
            TraceFlags::SAMPLED,
            true,
            TraceState::default(),
        )),
        None => Context::new(),
    };
    NEXT.with(|n| n.set((trace, s.id)));
    let mut builder = tracer.span_builder(s.name);
    builder.span_kind = Some(SpanKind::Internal);
    builder.start_time = Some(time(s.start_ms));
    builder.attributes = Some(s.attributes);
    let mut span = builder.start_with_context(tracer, &parent);
    if let Some(message) = s.error {
        span.set_status(Status::error(message));
    }
    span.end_with_timestamp(time(s.end_ms));
}

/// Reports what one commit of `state`'s run ended: the run itself, or attempts.
pub(crate) fn committed(state: &RunState, events: &[Envelope]) {
    if TRACER.get().is_none() {
        return;
    }
    let run = state.run_id.to_string();
    for env in events {
        match &env.event {
            Event::RunCompleted { .. }
            | Event::RunFailed { .. }
            | Event::RunCancelled { .. }
            | Event::RunCompensated => {
                let error = match &env.event {
                    Event::RunFailed { failure, .. } => {
                        Some(format!("{}: {}", failure.class.as_str(), failure.message))
                    }
                    _ => None,
                };
                // A run retried in place ends again: that ending is its own span under the
                // first (which its attempts hang under), so no span id is reported twice.
                let retried = state.steps.iter().any(|s| s.retry_base > 0);
                let (id, parent) = if retried {
                    (span_id(&[&run, "run", &env.seq.to_string()]), Some(run_span(&run)))
                } else {
                    (run_span(&run), None)
                };
                emit(Spec {
                    name: format!("invoke_workflow {}", state.workflow),
                    run: run.clone(),
                    id,
                    parent,
                    start_ms: state.created_at_ms,
                    end_ms: env.at_ms,
                    attributes: vec![
                        KeyValue::new("gen_ai.operation.name", "invoke_workflow"),
                        KeyValue::new("cairn.run_id", run.clone()),
                        KeyValue::new("cairn.workflow", state.workflow.clone()),
                        KeyValue::new("cairn.status", state.status.as_str()),
                    ],
                    error,
                });
            }
            Event::AttemptSucceeded { step, attempt, duration_ms, .. }
            | Event::AttemptFailed { step, attempt, duration_ms, .. } => {
                let kind =
                    state.definition.as_ref().and_then(|d| d.step(step.as_str())).map_or("", |s| s.kind.as_str());
                let agent = kind == "agent";
                let mut attributes = vec![
                    KeyValue::new("gen_ai.operation.name", if agent { "invoke_agent" } else { "execute_step" }),
                    KeyValue::new("cairn.run_id", run.clone()),
                    KeyValue::new("cairn.step", step.to_string()),
                    KeyValue::new("cairn.attempt", i64::from(*attempt)),
                    KeyValue::new("cairn.kind", kind.to_string()),
                ];
                if agent {
                    attributes.push(KeyValue::new("gen_ai.agent.name", step.to_string()));
                }
                let error = match &env.event {
                    Event::AttemptFailed { failure, .. } => {
                        Some(format!("{}: {}", failure.class.as_str(), failure.message))
                    }
                    _ => None,
                };
                emit(Spec {
                    name: if agent { format!("invoke_agent {step}") } else { format!("step {step}") },
                    run: run.clone(),
                    id: attempt_span(&run, step.as_str(), *attempt),
                    parent: Some(run_span(&run)),
                    start_ms: env.at_ms - *duration_ms as i64,
                    end_ms: env.at_ms,
                    attributes,
                    error,
                });
            }
            _ => {}
        }
    }
}

/// What a recorded call was: see [`call`].
pub(crate) struct CallFacts<'a> {
    pub run: &'a str,
    /// The step (`STEP.compensate` for a compensation's call).
    pub step: &'a str,
    pub attempt: u32,
    /// The call's key, `run/step/call-N`: its id.
    pub key: &'a str,
    /// `llm`, `tool`, `http`, `context`.
    pub kind: &'a str,
    /// The model alias or the tool.
    pub name: &'a str,
    pub request: &'a Value,
    pub result: Result<&'a Value, &'a str>,
    pub duration_ms: u64,
    pub at_ms: i64,
}

/// Reports a call just recorded (never one returned from the record).
pub(crate) fn call(c: CallFacts<'_>) {
    if TRACER.get().is_none() {
        return;
    }
    let mut attributes = vec![
        KeyValue::new("cairn.run_id", c.run.to_string()),
        KeyValue::new("cairn.step", c.step.to_string()),
        KeyValue::new("cairn.call.id", c.key.to_string()),
    ];
    let name = match c.kind {
        "llm" => {
            let known = MODELS.get().and_then(|m| m.get(c.name));
            let requested = known.map_or(c.name, |(_, model)| model.as_str()).to_string();
            attributes.push(KeyValue::new("gen_ai.operation.name", "chat"));
            attributes.push(KeyValue::new("gen_ai.request.model", requested.clone()));
            attributes.push(KeyValue::new("cairn.model", c.name.to_string()));
            if let Some((kind, _)) = known {
                attributes.push(KeyValue::new("gen_ai.provider.name", kind.clone()));
            }
            if let Some(provider) = c.request["provider"].as_str() {
                attributes.push(KeyValue::new("cairn.provider", provider.to_string()));
            }
            if let Ok(answer) = c.result {
                if let Some(model) = answer["provider_model"].as_str() {
                    attributes.push(KeyValue::new("gen_ai.response.model", model.to_string()));
                }
                for (key, field) in
                    [("gen_ai.usage.input_tokens", "input_tokens"), ("gen_ai.usage.output_tokens", "output_tokens")]
                {
                    if let Some(n) = answer["usage"][field].as_i64() {
                        attributes.push(KeyValue::new(key, n));
                    }
                }
                if let Some(reason) = answer["finish_reason"].as_str() {
                    let reasons = Array::String(vec![StringValue::from(reason.to_string())]);
                    attributes.push(KeyValue::new("gen_ai.response.finish_reasons", OtelValue::Array(reasons)));
                }
            }
            format!("chat {requested}")
        }
        "tool" => {
            attributes.push(KeyValue::new("gen_ai.operation.name", "execute_tool"));
            attributes.push(KeyValue::new("gen_ai.tool.name", c.name.to_string()));
            attributes.push(KeyValue::new("gen_ai.tool.call.id", c.key.to_string()));
            format!("execute_tool {}", c.name)
        }
        other => format!("{other} {}", c.name),
    };
    let step = c.step.strip_suffix(".compensate").unwrap_or(c.step);
    emit(Spec {
        name,
        run: c.run.to_string(),
        id: span_id(&[c.key]),
        parent: Some(attempt_span(c.run, step, c.attempt)),
        start_ms: c.at_ms - c.duration_ms as i64,
        end_ms: c.at_ms,
        attributes,
        error: c.result.err().map(str::to_string),
    });
}
