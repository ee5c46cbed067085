//! Messages: the new ones (through the [group commit](super::group_commit)), their
//! changes (modify, delete), reading a channel's history and changes feed, and each
//! member's read marker with the unread counts it gives.

use serde::Serialize;

use super::{ChannelId, CommunityId, Inserted, MessageId, NewMessage, Pool, Store, UserId, Written, on_pool};

/// A message in its current state (`chatInfo` on the wire).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize, sqlx::FromRow)]
#[serde(rename_all = "camelCase")]
pub struct Message {
    pub id: MessageId,
    pub channel_id: ChannelId,
    pub community_id: CommunityId,
    /// Place in the channel, fixed at creation.
    pub seq: i64,
    /// Sequence of the message's last change (new, modify or delete).
    pub event_seq: i64,
    pub sender_id: UserId,
    pub content: String,
    pub client_msg_id: Option<String>,
    pub created_at: i64,
    pub edited_at: Option<i64>,
    pub deleted: bool,
}

/// Unread counts for one channel (`GET /api/unread`).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ChannelUnread {
    pub channel_id: ChannelId,
    pub unread: i64,
    pub last_seq: i64,
    pub read_seq: i64,
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

/// One row of the unread computation.
#[derive(Debug, sqlx::FromRow)]
struct UnreadRow {
    community_id: CommunityId,
    channel_id: ChannelId,
    last_seq: i64,
    read_seq: i64,
    unread: i64,
}

/// The columns of a [`Message`], joined with its channel for `community_id`.
pub(super) const MESSAGE_COLUMNS: &str = "m.id, m.channel_id, c.community_id, m.seq, m.event_seq, m.sender_id, \
     m.content, m.client_msg_id, m.created_at, m.edited_at, m.deleted \
     FROM messages m JOIN channels c ON c.id = m.channel_id";

impl Store {
    pub async fn message(&self, id: MessageId) -> Result<Option<Message>, sqlx::Error> {
        let sql = format!("SELECT {MESSAGE_COLUMNS} WHERE m.id = $1");
        on_pool!(self.pools.read(), "message", |pool| sqlx::query_as(&sql).bind(id).fetch_optional(pool).await)
    }

    /// Writes a new message with the channel's next event sequence, or returns the
    /// one this sender already wrote with the same clientMsgId (whose sender's
    /// membership the caller checks again). Returns once the message is committed, in a group
    /// with whatever other messages were sent meanwhile ([`group_commit`](super::group_commit)). `None`: refused,
    /// nothing written, because the channel does not exist, is not in `community` (the
    /// one the sender acts in, if any) or the sender is not a member of it; the check is
    /// made in the transaction that writes.
    pub async fn insert_message(&self, message: NewMessage) -> Result<Option<Written>, sqlx::Error> {
        // On PostgreSQL the batch's one statement finds a clientMsgId already used;
        // SQLite's writes in steps would fail the batch on it, so it is read first.
        if self.pools.is_sqlite()
            && let Some(cmid) = &message.client_msg_id
            && let Some(existing) =
                message_by_client_id(self.pools.read(), message.channel, message.sender, cmid).await?
        {
            return Ok(Some(Written { inserted: Inserted::Existing(existing), members: None }));
        }
        self.group_commit.write(message).await
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
        on_pool!(self.pools.write(), "change_message", |pool| {
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
        // The bounds are bound, not inlined: one statement text per kind of slice,
        // prepared once per connection (inlined values made every replay a new
        // statement, prepared anew and pushing the others out of the cache). The
        // open bounds become no-ops.
        let (filter, order, low, high) = match slice {
            Slice::Descending { before, after } => {
                ("m.seq > $3 AND m.seq < $4", "m.seq DESC", after.unwrap_or(-1), before.unwrap_or(i64::MAX))
            }
            Slice::Ascending { after, before } => {
                ("m.seq > $3 AND m.seq < $4", "m.seq ASC", after, before.unwrap_or(i64::MAX))
            }
            Slice::Changes { since } => ("m.event_seq > $3 AND m.event_seq < $4", "m.event_seq ASC", since, i64::MAX),
        };
        let sql = format!("SELECT {MESSAGE_COLUMNS} WHERE m.channel_id = $1 AND {filter} ORDER BY {order} LIMIT $2");
        on_pool!(self.pools.read(), "messages", |pool| sqlx::query_as(&sql)
            .bind(channel)
            .bind(limit)
            .bind(low)
            .bind(high)
            .fetch_all(pool)
            .await)
    }

    /// Moves the read marker forward to `seq` (never backwards); returns where it is
    /// and whether it moved, or `None` if the user is not a member.
    pub async fn advance_read(
        &self,
        channel: ChannelId,
        user: UserId,
        seq: i64,
    ) -> Result<Option<(i64, bool)>, sqlx::Error> {
        on_pool!(self.pools.write(), "advance_read", |pool| {
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
        let rows: Vec<UnreadRow> = on_pool!(self.pools.read(), "unread", |pool| {
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

/// The message this sender wrote in the channel with this clientMsgId, if any.
pub(super) async fn message_by_client_id(
    pool: Pool<'_>,
    channel: ChannelId,
    sender: UserId,
    client_msg_id: &str,
) -> Result<Option<Message>, sqlx::Error> {
    let sql = format!("SELECT {MESSAGE_COLUMNS} WHERE m.channel_id = $1 AND m.sender_id = $2 AND m.client_msg_id = $3");
    on_pool!(pool, "message_by_client_id", |pool| {
        sqlx::query_as(&sql).bind(channel).bind(sender).bind(client_msg_id).fetch_optional(pool).await
    })
}
