//! Taking transports out of this instance without dropping a conversation: the
//! full drain (the instance leaves) and the closing of one transport that both the
//! drain and a shed (`shed.rs`, some transports leave, the instance stays) are made
//! of.
//!
//! Stock socket.io-client reconnects on its own after a *transport* close, but not
//! after a DISCONNECT packet ("io server disconnect"), and socketioxide offers no
//! public way to close one socket's transport: `socket.disconnect()` sends a
//! DISCONNECT, `SocketIo::close()` closes every transport at once (the thundering
//! herd a drain exists to avoid). So the transport is closed from below:
//! - WebSocket: every accepted TCP connection carries a [`Connection`] handle (its
//!   file descriptor while it is open, in the request's extensions); `shutdown(2)`
//!   on it ends the WebSocket, engine.io sees the transport close, and the client
//!   reconnects — through the load balancer, to another instance.
//! - HTTP long-polling: a session's requests may share keep-alive connections with
//!   other clients behind a proxy, so its TCP is left alone; instead [`drain_gate`]
//!   answers the session's pending and next polls as engine.io does for a session it
//!   does not know (400, "Session ID unknown"), which the client takes as a
//!   transport error and reconnects. Once its polls are answered, the session is
//!   ended in engine.io as a client's own close would end it (an engine.io close
//!   packet posted to it in-process), so it does not linger until its heartbeat
//!   gives up.
//!
//! The invariants, for every transport closed here ([`close_paced`]): the acks of
//! its events in flight are answered before it closes (bounded, a quarter of the
//! drain window: a stuck database must not hold the close); it never gets a
//! DISCONNECT packet; and its user's presence stays for the grace period
//! (`--presence-grace`), so a user who reconnects elsewhere never flaps offline.
//! The full drain ([`run`]) closes every transport, spread over the window, after
//! going unready; a shed closes a share of them and stays ready.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::Request;
use axum::extract::connect_info::ConnectInfo;
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use socketioxide::TransportType;
use socketioxide::socket::Sid;
use tokio::sync::{Notify, watch};
use tower::ServiceExt;

use crate::app::App;
use crate::gateway::AnySocket;
use crate::listener::Connection;

/// What a drain did: logged as one JSON line when it ends, and on `/admin/status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub instance: String,
    /// Engine.io connections (clients) when the drain began.
    pub sockets_at_start: usize,
    /// Of those, the ones whose transport the drain closed.
    pub closed: usize,
    /// Acks that were in flight when the drain began, all answered before closing.
    pub acks_finished: usize,
    /// Clients still connected when the window ended, closed at once.
    pub closed_at_window_end: usize,
    pub window_ms: u128,
    pub duration_ms: u128,
}

/// How long a moved transport's mark is kept: its disconnect handlers run within
/// moments of the close; the mark only has to outlive them.
const MOVED_MARK_KEPT: Duration = Duration::from_secs(300);

/// How long a closed long-polling session's pending polls may take to be answered
/// `Session ID unknown` before engine.io is told to end it (they are answered as
/// soon as the gate's task runs: well under a millisecond when the instance is not
/// starved).
const POLLS_ANSWERED_WITHIN: Duration = Duration::from_secs(1);

/// How long an ack may take to reach the kernel: a WebSocket's is written by the
/// task that sends it unless the socket's buffer was full, in which case the
/// session's own task writes it as soon as the socket takes more
/// (vendor/engineioxide/BATON-PATCH.md, change 5); a long-polling session's waits
/// for its next poll.
const ACK_WRITTEN_WITHIN: Duration = Duration::from_millis(20);

/// How soon paced closes notice that they must stop (a drain began during a shed).
const STOP_HEEDED_WITHIN: Duration = Duration::from_millis(100);

