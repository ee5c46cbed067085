//! The fault scenarios of issue 13 ("faults answered in bounded time"): Redis and
//! PostgreSQL refused, blackholed, slowed, stopped or their connections silently
//! dropped (for the whole cluster or one instance), an instance started while they
//! are out of reach, a slow consumer, a pub/sub overflow, a crash loop, an instance
//! frozen past the dead-instance delay and an expired token, each under traffic
//! from members on several instances. The network faults go through the
//! per-instance proxies of `proxy.rs`.
//!
//! [`Traffic`] owns the members and every send they made; [`Traffic::check`] is the
//! checker every scenario ends with. Its invariant, checked against every member's
//! log and the database: every acked write is stored once, at its acked eventSeq; a
//! send that was refused or got no ack is resent with the same clientMsgId and is
//! then stored exactly once; each channel's eventSeqs in the database are 1..lastSeq
//! without a gap; after recovery every member holds every eventSeq of its channels
//! and shows at each one the message the database has there; no member received an
//! event of a channel it is not in; every `rejoined` named all the member's channels;
//! presence lists exactly the users connected. Each scenario prints one
//! `fault <name> figures:` line; the only timing asserted is "answered within its
//! deadline", besides bounds on recovery (30 s) that only a fault never recovered
//! from can miss.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::common::{Community, Rest, WAIT};
use crate::harness::{Cluster, Options};
use crate::member::{Member, Sent};
use crate::percentile;
use crate::proxy::Mode;

/// The fault length the scenarios aim at (the machine is shared: short).
const FAULT: Duration = Duration::from_secs(3);

/// One send as a member made it.
#[derive(Debug)]
struct SendLog {
    member: usize,
    channel: i64,
    cmid: String,
    /// How long until it was answered (or given up on).
    took: Duration,
    first: Sent,
    during_fault: bool,
    /// The eventSeq it was stored at, once acked (first time or on a resend).
    stored_at: Option<i64>,
}

/// Members chatting in a community's two channels from several instances, with the
/// log of every send. A third (private) channel, the owner's alone, gets REST posts:
/// no member may ever receive one of its events.
pub struct Traffic {
    pub c: Community,
    pub side: i64,
    pub members: Vec<Member>,
    /// Each member's instance of choice (the "load balancer" tries it first).
    pub homes: Vec<usize>,
    pub bases: Vec<String>,
    /// The instance REST reads and the side posts go through.
    pub rest_via: usize,
    sends: Vec<SendLog>,
    round: usize,
    probes: usize,
    pub reconnects: usize,
    pub during_fault: bool,
    /// Users other than the members with a socket in the channels' rooms (the
    /// checker's presence check expects them too).
    pub also_online: Vec<i64>,
}

/// What the checker found (everything it asserts held).
pub struct Report {
    pub acked: usize,
    pub unanswered_then_resent: usize,
    pub refused_then_resent: usize,
    pub written_though_unacked: usize,
    pub lost: usize,
    pub raw_duplicates: usize,
    pub filled_from_history: usize,
    pub ack_p50: Duration,
    pub ack_p99: Duration,
    pub answered_during_fault: usize,
    pub refused_during_fault: usize,
    pub reconnects: usize,
    /// How long after the other checks presence listed exactly the connected users.
    pub presence_right_after: Duration,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "acked {}, lost {}, raw duplicates {}, ack p50/p99 during the fault {:?}/{:?} ({} answered, {} refused), \
             resent {} unanswered + {} refused ({} had been written), filled from history {}, reconnects {}, \
             presence right {:?} after the other checks",
            self.acked,
            self.lost,
            self.raw_duplicates,
            self.ack_p50,
            self.ack_p99,
            self.answered_during_fault,
            self.refused_during_fault,
            self.unanswered_then_resent,
            self.refused_then_resent,
            self.written_though_unacked,
            self.filled_from_history,
            self.reconnects,
            self.presence_right_after,
        )
    }
}

impl Traffic {
    /// `members` members, member i on instance `i % instances`, all in two channels.
    pub async fn start(cluster: &Cluster, members: usize) -> Traffic {
        let homes = (0..members).map(|i| i % cluster.instances.len()).collect();
        Self::start_on(cluster, homes).await
    }

    pub async fn start_on(cluster: &Cluster, homes: Vec<usize>) -> Traffic {
        let bases: Vec<String> = cluster.instances.iter().map(|i| i.base.clone()).collect();
        let rest_via = bases.len() - 1;
        let rest = Rest::new(bases[rest_via].clone());
        let c = rest.populated_community(homes.len(), 2).await;
        let side = rest.channel(c.cid, &c.owner, "side", true, &[]).await;
        let mut members = Vec::new();
        for (user, home) in c.users.iter().zip(&homes) {
            members.push(Member::join(&bases[*home], c.cid, user.clone(), &c.channels).await);
        }
        Traffic {
            c,
            side,
            members,
            homes,
            bases,
            rest_via,
            sends: Vec::new(),
            round: 0,
            probes: 0,
            reconnects: 0,
            during_fault: false,
            also_online: Vec::new(),
        }
    }

    pub fn rest(&self) -> Rest {
        Rest::new(self.bases[self.rest_via].clone())
    }

    /// One attempt per instance, the member's home first; a refused `unauthorized`
    /// logs in again. False if no instance took it.
    pub async fn reconnect_once(&mut self, i: usize) -> bool {
        let ok = reconnect_member(&mut self.members[i], &self.bases, self.homes[i], self.rest_via).await;
        self.reconnects += ok as usize;
        ok
    }

