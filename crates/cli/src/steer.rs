//! `cairn runs cancel|pause|unpause|signal|migrate`, `cairn approve|reject|escalation`: operator
//! requests against the database. Each answers only once its request is applied (or refused,
//! exit 2): by the process that drives the run, or — nobody does — by this one.

use crate::run::EngineArgs;
use crate::{CliError, CliResult, DbArgs};
use cairn_core::{RunId, RunStatus};
use cairn_engine::{Control, Delivery, Engine};
use cairn_store::Journal;
use std::sync::Arc;

/// What to do about a run that a request leaves with work to do and nobody to do it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Follow {
    /// Nothing (cancel, pause, signal, migrate: they do not unblock a run).
    No,
    /// Continue it here, as `cairn resume ID` would, unless a worker will.
    Continue,
    /// Say what will continue it, and return.
    Detach,
}

pub async fn steer(db: &DbArgs, id: &str, control: Control, follow: Follow) -> CliResult {
    let id = RunId::parse(id).map_err(CliError::usage)?;
    let store = Arc::new(crate::inspect::open_existing(db).await?);
    let engine = Engine::new(store.clone(), EngineArgs::default_args().config(), None);
    let verb = control.verb();
    let wait = std::time::Duration::from_millis(engine_wait_ms());
    match engine.request(&id, control).await {
        Ok(Delivery::Applied { request, journal_seq }) => {
            let row = store.get_run(&id).await?;
            let at = journal_seq.map(|s| format!(", journal event {s}")).unwrap_or_default();
            cairn_engine::say!("{verb}: applied to {id} (request {request}{at}); it is now {}", row.status);
        }
        Ok(Delivery::Unchanged { request, message, .. }) => {
            let which = request.map(|r| format!(" (request {r})")).unwrap_or_default();
            cairn_engine::say!("{verb}: nothing to do{which}: {message}");
        }
        Ok(Delivery::Queued { request, owner }) => {
            return Err(CliError::env(format!(
                "{verb}: accepted as request {request} for {id}, but the process driving the run ({}) has not \
                 applied it within {wait:?}; it stays queued and is applied in order when the run is next driven \
                 (`cairn runs events {id}` shows when)",
                owner.as_deref().unwrap_or("none")
            )));
        }
        Err(cairn_engine::Error::Refused { message, .. }) => return Err(CliError::usage(message)),
        Err(e) => return Err(e.into()),
    }
    if follow == Follow::No {
        return Ok(());
    }
    let row = store.get_run(&id).await?;
    let status = RunStatus::parse(&row.status).unwrap_or(RunStatus::Completed);
    if status.is_terminal() {
        return Ok(());
    }
    if status == RunStatus::Paused {
        cairn_engine::say!("[workflow] {id} is paused: `cairn runs unpause {id}` lets it continue");
        return Ok(());
    }
    if let Some(owner) = &row.owner {
        cairn_engine::say!("[workflow] {id} continues in the process that drives it ({owner})");
        return Ok(());
    }
    let now = cairn_engine::now_ms();
    let due = row.wake_at_ms.is_some_and(|at| at <= now + 2_000);
    if !due {
        let when = match row.wake_at_ms {
            Some(at) => format!("its next step is due in {}", cairn_core::duration::format_ms((at - now) as u64)),
            None => "it waits for a decision or a signal (`cairn approvals` lists what waits)".to_string(),
        };
        cairn_engine::say!("[workflow] {id} is {}: {when}", row.status);
        return Ok(());
    }
    let workers = engine.live_workers().await?;
    if let Some(w) = workers.first() {
        let more = if workers.len() > 1 { format!(" (or one of {} others)", workers.len() - 1) } else { String::new() };
        cairn_engine::say!("[workflow] {id} continues on a worker: cairn {} {}{more}", w.role, w.owner);
        return Ok(());
    }
    if follow == Follow::Detach {
        cairn_engine::say!(
            "[workflow] nobody drives {id} now (no cairn serve or worker runs on this database): \
             `cairn resume {id}` continues it here, or start `cairn serve` / `cairn worker`"
        );
        return Ok(());
    }
    cairn_engine::say!(
        "[workflow] no cairn serve or worker runs on this database: continuing {id} here \
         (Ctrl-C leaves it for `cairn resume {id}`; --detach returns at once)"
    );
    drop(engine);
    drop(store);
    let args = crate::run::ResumeArgs { id: Some(id.to_string()), engine: EngineArgs::default_args(), json: false };
    crate::run::resume(db, args).await
}

fn engine_wait_ms() -> u64 {
    EngineArgs::default_args().config().request_wait_ms
}
