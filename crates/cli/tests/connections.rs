//! `cairn serve` against clients that hold connections: half a request line, a header byte at a
//! time, a body that never comes or trickles, hundreds of idle sockets over the cap, every
//! connection busy, file descriptors running out; plus `--listen` with a host name. Real
//! processes on loopback; each wait has a generous deadline and ends on a condition.

mod common;

use common::*;
use serde_json::{Value, json};
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

const LONG: Duration = Duration::from_secs(20);

fn open(addr: &str) -> TcpStream {
    let stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    stream.set_write_timeout(Some(LONG)).expect("write timeout");
    stream
}

/// Reads until the server closes the connection (or `within` passes); returns what arrived and
/// whether it was closed. A reset after the response counts as closed, the response kept.
fn read_until_closed(stream: &mut TcpStream, within: Duration) -> (String, bool) {
    let deadline = Instant::now() + within;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let Some(left) = deadline.checked_duration_since(Instant::now()).filter(|d| !d.is_zero()) else {
            return (String::from_utf8_lossy(&got).into_owned(), false);
        };
        stream.set_read_timeout(Some(left)).expect("read timeout");
        match stream.read(&mut buf) {
            Ok(0) => return (String::from_utf8_lossy(&got).into_owned(), true),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return (String::from_utf8_lossy(&got).into_owned(), true),
        }
    }
}

/// Status and JSON body of a raw response.
fn parse(raw: &str) -> (u16, Value) {
    let status = raw.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = raw.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

/// Whether the server has closed this connection, without waiting.
fn closed_by_server(stream: &TcpStream) -> bool {
    stream.set_nonblocking(true).expect("nonblocking");
    let mut byte = [0u8; 1];
    let closed = match (&*stream).read(&mut byte) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() != ErrorKind::WouldBlock,
    };
    stream.set_nonblocking(false).expect("blocking");
    closed
}

/// Sockets the process holds (Linux; `None` elsewhere).
fn sockets_of(pid: u32) -> Option<usize> {
    let entries = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
    Some(
        entries
            .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
            .filter(|target| target.to_string_lossy().starts_with("socket:"))
            .count(),
    )
}

fn token(env: &Env, role: &str) -> String {
    let out = env.run(&["tokens", "create", "--role", role, "--name", role]);
    assert!(out.status.success(), "{}", stderr(&out));
    stdout(&out).trim().to_string()
}

fn stop(mut server: Server) {
    server.signal("TERM");
    assert_eq!(server.wait_exit(LONG).code(), Some(0), "a clean shutdown exits 0");
}

#[test]
fn a_client_that_sends_half_a_request_line_is_disconnected_after_the_header_timeout() {
    let env = Env::new();
    let server = env.serve(&["--header-timeout", "1s"]);
    let mut idle = open(&server.addr);
    idle.write_all(b"GET /heal").expect("half a request line");
    let sent = Instant::now();
    let (got, closed) = read_until_closed(&mut idle, LONG);
    let after = sent.elapsed();
    assert!(closed, "the connection is still open after {LONG:?}; received {got:?}");
    assert!(after >= Duration::from_millis(500), "closed after {after:?}: before the header timeout");
    assert!(get(&server.addr, "/healthz").status == 200, "the server still serves");
    stop(server);
}

#[test]
fn a_slow_loris_sending_one_header_byte_every_300ms_is_cut_off_at_the_header_timeout() {
    let env = Env::new();
    let server = env.serve(&["--header-timeout", "1s"]);
    let mut loris = open(&server.addr);
    let head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    let started = Instant::now();
    let mut sent = 0;
    let mut closed = false;
    // One byte, then up to 300 ms waiting for the server to hang up; the whole head would take
    // about 30 s at this pace.
    while sent < head.len() && started.elapsed() < LONG {
        if loris.write_all(&head[sent..sent + 1]).is_err() {
            closed = true;
            break;
        }
        sent += 1;
        if read_until_closed(&mut loris, Duration::from_millis(300)).1 {
            closed = true;
            break;
        }
    }
    let after = started.elapsed();
    assert!(closed, "a client sending {sent} header bytes over {after:?} was never cut off");
    assert!(sent < head.len(), "the whole head went through ({sent} bytes)");
    assert!(after >= Duration::from_millis(500), "cut off after {after:?}: before the header timeout");
    stop(server);
}

