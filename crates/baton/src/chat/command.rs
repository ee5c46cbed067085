//! The chat command (`chat` event, `POST /api/channels/{id}/messages`) and the one
//! place it is applied: [`Chat::apply`], rate limit first (PROTOCOL.md's per-user
//! chat rate, shared by sockets and REST so neither is a way around the other), then
//! the write. The change is durable when `apply` returns; the caller acks it, then
//! has the gateway publish it.

use std::num::NonZeroU32;
use std::sync::Arc;

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use serde::Deserialize;

use super::{ChannelId, Chat, CommunityId, Created, MessageId, UserId};
use crate::error::{Code, Error, Result};

/// A `chat` event's payload.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "chatType", rename_all = "lowercase", deny_unknown_fields)]
pub enum ChatCommand {
    New {
        #[serde(rename = "channelId", deserialize_with = "super::positive_id")]
        channel_id: ChannelId,
        content: String,
        #[serde(rename = "clientMsgId", default)]
        client_msg_id: Option<String>,
    },
    Modify {
        #[serde(rename = "channelId", deserialize_with = "super::positive_id")]
        channel_id: ChannelId,
        #[serde(rename = "messageId", deserialize_with = "super::positive_id")]
        message_id: MessageId,
        content: String,
    },
    Delete {
        #[serde(rename = "channelId", deserialize_with = "super::positive_id")]
        channel_id: ChannelId,
        #[serde(rename = "messageId", deserialize_with = "super::positive_id")]
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

/// PROTOCOL.md's per-user chat rate (20/s, burst 40 by default). Cheap to clone.
#[derive(Clone)]
pub struct ChatRate {
    limiter: Arc<DefaultKeyedRateLimiter<UserId>>,
    rate: u32,
    burst: u32,
}

impl ChatRate {
    pub fn new(rate: u32, burst: u32) -> Self {
        let (rate, burst) = (rate.max(1), burst.max(1));
        let quota = Quota::per_second(NonZeroU32::new(rate).expect("at least 1"))
            .allow_burst(NonZeroU32::new(burst).expect("at least 1"));
        Self { limiter: Arc::new(RateLimiter::keyed(quota)), rate, burst }
    }

    /// Takes one chat event from the user's allowance.
    fn check(&self, user: UserId) -> Result<()> {
        self.limiter.check_key(&user).map_err(|_| {
            Error::new(
                Code::RateLimited,
                format!("at most {} chat events per second (burst {}); slow down", self.rate, self.burst),
            )
        })
    }

    /// Forgets the users whose allowance is full again (a periodic clean-up).
    pub fn forget_idle(&self) {
        self.limiter.retain_recent();
    }
}

impl std::fmt::Debug for ChatRate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ChatRate({}/s, burst {})", self.rate, self.burst)
    }
}

impl Chat {
    /// Applies a chat command for `user`, acting in `community` if given (a socket's
    /// namespace, where a channel of another community does not exist): rate limit,
    /// then write. A socket's modify or delete is first checked against its
    /// community; a new message's membership is checked by its write.
    pub async fn apply(&self, user: UserId, command: ChatCommand, community: Option<CommunityId>) -> Result<Created> {
        if community.is_some() && !matches!(command, ChatCommand::New { .. }) {
            self.member_channel_in(user, command.channel_id(), community).await?;
        }
        self.rate.check(user)?;
        match command {
            ChatCommand::New { channel_id, content, client_msg_id } => {
                self.post(user, channel_id, &content, client_msg_id.as_deref(), community).await
            }
            ChatCommand::Modify { channel_id, message_id, content } => {
                self.modify(user, channel_id, message_id, &content).await
            }
            ChatCommand::Delete { channel_id, message_id } => self.delete(user, channel_id, message_id).await,
        }
    }

    /// The chat rate limit, for its periodic clean-up.
    pub fn rate(&self) -> &ChatRate {
        &self.rate
    }
}
