//! The Socket.IO adapters baton runs on. A single node uses socketioxide's local
//! adapter: rooms and broadcasts live in this process. A cluster instance uses
//! socketioxide-redis's, over baton's own Redis driver (`redis.rs`), whose
//! delivery between instances `probe.rs` checks. The transport
//! limits both apply are the listener's (`listener.rs`).

mod probe;
mod redis;

pub use probe::{DeliveryProbe, Verdict};
pub use redis::{ClusterAdapter, Health, RedisError, RedisLink, ResilientDriver};

/// The adapters baton runs on: socketioxide's local one (a single node) and the
/// Redis one (a cluster). `DefinedAdapter` is what lets namespaces be added at run
/// time with either.
pub trait ChatAdapter: socketioxide::adapter::Adapter + socketioxide_core::adapter::DefinedAdapter {}
impl<A: socketioxide::adapter::Adapter + socketioxide_core::adapter::DefinedAdapter> ChatAdapter for A {}
