//! `cairn workflows register FILE…` and `cairn workflows list`: the registry that `subworkflow`
//! steps (`with: {workflow: NAME, version: N}`) and `POST /v1/runs {"workflow_name": …}` start
//! runs from. Registering the same name and version twice with the same definition is a no-op;
//! with a different one it is refused (bump `version:`).

use crate::{CliError, CliResult, DbArgs};
use cairn_core::payload::Payload;
use cairn_store::Registry;
use clap::Subcommand;
use std::path::{Path, PathBuf};

#[derive(Subcommand)]
pub enum WorkflowsCommand {
    /// Register definition files (each at the `version:` it declares).
    #[command(after_help = "Example:\n  cairn workflows register onboarding.yaml")]
    Register {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// List registered workflows, newest version first.
    #[command(after_help = "Example:\n  cairn workflows list --json")]
    List {
        #[arg(long)]
        json: bool,
    },
}

pub async fn workflows(db: &DbArgs, command: WorkflowsCommand) -> CliResult {
    match command {
        WorkflowsCommand::Register { files } => {
            let store = db.open().await?;
            for path in files {
                let definition = crate::run::load_definition(&path)?;
                let value = serde_json::to_value(&definition).map_err(|e| CliError::env(e.to_string()))?;
                let payload = Payload::of(&value);
                let hash = payload.reference.hash.clone();
                let (name, version) = (definition.name.clone(), definition.version);
                let added = store.put_workflow(&name, version, payload, cairn_engine::now_ms()).await?;
                if !added {
                    let (row, _) = store.workflow(&name, Some(version)).await?;
                    if row.definition_hash != hash {
                        return Err(CliError::usage(format!(
                            "{}: workflow '{name}' version {version} is already registered with a different definition; \
                             bump `version:` to register the change",
                            path.display()
                        )));
                    }
                }
                let what = if added { "registered" } else { "already registered" };
                crate::out!("{}: {what} {name} v{version}", path.display());
            }
            Ok(())
        }
        WorkflowsCommand::List { json } => {
            let store = db.open_existing().await?;
            let rows = store.workflows().await?;
            if json {
                crate::out!("{}", serde_json::to_string_pretty(&rows).unwrap_or_default());
                return Ok(());
            }
            let body: Vec<Vec<String>> = rows
                .iter()
                .map(|r| vec![r.name.clone(), r.version.to_string(), crate::output::timestamp(r.created_at_ms)])
                .collect();
            crate::output::out(format_args!("{}", crate::output::table(&["WORKFLOW", "VERSION", "REGISTERED"], &body)));
            Ok(())
        }
    }
}

/// What `cairn validate` knows about `subworkflow` targets: the workflows registered in the
/// database the other commands use (if it exists), and files next to the validated one.
pub struct Targets {
    registered: Vec<(String, u32)>,
    /// Where the registry was looked for, for messages.
    registry: String,
}

impl Targets {
    pub async fn load(db: &DbArgs) -> Targets {
        let registry = match &db.database {
            Some(_) => "the PostgreSQL database".to_string(),
            None => db.db.display().to_string(),
        };
        let registered = match db.open_existing().await {
            Ok(store) => store.workflows().await.map(|rows| rows.into_iter().map(|r| (r.name, r.version)).collect()),
            Err(_) => Ok(Vec::new()),
        };
        Targets { registered: registered.unwrap_or_default(), registry }
    }

    /// Why the child that a `subworkflow` step of `file` names does not exist, if it does not.
    pub fn check(&self, file: &Path, with: &serde_json::Value) -> Option<String> {
        if let Some(name) = with.get("workflow").and_then(|v| v.as_str()) {
            let version = with.get("version").and_then(|v| v.as_u64()).map(|v| v as u32);
            let known = self.registered.iter().any(|(n, v)| n == name && version.is_none_or(|want| want == *v));
            if known {
                return None;
            }
            let names: Vec<&str> = self.registered.iter().map(|(n, _)| n.as_str()).collect();
            let hint = cairn_core::validate::closest(name, names.iter().copied())
                .filter(|c| *c != name)
                .map(|c| format!("did you mean `{c}`? "))
                .unwrap_or_default();
            let what = match version {
                Some(v) if names.contains(&name) => format!("workflow `{name}` has no version {v} registered"),
                _ => format!("no workflow `{name}` is registered"),
            };
            return Some(format!(
                "{what} in {}; {hint}register it with `cairn workflows register FILE`, or name a file with `with.file`",
                self.registry
            ));
        }
        let target = with.get("file").and_then(|v| v.as_str())?;
        let relative = Path::new(target);
        let inside = relative.is_relative()
            && relative
                .components()
                .all(|c| matches!(c, std::path::Component::Normal(_) | std::path::Component::CurDir));
        if !inside {
            return Some(format!(
                "`with.file` must be a path inside this file's directory (relative, without `..`), not {target}"
            ));
        }
        let dir = file.parent().unwrap_or(Path::new("."));
        let path = dir.join(target);
        if let (Ok(real_dir), Ok(real)) = (dir.canonicalize(), path.canonicalize())
            && !real.starts_with(&real_dir)
        {
            return Some(format!("`with.file` ({target}) leads outside this file's directory"));
        }
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) => return Some(format!("cannot read the child workflow {}: {e}", path.display())),
        };
        match cairn_core::validate::parse_definition(&text, &path.display().to_string(), crate::kinds::kinds()) {
            Ok(_) => None,
            Err(problems) => Some(format!(
                "the child workflow {} has {} problem(s) (cairn validate {})",
                path.display(),
                problems.len(),
                path.display()
            )),
        }
    }
}
