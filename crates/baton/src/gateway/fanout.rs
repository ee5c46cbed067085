//! [`Fanout`]: the one owner of broadcasting. It holds the Socket.IO server, the
//! remembered joins and presence, and tells sockets what changed, whoever caused it
//! (a socket event or a REST call): a written message to its channel's room and, as
//! `notify`, to its members' own lines; presence; membership; read markers;
//! positions. Every change it is given is already durable: the domain wrote it
//! first (`Chat::apply`), the caller acked it, and only then does it reach here.
//!
//! A written message reaches the other instances in one publish (`relay.rs`): this
//! instance delivers it to its own sockets, room event and `notify` both, then
//! relays it. Other broadcasts go through the adapter to every instance; if the
//! adapter fails (Redis unreachable), to this instance's sockets at least. Either way
//! the change is in the database: other instances' clients get it by replay or
//! `position`.

use std::num::NonZeroU32;

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use serde::Serialize;
use socketioxide::extract::SocketRef;
use socketioxide::operators::BroadcastOperators;
use socketioxide::{BroadcastError, SocketIo};

use super::io::on_io;
use super::relay::{Relay, Written};
use super::{Io, channel_room, community_ns, user_room};
use crate::adapter::ChatAdapter;
use crate::chat::{Change, ChannelId, Chat, CommunityId, Created, MessageId, UserId};
use crate::error::Result;
use crate::metrics as m;
use crate::reconnect::{Joins, Presence};

/// Broadcasting, and the shared state sockets leave behind (see the module doc).
pub struct Fanout {
    io: Io,
    /// The channels each user joined per community: what reconnects rejoin.
    pub joins: Joins,
    /// Who is online in each channel.
    pub presence: Presence,
    /// For the members a `notify` goes to when the write did not read them, and the
    /// channels a `position` is due for.
    chat: Chat,
    /// Written changes to and from the other instances (`relay.rs`); `None` on a
    /// single node.
    relay: Option<Relay>,
    /// `typing` relayed per user and channel: [`TYPING_PER_SECOND`], burst [`TYPING_BURST`].
    typing: DefaultKeyedRateLimiter<(UserId, ChannelId)>,
}

/// `typing` relayed per user and channel, per second (the web client sends one per
/// 2.5 s while its user types); beyond it and its burst, acked and dropped, so a
/// flood costs a bystander nothing (docs/protocol.md).
pub const TYPING_PER_SECOND: u32 = 1;
pub const TYPING_BURST: u32 = 2;

/// `notify`: a new message somewhere the user is a member.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Notify<'a> {
    community_id: CommunityId,
    channel_id: ChannelId,
    seq: i64,
    message_id: MessageId,
    sender_id: UserId,
    preview: &'a str,
}

/// At most this many characters of content in a `notify` (PROTOCOL.md).
const PREVIEW_CHARS: usize = 100;

fn preview(content: &str) -> &str {
    match content.char_indices().nth(PREVIEW_CHARS) {
        Some((end, _)) => &content[..end],
        None => content,
    }
}

impl Fanout {
    pub fn new(io: Io, joins: Joins, presence: Presence, chat: Chat, relay: Option<Relay>) -> Self {
        let quota = Quota::per_second(NonZeroU32::new(TYPING_PER_SECOND).expect("positive"))
            .allow_burst(NonZeroU32::new(TYPING_BURST).expect("positive"));
        Self { io, joins, presence, chat, relay, typing: RateLimiter::keyed(quota) }
    }

    /// The relay of written changes between instances, in a cluster.
    pub fn relay_link(&self) -> Option<&Relay> {
        self.relay.as_ref()
    }

    /// The Socket.IO server.
    pub fn io(&self) -> &Io {
        &self.io
    }

    /// Delivers a written change to the channel's whole room on every instance (a
    /// REST write); a new message also goes as `notify` to the members' own lines. A
    /// change that wrote nothing new (a repeated clientMsgId) is not sent again.
    pub async fn publish(&self, created: &Created) {
        let Some(written) = self.written(created).await else { return };
        self.deliver_here(&written).await;
        self.relay(&written).await;
    }

    /// As [`Fanout::publish`], for a change `origin` sent: its room but `origin` gets it.
    pub async fn publish_from<A: ChatAdapter>(&self, created: &Created, origin: &SocketRef<A>) {
        let Some(written) = self.written(created).await else { return };
        let room = origin.to(channel_room(written.message.channel_id)).local();
        emit_here(room, written.change.event(), &written.message).await;
        on_io!(&self.io, |io| notify_here(io, &written).await);
        self.relay(&written).await;
    }

    /// Delivers another instance's written change to this instance's sockets
    /// (`relay.rs`): the room's event and the `notify`, as its writer did to its own.
    pub async fn deliver_written(&self, written: Written) {
        self.deliver_here(&written).await;
    }

