//! Operations endpoints: liveness and readiness for load balancers, and metrics.

use axum::Router;
use axum::extract::State;
use axum::response::IntoResponse;
use axum::routing::get;

use super::AppState;
use crate::error::{Code, Error};

pub fn router() -> Router<AppState> {
    Router::new().route("/healthz", get(healthz)).route("/readyz", get(readyz)).route("/metrics", get(metrics))
}

/// The process is alive and answering.
async fn healthz() -> impl IntoResponse {
    axum::Json(serde_json::json!({ "status": "ok" }))
}

/// 200 only while this instance should get traffic: not draining, database (and,
/// in a cluster, Redis) reachable. Answered at once from the state the background
/// checks keep (the store's and the Redis link's), never by waiting on an outage, so
/// a load balancer's probe gets a 503, not a timeout.
async fn readyz(State(app): State<AppState>) -> Result<impl IntoResponse, Error> {
    if app.drain.is_draining() {
        return Err(Error::new(Code::Draining, "draining"));
    }
    if !app.chat.store().is_up() {
        return Err(Error::new(Code::Unavailable, "the database is unreachable"));
    }
    if app.redis.as_ref().is_some_and(|r| !r.health.is_up()) {
        return Err(Error::new(Code::Unavailable, "redis is unreachable"));
    }
    Ok(axum::Json(serde_json::json!({ "status": "ready" })))
}

/// Prometheus text exposition of every metric in [`crate::metrics`].
async fn metrics() -> impl IntoResponse {
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], crate::metrics::install().render())
}
