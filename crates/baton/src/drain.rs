//! Draining: taking an instance out of service without dropping a conversation.
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
//!   other clients behind a proxy, so its TCP is left alone; instead [`evict_polling`]
//!   answers the session's pending and next polls as engine.io does for a session it
//!   does not know (400, "Session ID unknown"), which the client takes as a transport
//!   error and reconnects.
//!
//! The closes are spread over the drain window; acks in flight finish first. Users
//! moved by a drain keep their presence for the grace period, so they do not flap
//! offline and online (see `server::leave_cluster`).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::Request;
use axum::extract::connect_info::ConnectInfo;
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use socketioxide::TransportType;
use tokio::sync::{Notify, watch};

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

/// A drain's state, shared by the gateway, the admin endpoints and the server.
#[derive(Debug)]
pub struct Drain {
    pub window: Duration,
    pub grace: Duration,
    /// Time for the load balancer to notice /readyz failing before closes begin.
    pub lb_delay: Duration,
    requested: Notify,
    /// Set when the instance stops taking new connections.
    draining: AtomicBool,
    /// Events being handled (their acks not yet sent).
    in_flight: Arc<AtomicUsize>,
    /// Long-polling sessions the drain has closed.
    evicted: Mutex<HashSet<String>>,
    evictions: watch::Sender<u64>,
    /// The WebSocket connection of sessions that upgraded from long-polling (their
    /// handshake request, which the socket keeps, came on another connection).
    upgrades: Mutex<HashMap<String, Connection>>,
    /// The report, once the drain is over.
    report: watch::Sender<Option<Report>>,
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
            upgrades: Mutex::default(),
            report: watch::Sender::new(None),
        }
    }

    /// Asks the server to drain (POST /admin/drain); SIGTERM does the same.
    pub fn request(&self) {
        self.requested.notify_one();
    }

    /// Whether the instance has stopped taking new connections.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Stops taking new connections: `/readyz` fails, connects are refused.
    pub fn start(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// Resolves when a drain is requested.
    pub async fn requested(&self) {
        self.requested.notified().await;
    }

    /// Counts an event until its ack is sent (the guard's drop).
    pub fn track(&self) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(self.in_flight.clone())
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

    /// Forgets a session's upgrade record once it is gone.
    pub fn forget(&self, sid: &str) {
        self.upgrades.lock().unwrap().remove(sid);
    }
}

/// An event whose ack is not sent yet; see [`Drain::track`].
#[derive(Debug)]
pub struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
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

/// Middleware over the Socket.IO endpoint: while draining, refuses new engine.io
/// handshakes (a stock client takes the 503 as a transport error and tries again,
/// through the load balancer, elsewhere; a namespace refusal would stop it for
/// good); notes which connection carries an upgraded session's WebSocket; and ends
/// the polls of sessions the drain closed.
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
        response = next.run(req) => response,
        () = evicted => session_unknown(),
    }
}

/// One connected client: its engine.io session and how to close its transport.
struct Client {
    socket: AnySocket,
}

impl Client {
    fn close(&self, drain: &Drain) -> bool {
        let sid = self.socket.id().to_string();
        match self.socket.transport_type() {
            TransportType::Websocket => {
                let upgraded = drain.upgrades.lock().unwrap().get(&sid).cloned();
                let conn = upgraded.or_else(|| self.socket.request_extension::<ConnectInfo<Connection>>().map(|c| c.0));
                conn.is_some_and(|c| c.shut_down())
            }
            TransportType::Polling => {
                drain.evict(&sid);
                true
            }
        }
    }
}

/// Every client connected here, once each (a client has one socket per namespace).
fn connected_clients(app: &App) -> Vec<Client> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for socket in app.fanout.io().sockets() {
        if seen.insert(socket.id()) {
            out.push(Client { socket });
        }
    }
    out
}

/// Runs a drain to its end: out of the load balancer, no new connections, acks in
/// flight answered, transports closed spread over the window, stragglers closed
/// at its end. Returns the report (also logged and kept for `/admin/status`).
pub async fn run(app: &App, instance: &str) -> Report {
    let started = Instant::now();
    app.drain.start();
    let acks_in_flight = app.drain.in_flight.load(Ordering::SeqCst);
    // Acks in flight finish first (bounded: a stuck database must not hold the drain).
    let ack_deadline = started + app.drain.window / 4;
    while app.drain.in_flight.load(Ordering::SeqCst) > 0 && Instant::now() < ack_deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let acks_finished = acks_in_flight.saturating_sub(app.drain.in_flight.load(Ordering::SeqCst));
    let clients = connected_clients(app);
    let sockets_at_start = clients.len();
    tracing::info!(clients = sockets_at_start, window = ?app.drain.window, "draining: closing transports over the window");
    // First the load balancer sees /readyz fail (its checks need a moment), so the
    // clients closed next reconnect elsewhere; then the closes, spread up to 80% of
    // the window; the rest lets the last ones reconnect before the instance goes.
    let first = started + app.drain.lb_delay.min(app.drain.window / 2);
    let spread = (started + app.drain.window.mul_f64(0.8)).saturating_duration_since(first);
    let mut closed = 0;
    for (i, client) in clients.iter().enumerate() {
        let at = first + spread.mul_f64((i + 1) as f64 / (sockets_at_start + 1) as f64);
        tokio::time::sleep_until(at.into()).await;
        if client.socket.connected() && client.close(&app.drain) {
            closed += 1;
        }
    }
    let window_end = started + app.drain.window;
    while !connected_clients(app).is_empty() && Instant::now() < window_end {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let closed_at_window_end = connected_clients(app).len();
    let report = Report {
        instance: instance.to_owned(),
        sockets_at_start,
        closed,
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
