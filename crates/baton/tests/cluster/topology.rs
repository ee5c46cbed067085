//! Issue 16's faults, each under the traffic and checker of `faults.rs`: on a Redis
//! Cluster (three masters, three replicas), the master of the slot written changes
//! cross on killed (its replica promoted), and that slot migrated to another master;
//! on Sentinel, the master killed (the replica promoted); on a standalone Redis, one
//! instance's pub/sub silently muted (its subscriptions deliver nothing, its PINGs
//! are answered), and on a Redis Cluster one shard's pub/sub muted for every
//! instance, which only the delivery probe sees.
//!
//! Each test pins its topology (scripts/test runs them once, not once per
//! topology) and prints one `topology <name> figures:` line with the time until
//! cross-instance delivery resumed both ways, measured from the fault by a member's
//! message reaching a member on the other instance live.

use std::time::{Duration, Instant};

use crate::faults::{Readyz, Traffic};
use crate::harness::{Cluster, Options, Topology};

/// A probe fast enough for a test: a round every 500 ms, unready after 2 s.
const PROBE: [(&str, &str); 2] = [("BATON_DELIVERY_PROBE_INTERVAL", "500ms"), ("BATON_DELIVERY_TIMEOUT", "2s")];

/// The pub/sub channel written changes cross the cluster on (gateway/relay.rs,
/// under the default prefix).
const WRITTEN: &str = "baton:written";

fn on(topology: Topology, proxy_redis: bool) -> Options {
    Options {
        redis: Some(topology),
        proxy_redis,
        env: PROBE.iter().map(|(k, v)| (*k, v.to_string())).collect(),
        ..Options::default()
    }
}

/// Delivery from instance 0 to 1 and from 1 to 0, each measured from `fault`.
async fn resumed_both_ways(t: &mut Traffic, fault: Instant) -> (Duration, Duration) {
    let there = t.delivery_resumed(0, 1, fault).await;
    let back = t.delivery_resumed(1, 0, fault).await;
    (there, back)
}

