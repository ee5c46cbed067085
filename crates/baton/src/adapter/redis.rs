//! The Redis side of a cluster: the connections, their health, and the pub/sub
//! driver under socketioxide-redis's adapter.
//!
//! socketioxide-redis 0.4 with fred 10, as its example wires it, does not survive a
//! Redis restart, and [`ResilientDriver`] exists for each way it fails:
//! - fred without a reconnect policy never reconnects: emits never return. Both
//!   clients here reconnect forever (exponential back-off, 50 ms to 250 ms), the first
//!   connect included (fred's `fail_fast`, on by default, gives up on a first
//!   connect that fails: an instance started while Redis was unreachable stayed out
//!   of the cluster).
//! - fred does not notice a connection that went silent without closing (a NAT or
//!   load balancer that lost its state): commands time out on it for ever, and its
//!   unresponsive check never fires while commands keep being written; nothing at
//!   all is written on the pub/sub connection. The health check PINGs on both; when
//!   a PING times out twice in a row on a connection fred holds open, that client
//!   (both, for the command connection) is made to connect again.
//! - fred reconnects, but the adapter's shard subscriptions are not restored (fred's
//!   `manage_subscriptions()` does not do it for this adapter): the driver tracks the
//!   channels it was asked for and SSUBSCRIBEs them again on every reconnect.
//! - the adapter publishes to Redis before delivering locally, and fred has no
//!   command timeout by default: one emit blocked for a whole outage. Every command
//!   here has `--redis-timeout`, a publish fails at once while Redis is known to be
//!   down, and the gateway then delivers to its own sockets (see the fanout).
//! - creating a namespace subscribes to three channels; while Redis is down that
//!   hung the first connect to the namespace. `subscribe` here never waits for an
//!   unreachable Redis: it registers the channel and subscribes when Redis is back.
//! - fred ends a client's routing task for good on an error it does not recover
//!   from, and every later command waits for ever: [`keep_connecting`] starts it
//!   again.
//! - pub/sub drops silently (fred's broadcast channel, the adapter's queue, Redis's
//!   output buffer): drops seen here are counted in `baton_pubsub_dropped_total`; the
//!   eventSeq gaps and the `position` emit are what let clients repair them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use fred::clients::SubscriberClient;
use fred::prelude::*;
use fred::types::Message;
use fred::types::cluster::SlotRange;
use socketioxide_redis::drivers::{ChanItem, Driver, MessageStream};
use tokio::sync::{broadcast, mpsc};

use crate::metrics as m;

/// The adapter baton uses in a cluster.
pub type ClusterAdapter = socketioxide_redis::CustomRedisAdapter<socketioxide::adapter::Emitter, ResilientDriver>;

/// The longest wait between two attempts to connect again (fred's policy doubles
/// from 50 ms up to it).
const RECONNECT_MAX_DELAY_MS: u32 = 250;

/// Messages fred buffers for the router task before it lags (fred's default is 32).
const PUBSUB_BUFFER: usize = 8192;

/// A Redis failure, as the adapter and the gateway see it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RedisError {
    #[error("redis is unreachable")]
    Down,
    #[error("redis: {0}")]
    Command(String),
}

/// Redis holds state that can be rebuilt (joins, presence): callers usually log its
/// failures and go on; where one reaches a client it is `unavailable`.
impl From<RedisError> for crate::error::Error {
    fn from(e: RedisError) -> Self {
        crate::error::Error::unavailable(format!("the cluster state is unavailable: {e}"), e)
    }
}

impl From<fred::error::Error> for RedisError {
    fn from(e: fred::error::Error) -> Self {
        RedisError::Command(e.to_string())
    }
}

/// Whether Redis answers, as last seen by the health check.
#[derive(Debug)]
pub struct Health {
    up: AtomicBool,
    /// Health checks in a row whose PING timed out on the command connection while
    /// fred held it open.
    silent: AtomicU32,
    /// The same for the pub/sub connection.
    silent_pubsub: AtomicU32,
    /// The delivery probe's last verdict (`probe.rs`); true until it has one.
    delivering: AtomicBool,
    /// Set by [`RedisLink::quit`]: the clients' connection tasks end for good.
    quitting: AtomicBool,
}

