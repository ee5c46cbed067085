//! The store on its own, with no server: every query, on a fresh database (SQLite, or
//! PostgreSQL with BATON_TEST_POSTGRES, so each runs on both), checked against what it
//! must return.

use baton::store::{Inserted, NewMessage, Role, Slice, Store};

use crate::helpers::fresh_database;

async fn fresh_store(dir: &tempfile::TempDir) -> Store {
    let store =
        Store::connect(&fresh_database(dir).await, std::time::Duration::from_secs(2)).await.expect("the store opens");
    store.migrate().await.expect("the migrations apply");
    store
}

fn new_message(channel: i64, sender: i64, content: &str, client_msg_id: Option<&str>) -> NewMessage {
    NewMessage {
        channel,
        sender,
        content: content.into(),
        client_msg_id: client_msg_id.map(str::to_owned),
        now: 1_000,
        community: None,
    }
}

#[tokio::test]
async fn accounts_and_settings() {
    let dir = tempfile::tempdir().unwrap();
    let store = fresh_store(&dir).await;
    assert!(store.ping().await);
    let alice = store.insert_user("alice", "Alice", "hash-a", 1).await.unwrap();
    assert_eq!((alice.username.as_str(), alice.display_name.as_str()), ("alice", "Alice"));
    let taken = store.insert_user("alice", "Other", "hash-b", 2).await.expect_err("a taken username");
    assert!(taken.as_database_error().is_some_and(|d| d.is_unique_violation()), "{taken}");
    let credentials = store.credentials("alice").await.unwrap().expect("alice has credentials");
    assert_eq!((credentials.id, credentials.password_hash.as_str()), (alice.id, "hash-a"));
    assert!(store.credentials("nobody").await.unwrap().is_none());
    assert_eq!(store.user(alice.id).await.unwrap().map(|u| u.username), Some("alice".into()));
    assert!(store.user(alice.id + 1000).await.unwrap().is_none());
    assert_eq!(store.user_by_name("alice").await.unwrap().map(|u| u.id), Some(alice.id));
    assert_eq!(store.setting_or_insert("k", "first").await.unwrap(), "first");
    assert_eq!(store.setting_or_insert("k", "second").await.unwrap(), "first", "the first value stays");
    store.close().await;
}

#[tokio::test]
async fn communities_channels_and_membership() {
    let dir = tempfile::tempdir().unwrap();
    let store = fresh_store(&dir).await;
    let owner = store.insert_user("owner", "Owner", "h", 1).await.unwrap().id;
    let member = store.insert_user("member", "Member", "h", 1).await.unwrap().id;
    let outsider = store.insert_user("outsider", "Outsider", "h", 1).await.unwrap().id;

    let community = store.insert_community(owner, "acme", 10).await.unwrap();
    assert_eq!(community.role, Role::Owner);
    assert!(store.community_exists(community.id).await.unwrap());
    assert!(!store.community_exists(community.id + 1000).await.unwrap());
    assert!(store.insert_community_member(community.id, member, 11).await.unwrap());
    assert!(!store.insert_community_member(community.id, member, 12).await.unwrap(), "already a member");
    assert_eq!(store.community_role(community.id, owner).await.unwrap(), Some(Role::Owner));
    assert_eq!(store.community_role(community.id, member).await.unwrap(), Some(Role::Member));
    assert_eq!(store.community_role(community.id, outsider).await.unwrap(), None);
    let roles: Vec<(String, Role)> =
        store.community_members(community.id).await.unwrap().into_iter().map(|m| (m.user.username, m.role)).collect();
    assert_eq!(roles, vec![("member".into(), Role::Member), ("owner".into(), Role::Owner)]);
    let of_member: Vec<_> = store.communities_of(member).await.unwrap().into_iter().map(|c| (c.id, c.role)).collect();
    assert_eq!(of_member, vec![(community.id, Role::Member)]);

    let public = store.insert_channel(community.id, owner, "general", false, 20).await.unwrap();
    let private = store.insert_channel(community.id, owner, "secret", true, 21).await.unwrap();
    let taken = store.insert_channel(community.id, member, "general", false, 22).await.expect_err("a taken name");
    assert!(taken.as_database_error().is_some_and(|d| d.is_unique_violation()), "{taken}");
    let visible = |user| {
        let store = store.clone();
        async move {
            store.visible_channels(community.id, user).await.unwrap().into_iter().map(|c| c.id).collect::<Vec<_>>()
        }
    };
    assert_eq!(visible(owner).await, vec![public.id, private.id]);
    assert_eq!(visible(member).await, vec![public.id], "a private channel is seen by its members only");

    let access = store.channel_access(private.id, member).await.unwrap().expect("the channel exists");
    assert_eq!((access.community_role, access.channel_member), (Some(Role::Member), false));
    let access = store.channel_access(private.id, owner).await.unwrap().unwrap();
    assert_eq!((access.community_role, access.channel_member), (Some(Role::Owner), true));
    let access = store.channel_access(public.id, outsider).await.unwrap().unwrap();
    assert_eq!((access.community_role, access.channel_member), (None, false));
    assert!(store.channel_access(private.id + 1000, owner).await.unwrap().is_none());

    assert!(store.insert_channel_member(public.id, member, 30).await.unwrap());
    assert!(!store.insert_channel_member(public.id, member, 31).await.unwrap(), "already a member");
    let among = store.member_channels_among(community.id, member, &[public.id, private.id, 9999]).await.unwrap();
    assert_eq!(among, vec![public.id]);
    assert!(store.member_channels_among(community.id, member, &[]).await.unwrap().is_empty());
    let mut members = store.channel_member_ids(public.id).await.unwrap();
    members.sort();
    assert_eq!(members, vec![owner, member]);
    assert!(store.delete_channel_member(public.id, member).await.unwrap());
    assert!(!store.delete_channel_member(public.id, member).await.unwrap(), "no longer a member");

    let active = store.recently_active(21).await.unwrap();
    assert_eq!(active, vec![(private.id, community.id, 0)], "channels whose last event is at or after 21");
    store.close().await;
}

