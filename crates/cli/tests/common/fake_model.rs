//! A scripted model provider on loopback, in addition to the real model: it answers OpenAI chat
//! completions (`POST …/chat/completions`) and Anthropic messages (`POST …/messages`) with the
//! replies a test queues — an answer, a 429 with `Retry-After`, a 500, a hang, a body that is no
//! JSON — and keeps every request it received, so a test can count calls and read what was sent.

use serde_json::{Value, json};
use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One scripted reply.
#[derive(Clone, Debug)]
pub enum Reply {
    /// A status, extra headers and a body.
    Http(u16, Vec<(&'static str, String)>, String),
    /// No answer for this long (the client's timeout should fire first).
    Hang(Duration),
    /// A streamed OpenAI answer: these pieces, `gap` apart; `whole: false` cuts the stream
    /// before its end.
    Stream { pieces: Vec<String>, gap: Duration, whole: bool },
    /// A streamed Anthropic Messages answer of these pieces.
    AnthropicStream { pieces: Vec<String> },
}

impl Reply {
    /// A successful OpenAI chat completion saying `text`, with this usage.
    pub fn says(text: &str, input_tokens: u64, output_tokens: u64) -> Reply {
        Reply::Http(
            200,
            vec![],
            json!({
                "id": "fake-1",
                "object": "chat.completion",
                "model": "fake-model",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": input_tokens, "completion_tokens": output_tokens,
                          "total_tokens": input_tokens.saturating_add(output_tokens)}
            })
            .to_string(),
        )
    }

    /// An OpenAI completion asking for tool calls (`id`, tool name, arguments), with `text`.
    pub fn calls(text: &str, calls: &[(&str, &str, Value)]) -> Reply {
        let calls: Vec<Value> = calls
            .iter()
            .map(|(id, name, args)| {
                json!({"id": id, "type": "function", "function": {"name": name, "arguments": args.to_string()}})
            })
            .collect();
        Reply::Http(
            200,
            vec![],
            json!({
                "model": "fake-model",
                "choices": [{"index": 0, "finish_reason": "tool_calls",
                             "message": {"role": "assistant", "content": text, "tool_calls": calls}}],
                "usage": {"prompt_tokens": 60, "completion_tokens": 12, "total_tokens": 72}
            })
            .to_string(),
        )
    }

    /// A completion without usage (the engine must count the tokens itself).
    pub fn says_without_usage(text: &str) -> Reply {
        Reply::Http(
            200,
            vec![],
            json!({"model": "fake-model", "choices": [{"message": {"role": "assistant", "content": text},
                   "finish_reason": "stop"}]})
            .to_string(),
        )
    }

    /// A successful Anthropic Messages answer saying `text`.
    pub fn anthropic_says(text: &str, input_tokens: u64, output_tokens: u64) -> Reply {
        Reply::Http(
            200,
            vec![],
            json!({
                "id": "msg_fake", "type": "message", "role": "assistant", "model": "claude-fake",
                "content": [{"type": "text", "text": text}], "stop_reason": "end_turn",
                "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens}
            })
            .to_string(),
        )
    }

    /// An Anthropic answer calling the forced `output` tool with `input`.
    pub fn anthropic_tool(input: Value) -> Reply {
        Reply::Http(
            200,
            vec![],
            json!({
                "model": "claude-fake", "stop_reason": "tool_use",
                "content": [{"type": "tool_use", "id": "toolu_1", "name": "output", "input": input}],
                "usage": {"input_tokens": 20, "output_tokens": 8}
            })
            .to_string(),
        )
    }

    pub fn status(code: u16, body: &str) -> Reply {
        Reply::Http(code, vec![], body.to_string())
    }

    pub fn rate_limited(retry_after_s: u64) -> Reply {
        Reply::Http(
            429,
            vec![("Retry-After", retry_after_s.to_string())],
            r#"{"error":{"message":"slow down"}}"#.into(),
        )
    }
}

pub struct FakeProvider {
    /// `http://127.0.0.1:PORT/v1`
    pub base_url: String,
    script: Arc<Mutex<VecDeque<Reply>>>,
    received: Arc<Mutex<Vec<Value>>>,
    heads: Arc<Mutex<Vec<Head>>>,
}

/// A request's line and headers (names in lower case).
#[derive(Clone, Debug)]
pub struct Head {
    pub line: String,
    pub headers: std::collections::HashMap<String, String>,
}

impl FakeProvider {
    /// Starts on a free loopback port. With the script empty it answers `"ok"` (5 in, 1 out).
    pub fn start() -> FakeProvider {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let base_url = format!("http://{}/v1", listener.local_addr().expect("addr"));
        let script: Arc<Mutex<VecDeque<Reply>>> = Arc::default();
        let received: Arc<Mutex<Vec<Value>>> = Arc::default();
        let heads: Arc<Mutex<Vec<Head>>> = Arc::default();
        let (s, r, h) = (script.clone(), received.clone(), heads.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (s, r, h) = (s.clone(), r.clone(), h.clone());
                std::thread::spawn(move || serve(stream, &s, &r, &h));
            }
        });
        FakeProvider { base_url, script, received, heads }
    }

    /// Queues replies, answered in order.
    pub fn then(&self, replies: impl IntoIterator<Item = Reply>) -> &FakeProvider {
        self.script.lock().expect("script").extend(replies);
        self
    }

    /// The request lines and headers received so far.
    pub fn heads(&self) -> Vec<Head> {
        self.heads.lock().expect("heads").clone()
    }

    /// The JSON bodies received so far.
    pub fn received(&self) -> Vec<Value> {
        self.received.lock().expect("received").clone()
    }
}

