//! Sends spans to the OTLP endpoint: a bounded queue of spans (past it the oldest are dropped,
//! counted and logged) that the engine thread pushes to without waiting, and one task that
//! posts what is queued, up to [`SPANS_PER_REQUEST_MAX`] spans a request, with a few tries.

use super::proto::{self, Span, Value};
use axum::body::Body;
use hyper::Request;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;

/// Spans waiting; past it the oldest are dropped.
pub const QUEUE_MAX: usize = 65_536;
/// Spans per request (the queue is drained in requests of at most this many).
pub const SPANS_PER_REQUEST_MAX: usize = 512;
pub const ATTEMPTS_MAX: u32 = 3;
pub const BACKOFF_FIRST_MS: u64 = 1_000;
pub const TRY_TIMEOUT_MS: u64 = 10_000;

/// Spans dropped (queue full or every try of their request failed).
pub static DROPPED: AtomicU64 = AtomicU64::new(0);

pub struct Outbox {
    queue: Mutex<VecDeque<Span>>,
    ready: Notify,
}

impl Outbox {
    fn new() -> Outbox {
        Outbox {
            queue: Mutex::new(VecDeque::new()),
            ready: Notify::new(),
        }
    }

    pub fn push(&self, spans: Vec<Span>) {
        if spans.is_empty() {
            return;
        }
        let dropped = {
            let Ok(mut q) = self.queue.lock() else { return };
            q.extend(spans);
            let over = q.len().saturating_sub(QUEUE_MAX);
            q.drain(..over);
            over
        };
        if dropped > 0 {
            DROPPED.fetch_add(dropped as u64, Ordering::Relaxed);
            tracing::warn!(
                "trace export queue full ({QUEUE_MAX} spans): dropped its oldest {dropped}"
            );
        }
        self.ready.notify_one();
    }

    /// Up to `SPANS_PER_REQUEST_MAX` spans, oldest first; waits while none are queued.
    async fn pop(&self) -> Vec<Span> {
        loop {
            if let Some(s) = self.try_pop() {
                return s;
            }
            self.ready.notified().await;
        }
    }

    fn try_pop(&self) -> Option<Vec<Span>> {
        let mut q = self.queue.lock().ok()?;
        let n = q.len().min(SPANS_PER_REQUEST_MAX);
        (n > 0).then(|| q.drain(..n).collect())
    }
}

pub fn start(url: String, resource: Vec<(&'static str, Value)>) -> Arc<Outbox> {
    let out = Arc::new(Outbox::new());
    let o = out.clone();
    tokio::spawn(async move {
        loop {
            let spans = o.pop().await;
            let body = proto::export_request(&resource, &spans);
            if !send(&url, body).await {
                DROPPED.fetch_add(spans.len() as u64, Ordering::Relaxed);
            }
        }
    });
    out
}

/// Posts one request; false when every try failed.
async fn send(url: &str, body: Vec<u8>) -> bool {
    let mut wait_ms = BACKOFF_FIRST_MS;
    for attempt in 1..=ATTEMPTS_MAX {
        let req = Request::post(url)
            .header("content-type", "application/x-protobuf")
            .body(Body::from(body.clone()));
        let req = match req {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(url, "trace export: not a valid request: {e}");
                return false;
            }
        };
        let sent = tokio::time::timeout(
            Duration::from_millis(TRY_TIMEOUT_MS),
            crate::exec::http::connect::client().request(req),
        );
        let why = match sent.await {
            Ok(Ok(r)) if r.status().is_success() => return true,
            Ok(Ok(r)) => format!("answered {}", r.status().as_u16()),
            Ok(Err(e)) => crate::exec::http::chain(&e),
            Err(_) => format!("no answer within {TRY_TIMEOUT_MS} ms"),
        };
        if attempt == ATTEMPTS_MAX {
            tracing::warn!(
                url,
                "trace export failed after {ATTEMPTS_MAX} tries, spans dropped: {why}"
            );
            return false;
        }
        tracing::debug!(url, attempt, "trace export failed, retrying: {why}");
        tokio::time::sleep(Duration::from_millis(wait_ms)).await;
        wait_ms *= 2;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(n: u8) -> Span {
        Span {
            trace_id: [1; 16],
            span_id: [n; 8],
            parent: None,
            name: format!("s{n}"),
            start_ms: 1,
            end_ms: 2,
            attributes: vec![],
            error: None,
        }
    }

    #[test]
    fn the_queue_drains_in_bounded_requests_and_drops_the_oldest_past_its_limit() {
        let o = Outbox::new();
        o.push((0..3).map(span).collect());
        o.push(vec![span(3)]);
        // Batches pushed apart go out in one request.
        assert_eq!(o.try_pop().map(|v| v.len()), Some(4));
        assert!(o.try_pop().is_none());
        let before = DROPPED.load(Ordering::Relaxed);
        let many: Vec<Span> = (0..QUEUE_MAX + 10).map(|i| span((i % 250) as u8)).collect();
        o.push(many);
        assert!(DROPPED.load(Ordering::Relaxed) >= before + 10);
        let first = o.try_pop().unwrap();
        assert_eq!(first.len(), SPANS_PER_REQUEST_MAX);
        // The 10 oldest went: the first kept is span 10.
        assert_eq!(first[0].span_id, [10; 8]);
    }
}