    /// Reconnects member `i` (bounded: 30 s).
    pub async fn reconnect(&mut self, i: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.reconnect_once(i).await {
            assert!(Instant::now() < deadline, "{} could not reconnect in 30 s", self.members[i].user.username);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn login_again(&mut self, i: usize) {
        let token = self.rest().login(&self.members[i].user.username).await;
        self.members[i].user.token = token;
    }

    /// Every member sends one message, all at once (each reconnecting first if its
    /// transport closed), and the owner posts to the side channel over REST.
    pub async fn round(&mut self) {
        let round = self.round;
        self.round += 1;
        let Traffic { members, bases, homes, rest_via, c, during_fault, .. } = self;
        let sends = members.iter_mut().enumerate().map(|(i, m)| {
            let (bases, home, rest_via) = (&*bases, homes[i], *rest_via);
            let channel = c.channels[(round + i) % 2];
            let cmid = format!("m{i}-{round}");
            let during_fault = *during_fault;
            async move {
                let mut reconnected = false;
                if !m.is_connected() {
                    if !reconnect_member(m, bases, home, rest_via).await {
                        let first = Sent::NoAck("not connected".into());
                        let log = SendLog {
                            member: i,
                            channel,
                            cmid,
                            took: Duration::ZERO,
                            first,
                            during_fault,
                            stored_at: None,
                        };
                        return (log, false);
                    }
                    reconnected = true;
                }
                let started = Instant::now();
                let first = m.try_send(channel, &format!("content of {cmid}"), &cmid, WAIT).await;
                let stored_at = if let Sent::Acked(seq) = first { Some(seq) } else { None };
                (
                    SendLog { member: i, channel, cmid, took: started.elapsed(), first, during_fault, stored_at },
                    reconnected,
                )
            }
        });
        let side = async {
            let client = reqwest::Client::builder().timeout(WAIT).build().unwrap();
            let _ = client
                .post(format!("{}/api/channels/{}/messages", bases[*rest_via], self.side))
                .bearer_auth(&c.owner.token)
                .json(&json!({ "content": format!("side {round}"), "clientMsgId": format!("side-{round}") }))
                .send()
                .await;
        };
        let (logs, ()) = tokio::join!(futures::future::join_all(sends), side);
        for (log, reconnected) in logs {
            self.reconnects += reconnected as usize;
            self.sends.push(log);
        }
    }

    async fn send(&mut self, i: usize, channel: i64, cmid: &str) -> Sent {
        let started = Instant::now();
        let sent = self.members[i].try_send(channel, &format!("content of {cmid}"), cmid, WAIT).await;
        let stored_at = match sent {
            Sent::Acked(seq) => Some(seq),
            _ => None,
        };
        self.sends.push(SendLog {
            member: i,
            channel,
            cmid: cmid.to_owned(),
            took: started.elapsed(),
            first: sent.clone(),
            during_fault: self.during_fault,
            stored_at,
        });
        sent
    }

    /// Members `senders` each send `n` messages of `size` characters to one channel,
    /// pipelined, all at once.
    pub async fn burst(&mut self, senders: &[usize], n: usize, size: usize) {
        let round = self.round;
        self.round += 1;
        let during_fault = self.during_fault;
        let channel = self.c.channels[round % 2];
        let started = Instant::now();
        let bursts = self.members.iter_mut().enumerate().filter(|(i, _)| senders.contains(i)).map(|(i, m)| {
            let messages: Vec<(String, String)> = (0..n)
                .map(|k| {
                    let cmid = format!("m{i}-{round}-{k}");
                    (format!("{cmid} {}", "x".repeat(size)), cmid)
                })
                .collect();
            async move {
                let sent = m.burst(channel, &messages, WAIT).await;
                (i, messages, sent)
            }
        });
        for (i, messages, sent) in futures::future::join_all(bursts).await {
            for ((_, cmid), first) in messages.into_iter().zip(sent) {
                let stored_at = if let Sent::Acked(seq) = first { Some(seq) } else { None };
                self.sends.push(SendLog {
                    member: i,
                    channel,
                    cmid,
                    took: started.elapsed(),
                    first,
                    during_fault,
                    stored_at,
                });
            }
        }
    }

    pub async fn rounds(&mut self, n: usize) {
        for _ in 0..n {
            self.round().await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Rounds until `at_least` has passed and `done` holds, or `at_most` has passed.
    pub async fn rounds_while(&mut self, at_least: Duration, at_most: Duration, done: impl Fn() -> bool) {
        let started = Instant::now();
        while started.elapsed() < at_most && (started.elapsed() < at_least || !done()) {
            self.round().await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The fault's sends count as before it from now on (a scenario with phases).
    pub fn forget_fault(&mut self) {
        for s in &mut self.sends {
            s.during_fault = false;
        }
    }

    /// The sends answered during the fault, with how long each took.
    fn fault_sends(&self) -> impl Iterator<Item = &SendLog> {
        self.sends.iter().filter(|s| s.during_fault)
    }

    /// Asserts every send of `members` made during the fault was answered (acked or
    /// refused) within `deadline`.
    pub fn assert_answered_within(&self, members: &[usize], deadline: Duration) -> Duration {
        let mut slowest = Duration::ZERO;
        for s in self.fault_sends().filter(|s| members.contains(&s.member)) {
            if matches!(&s.first, Sent::NoAck(why) if why == "not connected") {
                continue;
            }
            assert!(
                !matches!(s.first, Sent::NoAck(_)) && s.took < deadline,
                "{} from member {} was answered {:?} after {:?} (deadline {deadline:?})",
                s.cmid,
                s.member,
                s.first,
                s.took
            );
            slowest = slowest.max(s.took);
        }
        slowest
    }

    /// The refusal codes of the fault's sends from `members`.
    pub fn fault_refusals(&self, members: &[usize]) -> BTreeMap<String, usize> {
        let mut codes = BTreeMap::new();
        for s in self.fault_sends().filter(|s| members.contains(&s.member)) {
            if let Sent::Refused(code) = &s.first {
                *codes.entry(code.clone()).or_default() += 1;
            }
        }
        codes
    }

    /// Member `from` sends probes until one reaches member `to` live (both on
    /// different instances); the time from `since`. Bounded: 30 s.
    pub async fn delivery_resumed(&mut self, from: usize, to: usize, since: Instant) -> Duration {
        assert_ne!(self.members[from].base, self.members[to].base, "a cross-instance probe");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            assert!(Instant::now() < deadline, "cross-instance delivery did not resume within 30 s");
            if !self.members[from].is_connected() {
                self.reconnect(from).await;
            }
            if !self.members[to].is_connected() {
                self.reconnect(to).await;
            }
            let channel = self.c.channels[0];
            let cmid = format!("probe-{}", self.probes);
            self.probes += 1;
            let Sent::Acked(seq) = self.send(from, channel, &cmid).await else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let until = Instant::now() + Duration::from_millis(300);
            while Instant::now() < until {
                // Only a live event counts: the member does not read history here.
                if self.members[to].is_connected() && self.members[to].seen[&channel].contains(&seq) {
                    return since.elapsed();
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }

    /// Every message of `channel` in the database: eventSeq -> clientMsgId, and its lastSeq.
    async fn stored(&self, channel: i64) -> (BTreeMap<i64, String>, i64) {
        let rest = self.rest();
        let mut out = BTreeMap::new();
        let mut since = 0;
        loop {
            let (status, page) = rest
                .get(&format!("/api/channels/{channel}/messages?since={since}&limit=200"), &self.c.owner.token)
                .await;
            assert_eq!(status, 200, "history of {channel}: {page}");
            for m in page["messages"].as_array().unwrap() {
                let seq = m["eventSeq"].as_i64().unwrap();
                let cmid = m["clientMsgId"].as_str().unwrap_or_default().to_owned();
                assert!(out.insert(seq, cmid).is_none(), "eventSeq {seq} twice in the history of {channel}");
                since = seq;
            }
            if page["hasMore"] != true {
                return (out, page["lastSeq"].as_i64().unwrap());
            }
        }
    }

    async fn stored_all(&self) -> BTreeMap<i64, (BTreeMap<i64, String>, i64)> {
        let mut all = BTreeMap::new();
        for ch in self.c.channels.iter().copied().chain([self.side]) {
            all.insert(ch, self.stored(ch).await);
        }
        all
    }

    /// The checker (see the module doc). Run once the fault is over.
    pub async fn check(&mut self) -> Report {
        // The owner's token may have expired (a short token TTL).
        self.c.owner.token = self.rest().login(&self.c.owner.username).await;
        for i in 0..self.members.len() {
            if !self.members[i].is_connected() {
                self.reconnect(i).await;
            }
        }
        // Unanswered and refused sends: were they written anyway? Then resend each
        // with its clientMsgId until it is acked.
        let before = self.stored_all().await;
        let where_stored = |all: &BTreeMap<i64, (BTreeMap<i64, String>, i64)>, ch: i64, cmid: &str| {
            all[&ch].0.iter().filter(|(_, c)| c.as_str() == cmid).map(|(s, _)| *s).collect::<Vec<i64>>()
        };
        let mut written_though_unacked = 0;
        let (mut unanswered, mut refused) = (0, 0);
        for k in 0..self.sends.len() {
            if self.sends[k].stored_at.is_some() {
                continue;
            }
            let (i, channel, cmid) = (self.sends[k].member, self.sends[k].channel, self.sends[k].cmid.clone());
            match self.sends[k].first {
                Sent::Refused(_) => refused += 1,
                _ => unanswered += 1,
            }
            let already = where_stored(&before, channel, &cmid);
            assert!(already.len() <= 1, "{cmid} stored {} times: {already:?}", already.len());
            written_though_unacked += already.len();
            let deadline = Instant::now() + Duration::from_secs(30);
            let seq = loop {
                if !self.members[i].is_connected() {
                    self.reconnect(i).await;
                }
                let content = format!("content of {cmid}");
                match self.members[i].try_send(channel, &content, &cmid, WAIT).await {
                    Sent::Acked(seq) => break seq,
                    other => {
                        assert!(Instant::now() < deadline, "the resend of {cmid} is not acked after 30 s: {other:?}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            };
            if let Some(first) = already.first() {
                assert_eq!(seq, *first, "the resend of {cmid}, already written, acks the stored one");
            }
            self.sends[k].stored_at = Some(seq);
        }
        let stored = self.stored_all().await;
        // Gap-free eventSeqs; every clientMsgId once; every ack where it said.
        let mut cmids = BTreeSet::new();
        for (ch, (messages, last)) in &stored {
            let seqs: Vec<i64> = messages.keys().copied().collect();
            assert_eq!(seqs, (1..=*last).collect::<Vec<_>>(), "channel {ch}'s eventSeqs are 1..lastSeq");
            for cmid in messages.values() {
                assert!(cmids.insert(cmid.clone()), "clientMsgId {cmid} stored twice");
            }
        }
        for s in &self.sends {
            let seq = s.stored_at.unwrap();
            assert_eq!(
                stored[&s.channel].0.get(&seq).map(String::as_str),
                Some(s.cmid.as_str()),
                "{} acked at eventSeq {seq} of {}",
                s.cmid,
                s.channel
            );
        }
        let attempted: BTreeSet<&str> = self.sends.iter().map(|s| s.cmid.as_str()).collect();
        let member_messages: usize = self.c.channels.iter().map(|ch| stored[ch].0.len()).sum();
        assert_eq!(member_messages, attempted.len(), "every send stored once, nothing else in the members' channels");
        // Every member holds everything and shows what the database has.
        let expected: BTreeMap<i64, i64> = self.c.channels.iter().map(|ch| (*ch, stored[ch].1)).collect();
        for i in 0..self.members.len() {
            if !self.members[i].is_connected() {
                self.reconnect(i).await;
            }
            self.members[i].settle(&expected).await;
        }
        let mut lost = 0;
        for m in &self.members {
            for (ch, last) in &expected {
                let missing: Vec<i64> = (1..=*last).filter(|s| !m.seen[ch].contains(s)).collect();
                lost += missing.len();
                assert!(missing.is_empty(), "{} misses {missing:?} in channel {ch}", m.user.username);
                for seq in 1..=*last {
                    assert_eq!(
                        m.shown.get(&(*ch, seq)),
                        stored[ch].0.get(&seq),
                        "{} shows at eventSeq {seq} of {ch} what the database has",
                        m.user.username
                    );
                }
            }
            assert_eq!(m.foreign, 0, "{} received events of a channel it is not in", m.user.username);
            let mut mine = m.channels.clone();
            mine.sort();
            for r in &m.rejoined {
                assert_eq!(r, &mine, "{}'s rooms were restored", m.user.username);
            }
        }
        // Presence: exactly the users with a socket in the room (all the members, and
        // whoever else the scenario keeps connected), once the cluster has settled.
        let mut online: Vec<i64> =
            self.members.iter().map(|m| m.user.id).chain(self.also_online.iter().copied()).collect();
        online.sort();
        online.dedup();
        let started = Instant::now();
        for ch in self.c.channels.clone() {
            let rest = self.rest();
            let path = format!("/api/channels/{ch}/presence");
            let mut last = json!(null);
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let (status, body) = rest.get(&path, &self.c.owner.token).await;
                let mut listed: Vec<i64> =
                    body["online"].as_array().into_iter().flatten().filter_map(|u| u.as_i64()).collect();
                listed.sort();
                if status == 200 && listed == online {
                    break;
                }
                last = body;
                assert!(Instant::now() < deadline, "presence of {ch} is {last}, not {online:?}, after 30 s");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let _ = last;
        }
        let presence_right_after = started.elapsed();
        let mut times: Vec<Duration> =
            self.fault_sends().filter(|s| !matches!(s.first, Sent::NoAck(_))).map(|s| s.took).collect();
        times.sort();
        Report {
            acked: self.sends.len(),
            unanswered_then_resent: unanswered,
            refused_then_resent: refused,
            written_though_unacked,
            lost,
            raw_duplicates: self.members.iter().map(|m| m.duplicates).sum(),
            filled_from_history: self.members.iter().map(|m| m.filled_from_history).sum(),
            ack_p50: percentile(&times, 0.5),
            ack_p99: percentile(&times, 0.99),
            answered_during_fault: times.len(),
            refused_during_fault: self.fault_sends().filter(|s| matches!(s.first, Sent::Refused(_))).count(),
            reconnects: self.reconnects,
            presence_right_after,
        }
    }
}

/// One attempt per instance, `home` first; a refused `unauthorized` logs in again
/// (through instance `rest_via`). False if no instance took the member.
async fn reconnect_member(m: &mut Member, bases: &[String], home: usize, rest_via: usize) -> bool {
    let order = std::iter::once(home).chain((0..bases.len()).filter(|b| *b != home));
    for b in order {
        match m.connect_to(&bases[b]).await {
            Ok(()) => return true,
            Err(baton_client::ClientError::Refused(code)) if code == "unauthorized" => {
                m.user.token = Rest::new(bases[rest_via].clone()).login(&m.user.username).await;
            }
            Err(_) => {}
        }
    }
    false
}

/// One `/readyz` answer: when, which instance, the status (None: no answer within
/// 1 s), how long it took.
#[derive(Clone, Copy)]
struct Probe {
    at: Instant,
    instance: usize,
    status: Option<u16>,
    took: Duration,
}

/// Polls every instance's `/readyz` every 100 ms (each probe bounded by 1 s) for as
/// long as it lives.
pub struct Readyz {
    probes: Arc<Mutex<Vec<Probe>>>,
    task: tokio::task::JoinHandle<()>,
    names: Vec<String>,
}

impl Readyz {
    pub fn watch(cluster: &Cluster) -> Readyz {
        let bases: Vec<String> = cluster.instances.iter().map(|i| i.base.clone()).collect();
        let names = cluster.instances.iter().map(|i| i.name.clone()).collect();
        let probes = Arc::new(Mutex::new(Vec::new()));
        let log = probes.clone();
        let task = tokio::spawn(async move {
            let client = reqwest::Client::builder().timeout(Duration::from_secs(1)).build().unwrap();
            loop {
                for (instance, base) in bases.iter().enumerate() {
                    let at = Instant::now();
                    let status = client.get(format!("{base}/readyz")).send().await.ok().map(|r| r.status().as_u16());
                    log.lock().unwrap().push(Probe { at, instance, status, took: at.elapsed() });
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        Readyz { probes, task, names }
    }

    fn probes(&self) -> Vec<Probe> {
        self.probes.lock().unwrap().clone()
    }

    /// When `instance` first answered `status` at or after `since`.
    pub fn first(&self, instance: usize, status: u16, since: Instant) -> Option<Duration> {
        self.probes()
            .iter()
            .find(|p| p.instance == instance && p.at >= since && p.status == Some(status))
            .map(|p| p.at - since)
    }

    /// The slowest answered probe of `instance` between `from` and `to`.
    pub fn slowest(&self, instance: usize, from: Instant, to: Instant) -> Duration {
        let probes = self.probes();
        let it = probes.iter().filter(|p| p.instance == instance && p.at >= from && p.at <= to && p.status.is_some());
        it.map(|p| p.took).max().unwrap_or_default()
    }

    /// Whether any probe of `instance` in `from..to` answered other than `status`.
    pub fn always(&self, instance: usize, status: u16, from: Instant, to: Instant) -> bool {
        self.probes()
            .iter()
            .filter(|p| p.instance == instance && p.at >= from && p.at <= to)
            .all(|p| p.status == Some(status))
    }

    /// What each instance said between the fault and the heal (how many probes got
    /// 200, 503, or no answer within 1 s; when the first 503 came; the slowest
    /// answer), and how long after the heal it said 200 again.
    pub fn summary(&self, fault: Instant, healed: Instant) -> String {
        let probes = self.probes();
        let mut parts = Vec::new();
        for (i, name) in self.names.iter().enumerate() {
            let during: Vec<&Probe> =
                probes.iter().filter(|p| p.instance == i && p.at >= fault && p.at <= healed).collect();
            let count = |status: Option<u16>| during.iter().filter(|p| p.status == status).count();
            let (ok, unready, silent) = (count(Some(200)), count(Some(503)), count(None));
            let slowest = self.slowest(i, fault, healed);
            let mut said = format!("{name} 200 x{ok}, 503 x{unready}, no answer x{silent}");
            if let Some(d) = self.first(i, 503, fault).filter(|d| fault + *d <= healed) {
                said.push_str(&format!(", first 503 after {d:?}"));
            }
            if unready + silent > 0 {
                match self.first(i, 200, healed) {
                    Some(up) => said.push_str(&format!(", 200 again {up:?} after the heal")),
                    None => said.push_str(", not 200 again yet"),
                }
            }
            said.push_str(&format!(" (slowest answer {slowest:?})"));
            parts.push(said);
        }
        parts.join("; ")
    }
}

impl Drop for Readyz {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Sets every instance's proxy for `service` ("redis" or "postgres") to `mode`.
fn set_all(cluster: &Cluster, service: &str, mode: Mode) {
    for i in 0..cluster.instances.len() {
        set_one(cluster, i, service, mode);
    }
}

fn set_one(cluster: &Cluster, i: usize, service: &str, mode: Mode) {
    let instance = &cluster.instances[i];
    let proxy = match service {
        "redis" => instance.redis_proxy.as_ref(),
        _ => instance.postgres_proxy.as_ref(),
    };
    proxy.expect("the cluster was started with this proxy").set(mode);
}

fn proxied(redis: bool, postgres: bool, env: &[(&'static str, &str)]) -> Options {
    Options {
        proxy_redis: redis,
        proxy_postgres: postgres,
        env: env.iter().map(|(k, v)| (*k, v.to_string())).collect(),
        ..Options::default()
    }
}

/// Redis out of reach of every instance for a few seconds (`mode`: refused or
/// blackholed): sends are acked throughout, /readyz says 503, and once Redis is
/// back cross-instance delivery resumes and the checker finds nothing lost.
async fn redis_out_of_reach_of_every_instance(name: &str, mode: Mode) {
    let cluster = Cluster::start_with(2, proxied(true, false, &[])).await;
    let mut t = Traffic::start(&cluster, 4).await;
    let readyz = Readyz::watch(&cluster);
    t.rounds(3).await;
    let fault = Instant::now();
    set_all(&cluster, "redis", mode);
    t.during_fault = true;
    t.rounds_while(FAULT, FAULT * 4, || (0..2).all(|i| readyz.first(i, 503, fault).is_some())).await;
    t.during_fault = false;
    for i in 0..2 {
        assert!(readyz.first(i, 503, fault).is_some(), "baton-{i}'s /readyz said 503 while Redis was out of reach");
    }
    let refusals = t.fault_refusals(&[0, 1, 2, 3]);
    assert!(refusals.is_empty(), "sends are acked whatever Redis does: {refusals:?}");
    let accepted: Vec<usize> = cluster.instances.iter().map(|i| i.redis_proxy.as_ref().unwrap().accepted()).collect();
    set_all(&cluster, "redis", Mode::Pass);
    let healed = Instant::now();
    let resumed = t.delivery_resumed(0, 1, healed).await;
    t.rounds(3).await;
    let report = t.check().await;
    println!(
        "fault {name} figures: {report}, cross-instance delivery resumed after {resumed:?}, /readyz said {} \
         (connections to Redis opened by then, per instance: {accepted:?})",
        readyz.summary(fault, healed)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_redis_refused_for_every_instance() {
    redis_out_of_reach_of_every_instance("redis refused", Mode::Refuse).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_redis_blackholed_for_every_instance() {
    redis_out_of_reach_of_every_instance("redis blackholed", Mode::Blackhole).await;
}

/// Redis slow for every instance (each chunk delayed through the proxies): a
/// little (the round trip under `--redis-timeout`), then a lot (over it). Sends are
/// acked throughout; once Redis is fast again, nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_redis_slow() {
    let cluster = Cluster::start_with(2, proxied(true, false, &[])).await;
    let mut t = Traffic::start(&cluster, 4).await;
    let readyz = Readyz::watch(&cluster);
    t.rounds(2).await;
    for delay in [Duration::from_millis(100), Duration::from_millis(300)] {
        let fault = Instant::now();
        set_all(&cluster, "redis", Mode::Delay(delay));
        t.during_fault = true;
        t.rounds_while(FAULT, FAULT, || true).await;
        // Under the timeout (500 ms), Redis is slow but up: broadcasts cross.
        let during = if delay * 2 < Duration::from_millis(500) {
            Some(t.delivery_resumed(0, 1, Instant::now()).await)
        } else {
            None
        };
        t.during_fault = false;
        let refusals = t.fault_refusals(&[0, 1, 2, 3]);
        assert!(refusals.is_empty(), "sends are acked whatever Redis does: {refusals:?}");
        let slowest = t.assert_answered_within(&[0, 1, 2, 3], WAIT);
        set_all(&cluster, "redis", Mode::Pass);
        let healed = Instant::now();
        let resumed = t.delivery_resumed(0, 1, healed).await;
        t.rounds(2).await;
        let report = t.check().await;
        println!(
            "fault redis slow ({delay:?} a chunk each way) figures: {report}, slowest answer {slowest:?}, a \
             cross-instance probe during the fault arrived within {during:?}, cross-instance delivery after the heal \
             within {resumed:?}, /readyz said {}",
            readyz.summary(fault, healed)
        );
        t.forget_fault();
    }
}

/// One instance cut from Redis (refused, then later blackholed) while the other two
/// keep working: their members keep delivering to each other live; the cut
/// instance's members are acked and, once it is back, hold everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_one_instance_cut_from_redis() {
    let cluster = Cluster::start_with(3, proxied(true, false, &[])).await;
    let mut t = Traffic::start(&cluster, 6).await;
    let readyz = Readyz::watch(&cluster);
    t.rounds(2).await;
    for (name, mode) in
        [("one instance refused by redis", Mode::Refuse), ("one instance blackholed from redis", Mode::Blackhole)]
    {
        let fault = Instant::now();
        set_one(&cluster, 0, "redis", mode);
        t.during_fault = true;
        t.rounds_while(FAULT, FAULT * 4, || readyz.first(0, 503, fault).is_some()).await;
        assert!(readyz.first(0, 503, fault).is_some(), "the cut instance's /readyz said 503");
        // Members 1 and 2 are on the two instances that still reach Redis.
        let between_others = t.delivery_resumed(1, 2, Instant::now()).await;
        // A client of the cut instance reconnects to it: served, with its rooms (the
        // checker sees its `rejoined`) and what it missed.
        t.members[3].go_away();
        let started = Instant::now();
        let base = cluster.base(0).to_owned();
        t.members[3].connect_to(&base).await.expect("a reconnect to the cut instance is served");
        let reconnect_took = started.elapsed();
        t.during_fault = false;
        let refusals = t.fault_refusals(&[0, 1, 2, 3, 4, 5]);
        assert!(refusals.is_empty(), "sends are acked whatever Redis does: {refusals:?}");
        let others_ready = (1..3).all(|i| readyz.always(i, 200, fault, Instant::now()));
        set_one(&cluster, 0, "redis", Mode::Pass);
        let healed = Instant::now();
        let resumed = t.delivery_resumed(0, 1, healed).await;
        t.rounds(2).await;
        let report = t.check().await;
        println!(
            "fault {name} figures: {report}, live delivery between the other instances during the fault within \
             {between_others:?}, a reconnect to the cut instance recovered in {reconnect_took:?}, cross-instance \
             delivery to and from the cut instance resumed after {resumed:?}, \
             /readyz said {} (the others 200 throughout: {others_ready})",
            readyz.summary(fault, healed)
        );
        t.forget_fault();
    }
}

/// PostgreSQL slow for every instance (each chunk delayed through the proxy, a
/// little then a lot): every send is answered, acked or `unavailable`, within a
/// bound (a chat is a few uses of the database, each bounded by the 1 s deadline);
/// the refused are resent with their clientMsgId and stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_postgres_slow() {
    let cluster = Cluster::start_with(2, proxied(false, true, &[("BATON_DB_TIMEOUT", "1s")])).await;
    let mut t = Traffic::start(&cluster, 4).await;
    let readyz = Readyz::watch(&cluster);
    t.rounds(2).await;
    for delay in [Duration::from_millis(30), Duration::from_millis(45), Duration::from_millis(150)] {
        let fault = Instant::now();
        set_all(&cluster, "postgres", Mode::Delay(delay));
        t.during_fault = true;
        t.rounds_while(FAULT, FAULT, || true).await;
        // A reconnect with `since` (admission and replay read the database) is
        // answered too: recovered, or refused.
        t.members[3].go_away();
        let started = Instant::now();
        let base = cluster.base(1).to_owned();
        let reconnect = t.members[3].connect_within(&base, Duration::from_secs(10)).await;
        let reconnect_took = started.elapsed();
        assert!(
            matches!(&reconnect, Ok(()) | Err(baton_client::ClientError::Refused(_))),
            "a reconnect while the database is slow is answered: {reconnect:?} after {reconnect_took:?}"
        );
        t.during_fault = false;
        set_all(&cluster, "postgres", Mode::Pass);
        let healed = Instant::now();
        // Each send is one request: answered within the 1 s deadline (and the round
        // trips around it), however many queries it waits on.
        let slowest = t.assert_answered_within(&[0, 1, 2, 3], Duration::from_millis(2500));
        let refusals = t.fault_refusals(&[0, 1, 2, 3]);
        assert!(refusals.keys().all(|c| c == "unavailable"), "{refusals:?}");
        let resumed = t.delivery_resumed(0, 1, healed).await;
        t.rounds(2).await;
        let report = t.check().await;
        println!(
            "fault postgres slow ({delay:?} a chunk each way) figures: {report}, slowest answer {slowest:?}, \
             refusals {refusals:?}, a reconnect with since {} in {reconnect_took:?}, cross-instance delivery resumed \
             after {resumed:?}, /readyz said {}",
            match &reconnect {
                Ok(()) => "recovered".to_owned(),
                Err(e) => e.to_string(),
            },
            readyz.summary(fault, healed)
        );
        t.forget_fault();
    }
}

/// The cluster's PostgreSQL stopped (an `OwnPostgres`, `-m immediate`) for a few
/// seconds: sends are answered `unavailable` within the deadline, every /readyz
/// says 503, and after the restart everything is stored once and delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_postgres_down_for_the_cluster() {
    let mut options = proxied(false, false, &[("BATON_DB_TIMEOUT", "1s")]);
    options.own_postgres = true;
    let cluster = Cluster::start_with(2, options).await;
    let mut t = Traffic::start(&cluster, 4).await;
    let readyz = Readyz::watch(&cluster);
    t.rounds(2).await;
    let pg = cluster.own_postgres.as_ref().unwrap();
    pg.stop().await;
    let fault = Instant::now();
    t.during_fault = true;
    t.rounds_while(FAULT, FAULT * 4, || (0..2).all(|i| readyz.first(i, 503, fault).is_some())).await;
    t.during_fault = false;
    for i in 0..2 {
        assert!(readyz.first(i, 503, fault).is_some(), "baton-{i}'s /readyz said 503 while the database was down");
        let slowest = readyz.slowest(i, fault, Instant::now());
        assert!(slowest < Duration::from_secs(1), "baton-{i}'s /readyz answered within 1 s: {slowest:?}");
    }
    let slowest = t.assert_answered_within(&[0, 1, 2, 3], Duration::from_millis(2500));
    let refusals = t.fault_refusals(&[0, 1, 2, 3]);
    assert!(refusals.keys().all(|c| c == "unavailable"), "{refusals:?}");
    pg.start_again().await;
    let healed = Instant::now();
    let resumed = t.delivery_resumed(0, 1, healed).await;
    t.rounds(2).await;
    let report = t.check().await;
    println!(
        "fault postgres down figures: {report}, slowest answer {slowest:?}, refusals {refusals:?}, chat and \
         cross-instance delivery back after {resumed:?}, /readyz said {}",
        readyz.summary(fault, healed)
    );
}

/// One instance's PostgreSQL blackholed (a silent partition), later refused (reset
/// connections): its members' sends are answered `unavailable` within the deadline
/// (1 s), and so are a new connect and a REST read; its /readyz says 503 with every
/// probe answered within 1 s; the other instance goes on; and the cut one recovers
/// when the network does, without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_one_instance_cut_from_postgres() {
    let cluster = Cluster::start_with(2, proxied(false, true, &[("BATON_DB_TIMEOUT", "1s")])).await;
    let mut t = Traffic::start(&cluster, 4).await;
    let readyz = Readyz::watch(&cluster);
    t.rounds(2).await;
    for (name, mode) in [("blackholed", Mode::Blackhole), ("refused", Mode::Refuse)] {
        let fault = Instant::now();
        set_one(&cluster, 0, "postgres", mode);
        t.during_fault = true;
        t.rounds_while(FAULT, FAULT * 4, || readyz.first(0, 503, fault).is_some()).await;
        t.during_fault = false;
        assert!(readyz.first(0, 503, fault).is_some(), "the cut instance's /readyz said 503");
        let probe_slowest = readyz.slowest(0, fault, Instant::now());
        assert!(probe_slowest < Duration::from_secs(1), "every /readyz probe answered within 1 s: {probe_slowest:?}");
        // Members 0 and 2 are on the cut instance, 1 and 3 on the other.
        let cut_slowest = t.assert_answered_within(&[0, 2], Duration::from_millis(2500));
        let refusals_cut = t.fault_refusals(&[0, 2]);
        assert!(refusals_cut.keys().all(|c| c == "unavailable"), "{refusals_cut:?}");
        assert!(refusals_cut.get("unavailable").is_some_and(|n| *n > 0), "the cut instance's sends were refused");
        let refusals_other = t.fault_refusals(&[1, 3]);
        // Still cut: a new connect and a REST read on the cut instance are answered too.
        let deadline = Duration::from_millis(2500);
        let started = Instant::now();
        let auth = json!({ "token": t.c.users[0].token, "since": {} });
        let ns = format!("/socket/commu-{}", t.c.cid);
        let connect = baton_client::Socket::connect(cluster.base(0), &ns, auth).await;
        let connect_took = started.elapsed();
        assert_eq!(connect.err(), Some(baton_client::ClientError::Refused("unavailable".into())));
        assert!(connect_took < deadline, "a connect to the cut instance was answered after {connect_took:?}");
        let started = Instant::now();
        let path = format!("/api/channels/{}/messages", t.c.channels[0]);
        let (status, body) = cluster.rest(0).get(&path, &t.c.users[0].token).await;
        let rest_took = started.elapsed();
        assert_eq!((status.as_u16(), body["error"]["code"].as_str()), (503, Some("unavailable")), "{body}");
        assert!(rest_took < deadline, "a REST read on the cut instance was answered after {rest_took:?}");
        set_one(&cluster, 0, "postgres", Mode::Pass);
        let healed = Instant::now();
        // Back without a restart: a send on the cut instance is acked and crosses.
        let resumed = t.delivery_resumed(0, 1, healed).await;
        t.rounds(2).await;
        let report = t.check().await;
        println!(
            "fault one instance {name} from postgres figures: {report}, cut instance's slowest answer \
             {cut_slowest:?} (refusals {refusals_cut:?}; on the other instance {refusals_other:?}), a connect refused \
             `unavailable` after {connect_took:?}, a REST read 503 after {rest_took:?}, chat on the cut instance back \
             after {resumed:?}, /readyz said {}",
            readyz.summary(fault, healed),
        );
        t.forget_fault();
    }
}

/// One instance killed (SIGKILL) and restarted 5 times under traffic: its members
/// move to the others and back; nothing acked is lost, nothing is stored twice, and
/// a user who went down with it and did not come back is offline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_crash_loop() {
    let mut cluster = Cluster::start(3).await;
    // Seven users; the seventh, on instance 0, goes down with its first kill and
    // never comes back: the checker's presence check expects it offline, though an
    // instance under the same name is back within a second.
    let mut t = Traffic::start(&cluster, 7).await;
    let mut gone = t.members.pop();
    t.homes.pop();
    t.rest_via = 2;
    let readyz = Readyz::watch(&cluster);
    t.rounds(2).await;
    let fault = Instant::now();
    t.during_fault = true;
    let mut restarts = Vec::new();
    for _ in 0..5 {
        cluster.instances[0].kill().await;
        drop(gone.take());
        t.rounds_while(Duration::from_secs(1), Duration::from_secs(1), || true).await;
        let started = Instant::now();
        let (_, ()) = tokio::join!(cluster.restart(0), t.rounds(3));
        restarts.push(started.elapsed());
        t.rounds_while(Duration::from_secs(1), Duration::from_secs(1), || true).await;
        // The "load balancer" sends the instance's members back to it.
        let homed_here: Vec<usize> = (0..t.members.len()).filter(|i| t.homes[*i] == 0).collect();
        for i in homed_here {
            t.members[i].go_away();
            t.reconnect(i).await;
        }
    }
    t.during_fault = false;
    let crash_loop = fault.elapsed();
    let healed = Instant::now();
    let resumed = t.delivery_resumed(0, 1, Instant::now()).await;
    t.rounds(2).await;
    let report = t.check().await;
    restarts.sort();
    println!(
        "fault crash loop figures: {report}, 5 kills in {crash_loop:?} (kill to ready {:?}..{:?}), cross-instance \
         delivery from the restarted instance within {resumed:?}, /readyz said {}",
        restarts[0],
        restarts.last().unwrap(),
        readyz.summary(fault, healed)
    );
}

/// A token expiring while its client is away: the reconnect is refused
/// `unauthorized`, the client logs in again and reconnects with `since`, and gets
/// everything it missed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_token_expires_while_away() {
    let ttl = Duration::from_secs(8);
    let cluster = Cluster::start_with(2, proxied(false, false, &[("BATON_TOKEN_TTL", "8s")])).await;
    let mut t = Traffic::start(&cluster, 4).await;
    // Member 0 logs in now and goes away; the others chat while its token expires.
    t.login_again(0).await;
    let issued = Instant::now();
    t.members[0].connect_to(&cluster.instances[0].base.clone()).await.unwrap();
    t.rounds(1).await;
    t.members[0].go_away();
    let fault = Instant::now();
    t.during_fault = true;
    while issued.elapsed() < ttl + Duration::from_millis(1500) {
        for i in 1..t.members.len() {
            let (round, channel) = (t.round, t.c.channels[i % 2]);
            t.send(i, channel, &format!("m{i}-away-{round}")).await;
        }
        t.round += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    t.during_fault = false;
    let away = fault.elapsed();
    let base = cluster.instances[1].base.clone();
    let started = Instant::now();
    let refused = t.members[0].connect_to(&base).await;
    let refused_after = started.elapsed();
    assert_eq!(refused.err(), Some(baton_client::ClientError::Refused("unauthorized".into())));
    let started = Instant::now();
    t.login_again(0).await;
    let login_took = started.elapsed();
    let before = t.members[0].received_raw;
    let started = Instant::now();
    t.members[0].connect_to(&base).await.expect("reconnect with a new token");
    let replay_took = started.elapsed();
    let replayed = t.members[0].received_raw - before;
    let missed: usize = t.sends.iter().filter(|s| s.during_fault).count();
    let report = t.check().await;
    assert_eq!(t.members[0].filled_from_history, 0, "the replay brought everything it missed");
    println!(
        "fault token expired while away figures: {report}, away {away:?} ({missed} messages), refused reconnect \
         {} ms, new login {} ms, reconnect with since to recovered {} ms ({replayed} replayed)",
        refused_after.as_millis(),
        login_took.as_millis(),
        replay_took.as_millis()
    );
}

/// A pub/sub overflow: the cluster's own Redis disconnects a subscriber whose output
/// buffer passes a tiny `client-output-buffer-limit pubsub`, while bursts of large
/// messages go through. The subscribers reconnect and subscribe again; what they
/// missed, the members recover through `position` and history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_pubsub_overflow() {
    // Redis 7.0 does not count these disconnections in INFO: its log says each one.
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("redis.log");
    let options = Options {
        redis_args: vec![
            "--client-output-buffer-limit".into(),
            "pubsub 8kb 4kb 1".into(),
            "--logfile".into(),
            log.display().to_string(),
        ],
        ..Options::default()
    };
    let cluster = Cluster::start_with(2, options).await;
    let mut t = Traffic::start(&cluster, 4).await;
    t.rounds(2).await;
    let disconnections = async || {
        let text = tokio::fs::read_to_string(&log).await.unwrap_or_default();
        text.matches("for overcoming of output buffer limits").count()
    };
    let fault = Instant::now();
    t.during_fault = true;
    let mut bursts = 0;
    // Bursts until Redis has cut a subscriber (bounded: 5 bursts).
    while disconnections().await == 0 {
        assert!(bursts < 5, "5 bursts and Redis never cut a subscriber: the scenario does not test what it says");
        t.burst(&[0, 1, 2, 3], 50, 3000).await;
        bursts += 1;
    }
    t.during_fault = false;
    let cut = disconnections().await;
    let resumed = t.delivery_resumed(0, 1, Instant::now()).await;
    t.rounds(2).await;
    let report = t.check().await;
    println!(
        "fault pubsub overflow figures: {report}, {bursts} bursts of 4 x 50 messages of 3000 characters, subscribers \
         cut by Redis {cut}, cross-instance delivery after the bursts within {resumed:?}, fault {:?}",
        fault.elapsed()
    );
}

/// The resident memory of process `pid`, from /proc.
fn rss(pid: u32) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status.lines().find_map(|l| l.strip_prefix("VmRSS:")).map(|v| v.trim().to_owned()).unwrap_or_default()
}

/// A slow consumer: a socket.io-client member in its own process (slow-reader.cjs)
/// is stopped with SIGSTOP while its rooms get ~2,400 messages of 3,900 characters
/// (more than the kernel's buffers and the socket's 1,024 packets hold, so some are
/// dropped for it), then let go with SIGCONT. The instance keeps serving the others,
/// and the stopped client, once it runs again, holds every eventSeq.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_slow_consumer() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

    let cluster = Cluster::start(2).await;
    // Five users: members 0..3 chat, the fifth is the node process, on instance 1.
    let mut t = Traffic::start(&cluster, 5).await;
    let slow = t.members.pop().unwrap();
    t.homes.pop();
    let channels: Vec<String> = t.c.channels.iter().map(|c| c.to_string()).collect();
    let modules = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/js/node_modules");
    assert!(
        std::path::Path::new(modules).join("socket.io-client").exists(),
        "socket.io-client is installed in tests/js (cd tests/js && npm ci)"
    );
    let mut node = tokio::process::Command::new("node")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/cluster/slow-reader.cjs"))
        .env("NODE_PATH", modules)
        .env("BASE", cluster.base(1))
        .env("CID", t.c.cid.to_string())
        .env("TOKEN", &slow.user.token)
        .env("CHANNELS", channels.join(","))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node runs");
    t.also_online.push(slow.user.id);
    drop(slow);
    let mut lines = BufReader::new(node.stdout.take().unwrap()).lines();
    let ready = tokio::time::timeout(WAIT * 2, lines.next_line()).await.expect("the node member is ready").unwrap();
    assert_eq!(ready.as_deref(), Some(r#"{"ready":true}"#));
    let pid = node.id().unwrap() as i32;
    let readyz = Readyz::watch(&cluster);
    t.rounds(2).await;
    let instance_pid = cluster.instances[1].pid();
    let rss_before = rss(instance_pid);
    // SAFETY: signals a child process of this test.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
    let stopped = Instant::now();
    t.during_fault = true;
    for _ in 0..12 {
        t.burst(&[0, 1, 2, 3], 50, 3900).await;
        let (status, _) = cluster.rest(1).request(reqwest::Method::GET, "/healthz", None, None).await;
        assert_eq!(status, 200, "the instance of the stopped client keeps answering");
    }
    let resumed_between = t.delivery_resumed(0, 1, Instant::now()).await;
    // Stopped for 5 s at least, chatting on.
    t.rounds_while(Duration::from_secs(5).saturating_sub(stopped.elapsed()), Duration::from_secs(5), || true).await;
    t.during_fault = false;
    let rss_during = rss(instance_pid);
    let stopped_for = stopped.elapsed();
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGCONT) }, 0);
    let continued = Instant::now();
    let said = readyz.summary(stopped, continued);
    let report = t.check().await;
    let expected: BTreeMap<String, i64> =
        t.c.channels.iter().map(|ch| (ch.to_string(), t.members[0].contiguous(*ch))).collect();
    let mut stdin = node.stdin.take().unwrap();
    stdin.write_all(format!("expect {}\n", json!(expected)).as_bytes()).await.unwrap();
    let line = tokio::time::timeout(Duration::from_secs(45), lines.next_line())
        .await
        .expect("the node member reports")
        .unwrap()
        .expect("a line");
    let caught_up = continued.elapsed();
    let seen: serde_json::Value = serde_json::from_str(&line).unwrap();
    for (ch, last) in &expected {
        assert_eq!(seen["held"][ch].as_i64(), Some(*last), "the slow consumer holds all of {ch}: {seen}");
    }
    assert_eq!(seen["foreign"], 0, "{seen}");
    let status = node.wait().await.unwrap();
    assert!(status.success());
    println!(
        "fault slow consumer figures: {report}, a socket.io-client process stopped {stopped_for:?} while {} messages \
         went to its rooms, instance RSS {rss_before} before and {rss_during} during, the others' live delivery \
         during it within {resumed_between:?}; after SIGCONT the consumer held everything within {caught_up:?}: \
         received {} ({} duplicates), filled from history {}, connects {}, disconnects {}, incomplete replays {}; \
         /readyz said {said}",
        expected.values().sum::<i64>(),
        seen["raw"],
        seen["duplicates"],
        seen["filled"],
        seen["connects"],
        seen["disconnects"],
        seen["incomplete"],
    );
}

/// An instance (re)started while Redis refuses it: it serves its own clients, and
/// when Redis answers it joins the cluster (subscriptions included): delivery crosses
/// instances both ways and the checker finds nothing lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_instance_started_while_redis_refuses_it() {
    let mut cluster = Cluster::start_with(2, proxied(true, false, &[])).await;
    let mut t = Traffic::start(&cluster, 4).await;
    let readyz = Readyz::watch(&cluster);
    t.rounds(2).await;
    set_one(&cluster, 0, "redis", Mode::Refuse);
    let fault = Instant::now();
    cluster.respawn(0).await;
    t.during_fault = true;
    // Its members come back to it (the others' instance reaches Redis throughout).
    common_wait_healthz(&cluster, 0).await;
    for i in [0, 2] {
        t.members[i].go_away();
        t.reconnect(i).await;
    }
    t.rounds_while(FAULT, FAULT, || true).await;
    t.during_fault = false;
    let refusals = t.fault_refusals(&[0, 1, 2, 3]);
    assert!(refusals.is_empty(), "sends are acked whatever Redis does: {refusals:?}");
    set_one(&cluster, 0, "redis", Mode::Pass);
    let healed = Instant::now();
    let from_it = t.delivery_resumed(0, 1, healed).await;
    let to_it = t.delivery_resumed(1, 0, healed).await;
    cluster.wait_ready(0).await;
    t.rounds(2).await;
    let report = t.check().await;
    println!(
        "fault instance started while redis refuses it figures: {report}, cross-instance delivery from it resumed \
         after {from_it:?}, to it after {to_it:?}, /readyz said {}",
        readyz.summary(fault, healed)
    );
}

/// Waits until instance `i` answers `/healthz` (bounded: 30 s).
async fn common_wait_healthz(cluster: &Cluster, i: usize) {
    crate::common::eventually("the instance answers /healthz", Duration::from_secs(30), async || {
        reqwest::get(format!("{}/healthz", cluster.base(i))).await.is_ok_and(|r| r.status() == 200)
    })
    .await;
}

/// An instance (re)started while its PostgreSQL is blackholed: it does not hang
/// half-started; it exits with an error within a bound (a supervisor restarts it),
/// and once the partition heals a restart serves again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_instance_started_while_postgres_is_blackholed() {
    let mut cluster = Cluster::start_with(2, proxied(false, true, &[("BATON_DB_TIMEOUT", "1s")])).await;
    let mut t = Traffic::start(&cluster, 4).await;
    t.rounds(2).await;
    set_one(&cluster, 0, "postgres", Mode::Blackhole);
    let started = Instant::now();
    cluster.respawn(0).await;
    let exited = cluster.instances[0].exits_within(Duration::from_secs(15)).await;
    let took = started.elapsed();
    let healthz = reqwest::get(format!("{}/healthz", cluster.base(0))).await.map(|r| r.status().as_u16()).ok();
    assert!(
        exited.is_some_and(|s| !s.success()),
        "an instance that cannot reach its database at start exits with an error within 15 s: {exited:?} after \
         {took:?} (/healthz {healthz:?})"
    );
    set_one(&cluster, 0, "postgres", Mode::Pass);
    let healed = Instant::now();
    cluster.restart(0).await;
    let ready = healed.elapsed();
    for i in [0, 2] {
        t.members[i].go_away();
        t.reconnect(i).await;
    }
    let resumed = t.delivery_resumed(0, 1, Instant::now()).await;
    t.rounds(2).await;
    let report = t.check().await;
    println!(
        "fault instance started while postgres is blackholed figures: {report}, it exited ({:?}) {took:?} after the \
         start, restarted and ready {ready:?} after the heal, cross-instance delivery within {resumed:?}",
        exited.unwrap()
    );
}

/// An instance frozen (SIGSTOP, as a stalled VM) for longer than the registry's
/// dead-instance delay, then let go (SIGCONT): meanwhile the others take its users
/// offline. Its clients' sends were answered late or not at all; resent, each is
/// stored once. Once it runs again its users, still connected to it, must be online
/// again (the checker's presence check).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_instance_frozen_past_the_dead_instance_delay() {
    let cluster = Cluster::start(2).await;
    let mut t = Traffic::start(&cluster, 4).await;
    let readyz = Readyz::watch(&cluster);
    t.rounds(2).await;
    let pid = cluster.instances[0].pid() as i32;
    // SAFETY: signals a child process of this test.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
    let frozen = Instant::now();
    t.during_fault = true;
    // 15 s of silence (DEAD_AFTER) plus a beat (5 s), and a margin.
    t.rounds_while(Duration::from_secs(22), Duration::from_secs(22), || true).await;
    t.during_fault = false;
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGCONT) }, 0);
    let thawed = Instant::now();
    let resumed = t.delivery_resumed(0, 1, thawed).await;
    t.rounds(2).await;
    let report = t.check().await;
    println!(
        "fault instance frozen past the dead-instance delay figures: {report}, frozen {:?}, cross-instance delivery \
         from it resumed {resumed:?} after SIGCONT, /readyz said {}",
        thawed - frozen,
        readyz.summary(frozen, thawed)
    );
}

/// One instance's connections to Redis silently dropped (a NAT or load balancer
/// that lost its state: nothing is forwarded on them again, nothing closes them;
/// new connections work): the instance must notice and connect again, within a
/// bound, so that cross-instance delivery resumes both ways.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_one_instance_redis_connections_silently_dropped() {
    let cluster = Cluster::start_with(2, proxied(true, false, &[])).await;
    let mut t = Traffic::start(&cluster, 4).await;
    let readyz = Readyz::watch(&cluster);
    t.rounds(2).await;
    let proxy = cluster.instances[0].redis_proxy.as_ref().unwrap();
    let accepted = proxy.accepted();
    let fault = Instant::now();
    proxy.strand();
    t.during_fault = true;
    let from_it = t.delivery_resumed(0, 1, fault).await;
    let to_it = t.delivery_resumed(1, 0, fault).await;
    let back = Instant::now();
    t.rounds_while(FAULT, FAULT, || true).await;
    t.during_fault = false;
    let reconnected = proxy.accepted() - accepted;
    t.rounds(2).await;
    let report = t.check().await;
    println!(
        "fault one instance's redis connections silently dropped figures: {report}, cross-instance delivery from it \
         resumed {from_it:?} after the drop, to it {to_it:?}, new connections to Redis {reconnected}, /readyz said {}",
        readyz.summary(fault, back)
    );
}

/// One instance's connections to PostgreSQL silently dropped, new ones working:
/// its members' sends are answered throughout (`unavailable` at worst, within the
/// deadline), and chat works again on it within a bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_one_instance_postgres_connections_silently_dropped() {
    let cluster = Cluster::start_with(2, proxied(false, true, &[("BATON_DB_TIMEOUT", "1s")])).await;
    let mut t = Traffic::start(&cluster, 4).await;
    let readyz = Readyz::watch(&cluster);
    t.rounds(2).await;
    let proxy = cluster.instances[0].postgres_proxy.as_ref().unwrap();
    let accepted = proxy.accepted();
    let fault = Instant::now();
    proxy.strand();
    t.during_fault = true;
    let resumed = t.delivery_resumed(0, 1, fault).await;
    let back = Instant::now();
    t.rounds_while(FAULT, FAULT, || true).await;
    t.during_fault = false;
    let slowest = t.assert_answered_within(&[0, 2], Duration::from_millis(2500));
    let refusals = t.fault_refusals(&[0, 2]);
    let reconnected = proxy.accepted() - accepted;
    t.rounds(2).await;
    let report = t.check().await;
    println!(
        "fault one instance's postgres connections silently dropped figures: {report}, its slowest answer \
         {slowest:?}, refusals {refusals:?}, chat on it and across back {resumed:?} after the drop, new connections \
         to PostgreSQL {reconnected}, /readyz said {}",
        readyz.summary(fault, back)
    );
}

/// One instance's pub/sub connection to Redis silently dropped, its command
/// connection working: broadcasts from the other instance must reach its clients
/// live again within a bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_one_instance_pubsub_connection_silently_dropped() {
    let cluster = Cluster::start_with(2, proxied(true, false, &[])).await;
    let mut t = Traffic::start(&cluster, 4).await;
    let readyz = Readyz::watch(&cluster);
    t.rounds(2).await;
    let proxy = cluster.instances[0].redis_proxy.as_ref().unwrap();
    let accepted = proxy.accepted();
    let fault = Instant::now();
    assert_eq!(proxy.strand_if_client_sent(b"SSUBSCRIBE"), 1, "one pub/sub connection");
    t.during_fault = true;
    let to_it = t.delivery_resumed(1, 0, fault).await;
    let back = Instant::now();
    t.rounds_while(FAULT, FAULT, || true).await;
    t.during_fault = false;
    let reconnected = proxy.accepted() - accepted;
    t.rounds(2).await;
    let report = t.check().await;
    println!(
        "fault one instance's pubsub connection silently dropped figures: {report}, live delivery to it resumed \
         {to_it:?} after the drop, new connections to Redis {reconnected}, /readyz said {}",
        readyz.summary(fault, back)
    );
}
