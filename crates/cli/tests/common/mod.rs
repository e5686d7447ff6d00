//! Helpers for driving the real `cairn` binary against a real SQLite file.
#![allow(dead_code)]

pub mod fake_model;
pub mod model;
pub mod pg;

use cairn_core::decide::replay;
use cairn_core::{Envelope, Event, RunId};
use cairn_store::{Journal, RunQuery, RunRow, SqliteStore, StepRow};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub struct Env {
    pub dir: tempfile::TempDir,
    pub db: PathBuf,
    rt: tokio::runtime::Runtime,
}

/// Every run a test leaves in its database must replay without divergence: when a test that
/// passed ends, each journal is re-derived through the current core (processes the test left
/// running may still be appending; a committed prefix replays too). A database the test made
/// unreadable on purpose (foreign, garbage, locked) is left alone.
impl Drop for Env {
    fn drop(&mut self) {
        if std::thread::panicking() || !self.db.exists() {
            return;
        }
        let Ok(store) = SqliteStore::open(&self.db, cairn_store::Durability::Normal) else { return };
        let mut query = RunQuery { limit: 1000, ..Default::default() };
        loop {
            let Ok(runs) = self.rt.block_on(store.list_runs(query.clone())) else { return };
            for run in &runs {
                let run_id = RunId::parse(&run.id).expect("stored run id");
                let loaded = self.rt.block_on(store.load_run(&run_id)).expect("load a listed run");
                if let Err(e) = replay(run_id, &loaded.events, loaded.payloads.clone()) {
                    panic!("run {} left by this test does not replay: {e}\n{}", run.id, dump(&loaded.events));
                }
            }
            match runs.last() {
                Some(last) if runs.len() == query.limit => query.after = Some((last.created_at_ms, last.id.clone())),
                _ => return,
            }
        }
    }
}

impl Env {
    pub fn new() -> Env {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("cairn.db");
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        Env { dir, db, rt }
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, text).expect("write file");
        p
    }

    pub fn cmd(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_cairn"));
        c.env("CAIRN_DB", &self.db).env("NO_COLOR", "1").current_dir(self.dir.path());
        c.env_remove("CAIRN_TEST_HOLD_AFTER_ACTIVITY").env_remove("CAIRN_DATABASE");
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().expect("run cairn")
    }

    /// Starts cairn with stderr lines delivered on a channel.
    pub fn spawn(&self, args: &[&str], envs: &[(&str, &str)]) -> (Child, mpsc::Receiver<String>) {
        let mut c = self.cmd();
        c.args(args).stdout(Stdio::null()).stderr(Stdio::piped());
        for (k, v) in envs {
            c.env(k, v);
        }
        let mut child = c.spawn().expect("spawn cairn");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        (child, rx)
    }

    pub fn store(&self) -> SqliteStore {
        SqliteStore::open(&self.db, cairn_store::Durability::Normal).expect("open store")
    }

    pub fn block<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    pub fn runs(&self) -> Vec<RunRow> {
        if !self.db.exists() {
            return Vec::new();
        }
        let store = self.store();
        self.block(store.list_runs(RunQuery { limit: 1000, ..Default::default() })).expect("list runs")
    }

    pub fn only_run(&self) -> RunRow {
        let runs = self.runs();
        assert_eq!(runs.len(), 1, "expected exactly one run, found {runs:#?}");
        runs.into_iter().next().expect("one run")
    }

    pub fn steps(&self, id: &str) -> Vec<StepRow> {
        let store = self.store();
        self.block(store.steps(&RunId::parse(id).expect("id"))).expect("steps")
    }

    pub fn step(&self, id: &str, step: &str) -> StepRow {
        self.steps(id).into_iter().find(|s| s.step_id == step).unwrap_or_else(|| panic!("no step {step}"))
    }

    pub fn events(&self, id: &str) -> Vec<Envelope> {
        let store = self.store();
        self.block(store.events(&RunId::parse(id).expect("id"))).expect("events")
    }

    /// The journal must be a legal path through the state machines and replay without
    /// divergence; the projection rows must equal the fold.
    pub fn assert_journal_is_sound(&self, id: &str) {
        let store = self.store();
        let run_id = RunId::parse(id).expect("id");
        let loaded = self.block(store.load_run(&run_id)).expect("load");
        let state = replay(run_id.clone(), &loaded.events, loaded.payloads.clone())
            .unwrap_or_else(|e| panic!("journal of {id} does not replay: {e}\n{}", dump(&loaded.events)));
        let expected_steps = StepRow::from_state(&state, None);
        let stored_steps = self.block(store.steps(&run_id)).expect("steps");
        assert_eq!(stored_steps, expected_steps, "step rows differ from the fold of the journal");
        let mut expected_run = RunRow::from_state(&state);
        expected_run.owner = loaded.run.owner.clone();
        expected_run.lease_expires_at_ms = loaded.run.lease_expires_at_ms;
        // Scheduling, not history: only runs nobody holds carry a wake time.
        expected_run.wake_at_ms = loaded.run.wake_at_ms;
        assert_eq!(loaded.run, expected_run, "run row differs from the fold of the journal");
    }

    /// How many attempts of a step the journal records as started.
    pub fn started(&self, id: &str, step: &str) -> usize {
        self.events(id)
            .iter()
            .filter(|e| matches!(&e.event, Event::AttemptStarted { step: s, .. } if s.as_str() == step))
            .count()
    }
}