/// The transports taken out of this instance, and how: shared by the gateway, the
/// admin endpoints, the server, the full drain and sheds.
#[derive(Debug)]
pub struct Drain {
    pub window: Duration,
    pub grace: Duration,
    /// Time for the load balancer to notice /readyz failing (or its agent check
    /// reading `drain`) before closes begin.
    pub lb_delay: Duration,
    requested: Notify,
    /// Set when the instance stops taking new connections.
    draining: AtomicBool,
    /// Events being handled (their acks not yet sent), in all and per transport.
    in_flight: Arc<AcksInFlight>,
    /// Long-polling sessions being closed: their polls are answered 400.
    evicted: Mutex<HashSet<String>>,
    evictions: watch::Sender<u64>,
    /// Polls in the gate per long-polling session, so that a closed session's are
    /// answered before engine.io ends it.
    polls: Mutex<HashMap<String, usize>>,
    /// Transports closed by a drain or a shed (engine.io sid, when): their sockets'
    /// disconnects keep presence for the grace period.
    moved: Mutex<HashMap<String, Instant>>,
    /// The WebSocket connection of sessions that upgraded from long-polling (their
    /// handshake request, which the socket keeps, came on another connection).
    upgrades: Mutex<HashMap<String, Connection>>,
    /// The Socket.IO service that serves every session (its engine.io server),
    /// through which a closed long-polling session is ended as its client's close
    /// would end it. Weak: the service holds the REST router, which holds the app;
    /// the server holds it while it serves.
    engine: OnceLock<Weak<Engine>>,
    /// The report, once the drain is over.
    report: watch::Sender<Option<Report>>,
}

/// The Socket.IO service, as the drain calls it.
pub type Engine = tower::util::BoxCloneSyncService<Request, Response, std::convert::Infallible>;

/// Events being handled, whose acks are not sent yet: in all (what a drain waits
/// for before its first close) and per transport (what each close waits for).
#[derive(Debug, Default)]
struct AcksInFlight {
    total: AtomicUsize,
    by_transport: Mutex<HashMap<Sid, usize>>,
}

impl Drain {
    pub fn new(window: Duration, grace: Duration, lb_delay: Duration) -> Self {
        Self {
            window,
            grace,
            lb_delay,
            requested: Notify::new(),
            draining: AtomicBool::new(false),
            in_flight: Arc::default(),
            evicted: Mutex::default(),
            evictions: watch::Sender::new(0),
            polls: Mutex::default(),
            moved: Mutex::default(),
            upgrades: Mutex::default(),
            engine: OnceLock::new(),
            report: watch::Sender::new(None),
        }
    }

    /// Gives the drain the Socket.IO service the sessions live in, to end closed
    /// long-polling sessions with. Set once, at start.
    pub fn set_engine(&self, engine: &Arc<Engine>) {
        let _ = self.engine.set(Arc::downgrade(engine));
    }

    /// Asks the server to drain (POST /admin/drain); SIGTERM does the same.
    pub fn request(&self) {
        self.requested.notify_one();
    }

