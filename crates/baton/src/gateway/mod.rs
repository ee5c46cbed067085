//! The Socket.IO gateway: the root namespace `/` (each user's own line) and one
//! dynamic namespace per community, `/socket/commu-{id}`, whose rooms are channels.
//!
//! Admission (token, membership, draining) happens in connect middleware, and the
//! event handlers are registered there too, before the CONNECT packet goes out:
//! socketioxide runs the connect handler as a spawned task, so handlers registered in
//! it could miss the first events of a fast client.

mod cluster;
mod community;
mod extract;
mod fanout;
mod root;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::adapter::ChatAdapter;
use serde::Serialize;
use socketioxide::extract::SocketRef;

pub use cluster::{reap_dead_instances, reap_own_leftovers, resync};
pub use extract::Turnstile;
pub use fanout::ChatCommand;

use crate::app::App;
use crate::chat::{ChannelId, CommunityId, UserId};
use crate::error::{Code, Error};
use crate::metrics as m;

pub const COMMUNITY_NS_PREFIX: &str = "/socket/commu-";

pub fn community_ns(community: CommunityId) -> String {
    format!("{COMMUNITY_NS_PREFIX}{community}")
}

pub fn channel_room(channel: ChannelId) -> String {
    format!("channel:{channel}")
}

pub fn user_room(user: UserId) -> String {
    format!("user:{user}")
}

/// The channel a room name stands for, if it is a channel room.
pub fn room_channel(room: &str) -> Option<ChannelId> {
    room.strip_prefix("channel:")?.parse().ok()
}

/// Who a socket belongs to and where, kept in the socket's extensions.
#[derive(Debug)]
pub struct Session {
    pub user: UserId,
    /// The community of a community namespace's socket; `None` on `/`.
    pub community: Option<CommunityId>,
}

/// A refused connect: its Display is the bare code, which socket.io-client shows as
/// `connect_error`'s message.
#[derive(Debug)]
pub struct Refusal(pub Error);

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0.code.as_str())
    }
}

/// Registers both namespaces' handlers on the app's Socket.IO instance.
///
/// Handlers hold the app weakly: the app owns the Socket.IO instance that owns the
/// handlers, and a strong reference would keep a stopped instance (its database
/// pool included) alive forever.
pub async fn register<A: ChatAdapter>(app: &Arc<App<A>>) {
    root::register(app);
    community::register(app);
    // The cluster adapter adds `/` once its channels are subscribed.
    for _ in 0..500 {
        if app.io.of("/").is_some() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    tracing::warn!("the root namespace was not ready in 5 s");
}

/// Counts the connects in flight per dynamic namespace. socketioxide creates a
/// dynamic namespace before any middleware runs and keeps it until deleted, so each
/// refused connect would leave one behind; a namespace is deleted when a refusal
/// leaves it with no socket and no other connect in flight.
#[derive(Debug, Default)]
pub struct Namespaces {
    in_flight: Mutex<HashMap<String, usize>>,
}

impl Namespaces {
    fn begin(&self, path: &str) {
        *self.in_flight.lock().unwrap().entry(path.to_owned()).or_default() += 1;
    }

    /// Ends a connect; returns how many are still in flight for the namespace.
    fn end(&self, path: &str) -> usize {
        let mut map = self.in_flight.lock().unwrap();
        let Some(n) = map.get_mut(path) else { return 0 };
        *n = n.saturating_sub(1);
        let left = *n;
        if left == 0 {
            map.remove(path);
        }
        left
    }
}

/// Reads the token from a CONNECT auth payload and checks it.
fn authenticate<A: ChatAdapter>(app: &App<A>, auth: &serde_json::Value) -> Result<UserId, Error> {
    let token = auth
        .get("token")
        .and_then(|t| t.as_str())
        .ok_or_else(|| Error::unauthorized("the CONNECT auth payload must carry {\"token\": ...}"))?;
    app.tokens.verify(token)
}

/// An event being handled: its name and when it arrived, for the metrics, and its
/// place among the acks a drain waits for.
struct Received {
    event: &'static str,
    at: std::time::Instant,
    _in_flight: Option<crate::drain::InFlight>,
}

impl Received {
    fn now<A: ChatAdapter>(event: &'static str, app: Option<&Arc<App<A>>>) -> Self {
        metrics::counter!(m::EVENTS_IN, "event" => event).increment(1);
        Self { event, at: std::time::Instant::now(), _in_flight: app.map(|a| a.drain.track()) }
    }
}

/// Answers an event's ack with `body`, logging a failure (the client then times
/// out and retries; `clientMsgId` makes that safe).
fn answer<A: ChatAdapter, T: Serialize + ?Sized>(
    received: Received,
    ack: socketioxide::extract::AckSender<A>,
    body: &T,
) {
    if let Err(e) = ack.send(body) {
        tracing::debug!(event = received.event, error = %e, "could not send an ack");
    }
    metrics::histogram!(m::ACK_SECONDS, "event" => received.event).record(received.at.elapsed().as_secs_f64());
}

/// Counts a namespace connect's outcome.
fn count_connect(kind: &'static str, result: &'static str) {
    metrics::counter!(m::CONNECTS, "namespace" => kind, "result" => result).increment(1);
}

/// The ack body for a plain result: the value, or `{"error": ...}`.
fn ack_body<T: Serialize>(result: Result<T, Error>) -> serde_json::Value {
    match result {
        Ok(v) => serde_json::to_value(v).unwrap_or(serde_json::Value::Null),
        Err(e) => e.body(),
    }
}

/// The session of an admitted socket.
fn session<A: ChatAdapter>(socket: &SocketRef<A>) -> Option<Arc<Session>> {
    socket.extensions.get::<Arc<Session>>()
}

/// The refusal for a connect that arrives while the instance is being torn down.
fn stopped() -> Refusal {
    refuse(Code::Unavailable, "this instance is stopping")
}

fn refuse(code: Code, message: &str) -> Refusal {
    Refusal(Error::new(code, message))
}
