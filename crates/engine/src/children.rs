//! Subworkflows at the edge. The core decides that a step's attempt is a child run and names it
//! (`ChildStarted`); after that commit the engine creates the child — unless it exists, which
//! makes starting it again after a crash harmless. A child's end travels back as a `ChildEnded`
//! request in its parent's inbox, written in the same transaction as the child's last event; a
//! parent whose run ends first cancels the children its steps still waited for the same way.

use crate::engine::{Engine, NewRun, Submit};
use crate::requests::Control;
use crate::{Error, now_ms};
use cairn_core::event::{ErrorClass, Failure, RunSource};
use cairn_core::state::RunState;
use cairn_core::{Definition, RunId, RunStatus, StepId, StepStatus};
use cairn_store::{Notify, Store};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// What a child needs of its parent run.
pub(crate) struct Parent {
    pub(crate) run_id: RunId,
    pub(crate) workflow: String,
    pub(crate) source: Option<RunSource>,
    pub(crate) options: cairn_core::event::RunOptions,
    /// The parent is driven here, so its children may be too; otherwise they are left for any
    /// worker.
    pub(crate) driven_here: bool,
}

/// How deep children may nest: deeper is almost surely a workflow that starts itself.
pub(crate) const MAX_DEPTH: u32 = 16;

impl Parent {
    /// The workflows from the top run down to this one.
    fn lineage(&self) -> Vec<String> {
        let mut above = match &self.source {
            Some(RunSource::Child { lineage, .. }) => lineage.clone(),
            _ => Vec::new(),
        };
        above.push(self.workflow.clone());
        above
    }

    /// 0 for a run that is no child.
    fn depth(&self) -> u32 {
        match &self.source {
            Some(RunSource::Child { depth, .. }) => *depth,
            _ => 0,
        }
    }

    pub(crate) fn of(state: &RunState, driven_here: bool) -> Parent {
        Parent {
            run_id: state.run_id.clone(),
            workflow: state.workflow.clone(),
            source: state.source.clone(),
            options: state.options.clone(),
            driven_here,
        }
    }
}

/// A child run to create after the commit that recorded `ChildStarted`.
pub(crate) struct ChildStart {
    pub(crate) step: StepId,
    pub(crate) attempt: u32,
    pub(crate) child: RunId,
    /// The step's rendered `with`: `workflow` (+ `version`) or `file`, and `inputs`.
    pub(crate) input: Value,
}

