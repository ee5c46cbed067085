//! Group commit for new messages: sends that arrive while a write is in flight are
//! written together, in one transaction (one fsync), instead of one each.
//!
//! The batch also checks its senders' membership: it reads its channels' members once,
//! in its transaction, which replaces a membership query per message and gives the
//! `notify` its recipients.
//!
//! A [`MessageWriter`] is a queue in front of one or more writer tasks. A writer takes
//! whatever is queued (up to [`MAX_BATCH`]) and writes it with
//! [`Store::insert_messages`], then answers every request. There is no timer: the next
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
//!   ([`Store::insert_message_alone`]), so a bad row fails only itself;
//! - two requests of one batch with the same (channel, sender, clientMsgId) write one
//!   message: the later ones answer with it as found ([`Inserted::Existing`]);
//! - a batch's channel rows are locked in channel-id order (PostgreSQL), so writers
//!   of several instances sharing the database cannot deadlock, and each channel's
//!   sequence numbers are taken in the transaction that writes them, so they stay
//!   gap-free and in commit order.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::{Mutex, mpsc, oneshot};

use super::store::{Inserted, Store, Written};
use super::{ChannelId, CommunityId, UserId};
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
pub enum BatchError {
    /// Before the commit: nothing was written. `by_row` tells whether the database
    /// refused a statement (a constraint, a missing channel: something one row may
    /// cause) rather than failing as a whole (unreachable, the pool timed out).
    Rolledback { error: sqlx::Error, by_row: bool },
    /// The commit failed: whether it took effect is unknown.
    Commit(sqlx::Error),
}

impl BatchError {
    pub fn before_commit(error: sqlx::Error) -> Self {
        let by_row = error.as_database_error().is_some() || matches!(error, sqlx::Error::RowNotFound);
        BatchError::Rolledback { error, by_row }
    }
}

struct Request {
    message: NewMessage,
    /// `None`: refused (see [`Store::insert_message`]).
    reply: oneshot::Sender<Result<Option<Written>, sqlx::Error>>,
}

/// The queue in front of the writer tasks. Cheap to clone; the writers stop when the
/// last clone is dropped.
#[derive(Clone)]
pub struct MessageWriter {
    queue: mpsc::Sender<Request>,
    /// What the writers write with.
    store: Arc<Store>,
}

impl MessageWriter {
    /// Starts `writers` writer tasks on `store` (which must write directly, not through
    /// another `MessageWriter`). More than one lets a batch be collected and written
    /// while another commits, which needs as many write connections.
    pub fn spawn(store: Store, writers: usize) -> Self {
        let (queue, rx) = mpsc::channel(QUEUE);
        let rx = Arc::new(Mutex::new(rx));
        for _ in 0..writers.max(1) {
            let (store, rx) = (store.clone(), rx.clone());
            tokio::spawn(async move {
                let mut batch = Vec::with_capacity(MAX_BATCH);
                loop {
                    // One writer at a time waits on the queue; it lets go as soon as it
                    // has its batch, so the next writer collects while this one writes.
                    if rx.lock().await.recv_many(&mut batch, MAX_BATCH).await == 0 {
                        return;
                    }
                    write_batch(&store, std::mem::take(&mut batch)).await;
                }
            });
        }
        Self { queue, store: Arc::new(store) }
    }

    /// The store the writers write with.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Queues a new message and waits for the commit that holds it.
    pub async fn write(&self, message: NewMessage) -> Result<Option<Written>, sqlx::Error> {
        let (reply, answer) = oneshot::channel();
        self.queue.send(Request { message, reply }).await.map_err(|_| sqlx::Error::PoolClosed)?;
        // A writer that went away (the runtime shutting down) answers nothing.
        answer.await.unwrap_or(Err(sqlx::Error::PoolClosed))
    }
}

/// Writes one batch and answers each of its requests.
async fn write_batch(store: &Store, requests: Vec<Request>) {
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

    match store.insert_messages(&writes).await {
        Ok(written) => {
            for (r, (index, fresh)) in requests.into_iter().zip(plan) {
                let answer = written.messages[index].clone().map(|message| Written {
                    inserted: if fresh { Inserted::Fresh(message) } else { Inserted::Existing(message) },
                    members: written.members.get(&r.message.channel).cloned(),
                });
                let _ = r.reply.send(Ok(answer));
            }
        }
        Err(BatchError::Rolledback { error, by_row: true }) => {
            metrics::counter!(m::DB_BATCH_RETRIES).increment(1);
            tracing::warn!(rows = requests.len(), error = %error, "batch of new messages refused; writing each alone");
            for r in requests {
                let result = store.insert_message_alone(&r.message).await;
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

/// The error of a failed batch, for each of its requests (`sqlx::Error` is not `Clone`).
fn copy_of(error: &sqlx::Error) -> sqlx::Error {
    match error {
        sqlx::Error::PoolTimedOut => sqlx::Error::PoolTimedOut,
        sqlx::Error::PoolClosed => sqlx::Error::PoolClosed,
        e => sqlx::Error::Io(std::io::Error::other(format!("the batch of new messages failed: {e}"))),
    }
}
