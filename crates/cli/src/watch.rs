//! `cairn runs watch ID`: follows a run's event stream from a `cairn serve`, reconnecting with
//! `Last-Event-ID` so no event is lost or shown twice. A small HTTP/1.1 client over plain TCP
//! (loopback or a trusted network; put TLS in front with a proxy).

use crate::output::{Paint, colour_enabled, progress_line};
use crate::{CliError, CliResult};
use cairn_core::{Envelope, Event, RunId};
use clap::Args;
use std::collections::HashMap;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

#[derive(Args)]
pub struct WatchArgs {
    pub id: String,
    /// The server to follow.
    #[arg(long, env = "CAIRN_SERVER", default_value = "http://127.0.0.1:8080")]
    pub server: String,
    /// Bearer token (when the server has auth on).
    #[arg(long, env = "CAIRN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Print raw events as JSON lines instead of progress lines.
    #[arg(long)]
    pub json: bool,
}

fn host_port(server: &str) -> CliResult<String> {
    let rest = server.strip_prefix("http://").ok_or_else(|| {
        CliError::usage(format!("--server '{server}' must start with http:// (for https put a local proxy in front)"))
    })?;
    let hp = rest.trim_end_matches('/');
    if hp.is_empty() || hp.contains('/') {
        return Err(CliError::usage(format!("--server '{server}' should be like http://127.0.0.1:8080")));
    }
    Ok(if hp.contains(':') { hp.to_string() } else { format!("{hp}:80") })
}

/// What one connection ended with.
enum End {
    Finished(bool),
    Dropped,
}

