//! Registration, log-in and the caller's own record.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Router, response::IntoResponse};
use serde::Deserialize;

use super::{AppState, Caller, CallerUser, Json};
use crate::error::Result;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/users", post(register))
        .route("/sessions", post(log_in))
        .route("/me", get(me))
        .route("/unread", get(unread))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct NewUser {
    username: String,
    password: String,
    display_name: Option<String>,
}

async fn register(State(app): State<AppState>, Json(body): Json<NewUser>) -> Result<impl IntoResponse> {
    let user = app.chat.register(&body.username, &body.password, body.display_name.as_deref()).await?;
    Ok((StatusCode::CREATED, axum::Json(user)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LogIn {
    username: String,
    password: String,
}

async fn log_in(State(app): State<AppState>, Json(body): Json<LogIn>) -> Result<impl IntoResponse> {
    let user = app.chat.login(&body.username, &body.password).await?;
    let token = app.tokens.issue(user.id);
    Ok(axum::Json(serde_json::json!({ "token": token, "user": user })))
}

async fn me(State(app): State<AppState>, CallerUser(me): CallerUser) -> Result<impl IntoResponse> {
    let communities = app.chat.communities(me.id).await?;
    Ok(axum::Json(serde_json::json!({ "user": me, "communities": communities })))
}

async fn unread(State(app): State<AppState>, Caller(user): Caller) -> Result<impl IntoResponse> {
    Ok(axum::Json(app.chat.unread(user).await?))
}
