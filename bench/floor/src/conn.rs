//! One WebSocket connection after the upgrade: Engine.IO v4 (open, ping/pong, close) and
//! Socket.IO v5 (namespace connects, events, acks) in the one task that reads it.
//!
//! Invariant: the task is the only reader of its socket and the only one that waits on it;
//! everyone writes through its [`Peer`], directly. Reads go into a buffer on the stack of
//! the `readable` wake-up, not into the task: an idle connection holds no read buffer, only
//! the tail of a frame that arrived in part. A `chat` is numbered, acked and delivered to
//! the room under its channel's lock ([`crate::hub`]), its `new-chat` frame encoded once
//! and the same bytes written to every recipient.

use std::io;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Bytes;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Control, Data, OpCode};

use crate::hub::{Channel, ChannelId, CommunityId, Hub, UserId};
use crate::peer::{Flushed, Peer};
use crate::ws::{self, Closing, FrameBuf};

/// Bytes read per `read(2)`: the buffer lives on the stack only while a read is handled.
const READ_CHUNK: usize = 16 * 1024;
/// PROTOCOL.md's limits.
const MAX_JOIN: usize = 100;
const MAX_CONTENT: usize = 4000;
const MAX_CLIENT_MSG_ID: usize = 64;
const COMMUNITY_NS: &str = "/socket/commu-";

/// What one read of the socket left.
enum Read {
    /// The kernel had no more (or less than a chunk: likely no more).
    Drained,
    /// A whole chunk: more may be waiting.
    More,
    /// The client closed, or the socket failed.
    Closed,
}

/// A Socket.IO socket of this connection: one namespace.
struct Socket {
    community: Option<CommunityId>,
    user: UserId,
    /// `"/socket/commu-{id},"`, or empty for `/`: in front of every packet of the namespace.
    prefix: Box<str>,
    /// The channels whose rooms this socket is in.
    rooms: Vec<Arc<Channel>>,
}

struct Conn {
    hub: Arc<Hub>,
    peer: Arc<Peer>,
    sockets: Vec<Socket>,
    /// The start of a frame that has not arrived whole (empty, unallocated, when idle).
    partial: Vec<u8>,
    /// A fragmented message being put together: is it text, and its bytes so far.
    fragments: Option<(bool, Vec<u8>)>,
}

/// Runs the connection until it closes, then takes it out of every room.
pub async fn run(hub: Arc<Hub>, stream: TcpStream, early: Vec<u8>) {
    let peer = hub.add_peer(stream);
    let mut conn =
        Conn { hub: hub.clone(), peer: peer.clone(), sockets: Vec::new(), partial: Vec::new(), fragments: None };
    peer.send(&ws::text(&open_packet(&hub)));
    let mut result = Ok(());
    if !early.is_empty() {
        conn.partial = early;
        result = conn.consume_partial();
    } else {
        drop(early);
    }
    if result.is_ok() {
        result = conn.serve().await;
    }
    if let Err(closing) = result {
        // A close frame, when the socket is still writable; the client's answer is not awaited.
        peer.send(&ws::close(closing.0));
        let _ = peer.flush();
    }
    peer.close();
    for socket in std::mem::take(&mut conn.sockets) {
        leave_all(&peer, &socket);
    }
    hub.remove_peer(peer.id);
}

/// Takes `peer` out of every room `socket` is in.
fn leave_all(peer: &Peer, socket: &Socket) {
    for channel in &socket.rooms {
        channel.lock().leave(peer.id);
    }
}

/// Engine.IO's open packet (WebSocket only: no upgrades).
fn open_packet(hub: &Hub) -> String {
    let config = &hub.config;
    format!(
        "0{{\"sid\":\"{}\",\"upgrades\":[],\"pingInterval\":{},\"pingTimeout\":{},\"maxPayload\":{}}}",
        sid(),
        config.ping_interval.as_millis(),
        config.ping_timeout.as_millis(),
        config.max_message
    )
}

fn sid() -> String {
    format!("{:020x}", rand::random::<u128>() >> 48)
}

