//! Namespace `/socket/commu-{id}`: one per community, its rooms are channels.
//!
//! On connect the socket is put back in the channels its user joined before (on
//! any socket, any instance), `rejoined` says which, then the `since` replay runs
//! and `recovered` closes it. Every event takes an ack, and every bad input gets one
//! with PROTOCOL.md's error.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use socketioxide::SocketIo;
use socketioxide::extract::{AckSender, Event, SocketRef};

use super::extract::{InOrder, Live, Payload, Received, Ticket, Turnstile, event};
use super::{
    Ack, Acked, COMMUNITY_NS_PREFIX, Refusal, Session, SocketSlot, answer, authenticate, channel_room, count_connect,
    room_channel, root, session, user_room, within_deadline,
};
use crate::adapter::ChatAdapter;
use crate::app::App;
use crate::chat::{ChannelId, ChatCommand, CommunityId, Created, HistoryQuery, Message, UserId};
use crate::error::{Code, Error, Result};
use crate::reconnect::{self, Entry, Since};

/// At most this many channels in one `join` (PROTOCOL.md).
pub const MAX_JOIN: usize = 100;

/// What a community socket's connect still has to do: the replay it asked for, and
/// the first place in the socket's queue, held from admission so that the rejoin
/// and replay run before any event of the socket and before its close's handler.
struct Pending {
    since: Option<Since>,
    turn: Mutex<Option<Ticket>>,
}

impl Pending {
    /// The connect's place in the queue, once.
    fn take_turn(&self) -> Option<Ticket> {
        self.turn.lock().unwrap().take()
    }
}

/// Admission on a community namespace (from the shared middleware): draining, the
/// namespace id, the token, `since`, community membership. The event handlers are
/// registered here, before the CONNECT goes out.
pub(super) async fn admit<A: ChatAdapter>(
    app: &App,
    io: &SocketIo<A>,
    socket: SocketRef<A>,
    auth: serde_json::Value,
) -> Result<(), Refusal> {
    let path = socket.ns().to_owned();
    app.namespaces.begin(&path);
    match within_deadline(app, check_admission(app, &path, &auth)).await {
        Ok((session, since, slot)) => {
            let turnstile = Arc::new(Turnstile::default());
            let pending = Pending { since, turn: Mutex::new(Some(turnstile.ticket())) };
            socket.extensions.insert(Arc::new(slot));
            socket.extensions.insert(Arc::new(session));
            socket.extensions.insert(turnstile);
            socket.extensions.insert(Arc::new(pending));
            register_handlers(&socket);
            count_connect("community", "accepted");
            // The in-flight count ends in `on_connect`, once the socket is in the namespace.
            Ok(())
        }
        Err(e) => {
            let no_one_else = app.namespaces.end(&path) == 0;
            if no_one_else && io.of(&path).is_some_and(|ns| ns.sockets().is_empty()) {
                io.delete_ns(&path);
            }
            e.report("community connect");
            count_connect("community", e.code.as_str());
            Err(Refusal(e))
        }
    }
}

async fn check_admission(
    app: &App,
    path: &str,
    auth: &serde_json::Value,
) -> Result<(Session, Option<Since>, SocketSlot)> {
    if app.drain.is_draining() {
        return Err(Error::new(Code::Draining, "this instance is draining; connect to another"));
    }
    let community: CommunityId = path
        .strip_prefix(COMMUNITY_NS_PREFIX)
        .and_then(|id| id.parse().ok())
        .ok_or_else(|| Error::forbidden("no such community namespace"))?;
    let user = authenticate(app, auth)?;
    let since = match auth.get("since") {
        None | Some(serde_json::Value::Null) => None,
        Some(v) => Some(parse_since(v)?),
    };
    let slot = app.sockets.take(user, app.config.max_sockets_per_user)?;
    // PROTOCOL.md: refused with `forbidden` unless a member, whether or not the
    // community exists; `unauthorized` if the user no longer exists (a member does,
    // so that is read only on the refusal's path).
    if let Err(e) = app.chat.community_role(user, community).await {
        if !matches!(e.code, Code::NotFound | Code::Forbidden) {
            return Err(e);
        }
        app.chat.user(user).await?;
        return Err(Error::forbidden("you are not a member of this community"));
    }
    Ok((Session { user, community: Some(community) }, since, slot))
}

