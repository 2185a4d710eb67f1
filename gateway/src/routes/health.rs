//! `GET /healthz` (the process is up), `GET /readyz` (the store answers),
//! and `GET /metrics` (Prometheus text format). `GET /openapi.json` is
//! [`crate::openapi::serve`], routed by [`crate::app`].

use crate::AppState;
use crate::api::{Health, Ready};
use crate::error::AppResult;
use axum::Router;
use axum::extract::State;
use axum::routing::get;

/// Health routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
}

/// Liveness probe
///
/// 200 while the process serves HTTP. Needs no API key.
#[utoipa::path(
    get,
    path = "/healthz",
    operation_id = "healthz",
    tag = "health",
    responses((status = 200, description = "The process is up", body = Health))
)]
async fn healthz() -> axum::Json<Health> {
    axum::Json(Health { status: "ok" })
}

/// Readiness probe
///
/// 200 when the store answers a ping. Needs no API key.
#[utoipa::path(
    get,
    path = "/readyz",
    operation_id = "readyz",
    tag = "health",
    responses(
        (status = 200, description = "The store answers", body = Ready),
        (status = 503, description = "`store_unavailable`", headers(("Retry-After" = u64, description = "Seconds before a retry is sensible"))),
    )
)]
async fn readyz(State(state): State<AppState>) -> AppResult<axum::Json<Ready>> {
    state.store.ping().await?;
    Ok(axum::Json(Ready {
        status: "ready",
        store: state.store.name(),
    }))
}

/// Prometheus metrics
///
/// Request counts and latencies, store, hook and outbox metrics in the
/// Prometheus text format (0.0.4). Needs no API key.
#[utoipa::path(
    get,
    path = "/metrics",
    operation_id = "metrics",
    tag = "health",
    responses((status = 200, description = "Metrics in the Prometheus text format", content_type = "text/plain; version=0.0.4", body = String))
)]
async fn metrics(State(state): State<AppState>) -> impl axum::response::IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        state.metrics.render(&*state.store).await,
    )
}
