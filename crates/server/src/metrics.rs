//! `GET /metrics`: Prometheus text. The process's recorder is installed the first time an app is
//! built, so everything the engine counts from then on (`cairn_engine::metrics`: runs, attempts,
//! errors, retries, calls, model tokens and cost — from journaled facts, bounded labels) is kept;
//! the gauges that describe now (runs by state, stuck signals, approvals, breakers) are set at
//! each scrape (`cairn_engine::metrics::scrape`).

use crate::AppState;
use crate::error::ApiError;
use crate::responses::Internal;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use cairn_engine::Engine;
use cairn_store::Store;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;

/// The recorder of this process (`None` if another one was installed first).
pub(crate) fn handle() -> Option<&'static PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            // Histograms with buckets (not summaries), so that Prometheus can aggregate them:
            // from 5 ms (a step) to an hour (a run waiting on a person).
            let buckets =
                [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0];
            // A group commit takes from a tenth of a millisecond; a group holds up to thousands.
            let commit = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0];
            let group = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0];
            let builder = PrometheusBuilder::new()
                .set_buckets(&buckets)
                .and_then(|b| b.set_buckets_for_metric(Matcher::Full("cairn_store_commit_seconds".into()), &commit))
                .and_then(|b| b.set_buckets_for_metric(Matcher::Full("cairn_store_commit_group_size".into()), &group))
                .unwrap_or_else(|_| PrometheusBuilder::new());
            let handle = builder.install_recorder().ok();
            if handle.is_some() {
                cairn_engine::metrics::enable();
            }
            handle
        })
        .as_ref()
}

/// Metrics for Prometheus
///
/// The text exposition format: runs started and finished (by workflow and state) with their
/// durations, step attempts, durations and errors (by kind and class), retries, calls (by kind and
/// tool or model) with durations, model tokens and cost, approvals waiting and the age of the
/// oldest, unfinished runs by state, stuck signals (the oldest ready step not started, expired
/// leases, steps past their timeout), breakers by provider, store commit latency and group size.
/// Labels never carry run ids.
#[utoipa::path(
    get,
    path = "/metrics",
    operation_id = "metrics",
    tag = "probes",
    responses(
        (status = 200, description = "Prometheus text (version 0.0.4).", content_type = "text/plain", body = String),
        (status = 500, response = Internal),
    ),
)]
pub async fn metrics<S: Store>(State(state): State<AppState<S>>) -> Result<Response, ApiError> {
    render(&state.engine).await
}

/// The last exposition and when it was made: scrapes within a second share it, and one scrape
/// reads the store at a time (each reads every unfinished run's ready and running steps).
static LAST: tokio::sync::Mutex<Option<(std::time::Instant, String)>> = tokio::sync::Mutex::const_new(None);

async fn render<S: Store>(engine: &Engine<S>) -> Result<Response, ApiError> {
    let text = {
        let mut last = LAST.lock().await;
        match &*last {
            Some((at, text)) if at.elapsed() < std::time::Duration::from_secs(1) => text.clone(),
            _ => {
                cairn_engine::metrics::scrape(engine).await?;
                let text = handle().map(PrometheusHandle::render).unwrap_or_default();
                *last = Some((std::time::Instant::now(), text.clone()));
                text
            }
        }
    };
    let mut response = (StatusCode::OK, text).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"));
    Ok(response)
}

/// Installs the process's recorder now (before the work it counts starts).
pub fn install_recorder() {
    let _ = handle();
}

/// `GET /metrics` alone, for a process without the API (`cairn worker --metrics-listen`), until
/// `shutdown` resolves. Anything else is 404.
pub async fn serve_metrics<S: Store>(
    listener: tokio::net::TcpListener,
    engine: Engine<S>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = axum::Router::new()
        .route("/metrics", axum::routing::get(|State(engine): State<Engine<S>>| async move { render(&engine).await }))
        .fallback(|uri: axum::http::Uri| async move {
            ApiError::not_found("no_such_route", format!("{} is not served here; this is /metrics only", uri.path()))
        })
        .with_state(engine);
    // A scrape is one short request: a bounded number of connections, each with a deadline, so
    // a slow or flooding client cannot hold the worker's descriptors.
    let service = hyper_util::service::TowerToHyperService::new(app);
    let permits = std::sync::Arc::new(tokio::sync::Semaphore::new(METRICS_CONNECTIONS));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(std::time::Duration::from_secs(10))
        .keep_alive(false);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            () = &mut shutdown => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(_) => {
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // Over the limit, the socket is dropped (closed) at once.
        let Ok(permit) = permits.clone().try_acquire_owned() else { continue };
        let conn = http.serve_connection(hyper_util::rt::TokioIo::new(stream), service.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let _ = tokio::time::timeout(std::time::Duration::from_secs(30), conn).await;
        });
    }
}

/// Connections the worker's metrics listener serves at once.
const METRICS_CONNECTIONS: usize = 16;
