//! The Socket.IO namespaces and events as PROTOCOL.md defines them.

use std::time::Duration;

use baton_client::{ClientError, Incoming};
use reqwest::Method;
use serde_json::json;

use crate::helpers::*;

#[tokio::test]
async fn connects_are_refused_with_the_protocol_codes() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let eve = app.register("eve").await;
    let cid = app.community(&alice, &[]).await;
    let ns = format!("/socket/commu-{cid}");
    let cases = [
        ("/", json!({}), "unauthorized"),
        ("/", json!({ "token": "garbage" }), "unauthorized"),
        (ns.as_str(), json!(null), "unauthorized"),
        (ns.as_str(), json!({ "token": 42 }), "unauthorized"),
        (ns.as_str(), json!({ "token": eve.token }), "forbidden"),
        ("/socket/commu-99999", json!({ "token": alice.token }), "forbidden"),
        ("/socket/commu-abc", json!({ "token": alice.token }), "forbidden"),
        (ns.as_str(), json!({ "token": alice.token, "since": "yesterday" }), "invalid"),
        (ns.as_str(), json!({ "token": alice.token, "since": { "general": 3 } }), "invalid"),
        (ns.as_str(), json!({ "token": alice.token, "since": { "1": -1 } }), "invalid"),
        (ns.as_str(), json!({ "token": alice.token, "since": { "1": 2.5 } }), "invalid"),
        (ns.as_str(), json!({ "token": alice.token, "since": { "-1": 0 } }), "invalid"),
    ];
    for (ns, auth, code) in cases {
        let refused = app.connect_with(ns, auth.clone()).await.err();
        assert_eq!(refused, Some(ClientError::Refused(code.into())), "{ns} {auth}");
    }
}

#[tokio::test]
async fn the_token_of_a_user_that_no_longer_exists_is_refused_everywhere() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let ghost = app.register("ghost").await;
    let cid = app.community(&alice, &[]).await;
    delete_user(&app.app.config.database_url(), ghost.id).await;
    for ns in ["/".to_owned(), format!("/socket/commu-{cid}")] {
        let refused = app.connect_with(&ns, json!({ "token": ghost.token })).await.err();
        assert_eq!(refused, Some(ClientError::Refused("unauthorized".into())), "{ns}");
    }
    for path in ["/api/me", "/api/communities", "/api/unread"] {
        let (status, body) = app.get(path, &ghost.token).await;
        assert_eq!((status.as_u16(), body["error"]["code"].clone()), (401, json!("unauthorized")), "{path}");
    }
    assert!(app.connect_with("/", json!({ "token": alice.token })).await.is_ok(), "others are not affected");
}

/// Deletes a user row directly (the API has no account deletion), as an operator's
/// clean-up or a restored backup would leave a token without its user.
async fn delete_user(database_url: &str, user: i64) {
    use sqlx::Connection;
    if database_url.starts_with("sqlite:") {
        let mut db = sqlx::SqliteConnection::connect(database_url).await.unwrap();
        sqlx::query("DELETE FROM users WHERE id = $1").bind(user).execute(&mut db).await.unwrap();
    } else {
        let mut db = sqlx::PgConnection::connect(database_url).await.unwrap();
        sqlx::query("DELETE FROM users WHERE id = $1").bind(user).execute(&mut db).await.unwrap();
    }
}

#[tokio::test]
async fn sockets_per_user_are_capped_and_the_cap_frees_as_they_close() {
    let app = spawn_app_with(|c| c.max_sockets_per_user = 3).await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let cid = app.community(&alice, &[]).await;
    let mut open = Vec::new();
    for _ in 0..2 {
        open.push(app.connect_with("/", json!({ "token": alice.token })).await.expect("under the cap"));
    }
    open.push(app.connect(&format!("/socket/commu-{cid}"), &alice).await);
    for ns in ["/".to_owned(), format!("/socket/commu-{cid}")] {
        let refused = app.connect_with(&ns, json!({ "token": alice.token })).await.err();
        assert_eq!(refused, Some(ClientError::Refused("rate_limited".into())), "{ns}: over the cap");
    }
    assert!(app.connect_with("/", json!({ "token": bob.token })).await.is_ok(), "the cap is per user");
    open.pop().unwrap().close().await;
    eventually("the closed socket's place is free", WAIT, async || app.app.sockets.open(alice.id) < 3).await;
    assert!(app.connect_with("/", json!({ "token": alice.token })).await.is_ok(), "a place came free");
}

