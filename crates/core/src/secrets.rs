//! Secret references: `{{ secrets.NAME }}` in a step's `with` (or `compensate.with`).
//!
//! **The core never sees a secret's value.** Rendering a `with` block leaves every secret as the
//! reference text `{{ secrets.NAME }}` in the input that is journaled, and describes, apart from
//! that input, where each secret goes ([`SecretSlot`]); the engine puts the values in, in memory,
//! right before the activity runs. The description comes from the template itself (which
//! printed values were secrets), never from scanning the rendered text, so data that happens to
//! contain `{{ secrets.NAME }}` (a fetched page, an input) is never taken for a reference.
//!
//! Secrets are refused everywhere else (`when`, `approval.prompt`): what those produce is
//! decided and journaled. This module also finds literal credentials written into a definition
//! ([`literal_credentials`]), which `cairn validate` and the API report as warnings.

use serde_json::Value;

/// The variable templates read secrets from.
pub const ROOT: &str = "secrets";

/// Longest secret name.
pub const MAX_NAME: usize = 64;

/// Secret names are what an environment variable name can carry after `CAIRN_SECRET_`:
/// an upper-case ASCII letter, then upper-case letters, digits and `_`, at most 64 in all.
pub fn is_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_uppercase())
        && name.len() <= MAX_NAME
        && bytes.all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
}

/// What a name becomes under the rules of [`is_name`] (`api-key` → `API_KEY`), for suggestions;
/// `None` when nothing usable is left.
pub fn suggest_name(raw: &str) -> Option<String> {
    let mut name = String::new();
    for c in raw.chars() {
        if c.is_ascii_alphanumeric() {
            name.push(c.to_ascii_uppercase());
        } else if !name.is_empty() && !name.ends_with('_') {
            name.push('_');
        }
    }
    let name = name.trim_end_matches('_').trim_start_matches(|c: char| c.is_ascii_digit() || c == '_');
    let name: String = name.chars().take(MAX_NAME).collect();
    is_name(&name).then_some(name)
}

/// The text a secret stands as in a journaled input: `{{ secrets.NAME }}`.
pub fn reference(name: &str) -> String {
    format!("{{{{ {ROOT}.{name} }}}}")
}

/// One piece of a string that holds secrets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Part {
    Text(String),
    Secret(String),
}

/// A string of a rendered input that holds secrets: where it is (a JSON pointer into the
/// input, RFC 6901) and what it is made of. The journaled input holds [`SecretSlot::stored`] at
/// that place; the engine builds the real string from the parts and the values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretSlot {
    pub pointer: String,
    pub parts: Vec<Part>,
}

impl SecretSlot {
    /// The names of the secrets in this string, in order (repeats included).
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            Part::Secret(name) => Some(name.as_str()),
            Part::Text(_) => None,
        })
    }

    /// The string as journaled: each secret as its reference text.
    pub fn stored(&self) -> String {
        self.build(reference)
    }

    /// The string with each secret replaced by `value(name)`.
    pub fn build(&self, mut value: impl FnMut(&str) -> String) -> String {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Secret(name) => out.push_str(&value(name)),
            }
        }
        out
    }
}

/// Appends an object key to a JSON pointer, escaped as RFC 6901 asks.
pub(crate) fn pointer_key(pointer: &str, key: &str) -> String {
    format!("{pointer}/{}", key.replace('~', "~0").replace('/', "~1"))
}

// ---------------------------------------------------------------------------------------------
// Literal credentials in definitions.

/// Key endings (lower case, without `-` and `_`) that name a credential: `Authorization`,
/// `X-Api-Key`, `api_key`, `github_token`, `client_secret`, `db_password`, `private_key`.
const CREDENTIAL_ENDINGS: [&str; 9] =
    ["authorization", "apikey", "token", "secret", "password", "passwd", "privatekey", "secretkey", "secretaccesskey"];

/// Whole keys that name a credential without one of the endings above.
const CREDENTIAL_KEYS: [&str; 1] = ["cookie"];

/// Authorization-style keys, whose values usually start with a scheme (`Bearer …`).
fn is_authorization(normalized: &str) -> bool {
    normalized.ends_with("authorization")
}

fn normalize(key: &str) -> String {
    key.chars().filter(|c| !matches!(c, '-' | '_' | '.' | ' ')).flat_map(char::to_lowercase).collect()
}

/// Whether a key of `with` (or a header name) names a credential.
pub fn is_credential_key(key: &str) -> bool {
    let n = normalize(key);
    CREDENTIAL_KEYS.contains(&n.as_str()) || CREDENTIAL_ENDINGS.iter().any(|e| n.ends_with(e))
}

/// A literal credential found in a `with` block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LiteralCredential {
    /// Where, in the form validation reports (`with.headers.Authorization`).
    pub path: String,
    /// What to write instead, e.g. `Bearer {{ secrets.API_TOKEN }}`.
    pub suggestion: String,
    /// The secret name the suggestion uses.
    pub name: String,
}

