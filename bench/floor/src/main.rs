//! `baton-floor`: binds, says where on stdout, and serves until killed.

use std::time::Duration;

use clap::Parser;

/// The floor of baton's benchmark: a minimal in-memory fan-out server of the wire contract
/// (bench/floor/README.md).
#[derive(Debug, Parser)]
#[command(name = "baton-floor", version)]
struct Cli {
    /// Where to listen (REST and Socket.IO on one port); port 0 picks a free one.
    #[arg(long, default_value = "127.0.0.1:3000")]
    listen: std::net::SocketAddr,

    /// Milliseconds between the server's pings (Engine.IO's pingInterval; Socket.IO's default).
    #[arg(long, default_value_t = 25_000)]
    ping_interval_ms: u64,

    /// Milliseconds a ping may stay unanswered before the connection is closed (pingTimeout).
    #[arg(long, default_value_t = 20_000)]
    ping_timeout_ms: u64,

    /// Largest WebSocket message and REST body in bytes (baton's default).
    #[arg(long, default_value_t = 64 * 1024)]
    max_message: usize,
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let cli = Cli::parse();
    let listener = tokio::net::TcpListener::bind(cli.listen).await?;
    println!("baton-floor: listening on http://{}", listener.local_addr()?);
    let config = baton_floor::Config {
        ping_interval: Duration::from_millis(cli.ping_interval_ms),
        ping_timeout: Duration::from_millis(cli.ping_timeout_ms),
        max_message: cli.max_message,
    };
    baton_floor::run(listener, config).await
}
