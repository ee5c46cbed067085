//! A channel's members, messages, read marker and presence.

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{delete, get, post, put};
use serde::Deserialize;

use super::{AppState, Caller, CallerUser, Json, NewMember, OptionalJson, Path, Query, created_or_ok};
use crate::chat::{ChannelId, ChatCommand, HistoryQuery, UserId};
use crate::error::Result;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/channels/{chid}/members", post(add_member))
        .route("/channels/{chid}/members/{uid}", delete(remove_member))
        .route("/channels/{chid}/messages", get(history).post(post_message))
        .route("/channels/{chid}/read", put(read))
        .route("/channels/{chid}/presence", get(presence))
}

/// No body: the caller joins a public channel. `{username}`: a member adds someone.
/// 201 when the membership is new, 200 when it already existed.
async fn add_member(
    State(app): State<AppState>,
    CallerUser(caller): CallerUser,
    Path(chid): Path<ChannelId>,
    OptionalJson(body): OptionalJson<NewMember>,
) -> Result<impl IntoResponse> {
    let (channel, user, added) = match body {
        None => {
            let (channel, added) = app.chat.join_channel(caller.id, chid).await?;
            (channel, caller, added)
        }
        Some(NewMember { username }) => app.chat.add_channel_member(caller.id, chid, &username).await?,
    };
    if added {
        app.fanout.membership(channel.community_id, channel.id, user.id, true).await;
    }
    let status = created_or_ok(added);
    Ok((status, axum::Json(serde_json::json!({ "channel": channel, "user": user }))))
}

async fn remove_member(
    State(app): State<AppState>,
    Caller(caller): Caller,
    Path((chid, uid)): Path<(ChannelId, UserId)>,
) -> Result<impl IntoResponse> {
    let channel = app.chat.remove_channel_member(caller, chid, uid).await?;
    app.fanout.membership(channel.community_id, channel.id, uid, false).await;
    Ok(StatusCode::NO_CONTENT)
}

async fn history(
    State(app): State<AppState>,
    Caller(user): Caller,
    Path(chid): Path<ChannelId>,
    Query(query): Query<HistoryQuery>,
) -> Result<impl IntoResponse> {
    Ok(axum::Json(app.chat.history(user, chid, &query).await?))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct NewMessage {
    content: String,
    client_msg_id: Option<String>,
}

/// Posts as the caller, broadcast exactly like a socket `chat`. Answers with the
/// ack's shape: 201 `{written, chatInfo}`, or 200 for a repeated clientMsgId.
async fn post_message(
    State(app): State<AppState>,
    Caller(user): Caller,
    Path(chid): Path<ChannelId>,
    Json(body): Json<NewMessage>,
) -> Result<impl IntoResponse> {
    let command = ChatCommand::New { channel_id: chid, content: body.content, client_msg_id: body.client_msg_id };
    let created = app.chat.apply(user, command, None).await?;
    app.fanout.publish(&created).await;
    let status = created_or_ok(created.fresh);
    Ok((status, axum::Json(serde_json::json!({ "written": true, "chatInfo": created.message }))))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReadMarker {
    seq: i64,
}

async fn read(
    State(app): State<AppState>,
    Caller(user): Caller,
    Path(chid): Path<ChannelId>,
    Json(body): Json<ReadMarker>,
) -> Result<impl IntoResponse> {
    let (seq, moved) = app.chat.mark_read(user, chid, body.seq).await?;
    if moved {
        app.fanout.read_moved(user, chid, seq).await;
    }
    Ok(axum::Json(serde_json::json!({ "ok": true, "seq": seq })))
}

async fn presence(
    State(app): State<AppState>,
    Caller(user): Caller,
    Path(chid): Path<ChannelId>,
) -> Result<impl IntoResponse> {
    app.chat.member_channel(user, chid).await?;
    Ok(axum::Json(serde_json::json!({ "online": app.fanout.presence.online(chid).await? })))
}
