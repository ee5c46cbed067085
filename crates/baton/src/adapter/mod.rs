//! Choosing and wiring the Socket.IO adapter, and the transport limits every
//! instance applies whichever adapter it uses.
//!
//! A single node uses socketioxide's local adapter: rooms and broadcasts live in
//! this process.

use axum::extract::{OriginalUri, Request};
use axum::http::uri::PathAndQuery;
use axum::http::{HeaderValue, Uri};
use socketioxide::SocketIoBuilder;
use socketioxide::adapter::Adapter;

mod redis;

pub use redis::{ClusterAdapter, Health, RedisError, RedisLink, ResilientDriver};

use crate::config::Config;

/// Packets buffered per connection before emits to it fail. socketioxide's default
/// is 128; a recovery replay or a burst in a busy channel needs more, and the
/// buffer only allocates what it holds.
const SOCKET_BUFFER_PACKETS: usize = 1024;

/// The WebSocket read buffer each connection keeps (engineioxide's default: 4 KiB).
/// Chat packets fit in 1 KiB; a larger frame grows the buffer to its size, read at
/// most this much per read. 3 KiB less per idle connection.
const WS_READ_BUFFER: usize = 1024;

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
        .ws_read_buffer_size(WS_READ_BUFFER)
}

/// Middleware in front of the Socket.IO layer: gives the request its own copy of
/// its header values and path, so that the session does not pin hyper's read buffer.
///
/// engineioxide keeps every session's request head (`req_parts`) for its whole
/// life. hyper parses a request in place: the header values and the URI are slices
/// of the connection's read buffer (16 KiB once grown), and any one of them keeps
/// the whole buffer allocated. For a WebSocket the connection's buffer is otherwise
/// released at the upgrade, so each idle connection held 16 KiB for a few hundred
/// bytes of headers (the massif profile in docs/benchmarks.md). axum's router has
/// already put a clone of the URI in the extensions (`OriginalUri`): it is
/// replaced too.
pub async fn detach_from_read_buffer(mut req: Request) -> Request {
    for value in req.headers_mut().values_mut() {
        if let Ok(mut own) = HeaderValue::from_bytes(value.as_bytes()) {
            own.set_sensitive(value.is_sensitive());
            *value = own;
        }
    }
    let mut parts = req.uri().clone().into_parts();
    if let Some(pq) = &parts.path_and_query {
        // `try_from(&str)` copies (`from_maybe_shared` would share again).
        parts.path_and_query = PathAndQuery::try_from(pq.as_str()).ok();
        if let Ok(uri) = Uri::from_parts(parts) {
            if let Some(OriginalUri(original)) = req.extensions_mut().get_mut::<OriginalUri>() {
                *original = uri.clone();
            }
            *req.uri_mut() = uri;
        }
    }
    req
}

/// The adapters baton runs on: socketioxide's local one (a single node) and the
/// Redis one (a cluster). `DefinedAdapter` is what lets namespaces be added at run
/// time with either.
pub trait ChatAdapter: socketioxide::adapter::Adapter + socketioxide_core::adapter::DefinedAdapter {}
impl<A: socketioxide::adapter::Adapter + socketioxide_core::adapter::DefinedAdapter> ChatAdapter for A {}
