//! Who is online in each channel: users with at least one live socket in the
//! channel's room, on any instance. Entries are per socket, so the first socket to
//! enter and the last to leave are known exactly, whatever order sockets come and
//! go in, across instances.
//!
//! In Redis (scripts in `lua/`, each one atomic):
//! - `{prefix}:presence:{<channel>}:{user}`: the user's sockets there, `instance/sid`;
//! - `{prefix}:online:{<channel>}`: the users online there;
//! - `{prefix}:instance:{id}:presence`: every entry an instance made, so that when it
//!   dies another instance can take its users offline ([`Presence::reap`]), and so
//!   that after a Redis outage it can put Redis back in step with its sockets
//!   ([`Presence::resync`]), and with the entries of sockets a shed moved, which
//!   stay for the grace period ([`Presence::linger`]).
//!
//! A channel's two keys share the hash tag `{<channel>}`, so the scripts touch one
//! hash slot and run on a Redis Cluster. The instance's index lives in another
//! slot, so it is written outside the scripts, in the order that keeps the
//! invariant: the index holds at least every entry filed in a channel (an entry is
//! indexed before it enters, unindexed after it leaves). A crash in between leaves
//! an index entry without a channel entry, which a reap or resync removes as a
//! no-op leave; never a channel entry no index names, which nothing would remove.

use std::collections::{HashMap, HashSet};
use std::sync::{LazyLock, Mutex};

use fred::prelude::*;
use fred::types::scripts::Script;

use crate::adapter::RedisLink;
use crate::chat::{ChannelId, CommunityId, UserId};
use crate::error::Result;

static ENTER: LazyLock<Script> = LazyLock::new(|| Script::from_lua(include_str!("lua/presence_enter.lua")));
static LEAVE: LazyLock<Script> = LazyLock::new(|| Script::from_lua(include_str!("lua/presence_leave.lua")));
static REMOVE_USER: LazyLock<Script> = LazyLock::new(|| Script::from_lua(include_str!("lua/presence_remove_user.lua")));

/// One socket's presence in one channel.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Entry {
    pub community: CommunityId,
    pub channel: ChannelId,
    pub user: UserId,
    pub socket: String,
}

impl Entry {
    /// The instance index's form: `community|channel|user|socket`.
    fn encode(&self) -> String {
        format!("{}|{}|{}|{}", self.community, self.channel, self.user, self.socket)
    }

    fn decode(s: &str) -> Option<Entry> {
        let mut parts = s.splitn(4, '|');
        Some(Entry {
            community: parts.next()?.parse().ok()?,
            channel: parts.next()?.parse().ok()?,
            user: parts.next()?.parse().ok()?,
            socket: parts.next()?.to_owned(),
        })
    }
}

#[derive(Debug)]
pub struct Presence {
    backend: Backend,
    /// Entries of sockets moved by a shed, kept for the grace period although
    /// their socket is gone (see [`Presence::linger`]).
    lingering: Mutex<HashSet<Entry>>,
}

type Sockets = HashMap<UserId, HashSet<String>>;

#[derive(Debug)]
enum Backend {
    Local(Mutex<HashMap<ChannelId, Sockets>>),
    Redis { link: RedisLink, instance: String },
}

impl Presence {
    pub fn local() -> Self {
        Self { backend: Backend::Local(Mutex::default()), lingering: Mutex::default() }
    }

    /// Presence kept in Redis, this instance's entries filed under `instance`.
    pub fn redis(link: RedisLink, instance: String) -> Self {
        Self { backend: Backend::Redis { link, instance }, lingering: Mutex::default() }
    }

    /// The channel's two keys, in one hash slot: the user's sockets there, and the
    /// users online there.
    fn channel_keys(link: &RedisLink, channel: ChannelId, user: UserId) -> Vec<String> {
        vec![link.key(format!("presence:{{{channel}}}:{user}")), Self::online_key(link, channel)]
    }