impl Conn {
    async fn serve(&mut self) -> Result<(), Closing> {
        let peer = self.peer.clone();
        loop {
            let interest = match peer.flush() {
                Flushed::Empty => Interest::READABLE,
                Flushed::Blocked => Interest::READABLE | Interest::WRITABLE,
                Flushed::Closed => return Ok(()),
            };
            // One readiness future for both directions (a second would sit in every idle
            // connection's task); a writable socket is flushed at the top of the loop.
            tokio::select! {
                biased;
                () = peer.wake.notified() => {}
                ready = peer.stream.ready(interest) => match ready {
                    Ok(ready) if ready.is_readable() || ready.is_read_closed() => match self.on_readable()? {
                        Read::Drained => {}
                        // The client has sent more than one chunk. Nothing in this loop
                        // would make the task give up its worker while that goes on
                        // (`ready` and `try_read` spend no coop budget), and the tasks this
                        // read woke, recipients with a queue now to flush, wait behind it
                        // (a task woken from a worker runs there next, and no other worker
                        // takes it): let them run, then flush this connection's own replies
                        // at the top of the loop, before the next chunk.
                        Read::More => tokio::task::yield_now().await,
                        Read::Closed => return Ok(()),
                    },
                    Ok(_) => {}
                    Err(_) => return Ok(()),
                },
            }
        }
    }

