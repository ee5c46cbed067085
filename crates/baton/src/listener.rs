//! What reaches the process from the network, below Socket.IO: the TCP listener
//! baton serves on ([`Listener`]), with a handle on each accepted connection
//! ([`Connection`], what a drain shuts a WebSocket's transport down with); the
//! transport limits every instance applies ([`with_limits`], and
//! [`detach_from_read_buffer`] so a session does not pin hyper's read buffer); and
//! giving memory freed by connection bursts and floods of dead sessions back to the
//! system ([`return_freed_memory`]).
//!
//! Invariant kept here: a [`Connection`] reaches its descriptor only while the
//! connection is open (the descriptor is forgotten before it is closed), so a shut
//! down never hits a descriptor reused by another file.

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::connect_info::Connected;
use axum::extract::{OriginalUri, Request};
use axum::http::uri::PathAndQuery;
use axum::http::{HeaderValue, Uri};
use axum::serve::IncomingStream;
use socketioxide::adapter::Adapter;
use socketioxide::{ParserConfig, SocketIoBuilder};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

use crate::config::Config;

/// The listener baton serves on: a TCP listener whose connections carry a
/// [`Connection`] handle.
pub struct Listener(pub TcpListener);

/// An accepted TCP connection, tracked so that a [`Connection`] can shut it down
/// while it is open.
pub struct TrackedStream {
    stream: TcpStream,
    fd: Arc<Mutex<Option<RawFd>>>,
}

impl axum::serve::Listener for Listener {
    type Io = TrackedStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        // axum's own accept loop (it retries, and backs off on errors such as EMFILE).
        let (stream, addr) = axum::serve::Listener::accept(&mut self.0).await;
        // Chat packets are small and latency-bound: no Nagle delay.
        let _ = stream.set_nodelay(true);
        let fd = Arc::new(Mutex::new(Some(stream.as_raw_fd())));
        (TrackedStream { stream, fd }, addr)
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.0.local_addr()
    }
}

impl Drop for TrackedStream {
    /// Forgets the descriptor before `stream` closes it (fields drop after this), so
    /// that a later `shut_down` cannot reach a descriptor reused by another file.
    fn drop(&mut self) {
        *self.fd.lock().unwrap() = None;
    }
}

impl AsyncRead for TrackedStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TrackedStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// A handle on one accepted TCP connection, able to shut it down from anywhere
/// while it is open. It used to hold a duplicate of the descriptor, which doubled
/// the descriptors an instance needs per connection (10,000 idle WebSockets went
/// past a 20,000 open-files limit); it now shares the connection's own, which the
/// connection forgets before closing it.
#[derive(Clone, Debug)]
pub struct Connection(Arc<Mutex<Option<RawFd>>>);

impl Connected<IncomingStream<'_, Listener>> for Connection {
    fn connect_info(stream: IncomingStream<'_, Listener>) -> Self {
        Connection(stream.io().fd.clone())
    }
}

impl Connection {
    /// Ends the connection: both directions, the peer sees FIN. `false` if it is
    /// already closed.
    pub fn shut_down(&self) -> bool {
        let fd = self.0.lock().unwrap();
        let Some(fd) = *fd else { return false };
        // SAFETY: the descriptor is open while it is in the mutex, which we hold.
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        socket2::SockRef::from(&fd).shutdown(std::net::Shutdown::Both).is_ok()
    }
}

/// Packets buffered per connection before emits to it fail. socketioxide's default
/// is 128; a recovery replay or a burst in a busy channel needs more, and the
/// buffer only allocates what it holds.
const SOCKET_BUFFER_PACKETS: usize = 1024;

/// The WebSocket read buffer each connection keeps (engineioxide's default: 4 KiB).
/// Chat packets fit in 1 KiB; a larger frame grows the buffer to its size, read at
/// most this much per read. 3 KiB less per idle connection.
const WS_READ_BUFFER: usize = 1024;