    /// Whether the instance has stopped taking new connections.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Stops taking new connections: `/readyz` fails, the agent port says `drain`,
    /// connects are refused.
    pub fn start(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// Resolves when a drain is requested.
    pub async fn requested(&self) {
        self.requested.notified().await;
    }

    /// Counts an event of transport `sid` until its ack is sent (the guard's drop).
    pub fn track(&self, sid: Sid) -> InFlight {
        self.in_flight.total.fetch_add(1, Ordering::SeqCst);
        *self.in_flight.by_transport.lock().unwrap().entry(sid).or_default() += 1;
        InFlight { acks: self.in_flight.clone(), sid }
    }

    fn acks_in_flight(&self) -> usize {
        self.in_flight.total.load(Ordering::SeqCst)
    }

    fn acks_in_flight_on(&self, sid: Sid) -> usize {
        self.in_flight.by_transport.lock().unwrap().get(&sid).copied().unwrap_or(0)
    }

    pub fn report(&self) -> Option<Report> {
        self.report.borrow().clone()
    }

    /// The report, when the drain is over (at once if it is).
    pub async fn finished(&self) -> Report {
        let mut report = self.report.subscribe();
        let finished = report.wait_for(Option::is_some).await.expect("the drain outlives its waiters");
        finished.clone().expect("waited for")
    }

    fn evict(&self, sid: &str) {
        self.evicted.lock().unwrap().insert(sid.to_owned());
        self.evictions.send_modify(|n| *n += 1);
    }

    fn is_evicted(&self, sid: &str) -> bool {
        self.evicted.lock().unwrap().contains(sid)
    }

    fn polls_on(&self, sid: &str) -> usize {
        self.polls.lock().unwrap().get(sid).copied().unwrap_or(0)
    }

    /// Marks transport `sid` as moved by a drain or a shed (see [`Drain::was_moved`]).
    fn mark_moved(&self, sid: &str) {
        let mut moved = self.moved.lock().unwrap();
        let now = Instant::now();
        moved.retain(|_, at| now.duration_since(*at) < MOVED_MARK_KEPT);
        moved.insert(sid.to_owned(), now);
    }

    /// Whether the socket's transport was closed by a drain or a shed: its user is
    /// moving to another transport, so its presence stays for the grace period.
    pub fn was_moved(&self, sid: &str) -> bool {
        self.is_draining() || self.moved.lock().unwrap().contains_key(sid)
    }

    /// Whether transport `sid` is being closed already (a client a shed must not
    /// count or choose again).
    pub(crate) fn is_closing(&self, sid: &str) -> bool {
        self.moved.lock().unwrap().contains_key(sid) || self.is_evicted(sid)
    }

    /// Forgets a session's upgrade record once it is gone.
    pub fn forget(&self, sid: &str) {
        self.upgrades.lock().unwrap().remove(sid);
    }

    /// Ends a long-polling session in engine.io, once the polls it has pending here
    /// were answered `Session ID unknown` (else engine.io's answer to the close, a
    /// noop, could reach the client first: harmless, its next poll gets the 400).
    /// False if engine.io no longer had it.
    async fn end_polling_session(&self, sid: &str) -> bool {
        let deadline = Instant::now() + POLLS_ANSWERED_WITHIN;
        while self.polls_on(sid) > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let mut ended = true;
        if let Some(engine) = self.engine.get().and_then(Weak::upgrade) {
            // An engine.io close packet ("1"), as a client leaving would post it.
            let close = Request::post(format!("/socket.io/?EIO=4&transport=polling&sid={sid}"))
                .header(axum::http::header::CONTENT_TYPE, "text/plain;charset=UTF-8")
                .body(Body::from("1"))
                .expect("a valid request");
            match Engine::clone(&engine).oneshot(close).await {
                Ok(res) if res.status().is_success() => {}
                Ok(res) => {
                    ended = false;
                    tracing::debug!(sid, status = %res.status(), "the session was gone already");
                }
                Err(never) => match never {},
            }
        }
        // engine.io answers its own 400 from now on.
        self.evicted.lock().unwrap().remove(sid);
        ended
    }
}

/// An event whose ack is not sent yet; see [`Drain::track`].
#[derive(Debug)]
pub struct InFlight {
    acks: Arc<AcksInFlight>,
    sid: Sid,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.acks.total.fetch_sub(1, Ordering::SeqCst);
        let mut by_transport = self.acks.by_transport.lock().unwrap();
        if let Some(n) = by_transport.get_mut(&self.sid) {
            *n -= 1;
            if *n == 0 {
                by_transport.remove(&self.sid);
            }
        }
    }
}

/// engine.io's own answer for a session it does not know: clients treat it as a
/// transport error and reconnect.
fn session_unknown() -> Response {
    (
        StatusCode::BAD_REQUEST,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        r#"{"code":1,"message":"Session ID unknown"}"#,
    )
        .into_response()
}

/// The `sid` and `transport` of an engine.io request (`None` for a handshake).
fn engine_params(req: &Request) -> Option<(String, String)> {
    if !req.uri().path().starts_with("/socket.io") {
        return None;
    }
    let query = req.uri().query()?;
    let mut sid = None;
    let mut transport = None;
    for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
        match &*k {
            "sid" => sid = Some(v.into_owned()),
            "transport" => transport = Some(v.into_owned()),
            _ => {}
        }
    }
    Some((sid?, transport?))
}

/// A poll in the gate, counted in [`Drain::polls`] until it is answered.
struct PendingPoll<'a> {
    drain: &'a Drain,
    sid: String,
}

impl<'a> PendingPoll<'a> {
    fn enter(drain: &'a Drain, sid: &str) -> Self {
        *drain.polls.lock().unwrap().entry(sid.to_owned()).or_default() += 1;
        PendingPoll { drain, sid: sid.to_owned() }
    }
}