    /// Reads one chunk of what the kernel has and handles the frames it completes.
    fn on_readable(&mut self) -> Result<Read, Closing> {
        let mut chunk = [0u8; READ_CHUNK];
        let n = loop {
            match self.peer.stream.try_read(&mut chunk) {
                Ok(0) => return Ok(Read::Closed),
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Read::Drained),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return Ok(Read::Closed),
            }
        };
        self.peer.heard_from();
        if self.partial.is_empty() {
            let used = self.frames(&mut chunk[..n])?;
            self.partial.extend_from_slice(&chunk[used..n]);
        } else {
            self.partial.extend_from_slice(&chunk[..n]);
            self.consume_partial()?;
        }
        Ok(if n < chunk.len() { Read::Drained } else { Read::More })
    }

    /// Handles the whole frames in `partial`, keeping the rest.
    fn consume_partial(&mut self) -> Result<(), Closing> {
        let mut partial = std::mem::take(&mut self.partial);
        let used = self.frames(&mut partial)?;
        if used < partial.len() {
            partial.drain(..used);
            self.partial = partial;
        }
        Ok(())
    }

    /// Handles every whole frame at the start of `data`; returns the bytes they took.
    fn frames(&mut self, data: &mut [u8]) -> Result<usize, Closing> {
        let max = self.hub.config.max_message;
        let mut used = 0;
        while let Some((frame, len)) = ws::next_frame(&mut data[used..], max)? {
            let (is_final, opcode) = (frame.is_final, frame.opcode);
            match opcode {
                OpCode::Data(Data::Text | Data::Binary) if self.fragments.is_some() => return Err(Closing::PROTOCOL),
                OpCode::Data(Data::Text) if is_final => {
                    let text = std::str::from_utf8(frame.payload).map_err(|_| Closing::BAD_DATA)?;
                    self.on_engine_packet(text)?;
                }
                OpCode::Data(data @ (Data::Text | Data::Binary)) => {
                    if !is_final {
                        self.fragments = Some((data == Data::Text, frame.payload.to_vec()));
                    } else {
                        // A binary message: Socket.IO attachments, which the floor does not take.
                        return Err(Closing::UNSUPPORTED);
                    }
                }
                OpCode::Data(Data::Continue) => {
                    let Some((is_text, mut message)) = self.fragments.take() else { return Err(Closing::PROTOCOL) };
                    if message.len() + frame.payload.len() > max {
                        return Err(Closing::TOO_BIG);
                    }
                    message.extend_from_slice(frame.payload);
                    if !is_final {
                        self.fragments = Some((is_text, message));
                    } else if !is_text {
                        return Err(Closing::UNSUPPORTED);
                    } else {
                        let text = String::from_utf8(message).map_err(|_| Closing::BAD_DATA)?;
                        self.on_engine_packet(&text)?;
                    }
                }
                OpCode::Control(Control::Ping) => {
                    let mut pong = FrameBuf::new(frame.payload.len());
                    pong.push(frame.payload);
                    self.peer.send(&pong.finish(OpCode::Control(Control::Pong)));
                }
                OpCode::Control(Control::Pong) => {}
                OpCode::Control(Control::Close) => return Err(Closing::NORMAL),
                _ => return Err(Closing::PROTOCOL),
            }
            used += len;
        }
        Ok(used)
    }

    /// An Engine.IO packet (one WebSocket text message).
    fn on_engine_packet(&mut self, packet: &str) -> Result<(), Closing> {
        match packet.as_bytes().first() {
            Some(b'4') => self.on_socket_packet(&packet[1..]),
            // The answer to the heartbeat's ping: heard_from has cleared the mark.
            Some(b'3') => Ok(()),
            Some(b'2') => {
                self.peer.send(&ws::text(&format!("3{}", &packet[1..])));
                Ok(())
            }
            Some(b'6') => Ok(()),
            Some(b'1') => Err(Closing::NORMAL),
            _ => Err(Closing::PROTOCOL),
        }
    }

    /// A Socket.IO packet: `<type>[/<namespace>,][<ack id>]<JSON>`.
    fn on_socket_packet(&mut self, packet: &str) -> Result<(), Closing> {
        let Some(&kind) = packet.as_bytes().first() else { return Err(Closing::PROTOCOL) };
        let rest = &packet[1..];
        let (ns, rest) = match rest.strip_prefix('/') {
            Some(_) => rest.split_once(',').unwrap_or((rest, "")),
            None => ("/", rest),
        };
        match kind {
            b'0' => {
                self.on_connect(ns, rest);
                Ok(())
            }
            b'1' => {
                if let Some(i) = self.sockets.iter().position(|s| s.ns() == ns) {
                    let socket = self.sockets.swap_remove(i);
                    leave_all(&self.peer, &socket);
                }
                Ok(())
            }
            b'2' => {
                let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
                let ack =
                    if digits > 0 { Some(rest[..digits].parse::<u64>().map_err(|_| Closing::PROTOCOL)?) } else { None };
                // Events for a namespace this connection is not in are dropped, as Socket.IO does.
                if let Some(i) = self.sockets.iter().position(|s| s.ns() == ns) {
                    self.on_event(i, ack, &rest[digits..])?;
                }
                Ok(())
            }
            // Acks from the client: the floor asks for none.
            b'3' => Ok(()),
            // Binary events and acks: not taken (README.md).
            _ => Err(Closing::UNSUPPORTED),
        }
    }

    /// A namespace CONNECT with its auth payload.
    fn on_connect(&mut self, ns: &str, auth: &str) {
        let prefix: Box<str> = if ns == "/" { "".into() } else { format!("{ns},").into() };
        match self.admit(ns, auth) {
            Ok((user, community)) => {
                self.peer.send(&ws::text(&format!("40{prefix}{{\"sid\":\"{}\"}}", sid())));
                let mut socket = Socket { community, user, prefix, rooms: Vec::new() };
                if let Some(community) = community {
                    let remembered: Vec<ChannelId> = {
                        let accounts = self.hub.accounts();
                        accounts
                            .remembered
                            .get(&(user, community))
                            .map(|s| s.iter().copied().collect())
                            .unwrap_or_default()
                    };
                    let rejoined = self.enter(&mut socket, &remembered);
                    let event = json!(["rejoined", { "channels": rejoined }]);
                    self.peer.send(&ws::text(&format!("42{}{event}", socket.prefix)));
                }
                self.sockets.push(socket);
            }
            Err(code) => {
                self.peer.send(&ws::text(&format!("44{prefix}{}", json!({ "message": code }))));
            }
        }
    }

    /// Who may connect to `ns`: the token's user, a member of the namespace's community.
    fn admit(&self, ns: &str, auth: &str) -> Result<(UserId, Option<CommunityId>), &'static str> {
        if self.sockets.iter().any(|s| s.ns() == ns) {
            return Err("invalid");
        }
        let community = match ns {
            "/" => None,
            _ => Some(ns.strip_prefix(COMMUNITY_NS).and_then(|id| id.parse::<CommunityId>().ok()).ok_or("forbidden")?),
        };
        let auth: Value =
            if auth.is_empty() { Value::Null } else { serde_json::from_str(auth).map_err(|_| "invalid")? };
        let token = auth.get("token").and_then(Value::as_str).ok_or("unauthorized")?;
        // No replay: the floor keeps no messages (README.md). Saying so beats pretending.
        if auth.get("since").is_some_and(|s| !s.is_null()) {
            return Err("unavailable");
        }
        let accounts = self.hub.accounts();
        let user = *accounts.tokens.get(token).ok_or("unauthorized")?;
        if let Some(community) = community
            && !accounts.communities.get(&community).is_some_and(|c| c.members.contains(&user))
        {
            return Err("forbidden");
        }
        Ok((user, community))
    }

    /// Puts `socket` in the rooms of those `channels` its user is a member of (in its
    /// community), remembers them, and returns them.
    fn enter(&self, socket: &mut Socket, channels: &[ChannelId]) -> Vec<ChannelId> {
        let Some(community) = socket.community else { return Vec::new() };
        let mut entered = Vec::with_capacity(channels.len());
        for &id in channels {
            let Some(channel) = self.hub.channel(id).filter(|c| c.community == community) else { continue };
            let mut state = channel.lock();
            if !state.members.contains(&socket.user) {
                continue;
            }
            state.enter(&self.peer);
            drop(state);
            if !socket.rooms.iter().any(|c| c.id == id) {
                socket.rooms.push(channel);
            }
            entered.push(id);
        }
        let mut accounts = self.hub.accounts();
        let remembered = accounts.remembered.entry((socket.user, community)).or_default();
        remembered.retain(|c| !channels.contains(c) || entered.contains(c));
        remembered.extend(entered.iter().copied());
        entered
    }

    /// An event on socket `i`: `["name", payload]`.
    fn on_event(&mut self, i: usize, ack: Option<u64>, json: &str) -> Result<(), Closing> {
        let Ok(Value::Array(mut args)) = serde_json::from_str::<Value>(json) else { return Err(Closing::PROTOCOL) };
        let Some(Value::String(name)) = args.first().cloned() else { return Err(Closing::PROTOCOL) };
        let payload = args.get_mut(1).map(Value::take).unwrap_or(Value::Null);
        let mut socket = std::mem::replace(&mut self.sockets[i], Socket::placeholder());
        let answer = match (socket.community, name.as_str()) {
            (Some(_), "chat") => {
                self.on_chat(&socket, ack, payload);
                None
            }
            (Some(_), "join") => Some(self.on_join(&mut socket, payload)),
            (Some(_), "leave") => Some(self.on_leave(&mut socket, payload)),
            _ => Some(Err(("invalid", format!("the floor does not implement {name:?} (README.md)")))),
        };
        if let (Some(answer), Some(id)) = (answer, ack) {
            let body =
                answer.unwrap_or_else(|(code, message)| json!({ "error": { "code": code, "message": message } }));
            self.peer.send(&ws::text(&format!("43{}{id}[{body}]", socket.prefix)));
        }
        self.sockets[i] = socket;
        Ok(())
    }

    fn on_join(&self, socket: &mut Socket, payload: Value) -> Result<Value, (&'static str, String)> {
        let channels = channel_list(payload)?;
        let joined = self.enter(socket, &channels);
        let rejected: Vec<Value> = channels
            .iter()
            .filter(|c| !joined.contains(c))
            .map(|c| json!({ "channelId": c, "code": "forbidden" }))
            .collect();
        Ok(json!({ "joined": joined, "rejected": rejected }))
    }

    fn on_leave(&self, socket: &mut Socket, payload: Value) -> Result<Value, (&'static str, String)> {
        let channels = channel_list(payload)?;
        socket.rooms.retain(|channel| {
            let leaving = channels.contains(&channel.id);
            if leaving {
                channel.lock().leave(self.peer.id);
            }
            !leaving
        });
        if let Some(community) = socket.community
            && let Some(remembered) = self.hub.accounts().remembered.get_mut(&(socket.user, community))
        {
            remembered.retain(|c| !channels.contains(c));
        }
        Ok(json!({ "left": channels }))
    }

    /// `chat` `new`: numbered, acked, then delivered to the rest of the room, all under the
    /// channel's lock. The chatInfo is serialised once; the `new-chat` frame is built once.
    fn on_chat(&self, socket: &Socket, ack: Option<u64>, payload: Value) {
        let refuse = |code: &str, message: &str| {
            if let Some(id) = ack {
                let body = json!({ "written": false, "chatInfo": null, "error": { "code": code, "message": message } });
                self.peer.send(&ws::text(&format!("43{}{id}[{body}]", socket.prefix)));
            }
        };
        let chat: ChatRequest = match serde_json::from_value(payload) {
            Ok(chat) => chat,
            Err(e) => return refuse("invalid", &e.to_string()),
        };
        if chat.chat_type != "new" {
            return refuse("invalid", "the floor implements chatType \"new\" only (README.md)");
        }
        let content = chat.content.trim();
        let chars = content.chars().count();
        if chars == 0 {
            return refuse("invalid", "content must not be empty");
        }
        if chars > MAX_CONTENT {
            return refuse("too_large", "content is over 4000 characters");
        }
        if content.chars().any(|c| c.is_control() && !matches!(c, '\t' | '\n' | '\r')) {
            return refuse("invalid", "content contains control characters");
        }
        if let Some(id) = &chat.client_msg_id
            && !(1..=MAX_CLIENT_MSG_ID).contains(&id.chars().count())
        {
            return refuse("invalid", "clientMsgId must be 1..64 characters");
        }
        let Some(channel) = self.hub.channel(chat.channel_id).filter(|c| Some(c.community) == socket.community) else {
            return refuse("not_found", "no such channel in this community");
        };
        let mut state = channel.lock();
        if !state.members.contains(&socket.user) {
            return refuse("forbidden", "not a member of the channel");
        }
        let key = chat.client_msg_id.as_ref().map(|id| (socket.user, id.clone()));
        if let Some(info) = key.as_ref().and_then(|k| state.written.get(k)) {
            // A repeat: the first message again, written true, not broadcast again.
            if let Some(id) = ack {
                self.peer.send(&ack_frame(&socket.prefix, id, info));
            }
            return;
        }
        state.last_seq += 1;
        let seq = state.last_seq;
        let info = ChatInfo {
            id: self.hub.next_message_id(),
            channel_id: channel.id,
            community_id: channel.community,
            seq,
            event_seq: seq,
            sender_id: socket.user,
            content,
            client_msg_id: chat.client_msg_id.as_deref(),
            created_at: now_ms(),
            edited_at: None,
            deleted: false,
        };
        let info = Bytes::from(serde_json::to_vec(&info).expect("a chatInfo serialises"));
        if let Some(id) = ack {
            self.peer.send(&ack_frame(&socket.prefix, id, &info));
        }
        let mut frame = FrameBuf::new(socket.prefix.len() + info.len() + 16);
        frame.push_str("42").push_str(&socket.prefix).push_str("[\"new-chat\",").push(&info).push_str("]");
        let frame = frame.text();
        for peer in &state.room {
            if peer.id != self.peer.id {
                peer.send(&frame);
            }
        }
        if let Some(key) = key {
            state.written.insert(key, info);
        }
    }
}