fn serve(
    stream: std::net::TcpStream,
    script: &Mutex<VecDeque<Reply>>,
    received: &Mutex<Vec<Value>>,
    heads: &Mutex<Vec<Head>>,
) {
    let mut reader = BufReader::new(&stream);
    let (mut length, mut line, mut first) = (0usize, String::new(), String::new());
    let _ = reader.read_line(&mut first);
    let mut headers = std::collections::HashMap::new();
    while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
        if let Some((name, value)) = line.split_once(':') {
            let name = name.trim().to_ascii_lowercase();
            if name == "content-length" {
                length = value.trim().parse().unwrap_or(0);
            }
            headers.insert(name, value.trim().to_string());
        }
        line.clear();
    }
    heads.lock().expect("heads").push(Head { line: first.trim().to_string(), headers });
    let mut body = vec![0; length];
    let _ = reader.read_exact(&mut body);
    let reply = if first.starts_with("GET ") && first.contains("/models") {
        Reply::Http(200, vec![], r#"{"data":[{"id":"fake-model"}]}"#.into())
    } else {
        received.lock().expect("received").push(serde_json::from_slice(&body).unwrap_or(Value::Null));
        script.lock().expect("script").pop_front().unwrap_or_else(|| Reply::says("ok", 5, 1))
    };
    match reply {
        Reply::Hang(d) => std::thread::sleep(d),
        Reply::AnthropicStream { pieces } => {
            let mut out = &stream;
            let mut body =
                String::from("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n");
            let event = |name: &str, data: Value| format!("event: {name}\ndata: {data}\n\n");
            body.push_str(&event(
                "message_start",
                json!({"type": "message_start", "message": {"model": "claude-fake",
                "usage": {"input_tokens": 11, "output_tokens": 1}}}),
            ));
            body.push_str(&event(
                "content_block_start",
                json!({"type": "content_block_start", "index": 0,
                "content_block": {"type": "text", "text": ""}}),
            ));
            for piece in &pieces {
                body.push_str(&event(
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": 0,
                    "delta": {"type": "text_delta", "text": piece}}),
                ));
            }
            body.push_str(&event(
                "message_delta",
                json!({"type": "message_delta",
                "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": pieces.len()}}),
            ));
            body.push_str(&event("message_stop", json!({"type": "message_stop"})));
            let _ = out.write_all(body.as_bytes());
        }
        Reply::Stream { pieces, gap, whole } => {
            let mut out = &stream;
            let head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n";
            if out.write_all(head.as_bytes()).is_err() {
                return;
            }
            for piece in &pieces {
                let chunk = json!({"model": "fake-model", "choices": [{"index": 0, "delta": {"content": piece}}]});
                let event = format!("data: {chunk}\n\n");
                // Sent in two writes, cut one byte into the text: a character may be split
                // between reads, as on any real connection.
                let cut = event.find("content").map_or(0, |i| i + "content\":\"".len() + 1).min(event.len());
                for part in [&event.as_bytes()[..cut], &event.as_bytes()[cut..]] {
                    if out.write_all(part).is_err() {
                        return;
                    }
                    let _ = out.flush();
                    std::thread::sleep(gap / 2);
                }
            }
            if whole {
                let end =
                    json!({"model": "fake-model", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]});
                let usage = json!({"model": "fake-model", "choices": [],
                                   "usage": {"prompt_tokens": 9, "completion_tokens": pieces.len()}});
                let _ = out.write_all(format!("data: {end}\n\ndata: {usage}\n\ndata: [DONE]\n\n").as_bytes());
            }
        }
        Reply::Http(code, headers, body) => {
            let mut head = format!(
                "HTTP/1.1 {code} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
                body.len()
            );
            for (k, v) in headers {
                head.push_str(&format!("{k}: {v}\r\n"));
            }
            let _ = (&stream).write_all(format!("{head}\r\n{body}").as_bytes());
        }
    }
}
