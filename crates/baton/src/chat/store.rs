//! The database behind the chat domain, for SQLite and PostgreSQL alike.
//!
//! One set of SQL serves both dialects: `$N` placeholders (SQLite reads them as
//! numbered parameters), `RETURNING`, `ON CONFLICT`, and CASE where the dialects'
//! functions differ. Each query is written once and compiled for both pools by the
//! `on_reader!`/`on_writer!` macros, so the test suite running on both databases runs
//! every query on both.
//!
//! Invariant kept here: a channel's event sequence (`channels.last_seq`) moves only
//! inside the transaction that writes the message change it numbers, so sequences are
//! gap-free and in commit order (PostgreSQL's row lock on the channel, SQLite's single
//! writer).

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};

use super::batch::{BatchError, MessageWriter, NewMessage};
use super::{
    Channel, ChannelId, ChannelUnread, Community, CommunityId, CommunityMember, Message, MessageId, Role, User, UserId,
};

/// Where the messages live. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    backend: Backend,
    /// Where new messages go to be written in groups; `None` in the writers' own
    /// store, which writes them directly.
    message_writer: Option<MessageWriter>,
}

#[derive(Clone)]
enum Backend {
    /// SQLite allows one writer at a time; a single-connection write pool makes
    /// writers queue in-process instead of failing with SQLITE_BUSY, while readers
    /// use their own pool (WAL mode lets them run beside the writer).
    Sqlite {
        read: SqlitePool,
        write: SqlitePool,
    },
    Postgres(PgPool),
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.backend {
            Backend::Sqlite { .. } => "Store(sqlite)",
            Backend::Postgres(_) => "Store(postgres)",
        })
    }
}

/// Runs `$body` with `$pool` bound to the pool for reads.
macro_rules! on_reader {
    ($store:expr, $query:literal, |$pool:ident| $body:expr) => {{
        let started = std::time::Instant::now();
        let result = match &$store.backend {
            Backend::Sqlite { read, .. } => {
                let $pool = read;
                $body
            }
            Backend::Postgres(pg) => {
                let $pool = pg;
                $body
            }
        };
        metrics::histogram!(crate::metrics::DB_SECONDS, "query" => $query).record(started.elapsed().as_secs_f64());
        result
    }};
}

/// Runs `$body` with `$pool` bound to the pool for writes.
macro_rules! on_writer {
    ($store:expr, $query:literal, |$pool:ident| $body:expr) => {{
        let started = std::time::Instant::now();
        let result = match &$store.backend {
            Backend::Sqlite { write, .. } => {
                let $pool = write;
                $body
            }
            Backend::Postgres(pg) => {
                let $pool = pg;
                $body
            }
        };
        metrics::histogram!(crate::metrics::DB_SECONDS, "query" => $query).record(started.elapsed().as_secs_f64());
        result
    }};
}

/// The columns of a [`Message`], joined with its channel for `community_id`.
const MESSAGE_COLUMNS: &str = "m.id, m.channel_id, c.community_id, m.seq, m.event_seq, m.sender_id, \
     m.content, m.client_msg_id, m.created_at, m.edited_at, m.deleted \
     FROM messages m JOIN channels c ON c.id = m.channel_id";

/// A user row with the password hash, for logging in.
#[derive(Debug, sqlx::FromRow)]
pub struct Credentials {
    pub id: UserId,
    pub password_hash: String,
}

/// A channel as seen by one user: the channel and where the user stands in it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ChannelAccess {
    #[sqlx(flatten)]
    pub channel: Channel,
    /// The user's role in the channel's community, if a member of it.
    pub community_role: Option<String>,
    /// Whether the user is a member of the channel.
    pub channel_member: bool,
}

/// One row of the unread computation.
#[derive(Debug, sqlx::FromRow)]
struct UnreadRow {
    community_id: CommunityId,
    channel_id: ChannelId,
    last_seq: i64,
    read_seq: i64,
    unread: i64,
}

/// How a `new` message was written: freshly, or found by its clientMsgId.
pub enum Inserted {
    Fresh(Message),
    Existing(Message),
}

/// What [`Store::insert_messages`] wrote: in the order of its input, each message, or
/// `None` where it was refused; and the members of every channel of the batch.
pub struct BatchWritten {
    pub messages: Vec<Option<Message>>,
    pub members: HashMap<ChannelId, Arc<[UserId]>>,
}

/// A new message's write, when it was not refused.
pub struct Written {
    pub inserted: Inserted,
    /// The channel's members, read in the transaction that wrote the message when it
    /// was written in a group (they are read there to check the senders' membership):
    /// who gets the `notify`, without another query.
    pub members: Option<Arc<[UserId]>>,
}