impl Drop for PendingPoll<'_> {
    fn drop(&mut self) {
        let mut polls = self.drain.polls.lock().unwrap();
        if let Some(n) = polls.get_mut(&self.sid) {
            *n -= 1;
            if *n == 0 {
                polls.remove(&self.sid);
            }
        }
    }
}

/// Middleware over the Socket.IO endpoint: while draining, refuses new engine.io
/// handshakes (a stock client takes the 503 as a transport error and tries again,
/// through the load balancer, elsewhere; a namespace refusal would stop it for
/// good); notes which connection carries an upgraded session's WebSocket; and ends
/// the polls of sessions being closed.
pub async fn drain_gate(app: Arc<App>, req: Request, next: Next) -> Response {
    let is_engine = req.uri().path().starts_with("/socket.io");
    let Some((sid, transport)) = engine_params(&req) else {
        if is_engine && app.drain.is_draining() {
            return crate::error::Error::new(
                crate::error::Code::Draining,
                "this instance is draining; connect to another",
            )
            .into_response();
        }
        return next.run(req).await;
    };
    if transport == "websocket" {
        if let Some(ConnectInfo(conn)) = req.extensions().get::<ConnectInfo<Connection>>() {
            app.drain.upgrades.lock().unwrap().insert(sid, conn.clone());
        }
        return next.run(req).await;
    }
    let _poll = PendingPoll::enter(&app.drain, &sid);
    if app.drain.is_evicted(&sid) {
        return session_unknown();
    }
    let mut evictions = app.drain.evictions.subscribe();
    let evicted = async {
        while evictions.changed().await.is_ok() {
            if app.drain.is_evicted(&sid) {
                return;
            }
        }
        std::future::pending::<()>().await
    };
    tokio::select! {
        // An eviction wins over a response ready at the same moment.
        biased;
        () = evicted => session_unknown(),
        response = next.run(req) => response,
    }
}

/// One connected client: its engine.io session and how to close its transport.
pub(crate) struct Client {
    pub(crate) socket: AnySocket,
}

/// How a transport was closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Closing {
    WebSocket,
    Polling,
}

impl Client {
    /// Closes the transport from below (see the module doc); `None` if it was
    /// closed already.
    async fn close(&self, drain: &Drain) -> Option<Closing> {
        let sid = self.socket.id().to_string();
        drain.mark_moved(&sid);
        match self.socket.transport_type() {
            TransportType::Websocket => {
                let upgraded = drain.upgrades.lock().unwrap().get(&sid).cloned();
                let conn = upgraded.or_else(|| self.socket.request_extension::<ConnectInfo<Connection>>().map(|c| c.0));
                conn.is_some_and(|c| c.shut_down()).then_some(Closing::WebSocket)
            }
            TransportType::Polling => {
                drain.evict(&sid);
                drain.end_polling_session(&sid).await.then_some(Closing::Polling)
            }
        }
    }
}

/// Every client connected here, once each (a client has one socket per namespace).
pub(crate) fn connected_clients(app: &App) -> Vec<Client> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for socket in app.fanout.io().sockets() {
        if seen.insert(socket.id()) {
            out.push(Client { socket });
        }
    }
    out
}

/// This instance's transports (engine.io connections), and how many of them are on
/// HTTP long-polling: what `/admin/status` reports and `/metrics` samples.
pub(crate) fn count_transports(app: &App) -> (usize, usize) {
    let clients = connected_clients(app);
    let polling = clients.iter().filter(|c| c.socket.transport_type() == TransportType::Polling).count();
    (clients.len(), polling)
}

/// What [`close_paced`] did.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Closed {
    pub websocket: usize,
    pub polling: usize,
    /// Acks that were in flight on the closed transports when their turn came,
    /// answered before the close.
    pub acks_waited_for: usize,
    /// Clients that were gone before their turn.
    pub gone_before: usize,
}

impl Closed {
    pub fn total(&self) -> usize {
        self.websocket + self.polling
    }
}

