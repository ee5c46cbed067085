//! A chat member as a careful client behaves: it keeps the eventSeqs it has per
//! channel (dropping ones it already has), reconnects with `since` set to what it
//! holds without a hole, and fills gaps from `history` when `position` (or silence)
//! says it is behind. It counts what it received before dedupe, so the tests can
//! report raw duplicates. The invariant: `seen` holds each eventSeq once, however
//! often it arrived, and `contiguous` never counts past a hole.
//!
//! For the fault checker it also keeps what it would show at each eventSeq (the
//! message's clientMsgId), counts events of channels it is not in, and can send
//! without insisting on `written: true` ([`Member::try_send`]), so a refused or
//! unanswered send can be resent later with the same clientMsgId.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use baton_client::{ClientError, Incoming, Socket};
use serde_json::{Value, json};

use crate::common::{TestUser, WAIT};

pub struct Member {
    pub user: TestUser,
    pub cid: i64,
    pub channels: Vec<i64>,
    pub base: String,
    socket: Option<Socket>,
    /// The eventSeqs held, per channel.
    pub seen: BTreeMap<i64, BTreeSet<i64>>,
    /// The highest lastSeq `position` announced, per channel.
    announced: BTreeMap<i64, i64>,
    /// Chat events received (live and replayed), before dedupe.
    pub received_raw: usize,
    /// Of those, the ones already held.
    pub duplicates: usize,
    /// Events taken from `history` to fill gaps.
    pub filled_from_history: usize,
    /// Every `rejoined` list received.
    pub rejoined: Vec<Vec<i64>>,
    /// Time from each reconnect attempt to its `recovered`.
    pub recoveries: Vec<Duration>,
    /// What is shown at each (channel, eventSeq): the message's clientMsgId (empty
    /// for none), as first received.
    pub shown: BTreeMap<(i64, i64), String>,
    /// Chat events received for channels this member is not in.
    pub foreign: usize,
}

/// How a send ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sent {
    /// `written: true`, at this eventSeq.
    Acked(i64),
    /// An ack with `written: false`: its error code.
    Refused(String),
    /// No ack: timed out, or the transport closed (or was not open).
    NoAck(String),
}

impl Member {
    /// Connects to `base` and joins `channels`.
    pub async fn join(base: &str, cid: i64, user: TestUser, channels: &[i64]) -> Member {
        let mut m = Member {
            user,
            cid,
            channels: channels.to_vec(),
            base: base.to_owned(),
            socket: None,
            seen: channels.iter().map(|c| (*c, BTreeSet::new())).collect(),
            announced: BTreeMap::new(),
            received_raw: 0,
            duplicates: 0,
            filled_from_history: 0,
            rejoined: Vec::new(),
            recoveries: Vec::new(),
            shown: BTreeMap::new(),
            foreign: 0,
        };
        m.connect_to(base).await.expect("first connect");
        let ack = m.socket().emit_with_ack("join", json!({ "channels": channels }), WAIT).await.unwrap();
        assert_eq!(ack["joined"].as_array().unwrap().len(), channels.len(), "{ack}");
        m
    }

    fn socket(&self) -> &Socket {
        self.socket.as_ref().expect("connected")
    }

    /// The highest eventSeq held with nothing missing below it.
    pub fn contiguous(&self, channel: i64) -> i64 {
        let mut n = 0;
        for &s in &self.seen[&channel] {
            if s != n + 1 {
                break;
            }
            n = s;
        }
        n
    }

    /// (Re)connects to `base` with `since`, and takes events until `recovered`.
    pub async fn connect_to(&mut self, base: &str) -> Result<(), ClientError> {
        self.connect_within(base, WAIT).await
    }

    /// [`Member::connect_to`], with `wait` as the bound of the connect and of each
    /// event until `recovered`.
    pub async fn connect_within(&mut self, base: &str, wait: Duration) -> Result<(), ClientError> {
        let started = Instant::now();
        let since: serde_json::Map<String, Value> =
            self.channels.iter().map(|c| (c.to_string(), json!(self.contiguous(*c)))).collect();
        let auth = json!({ "token": self.user.token, "since": since });
        let options = baton_client::ClientOptions { connect_timeout: wait, ..Default::default() };
        let socket = Socket::connect_with(base, &format!("/socket/commu-{}", self.cid), auth, options).await?;
        self.base = base.to_owned();
        self.socket = Some(socket);
        loop {
            match self.socket.as_mut().unwrap().next(wait).await? {
                Incoming::Event { name, args } => {
                    let done = name == "recovered";
                    self.absorb(&name, args.into_iter().next().unwrap_or(Value::Null));
                    if done {
                        break;
                    }
                }
                other => return Err(ClientError::Protocol(format!("ended before recovered: {other:?}"))),
            }
        }
        self.recoveries.push(started.elapsed());
        Ok(())
    }

    fn absorb(&mut self, name: &str, arg: Value) {
        match name {
            "new-chat" | "modify-chat" | "delete-chat" => {
                let channel = arg["channelId"].as_i64().unwrap();
                let seq = arg["eventSeq"].as_i64().unwrap();
                self.received_raw += 1;
                if !self.channels.contains(&channel) {
                    self.foreign += 1;
                }
                if !self.seen.entry(channel).or_default().insert(seq) {
                    self.duplicates += 1;
                }
                self.show(channel, seq, &arg);
            }
            "position" => {
                let channel = arg["channelId"].as_i64().unwrap();
                let last = arg["lastSeq"].as_i64().unwrap();
                let a = self.announced.entry(channel).or_default();
                *a = (*a).max(last);
            }
            "rejoined" => {
                self.rejoined.push(arg["channels"].as_array().unwrap().iter().map(|c| c.as_i64().unwrap()).collect());
            }
            _ => {}
        }
    }

