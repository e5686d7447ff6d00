//! The model tables of `cairn.toml`: `default_model`, `[providers.NAME]` and `[models.ALIAS]`,
//! checked into [`cairn_engine::models::Models`]. Every problem names the file, line, column and
//! key; a key's *value* never goes in the file (`api_key_env` names the variable that holds it).

use super::config::{is_variable, located, position};
use cairn_engine::breakers::BreakerConfig;
use cairn_engine::models::{MockReply, Model, Models, Provider, ProviderType, ToolCalling};
use serde::Deserialize;
use std::collections::BTreeMap;
use toml::Spanned;

/// `[providers.NAME]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ProviderFile {
    #[serde(rename = "type")]
    kind: Spanned<String>,
    /// Required but for `type = "mock"`.
    base_url: Option<Spanned<String>>,
    api_key_env: Option<Spanned<String>>,
    /// Seconds.
    connect_timeout: Option<Spanned<f64>>,
    request_timeout: Option<Spanned<f64>>,
    #[serde(default)]
    headers: BTreeMap<String, Spanned<String>>,
    breaker: Option<BreakerFile>,
    /// `type = "mock"` only: `[[providers.NAME.replies]]` with `when` and `say`.
    #[serde(default)]
    replies: Vec<Spanned<MockReply>>,
}

/// `[providers.NAME] breaker = {…}` as written: when the provider is skipped for a while.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BreakerFile {
    /// Failures in a row that open it.
    failures: Option<Spanned<i64>>,
    /// Or this share of failed calls (0 to 1) …
    failure_rate: Option<Spanned<f64>>,
    /// … over at least this many calls …
    min_calls: Option<Spanned<i64>>,
    /// … in this many seconds.
    window: Option<Spanned<f64>>,
    /// Seconds an open breaker waits before it lets one probe call through.
    cool_down: Option<Spanned<f64>>,
}

/// `[models.ALIAS]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ModelFile {
    provider: Spanned<String>,
    model: Spanned<String>,
    input_usd_per_mtok: Option<Spanned<f64>>,
    output_usd_per_mtok: Option<Spanned<f64>>,
    cached_input_usd_per_mtok: Option<Spanned<f64>>,
    context_window: Option<Spanned<i64>>,
    max_output_tokens: Option<Spanned<i64>>,
    /// `cache = {ttl = "1h"}`: answers of this model are kept across runs for that long.
    cache: Option<CacheFile>,
    /// `tool_calling = "json" | "native"`: how agent steps give this model its tools.
    tool_calling: Option<Spanned<String>>,
}

/// `cache = {ttl = "1h"}` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CacheFile {
    ttl: Spanned<String>,
}

