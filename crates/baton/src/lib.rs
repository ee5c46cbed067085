//! baton: a Socket.IO chat server built so that deploys never drop a conversation.
//!
//! A map of the crate:
//! - [`config`]: the command line and environment (`baton --help`).
//! - [`server`]: start-up, serving, shut-down.
//! - [`app`]: the context every handler receives: the parts, wired (no behaviour).
//! - [`chat`]: the domain (users, communities, channels, messages) and its rules.
//!   Knows nothing of HTTP or Socket.IO.
//! - [`store`]: the database (SQLite or PostgreSQL), its queries by aggregate and the
//!   group commit of new messages.
//! - [`http`]: the REST API and operations endpoints, and the load balancer's agent
//!   port.
//! - [`gateway`]: the Socket.IO namespaces and events, and the broadcasts that
//!   follow every change ([`gateway`]'s fanout is where "durable, then broadcast" is).
//! - [`reconnect`]: remembered joins, presence, and the `since` replay.
//! - [`adapter`]: the Socket.IO adapter (local or Redis) and transport limits.
//! - [`drain`]: taking an instance out of service, clients moved a few at a time;
//!   and closing one transport with a drain's guarantees.
//! - [`shed`]: moving a share of an instance's clients away while it keeps serving.
//! - [`listener`]: the TCP listener and its connections, transport limits, memory trim.
//! - [`operator`]: `baton drain` and `baton status`, over an instance's admin API.
//! - [`auth`]: password hashes and session tokens.
//! - [`error`]: the protocol's error codes.
//!
//! Layers, lowest first; a module uses only those below it:
//! 1. [`config`], [`error`], [`metrics`], [`listener`];
//! 2. [`store`];
//! 3. [`auth`] (hashes, tokens; its secret kept in the store);
//! 4. [`chat`];
//! 5. [`reconnect`], [`adapter`];
//! 6. [`gateway`]'s `io` and `fanout` (Socket.IO and broadcasting);
//! 7. the handlers: [`http`], [`gateway`]'s namespaces, [`drain`], [`shed`]. They receive
//!    [`app::App`], the context type: it holds the parts of the layers below and
//!    has no behaviour of its own;
//! 8. [`server`], which builds the `App` and serves; [`operator`], the commands that
//!    talk to a running one.

pub mod adapter;
pub mod app;
pub mod auth;
pub mod chat;
pub mod config;
pub mod drain;
pub mod error;
pub mod gateway;
pub mod http;
pub mod listener;
pub mod metrics;
pub mod operator;
pub mod reconnect;
pub mod server;
pub mod shed;
pub mod store;

pub use config::Config;
pub use server::Server;
