//! A minimal HTTP client for the daemons' status and metrics endpoints:
//! one request per connection, the whole answer read until the server
//! closes, and the Prometheus text checked line by line.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The value of one series in scraped samples.
pub use crate::prometheus::value;

/// An answer.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    /// The status line and headers.
    pub head: String,
    pub body: String,
}

impl Reply {
    /// A header's value (name case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// `GET path`.
pub async fn get(addr: SocketAddr, path: &str) -> anyhow::Result<Reply> {
    exchange(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: ferry-tests\r\n\r\n")
            .as_bytes(),
    )
    .await
}

/// Sends `request` as it is and reads the answer until the server closes.
/// A server may answer (and close) before it has read everything.
pub async fn exchange(addr: SocketAddr, request: &[u8]) -> anyhow::Result<Reply> {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await?;
        let _ = stream.write_all(request).await;
        let mut out = Vec::new();
        // A reset after a complete answer still leaves the answer.
        let _ = stream.read_to_end(&mut out).await;
        anyhow::Ok(out)
    };
    let out = tokio::time::timeout(Duration::from_secs(20), exchange)
        .await
        .map_err(|_| anyhow::anyhow!("no answer from {addr} within 20 s"))??;
    let text = String::from_utf8(out)?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow::anyhow!("no complete head in {text:?}"))?;
    let status = head
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("bad status line in {head:?}"))?;
    let reply = Reply {
        status,
        head: head.to_owned(),
        body: body.to_owned(),
    };
    if let Some(length) = reply.header("Content-Length") {
        anyhow::ensure!(
            length.parse::<usize>().ok() == Some(body.len()) || request.starts_with(b"HEAD "),
            "Content-Length {length} but {} bytes of body",
            body.len()
        );
    }
    Ok(reply)
}

/// `GET /metrics`, checked to be well-formed exposition text; its samples
/// as (`name{labels}`, value).
pub async fn metrics(addr: SocketAddr) -> anyhow::Result<Vec<(String, f64)>> {
    let reply = get(addr, "/metrics").await?;
    anyhow::ensure!(reply.status == 200, "GET /metrics: {reply:?}");
    anyhow::ensure!(
        reply
            .header("Content-Type")
            .is_some_and(|t| t.starts_with("text/plain; version=0.0.4")),
        "content type of {reply:?}"
    );
    crate::prometheus::parse(&reply.body).map_err(|e| anyhow::anyhow!("{e}\n{}", reply.body))
}
