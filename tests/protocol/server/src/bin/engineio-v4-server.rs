//! The server of the Engine.IO v4 protocol test suite (tests/protocol/engineio), as
//! socketioxide's e2e/engineioxide/engineioxide.rs (built without its `v3` feature):
//! every message and binary message is echoed back. Differences: the port
//! (`PROTOCOL_PORT`) and the log level (`RUST_LOG`, default info), see baton_protocol_servers.

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use engineioxide::{
    Str,
    config::EngineIoConfig,
    handler::EngineIoHandler,
    service::EngineIoService,
    socket::{DisconnectReason, Socket},
};

#[derive(Debug, Clone)]
struct MyHandler;

impl EngineIoHandler for MyHandler {
    type Data = ();

    fn on_connect(self: Arc<Self>, socket: Arc<Socket<Self::Data>>) {
        println!("socket connect {}", socket.id);
    }

    fn on_disconnect(&self, socket: Arc<Socket<Self::Data>>, reason: DisconnectReason) {
        println!("socket disconnect {}: {:?}", socket.id, reason);
    }

    fn on_message(self: &Arc<Self>, msg: Str, socket: Arc<Socket<Self::Data>>) {
        println!("Ping pong message {:?}", msg);
        socket.emit(msg).ok();
    }

    fn on_binary(self: &Arc<Self>, data: Bytes, socket: Arc<Socket<Self::Data>>) {
        println!("Ping pong binary message {:?}", data);
        socket.emit_binary(data).ok();
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    baton_protocol_servers::init_tracing();

    let config = EngineIoConfig::builder()
        .ping_interval(Duration::from_millis(300))
        .ping_timeout(Duration::from_millis(200))
        .max_payload(1e6 as u64)
        .build();

    let svc = EngineIoService::with_config(Arc::new(MyHandler), config);

    tracing::info!("Starting server with v4 protocol");

    baton_protocol_servers::serve(svc).await?;
    Ok(())
}
