//! A real model server for the tests that call one: llama.cpp's OpenAI-compatible server with
//! SmolLM2-135M (`.ci/model_server.py`, in the Python environment `.ci/run` installs under
//! `~/.cache/cairn-ci/venv-model`, or `CAIRN_TEST_MODEL_PYTHON`). Without it a test says so and
//! passes, unless `CAIRN_REQUIRE_MODEL=1` (as in CI).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct ModelServer {
    child: Child,
    /// `http://127.0.0.1:PORT/v1`
    pub base_url: String,
}

impl Drop for ModelServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn python() -> Option<String> {
    if let Ok(p) = std::env::var("CAIRN_TEST_MODEL_PYTHON") {
        return Some(p);
    }
    let home = std::env::var("HOME").ok()?;
    let p = format!("{home}/.cache/cairn-ci/venv-model/bin/python");
    std::path::Path::new(&p).exists().then_some(p)
}

/// Starts the server on a free loopback port and waits until it answers; `None` (after a
/// notice) where it cannot run.
pub fn start() -> Option<ModelServer> {
    let Some(python) = python() else {
        super::pg::missing(
            "CAIRN_REQUIRE_MODEL",
            "the local model server",
            "no Python environment with xllamacpp (.ci/run installs it; or set CAIRN_TEST_MODEL_PYTHON)",
        );
        return None;
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).ok()?;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../.ci/model_server.py");
    let mut child = Command::new(&python)
        .args([script, &port.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start the model server with {python}: {e}"));
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.trim() == "ready" {
                let _ = tx.send(());
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let server = ModelServer { child, base_url: format!("http://127.0.0.1:{port}/v1") };
    rx.recv_timeout(deadline.saturating_duration_since(Instant::now())).expect("the model server to be ready");
    Some(server)
}
