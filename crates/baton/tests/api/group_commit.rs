//! The group commit: concurrent sends are written together, and every guarantee of
//! a send written alone still holds for each of them.

use std::collections::{BTreeMap, HashSet};

use serde_json::{Value, json};

use crate::helpers::*;

/// Every message of a channel in eventSeq order, from the changes feed.
async fn changes(app: &TestApp, channel: i64, user: &TestUser) -> Vec<Value> {
    let (mut since, mut all) = (0, Vec::new());
    loop {
        let (_, page) =
            app.get(&format!("/api/channels/{channel}/messages?since={since}&limit=200"), &user.token).await;
        let messages = page["messages"].as_array().unwrap();
        all.extend(messages.iter().cloned());
        if page["hasMore"] == false {
            return all;
        }
        since = all.last().unwrap()["eventSeq"].as_i64().unwrap();
    }
}

#[tokio::test]
async fn concurrent_senders_on_several_channels_get_gap_free_sequences_matching_history() {
    const SENDERS: usize = 24;
    const CHANNELS: usize = 4;
    const EACH: usize = 20;
    let app = spawn_app().await;
    let Community { owner, users, cid, channels: chs } = app.populated_community(SENDERS, CHANNELS).await;
    let mut sockets = Vec::new();
    for u in &users {
        sockets.push(app.joined(cid, u, &chs).await);
    }

    // Every sender queues all its sends at once, spread over the channels.
    let mut tasks = Vec::new();
    for (i, s) in sockets.into_iter().enumerate() {
        let chs = chs.clone();
        tasks.push(tokio::spawn(async move {
            let mut pending = Vec::new();
            for n in 0..EACH {
                let ch = chs[(i + n) % CHANNELS];
                let p = json!({ "chatType": "new", "channelId": ch, "content": format!("{i}:{n}") });
                pending.push(s.emit_with_ack_deferred("chat", p).await.unwrap());
            }
            let mut acks = Vec::new();
            for p in pending {
                let ack = p.wait(WAIT).await.unwrap();
                assert_eq!(ack["written"], true, "{ack}");
                acks.push(ack["chatInfo"].clone());
            }
            (s, acks)
        }));
    }
    let mut acked: BTreeMap<i64, Vec<Value>> = BTreeMap::new();
    let mut keep = Vec::new();
    for t in tasks {
        let (s, acks) = t.await.unwrap();
        // One socket's sends commit in the order it sent them: its message ids (given
        // in commit order) rise along its sends.
        let ids: Vec<i64> = acks.iter().map(|m| m["id"].as_i64().unwrap()).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "one socket's chats commit in send order: {ids:?}");
        for m in acks {
            acked.entry(m["channelId"].as_i64().unwrap()).or_default().push(m);
        }
        keep.push(s);
    }

    for &ch in &chs {
        let mut mine = acked.remove(&ch).unwrap_or_default();
        mine.sort_by_key(|m| m["eventSeq"].as_i64().unwrap());
        let seqs: Vec<i64> = mine.iter().map(|m| m["eventSeq"].as_i64().unwrap()).collect();
        let n = (SENDERS * EACH / CHANNELS) as i64;
        assert_eq!(seqs, (1..=n).collect::<Vec<_>>(), "channel {ch}: acked eventSeqs are exactly 1..={n}");
        assert!(mine.iter().all(|m| m["seq"] == m["eventSeq"]), "a new message's seq is its eventSeq");
        // What was acked is what the database holds, field for field.
        assert_eq!(changes(&app, ch, &owner).await, mine, "channel {ch}: history equals the acks");
    }
}

