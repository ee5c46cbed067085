//! The gateway's part in keeping the cluster's shared state true: after a Redis
//! outage, put Redis back in step with this instance's sockets; and take the users
//! of dead instances offline.

use std::collections::BTreeMap;

use socketioxide::SocketIo;
use socketioxide::extract::SocketRef;

use super::io::on_io;
use super::{COMMUNITY_NS_PREFIX, channel_room, room_channel, session};
use crate::adapter::ChatAdapter;
use crate::app::App;
use crate::chat::{ChannelId, CommunityId, UserId};
use crate::reconnect::{Entry, Registry};

/// Every presence entry this instance's sockets stand for, with its socket: each
/// community socket in each of its channel rooms.
fn local_entries<A: ChatAdapter>(io: &SocketIo<A>) -> Vec<(Entry, SocketRef<A>)> {
    let mut entries = Vec::new();
    for ns in io.nsps().into_iter().filter(|ns| ns.ns_path().starts_with(COMMUNITY_NS_PREFIX)) {
        for socket in ns.sockets() {
            let Some(session) = session(&socket) else { continue };
            let Some(community) = session.community else { continue };
            for channel in socket.rooms().iter().filter_map(|r| room_channel(r)) {
                let entry = Entry { community, channel, user: session.user, socket: socket.id.to_string() };
                entries.push((entry, socket.clone()));
            }
        }
    }
    entries
}

/// An instance's socket entries, grouped by user and community.
type EntriesByUser<A> = BTreeMap<(UserId, CommunityId), Vec<(Entry, SocketRef<A>)>>;

/// Redis is back after an outage, during which enters, leaves, joins, and the
/// cluster-wide room leaves of removals may have been lost: take this instance's
/// sockets out of channels their users were removed from meanwhile, then re-file
/// presence and joins from the sockets, and announce the presence changes.
pub async fn resync(app: &App) {
    on_io!(app.fanout.io(), |io| resync_with(app, io).await)
}

async fn resync_with<A: ChatAdapter>(app: &App, io: &SocketIo<A>) {
    let mut kept = Vec::new();
    let mut by_user: EntriesByUser<A> = BTreeMap::new();
    for (entry, socket) in local_entries(io) {
        by_user.entry((entry.user, entry.community)).or_default().push((entry, socket));
    }
    for ((user, community), entries) in by_user {
        let channels: Vec<ChannelId> = entries.iter().map(|(e, _)| e.channel).collect();
        let members = match app.chat.member_channels_among(user, community, &channels).await {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "resync: membership check failed");
                return;
            }
        };
        for (entry, socket) in entries {
            if members.contains(&entry.channel) {
                kept.push(entry);
            } else {
                socket.leave(channel_room(entry.channel));
                super::root::follow_leaves(io, socket.id, vec![channel_room(entry.channel)]);
            }
        }
    }
    for e in &kept {
        if let Err(err) = app.fanout.joins.remember(e.user, e.community, &[e.channel]).await {
            tracing::warn!(error = %err, "resync of remembered joins failed");
            return;
        }
    }
    match app.fanout.presence.resync(&kept).await {
        Ok(changes) => {
            tracing::info!(sockets = kept.len(), changes = changes.len(), "presence resynced with redis");
            for (e, online) in changes {
                app.fanout.presence(e.community, e.channel, e.user, online).await;
            }
        }
        Err(e) => tracing::warn!(error = %e, "presence resync failed"),
    }
}

/// At start: presence a previous run under this instance's name left behind (a
/// crash, or a restart within the grace period) is taken away and announced.
pub async fn reap_own_leftovers(app: &App, registry: &Registry) {
    match app.fanout.presence.reap(registry.id()).await {
        Ok(offline) => {
            for e in offline {
                app.fanout.presence(e.community, e.channel, e.user, false).await;
            }
        }
        Err(e) => tracing::warn!(error = %e, "could not clear a previous run's presence"),
    }
}

/// Takes the users of instances that stopped beating offline, once per dead instance
/// across the cluster.
pub async fn reap_dead_instances(app: &App, registry: &Registry) {
    let dead = match registry.dead().await {
        Ok(dead) => dead,
        Err(e) => {
            tracing::warn!(error = %e, "could not read the registry");
            return;
        }
    };
    for id in dead {
        match registry.claim(&id).await {
            Ok(true) => {}
            Ok(false) => continue,
            Err(e) => {
                tracing::warn!(instance = id, error = %e, "could not claim a dead instance");
                continue;
            }
        }
        match app.fanout.presence.reap(&id).await {
            Ok(offline) => {
                tracing::info!(instance = id, offline = offline.len(), "took a dead instance's users offline");
                for e in offline {
                    app.fanout.presence(e.community, e.channel, e.user, false).await;
                }
                if let Err(e) = registry.remove(&id).await {
                    tracing::warn!(instance = id, error = %e, "could not remove a dead instance");
                }
            }
            Err(e) => tracing::warn!(instance = id, error = %e, "could not take a dead instance's users offline"),
        }
    }
}
