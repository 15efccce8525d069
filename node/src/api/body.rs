//! The request body limit, with a lingering drain. A body over [`BODY_BYTES_MAX`] gets 413 with
//! the limit named, but only after the rest of it was read and dropped (up to
//! [`DRAIN_BYTES_MAX`] or [`DRAIN_TIME`]): answering while the client is still sending and then
//! closing makes its kernel see a reset, so the client gets "broken pipe" instead of the 413
//! that says what to do. (hyper has no lingering close, and axum's `DefaultBodyLimit` answers
//! at the limit; hence this layer.) Past the drain bounds the connection is closed anyway: a
//! client sending without end is not read without end.

use super::BODY_BYTES_MAX;
use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use std::time::Duration;

/// Most bytes read and dropped after the limit before answering 413.
pub const DRAIN_BYTES_MAX: u64 = 64 << 20;
/// Most time spent draining an oversized body.
pub const DRAIN_TIME: Duration = Duration::from_secs(10);

/// What reading a body up to the limit found.
enum Read {
    Whole(Vec<u8>),
    /// Over the limit: this many bytes seen (the drain stopped at its bounds or the end).
    Over(u64),
    Failed(String),
}

pub async fn limit(req: Request, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    match read(body).await {
        Read::Whole(bytes) => {
            next.run(Request::from_parts(parts, Body::from(bytes)))
                .await
        }
        Read::Over(seen) => too_large(seen),
        Read::Failed(e) => (
            StatusCode::BAD_REQUEST,
            axum::Json(
                serde_json::json!({ "error": format!("cannot read the request body: {e}") }),
            ),
        )
            .into_response(),
    }
}

async fn read(mut body: Body) -> Read {
    let mut buf = Vec::new();
    let mut seen: u64 = 0;
    let started = tokio::time::Instant::now();
    loop {
        let over = seen > BODY_BYTES_MAX as u64;
        if over
            && (seen >= BODY_BYTES_MAX as u64 + DRAIN_BYTES_MAX || started.elapsed() >= DRAIN_TIME)
        {
            return Read::Over(seen);
        }
        let frame = if over {
            match tokio::time::timeout(DRAIN_TIME.saturating_sub(started.elapsed()), body.frame())
                .await
            {
                Ok(f) => f,
                Err(_) => return Read::Over(seen),
            }
        } else {
            body.frame().await
        };
        let Some(frame) = frame else {
            return if over {
                Read::Over(seen)
            } else {
                Read::Whole(buf)
            };
        };
        let frame = match frame {
            Ok(f) => f,
            Err(e) if over => {
                tracing::debug!(%e, "oversized request body ended early");
                return Read::Over(seen);
            }
            Err(e) => return Read::Failed(e.to_string()),
        };
        if let Ok(data) = frame.into_data() {
            seen += data.len() as u64;
            if seen <= BODY_BYTES_MAX as u64 {
                buf.extend_from_slice(&data);
            } else {
                buf = Vec::new();
            }
        }
    }
}

fn too_large(seen: u64) -> Response {
    let mut r = (
        StatusCode::PAYLOAD_TOO_LARGE,
        axum::Json(serde_json::json!({
            "error": format!(
                "the request body is over the {} MiB limit (at least {seen} bytes were sent); send a smaller spec: put large item lists in a file the step reads, or split the workflow",
                BODY_BYTES_MAX >> 20
            ),
            "limit_bytes": BODY_BYTES_MAX,
        })),
    )
        .into_response();
    r.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_body_under_the_limit_is_kept_whole() {
        match read(Body::from(vec![7u8; 1000])).await {
            Read::Whole(b) => assert_eq!(b, vec![7u8; 1000]),
            _ => panic!("not whole"),
        }
    }

    #[tokio::test]
    async fn a_body_over_the_limit_is_read_to_its_end_then_refused() {
        let n = BODY_BYTES_MAX + (3 << 20);
        match read(Body::from(vec![1u8; n])).await {
            Read::Over(seen) => assert_eq!(seen, n as u64, "drained to the end"),
            _ => panic!("not refused"),
        }
    }
}
