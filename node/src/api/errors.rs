//! Every error answer is JSON: `{"error": "..."}`. Axum's own rejections (unknown route, wrong
//! method, a body over the limit, a missing content type, a body of the wrong shape) are plain
//! text; this layer rewrites them, saying which limit or rule was hit.

use super::BODY_BYTES_MAX;
use axum::body::{Body, to_bytes};
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;

/// Longest plain-text error body kept (axum's messages are short).
const TEXT_BYTES_MAX: usize = 16 << 10;

pub async fn json_errors(req: Request, next: Next) -> Response {
    let (method, path) = (req.method().clone(), req.uri().path().to_string());
    let resp = next.run(req).await;
    let status = resp.status();
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let text = to_bytes(body, TEXT_BYTES_MAX)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let message = match status {
        StatusCode::NOT_FOUND if text.is_empty() => {
            format!("no route {method} {path} (the API is under /v1; see docs/operations.md)")
        }
        StatusCode::METHOD_NOT_ALLOWED => {
            format!("{method} is not allowed on {path} (see docs/operations.md for its methods)")
        }
        StatusCode::PAYLOAD_TOO_LARGE => format!(
            "the request body is over the {} MiB limit: {}",
            BODY_BYTES_MAX >> 20,
            if text.is_empty() { "too large" } else { &text }
        ),
        _ if text.is_empty() => status.canonical_reason().unwrap_or("error").to_lowercase(),
        _ => text,
    };
    let body = serde_json::to_vec(&serde_json::json!({ "error": message })).unwrap_or_default();
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(body))
}
