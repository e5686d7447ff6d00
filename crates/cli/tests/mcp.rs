//! MCP servers against real ones: `@modelcontextprotocol/server-everything` and
//! `server-filesystem` over stdio (npm, installed by `.ci/run` under `~/.cache/cairn-ci/mcp`), and
//! a streamable-HTTP server written with the Python `mcp` package (`.ci/mcp_http_server.py`).
//! Without them a test says so and passes, unless `CAIRN_REQUIRE_MCP=1` (as in CI).

mod common;

use common::*;
use serde_json::{Value, json};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const LONG: Duration = Duration::from_secs(60);

fn cache() -> PathBuf {
    PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/cairn-ci")
}

/// The npm packages' directory (`node_modules`), if they are installed.
fn modules() -> Option<PathBuf> {
    let dir = std::env::var("CAIRN_TEST_MCP_DIR").map(PathBuf::from).unwrap_or_else(|_| cache().join("mcp"));
    let modules = dir.join("node_modules/@modelcontextprotocol");
    if modules.join("server-everything/dist/index.js").exists()
        && modules.join("server-filesystem/dist/index.js").exists()
    {
        return Some(modules);
    }
    common::pg::missing(
        "CAIRN_REQUIRE_MCP",
        "the npm MCP servers",
        &format!("{} has no server-everything/server-filesystem (.ci/run installs them)", dir.display()),
    );
    None
}

/// A Python with the `mcp` package, if there is one.
fn python() -> Option<String> {
    let python = std::env::var("CAIRN_TEST_MCP_PYTHON")
        .unwrap_or_else(|_| cache().join("venv-mcp/bin/python").display().to_string());
    let ok =
        Command::new(&python).args(["-c", "import mcp.server.mcpserver"]).output().is_ok_and(|o| o.status.success());
    if !ok {
        common::pg::missing("CAIRN_REQUIRE_MCP", "Python's mcp package", &format!("{python} cannot import it"));
        return None;
    }
    Some(python)
}

fn stdio_config(modules: &std::path::Path, sandbox: &std::path::Path) -> String {
    format!(
        "[mcp.everything]\ncommand = [\"node\", \"{}\", \"stdio\"]\n\n[mcp.fs]\ncommand = [\"node\", \"{}\", \"{}\"]\n",
        modules.join("server-everything/dist/index.js").display(),
        modules.join("server-filesystem/dist/index.js").display(),
        sandbox.display()
    )
}

fn json_out(out: &std::process::Output) -> Value {
    assert!(out.status.success(), "{}", stderr(out));
    serde_json::from_str(&stdout(out)).unwrap_or_else(|e| panic!("not JSON ({e}): {}", stdout(out)))
}

#[test]
fn stdio_servers_tools_are_listed_called_from_steps_and_gated_by_their_annotations() {
    let Some(modules) = modules() else { return };
    let env = Env::new();
    let sandbox = env.dir.path().join("sandbox");
    std::fs::create_dir(&sandbox).expect("sandbox");
    std::fs::write(sandbox.join("hello.txt"), "hello from the sandbox").expect("file");
    env.write("cairn.toml", &stdio_config(&modules, &sandbox));
    let listed = json_out(&env.run(&["tools", "list", "--json"]));
    let tool = |name: &str| listed["tools"].as_array().into_iter().flatten().find(|t| t["name"] == name).cloned();
    let echo = tool("everything.echo").expect("everything.echo is listed");
    assert_eq!((echo["effect"].as_str(), echo["source"].as_str()), (Some("read"), Some("mcp:everything")));
    let write = tool("fs.write_file").expect("fs.write_file is listed");
    assert_eq!((write["effect"].as_str(), write["approval"].as_str()), (Some("write"), Some("by_effect")));
    assert_eq!(tool("fs.read_text_file").map(|t| t["effect"].clone()), Some(json!("read")));
    let shown = json_out(&env.run(&["tools", "show", "fs.read_text_file", "--json"]));
    assert_eq!(shown["openai"]["function"]["name"], "fs__read_text_file");
    assert_eq!(shown["anthropic"]["input_schema"]["type"], "object");

    let hello = sandbox.join("hello.txt").display().to_string();
    let out_file = sandbox.join("out.txt").display().to_string();
    let wf = env.write(
        "wf.yaml",
        &format!(
            "name: mcp\nsteps:\n  - {{id: read, kind: tool, with: {{tool: fs.read_text_file, args: {{path: \"{hello}\"}}}}}}\n  - id: echo\n    kind: tool\n    needs: [read]\n    with: {{tool: everything.echo, args: {{message: \"{{{{ steps.read.output.text }}}}\"}}}}\n  - id: save\n    kind: tool\n    needs: [echo]\n    with: {{tool: fs.write_file, args: {{path: \"{out_file}\", content: \"{{{{ steps.echo.output.text }}}}\"}}}}\n"
        ),
    );
    let (mut child, lines) = env.spawn(&["run", path_str(&wf)], &[]);
    wait_line(&lines, "blocked(tool call approval)", LONG);
    let id = env.only_run().id;
    assert!(!sandbox.join("out.txt").exists(), "the write waits for its approval");
    assert!(env.run(&["approve", &id, "save", "--by", "ana"]).status.success());
    assert_eq!(wait_exit(&mut child, LONG).code(), Some(0));
    assert_eq!(std::fs::read_to_string(sandbox.join("out.txt")).expect("written"), "Echo: hello from the sandbox");
    let out = env.run(&["runs", "show", &id, "--step", "echo", "--json"]);
    assert!(stdout(&out).contains("Echo: hello from the sandbox"), "{}", stdout(&out));
    env.assert_journal_is_sound(&id);
}

