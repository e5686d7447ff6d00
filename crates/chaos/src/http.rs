//! The smallest HTTP client the harnesses need: one `POST` of a JSON body to a loopback address,
//! `Connection: close`, answered with its status and body. Loopback only, so nothing here needs
//! TLS, redirects or pooling.

use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Sends `body` to `path` at `addr`; the status and the body of the answer.
pub async fn post(addr: SocketAddr, path: &str, body: &str) -> std::io::Result<(u16, String)> {
    if !addr.ip().is_loopback() {
        return Err(std::io::Error::other(format!("{addr} is not a loopback address")));
    }
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await?;
    let text = String::from_utf8_lossy(&answer);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other("no status line"))?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Ok((status, body))
}
