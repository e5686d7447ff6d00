//! Step kinds as plugins, seen from the CLI: `cairn kinds` lists what this binary runs with each
//! `with` schema, and `cairn validate` holds `with` blocks to those schemas at the failing field.

mod common;

use common::*;
use serde_json::Value;

#[test]
fn kinds_lists_every_builtin_with_its_effect_class_role_and_with_schema() {
    let env = Env::new();
    let out = env.run(&["kinds", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let doc: Value = serde_json::from_str(&stdout(&out)).expect("kinds --json is JSON");
    let kinds = doc["kinds"].as_array().expect("a list");
    let names: Vec<&str> = kinds.iter().filter_map(|k| k["name"].as_str()).collect();
    assert_eq!(
        names,
        [
            "agent",
            "approval",
            "echo",
            "fail",
            "http",
            "llm",
            "mock_model",
            "noop",
            "sleep",
            "subworkflow",
            "tool",
            "wait"
        ]
    );
    assert_eq!(
        kinds.iter().find(|k| k["name"] == "subworkflow").map(|k| k["role"].clone()),
        Some("subworkflow".into())
    );
    let kind = |name: &str| kinds.iter().find(|k| k["name"] == name).cloned().unwrap_or_default();
    assert_eq!(kind("http")["effect"], "write");
    assert_eq!(kind("http")["with_schema"]["properties"]["url"]["type"], "string");
    assert_eq!(kind("approval")["role"], "gate");
    assert_eq!(kind("echo")["effect"], "pure");
    assert_eq!(kind("mock_model")["retry"]["max_attempts"], 5);
    assert!(kind("sleep")["timeout_ms"].is_null());
    for k in kinds {
        assert!(k["summary"].as_str().is_some_and(|s| !s.is_empty()), "{k}");
    }

    let out = env.run(&["kinds"]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0));
    for name in names {
        assert!(text.lines().any(|l| l.starts_with(&format!("{name}  ("))), "{name} missing:\n{text}");
    }
    assert!(text.contains("http  (write, activity;"), "{text}");
}

#[test]
fn validate_holds_a_with_block_to_its_kinds_schema_and_names_the_failing_field() {
    let env = Env::new();
    env.write(
        "wf.yaml",
        "name: t\ninputs: {url: {}}\nsteps:\n  - id: call\n    kind: http\n    with:\n      url: ftp://x/y\n      method: POST\n  - id: boom\n    kind: fail\n    with: {class: sometimes}\n  - id: ok\n    kind: http\n    with: {url: '{{ inputs.url }}'}\n",
    );
    let out = env.run(&["validate", "wf.yaml"]);
    let so = stdout(&out);
    assert_eq!(out.status.code(), Some(2), "{so}\n{}", stderr(&out));
    let lines: Vec<&str> = so.lines().collect();
    assert_eq!(lines.len(), 2, "{so}");
    assert!(lines[0].starts_with("wf.yaml:7:12: step `call`: `with.url` does not fit kind `http`"), "{so}");
    assert!(lines[0].contains("ftp://x/y"), "{so}");
    assert!(lines[1].starts_with("wf.yaml:11:19: step `boom`: `with.class` does not fit kind `fail`"), "{so}");
    assert!(stderr(&out).contains("2 problem(s) found"), "{}", stderr(&out));
}

/// A service that answers every request with the value of its `X-Team` header.
fn mirror() -> String {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(&stream);
            let (mut team, mut length, mut line) = (String::new(), 0usize, String::new());
            while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                if let Some((name, value)) = line.split_once(':') {
                    match name.trim().to_ascii_lowercase().as_str() {
                        "x-team" => team = value.trim().to_string(),
                        "content-length" => length = value.trim().parse().unwrap_or(0),
                        _ => {}
                    }
                }
                line.clear();
            }
            let _ = reader.read_exact(&mut vec![0; length]);
            let body = serde_json::json!({ "team": team }).to_string();
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = (&stream).write_all(format!("{head}{body}").as_bytes());
        }
    });
    addr
}

#[test]
fn a_kinds_configuration_in_cairn_toml_reaches_its_attempts() {
    let env = Env::new();
    let addr = mirror();
    let config = env.write("cairn.toml", "[kinds.http]\nheaders = { X-Team = \"payments\" }\n");
    let wf = env.write(
        "wf.yaml",
        &format!(
            "name: t\nsteps:\n  - {{id: a, kind: http, with: {{url: \"http://{addr}/a\"}}}}\n  - {{id: b, kind: http, with: {{url: \"http://{addr}/b\", headers: {{X-Team: own}}}}}}\n"
        ),
    );
    let out = env.run(&["--config", path_str(&config), "run", path_str(&wf), "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let outcome: Value = serde_json::from_str(&stdout(&out)).expect("json");
    assert_eq!(outcome["output"]["a"]["team"], "payments", "{outcome}");
    assert_eq!(outcome["output"]["b"]["team"], "own", "a step's own header wins: {outcome}");

    let bad = env.write("bad.toml", "[kinds.htp]\nheaders = {}\n");
    let out = env.run(&["--config", path_str(&bad), "run", path_str(&wf)]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("`kinds.htp` is not a step kind"), "{}", stderr(&out));
}
