//! `baton-client`: a small Socket.IO v5 / Engine.IO v4 client, with which baton's
//! integration tests talk to a real server over the real wire protocol. The server does
//! not use it; the load generator (`baton-bench`) has its own leaner connection.
//!
//! Limits, on purpose:
//! - WebSocket transport only (no long-polling, no upgrade), plain `ws://` only (no TLS); the
//!   request path is always `/socket.io/`, whatever path the base URL has.
//! - Text packets only: binary events and acks (packet types 5 and 6) are logged and skipped.
//! - One namespace per connection, and each emit carries exactly one argument (`["ev", data]`).
//! - Acks the server asks for are answered at once with no arguments (`43<ns>,<id>[]`).
//!
//! A background task reads the WebSocket: it answers pings, routes acks to their waiters and
//! queues events for [`Socket::next`]; it also gives up when the server stays silent for longer
//! than `pingInterval + pingTimeout`. A second task owns the write half, so `&self` methods can
//! send concurrently while frames still go out in call order.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::{Instant, timeout, timeout_at};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::client::Request;
use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

type Ws = WebSocketStream<TcpStream>;
type AckResult = Result<Value, ClientError>;
type AckWaiters = HashMap<u64, oneshot::Sender<AckResult>>;

// Socket.IO packet types.
const CONNECT: u8 = 0;
const DISCONNECT: u8 = 1;
const EVENT: u8 = 2;
const ACK: u8 = 3;
const CONNECT_ERROR: u8 = 4;
const BINARY_EVENT: u8 = 5;
const BINARY_ACK: u8 = 6;

/// Options for [`Socket::connect_with`].
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Extra HTTP headers sent with the WebSocket upgrade request (e.g. `Origin`).
    pub headers: Vec<(String, String)>,
    /// Bound on the whole connect: TCP, WebSocket handshake and namespace connect.
    pub connect_timeout: Duration,
}

impl Default for ClientOptions {
    /// No extra headers, a 5 s connect timeout.
    fn default() -> Self {
        Self { headers: Vec::new(), connect_timeout: Duration::from_secs(5) }
    }
}

/// Everything that can go wrong in the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// The server refused the namespace connect; the string is connect_error's `message`.
    #[error("namespace connect refused: {0}")]
    Refused(String),
    /// HTTP/WebSocket handshake failed (with the status code if the server answered with one).
    #[error("handshake failed (status {status:?}): {message}")]
    Handshake {
        /// HTTP status of the refused upgrade, if any.
        status: Option<u16>,
        /// What went wrong.
        message: String,
    },
    /// The operation did not finish in time.
    #[error("timed out")]
    Timeout,
    /// The connection, or the namespace, is closed.
    #[error("connection closed")]
    Closed,
    /// The peer sent something that is not valid Engine.IO / Socket.IO.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// A network error.
    #[error("i/o error: {0}")]
    Io(String),
}

/// What the server sent, in order.
#[derive(Debug, Clone)]
pub enum Incoming {
    /// An event: its name and its arguments (possibly none).
    Event {
        /// Event name.
        name: String,
        /// Event arguments.
        args: Vec<Value>,
    },
    /// The server disconnected this socket from the namespace (the transport may stay open).
    Disconnect,
    /// The transport closed; nothing follows.
    Closed,
}

/// State shared by the [`Socket`], its reader task and its [`AckFuture`]s.
struct Shared {
    /// Ack waiters by ack id; `None` once the connection or namespace is gone.
    acks: Mutex<Option<AckWaiters>>,
    open: AtomicBool,
}

impl Shared {
    fn acks(&self) -> std::sync::MutexGuard<'_, Option<AckWaiters>> {
        self.acks.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn take_ack(&self, id: u64) -> Option<oneshot::Sender<AckResult>> {
        self.acks().as_mut()?.remove(&id)
    }

    /// Fails every pending ack with `Closed` and refuses new ones.
    fn fail_acks(&self) {
        let waiters = self.acks().take().unwrap_or_default();
        for waiter in waiters.into_values() {
            let _ = waiter.send(Err(ClientError::Closed));
        }
    }
}

