//! The chat domain: users, communities, channels and messages, and the rules that
//! govern them. It knows nothing of HTTP or Socket.IO: [`Chat`] is called the same
//! way by the REST API and the gateway, so "durable before broadcast" and every
//! permission check live in one place, testable against a real database.

mod batch;
mod input;
mod service;
pub mod store;

pub use batch::NewMessage;
pub use input::{ChannelName, ClientMsgId, CommunityName, Content, DisplayName, Password, Username};
pub use service::{Chat, Created, HistoryQuery, Page};
pub use store::Store;

use serde::Serialize;

pub type UserId = i64;
pub type CommunityId = i64;
pub type ChannelId = i64;
pub type MessageId = i64;

/// Milliseconds since the Unix epoch: the protocol's time unit.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or_default()
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
#[serde(rename_all = "camelCase")]
pub struct User {
    pub id: UserId,
    pub username: String,
    pub display_name: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Owner,
    Member,
}

impl Role {
    fn parse(s: &str) -> Role {
        if s == "owner" { Role::Owner } else { Role::Member }
    }
    fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Member => "member",
        }
    }
}

/// A community's member: the user and their role in it.
#[derive(Debug, Clone, Serialize)]
pub struct CommunityMember {
    #[serde(flatten)]
    pub user: User,
    pub role: Role,
}

#[derive(Debug, Clone, Serialize)]
pub struct Community {
    pub id: CommunityId,
    pub name: String,
    pub role: Role,
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
#[serde(rename_all = "camelCase")]
pub struct Channel {
    pub id: ChannelId,
    pub community_id: CommunityId,
    pub name: String,
    pub private: bool,
    pub last_seq: i64,
}

/// A message in its current state (`chatInfo` on the wire).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
#[serde(rename_all = "camelCase")]
pub struct Message {
    pub id: MessageId,
    pub channel_id: ChannelId,
    pub community_id: CommunityId,
    /// Place in the channel, fixed at creation.
    pub seq: i64,
    /// Sequence of the message's last change (new, modify or delete).
    pub event_seq: i64,
    pub sender_id: UserId,
    pub content: String,
    pub client_msg_id: Option<String>,
    pub created_at: i64,
    pub edited_at: Option<i64>,
    pub deleted: bool,
}

/// What a change did to a message; names the broadcast event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    New,
    Modify,
    Delete,
}

impl Change {
    /// The Socket.IO event that carries a message after this change.
    pub fn event(self) -> &'static str {
        match self {
            Change::New => "new-chat",
            Change::Modify => "modify-chat",
            Change::Delete => "delete-chat",
        }
    }

    /// How a message in its current state is replayed to a client that has seen the
    /// channel up to eventSeq `since`: `None` when there is nothing to show (a message
    /// created and deleted while the client was away).
    pub fn for_replay(message: &Message, since: i64) -> Option<Change> {
        match (message.seq > since, message.deleted) {
            (true, false) => Some(Change::New),
            (true, true) => None,
            (false, false) => Some(Change::Modify),
            (false, true) => Some(Change::Delete),
        }
    }
}

/// Unread counts for one channel (`GET /api/unread`).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ChannelUnread {
    pub channel_id: ChannelId,
    pub unread: i64,
    pub last_seq: i64,
    pub read_seq: i64,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CommunityUnread {
    pub community_id: CommunityId,
    pub unread: i64,
    pub channels: Vec<ChannelUnread>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Unread {
    pub communities: Vec<CommunityUnread>,
}