#[tokio::test]
async fn one_client_msg_id_sent_at_once_from_many_sockets_writes_one_message() {
    const SOCKETS: usize = 8;
    const IDS: usize = 10;
    const OTHERS: usize = 6;
    // The one user sends SOCKETS * IDS chats at once: above the default burst.
    let app = spawn_app_with(|c| {
        c.chat_rate = 1000;
        c.chat_burst = 1000;
    })
    .await;
    let Community { owner, users, cid, channels: chs } = app.populated_community(OTHERS + 1, 1).await;
    let ch = chs[0];
    let (twin, others) = users.split_first().unwrap();
    // One user with many sockets, each sending every clientMsgId, while others send too.
    let mut twins = Vec::new();
    for _ in 0..SOCKETS {
        twins.push(app.joined(cid, twin, &[ch]).await);
    }
    let mut other_sockets = Vec::new();
    for u in others {
        other_sockets.push(app.joined(cid, u, &[ch]).await);
    }
    let mut listener = app.joined(cid, &owner, &[ch]).await;

    let mut pending = Vec::new();
    for k in 0..IDS {
        for s in &twins {
            let p = json!({ "chatType": "new", "channelId": ch, "content": format!("twin {k}"), "clientMsgId": format!("id-{k}") });
            pending.push((Some(k), s.emit_with_ack_deferred("chat", p).await.unwrap()));
        }
        for (i, s) in other_sockets.iter().enumerate() {
            let p = json!({ "chatType": "new", "channelId": ch, "content": format!("other {i} {k}"), "clientMsgId": format!("id-{k}") });
            pending.push((None, s.emit_with_ack_deferred("chat", p).await.unwrap()));
        }
    }
    let mut twin_ids: BTreeMap<usize, HashSet<i64>> = BTreeMap::new();
    let mut seqs = Vec::new();
    for (k, p) in pending {
        let ack = p.wait(WAIT).await.unwrap();
        assert_eq!(ack["written"], true, "{ack}");
        let m = &ack["chatInfo"];
        if let Some(k) = k {
            twin_ids.entry(k).or_default().insert(m["id"].as_i64().unwrap());
            assert_eq!(m["content"], format!("twin {k}"));
        }
        seqs.push(m["eventSeq"].as_i64().unwrap());
    }
    for (k, ids) in &twin_ids {
        assert_eq!(ids.len(), 1, "id-{k}: every socket got the same message: {ids:?}");
    }
    // The repeats were acked with the one message, not written again.
    seqs.sort_unstable();
    seqs.dedup();
    let total = (IDS * (1 + OTHERS)) as i64;
    assert_eq!(seqs, (1..=total).collect::<Vec<_>>());
    let history = changes(&app, ch, &owner).await;
    assert_eq!(history.len() as i64, total, "one message per (sender, clientMsgId)");
    // Broadcast once each: the listener sees every eventSeq exactly once.
    let mut seen = HashSet::new();
    while seen.len() < total as usize {
        let m = listener.next_event("new-chat", WAIT).await.unwrap();
        assert!(seen.insert(m["eventSeq"].as_i64().unwrap()), "broadcast twice: {m}");
    }
    assert_no_event(&mut listener, "new-chat").await;
}

/// Makes the database refuse every new message whose content is `poison`, as a
/// constraint would: a failure that one row of a batch causes.
async fn refuse_poison(database_url: &str) {
    use sqlx::Connection;
    if database_url.starts_with("sqlite:") {
        let mut db = sqlx::SqliteConnection::connect(database_url).await.unwrap();
        sqlx::query(
            "CREATE TRIGGER refuse_poison BEFORE INSERT ON messages WHEN NEW.content = 'poison' \
             BEGIN SELECT RAISE(ABORT, 'poison refused'); END",
        )
        .execute(&mut db)
        .await
        .unwrap();
    } else {
        let mut db = sqlx::PgConnection::connect(database_url).await.unwrap();
        sqlx::query(
            "CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
             IF NEW.content = 'poison' THEN RAISE EXCEPTION 'poison refused'; END IF; RETURN NEW; END $$",
        )
        .execute(&mut db)
        .await
        .unwrap();
        sqlx::query(
            "CREATE TRIGGER refuse_poison BEFORE INSERT ON messages FOR EACH ROW EXECUTE FUNCTION refuse_poison()",
        )
        .execute(&mut db)
        .await
        .unwrap();
    }
}

