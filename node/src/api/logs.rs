//! Task logs from any node. An attempt's stdout and stderr are files on the node that ran it.
//! `GET /v1/workflows/{id}/logs` is served by the leader: it looks up which node ran the
//! attempt in the replicated state (the item trace names the node of the last attempt placed)
//! and reads the file itself when it ran there, or fetches it from that node's API
//! (`GET /v1/node/logs`, served by every node from its own disk), streaming the answer through.
//!
//! Over the HTTP API rather than the cluster transport: the answer is bytes (up to 1 MiB), it
//! streams through without being held whole, and the call goes through the node's usual
//! checks: the leader passes the caller's `Authorization` header on, so the node that has the
//! file checks the caller's token as for any call (over HTTPS when the API uses TLS).
//!
//! Following a running attempt is bounded polling by the client: `?offset=N` answers the bytes
//! from N on (at most 1 MiB), and every answer says the offset to ask from next (`x-troupe-log-next-offset`) and
//! whether the attempt still runs (`x-troupe-attempt-running`).

use super::handlers::{read, wf_id, workflow};
use super::{ApiError, AppState};
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;
use troupe_scheduler::TaskRef;
use troupe_scheduler::state::{NodeStatus, WorkflowId, wf_name};

/// The most of a log one answer holds: its end, or from `offset` on.
const LOG_TAIL_BYTES: u64 = 1 << 20;
/// How long the node that has the log may take to start answering.
const REMOTE_ANSWER_LIMIT: Duration = Duration::from_secs(10);
/// Largest error body read back from another node.
const ERROR_BYTES_MAX: usize = 16 << 10;

pub const NEXT_HEADER: &str = "x-troupe-log-next-offset";
pub const NODE_HEADER: &str = "x-troupe-log-node";
pub const ATTEMPT_HEADER: &str = "x-troupe-log-attempt";
pub const RUNNING_HEADER: &str = "x-troupe-attempt-running";

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct LogQuery {
    /// Step id.
    step: String,
    /// Item index (default 0).
    item: Option<u32>,
    /// Attempt (default: the newest that left a log).
    attempt: Option<u32>,
    /// stdout (default) or stderr.
    stream: Option<String>,
    /// Read from this byte on (`--follow`); default: the last 1 MiB.
    offset: Option<u64>,
}

/// One attempt's log file.
struct LogFile {
    wf: WorkflowId,
    step: String,
    item: u32,
    attempt: u32,
    stream: &'static str,
}

impl LogFile {
    fn ext(&self) -> &'static str {
        if self.stream == "stderr" {
            "err"
        } else {
            "out"
        }
    }

    fn path(&self, data_dir: &std::path::Path) -> PathBuf {
        data_dir.join(self.stem()).with_extension(self.ext())
    }

    fn stem(&self) -> String {
        TaskRef {
            wf: self.wf,
            step: 0,
            item: self.item,
        }
        .log_stem(&self.step, self.attempt)
    }

    fn what(&self) -> String {
        format!(
            "{} step {} item {} attempt {}",
            wf_name(self.wf),
            self.step,
            self.item,
            self.attempt
        )
    }

    fn query(&self, offset: Option<u64>) -> String {
        let mut q = format!(
            "wf={}&step={}&item={}&attempt={}&stream={}",
            wf_name(self.wf),
            self.step,
            self.item,
            self.attempt,
            self.stream
        );
        if let Some(o) = offset {
            q.push_str(&format!("&offset={o}"));
        }
        q
    }
}

fn stream_name(s: Option<&str>) -> Result<&'static str, ApiError> {
    match s {
        None | Some("stdout") => Ok("stdout"),
        Some("stderr") => Ok("stderr"),
        Some(other) => Err(ApiError::bad(format!(
            "stream {other:?}: use stdout or stderr"
        ))),
    }
}

/// Where an attempt's log is, from the replicated state.
struct Located {
    file: LogFile,
    /// The node that ran it, when the state knows (the last attempt placed).
    node: Option<String>,
    running: bool,
    /// Other nodes' (id, API address, down), to ask for an older attempt's log.
    others: Vec<(String, String, bool)>,
}

