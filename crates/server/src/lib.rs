//! Cairn's HTTP API: REST under `/v1`, Server-Sent Event streams, bearer-token auth and an audit
//! trail. Built as `fn app(state) -> Router` so tests can drive it without a socket; `serve` runs
//! it on a socket with connection limits (see `listener.rs`).
//!
//! **Invariant: every response that is not a success carries `{"error": {code, message,
//! details}}` with a 4xx for the caller's mistakes; handlers never panic on input.**

mod admin;
mod approvals;
pub mod auth;
mod body;
mod definition_schema;
mod deltas;
mod diff;
mod error;
mod graphql;
mod lineage;
mod listener;
mod metrics;
mod openapi;
mod probes;
mod providers;
mod responses;
mod routes;
mod runs;
mod stream;
mod tasks;
mod tools;
mod ui;
mod views;
mod workers;
mod workflows;

pub use auth::{AuthMode, Role, new_token};
pub use error::ApiError;
pub use listener::{Limits, raise_fd_limit};
pub use metrics::{install_recorder, serve_metrics};

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use cairn_core::catalog::Catalog;
use cairn_core::{Event, RunId};
use cairn_engine::{Engine, Notice};
use cairn_store::Store;
use serde_json::json;
use std::collections::HashMap;
use std::ops::Deref;
use std::sync::Arc;
use std::sync::Mutex;
use tokio::sync::{broadcast, mpsc, oneshot, watch};

pub struct ServerConfig {
    pub auth: AuthMode,
    /// Drive new runs in this process (`cairn serve`), or leave them all to workers (an API-only
    /// process in front of `cairn worker`s).
    pub drive_here: bool,
    pub max_body_bytes: usize,
    pub catalog: Catalog,
}

pub struct Shared<S: Store> {
    pub engine: Engine<S>,
    pub store: Arc<S>,
    pub catalog: Catalog,
    pub auth: AuthMode,
    pub drive_here: bool,
    pub max_body_bytes: usize,
    /// Wakes event streams: the id of a run that just committed.
    pub changes: broadcast::Sender<RunId>,
    /// Wakes a run's event streams when a model call of it streamed tokens (apart, so streams of
    /// every run are not woken per token).
    pub token_changes: broadcast::Sender<RunId>,
    /// Turns true when the server shuts down; streams end.
    pub shutdown: watch::Receiver<bool>,
    /// Requests waiting (`?wait=`) for a run this process drives to finish.
    pub finish_waiters: Mutex<HashMap<RunId, Vec<oneshot::Sender<()>>>>,
    /// Tokens of model calls streaming in this process, for run event streams.
    pub deltas: deltas::Deltas,
}

pub struct AppState<S: Store>(Arc<Shared<S>>);

impl<S: Store> Clone for AppState<S> {
    fn clone(&self) -> Self {
        AppState(self.0.clone())
    }
}

impl<S: Store> Deref for AppState<S> {
    type Target = Shared<S>;
    fn deref(&self) -> &Shared<S> {
        &self.0
    }
}

impl<S: Store> AppState<S> {
    /// `notices` is the receiving end of the engine's notice channel.
    pub fn new(
        engine: Engine<S>,
        notices: Option<mpsc::UnboundedReceiver<Notice>>,
        config: ServerConfig,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        let (changes, _) = broadcast::channel(4096);
        let (token_changes, _) = broadcast::channel(4096);
        let store = engine.store().clone();
        let state = AppState(Arc::new(Shared {
            engine,
            store,
            catalog: config.catalog,
            auth: config.auth,
            drive_here: config.drive_here,
            max_body_bytes: config.max_body_bytes,
            changes,
            token_changes,
            shutdown,
            finish_waiters: Mutex::new(HashMap::new()),
            deltas: deltas::Deltas::default(),
        }));
        if let Some(mut rx) = notices {
            let weak = Arc::downgrade(&state.0);
            tokio::spawn(async move {
                while let Some(notice) = rx.recv().await {
                    let Some(shared) = weak.upgrade() else { return };
                    let (run_id, events) = match notice {
                        Notice::Committed { run_id, events } => (run_id, events),
                        Notice::Delta(delta) => {
                            let run_id = delta.run_id.clone();
                            shared.deltas.push(delta);
                            let _ = shared.token_changes.send(run_id);
                            continue;
                        }
                    };
                    shared.deltas.committed(&run_id, &events);
                    let finished = events.iter().any(|e| {
                        matches!(
                            e.event,
                            Event::RunCompleted { .. } | Event::RunFailed { .. } | Event::RunCancelled { .. }
                        )
                    });
                    if finished && let Ok(mut waiters) = shared.finish_waiters.lock() {
                        for w in waiters.remove(&run_id).unwrap_or_default() {
                            let _ = w.send(());
                        }
                    }
                    let _ = shared.changes.send(run_id);
                }
            });
        }
        state
    }
}

/// The API: every route comes from the one table in `routes.rs`, which also describes it at
/// `/openapi.json`.
pub fn app<S: Store>(state: AppState<S>) -> Router {
    // Counted from now on (the engine's metrics), rendered at /metrics.
    let _ = metrics::handle();
    routes::table::<S>()
        .router
        .merge(ui::routes::<S>())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(state.clone(), auth::layer::<S>))
        .layer(DefaultBodyLimit::max(state.max_body_bytes))
        .layer(axum::middleware::from_fn_with_state(state.max_body_bytes, refuse_declared_oversize))
        .with_state(state)
}

/// Serves the API with the default [`Limits`] until `shutdown` resolves, then finishes the
/// requests in flight.
pub async fn serve<S: Store>(
    listener: tokio::net::TcpListener,
    state: AppState<S>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    listener::serve(listener, state, Limits::default(), shutdown).await
}

/// [`serve`] with chosen connection limits (`cairn serve --max-connections`, timeouts).
pub async fn serve_with<S: Store>(
    listener: tokio::net::TcpListener,
    state: AppState<S>,
    limits: Limits,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    listener::serve(listener, state, limits, shutdown).await
}

/// A body declared larger than the limit is refused before any of it is read, and the
/// connection closed: reading or draining it would only hold the connection.
async fn refuse_declared_oversize(State(limit): State<usize>, req: Request, next: Next) -> Response {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    match declared {
        Some(length) if length > limit as u64 => {
            let mut response = ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!(
                    "the request declares a {length}-byte body; the server accepts at most {limit} bytes (see --max-body-bytes)"
                ),
            )
            .with_details(json!({"declared": length, "limit": limit}))
            .into_response();
            response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
            response
        }
        _ => next.run(req).await,
    }
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::not_found("no_such_route", format!("{} is not a Cairn API route; see /openapi.json", uri.path()))
}

async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{method} is not allowed on {}; see /openapi.json", uri.path()),
    )
}
