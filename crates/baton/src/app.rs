//! The state every request and every socket shares, built once at start.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use socketioxide::SocketIo;

use crate::adapter::{ChatAdapter, RedisLink};

use crate::auth::Tokens;
use crate::chat::{Chat, UserId};
use crate::config::Config;
use crate::drain::Drain;
use crate::error::{Code, Error, Result};
use crate::gateway::Namespaces;
use crate::reconnect::{Joins, Presence};

/// Everything a handler may need. Generic over the Socket.IO adapter only: the local
/// one on a single node, the Redis one in a cluster, chosen once at start.
pub struct App<A: ChatAdapter> {
    pub config: Config,
    pub chat: Chat,
    pub tokens: Tokens,
    pub io: SocketIo<A>,
    /// The channels each user joined per community: what reconnects rejoin.
    pub joins: Joins,
    /// Who is online in each channel.
    pub presence: Presence,
    /// PROTOCOL.md's per-user chat rate (20/s, burst 40 by default), shared by the
    /// socket `chat` event and REST posts so neither is a way around the other.
    pub chat_limiter: DefaultKeyedRateLimiter<UserId>,
    /// Dynamic namespaces with connects in flight, so refused ones can be removed.
    pub namespaces: Namespaces,
    /// Set when the instance stops taking new connections.
    draining: AtomicBool,
    /// The cluster's Redis, when this instance is one of several.
    pub redis: Option<RedisLink>,
    /// This app, weakly: what namespace handlers created later capture.
    me: Weak<App<A>>,
    /// This instance's name (the cluster registry's, and the drain report's).
    pub instance: String,
    /// The drain: requested, in progress, or its report.
    pub drain: Drain,
}

impl<A: ChatAdapter> App<A> {
    #[expect(clippy::too_many_arguments, reason = "the one place an instance's parts are put together")]
    pub fn new(
        config: Config,
        chat: Chat,
        tokens: Tokens,
        io: SocketIo<A>,
        joins: Joins,
        presence: Presence,
        redis: Option<RedisLink>,
        instance: String,
    ) -> Arc<Self> {
        let rate = NonZeroU32::new(config.chat_rate.max(1)).unwrap();
        let burst = NonZeroU32::new(config.chat_burst.max(1)).unwrap();
        let drain = Drain::new(config.drain_window, config.presence_grace, config.drain_lb_delay);
        Arc::new_cyclic(|me| Self {
            chat_limiter: RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst)),
            config,
            chat,
            tokens,
            io,
            joins,
            presence,
            namespaces: Namespaces::default(),
            draining: AtomicBool::new(false),
            redis,
            me: me.clone(),
            instance,
            drain,
        })
    }

    /// This app, strongly, while it lives.
    pub fn arc(&self) -> Option<Arc<Self>> {
        self.me.upgrade()
    }

    /// Takes one chat event from the user's allowance.
    pub fn check_chat_rate(&self, user: UserId) -> Result<()> {
        self.chat_limiter.check_key(&user).map_err(|_| {
            Error::new(
                Code::RateLimited,
                format!(
                    "at most {} chat events per second (burst {}); slow down",
                    self.config.chat_rate, self.config.chat_burst
                ),
            )
        })
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }
}
