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
    loop {
        let request = match read_request(&mut stream, &mut buf, hub.config.max_message).await {
            Ok(Some(request)) => request,
            Ok(None) => return,
            Err(response) => {
                let _ = write_response(&mut stream, &response, false).await;
                return;
            }
        };
        if let Some(upgrade) = &request.upgrade {
            let accept = derive_accept_key(upgrade.key.as_bytes());
            let head = format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Accept: {accept}\r\n\r\n"
            );
            if stream.write_all(head.as_bytes()).await.is_err() {
                return;
            }
            // Whatever the client sent after the request is WebSocket already.
            let early = std::mem::take(&mut buf);
            return crate::conn::run(hub, stream, early).await;
        }
        let response = rest::handle(&hub, &request);
        if write_response(&mut stream, &response, request.keep_alive).await.is_err() || !request.keep_alive {
            return;
        }
    }
}

/// The next request, with the bytes read past it left in `buf`; `None` when the client
/// closed between requests; an error response for a request the floor will not serve.
async fn read_request(stream: &mut TcpStream, buf: &mut Vec<u8>, max_body: usize) -> Result<Option<Request>, Response> {
    loop {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut parsed = httparse::Request::new(&mut headers);
        match parsed.parse(buf) {
            Ok(httparse::Status::Complete(head_len)) => {
                let (mut request, body_len) = head(&parsed, max_body)?;
                while buf.len() < head_len + body_len {
                    if read_more(stream, buf).await? == 0 {
                        return Err(Response::error(400, "invalid", "the body ended early"));
                    }
                }
                request.body = buf[head_len..head_len + body_len].to_vec();
                buf.drain(..head_len + body_len);
                return Ok(Some(request));
            }
            Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => {}
            Ok(httparse::Status::Partial) => return Err(Response::error(431, "too_large", "request head too large")),
            Err(_) => return Err(Response::error(400, "invalid", "malformed HTTP request")),
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

async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<usize, Response> {
    let mut chunk = [0u8; 4096];
    let n = stream.read(&mut chunk).await.map_err(|_| Response::error(400, "invalid", "read failed"))?;
    buf.extend_from_slice(&chunk[..n]);
    Ok(n)
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
