//! What the server tells sockets when something changes, whoever caused it (a
//! socket event or a REST call): the one place where a change is written and only
//! then broadcast.

use serde::{Deserialize, Serialize};
use socketioxide::adapter::Adapter;
use socketioxide::extract::SocketRef;

use super::{channel_room, community_ns, user_room};
use crate::app::App;
use crate::chat::{Change, ChannelId, CommunityId, Created, Message, MessageId, UserId};
use crate::error::Result;

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

impl<A: Adapter> App<A> {
    /// Applies a chat command for `user`: rate limit, write (durable when this
    /// returns), then broadcast to the channel's room except `origin`, the socket that
    /// sent it. Returns the message in its new state, for the ack.
    pub async fn send_chat(
        &self,
        user: UserId,
        command: ChatCommand,
        origin: Option<&SocketRef<A>>,
    ) -> Result<Created> {
        self.check_chat_rate(user)?;
        let created = match command {
            ChatCommand::New {
                channel_id,
                content,
                client_msg_id,
            } => {
                self.chat
                    .post(user, channel_id, &content, client_msg_id.as_deref())
                    .await?
            }
            ChatCommand::Modify {
                channel_id,
                message_id,
                content,
            } => {
                self.chat
                    .modify(user, channel_id, message_id, &content)
                    .await?
            }
            ChatCommand::Delete {
                channel_id,
                message_id,
            } => self.chat.delete(user, channel_id, message_id).await?,
        };
        if created.fresh {
            self.broadcast_change(&created, origin).await;
        }
        Ok(created)
    }

    async fn broadcast_change(&self, created: &Created, origin: Option<&SocketRef<A>>) {
        let message = &created.message;
        let room = channel_room(message.channel_id);
        let event = created.change.event();
        let sent = match origin {
            Some(socket) => socket.to(room).emit(event, message).await,
            None => match self.io.of(community_ns(message.community_id)) {
                Some(ns) => ns.to(room).emit(event, message).await,
                // No socket of this community has connected here: nobody to tell.
                None => Ok(()),
            },
        };
        if let Err(e) = sent {
            tracing::warn!(channel = message.channel_id, event_seq = message.event_seq, error = %e, "broadcast failed");
        }
        if created.change == Change::New {
            self.notify(message).await;
        }
    }

    /// `notify` on `/` to every member of the channel but the sender.
    async fn notify(&self, message: &Message) {
        let members = match self.chat.channel_member_ids(message.channel_id).await {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(channel = message.channel_id, error = %e, "could not list members to notify");
                return;
            }
        };
        let rooms: Vec<String> = members
            .into_iter()
            .filter(|&u| u != message.sender_id)
            .map(user_room)
            .collect();
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
            if let Err(e) = root.to(rooms).emit("notify", &notify).await {
                tracing::warn!(channel = message.channel_id, error = %e, "notify failed");
            }
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
        let presence =
            serde_json::json!({ "channelId": channel, "userId": user, "online": online });
        let room = channel_room(channel);
        let to_room = match origin {
            Some(socket) => socket.to(room),
            None => match self.io.of(community_ns(community)) {
                Some(ns) => ns.to(room),
                None => return,
            },
        };
        if let Err(e) = to_room.emit("presence", &presence).await {
            tracing::warn!(channel, user, error = %e, "presence broadcast failed");
        }
    }

    /// Tells the user's own line that they were added to or removed from a channel.
    /// A removal also takes every socket of theirs out of the channel's room at once,
    /// forgets the channel for their reconnects, and updates presence.
    pub async fn membership_changed(
        &self,
        community: CommunityId,
        channel: ChannelId,
        user: UserId,
        member: bool,
    ) {
        if !member {
            if let Some(ns) = self.io.of(community_ns(community)) {
                if let Err(e) = ns.to(user_room(user)).leave(channel_room(channel)).await {
                    tracing::warn!(channel, user, error = %e, "could not take the removed user's sockets out of the room");
                }
            }
            if let Err(e) = self.joins.forget(user, community, &[channel]).await {
                tracing::warn!(channel, user, error = %e, "could not forget the removed user's join");
            }
            match self.presence.remove_user(channel, user).await {
                Ok(true) => {
                    self.announce_presence(community, channel, user, false, None)
                        .await
                }
                Ok(false) => {}
                Err(e) => tracing::warn!(channel, user, error = %e, "could not update presence"),
            }
        }
        let event =
            serde_json::json!({ "communityId": community, "channelId": channel, "member": member });
        self.to_user("membership", user, &event).await;
    }

    /// Moves the user's read marker and tells their other sockets.
    pub async fn mark_read(&self, user: UserId, channel: ChannelId, seq: i64) -> Result<i64> {
        let seq = self.chat.mark_read(user, channel, seq).await?;
        self.to_user(
            "read",
            user,
            &serde_json::json!({ "channelId": channel, "seq": seq }),
        )
        .await;
        Ok(seq)
    }

    /// Emits on `/` to every socket of the user.
    async fn to_user<T: Serialize + ?Sized>(&self, event: &str, user: UserId, data: &T) {
        let Some(root) = self.io.of("/") else { return };
        if let Err(e) = root.to(user_room(user)).emit(event, data).await {
            tracing::warn!(user, event, error = %e, "emit to the user's line failed");
        }
    }

    /// Emits `position` to this instance's sockets in channels that had events
    /// recently, so a client that lost a live event notices and fills the gap.
    pub async fn emit_positions(&self, since_ms: i64) -> Result<()> {
        for (channel, community, last_seq) in self.chat.store().recently_active(since_ms).await? {
            let Some(ns) = self.io.of(community_ns(community)) else {
                continue;
            };
            let position = serde_json::json!({ "channelId": channel, "lastSeq": last_seq });
            if let Err(e) = ns
                .local()
                .to(channel_room(channel))
                .emit("position", &position)
                .await
            {
                tracing::debug!(channel, error = %e, "position emit failed");
            }
        }
        Ok(())
    }
}