pub fn dump(events: &[Envelope]) -> String {
    events.iter().map(|e| serde_json::to_string(e).unwrap_or_default()).collect::<Vec<_>>().join("\n")
}

/// Waits for a condition, failing with context if the deadline passes.
pub fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if cond() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("timed out after {timeout:?} waiting for {what}");
}

/// Waits for a stderr line containing `needle`; returns all lines seen.
pub fn wait_line(rx: &mpsc::Receiver<String>, needle: &str, timeout: Duration) -> Vec<String> {
    let deadline = Instant::now() + timeout;
    let mut seen = Vec::new();
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(line) => {
                let hit = line.contains(needle);
                seen.push(line);
                if hit {
                    return seen;
                }
            }
            Err(_) => break,
        }
    }
    panic!("timed out waiting for a line containing {needle:?}; saw:\n{}", seen.join("\n"));
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn sigkill(child: &mut Child) {
    child.kill().expect("SIGKILL");
    child.wait().expect("reap");
}

pub fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

// --- A tiny blocking HTTP/1.1 client and helpers for `cairn serve` -------------------------------

use std::io::{Read as _, Write as _};

/// A whole HTTP response (the body de-chunked).
#[derive(Debug, Clone)]
pub struct HttpReply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpReply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The body as JSON (`Null` when it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// Why a request got no response: it never reached the server, or it broke on the way.
#[derive(Debug)]
pub enum HttpError {
    /// The connection was refused: the server cannot have seen the request.
    Connect(std::io::Error),
    /// Connected, then failed: the server may or may not have acted on the request.
    Io(std::io::Error),
}

fn connect(addr: &str) -> std::io::Result<std::net::TcpStream> {
    let sock: std::net::SocketAddr =
        addr.parse().map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{addr}: {e}")))?;
    let stream = std::net::TcpStream::connect_timeout(&sock, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    stream.set_write_timeout(Some(Duration::from_secs(30)))?;
    Ok(stream)
}

fn request_head(addr: &str, method: &str, path: &str, headers: &[(&str, &str)], body: Option<&str>) -> String {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(b) = body {
        if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("content-type")) {
            head.push_str("Content-Type: application/json\r\n");
        }
        head.push_str(&format!("Content-Length: {}\r\n", b.len()));
    }
    head.push_str("\r\n");
    head
}

fn parse_head(head: &str) -> (u16, Vec<(String, String)>) {
    let mut lines = head.split("\r\n");
    let status = lines.next().and_then(|l| l.split_whitespace().nth(1)).and_then(|s| s.parse().ok()).unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (status, headers)
}

fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(end) = raw.windows(2).position(|w| w == b"\r\n") {
        let size_text = String::from_utf8_lossy(&raw[..end]);
        let size = usize::from_str_radix(size_text.trim().split(';').next().unwrap_or("0"), 16).unwrap_or(0);
        raw = &raw[end + 2..];
        if size == 0 || raw.len() < size {
            out.extend_from_slice(&raw[..size.min(raw.len())]);
            break;
        }
        out.extend_from_slice(&raw[..size]);
        raw = raw.get(size + 2..).unwrap_or(&[]);
    }
    out
}

/// One request with `Connection: close`; reads the whole response.
pub fn http(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Result<HttpReply, HttpError> {
    let mut stream = connect(addr).map_err(HttpError::Connect)?;
    let head = request_head(addr, method, path, headers, body);
    stream.write_all(head.as_bytes()).map_err(HttpError::Io)?;
    if let Some(b) = body {
        stream.write_all(b.as_bytes()).map_err(HttpError::Io)?;
    }
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).map_err(HttpError::Io)?;
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").ok_or_else(|| {
        HttpError::Io(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "no complete response head"))
    })?;
    let (status, headers) = parse_head(&String::from_utf8_lossy(&raw[..split]));
    let rest = &raw[split + 4..];
    let chunked = headers.iter().any(|(k, v)| k == "transfer-encoding" && v.to_ascii_lowercase().contains("chunked"));
    let body = if chunked { dechunk(rest) } else { rest.to_vec() };
    Ok(HttpReply { status, headers, body: String::from_utf8_lossy(&body).into_owned() })
}