/// One engine.io connection attached to ONE namespace (one namespace per connection keeps it simple).
pub struct Socket {
    sid: String,
    /// `"<ns>,"`, or `""` for the main namespace `/`.
    prefix: String,
    out: mpsc::UnboundedSender<Message>,
    inbox: mpsc::UnboundedReceiver<Incoming>,
    /// Items pulled from `inbox` by [`Socket::next_event`] but not consumed yet.
    buffered: VecDeque<Incoming>,
    shared: Arc<Shared>,
    next_id: AtomicU64,
    reader: JoinHandle<()>,
    writer: JoinHandle<()>,
}

/// A pending ack from [`Socket::emit_with_ack_deferred`].
pub struct AckFuture {
    id: u64,
    rx: oneshot::Receiver<AckResult>,
    shared: Arc<Shared>,
}

impl AckFuture {
    /// Waits (bounded by `timeout`) for the ack; returns its first argument (`Null` if none).
    pub async fn wait(self, timeout: Duration) -> Result<Value, ClientError> {
        match tokio::time::timeout(timeout, self.rx).await {
            Ok(result) => result.unwrap_or(Err(ClientError::Closed)),
            Err(_) => {
                self.shared.take_ack(self.id);
                Err(ClientError::Timeout)
            }
        }
    }
}

impl Socket {
    /// Opens a WebSocket to `base_url` and connects to namespace `ns` with `auth` as the CONNECT payload.
    pub async fn connect(base_url: &str, ns: &str, auth: Value) -> Result<Socket, ClientError> {
        Self::connect_with(base_url, ns, auth, ClientOptions::default()).await
    }

    /// Like [`Socket::connect`], with extra upgrade headers and a custom connect timeout.
    /// A `Null` `auth` sends a CONNECT without payload.
    pub async fn connect_with(
        base_url: &str,
        ns: &str,
        auth: Value,
        opts: ClientOptions,
    ) -> Result<Socket, ClientError> {
        let deadline = Instant::now() + opts.connect_timeout;
        let ns = format!("/{}", ns.trim_start_matches('/'));
        let prefix = match ns.as_str() {
            "/" => String::new(),
            ns => format!("{ns},"),
        };
        let (request, host, port) = build_request(base_url, &opts.headers)?;
        let ws =
            timeout_at(deadline, open_websocket(request, &host, port)).await.map_err(|_| ClientError::Timeout)??;

        let (sink, stream) = ws.split();
        let (out, out_rx) = mpsc::unbounded_channel();
        let (inbox_tx, inbox) = mpsc::unbounded_channel();
        let (connected_tx, connected) = oneshot::channel();
        let shared = Arc::new(Shared { acks: Mutex::new(Some(HashMap::new())), open: true.into() });
        let connect = match auth {
            Value::Null => format!("40{prefix}"),
            auth => format!("40{prefix}{auth}"),
        };
        let reader = Reader {
            ns,
            prefix: prefix.clone(),
            out: out.clone(),
            inbox: inbox_tx,
            shared: shared.clone(),
            connecting: Some((connect, connected_tx)),
        };
        let mut socket = Socket {
            sid: String::new(),
            prefix,
            out,
            inbox,
            buffered: VecDeque::new(),
            shared,
            next_id: AtomicU64::new(0),
            reader: tokio::spawn(reader.run(stream)),
            writer: tokio::spawn(write_loop(sink, out_rx)),
        };
        // On error `socket` is dropped here, which aborts both tasks and drops the connection.
        socket.sid = match timeout_at(deadline, connected).await {
            Ok(Ok(result)) => result?,
            Ok(Err(_)) => return Err(ClientError::Closed),
            Err(_) => return Err(ClientError::Timeout),
        };
        Ok(socket)
    }

    /// The namespace sid the server gave.
    pub fn sid(&self) -> &str {
        &self.sid
    }

    /// Emit without ack.
    pub async fn emit(&self, event: &str, data: Value) -> Result<(), ClientError> {
        self.send(Message::text(self.event_frame(None, event, &data)))
    }

    /// Emit with an ack id and wait (bounded by `timeout`) for the server's ack; returns the
    /// ack's FIRST argument (`Value::Null` if it had none).
    pub async fn emit_with_ack(&self, event: &str, data: Value, timeout: Duration) -> Result<Value, ClientError> {
        self.emit_with_ack_deferred(event, data).await?.wait(timeout).await
    }