#[tokio::test]
async fn messages_changes_history_and_read_markers() {
    let dir = tempfile::tempdir().unwrap();
    let store = fresh_store(&dir).await;
    let owner = store.insert_user("owner", "Owner", "h", 1).await.unwrap().id;
    let reader = store.insert_user("reader", "Reader", "h", 1).await.unwrap().id;
    let outsider = store.insert_user("outsider", "Outsider", "h", 1).await.unwrap().id;
    let community = store.insert_community(owner, "acme", 10).await.unwrap().id;
    store.insert_community_member(community, reader, 11).await.unwrap();
    let channel = store.insert_channel(community, owner, "general", false, 20).await.unwrap().id;
    store.insert_channel_member(channel, reader, 21).await.unwrap();

    let mut seqs = Vec::new();
    for n in 0..3 {
        let written = store.insert_message(new_message(channel, owner, &format!("m{n}"), None)).await.unwrap();
        let Some(written) = written else { panic!("a member's message is written") };
        let Inserted::Fresh(message) = written.inserted else { panic!("a first send is fresh") };
        assert_eq!(message.community_id, community);
        assert!(written.members.is_some_and(|m| m.contains(&reader)), "the group write read the members");
        seqs.push(message.seq);
    }
    assert_eq!(seqs, vec![1, 2, 3], "gap-free, in order");

    let first = store.insert_message(new_message(channel, reader, "hi", Some("c-1"))).await.unwrap().unwrap();
    let Inserted::Fresh(first) = first.inserted else { panic!("fresh") };
    let again = store.insert_message(new_message(channel, reader, "hi", Some("c-1"))).await.unwrap().unwrap();
    let Inserted::Existing(again) = again.inserted else { panic!("a repeated clientMsgId finds the first") };
    assert_eq!(again, first);
    assert!(store.insert_message(new_message(channel, outsider, "no", None)).await.unwrap().is_none());
    let mut elsewhere = new_message(channel, owner, "no", None);
    elsewhere.community = Some(community + 1000);
    assert!(store.insert_message(elsewhere).await.unwrap().is_none(), "a channel of another community");
    assert!(store.insert_message(new_message(channel + 1000, owner, "no", None)).await.unwrap().is_none());

    let message = store.message(first.id).await.unwrap().expect("the message is there");
    assert_eq!(message, first);
    let edited = store.change_message(&message, Some("edited"), 2_000).await.unwrap().expect("modified");
    assert_eq!((edited.content.as_str(), edited.edited_at, edited.event_seq), ("edited", Some(2_000), 5));
    let deleted = store.change_message(&edited, None, 3_000).await.unwrap().expect("deleted");
    assert!(deleted.deleted && deleted.content.is_empty());
    assert_eq!(deleted.event_seq, 6);
    assert!(store.change_message(&deleted, None, 4_000).await.unwrap().is_none(), "already deleted: nothing written");

    let seq = |messages: Vec<baton::chat::Message>| messages.into_iter().map(|m| m.seq).collect::<Vec<_>>();
    let newest = store.messages(channel, Slice::Descending { before: None, after: None }, 10).await.unwrap();
    assert_eq!(seq(newest), vec![4, 3, 2, 1]);
    let older = store.messages(channel, Slice::Descending { before: Some(3), after: Some(1) }, 10).await.unwrap();
    assert_eq!(seq(older), vec![2]);
    let after = store.messages(channel, Slice::Ascending { after: 2, before: None }, 1).await.unwrap();
    assert_eq!(seq(after), vec![3]);
    let changes = store.messages(channel, Slice::Changes { since: 3 }, 10).await.unwrap();
    let changes: Vec<(i64, i64)> = changes.into_iter().map(|m| (m.seq, m.event_seq)).collect();
    assert_eq!(changes, vec![(4, 6)], "the changes feed: the deleted message at its last event");

    assert_eq!(store.advance_read(channel, reader, 2).await.unwrap(), Some((2, true)));
    assert_eq!(store.advance_read(channel, reader, 1).await.unwrap(), Some((2, false)), "never backwards");
    assert_eq!(store.advance_read(channel, outsider, 3).await.unwrap(), None, "not a member");
    let unread = store.unread(reader).await.unwrap();
    assert_eq!(unread.len(), 1);
    let (in_community, counts) = &unread[0];
    assert_eq!(*in_community, community);
    assert_eq!((counts.unread, counts.last_seq, counts.read_seq), (1, 6, 2), "m2 only: m4 is the reader's, deleted");
    store.close().await;
}
