//! What the two protocol test servers share: where they listen, how they serve, and
//! how they log.
//!
//! Both are socketioxide's e2e servers (`e2e/engineioxide/engineioxide.rs`,
//! `e2e/socketioxide/socketioxide.rs`) but for these two things, see
//! `tests/protocol/README.md`.

use std::error::Error;

use hyper::body::{Body, Incoming};
use hyper::server::conn::http1;
use hyper::service::Service;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;

/// Logs what `RUST_LOG` asks for, `info` by default (upstream logs everything at
/// `TRACE`; `RUST_LOG=trace` brings that back when a test fails).
pub fn init_tracing() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt().with_ansi(false).with_line_number(true).with_env_filter(filter).init();
}

/// Binds 127.0.0.1 on the port in `PROTOCOL_PORT` (0, the default, for a free one
/// chosen by the kernel) and prints `listening on 127.0.0.1:PORT` on stdout, the line
/// `scripts/test-protocol` waits for and reads the port from.
async fn listen() -> std::io::Result<TcpListener> {
    let port = match std::env::var("PROTOCOL_PORT") {
        Ok(port) => port
            .parse::<u16>()
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("PROTOCOL_PORT={port}: {e}")))?,
        Err(_) => 0,
    };
    let listener = TcpListener::bind(("127.0.0.1", port)).await?;
    println!("listening on {}", listener.local_addr()?);
    Ok(listener)
}

/// Serves `svc` on [`listen`]'s listener, one task per connection with upgrades, as
/// both upstream servers do.
pub async fn serve<S, B>(svc: S) -> std::io::Result<()>
where
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn Error + Send + Sync>>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn Error + Send + Sync>>,
{
    let listener = listen().await?;
    // We start a loop to continuously accept incoming connections
    loop {
        let (stream, _) = listener.accept().await?;

        // Use an adapter to access something implementing `tokio::io` traits as if they implement
        // `hyper::rt` IO traits.
        let io = TokioIo::new(stream);
        let svc = svc.clone();

        // Spawn a tokio task to serve multiple connections concurrently
        tokio::task::spawn(async move {
            if let Err(err) = http1::Builder::new().serve_connection(io, svc).with_upgrades().await {
                println!("Error serving connection: {:?}", err);
            }
        });
    }
}