/// Which slice of a channel's messages to read.
#[derive(Debug, Clone, Copy)]
pub enum Slice {
    /// seq in (after, before), newest first.
    Descending { before: Option<i64>, after: Option<i64> },
    /// seq in (after, before), oldest first.
    Ascending { after: i64, before: Option<i64> },
    /// The changes feed: eventSeq > since, in eventSeq order.
    Changes { since: i64 },
}

/// PostgreSQL connections per instance.
const PG_CONNECTIONS: u32 = 16;

/// Writers of new messages per instance on PostgreSQL, each with a connection of
/// its own out of [`PG_CONNECTIONS`], so that batches do not queue behind reads for
/// a connection. One: measured on two cores, a second writer (one batch collected
/// and written while another commits) made batches smaller and acks/s lower, the
/// CPU being the limit there, not the commit's round trips (docs/benchmarks.md).
const PG_MESSAGE_WRITERS: usize = 1;

/// The statements of a group write of `messages` (see [`Store::insert_messages`]): per
/// channel, in id order, how many messages and the latest time; the UPDATE that numbers
/// them; the INSERT that writes them.
fn group_write_sql(messages: &[&NewMessage]) -> (BTreeMap<ChannelId, (i64, i64)>, String, String) {
    // Per channel: how many, and the latest time among them; in channel-id order.
    let mut channels: BTreeMap<ChannelId, (i64, i64)> = BTreeMap::new();
    for m in messages {
        let (count, latest) = channels.entry(m.channel).or_insert((0, m.now));
        *count += 1;
        *latest = (*latest).max(m.now);
    }
    // One row (id, count, time) per channel, as a derived table both dialects read.
    let mut take_seqs =
        String::from("UPDATE channels SET last_seq = channels.last_seq + v.k, last_event_at = v.t FROM (");
    for i in 0..channels.len() {
        let n = |k: usize| 3 * i + k;
        let select = if i == 0 { "SELECT" } else { " UNION ALL SELECT" };
        let _ = write!(take_seqs, "{select} ${} AS id, ${} AS k, ${} AS t", n(1), n(2), n(3));
    }
    take_seqs
        .push_str(") AS v WHERE channels.id = v.id RETURNING channels.id, channels.last_seq, channels.community_id");
    let mut insert = String::from(
        "INSERT INTO messages (channel_id, seq, event_seq, sender_id, content, client_msg_id, created_at, deleted) \
             VALUES ",
    );
    for i in 0..messages.len() {
        let sep = if i == 0 { "" } else { ", " };
        let n = |k: usize| 6 * i + k;
        // channel_id, seq, event_seq (= seq), sender_id, content, client_msg_id, created_at
        let _ = write!(insert, "{sep}(${}, ${}, ${1}, ${}, ${}, ${}, ${}, FALSE)", n(1), n(2), n(3), n(4), n(5), n(6));
    }
    insert.push_str(" RETURNING id, channel_id, seq");

    (channels, take_seqs, insert)
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    e.as_database_error().is_some_and(|d| d.is_unique_violation())
}

impl Store {
    /// Opens the database named by `url` (`sqlite://...` or `postgres://...`),
    /// creating a SQLite file and its directory when missing.
    pub async fn connect(url: &str) -> Result<Store, sqlx::Error> {
        if url.starts_with("sqlite:") {
            let options = SqliteConnectOptions::from_str(url)?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                // FULL: an acked message survives a power cut, not only a crash.
                .synchronous(SqliteSynchronous::Full)
                .busy_timeout(Duration::from_secs(10))
                .foreign_keys(true);
            if let Some(dir) = options.get_filename().parent()
                && !dir.as_os_str().is_empty()
            {
                std::fs::create_dir_all(dir).map_err(sqlx::Error::Io)?;
            }
            let write = SqlitePoolOptions::new().max_connections(1).connect_with(options.clone()).await?;
            let read = SqlitePoolOptions::new().max_connections(4).connect_with(options.read_only(true)).await?;
            // One writer, on the one write connection.
            let backend = Backend::Sqlite { read, write };
            Ok(Store::with_message_writers(backend.clone(), backend, 1))
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            let writers = PG_MESSAGE_WRITERS;
            let pool = |connections: usize| {
                PgPoolOptions::new().max_connections(connections as u32).acquire_timeout(Duration::from_secs(10))
            };
            let general = pool(PG_CONNECTIONS as usize - writers).connect(url).await?;
            let messages = pool(writers).connect(url).await?;
            Ok(Store::with_message_writers(Backend::Postgres(general), Backend::Postgres(messages), writers))
        } else {
            Err(sqlx::Error::Configuration(
                format!("unsupported database URL {url:?}: use sqlite://PATH or postgres://...").into(),
            ))
        }
    }

