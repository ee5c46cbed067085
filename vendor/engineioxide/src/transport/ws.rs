//! The ws transport module is responsible for handling websocket connections
//! The only public function is [`new_req`] which is used to upgrade a http request to a websocket connection
//!
//! Other functions are used internally to handle the websocket connection through tasks and channels
//! and to handle upgrade from polling to ws

use std::sync::Arc;

use futures_util::{SinkExt, StreamExt, TryStreamExt};
use http::{HeaderValue, Request, Response, StatusCode, request::Parts};
use smallvec::smallvec;
use tokio::io::{AsyncRead, AsyncWrite, ReadHalf};
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{
        self, Message,
        handshake::derive_accept_key,
        protocol::{Role, WebSocketConfig},
    },
};
use tokio_util::future::FutureExt as _;

use engineioxide_core::{Packet, ProtocolVersion, Sid, Str, TransportType};

use crate::{
    DisconnectReason, Socket, body::ResponseBody, config::EngineIoConfig, engine::EngineIo,
    errors::Error, handler::EngineIoHandler, transport::make_open_packet,
    transport::ws_writer::{WsStream, WsWriter},
};

/// Create a response for websocket upgrade
fn ws_response<B>(ws_key: &HeaderValue) -> Response<ResponseBody<B>> {
    let derived = derive_accept_key(ws_key.as_bytes());
    let sec = derived.parse::<HeaderValue>().unwrap();
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(http::header::UPGRADE, HeaderValue::from_static("websocket"))
        .header(
            http::header::CONNECTION,
            HeaderValue::from_static("Upgrade"),
        )
        .header(http::header::SEC_WEBSOCKET_ACCEPT, sec)
        .body(ResponseBody::empty_response())
        .unwrap() // we are only using constants
}

/// Upgrade a websocket request to create a websocket connection.
///
/// If a sid is provided in the query it means that is is upgraded from an existing HTTP polling request.
/// In this case the http polling request is closed and the SID is kept for the websocket
pub fn new_req<R: Send + 'static, B, H: EngineIoHandler>(
    engine: Arc<EngineIo<H>>,
    protocol: ProtocolVersion,
    sid: Option<Sid>,
    req: Request<R>,
) -> Result<Response<ResponseBody<B>>, Error> {
    let (parts, body) = req.into_parts();
    let req = Request::from_parts(parts.clone(), body);

    let ws_key = parts
        .headers
        .get("Sec-WebSocket-Key")
        .ok_or(Error::InvalidWebSocketKey)?
        .clone();

    // The upgrade and the handshake run boxed (baton patch): their state (the request, the
    // websocket before it is split, the handshake's futures) is freed once they are done,
    // instead of staying in the connection's task, at its largest size, for as long as the
    // connection lives: 3.4 KiB per connection before, most of it idle.
    let setup_engine = engine.clone();
    let setup = Box::pin(async move {
        let conn = match hyper::upgrade::on(req).await {
            Ok(conn) => hyper_util::rt::TokioIo::new(conn),
            Err(_e) => {
                #[cfg(feature = "tracing")]
                tracing::debug!("ws upgrade error: {}", _e);
                return None;
            }
        };
        Some(init_session(&setup_engine, conn, protocol, sid, parts).await)
    });

    tokio::spawn(async move {
        let res = match setup.await {
            None => return,
            Some(Ok((socket, ws, writer))) => {
                run_session(&engine, socket, ws, writer, sid.is_some()).await;
                Ok(())
            }
            Some(Err(e)) => Err(e),
        };

        match res {
            Ok(_) => {
                #[cfg(feature = "tracing")]
                tracing::debug!(?sid, "ws closed")
            }
            Err(Error::MultipleWebsocketRequests) => {}
            Err(_e) => {
                #[cfg(feature = "tracing")]
                tracing::debug!(?sid, "ws closed with error: {_e}");
                if let Some(sid) = sid {
                    engine.close_session(sid, DisconnectReason::TransportError);
                }
            }
        }
    });

    Ok(ws_response(&ws_key))
}