    /// Like [`Socket::emit_with_ack`] but does not wait: the frame is queued in call order and
    /// the returned [`AckFuture`] is awaited later, so callers can pipeline many sends.
    pub async fn emit_with_ack_deferred(&self, event: &str, data: Value) -> Result<AckFuture, ClientError> {
        self.send_with_ack(|id| vec![Message::text(self.event_frame(Some(id), event, &data))])
    }

    /// Emits a BINARY_EVENT with one attachment: `data` must hold the placeholder
    /// `{"_placeholder":true,"num":0}` where the attachment goes. For tests of servers
    /// that refuse binary payloads; the ack is awaited like [`Socket::emit_with_ack_deferred`].
    pub async fn emit_binary_with_ack(
        &self,
        event: &str,
        data: Value,
        attachment: Vec<u8>,
    ) -> Result<AckFuture, ClientError> {
        self.send_with_ack(|id| {
            let header = format!("451-{}{id}[{},{data}]", self.prefix, Value::from(event));
            vec![Message::text(header), Message::binary(attachment)]
        })
    }

    /// Registers an ack id, then sends the frames built for it, in order.
    fn send_with_ack(&self, frames: impl FnOnce(u64) -> Vec<Message>) -> Result<AckFuture, ClientError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.shared.acks().as_mut().ok_or(ClientError::Closed)?.insert(id, tx);
        for frame in frames(id) {
            if let Err(e) = self.send(frame) {
                self.shared.take_ack(id);
                return Err(e);
            }
        }
        Ok(AckFuture { id, rx, shared: self.shared.clone() })
    }

    /// Send an arbitrary engine.io text frame as-is (for tests of malformed input),
    /// e.g. `"42/socket/commu-1,5[\"chat\",{bad"`.
    pub async fn send_raw(&self, frame: &str) -> Result<(), ClientError> {
        self.send(Message::text(frame))
    }

    /// Send a raw binary WebSocket frame (engine.io binary message) as-is.
    pub async fn send_raw_binary(&self, data: Vec<u8>) -> Result<(), ClientError> {
        self.send(Message::binary(data))
    }

    /// Next incoming event/disconnect/close (skips nothing), or `Err(Timeout)`.
    /// Once [`Incoming::Closed`] has been returned, further calls give `Err(Closed)`.
    pub async fn next(&mut self, timeout: Duration) -> Result<Incoming, ClientError> {
        if let Some(item) = self.buffered.pop_front() {
            return Ok(item);
        }
        match tokio::time::timeout(timeout, self.inbox.recv()).await {
            Ok(item) => item.ok_or(ClientError::Closed),
            Err(_) => Err(ClientError::Timeout),
        }
    }

    /// Waits for the next event named `name`, buffering (not dropping) other events so later
    /// `next`/`next_event` calls still see them in order; returns its first argument (`Null` if
    /// none). Gives `Err(Closed)` when a disconnect or close comes first (it stays buffered).
    pub async fn next_event(&mut self, name: &str, timeout: Duration) -> Result<Value, ClientError> {
        let wanted = |item: &Incoming| matches!(item, Incoming::Event { name: n, .. } if n == name);
        if let Some(pos) = self.buffered.iter().position(|item| wanted(item) || is_end(item)) {
            return match self.buffered.remove(pos) {
                Some(Incoming::Event { args, .. }) => Ok(first(args)),
                Some(end) => {
                    self.buffered.insert(pos, end);
                    Err(ClientError::Closed)
                }
                None => Err(ClientError::Closed),
            };
        }
        let deadline = Instant::now() + timeout;
        loop {
            let item = match timeout_at(deadline, self.inbox.recv()).await {
                Ok(item) => item.ok_or(ClientError::Closed)?,
                Err(_) => return Err(ClientError::Timeout),
            };
            match item {
                Incoming::Event { name: n, args } if n == name => return Ok(first(args)),
                item => {
                    let end = is_end(&item);
                    self.buffered.push_back(item);
                    if end {
                        return Err(ClientError::Closed);
                    }
                }
            }
        }
    }

    /// All events received and not yet consumed, without waiting (drains what has arrived).
    pub fn drain(&mut self) -> Vec<Incoming> {
        let mut items: Vec<Incoming> = self.buffered.drain(..).collect();
        while let Ok(item) = self.inbox.try_recv() {
            items.push(item);
        }
        items
    }

    /// Whether the transport is still open.
    pub fn is_open(&self) -> bool {
        self.shared.open.load(Ordering::Acquire)
    }

    /// Send a namespace DISCONNECT and close the WebSocket, waiting up to 1 s for the closing
    /// handshake. (Dropping a `Socket` instead cuts the connection without either.)
    pub async fn close(mut self) {
        let _ = self.send(Message::text(format!("41{}", self.prefix)));
        let _ = self.send(Message::Close(None));
        let _ = timeout(Duration::from_secs(1), &mut self.writer).await;
        let _ = timeout(Duration::from_secs(1), &mut self.reader).await;
    }

    fn send(&self, msg: Message) -> Result<(), ClientError> {
        self.out.send(msg).map_err(|_| ClientError::Closed)
    }

    /// `42<ns>,<ack id>["event",data]`
    fn event_frame(&self, id: Option<u64>, event: &str, data: &Value) -> String {
        let id = id.map(|id| id.to_string()).unwrap_or_default();
        format!("42{}{id}[{},{data}]", self.prefix, Value::from(event))
    }
}

