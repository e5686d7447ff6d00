//! Identifier newtypes. A run id is `wf_` followed by a 26-character Crockford base32 ULID, so ids
//! sort by creation time and are safe in file names and URLs.

use serde::{Deserialize, Serialize};
use std::fmt;

const CROCKFORD: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// Identifies one execution of a workflow.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RunId(String);

impl RunId {
    /// Builds an id from a millisecond timestamp and 80 random bits. The caller supplies both,
    /// keeping this crate free of clocks and randomness.
    pub fn from_parts(unix_ms: u64, random: u128) -> Self {
        let value: u128 = ((unix_ms as u128 & 0xFFFF_FFFF_FFFF) << 80) | (random & ((1u128 << 80) - 1));
        let mut out = String::with_capacity(29);
        out.push_str("wf_");
        for i in (0..26).rev() {
            let idx = ((value >> (i * 5)) & 0x1F) as usize;
            out.push(CROCKFORD[idx] as char);
        }
        RunId(out)
    }

    /// Parses user input (a CLI argument, a URL segment) into a run id.
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let body = s
            .strip_prefix("wf_")
            .ok_or_else(|| format!("'{s}' is not a run id: run ids look like wf_01JB8Z3K4Q5R6S7T8V9W0XYZAB"))?;
        if body.is_empty()
            || body.len() > 64
            || !body.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(format!("'{s}' is not a run id: after 'wf_' only letters, digits, '-' and '_' are allowed"));
        }
        Ok(RunId(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Identifies a step inside one definition (`generate_summary`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct StepId(String);

impl StepId {
    pub fn new(s: impl Into<String>) -> Self {
        StepId(s.into())
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for StepId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::borrow::Borrow<str> for StepId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_ids_sort_by_time_and_round_trip() {
        let a = RunId::from_parts(1_700_000_000_000, 42);
        let b = RunId::from_parts(1_700_000_000_001, 1);
        assert!(a < b);
        assert_eq!(a.as_str().len(), 29);
        assert_eq!(RunId::parse(a.as_str()), Ok(a));
        assert!(RunId::parse("run_123").is_err());
        assert!(RunId::parse("wf_../../etc").is_err());
    }
}