    fn online_key(link: &RedisLink, channel: ChannelId) -> String {
        link.key(format!("online:{{{channel}}}"))
    }

    fn index_key(link: &RedisLink, instance: &str) -> String {
        link.key(format!("instance:{instance}:presence"))
    }

    /// Runs an enter or leave script on the channel's keys for the entry made by
    /// `instance`; true if the user's presence there changed.
    async fn script(link: &RedisLink, script: &Script, instance: &str, e: &Entry) -> Result<bool> {
        let keys = Self::channel_keys(link, e.channel, e.user);
        let args = vec![format!("{instance}/{}", e.socket), e.user.to_string()];
        let changed: i64 = link.run(script.evalsha_with_reload(&link.commands, keys, args)).await?;
        Ok(changed == 1)
    }

    /// Files the entry: indexed first, then entered (the module's invariant).
    async fn file(link: &RedisLink, instance: &str, e: &Entry) -> Result<bool> {
        link.run(link.commands.sadd::<i64, _, _>(Self::index_key(link, instance), e.encode())).await?;
        Self::script(link, &ENTER, instance, e).await
    }

    /// Unfiles the entry: left first, then unindexed.
    async fn unfile(link: &RedisLink, instance: &str, e: &Entry) -> Result<bool> {
        let changed = Self::script(link, &LEAVE, instance, e).await?;
        link.run(link.commands.srem::<i64, _, _>(Self::index_key(link, instance), e.encode())).await?;
        Ok(changed)
    }

    /// Records the socket in the channel; true if it is the user's first there.
    pub async fn enter(&self, e: &Entry) -> Result<bool> {
        match &self.backend {
            Backend::Local(map) => {
                let mut map = map.lock().unwrap();
                let sockets = map.entry(e.channel).or_default().entry(e.user).or_default();
                let first = sockets.is_empty();
                Ok(sockets.insert(e.socket.clone()) && first)
            }
            Backend::Redis { link, instance } => Self::file(link, instance, e).await,
        }
    }

    /// Removes the socket from the channel; true if it was the user's last there.
    pub async fn leave(&self, e: &Entry) -> Result<bool> {
        match &self.backend {
            Backend::Local(map) => {
                let mut map = map.lock().unwrap();
                let Some(users) = map.get_mut(&e.channel) else { return Ok(false) };
                let Some(sockets) = users.get_mut(&e.user) else { return Ok(false) };
                let last = sockets.remove(&e.socket) && sockets.is_empty();
                if sockets.is_empty() {
                    users.remove(&e.user);
                }
                if users.is_empty() {
                    map.remove(&e.channel);
                }
                Ok(last)
            }
            Backend::Redis { link, instance } => Self::unfile(link, instance, e).await,
        }
    }

    /// Keeps the entries of a socket that is gone as if it were still here (a shed
    /// moved it; its user is reconnecting), until [`Presence::leave_lingering`]: a
    /// resync meanwhile counts them as this instance's, not as stale.
    pub fn linger(&self, entries: &[Entry]) {
        self.lingering.lock().unwrap().extend(entries.iter().cloned());
    }

    /// Ends the lingering of `e` and removes it, as [`Presence::leave`].
    pub async fn leave_lingering(&self, e: &Entry) -> Result<bool> {
        self.lingering.lock().unwrap().remove(e);
        self.leave(e).await
    }

    /// Removes every socket of the user from the channel (the user was removed from
    /// it); true if the user was online there.
    pub async fn remove_user(&self, channel: ChannelId, user: UserId) -> Result<bool> {
        match &self.backend {
            Backend::Local(map) => {
                let mut map = map.lock().unwrap();
                let Some(users) = map.get_mut(&channel) else { return Ok(false) };
                let was = users.remove(&user).is_some_and(|s| !s.is_empty());
                if users.is_empty() {
                    map.remove(&channel);
                }
                Ok(was)
            }
            Backend::Redis { link, .. } => {
                let keys = Self::channel_keys(link, channel, user);
                let was: i64 =
                    link.run(REMOVE_USER.evalsha_with_reload(&link.commands, keys, vec![user.to_string()])).await?;
                Ok(was == 1)
            }
        }
    }

