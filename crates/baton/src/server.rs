//! Start-up and shut-down: `Server::build` opens the database, binds the port (and
//! the load balancer's agent port, if configured) and wires everything; `run_until`
//! serves until the shutdown signal, then closes the Socket.IO connections so the
//! HTTP server can finish.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use std::sync::Weak;

use anyhow::Context;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::response::IntoResponse;
use socketioxide::SocketIo;
use tokio::net::TcpListener;
use tower::ServiceExt;
use tower::util::BoxCloneSyncService;
use tower_http::trace::TraceLayer;

use crate::adapter::{ChatAdapter, ClusterAdapter, DeliveryProbe, RedisLink, Verdict};
use crate::app::App;
use crate::auth::Tokens;
use crate::chat::{Chat, ChatRate, now_ms};
use crate::config::Config;
use crate::drain::{self, Drain};
use crate::gateway;
use crate::gateway::{AppRef, Fanout, Io, Namespaces, SocketsPerUser};
use crate::http::{self, Origins};
use crate::listener::{self, Connection, Listener};
use crate::reconnect::{BEAT, Joins, Presence, Registry};
use crate::shed::Shed;
use crate::store::Store;

/// How often the database is checked for `/readyz` (each check bounded by
/// `--db-timeout`).
const DB_CHECK_EVERY: Duration = Duration::from_millis(500);

/// A bound, wired baton instance, ready to serve.
pub struct Server {
    listener: TcpListener,
    /// The load balancer's agent port (`--lb-agent-listen`), when configured.
    lb_agent: Option<TcpListener>,
    router: Router,
    app: Arc<App>,
    /// This instance's entry in the cluster's registry (none on a single node).
    registry: Option<Registry>,
    /// The Socket.IO service as the drain calls it, held here (the drain holds it
    /// weakly: it holds the router, which holds the app, which holds the drain).
    engine: Arc<drain::Engine>,
}

impl Server {
    /// A single node: opens and migrates the database, binds `config.listen` (port
    /// 0 picks a free one), and wires the REST API and the Socket.IO gateway, with
    /// rooms, joins and presence in this process.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        anyhow::ensure!(config.redis_url.is_none(), "REDIS_URL is set: build a cluster instance instead");
        let store = open_store(&config).await?;
        let io = listener::with_limits(SocketIo::builder(), &config);
        let instance = config.instance_id.clone().unwrap_or_else(default_instance_id);
        assemble(config, store, io, Joins::local(), Presence::local(), instance, None).await
    }

    /// One instance of a cluster: as [`Server::build`], with the Socket.IO adapter,
    /// joins and presence in Redis. Refuses SQLite: instances must share a database.
    pub async fn build_cluster(config: Config) -> anyhow::Result<Self> {
        let url = config.redis_url.clone().context("a cluster instance needs REDIS_URL")?;
        anyhow::ensure!(
            !config.database_url().starts_with("sqlite:"),
            "REDIS_URL is set but the database is SQLite: a cluster's instances must share one database; \
             set DATABASE_URL=postgres://..."
        );
        let store = open_store(&config).await?;
        let link = RedisLink::connect(&url, &config.redis_prefix, config.redis_timeout).await?;
        let instance = config.instance_id.clone().unwrap_or_else(default_instance_id);
        let io =
            listener::with_limits(SocketIo::builder().with_adapter::<ClusterAdapter>(link.adapter_state()), &config);
        let joins = Joins::redis(link.clone());
        let presence = Presence::redis(link.clone(), instance.clone());
        let server = assemble(config, store, io, joins, presence, instance.clone(), Some(link)).await?;
        tracing::info!(instance, "joining the cluster");
        Ok(server)
    }
}

/// The host name and a random suffix: unique per process, readable in the registry.
fn default_instance_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_owned()).unwrap_or_default();
    let suffix: u32 = rand::random();
    format!("{}-{:08x}", if host.is_empty() { "baton" } else { &host }, suffix)
}