/// How long a burst of reconnects or slot changes is let settle before the
/// channels are subscribed again.
const RESUBSCRIBE_AFTER: Duration = Duration::from_millis(50);

/// Silent health checks in a row after which the connections are replaced.
const SILENT_CHECKS: u32 = 2;

impl Health {
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::SeqCst)
    }

    /// Whether cross-instance delivery works, as the delivery probe last found.
    pub fn is_delivering(&self) -> bool {
        self.delivering.load(Ordering::SeqCst)
    }

    pub(super) fn set_delivering(&self, delivering: bool) {
        self.delivering.store(delivering, Ordering::SeqCst);
    }

    /// Records the state; true if it changed.
    fn set(&self, up: bool) -> bool {
        let was = self.up.swap(up, Ordering::SeqCst);
        metrics::gauge!(m::REDIS_UP).set(if up { 1.0 } else { 0.0 });
        was != up
    }
}

/// The cluster's connections to Redis: one for commands (state, registry), one for
/// pub/sub (the adapter), and their shared health.
#[derive(Clone)]
pub struct RedisLink {
    pub commands: Client,
    pub prefix: String,
    pub timeout: Duration,
    pub health: Arc<Health>,
    driver: ResilientDriver,
}

impl std::fmt::Debug for RedisLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLink").field("prefix", &self.prefix).field("up", &self.health.is_up()).finish()
    }
}

impl RedisLink {
    /// Builds both clients and starts connecting. Does not fail when Redis is down
    /// at start: the instance serves its own clients and joins the cluster when
    /// Redis answers.
    pub async fn connect(url: &str, prefix: &str, timeout: Duration) -> anyhow::Result<Self> {
        check_scheme(url)?;
        let mut config = Config::from_url(url).map_err(|e| anyhow::anyhow!("bad REDIS_URL: {e}"))?;
        // fred's default (fail fast) ends a client's connection task when its first
        // connect fails, and it never reconnects: an instance started while Redis was
        // unreachable never joined the cluster. Retry the first connect like any other.
        config.fail_fast = false;
        let mut builder = Builder::from_config(config);
        builder
            .with_performance_config(|p| {
                p.default_command_timeout = timeout;
                p.broadcast_channel_capacity = PUBSUB_BUFFER;
            })
            .with_connection_config(|c| {
                c.connection_timeout = timeout;
                c.internal_command_timeout = timeout;
            })
            // At most 250 ms between attempts: after a Redis Cluster or Sentinel
            // failover the new master is reached within 250 ms of its promotion.
            .set_policy(ReconnectPolicy::new_exponential(0, 50, RECONNECT_MAX_DELAY_MS, 2));
        let commands = builder.build()?;
        let subscriber = builder.build_subscriber_client()?;
        let health = Arc::new(Health {
            up: AtomicBool::new(false),
            silent: AtomicU32::new(0),
            silent_pubsub: AtomicU32::new(0),
            delivering: AtomicBool::new(true),
            quitting: AtomicBool::new(false),
        });
        let commands_task = commands.connect();
        let subscriber_task = subscriber.connect();
        let up = tokio::time::timeout(timeout * 3, async {
            commands.wait_for_connect().await.is_ok() && subscriber.wait_for_connect().await.is_ok()
        })
        .await
        .unwrap_or(false);
        health.set(up);
        if !up {
            tracing::warn!(redis = %crate::config::redact_url(url), "redis is unreachable at start; serving local clients until it answers");
        }
        let driver = ResilientDriver::start(subscriber, commands.clone(), health.clone(), timeout);
        tokio::spawn(keep_connecting(commands.clone(), commands_task, health.clone(), None));
        let resubscribe = Arc::downgrade(&driver.inner);
        tokio::spawn(keep_connecting(
            driver.inner.subscriber.clone(),
            subscriber_task,
            health.clone(),
            Some(resubscribe),
        ));
        Ok(Self { commands, prefix: prefix.to_owned(), timeout, health, driver })
    }

