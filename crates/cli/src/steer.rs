//! `cairn runs cancel|pause|unpause|signal`: operator requests against the local database. A run
//! driven by a live process gets the request through its inbox; otherwise this process applies
//! it directly and hands the run back.

use crate::run::EngineArgs;
use crate::{CliError, CliResult, DbArgs};
use cairn_core::RunId;
use cairn_engine::{Control, Delivery, Engine};
use std::sync::Arc;

pub async fn steer(db: &DbArgs, id: &str, control: Control) -> CliResult {
    let id = RunId::parse(id).map_err(CliError::usage)?;
    let store = Arc::new(db.open().await?);
    let engine = Engine::new(store, EngineArgs::default_args().config(), None);
    let what = match &control {
        Control::Cancel { .. } => "cancel",
        Control::Pause { .. } => "pause",
        Control::Unpause { .. } => "unpause",
        Control::Signal { .. } => "signal",
        Control::Decide { approve: true, .. } => "approve",
        Control::Decide { approve: false, .. } => "reject",
        Control::Migrate { .. } => "migrate",
    };
    match engine.request(&id, control).await {
        Ok(Delivery::Applied) => {
            let row = cairn_store::Store::get_run(&**engine.store(), &id).await?;
            eprintln!("{what}: applied to {id}; it is now {}", row.status);
            Ok(())
        }
        Ok(Delivery::Queued) => {
            eprintln!("{what}: queued for {id}; the process driving it applies it within about a second");
            Ok(())
        }
        Err(cairn_engine::Error::Illegal(m)) => Err(CliError::usage(m)),
        Err(e) => Err(e.into()),
    }
}
