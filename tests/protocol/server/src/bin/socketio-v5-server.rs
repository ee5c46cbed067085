//! The server of the Socket.IO v5 protocol test suite (tests/protocol/socketio), as
//! socketioxide's e2e/socketioxide/socketioxide.rs built for v5 with the common (JSON)
//! parser, baton's: namespaces / and /custom send the auth payload back and answer
//! `message`, `message-with-ack` and `emit-with-ack`. Differences: the port
//! (`PROTOCOL_PORT`, on 127.0.0.1 rather than 0.0.0.0) and the log level (`RUST_LOG`,
//! default info), see baton_protocol_servers.

use std::time::Duration;

use rmpv::Value;
use socketioxide::{
    SocketIo,
    extract::{AckSender, Data, SocketRef},
};
use tracing::info;

async fn on_connect(socket: SocketRef, Data(data): Data<Value>) {
    info!(?data, ns = socket.ns(), ?socket.id, "Socket.IO connected:");
    socket.emit("auth", &data).ok();

    socket.on("message", async |socket: SocketRef, Data::<[Value; 3]>(data)| {
        info!(?data, "Received event:");
        socket.emit("message-back", &data).unwrap();
    });

    // keep this handler async to test async message handlers
    socket.on("message-with-ack", async |Data::<[Value; 3]>(data), ack: AckSender| {
        info!(?data, "Received event:");
        ack.send(&data).unwrap();
    });

    socket.on("emit-with-ack", async |s: SocketRef, Data::<[Value; 3]>(data)| {
        info!(?data, "Received event:");
        let ack: [Value; 3] = s.emit_with_ack("emit-with-ack", &data).unwrap().await.unwrap();
        s.emit("emit-with-ack", &ack).unwrap();
    });
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    baton_protocol_servers::init_tracing();

    let (svc, io) = SocketIo::builder()
        .ping_interval(Duration::from_millis(300))
        .ping_timeout(Duration::from_millis(200))
        .ack_timeout(Duration::from_millis(200))
        .connect_timeout(Duration::from_millis(1000))
        .max_payload(1e6 as u64)
        .build_svc();

    io.ns("/", on_connect);
    io.ns("/custom", on_connect);

    info!("Starting server with v5 protocol and common parser");

    baton_protocol_servers::serve(svc).await?;
    Ok(())
}
