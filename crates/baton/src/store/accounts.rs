//! Accounts: users, their names, display names and password hashes. The password
//! itself never reaches the store, only its argon2 hash (`auth`).

use serde::Serialize;

use super::{Store, UserId, on_pool};

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
#[serde(rename_all = "camelCase")]
pub struct User {
    pub id: UserId,
    pub username: String,
    pub display_name: String,
}

/// A user row with the password hash, for logging in.
#[derive(Debug, sqlx::FromRow)]
pub struct Credentials {
    pub id: UserId,
    pub password_hash: String,
}

impl Store {
    /// Inserts a user; a taken username fails the constraint `users_username_key`.
    pub async fn insert_user(
        &self,
        username: &str,
        display_name: &str,
        password_hash: &str,
        now: i64,
    ) -> Result<User, sqlx::Error> {
        on_pool!(self.pools.write(), "insert_user", |pool| {
            sqlx::query_as::<_, User>(
                "INSERT INTO users (username, display_name, password_hash, created_at) \
                 VALUES ($1, $2, $3, $4) RETURNING id, username, display_name",
            )
            .bind(username)
            .bind(display_name)
            .bind(password_hash)
            .bind(now)
            .fetch_one(pool)
            .await
        })
    }

    pub async fn credentials(&self, username: &str) -> Result<Option<Credentials>, sqlx::Error> {
        on_pool!(self.pools.read(), "credentials", |pool| {
            sqlx::query_as("SELECT id, password_hash FROM users WHERE username = $1")
                .bind(username)
                .fetch_optional(pool)
                .await
        })
    }

    pub async fn user(&self, id: UserId) -> Result<Option<User>, sqlx::Error> {
        on_pool!(self.pools.read(), "user", |pool| {
            sqlx::query_as("SELECT id, username, display_name FROM users WHERE id = $1")
                .bind(id)
                .fetch_optional(pool)
                .await
        })
    }

    pub async fn user_by_name(&self, username: &str) -> Result<Option<User>, sqlx::Error> {
        on_pool!(self.pools.read(), "user_by_name", |pool| {
            sqlx::query_as("SELECT id, username, display_name FROM users WHERE username = $1")
                .bind(username)
                .fetch_optional(pool)
                .await
        })
    }
}
