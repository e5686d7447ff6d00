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

/// A real OpenAI-compatible model on loopback that the harnesses' worlds pass model calls on to
/// (`--model ALIAS`), instead of answering them from their script.
#[derive(Clone, Debug)]
pub struct Upstream {
    pub addr: SocketAddr,
    /// `/v1/chat/completions` under the base URL's path.
    pub path: String,
    /// The server's own name for the model.
    pub model: String,
}

impl Upstream {
    /// From a provider's base URL (`http://127.0.0.1:8000/v1`): plain HTTP on a loopback address
    /// only — the harnesses send load and faults nowhere else.
    pub fn parse(base_url: &str, model: &str) -> Result<Upstream, String> {
        let rest = base_url.strip_prefix("http://").ok_or_else(|| {
            format!("{base_url} is not an http:// URL: the harness passes model calls to a local server only")
        })?;
        let (host, path) = rest.split_once('/').map_or((rest, ""), |(h, p)| (h, p));
        let host = host.replace("localhost", "127.0.0.1");
        let addr: SocketAddr =
            host.parse().map_err(|_| format!("{base_url}: give the host as 127.0.0.1:PORT (or [::1]:PORT)"))?;
        if !addr.ip().is_loopback() {
            return Err(format!(
                "{base_url} is not on loopback: the harness passes model calls to a local server only"
            ));
        }
        let path = format!("/{}/chat/completions", path.trim_matches('/')).replace("//", "/");
        Ok(Upstream { addr, path, model: model.to_string() })
    }

    /// Asks the model: the request as it came, for this model; its status and answer.
    pub async fn chat(&self, body: &serde_json::Value) -> std::io::Result<(u16, String)> {
        let mut body = body.clone();
        body["model"] = serde_json::json!(self.model);
        body["stream"] = serde_json::json!(false);
        post(self.addr, &self.path, &body.to_string()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_upstream_is_a_loopback_http_server() {
        let up = Upstream::parse("http://127.0.0.1:8000/v1", "m").expect("loopback");
        assert_eq!((up.addr.port(), up.path.as_str()), (8000, "/v1/chat/completions"));
        assert_eq!(Upstream::parse("http://localhost:9/", "m").expect("localhost").path, "/chat/completions");
        assert!(Upstream::parse("https://api.openai.com/v1", "m").is_err());
        assert!(Upstream::parse("http://10.0.0.2:80/v1", "m").is_err());
        assert!(Upstream::parse("http://example.com/v1", "m").is_err());
    }
}
