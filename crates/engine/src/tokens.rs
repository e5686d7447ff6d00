//! Counting tokens where a provider does not: an estimate with OpenAI's `o200k_base` vocabulary
//! (compiled in, so it works offline). Other models tokenize differently, so a count from here is
//! always marked `estimated`; it is close enough to reserve a budget and to price a call whose
//! answer came without usage.

use serde_json::Value;

/// What each message adds on top of its text (role and separators), as chat formats do.
const PER_MESSAGE: u64 = 4;

/// Tokens in a text.
pub fn count(text: &str) -> u64 {
    tiktoken_rs::o200k_base_singleton().count_ordinary(text) as u64
}

/// Tokens a chat request's `messages` take as input.
pub fn count_messages(messages: &Value) -> u64 {
    let Some(list) = messages.as_array() else { return 0 };
    list.iter().map(|m| PER_MESSAGE + m.get("content").and_then(Value::as_str).map(count).unwrap_or(0)).sum::<u64>() + 3
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn words_and_messages_are_counted_with_a_real_vocabulary() {
        assert_eq!(count("hello world"), 2);
        assert_eq!(count(""), 0);
        let messages = json!([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello world"}]);
        assert_eq!(count_messages(&messages), 3 + (4 + count("Be brief.")) + (4 + 2));
    }
}