    /// The users online in the channel, ascending.
    pub async fn online(&self, channel: ChannelId) -> Result<Vec<UserId>> {
        let mut users: Vec<UserId> = match &self.backend {
            Backend::Local(map) => {
                map.lock().unwrap().get(&channel).map(|u| u.keys().copied().collect()).unwrap_or_default()
            }
            Backend::Redis { link, .. } => link.run(link.commands.smembers(Self::online_key(link, channel))).await?,
        };
        users.sort_unstable();
        Ok(users)
    }

    /// Puts Redis back in step with this instance's sockets (after an outage, when
    /// enters and leaves may have been lost). Returns the presence changes to
    /// announce: each entry with `true` for a user who came online, `false` for one
    /// who went offline. A single node has nothing to resync.
    pub async fn resync(&self, local: &[Entry]) -> Result<Vec<(Entry, bool)>> {
        let Backend::Redis { link, instance } = &self.backend else { return Ok(Vec::new()) };
        let lingering: Vec<Entry> = self.lingering.lock().unwrap().iter().cloned().collect();
        let local: Vec<Entry> = local.iter().cloned().chain(lingering).collect();
        let local = &local[..];
        let filed: Vec<String> = link.run(link.commands.smembers(Self::index_key(link, instance))).await?;
        let filed: HashSet<Entry> = filed.iter().filter_map(|s| Entry::decode(s)).collect();
        let local_set: HashSet<&Entry> = local.iter().collect();
        let mut changes = Vec::new();
        for stale in filed.iter().filter(|e| !local_set.contains(e)) {
            if Self::unfile(link, instance, stale).await? {
                changes.push((stale.clone(), false));
            }
        }
        for missing in local.iter().filter(|e| !filed.contains(*e)) {
            if Self::file(link, instance, missing).await? {
                changes.push((missing.clone(), true));
            }
        }
        Ok(changes)
    }

    /// Takes a dead instance's sockets out of every channel; returns the entries
    /// whose user went offline with them. The caller has claimed the instance.
    pub async fn reap(&self, dead: &str) -> Result<Vec<Entry>> {
        let Backend::Redis { link, .. } = &self.backend else { return Ok(Vec::new()) };
        let index = Self::index_key(link, dead);
        let filed: Vec<String> = link.run(link.commands.smembers(&index)).await?;
        let mut offline = Vec::new();
        // Each entry leaves its channel; the index goes whole after.
        for entry in filed.iter().filter_map(|s| Entry::decode(s)) {
            if Self::script(link, &LEAVE, dead, &entry).await? {
                offline.push(entry);
            }
        }
        link.run(link.commands.del::<i64, _>(index)).await?;
        Ok(offline)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(user: UserId, socket: &str) -> Entry {
        Entry { community: 1, channel: 1, user, socket: socket.into() }
    }

    #[tokio::test]
    async fn only_the_first_socket_in_and_the_last_out_change_presence() {
        let p = Presence::local();
        assert!(p.enter(&e(7, "a")).await.unwrap());
        assert!(!p.enter(&e(7, "b")).await.unwrap());
        assert!(!p.enter(&e(7, "b")).await.unwrap());
        assert_eq!(p.online(1).await.unwrap(), vec![7]);
        assert!(!p.leave(&e(7, "a")).await.unwrap());
        assert!(p.leave(&e(7, "b")).await.unwrap());
        assert!(!p.leave(&e(7, "b")).await.unwrap());
        assert!(p.online(1).await.unwrap().is_empty());
    }

    #[test]
    fn entries_survive_their_index_encoding() {
        let entry = Entry { community: 3, channel: 9, user: 12, socket: "aB-c|d".into() };
        assert_eq!(Entry::decode(&entry.encode()), Some(entry));
    }
}
