//! Shedding a share of an instance's transports (`POST /admin/drain` with
//! `fraction` or `count`, `baton drain --fraction`): stock socket.io-client clients
//! in a node process (`shed-clients.cjs`), on WebSocket and on long-polling, chat
//! through a shed of a share of them; the instance stays ready, the chosen share is
//! closed from below and comes back by itself, nothing acked is lost.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};

use crate::helpers::*;

const ADMIN: &str = "shed-test-admin-token";

async fn spawn_with_admin() -> TestApp {
    spawn_app_with(|c| c.admin_token = Some(ADMIN.into())).await
}

/// The node process of socket.io-client clients, and its line protocol.
struct NodeClients {
    _child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
}

impl NodeClients {
    /// `clients`: (user, transport, with `/` beside the community) each.
    async fn start(base: &str, cid: i64, channels: &[i64], clients: &[(&TestUser, &str, bool)]) -> NodeClients {
        let modules = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/js/node_modules");
        assert!(
            std::path::Path::new(modules).join("socket.io-client").exists(),
            "socket.io-client is installed in tests/js (cd tests/js && npm ci)"
        );
        let specs: Vec<Value> = clients
            .iter()
            .map(|(u, transport, root)| json!({ "token": u.token, "transport": transport, "root": root }))
            .collect();
        let channels: Vec<String> = channels.iter().map(|c| c.to_string()).collect();
        let mut child = tokio::process::Command::new("node")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/api/shed-clients.cjs"))
            .env("NODE_PATH", modules)
            .env("BASE", base)
            .env("CID", cid.to_string())
            .env("CHANNELS", channels.join(","))
            .env("CLIENTS", Value::from(specs).to_string())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("node runs");
        let stdin = child.stdin.take().unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut node = NodeClients { _child: child, stdin, lines };
        assert_eq!(node.answer(Duration::from_secs(20)).await, json!({ "ready": true }));
        node
    }

    async fn answer(&mut self, within: Duration) -> Value {
        let line = tokio::time::timeout(within, self.lines.next_line())
            .await
            .expect("the node clients answer in time")
            .unwrap()
            .expect("a line from the node clients");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"))
    }

    async fn ask(&mut self, line: &str, within: Duration) -> Value {
        self.stdin.write_all(format!("{line}\n").as_bytes()).await.unwrap();
        self.answer(within).await
    }
}

/// Watches `/readyz` every 50 ms until dropped; `refusals` are the non-200 answers.
struct Readyz {
    task: tokio::task::JoinHandle<Vec<u16>>,
    stop: tokio::sync::watch::Sender<bool>,
}

impl Readyz {
    fn watch(base: &str) -> Readyz {
        let rest = Rest::new(base.to_owned());
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            let mut refusals = Vec::new();
            let mut checks = 0;
            while !*stopped.borrow() || checks == 0 {
                let (status, _) = rest.request(Method::GET, "/readyz", None, None).await;
                checks += 1;
                if status != 200 {
                    refusals.push(status.as_u16());
                }
                let _ = tokio::time::timeout(Duration::from_millis(50), stopped.changed()).await;
            }
            refusals
        });
        Readyz { task, stop }
    }

    async fn refusals(self) -> Vec<u16> {
        let _ = self.stop.send(true);
        self.task.await.unwrap()
    }
}

