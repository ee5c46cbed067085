//! The REST API as PROTOCOL.md defines it.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::helpers::*;

#[tokio::test]
async fn registering_a_taken_username_is_a_conflict_and_usernames_ignore_case() {
    let app = spawn_app().await;
    app.register("alice").await;
    let (status, body) = app
        .request(Method::POST, "/api/users", None, Some(json!({ "username": "ALICE", "password": "password1" })))
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(body["error"]["code"], "conflict");
}

#[tokio::test]
async fn a_wrong_password_or_unknown_user_is_unauthorized() {
    let app = spawn_app().await;
    app.register("alice").await;
    for (u, p) in [("alice", "wrongpass"), ("nobody", "password1")] {
        let (status, body) =
            app.request(Method::POST, "/api/sessions", None, Some(json!({ "username": u, "password": p }))).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(body["error"]["code"], "unauthorized");
    }
}

#[tokio::test]
async fn me_lists_the_user_and_their_communities_with_roles() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let cid = app.community(&alice, &[&bob]).await;
    let (status, me) = app.get("/api/me", &bob.token).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(me["user"]["username"], "bob");
    assert_eq!(me["communities"], json!([{ "id": cid, "name": "acme", "role": "member" }]));
    let (_, list) = app.get("/api/communities", &alice.token).await;
    assert_eq!(list, json!([{ "id": cid, "name": "acme", "role": "owner" }]));
}

#[tokio::test]
async fn members_see_the_community_member_list_and_outsiders_do_not() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let carol = app.register("carol").await;
    let cid = app.community(&alice, &[&bob]).await;
    let (status, members) = app.get(&format!("/api/communities/{cid}/members"), &bob.token).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        members,
        json!([
            { "id": alice.id, "username": "alice", "displayName": "alice", "role": "owner" },
            { "id": bob.id, "username": "bob", "displayName": "bob", "role": "member" },
        ])
    );
    let (status, body) = app.get(&format!("/api/communities/{cid}/members"), &carol.token).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body["error"]["code"], "forbidden");
    let (status, _) = app.get("/api/communities/999999/members", &carol.token).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn only_the_owner_adds_community_members() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let carol = app.register("carol").await;
    let cid = app.community(&alice, &[&bob]).await;
    let (status, body) =
        app.post(&format!("/api/communities/{cid}/members"), &bob.token, json!({ "username": "carol" })).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, _) =
        app.post(&format!("/api/communities/{cid}/members"), &alice.token, json!({ "username": "carol" })).await;
    assert_eq!(status, StatusCode::CREATED);
    // Adding again is harmless.
    let (status, _) =
        app.post(&format!("/api/communities/{cid}/members"), &alice.token, json!({ "username": "carol" })).await;
    assert_eq!(status, StatusCode::OK);
    let _ = carol;
}

#[tokio::test]
async fn a_private_channel_leaks_nowhere_over_rest() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let eve = app.register("eve").await;
    let cid = app.community(&alice, &[&bob, &eve]).await;
    let secret = app.channel(cid, &alice, "secret", true, &[&bob]).await;
    let general = app.channel(cid, &alice, "general", false, &[]).await;
    let (_, m) =
        app.post(&format!("/api/channels/{secret}/messages"), &alice.token, json!({ "content": "psst" })).await;
    assert_eq!(m["written"], true);

    let (_, list) = app.get(&format!("/api/communities/{cid}/channels"), &eve.token).await;
    let ids: Vec<i64> = list.as_array().unwrap().iter().map(|c| c["id"].as_i64().unwrap()).collect();
    assert_eq!(ids, vec![general]);
    let (_, list) = app.get(&format!("/api/communities/{cid}/channels"), &bob.token).await;
    assert_eq!(list.as_array().unwrap().len(), 2);

    // Every way in answers as if the channel did not exist.
    let nonexistent = secret + 1000;
    for chid in [secret, nonexistent] {
        for (method, path, body) in [
            (Method::GET, format!("/api/channels/{chid}/messages"), None),
            (Method::GET, format!("/api/channels/{chid}/messages?since=0"), None),
            (Method::POST, format!("/api/channels/{chid}/messages"), Some(json!({ "content": "hi" }))),
            (Method::POST, format!("/api/channels/{chid}/members"), None),
            (Method::POST, format!("/api/channels/{chid}/members"), Some(json!({ "username": "eve" }))),
            (Method::PUT, format!("/api/channels/{chid}/read"), Some(json!({ "seq": 1 }))),
            (Method::GET, format!("/api/channels/{chid}/presence"), None),
            (Method::DELETE, format!("/api/channels/{chid}/members/{}", bob.id), None),
        ] {
            let (status, body) = app.request(method.clone(), &path, Some(&eve.token), body).await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{method} {path}: {body}");
            assert_eq!(body["error"]["code"], "not_found");
        }
    }
    let (_, unread) = app.get("/api/unread", &eve.token).await;
    assert_eq!(unread["communities"][0]["channels"], json!([]));
}

