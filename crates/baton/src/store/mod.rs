//! The database: SQLite (the embedded default) or PostgreSQL, behind one [`Store`].
//!
//! This file owns the pools of both dialects, the migrations and the one dispatch
//! macro, [`on_pool!`]: a query is written once, in SQL both dialects read (`$N`
//! placeholders, which SQLite reads as numbered parameters, `RETURNING`, `ON
//! CONFLICT`, CASE where their functions differ), and compiled for both pools, so the
//! test suite running on both databases runs every query on both. The queries are
//! split by aggregate: [`accounts`] (users, settings), [`communities`] (communities,
//! channels, membership), [`messages`] (messages, read markers, unread counts), and
//! [`group_commit`], the writer of new messages.
//!
//! Invariant kept here: a channel's event sequence (`channels.last_seq`) moves only
//! inside the transaction that writes the message change it numbers, so sequences are
//! gap-free and in commit order (PostgreSQL's row lock on the channel, SQLite's single
//! writer). Unique violations come back as `sqlx::Error`; the caller turns the one it
//! expects into its own error (`error::OnConstraint`).

pub mod accounts;
pub mod communities;
pub mod group_commit;
pub mod messages;

use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};

pub use accounts::{Credentials, User};
pub use communities::{Channel, ChannelAccess, Community, CommunityMember, Role};
pub use group_commit::{Inserted, NewMessage, Written};
pub use messages::{ChannelUnread, Message, Slice};

use group_commit::GroupCommit;

pub type UserId = i64;
pub type CommunityId = i64;
pub type ChannelId = i64;
pub type MessageId = i64;

/// Where everything lives. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    pools: Pools,
    /// Where new messages go to be written in groups, over pools of their own.
    group_commit: GroupCommit,
    /// Whether the database answered the background check last time
    /// ([`Store::watch_health`]): what `/readyz` says, without waiting on an outage.
    up: Arc<AtomicBool>,
}

/// The connections of one database, and how long any use of them may take.
#[derive(Clone)]
struct Pools {
    connections: Connections,
    /// Every query, transaction or pool acquire answers within this, or fails as
    /// `unavailable` (`--db-timeout`).
    deadline: Duration,
}

#[derive(Clone)]
enum Connections {
    /// SQLite allows one writer at a time; a single-connection write pool makes
    /// writers queue in-process instead of failing with SQLITE_BUSY, while readers
    /// use their own pool (WAL mode lets them run beside the writer).
    Sqlite {
        read: SqlitePool,
        write: SqlitePool,
    },
    Postgres(PgPool),
}

/// One pool of either dialect, borrowed for a query, with the deadline it runs under.
#[derive(Clone, Copy)]
pub(crate) struct Pool<'a> {
    pub(crate) dialect: Dialect<'a>,
    pub(crate) deadline: Duration,
}

#[derive(Clone, Copy)]
pub(crate) enum Dialect<'a> {
    Sqlite(&'a SqlitePool),
    Postgres(&'a PgPool),
}

impl Pools {
    /// The pool for reads.
    fn read(&self) -> Pool<'_> {
        let dialect = match &self.connections {
            Connections::Sqlite { read, .. } => Dialect::Sqlite(read),
            Connections::Postgres(pg) => Dialect::Postgres(pg),
        };
        Pool { dialect, deadline: self.deadline }
    }

    /// The pool for writes.
    fn write(&self) -> Pool<'_> {
        let dialect = match &self.connections {
            Connections::Sqlite { write, .. } => Dialect::Sqlite(write),
            Connections::Postgres(pg) => Dialect::Postgres(pg),
        };
        Pool { dialect, deadline: self.deadline }
    }

    fn is_sqlite(&self) -> bool {
        matches!(self.connections, Connections::Sqlite { .. })
    }

    async fn close(&self) {
        match &self.connections {
            Connections::Sqlite { read, write } => {
                read.close().await;
                write.close().await;
            }
            Connections::Postgres(pg) => pg.close().await,
        }
    }
}

tokio::task_local! {
    /// How much longer the request being served may wait on the database, over all
    /// its uses of it ([`within_request`]).
    static REQUEST_BUDGET: std::cell::Cell<Duration>;
}

