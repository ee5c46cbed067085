//! The floor driven from outside, in-process on port 0: by the load generator (every
//! message acked and delivered once to every other client; never timing), and by hand
//! over REST and raw Socket.IO frames (the contract's refusals and shapes).

use std::time::Duration;

use baton_bench::{BenchArgs, Scenario, run};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

async fn spawn_floor() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let config = baton_floor::Config {
        ping_interval: Duration::from_secs(25),
        ping_timeout: Duration::from_secs(20),
        max_message: 64 * 1024,
    };
    tokio::spawn(baton_floor::run(listener, config));
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_and_rooms_deliver_every_message_once_to_every_other_client() {
    let url = spawn_floor().await;
    for (scenario, clients, expected_per_message) in [(Scenario::Fanout, 20, 19), (Scenario::Rooms, 20, 4)] {
        let mut args = BenchArgs::new(url.clone(), scenario);
        args.clients = Some(clients);
        if scenario == Scenario::Fanout {
            args.senders = Some(2);
        }
        args.duration = Some(1.0);
        args.receiver_users = 4;
        let report = run(&args).await.expect("the bench runs");
        assert!(report.sent > 0, "{report:?}");
        assert_eq!(report.acked, report.sent, "{report:?}");
        assert_eq!((report.rate_limited, report.ack_errors, report.unanswered), (0, 0, 0), "{report:?}");
        assert_eq!(report.expected, report.acked * expected_per_message, "{report:?}");
        assert_eq!(report.delivered, report.expected, "{report:?}");
        assert_eq!((report.lost, report.duplicated, report.closed_early), (0, 0, 0), "{report:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_stay_connected() {
    let url = spawn_floor().await;
    let mut args = BenchArgs::new(url, Scenario::Idle);
    args.clients = Some(50);
    args.duration = Some(0.5);
    let report = run(&args).await.expect("the bench runs");
    assert_eq!((report.clients, report.closed_early), (50, 0), "{report:?}");
}

struct Rest {
    base: String,
    http: reqwest::Client,
}

impl Rest {
    async fn call(&self, path: &str, token: Option<&str>, body: Option<Value>) -> (u16, Value) {
        let mut request = self.http.post(format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        (response.status().as_u16(), response.json().await.unwrap_or(Value::Null))
    }

    async fn user(&self, name: &str) -> String {
        let credentials = json!({ "username": name, "password": "secret-password" });
        assert_eq!(self.call("/api/users", None, Some(credentials.clone())).await.0, 201);
        let (status, session) = self.call("/api/sessions", None, Some(credentials)).await;
        assert_eq!(status, 200, "{session}");
        session["token"].as_str().unwrap().to_owned()
    }
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn next_text(ws: &mut Ws) -> String {
    loop {
        match tokio::time::timeout(Duration::from_secs(5), ws.next()).await.expect("a frame within 5 s") {
            Some(Ok(Message::Text(text))) => return text.as_str().to_owned(),
            Some(Ok(_)) => {}
            other => panic!("the connection ended: {other:?}"),
        }
    }
}

/// A WebSocket past the Engine.IO open packet, which it checks.
async fn engine(base: &str) -> Ws {
    let url = format!("{}/socket.io/?EIO=4&transport=websocket", base.replace("http://", "ws://"));
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let open: Value = serde_json::from_str(next_text(&mut ws).await.strip_prefix('0').unwrap()).unwrap();
    assert_eq!((open["pingInterval"].as_u64(), open["pingTimeout"].as_u64()), (Some(25000), Some(20000)));
    ws
}

async fn send(ws: &mut Ws, frame: String) {
    ws.send(Message::text(frame)).await.unwrap();
}

#[tokio::test]
async fn refusals_and_replies_have_the_contracts_shapes() {
    let base = spawn_floor().await;
    let rest = Rest { base: base.clone(), http: reqwest::Client::new() };
    let (alice, bob) = (rest.user("alice").await, rest.user("bob").await);
    assert_eq!(rest.call("/api/users", None, Some(json!({"username": "alice", "password": "x"}))).await.0, 409);
    let (status, community) = rest.call("/api/communities", Some(&alice), Some(json!({"name": "c"}))).await;
    assert_eq!((status, community["role"].as_str()), (201, Some("owner")));
    let cid = community["id"].as_i64().unwrap();
    let (status, channel) =
        rest.call(&format!("/api/communities/{cid}/channels"), Some(&alice), Some(json!({"name": "general"}))).await;
    assert_eq!((status, channel["lastSeq"].as_i64()), (201, Some(0)));
    let chid = channel["id"].as_i64().unwrap();
    assert_eq!(rest.call(&format!("/api/channels/{chid}/members"), Some(&bob), None).await.0, 404);
    assert_eq!(rest.call(&format!("/api/communities/{cid}/members"), Some("nope"), None).await.0, 401);

    let ns = format!("/socket/commu-{cid}");
    let mut ws = engine(&base).await;
    send(&mut ws, format!("40{ns},{{\"token\":\"nope\"}}")).await;
    assert_eq!(next_text(&mut ws).await, format!("44{ns},{{\"message\":\"unauthorized\"}}"));
    send(&mut ws, format!("40{ns},{}", json!({ "token": bob }))).await;
    assert_eq!(next_text(&mut ws).await, format!("44{ns},{{\"message\":\"forbidden\"}}"));

    send(&mut ws, format!("40{ns},{}", json!({ "token": alice }))).await;
    assert!(next_text(&mut ws).await.starts_with(&format!("40{ns},{{\"sid\":")));
    assert_eq!(next_text(&mut ws).await, format!("42{ns},[\"rejoined\",{{\"channels\":[]}}]"));
    send(&mut ws, format!("42{ns},1[\"join\",{{\"channels\":[{chid},999]}}]")).await;
    let ack = next_text(&mut ws).await;
    let ack: Value = serde_json::from_str(ack.strip_prefix(&format!("43{ns},1")).unwrap()).unwrap();
    assert_eq!(ack[0], json!({ "joined": [chid], "rejected": [{ "channelId": 999, "code": "forbidden" }] }));
    send(&mut ws, format!("42{ns},2[\"chat\",{{\"chatType\":\"new\",\"channelId\":{chid},\"content\":\"  \"}}]")).await;
    let ack: Value =
        serde_json::from_str(next_text(&mut ws).await.strip_prefix(&format!("43{ns},2")).unwrap()).unwrap();
    assert_eq!((ack[0]["written"].as_bool(), ack[0]["error"]["code"].as_str()), (Some(false), Some("invalid")));
    let chat = json!(["chat", { "chatType": "new", "channelId": chid, "content": " hi ", "clientMsgId": "m1" }]);
    for id in [3, 4] {
        // The repeat of a clientMsgId gets the first message back.
        send(&mut ws, format!("42{ns},{id}{chat}")).await;
        let ack: Value =
            serde_json::from_str(next_text(&mut ws).await.strip_prefix(&format!("43{ns},{id}")).unwrap()).unwrap();
        let info = &ack[0]["chatInfo"];
        assert_eq!(ack[0]["written"], json!(true));
        assert_eq!((info["seq"].as_i64(), info["eventSeq"].as_i64()), (Some(1), Some(1)), "{ack}");
        assert_eq!((info["content"].as_str(), info["channelId"].as_i64()), (Some("hi"), Some(chid)));
    }
    // Reconnected, the socket is put back in the channel it joined.
    drop(ws);
    let mut ws = engine(&base).await;
    send(&mut ws, format!("40{ns},{}", json!({ "token": alice }))).await;
    next_text(&mut ws).await;
    assert_eq!(next_text(&mut ws).await, format!("42{ns},[\"rejoined\",{{\"channels\":[{chid}]}}]"));
}
