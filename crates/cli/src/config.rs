//! `cairn.toml`: settings of the processes on one host, read from `--config PATH` (env
//! `CAIRN_CONFIG`), else `./cairn.toml` when it exists.
//!
//! One [`Config`] type holds every table, each field a table of the file; add a table by adding
//! a field (and its checks in [`Config::check`]). Unknown keys are refused with the known ones
//! listed, and every error names the file, line, column and key. The engine never sees the
//! file: it receives what the tables resolve to (for `[secrets]`, a `secrets::Source`).

use crate::{CliError, CliResult};
use cairn_core::secrets::{is_name, suggest_name};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use toml::Spanned;

/// The file looked for in the working directory when `--config` is not given.
pub const DEFAULT_FILE: &str = "cairn.toml";

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `[secrets]`: `NAME = { env = "VARIABLE" }` — secret NAME is read from VARIABLE (instead of
    /// `CAIRN_SECRET_NAME`). Entries are checked by [`Config::check`], so that every message
    /// names the key.
    #[serde(default)]
    secrets: BTreeMap<Spanned<String>, Spanned<toml::Value>>,
    /// `[kinds.NAME]`: the configuration handed to every attempt of step kind NAME (e.g. a model
    /// provider's base URL). Secrets do not go here: a kind reads them by reference. A table with
    /// `queue` declares an external kind instead: run by workers claiming from that queue.
    #[serde(default)]
    kinds: BTreeMap<Spanned<String>, Spanned<toml::Value>>,
    /// The model the catalog's model steps and the planner use (a `[models.ALIAS]`).
    default_model: Option<Spanned<String>>,
    /// `[providers.NAME]`: where models answer (see `config_models.rs`).
    #[serde(default)]
    providers: BTreeMap<Spanned<String>, Spanned<crate::config_models::ProviderFile>>,
    /// `[models.ALIAS]`: what steps name, with price and limits.
    #[serde(default)]
    models: BTreeMap<Spanned<String>, Spanned<crate::config_models::ModelFile>>,
    /// `[tools.NAME]`: configured tools of the built-in types (see `config_tools.rs`).
    #[serde(default)]
    tools: BTreeMap<Spanned<String>, Spanned<toml::Table>>,
    /// `[mcp.NAME]`: MCP servers whose tools are registered as `NAME.TOOL`.
    #[serde(default)]
    mcp: BTreeMap<Spanned<String>, Spanned<toml::Table>>,
}

/// A config file, read and checked.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Where it came from; `None` when there is none (every setting at its default).
    pub path: Option<PathBuf>,
    /// Secret name → environment variable.
    pub secrets: BTreeMap<String, String>,
    /// Kind name → its configuration.
    pub kinds: BTreeMap<String, serde_json::Value>,
    /// External kinds (`[kinds.NAME]` with a `queue`), by name.
    pub external: BTreeMap<String, cairn_core::kinds::ExternalKind>,
    /// Model providers and aliases.
    pub models: cairn_engine::models::Models,
    /// Configured tools and MCP servers, as written.
    pub tools: cairn_engine::tools::ToolsConfig,
    /// The tool registry they make (built once, when the file is read).
    registry: Option<std::sync::Arc<cairn_engine::tools::Tools>>,
}

/// What a file's tables resolve to.
#[derive(Debug, Default)]
pub(crate) struct Parsed {
    secrets: BTreeMap<String, String>,
    kinds: BTreeMap<String, serde_json::Value>,
    external: BTreeMap<String, cairn_core::kinds::ExternalKind>,
    pub(crate) models: cairn_engine::models::Models,
    pub(crate) tools: cairn_engine::tools::ToolsConfig,
}

impl Loaded {
    /// The tools this process can call: the built-ins and the configured ones.
    pub fn registry(&self) -> std::sync::Arc<cairn_engine::tools::Tools> {
        self.registry.clone().unwrap_or_else(|| std::sync::Arc::new(cairn_engine::tools::Tools::builtin()))
    }

    /// What each kind's attempts are configured with: the `[kinds.NAME]` tables, and for the
    /// kinds that call models (`llm`, `agent`) also the model tables (under `models`).
    pub fn kind_config(&self) -> BTreeMap<String, serde_json::Value> {
        let mut kinds = self.kinds.clone();
        if !self.models.is_empty() {
            let models = serde_json::to_value(&self.models).unwrap_or_default();
            for kind in ["llm", "agent"] {
                let table = kinds.entry(kind.to_string()).or_insert_with(|| serde_json::json!({}));
                if let Some(table) = table.as_object_mut() {
                    table.insert("models".into(), models.clone());
                }
            }
        }
        kinds
    }

