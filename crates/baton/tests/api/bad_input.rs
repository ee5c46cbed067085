//! Every bad input gets a clear error with PROTOCOL.md's code; the connection and
//! the instance survive, and nothing acknowledged before is lost.

use std::time::Duration;

use baton_client::Socket;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::*;

struct World {
    app: TestApp,
    alice: TestUser,
    bob: TestUser,
    cid: i64,
    general: i64,
    /// Public, alice is not in it.
    public: i64,
    /// Private, alice is not in it.
    private: i64,
    /// In another community alice is in.
    elsewhere: i64,
}

async fn world() -> World {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let cid = app.community(&alice, &[&bob]).await;
    let general = app.channel(cid, &alice, "general", false, &[&bob]).await;
    let public = app.channel(cid, &bob, "bobs-public", false, &[]).await;
    let private = app.channel(cid, &bob, "bobs-private", true, &[]).await;
    let other = app.community(&bob, &[&alice]).await;
    let elsewhere = app.channel(other, &bob, "elsewhere", false, &[&alice]).await;
    World { app, alice, bob, cid, general, public, private, elsewhere }
}

/// One bad event and the code its ack must carry.
struct Case {
    what: &'static str,
    event: &'static str,
    payload: Value,
    code: &'static str,
}

fn case(what: &'static str, event: &'static str, payload: Value, code: &'static str) -> Case {
    Case { what, event, payload, code }
}

fn error_code(ack: &Value) -> Option<&str> {
    ack["error"]["code"].as_str()
}

