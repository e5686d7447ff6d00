//! The minimal `http` activity: a JSON request to a URL with an idempotency key, so the far side
//! can make a retried write take effect once. Plain HTTP/1.1 (loopback and trusted networks);
//! the tool layer will bring TLS and more.
//!
//! `with: {url: "http://host:port/path", method: POST, body: {...}, headers: {..}}` (header values
//! are strings; `Authorization: "Bearer {{ secrets.API_TOKEN }}"` is sent with the value). The key is
//! `run/step/call`, stable across attempts, sent as `Idempotency-Key`. Status classes: 2xx →
//! the JSON body (or `{status, body}` text) is the output; 429 → `rate_limited` honouring
//! `Retry-After`; 408 and 5xx → `transient`; other 4xx → `permanent`; connection errors →
//! `transient`.

use crate::secrets::Resolved;
use cairn_core::event::{ErrorClass, Failure};
use serde_json::{Value, json};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Largest response body read.
const MAX_BODY: usize = 8 * 1024 * 1024;

fn permanent(m: String) -> Failure {
    Failure::new(ErrorClass::Permanent, m)
}

/// Splits `http://host:port/path?q` into (host:port, path).
fn target(url: &str) -> Result<(String, String), Failure> {
    let rest = url.strip_prefix("http://").ok_or_else(|| {
        permanent(format!("with.url '{url}' must start with http:// (TLS arrives with the tool layer)"))
    })?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() {
        return Err(permanent(format!("with.url '{url}' has no host")));
    }
    let authority = if authority.contains(':') { authority.to_string() } else { format!("{authority}:80") };
    Ok((authority, path.to_string()))
}

