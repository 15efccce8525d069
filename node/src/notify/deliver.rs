//! Sends alert events to one webhook URL: a bounded queue (the oldest event is dropped, counted
//! and logged when it is full) that the engine thread pushes to without waiting, and a task
//! that posts each event, signed, with bounded retries and backoff.

use super::detect::Event;
use super::sign;
use axum::body::Body;
use hyper::Request;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, Semaphore};

/// Events waiting per URL; past it the oldest is dropped.
pub const QUEUE_MAX: usize = 1024;
/// Deliveries in flight per URL (each with its own retries).
pub const IN_FLIGHT_MAX: usize = 4;
/// Tries per event: 2 s doubling between them, about 4 minutes in all.
pub const ATTEMPTS_MAX: u32 = 8;
pub const BACKOFF_FIRST_MS: u64 = 2_000;
pub const BACKOFF_MAX_MS: u64 = 128_000;
/// One try's limit (connect, send, answer).
pub const TRY_TIMEOUT_MS: u64 = 10_000;

/// Events dropped because a queue was full, and events given up after every try (all URLs).
pub static DROPPED: AtomicU64 = AtomicU64::new(0);
pub static FAILED: AtomicU64 = AtomicU64::new(0);
pub static DELIVERED: AtomicU64 = AtomicU64::new(0);

/// One URL's queue. `push` never blocks on I/O (a short lock of the deque only).
pub struct Outbox {
    url: String,
    queue: Mutex<VecDeque<Event>>,
    ready: Notify,
}

impl Outbox {
    pub fn push(&self, e: Event) {
        let dropped = {
            let Ok(mut q) = self.queue.lock() else { return };
            let dropped = if q.len() >= QUEUE_MAX {
                q.pop_front()
            } else {
                None
            };
            q.push_back(e);
            dropped
        };
        if let Some(d) = dropped {
            DROPPED.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                url = %self.url, event = %d.id,
                "alert queue full ({QUEUE_MAX}): dropped its oldest event"
            );
        }
        self.ready.notify_one();
    }

    async fn pop(&self) -> Event {
        loop {
            if let Some(e) = self.queue.lock().ok().and_then(|mut q| q.pop_front()) {
                return e;
            }
            self.ready.notified().await;
        }
    }
}

/// Starts the sending task of `url` (call inside the runtime); returns its queue.
pub fn start(url: String, key: Arc<Vec<u8>>) -> Arc<Outbox> {
    let out = Arc::new(Outbox {
        url,
        queue: Mutex::new(VecDeque::new()),
        ready: Notify::new(),
    });
    let o = out.clone();
    tokio::spawn(async move {
        let slots = Arc::new(Semaphore::new(IN_FLIGHT_MAX));
        loop {
            let Ok(permit) = slots.clone().acquire_owned().await else {
                return;
            };
            let e = o.pop().await;
            let (url, key) = (o.url.clone(), key.clone());
            tokio::spawn(async move {
                deliver(&url, &key, &e).await;
                drop(permit);
            });
        }
    });
    out
}

/// What one try came to.
enum Try {
    Done,
    Retry(String),
    GiveUp(String),
}

async fn deliver(url: &str, key: &[u8], e: &Event) {
    let body = match serde_json::to_vec(e) {
        Ok(b) => b,
        Err(err) => {
            tracing::error!(event = %e.id, "alert does not encode: {err}");
            return;
        }
    };
    let mut wait_ms = BACKOFF_FIRST_MS;
    for attempt in 1..=ATTEMPTS_MAX {
        let why = match post(url, key, &e.id, &body).await {
            Try::Done => {
                DELIVERED.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(url, event = %e.id, attempt, "alert delivered");
                return;
            }
            Try::GiveUp(why) => {
                FAILED.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(url, event = %e.id, "alert refused, not retried: {why}");
                return;
            }
            Try::Retry(why) => why,
        };
        if attempt == ATTEMPTS_MAX {
            FAILED.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                url, event = %e.id,
                "alert not delivered after {ATTEMPTS_MAX} tries, given up: {why}"
            );
            return;
        }
        tracing::info!(url, event = %e.id, attempt, "alert not delivered, retrying in {wait_ms} ms: {why}");
        tokio::time::sleep(Duration::from_millis(wait_ms)).await;
        wait_ms = (wait_ms * 2).min(BACKOFF_MAX_MS);
    }
}

/// The OS clock, not the node's: the signed timestamp is checked against the receiver's clock.
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

async fn post(url: &str, key: &[u8], id: &str, body: &[u8]) -> Try {
    // Signed at each try: the timestamp is when it was sent (receivers refuse old ones).
    let ts = now_ms();
    let req = Request::post(url)
        .header("content-type", "application/json")
        .header("user-agent", concat!("troupe/", env!("CARGO_PKG_VERSION")))
        .header("x-troupe-event", id)
        .header("x-troupe-timestamp", ts.to_string())
        .header("x-troupe-signature", sign::signature(key, ts, body))
        .body(Body::from(body.to_vec()));
    let req = match req {
        Ok(r) => r,
        Err(e) => return Try::GiveUp(format!("not a valid request: {e}")),
    };
    let sent = tokio::time::timeout(
        Duration::from_millis(TRY_TIMEOUT_MS),
        crate::exec::http::connect::client().request(req),
    );
    match sent.await {
        Err(_) => Try::Retry(format!("no answer within {TRY_TIMEOUT_MS} ms")),
        Ok(Err(e)) => Try::Retry(crate::exec::http::chain(&e)),
        Ok(Ok(resp)) => {
            let s = resp.status();
            if s.is_success() {
                Try::Done
            } else if s.is_server_error() || s.as_u16() == 408 || s.as_u16() == 429 {
                Try::Retry(format!("answered {}", s.as_u16()))
            } else {
                Try::GiveUp(format!("answered {}", s.as_u16()))
            }
        }
    }
}
