//! A tiny read-only HTTP/1.1 server for the daemons' status and metrics
//! endpoints: one request per connection, `GET` and `HEAD` only, answered
//! by a handler that sees the path, then the connection is closed.
//!
//! It is meant for loopback and a monitoring network, but takes hostile
//! input calmly: the request head is read within a size limit
//! ([`MAX_HEAD`]) and a time limit ([`HEAD_TIMEOUT`]); malformed or
//! oversized heads get `400`, other methods `405`; no more than
//! [`MAX_CONNECTIONS`] connections are served at once (others wait in the
//! listen backlog), and nothing a client sends can panic the server.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tracing::debug;

/// Largest request head (request line and headers) accepted.
pub const MAX_HEAD: usize = 8 * 1024;

/// Time a client gets to send its request head.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(5);

/// Time a client gets to take the response.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 32;

/// Why a listener could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen for HTTP on {addr}: {source}")]
pub struct BindError {
    pub addr: SocketAddr,
    #[source]
    pub source: std::io::Error,
}

/// Binds the listener (so a daemon fails at start, not later, when the
/// address is taken).
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, BindError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| BindError { addr, source })
}

/// A response: status, content type and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
}

impl Response {
    /// A JSON body.
    pub fn json(status: u16, body: String) -> Self {
        Self {
            status,
            content_type: "application/json",
            body,
        }
    }

    /// A plain-text body.
    pub fn text(status: u16, body: impl Into<String>) -> Self {
        Self {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into(),
        }
    }

    /// `404` with a short JSON error.
    pub fn not_found() -> Self {
        Self::json(404, "{\"error\":\"not found\"}\n".into())
    }

    /// `200` with Prometheus text exposition.
    pub fn metrics(body: String) -> Self {
        Self {
            status: 200,
            content_type: crate::metrics::CONTENT_TYPE,
            body,
        }
    }
}

/// Serves `/metrics` alone (anything else is `404`) from `listener` until
/// `shutdown` turns true; `render` makes each scrape's Prometheus text.
pub async fn serve_metrics<R, F>(listener: TcpListener, render: R, shutdown: watch::Receiver<bool>)
where
    R: Fn() -> F + Send + Sync + 'static,
    F: Future<Output = String> + Send + 'static,
{
    let handler = move |path: String| {
        let body = (path == "/metrics").then(&render);
        async move {
            match body {
                Some(body) => Response::metrics(body.await),
                None => Response::not_found(),
            }
        }
    };
    serve(listener, handler, shutdown).await;
}

