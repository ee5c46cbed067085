//! Communities, their members and their channels.

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::post;
use serde::Deserialize;

use super::{AppState, Caller, Json, NewMember, Path, created_or_ok};
use crate::chat::CommunityId;
use crate::error::Result;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/communities", post(create).get(list))
        .route("/communities/{cid}/members", post(add_member).get(members))
        .route("/communities/{cid}/channels", post(create_channel).get(channels))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewCommunity {
    name: String,
}

async fn create(
    State(app): State<AppState>,
    Caller(user): Caller,
    Json(body): Json<NewCommunity>,
) -> Result<impl IntoResponse> {
    let community = app.chat.create_community(user, &body.name).await?;
    Ok((StatusCode::CREATED, axum::Json(community)))
}

async fn list(State(app): State<AppState>, Caller(user): Caller) -> Result<impl IntoResponse> {
    Ok(axum::Json(app.chat.communities(user).await?))
}

async fn members(
    State(app): State<AppState>,
    Caller(user): Caller,
    Path(cid): Path<CommunityId>,
) -> Result<impl IntoResponse> {
    Ok(axum::Json(app.chat.community_members(user, cid).await?))
}

/// 201 with the user when added, 200 when they already were a member.
async fn add_member(
    State(app): State<AppState>,
    Caller(user): Caller,
    Path(cid): Path<CommunityId>,
    Json(body): Json<NewMember>,
) -> Result<impl IntoResponse> {
    let (member, added) = app.chat.add_community_member(user, cid, &body.username).await?;
    let status = created_or_ok(added);
    Ok((status, axum::Json(member)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewChannel {
    name: String,
    #[serde(default)]
    private: bool,
}

async fn create_channel(
    State(app): State<AppState>,
    Caller(user): Caller,
    Path(cid): Path<CommunityId>,
    Json(body): Json<NewChannel>,
) -> Result<impl IntoResponse> {
    let channel = app.chat.create_channel(user, cid, &body.name, body.private).await?;
    Ok((StatusCode::CREATED, axum::Json(channel)))
}

async fn channels(
    State(app): State<AppState>,
    Caller(user): Caller,
    Path(cid): Path<CommunityId>,
) -> Result<impl IntoResponse> {
    Ok(axum::Json(app.chat.channels(user, cid).await?))
}