pub async fn call(
    input: &Value,
    idempotency_key: &str,
    worker: &str,
    secrets: &Resolved,
    logs: &mut Vec<String>,
) -> Result<Value, Failure> {
    let url = input.get("url").and_then(Value::as_str).ok_or_else(|| permanent("with.url is required".into()))?;
    let method = input.get("method").and_then(Value::as_str).unwrap_or("POST").to_ascii_uppercase();
    if !matches!(method.as_str(), "GET" | "POST" | "PUT" | "PATCH" | "DELETE") {
        return Err(permanent(format!("with.method '{method}' is not GET, POST, PUT, PATCH or DELETE")));
    }
    let (authority, path) = target(url)?;
    let body = match input.get("body") {
        None | Some(Value::Null) => String::new(),
        Some(v) => v.to_string(),
    };
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\nIdempotency-Key: {idempotency_key}\r\n\
         X-Cairn-Worker: {worker}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(Value::Object(headers)) = input.get("headers") {
        for (k, v) in headers {
            let v = v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string());
            if k.contains(['\r', '\n', ':']) || v.contains(['\r', '\n']) {
                return Err(permanent(format!("with.headers.{k} is not a valid header")));
            }
            request.push_str(&format!("{k}: {v}\r\n"));
        }
    }
    request.push_str("\r\n");
    request.push_str(&body);
    logs.push(format!("{method} {url} (Idempotency-Key {idempotency_key})"));
    let transient = |m: String| Failure::new(ErrorClass::Transient, m);
    let stream =
        TcpStream::connect(&authority).await.map_err(|e| transient(format!("connecting to {authority}: {e}")))?;
    let mut io = BufReader::new(stream);
    io.get_mut().write_all(request.as_bytes()).await.map_err(|e| transient(format!("sending to {url}: {e}")))?;
    let mut line = String::new();
    io.read_line(&mut line).await.map_err(|e| transient(format!("reading from {url}: {e}")))?;
    let status: u16 = line.split_whitespace().nth(1).and_then(|s| s.parse().ok()).ok_or_else(|| {
        // Redacted before it is quoted: quoting escapes characters, and redaction looks for
        // the values as they are.
        transient(format!("{url} answered something that is not HTTP: {:?}", secrets.redact(line.trim())))
    })?;
    let (mut length, mut retry_after, mut chunked) = (None::<usize>, None::<u64>, false);
    loop {
        line.clear();
        if io.read_line(&mut line).await.map_err(|e| transient(format!("reading from {url}: {e}")))? == 0
            || line == "\r\n"
        {
            break;
        }
        let lower = line.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            length = v.trim().parse().ok();
        } else if let Some(v) = lower.strip_prefix("transfer-encoding:") {
            chunked = v.split(',').any(|coding| coding.trim() == "chunked");
        } else if let Some(v) = lower.strip_prefix("retry-after:") {
            retry_after = v.trim().parse::<u64>().ok().map(|s| s.saturating_mul(1000));
        }
    }
    let mut raw = Vec::new();
    match length {
        // A chunked body's length comes chunk by chunk (and `Content-Length` must then be ignored).
        _ if chunked => match read_chunked(&mut io, &mut raw).await {
            Ok(()) => {}
            Err(Chunked::TooLarge) => return Err(permanent(format!("{url} answered over {MAX_BODY} bytes"))),
            Err(Chunked::Broken(why)) => return Err(transient(format!("reading from {url}: {why}"))),
        },
        Some(n) if n > MAX_BODY => return Err(permanent(format!("{url} answered {n} bytes, over {MAX_BODY}"))),
        Some(n) => {
            raw.resize(n, 0);
            io.read_exact(&mut raw).await.map_err(|e| transient(format!("reading from {url}: {e}")))?;
        }
        None => {
            (&mut io)
                .take(MAX_BODY as u64)
                .read_to_end(&mut raw)
                .await
                .map_err(|e| transient(format!("reading from {url}: {e}")))?;
        }
    }
    let text = String::from_utf8_lossy(&raw).into_owned();
    let parsed: Option<Value> = serde_json::from_str(&text).ok();
    // Redacted before it is cut short, so no part of a secret the service echoed survives.
    let short: String = secrets.redact(&text).chars().take(200).collect();
    match status {
        200..=299 => Ok(parsed.unwrap_or_else(|| json!({"status": status, "body": text}))),
        429 => {
            let mut f = Failure::new(ErrorClass::RateLimited, format!("{url} answered 429: {short}"));
            f.retry_after_ms =
                retry_after.or(Some(1_000)).map(|ms| ms.min(Duration::from_secs(3600).as_millis() as u64));
            Err(f)
        }
        408 | 500..=599 => Err(transient(format!("{url} answered {status}: {short}"))),
        _ => Err(permanent(format!("{url} answered {status}: {short}"))),
    }
}

/// Why a chunked body could not be read: too large (permanent, as with `Content-Length`), or
/// broken (the service or the connection misbehaved: transient).
#[derive(Debug, PartialEq)]
enum Chunked {
    TooLarge,
    Broken(String),
}

/// The longest chunk-size or trailer line read (a line without an end is refused past it).
const MAX_LINE: u64 = 4096;
/// The most trailer lines read after the last chunk.
const MAX_TRAILERS: usize = 64;

/// One line of at most [`MAX_LINE`] bytes, its `\r\n` (or `\n`) included; empty at the end.
async fn bounded_line<R: tokio::io::AsyncBufRead + Unpin>(io: &mut R, line: &mut Vec<u8>) -> Result<(), Chunked> {
    line.clear();
    (&mut *io)
        .take(MAX_LINE)
        .read_until(b'\n', line)
        .await
        .map_err(|e| Chunked::Broken(format!("reading the body: {e}")))?;
    if !line.is_empty() && !line.ends_with(b"\n") && line.len() as u64 >= MAX_LINE {
        return Err(Chunked::Broken(format!("a chunk line is over {MAX_LINE} bytes")));
    }
    Ok(())
}

