//! Any node accepts API calls: a follower or a worker forwards them to the leader's API.
//! Bodies are read whole (they are bounded by the body limit) and sent with a blocking client
//! on a blocking thread; the leader's answer is passed back as it is.

use super::BODY_BYTES_MAX;
use axum::body::{Body, to_bytes};
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use std::time::Duration;

/// Where API calls go when this node is not the leader.
#[derive(Clone)]
pub enum Route {
    /// Serve here (the leader, or the embedded single node).
    Here,
    /// Forward to this address (`host:port`).
    To(String),
    /// No leader is known right now.
    Unknown,
}

fn unavailable(msg: &str) -> Response {
    let mut r = (
        StatusCode::SERVICE_UNAVAILABLE,
        axum::Json(json!({ "error": msg })),
    )
        .into_response();
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    r
}

pub async fn forward(target: String, req: Request) -> Response {
    let method = req.method().clone();
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    let Ok(body) = to_bytes(req.into_body(), BODY_BYTES_MAX).await else {
        return (
            StatusCode::PAYLOAD_TOO_LARGE,
            axum::Json(json!({ "error": "request body too large" })),
        )
            .into_response();
    };
    let url = format!("http://{target}{path}");
    let answer = tokio::task::spawn_blocking(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(660)))
            .build()
            .into();
        let r = if method == axum::http::Method::POST {
            agent
                .post(&url)
                .header("content-type", "application/json")
                .send(&body[..])
        } else {
            agent.get(&url).call()
        };
        r.map(|mut r| {
            let status = r.status().as_u16();
            let ctype = r
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("application/json")
                .to_string();
            let retry = r
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let bytes = r.body_mut().read_to_vec().unwrap_or_default();
            (status, ctype, retry, bytes)
        })
    })
    .await;
    match answer {
        Ok(Ok((status, ctype, retry, bytes))) => {
            let mut r = Response::new(Body::from(bytes));
            *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
            if let Ok(v) = HeaderValue::from_str(&ctype) {
                r.headers_mut().insert(header::CONTENT_TYPE, v);
            }
            if let Some(v) = retry.and_then(|v| HeaderValue::from_str(&v).ok()) {
                r.headers_mut().insert(header::RETRY_AFTER, v);
            }
            r
        }
        _ => unavailable("the leader did not answer; retry (a new leader may be being elected)"),
    }
}

pub fn no_leader() -> Response {
    unavailable("no leader is known right now (election in progress?); retry in a second")
}
