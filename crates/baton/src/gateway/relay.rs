//! A written change's one trip through Redis: [`Written`], what every instance
//! expands into its own deliveries, and [`Relay`], which publishes it and hands the
//! other instances' to the fanout.
//!
//! A fresh write triggers two broadcasts: its event (`new-chat`, `modify-chat`,
//! `delete-chat`) to the channel's room and, for a new message, `notify` to the
//! members' own lines on `/`. Through socketioxide's Redis adapter they were two
//! publishes, in two namespaces, each decoded by every instance. Here the instance
//! that wrote the change delivers both to its own sockets at once, then publishes one
//! [`Written`] on the cluster's `written` channel, and every other instance delivers
//! the same two to its own sockets from it (`Fanout::deliver_written`).
//!
//! Invariant kept here: every instance delivers a written change to its sockets at
//! most once. The writer delivers before it publishes and ignores its own publish
//! when Redis echoes it back; the others deliver what they receive, once. A publish
//! that fails (Redis down) leaves the other instances' clients to replay and
//! `position`, as a failed adapter broadcast did.

use futures::StreamExt;
use serde::{Deserialize, Serialize};

use socketioxide_redis::drivers::{ChanItem, MessageStream};

use crate::adapter::RedisLink;
use crate::chat::{Change, Message, UserId};
use crate::metrics as m;

/// The pub/sub channel (under the Redis prefix) written changes travel on.
const TOPIC: &str = "written";

/// A written change, as it travels between instances.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Written {
    /// The instance that wrote it (which delivered it already).
    pub origin: String,
    pub change: Change,
    pub message: Message,
    /// Who gets `notify` (a new message's members, the sender left out); empty for
    /// other changes.
    pub notify: Vec<UserId>,
}

/// Publishing written changes and receiving the other instances'. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Relay {
    link: RedisLink,
    instance: String,
}

impl Relay {
    pub fn new(link: RedisLink, instance: String) -> Self {
        Self { link, instance }
    }

    /// This instance's name, which its [`Written`] carry.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// Publishes a change this instance wrote and delivered. A failure is counted
    /// and logged: the other instances' clients repair the gap.
    pub async fn publish(&self, written: &Written) {
        let payload = match serde_json::to_vec(written) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "could not encode a written change");
                return;
            }
        };
        if let Err(e) = self.link.publish(TOPIC, payload).await {
            metrics::counter!(m::BROADCAST_ERRORS, "kind" => "adapter").increment(1);
            metrics::counter!(m::LOCAL_FALLBACKS).increment(1);
            tracing::debug!(error = %e, "publishing a written change failed; delivered here only");
        }
    }

    /// Subscribes to the written changes (before the instance serves, so that none
    /// meant for its clients is missed).
    pub async fn subscribe(&self) -> Option<MessageStream<ChanItem>> {
        match self.link.subscribe(TOPIC).await {
            Ok(stream) => Some(stream),
            Err(e) => {
                tracing::error!(error = %e, "could not subscribe to written changes");
                None
            }
        }
    }

    /// Receives the other instances' written changes until the subscription ends
    /// (it does not while the process lives: the driver renews it across Redis
    /// outages), and hands each to `deliver`.
    pub async fn receive<F: Future<Output = ()>>(
        &self,
        mut stream: MessageStream<ChanItem>,
        mut deliver: impl FnMut(Written) -> F,
    ) {
        while let Some((_, payload)) = stream.next().await {
            match serde_json::from_slice::<Written>(&payload) {
                Ok(written) if written.origin == self.instance => {}
                Ok(written) => deliver(written).await,
                Err(e) => tracing::warn!(error = %e, "a written change that does not decode"),
            }
        }
    }
}
