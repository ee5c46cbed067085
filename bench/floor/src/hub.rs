//! Everything the floor knows, in memory: users and their tokens, communities, channels
//! with their members, event sequence and room, the joins each user asked to be
//! remembered, and the live connections (for the heartbeat).
//!
//! Invariant: a channel's sequence, its members and its room change only under that
//! channel's lock, and a message is numbered and delivered to the room under it too, so
//! every socket of a room sees the channel's events in eventSeq order. Locks are taken in
//! one order: accounts, then the channel table, then one channel, then a peer's outbox.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, Weak};
use std::time::Duration;

use tokio_tungstenite::tungstenite::Bytes;

use crate::peer::Peer;

pub type UserId = i64;
pub type CommunityId = i64;
pub type ChannelId = i64;

/// The settings a connection needs.
#[derive(Debug, Clone)]
pub struct Config {
    pub ping_interval: Duration,
    pub ping_timeout: Duration,
    /// Largest WebSocket message (and REST body) accepted, in bytes.
    pub max_message: usize,
}

pub struct Hub {
    pub config: Config,
    pub accounts: Mutex<Accounts>,
    /// Read on every chat event, written only when a channel is created.
    channels: RwLock<HashMap<ChannelId, Arc<Channel>>>,
    /// Every open WebSocket connection, for the heartbeat.
    peers: Mutex<HashMap<u64, Arc<Peer>>>,
    next_peer: AtomicU64,
    next_message: AtomicI64,
}

#[derive(Default)]
pub struct Accounts {
    /// By id - 1.
    pub users: Vec<User>,
    pub by_name: HashMap<String, UserId>,
    pub tokens: HashMap<String, UserId>,
    pub communities: HashMap<CommunityId, Community>,
    /// The channels a user joined in a community, rejoined on their next connect there.
    pub remembered: HashMap<(UserId, CommunityId), BTreeSet<ChannelId>>,
    next_community: CommunityId,
    next_channel: ChannelId,
}

pub struct User {
    pub id: UserId,
    pub username: String,
    pub display_name: String,
    /// As given: the floor hashes nothing (README.md: registration is set-up, not measured).
    pub password: String,
}

pub struct Community {
    pub id: CommunityId,
    pub name: String,
    pub owner: UserId,
    pub members: HashSet<UserId>,
}

pub struct Channel {
    pub id: ChannelId,
    pub community: CommunityId,
    pub name: String,
    pub private: bool,
    pub state: Mutex<ChannelState>,
}

#[derive(Default)]
pub struct ChannelState {
    pub members: HashSet<UserId>,
    /// The channel's event sequence: the eventSeq (and seq) of its last message.
    pub last_seq: i64,
    /// The sockets joined to the channel, one per connection (a connection has at most one
    /// socket in a community's namespace, and a channel belongs to one community).
    pub room: Vec<Arc<Peer>>,
    /// (sender, clientMsgId) -> the chatInfo JSON of the message it first wrote.
    pub written: HashMap<(UserId, String), Bytes>,
}

impl Hub {
    pub fn new(config: Config) -> Hub {
        Hub {
            config,
            accounts: Mutex::new(Accounts { next_community: 1, next_channel: 1, ..Accounts::default() }),
            channels: RwLock::new(HashMap::new()),
            peers: Mutex::new(HashMap::new()),
            next_peer: AtomicU64::new(1),
            next_message: AtomicI64::new(1),
        }
    }

    pub fn accounts(&self) -> MutexGuard<'_, Accounts> {
        self.accounts.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn channel(&self, id: ChannelId) -> Option<Arc<Channel>> {
        self.channels.read().unwrap_or_else(|p| p.into_inner()).get(&id).cloned()
    }

    /// A new channel of `community`, with `creator` as its first member (the caller holds
    /// the accounts, so ids follow creation order).
    pub fn create_channel(
        &self,
        accounts: &mut Accounts,
        community: CommunityId,
        name: String,
        private: bool,
        creator: UserId,
    ) -> Arc<Channel> {
        let id = accounts.next_channel;
        accounts.next_channel += 1;
        let state = ChannelState { members: HashSet::from([creator]), ..ChannelState::default() };
        let channel = Arc::new(Channel { id, community, name, private, state: Mutex::new(state) });
        self.channels.write().unwrap_or_else(|p| p.into_inner()).insert(id, channel.clone());
        channel
    }

    /// The channels of `community`, by id.
    pub fn channels_of(&self, community: CommunityId) -> Vec<Arc<Channel>> {
        let channels = self.channels.read().unwrap_or_else(|p| p.into_inner());
        let mut list: Vec<_> = channels.values().filter(|c| c.community == community).cloned().collect();
        list.sort_by_key(|c| c.id);
        list
    }

    pub fn next_message_id(&self) -> i64 {
        self.next_message.fetch_add(1, Ordering::Relaxed)
    }

    pub fn add_peer(&self, stream: tokio::net::TcpStream) -> Arc<Peer> {
        let peer = Arc::new(Peer::new(self.next_peer.fetch_add(1, Ordering::Relaxed), stream));
        self.peers.lock().unwrap_or_else(|p| p.into_inner()).insert(peer.id, peer.clone());
        peer
    }

    pub fn remove_peer(&self, id: u64) {
        self.peers.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
    }

    /// Every open connection, held weakly: a connection that ends meanwhile closes its
    /// socket at once instead of when the holder lets go.
    pub fn peers(&self) -> Vec<Weak<Peer>> {
        self.peers.lock().unwrap_or_else(|p| p.into_inner()).values().map(Arc::downgrade).collect()
    }
}

impl Accounts {
    pub fn user(&self, id: UserId) -> Option<&User> {
        usize::try_from(id - 1).ok().and_then(|i| self.users.get(i))
    }

    pub fn new_community(&mut self, name: String, owner: UserId) -> &Community {
        let id = self.next_community;
        self.next_community += 1;
        let community = Community { id, name, owner, members: HashSet::from([owner]) };
        self.communities.entry(id).or_insert(community)
    }
}

impl Channel {
    pub fn lock(&self) -> MutexGuard<'_, ChannelState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl ChannelState {
    /// Puts `peer` in the room once.
    pub fn enter(&mut self, peer: &Arc<Peer>) {
        if !self.room.iter().any(|p| p.id == peer.id) {
            self.room.push(peer.clone());
        }
    }

    pub fn leave(&mut self, peer: u64) {
        if let Some(i) = self.room.iter().position(|p| p.id == peer) {
            self.room.swap_remove(i);
        }
    }
}
