//! `cairn tokens …` and `cairn gc`: administration straight against the database.

use crate::output::{table, timestamp};
use crate::{CliError, CliResult, DbArgs};
use cairn_server::{Role, new_token};
use cairn_store::Store;
use clap::Subcommand;

#[derive(Subcommand)]
pub enum TokensCommand {
    /// Create an API token and print it (the only time it is shown; only its hash is stored).
    #[command(after_help = "Example:\n  cairn tokens create --role operator --name ci")]
    Create {
        /// viewer (read), operator (start, cancel, signal, approve), admin (workflows, tokens).
        #[arg(long)]
        role: String,
        #[arg(long, default_value = "cli")]
        name: String,
    },
    /// List tokens (never their secrets).
    List,
    /// Revoke a token by id or name.
    Revoke { id: String },
}

pub async fn tokens(db: &DbArgs, command: TokensCommand) -> CliResult {
    let store = db.open().await?;
    match command {
        TokensCommand::Create { role, name } => {
            let role = Role::parse(&role)
                .ok_or_else(|| CliError::usage(format!("--role '{role}' is not one of viewer, operator, admin")))?;
            let name = name.trim();
            if name.is_empty() || name.len() > 64 {
                return Err(CliError::usage("--name must be 1 to 64 characters"));
            }
            let (secret, row) = new_token(name, role, cairn_engine::now_ms())
                .map_err(|e| CliError::env(format!("cannot read random bytes: {e}")))?;
            store.create_token(row.clone()).await?;
            cairn_engine::say!("created token {} ({}, role {}); it is shown once:", row.id, row.name, row.role);
            crate::out!("{secret}");
        }
        TokensCommand::List => {
            let rows: Vec<Vec<String>> = store
                .tokens()
                .await?
                .into_iter()
                .map(|t| {
                    vec![
                        t.id,
                        t.name,
                        t.role,
                        timestamp(t.created_at_ms),
                        t.revoked_at_ms.map(timestamp).unwrap_or_else(|| "-".into()),
                    ]
                })
                .collect();
            crate::output::out(format_args!("{}", table(&["ID", "NAME", "ROLE", "CREATED", "REVOKED"], &rows)));
        }
        TokensCommand::Revoke { id } => {
            if !store.revoke_token(&id, cairn_engine::now_ms()).await? {
                return Err(CliError::usage(format!("no active token with id or name '{id}'")));
            }
            cairn_engine::say!("revoked {id}");
        }
    }
    Ok(())
}

pub async fn gc(db: &DbArgs, retention: &str, dry_run: bool, json: bool) -> CliResult {
    let ms = cairn_core::duration::parse_ms(retention).map_err(|e| CliError::usage(format!("--retention: {e}")))?;
    let store = db.open().await?;
    let report = store.gc(cairn_engine::now_ms(), ms, dry_run).await?;
    if json {
        crate::out!("{}", serde_json::to_string(&report).unwrap_or_default());
    } else {
        let verb = if dry_run { "would delete" } else { "deleted" };
        crate::out!(
            "{verb} {} finished run(s), {} event(s), {} payload(s)",
            report.runs,
            report.events,
            report.payloads
        );
    }
    Ok(())
}
