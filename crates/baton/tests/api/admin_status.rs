//! `GET /admin/status`'s transport counts and `baton status`: long-polling
//! transports counted apart from WebSocket ones, with a long-polling client driven
//! by hand over HTTP.

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::*;

const ADMIN: &str = "admin-status-test-admin-token";

/// A client on engine.io's HTTP long-polling, driven by hand: handshake, then a
/// Socket.IO CONNECT to `/` posted to the session.
struct PollingClient {
    http: reqwest::Client,
    url: String,
    sid: String,
}

impl PollingClient {
    async fn connect(base: &str, user: &TestUser) -> PollingClient {
        let http = reqwest::Client::new();
        let open = http.get(format!("{base}/socket.io/?EIO=4&transport=polling")).send().await.unwrap();
        assert_eq!(open.status(), 200);
        let open = open.text().await.unwrap();
        let handshake: Value = serde_json::from_str(open.strip_prefix('0').expect("an open packet")).unwrap();
        let sid = handshake["sid"].as_str().unwrap().to_owned();
        let url = format!("{base}/socket.io/?EIO=4&transport=polling&sid={sid}");
        let connect = format!("40{}", json!({ "token": user.token }));
        let posted = http.post(&url).body(connect).send().await.unwrap();
        assert_eq!(posted.status(), 200, "{}", posted.text().await.unwrap());
        let client = PollingClient { http, url, sid };
        // engine.io's first ping may come before the CONNECT's answer: a pong, and
        // poll again.
        let mut seen = Vec::new();
        while !seen.iter().any(|p: &String| p.starts_with("40{")) {
            assert!(seen.len() < 10, "connected to `/`: {seen:?}");
            let answer = client.poll().await;
            if answer.split('\u{1e}').any(|p| p == "2") {
                let pong = client.http.post(&client.url).body("3").send().await.unwrap();
                assert_eq!(pong.status(), 200);
            }
            seen.extend(answer.split('\u{1e}').map(str::to_owned));
        }
        client
    }

    async fn poll(&self) -> String {
        let res = tokio::time::timeout(WAIT, self.http.get(&self.url).send()).await.expect("a poll's answer").unwrap();
        assert_eq!(res.status(), 200);
        res.text().await.unwrap()
    }

    /// Upgrades the session to WebSocket, as socket.io-client does: the probe, then
    /// the upgrade packet.
    async fn upgrade(
        &self,
        base: &str,
    ) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
        let ws_base = base.replacen("http://", "ws://", 1);
        let url = format!("{ws_base}/socket.io/?EIO=4&transport=websocket&sid={}", self.sid);
        let (mut ws, _) = tokio_tungstenite::connect_async(url).await.expect("the upgrade's WebSocket");
        ws.send(Message::text("2probe")).await.unwrap();
        let probe = tokio::time::timeout(WAIT, ws.next()).await.expect("the probe's answer").unwrap().unwrap();
        assert_eq!(probe.into_text().unwrap().as_str(), "3probe");
        ws.send(Message::text("5")).await.unwrap();
        ws
    }
}

/// `/admin/status`'s `polling` counts the transports on long-polling: a polling
/// client, not a WebSocket one, and no longer once it has upgraded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_status_counts_long_polling_transports_apart_from_websocket_ones() {
    let app = spawn_app_with(|c| c.admin_token = Some(ADMIN.into())).await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let status = async || app.get("/admin/status", ADMIN).await.1;
    let counts = |s: &Value| (s["sockets"].clone(), s["transports"].clone(), s["polling"].clone());
    assert_eq!(counts(&status().await), (json!(0), json!(0), json!(0)));

    let _ws = app.connect("/", &alice).await;
    let polling = PollingClient::connect(&app.base, &bob).await;
    let now = status().await;
    assert_eq!(counts(&now), (json!(2), json!(2), json!(1)), "one WebSocket, one long-polling: {now}");

    // `baton status` shows the count too.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_baton"))
        .args(["status", "--url", &app.base])
        .env("BATON_ADMIN_TOKEN", ADMIN)
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "baton status: {}", String::from_utf8_lossy(&out.stderr));
    let line = String::from_utf8_lossy(&out.stdout);
    assert!(line.contains("2 sockets connected on 2 transports (1 long-polling)"), "{line}");

    let _upgraded = polling.upgrade(&app.base).await;
    eventually("the upgraded session counts as WebSocket", WAIT, async || {
        counts(&status().await) == (json!(2), json!(2), json!(0))
    })
    .await;
}