    /// The socketioxide-redis adapter's constructor state.
    pub fn adapter_state(&self) -> socketioxide_redis::RedisAdapterCtr<ResilientDriver> {
        let config = socketioxide_redis::RedisAdapterConfig::new()
            .with_prefix(format!("{}-sio", self.prefix))
            .with_request_timeout(self.timeout * 2)
            .with_stream_buffer(8192);
        socketioxide_redis::RedisAdapterCtr::new_with_driver(self.driver.clone(), config)
    }

    /// Publishes on one of baton's own pub/sub channels (`topic`, under the prefix), as
    /// the adapter publishes its broadcasts: at once an error while Redis is known to
    /// be down, after `--redis-timeout` otherwise.
    pub async fn publish(&self, topic: &str, payload: Vec<u8>) -> Result<(), RedisError> {
        self.driver.publish(self.key(topic), payload).await
    }

    /// Subscribes to one of baton's own pub/sub channels; like the adapter's, the
    /// subscription is renewed whenever Redis comes back.
    pub async fn subscribe(&self, topic: &str) -> Result<MessageStream<ChanItem>, RedisError> {
        self.driver.subscribe(self.key(topic), PUBSUB_BUFFER).await
    }

    /// A key under the configured prefix.
    pub fn key(&self, rest: impl std::fmt::Display) -> String {
        format!("{}:{rest}", self.prefix)
    }

    /// Runs a command of baton's own state: fails at once while Redis is known to be
    /// down, and after `--redis-timeout` otherwise.
    pub async fn run<T>(&self, command: impl Future<Output = FredResult<T>>) -> Result<T, RedisError> {
        let result = if self.health.is_up() {
            match tokio::time::timeout(self.timeout, command).await {
                Ok(r) => r.map_err(RedisError::from),
                Err(_) => {
                    if self.health.set(false) {
                        tracing::warn!("redis timed out: delivering to this instance's clients only");
                    }
                    Err(RedisError::Down)
                }
            }
        } else {
            Err(RedisError::Down)
        };
        if result.is_err() {
            metrics::counter!(m::REDIS_ERRORS).increment(1);
        }
        result
    }

    /// Checks Redis with a PING; returns the state if it changed. On recovery the
    /// pub/sub channels are subscribed again (the subscriber may not have noticed).
    pub async fn check(&self) -> Option<bool> {
        let subscriber = &self.driver.inner.subscriber;
        let (ping, pubsub_ping) = tokio::join!(
            tokio::time::timeout(self.timeout, self.commands.ping::<fred::types::Value>(None)),
            tokio::time::timeout(self.timeout, subscriber.ping::<fred::types::Value>(None)),
        );
        let up = ping.as_ref().is_ok_and(|r| r.is_ok());
        // A PING that times out on a connection fred holds open: the connection may
        // have gone silent without closing (a NAT or load balancer that lost its
        // state, a partition), which fred does not notice; its commands would time
        // out for ever, and nothing would ever arrive on the pub/sub one. After a few
        // such checks in a row the connection is replaced (both, for the command
        // connection's: Redis is then as good as unreachable).
        let silent = |ping: &Result<FredResult<_>, _>| match ping {
            Err(_) => true,
            Ok(Err(e)) => *e.kind() == fred::error::ErrorKind::Timeout,
            Ok(Ok(_)) => false,
        };
        let counts = |count: &AtomicU32, silent: bool| {
            if !silent {
                count.store(0, Ordering::SeqCst);
                return false;
            }
            let replace = count.fetch_add(1, Ordering::SeqCst) + 1 >= SILENT_CHECKS;
            if replace {
                count.store(0, Ordering::SeqCst);
            }
            replace
        };
        if counts(&self.health.silent, silent(&ping) && self.commands.is_connected()) {
            tracing::warn!("redis does not answer on an open connection: connecting again");
            self.reconnect(true);
        } else if counts(&self.health.silent_pubsub, silent(&pubsub_ping) && subscriber.is_connected()) {
            tracing::warn!("redis does not answer on the open pub/sub connection: connecting it again");
            self.reconnect(false);
        }
        if !self.health.set(up) {
            return None;
        }
        if up {
            tracing::info!("redis answers again");
            metrics::counter!(m::REDIS_RECONNECTS).increment(1);
            self.driver.resubscribe().await;
        } else {
            tracing::warn!("redis is unreachable: delivering to this instance's clients only");
        }
        Some(up)
    }