impl LiteralCredential {
    /// The warning, naming the place (under `prefix`, e.g. `compensate.`) and the fix, and never
    /// the value.
    pub fn message(&self, prefix: &str) -> String {
        format!(
            "`{prefix}{}` holds a literal credential, which anyone who can read this definition sees (`GET \
             /v1/workflows/NAME`, `cairn export`); write `{}` and give the value to the processes that run \
             attempts as the environment variable CAIRN_SECRET_{} (or map it under [secrets] in cairn.toml)",
            self.path, self.suggestion, self.name
        )
    }
}

/// Strings of a `with` block (under `root`, paths as `with.a.b[0]`) that hold a literal
/// credential: a non-empty string that is not a template, under a key that names a credential
/// (see [`is_credential_key`]), at any depth. A template (`Bearer {{ secrets.API_TOKEN }}`, or one
/// that reads `inputs`) is not reported: it writes no credential into the definition.
pub fn literal_credentials(with: &Value, root: &str) -> Vec<LiteralCredential> {
    let mut found = Vec::new();
    walk(with, root, None, &mut found);
    found
}

fn walk(v: &Value, path: &str, key: Option<&str>, found: &mut Vec<LiteralCredential>) {
    match v {
        Value::String(s) => {
            let Some(key) = key else { return };
            if s.trim().is_empty() || s.contains("{{") || s.contains("{%") || !is_credential_key(key) {
                return;
            }
            let authorization = is_authorization(&normalize(key));
            let name = if authorization {
                "API_TOKEN".to_string()
            } else {
                suggest_name(key).unwrap_or_else(|| "API_TOKEN".to_string())
            };
            // `Bearer abc…` keeps its scheme: only what follows it is the secret.
            let scheme =
                s.trim().split_once(' ').map(|(first, _)| first).filter(|w| {
                    authorization && (1..=16).contains(&w.len()) && w.chars().all(|c| c.is_ascii_alphabetic())
                });
            let suggestion = match scheme {
                Some(scheme) => format!("{scheme} {}", reference(&name)),
                None => reference(&name),
            };
            found.push(LiteralCredential { path: path.to_string(), suggestion, name });
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                walk(item, &format!("{path}[{i}]"), key, found);
            }
        }
        Value::Object(map) => {
            for (k, item) in map {
                walk(item, &format!("{path}.{k}"), Some(k), found);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn secret_names_are_upper_case_identifiers() {
        for ok in ["API_TOKEN", "A", "X9", "GITHUB_TOKEN_2"] {
            assert!(is_name(ok), "{ok}");
        }
        for bad in ["", "api_token", "_X", "9X", "API-TOKEN", "API TOKEN", &"A".repeat(65)] {
            assert!(!is_name(bad), "{bad}");
        }
        assert_eq!(suggest_name("x-api-key").as_deref(), Some("X_API_KEY"));
        assert_eq!(suggest_name("api_token").as_deref(), Some("API_TOKEN"));
        assert_eq!(suggest_name("--"), None);
    }

    #[test]
    fn a_slot_builds_the_stored_and_the_real_string() {
        let slot = SecretSlot {
            pointer: "/headers/Authorization".into(),
            parts: vec![Part::Text("Bearer ".into()), Part::Secret("API_TOKEN".into())],
        };
        assert_eq!(slot.stored(), "Bearer {{ secrets.API_TOKEN }}");
        assert_eq!(slot.build(|_| "s3cr3t".into()), "Bearer s3cr3t");
        assert_eq!(slot.names().collect::<Vec<_>>(), vec!["API_TOKEN"]);
        assert_eq!(pointer_key("/a", "b/c~d"), "/a/b~1c~0d");
    }

    #[test]
    fn literal_credentials_are_found_at_any_depth_and_templates_are_not() {
        let with = json!({
            "url": "http://x",
            "headers": {"Authorization": "Bearer abc123", "X-Api-Key": "k-1", "Accept": "json"},
            "auth": {"client_secret": "shh", "password": "", "nested": [{"access_token": "t"}]},
            "token": "{{ secrets.API_TOKEN }}",
            "api_key": "{{ inputs.key }}",
            "max_tokens": "100",
            "keys": ["not a credential"],
        });
        let found = literal_credentials(&with, "with");
        let brief: Vec<(&str, &str)> = found.iter().map(|c| (c.path.as_str(), c.suggestion.as_str())).collect();
        assert_eq!(
            brief,
            vec![
                ("with.auth.client_secret", "{{ secrets.CLIENT_SECRET }}"),
                ("with.auth.nested[0].access_token", "{{ secrets.ACCESS_TOKEN }}"),
                ("with.headers.Authorization", "Bearer {{ secrets.API_TOKEN }}"),
                ("with.headers.X-Api-Key", "{{ secrets.X_API_KEY }}"),
            ]
        );
        let message = found[2].message("");
        assert!(message.starts_with("`with.headers.Authorization` holds a literal credential"), "{message}");
        assert!(!message.contains("abc123"), "a warning never repeats the value: {message}");
    }
}