#[tokio::test]
async fn an_expired_token_is_refused() {
    let app = spawn_app_with(|c| c.token_ttl = Duration::from_secs(1)).await;
    let alice = app.register("alice").await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let refused = app.connect_with("/", json!({ "token": alice.token })).await.err();
    assert_eq!(refused, Some(ClientError::Refused("unauthorized".into())));
    let (status, body) = app.get("/api/me", &alice.token).await;
    assert_eq!(status, 401);
    assert_eq!(body["error"]["message"], "the token has expired");
}

#[tokio::test]
async fn refused_connects_leave_no_namespace_behind() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let cid = app.community(&alice, &[]).await;
    for i in 0..50 {
        let ns = format!("/socket/commu-{}", 10_000 + i);
        assert!(app.connect_with(&ns, json!({ "token": alice.token })).await.is_err());
        assert!(app.connect_with(&ns, json!({ "token": "bad" })).await.is_err());
    }
    for i in 0..50 {
        assert!(
            !app.app.fanout.io().has_namespace(&format!("/socket/commu-{}", 10_000 + i)),
            "namespace {i} left behind"
        );
    }
    // A namespace with a live socket survives a refused connect to it.
    let ns = format!("/socket/commu-{cid}");
    let mut s = app.connect(&ns, &alice).await;
    assert!(app.connect_with(&ns, json!({ "token": "bad" })).await.is_err());
    assert!(app.app.fanout.io().has_namespace(&ns));
    s.next_event("rejoined", WAIT).await.unwrap();
}

#[tokio::test]
async fn a_message_is_acked_then_reaches_the_other_members_but_not_the_sender() {
    let app = spawn_app().await;
    let (alice, bob, cid, ch) = app.alice_and_bob_in_general().await;
    let mut a = app.joined(cid, &alice, &[ch]).await;
    let mut b = app.joined(cid, &bob, &[ch]).await;
    let mut b_root = app.connect("/", &bob).await;
    let mut a_root = app.connect("/", &alice).await;
    b_root.next_event("unread", WAIT).await.unwrap();
    a_root.next_event("unread", WAIT).await.unwrap();

    let ack = chat(&a, ch, "  hello bob  ").await;
    assert_eq!(ack["written"], true);
    let info = &ack["chatInfo"];
    assert_eq!(
        (info["content"].clone(), info["seq"].clone(), info["eventSeq"].clone()),
        (json!("hello bob"), json!(1), json!(1))
    );
    assert_eq!(info["senderId"], alice.id);
    assert_eq!(info["communityId"], cid);
    // Durable before the ack: history already has it.
    let (_, page) = app.get(&format!("/api/channels/{ch}/messages"), &bob.token).await;
    assert_eq!(&page["messages"][0], info);

    let got = b.next_event("new-chat", WAIT).await.unwrap();
    assert_eq!(&got, info);
    let notify = b_root.next_event("notify", WAIT).await.unwrap();
    assert_eq!(
        notify,
        json!({ "communityId": cid, "channelId": ch, "seq": 1, "messageId": info["id"], "senderId": alice.id, "preview": "hello bob" })
    );
    assert_no_event(&mut a, "new-chat").await;
    assert_no_event(&mut a_root, "notify").await;
}

#[tokio::test]
async fn a_rest_post_is_broadcast_like_a_socket_chat() {
    let app = spawn_app().await;
    let (alice, bob, cid, ch) = app.alice_and_bob_in_general().await;
    let mut b = app.joined(cid, &bob, &[ch]).await;
    let (status, body) =
        app.post(&format!("/api/channels/{ch}/messages"), &alice.token, json!({ "content": "from a bot" })).await;
    assert_eq!(status, 201);
    assert_eq!(b.next_event("new-chat", WAIT).await.unwrap(), body["chatInfo"]);
}

