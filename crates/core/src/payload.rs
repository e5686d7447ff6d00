//! Content-addressed payloads. Step outputs, inputs and plans live in a payload table keyed by
//! their SHA-256, and events carry only a [`PayloadRef`], so the journal stays small however much
//! text an agent accumulates.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PayloadRef {
    /// Lower-case hex SHA-256 of the canonical JSON bytes.
    pub hash: String,
    /// Size of those bytes.
    pub size: u64,
}

/// A payload ready to store: its reference and its canonical bytes.
#[derive(Clone, Debug, PartialEq)]
pub struct Payload {
    pub reference: PayloadRef,
    pub bytes: Vec<u8>,
}

impl Payload {
    /// Serializes a JSON value (serde_json's map is ordered, so equal values give equal bytes).
    pub fn of(value: &Value) -> Payload {
        let bytes = serde_json::to_vec(value).unwrap_or_else(|_| b"null".to_vec());
        Payload::from_bytes(bytes)
    }

    pub fn from_bytes(bytes: Vec<u8>) -> Payload {
        let hash = sha256_hex(&bytes);
        Payload { reference: PayloadRef { hash, size: bytes.len() as u64 }, bytes }
    }
}

/// How deep a step's output may nest. Deeper values could not be read back (JSON parsers stop at
/// 128 levels) and would exhaust the stack of whatever walks them recursively; a `loop` that
/// feeds each iteration's output to the next (`{p: "{{ previous }}"}`) reaches it.
pub const MAX_NESTING: usize = 64;

/// How many levels of arrays and objects a value nests (0 for a scalar), counted without
/// recursion, so a value of any depth is measured safely.
pub fn nesting(value: &Value) -> usize {
    let mut deepest = 0;
    let mut stack = vec![(value, 0usize)];
    while let Some((v, depth)) = stack.pop() {
        let children: Box<dyn Iterator<Item = &Value>> = match v {
            Value::Array(items) => Box::new(items.iter()),
            Value::Object(map) => Box::new(map.values()),
            _ => continue,
        };
        deepest = deepest.max(depth + 1);
        stack.extend(children.map(|c| (c, depth + 1)));
    }
    deepest
}

/// Lower-case hex SHA-256 (payload addresses, token hashes, request fingerprints).
pub fn sha256_hex(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    let mut hash = String::with_capacity(64);
    for b in digest {
        hash.push(char::from_digit((b >> 4) as u32, 16).unwrap_or('0'));
        hash.push(char::from_digit((b & 0xF) as u32, 16).unwrap_or('0'));
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_values_share_a_hash() {
        let a = Payload::of(&serde_json::json!({"b": 1, "a": [1, 2]}));
        let b = Payload::of(&serde_json::json!({"a": [1, 2], "b": 1}));
        assert_eq!(a.reference, b.reference);
        assert_eq!(a.reference.hash.len(), 64);
        assert_ne!(a.reference, Payload::of(&serde_json::json!(null)).reference);
    }
}