    /// The store over `backend`, with `writers` tasks writing new messages in groups
    /// over `writers_backend`.
    fn with_message_writers(backend: Backend, writers_backend: Backend, writers: usize) -> Store {
        let direct = Store { backend: writers_backend, message_writer: None };
        Store { backend, message_writer: Some(MessageWriter::spawn(direct, writers)) }
    }

    /// Applies the migrations of this database's dialect.
    pub async fn migrate(&self) -> Result<(), sqlx::migrate::MigrateError> {
        match &self.backend {
            Backend::Sqlite { write, .. } => sqlx::migrate!("./migrations/sqlite").run(write).await,
            Backend::Postgres(pg) => sqlx::migrate!("./migrations/postgres").run(pg).await,
        }
    }

    pub fn is_sqlite(&self) -> bool {
        matches!(self.backend, Backend::Sqlite { .. })
    }

    /// Whether the database answers a trivial query (for /readyz).
    pub async fn ping(&self) -> bool {
        on_reader!(self, "ping", |pool| sqlx::query("SELECT 1").execute(pool).await.is_ok())
    }

    pub async fn close(&self) {
        if let Some(writer) = &self.message_writer {
            Box::pin(writer.store().close()).await;
        }
        match &self.backend {
            Backend::Sqlite { read, write } => {
                read.close().await;
                write.close().await;
            }
            Backend::Postgres(pg) => pg.close().await,
        }
    }

    // ---- settings ----

    /// The setting's value, storing `default` first if it has none. Safe under
    /// concurrent starts: every instance ends up with the first value written.
    pub async fn setting_or_insert(&self, key: &str, default: &str) -> Result<String, sqlx::Error> {
        on_writer!(self, "setting_or_insert", |pool| {
            sqlx::query("INSERT INTO settings (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING")
                .bind(key)
                .bind(default)
                .execute(pool)
                .await?;
            sqlx::query_scalar("SELECT value FROM settings WHERE key = $1").bind(key).fetch_one(pool).await
        })
    }

    // ---- users ----

