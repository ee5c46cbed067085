//! The sending half of a websocket session (baton patch): no writer task and no
//! channel per socket; frames wait in the socket's own queue and are written by a
//! flusher shared by many sockets, one write per socket per round, several frames per
//! write under load.
//!
//! Upstream engineioxide gives every websocket a channel and a writer task: an emit
//! pushes the packet into the channel and wakes the task, which frames it (copying it
//! into tungstenite's buffer) and writes it. A broadcast to a room of N sockets paid N
//! channel pushes, N task wake-ups and N copies, then N writes. Here an emit frames the
//! packet (a header of at most 11 bytes in front of the shared payload, no copy) and
//! queues it; a socket whose queue was empty is handed to its [`Shard`] of the
//! engine's [`Flusher`], whose task is woken at most once per round. The task first
//! yields, so that what the runtime already has to run (the rest of a broadcast, other
//! messages' broadcasts) runs before it, then writes each handed socket's queue with
//! one system call. So a broadcast costs one wake-up, not one per recipient, and when
//! messages come faster than the flusher's rounds, each write carries several frames
//! (upstream's writer tasks coalesced the same way, because they waited in the run
//! queue). What a socket does not take stays queued, and the session's own task (the
//! one that reads the websocket, see `ws::run_session`) writes it when the socket
//! takes more.
//!
//! Invariants kept here:
//! - frames reach the socket whole and in the order they were handed over: there is
//!   one queue per socket, written from its head, and a frame partly written stays at
//!   the head until it is done;
//! - a socket with frames queued is either handed to the flusher or waited on by its
//!   session (the socket was full), never neither;
//! - at most `max_frames` frames wait in the queue (the bound engineioxide puts on its
//!   channel, `max_buffer_size`): past it an emit fails with `Full`, as it did;
//! - once [`WsWriter::stop_accepting`] has run, no new frame is accepted.

use std::{
    collections::VecDeque,
    io::{self, IoSlice},
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    task::{Context, Poll, Waker},
};

use bytes::Bytes;
use engineioxide_core::{Packet, PacketBuf, ProtocolVersion};
use tokio::io::AsyncWrite;

/// Why a frame was not accepted: the same two cases as the channel it replaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// `max_frames` frames are already waiting for the socket.
    Full,
    /// The session is closing or its socket failed.
    Closed,
}

/// Frames in order, each a header and a payload; `written` bytes of the first are on
/// the socket already.
struct Queue {
    frames: VecDeque<Frame>,
    written: usize,
}

/// One websocket frame as written: its header (for an Engine.IO text packet, the
/// websocket header and the packet type) and its payload, shared with every other
/// socket the same packet goes to.
struct Frame {
    head: Head,
    body: Bytes,
}

/// A frame header stored inline: 2 to 10 bytes of websocket header, and one more for
/// the Engine.IO packet type of a text message or the v3 binary marker.
#[derive(Clone, Copy)]
struct Head {
    len: u8,
    bytes: [u8; 11],
}

impl Head {
    const EMPTY: Head = Head { len: 0, bytes: [0; 11] };

    /// The header of an unmasked, final server frame of `opcode` whose payload is
    /// `prefix` (0 or 1 byte) followed by `body_len` bytes.
    fn new(opcode: u8, prefix: Option<u8>, body_len: usize) -> Head {
        let payload = body_len + prefix.is_some() as usize;
        let mut bytes = [0u8; 11];
        bytes[0] = 0x80 | opcode;
        let mut len = if payload < 126 {
            bytes[1] = payload as u8;
            2
        } else if payload <= u16::MAX as usize {
            bytes[1] = 126;
            bytes[2..4].copy_from_slice(&(payload as u16).to_be_bytes());
            4
        } else {
            bytes[1] = 127;
            bytes[2..10].copy_from_slice(&(payload as u64).to_be_bytes());
            10
        };
        if let Some(p) = prefix {
            bytes[len] = p;
            len += 1;
        }
        Head { len: len as u8, bytes }
    }

    fn as_slice(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }
}

const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;

impl Frame {
    /// The frame an Engine.IO packet travels in over a websocket, as upstream's writer
    /// made it (`None` for a `Noop`, which only a polling request needs).
    fn of(packet: Packet, protocol: ProtocolVersion) -> Option<Frame> {
        let (head, body) = match packet {
            Packet::Noop => return None,
            Packet::Message(msg) => {
                let body = Bytes::from(msg);
                (Head::new(TEXT, Some(b'4'), body.len()), body)
            }
            Packet::Binary(bin) | Packet::BinaryV3(bin) => {
                // v3 puts the packet type in front of a binary payload.
                let prefix = (protocol == ProtocolVersion::V3).then_some(0x04);
                (Head::new(BINARY, prefix, bin.len()), bin)
            }
            other => {
                let body = Bytes::from(String::from(other));
                (Head::new(TEXT, None, body.len()), body)
            }
        };
        Some(Frame { head, body })
    }

