//! Accounts' secrets: argon2 password hashes and signed, expiring session tokens.
//!
//! Tokens are HS256 JWTs (`sub` = user id, `exp`). The signing secret comes from
//! `BATON_SECRET`, or is generated once and kept in the database's `settings` table,
//! so a restart (or another instance of a cluster) accepts the tokens already given.

use std::time::Duration;

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString, rand_core::OsRng};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::store::{Store, UserId};

const SECRET_SETTING: &str = "token_secret";

/// Signs and checks session tokens.
#[derive(Clone)]
pub struct Tokens {
    encoding: EncodingKey,
    decoding: DecodingKey,
    ttl: Duration,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens").field("secret", &"<redacted>").field("ttl", &self.ttl).finish()
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    iat: u64,
}

impl Tokens {
    pub fn new(secret: &[u8], ttl: Duration) -> Self {
        Self { encoding: EncodingKey::from_secret(secret), decoding: DecodingKey::from_secret(secret), ttl }
    }

    /// The configured secret, or the one kept in the database (generated on first use).
    pub async fn load(configured: Option<&str>, store: &Store, ttl: Duration) -> anyhow::Result<Self> {
        let secret = match configured {
            Some(s) if s.len() < 32 => {
                anyhow::bail!("BATON_SECRET must be at least 32 bytes");
            }
            Some(s) => s.to_owned(),
            None => {
                let fresh: [u8; 32] = rand::random();
                let fresh: String = fresh.iter().map(|b| format!("{b:02x}")).collect();
                store.setting_or_insert(SECRET_SETTING, &fresh).await?
            }
        };
        Ok(Self::new(secret.as_bytes(), ttl))
    }

    pub fn issue(&self, user: UserId) -> String {
        let now = jsonwebtoken::get_current_timestamp();
        let claims = Claims { sub: user.to_string(), iat: now, exp: now + self.ttl.as_secs() };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .expect("HS256 signing with an in-memory key does not fail")
    }

    /// The user a token was issued to, if it is genuine and not expired.
    pub fn verify(&self, token: &str) -> Result<UserId> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &validation).map_err(|e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::ExpiredSignature => Error::unauthorized("the token has expired"),
            _ => Error::unauthorized("the token is not valid"),
        })?;
        data.claims.sub.parse().map_err(|_| Error::unauthorized("the token is not valid"))
    }
}

/// Runs `work` (an argon2 hash or check) on the blocking pool, at most one per core
/// at a time; `None` if it panicked. A hash is CPU-bound and takes 19 MiB: without the
/// bound, a burst of registrations or logins (a reconnect wave after a deploy, a
/// flood) ran dozens at once, and 40 concurrent logins took a server from 13 MB to
/// 900 MB of RSS. Waiting callers queue on the semaphore, not in memory.
async fn on_hashing_slot<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    static SLOTS: std::sync::OnceLock<tokio::sync::Semaphore> = std::sync::OnceLock::new();
    let slots = SLOTS.get_or_init(|| {
        tokio::sync::Semaphore::new(std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2))
    });
    let _slot = slots.acquire().await.expect("never closed");
    tokio::task::spawn_blocking(work).await.ok()
}

/// Hashes a password with argon2id (the crate's defaults: 19 MiB, 2 passes).
pub async fn hash_password(password: String) -> Result<String> {
    let hashed = on_hashing_slot(move || {
        let salt = SaltString::generate(&mut OsRng);
        Argon2::default().hash_password(password.as_bytes(), &salt).map(|h| h.to_string())
    })
    .await
    .ok_or_else(|| Error::unavailable("could not hash the password", HashingStopped))?;
    hashed.map_err(|e| Error::unavailable("could not hash the password", HashingFailed(e.to_string())))
}

/// The blocking pool went away (the runtime is shutting down).
#[derive(Debug, thiserror::Error)]
#[error("the hashing task did not finish")]
struct HashingStopped;

/// argon2 refused (its error type is not `std::error::Error` without `std`).
#[derive(Debug, thiserror::Error)]
#[error("argon2: {0}")]
struct HashingFailed(String);

/// Whether `password` matches the stored hash.
pub async fn verify_password(password: String, hash: String) -> bool {
    on_hashing_slot(move || {
        PasswordHash::new(&hash)
            .map(|parsed| Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok())
            .unwrap_or(false)
    })
    .await
    .unwrap_or(false)
}

/// A hash of a password nobody has, verified against when the username is unknown,
/// so that a login takes as long for an unknown user as for a wrong password.
pub fn decoy_hash() -> &'static str {
    static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DECOY.get_or_init(|| {
        let salt = SaltString::generate(&mut OsRng);
        Argon2::default().hash_password(b"decoy password, never valid", &salt).unwrap().to_string()
    })
}
