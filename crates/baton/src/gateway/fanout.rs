//! What the server tells sockets when something changes, whoever caused it (a
//! socket event or a REST call): the one place where a change is written and only
//! then broadcast.

use crate::adapter::ChatAdapter;
use serde::{Deserialize, Serialize};
use socketioxide::BroadcastError;
use socketioxide::extract::SocketRef;
use socketioxide::operators::BroadcastOperators;

use super::{channel_room, community_ns, user_room};
use crate::app::App;
use crate::chat::{Change, ChannelId, CommunityId, Created, Message, MessageId, UserId};
use crate::error::Result;
use crate::metrics as m;

/// A `chat` event's payload.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "chatType", rename_all = "lowercase", deny_unknown_fields)]
pub enum ChatCommand {
    New {
        #[serde(rename = "channelId")]
        channel_id: ChannelId,
        content: String,
        #[serde(rename = "clientMsgId", default)]
        client_msg_id: Option<String>,
    },
    Modify {
        #[serde(rename = "channelId")]
        channel_id: ChannelId,
        #[serde(rename = "messageId")]
        message_id: MessageId,
        content: String,
    },
    Delete {
        #[serde(rename = "channelId")]
        channel_id: ChannelId,
        #[serde(rename = "messageId")]
        message_id: MessageId,
    },
}

impl ChatCommand {
    pub fn channel_id(&self) -> ChannelId {
        match self {
            ChatCommand::New { channel_id, .. }
            | ChatCommand::Modify { channel_id, .. }
            | ChatCommand::Delete { channel_id, .. } => *channel_id,
        }
    }
}

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

impl<A: ChatAdapter> App<A> {
    /// Applies a chat command for `user`, acting in `community` if given (a socket's
    /// namespace): rate limit, then write. The change is durable when this returns; the
    /// caller acks it, then [`App::publish`]es it.
    pub async fn write_chat(
        &self,
        user: UserId,
        command: ChatCommand,
        community: Option<CommunityId>,
    ) -> Result<Created> {
        self.check_chat_rate(user)?;
        match command {
            ChatCommand::New { channel_id, content, client_msg_id } => {
                self.chat.post(user, channel_id, &content, client_msg_id.as_deref(), community).await
            }
            ChatCommand::Modify { channel_id, message_id, content } => {
                self.chat.modify(user, channel_id, message_id, &content).await
            }
            ChatCommand::Delete { channel_id, message_id } => self.chat.delete(user, channel_id, message_id).await,
        }
    }

    /// Broadcasts a written change to the channel's room, on every instance, except
    /// `origin`, the socket that sent it; a new message also goes as `notify` to the
    /// members' own lines. A change that wrote nothing new (a repeated clientMsgId)
    /// is not broadcast again.
    pub async fn publish(&self, created: &Created, origin: Option<&SocketRef<A>>) {
        if !created.fresh {
            return;
        }
        let message = &created.message;
        let room = channel_room(message.channel_id);
        let to_room = match origin {
            Some(socket) => Some(socket.to(room)),
            None => self.community_ns(message.community_id).await.map(|ns| ns.to(room)),
        };
        if let Some(to_room) = to_room {
            self.emit(to_room, created.change.event(), message).await;
        }
        if created.change == Change::New {
            self.notify(message, created.members.as_deref()).await;
        }
    }

