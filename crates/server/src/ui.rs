//! The web dashboard at `/`: static files compiled into the binary (nothing fetched at run time,
//! no build step), which read and steer runs through the same `/v1` API and tokens as any other
//! client. The files are public; every piece of data they show comes from `/v1` with the tab's
//! token. A strict Content-Security-Policy allows only these files: no inline script, no other
//! origin, so untrusted text shown by the pages (tool outputs, model answers) cannot become code.

use crate::AppState;
use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use cairn_store::Store;

/// Every file of the dashboard: name under `/ui/`, content type, bytes.
const FILES: &[(&str, &str, &[u8])] = &[
    ("app.js", "text/javascript; charset=utf-8", include_bytes!("../ui/app.js")),
    ("api.js", "text/javascript; charset=utf-8", include_bytes!("../ui/api.js")),
    ("dom.js", "text/javascript; charset=utf-8", include_bytes!("../ui/dom.js")),
    ("runs.js", "text/javascript; charset=utf-8", include_bytes!("../ui/runs.js")),
    ("run.js", "text/javascript; charset=utf-8", include_bytes!("../ui/run.js")),
    ("approvals.js", "text/javascript; charset=utf-8", include_bytes!("../ui/approvals.js")),
    ("catalog.js", "text/javascript; charset=utf-8", include_bytes!("../ui/catalog.js")),
    ("style.css", "text/css; charset=utf-8", include_bytes!("../ui/style.css")),
];

const INDEX: &[u8] = include_bytes!("../ui/index.html");

const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
                      img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// Whether `path` is the dashboard's (served without a token).
pub fn is_ui_path(path: &str) -> bool {
    path == "/" || path.starts_with("/ui/")
}

pub fn routes<S: Store>() -> Router<AppState<S>> {
    Router::new().route("/", get(index)).route("/ui/{file}", get(file))
}

async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX)
}

async fn file(Path(name): Path<String>) -> Response {
    match FILES.iter().find(|(n, _, _)| *n == name) {
        Some((_, content_type, bytes)) => asset(content_type, bytes),
        None => {
            crate::ApiError::not_found("no_such_file", format!("the dashboard has no file '{name}'")).into_response()
        }
    }
}

fn asset(content_type: &'static str, bytes: &'static [u8]) -> Response {
    let mut response = (StatusCode::OK, bytes).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(POLICY));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    // The files change with the binary: always revalidate (they are small).
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}
