//! The Socket.IO gateway: the root namespace `/` (each user's own line) and one
//! dynamic namespace per community, `/socket/commu-{id}`, whose rooms are channels.
//!
//! - [`io`]: the Socket.IO server as one type ([`Io`]), whichever adapter it runs on;
//!   the adapter generic stays inside the gateway.
//! - [`fanout`]: [`Fanout`], the one owner of broadcasting.
//! - `root.rs`, `community.rs`: the namespaces' connect and event handlers, named
//!   functions that get the app through the server's state ([`AppRef`]).
//! - `extract.rs`: the extractors every handler takes (arrival order, payload, the
//!   live app, the event's bookkeeping).
//! - `cluster.rs`: putting Redis back in step after an outage; dead instances' users.
//! - [`relay`]: a written change's one publish to the other instances.
//!
//! Admission (draining, token, the user's socket cap, membership) happens in one
//! connect middleware for both namespaces ([`admit`]), and the event handlers are registered there too,
//! before the CONNECT packet goes out: socketioxide runs the connect handler as a
//! spawned task, so handlers registered in it could miss the first events of a fast
//! client. Every event is answered with one ack type, [`Ack`], built from its result.

mod cluster;
mod community;
mod extract;
pub mod fanout;
pub mod io;
pub mod relay;
mod root;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use serde::Serialize;
use socketioxide::SocketIo;
use socketioxide::extract::{AckSender, SocketRef, State, TryData};
use socketioxide::handler::ConnectHandler;
use socketioxide_core::adapter::Spawnable;

pub use cluster::{reap_dead_instances, reap_own_leftovers, resync};
pub use extract::Turnstile;
pub use fanout::Fanout;
pub use io::{AnySocket, Io};
pub use relay::Relay;

use crate::adapter::ChatAdapter;
use crate::app::App;
use crate::chat::{ChannelId, CommunityId, UserId};
use crate::error::{Code, Error};
use crate::metrics as m;
use extract::Received;
use io::on_io;

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

/// The app, as the handlers reach it: the Socket.IO server's state, held weakly (the
/// app owns the server that owns the state, and a strong reference would keep a
/// stopped instance, its database pool included, alive forever).
#[derive(Clone)]
pub struct AppRef(pub Weak<App>);

/// Registers both namespaces' handlers on the app's Socket.IO server.
pub async fn register(app: &Arc<App>) {
    on_io!(app.fanout.io(), |io| register_namespaces(io).await)
}

async fn register_namespaces<A: ChatAdapter>(io: &SocketIo<A>) {
    io.ns("/", root::on_connect.with(admit)).spawn();
    io.dyn_ns(format!("{COMMUNITY_NS_PREFIX}{{community}}"), community::on_connect.with(admit))
        .expect("the community namespace pattern is valid");
    // The cluster adapter adds `/` once its channels are subscribed.
    for _ in 0..500 {
        if io.of("/").is_some() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    tracing::warn!("the root namespace was not ready in 5 s");
}

/// The connect middleware of both namespaces: admission (see `root.rs` and
/// `community.rs` for what each checks). A refusal's text is the bare code.
async fn admit<A: ChatAdapter>(
    socket: SocketRef<A>,
    TryData(auth): TryData<serde_json::Value>,
    State(app): State<AppRef>,
    io: SocketIo<A>,
) -> Result<(), Refusal> {
    let app = app.0.upgrade().ok_or_else(stopped)?;
    let auth = auth.unwrap_or_default();
    if socket.ns() == "/" {
        root::admit(&app, &socket, auth).await
    } else {
        community::admit(&app, &io, socket, auth).await
    }
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

/// Sockets open per user on this instance, for `--max-sockets-per-user`. A socket
/// holds a [`SocketSlot`] in its extensions; the slot is given back when the socket
/// is freed, however it ends.
#[derive(Debug, Default)]
pub struct SocketsPerUser {
    open: Arc<Mutex<HashMap<UserId, usize>>>,
}

/// One socket's place in [`SocketsPerUser`].
#[derive(Debug)]
pub struct SocketSlot {
    open: Arc<Mutex<HashMap<UserId, usize>>>,
    user: UserId,
}

impl SocketsPerUser {
    /// A slot for one more socket of `user`, or `rate_limited` at `max`.
    fn take(&self, user: UserId, max: usize) -> Result<SocketSlot, Error> {
        let mut open = self.open.lock().unwrap();
        let n = open.entry(user).or_default();
        if *n >= max {
            metrics::counter!(m::SOCKETS_CAPPED).increment(1);
            return Err(Error::new(
                Code::RateLimited,
                format!("at most {max} sockets per user on this instance; close some"),
            ));
        }
        *n += 1;
        Ok(SocketSlot { open: self.open.clone(), user })
    }

    /// How many sockets `user` has open here.
    pub fn open(&self, user: UserId) -> usize {
        self.open.lock().unwrap().get(&user).copied().unwrap_or(0)
    }
}

impl Drop for SocketSlot {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap();
        if let Some(n) = open.get_mut(&self.user) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.user);
            }
        }
    }
}

/// Reads the token from a CONNECT auth payload and checks it.
fn authenticate(app: &App, auth: &serde_json::Value) -> Result<UserId, Error> {
    let token = auth
        .get("token")
        .and_then(|t| t.as_str())
        .ok_or_else(|| Error::unauthorized("the CONNECT auth payload must carry {\"token\": ...}"))?;
    app.tokens.verify(token)
}

/// An event's ack, built from its result: the value, or the refusal's body
/// (`{"error": ...}`, and what the event adds to it: see [`Acked`]).
pub struct Ack<T>(pub Result<T, Error>);

/// A value an event acks with, and how the event's refusal is answered.
pub trait Acked: Serialize {
    fn refusal(error: &Error) -> serde_json::Value {
        error.body()
    }
}

impl Acked for serde_json::Value {}
impl Acked for crate::chat::Page {}

impl<T: Acked> Serialize for Ack<T> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match &self.0 {
            Ok(value) => value.serialize(serializer),
            Err(error) => T::refusal(error).serialize(serializer),
        }
    }
}

/// Answers an event's ack, logging a failure (the client then times out and
/// retries; `clientMsgId` makes that safe), and records how long it took.
fn answer<A: ChatAdapter, T: Acked, const EVENT: u8>(received: Received<EVENT>, ack: AckSender<A>, body: Ack<T>) {
    if let Err(error) = &body.0 {
        error.report(received.event);
    }
    if let Err(e) = ack.send(&body) {
        tracing::debug!(event = received.event, error = %e, "could not send an ack");
    }
    metrics::histogram!(m::ACK_SECONDS, "event" => received.event).record(received.at.elapsed().as_secs_f64());
}

/// Serves an event's (or a connect's) work as one request: it may wait on the
/// database for `--db-timeout` in all, however many queries it needs, and is
/// answered `unavailable` past that (`store::within_request`).
async fn within_deadline<F: std::future::Future>(app: &App, work: F) -> F::Output {
    crate::store::within_request(app.config.db_timeout, work).await
}

/// Counts a namespace connect's outcome.
fn count_connect(kind: &'static str, result: &'static str) {
    metrics::counter!(m::CONNECTS, "namespace" => kind, "result" => result).increment(1);
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