    /// Inserts a user; `None` if the username is taken.
    pub async fn insert_user(
        &self,
        username: &str,
        display_name: &str,
        password_hash: &str,
        now: i64,
    ) -> Result<Option<User>, sqlx::Error> {
        let res = on_writer!(self, "insert_user", |pool| {
            sqlx::query_as::<_, User>(
                "INSERT INTO users (username, display_name, password_hash, created_at) \
                 VALUES ($1, $2, $3, $4) RETURNING id, username, display_name",
            )
            .bind(username)
            .bind(display_name)
            .bind(password_hash)
            .bind(now)
            .fetch_one(pool)
            .await
        });
        match res {
            Ok(user) => Ok(Some(user)),
            Err(e) if is_unique_violation(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub async fn credentials(&self, username: &str) -> Result<Option<Credentials>, sqlx::Error> {
        on_reader!(self, "credentials", |pool| {
            sqlx::query_as("SELECT id, password_hash FROM users WHERE username = $1")
                .bind(username)
                .fetch_optional(pool)
                .await
        })
    }

    pub async fn user(&self, id: UserId) -> Result<Option<User>, sqlx::Error> {
        on_reader!(self, "user", |pool| {
            sqlx::query_as("SELECT id, username, display_name FROM users WHERE id = $1")
                .bind(id)
                .fetch_optional(pool)
                .await
        })
    }

    pub async fn user_by_name(&self, username: &str) -> Result<Option<User>, sqlx::Error> {
        on_reader!(self, "user_by_name", |pool| {
            sqlx::query_as("SELECT id, username, display_name FROM users WHERE username = $1")
                .bind(username)
                .fetch_optional(pool)
                .await
        })
    }

    // ---- communities ----

    pub async fn insert_community(&self, owner: UserId, name: &str, now: i64) -> Result<Community, sqlx::Error> {
        on_writer!(self, "insert_community", |pool| {
            let mut tx = pool.begin().await?;
            let id: i64 = sqlx::query_scalar(
                "INSERT INTO communities (name, owner_id, created_at) VALUES ($1, $2, $3) RETURNING id",
            )
            .bind(name)
            .bind(owner)
            .bind(now)
            .fetch_one(&mut *tx)
            .await?;
            sqlx::query(
                "INSERT INTO community_members (community_id, user_id, role, joined_at) VALUES ($1, $2, $3, $4)",
            )
            .bind(id)
            .bind(owner)
            .bind(Role::Owner.as_str())
            .bind(now)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(Community { id, name: name.to_owned(), role: Role::Owner })
        })
    }

    pub async fn communities_of(&self, user: UserId) -> Result<Vec<Community>, sqlx::Error> {
        let rows: Vec<(i64, String, String)> = on_reader!(self, "communities_of", |pool| {
            sqlx::query_as(
                "SELECT c.id, c.name, cm.role FROM community_members cm \
                 JOIN communities c ON c.id = cm.community_id WHERE cm.user_id = $1 ORDER BY c.id",
            )
            .bind(user)
            .fetch_all(pool)
            .await
        })?;
        Ok(rows.into_iter().map(|(id, name, role)| Community { id, name, role: Role::parse(&role) }).collect())
    }

    /// The user's role in the community; `Ok(None)` if not a member (or no such community).
    pub async fn community_role(&self, community: CommunityId, user: UserId) -> Result<Option<Role>, sqlx::Error> {
        let role: Option<String> = on_reader!(self, "community_role", |pool| {
            sqlx::query_scalar("SELECT role FROM community_members WHERE community_id = $1 AND user_id = $2")
                .bind(community)
                .bind(user)
                .fetch_optional(pool)
                .await
        })?;
        Ok(role.as_deref().map(Role::parse))
    }

    /// The community's members by username.
    pub async fn community_members(&self, community: CommunityId) -> Result<Vec<CommunityMember>, sqlx::Error> {
        let rows: Vec<(i64, String, String, String)> = on_reader!(self, "community_members", |pool| {
            sqlx::query_as(
                "SELECT u.id, u.username, u.display_name, cm.role FROM community_members cm \
                 JOIN users u ON u.id = cm.user_id WHERE cm.community_id = $1 ORDER BY u.username",
            )
            .bind(community)
            .fetch_all(pool)
            .await
        })?;
        Ok(rows
            .into_iter()
            .map(|(id, username, display_name, role)| CommunityMember {
                user: User { id, username, display_name },
                role: Role::parse(&role),
            })
            .collect())
    }

    pub async fn community_exists(&self, community: CommunityId) -> Result<bool, sqlx::Error> {
        on_reader!(self, "community_exists", |pool| {
            sqlx::query_scalar::<_, i64>("SELECT id FROM communities WHERE id = $1")
                .bind(community)
                .fetch_optional(pool)
                .await
                .map(|r| r.is_some())
        })
    }

    /// Adds a member; `false` if the user already was one.
    pub async fn insert_community_member(
        &self,
        community: CommunityId,
        user: UserId,
        now: i64,
    ) -> Result<bool, sqlx::Error> {
        on_writer!(self, "insert_community_member", |pool| {
            sqlx::query(
                "INSERT INTO community_members (community_id, user_id, role, joined_at) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (community_id, user_id) DO NOTHING",
            )
            .bind(community)
            .bind(user)
            .bind(Role::Member.as_str())
            .bind(now)
            .execute(pool)
            .await
            .map(|r| r.rows_affected() == 1)
        })
    }

    // ---- channels ----

    /// Creates a channel with its creator as first member; `None` if the name is taken
    /// in the community.
    pub async fn insert_channel(
        &self,
        community: CommunityId,
        creator: UserId,
        name: &str,
        private: bool,
        now: i64,
    ) -> Result<Option<Channel>, sqlx::Error> {
        let res: Result<Channel, sqlx::Error> = on_writer!(self, "insert_channel", |pool| {
            async {
                let mut tx = pool.begin().await?;
                let channel: Channel = sqlx::query_as(
                    "INSERT INTO channels (community_id, name, private, last_seq, last_event_at, created_at) \
                     VALUES ($1, $2, $3, 0, $4, $4) RETURNING id, community_id, name, private, last_seq",
                )
                .bind(community)
                .bind(name)
                .bind(private)
                .bind(now)
                .fetch_one(&mut *tx)
                .await?;
                sqlx::query(
                    "INSERT INTO channel_members (channel_id, user_id, read_seq, joined_at) VALUES ($1, $2, 0, $3)",
                )
                .bind(channel.id)
                .bind(creator)
                .bind(now)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(channel)
            }
            .await
        });
        match res {
            Ok(channel) => Ok(Some(channel)),
            Err(e) if is_unique_violation(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Public channels of the community and the private ones the user is in.
    pub async fn visible_channels(&self, community: CommunityId, user: UserId) -> Result<Vec<Channel>, sqlx::Error> {
        on_reader!(self, "visible_channels", |pool| {
            sqlx::query_as(
                "SELECT c.id, c.community_id, c.name, c.private, c.last_seq FROM channels c \
                 WHERE c.community_id = $1 AND (c.private = FALSE OR EXISTS \
                   (SELECT 1 FROM channel_members m WHERE m.channel_id = c.id AND m.user_id = $2)) \
                 ORDER BY c.id",
            )
            .bind(community)
            .bind(user)
            .fetch_all(pool)
            .await
        })
    }

    /// The channel and the user's standing in it; `None` if there is no such channel.
    pub async fn channel_access(&self, channel: ChannelId, user: UserId) -> Result<Option<ChannelAccess>, sqlx::Error> {
        on_reader!(self, "channel_access", |pool| {
            sqlx::query_as(
                "SELECT c.id, c.community_id, c.name, c.private, c.last_seq, \
                   (SELECT cm.role FROM community_members cm WHERE cm.community_id = c.community_id AND cm.user_id = $2) \
                     AS community_role, \
                   EXISTS (SELECT 1 FROM channel_members m WHERE m.channel_id = c.id AND m.user_id = $2) \
                     AS channel_member \
                 FROM channels c WHERE c.id = $1",
            )
            .bind(channel)
            .bind(user)
            .fetch_optional(pool)
            .await
        })
    }

    /// Of `channels`, those in `community` that `user` is a member of.
    pub async fn member_channels_among(
        &self,
        community: CommunityId,
        user: UserId,
        channels: &[ChannelId],
    ) -> Result<Vec<ChannelId>, sqlx::Error> {
        if channels.is_empty() {
            return Ok(Vec::new());
        }
        // Ids are integers we parsed, so inlining them is safe and keeps one query
        // for both dialects (no array binds in SQLite).
        let list = channels.iter().map(i64::to_string).collect::<Vec<_>>().join(",");
        let sql = format!(
            "SELECT m.channel_id FROM channel_members m JOIN channels c ON c.id = m.channel_id \
             WHERE m.user_id = $1 AND c.community_id = $2 AND m.channel_id IN ({list}) ORDER BY m.channel_id"
        );
        on_reader!(self, "member_channels_among", |pool| sqlx::query_scalar(&sql)
            .bind(user)
            .bind(community)
            .fetch_all(pool)
            .await)
    }

    /// Adds a channel member; `false` if the user already was one.
    pub async fn insert_channel_member(&self, channel: ChannelId, user: UserId, now: i64) -> Result<bool, sqlx::Error> {
        on_writer!(self, "insert_channel_member", |pool| {
            sqlx::query(
                "INSERT INTO channel_members (channel_id, user_id, read_seq, joined_at) VALUES ($1, $2, 0, $3) \
                 ON CONFLICT (channel_id, user_id) DO NOTHING",
            )
            .bind(channel)
            .bind(user)
            .bind(now)
            .execute(pool)
            .await
            .map(|r| r.rows_affected() == 1)
        })
    }

    /// Removes a channel member; `false` if the user was not one.
    pub async fn delete_channel_member(&self, channel: ChannelId, user: UserId) -> Result<bool, sqlx::Error> {
        on_writer!(self, "delete_channel_member", |pool| {
            sqlx::query("DELETE FROM channel_members WHERE channel_id = $1 AND user_id = $2")
                .bind(channel)
                .bind(user)
                .execute(pool)
                .await
                .map(|r| r.rows_affected() == 1)
        })
    }

    pub async fn channel_member_ids(&self, channel: ChannelId) -> Result<Vec<UserId>, sqlx::Error> {
        on_reader!(self, "channel_member_ids", |pool| {
            sqlx::query_scalar("SELECT user_id FROM channel_members WHERE channel_id = $1")
                .bind(channel)
                .fetch_all(pool)
                .await
        })
    }

    /// Channels whose event sequence moved at or after `since_ms`:
    /// `(channel, community, last_seq)`, for the `position` emit.
    pub async fn recently_active(&self, since_ms: i64) -> Result<Vec<(ChannelId, CommunityId, i64)>, sqlx::Error> {
        on_reader!(self, "recently_active", |pool| {
            sqlx::query_as("SELECT id, community_id, last_seq FROM channels WHERE last_event_at >= $1")
                .bind(since_ms)
                .fetch_all(pool)
                .await
        })
    }

    // ---- messages ----

    pub async fn message(&self, id: MessageId) -> Result<Option<Message>, sqlx::Error> {
        let sql = format!("SELECT {MESSAGE_COLUMNS} WHERE m.id = $1");
        on_reader!(self, "message", |pool| sqlx::query_as(&sql).bind(id).fetch_optional(pool).await)
    }

    async fn message_by_client_id(
        &self,
        channel: ChannelId,
        sender: UserId,
        client_msg_id: &str,
    ) -> Result<Option<Message>, sqlx::Error> {
        let sql =
            format!("SELECT {MESSAGE_COLUMNS} WHERE m.channel_id = $1 AND m.sender_id = $2 AND m.client_msg_id = $3");
        on_reader!(self, "message_by_client_id", |pool| {
            sqlx::query_as(&sql).bind(channel).bind(sender).bind(client_msg_id).fetch_optional(pool).await
        })
    }

    /// Writes a new message with the channel's next event sequence, or returns the
    /// one this sender already wrote with the same clientMsgId (whose sender's
    /// membership the caller checks). Returns once the message is committed, in a group
    /// with whatever other messages were sent meanwhile (see `batch.rs`). `None`: refused,
    /// nothing written, because the channel does not exist, is not in `community` (the
    /// one the sender acts in, if any) or the sender is not a member of it; the check is
    /// made in the transaction that writes.
    pub async fn insert_message(&self, message: NewMessage) -> Result<Option<Written>, sqlx::Error> {
        if let Some(cmid) = &message.client_msg_id
            && let Some(existing) = self.message_by_client_id(message.channel, message.sender, cmid).await?
        {
            return Ok(Some(Written { inserted: Inserted::Existing(existing), members: None }));
        }
        match &self.message_writer {
            Some(writer) => writer.write(message).await,
            None => self.insert_message_alone(&message).await,
        }
    }

    /// Writes one new message in a transaction of its own, after checking the sender's
    /// membership; if a concurrent send with the same clientMsgId won, returns that one.
    pub(super) async fn insert_message_alone(&self, message: &NewMessage) -> Result<Option<Written>, sqlx::Error> {
        let NewMessage { channel, sender, ref content, ref client_msg_id, now, community } = *message;
        let client_msg_id = client_msg_id.as_deref();
        let access = self.channel_access(channel, sender).await?;
        if !access.is_some_and(|a| a.channel_member && community.is_none_or(|c| c == a.channel.community_id)) {
            return Ok(None);
        }
        let res: Result<Message, sqlx::Error> = on_writer!(self, "insert_message", |pool| {
            async {
                let mut tx = pool.begin().await?;
                let (seq, community_id): (i64, i64) = sqlx::query_as(
                    "UPDATE channels SET last_seq = last_seq + 1, last_event_at = $2 WHERE id = $1 \
                     RETURNING last_seq, community_id",
                )
                .bind(channel)
                .bind(now)
                .fetch_one(&mut *tx)
                .await?;
                let id: i64 = sqlx::query_scalar(
                    "INSERT INTO messages (channel_id, seq, event_seq, sender_id, content, client_msg_id, created_at, deleted) \
                     VALUES ($1, $2, $2, $3, $4, $5, $6, FALSE) RETURNING id",
                )
                .bind(channel)
                .bind(seq)
                .bind(sender)
                .bind(content)
                .bind(client_msg_id)
                .bind(now)
                .fetch_one(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(Message {
                    id,
                    channel_id: channel,
                    community_id,
                    seq,
                    event_seq: seq,
                    sender_id: sender,
                    content: content.to_owned(),
                    client_msg_id: client_msg_id.map(str::to_owned),
                    created_at: now,
                    edited_at: None,
                    deleted: false,
                })
            }
            .await
        });
        let inserted = match (res, client_msg_id) {
            (Ok(message), _) => Inserted::Fresh(message),
            // A concurrent send with the same clientMsgId won the race; ours rolled
            // back (sequence included), so return theirs.
            (Err(e), Some(cmid)) if is_unique_violation(&e) => {
                self.message_by_client_id(channel, sender, cmid).await?.map(Inserted::Existing).ok_or(e)?
            }
            (Err(e), _) => return Err(e),
        };
        Ok(Some(Written { inserted, members: None }))
    }

    /// Writes new messages in one transaction. First one query reads the batch's
    /// channels with their members (on PostgreSQL locking the channel rows, in id
    /// order, so that two batches of this instance or another cannot deadlock): a
    /// message whose channel is missing, in another community than its sender acts in,
    /// or whose sender is not a member, is refused (`None` in its place) and takes no
    /// sequence number. Then one `UPDATE channels` takes as many sequence numbers in
    /// each channel as it has messages here (numbered in the order of `messages`), and
    /// one multi-row INSERT writes them all. Returns them in the order of `messages`
    /// once committed, with the members of each channel (who gets the `notify`). The
    /// caller keeps clientMsgIds unique within `messages`.
    pub(super) async fn insert_messages(&self, messages: &[NewMessage]) -> Result<BatchWritten, BatchError> {
        let ids = messages.iter().map(|m| m.channel).collect::<std::collections::BTreeSet<_>>();
        let ids = ids.iter().map(i64::to_string).collect::<Vec<_>>().join(",");
        // Ids are integers, inlined as such. SQLite has one writer and no row locks.
        let lock = if self.is_sqlite() { "" } else { " FOR UPDATE OF c" };
        let read_members = format!(
            "SELECT c.id, c.community_id, cm.user_id FROM channels c \
             LEFT JOIN channel_members cm ON cm.channel_id = c.id WHERE c.id IN ({ids}) ORDER BY c.id{lock}"
        );
        on_writer!(self, "insert_messages", |pool| {
            async {
                let before = BatchError::before_commit;
                let mut tx = pool.begin().await.map_err(before)?;
                let rows: Vec<(ChannelId, CommunityId, Option<UserId>)> =
                    sqlx::query_as(&read_members).fetch_all(&mut *tx).await.map_err(before)?;
                // channel -> (community, members)
                let mut found: HashMap<ChannelId, (CommunityId, Vec<UserId>)> = HashMap::new();
                for (channel, community, user) in rows {
                    let entry = found.entry(channel).or_insert_with(|| (community, Vec::new()));
                    entry.1.extend(user);
                }
                let accepted: Vec<bool> = messages
                    .iter()
                    .map(|m| {
                        found.get(&m.channel).is_some_and(|(community, members)| {
                            m.community.is_none_or(|c| c == *community) && members.contains(&m.sender)
                        })
                    })
                    .collect();
                let members: HashMap<ChannelId, Arc<[UserId]>> =
                    found.into_iter().map(|(channel, (_, members))| (channel, members.into())).collect();
                let to_write: Vec<&NewMessage> =
                    messages.iter().zip(&accepted).filter(|(_, ok)| **ok).map(|(m, _)| m).collect();
                if to_write.is_empty() {
                    tx.rollback().await.map_err(before)?;
                    return Ok(BatchWritten { messages: vec![None; messages.len()], members });
                }
                let (channels, take_seqs, insert) = group_write_sql(&to_write);
                let mut numbering = sqlx::query_as::<_, (ChannelId, i64, i64)>(&take_seqs);
                for (&channel, &(count, latest)) in &channels {
                    numbering = numbering.bind(channel).bind(count).bind(latest);
                }
                // channel -> (its next sequence number here, its community)
                let mut next: HashMap<ChannelId, (i64, i64)> = numbering
                    .fetch_all(&mut *tx)
                    .await
                    .map_err(before)?
                    .into_iter()
                    .map(|(channel, last_seq, community_id)| {
                        (channel, (last_seq - channels[&channel].0 + 1, community_id))
                    })
                    .collect();
                if next.len() < channels.len() {
                    // A channel that does not exist (any more): its rows fail, alone.
                    return Err(before(sqlx::Error::RowNotFound));
                }
                let mut written: Vec<Message> = to_write
                    .iter()
                    .map(|m| {
                        let (seq, community_id) = next.get_mut(&m.channel).expect("every channel was numbered");
                        *seq += 1;
                        Message {
                            id: 0,
                            channel_id: m.channel,
                            community_id: *community_id,
                            seq: *seq - 1,
                            event_seq: *seq - 1,
                            sender_id: m.sender,
                            content: m.content.clone(),
                            client_msg_id: m.client_msg_id.clone(),
                            created_at: m.now,
                            edited_at: None,
                            deleted: false,
                        }
                    })
                    .collect();
                let mut rows = sqlx::query_as::<_, (MessageId, ChannelId, i64)>(&insert);
                for m in &written {
                    rows = rows
                        .bind(m.channel_id)
                        .bind(m.seq)
                        .bind(m.sender_id)
                        .bind(m.content.as_str())
                        .bind(m.client_msg_id.as_deref())
                        .bind(m.created_at);
                }
                // RETURNING's row order is not promised: match ids by (channel, seq).
                let ids: HashMap<(ChannelId, i64), MessageId> = rows
                    .fetch_all(&mut *tx)
                    .await
                    .map_err(before)?
                    .into_iter()
                    .map(|(id, channel, seq)| ((channel, seq), id))
                    .collect();
                for m in &mut written {
                    m.id = *ids.get(&(m.channel_id, m.seq)).ok_or_else(|| {
                        BatchError::before_commit(sqlx::Error::Protocol("INSERT ... RETURNING left out a row".into()))
                    })?;
                }
                let mut written = written.into_iter();
                tx.commit().await.map_err(BatchError::Commit)?;
                let messages = accepted.iter().map(|ok| if *ok { written.next() } else { None }).collect();
                Ok(BatchWritten { messages, members })
            }
            .await
        })
    }

    /// Applies a modify (`Some(content)`) or a delete (`None`) to a live message,
    /// numbering it with the channel's next event sequence. `None` if the message is
    /// gone or already deleted (nothing is written then).
    pub async fn change_message(
        &self,
        message: &Message,
        content: Option<&str>,
        now: i64,
    ) -> Result<Option<Message>, sqlx::Error> {
        on_writer!(self, "change_message", |pool| {
            let mut tx = pool.begin().await?;
            let event_seq: i64 = sqlx::query_scalar(
                "UPDATE channels SET last_seq = last_seq + 1, last_event_at = $2 WHERE id = $1 RETURNING last_seq",
            )
            .bind(message.channel_id)
            .bind(now)
            .fetch_one(&mut *tx)
            .await?;
            let changed = match content {
                Some(content) => sqlx::query(
                    "UPDATE messages SET content = $2, edited_at = $3, event_seq = $4 WHERE id = $1 AND deleted = FALSE",
                )
                .bind(message.id)
                .bind(content)
                .bind(now)
                .bind(event_seq)
                .execute(&mut *tx)
                .await?,
                None => sqlx::query(
                    "UPDATE messages SET content = '', deleted = TRUE, event_seq = $2 WHERE id = $1 AND deleted = FALSE",
                )
                .bind(message.id)
                .bind(event_seq)
                .execute(&mut *tx)
                .await?,
            };
            if changed.rows_affected() != 1 {
                tx.rollback().await?;
                return Ok(None);
            }
            tx.commit().await?;
            let mut updated = message.clone();
            updated.event_seq = event_seq;
            match content {
                Some(content) => {
                    updated.content = content.to_owned();
                    updated.edited_at = Some(now);
                }
                None => {
                    updated.content.clear();
                    updated.deleted = true;
                }
            }
            Ok(Some(updated))
        })
    }

    /// Reads `limit` messages of a channel (one more is fetched to tell `hasMore`).
    pub async fn messages(&self, channel: ChannelId, slice: Slice, limit: i64) -> Result<Vec<Message>, sqlx::Error> {
        // Bounds are integers, inlined as such; the open ones become no-ops.
        let (filter, order) = match slice {
            Slice::Descending { before, after } => {
                (format!("m.seq < {} AND m.seq > {}", before.unwrap_or(i64::MAX), after.unwrap_or(-1)), "m.seq DESC")
            }
            Slice::Ascending { after, before } => {
                (format!("m.seq > {after} AND m.seq < {}", before.unwrap_or(i64::MAX)), "m.seq ASC")
            }
            Slice::Changes { since } => (format!("m.event_seq > {since}"), "m.event_seq ASC"),
        };
        let sql = format!("SELECT {MESSAGE_COLUMNS} WHERE m.channel_id = $1 AND {filter} ORDER BY {order} LIMIT $2");
        on_reader!(self, "messages", |pool| sqlx::query_as(&sql).bind(channel).bind(limit).fetch_all(pool).await)
    }

    // ---- read markers ----

    /// Moves the read marker forward to `seq` (never backwards); returns where it is
    /// and whether it moved, or `None` if the user is not a member.
    pub async fn advance_read(
        &self,
        channel: ChannelId,
        user: UserId,
        seq: i64,
    ) -> Result<Option<(i64, bool)>, sqlx::Error> {
        on_writer!(self, "advance_read", |pool| {
            let moved: Option<i64> = sqlx::query_scalar(
                "UPDATE channel_members SET read_seq = $3 WHERE channel_id = $1 AND user_id = $2 AND read_seq < $3 \
                 RETURNING read_seq",
            )
            .bind(channel)
            .bind(user)
            .bind(seq)
            .fetch_optional(pool)
            .await?;
            if let Some(seq) = moved {
                return Ok(Some((seq, true)));
            }
            let current: Option<i64> =
                sqlx::query_scalar("SELECT read_seq FROM channel_members WHERE channel_id = $1 AND user_id = $2")
                    .bind(channel)
                    .bind(user)
                    .fetch_optional(pool)
                    .await?;
            Ok(current.map(|seq| (seq, false)))
        })
    }

    /// Unread counts of every channel the user is in: messages by others, not
    /// deleted, past the read marker.
    pub async fn unread(&self, user: UserId) -> Result<Vec<(CommunityId, ChannelUnread)>, sqlx::Error> {
        let rows: Vec<UnreadRow> = on_reader!(self, "unread", |pool| {
            sqlx::query_as(
                "SELECT c.community_id, c.id AS channel_id, c.last_seq, cm.read_seq, \
                   (SELECT COUNT(*) FROM messages m WHERE m.channel_id = c.id AND m.seq > cm.read_seq \
                      AND m.deleted = FALSE AND m.sender_id <> $1) AS unread \
                 FROM channel_members cm JOIN channels c ON c.id = cm.channel_id \
                 WHERE cm.user_id = $1 ORDER BY c.community_id, c.id",
            )
            .bind(user)
            .fetch_all(pool)
            .await
        })?;
        Ok(rows
            .into_iter()
            .map(|r| {
                (
                    r.community_id,
                    ChannelUnread {
                        channel_id: r.channel_id,
                        unread: r.unread,
                        last_seq: r.last_seq,
                        read_seq: r.read_seq,
                    },
                )
            })
            .collect())
    }
}
