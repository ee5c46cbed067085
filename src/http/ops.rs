//! Operations endpoints: liveness and readiness for load balancers.

use axum::Router;
use axum::extract::State;
use axum::response::IntoResponse;
use axum::routing::get;
use socketioxide::adapter::Adapter;

use super::AppState;
use crate::error::{Code, Error};

pub fn router<A: Adapter>() -> Router<AppState<A>> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz::<A>))
}

/// The process is alive and answering.
async fn healthz() -> impl IntoResponse {
    axum::Json(serde_json::json!({ "status": "ok" }))
}

/// 200 only while this instance should get traffic: not draining, database reachable.
async fn readyz<A: Adapter>(State(app): State<AppState<A>>) -> Result<impl IntoResponse, Error> {
    if app.is_draining() {
        return Err(Error::new(Code::Draining, "draining"));
    }
    if !app.chat.store().ping().await {
        return Err(Error::new(Code::Unavailable, "the database is unreachable"));
    }
    Ok(axum::Json(serde_json::json!({ "status": "ready" })))
}
