//! The HTTP API (JSON): submit, get, list, cancel, pause, resume, retry, outputs, logs, DLQ,
//! health; the web dashboard at `/` ([`dashboard`]); authentication ([`auth`]) and HTTPS ([`tls`]). Reads come from the applied state (on a single voter this is linearizable: the
//! leader applies before it answers); writes go through the Raft log and answer after commit.

mod admin;
pub mod auth;
mod body;
mod chaos;
mod chaos_verify;
mod dashboard;
mod dlq;
mod errors;
mod forward;
mod handlers;
pub mod logs;
mod openapi;
mod outbound;
mod serve;
mod server;
pub mod tls;

pub use auth::{Auth, Role};
pub use chaos::{ChaosApi, cut_api};
pub use forward::Route;
pub use handlers::{proxy_router, router};
pub use outbound::Outbound;
pub use server::{ApiArgs, ApiMsg, ApiServer};
pub use tls::{ApiTls, ApiTlsFiles};

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use troupe_actors::machine::Machine;
use troupe_raft_log::{EngineHandle, ProposeError};

/// Largest request body the API accepts (a spec with inline items); larger ones get 413.
pub const BODY_BYTES_MAX: usize = 8 << 20;

#[derive(Clone)]
pub struct AppState {
    pub engine: EngineHandle<Machine>,
    pub state: Arc<RwLock<Machine>>,
    pub data_dir: PathBuf,
    pub node: String,
    pub started: std::time::Instant,
    pub fault_injection: bool,
    /// Reads wait for a Raft ReadIndex barrier first (clusters), so they are linearizable.
    pub linearizable: bool,
    /// Serve here, or forward to the leader (clusters).
    pub route: Arc<dyn Fn() -> Route + Send + Sync>,
    /// The tokens every call is checked against (open without a tokens file).
    pub auth: Auth,
    /// Calls to other nodes' APIs (forwarding, fetching a log from the node that ran it).
    pub outbound: Outbound,
    /// The chaos routes (`/v1/chaos/faults`, `/v1/chaos/verify`; 403 without --fault-injection).
    pub chaos: ChaosApi,
}

/// What a worker's API needs: it holds no state, serves its own health and task logs, and
/// forwards the rest to the leader.
#[derive(Clone)]
pub struct WorkerApi {
    pub node: String,
    pub data_dir: PathBuf,
    /// The leader's API address, learnt from lease renewals (empty while unknown).
    pub leader_api: Arc<std::sync::Mutex<String>>,
    pub auth: Auth,
    pub outbound: Outbound,
    pub chaos: ChaosApi,
}

/// An API error: a status and a message that says what to do.
pub struct ApiError(pub StatusCode, pub String);

impl ApiError {
    pub fn bad(m: impl Into<String>) -> Self {
        ApiError(StatusCode::BAD_REQUEST, m.into())
    }
    pub fn not_found(m: impl Into<String>) -> Self {
        ApiError(StatusCode::NOT_FOUND, m.into())
    }
}

impl From<ProposeError> for ApiError {
    fn from(e: ProposeError) -> Self {
        match e {
            ProposeError::Busy => ApiError(
                StatusCode::TOO_MANY_REQUESTS,
                "the node is busy (admission queue full); retry after a second".into(),
            ),
            other => ApiError(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not committed: {other}"),
            ),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (self.0, Json(serde_json::json!({ "error": self.1 }))).into_response();
        if self.0 == StatusCode::TOO_MANY_REQUESTS {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        r
    }
}
