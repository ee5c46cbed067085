//! One benchmark connection: one tokio task that owns its WebSocket (no reader/writer split,
//! no channels), speaks just enough Engine.IO v4 / Socket.IO v5 (open, ping/pong, namespace
//! connect, events, acks) and parses only what it needs from a frame: the event name, and for
//! `new-chat` the numbers in the content, which it wrote itself (`bench:<sender>:<n>:<µs>`,
//! the send time on this process's clock). Acks are matched by id and read as text
//! (`"written":true`, else the error code); only the one `join` ack is parsed as JSON.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, watch};
use tokio::time::{Instant, timeout, timeout_at};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

type Ws = WebSocketStream<TcpStream>;

/// TCP, WebSocket handshake and namespace connect, per connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// How long to wait for `rejoined` after the namespace connect (PROTOCOL.md: always sent).
const REJOINED_TIMEOUT: Duration = Duration::from_secs(5);
/// Storm: how long a connection whose transport closed keeps trying the instances.
const RECONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// The marker in front of the numbers in a bench message's content, as the server echoes it.
const CONTENT_MARK: &str = "\"content\":\"bench:";

/// Where the connections go.
pub(super) struct Target {
    host: String,
    port: u16,
    ws_url: String,
    /// The namespace, `/socket/commu-{id}`.
    ns: String,
    /// Further community namespaces the connection holds idle (`--communities`).
    extra_ns: Vec<String>,
}