/// Handle a websocket connection upgrade
///
/// Sends an open packet if it is not an upgrade from a polling request
///
/// Read packets from the websocket and handle them, it will block until the connection is closed
#[cfg_attr(
    feature = "tracing",
    tracing::instrument(level = "trace", name = "init_websocket", skip(engine, conn, req_data))
)]
pub async fn on_init<H: EngineIoHandler, S>(
    engine: Arc<EngineIo<H>>,
    conn: S,
    protocol: ProtocolVersion,
    sid: Option<Sid>,
    req_data: Parts,
) -> Result<(), Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // Boxed (baton patch): see `new_req`.
    let (socket, ws, writer) = Box::pin(init_session(&engine, conn, protocol, sid, req_data)).await?;
    run_session(&engine, socket, ws, writer, sid.is_some()).await;
    Ok(())
}

/// A session's websocket as tungstenite reads it (baton patch): the read half of the
/// connection; everything written goes through the session's [`WsWriter`].
type Ws<S> = WebSocketStream<WsStream<ReadHalf<S>>>;

/// How long a closing session waits for the socket to take its last frames and its
/// Close frame (baton patch; upstream's writer waited as long as it took).
const CLOSE_FLUSH: std::time::Duration = std::time::Duration::from_secs(5);

/// How long a session closed for a message over the size limit keeps reading (and
/// dropping) what the client is still sending, so that its Close frame is read rather
/// than lost to a reset (baton patch; see [`close_too_big`]).
const TOO_BIG_LINGER: std::time::Duration = std::time::Duration::from_secs(5);

/// The handshake of a websocket session (a new one, or the upgrade of a polling one);
/// hands back the socket, the websocket and its writer.
async fn init_session<H: EngineIoHandler, S>(
    engine: &Arc<EngineIo<H>>,
    conn: S,
    protocol: ProtocolVersion,
    sid: Option<Sid>,
    req_data: Parts,
) -> Result<(Arc<Socket<H::Data>>, Ws<S>, Arc<WsWriter>), Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let ws_config = WebSocketConfig::default()
        .read_buffer_size(engine.config.ws_read_buffer_size)
        .max_message_size(Some(engine.config.ws_max_message_size))
        .max_frame_size(Some(engine.config.ws_max_frame_size));

    // The connection's write half goes to the session's writer, which emits queue to
    // (baton patch, see `ws_writer`); tungstenite reads the read half and writes what
    // it must (pongs, the close frame) through the same writer.
    let max_frames = engine.config.max_buffer_size;
    let ws_init = move |protocol| {
        let (read, write) = tokio::io::split(conn);
        let writer = Arc::new(WsWriter::new(Box::pin(write), max_frames, protocol, &engine.flusher));
        let stream = WsStream { read, writer: writer.clone() };
        async move { (WebSocketStream::from_raw_socket(stream, Role::Server, Some(ws_config)).await, writer) }
    };
    let (socket, ws, writer) = if let Some(sid) = sid {
        match engine.get_socket(sid) {
            None => return Err(Error::UnknownSessionID(sid)),
            Some(socket) if socket.is_ws() => return Err(Error::MultipleWebsocketRequests),
            Some(socket) => {
                let (mut ws, writer) = ws_init(socket.protocol).await;

                let upgrade_fut = upgrade_handshake::<H, S>(&socket, &mut ws);
                match tokio::time::timeout(engine.config.upgrade_timeout, upgrade_fut)
                    .with_cancellation_token(&socket.cancellation_token)
                    .await
                {
                    Some(Ok(res)) => res?,
                    Some(Err(_)) => {
                        #[cfg(feature = "tracing")]
                        tracing::debug!(?sid, "ws upgrade timed out, closing session");
                        engine.close_session(socket.id, DisconnectReason::TransportError);
                        return Err(Error::Upgrade);
                    }
                    None => {
                        #[cfg(feature = "tracing")]
                        tracing::debug!(?sid, "socket is being closed");
                        return Err(Error::Upgrade);
                    }
                }
                (socket, ws, writer)
            }
        }
    } else {
        let socket = engine.create_session(protocol, TransportType::Websocket, req_data, false);

        #[cfg(feature = "tracing")]
        tracing::debug!("new websocket connection");

        let (mut ws, writer) = ws_init(socket.protocol).await;
        init_handshake(socket.id, &mut ws, &engine.config).await?;
        // The heartbeat runs in the session's task (baton patch, see `run_session`).
        (socket, ws, writer)
    };
    Ok((socket, ws, writer))
}