fn parse_since(v: &serde_json::Value) -> Result<Since> {
    let since: Since = serde_json::from_value(v.clone())
        .map_err(|_| Error::invalid("since must be an object {\"<channelId>\": eventSeq}"))?;
    if let Some(bad) = since.keys().find(|k| k.parse::<ChannelId>().map_or(true, |id| id < 1)) {
        return Err(Error::invalid(format!("since has a key that is not a channel id: {bad:?}")));
    }
    if let Some((channel, seq)) = since.iter().find(|(_, seq)| **seq < 0) {
        return Err(Error::invalid(format!("since[{channel:?}] is {seq}: positions are eventSeqs, 0 or more")));
    }
    Ok(since)
}

pub(super) async fn on_connect<A: ChatAdapter>(socket: SocketRef<A>, io: SocketIo<A>, Live(app): Live) {
    app.namespaces.end(socket.ns());
    // The socket's first turn, taken at admission: its events and its close's handler
    // wait for the rejoin and replay below.
    let pending = socket.extensions.get::<Arc<Pending>>();
    let _turn = match pending.as_ref().and_then(|p| p.take_turn()) {
        Some(ticket) => Some(ticket.wait().await),
        None => None,
    };
    let Some(session) = session(&socket) else {
        return;
    };
    let Some(community) = session.community else {
        return;
    };
    let since = pending.and_then(|p| p.since.clone());
    metrics::gauge!(crate::metrics::SOCKETS, "namespace" => socket.ns().to_owned()).increment(1.0);
    if !socket.connected() {
        // Closed already: nothing to rejoin (its close's handler runs after this turn).
        return;
    }
    socket.join(user_room(session.user));
    // Not one request under one deadline: each query of the rejoin and replay has its
    // own, so that a slow database makes recovery slower rather than leave the client
    // without `recovered`.
    if let Err(e) = recover(&app, &io, &socket, session.user, community, since).await {
        tracing::warn!(sid = %socket.id, error = %e, "recovery failed; the client can join and page history");
    }
}

/// Rejoin, `rejoined`, replay, `recovered` (PROTOCOL.md, Recovery).
async fn recover<A: ChatAdapter>(
    app: &App,
    io: &SocketIo<A>,
    socket: &SocketRef<A>,
    user: UserId,
    community: CommunityId,
    since: Option<Since>,
) -> Result<()> {
    let remembered = app.fanout.joins.remembered(user, community).await.unwrap_or_else(|e| {
        tracing::warn!(user, community, error = %e, "remembered joins unavailable; rejoining the since channels only");
        Vec::new()
    });
    let asked: Vec<(ChannelId, i64)> =
        since.iter().flatten().filter_map(|(k, &n)| Some((k.parse().ok()?, n))).collect();
    // A channel the client has a position in was joined: rejoin it too, so its room
    // is joined before its replay is read.
    let wanted: BTreeSet<ChannelId> = remembered.iter().copied().chain(asked.iter().map(|(c, _)| *c)).collect();
    let wanted: Vec<ChannelId> = wanted.into_iter().collect();
    let rejoined = app.chat.member_channels_among(user, community, &wanted).await?;
    let lost: Vec<ChannelId> = remembered.iter().copied().filter(|c| !rejoined.contains(c)).collect();
    if let Err(e) = app.fanout.joins.forget(user, community, &lost).await {
        tracing::warn!(user, community, error = %e, "could not forget channels the user left");
    }
    let rejoined = enter_rooms(app, io, socket, user, community, &rejoined).await;
    emit(socket, "rejoined", &serde_json::json!({ "channels": rejoined }));
    if since.is_some() {
        let replayable: Vec<(ChannelId, i64)> = asked.into_iter().filter(|(c, _)| rejoined.contains(c)).collect();
        let recovered = reconnect::replay(&app.chat, socket, &replayable).await?;
        emit(socket, "recovered", &recovered);
    }
    Ok(())
}

