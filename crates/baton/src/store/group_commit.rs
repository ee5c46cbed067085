//! Group commit for new messages: sends that arrive while a write is in flight are
//! written together, in one transaction (one fsync), instead of one each.
//!
//! The batch also checks its senders' membership: it reads its channels' members once,
//! in its transaction, which replaces a membership query per message and gives the
//! `notify` its recipients.
//!
//! A [`GroupCommit`] is a queue in front of one or more writer tasks, with pools of
//! their own. A writer takes
//! whatever is queued (up to [`MAX_BATCH`]) and writes it with
//! [`insert_messages`], then answers every request. There is no timer: the next
//! batch is simply what queued while the previous commit ran, so a lone send is
//! written at once and a crowd of senders shares each commit.
//!
//! What a batch keeps of the single-row write:
//! - a request is answered only after the commit that holds its row; if the commit
//!   itself fails, every request of the batch fails (its outcome is unknown, so none is
//!   retried: a retried clientMsgId would be found, a message without one could be
//!   written twice);
//! - if a row makes the batch fail before the commit (a statement the database
//!   refused, such as a clientMsgId another instance has just written), the batch rolls
//!   back, sequences included, and each request is written alone
//!   ([`insert_alone`]), so a bad row fails only itself;
//! - two requests of one batch with the same (channel, sender, clientMsgId) write one
//!   message: the later ones answer with it as found ([`Inserted::Existing`]);
//! - a batch's channel rows are locked in channel-id order (PostgreSQL), so writers
//!   of several instances sharing the database cannot deadlock, and each channel's
//!   sequence numbers are taken in the transaction that writes them, so they stay
//!   gap-free and in commit order.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;
use std::sync::Arc;

use tokio::sync::{Mutex, mpsc, oneshot};

use super::communities::channel_access;
use super::messages::message_by_client_id;
use super::{ChannelId, CommunityId, Dialect, Message, MessageId, Pools, UserId, is_unique_violation, on_pool};
use crate::error::AlreadyLogged;
use crate::metrics as m;

/// The most requests one transaction writes.
pub const MAX_BATCH: usize = 256;

/// Requests queued beyond this wait to be queued (a send awaits its ack anyway, so
/// this is only reached with more senders than that).
const QUEUE: usize = 4 * MAX_BATCH;

/// A new message to write.
#[derive(Debug, Clone)]
pub struct NewMessage {
    pub channel: ChannelId,
    pub sender: UserId,
    pub content: String,
    pub client_msg_id: Option<String>,
    pub now: i64,
    /// The community the sender acts in (a socket's namespace), if any: a channel of
    /// another one is refused as one that does not exist.
    pub community: Option<CommunityId>,
}

impl NewMessage {
    /// What the clientMsgId makes unique, if it has one.
    fn idempotency_key(&self) -> Option<(ChannelId, UserId, &str)> {
        self.client_msg_id.as_deref().map(|c| (self.channel, self.sender, c))
    }
}

/// Why a batch was not written.
#[derive(Debug)]
enum BatchError {
    /// Before the commit: nothing was written. `by_row` tells whether the database
    /// refused a statement (a constraint, a missing channel: something one row may
    /// cause) rather than failing as a whole (unreachable, the pool timed out).
    Rolledback { error: sqlx::Error, by_row: bool },
    /// The commit failed: whether it took effect is unknown.
    Commit(sqlx::Error),
}

impl<T> super::Deadlined for Result<T, BatchError> {
    /// A batch that overran its deadline may have committed: its outcome is unknown.
    fn timed_out(query: &'static str, deadline: std::time::Duration) -> Self {
        Err(BatchError::Commit(super::deadline_error(query, deadline)))
    }
}

impl BatchError {
    fn before_commit(error: sqlx::Error) -> Self {
        let by_row = error.as_database_error().is_some() || matches!(error, sqlx::Error::RowNotFound);
        BatchError::Rolledback { error, by_row }
    }
}