/// Wires an instance around its adapter; the one place both kinds are built.
async fn assemble<A: ChatAdapter>(
    config: Config,
    store: Store,
    io: socketioxide::SocketIoBuilder<A>,
    joins: Joins,
    presence: Presence,
    instance: String,
    redis: Option<RedisLink>,
) -> anyhow::Result<Server>
where
    Io: From<SocketIo<A>>,
{
    crate::metrics::install();
    let tokens = Tokens::load(config.secret.as_deref(), &store, config.token_ttl).await?;
    let registry = redis.as_ref().map(|link| Registry::new(link.clone(), instance.clone()));
    let chat = Chat::new(store, ChatRate::new(config.chat_rate, config.chat_burst));
    let relay = redis.as_ref().map(|link| gateway::Relay::new(link.clone(), instance.clone()));
    // The Socket.IO server is built inside the app it belongs to: its state, through
    // which the handlers reach the app, is the app itself, held weakly.
    let mut layer = None;
    let app = Arc::new_cyclic(|me: &Weak<App>| {
        let (socket_io_layer, io) = io.with_state(AppRef(me.clone())).build_layer();
        layer = Some(socket_io_layer);
        App {
            fanout: Fanout::new(Io::from(io), joins, presence, chat.clone(), relay),
            chat,
            tokens,
            namespaces: Namespaces::default(),
            sockets: SocketsPerUser::default(),
            redis,
            instance,
            drain: Drain::new(config.drain_window, config.presence_grace, config.drain_lb_delay),
            shed: Shed::default(),
            config,
        }
    });
    let layer = layer.expect("the Socket.IO layer is built with the app");
    gateway::register(&app).await;
    let origins = Arc::new(Origins::new(&app.config.allowed_origins));
    let drained = app.clone();
    // One Socket.IO service over the REST router: each service the layer makes has
    // an engine.io server of its own, and every session lives in this one, which
    // the drain also ends closed long-polling sessions through.
    let socket_io = tower::Layer::layer(&layer, http::router(app.clone()));
    let engine = ServiceExt::<axum::extract::Request>::map_response(socket_io.clone(), IntoResponse::into_response);
    let engine = Arc::new(BoxCloneSyncService::new(engine));
    app.drain.set_engine(&engine);
    let router = Router::new()
        .fallback_service(socket_io)
        .layer(axum::middleware::map_request(listener::detach_from_read_buffer))
        .layer(axum::middleware::from_fn(move |req, next| drain::drain_gate(drained.clone(), req, next)))
        .layer(origins.cors())
        .layer(axum::middleware::from_fn(move |req, next| http::check_origin(origins.clone(), req, next)))
        .layer(DefaultBodyLimit::max(app.config.max_http_body))
        .layer(TraceLayer::new_for_http());
    let listener = TcpListener::bind(app.config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", app.config.listen))?;
    let lb_agent = match app.config.lb_agent_listen {
        Some(addr) => Some(http::lb_agent::bind(addr).await?),
        None => None,
    };
    Ok(Server { listener, lb_agent, router, app, registry, engine })
}

/// Connects to the configured database and applies its migrations.
pub async fn open_store(config: &Config) -> anyhow::Result<Store> {
    let url = config.database_url();
    let store = Store::connect(&url, config.db_timeout)
        .await
        .with_context(|| format!("cannot open the database {}", crate::config::redact_url(&url)))?;
    store.migrate().await.context("cannot apply the database migrations")?;
    Ok(store)
}

impl Server {
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("a bound listener has an address")
    }

    /// The agent port's address, when one is configured (port 0 picks a free one).
    pub fn lb_agent_addr(&self) -> Option<SocketAddr> {
        self.lb_agent.as_ref().map(|l| l.local_addr().expect("a bound listener has an address"))
    }

    pub fn app(&self) -> &Arc<App> {
        &self.app
    }

    /// Serves until `shutdown` resolves, then stops taking connections, closes the
    /// Socket.IO ones, and returns when the HTTP server is done.
    pub async fn run_until(self, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
        let Server { listener, lb_agent, router, app, registry, engine } = self;
        tracing::info!(addr = %listener.local_addr()?, database = if app.chat.store().is_sqlite() { "sqlite" } else { "postgres" }, "baton is serving");
        let store = app.chat.store().clone();
        let mut background = vec![
            tokio::spawn(background_tasks(app.clone())),
            tokio::spawn(listener::return_freed_memory()),
            tokio::spawn(async move { store.watch_health(DB_CHECK_EVERY).await }),
        ];
        // The agent answers until the process is done, through the drain: HAProxy
        // reads `drain` from it while the transports are moved.
        let lb_agent = lb_agent.map(|listener| tokio::spawn(http::lb_agent::serve(listener, app.clone())));
        if let Some(registry) = registry.clone() {
            background.push(tokio::spawn(cluster_tasks(app.clone(), registry.clone())));
            background.push(tokio::spawn(probe_delivery(app.clone(), registry)));
        }
        // The other instances' written changes, subscribed before serving.
        if let Some(relay) = app.fanout.relay_link().cloned()
            && let Some(stream) = relay.subscribe().await
        {
            let app = app.clone();
            background.push(tokio::spawn(async move {
                relay.receive(stream, |written| app.fanout.deliver_written(written)).await;
            }));
        }
        let closing = app.clone();
        axum::serve(Listener(listener), router.into_make_service_with_connect_info::<Connection>())
            .with_graceful_shutdown(async move {
                tokio::select! {
                    () = shutdown => tracing::info!("shutdown signal: draining"),
                    () = closing.drain.requested() => tracing::info!("drain requested"),
                }
                drain::run(&closing, &closing.instance).await;
                // Whatever is left (a client that never read its close) goes now.
                closing.fanout.io().close().await;
            })
            .await
            .context("the HTTP server failed")?;
        // No more closes to make: the router it holds (and, through it, the app) can go.
        drop(engine);
        for task in background {
            task.abort();
        }
        if let Some(registry) = registry {
            leave_cluster(&app, &registry).await;
        }
        app.chat.store().close().await;
        if let Some(agent) = lb_agent {
            // Awaited, so that the port is closed when this returns.
            agent.abort();
            let _ = agent.await;
        }
        tracing::info!("baton stopped");
        Ok(())
    }
}

