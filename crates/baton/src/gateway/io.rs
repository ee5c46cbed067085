//! The instance's Socket.IO server as one type, whichever adapter it runs on:
//! socketioxide's local adapter on a single node, the Redis one in a cluster. As the
//! store hides its two databases, [`Io`] hides the two adapters, so that nothing
//! above the gateway (`App`, `http`, the drain) is generic; code that needs the
//! typed server runs inside [`on_io!`], compiled once per adapter.

use socketioxide::adapter::LocalAdapter;
use socketioxide::extract::SocketRef;
use socketioxide::socket::Sid;
use socketioxide::{SocketIo, TransportType};

use crate::adapter::ClusterAdapter;

/// The Socket.IO server. Cheap to clone.
#[derive(Clone)]
pub enum Io {
    Local(SocketIo<LocalAdapter>),
    Cluster(SocketIo<ClusterAdapter>),
}

/// Runs `$body` with `$io` bound to the typed `SocketIo` (compiled once per adapter).
macro_rules! on_io {
    ($io:expr, |$s:ident| $body:expr) => {
        match $io {
            $crate::gateway::Io::Local($s) => $body,
            $crate::gateway::Io::Cluster($s) => $body,
        }
    };
}
pub(crate) use on_io;

impl From<SocketIo<LocalAdapter>> for Io {
    fn from(io: SocketIo<LocalAdapter>) -> Self {
        Io::Local(io)
    }
}

impl From<SocketIo<ClusterAdapter>> for Io {
    fn from(io: SocketIo<ClusterAdapter>) -> Self {
        Io::Cluster(io)
    }
}

impl Io {
    /// Whether a namespace of this path exists here.
    pub fn has_namespace(&self, path: &str) -> bool {
        on_io!(self, |io| io.of(path).is_some())
    }

    /// Sockets connected here, over every namespace (a client has one per namespace).
    pub fn socket_count(&self) -> usize {
        on_io!(self, |io| io.nsps().into_iter().map(|ns| ns.sockets().len()).sum())
    }

    /// Every socket connected here, of every namespace.
    pub fn sockets(&self) -> Vec<AnySocket> {
        on_io!(self, |io| io.nsps().into_iter().flat_map(|ns| ns.sockets()).map(AnySocket::from).collect())
    }

    /// Closes every connection.
    pub async fn close(&self) {
        on_io!(self, |io| io.close().await)
    }
}

/// One socket, whichever adapter it runs on: what the drain needs of it.
#[derive(Clone)]
pub enum AnySocket {
    Local(SocketRef<LocalAdapter>),
    Cluster(SocketRef<ClusterAdapter>),
}

macro_rules! on_any {
    ($socket:expr, |$s:ident| $body:expr) => {
        match $socket {
            AnySocket::Local($s) => $body,
            AnySocket::Cluster($s) => $body,
        }
    };
}

impl From<SocketRef<LocalAdapter>> for AnySocket {
    fn from(socket: SocketRef<LocalAdapter>) -> Self {
        AnySocket::Local(socket)
    }
}

impl From<SocketRef<ClusterAdapter>> for AnySocket {
    fn from(socket: SocketRef<ClusterAdapter>) -> Self {
        AnySocket::Cluster(socket)
    }
}

impl AnySocket {
    /// Its engine.io session id (shared by the sockets of one connection).
    pub fn id(&self) -> Sid {
        on_any!(self, |s| s.id)
    }

    pub fn connected(&self) -> bool {
        on_any!(self, |s| s.connected())
    }

    pub fn transport_type(&self) -> TransportType {
        on_any!(self, |s| s.transport_type())
    }

    /// A value the HTTP request that opened the session carried in its extensions.
    pub fn request_extension<T: Clone + Send + Sync + 'static>(&self) -> Option<T> {
        on_any!(self, |s| s.req_parts().extensions.get::<T>().cloned())
    }
}
