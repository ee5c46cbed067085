//! What both test binaries use to talk to a real baton: a REST client with the
//! set-up calls, socket helpers, and the waits.

#![allow(dead_code)]

use std::time::Duration;

use baton_client::{ClientError, Socket};
use reqwest::StatusCode;
use serde_json::{Value, json};

pub const WAIT: Duration = Duration::from_secs(5);
/// How long to listen for something that must NOT arrive.
pub const QUIET: Duration = Duration::from_millis(400);

#[derive(Debug, Clone)]
pub struct TestUser {
    pub id: i64,
    pub username: String,
    pub token: String,
}

/// A community set up by [`Rest::populated_community`].
pub struct Community {
    pub owner: TestUser,
    pub users: Vec<TestUser>,
    pub cid: i64,
    pub channels: Vec<i64>,
}

/// The REST API of one baton, at `base` (`http://127.0.0.1:port`).
pub struct Rest {
    pub base: String,
    http: reqwest::Client,
}

impl Rest {
    pub fn new(base: String) -> Self {
        Self { base, http: reqwest::Client::new() }
    }

    pub async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self.http.request(method, format!("{}{}", self.base, path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let res = req.send().await.expect("request sent");
        let status = res.status();
        let text = res.text().await.unwrap();
        let value =
            if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap_or(Value::String(text)) };
        (status, value)
    }

    pub async fn get(&self, path: &str, token: &str) -> (StatusCode, Value) {
        self.request(reqwest::Method::GET, path, Some(token), None).await
    }

    pub async fn post(&self, path: &str, token: &str, body: Value) -> (StatusCode, Value) {
        self.request(reqwest::Method::POST, path, Some(token), Some(body)).await
    }

    /// Raw body, for malformed input.
    pub async fn post_raw(&self, path: &str, token: Option<&str>, body: &str) -> (StatusCode, Value) {
        let mut req = self.http.post(format!("{}{}", self.base, path)).header("content-type", "application/json");
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let res = req.body(body.to_owned()).send().await.unwrap();
        let status = res.status();
        (status, res.json().await.unwrap_or(Value::Null))
    }

