//! Command line and environment: `baton --help` is the configuration reference.
//! Every flag can also be set from the environment variable named beside it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(name = "baton", version, about = "A Socket.IO chat server: REST API, Socket.IO gateway, persistence.")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub config: Config,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the REST API and the Socket.IO gateway on one port (the default).
    Serve,
    /// Apply the database migrations and exit.
    Migrate,
    /// Ask a running instance to drain (POST /admin/drain), or, with --fraction or
    /// --count, to shed that share of its transports while it keeps serving. Needs
    /// the instance's admin token (--admin-token).
    Drain {
        /// The instance's base URL.
        #[arg(long, default_value = "http://127.0.0.1:3000")]
        url: String,
        /// Shed this fraction of the instance's transports (0 < F <= 1, rounded to
        /// the nearest whole one), chosen at random, instead of draining it: their
        /// clients reconnect (through the load balancer) with a drain's guarantees,
        /// and the instance stays ready.
        #[arg(long, value_name = "F", conflicts_with = "count")]
        fraction: Option<f64>,
        /// Shed this many of the instance's transports (at least 1) instead of
        /// draining it.
        #[arg(long, value_name = "N")]
        count: Option<u64>,
        /// A shed's closes are spread over this window (default: the instance's
        /// drain window).
        #[arg(long, value_parser = humantime::parse_duration)]
        window: Option<Duration>,
        /// Wait for the drain (or the shed) to end and print its report (a drained
        /// instance then exits).
        #[arg(long)]
        wait: bool,
        /// Print exactly one JSON line on stdout: the report with --wait, else the
        /// instance's answer.
        #[arg(long)]
        json: bool,
    },
    /// Show a running instance's state: draining or shedding or not, sockets and
    /// transports connected (and how many of those are long-polling), its drain
    /// report and its last shed's (GET /admin/status). Needs the instance's admin
    /// token.
    Status {
        /// The instance's base URL.
        #[arg(long, default_value = "http://127.0.0.1:3000")]
        url: String,
        /// Print exactly one JSON line on stdout.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}

/// Every setting of an instance. Its `Debug` shows the URLs without their passwords
/// and the secret and admin token as set or not, never their values (a config is
/// logged or printed in error reports).
#[derive(Clone, Args)]
pub struct Config {
    /// Address to listen on (REST, Socket.IO, /healthz, /readyz, /metrics).
    #[arg(long, env = "BATON_LISTEN", default_value = "127.0.0.1:3000", global = true)]
    pub listen: SocketAddr,

    /// Database URL: `sqlite://PATH` or `postgres://...`. Unset: a SQLite file
    /// `baton.db` in the data directory, created and migrated at start.
    #[arg(long, env = "DATABASE_URL", global = true, hide_env_values = true)]
    pub database_url: Option<String>,

    /// Directory for the embedded SQLite database.
    #[arg(long, env = "BATON_DATA_DIR", default_value = "baton-data", global = true)]
    pub data_dir: PathBuf,

    /// Secret that signs session tokens (at least 32 bytes). Unset: one is generated
    /// once and kept in the database, so restarts do not log users out.
    #[arg(long, env = "BATON_SECRET", global = true, hide_env_values = true)]
    pub secret: Option<String>,

    /// How long a session token is valid.
    #[arg(long, env = "BATON_TOKEN_TTL", default_value = "7d", value_parser = humantime::parse_duration, global = true)]
    pub token_ttl: Duration,

    /// Origins allowed to open Socket.IO connections and call the API from a browser,
    /// comma separated (`https://chat.example.com`), or `*` for any. Requests with no
    /// Origin header (non-browser clients) and same-origin requests are always allowed.
    #[arg(long, env = "BATON_ALLOWED_ORIGINS", value_delimiter = ',', global = true)]
    pub allowed_origins: Vec<String>,

    /// Largest HTTP request body (REST) in bytes.
    #[arg(long, env = "BATON_MAX_HTTP_BODY", default_value_t = 64 * 1024, global = true)]
    pub max_http_body: usize,

    /// Largest Socket.IO message in bytes, on WebSocket and on long-polling alike.
    #[arg(long, env = "BATON_MAX_MESSAGE", default_value_t = 64 * 1024, global = true)]
    pub max_message: usize,

    /// How often the server pings each Engine.IO session; clients learn it in the
    /// handshake. With `--ping-timeout`, how soon a silent client is noticed gone.
    #[arg(long, env = "BATON_PING_INTERVAL", default_value = "25s", value_parser = humantime::parse_duration, global = true)]
    pub ping_interval: Duration,

    /// How long a session may leave a ping unanswered before it is closed.
    #[arg(long, env = "BATON_PING_TIMEOUT", default_value = "20s", value_parser = humantime::parse_duration, global = true)]
    pub ping_timeout: Duration,

    /// How long a session may stay without a namespace after its handshake before it
    /// is closed.
    #[arg(long, env = "BATON_CONNECT_TIMEOUT", default_value = "45s", value_parser = humantime::parse_duration, global = true)]
    pub connect_timeout: Duration,

    /// How long an upgrade from long-polling to WebSocket may take before it is
    /// abandoned and its session closed.
    #[arg(long, env = "BATON_UPGRADE_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration, global = true)]
    pub upgrade_timeout: Duration,

    /// Socket.IO sockets one user may have open on this instance, over every namespace
    /// (a browser tab has two: `/` and its community). Beyond it, a connect is
    /// refused with `rate_limited`.
    #[arg(long, env = "BATON_MAX_SOCKETS_PER_USER", default_value_t = 100, global = true)]
    pub max_sockets_per_user: usize,

    /// How long a request (a socket event, a connect's admission, a REST call) may
    /// wait on the database, all its queries together, and each use of it (a
    /// connection from the pool, a statement, a transaction) on its own, before it
    /// fails with `unavailable`.
    #[arg(long, env = "BATON_DB_TIMEOUT", default_value = "2s", value_parser = humantime::parse_duration, global = true)]
    pub db_timeout: Duration,

    /// Chat events (new, modify, delete, by socket or REST) a user may send per second.
    #[arg(long, env = "BATON_CHAT_RATE", default_value_t = 20, global = true)]
    pub chat_rate: u32,

    /// Chat events a user may send in one burst above the rate.
    #[arg(long, env = "BATON_CHAT_BURST", default_value_t = 40, global = true)]
    pub chat_burst: u32,

    /// How often each instance emits `position` for channels with recent events.
    #[arg(long, env = "BATON_POSITION_INTERVAL", default_value = "30s", value_parser = humantime::parse_duration, global = true)]
    pub position_interval: Duration,

    /// Redis URL. Set, baton runs as one instance of a cluster: Socket.IO rooms and
    /// broadcasts, remembered joins and presence go through Redis. A cluster needs a
    /// shared database: PostgreSQL, not SQLite. One Redis: `redis://host:port`; a
    /// Redis Cluster: `redis-cluster://host1:port?node=host2:port&node=host3:port`; a
    /// master behind Sentinels:
    /// `redis-sentinel://sentinel1:26379?sentinelServiceName=NAME&node=sentinel2:26379`
    /// (`rediss…` for TLS; docs/redis.md).
    #[arg(long, env = "REDIS_URL", global = true, hide_env_values = true)]
    pub redis_url: Option<String>,

    /// Prefix of every Redis key and pub/sub channel baton uses, so that several
    /// clusters (or other applications) can share one Redis.
    #[arg(long, env = "BATON_REDIS_PREFIX", default_value = "baton", global = true)]
    pub redis_prefix: String,

    /// How long a Redis command may take before baton treats Redis as unreachable
    /// and delivers to its own clients only.
    #[arg(long, env = "BATON_REDIS_TIMEOUT", default_value = "500ms", value_parser = humantime::parse_duration, global = true)]
    pub redis_timeout: Duration,

    /// How often a cluster instance probes cross-instance delivery: a message it
    /// publishes through Redis pub/sub on every shard, which must come back to it
    /// and be answered by the other live instances (docs/redis.md).
    #[arg(long, env = "BATON_DELIVERY_PROBE_INTERVAL", default_value = "2s", value_parser = humantime::parse_duration, global = true)]
    pub delivery_probe_interval: Duration,

    /// How long the delivery probe may fail before the instance is not ready
    /// (`/readyz` 503, `baton_delivery_ok` 0) and it subscribes again, then replaces
    /// its pub/sub connection, until delivery works.
    #[arg(long, env = "BATON_DELIVERY_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration, global = true)]
    pub delivery_timeout: Duration,

    /// This instance's name in the cluster's registry. Unset: the host name and a
    /// random suffix.
    #[arg(long, env = "BATON_INSTANCE_ID", global = true)]
    pub instance_id: Option<String>,

    /// How long a drain takes: the clients' transports are closed spread over it, so
    /// they reconnect elsewhere a few at a time rather than all at once. Also a
    /// shed's window, unless it names its own.
    #[arg(long, env = "BATON_DRAIN_WINDOW", default_value = "10s", value_parser = humantime::parse_duration, global = true)]
    pub drain_window: Duration,

    /// At the start of a drain, how long to let the load balancer see /readyz fail
    /// (its health check interval times its fall count), or its agent check read
    /// `drain` (its agent interval), before closing transports. Taken out of the
    /// drain window, at most half of it.
    #[arg(long, env = "BATON_DRAIN_LB_DELAY", default_value = "2s", value_parser = humantime::parse_duration, global = true)]
    pub drain_lb_delay: Duration,

    /// How long a user moved by a drain or a shed may be away before `presence` says
    /// they went offline (they normally reconnect, elsewhere or here, sooner).
    #[arg(long, env = "BATON_PRESENCE_GRACE", default_value = "15s", value_parser = humantime::parse_duration, global = true)]
    pub presence_grace: Duration,

    /// Address of a TCP port for HAProxy's `agent-check` (its `agent-port`), e.g.
    /// `127.0.0.1:3102`. Each connection gets one line and is closed: `up ready`
    /// while serving (a shed included), `up drain` while draining, while the
    /// database or Redis is unreachable or while cross-instance delivery fails (no
    /// new sessions, sticky ones still routed here); never a weight. Unset: no
    /// such port.
    #[arg(long, env = "BATON_LB_AGENT_LISTEN", global = true)]
    pub lb_agent_listen: Option<SocketAddr>,

    /// Bearer token for `/admin/drain` and `/admin/status` (and `baton drain`).
    /// Unset: the admin endpoints answer 403.
    #[arg(long, env = "BATON_ADMIN_TOKEN", global = true, hide_env_values = true)]
    pub admin_token: Option<String>,

    /// Log format: human-readable lines or one JSON object per line.
    #[arg(long, env = "BATON_LOG_FORMAT", value_enum, default_value = "human", global = true)]
    pub log_format: LogFormat,
}

impl Config {
    /// The database URL to use: the one given, or the embedded SQLite file.
    pub fn database_url(&self) -> String {
        match &self.database_url {
            Some(url) => url.clone(),
            None => format!("sqlite://{}", self.data_dir.join("baton.db").display()),
        }
    }

    /// A configuration for tests and embedding: every default, the given database.
    /// The environment is not read (a developer's `BATON_CHAT_RATE` must not change
    /// what a test sees): the defaults are those `baton --help` shows.
    pub fn for_database(database_url: impl Into<String>) -> Self {
        let command = Cli::command().mut_args(|arg| arg.env(None::<&'static str>));
        let matches = command.get_matches_from(["baton"]);
        let mut cli = Cli::from_arg_matches(&matches).expect("the defaults parse");
        cli.config.database_url = Some(database_url.into());
        cli.config
    }
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let set = |secret: &Option<String>| if secret.is_some() { "<set>" } else { "<unset>" };
        // Every field by name, so a new one cannot be left out unnoticed.
        let Config {
            listen,
            database_url,
            data_dir,
            secret,
            token_ttl,
            allowed_origins,
            max_http_body,
            max_message,
            ping_interval,
            ping_timeout,
            connect_timeout,
            upgrade_timeout,
            max_sockets_per_user,
            db_timeout,
            chat_rate,
            chat_burst,
            position_interval,
            redis_url,
            redis_prefix,
            redis_timeout,
            delivery_probe_interval,
            delivery_timeout,
            instance_id,
            drain_window,
            drain_lb_delay,
            presence_grace,
            lb_agent_listen,
            admin_token,
            log_format,
        } = self;
        f.debug_struct("Config")
            .field("listen", listen)
            .field("database_url", &database_url.as_deref().map(redact_url))
            .field("data_dir", data_dir)
            .field("secret", &set(secret))
            .field("token_ttl", token_ttl)
            .field("allowed_origins", allowed_origins)
            .field("max_http_body", max_http_body)
            .field("max_message", max_message)
            .field("ping_interval", ping_interval)
            .field("ping_timeout", ping_timeout)
            .field("connect_timeout", connect_timeout)
            .field("upgrade_timeout", upgrade_timeout)
            .field("max_sockets_per_user", max_sockets_per_user)
            .field("db_timeout", db_timeout)
            .field("chat_rate", chat_rate)
            .field("chat_burst", chat_burst)
            .field("position_interval", position_interval)
            .field("redis_url", &redis_url.as_deref().map(redact_url))
            .field("redis_prefix", redis_prefix)
            .field("redis_timeout", redis_timeout)
            .field("delivery_probe_interval", delivery_probe_interval)
            .field("delivery_timeout", delivery_timeout)
            .field("instance_id", instance_id)
            .field("drain_window", drain_window)
            .field("drain_lb_delay", drain_lb_delay)
            .field("presence_grace", presence_grace)
            .field("lb_agent_listen", lb_agent_listen)
            .field("admin_token", &set(admin_token))
            .field("log_format", log_format)
            .finish()
    }
}

/// A database or Redis URL without its password, for logs and messages.
/// A Sentinel URL may carry the Sentinels' own password as `sentinelPassword`.
pub fn redact_url(url: &str) -> String {
    let Ok(mut u) = url::Url::parse(url) else { return url.to_owned() };
    if u.password().is_some() {
        let _ = u.set_password(Some("***"));
    }
    if u.query_pairs().any(|(k, _)| k == "sentinelPassword") {
        let pairs: Vec<(String, String)> = u
            .query_pairs()
            .map(|(k, v)| {
                let v = if k == "sentinelPassword" { "***".into() } else { v.into_owned() };
                (k.into_owned(), v)
            })
            .collect();
        u.query_pairs_mut().clear().extend_pairs(pairs);
    }
    u.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_secrets() {
        let mut config = Config::for_database("postgres://baton:hunter2@db.example/baton");
        config.secret = Some("s".repeat(40));
        config.admin_token = Some("admin-token-value".into());
        config.redis_url = Some("redis://:redispass@cache.example:6379".into());
        let shown = format!("{config:?}");
        let sentinel = "redis-sentinel://:redispass@s1:26379?sentinelServiceName=m&sentinelPassword=sentinelpass";
        assert!(!redact_url(sentinel).contains("sentinelpass"), "{}", redact_url(sentinel));
        for secret in ["hunter2", &"s".repeat(40), "admin-token-value", "redispass"] {
            assert!(!shown.contains(secret), "{secret:?} shown in {shown}");
        }
        assert!(shown.contains("db.example") && shown.contains("<set>"), "{shown}");
    }

    #[test]
    fn test_config_ignores_the_environment() {
        // SAFETY: no other test of this crate reads or writes the environment.
        unsafe { std::env::set_var("BATON_CHAT_RATE", "3") };
        let config = Config::for_database("sqlite::memory:");
        unsafe { std::env::remove_var("BATON_CHAT_RATE") };
        assert_eq!(config.chat_rate, 20);
    }
}