/// Serves connections from `listener` until `shutdown` turns true; each
/// `GET`/`HEAD` request's path (query string removed) goes to `handler`.
pub async fn serve<H, F>(listener: TcpListener, handler: H, mut shutdown: watch::Receiver<bool>)
where
    H: Fn(String) -> F + Send + Sync + 'static,
    F: Future<Output = Response> + Send + 'static,
{
    let handler = Arc::new(handler);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let permit = tokio::select! {
            permit = slots.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            _ = shutdown.wait_for(|stop| *stop) => break,
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.wait_for(|stop| *stop) => break,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of descriptors and the like: wait, do not spin.
                debug!(%error, "http accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let handler = handler.clone();
        connections.spawn(async move {
            let _permit = permit;
            if let Err(error) = connection(stream, handler.as_ref()).await {
                debug!(%peer, %error, "http connection ended");
            }
        });
        // Reap finished connections so the set does not grow.
        while connections.try_join_next().is_some() {}
    }
    connections.shutdown().await;
}

/// What the request head asks for.
#[derive(Debug, PartialEq, Eq)]
enum Head {
    Get { path: String, head_only: bool },
    OtherMethod,
    Bad(&'static str),
}

async fn connection<H, F>(mut stream: TcpStream, handler: &H) -> std::io::Result<()>
where
    H: Fn(String) -> F,
    F: Future<Output = Response>,
{
    let head = match tokio::time::timeout(HEAD_TIMEOUT, read_head(&mut stream)).await {
        // Connected and closed without a word: nothing to answer.
        Ok(Ok(Some(bytes))) if bytes.is_empty() => return Ok(()),
        Ok(Ok(Some(bytes))) => parse_head(&bytes),
        Ok(Ok(None)) => Head::Bad("request head too large"),
        Ok(Err(error)) => return Err(error),
        Err(_) => {
            let response = Response::text(408, "request head not received in time\n");
            return respond(&mut stream, &response, false).await;
        }
    };
    let (response, head_only) = match head {
        Head::Get { path, head_only } => (handler(path).await, head_only),
        Head::OtherMethod => (Response::text(405, "only GET and HEAD are served\n"), false),
        Head::Bad(why) => (Response::text(400, format!("bad request: {why}\n")), false),
    };
    respond(&mut stream, &response, head_only).await
}

/// Reads up to the blank line ending the head; `None` when it exceeds
/// [`MAX_HEAD`]. A connection closed early yields what came (and is then
/// refused as malformed).
async fn read_head(stream: &mut TcpStream) -> std::io::Result<Option<Vec<u8>>> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(Some(head));
        }
        let scan_from = head.len().saturating_sub(3);
        head.extend_from_slice(&buf[..n]);
        if let Some(end) = find_end(&head[scan_from..]) {
            head.truncate(scan_from + end);
            return Ok((head.len() <= MAX_HEAD).then_some(head));
        }
        if head.len() > MAX_HEAD {
            return Ok(None);
        }
    }
}

