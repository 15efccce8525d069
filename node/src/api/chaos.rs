//! The chaos API (`--fault-injection` only; docs/chaos.md): start a fault on any node, list the
//! faults in force, and verify the committed log. Served by servers and workers alike; every
//! route needs the admin role. A fault is sent to any node: the node it names carries it out,
//! the others pass it on over HTTP (a server looks the target's API up in the replicated state;
//! a worker passes it to the leader, which does).

use super::ApiError;
use super::openapi::ErrorBody;
use super::outbound::Outbound;
use crate::chaos::Chaos;
use crate::chaos::fault::FaultRequest;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::routing::post;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use troupe_actors::machine::Machine;
use troupe_raft_log::EngineHandle;

/// Set on a fault passed on to another node; a node passes a fault on at most twice
/// (worker → leader → target), so a stale address cannot make calls go round.
const HOPS: &str = "x-troupe-chaos-hops";
/// How long a node waits for the node it passed a fault to.
const PASS_ON_LIMIT: Duration = Duration::from_secs(5);

/// What the chaos routes need on a server or a worker.
#[derive(Clone)]
pub struct ChaosApi {
    pub node: String,
    pub data_dir: PathBuf,
    /// `--fault-injection`: without it every route answers 403.
    pub enabled: bool,
    pub chaos: Arc<Chaos>,
    pub outbound: Outbound,
    /// Servers: the log and the state.
    pub raft: Option<(EngineHandle<Machine>, Arc<RwLock<Machine>>)>,
    /// Workers: the leader's API address, learnt from lease renewals.
    pub leader_api: Option<Arc<Mutex<String>>>,
}

type Res = Result<(StatusCode, Json<Value>), ApiError>;

/// The routes, with their methods (checked against the OpenAPI document by a test).
#[cfg(test)]
pub(crate) const ROUTES: [(Method, &str); 3] = [
    (Method::POST, "/v1/chaos/faults"),
    (Method::GET, "/v1/chaos/faults"),
    (Method::POST, "/v1/chaos/verify"),
];

pub fn routes(api: ChaosApi) -> Router {
    Router::new()
        .route("/v1/chaos/faults", post(inject).get(list))
        .route("/v1/chaos/verify", post(super::chaos_verify::verify))
        .with_state(api)
}

pub(super) fn refuse_unless_enabled(api: &ChaosApi) -> Result<(), ApiError> {
    if api.enabled {
        return Ok(());
    }
    Err(ApiError(
        StatusCode::FORBIDDEN,
        "fault injection is off on this node; start the cluster with --fault-injection (chaos drills only)".into(),
    ))
}

impl ChaosApi {
    /// The API address of `node`, from the replicated state (servers).
    fn api_of(&self, node: &str) -> Option<String> {
        let (_, state) = self.raft.as_ref()?;
        let m = state.read().ok()?;
        m.state
            .sched
            .nodes
            .get(node)
            .map(|n| n.api.clone())
            .filter(|a| !a.is_empty())
    }

    fn leader(&self) -> Option<String> {
        if let Some((engine, state)) = &self.raft {
            let st = engine.status();
            let m = state.read().ok()?;
            return m
                .state
                .sched
                .nodes
                .values()
                .find(|n| st.leader_id != 0 && n.raft_id == st.leader_id)
                .map(|n| n.api.clone());
        }
        let a = self.leader_api.as_ref()?.lock().ok()?.clone();
        (!a.is_empty()).then_some(a)
    }
}

/// How often a held request looks whether the API partition healed.
const CUT_POLL: Duration = Duration::from_millis(50);

