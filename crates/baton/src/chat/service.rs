//! The chat operations with their permission rules. Every entry point takes the
//! acting user and returns either a result or a protocol [`Error`].
//!
//! Private channels leak nowhere: for a user outside one, it answers exactly as a
//! channel that does not exist (`not_found`), in every operation.

use serde::Serialize;

use std::sync::Arc;

use super::command::ChatRate;
use super::{
    Change, Channel, ChannelId, ChannelName, ClientMsgId, Community, CommunityId, CommunityMember, CommunityName,
    CommunityUnread, Content, DisplayName, Message, MessageId, Password, Role, Unread, User, UserId, Username, now_ms,
};
use crate::auth;
use crate::error::{Error, OnConstraint, Result};
use crate::store::{ChannelAccess, Inserted, NewMessage, Slice, Store, Written};

/// The chat domain's entry point. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Chat {
    store: Store,
    pub(super) rate: ChatRate,
}

/// A message change that was written (or found, for a repeated clientMsgId).
#[derive(Debug, Clone)]
pub struct Created {
    pub message: Message,
    pub change: Change,
    /// False when nothing new was written (a repeated clientMsgId, a repeated delete):
    /// such a result is acked but not broadcast again.
    pub fresh: bool,
    /// A new message's channel members as the write read them, if it did: who gets the
    /// `notify` (else they are read when it is sent).
    pub members: Option<Arc<[UserId]>>,
}

/// `history` parameters, as REST query or socket payload.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryQuery {
    pub before: Option<i64>,
    pub after: Option<i64>,
    pub since: Option<i64>,
    pub limit: Option<i64>,
}

/// A page of history: `{messages, hasMore}`, plus `lastSeq` for the changes feed.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Page {
    pub messages: Vec<Message>,
    pub has_more: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_seq: Option<i64>,
}

const DEFAULT_PAGE: i64 = 50;
const MAX_PAGE: i64 = 200;

/// Where a user stands with a channel, for the error a refusal carries.
fn require_member(access: Option<ChannelAccess>) -> Result<Channel> {
    match access {
        Some(a) if a.channel_member => Ok(a.channel),
        Some(a) if a.community_role.is_some() && !a.channel.private => {
            Err(Error::forbidden("you are not a member of this channel; join it first"))
        }
        _ => Err(no_such_channel()),
    }
}

fn no_such_channel() -> Error {
    Error::not_found("no such channel")
}