/// `http`, failing the test if no response comes back.
pub fn call(addr: &str, method: &str, path: &str, headers: &[(&str, &str)], body: Option<&str>) -> HttpReply {
    http(addr, method, path, headers, body).unwrap_or_else(|e| panic!("{method} http://{addr}{path} failed: {e:?}"))
}

pub fn get(addr: &str, path: &str) -> HttpReply {
    call(addr, "GET", path, &[], None)
}

pub fn post(addr: &str, path: &str, body: &serde_json::Value) -> HttpReply {
    call(addr, "POST", path, &[], Some(&body.to_string()))
}

/// One Server-Sent Event.
#[derive(Debug, Clone)]
pub struct SseEvent {
    pub id: Option<i64>,
    /// The id as sent (`llm.delta` ids are `SEQ.K`, which `id` cannot hold).
    pub raw_id: Option<String>,
    pub event: String,
    pub data: serde_json::Value,
}

/// A live SSE response, read event by event (chunked or not).
pub struct Sse {
    reader: BufReader<std::net::TcpStream>,
    chunked: bool,
    pending: String,
    ended: bool,
    pub status: u16,
    pub headers: Vec<(String, String)>,
}

impl Sse {
    /// Sends the request and reads the response head.
    pub fn open(addr: &str, path: &str, headers: &[(&str, &str)]) -> Sse {
        let mut stream = connect(addr).unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
        let mut all = vec![("Accept", "text/event-stream")];
        all.extend_from_slice(headers);
        let head = request_head(addr, "GET", path, &all, None);
        stream.write_all(head.as_bytes()).expect("send the stream request");
        let mut reader = BufReader::new(stream);
        let mut head = String::new();
        loop {
            let mut line = String::new();
            let n = reader.read_line(&mut line).expect("read the response head");
            if n == 0 || line == "\r\n" {
                break;
            }
            head.push_str(&line);
        }
        let (status, headers) = parse_head(&head);
        let chunked =
            headers.iter().any(|(k, v)| k == "transfer-encoding" && v.to_ascii_lowercase().contains("chunked"));
        Sse { reader, chunked, pending: String::new(), ended: false, status, headers }
    }

    fn fill(&mut self) -> std::io::Result<bool> {
        let bytes = if self.chunked {
            let mut size_line = String::new();
            if self.reader.read_line(&mut size_line)? == 0 {
                return Ok(false);
            }
            let size = usize::from_str_radix(size_line.trim().split(';').next().unwrap_or("0"), 16).unwrap_or(0);
            if size == 0 {
                return Ok(false);
            }
            let mut buf = vec![0u8; size + 2];
            self.reader.read_exact(&mut buf)?;
            buf.truncate(size);
            buf
        } else {
            let mut buf = vec![0u8; 8192];
            let n = self.reader.read(&mut buf)?;
            if n == 0 {
                return Ok(false);
            }
            buf.truncate(n);
            buf
        };
        self.pending.push_str(&String::from_utf8_lossy(&bytes));
        Ok(true)
    }

    /// The next event; `Ok(None)` when the stream ended (or the server went away), `Err` when
    /// nothing arrived within `timeout`.
    pub fn next(&mut self, timeout: Duration) -> std::io::Result<Option<SseEvent>> {
        use std::io::ErrorKind as K;
        let deadline = Instant::now() + timeout;
        loop {
            // A complete block is everything up to a blank line.
            let normalized = self.pending.replace("\r\n", "\n");
            if let Some(pos) = normalized.find("\n\n") {
                let block = normalized[..pos].to_string();
                self.pending = normalized[pos + 2..].to_string();
                let (mut id, mut event, mut data, mut any) = (None, String::new(), String::new(), false);
                let mut raw_id = None;
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        id = v.trim().parse().ok();
                        raw_id = Some(v.trim().to_string());
                        any = true;
                    } else if let Some(v) = line.strip_prefix("event:") {
                        event = v.trim().to_string();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.strip_prefix(' ').unwrap_or(v));
                        any = true;
                    }
                }
                if any {
                    let data = serde_json::from_str(&data).unwrap_or(serde_json::Value::String(data));
                    return Ok(Some(SseEvent { id, raw_id, event, data }));
                }
                continue;
            }
            if self.ended {
                return Ok(None);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(std::io::Error::new(K::TimedOut, format!("no event within {timeout:?}")));
            }
            self.reader.get_ref().set_read_timeout(Some(left))?;
            match self.fill() {
                Ok(true) => {}
                Ok(false) => self.ended = true,
                Err(e) if matches!(e.kind(), K::WouldBlock | K::TimedOut) => {
                    return Err(std::io::Error::new(K::TimedOut, format!("no event within {timeout:?}")));
                }
                Err(_) => self.ended = true,
            }
        }
    }
}