    /// Subscribes every pub/sub channel again (the delivery probe's first repair).
    pub(super) async fn resubscribe(&self) {
        self.driver.resubscribe().await;
    }

    /// On a Redis Cluster, refreshes the subscriber's map of slots and, if a slot
    /// changed owner since the channels were subscribed, subscribes them again. A
    /// node that gives a slot away (a resharding) drops its subscribers' shard
    /// channels there with an SUNSUBSCRIBE push that fred discards, and an instance
    /// that does not publish to that slot gets no MOVED to learn it from: without
    /// this it would stay deaf to those channels. The delivery probe calls it every
    /// round.
    pub(super) async fn follow_slots(&self) {
        let inner = &self.driver.inner;
        if !inner.subscriber.is_clustered() || !self.health.is_up() || !inner.sync_subscriber_slots().await {
            return;
        }
        if inner.slots_moved() {
            tracing::info!("the cluster's slots moved: subscribing the pub/sub channels again");
            self.driver.resubscribe().await;
        }
    }

    /// Replaces the pub/sub connections (the delivery probe's second repair). On a
    /// Redis Cluster fred's forced reconnection only refreshes the slots and keeps
    /// every node connection that has not failed, a silent one included (and a QUIT
    /// would close the client's message stream for good): there each node is asked
    /// to close the subscriber's connection (`CLIENT KILL ID`), fred connects
    /// again, and its reconnect has everything subscribed again.
    pub(super) async fn reconnect_pubsub(&self) {
        let subscriber = &self.driver.inner.subscriber;
        if !subscriber.is_clustered() {
            return self.reconnect(false);
        }
        for (server, id) in subscriber.connection_ids() {
            let kill = vec![fred::types::client::ClientKillFilter::ID(id.to_string())];
            let node = self.commands.with_cluster_node(&server);
            if let Err(e) = self.run(node.client_kill::<fred::types::Value>(kill)).await {
                tracing::warn!(%server, error = %e, "could not close the pub/sub connection");
            }
        }
    }

    /// Has the pub/sub client, and the command one if `commands`, drop its
    /// connection and connect again, in the background.
    fn reconnect(&self, commands: bool) {
        let timeout = self.timeout * 4;
        let client = self.commands.clone();
        let subscriber = self.driver.inner.subscriber.clone();
        tokio::spawn(async move {
            let commands = async {
                if commands {
                    let _ = tokio::time::timeout(timeout, client.force_reconnection()).await;
                }
            };
            let _ = tokio::join!(commands, tokio::time::timeout(timeout, subscriber.force_reconnection()));
        });
    }

    pub async fn quit(&self) {
        self.health.quitting.store(true, Ordering::SeqCst);
        let _ = tokio::time::timeout(self.timeout, self.commands.quit()).await;
        let _ = tokio::time::timeout(self.timeout, self.driver.inner.subscriber.quit()).await;
    }
}

/// The schemes of the topologies baton supports (docs/redis.md), in plain text or
/// TLS (`rediss…`: rustls, the system's root certificates, or `SSL_CERT_FILE`'s).
/// fred takes any other scheme as `redis://` without a word.
fn check_scheme(url: &str) -> anyhow::Result<()> {
    let scheme = url.split_once("://").map(|(scheme, _)| scheme).unwrap_or_default();
    let topology = scheme
        .strip_prefix("rediss")
        .or_else(|| scheme.strip_prefix("redis"))
        .or_else(|| scheme.strip_prefix("valkeys"))
        .or_else(|| scheme.strip_prefix("valkey"));
    match topology {
        Some("" | "-cluster" | "-sentinel") => Ok(()),
        _ => anyhow::bail!(
            "REDIS_URL must start with redis://, redis-cluster:// or redis-sentinel:// (rediss… for TLS; \
             docs/redis.md), not {:?}",
            crate::config::redact_url(url)
        ),
    }
}