/// Members chat on a two-instance cluster while `fault` breaks its Redis (at the
/// start of the fault, then for 3 s); the checker runs once it is over. Returns
/// the figures' line: the checker's report, when delivery resumed each way (from
/// the fault), what /readyz said.
async fn fault_under_traffic(cluster: &Cluster, fault: impl Future<Output = ()>) -> String {
    let mut t = Traffic::start(cluster, 4).await;
    let readyz = Readyz::watch(cluster);
    t.rounds(2).await;
    let at = Instant::now();
    fault.await;
    t.during_fault = true;
    let (there, back) = resumed_both_ways(&mut t, at).await;
    let healed = Instant::now();
    t.rounds_while(Duration::from_secs(3), Duration::from_secs(3), || true).await;
    t.during_fault = false;
    t.rounds(2).await;
    let report = t.check().await;
    format!(
        "{report}, cross-instance delivery resumed {there:?} (0 to 1) and {back:?} (1 to 0) after the fault, \
         /readyz said {}",
        readyz.summary(at, healed)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topology_redis_cluster_master_killed_under_traffic() {
    let cluster = Cluster::start_with(2, on(Topology::Cluster, false)).await;
    let slot = cluster.redis.slot_of(WRITTEN).await;
    let master = cluster.redis.master_of(slot).await;
    let figures = fault_under_traffic(&cluster, async { cluster.redis.kill_server(master) }).await;
    assert_ne!(cluster.redis.master_of(slot).await, master, "a replica took the slot over");
    println!("topology redis cluster master killed figures: the master of slot {slot} killed: {figures}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topology_redis_cluster_slot_migrated_under_traffic() {
    let cluster = Cluster::start_with(2, on(Topology::Cluster, false)).await;
    let slot = cluster.redis.slot_of(WRITTEN).await;
    let from = cluster.redis.master_of(slot).await;
    let to = *cluster.redis.masters().await.iter().find(|m| **m != from).unwrap();
    let figures = fault_under_traffic(&cluster, cluster.redis.migrate_slot(slot, to)).await;
    assert_eq!(cluster.redis.master_of(slot).await, to, "the slot moved");
    println!("topology redis cluster slot migrated figures: slot {slot} moved: {figures}");
}

/// The slot of the registry of live instances, which every instance reads every
/// probe round, held half-moved for 3 s: the old master answers `ASK` for the key
/// it gave away, and the instances follow it (`ASKING` is counted on the new
/// master) without a failed command (`baton_redis_errors_total` unchanged) or a
/// moment unready; the checker finds nothing lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topology_redis_cluster_ask_redirections_during_a_migration_are_followed() {
    let cluster = Cluster::start_with(2, on(Topology::Cluster, false)).await;
    let slot = cluster.redis.slot_of("baton:instances").await;
    let from = cluster.redis.master_of(slot).await;
    let to = *cluster.redis.masters().await.iter().find(|m| **m != from).unwrap();
    let errors = || async {
        let mut total = 0.0;
        for i in 0..2 {
            let text = reqwest::get(format!("{}/metrics", cluster.base(i))).await.unwrap().text().await.unwrap();
            total += text
                .lines()
                .find_map(|l| l.strip_prefix("baton_redis_errors_total ")?.parse::<f64>().ok())
                .unwrap_or(0.0);
        }
        total
    };
    let (errors_before, asking_before) = (errors().await, cluster.redis.calls(to, "asking").await);
    let hold = Duration::from_secs(3);
    let figures = fault_under_traffic(&cluster, cluster.redis.migrate_slot_holding(slot, to, hold)).await;
    let asked = cluster.redis.calls(to, "asking").await - asking_before;
    let failed = errors().await - errors_before;
    assert_eq!(cluster.redis.master_of(slot).await, to, "the slot moved");
    assert!(asked > 0, "no client was redirected with ASK while slot {slot} was half-moved");
    assert_eq!(failed, 0.0, "redis commands failed during the migration");
    println!(
        "topology redis cluster ask redirections figures: slot {slot} held half-moved {hold:?}, ASKING followed {asked} \
         times, failed redis commands {failed}: {figures}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topology_sentinel_master_killed_under_traffic() {
    let cluster = Cluster::start_with(2, on(Topology::Sentinel, false)).await;
    let master = cluster.redis.sentinel_master().await;
    let figures = fault_under_traffic(&cluster, async { cluster.redis.kill_server(master) }).await;
    assert_ne!(cluster.redis.sentinel_master().await, master, "the Sentinels promoted the replica");
    println!("topology sentinel master killed figures: the master killed: {figures}");
}

/// One instance's subscriptions deliver nothing while its connections look healthy:
/// that instance, and only it, turns unready, repairs itself (subscribing again,
/// then a new pub/sub connection), and the clients get everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topology_one_instance_pubsub_muted_is_caught_by_the_delivery_probe() {
    let cluster = Cluster::start_with(2, on(Topology::Standalone, true)).await;
    let mut t = Traffic::start(&cluster, 4).await;
    let readyz = Readyz::watch(&cluster);
    t.rounds(2).await;
    let proxy = cluster.instances[0].redis_proxy.as_ref().unwrap();
    let accepted = proxy.accepted();
    let fault = Instant::now();
    assert_eq!(proxy.mute_pubsub_if_client_sent(b"SSUBSCRIBE"), 1, "one pub/sub connection");
    t.during_fault = true;
    // Traffic goes on until the instance has been unready and is ready again.
    let mut unready_after: Option<Duration> = None;
    let deadline = Instant::now() + Duration::from_secs(30);
    let ready_again_after = loop {
        t.round().await;
        match unready_after {
            None => unready_after = readyz.first(0, 503, fault),
            Some(unready) => {
                if let Some(ready) = readyz.first(0, 200, fault + unready) {
                    break unready + ready;
                }
            }
        }
        assert!(Instant::now() < deadline, "instance 0 was not unready then ready again within 30 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let healed = Instant::now();
    let to_it = t.delivery_resumed(1, 0, fault).await;
    t.during_fault = false;
    assert!(readyz.always(1, 200, fault, healed), "the instance that delivers stayed ready");
    let reconnected = proxy.accepted() - accepted;
    t.rounds(2).await;
    let report = t.check().await;
    let metrics = reqwest::get(format!("{}/metrics", cluster.base(0))).await.unwrap().text().await.unwrap();
    let repairs: Vec<&str> = metrics.lines().filter(|l| l.starts_with("baton_delivery_repairs_total")).collect();
    println!(
        "topology one instance's pubsub muted figures: {report}, unready {:?} after the mute (timeout 2 s), ready \
         again {ready_again_after:?} after it, live delivery to it {to_it:?} after it, new connections to Redis \
         {reconnected}, repairs {repairs:?}, /readyz said {}",
        unready_after.unwrap(),
        readyz.summary(fault, healed)
    );
}

/// One Redis Cluster shard stops delivering pub/sub (a proxy every client reaches
/// that master through drops the messages it pushes, and nothing else), a shard
/// that `{prefix}:written` is not on: chat crosses the cluster throughout, but the
/// namespaces' channels there are silent. Only the probe's channel on that shard
/// shows it: every instance turns unready, repairs (a new pub/sub connection goes
/// through the proxy unmuted), and is ready again; nothing acked is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topology_redis_cluster_one_shard_muted_is_caught_by_the_delivery_probe() {
    let options = Options { proxy_one_shard: Some(WRITTEN), ..on(Topology::Cluster, false) };
    let cluster = Cluster::start_with(2, options).await;
    let mut t = Traffic::start(&cluster, 4).await;
    let readyz = Readyz::watch(&cluster);
    t.rounds(2).await;
    let (master, proxy) = cluster.shard_proxy.as_ref().unwrap();
    let fault = Instant::now();
    let muted = proxy.mute_pubsub_if_client_sent(b"SSUBSCRIBE");
    assert_eq!(muted, 2, "each instance's pub/sub connection to that master");
    t.during_fault = true;
    let mut unready: Vec<Option<Duration>> = vec![None; 2];
    let mut ready_again: Vec<Option<Duration>> = vec![None; 2];
    let deadline = Instant::now() + Duration::from_secs(30);
    while ready_again.iter().any(Option::is_none) {
        t.round().await;
        for i in 0..2 {
            match unready[i] {
                None => unready[i] = readyz.first(i, 503, fault),
                Some(after) => {
                    ready_again[i] = ready_again[i].or(readyz.first(i, 200, fault + after).map(|d| d + after))
                }
            }
        }
        assert!(Instant::now() < deadline, "unready {unready:?}, ready again {ready_again:?} after 30 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let healed = Instant::now();
    t.during_fault = false;
    t.rounds(2).await;
    let report = t.check().await;
    println!(
        "topology redis cluster one shard's pubsub muted figures: {report}, master {master} muted for {muted} \
         pub/sub connections; unready after {unready:?}, ready again after {ready_again:?} (timeout 2 s), /readyz \
         said {}",
        readyz.summary(fault, healed)
    );
}

/// A Redis that speaks TLS only (`rediss://`, the instances trusting its CA through
/// `SSL_CERT_FILE`): the cluster runs on it as on any other, and the delivery
/// probe finds it delivering (both instances stay ready).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topology_redis_over_tls_carries_the_cluster() {
    let cluster = Cluster::start_with(2, on(Topology::Tls, false)).await;
    assert!(cluster.redis.url().starts_with("rediss://"), "{}", cluster.redis.url());
    let mut t = Traffic::start(&cluster, 4).await;
    let readyz = Readyz::watch(&cluster);
    let start = Instant::now();
    t.rounds(4).await;
    let (there, back) = resumed_both_ways(&mut t, start).await;
    let end = Instant::now();
    assert!(readyz.always(0, 200, start, end) && readyz.always(1, 200, start, end), "{}", readyz.summary(start, end));
    let report = t.check().await;
    println!(
        "topology redis over tls figures: {report}, live delivery 0 to 1 and 1 to 0 seen within {there:?} and {back:?}"
    );
}
