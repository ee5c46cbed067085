//! `baton-floor`: the floor of baton's benchmark. A minimal server of the wire contract
//! (PROTOCOL.md) that does, per delivered message, only what any server of the contract
//! must: read the event, number it, ack it, and write one WebSocket frame to each other
//! socket of the room. Everything in memory: no database, no Redis, no password hashing.
//! `scripts/bench` runs it beside baton and the Node.js peer, and reports baton's figures
//! over the floor's: what baton costs above the unavoidable.
//!
//! How a broadcast goes, and why it is the floor (README.md has the longer version):
//! the `new-chat` frame is encoded once, header and payload in one buffer, and every
//! recipient gets the same bytes (server frames are unmasked, so they are identical);
//! the sender's task writes them to each recipient's socket itself, one non-blocking
//! `send(2)` each, with no task switch, no channel and no copy. Only a socket whose kernel
//! buffer is full gets the frame queued (a refcount, not a copy), for its own task to
//! flush when the socket is writable.
//!
//! - [`http`]: an accepted connection: REST requests, then perhaps the WebSocket upgrade.
//! - [`rest`]: the REST calls of a benchmark's set-up, and `/healthz`, `/readyz`.
//! - [`conn`]: a WebSocket connection: Engine.IO, Socket.IO, `join`, `leave`, `chat`.
//! - [`peer`]: a connection's write side: direct writes, the queue behind a full socket.
//! - [`ws`]: WebSocket frames: built once for all recipients, read in place.
//! - [`hub`]: the in-memory state: accounts, channels, rooms, sequences.
//! - [`heartbeat`]: one task pings every connection and closes the silent ones.

pub mod conn;
pub mod heartbeat;
pub mod http;
pub mod hub;
pub mod peer;
pub mod rest;
pub mod ws;

use std::sync::Arc;

use tokio::net::TcpListener;

pub use hub::{Config, Hub};

/// Serves `listener` until the process ends: one task per accepted connection, and the
/// heartbeat.
pub async fn run(listener: TcpListener, config: Config) -> std::io::Result<()> {
    let hub = Arc::new(Hub::new(config));
    tokio::spawn(heartbeat::run(hub.clone()));
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            // Out of descriptors, or a connection reset before it was accepted: the
            // listener itself is fine; breathe and go on.
            Err(e) => {
                eprintln!("baton-floor: accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        tokio::spawn(http::serve(hub.clone(), stream));
    }
}

#[cfg(test)]
mod tests {
    /// A task's future is allocated once, at its largest state, for the connection's whole
    /// life: no state may hold a buffer across an await.
    #[test]
    fn a_connections_task_stays_small() {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let stream = tokio::net::TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
            let config = super::Config {
                ping_interval: std::time::Duration::from_secs(25),
                ping_timeout: std::time::Duration::from_secs(20),
                max_message: 65536,
            };
            let hub = std::sync::Arc::new(super::Hub::new(config));
            let (other, _) = listener.accept().await.unwrap();
            drop(other);
            let task = super::http::serve(hub, stream);
            let size = std::mem::size_of_val(&task);
            eprintln!("connection task: {size} bytes");
            assert!(size < 1024, "the connection task's future is {size} bytes");
        });
    }
}
