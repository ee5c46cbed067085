//! Namespace `/`: each user's own line. A socket here joins `user:{uid}` and gets
//! `unread` once, then `notify`, `read` and `membership` as they happen.

use std::sync::Arc;

use crate::adapter::ChatAdapter;
use socketioxide::extract::{SocketRef, TryData};
use socketioxide::handler::ConnectHandler;
use socketioxide_core::adapter::Spawnable;

use super::{Refusal, Session, authenticate, count_connect, refuse, session, stopped, user_room};
use crate::app::App;
use crate::error::Code;
use crate::metrics as m;

pub(super) fn register<A: ChatAdapter>(app: &Arc<App<A>>) {
    let admit_app = Arc::downgrade(app);
    let admit = move |socket: SocketRef<A>, TryData(auth): TryData<serde_json::Value>| {
        let app = admit_app.upgrade();
        async move { admit(&*app.ok_or_else(stopped)?, &socket, auth.unwrap_or_default()) }
    };
    let connect_app = Arc::downgrade(app);
    let on_connect = move |socket: SocketRef<A>| {
        let app = connect_app.upgrade();
        async move {
            if let Some(app) = app {
                on_connect(&app, socket).await
            }
        }
    };
    app.io.ns("/", on_connect.with(admit)).spawn();
}

fn admit<A: ChatAdapter>(app: &App<A>, socket: &SocketRef<A>, auth: serde_json::Value) -> Result<(), Refusal> {
    if app.is_draining() {
        return Err(refuse(Code::Draining, "this instance is draining; connect to another"));
    }
    let user = authenticate(app, &auth).map_err(|e| {
        count_connect("root", e.code.as_str());
        Refusal(e)
    })?;
    socket.extensions.insert(Arc::new(Session { user, community: None }));
    socket.on_disconnect(|| async { metrics::gauge!(m::SOCKETS, "namespace" => "/").decrement(1.0) });
    count_connect("root", "accepted");
    Ok(())
}

async fn on_connect<A: ChatAdapter>(app: &App<A>, socket: SocketRef<A>) {
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
