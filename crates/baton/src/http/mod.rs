//! The REST API (`/api/...`), the operations endpoints (and, beside them, the load
//! balancer's agent port, [`lb_agent`]), and the HTTP concerns shared with the
//! Socket.IO transport: the Origin allow-list, CORS, body limits.

mod accounts;
mod admin;
mod channels;
mod communities;
mod error;
pub mod lb_agent;
mod ops;
mod web;

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::app::App;
use crate::chat::{User, UserId};
use crate::error::{Code, Error};

pub type AppState = Arc<App>;

/// The whole HTTP surface but Socket.IO, which the caller layers on top.
pub fn router(app: AppState) -> Router {
    let api = Router::new()
        .merge(accounts::router())
        .merge(communities::router())
        .merge(channels::router())
        .route_layer(axum::middleware::from_fn_with_state(app.clone(), within_deadline));
    Router::new()
        .nest("/api", api)
        .merge(ops::router())
        .merge(admin::router())
        .merge(web::router())
        .fallback(no_such_endpoint)
        .method_not_allowed_fallback(no_such_endpoint)
        .with_state(app)
}

/// Serves a REST call as one request: it may wait on the database for
/// `--db-timeout` in all, and is answered 503 `unavailable` past that.
async fn within_deadline(State(app): State<AppState>, req: Request, next: Next) -> Response {
    crate::store::within_request(app.config.db_timeout, next.run(req)).await
}

/// Unknown paths and methods get the protocol's error body too.
async fn no_such_endpoint(method: axum::http::Method, uri: axum::http::Uri) -> Error {
    Error::not_found(format!("no such endpoint: {method} {}", uri.path()))
}

/// `{username}`: the user to add to a community or a channel.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct NewMember {
    username: String,
}

/// 201 when a membership was made, 200 when it already existed.
fn created_or_ok(made: bool) -> axum::http::StatusCode {
    if made { axum::http::StatusCode::CREATED } else { axum::http::StatusCode::OK }
}

/// A JSON body whose every failure is our `invalid` (or `too_large`), whatever the
/// Content-Type says: curl users forget it, and a wrong header is no reason to refuse
/// well-formed JSON.
pub struct Json<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Json<T> {
    type Rejection = Error;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                Error::too_large("the request body is too large")
            } else {
                Error::invalid(rejection.body_text())
            }
        })?;
        parse_json(&bytes).map(Json)
    }
}

fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Error> {
    serde_json::from_slice(bytes).map_err(|e| Error::invalid(format!("bad JSON body: {e}")))
}

/// A body that may be absent (`POST /api/channels/{id}/members` without one joins).
pub struct OptionalJson<T>(pub Option<T>);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for OptionalJson<T> {
    type Rejection = Error;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes =
            Bytes::from_request(req, state).await.map_err(|_| Error::too_large("the request body is too large"))?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(OptionalJson(None));
        }
        parse_json(&bytes).map(|v| OptionalJson(Some(v)))
    }
}

/// A path parameter, refused with `invalid` when it does not parse.
pub struct Path<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for Path<T> {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(v)| Path(v))
            .map_err(|e| Error::invalid(e.body_text()))
    }
}

/// Query parameters, refused with `invalid` when they do not parse.
pub struct Query<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Query<T> {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(v)| Query(v))
            .map_err(|e| Error::invalid(e.body_text()))
    }
}

/// The caller's id, from `Authorization: Bearer <token>`: a valid token of a user
/// that still exists (else `unauthorized`).
pub struct Caller(pub UserId);

/// The caller, as [`Caller`], with the user record that check read.
pub struct CallerUser(pub User);

impl FromRequestParts<AppState> for Caller {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, Self::Rejection> {
        let CallerUser(user) = CallerUser::from_request_parts(parts, app).await?;
        Ok(Caller(user.id))
    }
}

impl FromRequestParts<AppState> for CallerUser {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, Self::Rejection> {
        let header = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|h| h.to_str().ok())
            .ok_or_else(|| Error::unauthorized("missing Authorization: Bearer <token>"))?;
        let token = header
            .strip_prefix("Bearer ")
            .ok_or_else(|| Error::unauthorized("the Authorization header must be Bearer <token>"))?;
        let user = app.tokens.verify(token.trim())?;
        Ok(CallerUser(app.chat.user(user).await?))
    }
}

/// Which browser origins may talk to baton (see `--allowed-origins`).
#[derive(Debug, Clone)]
pub struct Origins {
    any: bool,
    allowed: Vec<String>,
}

impl Origins {
    pub fn new(list: &[String]) -> Self {
        let allowed: Vec<String> =
            list.iter().map(|o| o.trim().trim_end_matches('/').to_owned()).filter(|o| !o.is_empty()).collect();
        Self { any: allowed.iter().any(|o| o == "*"), allowed }
    }

    /// Whether a request carrying `origin` may proceed: listed, `*`, or the same
    /// origin as the `host` it was sent to.
    pub fn allows(&self, origin: &str, host: Option<&str>) -> bool {
        if self.any || self.allowed.iter().any(|o| o == origin) {
            return true;
        }
        let origin_host = origin.split_once("://").map(|(_, rest)| rest);
        matches!((origin_host, host), (Some(o), Some(h)) if o.eq_ignore_ascii_case(h))
    }

    /// CORS for the REST API, for the same origins.
    pub fn cors(&self) -> CorsLayer {
        let allow = if self.any {
            AllowOrigin::any()
        } else {
            AllowOrigin::list(self.allowed.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
        };
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods(tower_http::cors::Any)
            .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
    }
}

/// Refuses requests from browser origins that are not allowed, before they reach
/// the API or open a Socket.IO connection (cross-site WebSocket hijacking).
pub async fn check_origin(origins: Arc<Origins>, req: Request, next: Next) -> Response {
    if let Some(origin) = req.headers().get(header::ORIGIN) {
        let host = req.headers().get(header::HOST).and_then(|h| h.to_str().ok());
        let allowed = origin.to_str().is_ok_and(|o| origins.allows(o, host));
        if !allowed {
            tracing::info!(origin = ?origin, path = %req.uri().path(), "refused a request from a disallowed origin");
            return Error::new(Code::Forbidden, "this origin is not allowed (see BATON_ALLOWED_ORIGINS)")
                .into_response();
        }
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::Origins;

    #[test]
    fn same_origin_and_listed_origins_are_allowed_others_are_not() {
        let o = Origins::new(&["https://chat.example.com".into()]);
        assert!(o.allows("https://chat.example.com", Some("baton.internal:3000")));
        assert!(o.allows("http://localhost:3000", Some("localhost:3000")));
        assert!(!o.allows("https://evil.example", Some("localhost:3000")));
        assert!(Origins::new(&["*".into()]).allows("https://evil.example", None));
    }
}
