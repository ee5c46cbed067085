//! The web client, served by baton itself: every asset is embedded in the binary
//! (no CDN, nothing fetched at run time), at `/` and under `/web/`. The sources are
//! the repository's `web/`, beside the crates: the same files the JS tests import.

use axum::Router;
use axum::extract::Path;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::AppState;
use crate::error::Error;

/// The bytes of a file of the repository's `web/`.
macro_rules! web_file {
    ($name:literal) => {
        include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/../../web/", $name))
    };
}

/// (path under /web/, content type, bytes)
const ASSETS: &[(&str, &str, &[u8])] = &[
    ("app.js", "text/javascript; charset=utf-8", web_file!("app.js")),
    ("baton-client.js", "text/javascript; charset=utf-8", web_file!("baton-client.js")),
    ("style.css", "text/css; charset=utf-8", web_file!("style.css")),
    ("vendor/socket.io.esm.min.js", "text/javascript; charset=utf-8", web_file!("vendor/socket.io.esm.min.js")),
];

const INDEX: &[u8] = web_file!("index.html");

/// Scripts and styles from this origin only, sockets to this origin: message
/// content is rendered as text, and this keeps any slip from running code.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self' ws: wss:; frame-ancestors 'none'; base-uri 'none'";

pub fn router() -> Router<AppState> {
    Router::new().route("/", get(index)).route("/web/{*path}", get(asset))
}

fn page(content_type: &'static str, body: &'static [u8]) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

async fn index() -> Response {
    page("text/html; charset=utf-8", INDEX)
}

async fn asset(Path(path): Path<String>) -> Response {
    match ASSETS.iter().find(|(name, _, _)| *name == path) {
        Some((_, content_type, body)) => page(content_type, body),
        None => Error::not_found("no such asset").into_response(),
    }
}