/// Keeps a client's connection task running. fred ends it, for good, on an error
/// its router does not recover from (a Redis Cluster's `ASK` redirection that ran
/// out of attempts while a slot was being migrated ended it in a test), and every
/// command then waits for ever: nothing reconnects, whatever the policy. Here the
/// task is started again (after a pause, so that a task that keeps failing does
/// not spin), and for the subscriber every channel is subscribed again, until
/// [`RedisLink::quit`].
async fn keep_connecting<C: ClientLike + Clone>(
    client: C,
    mut task: tokio::task::JoinHandle<FredResult<()>>,
    health: Arc<Health>,
    resubscribe: Option<std::sync::Weak<DriverInner>>,
) {
    loop {
        let ended = (&mut task).await;
        if health.quitting.load(Ordering::SeqCst) {
            return;
        }
        let why = match ended {
            Ok(Ok(())) => "it ended".to_owned(),
            Ok(Err(e)) => e.to_string(),
            Err(e) => e.to_string(),
        };
        tracing::warn!(client = client.id(), error = %why, "a redis client's connection task ended: starting it again");
        metrics::counter!(m::REDIS_RECONNECTS).increment(1);
        tokio::time::sleep(Duration::from_millis(RECONNECT_MAX_DELAY_MS.into())).await;
        task = client.connect();
        if let Some(inner) = resubscribe.as_ref().and_then(std::sync::Weak::upgrade)
            && tokio::time::timeout(inner.timeout * 4, client.wait_for_connect()).await.is_ok_and(|r| r.is_ok())
        {
            ResilientDriver { inner }.resubscribe().await;
        }
    }
}

/// socketioxide-redis's pub/sub driver over fred's subscriber client, made to
/// survive Redis restarts (see the module doc).
#[derive(Clone)]
pub struct ResilientDriver {
    inner: Arc<DriverInner>,
}

struct DriverInner {
    subscriber: SubscriberClient,
    /// Publishes go through the command connection: in RESP2 a connection that has
    /// subscribed may do nothing else.
    publisher: Client,
    /// Channels the adapter subscribed to, each with its queue: what is routed, and
    /// what is subscribed again after a reconnect.
    handlers: RwLock<HashMap<String, mpsc::Sender<ChanItem>>>,
    health: Arc<Health>,
    timeout: Duration,
    /// On a Redis Cluster, the owners of the slots when the channels were last
    /// subscribed (None elsewhere).
    subscribed_under: Mutex<Option<Vec<SlotRange>>>,
}

/// What wakes the resubscription task.
enum Event {
    Reconnected,
    /// The publisher refreshed its map of slots (a MOVED reply, a reconnect).
    PublisherSlots,
    /// The subscriber refreshed its map of slots.
    SubscriberSlots,
}

/// A cluster client's map of slots to their owners; None off a cluster.
fn slot_map(client: &impl ClusterInterface) -> Option<Vec<SlotRange>> {
    client.cached_cluster_state().map(|state| state.slots().to_vec())
}

impl DriverInner {
    /// Whether the subscriber's map of slots differs from the one the channels
    /// were last subscribed under.
    fn slots_moved(&self) -> bool {
        let map = slot_map(&self.subscriber);
        map.is_some() && map != *self.subscribed_under.lock().unwrap()
    }

    /// Refreshes the subscriber's map of slots (it announces the refresh as a
    /// [`Event::SubscriberSlots`]); false if that failed.
    async fn sync_subscriber_slots(&self) -> bool {
        match tokio::time::timeout(self.timeout, self.subscriber.sync_cluster()).await {
            Ok(Ok(())) => true,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "could not refresh the cluster's slots");
                false
            }
            Err(_) => {
                tracing::warn!("refreshing the cluster's slots timed out");
                false
            }
        }
    }
}

