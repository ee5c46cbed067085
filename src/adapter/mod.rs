//! Choosing and wiring the Socket.IO adapter, and the transport limits every
//! instance applies whichever adapter it uses.
//!
//! A single node uses socketioxide's local adapter: rooms and broadcasts live in
//! this process.

use socketioxide::SocketIoBuilder;
use socketioxide::adapter::Adapter;

mod redis;

pub use redis::{ClusterAdapter, Health, RedisError, RedisLink, ResilientDriver};

use crate::config::Config;

/// Packets buffered per connection before emits to it fail. socketioxide's default
/// is 128; a recovery replay or a burst in a busy channel needs more, and the
/// buffer only allocates what it holds.
const SOCKET_BUFFER_PACKETS: usize = 1024;

/// Applies baton's limits to a Socket.IO builder.
///
/// socketioxide bounds long-polling bodies with `max_payload` only; a WebSocket
/// message is otherwise bounded at 64 MiB, so both transports get `--max-message`.
pub fn with_limits<A: Adapter>(builder: SocketIoBuilder<A>, config: &Config) -> SocketIoBuilder<A> {
    builder
        .max_payload(config.max_message as u64)
        .ws_max_message_size(config.max_message)
        .ws_max_frame_size(config.max_message)
        .max_buffer_size(SOCKET_BUFFER_PACKETS)
}

/// The adapters baton runs on: socketioxide's local one (a single node) and the
/// Redis one (a cluster). `DefinedAdapter` is what lets namespaces be added at run
/// time with either.
pub trait ChatAdapter: socketioxide::adapter::Adapter + socketioxide_core::adapter::DefinedAdapter {}
impl<A: socketioxide::adapter::Adapter + socketioxide_core::adapter::DefinedAdapter> ChatAdapter for A {}