fn locate(app: &AppState, id: WorkflowId, q: &LogQuery) -> Result<Located, ApiError> {
    let item = q.item.unwrap_or(0);
    let m = read(app)?;
    let wf = workflow(&m, id)?;
    let i = wf
        .spec
        .step_index(&q.step)
        .ok_or_else(|| ApiError::not_found(format!("{} has no step {:?}", wf_name(id), q.step)))?;
    let run = &wf.steps[i];
    let trace = run.trace.get(&item).filter(|t| t.attempt > 0);
    let task = run.tasks.get(&item);
    let attempt = q
        .attempt
        .or(trace.map(|t| t.attempt))
        .or(task.map(|t| t.attempt))
        .unwrap_or(run.max_attempt.max(1));
    let node = trace
        .filter(|t| t.attempt == attempt)
        .and_then(|t| t.node.clone());
    let running = task.is_some_and(|t| t.attempt == attempt && t.state.placement().is_some());
    let others = m
        .state
        .sched
        .nodes
        .values()
        .filter(|n| n.id != app.node && !n.api.is_empty())
        .map(|n| (n.id.clone(), n.api.clone(), n.status == NodeStatus::Down))
        .collect();
    Ok(Located {
        file: LogFile {
            wf: id,
            step: q.step.clone(),
            item,
            attempt,
            stream: stream_name(q.stream.as_deref())?,
        },
        node,
        running,
        others,
    })
}

/// `GET /v1/workflows/{id}/logs` (the leader): the log from whichever node ran the attempt.
#[utoipa::path(get, path = "/v1/workflows/{id}/logs", tag = "workflows", params(("id" = String, Path, description = "Workflow id, like wf-12"), LogQuery),
    responses((status = 200, description = "A task's log (at most 1 MiB), from the node that ran the attempt", content_type = "text/plain", body = String), (status = 404, description = "No such workflow, step or log", body = super::openapi::ErrorBody), (status = 502, description = "The node that ran the attempt did not answer", body = super::openapi::ErrorBody)))]
pub(super) async fn logs(
    State(app): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<LogQuery>,
) -> Result<Response, ApiError> {
    let id = wf_id(&id)?;
    let at = locate(&app, id, &q)?;
    let auth = headers.get(header::AUTHORIZATION).cloned();
    let (node, mut resp) = match &at.node {
        Some(n) if *n != app.node => {
            let (api, down) = at
                .others
                .iter()
                .find(|(id, ..)| id == n)
                .map(|(_, api, down)| (api.clone(), *down))
                .ok_or_else(|| {
                    ApiError::not_found(format!(
                        "the log of {} is on node {n}, whose API address is not known",
                        at.file.what()
                    ))
                })?;
            let r = remote(&app, n, &api, down, &at.file, q.offset, auth).await?;
            (n.clone(), r)
        }
        Some(_) => (
            app.node.clone(),
            local(&app.data_dir, &at.file, q.offset).await?,
        ),
        None => search(&app, &at, q.offset, auth).await?,
    };
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&node) {
        h.insert(NODE_HEADER, v);
    }
    h.insert(ATTEMPT_HEADER, HeaderValue::from(at.file.attempt));
    h.insert(
        RUNNING_HEADER,
        HeaderValue::from_static(if at.running { "true" } else { "false" }),
    );
    Ok(resp)
}

/// An attempt whose node the state no longer knows (an older one): this node's disk, then
/// every other node that is not down, in turn (bounded by the nodes).
async fn search(
    app: &AppState,
    at: &Located,
    offset: Option<u64>,
    auth: Option<HeaderValue>,
) -> Result<(String, Response), ApiError> {
    if let Ok(r) = local(&app.data_dir, &at.file, offset).await {
        return Ok((app.node.clone(), r));
    }
    for (node, api, down) in &at.others {
        if *down {
            continue;
        }
        if let Ok(r) = remote(app, node, api, false, &at.file, offset, auth.clone()).await
            && r.status().is_success()
        {
            return Ok((node.clone(), r));
        }
    }
    Err(no_log(&at.file))
}

fn no_log(f: &LogFile) -> ApiError {
    ApiError::not_found(format!(
        "no {} log for {} (builtin handlers write none; an attempt that has not started has none yet)",
        f.stream,
        f.what()
    ))
}

/// Reads this node's copy of the log: its last 1 MiB, or from `offset` on.
async fn local(
    data_dir: &std::path::Path,
    f: &LogFile,
    offset: Option<u64>,
) -> Result<Response, ApiError> {
    let (bytes, size) = read_part(&f.path(data_dir), offset, LOG_TAIL_BYTES)
        .await
        .map_err(|_| no_log(f))?;
    let mut r = (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        bytes,
    )
        .into_response();
    r.headers_mut().insert(NEXT_HEADER, HeaderValue::from(size));
    Ok(r)
}

