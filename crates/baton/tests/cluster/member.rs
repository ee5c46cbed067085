//! A chat member as a careful client behaves: it keeps the eventSeqs it has per
//! channel (dropping ones it already has), reconnects with `since` set to what it
//! holds without a hole, and fills gaps from `history` when `position` (or silence)
//! says it is behind. It counts what it received before dedupe, so the tests can
//! report raw duplicates.

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
        let started = Instant::now();
        let since: serde_json::Map<String, Value> =
            self.channels.iter().map(|c| (c.to_string(), json!(self.contiguous(*c)))).collect();
        let auth = json!({ "token": self.user.token, "since": since });
        let socket = Socket::connect(base, &format!("/socket/commu-{}", self.cid), auth).await?;
        self.base = base.to_owned();
        self.socket = Some(socket);
        loop {
            match self.socket.as_mut().unwrap().next(WAIT).await? {
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
                if !self.seen.entry(channel).or_default().insert(seq) {
                    self.duplicates += 1;
                }
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
            if self.seen.entry(channel).or_default().insert(m["eventSeq"].as_i64().unwrap()) {
                self.filled_from_history += 1;
            }
        }
    }
}