    fn show(&mut self, channel: i64, seq: i64, message: &Value) {
        let cmid = message["clientMsgId"].as_str().unwrap_or_default().to_owned();
        self.shown.entry((channel, seq)).or_insert(cmid);
    }

    /// Whether the transport is open (after taking what has arrived).
    pub fn is_connected(&mut self) -> bool {
        self.drain()
    }

    /// Drops the connection without a goodbye (the client goes away).
    pub fn go_away(&mut self) {
        self.drain();
        self.socket = None;
    }

    /// Sends a new message with its clientMsgId and reports how it ended, whatever
    /// that was; an acked one is held (the sender is not sent its own message).
    pub async fn try_send(&mut self, channel: i64, content: &str, client_msg_id: &str, wait: Duration) -> Sent {
        let Some(socket) = self.socket.as_ref() else { return Sent::NoAck("not connected".into()) };
        let event =
            json!({ "chatType": "new", "channelId": channel, "content": content, "clientMsgId": client_msg_id });
        let ack = socket.emit_with_ack("chat", event, wait).await;
        self.sent(channel, ack)
    }

    /// How a send to `channel` ended, from its ack; an acked message is held.
    fn sent(&mut self, channel: i64, ack: Result<Value, ClientError>) -> Sent {
        match ack {
            Err(e) => Sent::NoAck(e.to_string()),
            Ok(ack) if ack["written"] == true => {
                let seq = ack["chatInfo"]["eventSeq"].as_i64().unwrap();
                self.seen.entry(channel).or_default().insert(seq);
                self.show(channel, seq, &ack["chatInfo"]);
                Sent::Acked(seq)
            }
            Ok(ack) => Sent::Refused(ack["error"]["code"].as_str().unwrap_or("?").to_owned()),
        }
    }

    /// Sends the messages `(content, clientMsgId)` of `burst` to `channel` pipelined
    /// (all emitted before any ack is awaited); how each ended, in order.
    pub async fn burst(&mut self, channel: i64, burst: &[(String, String)], wait: Duration) -> Vec<Sent> {
        let Some(socket) = self.socket.as_ref() else {
            return burst.iter().map(|_| Sent::NoAck("not connected".into())).collect();
        };
        let mut pending = Vec::new();
        for (content, cmid) in burst {
            let event = json!({ "chatType": "new", "channelId": channel, "content": content, "clientMsgId": cmid });
            pending.push(socket.emit_with_ack_deferred("chat", event).await);
        }
        let mut out = Vec::new();
        for ack in pending {
            let ack = match ack {
                Ok(future) => future.wait(wait).await,
                Err(e) => Err(e),
            };
            out.push(self.sent(channel, ack));
        }
        out
    }

    /// Takes what has arrived; false if the transport closed.
    pub fn drain(&mut self) -> bool {
        let Some(socket) = self.socket.as_mut() else { return false };
        let items = socket.drain();
        let mut open = socket.is_open();
        for item in items {
            match item {
                Incoming::Event { name, args } => self.absorb(&name, args.into_iter().next().unwrap_or(Value::Null)),
                Incoming::Disconnect | Incoming::Closed => open = false,
            }
        }
        open
    }

    /// Sends a new message with its clientMsgId; the acked eventSeq, or the error
    /// (the caller reconnects and sends again with the same clientMsgId).
    pub async fn send(&mut self, channel: i64, content: &str, client_msg_id: &str) -> Result<i64, ClientError> {
        let Some(socket) = self.socket.as_ref() else { return Err(ClientError::Closed) };
        let ack = socket
            .emit_with_ack(
                "chat",
                json!({ "chatType": "new", "channelId": channel, "content": content, "clientMsgId": client_msg_id }),
                WAIT,
            )
            .await?;
        assert_eq!(ack["written"], true, "{ack}");
        // The sender is not sent its own message: the ack is how it holds it.
        let seq = ack["chatInfo"]["eventSeq"].as_i64().unwrap();
        self.seen.entry(channel).or_default().insert(seq);
        self.show(channel, seq, &ack["chatInfo"]);
        Ok(seq)
    }

    /// Until every channel is held without holes up to `expected`: takes events,
    /// and when `position` (or a quiet second) shows a hole, fills it from history.
    pub async fn settle(&mut self, expected: &BTreeMap<i64, i64>) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut quiet_since = Instant::now();
        loop {
            let before = self.received_raw;
            if !self.drain() {
                panic!("{}'s transport closed while settling", self.user.username);
            }
            if self.received_raw != before {
                quiet_since = Instant::now();
            }
            let behind: Vec<i64> =
                expected.iter().filter(|(c, last)| self.contiguous(**c) < **last).map(|(c, _)| *c).collect();
            if behind.is_empty() {
                return;
            }
            assert!(Instant::now() < deadline, "{} still behind in {behind:?} after 30 s", self.user.username);
            for channel in behind {
                let told = self.announced.get(&channel).is_some_and(|a| *a > self.contiguous(channel));
                if told || quiet_since.elapsed() > Duration::from_secs(1) {
                    self.fill_from_history(channel).await;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn fill_from_history(&mut self, channel: i64) {
        let since = self.contiguous(channel);
        let page = self
            .socket()
            .emit_with_ack("history", json!({ "channelId": channel, "since": since, "limit": 200 }), WAIT)
            .await
            .unwrap();
        for m in page["messages"].as_array().unwrap() {
            let seq = m["eventSeq"].as_i64().unwrap();
            if self.seen.entry(channel).or_default().insert(seq) {
                self.filled_from_history += 1;
            }
            self.show(channel, seq, m);
        }
    }
}