/// Serves `work` as one request that may wait on the database for `budget` in all,
/// however many queries it makes (each is also bounded by `--db-timeout` on its
/// own). So a request answers `unavailable` within one deadline of database time,
/// not several one after the other. Time spent elsewhere (an argon2 check waiting
/// for a core, the socket's earlier events) is not counted: the budget is the
/// database's.
pub async fn within_request<F: std::future::Future>(budget: Duration, work: F) -> F::Output {
    REQUEST_BUDGET.scope(std::cell::Cell::new(budget), work).await
}

/// What is left of the request's budget, if the work runs as one ([`within_request`]).
fn request_budget() -> Option<Duration> {
    REQUEST_BUDGET.try_with(|budget| budget.get()).ok()
}

/// How long a use of the database may take: `deadline`, or less if the request it
/// serves has less left.
pub(crate) fn time_left(deadline: Duration) -> Duration {
    request_budget().map_or(deadline, |left| left.min(deadline))
}

/// Takes the time a use of the database took from the request's budget.
pub(crate) fn spend(took: Duration) {
    let _ = REQUEST_BUDGET.try_with(|budget| budget.set(budget.get().saturating_sub(took)));
}

/// What a use of the database that overran its deadline answers: for a query, the
/// error `unavailable` is made of; for a group write, a failure whose outcome is
/// unknown (it may have committed), which is retried by nobody.
pub(crate) trait Deadlined {
    fn timed_out(query: &'static str, deadline: Duration) -> Self;
}

/// The error of a use of the database that got no answer within its deadline.
pub(crate) fn deadline_error(query: &'static str, deadline: Duration) -> sqlx::Error {
    let message = format!("the database gave no answer to {query} within {deadline:?}");
    sqlx::Error::Io(std::io::Error::new(std::io::ErrorKind::TimedOut, message))
}

impl<T> Deadlined for Result<T, sqlx::Error> {
    fn timed_out(query: &'static str, deadline: Duration) -> Self {
        Err(deadline_error(query, deadline))
    }
}

impl Deadlined for bool {
    fn timed_out(_: &'static str, _: Duration) -> Self {
        false
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.pools.is_sqlite() { "Store(sqlite)" } else { "Store(postgres)" })
    }
}

/// Runs `$body` with `$p` bound to the [`Pool`]'s dialect pool (the body is compiled
/// once per dialect), within the pool's deadline or what is left of the request's
/// budget ([`time_left`], which the time taken is then spent from; past it, the body
/// is dropped,
/// which rolls back an open transaction, and the result is [`Deadlined`]), and
/// records its time under the query's name.
macro_rules! on_pool {
    ($pool:expr, $query:literal, |$p:ident| $body:expr) => {{
        let pool: $crate::store::Pool<'_> = $pool;
        let started = std::time::Instant::now();
        let run = async {
            match pool.dialect {
                $crate::store::Dialect::Sqlite($p) => $body,
                $crate::store::Dialect::Postgres($p) => $body,
            }
        };
        let deadline = $crate::store::time_left(pool.deadline);
        let result = match tokio::time::timeout(deadline, run).await {
            Ok(result) => result,
            Err(_) => $crate::store::Deadlined::timed_out($query, deadline),
        };
        $crate::store::spend(started.elapsed());
        metrics::histogram!($crate::metrics::DB_SECONDS, "query" => $query).record(started.elapsed().as_secs_f64());
        result
    }};
}
pub(crate) use on_pool;

/// PostgreSQL connections per instance.
const PG_CONNECTIONS: u32 = 16;

/// Writers of new messages per instance on PostgreSQL, each with a connection of
/// its own out of [`PG_CONNECTIONS`], so that batches do not queue behind reads for
/// a connection. One: measured on two cores, a second writer (one batch collected
/// and written while another commits) made batches smaller and acks/s lower, the
/// CPU being the limit there, not the commit's round trips (docs/benchmarks.md).
const PG_MESSAGE_WRITERS: usize = 1;

pub(crate) fn is_unique_violation(e: &sqlx::Error) -> bool {
    e.as_database_error().is_some_and(|d| d.is_unique_violation())
}