    /// A written change to this instance's sockets: the channel's room and `notify`.
    async fn deliver_here(&self, written: &Written) {
        on_io!(&self.io, |io| {
            if let Some(ns) = io.of(community_ns(written.message.community_id)) {
                let room = ns.local().to(channel_room(written.message.channel_id));
                emit_here(room, written.change.event(), &written.message).await;
            }
            notify_here(io, written).await;
        });
    }

    /// The written change as every instance delivers it, with whom to `notify` (a
    /// new message's members but its sender: as the write read them, else read now);
    /// `None` when the change wrote nothing new.
    async fn written(&self, created: &Created) -> Option<Written> {
        if !created.fresh {
            return None;
        }
        let message = &created.message;
        metrics::counter!(m::EVENTS_OUT, "event" => created.change.event()).increment(1);
        let notify = match created.change {
            Change::New => {
                let members = match &created.members {
                    Some(members) => members.to_vec(),
                    None => match self.chat.channel_member_ids(message.channel_id).await {
                        Ok(members) => members,
                        Err(e) => {
                            tracing::warn!(channel = message.channel_id, error = %e, "could not list members to notify");
                            Vec::new()
                        }
                    },
                };
                members.into_iter().filter(|&u| u != message.sender_id).collect()
            }
            Change::Modify | Change::Delete => Vec::new(),
        };
        let origin = self.relay.as_ref().map(|r| r.instance().to_owned()).unwrap_or_default();
        Some(Written { origin, change: created.change, message: message.clone(), notify })
    }

    /// Sends a change delivered here to the other instances, if there are any.
    async fn relay(&self, written: &Written) {
        if let Some(relay) = &self.relay {
            relay.publish(written).await;
        }
    }

    /// `presence` to the channel's room, on every instance.
    pub async fn presence(&self, community: CommunityId, channel: ChannelId, user: UserId, online: bool) {
        let presence = presence_event(channel, user, online);
        on_io!(&self.io, |io| {
            if let Some(ns) = namespace(io, community).await {
                emit(ns.to(channel_room(channel)), "presence", &presence).await;
            }
        });
    }

    /// `presence` to the channel's room but `origin`, the socket whose coming or going
    /// caused it.
    pub async fn presence_from<A: ChatAdapter>(
        &self,
        origin: &SocketRef<A>,
        channel: ChannelId,
        user: UserId,
        online: bool,
    ) {
        emit(origin.to(channel_room(channel)), "presence", &presence_event(channel, user, online)).await;
    }

    /// `typing` from `origin` to the rest of the channel's room (volatile: never
    /// queued), unless the user typed in this channel too often.
    pub async fn typing_from<A: ChatAdapter>(&self, origin: &SocketRef<A>, channel: ChannelId, user: UserId) {
        if self.typing.check_key(&(user, channel)).is_err() {
            metrics::counter!(m::TYPING_DROPPED).increment(1);
            return;
        }
        let typing = serde_json::json!({ "channelId": channel, "userId": user });
        if let Err(e) = origin.to(channel_room(channel)).volatile().emit("typing", &typing).await {
            tracing::debug!(error = %e, "typing broadcast failed");
        }
    }

    /// Forgets the rate state of users who stopped typing (a periodic clean-up).
    pub fn forget_idle_typing(&self) {
        self.typing.retain_recent();
    }

    /// Tells the user's own line that they were added to or removed from a channel.
    /// A removal also takes every socket of theirs out of the channel's room at once,
    /// on every instance (their `/` sockets too, which follow it: `root.rs`), forgets
    /// the channel for their reconnects, and updates presence.
    pub async fn membership(&self, community: CommunityId, channel: ChannelId, user: UserId, member: bool) {
        if !member {
            on_io!(&self.io, |io| {
                let community = namespace(io, community).await;
                for ns in community.into_iter().chain(io.of("/")) {
                    let sockets = ns.to(user_room(user));
                    if let Err(e) = sockets.clone().leave(channel_room(channel)).await {
                        tracing::warn!(channel, user, error = %e, "cluster-wide room leave failed; leaving locally");
                        let _ = sockets.local().leave(channel_room(channel)).await;
                    }
                }
            });
            if let Err(e) = self.joins.forget(user, community, &[channel]).await {
                tracing::warn!(channel, user, error = %e, "could not forget the removed user's join");
            }
            match self.presence.remove_user(channel, user).await {
                Ok(true) => self.presence(community, channel, user, false).await,
                Ok(false) => {}
                Err(e) => tracing::warn!(channel, user, error = %e, "could not update presence"),
            }
        }
        let event = serde_json::json!({ "communityId": community, "channelId": channel, "member": member });
        self.to_user("membership", user, &event).await;
    }

    /// `read` to the user's own line: their read marker moved to `seq`.
    pub async fn read_moved(&self, user: UserId, channel: ChannelId, seq: i64) {
        self.to_user("read", user, &serde_json::json!({ "channelId": channel, "seq": seq })).await;
    }

