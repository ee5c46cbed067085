//! HTTP/1.1 on an accepted TCP connection: requests read with httparse, REST answered by
//! [`crate::rest`], and the WebSocket upgrade of `/socket.io/?EIO=4&transport=websocket`,
//! after which the same task runs the connection ([`crate::conn`]).
//!
//! Invariant: one task per TCP connection from accept to close; a request is read whole
//! (head, then a `Content-Length` body of at most the configured size) before it is
//! answered, and answers go out in request order (keep-alive, no pipelining surprises).

use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use crate::hub::Hub;
use crate::rest::{self, Response};

/// Largest request head: the bench's are a few hundred bytes.
const MAX_HEAD: usize = 16 * 1024;
const MAX_HEADERS: usize = 32;

/// What the connection's first requests lead to.
pub struct Request {
    pub method: String,
    pub path: String,
    pub token: Option<String>,
    pub body: Vec<u8>,
    keep_alive: bool,
    upgrade: Option<Upgrade>,
}

/// A WebSocket upgrade's key, on the Engine.IO path.
struct Upgrade {
    key: String,
}

/// Serves one accepted connection until it closes.
pub async fn serve(hub: Arc<Hub>, mut stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let mut buf = Vec::new();
    // Only the upgrade's key leaves this loop: nothing of the requests stays in the task
    // while the WebSocket connection runs.
    let upgrade = loop {
        match read_request(&mut stream, &mut buf, hub.config.max_message).await {
            Ok(Some(Request { upgrade: Some(upgrade), .. })) => break upgrade,
            Ok(Some(request)) => {
                let response = rest::handle(&hub, &request);
                if write_response(&mut stream, &response, request.keep_alive).await.is_err() || !request.keep_alive {
                    return;
                }
            }
            Ok(None) => return,
            Err(response) => {
                let _ = write_response(&mut stream, &response, false).await;
                return;
            }
        }
    };
    let accept = derive_accept_key(upgrade.key.as_bytes());
    drop(upgrade);
    let head = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
    );
    drop(accept);
    if stream.write_all(head.as_bytes()).await.is_err() {
        return;
    }
    drop(head);
    // Whatever the client sent after the request is WebSocket already.
    crate::conn::run(hub, stream, buf).await
}

/// The next request, with the bytes read past it left in `buf`; `None` when the client
/// closed between requests; an error response for a request the floor will not serve.
async fn read_request(stream: &mut TcpStream, buf: &mut Vec<u8>, max_body: usize) -> Result<Option<Request>, Response> {
    loop {
        if let Some((mut request, head_len, body_len)) = parse(buf, max_body)? {
            while buf.len() < head_len + body_len {
                if read_more(stream, buf).await? == 0 {
                    return Err(Response::error(400, "invalid", "the body ended early"));
                }
            }
            request.body = buf[head_len..head_len + body_len].to_vec();
            buf.drain(..head_len + body_len);
            return Ok(Some(request));
        }
        if read_more(stream, buf).await? == 0 {
            return if buf.is_empty() {
                Ok(None)
            } else {
                Err(Response::error(400, "invalid", "the request ended early"))
            };
        }
    }
}

/// The request whose head `buf` starts with, with the head's length and the body's, or
/// `None` while the head is incomplete. Not async: httparse's header array (1 KiB) stays on
/// the stack instead of in the connection's task.
fn parse(buf: &[u8], max_body: usize) -> Result<Option<(Request, usize, usize)>, Response> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    match parsed.parse(buf) {
        Ok(httparse::Status::Complete(head_len)) => {
            let (request, body_len) = head(&parsed, max_body)?;
            Ok(Some((request, head_len, body_len)))
        }
        Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => Ok(None),
        Ok(httparse::Status::Partial) => Err(Response::error(431, "too_large", "request head too large")),
        Err(_) => Err(Response::error(400, "invalid", "malformed HTTP request")),
    }
}

/// Reads what the client sent into `buf`'s spare room (no buffer of its own: a buffer held
/// across the read would live in the connection's task for its whole life).
async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<usize, Response> {
    buf.reserve(1024);
    stream.read_buf(buf).await.map_err(|_| Response::error(400, "invalid", "read failed"))
}

/// The request of a complete head, and the length of its body.
fn head(parsed: &httparse::Request<'_, '_>, max_body: usize) -> Result<(Request, usize), Response> {
    let header = |name: &str| {
        parsed
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(h.value).ok())
            .map(str::trim)
    };
    let has_token = |name: &str, token: &str| {
        header(name).is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    };
    let method = parsed.method.unwrap_or_default().to_owned();
    let path = parsed.path.unwrap_or_default().to_owned();
    if header("transfer-encoding").is_some() {
        return Err(Response::error(411, "invalid", "send the body with Content-Length"));
    }
    let body_len: usize = match header("content-length") {
        None => 0,
        Some(v) => v.parse().map_err(|_| Response::error(400, "invalid", "bad Content-Length"))?,
    };
    if body_len > max_body {
        return Err(Response::error(413, "too_large", "request body too large"));
    }
    let http11 = parsed.version == Some(1);
    let keep_alive = if http11 { !has_token("connection", "close") } else { has_token("connection", "keep-alive") };
    let token = header("authorization").and_then(|v| v.strip_prefix("Bearer ")).map(|t| t.trim().to_owned());
    let mut upgrade = None;
    if let Some(query) = path.strip_prefix("/socket.io/") {
        let query = query.trim_start_matches('?');
        let param = |name: &str| query.split('&').find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='));
        if param("EIO") != Some("4") {
            return Err(Response::engine_error(5, "Unsupported protocol version"));
        }
        // WebSocket only: no long-polling (README.md).
        if param("transport") != Some("websocket") || !has_token("upgrade", "websocket") || method != "GET" {
            return Err(Response::engine_error(0, "Transport unknown"));
        }
        let key = header("sec-websocket-key").ok_or_else(|| Response::engine_error(3, "Bad request"))?;
        if header("sec-websocket-version") != Some("13") {
            return Err(Response::engine_error(3, "Bad request"));
        }
        upgrade = Some(Upgrade { key: key.to_owned() });
    }
    Ok((Request { method, path, token, body: Vec::new(), keep_alive, upgrade }, body_len))
}

async fn write_response(stream: &mut TcpStream, response: &Response, keep_alive: bool) -> std::io::Result<()> {
    let connection = if keep_alive { "keep-alive" } else { "close" };
    let head = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: {connection}\r\n\r\n",
        response.status,
        reason(response.status),
        response.body.len()
    );
    let mut out = head.into_bytes();
    out.extend_from_slice(response.body.as_bytes());
    stream.write_all(&out).await
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Payload Too Large",
        431 => "Request Header Fields Too Large",
        _ => "",
    }
}
