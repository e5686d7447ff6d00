//! `GET /metrics`: Prometheus text. The process's recorder is installed the first time an app is
//! built, so everything the engine counts from then on (`cairn_engine::metrics`: runs, attempts,
//! errors, retries, calls, model tokens and cost — from journaled facts, bounded labels) is kept;
//! the gauges that describe what waits now (approvals) are read from the store at each scrape.

use crate::AppState;
use crate::error::ApiError;
use crate::responses::Internal;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use cairn_store::Store;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
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
            let builder = PrometheusBuilder::new();
            let builder = builder.set_buckets(&buckets).unwrap_or_else(|_| PrometheusBuilder::new());
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
/// oldest. Labels never carry run ids.
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
    let waiting = cairn_engine::waiting_approvals(&*state.store).await?;
    let now = cairn_engine::now_ms();
    let oldest = waiting.iter().map(|w| now - w.requested_at_ms).max().unwrap_or(0).max(0);
    metrics::gauge!("cairn_approvals_waiting").set(waiting.len() as f64);
    metrics::gauge!("cairn_approval_oldest_age_seconds").set(oldest as f64 / 1000.0);
    let text = handle().map(PrometheusHandle::render).unwrap_or_default();
    let mut response = (StatusCode::OK, text).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"));
    Ok(response)
}