#[tokio::test]
async fn notify_preview_is_at_most_100_characters() {
    let app = spawn_app().await;
    let (alice, bob, _, ch) = app.alice_and_bob_in_general().await;
    let mut b_root = app.connect("/", &bob).await;
    let long = "é".repeat(150);
    app.post(&format!("/api/channels/{ch}/messages"), &alice.token, json!({ "content": long })).await;
    let notify = b_root.next_event("notify", WAIT).await.unwrap();
    assert_eq!(notify["preview"].as_str().unwrap().chars().count(), 100);
}

#[tokio::test]
async fn modify_and_delete_are_broadcast_and_only_the_author_may_make_them() {
    let app = spawn_app().await;
    let (alice, bob, cid, ch) = app.alice_and_bob_in_general().await;
    let a = app.joined(cid, &alice, &[ch]).await;
    let mut b = app.joined(cid, &bob, &[ch]).await;
    let id = chat(&a, ch, "first").await["chatInfo"]["id"].clone();
    b.next_event("new-chat", WAIT).await.unwrap();

    let ack = modify(&b, ch, &id, "mine now").await;
    assert_eq!((ack["written"].clone(), ack["error"]["code"].clone()), (json!(false), json!("forbidden")));
    let ack = modify(&a, ch, &id, "edited").await;
    assert_eq!(ack["written"], true);
    let modified = b.next_event("modify-chat", WAIT).await.unwrap();
    assert_eq!(
        (modified["content"].clone(), modified["seq"].clone(), modified["eventSeq"].clone()),
        (json!("edited"), json!(1), json!(2))
    );
    assert!(modified["editedAt"].is_i64());

    let ack = delete(&a, ch, &id).await;
    assert_eq!(ack["chatInfo"]["deleted"], true);
    let deleted = b.next_event("delete-chat", WAIT).await.unwrap();
    assert_eq!(
        (deleted["content"].clone(), deleted["eventSeq"].clone(), deleted["id"].clone()),
        (json!(""), json!(3), id.clone())
    );

    // Deleting again is answered with the message as it is, and not broadcast.
    let again = delete(&a, ch, &id).await;
    assert_eq!((again["written"].clone(), again["chatInfo"]["eventSeq"].clone()), (json!(true), json!(3)));
    assert_no_event(&mut b, "delete-chat").await;
    let edit_deleted = modify(&a, ch, &id, "x").await;
    assert_eq!(edit_deleted["error"]["code"], "conflict");
}

#[tokio::test]
async fn a_repeated_client_msg_id_returns_the_first_message_and_is_not_broadcast_again() {
    let app = spawn_app().await;
    let (alice, bob, cid, ch) = app.alice_and_bob_in_general().await;
    let a = app.joined(cid, &alice, &[ch]).await;
    let mut b = app.joined(cid, &bob, &[ch]).await;
    let new = json!({ "chatType": "new", "channelId": ch, "content": "once", "clientMsgId": "c-1" });
    let first = a.emit_with_ack("chat", new.clone(), WAIT).await.unwrap();
    let second = a.emit_with_ack("chat", new.clone(), WAIT).await.unwrap();
    assert_eq!(first, second);
    assert_eq!(first["chatInfo"]["clientMsgId"], "c-1");
    b.next_event("new-chat", WAIT).await.unwrap();
    assert_no_event(&mut b, "new-chat").await;
    // Another sender may use the same clientMsgId.
    let bobs = b.emit_with_ack("chat", new, WAIT).await.unwrap();
    assert_ne!(bobs["chatInfo"]["id"], first["chatInfo"]["id"]);
}

#[tokio::test]
async fn joining_answers_each_channel_it_cannot_join_with_a_code() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let cid = app.community(&alice, &[&bob]).await;
    let other = app.community(&alice, &[&bob]).await;
    let mine = app.channel(cid, &alice, "mine", false, &[&bob]).await;
    let public = app.channel(cid, &alice, "public", false, &[]).await;
    let private = app.channel(cid, &alice, "private", true, &[]).await;
    let elsewhere = app.channel(other, &alice, "elsewhere", false, &[&bob]).await;
    let mut b = app.connect(&format!("/socket/commu-{cid}"), &bob).await;
    b.next_event("rejoined", WAIT).await.unwrap();
    let ack =
        b.emit_with_ack("join", json!({ "channels": [mine, public, private, elsewhere, 987654] }), WAIT).await.unwrap();
    assert_eq!(ack["joined"], json!([mine]));
    assert_eq!(
        ack["rejected"],
        json!([
            { "channelId": public, "code": "forbidden" },
            { "channelId": private, "code": "not_found" },
            { "channelId": elsewhere, "code": "not_found" },
            { "channelId": 987654, "code": "not_found" },
        ])
    );
    let ack = b.emit_with_ack("leave", json!({ "channels": [mine] }), WAIT).await.unwrap();
    assert_eq!(ack, json!({ "left": [mine] }));
}