/// Fetches the log from the node that has it, passing the caller's credentials on; the body
/// streams through.
async fn remote(
    app: &AppState,
    node: &str,
    api: &str,
    down: bool,
    f: &LogFile,
    offset: Option<u64>,
    auth: Option<HeaderValue>,
) -> Result<Response, ApiError> {
    let url = format!(
        "{}/v1/node/logs?{}",
        app.outbound.base(api),
        f.query(offset)
    );
    let mut req = Request::get(url)
        .body(Body::empty())
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    if let Some(a) = auth {
        req.headers_mut().insert(header::AUTHORIZATION, a);
    }
    let unreachable = |why: String| {
        let state = if down {
            "is down (declared lost)"
        } else {
            "did not answer"
        };
        ApiError(
            StatusCode::BAD_GATEWAY,
            format!(
                "the log of {} is on node {node} (API {api}), which {state}: {why}; it is in that node's data directory under {}.{} (start the node again, or read it there)",
                f.what(),
                f.stem(),
                f.ext()
            ),
        )
    };
    let resp = match tokio::time::timeout(REMOTE_ANSWER_LIMIT, app.outbound.request(req)).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => return Err(unreachable(causes(&e))),
        Err(_) => {
            return Err(unreachable(format!(
                "no answer within {}s",
                REMOTE_ANSWER_LIMIT.as_secs()
            )));
        }
    };
    let status = resp.status();
    if status.is_success() {
        return Ok(resp.map(Body::new));
    }
    let body = axum::body::to_bytes(Body::new(resp.into_body()), ERROR_BYTES_MAX)
        .await
        .unwrap_or_default();
    let why = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_string))
        .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
    Err(match status {
        StatusCode::NOT_FOUND => no_log(f),
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => ApiError(
            status,
            format!(
                "node {node}, which has the log of {}, refused your token: {why} (give every node the same --tokens file)",
                f.what()
            ),
        ),
        _ => ApiError(
            StatusCode::BAD_GATEWAY,
            format!(
                "node {node}, which has the log of {}, answered {status}: {why}",
                f.what()
            ),
        ),
    })
}

/// An error with its causes (`client error (Connect): tcp connect error: Connection refused`).
fn causes(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    // Bounded: error chains are short, but a cycle must not loop forever.
    for _ in 0..8 {
        let Some(c) = next else { break };
        out.push_str(&format!(": {c}"));
        next = c.source();
    }
    out
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct NodeLogQuery {
    /// Workflow id, like wf-12.
    wf: String,
    /// Step id.
    step: String,
    /// Item index.
    item: u32,
    /// Attempt.
    attempt: u32,
    /// stdout (default) or stderr.
    stream: Option<String>,
    /// Read from this byte on; default: the last 1 MiB.
    offset: Option<u64>,
}

/// `GET /v1/node/logs` (every node, servers and workers): a log file from this node's own disk.
pub(super) async fn node_logs(
    data_dir: &std::path::Path,
    q: NodeLogQuery,
) -> Result<Response, ApiError> {
    let wf = wf_id(&q.wf)?;
    // The step id is part of a path: only what a spec may name a step (1-64 letters, digits,
    // - or _).
    let valid = !q.step.is_empty()
        && q.step.len() <= 64
        && q.step
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !valid {
        return Err(ApiError::bad(format!("step {:?} is not a step id", q.step)));
    }
    let f = LogFile {
        wf,
        step: q.step,
        item: q.item,
        attempt: q.attempt,
        stream: stream_name(q.stream.as_deref())?,
    };
    local(data_dir, &f, q.offset).await
}

/// A task log from this node's own disk (what the leader asks the node that ran an attempt).
#[utoipa::path(get, path = "/v1/node/logs", tag = "operations", params(NodeLogQuery),
    responses((status = 200, description = "The log file's end (at most 1 MiB), or from `offset`", content_type = "text/plain", body = String), (status = 404, description = "No such log here", body = super::openapi::ErrorBody)))]
pub(super) async fn node_logs_here(
    State(app): State<AppState>,
    Query(q): Query<NodeLogQuery>,
) -> Result<Response, ApiError> {
    node_logs(&app.data_dir, q).await
}

/// Up to `max` bytes of a file: its end, or from `offset` on; and the file's size. Reads by
/// seeking (a 1 GB log costs 1 MiB of memory, not 1 GB).
async fn read_part(
    path: &std::path::Path,
    offset: Option<u64>,
    max: u64,
) -> std::io::Result<(Vec<u8>, u64)> {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let mut f = tokio::fs::File::open(path).await?;
    let len = f.metadata().await?.len();
    let start = match offset {
        Some(o) => o.min(len),
        None => len.saturating_sub(max),
    };
    f.seek(std::io::SeekFrom::Start(start)).await?;
    let mut out = Vec::with_capacity(len.saturating_sub(start).min(max) as usize);
    f.take(max).read_to_end(&mut out).await?;
    let next = start + out.len() as u64;
    Ok((out, next))
}