fn emit<A: ChatAdapter, T: serde::Serialize + ?Sized>(socket: &SocketRef<A>, event: &str, data: &T) {
    if let Err(e) = socket.emit(event, data) {
        tracing::debug!(sid = %socket.id, event, error = %e, "emit failed");
    }
}

/// Puts the socket in the channels' rooms (and its connection's `/` socket, see
/// [`root::follow_joins`]), remembers them for reconnects, and announces users who
/// just came online there. The rooms are joined whatever happens to the remembering:
/// Redis trouble costs a reconnect its rejoin, not the live connection its messages.
async fn enter_rooms<A: ChatAdapter>(
    app: &App,
    io: &SocketIo<A>,
    socket: &SocketRef<A>,
    user: UserId,
    community: CommunityId,
    channels: &[ChannelId],
) -> Vec<ChannelId> {
    if channels.is_empty() {
        return Vec::new();
    }
    let rooms: Vec<String> = channels.iter().map(|c| channel_room(*c)).collect();
    socket.join(rooms.clone());
    root::follow_joins(io, socket.id, rooms);
    if let Err(e) = app.fanout.joins.remember(user, community, channels).await {
        tracing::warn!(user, community, error = %e, "could not remember joined channels");
    }
    for &channel in channels {
        let entry = presence_entry(socket, user, community, channel);
        match app.fanout.presence.enter(&entry).await {
            Ok(true) => app.fanout.presence_from(socket, channel, user, true).await,
            Ok(false) => {}
            Err(e) => tracing::warn!(user, channel, error = %e, "could not record presence"),
        }
    }
    // A removal that lands between the caller's membership check and the join above
    // found no socket of ours to take out of the room: check again, so a removed
    // user cannot stay in a private channel's room.
    let still = app.chat.member_channels_among(user, community, channels).await.unwrap_or_else(|_| channels.to_vec());
    let gone: Vec<ChannelId> = channels.iter().copied().filter(|c| !still.contains(c)).collect();
    if !gone.is_empty() {
        leave_rooms(app, io, socket, user, community, &gone).await;
        let _ = app.fanout.joins.forget(user, community, &gone).await;
    }
    still
}

/// Takes the socket (and its connection's `/` socket) out of the channels' rooms and
/// announces users who went offline.
async fn leave_rooms<A: ChatAdapter>(
    app: &App,
    io: &SocketIo<A>,
    socket: &SocketRef<A>,
    user: UserId,
    community: CommunityId,
    channels: &[ChannelId],
) {
    let rooms: Vec<String> = channels.iter().map(|c| channel_room(*c)).collect();
    socket.leave(rooms.clone());
    root::follow_leaves(io, socket.id, rooms);
    for &channel in channels {
        let entry = presence_entry(socket, user, community, channel);
        match app.fanout.presence.leave(&entry).await {
            Ok(true) => app.fanout.presence_from(socket, channel, user, false).await,
            Ok(false) => {}
            Err(e) => tracing::warn!(user, channel, error = %e, "could not record leaving presence"),
        }
    }
}