impl Store {
    /// Opens the database named by `url` (`sqlite://...` or `postgres://...`),
    /// creating a SQLite file and its directory when missing. Every use of it then
    /// answers within `deadline` (`--db-timeout`): a pool acquire, a statement (on
    /// PostgreSQL also as its `statement_timeout`), a transaction.
    pub async fn connect(url: &str, deadline: Duration) -> Result<Store, sqlx::Error> {
        if url.starts_with("sqlite:") {
            let options = SqliteConnectOptions::from_str(url)?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                // FULL: an acked message survives a power cut, not only a crash.
                .synchronous(SqliteSynchronous::Full)
                .busy_timeout(deadline)
                .foreign_keys(true);
            if let Some(dir) = options.get_filename().parent()
                && !dir.as_os_str().is_empty()
            {
                std::fs::create_dir_all(dir).map_err(sqlx::Error::Io)?;
            }
            let pool = |n| SqlitePoolOptions::new().max_connections(n).acquire_timeout(deadline);
            let write = pool(1).connect_with(options.clone()).await?;
            let read = pool(4).connect_with(options.read_only(true)).await?;
            // One writer, on the one write connection.
            let pools = Pools { connections: Connections::Sqlite { read, write }, deadline };
            Ok(Store::with_group_commit(pools.clone(), pools, 1))
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            let writers = PG_MESSAGE_WRITERS;
            // The server stops a statement at the deadline too, so that one the client
            // gave up on does not keep its locks.
            let options =
                PgConnectOptions::from_str(url)?.options([("statement_timeout", deadline.as_millis().to_string())]);
            let pool =
                |connections: usize| PgPoolOptions::new().max_connections(connections as u32).acquire_timeout(deadline);
            let general = pool(PG_CONNECTIONS as usize - writers).connect_with(options.clone()).await?;
            let messages = pool(writers).connect_with(options).await?;
            let pools = |pool| Pools { connections: Connections::Postgres(pool), deadline };
            Ok(Store::with_group_commit(pools(general), pools(messages), writers))
        } else {
            Err(sqlx::Error::Configuration(
                format!("unsupported database URL {url:?}: use sqlite://PATH or postgres://...").into(),
            ))
        }
    }

    /// The store over `pools`, with `writers` tasks writing new messages in groups
    /// over `writer_pools`.
    fn with_group_commit(pools: Pools, writer_pools: Pools, writers: usize) -> Store {
        Store { pools, group_commit: GroupCommit::spawn(writer_pools, writers), up: Arc::new(AtomicBool::new(true)) }
    }

    /// Applies the migrations of this database's dialect.
    pub async fn migrate(&self) -> Result<(), sqlx::migrate::MigrateError> {
        match &self.pools.connections {
            Connections::Sqlite { write, .. } => sqlx::migrate!("./migrations/sqlite").run(write).await,
            Connections::Postgres(pg) => sqlx::migrate!("./migrations/postgres").run(pg).await,
        }
    }

    pub fn is_sqlite(&self) -> bool {
        self.pools.is_sqlite()
    }

    /// Whether the database answers a trivial query within the deadline.
    pub async fn ping(&self) -> bool {
        on_pool!(self.pools.read(), "ping", |pool| sqlx::query("SELECT 1").execute(pool).await.is_ok())
    }

    /// Whether the database answered the last background check: instant, never
    /// waiting on an outage (`/readyz`).
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// The background check behind [`Store::is_up`]: a ping every `every`, each
    /// bounded by the deadline. Runs until its task is aborted (the server does at
    /// shut-down).
    pub async fn watch_health(&self, every: Duration) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let up = self.ping().await;
            if self.up.swap(up, Ordering::Relaxed) != up {
                if up {
                    tracing::info!("the database answers again");
                } else {
                    tracing::warn!(deadline = ?self.pools.deadline, "the database does not answer");
                }
            }
            metrics::gauge!(crate::metrics::DB_UP).set(if up { 1.0 } else { 0.0 });
        }
    }

    pub async fn close(&self) {
        self.group_commit.close().await;
        self.pools.close().await;
    }

    /// The setting's value, storing `default` first if it has none. Safe under
    /// concurrent starts: every instance ends up with the first value written.
    pub async fn setting_or_insert(&self, key: &str, default: &str) -> Result<String, sqlx::Error> {
        on_pool!(self.pools.write(), "setting_or_insert", |pool| {
            sqlx::query("INSERT INTO settings (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING")
                .bind(key)
                .bind(default)
                .execute(pool)
                .await?;
            sqlx::query_scalar("SELECT value FROM settings WHERE key = $1").bind(key).fetch_one(pool).await
        })
    }
}
