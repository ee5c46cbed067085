//! Namespace `/`: each user's own line. A socket here joins `user:{uid}` and gets
//! `unread` once, then `notify`, `read` and `membership` as they happen. It takes no
//! client events, so it has no event handlers.
//!
//! One delivery per connection (PROTOCOL.md v1.1): a `/` socket is also in the rooms
//! of the channels its connection's community sockets are in, and `notify` is sent
//! to users' rooms except those channel rooms, so a connection that gets a message
//! as `new-chat` is not sent it again as `notify`. socketioxide names every
//! namespace's socket after its Engine.IO session, so the sockets of one connection
//! share an id, on one instance: [`follow_joins`] and [`follow_leaves`] find the
//! `/` socket by the community socket's id. Invariant: a `/` socket is in a channel
//! room exactly while a community socket of its connection is.

use std::sync::Arc;

use socketioxide::SocketIo;
use socketioxide::extract::SocketRef;
use socketioxide::socket::Sid;

use super::extract::Live;
use super::{
    COMMUNITY_NS_PREFIX, Refusal, Session, authenticate, count_connect, refuse, room_channel, session, user_room,
    within_deadline,
};
use crate::adapter::ChatAdapter;
use crate::app::App;
use crate::error::Code;
use crate::metrics as m;

/// Admission on `/` (from the shared middleware): draining, the token, the user's
/// sockets here, the user (still there).
pub(super) async fn admit<A: ChatAdapter>(
    app: &App,
    socket: &SocketRef<A>,
    auth: serde_json::Value,
) -> Result<(), Refusal> {
    if app.drain.is_draining() {
        return Err(refuse(Code::Draining, "this instance is draining; connect to another"));
    }
    let admitted = async {
        let user = authenticate(app, &auth)?;
        let slot = app.sockets.take(user, app.config.max_sockets_per_user)?;
        app.chat.user(user).await?;
        Ok::<_, crate::error::Error>((user, slot))
    };
    let (user, slot) = within_deadline(app, admitted).await.map_err(|e| {
        e.report("root connect");
        count_connect("root", e.code.as_str());
        Refusal(e)
    })?;
    socket.extensions.insert(Arc::new(slot));
    socket.extensions.insert(Arc::new(Session { user, community: None }));
    socket.on_disconnect(on_disconnect);
    count_connect("root", "accepted");
    Ok(())
}

pub(super) async fn on_connect<A: ChatAdapter>(socket: SocketRef<A>, io: SocketIo<A>, Live(app): Live) {
    let Some(session) = session(&socket) else {
        return;
    };
    metrics::gauge!(m::SOCKETS, "namespace" => "/").increment(1.0);
    socket.join(user_room(session.user));
    // The channels the connection's community sockets already joined.
    let joined: Vec<String> = io
        .nsps()
        .into_iter()
        .filter(|ns| ns.ns_path().starts_with(COMMUNITY_NS_PREFIX))
        .filter_map(|ns| ns.get_socket(socket.id))
        .flat_map(|s| s.rooms().into_iter().filter(|r| room_channel(r).is_some()).map(|r| r.to_string()))
        .collect();
    if !joined.is_empty() {
        socket.join(joined);
    }
    match app.chat.unread(session.user).await {
        Ok(unread) => {
            if let Err(e) = socket.emit("unread", &unread) {
                tracing::debug!(sid = %socket.id, error = %e, "could not emit unread");
            }
        }
        Err(e) => {
            tracing::warn!(user = session.user, error = %e, "could not compute unread counts")
        }
    }
}

async fn on_disconnect() {
    metrics::gauge!(m::SOCKETS, "namespace" => "/").decrement(1.0)
}

/// The `/` socket of the connection `sid`, if it has one here.
fn line<A: ChatAdapter>(io: &SocketIo<A>, sid: Sid) -> Option<SocketRef<A>> {
    io.of("/")?.get_socket(sid)
}

/// A community socket of the connection `sid` joined these channel rooms: so does
/// the connection's `/` socket (see the module doc).
pub(super) fn follow_joins<A: ChatAdapter>(io: &SocketIo<A>, sid: Sid, rooms: Vec<String>) {
    if let Some(line) = line(io, sid) {
        line.join(rooms);
    }
}

/// A community socket of the connection `sid` left these channel rooms: so does the
/// connection's `/` socket.
pub(super) fn follow_leaves<A: ChatAdapter>(io: &SocketIo<A>, sid: Sid, rooms: Vec<String>) {
    if let Some(line) = line(io, sid).filter(|_| !rooms.is_empty()) {
        line.leave(rooms);
    }
}