/// A `Transfer-Encoding: chunked` body: each chunk's hex size line, its bytes, CRLF; a zero size
/// ends it (trailers skipped). At most [`MAX_BODY`] bytes.
async fn read_chunked<R: tokio::io::AsyncBufRead + Unpin>(io: &mut R, out: &mut Vec<u8>) -> Result<(), Chunked> {
    let mut line = Vec::new();
    loop {
        bounded_line(io, &mut line).await?;
        if line.is_empty() {
            return Err(Chunked::Broken("the chunked body ended early".into()));
        }
        let text = String::from_utf8_lossy(&line);
        let token = text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(token, 16).map_err(|_| {
            // Not quoted (quoting would hide a secret from redaction), and only what could be hex.
            let shown: String = token.chars().filter(char::is_ascii_alphanumeric).take(16).collect();
            Chunked::Broken(format!("a chunk size is not hexadecimal ({shown})"))
        })?;
        if size == 0 {
            // Trailers, up to the blank line.
            for _ in 0..MAX_TRAILERS {
                bounded_line(io, &mut line).await?;
                if line.is_empty() || line == b"\r\n" || line == b"\n" {
                    return Ok(());
                }
            }
            return Err(Chunked::Broken(format!("more than {MAX_TRAILERS} trailer lines")));
        }
        if size > MAX_BODY.saturating_sub(out.len()) {
            return Err(Chunked::TooLarge);
        }
        let start = out.len();
        out.resize(start + size, 0);
        io.read_exact(&mut out[start..]).await.map_err(|e| Chunked::Broken(format!("reading a chunk: {e}")))?;
        bounded_line(io, &mut line).await?;
        if line != b"\r\n" && line != b"\n" {
            return Err(Chunked::Broken("a chunk is longer than its size says".into()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn chunked_bodies_are_decoded() {
        let wire = b"18\r\n{\"error\":\"service down\"}\r\n3;ext=1\r\n   \r\n0\r\nX-Trailer: t\r\n\r\n";
        let mut io = tokio::io::BufReader::new(&wire[..]);
        let mut out = Vec::new();
        read_chunked(&mut io, &mut out).await.expect("decoded");
        assert_eq!(String::from_utf8(out).expect("utf-8"), "{\"error\":\"service down\"}   ");
        async fn read(wire: &[u8]) -> Result<Vec<u8>, Chunked> {
            let mut out = Vec::new();
            read_chunked(&mut tokio::io::BufReader::new(wire), &mut out).await.map(|()| out)
        }
        assert!(matches!(read(b"10\r\nshort").await, Err(Chunked::Broken(_))), "a body cut short");
        assert!(matches!(read(b"zz\r\n").await, Err(Chunked::Broken(m)) if m.contains("(zz)")), "a bad size");
        // A size that would overflow, after some data: refused as too large, no panic.
        assert_eq!(read(b"2\r\nab\r\nffffffffffffffff\r\n").await, Err(Chunked::TooLarge));
        assert_eq!(read(format!("{:x}\r\n", MAX_BODY + 1).as_bytes()).await, Err(Chunked::TooLarge));
        // Data longer than its size, an endless size line, endless trailers.
        assert!(matches!(read(b"2\r\nabc\r\n0\r\n\r\n").await, Err(Chunked::Broken(m)) if m.contains("longer")));
        let endless = vec![b'1'; 100_000];
        assert!(matches!(read(&endless).await, Err(Chunked::Broken(m)) if m.contains("over 4096")));
        let trailers = format!("0\r\n{}", "X-T: t\r\n".repeat(100));
        assert!(matches!(read(trailers.as_bytes()).await, Err(Chunked::Broken(m)) if m.contains("trailer")));
    }

    #[test]
    fn urls_are_checked() {
        assert_eq!(
            target("http://127.0.0.1:9/x?y=1").map_err(|f| f.message),
            Ok(("127.0.0.1:9".into(), "/x?y=1".into()))
        );
        assert_eq!(target("http://example").map(|t| t.0).map_err(|f| f.message), Ok("example:80".into()));
        assert!(target("https://example").is_err());
        assert!(target("http:///x").is_err());
    }
}