/// Applies baton's limits and timings to a Socket.IO builder.
///
/// socketioxide bounds long-polling bodies with `max_payload` only; a WebSocket
/// message is otherwise bounded at 64 MiB, so both transports get `--max-message`.
///
/// baton takes no binary attachments: a binary packet (`51-...`) is refused at its
/// header (no attachment allowed, so socketioxide's parser closes that session at
/// once) instead of being held while its attachments are awaited.
pub fn with_limits<A: Adapter>(builder: SocketIoBuilder<A>, config: &Config) -> SocketIoBuilder<A> {
    builder
        .with_parser(ParserConfig::common().max_incoming_binaries(0))
        .max_payload(config.max_message as u64)
        .ws_max_message_size(config.max_message)
        .ws_max_frame_size(config.max_message)
        .max_buffer_size(SOCKET_BUFFER_PACKETS)
        .ws_read_buffer_size(WS_READ_BUFFER)
        .ping_interval(config.ping_interval)
        .ping_timeout(config.ping_timeout)
        .connect_timeout(config.connect_timeout)
        .upgrade_timeout(config.upgrade_timeout)
}

/// Middleware in front of the Socket.IO layer: gives the request its own copy of
/// its header values and path, so that the session does not pin hyper's read buffer.
///
/// engineioxide keeps every session's request head (`req_parts`) for its whole
/// life. hyper parses a request in place: the header values and the URI are slices
/// of the connection's read buffer (16 KiB once grown), and any one of them keeps
/// the whole buffer allocated. For a WebSocket the connection's buffer is otherwise
/// released at the upgrade, so each idle connection held 16 KiB for a few hundred
/// bytes of headers (the massif profile in docs/benchmarks.md). axum's router has
/// already put a clone of the URI in the extensions (`OriginalUri`): it is
/// replaced too.
pub async fn detach_from_read_buffer(mut req: Request) -> Request {
    for value in req.headers_mut().values_mut() {
        if let Ok(mut own) = HeaderValue::from_bytes(value.as_bytes()) {
            own.set_sensitive(value.is_sensitive());
            *value = own;
        }
    }
    let mut parts = req.uri().clone().into_parts();
    if let Some(pq) = &parts.path_and_query {
        // `try_from(&str)` copies (`from_maybe_shared` would share again).
        parts.path_and_query = PathAndQuery::try_from(pq.as_str()).ok();
        if let Ok(uri) = Uri::from_parts(parts) {
            if let Some(OriginalUri(original)) = req.extensions_mut().get_mut::<OriginalUri>() {
                *original = uri.clone();
            }
            *req.uri_mut() = uri;
        }
    }
    req
}

/// Gives memory the allocator holds free back to the system once a wave of frees has
/// settled. glibc keeps freed chunks in its arenas and returns only the top of a heap
/// on its own; a burst of connections (each handshake frees a 16 KiB HTTP read buffer
/// between long-lived blocks: about 10 KiB of resident memory per idle connection,
/// docs/benchmarks.md) or a flood of sessions that end on their own timers (never
/// connected, never polled, never upgraded: 80 MiB for 10,000 of them) leaves
/// megabytes of holes behind. Every second this reads how much the allocator holds
/// free (`mallinfo2`); when that has grown by [`WORTH_TRIMMING`] since the last trim
/// and stopped growing (or kept growing for 10 s), `malloc_trim` returns the free
/// pages, on the blocking pool. Quiet, it costs one `mallinfo2` a second.
pub async fn return_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The least free memory held since the last trim, and the last reading.
        let mut floor = free_held();
        let mut last = floor;
        let mut worth_since: Option<std::time::Instant> = None;
        loop {
            tick.tick().await;
            let free = free_held();
            floor = floor.min(free);
            let growing = free > last;
            last = free;
            if free < floor + WORTH_TRIMMING {
                worth_since = None;
                continue;
            }
            let since = *worth_since.get_or_insert_with(std::time::Instant::now);
            if growing && since.elapsed() < Duration::from_secs(10) {
                continue; // still freeing: trim once it settles
            }
            let started = std::time::Instant::now();
            // SAFETY: malloc_trim only walks the allocator's arenas, under their locks.
            let _ = tokio::task::spawn_blocking(|| unsafe { libc::malloc_trim(0) }).await;
            tracing::debug!(took = ?started.elapsed(), free_mib = free >> 20, "returned freed memory to the system");
            // Trimmed pages still count as free chunks: the next trim waits for new frees.
            floor = free_held();
            last = floor;
            worth_since = None;
        }
    }
}

/// Free memory grown by this much since the last trim is returned to the system.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const WORTH_TRIMMING: usize = 4 << 20;

/// Bytes the allocator holds in free chunks, over all its arenas.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn free_held() -> usize {
    // SAFETY: mallinfo2 only reads the allocator's statistics, under its arena locks.
    unsafe { libc::mallinfo2() }.fordblks
}
