//! The error type that IS the wire contract: every failure a client can see is one
//! of PROTOCOL.md's codes, rendered as `{"error": {"code", "message"}}` in REST
//! bodies and in Socket.IO acks alike. It carries no transport: the HTTP status of
//! each code is `http/`'s business.
//!
//! An internal failure (the database, Redis) becomes `unavailable` without details
//! for the client, and keeps its cause. It is logged and counted once, at the edge
//! where it reaches a client ([`Error::report`]: the REST response, the socket ack,
//! the refused connect), not where it is converted; a cause that was already logged
//! where it arose (one failed batch for its N messages) is counted, not logged again.

use std::sync::Arc;

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
}

impl std::fmt::Display for Code {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failure the client is told about: a code and a human sentence, and, for the
/// server's own failures, their cause.
#[derive(Debug, Clone)]
pub struct Error {
    pub code: Code,
    pub message: String,
    /// What made it happen (for the log; the client sees `message` only).
    cause: Option<Arc<dyn std::error::Error + Send + Sync>>,
    /// The cause was logged where it arose (see [`AlreadyLogged`]).
    logged: bool,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)?;
        if let Some(cause) = &self.cause {
            write!(f, " ({cause})")?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.cause.as_deref().map(|c| c as &(dyn std::error::Error + 'static))
    }
}

/// A failure that was logged, with its context, where it arose, and that reaches
/// several clients: one failed batch of new messages answers each of its senders
/// with it. [`Error::report`] counts each, and logs none again.
#[derive(Debug)]
pub struct AlreadyLogged(pub String);

impl std::fmt::Display for AlreadyLogged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for AlreadyLogged {}

impl Error {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Self { code, message: message.into(), cause: None, logged: false }
    }

    /// The server's own failure: `unavailable`, with what caused it.
    pub fn unavailable(message: impl Into<String>, cause: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self { cause: Some(Arc::new(cause)), ..Self::new(Code::Unavailable, message) }
    }

    /// Logs and counts the error as it reaches a client, once, at the edge (`what`:
    /// the request or event). A server failure is counted in
    /// `baton_server_errors_total`, as a canary's error rate watches it, and logged
    /// with its cause unless that was logged where it arose (one with no cause, such
    /// as `/readyz`'s, is only traced); a client's error is only traced.
    pub fn report(&self, what: &str) {
        if self.code == Code::Unavailable {
            metrics::counter!(crate::metrics::SERVER_ERRORS).increment(1);
            match &self.cause {
                Some(cause) if !self.logged => {
                    tracing::error!(what, error = %self.message, cause = %cause, "server error")
                }
                // Logged where it arose, or a plain statement with nothing behind it
                // (`/readyz` saying the database is unreachable, at every probe).
                _ => tracing::debug!(what, error = %self.message, "server error"),
            }
        } else {
            tracing::debug!(what, code = %self.code, error = %self.message, "refused");
        }
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

/// Database failures are ours, not the client's: `unavailable`, with the cause kept
/// for the log at the edge. Constraint violations that mean "already exists" are
/// mapped at the call site ([`OnConstraint`]).
impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Self {
        let logged = matches!(&e, sqlx::Error::Io(io) if io.get_ref().is_some_and(|inner| inner.is::<AlreadyLogged>()));
        Self { logged, ..Error::unavailable("the database is unavailable, try again", e) }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_database_error_keeps_its_cause_and_tells_the_client_nothing_of_it() {
        let e = Error::from(sqlx::Error::PoolTimedOut);
        assert_eq!(e.code, Code::Unavailable);
        assert!(!e.logged);
        assert!(std::error::Error::source(&e).is_some_and(|c| c.to_string().contains("timed out")), "{e}");
        assert!(!e.body().to_string().contains("timed out"), "the body names no cause");
    }

    #[test]
    fn a_failure_logged_where_it_arose_is_not_logged_again() {
        let batch = AlreadyLogged("the batch of new messages failed: boom".into());
        let e = Error::from(sqlx::Error::Io(std::io::Error::other(batch)));
        assert_eq!(e.code, Code::Unavailable);
        assert!(e.logged);
    }
}