#[tokio::test]
async fn a_message_the_database_refuses_fails_alone_not_its_batch_mates() {
    const SENDERS: usize = 12;
    const EACH: usize = 10;
    let app = spawn_app().await;
    let Community { owner, users, cid, channels: chs } = app.populated_community(SENDERS, 2).await;
    refuse_poison(&app.app.config.database_url()).await;
    let mut sockets = Vec::new();
    for u in &users {
        sockets.push(app.joined(cid, u, &chs).await);
    }

    // Every third sender slips a poisoned message in among its good ones.
    let mut pending = Vec::new();
    for n in 0..EACH {
        for (i, s) in sockets.iter().enumerate() {
            let ch = chs[(i + n) % chs.len()];
            let poisoned = i % 3 == 0 && n % 4 == 1;
            let content = if poisoned { "poison".to_owned() } else { format!("{i}:{n}") };
            let p =
                json!({ "chatType": "new", "channelId": ch, "content": content, "clientMsgId": format!("{i}-{n}") });
            pending.push((poisoned, ch, s.emit_with_ack_deferred("chat", p).await.unwrap()));
        }
    }
    let mut written: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
    let mut refused = 0;
    for (poisoned, ch, p) in pending {
        let ack = p.wait(WAIT).await.unwrap();
        if poisoned {
            assert_eq!(ack["written"], false, "{ack}");
            assert_eq!(ack["error"]["code"], "unavailable", "{ack}");
            refused += 1;
        } else {
            assert_eq!(ack["written"], true, "{ack}");
            written.entry(ch).or_default().push(ack["chatInfo"]["eventSeq"].as_i64().unwrap());
        }
    }
    assert!(refused > 0);
    // The refused ones took no sequence number.
    for &ch in &chs {
        let mut seqs = written.remove(&ch).unwrap_or_default();
        seqs.sort_unstable();
        let n = seqs.len() as i64;
        assert_eq!(seqs, (1..=n).collect::<Vec<_>>(), "channel {ch}");
        let history: Vec<i64> =
            changes(&app, ch, &owner).await.iter().map(|m| m["eventSeq"].as_i64().unwrap()).collect();
        assert_eq!(history, seqs, "channel {ch}: history equals the acks");
    }
}

/// The group write checks membership itself: sends from a user who is not a member of
/// the channel, mixed into a burst of members' sends, are refused with `forbidden`
/// and take no sequence number, and the members' messages are written gap-free.
#[tokio::test]
async fn a_non_members_sends_in_a_burst_are_refused_alone_and_take_no_sequence_number() {
    const EACH: usize = 15;
    let app = spawn_app().await;
    let Community { owner, users, cid, channels: chs } = app.populated_community(4, 1).await;
    let outsider = app.register("outsider").await;
    app.post(&format!("/api/communities/{cid}/members"), &owner.token, json!({ "username": "outsider" })).await;
    let ch = chs[0];
    let mut members = Vec::new();
    for u in &users {
        members.push(app.joined(cid, u, &chs).await);
    }
    let outside = app.connect(&format!("/socket/commu-{cid}"), &outsider).await;

    let mut pending = Vec::new();
    for n in 0..EACH {
        for (i, s) in members.iter().enumerate() {
            let p = json!({ "chatType": "new", "channelId": ch, "content": format!("{i}:{n}") });
            pending.push((true, s.emit_with_ack_deferred("chat", p).await.unwrap()));
        }
        let p = json!({ "chatType": "new", "channelId": ch, "content": format!("outsider:{n}") });
        pending.push((false, outside.emit_with_ack_deferred("chat", p).await.unwrap()));
    }
    for (member, p) in pending {
        let ack = p.wait(WAIT).await.unwrap();
        if member {
            assert_eq!(ack["written"], true, "{ack}");
        } else {
            assert_eq!(
                (ack["written"].clone(), ack["error"]["code"].clone()),
                (json!(false), json!("forbidden")),
                "{ack}"
            );
        }
    }
    let seqs: Vec<i64> = changes(&app, ch, &owner).await.iter().map(|m| m["eventSeq"].as_i64().unwrap()).collect();
    assert_eq!(seqs, (1..=(4 * EACH) as i64).collect::<Vec<_>>());
}
