//! The delivery probe: whether cross-instance delivery works, checked the way chat
//! uses it (a publish through Redis pub/sub that the other instances receive), not
//! by a PING, which stays green while a subscription is silently gone (a pub/sub
//! connection that stopped forwarding, a shard that gave its slot away, a
//! subscriber following a master that is not one any more).
//!
//! Every [`DeliveryProbe::round`] this instance publishes a ping on each probe
//! channel: one per master of a Redis Cluster (a channel whose hash tag falls in
//! that master's slots: one shard that stops delivering shows up), one elsewhere.
//! Every instance subscribes to them all; one that receives another's ping answers
//! it on that instance's own inbox channel, in the same slot. So each instance sees,
//! per shard: its own ping come back (its publish and its subscription work), the
//! other live instances' pings (from the registry), and their answers to its own.
//!
//! Judgement, per shard, over the last two rounds: delivering if its own ping came
//! back and, when other instances are live, at least one of them was heard from or
//! answered. Not "every one answered": an instance whose subscriptions are gone
//! fails its own check (nothing comes back to it), and must not make every healthy
//! instance unready with it. Undelivering for longer than `--delivery-timeout`, the
//! instance is not delivering ([`Health::is_delivering`]: `/readyz` answers 503 and
//! `baton_delivery_ok` is 0), and the probe repairs: it subscribes every channel
//! again, then, if that did not help within another timeout, replaces the pub/sub
//! connection, and so on, alternating. Messages lost meanwhile are the clients'
//! to repair (`position`, replay): the caller emits `position` when delivery
//! resumes.
//!
//! Invariant kept here: the verdict changes only in [`DeliveryProbe::round`], and
//! [`Health::set_delivering`] always says the last verdict.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fred::prelude::*;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::redis::RedisLink;
use crate::metrics as m;

/// What the probe found in a round, for the caller to act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Delivering,
    /// Delivery has just been found failing (it did not work for the timeout).
    Failed,
    StillFailing,
    /// Delivery works again; it had failed since (this long ago).
    Resumed(Duration),
}

/// A probe message: a ping to every instance, or an answer to one.
#[derive(Debug, Serialize, Deserialize)]
struct Probe<'a> {
    /// `ping` or `pong`.
    kind: &'a str,
    from: &'a str,
}

pub struct DeliveryProbe {
    link: RedisLink,
    me: String,
    interval: Duration,
    timeout: Duration,
    state: Mutex<State>,
}

struct State {
    shards: BTreeMap<String, Shard>,
    /// When delivery was found failing (None while it works).
    failed_at: Option<Instant>,
    /// When the last repair was made, while failing.
    repaired_at: Option<Instant>,
    /// Repairs made in this failure: even ones resubscribe, odd ones reconnect.
    repairs: u32,
}

/// One probe channel's (one shard's) observations.
struct Shard {
    /// Subscribed (its receiving tasks run).
    subscribed: bool,
    own_back: Option<Instant>,
    heard: HashMap<String, Instant>,
    answered: HashMap<String, Instant>,
    /// The last round this shard was found delivering (or the probe's start).
    last_ok: Instant,
}

impl DeliveryProbe {
    pub fn new(link: RedisLink, me: String, interval: Duration, timeout: Duration) -> Arc<Self> {
        metrics::gauge!(m::DELIVERY_OK).set(1.0);
        let state = State { shards: BTreeMap::new(), failed_at: None, repaired_at: None, repairs: 0 };
        Arc::new(Self { link, me, interval, timeout, state: Mutex::new(state) })
    }

    /// One round: follows the slots of a Redis Cluster (`RedisLink::follow_slots`),
    /// subscribes to the probe channels of shards not seen before,
    /// judges the rounds so far against `peers` (the other live instances), repairs
    /// when delivery has failed for the timeout, then pings on every shard.
    pub async fn round(self: &Arc<Self>, peers: &[String]) -> Verdict {
        self.link.follow_slots().await;
        let tags = shard_tags(&self.link.commands);
        for tag in &tags {
            let new = {
                let mut state = self.state.lock().unwrap();
                let shard = state.shards.entry(tag.clone()).or_insert_with(|| Shard::new(Instant::now()));
                !std::mem::replace(&mut shard.subscribed, true)
            };
            if new {
                self.subscribe(tag).await;
            }
        }
        let verdict = self.judge(&tags, peers);
        if matches!(verdict, Verdict::Failed | Verdict::StillFailing) {
            self.repair().await;
        }
        let ping = serde_json::to_vec(&Probe { kind: "ping", from: &self.me }).expect("a probe serializes");
        for tag in &tags {
            // A failed publish (Redis down) is seen as a ping that does not come back.
            let _ = self.link.publish(&format!("probe:{{{tag}}}"), ping.clone()).await;
        }
        verdict
    }

    /// Subscribes to a shard's ping channel and this instance's inbox there; their
    /// messages are recorded by a task each, for as long as the probe lives.
    async fn subscribe(self: &Arc<Self>, tag: &str) {
        for topic in [format!("probe:{{{tag}}}"), format!("probe:{{{tag}}}:{}", self.me)] {
            match self.link.subscribe(&topic).await {
                Ok(stream) => {
                    let (probe, tag) = (Arc::downgrade(self), tag.to_owned());
                    tokio::spawn(async move {
                        let mut stream = stream;
                        while let Some((_, payload)) = stream.next().await {
                            let Some(probe) = probe.upgrade() else { return };
                            probe.received(&tag, &payload).await;
                        }
                    });
                }
                Err(e) => tracing::warn!(topic, error = %e, "could not subscribe to a delivery probe channel"),
            }
        }
    }

