//! Communities and their channels, and who is a member of which, with their role.
//! A channel's membership is what every permission check of the domain reads
//! ([`ChannelAccess`]); the SQL never decides a permission itself.

use serde::Serialize;

use super::{ChannelId, CommunityId, Dialect, Pool, Store, User, UserId, on_pool};

/// A member's role in a community: stored as the text `owner` or `member`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Owner,
    Member,
}

impl Role {
    fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Member => "member",
        }
    }
}

impl<DB: sqlx::Database> sqlx::Type<DB> for Role
where
    str: sqlx::Type<DB>,
{
    fn type_info() -> DB::TypeInfo {
        <str as sqlx::Type<DB>>::type_info()
    }

    fn compatible(ty: &DB::TypeInfo) -> bool {
        <str as sqlx::Type<DB>>::compatible(ty)
    }
}

impl<'r, DB: sqlx::Database> sqlx::Decode<'r, DB> for Role
where
    &'r str: sqlx::Decode<'r, DB>,
{
    fn decode(value: <DB as sqlx::Database>::ValueRef<'r>) -> Result<Self, sqlx::error::BoxDynError> {
        match <&'r str as sqlx::Decode<'r, DB>>::decode(value)? {
            "owner" => Ok(Role::Owner),
            "member" => Ok(Role::Member),
            other => Err(format!("unknown community role {other:?}").into()),
        }
    }
}

/// A community's member: the user and their role in it.
#[derive(Debug, Clone, Serialize)]
pub struct CommunityMember {
    #[serde(flatten)]
    pub user: User,
    pub role: Role,
}

#[derive(Debug, Clone, Serialize)]
pub struct Community {
    pub id: CommunityId,
    pub name: String,
    pub role: Role,
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
#[serde(rename_all = "camelCase")]
pub struct Channel {
    pub id: ChannelId,
    pub community_id: CommunityId,
    pub name: String,
    pub private: bool,
    pub last_seq: i64,
}

/// A channel as seen by one user: the channel and where the user stands in it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ChannelAccess {
    #[sqlx(flatten)]
    pub channel: Channel,
    /// The user's role in the channel's community, if a member of it.
    pub community_role: Option<Role>,
    /// Whether the user is a member of the channel.
    pub channel_member: bool,
}

impl Store {
    pub async fn insert_community(&self, owner: UserId, name: &str, now: i64) -> Result<Community, sqlx::Error> {
        on_pool!(self.pools.write(), "insert_community", |pool| {
            let mut tx = pool.begin().await?;
            let id: i64 = sqlx::query_scalar(
                "INSERT INTO communities (name, owner_id, created_at) VALUES ($1, $2, $3) RETURNING id",
            )
            .bind(name)
            .bind(owner)
            .bind(now)
            .fetch_one(&mut *tx)
            .await?;
            sqlx::query(
                "INSERT INTO community_members (community_id, user_id, role, joined_at) VALUES ($1, $2, $3, $4)",
            )
            .bind(id)
            .bind(owner)
            .bind(Role::Owner.as_str())
            .bind(now)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(Community { id, name: name.to_owned(), role: Role::Owner })
        })
    }

    pub async fn communities_of(&self, user: UserId) -> Result<Vec<Community>, sqlx::Error> {
        let rows: Vec<(i64, String, Role)> = on_pool!(self.pools.read(), "communities_of", |pool| {
            sqlx::query_as(
                "SELECT c.id, c.name, cm.role FROM community_members cm \
                 JOIN communities c ON c.id = cm.community_id WHERE cm.user_id = $1 ORDER BY c.id",
            )
            .bind(user)
            .fetch_all(pool)
            .await
        })?;
        Ok(rows.into_iter().map(|(id, name, role)| Community { id, name, role }).collect())
    }

    /// The user's role in the community; `Ok(None)` if not a member (or no such community).
    pub async fn community_role(&self, community: CommunityId, user: UserId) -> Result<Option<Role>, sqlx::Error> {
        on_pool!(self.pools.read(), "community_role", |pool| {
            sqlx::query_scalar("SELECT role FROM community_members WHERE community_id = $1 AND user_id = $2")
                .bind(community)
                .bind(user)
                .fetch_optional(pool)
                .await
        })
    }