struct Request {
    message: NewMessage,
    /// `None`: refused (see [`Store::insert_message`](super::Store::insert_message)).
    reply: oneshot::Sender<Result<Option<Written>, sqlx::Error>>,
}

/// The queue in front of the writer tasks. Cheap to clone; the writers stop when the
/// last clone is dropped.
#[derive(Clone)]
pub struct GroupCommit {
    queue: mpsc::Sender<Request>,
    /// What the writers write with.
    pools: Pools,
}

impl GroupCommit {
    /// Starts `writers` writer tasks on `pools`. More than one lets a batch be
    /// collected and written while another commits, which needs as many write
    /// connections.
    pub(super) fn spawn(pools: Pools, writers: usize) -> Self {
        let (queue, rx) = mpsc::channel(QUEUE);
        let rx = Arc::new(Mutex::new(rx));
        for _ in 0..writers.max(1) {
            let (pools, rx) = (pools.clone(), rx.clone());
            tokio::spawn(async move {
                let mut batch = Vec::with_capacity(MAX_BATCH);
                loop {
                    // One writer at a time waits on the queue; it lets go as soon as it
                    // has its batch, so the next writer collects while this one writes.
                    if rx.lock().await.recv_many(&mut batch, MAX_BATCH).await == 0 {
                        return;
                    }
                    write_batch(&pools, std::mem::take(&mut batch)).await;
                }
            });
        }
        Self { queue, pools }
    }

    /// Closes the writers' pools.
    pub(super) async fn close(&self) {
        self.pools.close().await;
    }

    /// Queues a new message and waits for the commit that holds it, within what is
    /// left of the request's budget (see [`super::within_request`]). A request that gave up before
    /// a writer took it is not written (the writer skips it); one that gave up while
    /// its batch was being written has an unknown outcome, like a batch that overran
    /// its own deadline.
    pub async fn write(&self, message: NewMessage) -> Result<Option<Written>, sqlx::Error> {
        let (reply, answer) = oneshot::channel();
        let started = std::time::Instant::now();
        let queued = async {
            self.queue.send(Request { message, reply }).await.map_err(|_| sqlx::Error::PoolClosed)?;
            // A writer that went away (the runtime shutting down) answers nothing.
            answer.await.unwrap_or(Err(sqlx::Error::PoolClosed))
        };
        let written = match super::request_budget() {
            Some(left) => tokio::time::timeout(left, queued)
                .await
                .unwrap_or_else(|_| Err(super::deadline_error("insert_messages", left))),
            None => queued.await,
        };
        super::spend(started.elapsed());
        written
    }
}

/// Writes one batch and answers each of its requests; those whose requester gave up
/// waiting (its request ended) are not written.
async fn write_batch(pools: &Pools, mut requests: Vec<Request>) {
    requests.retain(|r| !r.reply.is_closed());
    if requests.is_empty() {
        return;
    }
    metrics::histogram!(m::DB_BATCH_ROWS).record(requests.len() as f64);
    // Later requests with an earlier one's clientMsgId are answered with its message:
    // request i is answered with writes[plan[i].0], fresh if it is the one that wrote it.
    let mut first_with_key: HashMap<(ChannelId, UserId, &str), usize> = HashMap::new();
    let mut writes: Vec<NewMessage> = Vec::with_capacity(requests.len());
    let mut plan: Vec<(usize, bool)> = Vec::with_capacity(requests.len());
    for r in &requests {
        let index = match r.message.idempotency_key() {
            Some(key) => *first_with_key.entry(key).or_insert(writes.len()),
            None => writes.len(),
        };
        let fresh = index == writes.len();
        if fresh {
            writes.push(r.message.clone());
        }
        plan.push((index, fresh));
    }
    drop(first_with_key);

    match insert_messages(pools, &writes).await {
        Ok(written) => {
            for (r, (index, fresh)) in requests.into_iter().zip(plan) {
                let answer = written.messages[index].clone().map(|inserted| Written {
                    inserted: match inserted {
                        Inserted::Fresh(message) if fresh => Inserted::Fresh(message),
                        Inserted::Fresh(message) | Inserted::Existing(message) => Inserted::Existing(message),
                    },
                    members: written.members.get(&r.message.channel).cloned(),
                });
                let _ = r.reply.send(Ok(answer));
            }
        }
        Err(BatchError::Rolledback { error, by_row: true }) => {
            metrics::counter!(m::DB_BATCH_RETRIES).increment(1);
            tracing::warn!(rows = requests.len(), error = %error, "batch of new messages refused; writing each alone");
            for r in requests {
                let result = insert_alone(pools, &r.message).await;
                let _ = r.reply.send(result);
            }
        }
        Err(BatchError::Rolledback { error, by_row: false } | BatchError::Commit(error)) => {
            tracing::error!(rows = requests.len(), error = %error, "batch of new messages failed");
            for r in requests {
                let _ = r.reply.send(Err(copy_of(&error)));
            }
        }
    }
}

