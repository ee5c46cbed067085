//! baton: a Socket.IO chat server built so that deploys never drop a conversation.
//!
//! A map of the crate:
//! - [`config`]: the command line and environment (`baton --help`).
//! - [`server`]: start-up, serving, shut-down.
//! - [`chat`]: the domain (users, communities, channels, messages), its rules and
//!   its store (SQLite or PostgreSQL). Knows nothing of HTTP or Socket.IO.
//! - [`http`]: the REST API and operations endpoints.
//! - [`gateway`]: the Socket.IO namespaces and events, and the broadcasts that
//!   follow every change ([`gateway`]'s fanout is where "durable, then broadcast" is).
//! - [`reconnect`]: remembered joins, presence, and the `since` replay.
//! - [`adapter`]: the Socket.IO adapter (local or Redis) and transport limits.
//! - [`drain`]: taking an instance out of service, clients moved a few at a time.
//! - [`auth`]: password hashes and session tokens.
//! - [`error`]: the protocol's error codes.

pub mod adapter;
pub mod app;
pub mod auth;
pub mod chat;
pub mod config;
pub mod drain;
pub mod error;
pub mod gateway;
pub mod http;
pub mod metrics;
pub mod reconnect;
pub mod server;

pub use config::Config;
pub use server::Server;
