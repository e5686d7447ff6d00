//! OpenTelemetry traces (built with `--features otel`): a real `cairn` exports OTLP/HTTP (JSON)
//! to a collector stand-in on loopback. An agent run killed with SIGKILL after its tool call and
//! resumed reports every span once — the run (`invoke_workflow`), its attempts (`invoke_agent`),
//! each model call (`chat {model}`) and tool call (`execute_tool {tool}`) with the GenAI
//! attributes — linked in one trace.
#![cfg(feature = "otel")]

mod common;

use common::*;
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A collector stand-in: keeps every span POSTed to `/v1/traces`; answers `GET /page` for the
/// agent's tool.
fn collector() -> (String, Arc<Mutex<Vec<Value>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let spans = Arc::new(Mutex::new(Vec::new()));
    let kept = spans.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let kept = kept.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().expect("clone"));
                let mut stream = stream;
                loop {
                    let mut head = String::new();
                    if reader.read_line(&mut head).unwrap_or(0) == 0 {
                        return;
                    }
                    let mut length = 0usize;
                    loop {
                        let mut line = String::new();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        if line == "\r\n" {
                            break;
                        }
                        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                            length = v.trim().parse().unwrap_or(0);
                        }
                    }
                    let mut body = vec![0; length];
                    if reader.read_exact(&mut body).is_err() {
                        return;
                    }
                    let answer = if head.starts_with("POST /v1/traces") {
                        let doc: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                        for rs in doc["resourceSpans"].as_array().into_iter().flatten() {
                            for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
                                for span in ss["spans"].as_array().into_iter().flatten() {
                                    kept.lock().expect("lock").push(span.clone());
                                }
                            }
                        }
                        "{}".to_string()
                    } else {
                        json!({"answer": "Paris is the capital of France."}).to_string()
                    };
                    let reply = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{answer}",
                        answer.len()
                    );
                    if stream.write_all(reply.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, spans)
}

fn attr<'a>(span: &'a Value, key: &str) -> Option<&'a Value> {
    span["attributes"].as_array()?.iter().find(|a| a["key"] == key).map(|a| &a["value"])
}

fn text(span: &Value, key: &str) -> String {
    attr(span, key).and_then(|v| v["stringValue"].as_str()).unwrap_or_default().to_string()
}

fn int(span: &Value, key: &str) -> i64 {
    attr(span, key)
        .and_then(|v| v["intValue"].as_str().and_then(|s| s.parse().ok()).or(v["intValue"].as_i64()))
        .unwrap_or(-1)
}