/// Runs the session: its packets go to its websocket writer from now on (baton
/// patch), and this one task reads the websocket, writes what the socket could
/// not take at once and, for a session that began as a websocket, runs the heartbeat
/// (upstream spawned a writer task and a heartbeat task beside it), until the websocket
/// closes or the session is cancelled; then it ends the websocket. A session upgraded
/// from polling keeps the heartbeat task it was given as a polling session.
async fn run_session<H: EngineIoHandler, S>(
    engine: &Arc<EngineIo<H>>,
    socket: Arc<Socket<H::Data>>,
    mut ws: Ws<S>,
    writer: Arc<WsWriter>,
    upgraded: bool,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // The channel's receiving side, as upstream's writer task took it: a polling request
    // that was in progress during an upgrade may still hold it. What it holds goes to
    // the writer, and from then on every packet does.
    let Some(mut internal_rx) = socket
        .internal_rx
        .lock()
        .with_cancellation_token(&socket.cancellation_token)
        .await
    else {
        #[cfg(feature = "tracing")]
        tracing::debug!(sid = %socket.id, "session closed before its websocket was written to");
        writer.release();
        return;
    };
    socket.switch_to_writer(writer.clone(), &mut internal_rx);

    let heartbeat = async {
        if upgraded {
            return std::future::pending().await;
        }
        let config = &engine.config;
        socket.heartbeat_job(config.ping_interval, config.ping_timeout).await
    };
    let session = async {
        tokio::select! {
            biased;
            e = std::future::poll_fn(|cx| writer.poll_write_queue(cx)) => {
                Err(Error::WsTransport(Box::new(tungstenite::Error::Io(e))))
            }
            outcome = forward_to_handler(engine, &mut ws, &socket) => outcome,
            Err(_e) = heartbeat => {
                #[cfg(feature = "tracing")]
                tracing::debug!(sid = %socket.id, "heartbeat error: {_e}");
                // As the heartbeat task does: a close packet, then the session closes.
                socket.close(DisconnectReason::HeartbeatTimeout);
                Ok(())
            }
        }
    };
    let outcome = session.with_cancellation_token(&socket.cancellation_token).await;
    let too_big = matches!(&outcome, Some(Err(Error::WsTransport(e))) if matches!(**e, tungstenite::Error::Capacity(_)));
    match outcome {
        Some(Err(ref e)) => {
            let reason =
                Option::<DisconnectReason>::from(e).unwrap_or(DisconnectReason::TransportError);

            #[cfg(feature = "tracing")]
            tracing::debug!("error when handling packet: {:?}", e);
            engine.close_session(socket.id, reason);
        }
        Some(Ok(())) => {
            #[cfg(feature = "tracing")]
            tracing::debug!(sid = %socket.id, "ws transport was closed");
            engine.close_session(socket.id, DisconnectReason::TransportClose);
        }
        None => {
            #[cfg(feature = "tracing")]
            tracing::debug!(sid = %socket.id, "socket is closing");
        }
    }
    // The session is closed: nothing more is accepted, and the channel's receiving side
    // goes back so that the session's close can finish (the channel closes, the handler
    // is told). The frames already accepted (the close packet among them) are written
    // before the Close frame, for at most CLOSE_FLUSH.
    writer.stop_accepting();
    drop(internal_rx);
    if too_big {
        close_too_big(ws).await;
    } else {
        tokio::time::timeout(CLOSE_FLUSH, SinkExt::close(&mut ws)).await.ok();
    }
    writer.release();
}

