//! Namespace `/`: each user's own line. A socket here joins `user:{uid}` and gets
//! `unread` once, then `notify`, `read` and `membership` as they happen. It takes no
//! client events, so it has no event handlers.

use std::sync::Arc;

use socketioxide::extract::SocketRef;

use super::extract::Live;
use super::{Refusal, Session, authenticate, count_connect, refuse, session, user_room};
use crate::adapter::ChatAdapter;
use crate::app::App;
use crate::error::Code;
use crate::metrics as m;

/// Admission on `/` (from the shared middleware): draining, the token, the user's
/// sockets here, the user (still there).
pub(super) async fn admit<A: ChatAdapter>(
    app: &App,
    socket: &SocketRef<A>,
    auth: serde_json::Value,
) -> Result<(), Refusal> {
    if app.drain.is_draining() {
        return Err(refuse(Code::Draining, "this instance is draining; connect to another"));
    }
    let admitted = async {
        let user = authenticate(app, &auth)?;
        let slot = app.sockets.take(user, app.config.max_sockets_per_user)?;
        app.chat.user(user).await?;
        Ok::<_, crate::error::Error>((user, slot))
    };
    let (user, slot) = admitted.await.map_err(|e| {
        e.report("root connect");
        count_connect("root", e.code.as_str());
        Refusal(e)
    })?;
    socket.extensions.insert(Arc::new(slot));
    socket.extensions.insert(Arc::new(Session { user, community: None }));
    socket.on_disconnect(on_disconnect);
    count_connect("root", "accepted");
    Ok(())
}

pub(super) async fn on_connect<A: ChatAdapter>(socket: SocketRef<A>, Live(app): Live) {
    let Some(session) = session(&socket) else {
        return;
    };
    metrics::gauge!(m::SOCKETS, "namespace" => "/").increment(1.0);
    socket.join(user_room(session.user));
    match app.chat.unread(session.user).await {
        Ok(unread) => {
            if let Err(e) = socket.emit("unread", &unread) {
                tracing::debug!(sid = %socket.id, error = %e, "could not emit unread");
            }
        }
        Err(e) => {
            tracing::warn!(user = session.user, error = %e, "could not compute unread counts")
        }
    }
}

async fn on_disconnect() {
    metrics::gauge!(m::SOCKETS, "namespace" => "/").decrement(1.0)
}
