//! Any node accepts API calls: a follower or a worker forwards them to the leader's API, on an
//! async HTTP client (hyper), with bounded concurrency, keeping the method, the headers, the
//! status and the body both ways.
//!
//! It follows leadership: while a call is forwarded, the node keeps looking at who the leader
//! is. If another leader is elected (the old one froze, say), a read is sent again to the new
//! one; a write answers 503 at once, since the old leader may or may not have applied it
//! (retry it, with the same idempotency key for a submit). A forwarded call never waits on a
//! silent leader for longer than it takes the cluster to elect a new one.
//!
//! Authentication: this node checked the caller's token before forwarding (`auth::check`
//! runs before `to_leader`), and the forwarded call keeps the caller's `Authorization` header,
//! so the leader checks it again. No node trusts another's word for who the caller is: a
//! follower is no way around the leader's tokens, and nothing but the caller's own secret
//! travels (over HTTPS when the API uses TLS).

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::Semaphore;

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

/// Calls forwarded at once; more answer 503 (long-polls cannot starve the others of a thread:
/// they wait on the async client, and at most this many).
pub const FORWARDS_MAX: usize = 512;
/// How often a forwarded call checks who the leader is.
const FOLLOW_EVERY: Duration = Duration::from_millis(100);
/// A forwarded call gives up after this long in any case (the longest `?wait=` is 10 minutes).
const FORWARD_LIMIT: Duration = Duration::from_secs(660);

/// The address of the client a forwarded call came from (for the leader's log of a refused
/// call; never trusted for anything else).
pub const FORWARDED_FOR: &str = "x-troupe-forwarded-for";

fn slots() -> &'static Arc<Semaphore> {
    static S: OnceLock<Arc<Semaphore>> = OnceLock::new();
    S.get_or_init(|| Arc::new(Semaphore::new(FORWARDS_MAX)))
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

/// Forwards `req` to `target`, the leader that `route()` names now, following it if it changes.
pub async fn forward(
    out: &super::outbound::Outbound,
    route: Arc<dyn Fn() -> Route + Send + Sync>,
    target: String,
    req: Request,
) -> Response {
    let Ok(_permit) = slots().clone().try_acquire_owned() else {
        return unavailable(&format!(
            "this node is forwarding {FORWARDS_MAX} calls to the leader already; retry, or call the leader directly"
        ));
    };
    let (mut parts, body) = req.into_parts();
    if let Some(peer) = parts
        .extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .and_then(|c| HeaderValue::from_str(&c.0.to_string()).ok())
    {
        parts.headers.insert(FORWARDED_FOR, peer);
    }
    let idempotent = matches!(parts.method, Method::GET | Method::HEAD);
    // A read may be sent again to a new leader, so keep its (small) body; a write's body is
    // streamed through once.
    let mut body = Some(body);
    let mut target = target;
    let deadline = tokio::time::Instant::now() + FORWARD_LIMIT;
    loop {
        let path = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        let Ok(uri) = format!("{}{path}", out.base(&target)).parse::<Uri>() else {
            return unavailable("the leader's API address is not valid");
        };
        let mut req_out = Request::new(if idempotent {
            Body::empty()
        } else {
            body.take().unwrap_or_else(Body::empty)
        });
        *req_out.method_mut() = parts.method.clone();
        *req_out.uri_mut() = uri;
        *req_out.headers_mut() = parts.headers.clone();
        req_out.headers_mut().remove(header::HOST);
        req_out.headers_mut().remove(header::CONNECTION);
        let call = out.request(req_out);
        tokio::pin!(call);
        let mut follow = tokio::time::interval(FOLLOW_EVERY);
        let moved = loop {
            tokio::select! {
                r = &mut call => {
                    return match r {
                        Ok(resp) => resp.map(Body::new),
                        Err(e) => unavailable(&format!(
                            "the leader at {target} did not answer ({e}); retry (a new leader may be being elected)"
                        )),
                    };
                }
                _ = follow.tick() => {
                    match route() {
                        Route::To(now) if now != target => break Some(now),
                        Route::To(_) => {}
                        Route::Here => {
                            return unavailable("this node became the leader while forwarding the call; retry it here");
                        }
                        Route::Unknown => break None,
                    }
                    if tokio::time::Instant::now() > deadline {
                        return unavailable("the leader did not answer in time; retry");
                    }
                }
            }
        };
        match (moved, idempotent) {
            (Some(now), true) => {
                tracing::info!(from = %target, to = %now, "the leader changed while forwarding a read; sending it to the new leader");
                target = now;
            }
            (_, true) => return no_leader(),
            (_, false) => {
                return unavailable(
                    "the leader changed while this write was forwarded; it may or may not have been applied: check, or retry (with the same idempotency key for a submit)",
                );
            }
        }
    }
}

pub fn no_leader() -> Response {
    unavailable("no leader is known right now (election in progress?); retry in a second")
}
