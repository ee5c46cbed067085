//! A TCP proxy the tests control: it listens on a free port of 127.0.0.1 and
//! forwards every connection to one target (a Redis or a PostgreSQL), and the test
//! switches what the network does at run time with [`Proxy::set`]:
//! - [`Mode::Pass`]: bytes flow both ways as they come.
//! - [`Mode::Refuse`]: every open connection is reset at once, and new ones are
//!   accepted and reset (the peer sees "connection reset", as from a server that
//!   died or a firewall that rejects).
//! - [`Mode::Blackhole`]: connections stay open, new ones are accepted, and nothing
//!   is forwarded either way: the peer sees a silent hang, as in a partition. Bytes
//!   wait in the buffers; switching back to `Pass` delivers them late, as TCP does
//!   when a partition heals (so a statement sent before its client gave up may
//!   still run afterwards).
//! - [`Mode::Delay`]: each chunk is forwarded after the delay, in each direction.
//!
//! Besides the mode, [`Proxy::strand`] silently drops every connection open at that
//! moment, for good (nothing forwarded ever again, nothing closed), while new ones
//! pass: what a NAT, load balancer or firewall that loses its connection state does.
//! [`Proxy::strand_if_client_sent`] drops only the connections whose client sent
//! some bytes (e.g. Redis's pub/sub connection, by its `SSUBSCRIBE`).
//!
//! A proxy to Redis ([`Proxy::start_redis`]) forwards what Redis sends in whole RESP
//! frames, so that [`Proxy::mute_pubsub_if_client_sent`] can drop the pub/sub
//! messages pushed on a connection and nothing else: its subscriptions are silently
//! gone while its PINGs are answered (what no health check sees, and the delivery
//! probe must).
//!
//! One proxy stands between one instance and one service, so one instance alone can
//! be cut off. The invariant it keeps: in `Pass` it is byte-for-byte transparent
//! (order kept, nothing added or dropped), and it never loses bytes it has read,
//! whatever the mode, except on a connection it resets or strands (which loses what
//! was in flight, as a real reset or a lost NAT entry does). Dropping the proxy stops
//! it and cuts its connections.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Pass,
    Refuse,
    Blackhole,
    Delay(Duration),
}

pub struct Proxy {
    pub port: u16,
    mode: watch::Sender<Mode>,
    accepted: Arc<AtomicUsize>,
    /// The connections open (and some that closed since).
    conns: Arc<Mutex<Vec<Weak<Conn>>>>,
    task: JoinHandle<()>,
}

impl Proxy {
    /// Starts a proxy to `127.0.0.1:target`, in `Pass`.
    pub async fn start(target: u16) -> Proxy {
        Self::start_speaking(target, false).await
    }

    /// A proxy to a Redis on `127.0.0.1:target`, which knows RESP frames.
    pub async fn start_redis(target: u16) -> Proxy {
        Self::start_speaking(target, true).await
    }

    async fn start_speaking(target: u16, resp: bool) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (mode, watcher) = watch::channel(Mode::Pass);
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        let conns: Arc<Mutex<Vec<Weak<Conn>>>> = Arc::default();
        let registry = conns.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else { continue };
                counter.fetch_add(1, Ordering::Relaxed);
                let _ = client.set_nodelay(true);
                if *watcher.borrow() == Mode::Refuse {
                    reset(client);
                    continue;
                }
                let conn = Arc::new(Conn::default());
                let mut open = registry.lock().unwrap();
                open.retain(|c| c.strong_count() > 0);
                open.push(Arc::downgrade(&conn));
                drop(open);
                tokio::spawn(forward(client, target, watcher.clone(), conn, resp));
            }
        });
        Proxy { port, mode, accepted, conns, task }
    }

    /// Silently drops every connection open now, for good; later ones pass.
    pub fn strand(&self) -> usize {
        self.strand_where(|_| true)
    }

    /// Silently drops, for good, the open connections whose client has sent
    /// `pattern` among its first 4 KiB; how many.
    pub fn strand_if_client_sent(&self, pattern: &[u8]) -> usize {
        self.strand_where(|head| head.windows(pattern.len()).any(|w| w == pattern))
    }

    fn strand_where(&self, which: impl Fn(&[u8]) -> bool) -> usize {
        self.flag_where(which, |conn| &conn.stranded)
    }

    /// From now on, drops the pub/sub messages Redis pushes on the open connections
    /// whose client has sent `pattern` among its first 4 KiB, and forwards the rest
    /// (a proxy started with [`Proxy::start_redis`]); how many connections.
    pub fn mute_pubsub_if_client_sent(&self, pattern: &[u8]) -> usize {
        self.flag_where(|head| head.windows(pattern.len()).any(|w| w == pattern), |conn| &conn.muted)
    }

    fn flag_where(&self, which: impl Fn(&[u8]) -> bool, flag: impl Fn(&Conn) -> &AtomicBool) -> usize {
        let mut n = 0;
        for conn in self.conns.lock().unwrap().iter().filter_map(Weak::upgrade) {
            if which(&conn.head.lock().unwrap()) {
                flag(&conn).store(true, Ordering::SeqCst);
                n += 1;
            }
        }
        // Wakes the connections' pumps so they see it.
        self.mode.send_modify(|_| {});
        n
    }

    pub fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }

    /// Connections accepted so far (the service's clients reconnecting show here).
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::Relaxed)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
        // The connections' tasks end when they see the mode change.
        self.mode.send_replace(Mode::Refuse);
    }
}

