//! `type = "mock"`: a model that answers in this process, the same request always the same way,
//! so that examples and tests run offline. Its answers come from the provider's `replies` — the
//! first whose `when` is in the conversation's last message (case-insensitive; no `when` matches
//! anything) says its `say` — else, when the request asks for JSON fitting a schema, the plainest
//! value that fits it, else a sentence quoting the last message. Usage is counted as a real
//! provider's would be, so prices and budgets apply.

use super::Answer;
use crate::models::Provider;
use serde_json::{Map, Value, json};

/// The mock's answer to a request (`body` in OpenAI's shape).
pub fn answer(provider: &Provider, body: &Value) -> Answer {
    let last = body["messages"]
        .as_array()
        .and_then(|m| m.last())
        .and_then(|m| m["content"].as_str())
        .unwrap_or_default()
        .to_lowercase();
    let scripted = provider
        .replies
        .iter()
        .find(|r| r.when.as_deref().is_none_or(|w| last.contains(&w.to_lowercase())))
        .map(|r| r.say.clone());
    let text = scripted.unwrap_or_else(|| match body.pointer("/response_format/json_schema/schema") {
        Some(schema) => fitting(schema, 0).to_string(),
        None => {
            let words: Vec<&str> = last.split_whitespace().take(12).collect();
            format!("(mock model) You said: {}", words.join(" "))
        }
    });
    Answer {
        input_tokens: Some(crate::tokens::count_messages(&body["messages"])),
        output_tokens: Some(crate::tokens::count(&text)),
        text,
        finish_reason: "stop".into(),
        provider_model: Some("mock".into()),
        cached_tokens: 0,
        tool_calls: Vec::new(),
    }
}

/// The plainest value that fits `schema`: its `const`, its first `enum` value, its last
/// alternative, an object of its required properties, the shortest string or list it allows.
fn fitting(schema: &Value, depth: usize) -> Value {
    if depth > 16 {
        return Value::Null;
    }
    if let Some(c) = schema.get("const") {
        return c.clone();
    }
    if let Some(first) = schema.get("enum").and_then(Value::as_array).and_then(|e| e.first()) {
        return first.clone();
    }
    for k in ["anyOf", "oneOf"] {
        if let Some(last) = schema.get(k).and_then(Value::as_array).and_then(|a| a.last()) {
            return fitting(last, depth + 1);
        }
    }
    if let Some(all) = schema.get("allOf").and_then(Value::as_array).and_then(|a| a.first()) {
        return fitting(all, depth + 1);
    }
    let kind = match schema.get("type") {
        Some(Value::String(t)) => t.as_str(),
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).find(|t| *t != "null").unwrap_or("null"),
        _ if schema.get("properties").is_some() => "object",
        _ => "string",
    };
    let at_least = |k: &str| schema.get(k).and_then(Value::as_u64).unwrap_or(0);
    match kind {
        "object" => {
            let mut out = Map::new();
            for name in schema.get("required").and_then(Value::as_array).into_iter().flatten() {
                let Some(name) = name.as_str() else { continue };
                let property = schema.pointer(&format!("/properties/{name}")).unwrap_or(&Value::Null);
                out.insert(name.to_string(), fitting(property, depth + 1));
            }
            Value::Object(out)
        }
        "array" => {
            let item = fitting(schema.get("items").unwrap_or(&Value::Null), depth + 1);
            Value::Array(vec![item; at_least("minItems").min(8) as usize])
        }
        "integer" | "number" => schema.get("minimum").cloned().unwrap_or(json!(0)),
        "boolean" => json!(false),
        "null" => Value::Null,
        _ => {
            let mut s = "mock".to_string();
            while (s.chars().count() as u64) < at_least("minLength").min(256) {
                s.push('.');
            }
            json!(s)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::{MockReply, ProviderType};

    fn mock(replies: Vec<MockReply>) -> Provider {
        Provider {
            name: "mock".into(),
            kind: ProviderType::Mock,
            base_url: String::new(),
            api_key_env: None,
            connect_timeout_ms: 1,
            request_timeout_ms: 1,
            headers: Default::default(),
            breaker: Default::default(),
            replies,
        }
    }

    #[test]
    fn the_first_reply_whose_words_are_in_the_last_message_answers_else_the_plainest_fit() {
        let p = mock(vec![
            MockReply { when: Some("REFUND".into()), say: r#"{"branch":"billing"}"#.into() },
            MockReply { when: None, say: "anything".into() },
        ]);
        let body = json!({"messages": [{"role": "user", "content": "I want a refund"}]});
        assert_eq!(answer(&p, &body).text, r#"{"branch":"billing"}"#);
        let other = json!({"messages": [{"role": "user", "content": "hello"}]});
        assert_eq!(answer(&p, &other).text, "anything");
        let schema = json!({"type": "object", "required": ["branch", "why", "n", "tags"], "properties": {
            "branch": {"enum": ["sales", "billing"]}, "why": {"type": "string", "minLength": 6},
            "n": {"type": "integer", "minimum": 2}, "tags": {"type": "array", "items": {"type": "string"}, "minItems": 1}}});
        let asked = json!({"messages": [], "response_format": {"json_schema": {"schema": schema}}});
        let fit: Value = serde_json::from_str(&answer(&mock(vec![]), &asked).text).expect("json");
        assert_eq!(fit, json!({"branch": "sales", "why": "mock..", "n": 2, "tags": ["mock"]}));
        let plain = answer(&mock(vec![]), &other);
        assert_eq!((plain.text.as_str(), plain.input_tokens.is_some()), ("(mock model) You said: hello", true));
    }
}
