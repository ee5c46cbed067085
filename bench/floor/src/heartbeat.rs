//! Engine.IO's heartbeat for every connection at once: one task, one timer, one ping
//! frame shared by all (a timer per connection would cost each one its own state).
//!
//! Invariant: every `ping_interval` each connection is sent a ping and marked; anything
//! heard from the client clears the mark ([`crate::peer::Peer::heard_from`]); a connection
//! still marked `ping_timeout` after its ping is closed, as Engine.IO closes a session
//! whose pong does not come.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use crate::hub::Hub;
use crate::ws;

pub async fn run(hub: Arc<Hub>) {
    let ping = ws::text("2");
    loop {
        tokio::time::sleep(hub.config.ping_interval).await;
        let peers = hub.peers();
        for peer in peers.iter().filter_map(Weak::upgrade) {
            peer.awaiting_pong.store(true, Ordering::Relaxed);
            peer.send(&ping);
        }
        tokio::time::sleep(hub.config.ping_timeout).await;
        for peer in peers.iter().filter_map(Weak::upgrade) {
            if peer.awaiting_pong.load(Ordering::Relaxed) {
                peer.close();
            }
        }
    }
}