impl Target {
    pub fn new(base_url: &str, community: i64, extra_communities: &[i64]) -> anyhow::Result<Target> {
        let mut url = url::Url::parse(base_url)?;
        anyhow::ensure!(matches!(url.scheme(), "http" | "ws"), "plain http:// only (no TLS): {base_url}");
        url.set_scheme("ws").map_err(|_| anyhow::anyhow!("cannot make a ws:// URL of {base_url}"))?;
        url.set_path("/socket.io/");
        url.set_query(Some("EIO=4&transport=websocket"));
        let host = url.host_str().ok_or_else(|| anyhow::anyhow!("no host in {base_url}"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
        let port = url.port_or_known_default().unwrap_or(80);
        let ns = format!("/socket/commu-{community}");
        let extra_ns = extra_communities.iter().map(|c| format!("/socket/commu-{c}")).collect();
        Ok(Target { host, port, ws_url: url.to_string(), ns, extra_ns })
    }
}

/// What every connection shares with the coordinator.
pub(super) struct Ctx {
    /// The instances; a connection starts at its [`Spec::target`].
    pub targets: Vec<Target>,
    /// Storm: when its transport closes, a connection reconnects to the next instance with
    /// `since`, and senders number their messages with a clientMsgId to resend what was not acked.
    pub reconnect: bool,
    /// Each connection connects `/` too, before its community namespace, on the same
    /// WebSocket (`--no-root` turns it off).
    pub root: bool,
    /// The clock of the run: message timestamps are microseconds since this instant.
    pub base: Instant,
    pub counters: Counters,
    pub connect_gate: Semaphore,
}

impl Ctx {
    fn now_us(&self) -> u64 {
        self.base.elapsed().as_micros() as u64
    }
}

/// Progress the coordinator watches (relaxed atomics: counts, not synchronisation).
#[derive(Default)]
pub(super) struct Counters {
    pub connected: AtomicUsize,
    pub connect_failed: AtomicUsize,
    pub joined: AtomicUsize,
    pub join_failed: AtomicUsize,
    /// Senders that sent everything and have every ack back (or lost their connection).
    pub senders_done: AtomicUsize,
    /// First receipts of bench messages, all connections together.
    pub delivered: AtomicU64,
    /// Receipts the written acks so far call for: each written message, times the others in its room.
    pub expected: AtomicU64,
    pub rate_limited: AtomicU64,
    /// Connections whose transport closed and that have not yet had `recovered` on another.
    pub reconnecting: AtomicUsize,
    rate_limit_warned: AtomicBool,
    rejoined_warned: AtomicBool,
    first_error: Mutex<Option<String>>,
}

impl Counters {
    fn error(&self, message: String) {
        let mut first = self.first_error.lock().unwrap_or_else(|p| p.into_inner());
        if first.is_none() {
            eprintln!("bench: {message}");
            *first = Some(message);
        }
    }

    pub fn first_error(&self) -> String {
        self.first_error.lock().unwrap_or_else(|p| p.into_inner()).clone().unwrap_or_default()
    }
}

/// Where the run is; the coordinator moves every connection along at once.
#[derive(Debug, Clone, Copy)]
pub(super) enum Phase {
    Connect,
    Join,
    Go { start: Instant, end: Instant },
    Stop,
}

/// A sender's schedule.
pub(super) struct SenderSpec {
    /// Sender id, 0..senders: in the content, and the index receivers count by.
    pub gid: u32,
    /// How many messages; `None`: until the end of the run (closed loop without a rate).
    pub count: Option<u64>,
    /// Between two sends (zero without a rate).
    pub interval: Duration,
    /// Delay of the first send after the start.
    pub offset: Duration,
    /// Send the next message only once the previous one is acked.
    pub closed_loop: bool,
}

/// One connection's part in the run.
pub(super) struct Spec {
    /// Index in [`Ctx::targets`] of the instance to connect to first.
    pub target: usize,
    pub room: usize,
    pub token: String,
    pub channel: i64,
    /// The other connections in the room: each written message should reach all of them.
    pub receivers: u64,
    pub senders_total: usize,
    pub sender: Option<SenderSpec>,
}

/// What one connection saw, for [`super::stats`].
pub(super) struct ConnStats {
    pub room: usize,
    pub gid: Option<u32>,
    /// The connection closed (or was disconnected) before the end of the run.
    pub closed_early: bool,
    pub sent: u64,
    /// By message number: the ack said `written: true`.
    pub written: Vec<bool>,
    pub acked: u64,
    pub rate_limited: u64,
    pub ack_errors: u64,
    pub ack_latency_us: Vec<u32>,
    /// By sender id, then message number: how many times it arrived here.
    pub received: Vec<Vec<u8>>,
    pub delivery_latency_us: Vec<u32>,
    /// Storm: transports that closed under this connection, and from each close to `recovered`
    /// on the next instance.
    pub reconnects: u64,
    pub reconnect_latency_us: Vec<u32>,
}

/// What to send back after a frame.
enum Reply {
    Nothing,
    Frame(String),
    Closed,
}

/// Why a session (one transport) ended.
enum Ended {
    Stop,
    Closed,
}

/// The events of a channel this connection has, by eventSeq (storm only): what it asks the
/// next instance to replay (`since`) is the end of the run without holes, so a live message
/// that overtook a missed one does not hide it.
#[derive(Default)]
struct Seen {
    contiguous: u64,
    ahead: std::collections::BTreeSet<u64>,
}

impl Seen {
    fn add(&mut self, event_seq: u64) {
        if event_seq == self.contiguous + 1 {
            self.contiguous = event_seq;
            while self.ahead.remove(&(self.contiguous + 1)) {
                self.contiguous += 1;
            }
        } else if event_seq > self.contiguous {
            self.ahead.insert(event_seq);
        }
    }
}

struct Conn<'a> {
    ctx: &'a Ctx,
    spec: Spec,
    /// `"/socket/commu-{id},"`: in front of every packet of the namespace.
    prefix: String,
    stats: ConnStats,
    /// Send times (µs on the run clock) by message number.
    sent_at: Vec<u64>,
    /// By message number: an ack came back (written or refused).
    answered: Vec<bool>,
    next: u64,
    outstanding: u64,
    start: Instant,
    end: Instant,
    /// A sender's next send is due at `wake` (`sending`), or waits for an ack.
    sending: bool,
    wake: Instant,
    join_reported: bool,
    done_reported: bool,
    /// Index in [`Ctx::targets`] of the instance of the current transport.
    target: usize,
    seen: Seen,
    /// Storm: when the last transport closed, until `recovered` arrives on the next one.
    closed_at: Option<Instant>,
}

/// Runs one connection until the coordinator says stop (or the connection dies) and returns
/// what it saw.
pub(super) async fn run(ctx: std::sync::Arc<Ctx>, spec: Spec, mut phase: watch::Receiver<Phase>) -> ConnStats {
    let ctx = &*ctx;
    let stats = ConnStats {
        room: spec.room,
        gid: spec.sender.as_ref().map(|s| s.gid),
        closed_early: false,
        sent: 0,
        written: Vec::new(),
        acked: 0,
        rate_limited: 0,
        ack_errors: 0,
        ack_latency_us: Vec::new(),
        received: vec![Vec::new(); spec.senders_total],
        delivery_latency_us: Vec::new(),
        reconnects: 0,
        reconnect_latency_us: Vec::new(),
    };
    let now = Instant::now();
    let mut conn = Conn {
        ctx,
        prefix: format!("{},", ctx.targets[0].ns),
        target: spec.target,
        spec,
        stats,
        sent_at: Vec::new(),
        answered: Vec::new(),
        next: 0,
        outstanding: 0,
        start: now,
        end: now,
        sending: false,
        wake: now,
        join_reported: false,
        done_reported: false,
        seen: Seen::default(),
        closed_at: None,
    };
    let connected = {
        let _permit = ctx.connect_gate.acquire().await;
        timeout(CONNECT_TIMEOUT, connect(ctx, conn.target, &conn.spec.token, None)).await
    };
    let mut ws = match connected {
        Ok(Ok(ws)) => ws,
        Ok(Err(e)) => return conn.connect_failed(e),
        Err(_) => return conn.connect_failed(format!("connect timed out after {CONNECT_TIMEOUT:?}")),
    };
    ctx.counters.connected.fetch_add(1, Ordering::Relaxed);

    loop {
        match conn.session(&mut ws, &mut phase).await {
            Ended::Stop => break,
            Ended::Closed if ctx.reconnect => match conn.reconnect(&phase).await {
                Some(next) => ws = next,
                None => {
                    conn.closed();
                    break;
                }
            },
            Ended::Closed => {
                conn.closed();
                break;
            }
        }
    }
    let _ = timeout(Duration::from_millis(500), ws.close(None)).await;
    conn.stats
}

impl Conn<'_> {
    /// Serves one transport until the coordinator says stop or the transport closes.
    async fn session(&mut self, ws: &mut Ws, phase: &mut watch::Receiver<Phase>) -> Ended {
        let sleep = tokio::time::sleep_until(self.wake);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                biased;
                changed = phase.changed() => {
                    let Ok(()) = changed else { return Ended::Stop };
                    let current = *phase.borrow_and_update();
                    match current {
                        Phase::Connect => {}
                        Phase::Join => {
                            let frame = format!("42{}0[\"join\",{{\"channels\":[{}]}}]", self.prefix, self.spec.channel);
                            if ws.send(Message::text(frame)).await.is_err() {
                                return Ended::Closed;
                            }
                        }
                        Phase::Go { start, end } => {
                            (self.start, self.end) = (start, end);
                            if let Some(sender) = &self.spec.sender {
                                self.wake = start + sender.offset;
                                sleep.as_mut().reset(self.wake);
                                self.sending = true;
                            }
                        }
                        Phase::Stop => return Ended::Stop,
                    }
                }
                frame = ws.next() => {
                    let reply = match frame {
                        Some(Ok(Message::Text(text))) => self.on_text(text.as_str()),
                        Some(Ok(Message::Close(_))) | Some(Err(_)) | None => Reply::Closed,
                        Some(Ok(_)) => Reply::Nothing,
                    };
                    match reply {
                        Reply::Nothing => {}
                        Reply::Frame(frame) => {
                            if ws.send(Message::text(frame)).await.is_err() {
                                return Ended::Closed;
                            }
                        }
                        Reply::Closed => return Ended::Closed,
                    }
                    // A closed-loop sender sends its next message once the previous one is acked.
                    if !self.sending
                        && self.outstanding == 0
                        && self.next > 0
                        && let Some(at) = self.next_send_at()
                    {
                        self.wake = at;
                        sleep.as_mut().reset(at);
                        self.sending = true;
                    }
                }
                () = &mut sleep, if self.sending => {
                    let frame = self.chat_frame();
                    if ws.send(Message::text(frame)).await.is_err() {
                        return Ended::Closed;
                    }
                    let closed_loop = self.spec.sender.as_ref().is_some_and(|s| s.closed_loop);
                    match self.next_send_at() {
                        Some(at) if !closed_loop => {
                            self.wake = at;
                            sleep.as_mut().reset(at);
                        }
                        _ => self.sending = false,
                    }
                }
            }
        }
    }

    /// Storm: the transport closed. Connects to the next instances in turn (the closed one
    /// last) with `since`, until one takes the connection, then resends every message not yet
    /// acked (same clientMsgId: the server writes it at most once). `None` if the coordinator
    /// said stop, or no instance took it within [`RECONNECT_TIMEOUT`].
    async fn reconnect(&mut self, phase: &watch::Receiver<Phase>) -> Option<Ws> {
        let closed_at = Instant::now();
        if self.closed_at.is_none() {
            self.ctx.counters.reconnecting.fetch_add(1, Ordering::Relaxed);
        }
        self.closed_at = Some(closed_at);
        self.stats.reconnects += 1;
        let since = format!("{{\"{}\":{}}}", self.spec.channel, self.seen.contiguous);
        let n = self.ctx.targets.len();
        let mut attempt = 0usize;
        while closed_at.elapsed() < RECONNECT_TIMEOUT {
            if matches!(*phase.borrow(), Phase::Stop) {
                return None;
            }
            attempt += 1;
            let target = (self.target + attempt) % n;
            match timeout(CONNECT_TIMEOUT, connect(self.ctx, target, &self.spec.token, Some(&since))).await {
                Ok(Ok(mut ws)) => {
                    self.target = target;
                    for n in 0..self.next as usize {
                        if !self.answered.get(n).copied().unwrap_or(false) {
                            let frame = self.chat_frame_of(n as u64, self.sent_at[n]);
                            if ws.send(Message::text(frame)).await.is_err() {
                                break;
                            }
                        }
                    }
                    return Some(ws);
                }
                // Refused (`draining`), or nobody listening: the next instance, after a breath
                // once every one has been tried.
                _ if attempt.is_multiple_of(n) => tokio::time::sleep(Duration::from_millis(100)).await,
                _ => {}
            }
        }
        self.ctx.counters.error(format!("no instance took a reconnect within {RECONNECT_TIMEOUT:?}"));
        None
    }

    fn connect_failed(mut self, error: String) -> ConnStats {
        self.ctx.counters.error(format!("connect failed: {error}"));
        self.ctx.counters.connect_failed.fetch_add(1, Ordering::Relaxed);
        self.stats.closed_early = true;
        self.stats
    }

    /// The connection is gone: whatever the coordinator waits for from it will not come.
    fn closed(&mut self) {
        self.stats.closed_early = true;
        if self.closed_at.take().is_some() {
            self.ctx.counters.reconnecting.fetch_sub(1, Ordering::Relaxed);
        }
        self.ctx.counters.error("a connection closed during the run".into());
        if !self.join_reported {
            self.join_reported = true;
            self.ctx.counters.join_failed.fetch_add(1, Ordering::Relaxed);
        }
        if self.spec.sender.is_some() && !self.done_reported {
            self.done_reported = true;
            self.ctx.counters.senders_done.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// When the next message is due, or `None` when this sender has sent them all.
    fn next_send_at(&self) -> Option<Instant> {
        let sender = self.spec.sender.as_ref()?;
        let more = match sender.count {
            Some(count) => self.next < count,
            None => Instant::now() < self.end,
        };
        more.then(|| (self.start + sender.offset + sender.interval.mul_f64(self.next as f64)).max(Instant::now()))
    }

    /// The next chat event.
    fn chat_frame(&mut self) -> String {
        let n = self.next;
        let t = self.ctx.now_us();
        self.sent_at.push(t);
        self.next += 1;
        self.outstanding += 1;
        self.stats.sent += 1;
        self.chat_frame_of(n, t)
    }

    /// Message `n`, sent at `t`: `42<ns>,<n+1>["chat",{...,"content":"bench:<gid>:<n>:<t>"}]`,
    /// with the clientMsgId `b<gid>-<n>` when it may have to be resent (storm).
    fn chat_frame_of(&self, n: u64, t: u64) -> String {
        let gid = self.spec.sender.as_ref().map_or(0, |s| s.gid);
        let client_msg_id = if self.ctx.reconnect { format!(",\"clientMsgId\":\"b{gid}-{n}\"") } else { String::new() };
        format!(
            "42{}{}[\"chat\",{{\"chatType\":\"new\",\"channelId\":{},\"content\":\"bench:{gid}:{n}:{t}\"{client_msg_id}}}]",
            self.prefix,
            n + 1,
            self.spec.channel
        )
    }

    fn on_text(&mut self, frame: &str) -> Reply {
        match frame.as_bytes().first() {
            Some(b'2') => Reply::Frame("3".into()),
            Some(b'1') => Reply::Closed,
            Some(b'4') => {
                let packet = &frame[1..];
                let Some(kind) = packet.as_bytes().first() else { return Reply::Nothing };
                let Some(rest) = packet[1..].strip_prefix(self.prefix.as_str()) else { return Reply::Nothing };
                match kind {
                    b'2' => self.on_event(rest),
                    b'3' => self.on_ack(rest),
                    b'1' => Reply::Closed,
                    _ => Reply::Nothing,
                }
            }
            _ => Reply::Nothing,
        }
    }

    /// An event, namespace stripped: `[<ack id>]["name",...]`.
    fn on_event(&mut self, rest: &str) -> Reply {
        let (id, payload) = split_id(rest);
        if payload.starts_with("[\"new-chat\",") {
            self.on_new_chat(payload);
        } else if payload.starts_with("[\"recovered\",")
            && let Some(closed_at) = self.closed_at.take()
        {
            let latency = closed_at.elapsed().as_micros().min(u32::MAX as u128) as u32;
            self.stats.reconnect_latency_us.push(latency);
            self.ctx.counters.reconnecting.fetch_sub(1, Ordering::Relaxed);
        }
        match id {
            Some(id) => Reply::Frame(format!("43{}{id}[]", self.prefix)),
            None => Reply::Nothing,
        }
    }

    fn on_new_chat(&mut self, payload: &str) {
        if self.ctx.reconnect {
            // After a reconnect the server rejoins every room the user remembers, and a receiving
            // user is shared by several rooms: only this connection's channel counts.
            if number_after(payload, "\"channelId\":") != Some(self.spec.channel as u64) {
                return;
            }
            if let Some(event_seq) = number_after(payload, "\"eventSeq\":") {
                self.seen.add(event_seq);
            }
        }
        let Some(at) = payload.find(CONTENT_MARK) else { return };
        let mut s = &payload[at + CONTENT_MARK.len()..];
        let (Some(gid), Some(n), Some(t)) = (number(&mut s), number(&mut s), number(&mut s)) else { return };
        // A replay after a reconnect includes this sender's own messages.
        if self.stats.gid == Some(gid as u32) {
            return;
        }
        let Some(counts) = self.stats.received.get_mut(gid as usize) else { return };
        let n = n as usize;
        if counts.len() <= n {
            counts.resize(n + 1, 0);
        }
        let count = &mut counts[n];
        if *count == 0 {
            let latency = self.ctx.now_us().saturating_sub(t);
            self.stats.delivery_latency_us.push(latency.min(u32::MAX as u64) as u32);
            self.ctx.counters.delivered.fetch_add(1, Ordering::Relaxed);
        }
        *count = count.saturating_add(1);
    }

    /// An ack, namespace stripped: `<id>[...]`. Id 0 is the join; id n+1 is message n.
    fn on_ack(&mut self, rest: &str) -> Reply {
        let (Some(id), payload) = split_id(rest) else { return Reply::Nothing };
        if id == 0 {
            self.on_join_ack(payload);
            return Reply::Nothing;
        }
        let n = (id - 1) as usize;
        let Some(&sent_at) = self.sent_at.get(n) else { return Reply::Nothing };
        if self.answered.len() <= n {
            self.answered.resize(n + 1, false);
        }
        if std::mem::replace(&mut self.answered[n], true) {
            return Reply::Nothing;
        }
        let latency = self.ctx.now_us().saturating_sub(sent_at);
        self.stats.ack_latency_us.push(latency.min(u32::MAX as u64) as u32);
        self.outstanding = self.outstanding.saturating_sub(1);
        let counters = &self.ctx.counters;
        if payload.contains("\"written\":true") {
            if self.ctx.reconnect
                && let Some(event_seq) = number_after(payload, "\"eventSeq\":")
            {
                self.seen.add(event_seq);
            }
            if self.stats.written.len() <= n {
                self.stats.written.resize(n + 1, false);
            }
            self.stats.written[n] = true;
            self.stats.acked += 1;
            counters.expected.fetch_add(self.spec.receivers, Ordering::Relaxed);
        } else {
            let code = error_code(payload).unwrap_or("?");
            if code == "rate_limited" {
                self.stats.rate_limited += 1;
                counters.rate_limited.fetch_add(1, Ordering::Relaxed);
                if !counters.rate_limit_warned.swap(true, Ordering::Relaxed) {
                    eprintln!(
                        "bench: WARNING: a chat ack came back rate_limited: the server's per-user chat limit \
                         (BATON_CHAT_RATE / BATON_CHAT_BURST) is lower than this run's --rate"
                    );
                }
            } else {
                self.stats.ack_errors += 1;
                counters.error(format!("chat refused: {code}: {payload}"));
            }
        }
        if self.outstanding == 0 && !self.done_reported && self.next_send_at().is_none() {
            self.done_reported = true;
            counters.senders_done.fetch_add(1, Ordering::Relaxed);
        }
        Reply::Nothing
    }

    fn on_join_ack(&mut self, payload: &str) {
        if self.join_reported {
            return;
        }
        self.join_reported = true;
        let ack: serde_json::Value = serde_json::from_str(payload).unwrap_or_default();
        let ack = &ack[0];
        let joined = ack["joined"].as_array().is_some_and(|j| j.iter().any(|c| c.as_i64() == Some(self.spec.channel)));
        if joined {
            self.ctx.counters.joined.fetch_add(1, Ordering::Relaxed);
        } else {
            self.ctx.counters.error(format!("join of channel {} refused: {payload}", self.spec.channel));
            self.ctx.counters.join_failed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Splits `<digits><rest>` into the ack id (if any) and the rest.
fn split_id(s: &str) -> (Option<u64>, &str) {
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    (s[..digits].parse().ok(), &s[digits..])
}

/// Reads the digits at the start of `s` and moves past them and one separator.
fn number(s: &mut &str) -> Option<u64> {
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    let value = s[..digits].parse().ok()?;
    *s = s.get(digits + 1..).unwrap_or("");
    Some(value)
}

/// The number right after the first `mark` in `s` (a JSON field read as text).
fn number_after(s: &str, mark: &str) -> Option<u64> {
    let mut rest = &s[s.find(mark)? + mark.len()..];
    number(&mut rest)
}

/// The `code` of an `{"error": {"code": ...}}` in an ack, read as text.
fn error_code(payload: &str) -> Option<&str> {
    const MARK: &str = "\"code\":\"";
    let rest = &payload[payload.find(MARK)? + MARK.len()..];
    Some(&rest[..rest.find('"')?])
}

/// TCP, WebSocket, Engine.IO open, then the namespace connects: `/` (unless
/// `--no-root`), the community with `{token}` (and `since`, a JSON object, on a
/// reconnect) and its `rejoined`, then the namespaces held idle (`--communities`).
async fn connect(ctx: &Ctx, target: usize, token: &str, since: Option<&str>) -> Result<Ws, String> {
    let target = &ctx.targets[target];
    let tcp = TcpStream::connect((target.host.as_str(), target.port)).await.map_err(|e| e.to_string())?;
    tcp.set_nodelay(true).map_err(|e| e.to_string())?;
    // tungstenite zero-fills its whole read buffer (128 KiB by default) before every read:
    // with small frames that memset was most of the bench's CPU. 4 KiB is plenty for these frames (a bigger one grows the buffer).
    let config = WebSocketConfig::default().read_buffer_size(4 * 1024);
    let (mut ws, _) = tokio_tungstenite::client_async_with_config(target.ws_url.as_str(), tcp, Some(config))
        .await
        .map_err(|e| format!("websocket: {e}"))?;
    loop {
        let frame = next_text(&mut ws).await?;
        if frame.starts_with('0') {
            break;
        }
    }
    let token_auth = serde_json::json!({ "token": token }).to_string();
    if ctx.root {
        // `/` first, as the web client does; its events (`unread`, `notify`) carry no
        // namespace and are skipped by `on_text`.
        connect_namespace(&mut ws, "/", &token_auth).await?;
    }
    let auth = match since {
        Some(since) => format!("{{\"token\":{},\"since\":{since}}}", serde_json::Value::from(token)),
        None => token_auth.clone(),
    };
    connect_namespace(&mut ws, &target.ns, &auth).await?;
    // The server puts the socket back in its user's remembered rooms and says so before
    // anything else; joins wait until every socket is past this point.
    let rejoined = format!("42{},[\"rejoined\"", target.ns);
    let deadline = Instant::now() + REJOINED_TIMEOUT;
    loop {
        match timeout_at(deadline, next_text(&mut ws)).await {
            Err(_) => {
                if !ctx.counters.rejoined_warned.swap(true, Ordering::Relaxed) {
                    eprintln!("bench: no `rejoined` within {REJOINED_TIMEOUT:?} of connecting; going on without it");
                }
                break;
            }
            Ok(frame) => {
                let frame = frame?;
                if frame == "2" {
                    send(&mut ws, "3".into()).await?;
                } else if frame.starts_with(&rejoined) {
                    break;
                }
            }
        }
    }
    // The namespaces held idle: connected, their events skipped by `on_text`.
    for ns in &target.extra_ns {
        connect_namespace(&mut ws, ns, &token_auth).await?;
    }
    Ok(ws)
}

/// Connects the namespace `ns` on the connection with `auth` and waits for the
/// server's CONNECT, answering pings meanwhile.
async fn connect_namespace(ws: &mut Ws, ns: &str, auth: &str) -> Result<(), String> {
    // `/` is named by no prefix in a packet: its CONNECT is answered `40{...}`.
    let prefix = if ns == "/" { String::new() } else { format!("{ns},") };
    send(ws, format!("40{prefix}{auth}")).await?;
    let connected = format!("40{prefix}{{");
    let refused = format!("44{prefix}");
    loop {
        let frame = next_text(ws).await?;
        if frame == "2" {
            send(ws, "3".into()).await?;
        } else if frame.starts_with(&connected) {
            return Ok(());
        } else if let Some(error) = frame.strip_prefix(&refused) {
            return Err(format!("connect to {ns} refused: {error}"));
        }
    }
}

async fn next_text(ws: &mut Ws) -> Result<String, String> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => return Ok(text.as_str().to_owned()),
            Some(Ok(Message::Close(_))) | None => return Err("connection closed".into()),
            Some(Err(e)) => return Err(e.to_string()),
            Some(Ok(_)) => {}
        }
    }
}

async fn send(ws: &mut Ws, frame: String) -> Result<(), String> {
    ws.send(Message::text(frame)).await.map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_numbers_ids_and_error_codes() {
        let mut s = "12:345:6789\",\"x\"";
        assert_eq!((number(&mut s), number(&mut s), number(&mut s)), (Some(12), Some(345), Some(6789)));
        assert_eq!(split_id("17[{}]"), (Some(17), "[{}]"));
        assert_eq!(split_id("[\"e\"]"), (None, "[\"e\"]"));
        let refused = r#"[{"written":false,"chatInfo":null,"error":{"code":"rate_limited","message":"m"}}]"#;
        assert_eq!(error_code(refused), Some("rate_limited"));
        assert_eq!(error_code("[{}]"), None);
    }
}
