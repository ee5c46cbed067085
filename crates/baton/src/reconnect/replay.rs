//! The `since` replay: what a reconnecting client missed, per channel, compacted to
//! each message's current state, then `recovered`.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;
use socketioxide::adapter::Adapter;
use socketioxide::extract::SocketRef;
use socketioxide::{SendError, SocketError};

use crate::chat::{Change, ChannelId, Chat};
use crate::error::Result;
use crate::store::Slice;

/// The most messages replayed per channel (PROTOCOL.md); past it `complete` is false
/// and the client pages the rest with `history` from the last eventSeq it got.
pub const REPLAY_LIMIT: i64 = 1000;

/// The CONNECT auth's `since`: `{"<chid>": highest eventSeq the client has}`.
pub type Since = BTreeMap<String, i64>;

/// `recovered`: the position each channel's replay brought the client to (the
/// channel's lastSeq when complete), and whether every channel was replayed whole.
#[derive(Debug, Serialize)]
pub struct Recovered {
    pub channels: BTreeMap<String, i64>,
    pub complete: bool,
}

/// Replays `channels` (each with the client's position) to the socket, which must
/// already be in their rooms so that nothing committed meanwhile falls between the
/// replay and live delivery.
pub async fn replay<A: Adapter>(
    chat: &Chat,
    socket: &SocketRef<A>,
    channels: &[(ChannelId, i64)],
) -> Result<Recovered> {
    let mut recovered = Recovered { channels: BTreeMap::new(), complete: true };
    for &(channel, since) in channels {
        let (messages, has_more) = chat.read_slice(channel, Slice::Changes { since }, REPLAY_LIMIT).await?;
        let mut position = since;
        let mut whole = !has_more;
        for message in &messages {
            if let Some(change) = Change::for_replay(message, since)
                && !emit_patiently(socket, change.event(), message).await
            {
                // The client stopped reading: report where it really is.
                whole = false;
                break;
            }
            position = message.event_seq;
        }
        recovered.complete &= whole;
        recovered.channels.insert(channel.to_string(), position);
    }
    Ok(recovered)
}

/// Emits, waiting for room in the socket's outgoing buffer rather than dropping:
/// a replay can be far larger than what live traffic keeps buffered. False if the
/// event could not be sent (the socket closed, or did not read for 5 s).
pub async fn emit_patiently<A: Adapter, T: Serialize + ?Sized>(
    socket: &SocketRef<A>,
    event: &'static str,
    data: &T,
) -> bool {
    for _ in 0..200 {
        match socket.emit(event, data) {
            Err(SendError::Socket(SocketError::InternalChannelFull)) => {
                tokio::time::sleep(Duration::from_millis(25)).await
            }
            Err(e) => {
                tracing::debug!(sid = %socket.id, error = %e, "replay emit failed");
                return false;
            }
            Ok(()) => return true,
        }
    }
    tracing::warn!(sid = %socket.id, "replay emit gave up: the client does not read");
    false
}
