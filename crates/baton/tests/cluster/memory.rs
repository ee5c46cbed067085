//! Memory after floods of sessions that never become sockets: handshakes that never
//! connect a namespace, long-polling sessions that never poll, upgrades that never
//! finish, and WebSocket messages far over the size limit. The server closes them
//! all on its own timers; its resident memory must then come back near where it
//! was. One baton process of the test's own (SQLite), so that its RSS is its own.

use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

use crate::common::{self, Rest, WAIT};
use crate::harness;

/// The process's resident set, in KiB (`VmRSS` in /proc).
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floods_of_sessions_that_never_become_sockets_give_their_memory_back() {
    const NEVER_CONNECT: usize = 1000;
    const NEVER_POLL: usize = 10_000;
    const NEVER_UPGRADE: usize = 200;
    const TOO_BIG: usize = 5;

    let port = harness::free_port();
    let base = format!("http://127.0.0.1:{port}");
    let ws_base = format!("ws://127.0.0.1:{port}");
    let dir = tempfile::tempdir().unwrap();
    let timers = [
        ("BATON_PING_INTERVAL", "3s"),
        ("BATON_PING_TIMEOUT", "3s"),
        ("BATON_CONNECT_TIMEOUT", "6s"),
        ("BATON_UPGRADE_TIMEOUT", "6s"),
    ];
    let mut instance = harness::serve_alone(port, dir.path(), &timers);
    let pid = instance.id().unwrap();
    let rest = Rest::new(base.clone());
    common::eventually("the instance is ready", WAIT, async || {
        reqwest::get(format!("{base}/readyz")).await.is_ok_and(|r| r.status() == 200)
    })
    .await;
    // Warm up: a user chatting, so the baseline has every pool and cache in use.
    let (alice, _bob, cid, ch) = rest.alice_and_bob_in_general().await;
    for i in 0..20 {
        let s = rest.joined(cid, &alice, &[ch]).await;
        common::chat(&s, ch, &format!("warm-up {i}")).await;
        s.close().await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let baseline = rss_kib(pid);

    let started = Instant::now();
    let engine = "/socket.io/?EIO=4";
    // 1. WebSocket handshakes that never CONNECT a namespace.
    let mut idle = Vec::new();
    for _ in 0..NEVER_CONNECT / 100 {
        let batch = futures::future::join_all((0..100).map(|_| async {
            let (mut ws, _) = tokio_tungstenite::connect_async(format!("{ws_base}{engine}&transport=websocket"))
                .await
                .expect("handshake");
            ws.next().await.unwrap().unwrap(); // the open packet
            ws
        }))
        .await;
        idle.extend(batch);
    }
    // 2. Long-polling sessions that never poll.
    let http = reqwest::Client::new();
    let mut sids = Vec::new();
    for chunk in 0..NEVER_POLL / 50 {
        let batch = futures::future::join_all((0..50).map(|_| async {
            let body =
                http.get(format!("{base}{engine}&transport=polling")).send().await.unwrap().text().await.unwrap();
            body.split("\"sid\":\"").nth(1).and_then(|r| r.split('"').next()).unwrap().to_owned()
        }))
        .await;
        if chunk < NEVER_UPGRADE / 50 {
            sids.extend(batch);
        }
    }
    // 3. Upgrades that never finish: the probe, and no upgrade packet.
    for sid in &sids {
        let (mut ws, _) =
            tokio_tungstenite::connect_async(format!("{ws_base}{engine}&transport=websocket&sid={sid}")).await.unwrap();
        ws.send(Message::text("2probe")).await.unwrap();
        idle.push(ws);
    }
    // 4. Messages far over the size limit.
    for _ in 0..TOO_BIG {
        let (mut ws, _) =
            tokio_tungstenite::connect_async(format!("{ws_base}{engine}&transport=websocket")).await.unwrap();
        ws.next().await.unwrap().unwrap();
        let _ = ws.send(Message::text(format!("4{}", "x".repeat(20 << 20)))).await;
        idle.push(ws);
    }
    let flooded = started.elapsed();
    let peak = rss_kib(pid);

    // The server closes every one of them on its own timers.
    let closing = Instant::now();
    let all_closed = futures::future::join_all(idle.into_iter().map(|mut ws| async move {
        tokio::time::timeout(Duration::from_secs(30), async { while let Some(Ok(_)) = ws.next().await {} })
            .await
            .is_ok()
    }))
    .await;
    assert!(all_closed.iter().all(|c| *c), "the server closed every idle WebSocket");
    let closed_after = closing.elapsed();
    // Long-polling sessions end at their missed ping (3 s + 3 s after they began);
    // the memory they held must then come back within 16 MiB of the baseline.
    let bound = baseline + 16 * 1024;
    let mut readings = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while readings.last().is_none_or(|&r| r >= bound) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        readings.push(rss_kib(pid));
    }
    let settled = *readings.last().unwrap();
    println!(
        "flood memory figures: baseline {} MiB, peak {} MiB ({} never-connected, {} never-polled, {} never-upgraded, \
         {} x 20 MiB messages, sent in {flooded:?}), WebSockets closed by the server within {closed_after:?}, \
         RSS {:+.1} MiB over the baseline {:?} after they closed",
        baseline / 1024,
        peak / 1024,
        NEVER_CONNECT,
        NEVER_POLL,
        NEVER_UPGRADE,
        TOO_BIG,
        (settled as f64 - baseline as f64) / 1024.0,
        closing.elapsed() - closed_after,
    );
    assert!(settled < bound, "RSS still {} MiB over the baseline 30 s after the floods", (settled - baseline) / 1024);
    // The instance still serves.
    let s = rest.joined(cid, &alice, &[ch]).await;
    assert_eq!(common::chat(&s, ch, "after the floods").await["written"], true);
    instance.kill().await.unwrap();
}
