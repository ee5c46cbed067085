//! Operators' endpoints, behind the admin token (`--admin-token`): start a drain
//! (and, with `?wait=true`, get its report when it ends), and see this instance's
//! state and its drain report. `baton drain` and `baton status` call them.

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};

use serde::Deserialize;

use super::{AppState, Query};
use crate::error::{Error, Result};

pub fn router() -> Router<AppState> {
    Router::new().route("/admin/drain", post(drain)).route("/admin/status", get(status))
}

/// Checks the bearer token against the configured admin token, in constant time.
fn require_admin(app: &AppState, headers: &HeaderMap) -> Result<()> {
    let Some(expected) = app.config.admin_token.as_deref().filter(|t| !t.is_empty()) else {
        return Err(Error::forbidden("no admin token is configured (BATON_ADMIN_TOKEN)"));
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "))
        .ok_or_else(|| Error::unauthorized("missing Authorization: Bearer <admin token>"))?;
    let same = given.len() == expected.len()
        && given.bytes().zip(expected.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0;
    if !same {
        return Err(Error::unauthorized("wrong admin token"));
    }
    Ok(())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DrainParams {
    /// Answer when the drain is over, with its report, rather than at once.
    #[serde(default)]
    wait: bool,
}

/// Starts draining this instance (as SIGTERM does). Answers at once, 202; with
/// `?wait=true`, 200 with the drain report once the drain is over (the instance
/// finishes this answer before it exits).
async fn drain(
    State(app): State<AppState>,
    headers: HeaderMap,
    Query(params): Query<DrainParams>,
) -> Result<axum::response::Response> {
    require_admin(&app, &headers)?;
    app.drain.request();
    if params.wait {
        return Ok(axum::Json(app.drain.finished().await).into_response());
    }
    let started = serde_json::json!({ "instance": app.instance, "draining": true });
    Ok((StatusCode::ACCEPTED, axum::Json(started)).into_response())
}

/// The instance, whether it is draining, its connected sockets, and the drain
/// report once the drain has ended.
async fn status(State(app): State<AppState>, headers: HeaderMap) -> Result<impl IntoResponse> {
    require_admin(&app, &headers)?;
    let sockets = app.fanout.io().socket_count();
    Ok(axum::Json(serde_json::json!({
        "instance": app.instance,
        "draining": app.drain.is_draining(),
        "sockets": sockets,
        "drain": app.drain.report(),
    })))
}