/// What the stream brought: a journal event, or a model call's tokens (`llm.delta` / `llm.restart`).
enum Seen<'a> {
    Event(&'a Envelope),
    Tokens(&'a serde_json::Value),
}

pub async fn watch(args: WatchArgs) -> CliResult {
    let id = RunId::parse(&args.id).map_err(CliError::usage)?;
    let addr = host_port(&args.server)?;
    let paint = Paint(colour_enabled());
    let mut last: Option<String> = None;
    let mut started = HashMap::new();
    let mut failures = HashMap::new();
    let mut retries = 0u32;
    // Whether tokens are being printed on a line of their own, to end before the next line.
    let mut streaming = false;
    loop {
        match follow(&addr, &id, &args, &mut last, &mut |seen| match seen {
            Seen::Event(env) => {
                if args.json {
                    crate::out!("{}", serde_json::to_string(env).unwrap_or_default());
                } else if let Some(line) = progress_line(&paint, &id, env, &mut started, &mut failures) {
                    if std::mem::take(&mut streaming) {
                        crate::out!();
                    }
                    crate::out!("{line}");
                }
            }
            Seen::Tokens(delta) if args.json => crate::out!("{delta}"),
            Seen::Tokens(delta) => {
                let step = delta["step"].as_str().unwrap_or("?");
                match delta["type"].as_str() {
                    Some("llm.delta") => {
                        if !std::mem::replace(&mut streaming, true) {
                            crate::output::out(format_args!("[llm] {step}: "));
                        }
                        crate::output::out(format_args!("{}", delta["text"].as_str().unwrap_or_default()));
                        let _ = std::io::Write::flush(&mut std::io::stdout());
                    }
                    _ => {
                        if std::mem::take(&mut streaming) {
                            crate::out!();
                        }
                        let why = delta["reason"].as_str().unwrap_or_default();
                        crate::out!("[llm] {step}: restart ({why})");
                    }
                }
            }
        })
        .await
        {
            Ok(End::Finished(true)) => return Ok(()),
            Ok(End::Finished(false)) => return Err(CliError::failed(format!("run {id} did not complete"))),
            Ok(End::Dropped) => retries = 0,
            Err(e) if e.code != 3 => return Err(e),
            Err(e) => {
                retries += 1;
                if retries > 20 {
                    return Err(e);
                }
                cairn_engine::say!("[watch] {}; reconnecting", e.message);
            }
        }
        tokio::time::sleep(Duration::from_millis(250 * u64::from(retries.min(8)))).await;
    }
}

async fn follow(
    addr: &str,
    id: &RunId,
    args: &WatchArgs,
    last: &mut Option<String>,
    show: &mut dyn FnMut(Seen<'_>),
) -> CliResult<End> {
    let stream = TcpStream::connect(addr).await.map_err(|e| CliError::env(format!("cannot connect to {addr}: {e}")))?;
    let mut reader = BufReader::new(stream);
    let mut request = format!(
        "GET /v1/runs/{id}/events/stream HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\nConnection: close\r\n"
    );
    if let Some(t) = &args.token {
        request.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    if let Some(n) = last {
        request.push_str(&format!("Last-Event-ID: {n}\r\n"));
    }
    request.push_str("\r\n");
    let io = |e: std::io::Error| CliError::env(format!("connection to {addr} failed: {e}"));
    reader.get_mut().write_all(request.as_bytes()).await.map_err(io)?;
    let mut status_line = String::new();
    reader.read_line(&mut status_line).await.map_err(io)?;
    let status: u16 = status_line.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let mut chunked = false;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).await.map_err(io)? == 0 || h == "\r\n" {
            break;
        }
        let lower = h.to_ascii_lowercase();
        if lower.starts_with("transfer-encoding:") && lower.contains("chunked") {
            chunked = true;
        }
    }
    if status != 200 {
        let mut body = Vec::new();
        let _ = reader.read_to_end(&mut body).await;
        let text = String::from_utf8_lossy(&body);
        let message = text
            .find('{')
            .and_then(|i| serde_json::from_str::<serde_json::Value>(text[i..].trim_end_matches(|c| c != '}')).ok())
            .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
            .unwrap_or_else(|| format!("HTTP {status}"));
        let err = if (400..500).contains(&status) { CliError::usage(message) } else { CliError::env(message) };
        return Err(err);
    }
    let mut pending = String::new();
    let (mut ev_id, mut data) = (None::<String>, String::new());
    let mut outcome: Option<bool> = None;
    loop {
        let bytes = if chunked {
            let mut size_line = String::new();
            if reader.read_line(&mut size_line).await.map_err(io)? == 0 {
                break;
            }
            let size = usize::from_str_radix(size_line.trim().split(';').next().unwrap_or("0"), 16).unwrap_or(0);
            if size == 0 {
                break;
            }
            let mut buf = vec![0u8; size + 2];
            reader.read_exact(&mut buf).await.map_err(io)?;
            buf.truncate(size);
            buf
        } else {
            let mut buf = vec![0u8; 8192];
            let n = reader.read(&mut buf).await.map_err(io)?;
            if n == 0 {
                break;
            }
            buf.truncate(n);
            buf
        };
        pending.push_str(&String::from_utf8_lossy(&bytes));
        while let Some(pos) = pending.find('\n') {
            let line: String = pending.drain(..=pos).collect();
            let line = line.trim_end_matches(['\r', '\n']);
            if line.is_empty() {
                let value: serde_json::Value = serde_json::from_str(&data).unwrap_or_default();
                if value["type"].as_str().is_some_and(|t| t.starts_with("llm.")) {
                    show(Seen::Tokens(&value));
                } else if let Ok(env) = serde_json::from_value::<Envelope>(value) {
                    show(Seen::Event(&env));
                    match env.event {
                        Event::RunCompleted { .. } => outcome = Some(true),
                        Event::RunFailed { .. } | Event::RunCancelled { .. } => outcome = Some(false),
                        _ => {}
                    }
                }
                if let Some(n) = ev_id.take() {
                    *last = Some(n);
                }
                data.clear();
            } else if let Some(v) = line.strip_prefix("id:") {
                ev_id = Some(v.trim().to_string()).filter(|i| !i.is_empty());
            } else if let Some(v) = line.strip_prefix("data:") {
                data.push_str(v.strip_prefix(' ').unwrap_or(v));
            }
        }
    }
    Ok(match outcome {
        Some(ok) => End::Finished(ok),
        None => End::Dropped,
    })
}
