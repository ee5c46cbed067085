//! Who is online in each channel: users with at least one live socket in the
//! channel's room. Entries are per socket, so the first socket to enter and the
//! last to leave are known exactly, whatever order sockets come and go in.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use crate::chat::{ChannelId, UserId};
use crate::error::Result;

#[derive(Debug)]
pub struct Presence {
    backend: Backend,
}

type Sockets = HashMap<UserId, HashSet<String>>;

#[derive(Debug)]
enum Backend {
    Local(Mutex<HashMap<ChannelId, Sockets>>),
}

impl Presence {
    pub fn local() -> Self {
        Self {
            backend: Backend::Local(Mutex::default()),
        }
    }

    /// Records the socket in the channel; true if it is the user's first there.
    pub async fn enter(&self, channel: ChannelId, user: UserId, socket: &str) -> Result<bool> {
        match &self.backend {
            Backend::Local(map) => {
                let mut map = map.lock().unwrap();
                let sockets = map.entry(channel).or_default().entry(user).or_default();
                let first = sockets.is_empty();
                Ok(sockets.insert(socket.to_owned()) && first)
            }
        }
    }

    /// Removes the socket from the channel; true if it was the user's last there.
    pub async fn leave(&self, channel: ChannelId, user: UserId, socket: &str) -> Result<bool> {
        match &self.backend {
            Backend::Local(map) => {
                let mut map = map.lock().unwrap();
                let Some(users) = map.get_mut(&channel) else {
                    return Ok(false);
                };
                let Some(sockets) = users.get_mut(&user) else {
                    return Ok(false);
                };
                let last = sockets.remove(socket) && sockets.is_empty();
                if sockets.is_empty() {
                    users.remove(&user);
                }
                if users.is_empty() {
                    map.remove(&channel);
                }
                Ok(last)
            }
        }
    }

    /// Removes every socket of the user from the channel (the user was removed from
    /// it); true if the user was online there.
    pub async fn remove_user(&self, channel: ChannelId, user: UserId) -> Result<bool> {
        match &self.backend {
            Backend::Local(map) => {
                let mut map = map.lock().unwrap();
                let Some(users) = map.get_mut(&channel) else {
                    return Ok(false);
                };
                let was = users.remove(&user).is_some_and(|s| !s.is_empty());
                if users.is_empty() {
                    map.remove(&channel);
                }
                Ok(was)
            }
        }
    }

    pub async fn online(&self, channel: ChannelId) -> Result<Vec<UserId>> {
        match &self.backend {
            Backend::Local(map) => {
                let mut users: Vec<UserId> = map
                    .lock()
                    .unwrap()
                    .get(&channel)
                    .map(|u| u.keys().copied().collect())
                    .unwrap_or_default();
                users.sort_unstable();
                Ok(users)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn only_the_first_socket_in_and_the_last_out_change_presence() {
        let p = Presence::local();
        assert!(p.enter(1, 7, "a").await.unwrap());
        assert!(!p.enter(1, 7, "b").await.unwrap());
        assert!(!p.enter(1, 7, "b").await.unwrap());
        assert_eq!(p.online(1).await.unwrap(), vec![7]);
        assert!(!p.leave(1, 7, "a").await.unwrap());
        assert!(p.leave(1, 7, "b").await.unwrap());
        assert!(!p.leave(1, 7, "b").await.unwrap());
        assert!(p.online(1).await.unwrap().is_empty());
    }
}