    /// The community's members by username.
    pub async fn community_members(&self, community: CommunityId) -> Result<Vec<CommunityMember>, sqlx::Error> {
        let rows: Vec<(i64, String, String, Role)> = on_pool!(self.pools.read(), "community_members", |pool| {
            sqlx::query_as(
                "SELECT u.id, u.username, u.display_name, cm.role FROM community_members cm \
                 JOIN users u ON u.id = cm.user_id WHERE cm.community_id = $1 ORDER BY u.username",
            )
            .bind(community)
            .fetch_all(pool)
            .await
        })?;
        Ok(rows
            .into_iter()
            .map(|(id, username, display_name, role)| CommunityMember {
                user: User { id, username, display_name },
                role,
            })
            .collect())
    }

    pub async fn community_exists(&self, community: CommunityId) -> Result<bool, sqlx::Error> {
        on_pool!(self.pools.read(), "community_exists", |pool| {
            sqlx::query_scalar::<_, i64>("SELECT id FROM communities WHERE id = $1")
                .bind(community)
                .fetch_optional(pool)
                .await
                .map(|r| r.is_some())
        })
    }

    /// Adds a member; `false` if the user already was one.
    pub async fn insert_community_member(
        &self,
        community: CommunityId,
        user: UserId,
        now: i64,
    ) -> Result<bool, sqlx::Error> {
        on_pool!(self.pools.write(), "insert_community_member", |pool| {
            sqlx::query(
                "INSERT INTO community_members (community_id, user_id, role, joined_at) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (community_id, user_id) DO NOTHING",
            )
            .bind(community)
            .bind(user)
            .bind(Role::Member.as_str())
            .bind(now)
            .execute(pool)
            .await
            .map(|r| r.rows_affected() == 1)
        })
    }

    /// Creates a channel with its creator as first member; a name taken in the
    /// community fails the constraint `channels_community_name_key`.
    pub async fn insert_channel(
        &self,
        community: CommunityId,
        creator: UserId,
        name: &str,
        private: bool,
        now: i64,
    ) -> Result<Channel, sqlx::Error> {
        on_pool!(self.pools.write(), "insert_channel", |pool| {
            async {
                let mut tx = pool.begin().await?;
                let channel: Channel = sqlx::query_as(
                    "INSERT INTO channels (community_id, name, private, last_seq, last_event_at, created_at) \
                     VALUES ($1, $2, $3, 0, $4, $4) RETURNING id, community_id, name, private, last_seq",
                )
                .bind(community)
                .bind(name)
                .bind(private)
                .bind(now)
                .fetch_one(&mut *tx)
                .await?;
                sqlx::query(
                    "INSERT INTO channel_members (channel_id, user_id, read_seq, joined_at) VALUES ($1, $2, 0, $3)",
                )
                .bind(channel.id)
                .bind(creator)
                .bind(now)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(channel)
            }
            .await
        })
    }

    /// Public channels of the community and the private ones the user is in.
    pub async fn visible_channels(&self, community: CommunityId, user: UserId) -> Result<Vec<Channel>, sqlx::Error> {
        on_pool!(self.pools.read(), "visible_channels", |pool| {
            sqlx::query_as(
                "SELECT c.id, c.community_id, c.name, c.private, c.last_seq FROM channels c \
                 WHERE c.community_id = $1 AND (c.private = FALSE OR EXISTS \
                   (SELECT 1 FROM channel_members m WHERE m.channel_id = c.id AND m.user_id = $2)) \
                 ORDER BY c.id",
            )
            .bind(community)
            .bind(user)
            .fetch_all(pool)
            .await
        })
    }

    /// The channel and the user's standing in it; `None` if there is no such channel.
    pub async fn channel_access(&self, channel: ChannelId, user: UserId) -> Result<Option<ChannelAccess>, sqlx::Error> {
        channel_access(self.pools.read(), channel, user).await
    }

