//! The protocol's errors as HTTP responses: each code's status, and the edge where a
//! REST request's error is logged and counted ([`Error::report`]).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::error::{Code, Error};

/// The HTTP status of each of PROTOCOL.md's codes.
pub fn status(code: Code) -> StatusCode {
    match code {
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

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        self.report("rest");
        (status(self.code), axum::Json(self.body())).into_response()
    }
}
