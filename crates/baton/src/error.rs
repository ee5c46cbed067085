//! The error type that IS the wire contract: every failure a client can see is one
//! of PROTOCOL.md's codes, rendered as `{"error": {"code", "message"}}` in REST
//! bodies and in Socket.IO acks alike. Internal failures are logged once, here, and
//! reach the client as `unavailable` without details.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// PROTOCOL.md's error codes, in its order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Code {
    Invalid,
    Unauthorized,
    Forbidden,
    NotFound,
    Conflict,
    TooLarge,
    RateLimited,
    Unavailable,
    Draining,
}

impl Code {
    pub fn as_str(self) -> &'static str {
        match self {
            Code::Invalid => "invalid",
            Code::Unauthorized => "unauthorized",
            Code::Forbidden => "forbidden",
            Code::NotFound => "not_found",
            Code::Conflict => "conflict",
            Code::TooLarge => "too_large",
            Code::RateLimited => "rate_limited",
            Code::Unavailable => "unavailable",
            Code::Draining => "draining",
        }
    }

    pub fn status(self) -> StatusCode {
        match self {
            Code::Invalid => StatusCode::BAD_REQUEST,
            Code::Unauthorized => StatusCode::UNAUTHORIZED,
            Code::Forbidden => StatusCode::FORBIDDEN,
            Code::NotFound => StatusCode::NOT_FOUND,
            Code::Conflict => StatusCode::CONFLICT,
            Code::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Code::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Code::Unavailable | Code::Draining => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

impl std::fmt::Display for Code {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failure the client is told about: a code and a human sentence.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{code}: {message}")]
pub struct Error {
    pub code: Code,
    pub message: String,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        if code == Code::Unavailable {
            // The server's own failures, as a canary's error rate watches them.
            metrics::counter!(crate::metrics::SERVER_ERRORS).increment(1);
        }
        Self { code, message: message.into() }
    }
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(Code::Invalid, message)
    }
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(Code::Unauthorized, message)
    }
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(Code::Forbidden, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(Code::NotFound, message)
    }
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(Code::Conflict, message)
    }
    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(Code::TooLarge, message)
    }

    /// The `{"error": {...}}` body shared by REST responses and acks.
    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({ "error": { "code": self.code, "message": self.message } })
    }
}

/// Database failures are ours, not the client's: log the cause, answer `unavailable`.
/// Constraint violations that mean "already exists" are mapped at the call site.
impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Self {
        tracing::error!(error = %e, "database error");
        Error::new(Code::Unavailable, "the database is unavailable, try again")
    }
}

/// Turns the unique violation a write expects (a taken name) into the caller's error,
/// at the call site, as realworld-axum-sqlx's `on_constraint`; every other database
/// error stays one (and becomes `unavailable`).
pub trait OnConstraint<T> {
    fn on_constraint(self, constraint: &str, error: impl FnOnce() -> Error) -> Result<T>;
}

impl<T> OnConstraint<T> for std::result::Result<T, sqlx::Error> {
    fn on_constraint(self, constraint: &str, error: impl FnOnce() -> Error) -> Result<T> {
        self.map_err(|e| match e.as_database_error() {
            // SQLite names the columns, not the constraint: any unique violation of
            // the statement is the one it can break.
            Some(d) if d.is_unique_violation() && d.constraint().is_none_or(|c| c == constraint) => error(),
            _ => Error::from(e),
        })
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        (self.code.status(), axum::Json(self.body())).into_response()
    }
}
