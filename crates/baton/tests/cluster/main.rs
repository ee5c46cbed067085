//! Multi-instance tests: several baton processes, their own Redis and a fresh
//! PostgreSQL database; instances are killed with SIGKILL and Redis is restarted
//! under traffic. Each test prints its figures (messages, members, lost, raw
//! duplicates, recovery times); the assertions are about correctness only.
//! `faults.rs` holds the fault scenarios (network faults through `proxy.rs`), with
//! the checker they share.

#[path = "../common/mod.rs"]
mod common;
mod faults;
mod harness;
mod member;
mod memory;
mod proxy;
mod topology;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::json;

use common::{Community, Rest, WAIT};
use harness::{Cluster, Options};
use member::Member;

/// Each channel's lastSeq, from the database.
async fn last_seqs(rest: &Rest, c: &Community) -> BTreeMap<i64, i64> {
    let (_, list) = rest.get(&format!("/api/communities/{}/channels", c.cid), &c.owner.token).await;
    list.as_array().unwrap().iter().map(|ch| (ch["id"].as_i64().unwrap(), ch["lastSeq"].as_i64().unwrap())).collect()
}

/// Every eventSeq 1..=lastSeq of every channel is held by every member.
fn assert_nothing_lost(members: &[Member], expected: &BTreeMap<i64, i64>) -> usize {
    let mut lost = 0;
    for m in members {
        for (channel, last) in expected {
            let missing = (1..=*last).filter(|s| !m.seen[channel].contains(s)).count();
            lost += missing;
            assert_eq!(missing, 0, "{} misses {missing} events in channel {channel}", m.user.username);
        }
    }
    lost
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acked_message_reaches_every_member_on_every_instance_exactly_once() {
    let cluster = Cluster::start(3).await;
    let rest = cluster.rest(0);
    let c = rest.populated_community(6, 2).await;
    // Members on instances 1 and 2 only: instance 0 has no socket of the community,
    // and what is posted to it over REST must still reach them.
    let mut members = Vec::new();
    for (i, user) in c.users.iter().enumerate() {
        members.push(Member::join(cluster.base(1 + i % 2), c.cid, user.clone(), &c.channels).await);
    }
    let mut acked = 0;
    for round in 0..10 {
        for (i, m) in members.iter_mut().enumerate() {
            let channel = c.channels[(round + i) % 2];
            m.send(channel, &format!("{round}:{i}"), &format!("{round}-{i}")).await.unwrap();
            acked += 1;
        }
        let channel = c.channels[round % 2];
        let (status, _) = rest
            .post(&format!("/api/channels/{channel}/messages"), &c.owner.token, json!({ "content": "via REST on 0" }))
            .await;
        assert_eq!(status, 201);
        acked += 1;
    }
    let expected = last_seqs(&rest, &c).await;
    assert_eq!(expected.values().sum::<i64>(), acked as i64);
    // Senders do not get their own messages: each member gets everyone else's.
    let deadline = Instant::now() + Duration::from_secs(10);
    for m in &mut members {
        loop {
            m.drain();
            let own = 10;
            if m.received_raw >= acked - own || Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(m.received_raw, acked - 10, "{} got {} of {} live", m.user.username, m.received_raw, acked - 10);
        assert_eq!(m.duplicates, 0);
    }
    println!(
        "cross-instance delivery: {acked} messages, {} members on 2 instances (REST posts on a third), \
         {} deliveries, lost 0, duplicated 0",
        members.len(),
        members.iter().map(|m| m.received_raw).sum::<usize>()
    );
}

/// One publish per written message (issue 14): the instance that writes a message
/// delivers it to its own sockets, then relays it to the others in one Redis publish
/// that carries both its room event and its `notify` (gateway/relay.rs). Through the
/// adapter it took two: the room broadcast and the `notify` on `/`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_written_message_crosses_the_cluster_in_one_publish() {
    const MESSAGES: usize = 20;
    // The delivery probe publishes too: its first round is at start, the next in an hour.
    let options = Options { env: vec![("BATON_DELIVERY_PROBE_INTERVAL", "1h".into())], ..Options::default() };
    let cluster = Cluster::start_with(2, options).await;
    let rest = cluster.rest(0);
    let c = rest.populated_community(4, 1).await;
    let channel = c.channels[0];
    let mut sender = Member::join(cluster.base(0), c.cid, c.users[0].clone(), &[channel]).await;
    let mut here = Member::join(cluster.base(0), c.cid, c.users[1].clone(), &[channel]).await;
    let mut there = Member::join(cluster.base(1), c.cid, c.users[2].clone(), &[channel]).await;
    // A member with only their own line open, on the other instance: `notify` only.
    let mut line =
        baton_client::Socket::connect(cluster.base(1), "/", json!({ "token": c.users[3].token })).await.unwrap();
    // The joins' presence broadcasts are done before counting.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = cluster.redis.spublishes().await;
    for i in 0..MESSAGES {
        sender.send(channel, &format!("m{i}"), &format!("c{i}")).await.unwrap();
    }
    let deadline = Instant::now() + WAIT;
    let mut notified = 0;
    loop {
        here.drain();
        there.drain();
        notified += line
            .drain()
            .into_iter()
            .filter(|item| matches!(item, baton_client::Incoming::Event { name, .. } if name == "notify"))
            .count();
        let done = here.received_raw == MESSAGES && there.received_raw == MESSAGES && notified == MESSAGES;
        if done || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!((here.received_raw, there.received_raw, notified), (MESSAGES, MESSAGES, MESSAGES));
    assert_eq!((here.duplicates, there.duplicates), (0, 0));
    sender.drain();
    assert_eq!(sender.received_raw, 0, "the sender does not get its own messages");
    let published = cluster.redis.spublishes().await - before;
    println!("relay: {MESSAGES} messages, {published} Redis publishes");
    assert_eq!(published, MESSAGES as u64, "one publish per message");
}

/// The reconnect wave of a deploy: many clients connect at once to a community
/// namespace that does not exist yet on the instance. socketioxide created one
/// namespace per concurrent connect while the Redis adapter subscribed, orphaning
/// all but the last (their first event closed the connection); the vendored patch
/// (vendor/socketioxide/BATON-PATCH.md) makes them share one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_first_connects_to_a_community_on_an_instance_shares_one_namespace() {
    const SOCKETS: usize = 60;
    let cluster = Cluster::start(2).await;
    let rest = cluster.rest(0);
    let c = rest.populated_community(3, 1).await;
    let channel = c.channels[0];
    let path = format!("/socket/commu-{}", c.cid);
    let connects = (0..SOCKETS).map(|i| {
        let auth = json!({ "token": c.users[i % c.users.len()].token });
        baton_client::Socket::connect(cluster.base(1), &path, auth)
    });
    let mut sockets: Vec<_> = futures::future::join_all(connects).await.into_iter().map(|s| s.unwrap()).collect();
    let joins = sockets.iter().map(|s| s.emit_with_ack("join", json!({ "channels": [channel] }), WAIT));
    for (i, ack) in futures::future::join_all(joins).await.into_iter().enumerate() {
        let ack = ack.unwrap_or_else(|e| panic!("socket {i} got no join ack: {e}"));
        assert_eq!(ack["joined"], json!([channel]), "socket {i}: {ack}");
    }
    // A message posted on the other instance reaches every one of them.
    let (status, _) = rest
        .post(&format!("/api/channels/{channel}/messages"), &c.owner.token, json!({ "content": "all of you" }))
        .await;
    assert_eq!(status, 201);
    let deadline = Instant::now() + WAIT;
    let mut reached = 0;
    for (i, socket) in sockets.iter_mut().enumerate() {
        loop {
            let got = socket.drain().into_iter().any(|item| {
                matches!(&item, baton_client::Incoming::Event { name, args }
                    if name == "new-chat" && args[0]["content"] == "all of you")
            });
            if got {
                reached += 1;
                break;
            }
            assert!(socket.is_open(), "socket {i}'s connection was closed");
            assert!(Instant::now() < deadline, "socket {i} did not get the message");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    println!("namespace burst: {SOCKETS} concurrent first connects, {reached} joined and reached");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_of_a_killed_instance_recover_on_the_survivors_without_losing_a_message() {
    let mut cluster = Cluster::start(3).await;
    let rest = cluster.rest(1);
    let c = rest.populated_community(6, 2).await;
    let mut members = Vec::new();
    for (i, user) in c.users.iter().enumerate() {
        members.push(Member::join(cluster.base(i % 3), c.cid, user.clone(), &c.channels).await);
    }
    let mut acked = 0;
    let mut resent = 0;
    for round in 0..20 {
        for (i, m) in members.iter_mut().enumerate() {
            if round == 10 && i == 3 {
                // Mid-round, while everyone is chatting.
                cluster.instances[0].kill().await;
            }
            let channel = c.channels[(round + i) % 2];
            let (content, cmid) = (format!("{round}:{i}"), format!("{round}-{i}"));
            match m.send(channel, &content, &cmid).await {
                Ok(_) => {}
                Err(_) => {
                    // The instance died under it: reconnect to a survivor, as a load
                    // balancer would send it, and send again with the same clientMsgId.
                    let survivor = cluster.base(1 + i % 2).to_owned();
                    m.connect_to(&survivor).await.expect("reconnect to a survivor");
                    m.send(channel, &content, &cmid).await.expect("resend after reconnect");
                    resent += 1;
                }
            }
            acked += 1;
        }
    }
    // Members of the killed instance that did not send after the kill notice now.
    for (i, m) in members.iter_mut().enumerate() {
        if !m.drain() || m.base == cluster.base(0) {
            let survivor = cluster.base(1 + i % 2).to_owned();
            m.connect_to(&survivor).await.expect("reconnect to a survivor");
        }
    }
    let expected = last_seqs(&rest, &c).await;
    assert_eq!(expected.values().sum::<i64>(), acked as i64, "each acked message was written once (clientMsgId)");
    for m in &mut members {
        m.settle(&expected).await;
    }
    let lost = assert_nothing_lost(&members, &expected);
    let moved: Vec<&Member> = members.iter().filter(|m| m.recoveries.len() > 1).collect();
    assert_eq!(moved.len(), 2, "the killed instance's two members moved");
    for m in &moved {
        let last = m.rejoined.last().unwrap();
        assert_eq!(last, &c.channels, "{} is back in all its rooms", m.user.username);
    }
    let mut times: Vec<Duration> = moved.iter().map(|m| *m.recoveries.last().unwrap()).collect();
    times.sort();
    println!(
        "kill -9 of 1 of 3 instances: {acked} messages, {} members ({} moved, {resent} sends repeated), lost {lost}, \
         raw duplicates {} (dropped by eventSeq), filled from history {}, reconnect-to-recovered p50 {:?} max {:?}",
        members.len(),
        moved.len(),
        members.iter().map(|m| m.duplicates).sum::<usize>(),
        members.iter().map(|m| m.filled_from_history).sum::<usize>(),
        percentile(&times, 0.5),
        times.last().unwrap(),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_under_traffic_loses_nothing_once_clients_recover() {
    let mut cluster = Cluster::start(2).await;
    let rest = cluster.rest(0);
    let c = rest.populated_community(4, 2).await;
    let mut members = Vec::new();
    for (i, user) in c.users.iter().enumerate() {
        members.push(Member::join(cluster.base(i % 2), c.cid, user.clone(), &c.channels).await);
    }
    let mut acked = 0;
    let mut acked_during_outage = 0;
    let mut outage = false;
    for round in 0..20 {
        if round == 6 {
            cluster.redis.kill().await;
            outage = true;
        }
        if round == 12 {
            // Still serving its own clients, but out of the load balancer.
            let (status, body) = cluster.rest(0).request(reqwest::Method::GET, "/readyz", None, None).await;
            assert_eq!((status.as_u16(), body["error"]["code"].as_str()), (503, Some("unavailable")), "{body}");
            let metrics = reqwest::get(format!("{}/metrics", cluster.base(1))).await.unwrap().text().await.unwrap();
            assert!(metrics.contains("baton_redis_up 0"), "{metrics}");
            cluster.redis.start_again().await;
            outage = false;
        }
        for (i, m) in members.iter_mut().enumerate() {
            let channel = c.channels[(round + i) % 2];
            let eseq = m.send(channel, &format!("{round}:{i}"), &format!("{round}-{i}")).await;
            assert!(eseq.is_ok(), "a send is acked whatever Redis does: {eseq:?}");
            acked += 1;
            acked_during_outage += outage as usize;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for i in 0..2 {
        cluster.wait_ready(i).await;
    }
    let expected = last_seqs(&rest, &c).await;
    assert_eq!(expected.values().sum::<i64>(), acked as i64);
    for m in &mut members {
        m.settle(&expected).await;
    }
    let lost = assert_nothing_lost(&members, &expected);
    let filled: usize = members.iter().map(|m| m.filled_from_history).sum();
    for m in &members {
        println!(
            "  {} on {}: received {} live or replayed, filled {} from history",
            m.user.username, m.base, m.received_raw, m.filled_from_history
        );
    }
    // Messages acked on the other instance during the outage could not cross: the
    // gaps were seen (position / eventSeq) and filled from history.
    assert!(filled > 0, "the outage's cross-instance messages were repaired from history");
    // After the restart, live delivery crosses instances again.
    let before: Vec<usize> = members.iter().map(|m| m.received_raw).collect();
    members[0].send(c.channels[0], "after the restart", "after").await.unwrap();
    let other = members.iter().position(|m| m.base != members[0].base).unwrap();
    common::eventually("live delivery across instances after the restart", WAIT, async || {
        members[other].drain();
        members[other].received_raw > before[other]
    })
    .await;
    println!(
        "redis restart under traffic: {acked} messages ({acked_during_outage} acked during the outage), {} members on 2 \
         instances, lost {lost} after recovery, filled from history {filled}, raw duplicates {}",
        members.len(),
        members.iter().map(|m| m.duplicates).sum::<usize>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_instances_users_go_offline_within_30_seconds() {
    let mut cluster = Cluster::start(2).await;
    let rest = cluster.rest(1);
    let c = rest.populated_community(2, 1).await;
    let channel = c.channels[0];
    let _doomed = cluster.rest(0).joined(c.cid, &c.users[0], &[channel]).await;
    let mut observer = cluster.rest(1).joined(c.cid, &c.users[1], &[channel]).await;
    let (_, online) = rest.get(&format!("/api/channels/{channel}/presence"), &c.owner.token).await;
    assert_eq!(online["online"], json!([c.users[0].id, c.users[1].id]));
    cluster.instances[0].kill().await;
    let killed = Instant::now();
    loop {
        let p = observer.next_event("presence", Duration::from_secs(30)).await.expect("presence within 30 s");
        if p["userId"] == c.users[0].id && p["online"] == false {
            break;
        }
    }
    let took = killed.elapsed();
    assert!(took < Duration::from_secs(30));
    let (_, online) = rest.get(&format!("/api/channels/{channel}/presence"), &c.owner.token).await;
    assert_eq!(online["online"], json!([c.users[1].id]));
    println!("presence: a SIGKILLed instance's user was reported offline after {took:?}");
}

/// The presence race of a cluster: each user has a socket on each of two instances
/// in one channel, and both close at the same moment (then again with a `join`
/// still in flight, then while the connect's rejoin runs). Every user must end
/// offline in Redis, announced to an observer on either instance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simultaneous_disconnects_on_two_instances_leave_no_one_online() {
    const USERS: usize = 12;
    let cluster = Cluster::start(2).await;
    let rest = cluster.rest(0);
    let c = rest.populated_community(USERS, 1).await;
    let ch = c.channels[0];
    let ns = format!("/socket/commu-{}", c.cid);
    let online = async || -> Vec<i64> {
        let (_, body) = rest.get(&format!("/api/channels/{ch}/presence"), &c.owner.token).await;
        body["online"].as_array().unwrap().iter().map(|u| u.as_i64().unwrap()).collect()
    };
    let _watch = cluster.rest(1).joined(c.cid, &c.owner, &[ch]).await;
    let started = Instant::now();
    let mut pairs = Vec::new();
    for user in &c.users {
        pairs
            .push((cluster.rest(0).joined(c.cid, user, &[ch]).await, cluster.rest(1).joined(c.cid, user, &[ch]).await));
    }
    assert_eq!(online().await.len(), USERS + 1);
    futures::future::join_all(pairs.into_iter().map(|(a, b)| async move { tokio::join!(a.close(), b.close()) })).await;
    common::eventually("every user of the pairs is offline", WAIT, async || online().await == vec![c.owner.id]).await;
    for round in 0..2 {
        let mut closing = Vec::new();
        for (i, user) in c.users.iter().enumerate() {
            let s = cluster.rest(i % 2).connect(&ns, user).await;
            let _ack = s.emit_with_ack_deferred("join", json!({ "channels": [ch] })).await.unwrap();
            closing.push(async move {
                if round == 0 {
                    s.close().await;
                } else {
                    drop(s);
                }
            });
        }
        futures::future::join_all(closing).await;
        common::eventually("closed mid-join: offline", WAIT, async || online().await == vec![c.owner.id]).await;
    }
    for (i, user) in c.users.iter().enumerate() {
        drop(cluster.rest(i % 2).connect(&ns, user).await);
    }
    common::eventually("closed mid-rejoin: offline", WAIT, async || online().await == vec![c.owner.id]).await;
    println!(
        "presence: {USERS} users' simultaneous disconnects on two instances, all offline, in {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_removed_while_away_is_not_rejoined_on_another_instance() {
    let cluster = Cluster::start(2).await;
    let rest = cluster.rest(0);
    let c = rest.populated_community(1, 2).await;
    let user = &c.users[0];
    let s = cluster.rest(0).joined(c.cid, user, &c.channels).await;
    s.close().await;
    let (status, _) = rest
        .request(
            reqwest::Method::DELETE,
            &format!("/api/channels/{}/members/{}", c.channels[0], user.id),
            Some(&c.owner.token),
            None,
        )
        .await;
    assert_eq!(status, 204);
    let mut again = Rest::new(cluster.base(1).to_owned()).connect(&format!("/socket/commu-{}", c.cid), user).await;
    assert_eq!(again.next_event("rejoined", WAIT).await.unwrap(), json!({ "channels": [c.channels[1]] }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_down_instances_still_admit_and_serve_their_own_clients() {
    let mut cluster = Cluster::start(2).await;
    let rest = cluster.rest(0);
    let c = rest.populated_community(2, 1).await;
    let channel = c.channels[0];
    cluster.redis.kill().await;
    common::eventually("instance 1 notices Redis is down", Duration::from_secs(5), async || {
        let (status, _) = cluster.rest(1).request(reqwest::Method::GET, "/readyz", None, None).await;
        status == 503
    })
    .await;
    // Instance 1 has no namespace for this community yet: creating it subscribes
    // to Redis, which must not make the first connect wait for Redis (the helpers'
    // waits are bounded by WAIT; the connect used to hang until the client gave up).
    let mut a = cluster.rest(1).joined(c.cid, &c.users[0], &[channel]).await;
    let mut b = cluster.rest(1).joined(c.cid, &c.users[1], &[channel]).await;
    let ack = common::chat(&a, channel, "local while redis is down").await;
    assert_eq!(ack["written"], true);
    assert_eq!(b.next_event("new-chat", WAIT).await.unwrap(), ack["chatInfo"]);
    let (_, page) = cluster.rest(0).get(&format!("/api/channels/{channel}/messages"), &c.owner.token).await;
    assert_eq!(page["messages"][0]["content"], "local while redis is down");
    common::assert_no_event(&mut a, "new-chat").await;
}

/// A cluster instance's agent port (`BATON_LB_AGENT_LISTEN`, HAProxy's
/// `agent-check`) says `up drain` while Redis is unreachable (the instance keeps its
/// clients, gets no new ones; `/readyz` says why), and `up ready` once Redis is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_says_drain_while_redis_is_unreachable_and_up_ready_once_it_is_back() {
    let agent_port = harness::free_port();
    let env = vec![("BATON_LB_AGENT_LISTEN", format!("127.0.0.1:{agent_port}"))];
    let mut cluster = Cluster::start_with(1, harness::Options { env, ..Default::default() }).await;
    let agent = std::net::SocketAddr::from(([127, 0, 0, 1], agent_port));
    assert_eq!(common::agent_says(agent, None).await, "up ready\n");
    cluster.redis.kill().await;
    common::eventually("the agent says drain", WAIT, async || common::agent_says(agent, None).await == "up drain\n")
        .await;
    let (status, body) = cluster.rest(0).request(reqwest::Method::GET, "/readyz", None, None).await;
    assert_eq!(
        (status.as_u16(), body["error"]["code"].as_str(), body["error"]["message"].as_str()),
        (503, Some("unavailable"), Some("redis is unreachable")),
        "/readyz gives the same reason: {body}"
    );
    cluster.redis.start_again().await;
    common::eventually("the agent says up ready again", WAIT * 2, async || {
        common::agent_says(agent, None).await == "up ready\n"
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_moves_clients_to_the_survivors_without_loss_or_presence_flapping() {
    let mut cluster = Cluster::start(2).await;
    let rest = cluster.rest(1);
    let c = rest.populated_community(5, 2).await;
    let admin = harness::ADMIN_TOKEN;
    // members 0..4 chat; 0 and 2 are on the instance that drains. The observer
    // (member 4, on the survivor) watches presence; member 3 on the drained
    // instance will not come back.
    let mut members = Vec::new();
    for (i, user) in c.users.iter().take(4).enumerate() {
        members.push(Member::join(cluster.base(i % 2), c.cid, user.clone(), &c.channels).await);
    }
    let mut gone = cluster.rest(0).joined(c.cid, &c.users[4], &c.channels).await;
    let mut observer = rest.joined(c.cid, &c.owner, &c.channels).await;
    let drained_users: Vec<i64> = vec![c.users[0].id, c.users[2].id];

    let mut acked = 0;
    for round in 0..12 {
        if round == 4 {
            let (status, body) = cluster.rest(0).post("/admin/drain", admin, json!({})).await;
            assert_eq!(status, 202, "{body}");
            common::eventually("the draining instance leaves the load balancer", WAIT, async || {
                cluster.rest(0).request(reqwest::Method::GET, "/readyz", None, None).await.0 == 503
            })
            .await;
            let refused = cluster.rest(0).connect_with("/", json!({ "token": c.owner.token })).await.err();
            assert!(
                matches!(refused, Some(baton_client::ClientError::Handshake { status: Some(503), .. })),
                "{refused:?}"
            );
        }
        for (i, m) in members.iter_mut().enumerate() {
            let channel = c.channels[(round + i) % 2];
            let (content, cmid) = (format!("{round}:{i}"), format!("{round}-{i}"));
            if !m.drain() {
                // Its transport was closed by the drain: reconnect through the
                // "load balancer" (the survivor) and carry on.
                m.connect_to(cluster.base(1)).await.expect("reconnect to the survivor");
            }
            if m.send(channel, &content, &cmid).await.is_err() {
                m.connect_to(cluster.base(1)).await.expect("reconnect to the survivor");
                m.send(channel, &content, &cmid).await.expect("resend");
            }
            acked += 1;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // The drained instance ends its window and exits 0.
    let status = cluster.instances[0].exited(Duration::from_secs(10)).await;
    assert!(status.success(), "the drained instance exits 0: {status:?}");
    for m in members.iter_mut() {
        if !m.drain() || m.base == cluster.base(0) {
            m.connect_to(cluster.base(1)).await.expect("reconnect to the survivor");
        }
    }
    let expected = last_seqs(&rest, &c).await;
    assert_eq!(expected.values().sum::<i64>(), acked as i64);
    for m in &mut members {
        m.settle(&expected).await;
    }
    let lost = assert_nothing_lost(&members, &expected);
    // The user who did not come back goes offline once the grace period is over;
    // the ones who moved never do.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut offline = Vec::new();
    while !offline.contains(&c.users[4].id) {
        assert!(Instant::now() < deadline, "the user who left was never reported offline: {offline:?}");
        if let Ok(p) = observer.next_event("presence", Duration::from_millis(500)).await
            && p["online"] == false
        {
            offline.push(p["userId"].as_i64().unwrap());
        }
    }
    // Its transport was closed (not a DISCONNECT: that would stop a stock client
    // from reconnecting).
    loop {
        match gone.next(WAIT).await {
            Ok(baton_client::Incoming::Closed) | Err(baton_client::ClientError::Closed) => break,
            Ok(baton_client::Incoming::Disconnect) => panic!("the drain sent a DISCONNECT"),
            Ok(_) => continue,
            Err(e) => panic!("the drained transport did not close: {e}"),
        }
    }
    for u in &drained_users {
        assert!(!offline.contains(u), "user {u} moved by the drain flapped offline");
    }
    let (_, online) = rest.get(&format!("/api/channels/{}/presence", c.channels[0]), &c.owner.token).await;
    for u in &drained_users {
        assert!(online["online"].as_array().unwrap().contains(&json!(u)), "{online}");
    }
    let moved: Vec<&Member> = members.iter().filter(|m| m.recoveries.len() > 1).collect();
    let mut times: Vec<Duration> = moved.iter().map(|m| *m.recoveries.last().unwrap()).collect();
    times.sort();
    println!(
        "drain of 1 of 2 instances: {acked} messages, {} members ({} moved), lost {lost}, raw duplicates {}, \
         reconnect-to-recovered max {:?}, no presence flapping",
        members.len(),
        moved.len(),
        members.iter().map(|m| m.duplicates).sum::<usize>(),
        times.last().copied().unwrap_or_default(),
    );
}

/// A shed of half an instance's transports (issue 15's canary step): the chosen
/// clients move to the other instance (the "load balancer") without loss while the
/// shed instance stays ready and takes new sessions; their presence holds for the
/// grace period (3 s here), so the ones that come back in time never flap, and the
/// one that stays away longer is announced offline by the shed instance, through
/// Redis, then online again when it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shed_moves_a_share_of_an_instances_clients_without_loss_or_presence_flapping() {
    let cluster = Cluster::start(2).await;
    let rest = cluster.rest(1);
    let c = rest.populated_community(6, 2).await;
    let admin = harness::ADMIN_TOKEN;
    let mut members = Vec::new();
    for user in &c.users {
        members.push(Member::join(cluster.base(0), c.cid, user.clone(), &c.channels).await);
    }
    let mut observer = rest.joined(c.cid, &c.owner, &c.channels).await;
    let ready = |i: usize| {
        let rest = cluster.rest(i);
        async move { rest.request(reqwest::Method::GET, "/readyz", None, None).await.0 }
    };
    let mut acked = 0;
    let mut round = 0;
    let mut send_round = async |members: &mut Vec<Member>, away: Option<usize>| {
        for (i, m) in members.iter_mut().enumerate() {
            if Some(i) == away {
                continue;
            }
            let channel = c.channels[(round + i) % 2];
            let (content, cmid) = (format!("{round}:{i}"), format!("{round}-{i}"));
            if m.send(channel, &content, &cmid).await.is_err() {
                m.connect_to(cluster.base(1)).await.expect("reconnect to the other instance");
                m.send(channel, &content, &cmid).await.expect("resend");
            }
            acked += 1;
        }
        round += 1;
    };
    for _ in 0..3 {
        send_round(&mut members, None).await;
    }
    while observer.next_event("presence", Duration::from_millis(300)).await.is_ok() {}

    let (status, report) =
        cluster.rest(0).post("/admin/drain?wait=true", admin, json!({ "fraction": 0.5, "window_ms": 1000 })).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!((report["transports_at_start"].clone(), report["closed"].clone()), (json!(6), json!(3)), "{report}");
    assert_eq!(report["closed_websocket"], 3, "{report}");
    assert_eq!(ready(0).await, 200, "the shed instance stays ready");
    let newcomer = cluster.rest(0).connect_with("/", json!({ "token": c.owner.token })).await;
    assert!(newcomer.is_ok(), "the shed instance takes new sessions: {:?}", newcomer.err());
    // The moved ones see their transport closed (not a DISCONNECT).
    let mut moved = Vec::new();
    let deadline = Instant::now() + WAIT;
    while moved.len() < 3 && Instant::now() < deadline {
        moved = (0..members.len()).filter(|i| !members[*i].is_connected()).collect();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(moved.len(), 3, "the shed closed three members' transports");
    let late = moved[0];
    // All but one come back at once (to the other instance) and chat on.
    for &i in &moved[1..] {
        members[i].connect_to(cluster.base(1)).await.expect("reconnect to the other instance");
    }
    let away_since = Instant::now();
    while away_since.elapsed() < Duration::from_secs(5) {
        send_round(&mut members, Some(late)).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut offline = Vec::new();
    while let Ok(p) = observer.next_event("presence", Duration::from_millis(300)).await {
        if p["online"] == false {
            offline.push(p["userId"].as_i64().unwrap());
        }
    }
    let late_user = members[late].user.id;
    offline.sort();
    offline.dedup();
    assert_eq!(offline, vec![late_user], "only the member away past the grace went offline");
    members[late].connect_to(cluster.base(1)).await.expect("the late one comes back");
    let back = observer.next_event("presence", WAIT).await.unwrap();
    assert_eq!((back["userId"].as_i64(), back["online"].clone()), (Some(late_user), json!(true)));
    send_round(&mut members, None).await;
    assert_eq!(ready(0).await, 200, "the shed instance is still ready");

    let expected = last_seqs(&rest, &c).await;
    assert_eq!(expected.values().sum::<i64>(), acked as i64);
    for m in &mut members {
        m.settle(&expected).await;
    }
    let lost = assert_nothing_lost(&members, &expected);
    let (_, status) = cluster.rest(0).get("/admin/status", admin).await;
    assert_eq!(status["shed"], report);
    println!(
        "shed of 3 of 6 transports of 1 of 2 instances: {acked} messages, lost {lost}, raw duplicates {}, \
         {} ms, acks waited for {}, reconnect-to-recovered max {:?}, no presence flapping, the one away 5 s \
         announced offline",
        members.iter().map(|m| m.duplicates).sum::<usize>(),
        report["duration_ms"],
        report["acks_waited_for"],
        moved.iter().filter_map(|i| members[*i].recoveries.last().copied()).max().unwrap_or_default(),
    );
}

/// A shed answers the acks in flight on a transport before closing it: with the
/// shed instance's database slowed down (100 ms each way through its proxy), three
/// chats are in flight when a shed of all three transports, at once, begins; each
/// gets its ack (`written`), then its transport closes (no DISCONNECT).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shed_answers_the_acks_in_flight_before_closing_their_transport() {
    let options = harness::Options {
        proxy_postgres: true,
        // The bound on each transport's wait for its acks is a quarter of it: 2 s.
        env: vec![("BATON_DRAIN_WINDOW", "8s".into())],
        ..Default::default()
    };
    let cluster = Cluster::start_with(2, options).await;
    let rest = cluster.rest(1);
    let c = rest.populated_community(3, 1).await;
    let channel = c.channels[0];
    let mut sockets = Vec::new();
    for user in &c.users {
        sockets.push(cluster.rest(0).joined(c.cid, user, &[channel]).await);
    }
    cluster.instances[0].postgres_proxy.as_ref().unwrap().set(proxy::Mode::Delay(Duration::from_millis(100)));
    let mut acks = Vec::new();
    for (i, s) in sockets.iter().enumerate() {
        let chat = json!({ "chatType": "new", "channelId": channel, "content": format!("in flight {i}") });
        acks.push(s.emit_with_ack_deferred("chat", chat).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let shed = json!({ "count": 3, "window_ms": 0 });
    let (status, report) = cluster.rest(0).post("/admin/drain?wait=true", harness::ADMIN_TOKEN, shed).await;
    assert_eq!((status.as_u16(), report["closed"].clone()), (200, json!(3)), "{report}");
    // The first close waits for its chat; the batch that writes it writes the
    // others too, so the later closes may find nothing left in flight.
    assert!(report["acks_waited_for"].as_u64().unwrap() >= 1, "{report}");
    for (i, ack) in acks.into_iter().enumerate() {
        let ack = ack.wait(WAIT).await.unwrap_or_else(|e| panic!("chat {i} in flight lost its ack: {e}"));
        assert_eq!(ack["written"], true, "{ack}");
    }
    for (i, s) in sockets.iter_mut().enumerate() {
        loop {
            match s.next(WAIT).await {
                Ok(baton_client::Incoming::Closed) | Err(baton_client::ClientError::Closed) => break,
                Ok(baton_client::Incoming::Disconnect) => panic!("socket {i} got a DISCONNECT"),
                Ok(_) => continue,
                Err(e) => panic!("socket {i}'s transport did not close: {e}"),
            }
        }
    }
    cluster.instances[0].postgres_proxy.as_ref().unwrap().set(proxy::Mode::Pass);
    let (_, page) = rest.get(&format!("/api/channels/{channel}/messages"), &c.owner.token).await;
    assert_eq!(page["messages"].as_array().unwrap().len(), 3, "{page}");
    println!(
        "shed with 3 chats in flight on a slowed database: {} ms, every ack answered first",
        report["duration_ms"]
    );
}

/// `baton-bench --scenario storm` against a real 3-instance cluster: the bench's own
/// bookkeeping across a drain (reconnect, `since`, resend by clientMsgId), never timing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_storm_moves_a_drained_instances_clients_and_counts_every_message() {
    use baton_bench::{BenchArgs, Scenario, run};

    let mut cluster = Cluster::start(3).await;
    let mut args = BenchArgs::new(cluster.base(0), Scenario::Storm);
    args.urls = (0..3).map(|i| cluster.base(i).to_owned()).collect();
    args.clients = Some(30);
    args.duration = Some(5.0);
    args.drain_after = 1.0;
    args.drain_pid = Some(cluster.instances[1].pid());
    args.receiver_users = 4;

    let report = run(&args).await.expect("the bench runs");
    eprintln!("storm figures: {}", serde_json::to_string(&report).unwrap());

    assert_eq!((report.clients, report.senders, report.rooms), (30, 6, 6), "{report:?}");
    assert_eq!(report.reconnects, 10, "a third of the connections were on the drained instance: {report:?}");
    assert_eq!(report.recovered, report.reconnects, "{report:?}");
    assert_eq!(report.sent, 6 * 25, "6 senders x 5/s x 5 s: {report:?}");
    assert_eq!(report.acked, report.sent, "unacked sends were resent and written once: {report:?}");
    assert_eq!((report.ack_errors, report.unanswered, report.closed_early), (0, 0, 0), "{report:?}");
    assert_eq!(report.expected, report.acked * 4, "{report:?}");
    assert_eq!((report.delivered, report.lost), (report.expected, 0), "{report:?}");
    assert!(cluster.instances[1].exited(WAIT).await.success(), "the drained instance exits 0");
}

#[tokio::test]
async fn a_cluster_instance_refuses_to_start_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let out = harness::baton_command()
        .arg("serve")
        .env("REDIS_URL", "redis://127.0.0.1:1")
        .env("BATON_DATA_DIR", dir.path())
        .env("BATON_LISTEN", "127.0.0.1:0")
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("must share one database"), "{stderr}");
}

/// The operator's commands, as a deploy script runs them: `baton status --json` and
/// `baton drain --wait --json` print one JSON line each, the report comes from the
/// drain itself (no log read), and the instance exits 0 after answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn baton_drain_wait_json_prints_the_drain_report() {
    let mut cluster = Cluster::start(2).await;
    let rest = cluster.rest(0);
    let c = rest.populated_community(2, 1).await;
    let _on_the_drained_one = rest.joined(c.cid, &c.users[0], &c.channels).await;
    let operator = |args: &[&str]| {
        let mut command = harness::baton_command();
        command.args(args).args(["--url", cluster.base(0), "--json"]).env("BATON_ADMIN_TOKEN", harness::ADMIN_TOKEN);
        command
    };
    let out = operator(&["status"]).output().await.unwrap();
    assert!(out.status.success(), "baton status: {}", String::from_utf8_lossy(&out.stderr));
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON line");
    assert_eq!(status["instance"], cluster.instances[0].name.as_str());
    assert_eq!((status["draining"].clone(), status["drain"].clone()), (json!(false), json!(null)));
    assert!(status["sockets"].as_u64().unwrap() >= 1, "{status}");

    let out = operator(&["drain", "--wait"]).output().await.unwrap();
    assert!(out.status.success(), "baton drain: {}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.lines().count(), 1, "exactly one line: {stdout}");
    let report: serde_json::Value = serde_json::from_str(&stdout).expect("the report as JSON");
    assert_eq!(report["instance"], cluster.instances[0].name.as_str());
    assert!(report["sockets_at_start"].as_u64().unwrap() >= 1, "{report}");
    assert_eq!(report["closed"], report["sockets_at_start"], "every client moved: {report}");
    assert!(cluster.instances[0].exited(WAIT).await.success(), "the drained instance exits 0");

    let refused = harness::baton_command().args(["status", "--url", cluster.base(1)]).output().await.unwrap();
    assert!(!refused.status.success(), "no admin token: refused");
    assert!(String::from_utf8_lossy(&refused.stderr).contains("admin token"), "says why");
}

/// One instance on a PostgreSQL of the test's own, stopped for a while: every
/// request that needs the database is answered `unavailable` within its deadline
/// (`--db-timeout`, 1 s here), `/readyz` answers 503 at once from the background
/// check (and the agent port `down` with the same reason), and when the database is
/// back everything works again, with no restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_is_answered_within_the_deadline_and_recovered_from() {
    let pg = harness::OwnPostgres::start().await;
    let port = harness::free_port();
    let base = format!("http://127.0.0.1:{port}");
    let dir = tempfile::tempdir().unwrap();
    let url = pg.url();
    let agent = std::net::SocketAddr::from(([127, 0, 0, 1], harness::free_port()));
    let agent_listen = agent.to_string();
    let mut instance = harness::serve_alone(
        port,
        dir.path(),
        &[("DATABASE_URL", url.as_str()), ("BATON_DB_TIMEOUT", "1s"), ("BATON_LB_AGENT_LISTEN", agent_listen.as_str())],
    );
    let rest = common::Rest::new(base.clone());
    let readyz = || {
        let url = format!("{base}/readyz");
        async move {
            let started = Instant::now();
            let client = reqwest::Client::builder().timeout(Duration::from_secs(1)).build().unwrap();
            let status = client.get(&url).send().await.ok().map(|r| r.status().as_u16());
            (status, started.elapsed())
        }
    };
    common::eventually("the instance is ready", WAIT, async || readyz().await.0 == Some(200)).await;
    let (alice, _bob, cid, ch) = rest.alice_and_bob_in_general().await;
    let s = rest.joined(cid, &alice, &[ch]).await;
    assert_eq!(common::chat(&s, ch, "before the outage").await["written"], true);

    pg.stop().await;
    let deadline = Duration::from_secs(1);
    // Answered within the deadline plus the round trips around it.
    let answered_within = deadline + Duration::from_millis(1500);
    let mut ack_latencies = Vec::new();
    for i in 0..5 {
        let started = Instant::now();
        let ack = s
            .emit_with_ack(
                "chat",
                json!({ "chatType": "new", "channelId": ch, "content": format!("during {i}") }),
                WAIT,
            )
            .await
            .expect("answered");
        let took = started.elapsed();
        assert_eq!((ack["written"].clone(), ack["error"]["code"].clone()), (json!(false), json!("unavailable")));
        assert!(took < answered_within, "chat answered in {took:?}, past its deadline");
        ack_latencies.push(took);
    }
    let started = Instant::now();
    let (status, body) = rest.get(&format!("/api/channels/{ch}/messages"), &alice.token).await;
    let rest_took = started.elapsed();
    assert_eq!((status.as_u16(), body["error"]["code"].clone()), (503, json!("unavailable")));
    assert!(rest_took < answered_within, "REST answered in {rest_took:?}");
    let mut probes = Vec::new();
    common::eventually("/readyz says 503", WAIT, async || {
        let (status, took) = readyz().await;
        probes.push(took);
        status == Some(503)
    })
    .await;
    let slowest_probe = probes.iter().max().copied().unwrap_or_default();
    assert!(slowest_probe < Duration::from_secs(1), "every probe answered within 1 s: {slowest_probe:?}");
    assert_eq!(common::agent_says(agent, None).await, "up drain\n", "the agent: no new sessions, keep these");

    pg.start_again().await;
    let back = Instant::now();
    common::eventually("chat works again", Duration::from_secs(20), async || {
        s.emit_with_ack("chat", json!({ "chatType": "new", "channelId": ch, "content": "after" }), WAIT)
            .await
            .is_ok_and(|ack| ack["written"] == true)
    })
    .await;
    let recovered_after = back.elapsed();
    common::eventually("/readyz says 200 again", WAIT, async || readyz().await.0 == Some(200)).await;
    assert_eq!(common::agent_says(agent, None).await, "up ready\n");
    // Nothing half-written: the channel's events are 1..n with no gap.
    let (_, page) = rest.get(&format!("/api/channels/{ch}/messages?since=0&limit=200"), &alice.token).await;
    let seqs: Vec<i64> = page["messages"].as_array().unwrap().iter().map(|m| m["eventSeq"].as_i64().unwrap()).collect();
    assert_eq!(seqs, (1..=seqs.len() as i64).collect::<Vec<_>>(), "gap-free");
    ack_latencies.sort();
    println!(
        "database outage figures: chat ack during the outage p50 {:?} max {:?} (deadline {deadline:?}), REST {rest_took:?}, \
         /readyz slowest probe {slowest_probe:?} ({} probes), chat back {recovered_after:?} after the database",
        ack_latencies[ack_latencies.len() / 2],
        ack_latencies.last().unwrap(),
        probes.len(),
    );
    instance.kill().await.unwrap();
}
