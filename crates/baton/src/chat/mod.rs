//! The chat domain: users, communities, channels and messages, and the rules that
//! govern them. It knows nothing of HTTP or Socket.IO: [`Chat`] is called the same
//! way by the REST API and the gateway, so "durable before broadcast" and every
//! permission check live in one place, testable against a real database.

mod command;
mod input;
mod service;

/// The records the domain reads and writes, as the store keeps them.
pub use crate::store::{
    Channel, ChannelId, ChannelUnread, Community, CommunityId, CommunityMember, Message, MessageId, Role, User, UserId,
};
pub use command::{ChatCommand, ChatRate};
pub use input::{
    ChannelName, ClientMsgId, CommunityName, Content, DisplayName, Password, Username, positive_id, positive_ids,
};
pub use service::{Chat, Created, HistoryQuery, Page};

use serde::Serialize;

/// Milliseconds since the Unix epoch: the protocol's time unit.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or_default()
}

/// What a change did to a message; names the broadcast event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
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