    /// Of `channels`, those in `community` that `user` is a member of.
    pub async fn member_channels_among(
        &self,
        community: CommunityId,
        user: UserId,
        channels: &[ChannelId],
    ) -> Result<Vec<ChannelId>, sqlx::Error> {
        if channels.is_empty() {
            return Ok(Vec::new());
        }
        // PostgreSQL: the list is one array parameter, so the statement is the same
        // text every time, prepared once per connection. (Inlined, each list was a
        // statement of its own, prepared anew at every call and pushing the others
        // out of the connection's statement cache.)
        macro_rules! select {
            () => {
                "SELECT m.channel_id FROM channel_members m JOIN channels c ON c.id = m.channel_id \
                 WHERE m.user_id = $1 AND c.community_id = $2"
            };
        }
        if let Dialect::Postgres(pg) = self.pools.read().dialect {
            let sql = concat!(select!(), " AND m.channel_id = ANY($3) ORDER BY m.channel_id");
            return on_pool!(self.pools.read(), "member_channels_among", |_pool| sqlx::query_scalar(sql)
                .bind(user)
                .bind(community)
                .bind(channels)
                .fetch_all(pg)
                .await);
        }
        // SQLite has no array parameter: the ids (integers we parsed, so inlining them
        // is safe) are inlined, in a statement kept out of the connection's statement
        // cache, where each list would take the place of a statement used again.
        let list = channels.iter().map(i64::to_string).collect::<Vec<_>>().join(",");
        let sql = format!(concat!(select!(), " AND m.channel_id IN ({}) ORDER BY m.channel_id"), list);
        on_pool!(self.pools.read(), "member_channels_among", |pool| sqlx::query_scalar(&sql)
            .persistent(false)
            .bind(user)
            .bind(community)
            .fetch_all(pool)
            .await)
    }

    /// Adds a channel member; `false` if the user already was one.
    pub async fn insert_channel_member(&self, channel: ChannelId, user: UserId, now: i64) -> Result<bool, sqlx::Error> {
        on_pool!(self.pools.write(), "insert_channel_member", |pool| {
            sqlx::query(
                "INSERT INTO channel_members (channel_id, user_id, read_seq, joined_at) VALUES ($1, $2, 0, $3) \
                 ON CONFLICT (channel_id, user_id) DO NOTHING",
            )
            .bind(channel)
            .bind(user)
            .bind(now)
            .execute(pool)
            .await
            .map(|r| r.rows_affected() == 1)
        })
    }

    /// Removes a channel member; `false` if the user was not one.
    pub async fn delete_channel_member(&self, channel: ChannelId, user: UserId) -> Result<bool, sqlx::Error> {
        on_pool!(self.pools.write(), "delete_channel_member", |pool| {
            sqlx::query("DELETE FROM channel_members WHERE channel_id = $1 AND user_id = $2")
                .bind(channel)
                .bind(user)
                .execute(pool)
                .await
                .map(|r| r.rows_affected() == 1)
        })
    }

    pub async fn channel_member_ids(&self, channel: ChannelId) -> Result<Vec<UserId>, sqlx::Error> {
        on_pool!(self.pools.read(), "channel_member_ids", |pool| {
            sqlx::query_scalar("SELECT user_id FROM channel_members WHERE channel_id = $1")
                .bind(channel)
                .fetch_all(pool)
                .await
        })
    }

    /// Channels whose event sequence moved at or after `since_ms`:
    /// `(channel, community, last_seq)`, for the `position` emit.
    pub async fn recently_active(&self, since_ms: i64) -> Result<Vec<(ChannelId, CommunityId, i64)>, sqlx::Error> {
        on_pool!(self.pools.read(), "recently_active", |pool| {
            sqlx::query_as("SELECT id, community_id, last_seq FROM channels WHERE last_event_at >= $1")
                .bind(since_ms)
                .fetch_all(pool)
                .await
        })
    }
}

/// The channel and the user's standing in it; `None` if there is no such channel.
pub(super) async fn channel_access(
    pool: Pool<'_>,
    channel: ChannelId,
    user: UserId,
) -> Result<Option<ChannelAccess>, sqlx::Error> {
    on_pool!(pool, "channel_access", |pool| {
        sqlx::query_as(
            "SELECT c.id, c.community_id, c.name, c.private, c.last_seq, \
               (SELECT cm.role FROM community_members cm WHERE cm.community_id = c.community_id AND cm.user_id = $2) \
                 AS community_role, \
               EXISTS (SELECT 1 FROM channel_members m WHERE m.channel_id = c.id AND m.user_id = $2) \
                 AS channel_member \
             FROM channels c WHERE c.id = $1",
        )
        .bind(channel)
        .bind(user)
        .fetch_optional(pool)
        .await
    })
}
