//! [`Fanout`]: the one owner of broadcasting. It holds the Socket.IO server, the
//! remembered joins and presence, and tells sockets what changed, whoever caused it
//! (a socket event or a REST call): a written message to its channel's room and, as
//! `notify`, to its members' own lines; presence; membership; read markers;
//! positions. Every change it is given is already durable: the domain wrote it
//! first (`Chat::apply`), the caller acked it, and only then does it reach here.
//!
//! A broadcast goes through the adapter to every instance; if the adapter fails
//! (Redis unreachable), to this instance's sockets at least. Either way the change is
//! in the database: other instances' clients get it by replay or `position`.

use std::num::NonZeroU32;

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use serde::Serialize;
use socketioxide::extract::SocketRef;
use socketioxide::operators::BroadcastOperators;
use socketioxide::{BroadcastError, SocketIo};

use super::io::on_io;
use super::{Io, channel_room, community_ns, user_room};
use crate::adapter::ChatAdapter;
use crate::chat::{Change, ChannelId, Chat, CommunityId, Created, Message, MessageId, UserId};
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
    pub fn new(io: Io, joins: Joins, presence: Presence, chat: Chat) -> Self {
        let quota = Quota::per_second(NonZeroU32::new(TYPING_PER_SECOND).expect("positive"))
            .allow_burst(NonZeroU32::new(TYPING_BURST).expect("positive"));
        Self { io, joins, presence, chat, typing: RateLimiter::keyed(quota) }
    }

    /// The Socket.IO server.
    pub fn io(&self) -> &Io {
        &self.io
    }

    /// Broadcasts a written change to the channel's whole room, on every instance (a
    /// REST write); a new message also goes as `notify` to the members' own lines. A
    /// change that wrote nothing new (a repeated clientMsgId) is not broadcast again.
    pub async fn publish(&self, created: &Created) {
        if !created.fresh {
            return;
        }
        let message = &created.message;
        let room = channel_room(message.channel_id);
        on_io!(&self.io, |io| {
            if let Some(ns) = namespace(io, message.community_id).await {
                emit(ns.to(room), created.change.event(), message).await;
            }
        });
        self.notify_if_new(created).await;
    }

    /// As [`Fanout::publish`], for a change `origin` sent: its room but `origin` gets it.
    pub async fn publish_from<A: ChatAdapter>(&self, created: &Created, origin: &SocketRef<A>) {
        if !created.fresh {
            return;
        }
        let message = &created.message;
        emit(origin.to(channel_room(message.channel_id)), created.change.event(), message).await;
        self.notify_if_new(created).await;
    }

    async fn notify_if_new(&self, created: &Created) {
        if created.change == Change::New {
            self.notify(&created.message, created.members.as_deref()).await;
        }
    }

    /// `notify` on `/` to every member of the channel but the sender, except on
    /// connections that get the message as `new-chat` (their `/` socket is in the
    /// channel's room: `root.rs`): `members` if the write read them, else read now.
    async fn notify(&self, message: &Message, members: Option<&[UserId]>) {
        let read;
        let members = match members {
            Some(members) => members,
            None => match self.chat.channel_member_ids(message.channel_id).await {
                Ok(m) => {
                    read = m;
                    &read[..]
                }
                Err(e) => {
                    tracing::warn!(channel = message.channel_id, error = %e, "could not list members to notify");
                    return;
                }
            },
        };
        let rooms: Vec<String> = members.iter().copied().filter(|&u| u != message.sender_id).map(user_room).collect();
        if rooms.is_empty() {
            return;
        }
        let notify = Notify {
            community_id: message.community_id,
            channel_id: message.channel_id,
            seq: message.seq,
            message_id: message.id,
            sender_id: message.sender_id,
            preview: preview(&message.content),
        };
        on_io!(&self.io, |io| {
            if let Some(root) = io.of("/") {
                emit(root.to(rooms).except(channel_room(message.channel_id)), "notify", &notify).await;
            }
        });
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
