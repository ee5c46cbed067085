//! Randomised inbound input against a real baton: a bounded number of payloads drawn
//! by proptest (a fixed seed, so a failure is reproducible) go to every socket event,
//! to `since`, and to the REST bodies. Each one must be answered (an ack, a refused
//! connect, an HTTP answer below 500) with PROTOCOL.md's shapes, and the connection
//! and the instance must survive all of them.

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config as ProptestConfig, TestRunner};
use serde_json::{Map, Value, json};

use crate::helpers::*;

/// The fields the protocol's payloads have, so random objects often come close to
/// valid ones and reach past the first check.
const FIELDS: &[&str] = &[
    "chatType",
    "channelId",
    "content",
    "clientMsgId",
    "messageId",
    "channels",
    "before",
    "after",
    "since",
    "limit",
    "seq",
    "name",
    "private",
    "username",
];

const CODES: &[&str] =
    &["invalid", "unauthorized", "forbidden", "not_found", "conflict", "too_large", "rate_limited", "unavailable"];

/// Any JSON value: numbers at and beyond the integer range, strings with control
/// characters and multi-byte text, nested arrays and objects keyed by the protocol's
/// fields or by anything.
fn any_json(channel: i64) -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        prop_oneof![Just(channel), Just(0), Just(-1), Just(i64::MAX), 1..50i64].prop_map(Value::from),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        prop_oneof![Just("new"), Just("modify"), Just("delete"), Just("")].prop_map(Value::from),
        "\\PC{0,12}".prop_map(Value::from),
        "[\\x00-\\x1f]{1,3}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        let key = prop_oneof![prop::sample::select(FIELDS).prop_map(str::to_owned), "\\PC{0,6}"];
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((key, inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// Payloads one or two mistakes away from valid ones (every event's fields, a real
/// channel among bad ids, text with controls or at its limits), mixed with any JSON,
/// so that the checks past the first are reached too.
fn near_valid(channel: i64) -> impl Strategy<Value = Value> {
    let id = prop_oneof![6 => Just(channel), 1 => Just(0), 1 => Just(-1), 1 => Just(i64::MAX), 1 => any::<i64>()]
        .prop_map(Value::from);
    let text = prop_oneof![
        6 => "[a-zA-Z0-9]\\PC{0,40}",
        1 => "[a-z \\x00-\\x1f]{0,8}",
        1 => Just("x".repeat(4001)),
        1 => Just(String::new()),
    ];
    let fields = (
        prop::sample::select(&["new", "modify", "delete", "shout"][..]),
        id.clone(),
        text.clone(),
        prop::option::of(text),
        prop::option::of(id.clone()),
        prop::collection::vec(id, 0..4),
        prop::option::of(any::<i64>()),
        prop::option::weighted(0.1, any_json(channel)),
    );
    fields.prop_map(|(kind, channel, content, cmid, message, channels, n, extra)| {
        let mut o = Map::new();
        o.insert("chatType".into(), json!(kind));
        o.insert("channelId".into(), channel);
        o.insert("content".into(), json!(content));
        if let Some(cmid) = cmid {
            o.insert("clientMsgId".into(), json!(cmid));
        }
        if let Some(message) = message {
            o.insert("messageId".into(), message);
        }
        o.insert("channels".into(), Value::Array(channels));
        if let Some(n) = n {
            o.insert(["seq", "limit", "before", "after", "since"][(n.unsigned_abs() % 5) as usize].into(), json!(n));
        }
        if let Some(extra) = extra {
            o.insert("extra".into(), extra);
        }
        o.insert(NEAR_VALID.into(), json!(true));
        Value::Object(o)
    })
}

/// Marks a [`near_valid`] payload, whose fields [`shaped`] trims to the event's.
const NEAR_VALID: &str = "__near_valid";

/// A near-valid payload with only the fields `event` takes (and an `extra` one if
/// it was drawn); any other value as it is.
fn shaped(event: &str, payload: &Value) -> Value {
    let Some(o) = payload.as_object().filter(|o| o.contains_key(NEAR_VALID)) else { return payload.clone() };
    let new = o.get("chatType") == Some(&json!("new"));
    let keep: &[&str] = match event {
        "chat" if new => &["chatType", "channelId", "content", "clientMsgId"],
        "chat" => &["chatType", "channelId", "content", "messageId"],
        "join" | "leave" => &["channels"],
        "history" => &["channelId", "before", "after", "since", "limit"],
        "read" => &["channelId", "seq"],
        _ => &["channelId"],
    };
    Value::Object(
        o.iter()
            .filter(|(k, _)| keep.contains(&k.as_str()) || *k == "extra")
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    )
}

fn inbound(channel: i64) -> impl Strategy<Value = Value> {
    prop_oneof![near_valid(channel), any_json(channel)]
}

/// Draws `n` values from `strategy`, deterministically.
fn draw<S: Strategy>(strategy: S, n: usize) -> Vec<S::Value> {
    let mut runner = TestRunner::new_with_rng(
        ProptestConfig::default(),
        proptest::test_runner::TestRng::deterministic_rng(proptest::test_runner::RngAlgorithm::ChaCha),
    );
    (0..n).map(|_| strategy.new_tree(&mut runner).expect("a value").current()).collect()
}

/// An ack is an object; a refusal carries one of the protocol's codes and a message.
fn assert_answered(what: &str, ack: &Value) {
    assert!(ack.is_object(), "{what}: the ack is not an object: {ack}");
    if let Some(error) = ack.get("error") {
        let code = error["code"].as_str().unwrap_or_default();
        assert!(CODES.contains(&code), "{what}: not a protocol code: {ack}");
        assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()), "{what}: no message: {ack}");
    }
}