impl<S: Store> Engine<S> {
    /// Creates `start.child` for `parent` unless it exists; reports a child that already ended,
    /// or one that cannot start (unknown workflow, wrong inputs), to the parent's inbox.
    ///
    /// Boxed: creating a run commits and drives it, which may start children in turn.
    /// Whether the child now exists (or was reported to the parent as unable to start).
    pub(crate) fn start_child(
        self,
        parent: std::sync::Arc<Parent>,
        start: ChildStart,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send>> {
        Box::pin(async move { self.start_child_now(&parent, start).await })
    }

    async fn start_child_now(&self, parent: &Parent, start: ChildStart) -> bool {
        let parent_id = parent.run_id.clone();
        let mut backoff = Duration::from_millis(100);
        // The store may be unable to answer for a while; the parent waits for this child
        // meanwhile. Past a minute this process stops trying: the parent stays held, so whoever
        // takes it over (or resumes it) asks for the child again.
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while std::time::Instant::now() < deadline && !*self.inner().shutdown.borrow() {
            match self.try_start_child(parent, &start).await {
                Ok(()) => return true,
                Err(e) if is_transient(&e) => {
                    crate::say_limited!(
                        "child-start",
                        "[engine] run {parent_id}: cannot start child run {} yet ({e}); retrying",
                        start.child
                    );
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
                Err(e) => {
                    let failure =
                        Failure::new(ErrorClass::Permanent, format!("child run {} could not start: {e}", start.child));
                    self.report_child(&parent_id, &start, None, Some(failure)).await;
                    return true;
                }
            }
        }
        crate::say!(
            "[engine] run {parent_id}: could not start child run {} yet; the run is kept for a retry",
            start.child
        );
        false
    }

    async fn try_start_child(&self, parent: &Parent, start: &ChildStart) -> Result<(), Error> {
        let store = self.store();
        if parent.depth() >= MAX_DEPTH {
            let failure = Failure::new(
                ErrorClass::Permanent,
                format!(
                    "child runs may nest {MAX_DEPTH} deep; run {} is that deep already (does a workflow start itself?)",
                    parent.run_id
                ),
            );
            self.report_child(&parent.run_id, start, None, Some(failure)).await;
            return Ok(());
        }
        match store.get_run(&start.child).await {
            Ok(row) => {
                // It exists: an earlier start (before a crash) made it. If it ended meanwhile
                // and its report was lost with the parent's inbox, report it again.
                if RunStatus::parse(&row.status).is_some_and(|s| s.is_terminal()) {
                    let output = match &row.output_hash {
                        Some(hash) if row.status == "COMPLETED" => store.payload(hash).await?,
                        _ => None,
                    };
                    let failure = output.is_none().then(|| {
                        let class =
                            row.failure_class.as_deref().and_then(ErrorClass::parse).unwrap_or(ErrorClass::Permanent);
                        let why = row.failure_message.clone().unwrap_or_else(|| row.status.to_lowercase());
                        Failure::new(class, format!("child run {} {}: {why}", start.child, row.status.to_lowercase()))
                    });
                    self.report_child(&parent.run_id, start, output, failure).await;
                }
                return Ok(());
            }
            Err(cairn_store::Error::NotFound(_)) => {}
            Err(e) => return Err(e.into()),
        }
        let (definition, inputs, path) = match self.child_definition(parent, &start.input).await {
            // A workflow that starts itself, directly or through others, would not stop.
            Ok((definition, ..)) if parent.lineage().contains(&definition.name) => {
                let chain = [parent.lineage(), vec![definition.name.clone()]].concat().join(" → ");
                let failure = Failure::new(
                    ErrorClass::Permanent,
                    format!(
                        "child run could not start: workflow '{}' would start itself ({chain}); a workflow cannot \
                         be its own subworkflow, directly or through others",
                        definition.name
                    ),
                );
                self.report_child(&parent.run_id, start, None, Some(failure)).await;
                return Ok(());
            }
            Ok(found) => found,
            Err(why) => {
                let failure = Failure::new(ErrorClass::Permanent, format!("child run could not start: {why}"));
                self.report_child(&parent.run_id, start, None, Some(failure)).await;
                return Ok(());
            }
        };
        let new = NewRun {
            definition,
            source: RunSource::Child {
                parent: parent.run_id.to_string(),
                step: start.step.to_string(),
                attempt: start.attempt,
                path,
                depth: parent.depth() + 1,
                lineage: parent.lineage(),
            },
            plan: None,
            inputs,
            options: parent.options.clone(),
            reused: Vec::new(),
            reused_payloads: Vec::new(),
            planning: Vec::new(),
        };
        // A parent that ended meanwhile (cancelled before its child existed) gets no child.
        if self.parent_ended(&parent.run_id).await? {
            return Ok(());
        }
        let submitted =
            self.submit(start.child.clone(), new, Submit { idempotency: None, drive_here: parent.driven_here }).await;
        match submitted {
            // Driven here (or left for any worker); its end comes back through the inbox.
            Ok(_) => {}
            // Another process created it first.
            Err(Error::Store(cairn_store::Error::Conflict { .. })) => return Ok(()),
            Err(e) => return Err(e),
        }
        // The parent's end may have come between the check and the creation: its cancellation
        // found no child to reach, so the child is cancelled here.
        if self.parent_ended(&parent.run_id).await? {
            let reason = format!("its parent run {} ended before it started", parent.run_id);
            let _ = self.request(&start.child, Control::Cancel { reason, by: None }).await;
        }
        Ok(())
    }

    async fn parent_ended(&self, parent: &RunId) -> Result<bool, Error> {
        let row = self.store().get_run(parent).await?;
        Ok(RunStatus::parse(&row.status).is_some_and(|s| s.is_terminal()))
    }

    /// The child's definition and its resolved inputs, or why there is none.
    /// The child's definition, its resolved inputs, and the file it came from (if one).
    async fn child_definition(
        &self,
        parent: &Parent,
        with: &Value,
    ) -> Result<(Definition, Value, Option<String>), String> {
        let mut from_file = None;
        let definition: Definition =
            match (with.get("workflow").and_then(Value::as_str), with.get("file").and_then(Value::as_str)) {
                (Some(name), _) => {
                    let version = with.get("version").and_then(Value::as_u64).map(|v| v as u32);
                    let (_, json) = self.store().workflow(name, version).await.map_err(|e| match e {
                        cairn_store::Error::WorkflowNotFound(_) | cairn_store::Error::NotFound(_) => match version {
                            Some(v) => {
                                format!("workflow '{name}' version {v} is not registered (cairn workflows list)")
                            }
                            None => format!("no workflow '{name}' is registered (cairn workflows register FILE)"),
                        },
                        other => other.to_string(),
                    })?;
                    serde_json::from_value(json)
                        .map_err(|e| format!("registered workflow '{name}' does not load: {e}"))?
                }
                (None, Some(file)) => {
                    let path = child_path(parent, file)?;
                    from_file = Some(path.display().to_string());
                    let text =
                        std::fs::read_to_string(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                    cairn_core::validate::parse_definition(&text, &path.display().to_string(), self.kinds()).map_err(
                        |problems| {
                            let first = problems.first().map(|p| p.to_string()).unwrap_or_default();
                            format!(
                                "{} is not a valid workflow ({} problem(s)); first: {first}",
                                path.display(),
                                problems.len()
                            )
                        },
                    )?
                }
                (None, None) => return Err("`with` names neither `workflow` nor `file`".into()),
            };
        let given = match with.get("inputs") {
            None | Some(Value::Null) => Default::default(),
            Some(Value::Object(given)) => given.clone(),
            Some(other) => {
                return Err(format!("`with.inputs` must be an object of the child's inputs by name, not {other}"));
            }
        };
        let inputs = definition.resolve_inputs(&given).map_err(|e| e.to_string())?;
        Ok((definition, inputs, from_file))
    }

    /// Sends a child's end to its parent's inbox (outside a write: the child could not start,
    /// or it ended and its report must be sent again).
    async fn report_child(&self, parent: &RunId, start: &ChildStart, output: Option<Value>, failure: Option<Failure>) {
        let control = Control::ChildEnded {
            step: start.step.to_string(),
            attempt: start.attempt,
            child: start.child.to_string(),
            output,
            failure,
        };
        if let Ok(body) = serde_json::to_string(&control) {
            match self.store().push_inbox(parent, body, now_ms()).await {
                Ok(_) => {
                    self.poke(parent);
                    self.inner().wake.notify_one();
                }
                Err(e) => crate::say!(
                    "[engine] run {parent}: the end of child run {} could not be reported ({e})",
                    start.child
                ),
            }
        }
    }
}

impl<S: Store> Engine<S> {
    /// Makes sure a request just put in another run's inbox (by a write's `notify`) is answered:
    /// its driver here is rung; a run nobody holds is taken over for its requests now, so a
    /// parked child is cancelled with its parent even where no worker runs (`cairn runs
    /// cancel` on the command line). A run held elsewhere is answered by its owner.
    pub(crate) fn deliver(self, id: RunId) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
        Box::pin(async move {
            if self.poke(&id) {
                return;
            }
            let Ok(row) = self.store().get_run(&id).await else { return };
            let now = now_ms();
            let held = row.owner.is_some() && row.lease_expires_at_ms.is_some_and(|l| l >= now);
            if RunStatus::parse(&row.status).is_some_and(|s| s.is_terminal()) || held {
                return;
            }
            if let Err(e) = self.take_over_for_requests(&id).await {
                crate::say_limited!("deliver", "[engine] run {id}: its request waits for a worker ({e})");
            }
        })
    }
}

/// Where a child's `file` is: next to the parent's own definition file, never outside its
/// directory. A run whose definition did not come from a file (one posted to the API) reads no
/// files at all: the server must not open paths a client names.
fn child_path(parent: &Parent, file: &str) -> Result<PathBuf, String> {
    let (Some(RunSource::Definition { path: Some(own) }) | Some(RunSource::Child { path: Some(own), .. })) =
        &parent.source
    else {
        return Err(format!(
            "`with.file` ({file}) is read only for runs started from a local file; register the child workflow \
             (cairn workflows register FILE, or POST /v1/workflows) and name it with `with.workflow`"
        ));
    };
    let relative = Path::new(file);
    let inside = relative.is_relative()
        && relative.components().all(|c| matches!(c, std::path::Component::Normal(_) | std::path::Component::CurDir));
    if !inside {
        return Err(format!(
            "`with.file` ({file}) must be a path inside the directory of {own} (relative, without `..`)"
        ));
    }
    let dir = Path::new(own).parent().unwrap_or(Path::new("."));
    let path = dir.join(relative);
    // A link inside the directory must not lead out of it either.
    if let (Ok(real_dir), Ok(real)) = (dir.canonicalize(), path.canonicalize())
        && !real.starts_with(&real_dir)
    {
        return Err(format!("`with.file` ({file}) leads outside the directory of {own}"));
    }
    Ok(path)
}

fn is_transient(e: &Error) -> bool {
    matches!(e, Error::Store(s) if s.is_transient())
}

/// The request that tells a child run's parent how it ended, for the write that ends it.
pub(crate) fn ended(state: &RunState) -> Option<Notify> {
    let Some(RunSource::Child { parent, step, attempt, .. }) = &state.source else { return None };
    if !state.status.is_terminal() {
        return None;
    }
    let output = (state.status == RunStatus::Completed)
        .then(|| state.output.as_ref().and_then(|r| state.payload(r)).map(|v| (**v).clone()))
        .flatten();
    let failure = output.is_none().then(|| {
        let cause = state.failure.clone().unwrap_or_else(|| Failure::new(ErrorClass::Permanent, "it failed"));
        Failure {
            message: format!("child run {} {}: {}", state.run_id, state.status.as_str().to_lowercase(), cause.message),
            ..cause
        }
    });
    let control =
        Control::ChildEnded { step: step.clone(), attempt: *attempt, child: state.run_id.to_string(), output, failure };
    let body = serde_json::to_string(&control).ok()?;
    Some(Notify { run_id: parent.clone(), body })
}

/// Cancellations for the children that steps of this run still waited for when the run ended
/// (or began undoing its work): they were cancelled with it.
pub(crate) fn cascade(state: &RunState) -> Vec<Notify> {
    state
        .steps
        .iter()
        .filter(|s| s.status == StepStatus::Cancelled)
        .filter_map(|s| s.child.as_ref())
        .filter_map(|c| {
            let control = Control::Cancel {
                reason: format!("its parent run {} ended ({})", state.run_id, state.status.as_str()),
                by: None,
            };
            Some(Notify { run_id: c.run_id.clone(), body: serde_json::to_string(&control).ok()? })
        })
        .collect()
}