    /// Emits on `/` to every socket of the user, on every instance.
    async fn to_user<T: Serialize + ?Sized>(&self, event: &'static str, user: UserId, data: &T) {
        on_io!(&self.io, |io| {
            if let Some(root) = io.of("/") {
                emit(root.to(user_room(user)), event, data).await;
            }
        });
    }

    /// Emits `position` to this instance's sockets in channels that had events
    /// recently, so a client that lost a live event notices and fills the gap.
    pub async fn positions(&self, since_ms: i64) -> Result<()> {
        for (channel, community, last_seq) in self.chat.recently_active(since_ms).await? {
            let position = serde_json::json!({ "channelId": channel, "lastSeq": last_seq });
            on_io!(&self.io, |io| {
                if let Some(ns) = io.of(community_ns(community))
                    && let Err(e) = ns.local().to(channel_room(channel)).emit("position", &position).await
                {
                    tracing::debug!(channel, error = %e, "position emit failed");
                }
            });
        }
        Ok(())
    }
}

fn presence_event(channel: ChannelId, user: UserId, online: bool) -> serde_json::Value {
    serde_json::json!({ "channelId": channel, "userId": user, "online": online })
}

/// `notify` on `/` to this instance's sockets of the written message's members,
/// except on connections that get it as `new-chat` (their `/` socket is in the
/// channel's room: `root.rs`).
async fn notify_here<A: ChatAdapter>(io: &SocketIo<A>, written: &Written) {
    if written.notify.is_empty() {
        return;
    }
    let Some(root) = io.of("/") else { return };
    let message = &written.message;
    let notify = Notify {
        community_id: message.community_id,
        channel_id: message.channel_id,
        seq: message.seq,
        message_id: message.id,
        sender_id: message.sender_id,
        preview: preview(&message.content),
    };
    let rooms: Vec<String> = written.notify.iter().copied().map(user_room).collect();
    emit_here(root.local().to(rooms).except(channel_room(message.channel_id)), "notify", &notify).await;
}

/// Emits to this instance's sockets only (`to` is local).
async fn emit_here<A: ChatAdapter, T: Serialize + ?Sized>(to: BroadcastOperators<A>, event: &'static str, data: &T) {
    match to.emit(event, data).await {
        Ok(()) => {}
        Err(BroadcastError::Socket(failed)) => {
            // A full or closed socket buffer: that client repairs the gap from `position`.
            metrics::counter!(m::BROADCAST_ERRORS, "kind" => "socket").increment(failed.len() as u64);
            tracing::debug!(event, sockets = failed.len(), "some sockets could not take a broadcast");
        }
        Err(e) => tracing::error!(event, error = %e, "local broadcast failed"),
    }
}

/// Emits through the adapter to every instance; if the adapter fails (Redis is
/// unreachable), to this instance's sockets at least.
async fn emit<A: ChatAdapter, T: Serialize + ?Sized>(to: BroadcastOperators<A>, event: &'static str, data: &T) {
    metrics::counter!(m::EVENTS_OUT, "event" => event).increment(1);
    match to.clone().emit(event, data).await {
        Ok(()) => {}
        Err(BroadcastError::Adapter(e)) => {
            metrics::counter!(m::BROADCAST_ERRORS, "kind" => "adapter").increment(1);
            metrics::counter!(m::LOCAL_FALLBACKS).increment(1);
            tracing::debug!(event, error = %e, "cluster broadcast failed; delivering locally");
            if let Err(e) = to.local().emit(event, data).await {
                tracing::warn!(event, error = %e, "local broadcast failed too");
            }
        }
        Err(BroadcastError::Socket(failed)) => {
            // A full or closed socket buffer: that client repairs the gap from `position`.
            metrics::counter!(m::BROADCAST_ERRORS, "kind" => "socket").increment(failed.len() as u64);
            tracing::debug!(event, sockets = failed.len(), "some sockets could not take a broadcast");
        }
        Err(e) => tracing::error!(event, error = %e, "broadcast failed"),
    }
}

/// The community's namespace here, created if no socket of the community has
/// connected to this instance yet: in a cluster it must still deliver to the other
/// instances' sockets (a REST post, a membership change).
async fn namespace<A: ChatAdapter>(io: &SocketIo<A>, community: CommunityId) -> Option<BroadcastOperators<A>> {
    let path = community_ns(community);
    if let Some(ns) = io.of(&path) {
        return Some(ns);
    }
    // Created as a first connect to it would be: concurrent creations and connects
    // share one namespace (vendor/socketioxide/BATON-PATCH.md). The cluster's Redis
    // driver never lets the adapter's subscriptions wait on an unreachable Redis.
    match tokio::time::timeout(std::time::Duration::from_secs(2), io.create_dyn_ns(&path)).await {
        Ok(true) => io.of(&path),
        _ => {
            tracing::warn!(ns = %path, "could not create the namespace in 2 s");
            None
        }
    }
}