impl ResilientDriver {
    fn start(subscriber: SubscriberClient, publisher: Client, health: Arc<Health>, timeout: Duration) -> Self {
        let subscribed_under = Mutex::new(slot_map(&subscriber));
        let inner = Arc::new(DriverInner {
            subscriber,
            publisher,
            handlers: RwLock::default(),
            health,
            timeout,
            subscribed_under,
        });
        tokio::spawn(route_messages(inner.subscriber.message_rx(), Arc::downgrade(&inner)));
        let weak = Arc::downgrade(&inner);
        let mut reconnects = inner.subscriber.reconnect_rx();
        // A Redis Cluster's slots change owner (a failover, a resharding): the
        // subscriber's connection to a slot's old owner may stay open, and a node
        // that gives a slot away drops its shard subscriptions with an SUNSUBSCRIBE
        // that fred discards. When the publisher learns of a change (fred refreshes
        // its map on a MOVED reply or a reconnect), the subscriber's map is
        // refreshed too; when that one changed, everything is subscribed again.
        // (`RedisLink::follow_slots` catches the changes no publish runs into.)
        let mut changes = inner.subscriber.cluster_change_rx();
        let mut publisher_changes = inner.publisher.cluster_change_rx();
        tokio::spawn(async move {
            loop {
                let event = tokio::select! {
                    r = reconnects.recv() => r.map(|_| Event::Reconnected),
                    r = changes.recv() => r.map(|_| Event::SubscriberSlots),
                    r = publisher_changes.recv() => r.map(|_| Event::PublisherSlots),
                };
                let event = match event {
                    Ok(event) => event,
                    Err(broadcast::error::RecvError::Lagged(_)) => Event::Reconnected,
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                let Some(inner) = weak.upgrade() else { return };
                // fred announces every refresh of a map, changed or not (the
                // resubscription's own refresh among them): only a change counts.
                // The subscriber's refresh comes back here as its own event.
                match event {
                    Event::Reconnected => {}
                    Event::PublisherSlots => {
                        inner.sync_subscriber_slots().await;
                        continue;
                    }
                    Event::SubscriberSlots if inner.slots_moved() => {}
                    Event::SubscriberSlots => continue,
                }
                // Reconnects and slot changes come in bursts (one per node): one
                // resubscription after the burst is enough.
                tokio::time::sleep(RESUBSCRIBE_AFTER).await;
                reconnects = reconnects.resubscribe();
                changes = changes.resubscribe();
                publisher_changes = publisher_changes.resubscribe();
                ResilientDriver { inner }.resubscribe().await;
            }
        });
        Self { inner }
    }

    /// SSUBSCRIBEs every tracked channel again, one command per hash slot (a Redis
    /// Cluster refuses a command across slots; each slot's goes to its owner).
    /// On a cluster, the subscriber's map of slots is refreshed first, so that the
    /// channels go where their slots are now.
    async fn resubscribe(&self) {
        let channels: Vec<String> = self.inner.handlers.read().unwrap().keys().cloned().collect();
        if channels.is_empty() {
            return;
        }
        let subscriber = &self.inner.subscriber;
        let timeout = self.inner.timeout;
        if subscriber.is_clustered() {
            self.inner.sync_subscriber_slots().await;
        }
        *self.inner.subscribed_under.lock().unwrap() = slot_map(subscriber);
        let count = channels.len();
        let groups = match fred::util::group_by_hash_slot(channels) {
            Ok(groups) => groups,
            Err(e) => return tracing::warn!(error = %e, "could not group pub/sub channels by slot"),
        };
        let mut failed = 0;
        for (_, group) in groups {
            match tokio::time::timeout(timeout, subscriber.ssubscribe(Vec::from(group))).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    failed += 1;
                    tracing::warn!(error = %e, "could not subscribe pub/sub channels again");
                }
                Err(_) => {
                    failed += 1;
                    tracing::warn!("subscribing pub/sub channels again timed out");
                }
            }
        }
        if failed == 0 {
            tracing::info!(channels = count, "pub/sub channels subscribed again");
        }
    }

    /// Runs a command bounded by the timeout. A timeout marks Redis down at once, so
    /// the next emits go local without waiting; the health check marks it up again.
    async fn bounded<T>(&self, f: impl Future<Output = FredResult<T>>) -> Result<T, RedisError> {
        match tokio::time::timeout(self.inner.timeout, f).await {
            Ok(r) => r.map_err(RedisError::from),
            Err(_) => {
                if self.inner.health.set(false) {
                    tracing::warn!("redis timed out: delivering to this instance's clients only");
                }
                Err(RedisError::Down)
            }
        }
    }
}