#[tokio::test]
async fn a_removed_member_stops_receiving_the_channel_at_once_on_every_socket() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let cid = app.community(&alice, &[&bob]).await;
    let ch = app.channel(cid, &alice, "secret", true, &[&bob]).await;
    let a = app.joined(cid, &alice, &[ch]).await;
    let mut b1 = app.joined(cid, &bob, &[ch]).await;
    let mut b2 = app.joined(cid, &bob, &[ch]).await;
    let mut b_root = app.connect("/", &bob).await;
    let mut a_watch = app.joined(cid, &alice, &[ch]).await;

    let (status, _) =
        app.request(Method::DELETE, &format!("/api/channels/{ch}/members/{}", bob.id), Some(&alice.token), None).await;
    assert_eq!(status, 204);
    assert_eq!(
        b_root.next_event("membership", WAIT).await.unwrap(),
        json!({ "communityId": cid, "channelId": ch, "member": false })
    );
    assert_eq!(
        a_watch.next_event("presence", WAIT).await.unwrap(),
        json!({ "channelId": ch, "userId": bob.id, "online": false })
    );
    chat(&a, ch, "bob must not see this").await;
    assert_no_event(&mut b1, "new-chat").await;
    assert_no_event(&mut b2, "new-chat").await;
    assert_no_event(&mut b_root, "notify").await;
    // And his reconnects do not put him back.
    let mut again = app.connect(&format!("/socket/commu-{cid}"), &bob).await;
    assert_eq!(again.next_event("rejoined", WAIT).await.unwrap(), json!({ "channels": [] }));
}

#[tokio::test]
async fn an_added_member_is_told_on_their_own_line() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let cid = app.community(&alice, &[&bob]).await;
    let mut b_root = app.connect("/", &bob).await;
    let ch = app.channel(cid, &alice, "secret", true, &[&bob]).await;
    assert_eq!(
        b_root.next_event("membership", WAIT).await.unwrap(),
        json!({ "communityId": cid, "channelId": ch, "member": true })
    );
}

#[tokio::test]
async fn presence_follows_the_first_socket_in_and_the_last_out() {
    let app = spawn_app().await;
    let (alice, bob, cid, ch) = app.alice_and_bob_in_general().await;
    let mut a = app.joined(cid, &alice, &[ch]).await;
    assert_no_event(&mut a, "presence").await; // a socket is not told of itself
    let b1 = app.joined(cid, &bob, &[ch]).await;
    assert_eq!(
        a.next_event("presence", WAIT).await.unwrap(),
        json!({ "channelId": ch, "userId": bob.id, "online": true })
    );
    let b2 = app.joined(cid, &bob, &[ch]).await;
    let (_, online) = app.get(&format!("/api/channels/{ch}/presence"), &alice.token).await;
    assert_eq!(online, json!({ "online": [alice.id, bob.id] }));
    b1.close().await;
    assert_no_event(&mut a, "presence").await;
    b2.close().await;
    assert_eq!(
        a.next_event("presence", WAIT).await.unwrap(),
        json!({ "channelId": ch, "userId": bob.id, "online": false })
    );
    let (_, online) = app.get(&format!("/api/channels/{ch}/presence"), &alice.token).await;
    assert_eq!(online, json!({ "online": [alice.id] }));
}