/// Where the head ends (after `\r\n\r\n` or a bare `\n\n`).
fn find_end(bytes: &[u8]) -> Option<usize> {
    let crlf = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| i + 4);
    let lf = bytes.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn parse_head(bytes: &[u8]) -> Head {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return Head::Bad("not UTF-8");
    };
    if !text.ends_with("\n\n") && !text.ends_with("\r\n\r\n") {
        return Head::Bad("incomplete request head");
    }
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let request = lines.next().unwrap_or_default();
    let mut parts = request.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Head::Bad("malformed request line");
    };
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Head::Bad("malformed method");
    }
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        return Head::Bad("unsupported HTTP version");
    }
    if !target.starts_with('/') || !target.bytes().all(|b| b.is_ascii_graphic()) {
        return Head::Bad("malformed target");
    }
    for line in lines.filter(|l| !l.is_empty()) {
        match line.split_once(':') {
            Some((name, _)) if !name.is_empty() && name.bytes().all(|b| b.is_ascii_graphic()) => {}
            _ => return Head::Bad("malformed header"),
        }
    }
    let path = target.split(['?', '#']).next().unwrap_or(target).to_owned();
    match method {
        "GET" => Head::Get {
            path,
            head_only: false,
        },
        "HEAD" => Head::Get {
            path,
            head_only: true,
        },
        _ => Head::OtherMethod,
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// Writes the response and closes, letting the client read it first.
async fn respond(
    stream: &mut TcpStream,
    response: &Response,
    head_only: bool,
) -> std::io::Result<()> {
    let mut out = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n",
        response.status,
        reason(response.status),
        response.content_type,
        response.body.len()
    );
    if response.status == 405 {
        out.push_str("Allow: GET, HEAD\r\n");
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    if !head_only {
        bytes.extend_from_slice(response.body.as_bytes());
    }
    let written = async {
        stream.write_all(&bytes).await?;
        stream.shutdown().await
    };
    tokio::time::timeout(WRITE_TIMEOUT, written)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "response not taken"))??;
    // Drain what the client still sends (a body we did not want, say) for
    // a moment: closing with unread input would reset the connection and
    // could destroy the response before the client read it.
    let drain = async {
        let mut sink = [0u8; 4096];
        let mut left = 64 * 1024usize;
        while left > 0 {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_are_parsed_strictly() {
        assert_eq!(
            parse_head(b"GET /status?x=1 HTTP/1.1\r\nHost: a\r\n\r\n"),
            Head::Get {
                path: "/status".into(),
                head_only: false
            }
        );
        assert_eq!(
            parse_head(b"HEAD /metrics HTTP/1.0\n\n"),
            Head::Get {
                path: "/metrics".into(),
                head_only: true
            }
        );
        assert_eq!(
            parse_head(b"POST /status HTTP/1.1\r\n\r\n"),
            Head::OtherMethod
        );
        for bad in [
            &b"GET /status HTTP/1.1\r\n"[..],
            b"\r\n\r\n",
            b"GET /status\r\n\r\n",
            b"GET  /status HTTP/1.1\r\n\r\n",
            b"GET status HTTP/1.1\r\n\r\n",
            b"GET /status HTTP/2\r\n\r\n",
            b"get /status HTTP/1.1\r\n\r\n",
            b"GET /st\xffatus HTTP/1.1\r\n\r\n",
            b"GET /status HTTP/1.1\r\nno colon\r\n\r\n",
            b"GET /status HTTP/1.1\r\n: empty\r\n\r\n",
            b"\x00\x01\x02\n\n",
        ] {
            assert!(
                matches!(parse_head(bad), Head::Bad(_)),
                "{:?} accepted",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn the_end_of_a_head_is_found_with_either_line_ending() {
        assert_eq!(find_end(b"GET / HTTP/1.1\r\n\r\nbody"), Some(18));
        assert_eq!(find_end(b"GET / HTTP/1.1\n\nbody"), Some(16));
        assert_eq!(find_end(b"GET / HTTP/1.1\r\n"), None);
    }

    async fn exchange(addr: SocketAddr, request: &[u8]) -> String {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        // The server may answer (and close) before all of a large request
        // is written; that is its right.
        let _ = stream.write_all(request).await;
        let mut out = Vec::new();
        let _ = stream.read_to_end(&mut out).await;
        String::from_utf8_lossy(&out).into_owned()
    }

    #[tokio::test]
    async fn answers_routes_refuses_the_rest_and_keeps_serving() {
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, shutdown) = watch::channel(false);
        let server = tokio::spawn(serve(
            listener,
            |path: String| async move {
                if path == "/hello" {
                    Response::text(200, "hi\n")
                } else {
                    Response::not_found()
                }
            },
            shutdown,
        ));
        let ok = exchange(addr, b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(
            ok.contains("Content-Length: 3\r\n") && ok.ends_with("\r\n\r\nhi\n"),
            "{ok}"
        );
        let head = exchange(addr, b"HEAD /hello HTTP/1.1\r\n\r\n").await;
        assert!(
            head.starts_with("HTTP/1.1 200") && head.ends_with("\r\n\r\n"),
            "{head}"
        );
        let missing = exchange(addr, b"GET /nope HTTP/1.1\r\n\r\n").await;
        assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");
        let post = exchange(
            addr,
            b"POST /hello HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
        )
        .await;
        assert!(
            post.starts_with("HTTP/1.1 405") && post.contains("Allow: GET, HEAD"),
            "{post}"
        );
        let garbage = exchange(addr, b"\x16\x03\x01\x02\x00\x01\x00\r\n\r\n").await;
        assert!(garbage.starts_with("HTTP/1.1 400"), "{garbage}");
        let mut huge = b"GET /hello HTTP/1.1\r\nX-Long: ".to_vec();
        huge.extend(std::iter::repeat_n(b'a', 3 * MAX_HEAD));
        huge.extend_from_slice(b"\r\n\r\n");
        let oversized = exchange(addr, &huge).await;
        assert!(oversized.starts_with("HTTP/1.1 400"), "{oversized}");
        // A client that connects and says nothing holds one slot, not the
        // server.
        let _silent = TcpStream::connect(addr).await.unwrap();
        let again = exchange(addr, b"GET /hello HTTP/1.0\r\n\r\n").await;
        assert!(again.starts_with("HTTP/1.1 200"), "{again}");
        stop.send(true).unwrap();
        server.await.unwrap();
    }
}
