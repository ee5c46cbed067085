//! The gateway's part in keeping the cluster's shared state true: after a Redis
//! outage, put Redis back in step with this instance's sockets; and take the users
//! of dead instances offline.

use std::sync::Arc;

use super::{COMMUNITY_NS_PREFIX, room_channel, session};
use crate::adapter::ChatAdapter;
use crate::app::App;
use crate::reconnect::{Entry, Registry};

/// Every presence entry this instance's sockets stand for: each community socket
/// in each of its channel rooms.
fn local_entries<A: ChatAdapter>(app: &App<A>) -> Vec<Entry> {
    let mut entries = Vec::new();
    for ns in app.io.nsps().into_iter().filter(|ns| ns.ns_path().starts_with(COMMUNITY_NS_PREFIX)) {
        for socket in ns.sockets() {
            let Some(session) = session(&socket) else { continue };
            let Some(community) = session.community else { continue };
            for channel in socket.rooms().iter().filter_map(|r| room_channel(r)) {
                entries.push(Entry { community, channel, user: session.user, socket: socket.id.to_string() });
            }
        }
    }
    entries
}

/// Redis is back after an outage, during which enters, leaves and joins may have
/// been lost: re-file this instance's presence and joins from its live sockets, and
/// announce the presence changes that makes.
pub async fn resync<A: ChatAdapter>(app: &Arc<App<A>>) {
    let entries = local_entries(app);
    for e in &entries {
        if let Err(err) = app.joins.remember(e.user, e.community, &[e.channel]).await {
            tracing::warn!(error = %err, "resync of remembered joins failed");
            return;
        }
    }
    match app.presence.resync(&entries).await {
        Ok(changes) => {
            tracing::info!(sockets = entries.len(), changes = changes.len(), "presence resynced with redis");
            for (e, online) in changes {
                app.announce_presence(e.community, e.channel, e.user, online, None).await;
            }
        }
        Err(e) => tracing::warn!(error = %e, "presence resync failed"),
    }
}

/// Takes the users of instances that stopped beating offline, once per dead instance
/// across the cluster.
pub async fn reap_dead_instances<A: ChatAdapter>(app: &Arc<App<A>>, registry: &Registry) {
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
        match app.presence.reap(&id).await {
            Ok(offline) => {
                tracing::info!(instance = id, offline = offline.len(), "took a dead instance's users offline");
                for e in offline {
                    app.announce_presence(e.community, e.channel, e.user, false, None).await;
                }
                if let Err(e) = registry.remove(&id).await {
                    tracing::warn!(instance = id, error = %e, "could not remove a dead instance");
                }
            }
            Err(e) => tracing::warn!(instance = id, error = %e, "could not take a dead instance's users offline"),
        }
    }
}