pub(super) fn presence_entry<A: ChatAdapter>(
    socket: &SocketRef<A>,
    user: UserId,
    community: CommunityId,
    channel: ChannelId,
) -> Entry {
    Entry { community, channel, user, socket: socket.id.to_string() }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChannelList {
    #[serde(deserialize_with = "crate::chat::positive_ids")]
    channels: Vec<ChannelId>,
}

impl ChannelList {
    /// The distinct channels, at most [`MAX_JOIN`].
    fn parse(payload: Payload) -> Result<Vec<ChannelId>> {
        let list: ChannelList = payload.parse()?;
        if list.channels.len() > MAX_JOIN {
            return Err(Error::too_large(format!("at most {MAX_JOIN} channels at once")));
        }
        let set: BTreeSet<ChannelId> = list.channels.into_iter().collect();
        Ok(set.into_iter().collect())
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct HistoryRequest {
    #[serde(deserialize_with = "crate::chat::positive_id")]
    channel_id: ChannelId,
    before: Option<i64>,
    after: Option<i64>,
    since: Option<i64>,
    limit: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ReadRequest {
    #[serde(deserialize_with = "crate::chat::positive_id")]
    channel_id: ChannelId,
    seq: i64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct TypingRequest {
    #[serde(deserialize_with = "crate::chat::positive_id")]
    channel_id: ChannelId,
}

/// The events of a community socket, each a handler below. `join`, `leave`, `chat`
/// and `read` run in the socket's arrival order ([`InOrder`]); `history`, `typing`
/// and unknown events do not wait. A handler reads: apply, ack, publish.
fn register_handlers<A: ChatAdapter>(socket: &SocketRef<A>) {
    socket.on("join", on_join);
    socket.on("leave", on_leave);
    socket.on("chat", on_chat);
    socket.on("read", on_read);
    socket.on("history", on_history);
    socket.on("typing", on_typing);
    socket.on_fallback(on_unknown);
    socket.on_disconnect(on_disconnect);
}

async fn on_join<A: ChatAdapter>(
    Live(app): Live,
    received: Received<{ event::JOIN }>,
    InOrder(turn): InOrder,
    socket: SocketRef<A>,
    io: SocketIo<A>,
    ack: AckSender<A>,
    payload: Payload,
) {
    let _turn = turn.wait().await;
    let joined = within_deadline(&app, join(&app, &io, &socket, payload)).await;
    answer(received, ack, Ack(joined));
}

async fn on_leave<A: ChatAdapter>(
    Live(app): Live,
    received: Received<{ event::LEAVE }>,
    InOrder(turn): InOrder,
    socket: SocketRef<A>,
    io: SocketIo<A>,
    ack: AckSender<A>,
    payload: Payload,
) {
    let _turn = turn.wait().await;
    let left = within_deadline(&app, leave(&app, &io, &socket, payload)).await;
    answer(received, ack, Ack(left));
}

/// Apply, ack, publish: the ack follows the commit (durable now, for the sender's
/// optimistic UI); the broadcast follows the ack, still in this socket's turn, so
/// one socket's broadcasts keep the order it sent them in.
async fn on_chat<A: ChatAdapter>(
    Live(app): Live,
    received: Received<{ event::CHAT }>,
    InOrder(turn): InOrder,
    socket: SocketRef<A>,
    ack: AckSender<A>,
    payload: Payload,
) {
    let _turn = turn.wait().await;
    // The broadcast follows the ack outside the request's budget: it must not be
    // cut short because the write spent most of it.
    match within_deadline(&app, chat(&app, &socket, payload)).await {
        Ok(created) => {
            answer(received, ack, Ack(Ok(Wrote { written: true, chat_info: &created.message })));
            app.fanout.publish_from(&created, &socket).await;
        }
        Err(e) => answer(received, ack, Ack::<Wrote>(Err(e))),
    }
}

async fn on_read<A: ChatAdapter>(
    Live(app): Live,
    received: Received<{ event::READ }>,
    InOrder(turn): InOrder,
    socket: SocketRef<A>,
    ack: AckSender<A>,
    payload: Payload,
) {
    let _turn = turn.wait().await;
    let read = within_deadline(&app, read(&app, &socket, payload)).await;
    answer(received, ack, Ack(read));
}

async fn on_history<A: ChatAdapter>(
    Live(app): Live,
    received: Received<{ event::HISTORY }>,
    socket: SocketRef<A>,
    ack: AckSender<A>,
    payload: Payload,
) {
    let page = within_deadline(&app, history(&app, &socket, payload)).await;
    answer(received, ack, Ack(page));
}

async fn on_typing<A: ChatAdapter>(
    Live(app): Live,
    received: Received<{ event::TYPING }>,
    socket: SocketRef<A>,
    ack: AckSender<A>,
    payload: Payload,
) {
    answer(received, ack, Ack(typing(&app, &socket, payload).await));
}

async fn on_unknown<A: ChatAdapter>(received: Received<{ event::UNKNOWN }>, ack: AckSender<A>, Event(name): Event) {
    answer(received, ack, Ack::<serde_json::Value>(Err(Error::invalid(format!("unknown event {name:?}")))));
}

/// A `chat` ack: `{written: true, chatInfo}`, or `{written: false, chatInfo: null,
/// error}`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Wrote<'a> {
    written: bool,
    chat_info: &'a Message,
}

impl Acked for Wrote<'_> {
    fn refusal(error: &Error) -> serde_json::Value {
        serde_json::json!({ "written": false, "chatInfo": null, "error": error.body()["error"] })
    }
}

fn session_of<A: ChatAdapter>(socket: &SocketRef<A>) -> Result<(UserId, CommunityId)> {
    let session = session(socket).ok_or_else(|| Error::unauthorized("not admitted"))?;
    let community = session.community.ok_or_else(|| Error::unauthorized("not admitted"))?;
    Ok((session.user, community))
}

async fn join<A: ChatAdapter>(
    app: &App,
    io: &SocketIo<A>,
    socket: &SocketRef<A>,
    payload: Payload,
) -> Result<serde_json::Value> {
    let (user, community) = session_of(socket)?;
    let channels = ChannelList::parse(payload)?;
    let joined = app.chat.member_channels_among(user, community, &channels).await?;
    let mut rejected = Vec::new();
    for &channel in channels.iter().filter(|c| !joined.contains(c)) {
        let refusal = app.chat.join_refusal(user, community, channel).await?;
        rejected.push(serde_json::json!({ "channelId": channel, "code": refusal.code }));
    }
    let joined = enter_rooms(app, io, socket, user, community, &joined).await;
    Ok(serde_json::json!({ "joined": joined, "rejected": rejected }))
}

async fn leave<A: ChatAdapter>(
    app: &App,
    io: &SocketIo<A>,
    socket: &SocketRef<A>,
    payload: Payload,
) -> Result<serde_json::Value> {
    let (user, community) = session_of(socket)?;
    let channels = ChannelList::parse(payload)?;
    if let Err(e) = app.fanout.joins.forget(user, community, &channels).await {
        tracing::warn!(user, community, error = %e, "could not forget left channels");
    }
    leave_rooms(app, io, socket, user, community, &channels).await;
    Ok(serde_json::json!({ "left": channels }))
}

async fn chat<A: ChatAdapter>(app: &App, socket: &SocketRef<A>, payload: Payload) -> Result<Created> {
    let (user, community) = session_of(socket)?;
    let command: ChatCommand = payload.parse()?;
    app.chat.apply(user, command, Some(community)).await
}

async fn read<A: ChatAdapter>(app: &App, socket: &SocketRef<A>, payload: Payload) -> Result<serde_json::Value> {
    let (user, community) = session_of(socket)?;
    let req: ReadRequest = payload.parse()?;
    in_community(app, user, community, req.channel_id).await?;
    let (seq, moved) = app.chat.mark_read(user, req.channel_id, req.seq).await?;
    if moved {
        app.fanout.read_moved(user, req.channel_id, seq).await;
    }
    Ok(serde_json::json!({ "ok": true, "seq": seq }))
}

async fn history<A: ChatAdapter>(app: &App, socket: &SocketRef<A>, payload: Payload) -> Result<crate::chat::Page> {
    let (user, community) = session_of(socket)?;
    let req: HistoryRequest = payload.parse()?;
    in_community(app, user, community, req.channel_id).await?;
    let query = HistoryQuery { before: req.before, after: req.after, since: req.since, limit: req.limit };
    app.chat.history(user, req.channel_id, &query).await
}

/// Typing is only relayed from a socket in the channel's room (no database read),
/// and at most at the fanout's typing rate; beyond it, acked and dropped.
async fn typing<A: ChatAdapter>(app: &App, socket: &SocketRef<A>, payload: Payload) -> Result<serde_json::Value> {
    let (user, _) = session_of(socket)?;
    let req: TypingRequest = payload.parse()?;
    if !socket.rooms().iter().any(|r| *r == channel_room(req.channel_id)) {
        return Err(Error::not_found("join the channel before typing in it"));
    }
    app.fanout.typing_from(socket, req.channel_id, user).await;
    Ok(serde_json::json!({ "ok": true }))
}

/// Socket events act within the socket's community: a channel of another community
/// is answered as one that does not exist.
async fn in_community(app: &App, user: UserId, community: CommunityId, channel: ChannelId) -> Result<()> {
    app.chat.member_channel_in(user, channel, Some(community)).await.map(drop)
}

/// Runs in the socket's turn (after the connect's rejoin and every event before the
/// close), so the rooms it reads are all the socket entered.
async fn on_disconnect<A: ChatAdapter>(socket: SocketRef<A>, io: SocketIo<A>, Live(app): Live, InOrder(turn): InOrder) {
    let socket = &socket;
    let _turn = turn.wait().await;
    let Ok((user, community)) = session_of(socket) else { return };
    metrics::gauge!(crate::metrics::SOCKETS, "namespace" => socket.ns().to_owned()).decrement(1.0);
    app.drain.forget(&socket.id.to_string());
    // Leaving the rooms is the namespace's job; the connection's `/` socket, which may
    // stay, leaves them here, so it gets `notify` for those channels again.
    let channels: Vec<ChannelId> = socket.rooms().iter().filter_map(|r| room_channel(r)).collect();
    root::follow_leaves(&io, socket.id, channels.iter().map(|c| channel_room(*c)).collect());
    let entries: Vec<Entry> = channels.iter().map(|c| presence_entry(socket, user, community, *c)).collect();
    if app.drain.is_draining() {
        // Moved by the drain: the presence entries stay for the grace period (see
        // `server::leave_cluster`), so a user who reconnects elsewhere never flaps.
        return;
    }
    if app.drain.was_moved(&socket.id.to_string()) {
        // Moved by a shed, the instance staying: the entries are left after the grace
        // period, by when a user who reconnected (here or elsewhere) has another
        // socket in the channel, so neither the return nor the leave is announced.
        app.fanout.presence.linger(&entries);
        let app = Arc::downgrade(&app);
        tokio::spawn(async move {
            let Some(grace) = app.upgrade().map(|a| a.drain.grace) else { return };
            tokio::time::sleep(grace).await;
            // Gone meanwhile: its exit hands the entries to the cluster's grace.
            let Some(app) = app.upgrade() else { return };
            for entry in entries {
                match app.fanout.presence.leave_lingering(&entry).await {
                    Ok(true) => app.fanout.presence(entry.community, entry.channel, entry.user, false).await,
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(entry.channel, entry.user, error = %e, "could not record leaving presence")
                    }
                }
            }
        });
        return;
    }
    for entry in entries {
        match app.fanout.presence.leave(&entry).await {
            Ok(true) => app.fanout.presence_from(socket, entry.channel, user, false).await,
            Ok(false) => {}
            Err(e) => tracing::warn!(entry.channel, user, error = %e, "could not record leaving presence"),
        }
    }
}