/// Middleware: while a partition with `api` is in force, a request gets no answer — it is
/// held, unprocessed, until the partition heals (every fault heals within `FOR_MAX_MS`), then
/// refused with 503 without being processed. A real partition does not answer a client at
/// all: a 503 would tell it at once that the node is alive and reachable, which a cut-off
/// node cannot; the client has to time out, not knowing whether its request had an effect
/// (it had none). Connections are still accepted (the listener is not cut).
pub async fn cut_api(
    State(chaos): State<Arc<Chaos>>,
    req: Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    if !chaos.api_cut() {
        return next.run(req).await;
    }
    let until = tokio::time::Instant::now()
        + Duration::from_millis(crate::chaos::fault::FOR_MAX_MS)
        + Duration::from_secs(1);
    while chaos.api_cut() && tokio::time::Instant::now() < until {
        tokio::time::sleep(CUT_POLL).await;
    }
    drop(req);
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({
            "error": "partitioned by chaos: this request arrived while the node's API was cut off and was not processed; retry"
        })),
    )
        .into_response()
}

/// Starts a fault (timed: it heals by itself).
#[utoipa::path(post, path = "/v1/chaos/faults", tag = "operations", request_body = FaultRequest,
    responses((status = 200, description = "The fault is in force on its node", body = Object),
        (status = 400, description = "Bad request (the message says which field)", body = ErrorBody),
        (status = 403, description = "The node was started without --fault-injection", body = ErrorBody),
        (status = 404, description = "No such node", body = ErrorBody),
        (status = 409, description = "A fault of that kind is already in force there", body = ErrorBody),
        (status = 502, description = "The target node did not answer", body = ErrorBody)))]
pub(super) async fn inject(
    State(api): State<ChaosApi>,
    headers: HeaderMap,
    body: Result<Json<FaultRequest>, axum::extract::rejection::JsonRejection>,
) -> Res {
    refuse_unless_enabled(&api)?;
    let Json(req) =
        body.map_err(|e| ApiError(e.status(), format!("bad request body: {}", e.body_text())))?;
    req.validate().map_err(ApiError::bad)?;
    if req.node == api.node {
        let fault = api
            .chaos
            .inject(&req, api.data_dir.clone())
            .map_err(|e| ApiError(StatusCode::CONFLICT, e))?;
        return Ok((StatusCode::OK, Json(json!({ "fault": fault }))));
    }
    let hops: u32 = headers
        .get(HOPS)
        .and_then(|h| h.to_str().ok()?.parse().ok())
        .unwrap_or(0);
    if hops >= 2 {
        return Err(ApiError(
            StatusCode::CONFLICT,
            format!(
                "the fault for {} was passed on twice without reaching it; retry",
                req.node
            ),
        ));
    }
    let target = match (&api.raft, api.api_of(&req.node)) {
        (_, Some(a)) => a,
        (Some(_), None) => {
            return Err(ApiError::not_found(format!(
                "no node {:?} is registered; see GET /v1/chaos/faults for the nodes",
                req.node
            )));
        }
        (None, None) => api.leader().ok_or_else(|| {
            ApiError(
                StatusCode::SERVICE_UNAVAILABLE,
                "no leader known yet; retry".into(),
            )
        })?,
    };
    let body = serde_json::to_vec(&req).map_err(|e| ApiError::bad(e.to_string()))?;
    pass_on(
        &api.outbound,
        &target,
        Method::POST,
        "/v1/chaos/faults",
        body,
        &headers,
        hops + 1,
    )
    .await
}

/// Sends a call on to another node's API, with the caller's token, and returns its answer.
pub(super) async fn pass_on(
    out: &Outbound,
    target: &str,
    method: Method,
    path: &str,
    body: Vec<u8>,
    headers: &HeaderMap,
    hops: u32,
) -> Res {
    let mut req = Request::builder()
        .method(method)
        .uri(format!("{}{path}", out.base(target)))
        .header(header::CONTENT_TYPE, "application/json")
        .header(HOPS, HeaderValue::from(hops))
        .body(Body::from(body))
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    if let Some(a) = headers.get(header::AUTHORIZATION) {
        req.headers_mut().insert(header::AUTHORIZATION, a.clone());
    }
    let unreachable = |why: String| {
        ApiError(
            StatusCode::BAD_GATEWAY,
            format!(
                "the node at {target} did not answer ({why}); it may be down or frozen already"
            ),
        )
    };
    let resp = match tokio::time::timeout(PASS_ON_LIMIT, out.request(req)).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => return Err(unreachable(e.to_string())),
        Err(_) => {
            return Err(unreachable(format!(
                "no answer in {}s",
                PASS_ON_LIMIT.as_secs()
            )));
        }
    };
    let status = resp.status();
    let bytes = axum::body::to_bytes(Body::new(resp.into_body()), 8 << 20)
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    let v: Value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| json!({ "error": String::from_utf8_lossy(&bytes) }));
    if status.is_success() {
        Ok((status, Json(v)))
    } else {
        let msg = v["error"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| v.to_string());
        Err(ApiError(status, msg))
    }
}

