//! The REST calls a benchmark run is set up with (PROTOCOL.md's table, the part
//! `baton-bench`'s set-up uses), plus `/healthz` and `/readyz`.
//!
//! Invariant: every answer is PROTOCOL.md's shape and status: the object on success,
//! `{"error": {"code", "message"}}` with the code's status otherwise. Calls outside that
//! part answer `not_found`, so a client never mistakes the floor for a full server.

use std::collections::HashSet;

use serde::Deserialize;
use serde_json::{Value, json};

use crate::http::Request;
use crate::hub::{Accounts, Channel, Hub, User, UserId};

pub struct Response {
    pub status: u16,
    pub body: String,
}

impl Response {
    fn json(status: u16, body: Value) -> Response {
        Response { status, body: body.to_string() }
    }

    pub fn error(status: u16, code: &str, message: &str) -> Response {
        Response::json(status, json!({ "error": { "code": code, "message": message } }))
    }

    /// Engine.IO's own error body for a bad handshake request (always 400).
    pub fn engine_error(code: u8, message: &str) -> Response {
        Response::json(400, json!({ "code": code, "message": message }))
    }
}

/// A refusal: PROTOCOL.md's code and a message.
struct Refused(&'static str, String);

impl Refused {
    fn status(&self) -> u16 {
        match self.0 {
            "invalid" => 400,
            "unauthorized" => 401,
            "forbidden" => 403,
            "not_found" => 404,
            "conflict" => 409,
            "too_large" => 413,
            _ => 503,
        }
    }
}

fn refused(code: &'static str, message: impl Into<String>) -> Refused {
    Refused(code, message.into())
}

type Answer = Result<(u16, Value), Refused>;

pub fn handle(hub: &Hub, request: &Request) -> Response {
    match route(hub, request) {
        Ok((status, body)) => Response::json(status, body),
        Err(e) => Response::error(e.status(), e.0, &e.1),
    }
}

fn route(hub: &Hub, request: &Request) -> Answer {
    let path = request.path.split('?').next().unwrap_or_default();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (request.method.as_str(), segments.as_slice()) {
        ("GET", ["healthz"]) | ("GET", ["readyz"]) => Ok((200, json!({ "ok": true }))),
        ("POST", ["api", "users"]) => register(hub, &request.body),
        ("POST", ["api", "sessions"]) => log_in(hub, &request.body),
        (method, ["api", rest @ ..]) => {
            let user = caller(hub, request)?;
            match (method, rest) {
                ("GET", ["me"]) => me(hub, user),
                ("POST", ["communities"]) => create_community(hub, user, &request.body),
                ("POST", ["communities", cid, "members"]) => add_community_member(hub, user, id(cid)?, &request.body),
                ("POST", ["communities", cid, "channels"]) => create_channel(hub, user, id(cid)?, &request.body),
                ("POST", ["channels", chid, "members"]) => add_channel_member(hub, user, id(chid)?, &request.body),
                _ => Err(refused("not_found", "no such route on the floor (README.md: what it implements)")),
            }
        }
        _ => Err(refused("not_found", "no such route")),
    }
}

fn id(segment: &str) -> Result<i64, Refused> {
    segment.parse().ok().filter(|id| *id > 0).ok_or_else(|| refused("not_found", "no such id"))
}

fn body<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, Refused> {
    serde_json::from_slice(bytes).map_err(|e| refused("invalid", format!("bad JSON body: {e}")))
}

fn caller(hub: &Hub, request: &Request) -> Result<UserId, Refused> {
    let token = request.token.as_deref().ok_or_else(|| refused("unauthorized", "a bearer token is needed"))?;
    hub.accounts().tokens.get(token).copied().ok_or_else(|| refused("unauthorized", "unknown token"))
}

fn user_json(user: &User) -> Value {
    json!({ "id": user.id, "username": user.username, "displayName": user.display_name })
}

fn channel_json(channel: &Channel, last_seq: i64) -> Value {
    json!({ "id": channel.id, "communityId": channel.community, "name": channel.name,
            "private": channel.private, "lastSeq": last_seq })
}

/// Trimmed, 1..=`max` characters.
fn text(field: &str, raw: &str, max: usize) -> Result<String, Refused> {
    let trimmed = raw.trim();
    let len = trimmed.chars().count();
    if len == 0 || len > max {
        return Err(refused("invalid", format!("{field} must be 1..{max} characters")));
    }
    Ok(trimmed.to_owned())
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct NewUser {
    username: String,
    password: String,
    display_name: Option<String>,
}

fn register(hub: &Hub, body: &[u8]) -> Answer {
    let new: NewUser = self::body(body)?;
    let username = text("username", &new.username, 32)?.to_lowercase();
    if new.password.is_empty() {
        return Err(refused("invalid", "password must not be empty"));
    }
    let display_name = match &new.display_name {
        Some(name) => text("displayName", name, 64)?,
        None => username.clone(),
    };
    let mut accounts = hub.accounts();
    if accounts.by_name.contains_key(&username) {
        return Err(refused("conflict", "username taken"));
    }
    let id = accounts.users.len() as UserId + 1;
    accounts.by_name.insert(username.clone(), id);
    accounts.users.push(User { id, username, display_name, password: new.password });
    Ok((201, user_json(accounts.user(id).expect("just added"))))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LogIn {
    username: String,
    password: String,
}

fn log_in(hub: &Hub, body: &[u8]) -> Answer {
    let credentials: LogIn = self::body(body)?;
    let mut accounts = hub.accounts();
    let user = accounts
        .by_name
        .get(&credentials.username.trim().to_lowercase())
        .and_then(|id| accounts.user(*id))
        .filter(|u| u.password == credentials.password)
        .ok_or_else(|| refused("unauthorized", "wrong username or password"))?;
    let (id, json) = (user.id, user_json(user));
    let token = format!("{:032x}", rand::random::<u128>());
    accounts.tokens.insert(token.clone(), id);
    Ok((200, json!({ "token": token, "user": json })))
}

fn me(hub: &Hub, user: UserId) -> Answer {
    let accounts = hub.accounts();
    let me = accounts.user(user).ok_or_else(|| refused("unauthorized", "no such user"))?;
    let mut communities: Vec<Value> = accounts
        .communities
        .values()
        .filter(|c| c.members.contains(&user))
        .map(|c| json!({ "id": c.id, "name": c.name, "role": if c.owner == user { "owner" } else { "member" } }))
        .collect();
    communities.sort_by_key(|c| c["id"].as_i64());
    Ok((200, json!({ "user": user_json(me), "communities": communities })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Named {
    name: String,
}

fn create_community(hub: &Hub, user: UserId, body: &[u8]) -> Answer {
    let Named { name } = self::body(body)?;
    let name = text("name", &name, 80)?;
    let mut accounts = hub.accounts();
    let community = accounts.new_community(name, user);
    Ok((201, json!({ "id": community.id, "name": community.name, "role": "owner" })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Member {
    username: String,
}

fn lookup<'a>(accounts: &'a Accounts, username: &str) -> Result<&'a User, Refused> {
    accounts
        .by_name
        .get(&username.trim().to_lowercase())
        .and_then(|id| accounts.user(*id))
        .ok_or_else(|| refused("not_found", "no such user"))
}

/// 201 with the user when added, 200 when they already were a member.
fn add_community_member(hub: &Hub, caller: UserId, cid: i64, body: &[u8]) -> Answer {
    let Member { username } = self::body(body)?;
    let mut accounts = hub.accounts();
    let community = accounts.communities.get(&cid).ok_or_else(|| refused("not_found", "no such community"))?;
    if !community.members.contains(&caller) {
        return Err(refused("not_found", "no such community"));
    }
    if community.owner != caller {
        return Err(refused("forbidden", "only the owner adds members"));
    }
    let user = lookup(&accounts, &username)?;
    let (id, json) = (user.id, user_json(user));
    let added = accounts.communities.get_mut(&cid).expect("looked up above").members.insert(id);
    Ok((if added { 201 } else { 200 }, json))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewChannel {
    name: String,
    #[serde(default)]
    private: bool,
}

fn create_channel(hub: &Hub, user: UserId, cid: i64, body: &[u8]) -> Answer {
    let NewChannel { name, private } = self::body(body)?;
    let name = text("name", &name, 80)?;
    let mut accounts = hub.accounts();
    if !accounts.communities.get(&cid).is_some_and(|c| c.members.contains(&user)) {
        return Err(refused("not_found", "no such community"));
    }
    let channel = hub.create_channel(&mut accounts, cid, name, private, user);
    Ok((201, channel_json(&channel, 0)))
}

/// No body: the caller joins a public channel. `{username}`: a member of the channel adds
/// a member of its community. 201 when the membership is new, 200 when it existed.
fn add_channel_member(hub: &Hub, caller: UserId, chid: i64, body: &[u8]) -> Answer {
    let member: Option<Member> = if body.iter().all(u8::is_ascii_whitespace) { None } else { Some(self::body(body)?) };
    let channel = hub.channel(chid).ok_or_else(|| refused("not_found", "no such channel"))?;
    let accounts = hub.accounts();
    let members: &HashSet<UserId> = &accounts.communities[&channel.community].members;
    if !members.contains(&caller) {
        return Err(refused("not_found", "no such channel"));
    }
    let mut state = channel.lock();
    let user = match &member {
        None if channel.private && !state.members.contains(&caller) => {
            return Err(refused("forbidden", "a private channel is joined only when a member adds you"));
        }
        None => accounts.user(caller).ok_or_else(|| refused("unauthorized", "no such user"))?,
        Some(Member { username }) => {
            if !state.members.contains(&caller) {
                return Err(refused("forbidden", "only a member of the channel adds others"));
            }
            let user = lookup(&accounts, username)?;
            if !members.contains(&user.id) {
                return Err(refused("forbidden", "not a member of the channel's community"));
            }
            user
        }
    };
    let added = state.members.insert(user.id);
    let body = json!({ "channel": channel_json(&channel, state.last_seq), "user": user_json(user) });
    Ok((if added { 201 } else { 200 }, body))
}
