//! Bearer tokens with roles, and the audit trail of every mutating request.
//!
//! Roles are ordered: `viewer` reads, `operator` also starts, cancels, pauses and signals runs,
//! `admin` also registers workflows and manages tokens. Only a SHA-256 of a token is stored.

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
    Operator,
    Admin,
}

impl Role {
    pub fn parse(s: &str) -> Option<Role> {
        match s.trim().to_ascii_lowercase().as_str() {
            "viewer" => Some(Role::Viewer),
            "operator" => Some(Role::Operator),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
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

/// A new token: the secret (shown once) and the row to store.
pub fn new_token(name: &str, role: Role, now_ms: i64) -> std::io::Result<(String, TokenRow)> {
    let mut bytes = [0u8; 24];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let secret = format!("cairn_{hex}");
    let row = TokenRow {
        id: format!("tok_{}", &hex[..10]),
        name: name.to_string(),
        role: role.as_str().to_string(),
        hash: sha256_hex(secret.as_bytes()),
        created_at_ms: now_ms,
        revoked_at_ms: None,
    };
    Ok((secret, row))
}

/// The role a request needs; `None` for the public probes.
fn required_role(method: &Method, path: &str) -> Option<Role> {
    if matches!(path, "/healthz" | "/readyz" | "/openapi.json") {
        return None;
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

pub async fn layer<S: Store>(State(state): State<AppState<S>>, mut req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let Some(required) = required_role(&method, &path) else {
        return next.run(req).await;
    };
    let actor = match state.auth {
        AuthMode::Off => Actor { name: "anonymous".into(), role: Role::Admin },
        AuthMode::On => {
            let bearer = req
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
                .map(str::trim);
            let Some(secret) = bearer else {
                return ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    "send `Authorization: Bearer <token>`; create one with `cairn tokens create --role viewer`",
                )
                .into_response();
            };
            match state.store.token_by_hash(&sha256_hex(secret.as_bytes())).await {
                Ok(Some(row)) => Actor { name: row.name, role: Role::parse(&row.role).unwrap_or(Role::Viewer) },
                Ok(None) => {
                    return ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "unknown or revoked token")
                        .into_response();
                }
                Err(e) => return ApiError::from(e).into_response(),
            }
        }
    };
    if actor.role < required {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("this needs the {} role; token '{}' is {}", required.as_str(), actor.name, actor.role.as_str()),
        )
        .into_response();
    }
    req.extensions_mut().insert(actor.clone());
    let response = next.run(req).await;
    if method != Method::GET && method != Method::HEAD {
        let row = AuditRow {
            at_ms: cairn_engine::now_ms(),
            actor: actor.name,
            method: method.to_string(),
            path: path.clone(),
            status: response.status().as_u16(),
            run_id: run_id_of(&path, &response),
        };
        if let Err(e) = state.store.audit(row).await {
            cairn_engine::say_limited!("audit", "[audit] could not record {method} {path}: {e}");
        }
    }
    response
}