impl Drop for Socket {
    fn drop(&mut self) {
        self.reader.abort();
        self.writer.abort();
    }
}

fn is_end(item: &Incoming) -> bool {
    matches!(item, Incoming::Disconnect | Incoming::Closed)
}

fn first(args: Vec<Value>) -> Value {
    args.into_iter().next().unwrap_or(Value::Null)
}

/// Builds the upgrade request for `ws://host:port/socket.io/?EIO=4&transport=websocket`.
fn build_request(base_url: &str, headers: &[(String, String)]) -> Result<(Request, String, u16), ClientError> {
    let bad = |message: String| ClientError::Handshake { status: None, message };
    let mut url = url::Url::parse(base_url).map_err(|e| bad(format!("url {base_url:?}: {e}")))?;
    if !matches!(url.scheme(), "http" | "ws") || url.set_scheme("ws").is_err() {
        return Err(bad(format!("unsupported scheme in {base_url:?} (plain ws only)")));
    }
    url.set_path("/socket.io/");
    url.set_query(Some("EIO=4&transport=websocket"));
    let host = url.host_str().ok_or_else(|| bad(format!("no host in {base_url:?}")))?;
    let host = host.trim_start_matches('[').trim_end_matches(']').to_owned(); // IPv6
    let port = url.port_or_known_default().unwrap_or(80);
    let mut request = url.as_str().into_client_request().map_err(|e| bad(e.to_string()))?;
    for (name, value) in headers {
        let header = HeaderName::from_bytes(name.as_bytes()).map_err(|e| bad(e.to_string()))?;
        let value = HeaderValue::from_str(value).map_err(|e| bad(format!("{name}: {e}")))?;
        request.headers_mut().append(header, value);
    }
    Ok((request, host, port))
}

/// TCP connect (Nagle off) and WebSocket handshake.
async fn open_websocket(request: Request, host: &str, port: u16) -> Result<Ws, ClientError> {
    let io = |e: std::io::Error| ClientError::Io(e.to_string());
    let tcp = TcpStream::connect((host, port)).await.map_err(io)?;
    tcp.set_nodelay(true).map_err(io)?;
    match tokio_tungstenite::client_async(request, tcp).await {
        Ok((ws, _)) => Ok(ws),
        Err(WsError::Http(response)) => {
            let body = response.body().as_deref().map(String::from_utf8_lossy);
            let message = format!("{} {}", response.status(), body.unwrap_or_default().trim());
            let status = Some(response.status().as_u16());
            Err(ClientError::Handshake { status, message: message.trim_end().to_owned() })
        }
        Err(WsError::Io(e)) => Err(io(e)),
        Err(e) => Err(ClientError::Handshake { status: None, message: e.to_string() }),
    }
}