    /// Where this process finds secret values.
    pub fn secret_source(&self) -> cairn_engine::secrets::Source {
        let source = cairn_engine::secrets::Source::from_env();
        match &self.path {
            Some(path) => source.with_mapping(path.display().to_string(), self.secrets.clone()),
            None => source,
        }
    }
}

/// The config this process read at start (one command per process).
static LOADED: std::sync::OnceLock<Loaded> = std::sync::OnceLock::new();

/// Keeps the config read at start for the rest of the process.
pub fn set(loaded: Loaded) {
    let _ = LOADED.set(loaded);
}

/// The config read at start (every setting at its default if none was).
pub fn get() -> &'static Loaded {
    LOADED.get_or_init(Loaded::default)
}

/// Reads the config: `flag` (from `--config` or `CAIRN_CONFIG`) must exist; without it,
/// `./cairn.toml` is read if it exists. Any problem is a usage error (exit 2).
pub fn load(flag: Option<&Path>) -> CliResult<Loaded> {
    let path = match flag {
        Some(path) => path.to_path_buf(),
        None if Path::new(DEFAULT_FILE).is_file() => PathBuf::from(DEFAULT_FILE),
        None => return Ok(Loaded::default()),
    };
    let text = std::fs::read_to_string(&path).map_err(|e| {
        CliError::usage(format!("cannot read the config file {} (--config / CAIRN_CONFIG): {e}", path.display()))
    })?;
    let parsed = parse(&text, &path.display().to_string())?;
    let registry = cairn_engine::tools::Tools::from_config(&parsed.tools)
        .map_err(|problems| CliError::usage(format!("{}: the tools cannot be set up:\n{problems}", path.display())))?;
    Ok(Loaded {
        path: Some(path),
        secrets: parsed.secrets,
        kinds: parsed.kinds,
        external: parsed.external,
        models: parsed.models,
        tools: parsed.tools,
        registry: Some(std::sync::Arc::new(registry)),
    })
}

/// `cairn config check`: the file is valid (else `load` already failed); each mapped secret
/// and whether its variable is set here.
pub fn check(loaded: &Loaded) -> CliResult {
    let Some(path) = &loaded.path else {
        crate::out!(
            "no config file (--config, CAIRN_CONFIG or ./{DEFAULT_FILE}); secrets come from CAIRN_SECRET_<NAME>"
        );
        return Ok(());
    };
    crate::out!("{}: ok", path.display());
    for (name, var) in &loaded.secrets {
        let set = std::env::var_os(var).is_some_and(|v| !v.is_empty());
        crate::out!("  secrets.{name} <- ${var} ({})", if set { "set here" } else { "NOT set here" });
    }
    for name in loaded.kinds.keys() {
        crate::out!("  kinds.{name}: configured");
    }
    for (name, kind) in &loaded.external {
        crate::out!("  kinds.{name}: external, queue {}", kind.queue);
    }
    for m in loaded.models.models.values() {
        crate::out!("  models.{} -> {} ({})", m.alias, m.model, m.provider);
    }
    for t in loaded.tools.tools.values() {
        crate::out!("  tools.{} ({})", t.name, t.kind);
    }
    for m in loaded.tools.mcp.values() {
        let how = m.url.clone().unwrap_or_else(|| m.command.join(" "));
        crate::out!("  mcp.{} ({how})", m.name);
    }
    Ok(())
}

/// Parses and checks the text of a config file named `file` in messages.
pub(crate) fn parse(text: &str, file: &str) -> CliResult<Parsed> {
    let config: Config = toml::from_str(text).map_err(|e| {
        let at = e.span().map(|s| position(text, s.start));
        CliError::usage(located(file, at, &toml_message(e.message())))
    })?;
    config.check(text, file)
}

