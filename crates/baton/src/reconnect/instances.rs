//! The cluster's registry of live instances: each one beats a heartbeat into
//! `{prefix}:instances` (a sorted set scored by the last beat, Unix ms), and any
//! instance that finds another silent for [`DEAD_AFTER`] claims it (one claimer,
//! by `SET NX`) and takes its users offline. So an instance killed with SIGKILL
//! leaves nothing behind for longer than `DEAD_AFTER` + [`BEAT`] (20 s < 30 s).

use std::time::Duration;

use fred::prelude::*;
use fred::types::{Expiration, SetOptions};

use crate::adapter::RedisLink;
use crate::chat::now_ms;
use crate::error::Result;

/// How often an instance beats and looks for dead ones.
pub const BEAT: Duration = Duration::from_secs(5);
/// Silence after which an instance is dead: three missed beats.
pub const DEAD_AFTER: Duration = Duration::from_secs(15);
/// How long a claim on a dead instance holds, should its claimer die too.
const CLAIM_FOR: i64 = 30;

#[derive(Debug, Clone)]
pub struct Registry {
    link: RedisLink,
    id: String,
}

impl Registry {
    pub fn new(link: RedisLink, id: String) -> Self {
        Self { link, id }
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    fn instances(&self) -> String {
        self.link.key("instances")
    }

    /// Beats; true if this instance was not in the registry: at its first beat, or
    /// after another instance took it for dead (it was silent for [`DEAD_AFTER`]: a
    /// paused process, a stalled machine) and removed it, its presence with it.
    pub async fn beat(&self) -> Result<bool> {
        Ok(self.stamp(now_ms()).await? == 1)
    }

    /// Records `at` (Unix ms) as this instance's last beat; 1 if it was not there.
    async fn stamp(&self, at: i64) -> Result<i64> {
        let entry = (at as f64, self.id.as_str());
        Ok(self
            .link
            .run(self.link.commands.zadd::<i64, _, _>(self.instances(), None, None, false, false, entry))
            .await?)
    }

    /// Dates this instance's last beat so that the others find it dead `grace` from
    /// now, and reap its presence then (a drained instance's grace period).
    pub async fn expire_after(&self, grace: Duration) -> Result<()> {
        self.stamp(now_ms() - DEAD_AFTER.as_millis() as i64 + grace.as_millis() as i64).await?;
        Ok(())
    }

    /// Other instances silent for longer than [`DEAD_AFTER`].
    pub async fn dead(&self) -> Result<Vec<String>> {
        self.others_beaten_between(f64::NEG_INFINITY, Self::dead_cutoff()).await
    }

    /// The other instances that beat within [`DEAD_AFTER`].
    pub async fn live(&self) -> Result<Vec<String>> {
        self.others_beaten_between(Self::dead_cutoff(), f64::INFINITY).await
    }

    /// The last beat (Unix ms) of an instance that is just dead now.
    fn dead_cutoff() -> f64 {
        (now_ms() - DEAD_AFTER.as_millis() as i64) as f64
    }

    /// The other instances whose last beat is within `min..=max` (Unix ms).
    async fn others_beaten_between(&self, min: f64, max: f64) -> Result<Vec<String>> {
        let ids: Vec<String> =
            self.link.run(self.link.commands.zrangebyscore(self.instances(), min, max, false, None)).await?;
        Ok(ids.into_iter().filter(|id| *id != self.id).collect())
    }

    /// Claims a dead instance for clean-up; false if another instance has.
    pub async fn claim(&self, dead: &str) -> Result<bool> {
        let key = self.link.key(format!("reaping:{dead}"));
        let set: Option<String> = self
            .link
            .run(self.link.commands.set(
                key,
                self.id.as_str(),
                Some(Expiration::EX(CLAIM_FOR)),
                Some(SetOptions::NX),
                false,
            ))
            .await?;
        Ok(set.is_some())
    }

    /// Removes an instance from the registry (a cleaned-up dead one, or this one on
    /// a clean exit).
    pub async fn remove(&self, id: &str) -> Result<()> {
        self.link.run(self.link.commands.zrem::<i64, _, _>(self.instances(), id)).await?;
        Ok(())
    }
}
