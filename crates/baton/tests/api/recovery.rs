//! Reconnects: remembered joins, the `since` replay compacted to current state,
//! `recovered`, and the same across a restart of a single node.

use serde_json::{Value, json};

use baton_client::Incoming;

use crate::helpers::*;

/// Events until `recovered`, as (event, payload).
async fn until_recovered(s: &mut baton_client::Socket) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    loop {
        match s.next(WAIT).await.expect("events until recovered") {
            Incoming::Event { name, mut args } => {
                let arg = if args.is_empty() { Value::Null } else { args.swap_remove(0) };
                let done = name == "recovered";
                out.push((name, arg));
                if done {
                    return out;
                }
            }
            other => panic!("connection ended before recovered: {other:?}"),
        }
    }
}

#[tokio::test]
async fn joins_are_remembered_per_user_and_community_not_per_socket() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let cid = app.community(&alice, &[]).await;
    let one = app.channel(cid, &alice, "one", false, &[]).await;
    let two = app.channel(cid, &alice, "two", false, &[]).await;
    let s = app.joined(cid, &alice, &[one, two]).await;
    s.close().await;
    let mut s = app.connect(&format!("/socket/commu-{cid}"), &alice).await;
    assert_eq!(s.next_event("rejoined", WAIT).await.unwrap(), json!({ "channels": [one, two] }));
    s.emit_with_ack("leave", json!({ "channels": [one] }), WAIT).await.unwrap();
    s.close().await;
    let mut s = app.connect(&format!("/socket/commu-{cid}"), &alice).await;
    assert_eq!(s.next_event("rejoined", WAIT).await.unwrap(), json!({ "channels": [two] }));
    // Rejoined means in the room: a message arrives without a join.
    let bob_view = app.post(&format!("/api/channels/{two}/messages"), &alice.token, json!({ "content": "hi" })).await;
    assert_eq!(s.next_event("new-chat", WAIT).await.unwrap(), bob_view.1["chatInfo"]);
}

#[tokio::test]
async fn a_reconnect_with_since_replays_what_was_missed_in_its_current_state() {
    let app = spawn_app().await;
    let (alice, bob, cid, ch) = app.alice_and_bob_in_general().await;
    let a = app.joined(cid, &alice, &[ch]).await;
    let old_edit = chat(&a, ch, "will be edited").await["chatInfo"]["id"].clone(); // 1
    let old_delete = chat(&a, ch, "will be deleted").await["chatInfo"]["id"].clone(); // 2
    let b = app.joined(cid, &bob, &[ch]).await;
    b.close().await; // bob has seen up to eventSeq 2

    let fresh = chat(&a, ch, "new while away").await["chatInfo"].clone(); // 3
    let gone = chat(&a, ch, "new and deleted while away").await["chatInfo"]["id"].clone(); // 4
    modify(&a, ch, &old_edit, "edited").await; // 5
    delete(&a, ch, &old_delete).await; // 6
    delete(&a, ch, &gone).await; // 7

    let mut b = app
        .connect_with(&format!("/socket/commu-{cid}"), json!({ "token": bob.token, "since": { ch.to_string(): 2 } }))
        .await
        .unwrap();
    let events = until_recovered(&mut b).await;
    let names: Vec<(&str, i64)> = events
        .iter()
        .filter(|(n, _)| n != "presence")
        .map(|(n, v)| (n.as_str(), v["eventSeq"].as_i64().unwrap_or(-1)))
        .collect();
    assert_eq!(
        names,
        vec![("rejoined", -1), ("new-chat", 3), ("modify-chat", 5), ("delete-chat", 6), ("recovered", -1)]
    );
    let get = |name: &str| events.iter().find(|(n, _)| n == name).unwrap().1.clone();
    assert_eq!(get("rejoined"), json!({ "channels": [ch] }));
    assert_eq!(get("new-chat"), fresh);
    assert_eq!(get("modify-chat")["content"], "edited");
    assert_eq!(get("recovered"), json!({ "channels": { ch.to_string(): 7 }, "complete": true }));
}

#[tokio::test]
async fn since_for_a_channel_the_user_is_not_in_replays_nothing() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let eve = app.register("eve").await;
    let cid = app.community(&alice, &[&eve]).await;
    let secret = app.channel(cid, &alice, "secret", true, &[]).await;
    app.post(&format!("/api/channels/{secret}/messages"), &alice.token, json!({ "content": "classified" })).await;
    let mut e = app
        .connect_with(
            &format!("/socket/commu-{cid}"),
            json!({ "token": eve.token, "since": { secret.to_string(): 0 } }),
        )
        .await
        .unwrap();
    let events = until_recovered(&mut e).await;
    assert_eq!(
        events,
        vec![
            ("rejoined".into(), json!({ "channels": [] })),
            ("recovered".into(), json!({ "channels": {}, "complete": true }))
        ]
    );
}

#[tokio::test]
async fn a_replay_over_1000_messages_is_marked_incomplete() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let cid = app.community(&alice, &[]).await;
    let ch = app.channel(cid, &alice, "big", false, &[]).await;
    for i in 0..1005 {
        app.app.chat.post(alice.id, ch, &format!("m{i}"), None, None).await.unwrap();
    }
    let mut s = app
        .connect_with(&format!("/socket/commu-{cid}"), json!({ "token": alice.token, "since": { ch.to_string(): 0 } }))
        .await
        .unwrap();
    let events = until_recovered(&mut s).await;
    let replayed: Vec<i64> =
        events.iter().filter(|(n, _)| n == "new-chat").map(|(_, v)| v["eventSeq"].as_i64().unwrap()).collect();
    assert_eq!(replayed, (1..=1000).collect::<Vec<_>>());
    assert_eq!(events.last().unwrap().1, json!({ "channels": { ch.to_string(): 1000 }, "complete": false }));
    // The rest comes from history, from where the replay stopped.
    let (_, page) = app.get(&format!("/api/channels/{ch}/messages?since=1000"), &alice.token).await;
    assert_eq!(page["messages"].as_array().unwrap().len(), 5);
}

#[tokio::test]
async fn after_a_restart_a_client_rejoins_and_gets_what_it_missed() {
    let first = spawn_app().await;
    let database = first.app.config.database_url();
    let alice = first.register("alice").await;
    let bob = first.register("bob").await;
    let cid = first.community(&alice, &[&bob]).await;
    let ch = first.channel(cid, &alice, "general", false, &[&bob]).await;
    let b = first.joined(cid, &bob, &[ch]).await;
    first.post(&format!("/api/channels/{ch}/messages"), &alice.token, json!({ "content": "one" })).await;
    drop(b);
    let _keep = first.stop_keeping_data().await;

    let second = spawn_app_with(|c| c.database_url = Some(database)).await;
    second.post(&format!("/api/channels/{ch}/messages"), &alice.token, json!({ "content": "two" })).await;
    let mut b = second
        .connect_with(&format!("/socket/commu-{cid}"), json!({ "token": bob.token, "since": { ch.to_string(): 1 } }))
        .await
        .expect("the old token is still accepted");
    let events = until_recovered(&mut b).await;
    assert_eq!(events[0], ("rejoined".into(), json!({ "channels": [ch] })));
    let news: Vec<&Value> = events.iter().filter(|(n, _)| n == "new-chat").map(|(_, v)| v).collect();
    assert_eq!(news.len(), 1);
    assert_eq!(news[0]["content"], "two");
}
