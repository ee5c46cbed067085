//! [`App`]: the parts of a running instance, put together once at start
//! (`server.rs`) and shared by every request and socket. Wiring only, with no
//! behaviour of its own: a REST handler or a socket event reads its parts and calls
//! them (the domain applies, the handler acks, the fanout publishes).

use crate::adapter::RedisLink;
use crate::auth::Tokens;
use crate::chat::Chat;
use crate::config::Config;
use crate::drain::Drain;
use crate::gateway::{Fanout, Namespaces, SocketsPerUser};
use crate::shed::Shed;

/// Everything a handler may need. Not generic: the Socket.IO adapter (local or
/// Redis) is hidden in the gateway's [`Fanout`].
pub struct App {
    pub config: Config,
    /// The domain: every rule, every write.
    pub chat: Chat,
    pub tokens: Tokens,
    /// Broadcasting, with the Socket.IO server, remembered joins and presence.
    pub fanout: Fanout,
    /// Dynamic namespaces with connects in flight, so refused ones can be removed.
    pub namespaces: Namespaces,
    /// Sockets open per user here (`--max-sockets-per-user`).
    pub sockets: SocketsPerUser,
    /// The cluster's Redis, when this instance is one of several.
    pub redis: Option<RedisLink>,
    /// This instance's name (the cluster registry's, and the drain report's).
    pub instance: String,
    /// The drain: whether this instance still takes connections, and its report.
    pub drain: Drain,
    /// Sheds: whether one runs, and the last one's report.
    pub shed: Shed,
}