#[tokio::test]
async fn random_socket_payloads_are_all_answered_and_the_connection_survives() {
    let app = spawn_app_with(|c| {
        // Past the rate limit, every chat would be `rate_limited` without being parsed.
        c.chat_rate = 100_000;
        c.chat_burst = 100_000;
    })
    .await;
    let (alice, _bob, cid, ch) = app.alice_and_bob_in_general().await;
    let s = app.joined(cid, &alice, &[ch]).await;
    let events = ["chat", "join", "leave", "history", "read", "typing"];
    let payloads = draw(inbound(ch), 600);
    for (i, payload) in payloads.iter().enumerate() {
        let event = events[i % events.len()];
        let payload = shaped(event, payload);
        let what = format!("{event} {payload}");
        let ack = s.emit_with_ack(event, payload, WAIT).await.unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_answered(&what, &ack);
        if event == "chat" && ack.get("error").is_some() {
            assert_eq!((ack["written"].clone(), ack["chatInfo"].clone()), (json!(false), Value::Null), "{what}");
        }
    }
    assert!(s.is_open(), "the connection survived");
    assert_eq!(chat(&s, ch, "still here").await["written"], true);
    // Whatever was written is in the channel, gap-free.
    let (_, page) = app.get(&format!("/api/channels/{ch}/messages?since=0&limit=200"), &alice.token).await;
    let seqs: Vec<i64> = page["messages"].as_array().unwrap().iter().map(|m| m["eventSeq"].as_i64().unwrap()).collect();
    let mut sorted = seqs.clone();
    sorted.sort();
    assert_eq!(sorted, seqs, "eventSeq order");
}

#[tokio::test]
async fn random_since_values_are_admitted_or_refused_with_a_code() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let cid = app.community(&alice, &[]).await;
    let ns = format!("/socket/commu-{cid}");
    for since in draw(any_json(1), 60) {
        match app.connect_with(&ns, json!({ "token": alice.token, "since": since })).await {
            Ok(s) => assert!(s.is_open(), "since {since}: admitted"),
            Err(baton_client::ClientError::Refused(code)) => {
                assert_eq!(code, "invalid", "since {since}: refused with {code}")
            }
            Err(e) => panic!("since {since}: {e}"),
        }
    }
    assert!(app.connect(&ns, &alice).await.is_open(), "the instance still admits");
}

#[tokio::test]
async fn random_rest_bodies_are_answered_below_500() {
    let app = spawn_app().await;
    let (alice, _bob, cid, ch) = app.alice_and_bob_in_general().await;
    let paths = [
        (reqwest::Method::POST, "/api/communities".to_owned()),
        (reqwest::Method::POST, format!("/api/communities/{cid}/channels")),
        (reqwest::Method::POST, format!("/api/communities/{cid}/members")),
        (reqwest::Method::POST, format!("/api/channels/{ch}/messages")),
        (reqwest::Method::POST, format!("/api/channels/{ch}/members")),
        (reqwest::Method::PUT, format!("/api/channels/{ch}/read")),
    ];
    for (i, body) in draw(inbound(ch), 240).into_iter().enumerate() {
        let (method, path) = &paths[i % paths.len()];
        let body = shaped("chat", &body);
        let (status, answer) = app.request(method.clone(), path, Some(&alice.token), Some(body.clone())).await;
        let what = format!("{method} {path} {body}");
        assert!(status.as_u16() < 500, "{what}: {status} {answer}");
        if !status.is_success() {
            assert_answered(&what, &answer);
            assert!(answer.get("error").is_some(), "{what}: an error body: {answer}");
        }
    }
    let (status, _) = app.get("/api/me", &alice.token).await;
    assert_eq!(status, 200, "the instance still answers");
}