    /// Bytes already framed (by tungstenite: its pongs and close frames).
    fn raw(bytes: &[u8]) -> Frame {
        Frame { head: Head::EMPTY, body: Bytes::copy_from_slice(bytes) }
    }

    fn len(&self) -> usize {
        self.head.len as usize + self.body.len()
    }
}

impl Queue {
    /// The queue's bytes not yet written, as slices for one vectored write.
    fn slices<'a>(&'a self, out: &mut [IoSlice<'a>; MAX_SLICES]) -> usize {
        let mut n = 0;
        let mut skip = self.written;
        for frame in &self.frames {
            for part in [frame.head.as_slice(), &frame.body[..]] {
                if skip >= part.len() {
                    skip -= part.len();
                    continue;
                }
                out[n] = IoSlice::new(&part[skip..]);
                skip = 0;
                n += 1;
                if n == MAX_SLICES {
                    return n;
                }
            }
        }
        n
    }

    /// Takes `n` written bytes off the front of the queue.
    fn advance(&mut self, mut n: usize) {
        n += self.written;
        while let Some(frame) = self.frames.front() {
            if n < frame.len() {
                break;
            }
            n -= frame.len();
            self.frames.pop_front();
        }
        self.written = n;
    }
}

/// At most this many slices in one write (two per frame).
const MAX_SLICES: usize = 64;

/// Pending bytes up to this size are copied into one buffer and written with one
/// `send` rather than a `writev` of their pieces.
const JOIN_UNDER: usize = 2048;

struct State {
    /// The websocket's write half, type-erased: sessions are not generic over their
    /// stream. Dropped when the session ends ([`WsWriter::release`]), so that the
    /// connection closes even while the socket is still referenced.
    io: Option<Pin<Box<dyn AsyncWrite + Send>>>,
    queue: Queue,
    /// The session's task: woken when the flusher found the socket full.
    session: Option<Waker>,
    /// Handed to the flusher and not yet written by it.
    scheduled: bool,
    accepting: bool,
    /// The socket failed: nothing more can be written.
    failed: bool,
}

/// The sending half of one websocket session.
pub(crate) struct WsWriter {
    state: Mutex<State>,
    /// The flusher's shard that writes this socket's queue.
    shard: Arc<Shard>,
    /// What [`WsWriter::check`] reads without the lock: whether frames are accepted,
    /// and how many are queued (both written under the lock).
    accepting: AtomicBool,
    queued: AtomicUsize,
    max_frames: usize,
    protocol: ProtocolVersion,
}

impl std::fmt::Debug for WsWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WsWriter").field("max_frames", &self.max_frames).finish()
    }
}

impl WsWriter {
    pub(crate) fn new(
        io: Pin<Box<dyn AsyncWrite + Send>>,
        max_frames: usize,
        protocol: ProtocolVersion,
        flusher: &Flusher,
    ) -> WsWriter {
        WsWriter {
            shard: flusher.shard(),
            state: Mutex::new(State {
                io: Some(io),
                queue: Queue { frames: VecDeque::new(), written: 0 },
                session: None,
                scheduled: false,
                accepting: true,
                failed: false,
            }),
            accepting: AtomicBool::new(true),
            queued: AtomicUsize::new(0),
            max_frames,
            protocol,
        }
    }

    /// Whether a frame would be accepted now, without taking the lock: for a permit
    /// reserved just before its emit, which checks again.
    pub(crate) fn check(&self) -> Result<(), Refused> {
        if !self.accepting.load(Ordering::Relaxed) {
            Err(Refused::Closed)
        } else if self.queued.load(Ordering::Relaxed) >= self.max_frames {
            Err(Refused::Full)
        } else {
            Ok(())
        }
    }

    /// Publishes the state's admission figures for [`WsWriter::check`].
    fn publish(&self, state: &State) {
        self.accepting.store(state.accepting && !state.failed, Ordering::Relaxed);
        self.queued.store(state.queue.frames.len(), Ordering::Relaxed);
    }

    /// Sends packets, in order, as one unit: all are accepted or none (handed back).
    pub(crate) fn send(self: &Arc<Self>, packets: PacketBuf) -> Result<(), (Refused, PacketBuf)> {
        let state = self.state.lock().unwrap();
        if let Err(refused) = state.admits(packets.len(), self.max_frames) {
            return Err((refused, packets));
        }
        self.queue(state, packets);
        Ok(())
    }