/// The error of a failed batch, for each of its requests (`sqlx::Error` is not
/// `Clone`): marked as logged, since the batch logged it once for all of them.
fn copy_of(error: &sqlx::Error) -> sqlx::Error {
    sqlx::Error::Io(std::io::Error::other(AlreadyLogged(format!("the batch of new messages failed: {error}"))))
}

/// How a `new` message was written: freshly, or found by its clientMsgId.
#[derive(Clone)]
pub enum Inserted {
    Fresh(Message),
    Existing(Message),
}

/// What [`insert_messages`] wrote: in the order of its input, each message (fresh,
/// or found by its clientMsgId), or `None` where it was refused; and the members of
/// every channel of the batch.
struct BatchWritten {
    messages: Vec<Option<Inserted>>,
    members: HashMap<ChannelId, Arc<[UserId]>>,
}

/// A new message's write, when it was not refused.
pub struct Written {
    pub inserted: Inserted,
    /// The channel's members, read in the transaction that wrote the message when it
    /// was written in a group (they are read there to check the senders' membership):
    /// who gets the `notify`, without another query.
    pub members: Option<Arc<[UserId]>>,
}

/// Writes one new message in a transaction of its own, after checking the sender's
/// membership; if a concurrent send with the same clientMsgId won, returns that one.
async fn insert_alone(pools: &Pools, message: &NewMessage) -> Result<Option<Written>, sqlx::Error> {
    let NewMessage { channel, sender, ref content, ref client_msg_id, now, community } = *message;
    let client_msg_id = client_msg_id.as_deref();
    let access = channel_access(pools.read(), channel, sender).await?;
    if !access.is_some_and(|a| a.channel_member && community.is_none_or(|c| c == a.channel.community_id)) {
        return Ok(None);
    }
    let res: Result<Message, sqlx::Error> = on_pool!(pools.write(), "insert_message", |pool| {
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
            message_by_client_id(pools.read(), channel, sender, cmid).await?.map(Inserted::Existing).ok_or(e)?
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
async fn insert_messages(pools: &Pools, messages: &[NewMessage]) -> Result<BatchWritten, BatchError> {
    if pools.is_sqlite() {
        insert_messages_in_steps(pools, messages).await
    } else {
        insert_messages_at_once(pools, messages).await
    }
}

/// [`insert_messages`] in one transaction of several statements (SQLite, where a
/// statement costs no round trip).
async fn insert_messages_in_steps(pools: &Pools, messages: &[NewMessage]) -> Result<BatchWritten, BatchError> {
    let ids = messages.iter().map(|m| m.channel).collect::<std::collections::BTreeSet<_>>();
    let ids = ids.iter().map(i64::to_string).collect::<Vec<_>>().join(",");
    // Ids are integers, inlined as such. SQLite has one writer and no row locks.
    let lock = if pools.is_sqlite() { "" } else { " FOR UPDATE OF c" };
    let read_members = format!(
        "SELECT c.id, c.community_id, cm.user_id FROM channels c \
         LEFT JOIN channel_members cm ON cm.channel_id = c.id WHERE c.id IN ({ids}) ORDER BY c.id{lock}"
    );
    on_pool!(pools.write(), "insert_messages", |pool| {
        async {
            let before = BatchError::before_commit;
            let mut tx = pool.begin().await.map_err(before)?;
            let rows: Vec<(ChannelId, CommunityId, Option<UserId>)> =
                sqlx::query_as(&read_members).persistent(false).fetch_all(&mut *tx).await.map_err(before)?;
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
                .map(|(channel, last_seq, community_id)| (channel, (last_seq - channels[&channel].0 + 1, community_id)))
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
            let messages =
                accepted.iter().map(|ok| if *ok { written.next().map(Inserted::Fresh) } else { None }).collect();
            Ok(BatchWritten { messages, members })
        }
        .await
    })
}

/// [`insert_messages`] on PostgreSQL in one statement, so one round trip per batch
/// (five in steps: BEGIN, the locked read, the numbering, the insert, COMMIT, which
/// made most of a small room's database cost, docs/benchmarks.md). Its parts, as
/// common table expressions, in the order they take effect:
/// - `input`: the batch, from arrays, with each message's place (`ord`);
/// - `locked`: its channels, locked in id order (so two batches cannot deadlock),
///   with their latest `last_seq` (a lock waited for re-reads the row);
/// - `members`, `valid`: the messages whose channel exists, is in the community the
///   sender acts in, and has the sender as a member; the others are refused;
/// - `existing`: valid messages whose clientMsgId this sender already used in the
///   channel: answered with that message, not written again;
/// - `numbered`: the rest, numbered per channel after its `last_seq`, in batch order;
/// - `bumped`: the channels' `last_seq` and `last_event_at` moved past them;
/// - `inserted`: the messages written.
///
/// A statement runs in a transaction of its own: all of it commits, or none of it.
/// A clientMsgId another batch committed after this statement's snapshot fails the
/// unique constraint, and the batch is written row by row ([`insert_alone`]), as in
/// steps.
const INSERT_AT_ONCE: &str = "\
WITH input AS (
    SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::text[], $5::bigint[], $6::bigint[])
        WITH ORDINALITY AS i(channel_id, sender_id, content, client_msg_id, community_id, created_at, ord)
), locked AS (
    SELECT id, community_id, last_seq FROM channels
    WHERE id IN (SELECT channel_id FROM input) ORDER BY id FOR UPDATE
), members AS (
    SELECT channel_id, array_agg(user_id) AS users FROM channel_members
    WHERE channel_id IN (SELECT id FROM locked) GROUP BY channel_id
), valid AS (
    SELECT i.*, l.last_seq FROM input i
    JOIN locked l ON l.id = i.channel_id
    JOIN members m ON m.channel_id = i.channel_id
    WHERE i.sender_id = ANY(m.users) AND (i.community_id IS NULL OR i.community_id = l.community_id)
), existing AS (
    SELECT v.ord, x.id, x.seq, x.event_seq, x.content, x.created_at, x.edited_at, x.deleted FROM valid v
    JOIN messages x ON x.channel_id = v.channel_id AND x.sender_id = v.sender_id AND x.client_msg_id = v.client_msg_id
), numbered AS (
    SELECT v.*, v.last_seq + row_number() OVER (PARTITION BY v.channel_id ORDER BY v.ord) AS seq FROM valid v
    WHERE v.ord NOT IN (SELECT ord FROM existing)
), bumped AS (
    UPDATE channels c SET last_seq = n.top, last_event_at = n.at
    FROM (SELECT channel_id, max(seq) AS top, max(created_at) AS at FROM numbered GROUP BY channel_id) n
    WHERE c.id = n.channel_id
    RETURNING c.id
), inserted AS (
    INSERT INTO messages (channel_id, seq, event_seq, sender_id, content, client_msg_id, created_at, deleted)
    SELECT channel_id, seq, seq, sender_id, content, client_msg_id, created_at, FALSE FROM numbered
    RETURNING id, channel_id, seq
)
SELECT i.ord, l.community_id, m.users, ins.id, ins.seq,
       x.id, x.seq, x.event_seq, x.content, x.created_at, x.edited_at, x.deleted
FROM input i
LEFT JOIN locked l ON l.id = i.channel_id
LEFT JOIN members m ON m.channel_id = i.channel_id
LEFT JOIN numbered n ON n.ord = i.ord
LEFT JOIN inserted ins ON ins.channel_id = n.channel_id AND ins.seq = n.seq
LEFT JOIN existing x ON x.ord = i.ord
ORDER BY i.ord";

/// One row of [`INSERT_AT_ONCE`]'s answer: the message's place, its channel's
/// community and members, then the written message's id and seq, or the one its
/// clientMsgId found (id, seq, event_seq, content, created_at, edited_at, deleted).
type AtOnceRow = (
    i64,
    Option<CommunityId>,
    Option<Vec<UserId>>,
    Option<MessageId>,
    Option<i64>,
    Option<MessageId>,
    Option<i64>,
    Option<i64>,
    Option<String>,
    Option<i64>,
    Option<i64>,
    Option<bool>,
);

/// [`insert_messages`] in one statement ([`INSERT_AT_ONCE`]), on PostgreSQL.
async fn insert_messages_at_once(pools: &Pools, messages: &[NewMessage]) -> Result<BatchWritten, BatchError> {
    let column = |f: fn(&NewMessage) -> i64| messages.iter().map(f).collect::<Vec<i64>>();
    let query = sqlx::query_as::<_, AtOnceRow>(INSERT_AT_ONCE)
        .bind(column(|m| m.channel))
        .bind(column(|m| m.sender))
        .bind(messages.iter().map(|m| m.content.as_str()).collect::<Vec<_>>())
        .bind(messages.iter().map(|m| m.client_msg_id.as_deref()).collect::<Vec<_>>())
        .bind(messages.iter().map(|m| m.community).collect::<Vec<_>>())
        .bind(column(|m| m.now));
    let Dialect::Postgres(pg) = pools.write().dialect else {
        unreachable!("insert_messages_at_once runs on PostgreSQL")
    };
    let rows: Vec<AtOnceRow> = on_pool!(pools.write(), "insert_messages", |_pool| {
        // A database's refusal rolled the statement back; any other failure (the
        // connection lost while it ran) leaves its outcome unknown.
        query.fetch_all(pg).await.map_err(|e| {
            if e.as_database_error().is_some() { BatchError::before_commit(e) } else { BatchError::Commit(e) }
        })
    })?;
    if rows.len() != messages.len() {
        return Err(BatchError::Commit(sqlx::Error::Protocol("the batch's answer has a row per message".into())));
    }
    let mut members: HashMap<ChannelId, Arc<[UserId]>> = HashMap::new();
    let mut written = Vec::with_capacity(messages.len());
    for (m, row) in messages.iter().zip(rows) {
        let (_, community, users, new_id, new_seq, id, seq, event_seq, content, created_at, edited_at, deleted) = row;
        if let Some(users) = users {
            members.entry(m.channel).or_insert_with(|| users.into());
        }
        let message = |id, seq, event_seq, content: String, created_at, edited_at, deleted| Message {
            id,
            channel_id: m.channel,
            community_id: community.unwrap_or_default(),
            seq,
            event_seq,
            sender_id: m.sender,
            content,
            client_msg_id: m.client_msg_id.clone(),
            created_at,
            edited_at,
            deleted,
        };
        written.push(match (new_id, new_seq, id, seq, event_seq, content, created_at, deleted) {
            (Some(id), Some(seq), ..) => {
                Some(Inserted::Fresh(message(id, seq, seq, m.content.clone(), m.now, None, false)))
            }
            (_, _, Some(id), Some(seq), Some(event_seq), Some(content), Some(created_at), Some(deleted)) => {
                Some(Inserted::Existing(message(id, seq, event_seq, content, created_at, edited_at, deleted)))
            }
            _ => None,
        });
    }
    Ok(BatchWritten { messages: written, members })
}

/// The statements of a group write of `messages` (see [`insert_messages_in_steps`]): per
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
