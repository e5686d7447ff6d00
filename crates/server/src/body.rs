//! Request extractors whose every rejection is an [`ApiError`] with a JSON body.

use crate::error::ApiError;
use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use serde::de::DeserializeOwned;

/// A JSON body, parsed strictly: syntax errors are 400 with line and column, shape errors
/// (unknown field, wrong type, missing field) are 422 naming the field. The raw bytes are kept
/// for fingerprinting (idempotency keys).
pub struct JsonBody<T>(pub T, pub Bytes);

pub async fn read_body<S: Send + Sync>(req: Request, state: &S) -> Result<Bytes, ApiError> {
    Bytes::from_request(req, state).await.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                "the request body is larger than the server accepts (see --max-body-bytes)",
            )
        } else {
            ApiError::bad_request("unreadable_body", rejection.body_text())
        }
    })
}

pub fn content_type(req: &Request) -> Option<String> {
    req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(|s| s.to_ascii_lowercase())
}

pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request("empty_body", "the request body is empty: send a JSON object"));
    }
    serde_json::from_slice(bytes).map_err(|e| {
        use serde_json::error::Category;
        match e.classify() {
            Category::Syntax | Category::Eof | Category::Io => {
                ApiError::bad_request("malformed_json", format!("the body is not valid JSON: {e}"))
                    .with_details(serde_json::json!({"line": e.line(), "column": e.column()}))
            }
            Category::Data => ApiError::unprocessable("invalid_request", format!("the body does not fit: {e}"))
                .with_details(serde_json::json!({"line": e.line(), "column": e.column()})),
        }
    })
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        if let Some(ct) = content_type(&req)
            && !ct.starts_with("application/json")
        {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                format!("expected Content-Type: application/json, got {ct}"),
            ));
        }
        let bytes = read_body(req, state).await?;
        let value = parse_json(&bytes)?;
        Ok(JsonBody(value, bytes))
    }
}

/// An optional JSON body: empty, or `null`, means `T::default()`.
pub struct OptionalJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Default> FromRequest<S> for OptionalJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = read_body(req, state).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) || bytes.trim_ascii() == b"null" {
            return Ok(OptionalJson(T::default()));
        }
        Ok(OptionalJson(parse_json(&bytes)?))
    }
}

/// Query parameters; a bad value is a 400 naming it.
pub struct Query<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| Query(q.0))
            .map_err(|e| ApiError::bad_request("bad_query", e.body_text()))
    }
}

/// Path parameters; a bad value is a 400 naming it.
pub struct Path<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for Path<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| Path(p.0))
            .map_err(|e| ApiError::bad_request("bad_path", e.body_text()))
    }
}