/// Closes with a RST (linger 0), not a FIN.
// A zero linger does not block on drop (it resets at once): the deprecation is about
// non-zero ones.
#[allow(deprecated)]
fn reset(stream: TcpStream) {
    let _ = stream.set_linger(Some(Duration::ZERO));
    drop(stream);
}

/// One proxied connection: whether it was stranded, and the first bytes its client
/// sent (to pick connections by what they said).
#[derive(Default)]
struct Conn {
    stranded: AtomicBool,
    /// Pub/sub messages from the server are dropped (a Redis proxy's).
    muted: AtomicBool,
    head: Mutex<Vec<u8>>,
}

/// How many of a client's first bytes a connection keeps.
const HEAD: usize = 4096;

impl Conn {
    fn stranded(&self) -> bool {
        self.stranded.load(Ordering::SeqCst)
    }
}

async fn forward(client: TcpStream, target: u16, mode: watch::Receiver<Mode>, conn: Arc<Conn>, resp: bool) {
    let Ok(server) = TcpStream::connect(("127.0.0.1", target)).await else {
        reset(client);
        return;
    };
    let _ = server.set_nodelay(true);
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let up = pump(&mut client_read, &mut server_write, mode.clone(), &conn, true, false);
    let down = pump(&mut server_read, &mut client_write, mode, &conn, false, resp);
    // Either direction ending (EOF, error, Refuse) ends the connection: the services
    // here never half-close.
    tokio::select! {
        _ = up => {}
        _ = down => {}
    }
    let client = client_read.reunite(client_write).unwrap();
    let server = server_read.reunite(server_write).unwrap();
    reset(client);
    reset(server);
}

/// Copies one direction, obeying the mode before each chunk. Returns when the
/// source ends or the mode becomes `Refuse`; once stranded, forwards nothing more
/// and returns only on `Refuse`.
async fn pump(
    from: &mut tokio::net::tcp::OwnedReadHalf,
    to: &mut tokio::net::tcp::OwnedWriteHalf,
    mut mode: watch::Receiver<Mode>,
    conn: &Conn,
    from_client: bool,
    resp: bool,
) {
    let mut buf = vec![0u8; 64 * 1024];
    // With `resp`, what was read and is not yet a whole frame.
    let mut partial: Vec<u8> = Vec::new();
    loop {
        while conn.stranded() {
            if *mode.borrow_and_update() == Mode::Refuse || mode.changed().await.is_err() {
                return;
            }
        }
        // Blackhole: read nothing (the peer's writes back up, as in a partition).
        let current = *mode.borrow_and_update();
        match current {
            Mode::Refuse => return,
            Mode::Blackhole => {
                if mode.changed().await.is_err() {
                    return;
                }
                continue;
            }
            Mode::Pass | Mode::Delay(_) => {}
        }
        let n = tokio::select! {
            read = from.read(&mut buf) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
            changed = mode.changed() => {
                if changed.is_err() {
                    return;
                }
                continue;
            }
        };
        // What was read is forwarded whatever the mode turns to meanwhile (unless it
        // is Refuse: a reset loses what is in flight; or the connection is stranded).
        if from_client {
            let mut head = conn.head.lock().unwrap();
            let room = HEAD.saturating_sub(head.len()).min(n);
            head.extend_from_slice(&buf[..room]);
        }
        if conn.stranded() {
            continue;
        }
        let chunk = if resp {
            partial.extend_from_slice(&buf[..n]);
            let mut whole = Vec::new();
            while let Some(len) = resp_frame_len(&partial) {
                let frame: Vec<u8> = partial.drain(..len).collect();
                if !(conn.muted.load(Ordering::SeqCst) && is_pubsub_message(&frame)) {
                    whole.extend_from_slice(&frame);
                }
            }
            whole
        } else {
            buf[..n].to_vec()
        };
        loop {
            let current = *mode.borrow_and_update();
            match current {
                Mode::Refuse => return,
                Mode::Blackhole => {
                    if mode.changed().await.is_err() {
                        return;
                    }
                }
                Mode::Delay(d) => {
                    tokio::time::sleep(d).await;
                    break;
                }
                Mode::Pass => break,
            }
        }
        if to.write_all(&chunk).await.is_err() {
            return;
        }
    }
}