/// Periodic work: the `position` emit, and forgetting idle users' rate-limit state.
async fn background_tasks(app: Arc<App>) {
    let interval = app.config.position_interval.max(Duration::from_millis(100));
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let since = now_ms() - interval.as_millis() as i64;
        if let Err(e) = app.fanout.positions(since).await {
            tracing::warn!(error = %e, "position emit failed");
        }
        app.chat.rate().forget_idle();
        app.fanout.forget_idle_typing();
    }
}

/// A cluster instance's duties: watch Redis (and put it back in step with this
/// instance when it returns), beat in the registry, and take dead instances' users
/// offline.
async fn cluster_tasks(app: Arc<App>, registry: Registry) {
    let Some(link) = app.redis.clone() else { return };
    if link.health.is_up() {
        gateway::reap_own_leftovers(&app, &registry).await;
    }
    // Redis is checked every second while it answers and four times a second while
    // it does not, so cross-instance delivery resumes soon after it is back.
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut next_beat = tokio::time::Instant::now();
    let mut ticks: u64 = 0;
    let mut beaten = false;
    loop {
        tick.tick().await;
        ticks += 1;
        if (ticks.is_multiple_of(4) || !link.health.is_up()) && link.check().await == Some(true) {
            gateway::resync(&app).await;
            next_beat = tokio::time::Instant::now();
        }
        if tokio::time::Instant::now() >= next_beat && link.health.is_up() {
            next_beat = tokio::time::Instant::now() + BEAT;
            match registry.beat().await {
                // Taken for dead while it was silent with Redis up (a paused
                // process): the others took its users offline, who are still
                // connected here. File them again, as after a Redis outage.
                Ok(true) if beaten => {
                    tracing::warn!("this instance was taken for dead: filing its presence again");
                    gateway::resync(&app).await;
                }
                Ok(_) => beaten = true,
                Err(e) => tracing::warn!(error = %e, "registry heartbeat failed"),
            }
            gateway::reap_dead_instances(&app, &registry).await;
        }
    }
}

/// Probes cross-instance delivery every `--delivery-probe-interval`
/// (adapter/probe.rs); when it works again after failing, emits `position` for the
/// channels written to meanwhile, so that clients fetch what they missed at once.
async fn probe_delivery(app: Arc<App>, registry: Registry) {
    let Some(link) = app.redis.clone() else { return };
    let interval = app.config.delivery_probe_interval.max(Duration::from_millis(100));
    let probe = DeliveryProbe::new(link, registry.id().to_owned(), interval, app.config.delivery_timeout);
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let peers = match registry.live().await {
            Ok(peers) => peers,
            // Redis unreachable: its health check says so; the probe would only agree.
            Err(_) => continue,
        };
        if let Verdict::Resumed(failed_for) = probe.round(&peers).await {
            let since = now_ms() - (failed_for + interval * 2).as_millis() as i64;
            if let Err(e) = app.fanout.positions(since).await {
                tracing::warn!(error = %e, "position emit after delivery resumed failed");
            }
        }
    }
}

/// On a clean exit, after the drain: this instance's presence entries stay for the
/// grace period, then another instance reaps them, so users who reconnected
/// elsewhere never show offline, and those who did not go offline then.
async fn leave_cluster(app: &App, registry: &Registry) {
    if let Err(e) = registry.expire_after(app.drain.grace).await {
        tracing::warn!(error = %e, "could not hand this instance's presence to the others");
    }
    if let Some(link) = &app.redis {
        link.quit().await;
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