/// Names a provider or model alias may have (as step `with.model` writes them).
fn is_alias(s: &str) -> bool {
    (1..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// Checks the model tables; problems go to `problems`, one line each.
pub(crate) fn check(
    default_model: Option<Spanned<String>>,
    providers: BTreeMap<Spanned<String>, Spanned<ProviderFile>>,
    models: BTreeMap<Spanned<String>, Spanned<ModelFile>>,
    text: &str,
    file: &str,
    problems: &mut Vec<String>,
) -> Models {
    let at = |offset: usize| Some(position(text, offset));
    let mut out = Models::default();
    for (name, p) in providers {
        let key = name.get_ref().clone();
        if !is_alias(&key) {
            let msg = format!(
                "`providers.{}`: a provider name is 1 to 64 of A-Z, a-z, 0-9, `_`, `-`, `.`",
                key.escape_debug()
            );
            problems.push(located(file, at(name.span().start), &msg));
            continue;
        }
        let p = p.into_inner();
        let Some(kind) = ProviderType::parse(p.kind.get_ref()) else {
            let msg = format!(
                "`providers.{key}.type` is `{}`; use `openai` (any OpenAI-compatible chat-completions server: OpenAI, \
                 vLLM, Ollama, llama.cpp, LiteLLM), `anthropic` (the Messages API) or `mock` (scripted, offline)",
                p.kind.get_ref().escape_debug()
            );
            problems.push(located(file, at(p.kind.span().start), &msg));
            continue;
        };
        let base_url = match (&p.base_url, kind) {
            (None, ProviderType::Mock) => String::new(),
            (None, _) => {
                let msg = format!(
                    "`providers.{key}` has no `base_url`; give the server's URL (e.g. http://127.0.0.1:8000/v1)"
                );
                problems.push(located(file, at(p.kind.span().start), &msg));
                String::new()
            }
            (Some(written), _) => {
                let base_url = written.get_ref().trim_end_matches('/').to_string();
                let scheme_ok = base_url.starts_with("http://") || base_url.starts_with("https://");
                if !scheme_ok || base_url.len() <= "https://".len() || base_url.contains(char::is_whitespace) {
                    let msg = format!(
                        "`providers.{key}.base_url` is `{}`, not an http:// or https:// URL (e.g. \
                         http://127.0.0.1:8000/v1)",
                        written.get_ref().escape_debug()
                    );
                    problems.push(located(file, at(written.span().start), &msg));
                }
                base_url
            }
        };
        if let (Some(var), ProviderType::Mock) = (&p.api_key_env, kind) {
            let msg =
                format!("`providers.{key}.api_key_env`: a `mock` provider answers in this process and takes no key");
            problems.push(located(file, at(var.span().start), &msg));
        }
        if let (Some(first), false) = (p.replies.first(), kind == ProviderType::Mock) {
            let msg = format!("`providers.{key}.replies` is for `type = \"mock\"` providers only");
            problems.push(located(file, at(first.span().start), &msg));
        }
        if let Some(var) = &p.api_key_env
            && !is_variable(var.get_ref())
        {
            // Not quoted: what was written there may be a pasted key.
            let msg = format!(
                "`providers.{key}.api_key_env` is not a variable name (letters, digits and `_`): it names the \
                 environment variable that holds the key, never the key itself (the value written is not shown)"
            );
            problems.push(located(file, at(var.span().start), &msg));
        }
        let mut seconds = |field: &str, v: &Option<Spanned<f64>>, default: u64| -> u64 {
            match v {
                None => default,
                Some(s) if *s.get_ref() > 0.0 && *s.get_ref() <= 3_600.0 => (s.get_ref() * 1000.0) as u64,
                Some(s) => {
                    let msg =
                        format!("`providers.{key}.{field}` is {} seconds; use more than 0, at most 3600", s.get_ref());
                    problems.push(located(file, at(s.span().start), &msg));
                    default
                }
            }
        };
        let connect_timeout_ms = seconds("connect_timeout", &p.connect_timeout, 10_000);
        let request_timeout_ms = seconds("request_timeout", &p.request_timeout, 120_000);
        let mut breaker = BreakerConfig::default();
        if let Some(b) = &p.breaker {
            breaker.window_ms = seconds("breaker.window", &b.window, breaker.window_ms);
            breaker.cool_down_ms = seconds("breaker.cool_down", &b.cool_down, breaker.cool_down_ms);
            let mut count = |field: &str, v: &Option<Spanned<i64>>, default: u32| -> u32 {
                match v {
                    None => default,
                    Some(n) if (1..=10_000).contains(n.get_ref()) => *n.get_ref() as u32,
                    Some(n) => {
                        let msg = format!("`providers.{key}.breaker.{field}` is {}; use 1 to 10000", n.get_ref());
                        problems.push(located(file, at(n.span().start), &msg));
                        default
                    }
                }
            };
            breaker.failures = count("failures", &b.failures, breaker.failures);
            breaker.min_calls = count("min_calls", &b.min_calls, breaker.min_calls);
            match &b.failure_rate {
                Some(r) if *r.get_ref() > 0.0 && *r.get_ref() <= 1.0 => breaker.failure_rate = *r.get_ref(),
                Some(r) => {
                    let msg = format!(
                        "`providers.{key}.breaker.failure_rate` is {}; use a share above 0, at most 1 (0.5 = half)",
                        r.get_ref()
                    );
                    problems.push(located(file, at(r.span().start), &msg));
                }
                None => {}
            }
        }
        let mut headers = BTreeMap::new();
        for (h, v) in p.headers {
            let lower = h.to_ascii_lowercase();
            let secretish = ["auth", "key", "token", "secret", "cookie", "password", "session"]
                .iter()
                .any(|word| lower.contains(word));
            if secretish {
                let msg = format!(
                    "`providers.{key}.headers.{h}` would put a credential in this file; name its variable in \
                     `api_key_env` instead"
                );
                problems.push(located(file, at(v.span().start), &msg));
                continue;
            }
            headers.insert(h, v.into_inner());
        }
        out.providers.insert(
            key.clone(),
            Provider {
                name: key,
                kind,
                base_url,
                api_key_env: p.api_key_env.map(Spanned::into_inner),
                connect_timeout_ms,
                request_timeout_ms,
                headers,
                breaker,
                replies: p.replies.into_iter().map(Spanned::into_inner).collect(),
            },
        );
    }
    let known: Vec<String> = out.providers.keys().cloned().collect();
    for (alias, m) in models {
        let key = alias.get_ref().clone();
        if !is_alias(&key) {
            let msg =
                format!("`models.{}`: a model alias is 1 to 64 of A-Z, a-z, 0-9, `_`, `-`, `.`", key.escape_debug());
            problems.push(located(file, at(alias.span().start), &msg));
            continue;
        }
        let m = m.into_inner();
        if !known.contains(m.provider.get_ref()) {
            let listed = if known.is_empty() { "none is declared".to_string() } else { known.join(", ") };
            let msg = format!(
                "`models.{key}.provider` is `{}`, which no `[providers.…]` table declares ({listed})",
                m.provider.get_ref().escape_debug()
            );
            problems.push(located(file, at(m.provider.span().start), &msg));
        }
        let mut price = |field: &str, v: &Option<Spanned<f64>>| -> Option<f64> {
            let s = v.as_ref()?;
            if s.get_ref().is_finite() && *s.get_ref() >= 0.0 {
                Some(*s.get_ref())
            } else {
                let msg =
                    format!("`models.{key}.{field}` is {}; a price is 0 or more (USD per million tokens)", s.get_ref());
                problems.push(located(file, at(s.span().start), &msg));
                None
            }
        };
        let input_usd_per_mtok = price("input_usd_per_mtok", &m.input_usd_per_mtok).unwrap_or(0.0);
        let output_usd_per_mtok = price("output_usd_per_mtok", &m.output_usd_per_mtok).unwrap_or(0.0);
        let cached_input_usd_per_mtok = price("cached_input_usd_per_mtok", &m.cached_input_usd_per_mtok);
        let mut tokens = |field: &str, v: &Option<Spanned<i64>>| -> Option<u32> {
            let s = v.as_ref()?;
            match u32::try_from(*s.get_ref()) {
                Ok(n) if n > 0 => Some(n),
                _ => {
                    let msg = format!("`models.{key}.{field}` is {}; use a number of tokens above 0", s.get_ref());
                    problems.push(located(file, at(s.span().start), &msg));
                    None
                }
            }
        };
        let context_window = tokens("context_window", &m.context_window);
        let max_output_tokens = tokens("max_output_tokens", &m.max_output_tokens);
        let cache_ttl_ms = m.cache.as_ref().and_then(|c| match cairn_core::duration::parse_ms(c.ttl.get_ref()) {
            Ok(ms) if (1_000..=30 * 86_400_000).contains(&ms) => Some(ms),
            Ok(_) => {
                let msg = format!("`models.{key}.cache.ttl` is {}; use 1s to 30d", c.ttl.get_ref());
                problems.push(located(file, at(c.ttl.span().start), &msg));
                None
            }
            Err(e) => {
                problems.push(located(file, at(c.ttl.span().start), &format!("`models.{key}.cache.ttl`: {e}")));
                None
            }
        });
        let tool_calling = match &m.tool_calling {
            None => ToolCalling::Json,
            Some(s) => ToolCalling::parse(s.get_ref()).unwrap_or_else(|| {
                let msg = format!(
                    "`models.{key}.tool_calling` is `{}`; use \"json\" (a JSON action format any model can follow) or \
                     \"native\" (the provider's own tool calls)",
                    s.get_ref().escape_debug()
                );
                problems.push(located(file, at(s.span().start), &msg));
                ToolCalling::Json
            }),
        };
        out.models.insert(
            key.clone(),
            Model {
                alias: key,
                provider: m.provider.into_inner(),
                model: m.model.into_inner(),
                input_usd_per_mtok,
                output_usd_per_mtok,
                cached_input_usd_per_mtok,
                context_window,
                max_output_tokens,
                cache_ttl_ms,
                tool_calling,
            },
        );
    }
    if let Some(d) = default_model {
        if !out.models.contains_key(d.get_ref()) {
            let names: Vec<&str> = out.models.keys().map(String::as_str).collect();
            let hint = crate::steps::closest(d.get_ref(), &names)
                .map(|c| format!("; did you mean `{c}`?"))
                .unwrap_or_default();
            let listed = if names.is_empty() { "none is declared".to_string() } else { names.join(", ") };
            let msg = format!(
                "`default_model` is `{}`, which no `[models.…]` table declares ({listed}){hint}",
                d.get_ref().escape_debug()
            );
            problems.push(located(file, at(d.span().start), &msg));
        }
        out.default_model = Some(d.into_inner());
    }
    out
}

/// `cairn models [--json] [--check]`: what the config declares, and whether each provider
/// answers.
pub async fn list(models: &Models, json: bool, check: bool) -> crate::CliResult {
    let mut answers = BTreeMap::new();
    if check {
        for p in models.providers.values() {
            answers.insert(p.name.clone(), cairn_engine::models::check(p).await);
        }
    }
    let failed = answers.values().filter(|a| a.is_err()).count();
    let verdict = || -> crate::CliResult {
        if failed > 0 { Err(crate::CliError::env(format!("{failed} provider(s) did not answer"))) } else { Ok(()) }
    };
    if json {
        let mut doc = serde_json::to_value(models).unwrap_or_default();
        if check {
            let checks: serde_json::Map<String, serde_json::Value> = answers
                .iter()
                .map(|(name, a)| {
                    let v = match a {
                        Ok(what) => serde_json::json!({"ok": true, "message": what}),
                        Err(why) => serde_json::json!({"ok": false, "message": why}),
                    };
                    (name.clone(), v)
                })
                .collect();
            doc["checks"] = serde_json::Value::Object(checks);
        }
        crate::out!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
        return verdict();
    }
    if models.is_empty() {
        crate::out!(
            "no models configured: steps use `mock_model`. Declare [providers.NAME] and [models.ALIAS] in cairn.toml \
             (README: Models)"
        );
        return Ok(());
    }
    let rows: Vec<Vec<String>> = models
        .models
        .values()
        .map(|m| {
            let provider = models.providers.get(&m.provider);
            vec![
                format!(
                    "{}{}",
                    m.alias,
                    if models.default_model.as_deref() == Some(&m.alias) { " (default)" } else { "" }
                ),
                m.provider.clone(),
                provider.map_or("-".into(), |p| p.kind.as_str().to_string()),
                m.model.clone(),
                format!("{} / {}", m.input_usd_per_mtok, m.output_usd_per_mtok),
                m.context_window.map_or("-".into(), |c| c.to_string()),
                m.tool_calling.as_str().to_string(),
            ]
        })
        .collect();
    crate::output::out(format_args!(
        "{}",
        crate::output::table(
            &["MODEL", "PROVIDER", "TYPE", "PROVIDER MODEL", "USD/MTOK IN / OUT", "CONTEXT", "TOOLS"],
            &rows
        )
    ));
    for p in models.providers.values() {
        let key = match &p.api_key_env {
            Some(var) if std::env::var_os(var).is_some_and(|v| !v.is_empty()) => format!("key from ${var} (set here)"),
            Some(var) => format!("key from ${var} (NOT set here)"),
            None => "no key".to_string(),
        };
        if p.kind == ProviderType::Mock {
            crate::out!("provider {}: mock, in this process ({} scripted replies)", p.name, p.replies.len());
            continue;
        }
        crate::out!("provider {}: {} at {}, {key}", p.name, p.kind.as_str(), p.base_url);
        match answers.get(&p.name) {
            Some(Ok(what)) => crate::out!("  ok: {what}"),
            Some(Err(why)) => crate::out!("  FAILED: {why}"),
            None => {}
        }
    }
    verdict()
}

#[cfg(test)]
mod tests {
    use crate::config::parse;

    const GOOD: &str = "\
default_model = \"small\"

[providers.local]
type = \"openai\"
base_url = \"http://127.0.0.1:8000/v1/\"
api_key_env = \"LOCAL_API_KEY\"
request_timeout = 30
headers = { X-Team = \"agents\" }

[models.small]
provider = \"local\"
model = \"SmolLM2-135M-Instruct\"
input_usd_per_mtok = 0.10
output_usd_per_mtok = 0.20
context_window = 4096
";

    #[test]
    fn providers_and_models_resolve_with_their_prices_and_defaults() {
        let models = parse(GOOD, "cairn.toml").expect("valid").models;
        assert_eq!(models.default_model.as_deref(), Some("small"));
        let (model, provider) = models.resolve("small").expect("small resolves");
        assert_eq!((model.model.as_str(), model.context_window), ("SmolLM2-135M-Instruct", Some(4096)));
        assert_eq!(provider.base_url, "http://127.0.0.1:8000/v1", "a trailing slash is dropped");
        assert_eq!((provider.connect_timeout_ms, provider.request_timeout_ms), (10_000, 30_000));
        assert_eq!(provider.api_key_env.as_deref(), Some("LOCAL_API_KEY"));
        assert_eq!(provider.headers.get("X-Team").map(String::as_str), Some("agents"));
    }

    #[test]
    fn every_model_table_problem_is_named_with_its_position() {
        let text = "\
default_model = \"smal\"

[providers.local]
type = \"openia\"
base_url = \"ftp://x\"

[providers.cloud]
type = \"anthropic\"
base_url = \"https://api.anthropic.com\"
api_key_env = \"sk-ant-123\"
headers = { Authorization = \"Bearer x\" }

[models.small]
provider = \"locl\"
model = \"m\"
input_usd_per_mtok = -1.0
context_window = 0
";
        let message = parse(text, "cairn.toml").expect_err("refused").message;
        assert!(!message.contains("sk-ant-123"), "a pasted key is not repeated: {message}");
        let lines: Vec<&str> = message.lines().collect();
        let expect = [
            "cairn.toml:10:15: `providers.cloud.api_key_env` is not a variable name",
            "cairn.toml:11:29: `providers.cloud.headers.Authorization` would put a credential in this file",
            "cairn.toml:4:8: `providers.local.type` is `openia`; use `openai`",
            "cairn.toml:14:12: `models.small.provider` is `locl`, which no `[providers.…]` table declares (cloud)",
            "cairn.toml:16:22: `models.small.input_usd_per_mtok` is -1",
            "cairn.toml:17:18: `models.small.context_window` is 0",
            "cairn.toml:1:17: `default_model` is `smal`, which no `[models.…]` table declares (small); did you mean `small`?",
        ];
        assert_eq!(lines.len(), expect.len(), "{message}");
        for (line, want) in lines.iter().zip(expect) {
            assert!(line.starts_with(want), "{line}\n  does not start with\n{want}");
        }
        let unknown =
            parse("[models.x]\nprovider = \"p\"\nmodel = \"m\"\nprice = 1\n", "cairn.toml").expect_err("refused");
        assert!(unknown.message.starts_with("cairn.toml:4:1: unknown key `price`"), "{}", unknown.message);
        let mock = "[providers.m]\ntype = \"mock\"\n\n[[providers.m.replies]]\nwhen = \"hi\"\nsay = \"hello\"\n\n[models.x]\nprovider = \"m\"\nmodel = \"m\"\n";
        let parsed = parse(mock, "cairn.toml").expect("a mock needs no base_url").models;
        assert_eq!(parsed.providers["m"].replies[0].say, "hello");
        let stray = "[providers.p]\ntype = \"openai\"\n\n[[providers.p.replies]]\nsay = \"x\"\n";
        let message = parse(stray, "cairn.toml").expect_err("refused").message;
        assert!(
            message.contains("has no `base_url`") && message.contains("for `type = \"mock\"` providers only"),
            "{message}"
        );
        let calling = format!("{GOOD}tool_calling = \"functions\"\n");
        let message = parse(&calling, "cairn.toml").expect_err("refused").message;
        assert!(message.contains("`models.small.tool_calling` is `functions`; use \"json\""), "{message}");
        let native = parse(&format!("{GOOD}tool_calling = \"native\"\n"), "cairn.toml").expect("valid").models;
        assert_eq!(native.models["small"].tool_calling, cairn_engine::models::ToolCalling::Native);
        assert_eq!(
            parse(GOOD, "cairn.toml").expect("valid").models.models["small"].tool_calling,
            cairn_engine::models::ToolCalling::Json
        );
    }
}