#[test]
fn an_idle_keep_alive_connection_is_closed_after_the_header_timeout() {
    let env = Env::new();
    let server = env.serve(&["--header-timeout", "1s"]);
    let mut conn = open(&server.addr);
    conn.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").expect("a keep-alive request");
    // The answer comes, and the connection stays open for the next request...
    let (mut got, mut closed) = (String::new(), false);
    let deadline = Instant::now() + LONG;
    while !got.ends_with(r#"{"status":"ok"}"#) && !closed && Instant::now() < deadline {
        let (more, done) = read_until_closed(&mut conn, Duration::from_millis(100));
        got.push_str(&more);
        closed = done;
    }
    assert!(got.starts_with("HTTP/1.1 200"), "{got:?}");
    assert!(!closed, "a keep-alive connection is not closed with its answer");
    // ...until it has been idle for the header timeout.
    let (rest, closed) = read_until_closed(&mut conn, LONG);
    assert!(closed && rest.is_empty(), "the idle connection is still open after {LONG:?}: {rest:?}");
    stop(server);
}

#[test]
fn a_declared_body_over_the_limit_gets_413_at_once_without_waiting_for_the_body() {
    let env = Env::new();
    // Timeouts far beyond the deadline below: only an early refusal can pass.
    let server = env.serve(&["--header-timeout", "60s", "--body-timeout", "60s"]);
    let mut conn = open(&server.addr);
    let asked = Instant::now();
    conn.write_all(
        b"POST /v1/runs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 2000000\r\n\r\n{",
    )
    .expect("a head declaring 2,000,000 bytes and one byte of body");
    let (raw, closed) = read_until_closed(&mut conn, LONG);
    let after = asked.elapsed();
    let (status, body) = parse(&raw);
    assert_eq!(status, 413, "{raw}");
    assert_eq!(body["error"]["code"], "body_too_large", "{raw}");
    assert_eq!(body["error"]["details"]["declared"], 2_000_000, "{raw}");
    assert_eq!(body["error"]["details"]["limit"], 1024 * 1024, "{raw}");
    assert!(closed, "the connection is closed after the refusal, not held for the rest of the body");
    assert!(after < Duration::from_secs(10), "the 413 took {after:?}");
    stop(server);
}