/// Writes queued frames in order, batching what is already queued into one flush.
/// `Message::Close` closes the WebSocket and ends the task.
async fn write_loop(mut sink: SplitSink<Ws, Message>, mut rx: mpsc::UnboundedReceiver<Message>) {
    while let Some(mut msg) = rx.recv().await {
        loop {
            if let Message::Close(_) = msg {
                let _ = sink.close().await;
                return;
            }
            if let Err(e) = sink.feed(msg).await {
                tracing::debug!("websocket write failed: {e}");
                return;
            }
            match rx.try_recv() {
                Ok(next) => msg = next,
                Err(_) => break,
            }
        }
        if let Err(e) = sink.flush().await {
            tracing::debug!("websocket flush failed: {e}");
            return;
        }
    }
}

/// The background reader and what it needs besides the stream.
struct Reader {
    ns: String,
    prefix: String,
    out: mpsc::UnboundedSender<Message>,
    inbox: mpsc::UnboundedSender<Incoming>,
    shared: Arc<Shared>,
    /// Until the namespace connect is answered: the CONNECT frame to send once the engine.io
    /// session is open, and who waits for the namespace sid.
    connecting: Option<(String, oneshot::Sender<Result<String, ClientError>>)>,
}

impl Reader {
    /// Reads until the transport closes, or nothing (not even a ping) arrives within the
    /// server's `pingInterval + pingTimeout`.
    async fn run(mut self, mut stream: SplitStream<Ws>) {
        let mut heartbeat = Duration::from_secs(45);
        loop {
            let frame = match timeout(heartbeat, stream.next()).await {
                Ok(Some(Ok(Message::Text(frame)))) => frame,
                Ok(Some(Ok(Message::Binary(data)))) => {
                    tracing::debug!(len = data.len(), "ignoring binary frame (unsupported)");
                    continue;
                }
                Ok(Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)))) => continue,
                Ok(None | Some(Ok(Message::Close(_)))) => break,
                Ok(Some(Err(e))) => {
                    tracing::debug!("websocket read failed: {e}");
                    break;
                }
                Err(_) => {
                    tracing::warn!("server silent for {heartbeat:?}; giving up");
                    break;
                }
            };
            match self.on_frame(&frame, &mut heartbeat) {
                Ok(true) => {}
                Ok(false) => break,
                Err(e) => match self.connecting.take() {
                    Some((_, waiter)) => {
                        let _ = waiter.send(Err(e));
                        break;
                    }
                    None => tracing::warn!(%frame, "skipping malformed frame: {e}"),
                },
            }
        }
        self.shared.open.store(false, Ordering::Release);
        self.shared.fail_acks();
        let _ = self.inbox.send(Incoming::Closed);
        let _ = self.out.send(Message::Close(None));
    }

    /// Handles one Engine.IO frame; `Ok(false)` when this connection is over.
    fn on_frame(&mut self, frame: &str, heartbeat: &mut Duration) -> Result<bool, ClientError> {
        match frame.as_bytes().first() {
            Some(b'0') => {
                let open: Value = serde_json::from_str(&frame[1..])
                    .map_err(|e| ClientError::Protocol(format!("bad open packet: {e}")))?;
                let ms = |key: &str| open.get(key).and_then(Value::as_u64).unwrap_or(25_000);
                *heartbeat = Duration::from_millis(ms("pingInterval") + ms("pingTimeout"));
                if let Some((connect, _)) = &self.connecting {
                    let _ = self.out.send(Message::text(connect.as_str()));
                }
            }
            Some(b'1') => return Ok(false),
            Some(b'2') => drop(self.out.send(Message::text("3"))),
            Some(b'3' | b'6') => {}
            Some(b'4') => return self.on_packet(parse_packet(&frame[1..])?),
            _ => return Err(ClientError::Protocol("unknown engine.io packet".into())),
        }
        Ok(true)
    }

    /// Handles one Socket.IO packet; `Ok(false)` when the namespace connect failed.
    fn on_packet(&mut self, packet: Packet<'_>) -> Result<bool, ClientError> {
        let protocol = |what: &str| ClientError::Protocol(what.to_owned());
        if packet.ns != self.ns {
            return Err(protocol("packet for another namespace"));
        }
        match (packet.kind, packet.data) {
            (kind @ (CONNECT | CONNECT_ERROR), data) => {
                let Some((_, waiter)) = self.connecting.take() else {
                    return Err(protocol("CONNECT packet after connect"));
                };
                let field = |key| data.as_ref()?.get(key)?.as_str().map(str::to_owned);
                let result = match (kind, &data) {
                    (CONNECT, _) => field("sid").ok_or_else(|| protocol("CONNECT without sid")),
                    (_, Some(Value::String(message))) => Err(ClientError::Refused(message.clone())),
                    _ => Err(ClientError::Refused(field("message").unwrap_or_default())),
                };
                let connected = result.is_ok();
                let _ = waiter.send(result);
                return Ok(connected);
            }
            (EVENT, Some(Value::Array(items))) => {
                let mut items = items.into_iter();
                let Some(Value::String(name)) = items.next() else {
                    return Err(protocol("event without a name"));
                };
                if let Some(id) = packet.id {
                    let ack = format!("43{}{id}[]", self.prefix);
                    let _ = self.out.send(Message::text(ack));
                }
                let _ = self.inbox.send(Incoming::Event { name, args: items.collect() });
            }
            (ACK, Some(Value::Array(args))) => {
                let id = packet.id.ok_or_else(|| protocol("ACK without id"))?;
                match self.shared.take_ack(id) {
                    Some(waiter) => drop(waiter.send(Ok(first(args)))),
                    None => tracing::debug!(id, "ack nobody waits for (timed out?)"),
                }
            }
            (DISCONNECT, _) => {
                self.shared.fail_acks();
                let _ = self.inbox.send(Incoming::Disconnect);
            }
            (BINARY_EVENT | BINARY_ACK, _) => tracing::debug!("skipping binary packet"),
            (kind, _) => return Err(protocol(&format!("malformed packet of type {kind}"))),
        }
        Ok(true)
    }
}