#[tokio::test]
async fn history_pages_by_seq_both_ways_and_the_changes_feed_follows_event_seq() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let cid = app.community(&alice, &[]).await;
    let ch = app.channel(cid, &alice, "general", false, &[]).await;
    let mut ids = Vec::new();
    for i in 1..=5 {
        let (_, m) = app
            .post(&format!("/api/channels/{ch}/messages"), &alice.token, json!({ "content": format!("m{i}") }))
            .await;
        ids.push(m["chatInfo"]["id"].as_i64().unwrap());
    }
    let seqs = |v: &serde_json::Value| -> Vec<i64> {
        v["messages"].as_array().unwrap().iter().map(|m| m["seq"].as_i64().unwrap()).collect()
    };
    let (_, page) = app.get(&format!("/api/channels/{ch}/messages?limit=2"), &alice.token).await;
    assert_eq!((seqs(&page), page["hasMore"].clone()), (vec![5, 4], json!(true)));
    let (_, page) = app.get(&format!("/api/channels/{ch}/messages?before=4&limit=10"), &alice.token).await;
    assert_eq!((seqs(&page), page["hasMore"].clone()), (vec![3, 2, 1], json!(false)));
    let (_, page) = app.get(&format!("/api/channels/{ch}/messages?after=2&limit=2"), &alice.token).await;
    assert_eq!((seqs(&page), page["hasMore"].clone()), (vec![3, 4], json!(true)));

    // Modify m2 and delete m3 over a socket: they take eventSeq 6 and 7.
    let s = app.joined(cid, &alice, &[ch]).await;
    let ack = modify(&s, ch, &ids[1], "m2 edited").await;
    assert_eq!(ack["chatInfo"]["eventSeq"], 6);
    let ack = delete(&s, ch, &ids[2]).await;
    assert_eq!(ack["chatInfo"]["eventSeq"], 7);
    assert_eq!(ack["chatInfo"]["content"], "");
    assert_eq!(ack["chatInfo"]["seq"], 3);

    let (_, feed) = app.get(&format!("/api/channels/{ch}/messages?since=4"), &alice.token).await;
    let events: Vec<(i64, i64)> = feed["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["seq"].as_i64().unwrap(), m["eventSeq"].as_i64().unwrap()))
        .collect();
    assert_eq!(events, vec![(5, 5), (2, 6), (3, 7)]);
    assert_eq!(feed["lastSeq"], 7);
    assert_eq!(feed["hasMore"], false);
    let (_, chans) = app.get(&format!("/api/communities/{cid}/channels"), &alice.token).await;
    assert_eq!(chans[0]["lastSeq"], 7);
}

#[tokio::test]
async fn read_markers_never_move_backwards_and_drive_unread_counts() {
    let app = spawn_app().await;
    let (alice, bob, cid, ch) = app.alice_and_bob_in_general().await;
    for i in 0..3 {
        app.post(&format!("/api/channels/{ch}/messages"), &alice.token, json!({ "content": format!("hi {i}") })).await;
    }
    app.post(&format!("/api/channels/{ch}/messages"), &bob.token, json!({ "content": "mine" })).await;
    let (_, unread) = app.get("/api/unread", &bob.token).await;
    assert_eq!(
        unread,
        json!({ "communities": [{ "communityId": cid, "unread": 3,
            "channels": [{ "channelId": ch, "unread": 3, "lastSeq": 4, "readSeq": 0 }] }] })
    );
    let (status, body) = app
        .request(Method::PUT, &format!("/api/channels/{ch}/read"), Some(&bob.token), Some(json!({ "seq": 2 })))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, body) = app
        .request(Method::PUT, &format!("/api/channels/{ch}/read"), Some(&bob.token), Some(json!({ "seq": 1 })))
        .await;
    assert_eq!(body["seq"], 2, "the marker does not move back");
    let (_, unread) = app.get("/api/unread", &bob.token).await;
    assert_eq!(unread["communities"][0]["channels"][0]["unread"], 1);
    assert_eq!(unread["communities"][0]["channels"][0]["readSeq"], 2);
}