#[tokio::test]
async fn typing_is_relayed_to_the_room_but_not_persisted() {
    let app = spawn_app().await;
    let (alice, bob, cid, ch) = app.alice_and_bob_in_general().await;
    let mut a = app.joined(cid, &alice, &[ch]).await;
    let mut b = app.joined(cid, &bob, &[ch]).await;
    let ack = a.emit_with_ack("typing", json!({ "channelId": ch }), WAIT).await.unwrap();
    assert_eq!(ack, json!({ "ok": true }));
    assert_eq!(b.next_event("typing", WAIT).await.unwrap(), json!({ "channelId": ch, "userId": alice.id }));
    assert_no_event(&mut a, "typing").await;
    let ack = b.emit_with_ack("typing", json!({ "channelId": ch + 1 }), WAIT).await.unwrap();
    assert_eq!(ack["error"]["code"], "not_found");
    let (_, page) = app.get(&format!("/api/channels/{ch}/messages"), &alice.token).await;
    assert_eq!(page["messages"], json!([]));
}

#[tokio::test]
async fn a_typing_flood_is_acked_but_reaches_a_bystander_only_a_few_times() {
    let app = spawn_app().await;
    let (alice, bob, cid, ch) = app.alice_and_bob_in_general().await;
    let a = app.joined(cid, &alice, &[ch]).await;
    let mut b = app.joined(cid, &bob, &[ch]).await;
    let started = std::time::Instant::now();
    for _ in 0..200 {
        let ack = a.emit_with_ack("typing", json!({ "channelId": ch }), WAIT).await.unwrap();
        assert_eq!(ack, json!({ "ok": true }), "every typing is acked");
    }
    let mut relayed = 0;
    while b.next_event("typing", Duration::from_millis(500)).await.is_ok() {
        relayed += 1;
    }
    // The burst, plus one a second for as long as the flood lasted.
    let allowed = baton::gateway::fanout::TYPING_BURST as u64
        + baton::gateway::fanout::TYPING_PER_SECOND as u64 * (started.elapsed().as_secs() + 1);
    assert!((1..=allowed).contains(&relayed), "{relayed} of 200 relayed, at most {allowed}");
    // The chat itself is not limited by typing.
    assert_eq!(chat(&a, ch, "still here").await["written"], true);
}

#[tokio::test]
async fn a_read_marker_moved_on_one_socket_is_told_to_the_users_line() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let cid = app.community(&alice, &[]).await;
    let ch = app.channel(cid, &alice, "general", false, &[]).await;
    let a = app.joined(cid, &alice, &[ch]).await;
    chat(&a, ch, "one").await;
    chat(&a, ch, "two").await;
    let mut root = app.connect("/", &alice).await;
    root.next_event("unread", WAIT).await.unwrap();
    let ack = a.emit_with_ack("read", json!({ "channelId": ch, "seq": 2 }), WAIT).await.unwrap();
    assert_eq!(ack["ok"], true);
    assert_eq!(root.next_event("read", WAIT).await.unwrap(), json!({ "channelId": ch, "seq": 2 }));
    let ack = a.emit_with_ack("read", json!({ "channelId": ch, "seq": 3 }), WAIT).await.unwrap();
    assert_eq!(ack["error"]["code"], "invalid", "beyond lastSeq");
}

#[tokio::test]
async fn a_message_in_another_community_arrives_as_a_notification_on_the_root_namespace() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let one = app.community(&alice, &[&bob]).await;
    let two = app.community(&alice, &[&bob]).await;
    let ch1 = app.channel(one, &alice, "one", false, &[&bob]).await;
    let ch2 = app.channel(two, &alice, "two", false, &[&bob]).await;
    let mut looking = app.joined(one, &bob, &[ch1]).await;
    let mut root = app.connect("/", &bob).await;
    let unread = root.next_event("unread", WAIT).await.unwrap();
    assert_eq!(unread["communities"].as_array().unwrap().len(), 2);
    app.post(&format!("/api/channels/{ch2}/messages"), &alice.token, json!({ "content": "over here" })).await;
    let notify = root.next_event("notify", WAIT).await.unwrap();
    assert_eq!((notify["communityId"].clone(), notify["channelId"].clone()), (json!(two), json!(ch2)));
    assert_no_event(&mut looking, "new-chat").await;
}