impl Socket {
    fn ns(&self) -> &str {
        match self.prefix.strip_suffix(',') {
            Some(ns) => ns,
            None => "/",
        }
    }

    /// Stands in while the real socket is lent to an event handler.
    fn placeholder() -> Socket {
        Socket { community: None, user: 0, prefix: "".into(), rooms: Vec::new() }
    }
}

/// `43<ns>,<id>[{"written":true,"chatInfo":<info>}]`.
fn ack_frame(prefix: &str, id: u64, info: &[u8]) -> Bytes {
    let mut frame = FrameBuf::new(prefix.len() + info.len() + 48);
    frame.push_str("43").push_str(prefix).push_str(&id.to_string());
    frame.push_str("[{\"written\":true,\"chatInfo\":").push(info).push_str("}]");
    frame.text()
}

/// `{channels: [id...]}`: the distinct positive ids, at most [`MAX_JOIN`].
fn channel_list(payload: Value) -> Result<Vec<ChannelId>, (&'static str, String)> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct List {
        channels: Vec<ChannelId>,
    }
    let list: List = serde_json::from_value(payload).map_err(|e| ("invalid", e.to_string()))?;
    if list.channels.len() > MAX_JOIN {
        return Err(("too_large", format!("at most {MAX_JOIN} channels at once")));
    }
    if list.channels.iter().any(|c| *c < 1) {
        return Err(("invalid", "channel ids are positive integers".into()));
    }
    let mut channels = list.channels;
    channels.sort_unstable();
    channels.dedup();
    Ok(channels)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ChatRequest {
    chat_type: String,
    channel_id: ChannelId,
    #[serde(default)]
    content: String,
    client_msg_id: Option<String>,
    #[allow(dead_code)] // modify and delete are refused before it is read
    message_id: Option<i64>,
}

/// PROTOCOL.md's message object.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ChatInfo<'a> {
    id: i64,
    channel_id: ChannelId,
    community_id: CommunityId,
    seq: i64,
    event_seq: i64,
    sender_id: UserId,
    content: &'a str,
    client_msg_id: Option<&'a str>,
    created_at: i64,
    edited_at: Option<i64>,
    deleted: bool,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}
