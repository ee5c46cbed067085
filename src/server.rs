//! Start-up and shut-down: `Server::build` opens the database, binds the port and
//! wires everything; `run_until` serves until the shutdown signal, then closes the
//! Socket.IO connections so the HTTP server can finish.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::serve::ListenerExt;
use socketioxide::SocketIo;
use socketioxide::adapter::{Adapter, LocalAdapter};
use tokio::net::TcpListener;
use tower_http::trace::TraceLayer;

use crate::app::App;
use crate::auth::Tokens;
use crate::chat::{Chat, Store, now_ms};
use crate::config::Config;
use crate::http::{self, Origins};
use crate::reconnect::{Joins, Presence};
use crate::{adapter, gateway};

/// A bound, wired baton instance, ready to serve.
pub struct Server<A: Adapter = LocalAdapter> {
    listener: TcpListener,
    router: Router,
    app: Arc<App<A>>,
}

impl Server<LocalAdapter> {
    /// Opens and migrates the database, binds `config.listen` (port 0 picks a free
    /// one), and wires the REST API and the Socket.IO gateway.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let store = open_store(&config).await?;
        let (layer, io) = adapter::with_limits(SocketIo::builder(), &config).build_layer();
        let tokens = Tokens::load(config.secret.as_deref(), &store, config.token_ttl).await?;
        let app = Arc::new(App::new(
            config,
            Chat::new(store),
            tokens,
            io,
            Joins::local(),
            Presence::local(),
        ));
        gateway::register(&app);
        let origins = Arc::new(Origins::new(&app.config.allowed_origins));
        let router = http::router(app.clone())
            .layer(layer)
            .layer(origins.cors())
            .layer(axum::middleware::from_fn(move |req, next| {
                http::check_origin(origins.clone(), req, next)
            }))
            .layer(DefaultBodyLimit::max(app.config.max_http_body))
            .layer(TraceLayer::new_for_http());
        let listener = TcpListener::bind(app.config.listen)
            .await
            .with_context(|| format!("cannot listen on {}", app.config.listen))?;
        Ok(Server {
            listener,
            router,
            app,
        })
    }
}

/// Connects to the configured database and applies its migrations.
pub async fn open_store(config: &Config) -> anyhow::Result<Store> {
    let url = config.database_url();
    let store = Store::connect(&url)
        .await
        .with_context(|| format!("cannot open the database {}", redact(&url)))?;
    store
        .migrate()
        .await
        .context("cannot apply the database migrations")?;
    Ok(store)
}

/// The URL without its password, for messages.
fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_owned(),
    }
}

impl<A: Adapter> Server<A> {
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    pub fn app(&self) -> &Arc<App<A>> {
        &self.app
    }

    /// Serves until `shutdown` resolves, then stops taking connections, closes the
    /// Socket.IO ones, and returns when the HTTP server is done.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let Server {
            listener,
            router,
            app,
        } = self;
        tracing::info!(addr = %listener.local_addr()?, database = if app.chat.store().is_sqlite() { "sqlite" } else { "postgres" }, "baton is serving");
        let background = tokio::spawn(background_tasks(app.clone()));
        let closing = app.clone();
        let listener = listener.tap_io(|tcp| {
            // Chat packets are small and latency-bound: no Nagle delay.
            let _ = tcp.set_nodelay(true);
        });
        axum::serve(listener, router)
            .with_graceful_shutdown(async move {
                shutdown.await;
                tracing::info!("shutting down: closing Socket.IO connections");
                closing.start_draining();
                closing.io.close().await;
            })
            .await
            .context("the HTTP server failed")?;
        background.abort();
        app.chat.store().close().await;
        tracing::info!("baton stopped");
        Ok(())
    }
}

/// Periodic work: the `position` emit, and forgetting idle users' rate-limit state.
async fn background_tasks<A: Adapter>(app: Arc<App<A>>) {
    let interval = app.config.position_interval.max(Duration::from_millis(100));
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let since = now_ms() - interval.as_millis() as i64;
        if let Err(e) = app.emit_positions(since).await {
            tracing::warn!(error = %e, "position emit failed");
        }
        app.chat_limiter.retain_recent();
    }
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