    /// A volatile packet: queued only when nothing is queued before it, dropped
    /// otherwise (`false`), as upstream drops one the transport is not ready for.
    pub(crate) fn send_volatile(self: &Arc<Self>, packets: PacketBuf) -> bool {
        let state = self.state.lock().unwrap();
        if !state.queue.frames.is_empty() || state.admits(1, self.max_frames).is_err() {
            return false;
        }
        self.queue(state, packets);
        true
    }

    /// Queues admitted packets' frames and, if nothing was queued before them, hands
    /// the socket to the flusher (after letting go of the lock).
    fn queue(self: &Arc<Self>, mut state: std::sync::MutexGuard<'_, State>, packets: PacketBuf) {
        let before = state.queue.frames.len();
        for packet in packets {
            if let Some(frame) = Frame::of(packet, self.protocol) {
                state.queue.frames.push_back(frame);
            }
        }
        let schedule = state.schedule(before);
        self.publish(&state);
        drop(state);
        if schedule {
            self.shard.schedule(self.clone());
        }
    }

    /// Bytes tungstenite framed itself (the session's pongs and close frame), in order
    /// with the rest; never refused for the bound, which counts packets. tungstenite
    /// flushes them itself, from the session's task ([`WsWriter::poll_flush`]).
    fn send_raw(&self, bytes: &[u8]) -> io::Result<()> {
        let mut state = self.state.lock().unwrap();
        if state.failed {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        state.queue.frames.push_back(Frame::raw(bytes));
        self.publish(&state);
        Ok(())
    }

    /// The flusher's turn: writes what the socket takes now; if it is full (or failed),
    /// the session's task is woken to wait for it (or to end the session).
    fn flush_scheduled(&self) {
        let mut state = self.state.lock().unwrap();
        state.scheduled = false;
        // A non-blocking write: the no-op waker is never woken, and the session's task
        // registers its own as soon as it is woken to write what is left.
        let mut cx = Context::from_waker(Waker::noop());
        let written = state.poll_write_queue(&mut cx);
        self.publish(&state);
        if !matches!(written, Poll::Ready(Ok(()))) {
            if let Some(session) = state.session.take() {
                session.wake();
            }
        }
    }

    /// No frame is accepted any more (the session is closing); the queued ones are
    /// still written by [`WsWriter::poll_flush`].
    pub(crate) fn stop_accepting(&self) {
        let mut state = self.state.lock().unwrap();
        state.accepting = false;
        self.publish(&state);
    }

    /// Whether frames are still accepted.
    pub(crate) fn is_accepting(&self) -> bool {
        self.accepting.load(Ordering::Relaxed)
    }

    /// The session's side: writes the queue whenever there is one, and completes only
    /// with the error that ends the socket.
    pub(crate) fn poll_write_queue(&self, cx: &mut Context<'_>) -> Poll<io::Error> {
        match self.poll_flush(cx) {
            Poll::Ready(Ok(())) => Poll::Pending,
            Poll::Ready(Err(e)) => Poll::Ready(e),
            Poll::Pending => Poll::Pending,
        }
    }

    /// Writes the whole queue (for tungstenite's flush, and the last frames of a
    /// session). Only the session's task calls it: once the queue is empty, its waker
    /// is kept, to be woken when an emit leaves something in the queue.
    pub(crate) fn poll_flush(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut state = self.state.lock().unwrap();
        let written = state.poll_write_queue(cx);
        self.publish(&state);
        let written = std::task::ready!(written);
        if written.is_ok() && !state.session.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            state.session = Some(cx.waker().clone());
        }
        Poll::Ready(written)
    }

    /// Ends the write side of the socket once the queue is written.
    pub(crate) fn poll_shutdown(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut state = self.state.lock().unwrap();
        std::task::ready!(state.poll_write_queue(cx))?;
        match state.io.as_mut() {
            Some(io) => io.as_mut().poll_shutdown(cx),
            None => Poll::Ready(Ok(())),
        }
    }

    /// The session is over: nothing is accepted any more and the write half of the
    /// connection is dropped (with the read half, that closes the connection).
    pub(crate) fn release(&self) {
        let mut state = self.state.lock().unwrap();
        state.accepting = false;
        state.failed = true;
        state.io = None;
        state.queue.frames.clear();
        self.publish(&state);
    }
}

