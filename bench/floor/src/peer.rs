//! One connection's write side, shared by everyone who sends to it: the socket itself and
//! the frames the kernel has not taken yet.
//!
//! Invariant: frames reach the socket whole and in the order [`Peer::send`] was called.
//! A sender writes straight to the socket (one non-blocking `send(2)`, no task switch, no
//! copy) while nothing is queued; once the kernel's buffer is full, the rest of the frame
//! and every later one wait in the queue, as shared [`Bytes`], until the connection's own
//! task sees the socket writable again and flushes them ([`Peer::flush`]).

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Bytes;

/// Bytes a connection may have queued before it counts as a consumer that stopped reading
/// and is closed: 8 MiB is several seconds of the bench's heaviest fan-out for one client,
/// on top of the kernel's own send buffer (up to 4 MiB on Linux by default).
const MAX_QUEUED: usize = 8 << 20;
/// Frames handed to one vectored write when the queue is flushed.
const FLUSH_BATCH: usize = 64;

pub struct Peer {
    /// Names the peer in rooms and in the hub's list of connections.
    pub id: u64,
    pub stream: TcpStream,
    out: Mutex<Outbox>,
    /// Wakes the connection's task: a frame was queued (it must wait for writability) or
    /// the peer was closed.
    pub wake: Notify,
    /// A ping went out and nothing has come back since (the heartbeat's mark).
    pub awaiting_pong: AtomicBool,
}

#[derive(Default)]
struct Outbox {
    queue: VecDeque<Bytes>,
    queued: usize,
    closed: bool,
}

/// Where the write side stands after a flush.
#[derive(Debug, PartialEq, Eq)]
pub enum Flushed {
    /// Nothing left to write.
    Empty,
    /// The kernel's buffer is full: wait until the socket is writable.
    Blocked,
    /// The peer was closed (by its task, the heartbeat, a slow read or a write error).
    Closed,
}

impl Peer {
    pub fn new(id: u64, stream: TcpStream) -> Peer {
        Peer {
            id,
            stream,
            out: Mutex::new(Outbox::default()),
            wake: Notify::new(),
            awaiting_pong: AtomicBool::new(false),
        }
    }

    /// Sends `frame` (a whole WebSocket frame): written now if nothing is queued and the
    /// kernel takes it, else queued for the connection's task. Never blocks on the network.
    pub fn send(&self, frame: &Bytes) {
        let mut out = self.out.lock().unwrap_or_else(|p| p.into_inner());
        if out.closed {
            return;
        }
        let rest = if out.queue.is_empty() {
            match self.stream.try_write(frame) {
                Ok(n) if n == frame.len() => return,
                Ok(n) => frame.slice(n..),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => frame.clone(),
                Err(_) => {
                    out.closed = true;
                    self.wake.notify_one();
                    return;
                }
            }
        } else {
            frame.clone()
        };
        out.queued += rest.len();
        if out.queued > MAX_QUEUED {
            out.closed = true;
            out.queue = VecDeque::new();
            self.wake.notify_one();
            return;
        }
        let was_empty = out.queue.is_empty();
        out.queue.push_back(rest);
        if was_empty {
            self.wake.notify_one();
        }
    }

    /// Writes what is queued, as far as the kernel takes it (the connection's task calls
    /// this when woken).
    pub fn flush(&self) -> Flushed {
        let mut out = self.out.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if out.closed {
                return Flushed::Closed;
            }
            if out.queue.is_empty() {
                // Give back the queue's memory once a backlog is gone.
                if out.queue.capacity() > FLUSH_BATCH {
                    out.queue = VecDeque::new();
                }
                return Flushed::Empty;
            }
            let mut slices = [IoSlice::new(&[]); FLUSH_BATCH];
            let n = out.queue.len().min(FLUSH_BATCH);
            for (slice, frame) in slices.iter_mut().zip(out.queue.iter()) {
                *slice = IoSlice::new(frame);
            }
            match self.stream.try_write_vectored(&slices[..n]) {
                // Nothing taken from non-empty frames: the socket cannot go on (and retrying
                // would spin).
                Ok(0) => out.closed = true,
                Ok(mut written) => {
                    out.queued -= written;
                    while written > 0 {
                        let front = out.queue.front_mut().expect("written bytes were queued");
                        if written >= front.len() {
                            written -= front.len();
                            out.queue.pop_front();
                        } else {
                            *front = front.slice(written..);
                            written = 0;
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Flushed::Blocked,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => out.closed = true,
            }
        }
    }

    /// Closes the write side: nothing more is sent, and the connection's task ends.
    pub fn close(&self) {
        let mut out = self.out.lock().unwrap_or_else(|p| p.into_inner());
        out.closed = true;
        out.queue = VecDeque::new();
        self.wake.notify_one();
    }

    /// Marks that something came from the client (the heartbeat's proof of life).
    pub fn heard_from(&self) {
        if self.awaiting_pong.load(Ordering::Relaxed) {
            self.awaiting_pong.store(false, Ordering::Relaxed);
        }
    }
}
