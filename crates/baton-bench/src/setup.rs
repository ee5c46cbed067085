//! The REST side of a run (PROTOCOL.md): register the users, log them in, create a
//! community with one channel per room, make every user a member of the community and
//! of the channels it will join. Calls run at most [`CONCURRENCY`] at a time: each
//! registration and each login costs the server an argon2 hash.
//!
//! Users: one per sender (so the per-user chat rate limit is the sender's own), and a small
//! pool shared by the receivers (several sockets per user, as the protocol allows). Names
//! carry a random run id, so runs against the same server do not collide.

use std::collections::BTreeSet;

use anyhow::{Context, bail};
use futures::{StreamExt, TryStreamExt, stream};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use super::Room;

/// REST calls in flight at once.
const CONCURRENCY: usize = 8;
const PASSWORD: &str = "bench-password";

/// What the connections need: for each room its channel, and for each of its members
/// (senders first) the token to connect with.
pub(super) struct Prepared {
    pub community: i64,
    /// Further communities every user is a member of, whose namespaces the connections
    /// hold idle (`--communities`).
    pub extra_communities: Vec<i64>,
    pub channels: Vec<i64>,
    pub tokens: Vec<Vec<String>>,
}

struct User {
    username: String,
    token: String,
}

struct Api {
    base: String,
    http: reqwest::Client,
}

impl Api {
    /// One call; the JSON body of a response with one of the `ok` statuses, else an error.
    async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
        ok: &[StatusCode],
    ) -> anyhow::Result<Value> {
        let mut request = self.http.request(method.clone(), format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.with_context(|| format!("{method} {path}"))?;
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        if !ok.contains(&status) {
            bail!("{method} {path}: {status} {text}");
        }
        Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn register(&self, username: String) -> anyhow::Result<User> {
        let credentials = json!({ "username": username, "password": PASSWORD });
        self.call(Method::POST, "/api/users", None, Some(credentials.clone()), &[StatusCode::CREATED]).await?;
        let session = self.call(Method::POST, "/api/sessions", None, Some(credentials), &[StatusCode::OK]).await?;
        let token = session["token"].as_str().context("POST /api/sessions: no token")?.to_owned();
        Ok(User { username, token })
    }
}

/// Runs `calls` at most [`CONCURRENCY`] at a time, keeping their order; stops at the first error.
async fn bounded<T>(
    calls: impl IntoIterator<Item = impl Future<Output = anyhow::Result<T>>>,
) -> anyhow::Result<Vec<T>> {
    stream::iter(calls).buffered(CONCURRENCY).try_collect().await
}

pub(super) async fn prepare(
    base_url: &str,
    rooms: &[Room],
    receiver_users: usize,
    communities: usize,
) -> anyhow::Result<Prepared> {
    let api = Api { base: base_url.trim_end_matches('/').to_owned(), http: reqwest::Client::new() };
    let run = format!("{:06x}", rand::random::<u32>() & 0xff_ffff);
    let senders: usize = rooms.iter().map(|r| r.senders).sum();
    let receivers: usize = rooms.iter().map(|r| r.members - r.senders).sum();
    let pool = receivers.min(receiver_users);

    let started = std::time::Instant::now();
    eprintln!(
        "bench: registering {} users ({senders} senders, {pool} shared by {receivers} receivers)",
        senders + pool
    );
    let names = (0..senders).map(|i| format!("bench-{run}-s{i}")).chain((0..pool).map(|i| format!("bench-{run}-r{i}")));
    let users = bounded(names.map(|name| api.register(name))).await?;
    let owner = &users[0];

    let mut communities = bounded((0..communities.max(1)).map(|i| {
        let body = json!({ "name": format!("bench {run} {i}") });
        let call = api.call(Method::POST, "/api/communities", Some(&owner.token), Some(body), &[StatusCode::CREATED]);
        async move { call.await?["id"].as_i64().context("POST /api/communities: no id") }
    }))
    .await?;
    let extra_communities = communities.split_off(1);
    let community = communities[0];
    let memberships = std::iter::once(community).chain(extra_communities.iter().copied()).flat_map(|c| {
        users[1..].iter().map(move |u| (format!("/api/communities/{c}/members"), json!({ "username": u.username })))
    });
    let api_ref = &api;
    bounded(
        memberships.map(|(path, body)| {
            let (owner, api) = (&owner.token, api_ref);
            async move {
                api.call(Method::POST, &path, Some(owner), Some(body), &[StatusCode::CREATED, StatusCode::OK]).await
            }
        }),
    )
    .await?;

    let path = format!("/api/communities/{community}/channels");
    let channels = bounded((0..rooms.len()).map(|i| {
        let body = json!({ "name": format!("room-{i}"), "private": false });
        let call = api.call(Method::POST, &path, Some(&owner.token), Some(body), &[StatusCode::CREATED]);
        async move { call.await?["id"].as_i64().context("POST channels: no id") }
    }))
    .await?;

    // Who connects where: senders first in each room, receivers round-robin over the pool.
    let mut tokens = Vec::with_capacity(rooms.len());
    let mut memberships = BTreeSet::new(); // (user index in `users`, room)
    let (mut next_sender, mut next_receiver) = (0, 0);
    for (r, room) in rooms.iter().enumerate() {
        let mut room_tokens = Vec::with_capacity(room.members);
        for member in 0..room.members {
            let user = if member < room.senders {
                next_sender += 1;
                next_sender - 1
            } else {
                next_receiver += 1;
                senders + (next_receiver - 1) % pool
            };
            room_tokens.push(users[user].token.clone());
            // The owner created every channel and is a member of them all already.
            if user != 0 {
                memberships.insert((user, r));
            }
        }
        tokens.push(room_tokens);
    }
    let api = &api;
    bounded(memberships.iter().map(|&(user, r)| {
        let path = format!("/api/channels/{}/members", channels[r]);
        // No body: the caller joins a public channel.
        let token = &users[user].token;
        async move { api.call(Method::POST, &path, Some(token), None, &[StatusCode::CREATED, StatusCode::OK]).await }
    }))
    .await?;
    eprintln!(
        "bench: community {community}, {} channel(s), {} channel memberships, set up in {:.1}s",
        channels.len(),
        memberships.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(Prepared { community, extra_communities, channels, tokens })
}