impl Chat {
    pub fn new(store: Store, rate: ChatRate) -> Self {
        Self { store, rate }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    // ---- accounts ----

    pub async fn register(&self, username: &str, password: &str, display_name: Option<&str>) -> Result<User> {
        let username = Username::parse(username)?;
        let password = Password::parse(password)?;
        let display_name = DisplayName::parse(display_name.unwrap_or(username.as_str()))?;
        let hash = auth::hash_password(password.as_str().to_owned()).await?;
        self.store
            .insert_user(username.as_str(), display_name.as_str(), &hash, now_ms())
            .await
            .on_constraint("users_username_key", || Error::conflict("that username is taken"))
    }

    /// The user whose credentials these are.
    pub async fn login(&self, username: &str, password: &str) -> Result<User> {
        let refused = || Error::unauthorized("wrong username or password");
        let Ok(username) = Username::parse(username) else {
            return Err(refused());
        };
        let (id, hash) = match self.store.credentials(username.as_str()).await? {
            Some(c) => (Some(c.id), c.password_hash),
            None => (None, auth::decoy_hash().to_owned()),
        };
        let matches = auth::verify_password(password.to_owned(), hash).await;
        match id {
            Some(id) if matches => self.user(id).await,
            _ => Err(refused()),
        }
    }

    pub async fn user(&self, id: UserId) -> Result<User> {
        self.store.user(id).await?.ok_or_else(|| Error::unauthorized("the account no longer exists"))
    }

    // ---- communities ----

    pub async fn communities(&self, user: UserId) -> Result<Vec<Community>> {
        Ok(self.store.communities_of(user).await?)
    }

    pub async fn create_community(&self, user: UserId, name: &str) -> Result<Community> {
        let name = CommunityName::parse(name)?;
        Ok(self.store.insert_community(user, name.as_str(), now_ms()).await?)
    }

    /// The user's role in the community, or the error that refuses them.
    pub async fn community_role(&self, user: UserId, community: CommunityId) -> Result<Role> {
        match self.store.community_role(community, user).await? {
            Some(role) => Ok(role),
            None if self.store.community_exists(community).await? => {
                Err(Error::forbidden("you are not a member of this community"))
            }
            None => Err(Error::not_found("no such community")),
        }
    }

    /// The community's members, for its members only.
    pub async fn community_members(&self, user: UserId, community: CommunityId) -> Result<Vec<CommunityMember>> {
        self.community_role(user, community).await?;
        Ok(self.store.community_members(community).await?)
    }

    /// The owner adds a member; returns the user and whether they are new to it.
    pub async fn add_community_member(
        &self,
        actor: UserId,
        community: CommunityId,
        username: &str,
    ) -> Result<(User, bool)> {
        if self.community_role(actor, community).await? != Role::Owner {
            return Err(Error::forbidden("only the community's owner adds members"));
        }
        let user = self.user_named(username).await?;
        let added = self.store.insert_community_member(community, user.id, now_ms()).await?;
        Ok((user, added))
    }

    async fn user_named(&self, username: &str) -> Result<User> {
        let not_found = || Error::not_found("no such user");
        let username = Username::parse(username).map_err(|_| not_found())?;
        self.store.user_by_name(username.as_str()).await?.ok_or_else(not_found)
    }

    // ---- channels ----

    pub async fn channels(&self, user: UserId, community: CommunityId) -> Result<Vec<Channel>> {
        self.community_role(user, community).await?;
        Ok(self.store.visible_channels(community, user).await?)
    }

    pub async fn create_channel(
        &self,
        user: UserId,
        community: CommunityId,
        name: &str,
        private: bool,
    ) -> Result<Channel> {
        let name = ChannelName::parse(name)?;
        self.community_role(user, community).await?;
        self.store
            .insert_channel(community, user, name.as_str(), private, now_ms())
            .await
            .on_constraint("channels_community_name_key", || {
                Error::conflict("a channel with that name exists in this community")
            })
    }

    /// A channel the user is a member of, or the refusal.
    pub async fn member_channel(&self, user: UserId, channel: ChannelId) -> Result<Channel> {
        require_member(self.store.channel_access(channel, user).await?)
    }

    /// Joins a public channel of a community the user is in.
    pub async fn join_channel(&self, user: UserId, channel: ChannelId) -> Result<(Channel, bool)> {
        let access = self.store.channel_access(channel, user).await?.ok_or_else(no_such_channel)?;
        if access.channel_member {
            return Ok((access.channel, false));
        }
        if access.community_role.is_none() || access.channel.private {
            return Err(no_such_channel());
        }
        let added = self.store.insert_channel_member(channel, user, now_ms()).await?;
        Ok((access.channel, added))
    }

    /// A channel member adds another member of the community (the only way into a
    /// private channel). Returns the channel, the added user, and whether they are new.
    pub async fn add_channel_member(
        &self,
        actor: UserId,
        channel: ChannelId,
        username: &str,
    ) -> Result<(Channel, User, bool)> {
        let channel = self.member_channel(actor, channel).await?;
        let user = self.user_named(username).await?;
        if self.store.community_role(channel.community_id, user.id).await?.is_none() {
            return Err(Error::forbidden("that user is not a member of this community"));
        }
        let added = self.store.insert_channel_member(channel.id, user.id, now_ms()).await?;
        Ok((channel, user, added))
    }

    /// A user leaves, or the community's owner removes them.
    pub async fn remove_channel_member(&self, actor: UserId, channel: ChannelId, user: UserId) -> Result<Channel> {
        let access = self.store.channel_access(channel, actor).await?.ok_or_else(no_such_channel)?;
        let allowed = actor == user || access.community_role == Some(Role::Owner);
        let visible = access.channel_member || (access.community_role.is_some() && !access.channel.private);
        if !visible {
            return Err(no_such_channel());
        }
        if !allowed {
            return Err(Error::forbidden("only the community's owner removes other members"));
        }
        if !self.store.delete_channel_member(channel, user).await? {
            return Err(Error::not_found("that user is not a member of this channel"));
        }
        Ok(access.channel)
    }

    /// Of `channels`, those of `community` the user is a member of.
    pub async fn member_channels_among(
        &self,
        user: UserId,
        community: CommunityId,
        channels: &[ChannelId],
    ) -> Result<Vec<ChannelId>> {
        Ok(self.store.member_channels_among(community, user, channels).await?)
    }

    /// Why the user may not join a channel: `not_found` or `forbidden`, as the REST
    /// calls would answer.
    pub async fn join_refusal(&self, user: UserId, community: CommunityId, channel: ChannelId) -> Result<Error> {
        let access = self.store.channel_access(channel, user).await?.filter(|a| a.channel.community_id == community);
        Ok(require_member(access).err().unwrap_or_else(no_such_channel))
    }

    /// Channels whose event sequence moved at or after `since_ms`:
    /// `(channel, community, last_seq)`.
    pub async fn recently_active(&self, since_ms: i64) -> Result<Vec<(ChannelId, CommunityId, i64)>> {
        Ok(self.store.recently_active(since_ms).await?)
    }

    pub async fn channel_member_ids(&self, channel: ChannelId) -> Result<Vec<UserId>> {
        Ok(self.store.channel_member_ids(channel).await?)
    }

    // ---- messages ----

    /// Writes a new message as `user`; `community`: the one the user acts in (a socket's
    /// namespace), if any, where a channel of another community does not exist. The
    /// membership is checked by the write itself (in its transaction).
    pub async fn post(
        &self,
        user: UserId,
        channel: ChannelId,
        content: &str,
        client_msg_id: Option<&str>,
        community: Option<CommunityId>,
    ) -> Result<Created> {
        let content = Content::parse(content)?;
        let client_msg_id = client_msg_id.map(ClientMsgId::parse).transpose()?;
        // A refusal is told apart (no such channel, not a member, ...) by the same
        // checks read on their own; a membership granted in between gets one more try.
        for _ in 0..2 {
            let message = NewMessage {
                channel,
                sender: user,
                content: content.as_str().to_owned(),
                client_msg_id: client_msg_id.as_ref().map(|c| c.as_str().to_owned()),
                now: now_ms(),
                community,
            };
            match self.store.insert_message(message).await? {
                Some(Written { inserted: Inserted::Fresh(message), members }) => {
                    return Ok(Created { message, change: Change::New, fresh: true, members });
                }
                Some(Written { inserted: Inserted::Existing(message), .. }) => {
                    // Found by its clientMsgId before any check: the sender must still be a member.
                    self.member_channel_in(user, channel, community).await?;
                    return Ok(Created { message, change: Change::New, fresh: false, members: None });
                }
                None => {
                    self.member_channel_in(user, channel, community).await?;
                }
            }
        }
        Err(Error::conflict("the channel's membership changed while writing; send again"))
    }

    /// The channel, if `user` is a member of it and it is in `community` (when given);
    /// else the error that says why not.
    pub async fn member_channel_in(
        &self,
        user: UserId,
        channel: ChannelId,
        community: Option<CommunityId>,
    ) -> Result<Channel> {
        let found = self.member_channel(user, channel).await?;
        if community.is_some_and(|c| c != found.community_id) {
            return Err(Error::not_found("no such channel in this community"));
        }
        Ok(found)
    }

    /// The author's own live message in this channel.
    async fn own_message(&self, user: UserId, channel: ChannelId, id: MessageId) -> Result<Message> {
        self.member_channel(user, channel).await?;
        let message = self
            .store
            .message(id)
            .await?
            .filter(|m| m.channel_id == channel)
            .ok_or_else(|| Error::not_found("no such message in this channel"))?;
        if message.sender_id != user {
            return Err(Error::forbidden("only the author modifies or deletes a message"));
        }
        Ok(message)
    }

    pub async fn modify(&self, user: UserId, channel: ChannelId, id: MessageId, content: &str) -> Result<Created> {
        let content = Content::parse(content)?;
        let message = self.own_message(user, channel, id).await?;
        if message.deleted {
            return Err(Error::conflict("the message was deleted"));
        }
        match self.store.change_message(&message, Some(content.as_str()), now_ms()).await? {
            Some(message) => Ok(Created { message, change: Change::Modify, fresh: true, members: None }),
            None => Err(Error::conflict("the message was deleted")),
        }
    }

    /// Deletes a message; deleting it again answers with it as it is, unbroadcast.
    pub async fn delete(&self, user: UserId, channel: ChannelId, id: MessageId) -> Result<Created> {
        let message = self.own_message(user, channel, id).await?;
        if !message.deleted
            && let Some(message) = self.store.change_message(&message, None, now_ms()).await?
        {
            return Ok(Created { message, change: Change::Delete, fresh: true, members: None });
        }
        let current = self.store.message(id).await?.ok_or_else(|| Error::not_found("no such message"))?;
        Ok(Created { message: current, change: Change::Delete, fresh: false, members: None })
    }

    pub async fn history(&self, user: UserId, channel: ChannelId, query: &HistoryQuery) -> Result<Page> {
        let limit = query.limit.unwrap_or(DEFAULT_PAGE);
        if !(1..=MAX_PAGE).contains(&limit) {
            return Err(Error::invalid(format!("limit must be 1 to {MAX_PAGE}")));
        }
        let slice = match (query.since, query.before, query.after) {
            (Some(_), Some(_), _) | (Some(_), _, Some(_)) => {
                return Err(Error::invalid("since cannot be combined with before or after"));
            }
            (Some(since), None, None) => Slice::Changes { since },
            (None, before, Some(after)) => Slice::Ascending { after, before },
            (None, before, None) => Slice::Descending { before, after: None },
        };
        let channel = self.member_channel(user, channel).await?;
        let (messages, has_more) = self.read_slice(channel.id, slice, limit).await?;
        let last_seq = matches!(slice, Slice::Changes { .. }).then_some(channel.last_seq);
        Ok(Page { messages, has_more, last_seq })
    }

    /// Up to `limit` messages of the slice, and whether there are more.
    pub async fn read_slice(&self, channel: ChannelId, slice: Slice, limit: i64) -> Result<(Vec<Message>, bool)> {
        let mut messages = self.store.messages(channel, slice, limit + 1).await?;
        let has_more = messages.len() as i64 > limit;
        messages.truncate(limit as usize);
        Ok((messages, has_more))
    }

    // ---- read markers and unread ----

    /// Moves the read marker (never backwards); returns the marker's position and
    /// whether it moved.
    pub async fn mark_read(&self, user: UserId, channel: ChannelId, seq: i64) -> Result<(i64, bool)> {
        let channel = self.member_channel(user, channel).await?;
        if seq < 0 || seq > channel.last_seq {
            return Err(Error::invalid(format!("seq must be 0 to the channel's lastSeq ({})", channel.last_seq)));
        }
        self.store.advance_read(channel.id, user, seq).await?.ok_or_else(no_such_channel)
    }

    pub async fn unread(&self, user: UserId) -> Result<Unread> {
        let communities = self.store.communities_of(user).await?;
        let mut rows = self.store.unread(user).await?.into_iter().peekable();
        let mut out = Vec::with_capacity(communities.len());
        for community in communities {
            let mut channels = Vec::new();
            // Both are ordered by community id; rows of communities the user left are skipped.
            while let Some((cid, _)) = rows.peek() {
                if *cid < community.id {
                    rows.next();
                } else if *cid == community.id {
                    channels.push(rows.next().unwrap().1);
                } else {
                    break;
                }
            }
            let unread = channels.iter().map(|c| c.unread).sum();
            out.push(CommunityUnread { community_id: community.id, unread, channels });
        }
        Ok(Unread { communities: out })
    }
}
