//! The load balancer's agent port (`--lb-agent-listen`): a TCP port HAProxy's
//! `agent-check` connects to, to learn this instance's state in one line of words:
//! `up ready`, `up drain` while it drains or cannot reach its database or Redis
//! (HAProxy's DRAIN: sessions its cookie sends here still come, new ones go
//! elsewhere). Not HTTP, but what a load balancer asks of
//! the instance, as `/readyz` is, beside which it lives.
//!
//! The invariants: every accepted connection is answered the line of
//! [`Readiness`], the same judgement `/readyz` answers from, and nothing else (never
//! a weight); the answer does not wait for what the peer sends (HAProxy's
//! `agent-send`, if configured, is read and ignored); and a connection is gone
//! within [`ANSWERED_WITHIN`], so a stuck peer never holds a task.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::ops::Readiness;
use crate::app::App;

/// How long one agent connection may take in all: writing the line, then reading
/// (and discarding) what the peer sent until it closes.
pub const ANSWERED_WITHIN: Duration = Duration::from_secs(1);

/// Binds the agent port; a failure is a start-up error, as for the main listener.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr} (--lb-agent-listen)"))
}

/// Answers every connection to `listener` until the task is dropped.
pub async fn serve(mut listener: TcpListener, app: Arc<App>) {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "answering load balancer agent checks");
    }
    loop {
        // axum's accept: it retries, and backs off on errors such as EMFILE.
        let (stream, peer) = axum::serve::Listener::accept(&mut listener).await;
        let line = Readiness::of(&app).agent_line();
        tokio::spawn(async move {
            if let Err(e) = answer(stream, line).await {
                tracing::debug!(%peer, error = %e, "agent check connection");
            }
        });
    }
}

/// Writes `line` and closes, within [`ANSWERED_WITHIN`].
async fn answer(mut stream: TcpStream, line: &str) -> std::io::Result<()> {
    let exchange = async {
        stream.write_all(line.as_bytes()).await?;
        // FIN after the line. Then whatever the peer sent (or sends) is read until it
        // closes: a socket closed with unread input sends a reset, which can destroy
        // the line before the peer reads it.
        stream.shutdown().await?;
        let mut ignored = [0u8; 256];
        while stream.read(&mut ignored).await? > 0 {}
        Ok(())
    };
    tokio::time::timeout(ANSWERED_WITHIN, exchange).await.unwrap_or_else(|_| {
        Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "the peer did not close within the deadline"))
    })
}
