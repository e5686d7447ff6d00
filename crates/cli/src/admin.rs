//! `cairn tokens …` and `cairn gc`: administration straight against the database.

use crate::output::{table, timestamp};
use crate::{CliError, CliResult, DbArgs};
use cairn_server::auth::check_token_name;
use cairn_server::{Role, new_token};
use cairn_store::{Access, Retention};
use clap::Subcommand;

#[derive(Subcommand)]
pub enum TokensCommand {
    /// Create an API token and print it (the only time it is shown; only its hash is stored).
    #[command(after_help = "Example:\n  cairn tokens create --role operator --name ci")]
    Create {
        /// viewer (read), operator (start, cancel, signal, approve), admin (workflows, tokens).
        #[arg(long)]
        role: String,
        /// Unique among live tokens; what `revoke` and the audit trail call it.
        #[arg(long, default_value = "cli")]
        name: String,
    },
    /// List tokens (never their secrets).
    #[command(after_help = "Example:\n  cairn tokens list")]
    List,
    /// Revoke a token by id, or by name when exactly one live token has that name.
    #[command(after_help = "Examples:\n  cairn tokens revoke tok_3f9a0c1d2e4b5a6f\n  cairn tokens revoke ci")]
    Revoke {
        /// The token's id (`cairn tokens list`) or its name.
        id: String,
    },
}

pub async fn tokens(db: &DbArgs, command: TokensCommand) -> CliResult {
    let store = match command {
        TokensCommand::Create { .. } => db.open().await?,
        _ => db.open_existing().await?,
    };
    match command {
        TokensCommand::Create { role, name } => {
            let role = Role::parse(&role).ok_or_else(|| {
                CliError::usage(format!("--role '{role}' is not one of viewer, worker, operator, admin"))
            })?;
            let name = check_token_name(&name).map_err(|m| CliError::usage(format!("--name: {m}")))?;
            let (secret, row) = new_token(name, role, cairn_engine::now_ms())
                .map_err(|e| CliError::env(format!("cannot read random bytes: {e}")))?;
            store.create_token(row.clone()).await.map_err(token_error)?;
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
            let token = store.revoke_token(&id, cairn_engine::now_ms()).await.map_err(token_error)?;
            cairn_engine::say!("revoked {} ({})", token.id, token.name);
        }
    }
    Ok(())
}

/// A taken or ambiguous name and an unknown token are the caller's to fix: exit 2.
fn token_error(e: cairn_store::Error) -> CliError {
    use cairn_store::Error as E;
    match e {
        E::TokenNameTaken { .. } | E::AmbiguousTokenName { .. } | E::TokenNotFound(_) => CliError::usage(e.to_string()),
        e => e.into(),
    }
}

pub async fn gc(db: &DbArgs, retention: &str, dry_run: bool, json: bool) -> CliResult {
    let ms = cairn_core::duration::parse_ms(retention).map_err(|e| CliError::usage(format!("--retention: {e}")))?;
    let store = db.open_existing().await?;
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