/// Closes the clients' transports one by one, evenly spaced over `spread` from
/// `first` (the i-th of n at `first + spread * i / n`, the last at the end), each
/// after its acks in flight are answered (at most a quarter of the drain window),
/// until `stop` says to stop (heeded within [`STOP_HEEDED_WITHIN`]).
pub(crate) async fn close_paced(
    app: &App,
    clients: &[Client],
    first: Instant,
    spread: Duration,
    stop: impl Fn() -> bool,
) -> Closed {
    let mut closed = Closed::default();
    let n = clients.len();
    let ack_bound = app.drain.window / 4;
    for (i, client) in clients.iter().enumerate() {
        let at = first + spread.mul_f64((i + 1) as f64 / n as f64);
        // In steps, so that `stop` is heeded within one: a drain must not wait for a
        // long shed's next turn (its HTTP answer, if awaited, holds the exit).
        while !stop() && Instant::now() < at {
            tokio::time::sleep(at.saturating_duration_since(Instant::now()).min(STOP_HEEDED_WITHIN)).await;
        }
        if stop() {
            break;
        }
        if !client.socket.connected() {
            closed.gone_before += 1;
            continue;
        }
        let sid = client.socket.id();
        let acks = app.drain.acks_in_flight_on(sid);
        if acks > 0 {
            let deadline = Instant::now() + ack_bound;
            while app.drain.acks_in_flight_on(sid) > 0 && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            // The ack is queued when its event stops counting; the socket's writer
            // task still has to hand it to the kernel, which then sends it before
            // the FIN.
            tokio::time::sleep(ACK_WRITTEN_WITHIN).await;
            closed.acks_waited_for += acks;
        }
        match client.close(&app.drain).await {
            Some(Closing::WebSocket) => closed.websocket += 1,
            Some(Closing::Polling) => closed.polling += 1,
            None => closed.gone_before += 1,
        }
    }
    closed
}

/// Runs a drain to its end: out of the load balancer, no new connections, acks in
/// flight answered, transports closed spread over the window, stragglers closed
/// at its end. Returns the report (also logged and kept for `/admin/status`).
pub async fn run(app: &App, instance: &str) -> Report {
    let started = Instant::now();
    app.drain.start();
    let acks_in_flight = app.drain.acks_in_flight();
    // Acks in flight finish first (bounded: a stuck database must not hold the drain).
    let ack_deadline = started + app.drain.window / 4;
    while app.drain.acks_in_flight() > 0 && Instant::now() < ack_deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let acks_finished = acks_in_flight.saturating_sub(app.drain.acks_in_flight());
    // Every client, those a shed is closing included (the shed stops: this takes over;
    // closing one twice is harmless).
    let clients = connected_clients(app);
    let sockets_at_start = clients.len();
    tracing::info!(clients = sockets_at_start, window = ?app.drain.window, "draining: closing transports over the window");
    // First the load balancer sees /readyz fail or reads the agent's `drain` (its
    // checks need a moment), so the clients closed next reconnect elsewhere; then
    // the closes, spread up to 80% of the window; the rest lets the last ones
    // reconnect before the instance goes.
    let first = started + app.drain.lb_delay.min(app.drain.window / 2);
    let spread = (started + app.drain.window.mul_f64(0.8)).saturating_duration_since(first);
    // The i-th of n at first + spread * i / (n + 1): the last close leaves a step
    // of the spread before 0.8 W, as the drain always has.
    let step = spread.mul_f64(1.0 / (sockets_at_start + 1) as f64);
    let closed = close_paced(app, &clients, first, step * sockets_at_start as u32, || false).await;
    let window_end = started + app.drain.window;
    while !connected_clients(app).is_empty() && Instant::now() < window_end {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let closed_at_window_end = connected_clients(app).len();
    let report = Report {
        instance: instance.to_owned(),
        sockets_at_start,
        closed: closed.total(),
        acks_finished,
        closed_at_window_end,
        window_ms: app.drain.window.as_millis(),
        duration_ms: started.elapsed().as_millis(),
    };
    let line = serde_json::to_string(&report).unwrap_or_default();
    tracing::info!(report = %line, "drain finished");
    app.drain.report.send_replace(Some(report.clone()));
    report
}