#[tokio::test]
async fn only_the_owner_removes_others_and_anyone_can_leave() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let carol = app.register("carol").await;
    let cid = app.community(&alice, &[&bob, &carol]).await;
    let ch = app.channel(cid, &bob, "general", false, &[&carol]).await;
    let path = format!("/api/channels/{ch}/members/{}", carol.id);
    let (status, _) = app.request(Method::DELETE, &path, Some(&bob.token), None).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "a channel member is not the community owner");
    let (status, _) = app.request(Method::DELETE, &path, Some(&alice.token), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) =
        app.request(Method::DELETE, &format!("/api/channels/{ch}/members/{}", bob.id), Some(&bob.token), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, body) = app.get(&format!("/api/channels/{ch}/messages"), &bob.token).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "public, but no longer a member: {body}");
}

#[tokio::test]
async fn health_and_readiness_answer() {
    let app = spawn_app().await;
    let (status, _) = app.request(Method::GET, "/healthz", None, None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = app.request(Method::GET, "/readyz", None, None).await;
    assert_eq!(status, StatusCode::OK);
    app.stop().await;
}

#[tokio::test]
async fn a_restart_keeps_users_logged_in_and_messages_stored() {
    let first = spawn_app().await;
    let database = first.app.config.database_url();
    let alice = first.register("alice").await;
    let cid = first.community(&alice, &[]).await;
    let ch = first.channel(cid, &alice, "general", false, &[]).await;
    first.post(&format!("/api/channels/{ch}/messages"), &alice.token, json!({ "content": "before restart" })).await;
    // The first instance's temporary directory must outlive the second on SQLite.
    let keep = first.stop_keeping_data().await;
    let second = spawn_app_with(|c| c.database_url = Some(database)).await;
    let (status, page) = second.get(&format!("/api/channels/{ch}/messages"), &alice.token).await;
    assert_eq!(status, StatusCode::OK, "the old token still works: {page}");
    assert_eq!(page["messages"][0]["content"], "before restart");
    drop(keep);
}

#[tokio::test]
async fn metrics_are_served_in_prometheus_text() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let cid = app.community(&alice, &[]).await;
    let ch = app.channel(cid, &alice, "general", false, &[]).await;
    let s = app.joined(cid, &alice, &[ch]).await;
    chat(&s, ch, "counted").await;
    let res = reqwest::get(format!("{}/metrics", app.base)).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let text = res.text().await.unwrap();
    for name in [
        "baton_events_in_total{event=\"chat\"}",
        "baton_events_out_total{event=\"new-chat\"}",
        "baton_ack_seconds_bucket{event=\"chat\"",
        // The group commit's batch (store/group_commit.rs), which every new message goes
        // through; `insert_message` is its one-by-one fallback.
        "baton_db_query_seconds_bucket{query=\"insert_messages\"",
        "baton_connects_total{namespace=\"community\",result=\"accepted\"}",
        &format!("baton_sockets{{namespace=\"/socket/commu-{cid}\"}}"),
    ] {
        assert!(text.contains(name), "{name} missing from:\n{text}");
    }
    // Sampled at the scrape: the connection of the socket above.
    let sampled = |name: &str| -> f64 {
        let line = text.lines().find(|l| l.split(' ').next() == Some(name)).unwrap_or_else(|| panic!("no {name}"));
        line.split(' ').nth(1).unwrap().parse().unwrap()
    };
    assert!(sampled("baton_transports") >= 1.0, "{text}");
    assert_eq!(sampled("baton_transports_polling"), 0.0, "a WebSocket client");
}
