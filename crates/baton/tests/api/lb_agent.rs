//! What a load balancer reads of an instance: the agent port (`--lb-agent-listen`,
//! HAProxy's `agent-check`) over a real TCP connection, beside `/readyz`, through a
//! shed and a drain.

use std::time::Duration;

use reqwest::Method;
use serde_json::json;

use crate::helpers::*;

const ADMIN: &str = "lb-agent-test-admin-token";

/// The agent says `up ready` while serving, still while a shed runs, and `up drain`
/// once a drain starts, answering whatever HAProxy sends first (`agent-send`) or
/// nothing; `/readyz` says the same throughout; the port closes with the process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_says_up_ready_while_serving_or_shedding_and_up_drain_while_draining() {
    let app = spawn_app_with(|c| {
        c.admin_token = Some(ADMIN.into());
        c.lb_agent_listen = Some("127.0.0.1:0".parse().unwrap());
        // Closes begin at min(lb delay 2 s, W/2): time to read `up drain` first.
        c.drain_window = Duration::from_secs(3);
    })
    .await;
    let agent = app.lb_agent.expect("the agent port is bound");
    assert_eq!(agent_says(agent, None).await, "up ready\n");
    assert_eq!(agent_says(agent, Some("baton/blue\n")).await, "up ready\n", "with agent-send text");
    let readyz = async || app.request(Method::GET, "/readyz", None, None).await;
    assert_eq!(readyz().await.0, 200);

    // A shed (its one close due at the end of its minute): still ready.
    let (alice, bob, cid, ch) = app.alice_and_bob_in_general().await;
    let _a = app.joined(cid, &alice, &[ch]).await;
    let _b = app.joined(cid, &bob, &[ch]).await;
    let (status, started) = app.post("/admin/drain", ADMIN, json!({ "count": 1, "window_ms": 60_000 })).await;
    assert_eq!(status, 202, "{started}");
    assert!(app.app.shed.is_running());
    assert_eq!(agent_says(agent, None).await, "up ready\n", "a shedding instance stays ready");
    assert_eq!(readyz().await.0, 200);

    // A drain: `up drain` (HAProxy keeps sending the sessions its cookie names here),
    // while /readyz answers 503 `draining`, as Kubernetes' readiness probe needs.
    let (status, started) = app.request(Method::POST, "/admin/drain", Some(ADMIN), None).await;
    assert_eq!(status, 202, "{started}");
    eventually("the agent says drain", WAIT, async || agent_says(agent, None).await == "up drain\n").await;
    let (status, body) = readyz().await;
    assert_eq!((status.as_u16(), body["error"]["code"].clone()), (503, json!("draining")), "{body}");
    assert!(app.app.drain.report().is_none(), "read while the drain runs, before its closes");
    assert_eq!(agent_says(agent, Some("hello\n")).await, "up drain\n");

    // The drain ends, the process is done: the port is closed with it.
    eventually("the drain ends", WAIT, async || app.app.drain.report().is_some()).await;
    app.stop().await;
    assert!(tokio::net::TcpStream::connect(agent).await.is_err(), "the agent port closed with the server");
}

/// An agent port that cannot be bound stops the start, saying which.
#[tokio::test]
async fn a_taken_agent_port_is_a_start_up_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut config = baton::Config::for_database(fresh_database(&dir).await);
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.lb_agent_listen = Some(addr);
    let refused = baton::Server::build(config).await.err().expect("the start fails");
    let said = format!("{refused:#}");
    assert!(said.contains(&format!("cannot listen on {addr} (--lb-agent-listen)")), "{said}");
}

/// Without `--lb-agent-listen` there is no agent port.
#[tokio::test]
async fn no_agent_port_unless_configured() {
    let app = spawn_app().await;
    assert_eq!(app.lb_agent, None);
    assert_eq!(app.app.config.lb_agent_listen, None);
}