/// Each channel's lastSeq, from the database.
async fn last_seqs(app: &TestApp, c: &Community) -> serde_json::Map<String, Value> {
    let (_, list) = app.get(&format!("/api/communities/{}/channels", c.cid), &c.owner.token).await;
    list.as_array().unwrap().iter().map(|ch| (ch["id"].to_string(), ch["lastSeq"].clone())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shed_closes_a_share_of_transports_which_come_back_while_the_instance_stays_ready() {
    let app = spawn_with_admin().await;
    let c = app.populated_community(8, 2).await;
    // Eight connections: four WebSocket, four long-polling; half of each carry `/`
    // beside the community (one transport all the same).
    let clients: Vec<(&TestUser, &str, bool)> = c
        .users
        .iter()
        .enumerate()
        .map(|(i, u)| (u, if i % 2 == 0 { "websocket" } else { "polling" }, i % 4 < 2))
        .collect();
    let mut node = NodeClients::start(&app.base, c.cid, &c.channels, &clients).await;
    let readyz = Readyz::watch(&app.base);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, status) = app.get("/admin/status", ADMIN).await;
    assert_eq!(status["sockets"], 12, "8 community sockets and 4 on `/`: {status}");
    assert_eq!(status["transports"], 8, "on 8 connections: {status}");

    // 0.75 of 8 is 6: at least two of each transport are closed, whichever are drawn.
    let window = Duration::from_millis(3000);
    let started = Instant::now();
    let shed = tokio::spawn({
        let rest = Rest::new(app.base.clone());
        async move {
            rest.post("/admin/drain?wait=true", ADMIN, json!({ "fraction": 0.75, "window_ms": window.as_millis() }))
                .await
        }
    });
    // During the shed the instance takes new sessions, on both transports.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let (_, during) = app.get("/admin/status", ADMIN).await;
    assert_eq!((during["shedding"].clone(), during["draining"].clone()), (json!(true), json!(false)), "{during}");
    let mut newcomer = app.joined(c.cid, &c.owner, &c.channels).await;
    let (status, handshake) = app.request(Method::GET, "/socket.io/?EIO=4&transport=polling", None, None).await;
    assert_eq!(status, 200, "a long-polling handshake during the shed: {handshake}");

    let (status, report) = shed.await.unwrap();
    let took = started.elapsed();
    assert_eq!(status, 200, "{report}");
    assert_eq!((report["transports_at_start"].clone(), report["chosen"].clone()), (json!(8), json!(6)), "{report}");
    assert_eq!(report["closed"], 6, "{report}");
    let (ws, polling) = (report["closed_websocket"].as_u64().unwrap(), report["closed_polling"].as_u64().unwrap());
    assert!(ws >= 2 && polling >= 2 && ws + polling == 6, "{report}");
    assert_eq!(report["stopped_by_drain"], false);
    // Paced: the closes are spread over the window, the last at its end.
    assert!(report["duration_ms"].as_u64().unwrap() >= 2900 && took >= Duration::from_millis(2900), "{report}");

    // The shed clients come back by themselves, into their rooms; then everyone stops
    // sending and each holds every message.
    let synced = node.ask("synced", Duration::from_secs(20)).await;
    assert_eq!(synced["synced"], true, "every shed client is back by itself: {synced}");
    let stopped = node.ask("stop", Duration::from_secs(20)).await;
    let mut after = Vec::new();
    for ch in &c.channels {
        let content = format!("after the shed in {ch}");
        let (status, body) =
            app.post(&format!("/api/channels/{ch}/messages"), &c.owner.token, json!({ "content": content })).await;
        assert_eq!(status, 201, "{body}");
        after.push(content);
    }
    let expected = last_seqs(&app, &c).await;
    let seen = node.ask(&format!("expect {} {}", Value::from(expected.clone()), json!(after)), WAIT * 6).await;
    let refusals = readyz.refusals().await;
    assert!(refusals.is_empty(), "/readyz answered {refusals:?} during the shed");
    let (_, status) = app.get("/admin/status", ADMIN).await;
    assert_eq!(status["shed"], report, "the report on /admin/status is the answer's");
    assert_eq!(status["shedding"], false);

    let mut acked = std::collections::BTreeSet::new();
    let (mut moved_ws, mut moved_polling) = (0, 0);
    let mut back_after: [Vec<u64>; 2] = Default::default();
    for (i, client) in seen["clients"].as_array().unwrap().iter().enumerate() {
        for (ch, last) in &expected {
            assert_eq!(&client["held"][ch], last, "client {i} holds all of channel {ch}: {client}");
        }
        assert_eq!(client["live"], json!(after), "client {i} is back in its rooms: {client}");
        let disconnects = client["disconnects"].as_array().unwrap();
        for reason in disconnects {
            assert!(
                reason == "transport close" || reason == "transport error",
                "client {i} got {reason} (a DISCONNECT packet would stop a stock client): {client}"
            );
        }
        assert_eq!(client["connects"].as_u64().unwrap(), 1 + disconnects.len() as u64, "{client}");
        if !disconnects.is_empty() {
            let times = client["backAfterMs"].as_array().unwrap().iter().map(|t| t.as_u64().unwrap());
            match client["transport"].as_str().unwrap() {
                "websocket" => (moved_ws += 1, back_after[0].extend(times)),
                _ => (moved_polling += 1, back_after[1].extend(times)),
            };
        }
        acked.extend(client["acked"].as_array().unwrap().iter().map(|a| a.as_str().unwrap().to_owned()));
    }
    assert_eq!((moved_ws, moved_polling), (ws, polling), "the clients that moved are the ones the shed closed");
    // Every acked message was written once: the channels hold exactly the acked ones
    // and the two posted after.
    let written: i64 = expected.values().map(|v| v.as_i64().unwrap()).sum();
    assert_eq!(written as usize, acked.len() + after.len(), "{stopped}");
    assert_eq!(stopped["stopped"].as_u64().unwrap() as usize, acked.len());
    // The newcomer that connected during the shed was not chosen and is still here.
    assert!(newcomer.is_open(), "a session opened during the shed is left alone");
    let _ = newcomer.drain();
    for times in &mut back_after {
        times.sort();
    }
    println!(
        "shed of 6 of 8 transports ({ws} WebSocket, {polling} long-polling) over {window:?}: {} ms, {} acks \
         waited for, {} messages acked, lost 0, /readyz 200 throughout; stock socket.io-client, close to \
         recovered: WebSocket {:?} ms, long-polling {:?} ms",
        report["duration_ms"],
        report["acks_waited_for"],
        acked.len(),
        back_after[0],
        back_after[1],
    );
}

/// A shed keeps the moved users' presence for the grace period: while they are away
/// (a second here, longer than a stock client's first reconnect delay) they stay
/// online, and nobody sees them go offline and come back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shed_does_not_flap_the_moved_users_presence() {
    let app = spawn_with_admin().await;
    let c = app.populated_community(3, 1).await;
    let ch = c.channels[0];
    let mut observer = app.joined(c.cid, &c.owner, &[ch]).await;
    let mut moved = Vec::new();
    for u in &c.users {
        moved.push(app.joined(c.cid, u, &[ch]).await);
    }
    for _ in 0..3 {
        observer.next_event("presence", WAIT).await.unwrap();
    }
    // Who is online, read every 20 ms until the end: any moment a moved user is not.
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let watcher = tokio::spawn({
        let rest = Rest::new(app.base.clone());
        let (token, users) = (c.owner.token.clone(), c.users.iter().map(|u| u.id).collect::<Vec<_>>());
        async move {
            let mut missing = Vec::new();
            while !*stopped.borrow() {
                let (_, online) = rest.get(&format!("/api/channels/{ch}/presence"), &token).await;
                let online = online["online"].as_array().cloned().unwrap_or_default();
                missing.extend(users.iter().filter(|u| !online.contains(&json!(u))).copied());
                let _ = tokio::time::timeout(Duration::from_millis(20), stopped.changed()).await;
            }
            missing
        }
    });
    // Three of the four transports (the observer's may be drawn: then the REST
    // watch alone tells).
    let (status, report) = app.post("/admin/drain?wait=true", ADMIN, json!({ "count": 3, "window_ms": 300 })).await;
    assert_eq!((status.as_u16(), report["closed"].clone()), (200, json!(3)), "{report}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    for (i, s) in moved.iter_mut().enumerate() {
        if !s.is_open() {
            *s = app.joined(c.cid, &c.users[i], &[ch]).await;
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _ = stop.send(true);
    let missing = watcher.await.unwrap();
    assert!(missing.is_empty(), "moved users shown offline while they moved: {missing:?}");
    if observer.is_open() {
        let mut presence = Vec::new();
        while let Ok(p) = observer.next_event("presence", QUIET).await {
            presence.push(p);
        }
        assert!(presence.is_empty(), "nobody flapped: {presence:?}");
    }
}

#[tokio::test]
async fn a_shed_with_bad_parameters_is_refused_with_400_and_changes_nothing() {
    let app = spawn_with_admin().await;
    let bad_queries = [
        "fraction=0",
        "fraction=1.5",
        "fraction=-0.25",
        "fraction=abc",
        "fraction=NaN",
        "count=0",
        "count=-1",
        "count=1.5",
        "count=many",
        "fraction=0.5&count=2",
        "fraction=0.5&window_ms=-1",
        "fraction=0.5&window_ms=86400000",
        "window_ms=1000",
        "wait=maybe&fraction=0.5",
        "fractoin=0.5",
        "fraction=",
    ];
    for query in bad_queries {
        let (status, body) = app.request(Method::POST, &format!("/admin/drain?{query}"), Some(ADMIN), None).await;
        assert_eq!((status.as_u16(), body["error"]["code"].clone()), (400, json!("invalid")), "{query}: {body}");
        assert!(!body["error"]["message"].as_str().unwrap().is_empty(), "{query}: {body}");
    }
    let bad_bodies = [
        json!({ "fraction": 0 }),
        json!({ "fraction": 2 }),
        json!({ "fraction": "0.5" }),
        json!({ "count": -3 }),
        json!({ "count": 0 }),
        json!({ "count": 2.5 }),
        json!({ "fraction": 0.5, "count": 1 }),
        json!({ "window_ms": 10 }),
        json!({ "share": 0.5 }),
        json!({ "fraction": null }),
        json!({ "count": null, "wait": true }),
    ];
    for body in bad_bodies {
        let (status, answer) = app.post("/admin/drain", ADMIN, body.clone()).await;
        assert_eq!((status.as_u16(), answer["error"]["code"].clone()), (400, json!("invalid")), "{body}: {answer}");
    }
    let (status, answer) = app.post_raw("/admin/drain", Some(ADMIN), "{\"fraction\": ").await;
    assert_eq!((status.as_u16(), answer["error"]["code"].clone()), (400, json!("invalid")), "{answer}");
    let (status, answer) = app.post("/admin/drain?fraction=0.5", ADMIN, json!({ "fraction": 0.5 })).await;
    assert_eq!((status.as_u16(), answer["error"]["code"].clone()), (400, json!("invalid")), "given twice: {answer}");
    let (status, answer) = app.request(Method::POST, "/admin/drain?fraction=0.5", Some("wrong"), None).await;
    assert_eq!(status, 401, "{answer}");
    // None of it started a drain or a shed.
    let (status, _) = app.request(Method::GET, "/readyz", None, None).await;
    assert_eq!(status, 200);
    let (_, status) = app.get("/admin/status", ADMIN).await;
    assert_eq!(
        (status["draining"].clone(), status["shedding"].clone(), status["shed"].clone()),
        (json!(false), json!(false), json!(null))
    );
}

/// One shed at a time, none while draining, and a drain that starts during a shed
/// takes over from it (its first step, the draining flag, is what a shed heeds).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shed_is_refused_during_another_and_gives_way_to_a_drain() {
    let app = spawn_with_admin().await;
    let (alice, bob, cid, ch) = app.alice_and_bob_in_general().await;
    let _a = app.joined(cid, &alice, &[ch]).await;
    let _b = app.joined(cid, &bob, &[ch]).await;
    let (status, started) = app.post("/admin/drain", ADMIN, json!({ "count": 1, "window_ms": 1500 })).await;
    assert_eq!(status, 202, "{started}");
    assert_eq!((started["transports"].clone(), started["chosen"].clone()), (json!(2), json!(1)), "{started}");
    let (status, refused) = app.post("/admin/drain", ADMIN, json!({ "fraction": 1 })).await;
    assert_eq!((status.as_u16(), refused["error"]["code"].clone()), (409, json!("conflict")), "{refused}");
    // A drain starts: the shed stops at once, before its one close (due at the end
    // of its minute), and says so; no shed starts while it drains.
    let (status, started) = app.post("/admin/drain", ADMIN, json!({ "count": 1, "window_ms": 60_000 })).await;
    assert_eq!(status, 409, "{started}");
    eventually("the first shed ends", WAIT, async || app.app.shed.report().is_some()).await;
    let (status, started) = app.post("/admin/drain", ADMIN, json!({ "count": 1, "window_ms": 60_000 })).await;
    assert_eq!((status.as_u16(), started["chosen"].clone()), (202, json!(1)), "{started}");
    let drain_began = std::time::Instant::now();
    app.app.drain.start();
    let (status, refused) = app.post("/admin/drain", ADMIN, json!({ "count": 1 })).await;
    assert_eq!((status.as_u16(), refused["error"]["code"].clone()), (409, json!("conflict")), "{refused}");
    eventually("the shed stops", WAIT, async || app.app.shed.report().is_some_and(|r| r.stopped_by_drain)).await;
    assert!(drain_began.elapsed() < Duration::from_secs(1), "stopped within moments");
    let report = app.app.shed.report().unwrap();
    assert!(report.closed == 0 && report.window_ms == 60_000, "{report:?}");
}

/// `baton drain --fraction F --wait --json`, as the canary script will run it: one
/// JSON line, the shed report; the instance goes on serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn baton_drain_fraction_wait_json_prints_the_shed_report() {
    let app = spawn_with_admin().await;
    let (alice, bob, cid, ch) = app.alice_and_bob_in_general().await;
    let _a = app.joined(cid, &alice, &[ch]).await;
    let _b = app.joined(cid, &bob, &[ch]).await;
    let operator = |args: &[&str]| {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_baton"));
        command.args(args).args(["--url", &app.base]).env("BATON_ADMIN_TOKEN", ADMIN);
        command
    };
    let out =
        operator(&["drain", "--fraction", "0.5", "--window", "200ms", "--wait", "--json"]).output().await.unwrap();
    assert!(out.status.success(), "baton drain --fraction: {}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.lines().count(), 1, "exactly one line: {stdout}");
    let report: Value = serde_json::from_str(&stdout).expect("the report as JSON");
    assert_eq!((report["transports_at_start"].clone(), report["closed"].clone()), (json!(2), json!(1)), "{report}");
    assert_eq!((report["fraction"].clone(), report["window_ms"].clone()), (json!(0.5), json!(200)), "{report}");

    let out = operator(&["status", "--json"]).output().await.unwrap();
    let status: Value = serde_json::from_slice(&out.stdout).expect("one JSON line");
    assert_eq!((status["draining"].clone(), status["shed"].clone()), (json!(false), report), "{status}");
    let (code, _) = app.request(Method::GET, "/readyz", None, None).await;
    assert_eq!(code, 200, "still serving");

    let out = operator(&["drain", "--fraction", "2"]).output().await.unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("fraction must be above 0"), "says why");
    let out = operator(&["drain", "--fraction", "0.5", "--count", "1"]).output().await.unwrap();
    assert!(!out.status.success(), "--fraction and --count together are refused");
    let out = operator(&["drain", "--window", "1s"]).output().await.unwrap();
    assert!(!out.status.success(), "--window without a share is refused, not a drain");
    let (code, _) = app.request(Method::GET, "/readyz", None, None).await;
    assert_eq!(code, 200, "none of the refused commands drained the instance");
}