/// Ends a websocket whose client sent a message over the size limit (baton patch): a
/// Close frame with code 1009 ("message too big", RFC 6455 7.4.1), as Node's `ws` sends,
/// then what the client is still sending is read and dropped, for at most
/// [`TOO_BIG_LINGER`], until it closes its side or goes quiet for a second. Closing at once, with its message
/// unread, would answer the client with a TCP reset, which it sees as an abnormal
/// close (1006) and which can destroy the Close frame before it is read.
async fn close_too_big<S>(mut ws: Ws<S>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    use tokio::io::AsyncReadExt;
    use tungstenite::protocol::{CloseFrame, frame::coding::CloseCode};

    let frame = CloseFrame { code: CloseCode::Size, reason: "message too big".into() };
    let sent = tokio::time::timeout(CLOSE_FLUSH, ws.send(Message::Close(Some(frame)))).await;
    if !matches!(sent, Ok(Ok(()))) {
        return;
    }
    let stream = &mut ws.get_mut().read;
    let mut buf = vec![0u8; 16 * 1024];
    // Until the client closes its side, or stays quiet for a second (it has read the
    // Close frame, answered it and waits for the server to close the connection).
    let drop_the_rest = async {
        let quiet = std::time::Duration::from_secs(1);
        while let Ok(Ok(n)) = tokio::time::timeout(quiet, stream.read(&mut buf)).await {
            if n == 0 {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(TOO_BIG_LINGER, drop_the_rest).await;
}

/// Forwards all packets received from a websocket to a EngineIo [`Socket`]
async fn forward_to_handler<H: EngineIoHandler, S>(
    engine: &Arc<EngineIo<H>>,
    rx: &mut Ws<S>,
    socket: &Arc<Socket<H::Data>>,
) -> Result<(), Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    while let Some(msg) = rx.try_next().await? {
        match msg {
            Message::Text(msg) => match Packet::parse(socket.protocol, ws_bytes_to_str(msg))? {
                Packet::Close => {
                    #[cfg(feature = "tracing")]
                    tracing::debug!("[sid={}] closing session", socket.id);
                    engine.close_session(socket.id, DisconnectReason::TransportClose);
                    break;
                }
                Packet::Pong | Packet::Ping => {
                    // A permit already stored means that the client is already known to be alive.
                    socket.heartbeat.notify_one();
                    Ok::<(), Error>(())
                }
                Packet::Message(msg) => {
                    engine.handler.on_message(msg, socket.clone());
                    Ok(())
                }
                p => return Err(Error::BadPacket(p)),
            },
            Message::Binary(mut data) => {
                if socket.protocol == ProtocolVersion::V3 && !data.is_empty() {
                    // The first byte is the message type, which we don't need.
                    data = data.split_off(1);
                }
                engine.handler.on_binary(data, socket.clone());
                Ok(())
            }
            Message::Close(_) => {
                #[cfg(feature = "tracing")]
                tracing::debug!("websocket closed, closing session");
                engine.close_session(socket.id, DisconnectReason::TransportClose);
                break;
            }
            _ => {
                #[cfg(feature = "tracing")]
                tracing::debug!(sid = ?socket.id, "unexpected ws message");
                Ok(())
            }
        }?
    }
    Ok(())
}

/// Send a Engine.IO [`OpenPacket`] to initiate a websocket connection
async fn init_handshake<S>(
    sid: Sid,
    ws: &mut Ws<S>,
    config: &EngineIoConfig,
) -> Result<(), Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let packet = Packet::Open(Box::new(make_open_packet(TransportType::Websocket, sid, config)));
    let packet: String = packet.into();
    ws.send(Message::Text(packet.into())).await?;
    Ok(())
}

/// Upgrade a session from a polling request to a websocket request.
///
/// Before upgrading the session the server should send a NOOP packet to any pending polling request.
///
/// ## Handshake :
/// ```text
/// CLIENT                                                 SERVER
///│                                                      │
///│   GET /engine.io/?EIO=4&transport=websocket&sid=...  │
///│ ───────────────────────────────────────────────────► │
///│  ◄─────────────────────────────────────────────────┘ │
///│            HTTP 101 (WebSocket handshake)            │
///│                                                      │
///│            -----  WebSocket frames -----             │
///│  ─────────────────────────────────────────────────►  │
///│                         2probe                       │ (ping packet)
///│  ◄─────────────────────────────────────────────────  │
///│                         3probe                       │ (pong packet)
///│  ─────────────────────────────────────────────────►  │
///│                         5                            │ (upgrade packet)
///│                                                      │
///│            -----  WebSocket frames -----             │
/// ```
#[cfg_attr(
    feature = "tracing",
    tracing::instrument(level = "trace", skip(socket, ws))
)]
async fn upgrade_handshake<H: EngineIoHandler, S>(
    socket: &Arc<Socket<H::Data>>,
    ws: &mut Ws<S>,
) -> Result<(), Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    #[cfg(feature = "tracing")]
    tracing::debug!("starting websocket connection upgrade");

    // The socket is upgrading, from now on all polling
    // request will return a `Packet::Noop`
    socket.start_upgrade();

    // We send a last Noop request to close a potential waiting polling request.
    socket
        .internal_tx
        .send(smallvec![Packet::Noop])
        .await
        .map_err(|_| Error::Upgrade)?;

    // wait for any current polling connection to finish by waiting for the socket to be unlocked
    // All other polling connection will be immediately closed with a NOOP packet.
    let _lock = socket.internal_rx.lock().await;

    // Fetch the next packet from the ws stream, it should be a PingUpgrade packet
    let msg = match ws.next().await {
        Some(Ok(Message::Text(d))) => d,
        _ => Err(Error::Upgrade)?,
    };
    match Packet::parse(socket.protocol, ws_bytes_to_str(msg))? {
        Packet::PingUpgrade => {
            #[cfg(feature = "tracing")]
            tracing::debug!("received first ping upgrade");
            // Respond with a PongUpgrade packet
            ws.send(Message::Text(String::from(Packet::PongUpgrade).into()))
                .await?;
        }
        p => Err(Error::BadPacket(p))?,
    };

    // Fetch the next packet from the ws stream, it should be an Upgrade packet
    let msg = match ws.next().await {
        Some(Ok(Message::Text(d))) => d,
        Some(Ok(Message::Close(_))) => {
            #[cfg(feature = "tracing")]
            tracing::debug!("ws stream closed before upgrade");
            Err(Error::Upgrade)?
        }
        _ => {
            #[cfg(feature = "tracing")]
            tracing::debug!("unexpected ws message before upgrade");
            Err(Error::Upgrade)?
        }
    };
    match Packet::parse(socket.protocol, ws_bytes_to_str(msg))? {
        Packet::Upgrade => {
            #[cfg(feature = "tracing")]
            tracing::debug!("ws upgraded successfully")
        }
        p => Err(Error::BadPacket(p))?,
    };

    socket.upgrade_to_websocket();
    Ok(())
}

