//! Operators' endpoints, behind the admin token (`--admin-token`): start a drain
//! (and, with `?wait=true`, get its report when it ends) or, given a `fraction` or
//! a `count`, a shed of that share of the transports (the instance staying ready);
//! and see this instance's state, its drain report and its last shed report.
//! `baton drain` and `baton status` call them.

use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};

use serde::Deserialize;

use super::{AppState, OptionalJson, Query};
use crate::error::{Error, Result};
use crate::shed::{self, Share};

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

/// `POST /admin/drain`'s parameters, in the query string or a JSON body (or both,
/// each given once). A parameter is absent or a value: `null` is refused, so that
/// a script whose variable is empty gets an error instead of a full drain.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct DrainParams {
    /// Answer when the drain (or the shed) is over, with its report, rather than at
    /// once.
    #[serde(default, deserialize_with = "present")]
    wait: Option<bool>,
    /// Shed this fraction of the transports (0 < f <= 1) instead of draining.
    #[serde(default, deserialize_with = "present")]
    fraction: Option<f64>,
    /// Shed this many transports (at least 1) instead of draining.
    #[serde(default, deserialize_with = "present")]
    count: Option<u64>,
    /// The shed's window in milliseconds (default: the drain window). A drain's
    /// window is `--drain-window`.
    #[serde(default, deserialize_with = "present")]
    window_ms: Option<u64>,
}

/// A parameter that is given has a value (`null` does not deserialize as one).
fn present<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

impl DrainParams {
    /// The query's and the body's parameters as one set; a parameter given in both
    /// is refused, so neither silently wins.
    fn merge(self, body: DrainParams) -> Result<DrainParams> {
        fn one<T>(name: &str, query: Option<T>, body: Option<T>) -> Result<Option<T>> {
            match (query, body) {
                (Some(_), Some(_)) => Err(Error::invalid(format!("{name} is given twice: in the query and the body"))),
                (q, b) => Ok(q.or(b)),
            }
        }
        Ok(DrainParams {
            wait: one("wait", self.wait, body.wait)?,
            fraction: one("fraction", self.fraction, body.fraction)?,
            count: one("count", self.count, body.count)?,
            window_ms: one("window_ms", self.window_ms, body.window_ms)?,
        })
    }
}

/// Without a share: starts draining this instance (as SIGTERM does). Answers at
/// once, 202; with `?wait=true`, 200 with the drain report once the drain is over
/// (the instance finishes this answer before it exits).
///
/// With `fraction` or `count`: starts a shed of that share of this instance's
/// transports over `window_ms` (default the drain window), the instance staying
/// ready. Answers at once, 202, with what it chose; with `wait`, 200 with the shed
/// report once it is over. Refused with 409 `conflict` while the instance drains
/// or another shed runs; bad parameters get 400 `invalid`.
async fn drain(
    State(app): State<AppState>,
    headers: HeaderMap,
    Query(query): Query<DrainParams>,
    OptionalJson(body): OptionalJson<DrainParams>,
) -> Result<axum::response::Response> {
    require_admin(&app, &headers)?;
    let params = query.merge(body.unwrap_or_default())?;
    let wait = params.wait.unwrap_or(false);
    let Some(share) = Share::parse(params.fraction, params.count)? else {
        if params.window_ms.is_some() {
            return Err(Error::invalid(
                "window_ms applies to a shed (with fraction or count); a drain's window is --drain-window",
            ));
        }
        app.drain.request();
        if wait {
            return Ok(axum::Json(app.drain.finished().await).into_response());
        }
        let started = serde_json::json!({ "instance": app.instance, "draining": true });
        return Ok((StatusCode::ACCEPTED, axum::Json(started)).into_response());
    };
    let window = match params.window_ms {
        Some(ms) if Duration::from_millis(ms) > shed::MAX_WINDOW => {
            return Err(Error::invalid(format!("window_ms must be at most {}", shed::MAX_WINDOW.as_millis())));
        }
        Some(ms) => Duration::from_millis(ms),
        None => app.drain.window,
    };
    let (started, task) = shed::start(&app, share, window)?;
    if wait {
        let report = task.await.map_err(|e| Error::unavailable("the shed failed", e))?;
        return Ok(axum::Json(report).into_response());
    }
    Ok((StatusCode::ACCEPTED, axum::Json(started)).into_response())
}

/// The instance, whether it is draining or shedding, its connected sockets (per
/// namespace) and transports (engine.io connections, what a shed's share is of),
/// how many of those are on HTTP long-polling (not upgraded to WebSocket), the
/// drain report once the drain has ended, and the last shed's report.
async fn status(State(app): State<AppState>, headers: HeaderMap) -> Result<impl IntoResponse> {
    require_admin(&app, &headers)?;
    let sockets = app.fanout.io().socket_count();
    let (transports, polling) = crate::drain::count_transports(&app);
    Ok(axum::Json(serde_json::json!({
        "instance": app.instance,
        "draining": app.drain.is_draining(),
        "shedding": app.shed.is_running(),
        "sockets": sockets,
        "transports": transports,
        "polling": polling,
        "drain": app.drain.report(),
        "shed": app.shed.report(),
    })))
}