#[tokio::test]
async fn position_is_emitted_for_channels_with_recent_events() {
    let app = spawn_app_with(|c| c.position_interval = Duration::from_millis(300)).await;
    let alice = app.register("alice").await;
    let cid = app.community(&alice, &[]).await;
    let ch = app.channel(cid, &alice, "general", false, &[]).await;
    let mut a = app.joined(cid, &alice, &[ch]).await;
    chat(&a, ch, "one").await;
    chat(&a, ch, "two").await;
    assert_eq!(a.next_event("position", WAIT).await.unwrap(), json!({ "channelId": ch, "lastSeq": 2 }));
}

#[tokio::test]
async fn a_draining_instance_refuses_new_connections() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    app.app.drain.start();
    // New connections are refused at the handshake (503 `draining`), which stock
    // clients retry, through the load balancer, elsewhere.
    let refused = app.connect_with("/", json!({ "token": alice.token })).await.err();
    assert!(matches!(refused, Some(ClientError::Handshake { status: Some(503), .. })), "{refused:?}");
    let (status, body) = app.request(Method::GET, "/socket.io/?EIO=4&transport=polling", None, None).await;
    assert_eq!((status.as_u16(), body["error"]["code"].clone()), (503, json!("draining")));
    let (status, body) = app.request(Method::GET, "/readyz", None, None).await;
    assert_eq!((status.as_u16(), body["error"]["code"].clone()), (503, json!("draining")));
}

#[tokio::test]
async fn an_unknown_event_gets_an_invalid_ack() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let cid = app.community(&alice, &[]).await;
    let mut s = app.connect(&format!("/socket/commu-{cid}"), &alice).await;
    let ack = s.emit_with_ack("shout", json!({}), WAIT).await.unwrap();
    assert_eq!(ack["error"]["code"], "invalid");
    assert!(matches!(s.next(QUIET).await, Ok(Incoming::Event { .. }) | Err(ClientError::Timeout)));
}

/// Many users, each with two sockets in one channel, all closing at once; then
/// sockets that close with a `join` still in flight, and sockets that close while
/// the connect's own rejoin is still running. Each user must end offline (the
/// observer is told, and `GET .../presence` no longer lists them): no order of
/// leaves, enters and closes may leave a stale presence entry behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_survives_simultaneous_disconnects_and_closes_mid_join() {
    const USERS: usize = 12;
    let app = spawn_app().await;
    let c = app.populated_community(USERS, 1).await;
    let ch = c.channels[0];
    let ns = format!("/socket/commu-{}", c.cid);
    let online = async || -> Vec<i64> {
        let (_, body) = app.get(&format!("/api/channels/{ch}/presence"), &c.owner.token).await;
        body["online"].as_array().unwrap().iter().map(|u| u.as_i64().unwrap()).collect()
    };
    let _watch = app.joined(c.cid, &c.owner, &[ch]).await;

    // 1. Two sockets per user, in the channel, closed at the same moment.
    let mut pairs = Vec::new();
    for user in &c.users {
        pairs.push((app.joined(c.cid, user, &[ch]).await, app.joined(c.cid, user, &[ch]).await));
    }
    assert_eq!(online().await.len(), USERS + 1);
    futures::future::join_all(pairs.into_iter().map(|(a, b)| async move { tokio::join!(a.close(), b.close()) })).await;
    eventually("every user of the pairs is offline", WAIT, async || online().await == vec![c.owner.id]).await;

    // 2. A `join` still in flight when the socket closes (its ack never awaited).
    for round in 0..3 {
        let mut closing = Vec::new();
        for user in &c.users {
            let s = app.connect(&ns, user).await;
            let _ack = s.emit_with_ack_deferred("join", json!({ "channels": [ch] })).await.unwrap();
            closing.push(async move {
                if round == 2 {
                    drop(s); // cut, no DISCONNECT packet
                } else {
                    s.close().await;
                }
            });
        }
        futures::future::join_all(closing).await;
        eventually(&format!("closed mid-join (round {round}): offline"), WAIT, async || {
            online().await == vec![c.owner.id]
        })
        .await;
    }

    // 3. Closed while the connect's rejoin of the remembered channel runs.
    for user in &c.users {
        let s = app.connect(&ns, user).await;
        drop(s);
    }
    eventually("closed mid-rejoin: offline", WAIT, async || online().await == vec![c.owner.id]).await;
    app.stop().await;
}