/// The length of the whole RESP2 or RESP3 frame at the start of `buf`; None while it
/// is incomplete. What is not RESP is one frame to the end of `buf`.
fn resp_frame_len(buf: &[u8]) -> Option<usize> {
    let (&kind, _) = buf.split_first()?;
    let line = buf.windows(2).position(|w| w == b"\r\n")?;
    let after = line + 2;
    let count = || std::str::from_utf8(&buf[1..line]).ok()?.parse::<i64>().ok();
    match kind {
        b'+' | b'-' | b':' | b'_' | b'#' | b',' | b'(' => Some(after),
        b'$' | b'!' | b'=' => match count() {
            None => Some(buf.len()),
            Some(n) if n < 0 => Some(after),
            Some(n) => Some(after + n as usize + 2).filter(|end| *end <= buf.len()),
        },
        b'*' | b'>' | b'~' | b'%' | b'|' => {
            let Some(n) = count() else { return Some(buf.len()) };
            let elements = if matches!(kind, b'%' | b'|') { 2 * n.max(0) } else { n.max(0) };
            let mut at = after;
            for _ in 0..elements {
                at += resp_frame_len(&buf[at..])?;
            }
            if kind == b'|' {
                // An attribute precedes the frame it describes.
                at += resp_frame_len(&buf[at..])?;
            }
            Some(at)
        }
        _ => Some(buf.len()),
    }
}

/// Whether a whole frame is a pub/sub message Redis pushes (`message`, `pmessage`,
/// `smessage`), not a reply.
fn is_pubsub_message(frame: &[u8]) -> bool {
    let Some(line) = frame.windows(2).position(|w| w == b"\r\n") else { return false };
    let first = &frame[line + 2..];
    matches!(frame[0], b'*' | b'>')
        && [&b"$7\r\nmessage\r\n"[..], b"$8\r\npmessage\r\n", b"$8\r\nsmessage\r\n"]
            .iter()
            .any(|m| first.starts_with(m))
}

#[test]
fn resp_frames_are_split_whole_and_pushes_told_from_replies() {
    let push = b"*3\r\n$8\r\nsmessage\r\n$4\r\nchan\r\n$2\r\nhi\r\n";
    let pong = b"*2\r\n$4\r\npong\r\n$0\r\n\r\n";
    let stream = [&push[..], b"+OK\r\n", pong].concat();
    assert_eq!(resp_frame_len(&stream), Some(push.len()));
    assert_eq!(resp_frame_len(&stream[..push.len() - 1]), None, "incomplete");
    assert_eq!(resp_frame_len(&stream[push.len()..]), Some(5));
    assert!(is_pubsub_message(push));
    assert!(!is_pubsub_message(pong));
    assert!(!is_pubsub_message(b"+OK\r\n"));
    let resp3 = b">3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$1\r\nx\r\n";
    assert_eq!(resp_frame_len(resp3), Some(resp3.len()));
    assert!(is_pubsub_message(resp3));
    assert_eq!(resp_frame_len(b"%1\r\n+a\r\n:1\r\n"), Some(12));
    assert_eq!(resp_frame_len(b"$-1\r\n"), Some(5));
}
