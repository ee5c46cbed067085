//! Test harness: each test gets its own baton, started in-process on a free port,
//! with a fresh database: a SQLite file in a temporary directory, or, when
//! `BATON_TEST_POSTGRES` names a PostgreSQL server (`postgres://user@host:port/db`),
//! a new database created on it for this test. Logs only with `TEST_LOG=1`.

use std::sync::Once;

use baton::{Config, Server};

#[path = "../common/mod.rs"]
mod common;
pub use common::*;

static TRACING: Once = Once::new();

fn init_logs() {
    TRACING.call_once(|| {
        if std::env::var_os("TEST_LOG").is_some() {
            tracing_subscriber::fmt().with_env_filter("info,baton=debug").with_test_writer().init();
        }
    });
}

pub struct TestApp {
    rest: Rest,
    /// The running instance's shared state, to look inside (namespaces, presence).
    pub app: std::sync::Arc<baton::app::App>,
    /// The load balancer's agent port, when the test configured one.
    pub lb_agent: Option<std::net::SocketAddr>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    _dir: tempfile::TempDir,
}

/// A database URL for one test.
pub async fn fresh_database(dir: &tempfile::TempDir) -> String {
    match std::env::var("BATON_TEST_POSTGRES") {
        Ok(admin) if !admin.is_empty() => fresh_postgres_database(&admin).await,
        _ => format!("sqlite://{}", dir.path().join("baton.db").display()),
    }
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
    // Stopping drains: keep the window short so tests stop quickly.
    config.drain_window = std::time::Duration::from_millis(500);
    adjust(&mut config);
    let server = Server::build(config).await.expect("baton starts");
    let base = format!("http://{}", server.local_addr());
    let app = server.app().clone();
    let lb_agent = server.lb_agent_addr();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let handle = tokio::spawn(server.run_until(async move {
        let _ = rx.await;
    }));
    TestApp { rest: Rest::new(base), app, lb_agent, shutdown: Some(tx), server: Some(handle), _dir: dir }
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
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

impl std::ops::Deref for TestApp {
    type Target = Rest;
    fn deref(&self) -> &Rest {
        &self.rest
    }
}