#[test]
fn a_body_that_trickles_is_cut_off_with_408_at_the_body_timeout() {
    let env = Env::new();
    let server = env.serve(&["--body-timeout", "1s"]);
    let mut conn = open(&server.addr);
    let body = json!({"goal": "generate summary and send email", "inputs": {"pad": "x".repeat(100)}}).to_string();
    let head = format!(
        "POST /v1/runs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    conn.write_all(head.as_bytes()).expect("the head");
    let started = Instant::now();
    let (mut raw, mut closed, mut sent) = (String::new(), false, 0);
    // A byte every 200 ms (each wait ends early if the server answers): the body keeps coming,
    // but would take about 30 s in all.
    while sent < body.len() && started.elapsed() < LONG {
        if conn.write_all(&body.as_bytes()[sent..sent + 1]).is_err() {
            break;
        }
        sent += 1;
        let (got, done) = read_until_closed(&mut conn, Duration::from_millis(200));
        raw.push_str(&got);
        closed = done;
        if done || !raw.is_empty() {
            break;
        }
    }
    if !closed {
        let (rest, done) = read_until_closed(&mut conn, LONG);
        raw.push_str(&rest);
        closed = done;
    }
    let after = started.elapsed();
    let (status, json) = parse(&raw);
    assert_eq!(status, 408, "after {sent} of {} body bytes over {after:?}: {raw:?}", body.len());
    assert_eq!(json["error"]["code"], "body_timeout", "{raw}");
    assert!(closed, "the connection is closed after the 408");
    assert!(after >= Duration::from_millis(500), "cut off after {after:?}: before the body timeout");
    assert!(env.runs().is_empty(), "no run was started from a partial body");
    stop(server);
}

#[test]
fn with_200_idle_connections_over_a_cap_of_50_probes_and_authenticated_requests_are_still_served() {
    let env = Env::new();
    let secret = token(&env, "viewer");
    let bearer = format!("Bearer {secret}");
    // A long header timeout: the cap, not the timeout, must deal with the idle connections.
    let mut server = env.serve(&["--auth", "on", "--max-connections", "50", "--header-timeout", "120s"]);
    let addr = server.addr.clone();
    let pid = server.child.id();
    let idle: Vec<TcpStream> = (0..200)
        .map(|_| {
            let mut s = open(&addr);
            s.write_all(b"GET /v1/runs HT").expect("half a request line");
            s
        })
        .collect();
    // 44 regular slots (50 less a reserve of 6): the oldest idle connections make room for the
    // newer ones.
    wait_for("the server to close the idle connections beyond its cap", LONG, || {
        idle.iter().filter(|s| closed_by_server(s)).count() >= 200 - 44
    });
    if let Some(n) = sockets_of(pid) {
        // The listener and the runtime's signal pipe besides the connections.
        wait_for(&format!("the server to hold at most 50 connections (it holds {n} sockets)"), LONG, || {
            sockets_of(pid).is_some_and(|n| n <= 50 + 3)
        });
    }

    let asked = Instant::now();
    let r = get(&addr, "/healthz");
    assert_eq!(r.status, 200, "{}", r.body);
    let r = call(&addr, "GET", "/v1/runs", &[("Authorization", &bearer)], None);
    assert_eq!(r.status, 200, "{}", r.body);
    let r = get(&addr, "/readyz");
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(asked.elapsed() < Duration::from_secs(10), "three requests took {:?}", asked.elapsed());
    assert!(server.child.try_wait().expect("try_wait").is_none(), "the server is alive");

    drop(idle);
    let r = call(&addr, "GET", "/v1/runs", &[("Authorization", &bearer)], None);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(get(&addr, "/v1/runs").status, 401, "auth still applies");
    stop(server);
}

#[test]
fn running_out_of_file_descriptors_closes_idle_connections_and_keeps_serving() {
    let env = Env::new();
    // 64 files in all (soft and hard), far below what --max-connections 512 wants.
    let script = format!("ulimit -n 64 && exec '{}' serve --listen 127.0.0.1:0", env!("CARGO_BIN_EXE_cairn"));
    let mut cmd = std::process::Command::new("sh");
    cmd.args(["-c", &script]).current_dir(env.dir.path());
    for (key, value) in env.cmd().get_envs() {
        match value {
            Some(value) => cmd.env(key, value),
            None => cmd.env_remove(key),
        };
    }
    cmd.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().expect("spawn sh");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let seen = wait_line(&lines, "listening on http://", LONG);
    assert!(seen.iter().any(|l| l.contains("may open only 64 files")), "a warning about the limit: {seen:?}");
    let line = seen.last().expect("the listening line");
    let addr = line.split("http://").nth(1).and_then(|r| r.split_whitespace().next()).expect("address").to_string();
    let mut server = Server { child, addr: addr.clone(), lines };

    let idle: Vec<TcpStream> = (0..200)
        .map(|_| {
            let mut s = open(&addr);
            s.write_all(b"GET /healthz HT").expect("half a request line");
            s
        })
        .collect();
    wait_line(&server.lines, "cannot accept connections", LONG);
    let r = get(&addr, "/healthz");
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(server.child.try_wait().expect("try_wait").is_none(), "the server is alive");
    assert!(idle.iter().filter(|s| closed_by_server(s)).count() >= 100, "idle connections made room");
    drop(idle);
    assert_eq!(get(&addr, "/v1/runs").status, 200);
    stop(server);
}

#[test]
fn when_every_connection_is_busy_the_reserve_serves_probes_and_tokens_and_refuses_the_rest_with_503() {
    let env = Env::new();
    let secret = token(&env, "viewer");
    let bearer = format!("Bearer {secret}");
    // 8 connections: 6 regular, 2 reserved.
    let server = env.serve(&["--auth", "on", "--max-connections", "8"]);
    let addr = server.addr.clone();
    let streams: Vec<Sse> = (0..6)
        .map(|_| {
            let s = Sse::open(&addr, "/v1/events/stream", &[("Authorization", &bearer)]);
            assert_eq!(s.status, 200);
            s
        })
        .collect();

    let r = get(&addr, "/healthz");
    assert_eq!(r.status, 200, "a probe gets through: {}", r.body);
    let r = get(&addr, "/readyz");
    assert_eq!(r.status, 200, "{}", r.body);
    let r = call(&addr, "GET", "/v1/runs", &[("Authorization", &bearer)], None);
    assert_eq!(r.status, 200, "a request with a valid token gets through: {}", r.body);
    let r = get(&addr, "/v1/runs");
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.json()["error"]["code"], "too_many_connections", "{}", r.body);
    let r = call(&addr, "GET", "/v1/runs", &[("Authorization", "Bearer cairn_wrong")], None);
    assert_eq!(r.status, 503, "an unknown token does not open the reserve: {}", r.body);

    drop(streams);
    stop(server);
}