impl State {
    fn admits(&self, count: usize, max_frames: usize) -> Result<(), Refused> {
        if !self.accepting || self.failed {
            Err(Refused::Closed)
        } else if self.queue.frames.len() + count > max_frames {
            Err(Refused::Full)
        } else {
            Ok(())
        }
    }

    /// Frames were just queued from position `before`: when nothing was queued before
    /// them (so neither the flusher nor the session has them), the socket is to be
    /// handed to the flusher (`true`).
    fn schedule(&mut self, before: usize) -> bool {
        if before > 0 || self.queue.frames.is_empty() || self.scheduled {
            return false;
        }
        self.scheduled = true;
        true
    }

    /// Writes the queue until it is empty (`Ready(Ok)`), the socket is full (`Pending`,
    /// `cx` woken when it takes more) or it fails.
    fn poll_write_queue(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let (false, Some(io)) = (self.failed, self.io.as_mut()) else {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        };
        while !self.queue.frames.is_empty() {
            let mut slices = [IoSlice::new(&[]); MAX_SLICES];
            let n = self.queue.slices(&mut slices);
            // A `send` of one buffer costs the kernel less than a `writev` of two (about
            // 8 % per write on loopback here: bench/floor's `loopback`), and a small
            // frame's header and payload copy into one for much less than that.
            let mut joined = [0u8; JOIN_UNDER];
            let total: usize = slices[..n].iter().map(|s| s.len()).sum();
            let written = if n == 1 {
                io.as_mut().poll_write(cx, &slices[0])
            } else if total <= JOIN_UNDER {
                let mut at = 0;
                for slice in &slices[..n] {
                    joined[at..at + slice.len()].copy_from_slice(slice);
                    at += slice.len();
                }
                io.as_mut().poll_write(cx, &joined[..total])
            } else {
                io.as_mut().poll_write_vectored(cx, &slices[..n])
            };
            match written {
                Poll::Ready(Ok(0)) => {
                    self.failed = true;
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                Poll::Ready(Ok(written)) => self.queue.advance(written),
                Poll::Ready(Err(e)) => {
                    self.failed = true;
                    return Poll::Ready(Err(e));
                }
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(()))
    }
}

/// The engine's flusher: shards, each a task that writes the queues of the sockets
/// handed to it. A socket keeps its shard for life (round robin at creation), so one
/// task writes it; there are as many shards as the runtime has cores (at most 16), so
/// that writing spreads over them.
pub(crate) struct Flusher {
    shards: Box<[Arc<Shard>]>,
    next: AtomicUsize,
}

impl Flusher {
    pub(crate) fn new() -> Flusher {
        let n = std::thread::available_parallelism().map_or(1, |n| n.get()).min(16);
        Flusher { shards: (0..n).map(|_| Arc::new(Shard::default())).collect(), next: AtomicUsize::new(0) }
    }

    fn shard(&self) -> Arc<Shard> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.shards.len();
        self.shards[i].clone()
    }
}

impl std::fmt::Debug for Flusher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Flusher").field("shards", &self.shards.len()).finish()
    }
}

/// One flusher task and the sockets handed to it since its last round.
pub(crate) struct Shard {
    handed: Mutex<Vec<Arc<WsWriter>>>,
    wake: tokio::sync::Notify,
    started: std::sync::Once,
}

impl Default for Shard {
    fn default() -> Shard {
        Shard { handed: Mutex::new(Vec::new()), wake: tokio::sync::Notify::new(), started: std::sync::Once::new() }
    }
}

impl Shard {
    /// Hands a socket with frames queued to the flusher (its task starts on first use,
    /// on the runtime of the emit).
    fn schedule(self: &Arc<Self>, writer: Arc<WsWriter>) {
        // An emit from outside any runtime (a plain thread) cannot start the task, nor
        // count on one started: it writes at once instead.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            writer.flush_scheduled();
            return;
        };
        self.started.call_once(|| {
            runtime.spawn(self.clone().run());
        });
        let first = {
            let mut handed = self.handed.lock().unwrap();
            handed.push(writer);
            handed.len() == 1
        };
        if first {
            self.wake.notify_one();
        }
    }

    /// The flusher's rounds, for as long as the runtime runs (an idle shard costs a
    /// parked task; the sockets it holds between rounds are only those being written).
    async fn run(self: Arc<Self>) {
        let mut round = Vec::new();
        loop {
            self.wake.notified().await;
            // What the runtime already has to run goes first: the rest of this
            // broadcast, the next messages' broadcasts, whose frames then join this
            // round's writes.
            tokio::task::yield_now().await;
            std::mem::swap(&mut *self.handed.lock().unwrap(), &mut round);
            for writer in round.drain(..) {
                writer.flush_scheduled();
            }
        }
    }
}