fn ws_bytes_to_str(bytes: tungstenite::Utf8Bytes) -> Str {
    // SAFETY: the bytes are guaranteed to be valid UTF-8 by the tungstenite parser
    unsafe { Str::from_bytes_unchecked(bytes.into()) }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;
    use futures_util::StreamExt;
    use http::Request;
    use tokio::io::DuplexStream;

    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(1);

    #[derive(Debug)]
    struct StubHandler;
    impl EngineIoHandler for StubHandler {
        type Data = ();
        fn on_connect(self: Arc<Self>, _: Arc<Socket<()>>) {}
        fn on_disconnect(&self, _: Arc<Socket<()>>, _: DisconnectReason) {}
        fn on_message(self: &Arc<Self>, _: Str, _: Arc<Socket<()>>) {}
        fn on_binary(self: &Arc<Self>, _: Bytes, _: Arc<Socket<()>>) {}
    }

    fn engine() -> Arc<EngineIo<StubHandler>> {
        Arc::new(EngineIo::new(Arc::new(StubHandler), EngineIoConfig::default()))
    }

    fn socket(engine: &Arc<EngineIo<StubHandler>>) -> Arc<Socket<()>> {
        engine.create_session(
            ProtocolVersion::V4,
            TransportType::Websocket,
            Request::<()>::default().into_parts().0,
            false,
        )
    }

    /// A session's websocket over an in-memory pipe, its writer, and the client's end.
    async fn ws_pair(engine: &Arc<EngineIo<StubHandler>>) -> (Ws<DuplexStream>, Arc<WsWriter>, WebSocketStream<DuplexStream>) {
        let (server, client) = tokio::io::duplex(1024);
        let (read, write) = tokio::io::split(server);
        let writer = Arc::new(WsWriter::new(Box::pin(write), 128, ProtocolVersion::V4, &engine.flusher));
        let stream = WsStream { read, writer: writer.clone() };
        (
            WebSocketStream::from_raw_socket(stream, Role::Server, None).await,
            writer,
            WebSocketStream::from_raw_socket(client, Role::Client, None).await,
        )
    }

    /// The client's next message, heartbeat pings aside.
    async fn next_message(client: &mut WebSocketStream<DuplexStream>) -> Message {
        loop {
            let msg = tokio::time::timeout(TIMEOUT, client.next())
                .await
                .expect("the session should send a message")
                .unwrap()
                .unwrap();
            if msg != Message::text("2") {
                return msg;
            }
        }
    }

    /// A polling request can still hold the lock at the end of an upgrade: what was
    /// queued for it, and what is emitted after, reach the websocket in order once it
    /// lets go.
    #[tokio::test]
    async fn session_waits_for_the_lock_of_a_polling_request() {
        let engine = engine();
        let socket = socket(&engine);
        let (ws, writer, mut client) = ws_pair(&engine).await;

        let polling = socket.internal_rx.lock().await;
        socket.emit(Str::from("queued")).unwrap();
        let session = tokio::spawn({
            let (engine, socket) = (engine.clone(), socket.clone());
            async move { run_session(&engine, socket, ws, writer, false).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!session.is_finished(), "the session should wait for the lock");
        assert!(socket.ws_writer().is_none(), "nothing is written directly before the lock");

        drop(polling);
        tokio::time::sleep(Duration::from_millis(20)).await;
        socket.emit(Str::from("hello")).unwrap();
        for expected in ["4queued", "4hello"] {
            assert_eq!(next_message(&mut client).await, Message::text(expected));
        }
    }

    #[tokio::test]
    async fn session_waiting_for_the_lock_stops_with_the_session() {
        let engine = engine();
        let socket = socket(&engine);
        let (ws, writer, _client) = ws_pair(&engine).await;

        let _polling = socket.internal_rx.lock().await;
        let session = tokio::spawn({
            let (engine, socket) = (engine.clone(), socket.clone());
            async move { run_session(&engine, socket, ws, writer, false).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;

        socket.cancellation_token.cancel();
        tokio::time::timeout(TIMEOUT, session)
            .await
            .expect("the session should stop")
            .unwrap();
    }

    /// What the socket cannot take at once waits in the queue and is written, in order
    /// and whole, as the client reads; a closing session writes its close packet and a
    /// Close frame, then the connection ends.
    #[tokio::test]
    async fn frames_the_socket_cannot_take_at_once_follow_in_order() {
        let engine = engine();
        let socket = socket(&engine);
        let (ws, writer, mut client) = ws_pair(&engine).await;
        let session = tokio::spawn({
            let (engine, socket) = (engine.clone(), socket.clone());
            async move { run_session(&engine, socket, ws, writer, false).await }
        });
        while socket.ws_writer().is_none() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // The pipe holds 1 KiB: most of these wait in the queue.
        let sent: Vec<String> = (0..100).map(|i| format!("{i}:{}", "x".repeat(i * 7))).collect();
        for msg in &sent {
            socket.emit(Str::from(msg.clone())).unwrap();
        }
        for msg in &sent {
            assert_eq!(next_message(&mut client).await, Message::text(format!("4{msg}")));
        }
        socket.close(DisconnectReason::ClosingServer);
        assert_eq!(next_message(&mut client).await, Message::text("1"), "the close packet");
        let got = next_message(&mut client).await;
        assert!(matches!(got, Message::Close(_)), "then a Close frame, got {got:?}");
        tokio::time::timeout(TIMEOUT, session).await.expect("the session should end").unwrap();
        assert!(socket.emit(Str::from("late")).is_err(), "nothing is accepted after the close");
    }

    /// Past the session's bound an emit is refused with `Full`, as the channel's was.
    #[tokio::test]
    async fn an_emit_past_the_bound_is_refused() {
        let engine = engine();
        let socket = socket(&engine);
        let (ws, writer, _client) = ws_pair(&engine).await;
        tokio::spawn({
            let (engine, socket) = (engine.clone(), socket.clone());
            async move { run_session(&engine, socket, ws, writer, false).await }
        });
        while socket.ws_writer().is_none() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // Nobody reads the client's end: the pipe fills, then the queue (128 frames).
        let big = "y".repeat(512);
        let mut accepted = 0;
        let refused = loop {
            match socket.emit(Str::from(big.clone())) {
                Ok(()) => accepted += 1,
                Err(e) => break e,
            }
            assert!(accepted < 1000, "emits should be refused once the queue is full");
        };
        assert!(matches!(refused, tokio::sync::mpsc::error::TrySendError::Full(_)), "{refused:?}");
        assert!(accepted >= 128, "the queue holds its bound: {accepted}");
    }
}
