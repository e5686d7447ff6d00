//! Bearer tokens with roles, and the audit trail of every mutating request and every refused one.
//!
//! Roles are ordered: `viewer` reads, `worker` also claims and settles external workers' tasks
//! (`/v1/workers/*`), `operator` also starts, cancels, pauses and signals runs, `admin` also
//! registers workflows and manages tokens. Only a SHA-256 of a token is stored; its
//! id is drawn apart from its secret, so listings reveal nothing of the secret.

use crate::AppState;
use crate::error::ApiError;
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use cairn_core::payload::sha256_hex;
use cairn_store::{AuditRow, Store, TokenRow};
use std::io::Read;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthMode {
    /// Every request acts as `anonymous` with all rights (loopback only, unless forced).
    Off,
    On,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Viewer,
    Worker,
    Operator,
    Admin,
}

impl Role {
    pub fn parse(s: &str) -> Option<Role> {
        match s.trim().to_ascii_lowercase().as_str() {
            "viewer" => Some(Role::Viewer),
            "worker" => Some(Role::Worker),
            "operator" => Some(Role::Operator),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Worker => "worker",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
}

/// Who made a request (put in the request's extensions by the auth layer).
#[derive(Clone, Debug)]
pub struct Actor {
    pub name: String,
    pub role: Role,
}

/// Who a refused request without a bearer token is recorded as (also everyone when auth is off).
pub const ANONYMOUS: &str = "anonymous";
/// Who a request with an unknown or revoked bearer token is recorded as.
pub const UNKNOWN_TOKEN: &str = "unknown-token";

/// Longest path (and method) an audit row keeps: a flood of refused requests with huge paths
/// costs one small row each.
const AUDIT_MAX_CHARS: usize = 256;

/// A new token: the secret (shown once) and the row to store. The id comes from random bytes of
/// its own, so it tells nothing about the secret (ids were once the secret's first 10 hex chars;
/// such rows keep working, since lookup is by hash).
pub fn new_token(name: &str, role: Role, now_ms: i64) -> std::io::Result<(String, TokenRow)> {
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    let (secret_bytes, id_bytes) = bytes.split_at(24);
    let secret = format!("cairn_{}", hex(secret_bytes));
    let row = TokenRow {
        id: format!("tok_{}", hex(id_bytes)),
        name: name.to_string(),
        role: role.as_str().to_string(),
        hash: sha256_hex(secret.as_bytes()),
        created_at_ms: now_ms,
        revoked_at_ms: None,
    };
    Ok((secret, row))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The name a new token may have, trimmed; else why not. Names are what `revoke` and the audit
/// trail show, so they must not pass for an id or for the audit's own actors.
pub fn check_token_name(name: &str) -> Result<&str, String> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 64 {
        return Err("a token name is 1 to 64 characters".into());
    }
    if name.starts_with("tok_") {
        return Err(format!("token name '{name}' starts with `tok_`, which would read as a token id; pick another"));
    }
    if name == ANONYMOUS || name == UNKNOWN_TOKEN {
        return Err(format!("token name '{name}' is what the audit trail calls requests without a valid token"));
    }
    Ok(name)
}

/// The role a request needs; `None` for the public probes.
pub(crate) fn required_role(method: &Method, path: &str) -> Option<Role> {
    if matches!(path, "/healthz" | "/readyz" | "/openapi.json") || crate::ui::is_ui_path(path) {
        return None;
    }
    // GraphQL is read-only whatever the method.
    if path == "/graphql" {
        return Some(Role::Viewer);
    }
    if path.starts_with("/v1/workers/") {
        return Some(Role::Worker);
    }
    let admin_area = path.starts_with("/v1/tokens") || path.starts_with("/v1/audit");
    if admin_area || (path.starts_with("/v1/workflows") && *method != Method::GET) {
        return Some(Role::Admin);
    }
    if *method == Method::GET || *method == Method::HEAD { Some(Role::Viewer) } else { Some(Role::Operator) }
}

fn run_id_of(path: &str, response: &Response) -> Option<String> {
    let from_path = path
        .strip_prefix("/v1/runs/")
        .or_else(|| path.strip_prefix("/tasks/"))
        .and_then(|rest| rest.split('/').next())
        .filter(|s| s.starts_with("wf_"));
    from_path.map(str::to_string).or_else(|| {
        response
            .headers()
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|l| l.rsplit('/').next())
            .map(str::to_string)
    })
}

/// The first `AUDIT_MAX_CHARS` characters of `s`, marked when cut.
fn clip(s: &str) -> String {
    match s.char_indices().nth(AUDIT_MAX_CHARS) {
        Some((at, _)) => format!("{}…", &s[..at]),
        None => s.to_string(),
    }
}

/// What the audit keeps of a request (built before any `await`: a response is not `Sync`).
fn audit_row(actor: &str, method: &Method, path: &str, response: &Response) -> AuditRow {
    AuditRow {
        at_ms: cairn_engine::now_ms(),
        actor: actor.to_string(),
        method: clip(method.as_str()),
        path: clip(path),
        status: response.status().as_u16(),
        run_id: run_id_of(path, response).map(|id| clip(&id)),
    }
}

/// Records a request; a failure is logged (rate-limited, with how many went unlogged) and
/// never changes the answer.
async fn record<S: Store>(store: &S, row: AuditRow) {
    let (method, path) = (row.method.clone(), row.path.clone());
    if let Err(e) = store.audit(row).await {
        cairn_engine::say_limited!("audit", "[audit] could not record {method} {path}: {e}");
    }
}

/// Answers a refused request (401/403) and audits it as `actor`. The presented secret is never
/// recorded: the row holds only actor, method, path and status.
async fn refuse<S: Store>(store: &S, actor: &str, method: &Method, path: &str, error: ApiError) -> Response {
    let response = error.into_response();
    record(store, audit_row(actor, method, path, &response)).await;
    response
}

pub async fn layer<S: Store>(State(state): State<AppState<S>>, mut req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let Some(required) = required_role(&method, &path) else {
        return next.run(req).await;
    };
    let actor = match state.auth {
        AuthMode::Off => Actor { name: ANONYMOUS.into(), role: Role::Admin },
        AuthMode::On => {
            let bearer = req
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
                .map(str::trim);
            let Some(secret) = bearer else {
                let error = ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    "send `Authorization: Bearer <token>`; create one with `cairn tokens create --role viewer`",
                );
                return refuse(&*state.store, ANONYMOUS, &method, &path, error).await;
            };
            match state.store.token_by_hash(&sha256_hex(secret.as_bytes())).await {
                Ok(Some(row)) => Actor { name: row.name, role: Role::parse(&row.role).unwrap_or(Role::Viewer) },
                Ok(None) => {
                    let error = ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "unknown or revoked token");
                    return refuse(&*state.store, UNKNOWN_TOKEN, &method, &path, error).await;
                }
                Err(e) => return ApiError::from(e).into_response(),
            }
        }
    };
    if actor.role < required {
        let error = ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("this needs the {} role; token '{}' is {}", required.as_str(), actor.name, actor.role.as_str()),
        );
        return refuse(&*state.store, &actor.name, &method, &path, error).await;
    }
    req.extensions_mut().insert(actor.clone());
    let response = next.run(req).await;
    // Reads are not audited, nor a worker's polling (claims, heartbeats, durable calls: many per
    // task); a task's result is.
    let polling = matches!(path.as_str(), "/v1/workers/claim" | "/v1/workers/heartbeat" | "/v1/workers/calls");
    if method != Method::GET && method != Method::HEAD && path != "/graphql" && !polling {
        record(&*state.store, audit_row(&actor.name, &method, &path, &response)).await;
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_id_is_not_cut_from_its_secret() {
        let (secret, row) = new_token("ci", Role::Viewer, 0).expect("token");
        let hex = secret.strip_prefix("cairn_").expect("cairn_ prefix");
        assert_eq!(hex.len(), 48, "{secret}");
        let id = row.id.strip_prefix("tok_").expect("tok_ prefix");
        assert_eq!(id.len(), 16, "{}", row.id);
        assert!(id.chars().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()), "{}", row.id);
        assert!(!hex.starts_with(&id[..10]), "the id is the secret's prefix: {} / {secret}", row.id);
        assert_eq!(row.hash, sha256_hex(secret.as_bytes()));
    }

    #[test]
    fn token_names_that_read_as_ids_or_audit_actors_are_refused() {
        assert_eq!(check_token_name("  ci  "), Ok("ci"));
        for bad in ["", "   ", "tok_1234", ANONYMOUS, UNKNOWN_TOKEN, &"x".repeat(65)] {
            assert!(check_token_name(bad).is_err(), "{bad:?} was accepted");
        }
        assert_eq!(check_token_name(&"é".repeat(64)).map(str::len), Ok(128), "64 characters, not bytes");
    }

    #[test]
    fn audit_rows_keep_at_most_256_characters_of_a_path() {
        assert_eq!(clip("/v1/runs"), "/v1/runs");
        let long = format!("/{}", "é".repeat(10_000));
        let kept = clip(&long);
        assert_eq!(kept.chars().count(), AUDIT_MAX_CHARS + 1, "256 characters and the mark");
        assert!(kept.ends_with('…'));
    }
}