    /// Emits through the adapter to every instance; if the adapter fails (Redis is
    /// unreachable), to this instance's sockets at least. Either way the change is in
    /// the database: other instances' clients get it by replay or `position`.
    async fn emit<T: Serialize + ?Sized>(&self, to: BroadcastOperators<A>, event: &'static str, data: &T) {
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
    /// connected to this instance yet: in a cluster it must still deliver to the
    /// other instances' sockets (a REST post, a membership change).
    pub async fn community_ns(&self, community: CommunityId) -> Option<BroadcastOperators<A>> {
        let path = community_ns(community);
        if let Some(ns) = self.io.of(&path) {
            return Some(ns);
        }
        // Created as a first connect to it would be: concurrent creations and connects
        // share one namespace (vendor/socketioxide/BATON-PATCH.md). The cluster's
        // Redis driver never lets the adapter's subscriptions wait on an unreachable Redis.
        match tokio::time::timeout(std::time::Duration::from_secs(2), self.io.create_dyn_ns(&path)).await {
            Ok(true) => self.io.of(&path),
            _ => {
                tracing::warn!(ns = %path, "could not create the namespace in 2 s");
                None
            }
        }
    }

    /// `notify` on `/` to every member of the channel but the sender: `members` if the
    /// write read them, else read now.
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
        if let Some(root) = self.io.of("/") {
            self.emit(root.to(rooms), "notify", &notify).await;
        }
    }

    /// `presence` to the channel's room, except `origin`, the socket whose coming or
    /// going caused it.
    pub async fn announce_presence(
        &self,
        community: CommunityId,
        channel: ChannelId,
        user: UserId,
        online: bool,
        origin: Option<&SocketRef<A>>,
    ) {
        let presence = serde_json::json!({ "channelId": channel, "userId": user, "online": online });
        let room = channel_room(channel);
        let to_room = match origin {
            Some(socket) => Some(socket.to(room)),
            None => self.community_ns(community).await.map(|ns| ns.to(room)),
        };
        if let Some(to_room) = to_room {
            self.emit(to_room, "presence", &presence).await;
        }
    }

    /// Tells the user's own line that they were added to or removed from a channel.
    /// A removal also takes every socket of theirs out of the channel's room at once,
    /// on every instance, forgets the channel for their reconnects, and updates presence.
    pub async fn membership_changed(&self, community: CommunityId, channel: ChannelId, user: UserId, member: bool) {
        if !member {
            if let Some(ns) = self.community_ns(community).await {
                let sockets = ns.to(user_room(user));
                if let Err(e) = sockets.clone().leave(channel_room(channel)).await {
                    tracing::warn!(channel, user, error = %e, "cluster-wide room leave failed; leaving locally");
                    let _ = sockets.local().leave(channel_room(channel)).await;
                }
            }
            if let Err(e) = self.joins.forget(user, community, &[channel]).await {
                tracing::warn!(channel, user, error = %e, "could not forget the removed user's join");
            }
            match self.presence.remove_user(channel, user).await {
                Ok(true) => self.announce_presence(community, channel, user, false, None).await,
                Ok(false) => {}
                Err(e) => tracing::warn!(channel, user, error = %e, "could not update presence"),
            }
        }
        let event = serde_json::json!({ "communityId": community, "channelId": channel, "member": member });
        self.to_user("membership", user, &event).await;
    }

    /// Moves the user's read marker and, if it moved, tells their own line.
    pub async fn mark_read(&self, user: UserId, channel: ChannelId, seq: i64) -> Result<i64> {
        let (seq, moved) = self.chat.mark_read(user, channel, seq).await?;
        if moved {
            self.to_user("read", user, &serde_json::json!({ "channelId": channel, "seq": seq })).await;
        }
        Ok(seq)
    }

    /// Emits on `/` to every socket of the user, on every instance.
    async fn to_user<T: Serialize + ?Sized>(&self, event: &'static str, user: UserId, data: &T) {
        if let Some(root) = self.io.of("/") {
            self.emit(root.to(user_room(user)), event, data).await;
        }
    }

    /// Emits `position` to this instance's sockets in channels that had events
    /// recently, so a client that lost a live event notices and fills the gap.
    pub async fn emit_positions(&self, since_ms: i64) -> Result<()> {
        for (channel, community, last_seq) in self.chat.store().recently_active(since_ms).await? {
            let Some(ns) = self.io.of(community_ns(community)) else { continue };
            let position = serde_json::json!({ "channelId": channel, "lastSeq": last_seq });
            if let Err(e) = ns.local().to(channel_room(channel)).emit("position", &position).await {
                tracing::debug!(channel, error = %e, "position emit failed");
            }
        }
        Ok(())
    }
}