/// A `cairn serve` process and the address it listens on.
pub struct Server {
    pub child: Child,
    pub addr: String,
    pub lines: mpsc::Receiver<String>,
}

impl Server {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Sends a signal by name (`TERM`, `INT`, `KILL`) to this process.
    pub fn signal(&self, sig: &str) {
        send_signal(&self.child, sig);
    }

    pub fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        wait_exit(&mut self.child, timeout)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Env {
    /// Starts `cairn serve --listen 127.0.0.1:0 ARGS…` and waits until it listens.
    pub fn serve(&self, args: &[&str]) -> Server {
        let mut all = vec!["serve", "--listen", "127.0.0.1:0"];
        all.extend_from_slice(args);
        let (child, lines) = self.spawn(&all, &[]);
        let seen = wait_line(&lines, "listening on http://", Duration::from_secs(20));
        let line = seen.last().expect("the listening line");
        let addr = line
            .split("http://")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("no address in {line:?}"))
            .to_string();
        Server { child, addr, lines }
    }
}

/// Sends a signal by name with `kill(1)`.
pub fn send_signal(child: &Child, sig: &str) {
    let status = Command::new("kill").args([format!("-{sig}"), child.id().to_string()]).status().expect("run kill");
    assert!(status.success(), "kill -{sig} {} failed", child.id());
}

/// Waits for a process to exit, failing (and killing it) after `timeout`.
pub fn wait_exit(child: &mut Child, timeout: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("process {} did not exit within {timeout:?}", child.id());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs a command to the end, failing (and killing it) if it takes longer than `timeout`.
pub fn output_within(cmd: &mut Command, timeout: Duration) -> Output {
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn");
    let drain = |mut r: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            buf
        })
    };
    let out = drain(Box::new(child.stdout.take().expect("stdout")));
    let err = drain(Box::new(child.stderr.take().expect("stderr")));
    let status = wait_exit(&mut child, timeout);
    Output { status, stdout: out.join().expect("stdout reader"), stderr: err.join().expect("stderr reader") }
}

/// A local HTTP service that answers 200 `{"ok": true}` and counts requests per
/// `Idempotency-Key`.
pub fn counting_server() -> (String, std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, u32>>>) {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let counts = std::sync::Arc::new(std::sync::Mutex::new(std::collections::HashMap::new()));
    let c = counts.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(&stream);
            let (mut key, mut length, mut line) = (String::new(), 0usize, String::new());
            while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                if let Some((name, value)) = line.split_once(':') {
                    match name.trim().to_ascii_lowercase().as_str() {
                        "idempotency-key" => key = value.trim().to_string(),
                        "content-length" => length = value.trim().parse().unwrap_or(0),
                        _ => {}
                    }
                }
                line.clear();
            }
            let mut body = vec![0; length];
            let _ = reader.read_exact(&mut body);
            *c.lock().expect("counts").entry(key).or_insert(0) += 1;
            let reply = "{\"ok\":true}";
            let _ = (&stream).write_all(
                format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{reply}", reply.len())
                    .as_bytes(),
            );
        }
    });
    (addr, counts)
}

/// A request a [`recorder`] received.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub key: Option<String>,
    pub body: String,
}

/// A local HTTP service that records each request (but those for `pages`, which it answers with
/// their text); `/redirect?to=URL` answers 302 to URL, every other path 200 `{"ok": true}`.
pub fn recorder(pages: &[(&'static str, &'static str)]) -> (String, std::sync::Arc<std::sync::Mutex<Vec<Seen>>>) {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    let pages: Vec<(&'static str, &'static str)> = pages.to_vec();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(&stream);
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                continue;
            }
            let mut parts = line.split_whitespace();
            let method = parts.next().unwrap_or_default().to_string();
            let path = parts.next().unwrap_or_default().to_string();
            let (mut key, mut length) = (None, 0usize);
            loop {
                line.clear();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some((name, value)) = line.split_once(':') {
                    match name.trim().to_ascii_lowercase().as_str() {
                        "idempotency-key" => key = Some(value.trim().to_string()),
                        "content-length" => length = value.trim().parse().unwrap_or(0),
                        _ => {}
                    }
                }
            }
            let mut body = vec![0; length];
            let _ = reader.read_exact(&mut body);
            let reply = if let Some((_, text)) = pages.iter().find(|(p, _)| *p == path) {
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
                    text.len()
                )
            } else {
                let body = String::from_utf8_lossy(&body).into_owned();
                log.lock().expect("log").push(Seen { method, path: path.clone(), key, body });
                match path.split_once("/redirect?to=") {
                    Some((_, to)) => {
                        format!("HTTP/1.1 302 Found\r\nLocation: {to}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    }
                    None => "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\nConnection: close\r\n\r\n{\"ok\":true}".to_string(),
                }
            };
            let _ = (&stream).write_all(reply.as_bytes());
        }
    });
    (addr, seen)
}