    pub async fn register(&self, username: &str) -> TestUser {
        let (status, user) = self
            .request(
                reqwest::Method::POST,
                "/api/users",
                None,
                Some(json!({ "username": username, "password": "password1" })),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{user}");
        TestUser { id: user["id"].as_i64().unwrap(), username: username.into(), token: self.login(username).await }
    }

    /// A fresh session token for `username` (the tests' password).
    pub async fn login(&self, username: &str) -> String {
        let (status, session) = self
            .request(
                reqwest::Method::POST,
                "/api/sessions",
                None,
                Some(json!({ "username": username, "password": "password1" })),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{session}");
        session["token"].as_str().unwrap().into()
    }

    /// A community owned by `owner` with `members` added; returns its id.
    pub async fn community(&self, owner: &TestUser, members: &[&TestUser]) -> i64 {
        let (status, c) = self.post("/api/communities", &owner.token, json!({ "name": "acme" })).await;
        assert_eq!(status, StatusCode::CREATED, "{c}");
        let cid = c["id"].as_i64().unwrap();
        for m in members {
            let (status, body) = self
                .post(&format!("/api/communities/{cid}/members"), &owner.token, json!({ "username": m.username }))
                .await;
            assert_eq!(status, StatusCode::CREATED, "{body}");
        }
        cid
    }

    /// An owner and `n` users (`member0`...), all in every one of `channels` public
    /// channels of one community.
    pub async fn populated_community(&self, n: usize, channels: usize) -> Community {
        let owner = self.register("owner").await;
        let mut users = Vec::new();
        for i in 0..n {
            users.push(self.register(&format!("member{i}")).await);
        }
        let refs: Vec<&TestUser> = users.iter().collect();
        let cid = self.community(&owner, &refs).await;
        let mut ids = Vec::new();
        for c in 0..channels {
            ids.push(self.channel(cid, &owner, &format!("channel-{c}"), false, &refs).await);
        }
        Community { owner, users, cid, channels: ids }
    }

    /// The setting most tests start from: alice and bob in one community (alice owns
    /// it) and in its public channel "general". `(alice, bob, community, channel)`.
    pub async fn alice_and_bob_in_general(&self) -> (TestUser, TestUser, i64, i64) {
        let alice = self.register("alice").await;
        let bob = self.register("bob").await;
        let cid = self.community(&alice, &[&bob]).await;
        let ch = self.channel(cid, &alice, "general", false, &[&bob]).await;
        (alice, bob, cid, ch)
    }

    /// A channel created by `creator` with `members` added; returns its id.
    pub async fn channel(&self, cid: i64, creator: &TestUser, name: &str, private: bool, members: &[&TestUser]) -> i64 {
        let (status, ch) = self
            .post(
                &format!("/api/communities/{cid}/channels"),
                &creator.token,
                json!({ "name": name, "private": private }),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{ch}");
        let chid = ch["id"].as_i64().unwrap();
        for m in members {
            let (status, body) = self
                .post(&format!("/api/channels/{chid}/members"), &creator.token, json!({ "username": m.username }))
                .await;
            assert_eq!(status, StatusCode::CREATED, "{body}");
        }
        chid
    }

    pub async fn connect(&self, ns: &str, user: &TestUser) -> Socket {
        self.connect_with(ns, json!({ "token": user.token })).await.expect("connect accepted")
    }

    pub async fn connect_with(&self, ns: &str, auth: Value) -> Result<Socket, ClientError> {
        Socket::connect(&self.base, ns, auth).await
    }

    /// A community socket that has joined `channels` (and seen its `rejoined`).
    pub async fn joined(&self, cid: i64, user: &TestUser, channels: &[i64]) -> Socket {
        let mut s = self.connect(&format!("/socket/commu-{cid}"), user).await;
        s.next_event("rejoined", WAIT).await.expect("rejoined");
        let ack = s.emit_with_ack("join", json!({ "channels": channels }), WAIT).await.unwrap();
        assert_eq!(ack["joined"].as_array().unwrap().len(), channels.len(), "{ack}");
        s
    }
}

/// Sends a new message over a socket and returns the ack.
pub async fn chat(s: &Socket, channel: i64, content: &str) -> Value {
    s.emit_with_ack("chat", json!({ "chatType": "new", "channelId": channel, "content": content }), WAIT).await.unwrap()
}

/// Modifies a message over a socket and returns the ack.
pub async fn modify(s: &Socket, channel: i64, id: impl serde::Serialize, content: &str) -> Value {
    let event = json!({ "chatType": "modify", "channelId": channel, "messageId": id, "content": content });
    s.emit_with_ack("chat", event, WAIT).await.unwrap()
}

/// Deletes a message over a socket and returns the ack.
pub async fn delete(s: &Socket, channel: i64, id: impl serde::Serialize) -> Value {
    s.emit_with_ack("chat", json!({ "chatType": "delete", "channelId": channel, "messageId": id }), WAIT).await.unwrap()
}

/// Asserts that no event named `name` arrives within [`QUIET`].
pub async fn assert_no_event(s: &mut Socket, name: &str) {
    match s.next_event(name, QUIET).await {
        Err(ClientError::Timeout) => {}
        other => panic!("expected no {name:?}, got {other:?}"),
    }
}

/// Creates an empty database on the PostgreSQL server `admin` names, and returns
/// its URL.
pub async fn fresh_postgres_database(admin: &str) -> String {
    use sqlx::Connection;
    let n: u128 = rand::random();
    let name = format!("baton_test_{n:032x}");
    let mut conn = sqlx::PgConnection::connect(admin).await.expect("connect to BATON_TEST_POSTGRES");
    sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut conn).await.expect("create a test database");
    let mut url = url::Url::parse(admin).unwrap();
    url.set_path(&name);
    url.to_string()
}

/// Waits until `check` holds, polling every 50 ms, or panics naming `what`.
pub async fn eventually<F: AsyncFnMut() -> bool>(what: &str, within: Duration, mut check: F) {
    let deadline = tokio::time::Instant::now() + within;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What the load balancer's agent port at `addr` answers one connection (HAProxy's
/// `agent-check`): everything it writes before it closes, read within [`WAIT`].
/// `send`: text written first, as HAProxy's `agent-send` would.
pub async fn agent_says(addr: std::net::SocketAddr, send: Option<&str>) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("the agent port takes connections");
    if let Some(text) = send {
        stream.write_all(text.as_bytes()).await.unwrap();
    }
    let mut said = String::new();
    tokio::time::timeout(WAIT, stream.read_to_string(&mut said))
        .await
        .expect("the agent answers and closes in time")
        .expect("a line of ASCII");
    said
}