impl Config {
    /// The checks serde cannot make; returns what the tables resolve to.
    fn check(self, text: &str, file: &str) -> CliResult<Parsed> {
        let mut problems = Vec::new();
        let mut kinds = BTreeMap::new();
        let mut external = BTreeMap::new();
        let known = cairn_engine::kinds::builtin().specs();
        for (name, entry) in self.kinds {
            let key = name.get_ref();
            let at = Some(position(text, name.span().start));
            if let toml::Value::Table(table) = entry.get_ref()
                && table.contains_key("queue")
            {
                let spec = serde_json::to_value(table).unwrap_or_default();
                match cairn_core::validate::external_kind(key, &spec, &known) {
                    Ok(kind) => {
                        external.insert(key.clone(), kind);
                    }
                    Err(list) => problems.extend(list.iter().map(|p| located(file, at, &p.message))),
                }
                continue;
            }
            if known.lookup(key).is_none() {
                let names = known.names();
                let hint =
                    crate::steps::closest(key, &names).map(|c| format!("; did you mean `{c}`?")).unwrap_or_default();
                problems.push(located(
                    file,
                    at,
                    &format!(
                        "`kinds.{key}` is not a step kind this binary runs ({}); to declare an external kind run by \
                         your own workers, give it a `queue = \"NAME\"`{hint}",
                        names.join(", ")
                    ),
                ));
                continue;
            }
            match serde_json::to_value(entry.get_ref()) {
                Ok(value @ serde_json::Value::Object(_)) => {
                    kinds.insert(key.clone(), value);
                }
                _ => problems.push(located(
                    file,
                    Some(position(text, entry.span().start)),
                    &format!("`kinds.{key}` must be a table of settings for that kind"),
                )),
            }
        }
        let mut secrets = BTreeMap::new();
        for (name, entry) in self.secrets {
            let key = name.get_ref();
            let at = |s: &std::ops::Range<usize>| Some(position(text, s.start));
            if !is_name(key) {
                let hint = suggest_name(key).map(|n| format!("; did you mean `{n}`?")).unwrap_or_default();
                problems.push(located(
                    file,
                    at(&name.span()),
                    &format!(
                        "`secrets.{}` is not a secret name: use an upper-case letter, then upper-case letters, digits \
                         and `_` (at most 64), as templates write it (`{{{{ secrets.API_TOKEN }}}}`){hint}",
                        key.escape_debug()
                    ),
                ));
                continue;
            }
            let expected = format!("write `{key} = {{ env = \"VARIABLE\" }}`");
            let var = match entry.get_ref() {
                toml::Value::Table(table) => {
                    let unknown: Vec<&String> = table.keys().filter(|k| *k != "env").collect();
                    match (table.get("env"), unknown.first()) {
                        (_, Some(other)) => Err(format!(
                            "`secrets.{key}` has an unknown key `{}`; the only key is `env`: {expected}",
                            other.escape_debug()
                        )),
                        (Some(toml::Value::String(var)), None) if is_variable(var) => Ok(var.clone()),
                        (Some(toml::Value::String(var)), None) => Err(format!(
                            "`secrets.{key}.env` is `{}`, which is not an environment variable name (letters, digits \
                             and `_`, not starting with a digit)",
                            var.escape_debug()
                        )),
                        (Some(other), None) => Err(format!(
                            "`secrets.{key}.env` must be the name of an environment variable, not a {}",
                            other.type_str()
                        )),
                        (None, None) => Err(format!("`secrets.{key}` says nowhere to read the value from; {expected}")),
                    }
                }
                other => Err(format!(
                    "`secrets.{key}` must be a table naming where the value comes from, not a {}; {expected} (a \
                     value itself never goes in this file)",
                    other.type_str()
                )),
            };
            match var {
                Ok(var) => {
                    secrets.insert(key.clone(), var);
                }
                Err(message) => problems.push(located(file, at(&entry.span()), &message)),
            }
        }
        let models =
            crate::config_models::check(self.default_model, self.providers, self.models, text, file, &mut problems);
        let base = Path::new(file).parent().filter(|p| !p.as_os_str().is_empty());
        let tools = crate::config_tools::check(self.tools, self.mcp, base, text, file, &mut problems);
        if problems.is_empty() {
            Ok(Parsed { secrets, kinds, external, models, tools })
        } else {
            Err(CliError::usage(problems.join("\n")))
        }
    }
}