#[test]
fn a_stdio_server_inherits_no_secrets_and_a_bad_server_is_named_with_its_stderr() {
    let Some(modules) = modules() else { return };
    let env = Env::new();
    let sandbox = env.dir.path().join("sandbox");
    std::fs::create_dir(&sandbox).expect("sandbox");
    let config = format!(
        "{}\n[mcp.bad]\ncommand = [\"sh\", \"-c\", \"echo 'boom: no licence key' >&2; exit 3\"]\n\n[mcp.given]\ncommand = [\"node\", \"{}\", \"stdio\"]\nenv = {{ GIVEN = \"yes\" }}\n",
        stdio_config(&modules, &sandbox),
        modules.join("server-everything/dist/index.js").display()
    );
    env.write("cairn.toml", &config);
    let out = env
        .cmd()
        .args(["tools", "call", "everything.get-env", "--args", "{}"])
        .env("CAIRN_SECRET_VAULT", "hunter2-very-secret")
        .env("OPENAI_API_KEY", "sk-not-for-tools")
        .output()
        .expect("run");
    let text = stdout(&out);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(text.contains("PATH"), "{text}");
    assert!(!text.contains("hunter2") && !text.contains("sk-not-for-tools"), "{text}");
    let out = env.run(&["tools", "call", "given.get-env", "--args", "{}"]);
    assert!(stdout(&out).contains("GIVEN"), "{}", stdout(&out));
    // A server that never starts: its command and the end of its stderr.
    let out = env.run(&["tools", "list"]);
    assert!(out.status.success());
    let text = stdout(&out);
    assert!(text.contains("mcp.bad: its tools are not listed: MCP server bad (`sh -c echo"), "{text}");
    assert!(text.contains("boom: no licence key"), "{text}");
    let out = env.run(&["tools", "call", "bad.anything", "--args", "{}"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("did not start") && stderr(&out).contains("boom: no licence key"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_server_that_dies_mid_call_fails_it_as_transient_and_is_started_again() {
    let Some(modules) = modules() else { return };
    let env = Env::new();
    let sandbox = env.dir.path().join("sandbox");
    std::fs::create_dir(&sandbox).expect("sandbox");
    env.write("cairn.toml", &stdio_config(&modules, &sandbox));
    let wf = env.write(
        "wf.yaml",
        "name: long\nsteps:\n  - {id: hello, kind: tool, with: {tool: everything.echo, args: {message: hi}}}\n  - id: op\n    kind: tool\n    needs: [hello]\n    retry: {max_attempts: 3, initial_delay: 100ms, jitter: 0}\n    with: {tool: everything.trigger-long-running-operation, args: {duration: 4, steps: 4}}\n",
    );
    let (mut child, _lines) = env.spawn(&["run", path_str(&wf)], &[]);
    // The server starts for the first step; once the second step's call is under way, kill it.
    let mut killed = false;
    let deadline = std::time::Instant::now() + LONG;
    while !killed && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(300));
        let kids = Command::new("pgrep").args(["-P", &child.id().to_string(), "-f", "server-everything"]).output();
        let pids = kids.map(|o| String::from_utf8_lossy(&o.stdout).to_string()).unwrap_or_default();
        let started = env.runs().first().is_some_and(|r| env.started(&r.id, "op") == 1);
        if let Some(pid) = pids.split_whitespace().next()
            && started
        {
            std::thread::sleep(Duration::from_millis(1_000));
            assert!(Command::new("kill").args(["-9", pid]).status().expect("kill").success());
            killed = true;
        }
    }
    assert!(killed, "the server was never seen running");
    assert_eq!(wait_exit(&mut child, LONG).code(), Some(0));
    let id = env.only_run().id;
    assert_eq!(env.only_run().status, "COMPLETED");
    let first = env.events(&id).into_iter().find_map(|e| match e.event {
        cairn_core::Event::AttemptFailed { failure, .. } => Some(failure),
        _ => None,
    });
    let first = first.expect("the first attempt failed");
    assert_eq!(first.class, cairn_core::event::ErrorClass::Transient);
    assert!(first.message.contains("MCP server everything went away"), "{first:?}");
    assert_eq!(env.started(&id, "op"), 2);
    env.assert_journal_is_sound(&id);
}

/// The Python streamable-HTTP server on a free loopback port.
struct HttpServer {
    child: Child,
    url: String,
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn http_server(python: &str) -> HttpServer {
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("port").local_addr().expect("addr").port();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../.ci/mcp_http_server.py");
    let child = Command::new(python)
        .args([script, &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the Python MCP server");
    wait_for("the MCP server to listen", LONG, || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
    HttpServer { child, url: format!("http://127.0.0.1:{port}/mcp") }
}

#[test]
fn a_streamable_http_server_gets_each_writes_stable_key_and_a_recorded_write_is_not_sent_again() {
    let Some(python) = python() else { return };
    let server = http_server(&python);
    let env = Env::new();
    env.write("cairn.toml", &format!("[mcp.notes]\nurl = \"{}\"\napproval = {{ remember = \"never\" }}\n", server.url));
    let listed = json_out(&env.run(&["tools", "list", "--json"]));
    let effect = |name: &str| {
        listed["tools"].as_array().into_iter().flatten().find(|t| t["name"] == name).map(|t| t["effect"].clone())
    };
    assert_eq!((effect("notes.add"), effect("notes.remember")), (Some(json!("read")), Some(json!("write"))));
    let out = json_out(&env.run(&["tools", "call", "notes.add", "--args", "{\"a\": 2, \"b\": 40}", "--json"]));
    assert_eq!(out["text"], "42");
    // A write in a run carries `run/step/call-1`; the process dies after the call returned and
    // before the attempt's result was committed; on resume the recorded result comes back.
    let wf = env.write(
        "wf.yaml",
        "name: notes\nsteps:\n  - {id: keep, kind: tool, with: {tool: notes.remember, args: {note: buy milk}}}\n",
    );
    let (mut child, lines) = env.spawn(&["run", path_str(&wf)], &[("CAIRN_TEST_HOLD_AFTER_ACTIVITY", "keep")]);
    wait_line(&lines, "holding", LONG);
    sigkill(&mut child);
    assert!(env.run(&["resume"]).status.success());
    let id = env.only_run().id;
    assert_eq!(env.only_run().status, "COMPLETED");
    let out = env.run(&["runs", "show", &id, "--step", "keep", "--json"]);
    let shown: Value = serde_json::from_str(&stdout(&out)).expect("json");
    let text = shown.pointer("/output/value/text").and_then(Value::as_str).unwrap_or_default().to_string();
    let answer: Value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("{shown}"));
    assert_eq!(answer["key"], format!("{id}/keep/call-1"));
    assert_eq!(answer["times"], 1, "the server saw the write once");
    env.assert_journal_is_sound(&id);
}
