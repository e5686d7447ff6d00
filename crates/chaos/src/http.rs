//! The smallest HTTP client the harnesses need: one `POST` of a JSON body to a loopback address,
//! `Connection: close`, answered with its status and body. Loopback only, so nothing here needs
//! TLS, redirects or pooling.

use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Sends `body` to `path` at `addr`; the status and the body of the answer.
pub async fn post(addr: SocketAddr, path: &str, body: &str) -> std::io::Result<(u16, String)> {
    post_with(addr, path, body, &[]).await
}

/// [`post`] with extra headers. HTTP/1.0, so that the answer is never chunked and ends with the
/// connection; a `Content-Length` bounds it.
pub async fn post_with(
    addr: SocketAddr,
    path: &str,
    body: &str,
    headers: &[(&str, &str)],
) -> std::io::Result<(u16, String)> {
    if !addr.ip().is_loopback() {
        return Err(std::io::Error::other(format!("{addr} is not a loopback address")));
    }
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let extra: String = headers.iter().map(|(k, v)| format!("{k}: {v}\r\n")).collect();
    let head = format!(
        "POST {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n",
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
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let length = head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case("content-length").then(|| v.trim().parse::<usize>().ok()).flatten()
    });
    let body = match length {
        Some(n) if n <= body.len() && body.is_char_boundary(n) => &body[..n],
        _ => body,
    };
    Ok((status, body.to_string()))
}

/// An HTTP service on a free loopback port, stopped when dropped.
pub struct Served {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Served {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves `app` on a free loopback port.
pub async fn serve(app: axum::Router) -> std::io::Result<Served> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(Served { addr, task })
}

/// An upstream's answer passed on as it came (a JSON body with its status), or 502.
pub fn relay(answer: std::io::Result<(u16, String)>) -> axum::response::Response {
    use axum::http::{StatusCode, header};
    use axum::response::IntoResponse;
    match answer {
        Ok((status, text)) => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
            (status, [(header::CONTENT_TYPE, "application/json")], text).into_response()
        }
        Err(e) => {
            let body =
                serde_json::json!({"error": {"message": format!("the model did not answer: {e}"), "code": "upstream"}});
            (StatusCode::BAD_GATEWAY, axum::Json(body)).into_response()
        }
    }
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
    /// Its API key, when its provider names one (`api_key_env`); sent as a bearer token.
    pub api_key: Option<String>,
}

impl Upstream {
    /// From a provider's base URL (`http://127.0.0.1:8000/v1`): plain HTTP on a loopback address
    /// only — the harnesses send load and faults nowhere else.
    pub fn parse(base_url: &str, model: &str) -> Result<Upstream, String> {
        let rest = base_url.strip_prefix("http://").ok_or_else(|| {
            format!("{base_url} is not an http:// URL: the harness passes model calls to a local server only")
        })?;
        let rest = rest.split(['?', '#']).next().unwrap_or_default();
        let (host, path) = rest.split_once('/').map_or((rest, ""), |(h, p)| (h, p));
        let host = host.to_ascii_lowercase();
        let host = match host.strip_prefix("localhost:") {
            Some(port) => format!("127.0.0.1:{port}"),
            None => host,
        };
        let addr: SocketAddr =
            host.parse().map_err(|_| format!("{base_url}: give the host as 127.0.0.1:PORT (or [::1]:PORT)"))?;
        if !addr.ip().is_loopback() {
            return Err(format!(
                "{base_url} is not on loopback: the harness passes model calls to a local server only"
            ));
        }
        let path = format!("/{}/chat/completions", path.trim_matches('/')).replace("//", "/");
        Ok(Upstream { addr, path, model: model.to_string(), api_key: None })
    }

    /// Asks the model: the request as it came, for this model; its status and answer.
    pub async fn chat(&self, body: &serde_json::Value) -> std::io::Result<(u16, String)> {
        let mut body = body.clone();
        body["model"] = serde_json::json!(self.model);
        body["stream"] = serde_json::json!(false);
        let bearer = self.api_key.as_ref().map(|k| format!("Bearer {k}"));
        let headers: Vec<(&str, &str)> = bearer.iter().map(|b| ("Authorization", b.as_str())).collect();
        let text = body.to_string();
        let asked = post_with(self.addr, &self.path, &text, &headers);
        tokio::time::timeout(std::time::Duration::from_secs(300), asked)
            .await
            .map_err(|_| std::io::Error::other("no answer within 300 s"))?
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
        assert!(Upstream::parse("http://LOCALHOST:8000/v1?x=1", "m").expect("upper").path == "/v1/chat/completions");
        assert!(Upstream::parse("http://localhost6:8000/v1", "m").is_err());
    }
}
