//! The channels a user joined in a community, per user and community (not per
//! socket): what a reconnect rejoins, on this instance or, in a cluster, any other.
//!
//! In Redis: one set per user and community, `{prefix}:joins:{user}:{community}`,
//! kept for [`REMEMBER_FOR`] after the user's last join there.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

use fred::prelude::*;

use crate::adapter::RedisLink;
use crate::chat::{ChannelId, CommunityId, UserId};
use crate::error::Result;

/// How long Redis keeps a user's joins in a community after their last join there:
/// past it, a returning client rejoins the channels its `since` names, and joins
/// the rest again itself.
pub const REMEMBER_FOR: i64 = 30 * 24 * 3600;

#[derive(Debug)]
pub struct Joins {
    backend: Backend,
}

#[derive(Debug)]
enum Backend {
    /// One process holds everything: a single node.
    Local(Mutex<HashMap<(UserId, CommunityId), BTreeSet<ChannelId>>>),
    Redis(RedisLink),
}

impl Joins {
    pub fn local() -> Self {
        Self { backend: Backend::Local(Mutex::default()) }
    }

    pub fn redis(link: RedisLink) -> Self {
        Self { backend: Backend::Redis(link) }
    }

    fn key(link: &RedisLink, user: UserId, community: CommunityId) -> String {
        link.key(format!("joins:{user}:{community}"))
    }

    pub async fn remember(&self, user: UserId, community: CommunityId, channels: &[ChannelId]) -> Result<()> {
        if channels.is_empty() {
            return Ok(());
        }
        match &self.backend {
            Backend::Local(map) => {
                map.lock().unwrap().entry((user, community)).or_default().extend(channels);
                Ok(())
            }
            Backend::Redis(link) => {
                let key = Self::key(link, user, community);
                link.run(link.commands.sadd::<i64, _, _>(&key, channels.to_vec())).await?;
                link.run(link.commands.expire::<i64, _>(&key, REMEMBER_FOR, None)).await?;
                Ok(())
            }
        }
    }

    pub async fn forget(&self, user: UserId, community: CommunityId, channels: &[ChannelId]) -> Result<()> {
        if channels.is_empty() {
            return Ok(());
        }
        match &self.backend {
            Backend::Local(map) => {
                let mut map = map.lock().unwrap();
                if let Some(set) = map.get_mut(&(user, community)) {
                    for c in channels {
                        set.remove(c);
                    }
                    if set.is_empty() {
                        map.remove(&(user, community));
                    }
                }
                Ok(())
            }
            Backend::Redis(link) => {
                let key = Self::key(link, user, community);
                link.run(link.commands.srem::<i64, _, _>(key, channels.to_vec())).await?;
                Ok(())
            }
        }
    }

    /// The remembered channels, in ascending order.
    pub async fn remembered(&self, user: UserId, community: CommunityId) -> Result<Vec<ChannelId>> {
        match &self.backend {
            Backend::Local(map) => Ok(map
                .lock()
                .unwrap()
                .get(&(user, community))
                .map(|set| set.iter().copied().collect())
                .unwrap_or_default()),
            Backend::Redis(link) => {
                let key = Self::key(link, user, community);
                let mut channels: Vec<ChannelId> = link.run(link.commands.smembers(key)).await?;
                channels.sort_unstable();
                Ok(channels)
            }
        }
    }
}
