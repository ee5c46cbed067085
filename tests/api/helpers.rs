//! Test harness: each test gets its own baton, started in-process on a free port,
//! with a fresh database: a SQLite file in a temporary directory, or, when
//! `BATON_TEST_POSTGRES` names a PostgreSQL server (`postgres://user@host:port/db`),
//! a new database created on it for this test. Logs only with `TEST_LOG=1`.

use std::sync::Once;
use std::time::Duration;

use baton::client::{ClientError, Socket};
use baton::{Config, Server};
use reqwest::StatusCode;
use serde_json::{Value, json};

pub const WAIT: Duration = Duration::from_secs(5);
/// How long to listen for something that must NOT arrive.
pub const QUIET: Duration = Duration::from_millis(400);

static TRACING: Once = Once::new();

fn init_logs() {
    TRACING.call_once(|| {
        if std::env::var_os("TEST_LOG").is_some() {
            tracing_subscriber::fmt().with_env_filter("info,baton=debug").with_test_writer().init();
        }
    });
}

pub struct TestApp {
    pub base: String,
    /// The running instance's shared state, to look inside (namespaces, presence).
    pub app: std::sync::Arc<baton::app::App<socketioxide::adapter::LocalAdapter>>,
    http: reqwest::Client,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    _dir: tempfile::TempDir,
}

#[derive(Debug, Clone)]
pub struct TestUser {
    pub id: i64,
    pub username: String,
    pub token: String,
}

/// A database URL for one test.
async fn fresh_database(dir: &tempfile::TempDir) -> String {
    match std::env::var("BATON_TEST_POSTGRES") {
        Ok(admin) if !admin.is_empty() => {
            use sqlx::Connection;
            let name = format!("baton_test_{}", uuid_like());
            let mut conn = sqlx::PgConnection::connect(&admin).await.expect("connect to BATON_TEST_POSTGRES");
            sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut conn).await.expect("create test database");
            let mut url = url::Url::parse(&admin).unwrap();
            url.set_path(&name);
            url.to_string()
        }
        _ => format!("sqlite://{}", dir.path().join("baton.db").display()),
    }
}

fn uuid_like() -> String {
    let n: u128 = rand::random();
    format!("{n:032x}")
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// Starts baton with the test's adjustments to the default configuration.
pub async fn spawn_app_with(adjust: impl FnOnce(&mut Config)) -> TestApp {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::for_database(fresh_database(&dir).await);
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.data_dir = dir.path().to_path_buf();
    adjust(&mut config);
    let server = Server::build(config).await.expect("baton starts");
    let base = format!("http://{}", server.local_addr());
    let app = server.app().clone();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let handle = tokio::spawn(server.run_until(async move {
        let _ = rx.await;
    }));
    TestApp { base, app, http: reqwest::Client::new(), shutdown: Some(tx), server: Some(handle), _dir: dir }
}

impl TestApp {
    /// Stops the server and waits for it to exit cleanly.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.server.take() {
            tokio::time::timeout(WAIT, h).await.expect("baton stops in time").unwrap().unwrap();
        }
    }

    /// Stops the server but keeps its data directory (the SQLite file) alive until
    /// the returned guard is dropped, for restarts on the same database.
    pub async fn stop_keeping_data(mut self) -> tempfile::TempDir {
        let dir = std::mem::replace(&mut self._dir, tempfile::tempdir().unwrap());
        self.stop().await;
        dir
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
        let (status, session) = self
            .request(
                reqwest::Method::POST,
                "/api/sessions",
                None,
                Some(json!({ "username": username, "password": "password1" })),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{session}");
        TestUser {
            id: user["id"].as_i64().unwrap(),
            username: username.into(),
            token: session["token"].as_str().unwrap().into(),
        }
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

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// Sends a new message over a socket and returns the ack.
pub async fn chat(s: &Socket, channel: i64, content: &str) -> Value {
    s.emit_with_ack("chat", json!({ "chatType": "new", "channelId": channel, "content": content }), WAIT).await.unwrap()
}

/// Asserts that no event named `name` arrives within [`QUIET`].
pub async fn assert_no_event(s: &mut Socket, name: &str) {
    match s.next_event(name, QUIET).await {
        Err(ClientError::Timeout) => {}
        other => panic!("expected no {name:?}, got {other:?}"),
    }
}