/// A decoded Socket.IO text packet.
#[derive(Debug, PartialEq)]
struct Packet<'a> {
    kind: u8,
    ns: &'a str,
    id: Option<u64>,
    data: Option<Value>,
}

/// Parses `<type>[<attachments>-][<ns>,][<ack id>][<json>]` (engine.io's `4` already stripped).
fn parse_packet(s: &str) -> Result<Packet<'_>, ClientError> {
    let err = |what: String| ClientError::Protocol(format!("{what} in socket.io packet"));
    let kind = match s.as_bytes().first() {
        Some(&b) if (b'0'..=b'6').contains(&b) => b - b'0',
        _ => return Err(err("bad packet type".into())),
    };
    let mut rest = &s[1..];
    if kind == BINARY_EVENT || kind == BINARY_ACK {
        let dash = rest.find('-').ok_or_else(|| err("no attachments".into()))?;
        rest = &rest[dash + 1..];
    }
    let mut ns = "/";
    if rest.starts_with('/') {
        let end = rest.find(',').unwrap_or(rest.len());
        (ns, rest) = (&rest[..end], rest.get(end + 1..).unwrap_or(""));
    }
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    let id = match &rest[..digits] {
        "" => None,
        id => Some(id.parse().map_err(|_| err("bad ack id".into()))?),
    };
    let data = match &rest[digits..] {
        "" => None,
        json => Some(serde_json::from_str(json).map_err(|e| err(format!("bad json ({e})")))?),
    };
    Ok(Packet { kind, ns, id, data })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_packets_with_and_without_namespace_and_ack_id() {
        let p = parse_packet(r#"2/socket/commu-1,17["chat",{"a":1}]"#).unwrap();
        assert_eq!((p.kind, p.ns, p.id), (EVENT, "/socket/commu-1", Some(17)));
        assert_eq!(p.data, Some(json!(["chat", {"a": 1}])));
        let p = parse_packet("35[1]").unwrap();
        assert_eq!((p.kind, p.ns, p.id, p.data), (ACK, "/", Some(5), Some(json!([1]))));
        let p = parse_packet("1/x,").unwrap();
        assert_eq!((p.kind, p.ns, p.id, p.data), (DISCONNECT, "/x", None, None));
        assert_eq!(parse_packet("1/x").unwrap().ns, "/x");
        assert_eq!(parse_packet(r#"51-/x,3["e"]"#).unwrap().id, Some(3));
        for bad in ["", "9", r#"2["chat",{bad"#, "299999999999999999999999[]", "5/x,"] {
            assert!(parse_packet(bad).is_err(), "{bad:?}");
        }
    }
}