#[derive(Deserialize, Default, utoipa::IntoParams)]
pub(super) struct ListQuery {
    /// `true`: this node's own faults only (no other node is asked).
    #[serde(default)]
    local: bool,
}

/// The nodes (id, Raft id, API, leader or not, up or not) and the faults in force on each.
#[utoipa::path(get, path = "/v1/chaos/faults", tag = "operations", params(ListQuery),
    responses((status = 200, description = "Nodes and their faults", body = Object),
        (status = 403, description = "The node was started without --fault-injection", body = ErrorBody)))]
pub(super) async fn list(
    State(api): State<ChaosApi>,
    headers: HeaderMap,
    axum::extract::Query(q): axum::extract::Query<ListQuery>,
) -> Res {
    refuse_unless_enabled(&api)?;
    let local = q.local;
    let here = json!({
        "node": api.node,
        "faults": api.chaos.active(),
        "frames_dropped": api.chaos.frames_dropped(),
    });
    if local {
        return Ok((StatusCode::OK, Json(here)));
    }
    let Some((engine, state)) = &api.raft else {
        // A worker: the leader knows the cluster (and asks this node back for its faults).
        let target = api.leader().ok_or_else(|| {
            ApiError(
                StatusCode::SERVICE_UNAVAILABLE,
                "no leader known yet; retry".into(),
            )
        })?;
        return pass_on_get(&api.outbound, &target, "/v1/chaos/faults", &headers).await;
    };
    let st = engine.status();
    let nodes: Vec<(String, u64, String, bool)> = {
        let m = state
            .read()
            .map_err(|_| ApiError::bad("state lock poisoned"))?;
        m.state
            .sched
            .nodes
            .values()
            .map(|n| {
                let up = n.status != troupe_scheduler::state::NodeStatus::Down;
                (n.id.clone(), n.raft_id, n.api.clone(), up)
            })
            .collect()
    };
    let mut out = Vec::new();
    for (id, raft_id, addr, up) in nodes {
        let mut frames_dropped = json!(null);
        let faults: Value = if id == api.node {
            frames_dropped = json!(api.chaos.frames_dropped());
            json!(api.chaos.active())
        } else {
            match pass_on_get(
                &api.outbound,
                &addr,
                "/v1/chaos/faults?local=true",
                &headers,
            )
            .await
            {
                Ok((_, Json(v))) => {
                    frames_dropped = v["frames_dropped"].clone();
                    v["faults"].clone()
                }
                Err(e) => json!({ "unreachable": e.1 }),
            }
        };
        out.push(json!({
            "node": id,
            "raft_id": raft_id,
            "role": if raft_id == 0 { "worker" } else { "server" },
            "api": addr,
            "leader": raft_id != 0 && raft_id == st.leader_id,
            "up": up,
            "faults": faults,
            "frames_dropped": frames_dropped,
        }));
    }
    Ok((
        StatusCode::OK,
        Json(
            json!({ "asked": api.node, "leader_id": st.leader_id, "term": st.term, "nodes": out }),
        ),
    ))
}

async fn pass_on_get(out: &Outbound, target: &str, path: &str, headers: &HeaderMap) -> Res {
    // A short limit: a frozen node must not hold the listing up.
    let f = pass_on(out, target, Method::GET, path, Vec::new(), headers, 2);
    match tokio::time::timeout(Duration::from_secs(2), f).await {
        Ok(r) => r,
        Err(_) => Err(ApiError(
            StatusCode::BAD_GATEWAY,
            format!("{target} did not answer in 2s (frozen?)"),
        )),
    }
}