pub(crate) fn is_variable(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// serde's words for the file's: a field is a key.
fn toml_message(message: &str) -> String {
    let message = message.trim();
    match message.strip_prefix("unknown field ") {
        Some(rest) => {
            let rest = match rest.split_once(", expected ") {
                Some((field, expected)) if expected.starts_with("one of ") => {
                    format!("{field}; the known keys are {}", &expected["one of ".len()..])
                }
                Some((field, expected)) if expected.contains(" or ") => {
                    format!("{field}; the known keys are {}", expected.replace(" or ", ", "))
                }
                Some((field, expected)) => format!("{field}; the only known key is {expected}"),
                None => rest.to_string(),
            };
            format!("unknown key {rest}")
        }
        None => message.to_string(),
    }
}

pub(crate) fn located(file: &str, at: Option<(usize, usize)>, message: &str) -> String {
    match at {
        Some((line, column)) => format!("{file}:{line}:{column}: {message}"),
        None => format!("{file}: {message}"),
    }
}

/// 1-based (line, column) of byte `offset`, counting characters.
pub(crate) fn position(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(text: &str) -> String {
        parse(text, "cairn.toml").expect_err("refused").message
    }

    #[test]
    fn secrets_map_names_to_environment_variables() {
        let map = parse("[secrets]\nAPI_TOKEN = { env = \"VAULT_TOKEN\" }\nOTHER.env = \"X\"\n", "cairn.toml")
            .expect("valid")
            .secrets;
        assert_eq!(map.get("API_TOKEN").map(String::as_str), Some("VAULT_TOKEN"));
        assert_eq!(map.get("OTHER").map(String::as_str), Some("X"));
        assert!(parse("", "cairn.toml").expect("empty is fine").secrets.is_empty());
    }

    #[test]
    fn kinds_tables_configure_known_kinds_only() {
        let parsed =
            parse("[kinds.http]\nuser_agent = \"cairn\"\nlimits = { rps = 5 }\n", "cairn.toml").expect("valid");
        assert_eq!(parsed.kinds.get("http"), Some(&serde_json::json!({"user_agent": "cairn", "limits": {"rps": 5}})));
        let e = error("[kinds.htp]\nx = 1\n");
        assert!(
            e.starts_with("cairn.toml:1:8: `kinds.htp` is not a step kind") && e.ends_with("did you mean `http`?"),
            "{e}"
        );
        assert!(error("[kinds]\nhttp = 3\n").contains("`kinds.http` must be a table"));
    }

    #[test]
    fn a_kinds_table_with_a_queue_declares_an_external_kind() {
        let text = "[kinds.summarize]\nqueue = \"py\"\neffect = \"read\"\ntimeout = \"30s\"\n\
                    retry = { max_attempts = 2 }\ninput_schema = { type = \"object\", required = [\"text\"] }\n";
        let parsed = parse(text, "cairn.toml").expect("valid");
        let kind = &parsed.external["summarize"];
        assert_eq!((kind.queue.as_str(), kind.timeout_ms, kind.retry.max_attempts), ("py", Some(30_000), 2));
        assert_eq!(kind.effect, cairn_core::kinds::EffectClass::Read);
        assert!(parsed.kinds.is_empty(), "an external kind is not a built-in kind's configuration");
        let e = error("[kinds.http]\nqueue = \"py\"\n");
        assert!(e.starts_with("cairn.toml:1:8: `kinds.http` names a kind built into cairn"), "{e}");
        let e = error("[kinds.x]\nqueue = \"py\"\nretry = { max_attempts = 0 }\ncolour = 1\n");
        assert!(e.contains("`kinds.x.retry.max_attempts` is 0, but must be between 1 and 100"), "{e}");
        assert!(e.contains("`kinds.x` has an unknown key `colour`"), "{e}");
        assert!(error("[kinds.summarise]\nx = 1\n").contains("give it a `queue = \"NAME\"`"));
    }

    #[test]
    fn config_errors_name_the_file_line_column_and_key() {
        assert_eq!(
            error("[secrets]\nAPI_TOKEN = { env = \"X\" }\n\n[secret]\nB = 1\n"),
            "cairn.toml:4:2: unknown key `secret`; the known keys are `secrets`, `kinds`, `default_model`, `providers`, `models`, `tools`, `mcp`"
        );
        assert_eq!(
            error("[secrets]\napi_token = { env = \"X\" }\n").split(':').take(3).collect::<Vec<_>>(),
            ["cairn.toml", "2", "1"]
        );
        assert!(error("[secrets]\napi_token = { env = \"X\" }\n").ends_with("did you mean `API_TOKEN`?"));
        assert_eq!(
            error("[secrets]\nAPI_TOKEN = \"s3cr3t\"\n"),
            "cairn.toml:2:13: `secrets.API_TOKEN` must be a table naming where the value comes from, not a string; \
             write `API_TOKEN = { env = \"VARIABLE\" }` (a value itself never goes in this file)"
        );
        assert!(error("[secrets]\nA = { file = \"/x\" }\n").contains("`secrets.A` has an unknown key `file`"));
        assert!(error("[secrets]\nA = { env = \"1X\" }\n").contains("not an environment variable name"));
        assert!(error("[secrets\n").starts_with("cairn.toml:1:"), "{}", error("[secrets\n"));
        assert!(!error("[secrets]\nAPI_TOKEN = \"s3cr3t\"\n").contains("s3cr3t"), "a value is never repeated");
    }
}
