//! Sequences under concurrent senders: gap-free, duplicate-free, in commit order,
//! and each socket's chats applied in the order it sent them.

use std::collections::{BTreeSet, HashMap};

use serde_json::json;

use crate::helpers::*;

#[tokio::test]
async fn many_concurrent_senders_produce_a_gap_free_duplicate_free_sequence() {
    const SENDERS: usize = 8;
    const EACH: usize = 30;
    let app = spawn_app().await;
    let Community { owner, users, cid, channels } = app.populated_community(SENDERS, 1).await;
    let ch = channels[0];
    let mut listener = app.joined(cid, &owner, &[ch]).await;
    let mut sockets = Vec::new();
    for u in &users {
        sockets.push(app.joined(cid, u, &[ch]).await);
    }

    let mut tasks = Vec::new();
    for (i, s) in sockets.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            let mut pending = Vec::new();
            for n in 0..EACH {
                let p = json!({ "chatType": "new", "channelId": ch, "content": format!("{i}:{n}"), "clientMsgId": format!("{i}-{n}") });
                pending.push(s.emit_with_ack_deferred("chat", p).await.unwrap());
            }
            let mut seqs = Vec::new();
            for p in pending {
                let ack = p.wait(WAIT).await.unwrap();
                assert_eq!(ack["written"], true, "{ack}");
                seqs.push(ack["chatInfo"]["eventSeq"].as_i64().unwrap());
            }
            (s, seqs)
        }));
    }
    let mut all = Vec::new();
    let mut keep = Vec::new();
    for t in tasks {
        let (s, seqs) = t.await.unwrap();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "one socket's chats commit in send order: {seqs:?}");
        all.extend(seqs);
        keep.push(s);
    }
    let total = SENDERS * EACH;
    all.sort_unstable();
    assert_eq!(all, (1..=total as i64).collect::<Vec<_>>(), "acked eventSeqs are exactly 1..={total}");

    // The listener got each exactly once, and each sender's in order.
    let mut seen = BTreeSet::new();
    let mut last_per_sender: HashMap<String, i64> = HashMap::new();
    while seen.len() < total {
        let m = listener.next_event("new-chat", WAIT).await.unwrap();
        let seq = m["eventSeq"].as_i64().unwrap();
        assert!(seen.insert(seq), "duplicate {seq}");
        let content = m["content"].as_str().unwrap();
        let (sender, n) = content.split_once(':').unwrap();
        let n: i64 = n.parse().unwrap();
        let prev = last_per_sender.insert(sender.to_owned(), n);
        assert!(prev.is_none_or(|p| p < n), "sender {sender} out of order: {prev:?} then {n}");
    }
    assert_no_event(&mut listener, "new-chat").await;

    // The database agrees: the changes feed is 1..=total with nothing missing.
    let mut since = 0;
    let mut feed = Vec::new();
    loop {
        let (_, page) = app.get(&format!("/api/channels/{ch}/messages?since={since}&limit=200"), &owner.token).await;
        let msgs = page["messages"].as_array().unwrap();
        feed.extend(msgs.iter().map(|m| m["eventSeq"].as_i64().unwrap()));
        since = *feed.last().unwrap();
        if page["hasMore"] == false {
            break;
        }
    }
    assert_eq!(feed, (1..=total as i64).collect::<Vec<_>>());
}

#[tokio::test]
async fn concurrent_modifies_and_deletes_share_the_sequence_without_gaps() {
    let app = spawn_app().await;
    let (alice, bob, cid, ch) = app.alice_and_bob_in_general().await;
    let a = app.joined(cid, &alice, &[ch]).await;
    let b = app.joined(cid, &bob, &[ch]).await;
    let mut ids = Vec::new();
    for i in 0..10 {
        ids.push(chat(&a, ch, &format!("a{i}")).await["chatInfo"]["id"].as_i64().unwrap());
    }
    let mut pending = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let p = if i % 2 == 0 {
            json!({ "chatType": "modify", "channelId": ch, "messageId": id, "content": "edited" })
        } else {
            json!({ "chatType": "delete", "channelId": ch, "messageId": id })
        };
        pending.push(a.emit_with_ack_deferred("chat", p).await.unwrap());
        pending.push(
            b.emit_with_ack_deferred("chat", json!({ "chatType": "new", "channelId": ch, "content": format!("b{i}") }))
                .await
                .unwrap(),
        );
    }
    let mut seqs = Vec::new();
    for p in pending {
        let ack = p.wait(WAIT).await.unwrap();
        assert_eq!(ack["written"], true, "{ack}");
        seqs.push(ack["chatInfo"]["eventSeq"].as_i64().unwrap());
    }
    seqs.sort_unstable();
    assert_eq!(seqs, (11..=30).collect::<Vec<_>>());
}
