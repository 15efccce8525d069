//! Sends span batches to the OTLP endpoint: a bounded queue (the oldest batch is dropped,
//! counted and logged when it is full) that the engine thread pushes to without waiting, and
//! one task that posts each batch with a few tries.

use super::proto::{self, Span, Value};
use axum::body::Body;
use hyper::Request;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;

/// Workflows' span sets waiting; past it the oldest is dropped.
pub const QUEUE_MAX: usize = 256;
/// Spans per request.
pub const SPANS_PER_REQUEST_MAX: usize = 512;
pub const ATTEMPTS_MAX: u32 = 3;
pub const BACKOFF_FIRST_MS: u64 = 1_000;
pub const TRY_TIMEOUT_MS: u64 = 10_000;

/// Span sets dropped (queue full or every try failed).
pub static DROPPED: AtomicU64 = AtomicU64::new(0);

pub struct Outbox {
    queue: Mutex<VecDeque<Vec<Span>>>,
    ready: Notify,
}

impl Outbox {
    pub fn push(&self, spans: Vec<Span>) {
        let full = {
            let Ok(mut q) = self.queue.lock() else { return };
            let full = q.len() >= QUEUE_MAX;
            if full {
                q.pop_front();
            }
            q.push_back(spans);
            full
        };
        if full {
            DROPPED.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                "trace export queue full ({QUEUE_MAX}): dropped its oldest workflow's spans"
            );
        }
        self.ready.notify_one();
    }

    async fn pop(&self) -> Vec<Span> {
        loop {
            if let Some(s) = self.queue.lock().ok().and_then(|mut q| q.pop_front()) {
                return s;
            }
            self.ready.notified().await;
        }
    }
}

pub fn start(url: String, resource: Vec<(&'static str, Value)>) -> Arc<Outbox> {
    let out = Arc::new(Outbox {
        queue: Mutex::new(VecDeque::new()),
        ready: Notify::new(),
    });
    let o = out.clone();
    tokio::spawn(async move {
        loop {
            let spans = o.pop().await;
            for chunk in spans.chunks(SPANS_PER_REQUEST_MAX) {
                let body = proto::export_request(&resource, chunk);
                send(&url, body).await;
            }
        }
    });
    out
}

async fn send(url: &str, body: Vec<u8>) {
    let mut wait_ms = BACKOFF_FIRST_MS;
    for attempt in 1..=ATTEMPTS_MAX {
        let req = Request::post(url)
            .header("content-type", "application/x-protobuf")
            .body(Body::from(body.clone()));
        let req = match req {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(url, "trace export: not a valid request: {e}");
                return;
            }
        };
        let sent = tokio::time::timeout(
            Duration::from_millis(TRY_TIMEOUT_MS),
            crate::exec::http::connect::client().request(req),
        );
        let why = match sent.await {
            Ok(Ok(r)) if r.status().is_success() => return,
            Ok(Ok(r)) => format!("answered {}", r.status().as_u16()),
            Ok(Err(e)) => crate::exec::http::chain(&e),
            Err(_) => format!("no answer within {TRY_TIMEOUT_MS} ms"),
        };
        if attempt == ATTEMPTS_MAX {
            DROPPED.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                url,
                "trace export failed after {ATTEMPTS_MAX} tries, spans dropped: {why}"
            );
            return;
        }
        tracing::debug!(url, attempt, "trace export failed, retrying: {why}");
        tokio::time::sleep(Duration::from_millis(wait_ms)).await;
        wait_ms *= 2;
    }
}
