//! The channels a user joined in a community, per user and community (not per
//! socket): what a reconnect rejoins.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

use crate::chat::{ChannelId, CommunityId, UserId};
use crate::error::Result;

#[derive(Debug)]
pub struct Joins {
    backend: Backend,
}

#[derive(Debug)]
enum Backend {
    /// One process holds everything: a single node.
    Local(Mutex<HashMap<(UserId, CommunityId), BTreeSet<ChannelId>>>),
}

impl Joins {
    pub fn local() -> Self {
        Self {
            backend: Backend::Local(Mutex::default()),
        }
    }

    pub async fn remember(
        &self,
        user: UserId,
        community: CommunityId,
        channels: &[ChannelId],
    ) -> Result<()> {
        match &self.backend {
            Backend::Local(map) => {
                map.lock()
                    .unwrap()
                    .entry((user, community))
                    .or_default()
                    .extend(channels);
                Ok(())
            }
        }
    }

    pub async fn forget(
        &self,
        user: UserId,
        community: CommunityId,
        channels: &[ChannelId],
    ) -> Result<()> {
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
        }
    }

    pub async fn remembered(&self, user: UserId, community: CommunityId) -> Result<Vec<ChannelId>> {
        match &self.backend {
            Backend::Local(map) => Ok(map
                .lock()
                .unwrap()
                .get(&(user, community))
                .map(|set| set.iter().copied().collect())
                .unwrap_or_default()),
        }
    }
}