/// Routes pub/sub messages to the adapter's queues by channel.
async fn route_messages(mut rx: broadcast::Receiver<Message>, inner: std::sync::Weak<DriverInner>) {
    loop {
        match rx.recv().await {
            Ok(msg) => {
                let Some(inner) = inner.upgrade() else { return };
                let chan = msg.channel.to_string();
                let Some(data) = msg.value.into_owned_bytes() else { continue };
                let handlers = inner.handlers.read().unwrap();
                if let Some(tx) = handlers.get(&chan)
                    && tx.try_send((chan, data)).is_err()
                {
                    metrics::counter!(m::PUBSUB_DROPPED).increment(1);
                    tracing::warn!("a pub/sub message was dropped: the adapter's queue is full");
                }
            }
            Err(broadcast::error::RecvError::Lagged(n)) => {
                metrics::counter!(m::PUBSUB_DROPPED).increment(n);
                tracing::warn!(dropped = n, "pub/sub messages were dropped: the router lagged");
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

impl Driver for ResilientDriver {
    type Error = RedisError;

    async fn publish(&self, chan: String, val: Vec<u8>) -> Result<(), Self::Error> {
        if !self.inner.health.is_up() {
            return Err(RedisError::Down);
        }
        self.bounded(self.inner.publisher.spublish::<i64, _, _>(chan, val)).await.map(drop)
    }

    async fn subscribe(&self, chan: String, size: usize) -> Result<MessageStream<ChanItem>, Self::Error> {
        let (tx, rx) = mpsc::channel(size);
        self.inner.handlers.write().unwrap().insert(chan.clone(), tx);
        if self.inner.health.is_up()
            && let Err(e) = self.bounded(self.inner.subscriber.ssubscribe(chan.as_str())).await
        {
            tracing::warn!(chan, error = %e, "subscribe failed; retried when redis answers");
        }
        Ok(MessageStream::new(rx))
    }

    async fn unsubscribe(&self, chan: String) -> Result<(), Self::Error> {
        self.inner.handlers.write().unwrap().remove(&chan);
        if self.inner.health.is_up() {
            self.bounded(self.inner.subscriber.sunsubscribe(chan)).await?;
        }
        Ok(())
    }

    async fn num_serv(&self, chan: &str) -> Result<u16, Self::Error> {
        if !self.inner.health.is_up() {
            return Err(RedisError::Down);
        }
        let (_, n): (String, u16) = self.bounded(self.inner.publisher.pubsub_shardnumsub(chan)).await?;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::check_scheme;

    #[test]
    fn only_the_supported_topologies_schemes_pass() {
        for ok in ["redis://h:6379", "redis-cluster://h:1?node=h:2", "redis-sentinel://s:26379?sentinelServiceName=m"] {
            assert!(check_scheme(ok).is_ok(), "{ok}");
        }
        for tls in ["rediss://h:6380", "rediss-cluster://h:1", "rediss-sentinel://s:26379?sentinelServiceName=m"] {
            assert!(check_scheme(tls).is_ok(), "{tls}");
        }
        assert!(check_scheme("redis-clusters://h:1").is_err());
        let other = check_scheme("http://:secret@h:6379").unwrap_err().to_string();
        assert!(other.contains("redis-cluster://") && !other.contains("secret"), "{other}");
        assert!(check_scheme("h:6379").is_err());
    }
}