#[test]
fn sigterm_stops_accepting_and_finishes_a_request_in_flight() {
    let env = Env::new();
    let mut server = env.serve(&[]);
    let addr = server.addr.clone();
    let definition = json!({"name": "late", "steps": [{"id": "a", "kind": "noop"}]}).to_string();
    let mut conn = open(&addr);
    let head = format!(
        "POST /v1/workflows HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
        definition.len()
    );
    conn.write_all(head.as_bytes()).expect("the head");
    // `100 Continue` comes when the handler starts reading the body: the request is in flight.
    let mut interim = [0u8; 25];
    conn.set_read_timeout(Some(LONG)).expect("read timeout");
    conn.read_exact(&mut interim).expect("100 Continue");
    assert!(interim.starts_with(b"HTTP/1.1 100 Continue"), "{:?}", String::from_utf8_lossy(&interim));

    server.signal("TERM");
    wait_line(&server.lines, "shutting down", LONG);
    wait_for("new connections to be refused", LONG, || TcpStream::connect(&addr).is_err());
    conn.write_all(definition.as_bytes()).expect("the body, after SIGTERM");
    let (raw, _) = read_until_closed(&mut conn, LONG);
    let (status, body) = parse(raw.trim_start_matches("\r\n"));
    assert_eq!(status, 201, "{raw}");
    assert_eq!(body["name"], "late", "{raw}");
    assert_eq!(server.wait_exit(LONG).code(), Some(0));
}

#[test]
fn listen_accepts_a_host_name() {
    let env = Env::new();
    let (child, lines) = env.spawn(&["serve", "--listen", "localhost:0"], &[]);
    let mut server = Server { child, addr: String::new(), lines };
    let seen = wait_line(&server.lines, "listening on http://", LONG);
    let line = seen.last().expect("the listening line");
    assert!(line.contains("auth off"), "localhost is loopback, so auth stays off: {line}");
    server.addr = line
        .split("http://")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .to_string();
    assert!(server.addr.starts_with("127.0.0.1:"), "localhost binds its IPv4 address: {line}");
    assert_eq!(get(&server.addr, "/v1/runs").status, 200);
    stop(server);
}

#[test]
fn bad_listen_and_connection_flags_are_usage_errors() {
    let env = Env::new();
    for (args, says) in [
        (vec!["--listen", "nosuch.invalid:8080"], "cannot resolve host 'nosuch.invalid'"),
        (vec!["--listen", "localhost"], "is not host:port"),
        (vec!["--listen", "localhost:99999"], "is not host:port"),
        (vec!["--listen", ":8080"], "is not host:port"),
        (vec!["--max-connections", "3"], "--max-connections 3 is too low"),
        (vec!["--header-timeout", "0"], "--header-timeout must be more than 0"),
        (vec!["--body-timeout", "soon"], "--body-timeout"),
    ] {
        let mut cmd = env.cmd();
        cmd.arg("serve").args(&args);
        let out = output_within(&mut cmd, LONG);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(says), "{args:?} should say {says:?}: {}", stderr(&out));
    }
}