/// The stream tungstenite reads the websocket through: the read half of the connection,
/// with writes (tungstenite's pongs and close frame) going through the session's
/// [`WsWriter`], in order with the packets.
pub(crate) struct WsStream<R> {
    pub(crate) read: R,
    pub(crate) writer: std::sync::Arc<WsWriter>,
}

impl<R: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for WsStream<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().read).poll_read(cx, buf)
    }
}

impl<R: Unpin> AsyncWrite for WsStream<R> {
    fn poll_write(self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Poll::Ready(self.writer.send_raw(buf).map(|()| buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.writer.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.writer.poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame_bytes(packet: Packet, protocol: ProtocolVersion) -> Vec<u8> {
        let frame = Frame::of(packet, protocol).unwrap();
        [frame.head.as_slice(), &frame.body[..]].concat()
    }

    #[test]
    fn frames_are_what_tungstenite_writes() {
        use tokio_tungstenite::tungstenite::protocol::frame::{Frame as TFrame, coding::OpCode, coding::Data};
        for len in [0usize, 1, 124, 125, 126, 65_534, 65_535, 65_536, 70_000] {
            let text = "x".repeat(len);
            let ours = frame_bytes(Packet::Message(text.clone().into()), ProtocolVersion::V4);
            let theirs = TFrame::message(format!("4{text}").into_bytes(), OpCode::Data(Data::Text), true);
            let mut expected = Vec::new();
            theirs.format(&mut expected).unwrap();
            assert_eq!(ours, expected, "text of {len}");

            let bin = Bytes::from(vec![7u8; len]);
            let ours = frame_bytes(Packet::Binary(bin.clone()), ProtocolVersion::V4);
            let theirs = TFrame::message(bin.to_vec(), OpCode::Data(Data::Binary), true);
            let mut expected = Vec::new();
            theirs.format(&mut expected).unwrap();
            assert_eq!(ours, expected, "binary of {len}");
        }
        assert!(Frame::of(Packet::Noop, ProtocolVersion::V4).is_none());
        assert_eq!(frame_bytes(Packet::Ping, ProtocolVersion::V4), [0x81, 1, b'2']);
        assert_eq!(frame_bytes(Packet::Binary(Bytes::from_static(b"ab")), ProtocolVersion::V3), [0x82, 3, 4, b'a', b'b']);
    }

    /// An emit from a thread outside any runtime writes at once (there is no runtime
    /// to run the flusher on); the socket's runtime runs elsewhere.
    #[test]
    fn an_emit_outside_a_runtime_is_written_at_once() {
        let (server, mut client) = std::os::unix::net::UnixStream::pair().unwrap();
        server.set_nonblocking(true).unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_io().build().unwrap();
        let io = runtime.block_on(async { tokio::net::UnixStream::from_std(server).unwrap() });
        // The runtime's driver runs on its own thread, and sees the socket writable.
        std::thread::spawn(move || runtime.block_on(std::future::pending::<()>()));
        std::thread::sleep(std::time::Duration::from_millis(50));
        client.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
        let writer = Arc::new(WsWriter::new(Box::pin(io), 8, ProtocolVersion::V4, &Flusher::new()));
        writer.send(smallvec::smallvec![Packet::Message("hi".into())]).unwrap();
        let mut got = [0u8; 5];
        std::io::Read::read_exact(&mut client, &mut got).unwrap();
        assert_eq!(got, [0x81, 3, b'4', b'h', b'i']);
    }

    #[test]
    fn a_partial_write_resumes_where_it_stopped() {
        let mut queue = Queue { frames: VecDeque::new(), written: 0 };
        for body in ["hello", "world"] {
            queue.frames.push_back(Frame::of(Packet::Message(body.into()), ProtocolVersion::V4).unwrap());
        }
        let all: Vec<u8> = queue.frames.iter().flat_map(|f| [f.head.as_slice(), &f.body[..]].concat()).collect();
        let mut out = Vec::new();
        for step in [1usize, 2, 4, 3, 6] {
            let mut slices = [IoSlice::new(&[]); MAX_SLICES];
            let n = queue.slices(&mut slices);
            let pending: Vec<u8> = slices[..n].iter().flat_map(|s| s.to_vec()).collect();
            assert_eq!(pending, all[out.len()..], "after {} bytes", out.len());
            out.extend_from_slice(&pending[..step]);
            queue.advance(step);
        }
        assert!(queue.frames.is_empty());
        assert_eq!(out, all);
    }
}
