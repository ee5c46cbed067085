//! What lets a client come back without losing anything: the channels each user
//! joined per community ([`Joins`], so a reconnect on any instance rejoins them),
//! who is online in each channel ([`Presence`]), and the `since` replay.
//!
//! Joins and presence are kept outside the socket that made them. On a single node
//! they live in this process; in a cluster, in Redis, behind the same interface,
//! with a [`Registry`] of live instances so a dead one's users go offline.

mod instances;
mod joins;
mod presence;
mod replay;

pub use instances::{BEAT, DEAD_AFTER, Registry};
pub use joins::Joins;
pub use presence::{Entry, Presence};
pub use replay::{REPLAY_LIMIT, Since, replay};