#[tokio::test]
async fn every_bad_socket_event_gets_its_error_and_the_connection_keeps_working() {
    let w = world().await;
    let (ch, other_ch) = (w.general, w.public);
    let a = w.app.joined(w.cid, &w.alice, &[ch]).await;
    let b = w.app.joined(w.cid, &w.bob, &[ch]).await;
    let acked = chat(&a, ch, "acked before the storm").await;
    assert_eq!(acked["written"], true);
    let mine = acked["chatInfo"]["id"].as_i64().unwrap();
    let bobs = chat(&b, ch, "bob's").await["chatInfo"]["id"].as_i64().unwrap();
    let elsewhere_msg = w
        .app
        .post(&format!("/api/channels/{}/messages", w.elsewhere), &w.alice.token, json!({ "content": "x" }))
        .await
        .1["chatInfo"]["id"]
        .as_i64()
        .unwrap();

    let cases = vec![
        case("payload is not an object", "chat", json!("nope"), "invalid"),
        case("no payload at all", "chat", Value::Null, "invalid"),
        case("missing chatType", "chat", json!({ "channelId": ch, "content": "hi" }), "invalid"),
        case("unknown chatType", "chat", json!({ "chatType": "shout", "channelId": ch, "content": "hi" }), "invalid"),
        case(
            "channelId as a string",
            "chat",
            json!({ "chatType": "new", "channelId": ch.to_string(), "content": "hi" }),
            "invalid",
        ),
        case(
            "channelId fractional",
            "chat",
            json!({ "chatType": "new", "channelId": 1.5, "content": "hi" }),
            "invalid",
        ),
        case("channelId negative", "chat", json!({ "chatType": "new", "channelId": -1, "content": "hi" }), "invalid"),
        case("channelId zero", "chat", json!({ "chatType": "new", "channelId": 0, "content": "hi" }), "invalid"),
        case(
            "messageId negative",
            "chat",
            json!({ "chatType": "delete", "channelId": ch, "messageId": -5 }),
            "invalid",
        ),
        case("content missing", "chat", json!({ "chatType": "new", "channelId": ch }), "invalid"),
        case("content a number", "chat", json!({ "chatType": "new", "channelId": ch, "content": 5 }), "invalid"),
        case(
            "content only spaces",
            "chat",
            json!({ "chatType": "new", "channelId": ch, "content": "   \n " }),
            "invalid",
        ),
        case(
            "content over 4000 characters",
            "chat",
            json!({ "chatType": "new", "channelId": ch, "content": "x".repeat(4001) }),
            "too_large",
        ),
        case(
            "content with a NUL",
            "chat",
            json!({ "chatType": "new", "channelId": ch, "content": "a\u{0}b" }),
            "invalid",
        ),
        case(
            "clientMsgId empty",
            "chat",
            json!({ "chatType": "new", "channelId": ch, "content": "hi", "clientMsgId": "" }),
            "invalid",
        ),
        case(
            "clientMsgId over 64",
            "chat",
            json!({ "chatType": "new", "channelId": ch, "content": "hi", "clientMsgId": "c".repeat(65) }),
            "invalid",
        ),
        case(
            "unknown field",
            "chat",
            json!({ "chatType": "new", "channelId": ch, "content": "hi", "sudo": true }),
            "invalid",
        ),
        case(
            "editing someone else's message",
            "chat",
            json!({ "chatType": "modify", "channelId": ch, "messageId": bobs, "content": "mine" }),
            "forbidden",
        ),
        case(
            "deleting someone else's message",
            "chat",
            json!({ "chatType": "delete", "channelId": ch, "messageId": bobs }),
            "forbidden",
        ),
        case(
            "modify a message that does not exist",
            "chat",
            json!({ "chatType": "modify", "channelId": ch, "messageId": 999_999, "content": "x" }),
            "not_found",
        ),
        case(
            "delete naming the wrong channel",
            "chat",
            json!({ "chatType": "delete", "channelId": ch, "messageId": elsewhere_msg }),
            "not_found",
        ),
        case(
            "modify without content",
            "chat",
            json!({ "chatType": "modify", "channelId": ch, "messageId": mine }),
            "invalid",
        ),
        case(
            "chat in a private channel by id",
            "chat",
            json!({ "chatType": "new", "channelId": w.private, "content": "let me in" }),
            "not_found",
        ),
        case(
            "chat in a public channel not joined",
            "chat",
            json!({ "chatType": "new", "channelId": other_ch, "content": "hi" }),
            "forbidden",
        ),
        case(
            "chat in another community's channel",
            "chat",
            json!({ "chatType": "new", "channelId": w.elsewhere, "content": "hi" }),
            "not_found",
        ),
        case("join over 100 channels", "join", json!({ "channels": (1..=101).collect::<Vec<i64>>() }), "too_large"),
        case("join with channels not a list", "join", json!({ "channels": ch }), "invalid"),
        case("join without channels", "join", json!({}), "invalid"),
        case("leave with ids as strings", "leave", json!({ "channels": ["1"] }), "invalid"),
        case("join with a negative id", "join", json!({ "channels": [ch, -1] }), "invalid"),
        case("history of channel -1", "history", json!({ "channelId": -1 }), "invalid"),
        case("read in channel 0", "read", json!({ "channelId": 0, "seq": 0 }), "invalid"),
        case("typing in channel -1", "typing", json!({ "channelId": -1 }), "invalid"),
        case("history limit 0", "history", json!({ "channelId": ch, "limit": 0 }), "invalid"),
        case("history limit 201", "history", json!({ "channelId": ch, "limit": 201 }), "invalid"),
        case("history since with before", "history", json!({ "channelId": ch, "since": 0, "before": 3 }), "invalid"),
        case("history of a private channel by id", "history", json!({ "channelId": w.private }), "not_found"),
        case("history of another community's channel", "history", json!({ "channelId": w.elsewhere }), "not_found"),
        case("read seq negative", "read", json!({ "channelId": ch, "seq": -1 }), "invalid"),
        case("read seq beyond lastSeq", "read", json!({ "channelId": ch, "seq": 1_000 }), "invalid"),
        case("read without seq", "read", json!({ "channelId": ch }), "invalid"),
        case("typing in a channel not joined", "typing", json!({ "channelId": other_ch }), "not_found"),
        case("an event that does not exist", "subscribe", json!({ "channelId": ch }), "invalid"),
    ];
    assert!(cases.len() >= 25);
    for c in &cases {
        let ack = a
            .emit_with_ack(c.event, c.payload.clone(), WAIT)
            .await
            .unwrap_or_else(|e| panic!("{}: no ack ({e})", c.what));
        assert_eq!(error_code(&ack), Some(c.code), "{}: {ack}", c.what);
        assert!(ack["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{}: a message says why", c.what);
        if c.event == "chat" {
            assert_eq!((ack["written"].clone(), ack["chatInfo"].clone()), (json!(false), Value::Null), "{}", c.what);
        }
    }

    // The same connection still works, and what was acked is still there.
    let after = chat(&a, ch, "still here").await;
    assert_eq!(after["written"], true);
    let (_, page) = w.app.get(&format!("/api/channels/{ch}/messages"), &w.alice.token).await;
    let contents: Vec<&str> =
        page["messages"].as_array().unwrap().iter().map(|m| m["content"].as_str().unwrap()).collect();
    assert_eq!(contents, vec!["still here", "bob's", "acked before the storm"]);
}

#[tokio::test]
async fn flooding_is_rate_limited_and_the_sender_recovers() {
    let w = world().await;
    let a = w.app.joined(w.cid, &w.alice, &[w.general]).await;
    let mut pending = Vec::new();
    for i in 0..80 {
        let p = json!({ "chatType": "new", "channelId": w.general, "content": format!("flood {i}"), "clientMsgId": format!("f{i}") });
        pending.push(a.emit_with_ack_deferred("chat", p).await.unwrap());
    }
    let mut written = 0;
    let mut limited = 0;
    for p in pending {
        let ack = p.wait(WAIT).await.unwrap();
        match error_code(&ack) {
            None => written += 1,
            Some("rate_limited") => limited += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(written >= 40 && limited >= 1, "written {written}, limited {limited}");
    // Each written message is in the channel, gap-free.
    let (_, page) = w.app.get(&format!("/api/channels/{}/messages?since=0&limit=200", w.general), &w.alice.token).await;
    assert_eq!(page["messages"].as_array().unwrap().len(), written);
    // REST shares the allowance.
    let (status, body) =
        w.app.post(&format!("/api/channels/{}/messages", w.general), &w.alice.token, json!({ "content": "x" })).await;
    assert!(status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::CREATED, "{status} {body}");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(chat(&a, w.general, "calm again").await["written"], true);
}

#[tokio::test]
async fn a_malformed_packet_or_an_oversize_message_closes_only_that_transport() {
    let w = world().await;
    let ns = format!("/socket/commu-{}", w.cid);
    let a = w.app.joined(w.cid, &w.alice, &[w.general]).await;
    chat(&a, w.general, "acked").await;

    // Not valid Socket.IO framing: like Node's server, socketioxide closes the
    // transport (socket.io-client then reconnects on its own).
    let mut broken = w.app.connect(&ns, &w.alice).await;
    broken.send_raw(&format!("42{ns},9[\"chat\",{{bad")).await.unwrap();
    wait_closed(&mut broken).await;

    // An ack id too large to be answered is an invalid packet: the session is closed
    // and the message is not written (it could never be acked).
    let mut overflow = w.app.connect(&ns, &w.alice).await;
    overflow
        .send_raw(&format!(
            "42{ns},99999999999999999999[\"chat\",{{\"chatType\":\"new\",\"channelId\":{},\"content\":\"never acked\"}}]",
            w.general
        ))
        .await
        .unwrap();
    wait_closed(&mut overflow).await;

    // A binary event is refused at its header, before any attachment: baton takes
    // none, so the session is closed at once rather than kept waiting for them.
    let mut binary = w.app.connect(&ns, &w.alice).await;
    binary
        .send_raw(&format!("451-{ns},7[\"chat\",{{\"chatType\":\"new\",\"channelId\":{},\"content\":{{\"_placeholder\":true,\"num\":0}}}}]", w.general))
        .await
        .unwrap();
    wait_closed(&mut binary).await;

    // Over --max-message (64 KiB by default) on a WebSocket: closed as well (with
    // 1009: `a_websocket_message_over_the_limit_is_closed_with_1009`).
    let mut big = w.app.connect(&ns, &w.alice).await;
    let huge = json!({ "chatType": "new", "channelId": w.general, "content": "x".repeat(70 * 1024) });
    let _ = big.emit("chat", huge).await;
    wait_closed(&mut big).await;

    // The instance and everyone else are fine.
    assert_eq!(chat(&a, w.general, "others unaffected").await["written"], true);
    let mut again: Socket = w.app.connect(&ns, &w.alice).await;
    again.next_event("rejoined", WAIT).await.unwrap();
    let (_, page) = w.app.get(&format!("/api/channels/{}/messages", w.general), &w.alice.token).await;
    assert_eq!(page["messages"].as_array().unwrap().len(), 2);
}

async fn wait_closed(s: &mut Socket) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while s.is_open() {
        assert!(tokio::time::Instant::now() < deadline, "transport still open");
        let _ = s.next(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn every_bad_rest_request_gets_its_error() {
    let w = world().await;
    let app = &w.app;
    let t = w.alice.token.as_str();
    let ch = w.general;
    let (status, _) = app.post(&format!("/api/channels/{ch}/messages"), t, json!({ "content": "acked" })).await;
    assert_eq!(status, StatusCode::CREATED);

    let raw = [
        ("malformed JSON", "/api/users", None, "{\"username\": ", StatusCode::BAD_REQUEST, "invalid"),
        (
            "wrong type",
            "/api/users",
            None,
            "{\"username\": 5, \"password\": \"password1\"}",
            StatusCode::BAD_REQUEST,
            "invalid",
        ),
        (
            "username too short",
            "/api/users",
            None,
            "{\"username\": \"al\", \"password\": \"password1\"}",
            StatusCode::BAD_REQUEST,
            "invalid",
        ),
        (
            "password too short",
            "/api/users",
            None,
            "{\"username\": \"carol\", \"password\": \"short\"}",
            StatusCode::BAD_REQUEST,
            "invalid",
        ),
        ("no token", "/api/communities", None, "{\"name\": \"x\"}", StatusCode::UNAUTHORIZED, "unauthorized"),
        (
            "forged token",
            "/api/communities",
            Some("eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.bad"),
            "{\"name\": \"x\"}",
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        ),
        ("empty community name", "/api/communities", Some(t), "{\"name\": \"  \"}", StatusCode::BAD_REQUEST, "invalid"),
        (
            "non-numeric id in the path",
            "/api/channels/abc/messages",
            Some(t),
            "{\"content\": \"x\"}",
            StatusCode::BAD_REQUEST,
            "invalid",
        ),
    ];
    for (what, path, token, body, status, code) in raw {
        let (got, json) = app.post_raw(path, token, body).await;
        assert_eq!((got, json["error"]["code"].as_str()), (status, Some(code)), "{what}: {json}");
    }
    let big = format!("{{\"content\": \"{}\"}}", "x".repeat(70 * 1024));
    let (status, body) = app.post_raw(&format!("/api/channels/{ch}/messages"), Some(t), &big).await;
    assert_eq!((status, body["error"]["code"].as_str()), (StatusCode::PAYLOAD_TOO_LARGE, Some("too_large")));
    let (status, body) = app.get(&format!("/api/channels/{ch}/messages?limit=abc"), t).await;
    assert_eq!((status, body["error"]["code"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid")));
    let (status, body) = app.request(Method::GET, "/api/nothing-here", Some(t), None).await;
    assert_eq!((status, body["error"]["code"].as_str()), (StatusCode::NOT_FOUND, Some("not_found")));
    let (status, body) =
        app.post(&format!("/api/communities/{}/channels", w.cid), t, json!({ "name": "general" })).await;
    assert_eq!((status, body["error"]["code"].as_str()), (StatusCode::CONFLICT, Some("conflict")));
    let (status, body) = app.post(&format!("/api/channels/{}/members", w.private), t, json!({})).await;
    assert_eq!((status, body["error"]["code"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid")), "{body}");

    // What was acked is still there, and the server still answers.
    let (_, page) = app.get(&format!("/api/channels/{ch}/messages"), &w.bob.token).await;
    assert_eq!(page["messages"][0]["content"], "acked");
}

#[tokio::test]
async fn a_disallowed_browser_origin_is_refused_before_the_socket_opens() {
    let w = world().await;
    let opts = baton_client::ClientOptions {
        headers: vec![("Origin".into(), "https://evil.example".into())],
        ..Default::default()
    };
    let refused = Socket::connect_with(&w.app.base, "/", json!({ "token": w.alice.token }), opts).await.err();
    assert!(matches!(refused, Some(baton_client::ClientError::Handshake { status: Some(403), .. })), "{refused:?}");
    let same =
        baton_client::ClientOptions { headers: vec![("Origin".into(), w.app.base.clone())], ..Default::default() };
    assert!(Socket::connect_with(&w.app.base, "/", json!({ "token": w.alice.token }), same).await.is_ok());
}

/// A WebSocket message far over --max-message (20 MB) is answered with a Close
/// frame carrying 1009 ("message too big"), read by the client once it has sent its
/// message (the server reads and drops the rest instead of resetting the
/// connection, which the client would see as 1006); the instance carries on.
#[tokio::test]
async fn a_websocket_message_over_the_limit_is_closed_with_1009() {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

    let w = world().await;
    let url = format!("{}/socket.io/?EIO=4&transport=websocket", w.app.base.replacen("http", "ws", 1));
    for size in [70 * 1024, 20 << 20] {
        let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
        let open = ws.next().await.unwrap().unwrap();
        assert!(open.to_text().unwrap().starts_with("0{"), "{open:?}");
        // Sending may fail once the server has closed: what matters is what it said.
        let _ = ws.send(Message::text(format!("4{}", "x".repeat(size)))).await;
        let close = tokio::time::timeout(WAIT, async {
            while let Some(Ok(msg)) = ws.next().await {
                if let Message::Close(frame) = msg {
                    return frame;
                }
            }
            None
        })
        .await
        .expect("closed in time");
        let frame = close.unwrap_or_else(|| panic!("a {size}-byte message: no Close frame"));
        assert_eq!(frame.code, CloseCode::Size, "a {size}-byte message: {frame:?}");
    }
    let a = w.app.joined(w.cid, &w.alice, &[w.general]).await;
    assert_eq!(chat(&a, w.general, "after the big ones").await["written"], true);
}
