//! Prometheus metrics: `GET /metrics` on every node, in the Prometheus text format (0.0.4),
//! every name prefixed `troupe_`, units in the names.
//!
//! - Gauges of the replicated state (workflows by status, per-step queue depth and blocked
//!   items, the dead-letter queue, node capacity and allocation) are computed at scrape time
//!   from the applied state ([`state::StateCollector`]), so they agree with `troupe status` and
//!   the API. The read lock is held only to copy the numbers out, never while encoding.
//! - Task counters and histograms come from [`troupe_actors::metrics::TaskMetrics`] (updated by
//!   apply under the lock it already holds); Raft figures from the engine's atomics
//!   ([`troupe_raft_log::EngineStats`]); lease counters from [`troupe_actors::metrics::LEASES`].
//! - API requests are counted by a middleware ([`track`]) per route template (axum's
//!   `MatchedPath`, never the raw URI), method and status.
//!
//! Label cardinality is bounded: workflow *names* and step ids only (never workflow ids), at
//! most [`troupe_actors::metrics::STEP_SERIES_MAX`] pairs, past which series share the
//! `other` label.

pub mod state;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::OnceLock;

/// The content type of the Prometheus text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    method: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
}

type Durations = Family<RouteLabels, Histogram, fn() -> Histogram>;

fn api_histogram() -> Histogram {
    // 1 ms to about 20 s.
    Histogram::new(exponential_buckets(0.001, 3.0, 10))
}

/// The process's API metrics (one set however often the API server restarts).
struct Api {
    requests: Family<RequestLabels, Counter>,
    throttled: Family<RouteLabels, Counter>,
    durations: Durations,
}

fn api() -> &'static Api {
    static API: OnceLock<Api> = OnceLock::new();
    API.get_or_init(|| Api {
        requests: Family::default(),
        throttled: Family::default(),
        durations: Family::new_with_constructor(api_histogram as fn() -> Histogram),
    })
}

/// Route label of requests that matched no route (the worker's proxy: every forwarded call).
const UNMATCHED: &str = "unmatched";

/// Middleware: counts each request by route template, method and status, and times it.
pub async fn track(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| UNMATCHED.to_string());
    let method = req.method().as_str().to_string();
    let started = std::time::Instant::now();
    let resp = next.run(req).await;
    let status = resp.status();
    let a = api();
    a.durations
        .get_or_create(&RouteLabels {
            route: route.clone(),
        })
        .observe(started.elapsed().as_secs_f64());
    if status == axum::http::StatusCode::TOO_MANY_REQUESTS {
        a.throttled
            .get_or_create(&RouteLabels {
                route: route.clone(),
            })
            .inc();
    }
    a.requests
        .get_or_create(&RequestLabels {
            route,
            method,
            status: status.as_u16().to_string(),
        })
        .inc();
    resp
}

/// The whole exposition: this process's API and lease metrics, and (on a server or the
/// embedded node) the state and Raft figures.
pub fn render(app: Option<&crate::api::AppState>) -> String {
    let mut reg = Registry::with_prefix("troupe");
    let a = api();
    reg.register(
        "api_requests",
        "HTTP API requests by route template, method and status",
        a.requests.clone(),
    );
    reg.register(
        "api_throttled",
        "HTTP API requests answered 429 (the admission queue was full)",
        a.throttled.clone(),
    );
    reg.register(
        "api_request_duration_seconds",
        "HTTP API request latency by route template (forwarding to the leader included)",
        a.durations.clone(),
    );
    reg.register_collector(Box::new(state::ProcessCollector));
    if let Some(app) = app {
        reg.register_collector(Box::new(state::StateCollector::new(app)));
    }
    let mut out = String::new();
    if prometheus_client::encoding::prometheus_text::encode(&mut out, &reg).is_err() {
        tracing::warn!("encoding the metrics failed");
    }
    out
}

/// `GET /metrics` on a server or the embedded node.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text format 0.0.4 (see docs/operations.md, Metrics)", content_type = "text/plain; version=0.0.4", body = String)))]
pub async fn serve(
    axum::extract::State(app): axum::extract::State<crate::api::AppState>,
) -> Response {
    exposition(render(Some(&app)))
}

/// `GET /metrics` on a worker: its own API and lease metrics (it holds no state).
pub async fn serve_local() -> Response {
    exposition(render(None))
}

fn exposition(body: String) -> Response {
    ([(axum::http::header::CONTENT_TYPE, CONTENT_TYPE)], body).into_response()
}