#[test]
fn an_agent_run_resumed_after_sigkill_reports_each_span_once_with_genai_attributes() {
    let (addr, spans) = collector();
    let env = Env::new();
    env.write(
        "cairn.toml",
        &format!(
            "[providers.offline]\ntype = \"mock\"\n\n\
             [[providers.offline.replies]]\nwhen = \"Paris is the capital\"\nsay = '{{\"final\": \"Paris\"}}'\n\n\
             [[providers.offline.replies]]\nwhen = \"capital of France\"\nsay = '{{\"tool\": \"page\", \"args\": {{}}, \"reason\": \"look it up\"}}'\n\n\
             [models.quick]\nprovider = \"offline\"\nmodel = \"scripted-1\"\n\n\
             [tools.page]\ntype = \"http_request\"\nurl = \"http://{addr}/page\"\nmethod = \"GET\"\n"
        ),
    );
    let wf = env.write(
        "wf.yaml",
        "name: geo\nsteps:\n  - id: assistant\n    kind: agent\n    with:\n      model: quick\n      tools: [page]\n      max_turns: 4\n      task: What is the capital of France?\n",
    );
    let endpoint = format!("http://{addr}");
    let otel = [("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()), ("OTEL_SERVICE_NAME", "cairn-test")];
    // The process hangs right after the tool call (call 2) is recorded; its spans so far are
    // exported on the batch schedule, then it is killed.
    let mut held = otel.to_vec();
    held.push(("CAIRN_TEST_HOLD_AFTER_CALL", "assistant/2"));
    let (mut child, lines) = env.spawn(&["run", path_str(&wf)], &held);
    wait_line(&lines, "holding after call 2", Duration::from_secs(30));
    wait_for("the first process's spans", Duration::from_secs(20), || spans.lock().expect("lock").len() >= 2);
    sigkill(&mut child);
    let mut resume = env.cmd();
    resume.arg("resume").envs(otel);
    let out = resume.output().expect("resume");
    assert!(out.status.success(), "{}", stderr(&out));
    let run = env.only_run();
    assert_eq!(run.status, "COMPLETED");
    wait_for("the resumed process's spans", Duration::from_secs(20), || {
        spans.lock().expect("lock").iter().any(|s| s["name"] == "invoke_workflow geo")
    });

    let spans = spans.lock().expect("lock").clone();
    let named = |name: &str| spans.iter().filter(|s| s["name"] == name).collect::<Vec<_>>();
    let all: Vec<&str> = spans.iter().filter_map(|s| s["name"].as_str()).collect();
    // Each call once: two model turns and one tool call, though the run ran in two processes
    // and the second got calls 1 and 2 back from the record.
    let chats = named("chat scripted-1");
    assert_eq!(chats.len(), 2, "{all:?}");
    let tools = named("execute_tool page");
    assert_eq!(tools.len(), 1, "{all:?}");
    assert_eq!(named("invoke_workflow geo").len(), 1, "{all:?}");
    let mut ids: Vec<&str> = spans.iter().filter_map(|s| s["spanId"].as_str()).collect();
    let count = ids.len();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), count, "no span reported twice: {all:?}");

    // One trace; calls hang under the attempt that made them, attempts under the run.
    let trace = spans[0]["traceId"].as_str().expect("trace id");
    assert!(spans.iter().all(|s| s["traceId"] == trace), "{spans:#?}");
    let workflow = named("invoke_workflow geo")[0];
    assert_eq!(text(workflow, "gen_ai.operation.name"), "invoke_workflow");
    assert_eq!(text(workflow, "cairn.run_id"), run.id);
    let agents = named("invoke_agent assistant");
    assert!(!agents.is_empty(), "{all:?}");
    for a in &agents {
        assert_eq!(a["parentSpanId"], workflow["spanId"], "{a:#}");
        assert_eq!(text(a, "gen_ai.operation.name"), "invoke_agent");
        assert_eq!(text(a, "gen_ai.agent.name"), "assistant");
    }
    // The interrupted attempt is reported too (as failed, when the resumed process found it),
    // and the calls it made hang under it.
    assert_eq!(agents.len(), 2, "{all:?}");
    for call in chats.iter().chain(&tools) {
        assert!(agents.iter().any(|a| a["spanId"] == call["parentSpanId"]), "{call:#} has no parent among {agents:#?}");
    }
    let finished = agents.iter().find(|a| int(a, "cairn.attempt") == 2).expect("attempt 2's span");
    let last = chats.iter().find(|c| text(c, "cairn.call.id").ends_with("/call-3")).expect("call 3's span");
    assert_eq!(last["parentSpanId"], finished["spanId"], "the resumed attempt made call 3");

    // The GenAI attributes.
    for chat in &chats {
        assert_eq!(text(chat, "gen_ai.operation.name"), "chat");
        assert_eq!(text(chat, "gen_ai.provider.name"), "mock");
        assert_eq!(text(chat, "cairn.provider"), "offline");
        assert_eq!(text(chat, "gen_ai.request.model"), "scripted-1");
        assert_eq!(text(chat, "gen_ai.response.model"), "mock");
        assert!(int(chat, "gen_ai.usage.input_tokens") > 0, "{chat:#}");
        assert!(int(chat, "gen_ai.usage.output_tokens") > 0, "{chat:#}");
        let reasons = attr(chat, "gen_ai.response.finish_reasons").expect("finish reasons");
        assert_eq!(reasons["arrayValue"]["values"][0]["stringValue"], "stop", "{chat:#}");
    }
    let tool = tools[0];
    assert_eq!(text(tool, "gen_ai.operation.name"), "execute_tool");
    assert_eq!(text(tool, "gen_ai.tool.name"), "page");
    assert_eq!(text(tool, "gen_ai.tool.call.id"), format!("{}/assistant/call-2", run.id));
}