    /// Records a probe message received on `tag`'s shard; answers another's ping.
    async fn received(&self, tag: &str, payload: &[u8]) {
        let Ok(probe) = serde_json::from_slice::<Probe>(payload) else { return };
        let now = Instant::now();
        let answer = {
            let mut state = self.state.lock().unwrap();
            let Some(shard) = state.shards.get_mut(tag) else { return };
            match (probe.kind, probe.from == self.me) {
                ("ping", true) => {
                    shard.own_back = Some(now);
                    false
                }
                ("ping", false) => {
                    shard.heard.insert(probe.from.to_owned(), now);
                    true
                }
                ("pong", _) => {
                    shard.answered.insert(probe.from.to_owned(), now);
                    false
                }
                _ => false,
            }
        };
        if answer {
            let pong = serde_json::to_vec(&Probe { kind: "pong", from: &self.me }).expect("a probe serializes");
            let _ = self.link.publish(&format!("probe:{{{tag}}}:{}", probe.from), pong).await;
        }
    }

    /// The verdict on the rounds so far (see the module doc), recorded in the
    /// link's health and the metrics.
    fn judge(&self, tags: &[String], peers: &[String]) -> Verdict {
        let now = Instant::now();
        let fresh_after = now.checked_sub(self.interval * 2).unwrap_or(now);
        let fresh = |at: Option<&Instant>| at.is_some_and(|at| *at >= fresh_after);
        let mut state = self.state.lock().unwrap();
        let mut answering: HashSet<&String> = peers.iter().collect();
        let mut failing = false;
        for tag in tags {
            let Some(shard) = state.shards.get_mut(tag) else { continue };
            let peer_seen =
                peers.is_empty() || peers.iter().any(|p| fresh(shard.heard.get(p)) || fresh(shard.answered.get(p)));
            answering.retain(|p| fresh(shard.answered.get(*p)));
            if fresh(shard.own_back.as_ref()) && peer_seen {
                shard.last_ok = now;
            }
            failing |= now.duration_since(shard.last_ok) > self.timeout;
            // Forget instances that left.
            shard.heard.retain(|p, _| peers.contains(p));
            shard.answered.retain(|p, _| peers.contains(p));
        }
        metrics::gauge!(m::DELIVERY_PEERS).set(peers.len() as f64);
        metrics::gauge!(m::DELIVERY_PEERS_ANSWERING).set(answering.len() as f64);
        let verdict = match (failing, state.failed_at) {
            (false, None) => Verdict::Delivering,
            (false, Some(at)) => {
                state.failed_at = None;
                state.repaired_at = None;
                state.repairs = 0;
                Verdict::Resumed(now.duration_since(at) + self.timeout)
            }
            (true, None) => {
                state.failed_at = Some(now);
                Verdict::Failed
            }
            (true, Some(_)) => Verdict::StillFailing,
        };
        drop(state);
        match verdict {
            Verdict::Failed => {
                metrics::counter!(m::DELIVERY_FAILURES).increment(1);
                tracing::warn!(
                    timeout = ?self.timeout,
                    peers = peers.len(),
                    "cross-instance delivery is failing: the probe's round trips through redis pub/sub did not \
                     come back; not ready until they do"
                );
            }
            Verdict::Resumed(after) => {
                tracing::info!(after = ?after, "cross-instance delivery works again")
            }
            _ => {}
        }
        let delivering = !failing;
        self.link.health.set_delivering(delivering);
        metrics::gauge!(m::DELIVERY_OK).set(if delivering { 1.0 } else { 0.0 });
        verdict
    }

    /// While failing, one repair per timeout: subscribe everything again, then, if
    /// that was not enough, replace the pub/sub connection, alternately.
    async fn repair(&self) {
        let reconnect = {
            let mut state = self.state.lock().unwrap();
            let now = Instant::now();
            if state.repaired_at.is_some_and(|at| now.duration_since(at) < self.timeout) {
                return;
            }
            state.repaired_at = Some(now);
            state.repairs += 1;
            state.repairs.is_multiple_of(2)
        };
        if reconnect {
            tracing::warn!("delivery still failing: replacing the pub/sub connection");
            metrics::counter!(m::DELIVERY_REPAIRS, "action" => "reconnect").increment(1);
            self.link.reconnect_pubsub().await;
        } else {
            tracing::warn!("delivery failing: subscribing every pub/sub channel again");
            metrics::counter!(m::DELIVERY_REPAIRS, "action" => "resubscribe").increment(1);
            self.link.resubscribe().await;
        }
    }
}

impl Shard {
    fn new(now: Instant) -> Self {
        Shard { subscribed: false, own_back: None, heard: HashMap::new(), answered: HashMap::new(), last_ok: now }
    }
}

/// The probe channels' hash tags: off a cluster, one; on a Redis Cluster, one per
/// master, each the first number whose slot that master serves.
fn shard_tags(client: &Client) -> Vec<String> {
    let Some(state) = client.cached_cluster_state() else { return vec!["0".into()] };
    let mut masters: BTreeMap<String, Vec<(u16, u16)>> = BTreeMap::new();
    for range in state.slots() {
        masters.entry(range.primary.to_string()).or_default().push((range.start, range.end));
    }
    masters
        .values()
        .filter_map(|ranges| {
            (0u32..100_000).map(|n| n.to_string()).find(|tag| {
                let slot = fred::util::redis_keyslot(tag.as_bytes());
                ranges.iter().any(|(start, end)| (*start..=*end).contains(&slot))
            })
        })
        .collect()
}
