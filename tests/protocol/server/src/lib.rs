//! What the two protocol test servers share: where they listen and how they log.
//!
//! Both are socketioxide's e2e servers (`e2e/engineioxide/engineioxide.rs`,
//! `e2e/socketioxide/socketioxide.rs`) but for these two things, see
//! `tests/protocol/README.md`.

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
pub async fn listen() -> std::io::Result<TcpListener> {
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
