//! `POST /v1/chaos/verify`: replays this server's committed log through the real state machine
//! (`troupe_scheduler::verify::Replay`) and reports the invariants and the figures. A chaos-mode
//! node keeps its compacted entries, so the replay starts at the beginning; otherwise (or on a
//! server that caught up by snapshot) it starts from the stored snapshot, and says so. A worker
//! passes the call to the leader. POST because it takes the client history's acknowledged
//! submits as its body.

use super::ApiError;
use super::chaos::{ChaosApi, pass_on, refuse_unless_enabled};
use super::openapi::ErrorBody;
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};
use troupe_actors::machine::Machine;
use troupe_raft_log::{EngineHandle, StateMachine};
use troupe_scheduler::verify::{AckedSubmit, LogEntry, Replay};

/// Entries read per page (each page is one read transaction).
const PAGE: usize = 2_000;
/// The most entries a replay reads (a bound on the work of one call).
const ENTRIES_MAX: u64 = 5_000_000;

#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct VerifyBody {
    /// Submits acknowledged to clients (from a recorded history): each must be in the log.
    #[serde(default)]
    #[schema(value_type = Vec<Object>)]
    acked: Vec<Acked>,
}

#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
struct Acked {
    #[serde(default)]
    key: Option<String>,
    workflow: String,
}

/// Replays the committed log and checks the invariants at every index.
#[utoipa::path(post, path = "/v1/chaos/verify", tag = "operations", request_body(content = Option<VerifyBody>),
    responses((status = 200, description = "The invariants, violations and figures", body = Object),
        (status = 403, description = "The node was started without --fault-injection", body = ErrorBody),
        (status = 503, description = "The log is closed (restarting); retry", body = ErrorBody)))]
pub(super) async fn verify(
    State(api): State<ChaosApi>,
    headers: HeaderMap,
    body: Option<Json<VerifyBody>>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    refuse_unless_enabled(&api)?;
    let acked: Vec<AckedSubmit> = body
        .map(|b| b.0.acked)
        .unwrap_or_default()
        .into_iter()
        .map(|a| AckedSubmit {
            key: a.key,
            workflow: a.workflow,
        })
        .collect();
    let Some((engine, _)) = api.raft.clone() else {
        let leader = api
            .leader_api
            .as_ref()
            .and_then(|l| l.lock().ok().map(|a| a.clone()));
        let Some(target) = leader.filter(|a| !a.is_empty()) else {
            return Err(ApiError(
                StatusCode::SERVICE_UNAVAILABLE,
                "no leader known yet; retry".into(),
            ));
        };
        let list: Vec<Value> = acked
            .iter()
            .map(|a| json!({ "key": a.key, "workflow": a.workflow }))
            .collect();
        let body = serde_json::to_vec(&json!({ "acked": list })).unwrap_or_default();
        return pass_on(
            &api.outbound,
            &target,
            Method::POST,
            "/v1/chaos/verify",
            body,
            &headers,
            2,
        )
        .await;
    };
    let node = api.node.clone();
    let out = tokio::task::spawn_blocking(move || replay(&engine, &acked))
        .await
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(|e| ApiError(StatusCode::SERVICE_UNAVAILABLE, e))?;
    let (report, start) = out;
    let mut v = serde_json::to_value(&report).unwrap_or_default();
    v["ok"] = json!(report.ok());
    v["node"] = json!(node);
    v["replayed_from"] = json!(start);
    Ok((StatusCode::OK, Json(v)))
}

/// Reads the log page by page and replays it; returns the report and where it started.
fn replay(
    engine: &EngineHandle<Machine>,
    acked: &[AckedSubmit],
) -> Result<(troupe_scheduler::verify::Report, String), String> {
    let first = engine.read_log(0, 1).map_err(|e| e.to_string())?;
    // The bootstrap snapshot (index 1) is the empty state: a log that reaches back to index 2
    // is the whole history.
    let (mut replay, start, mut next) = if first.first_index <= 2 {
        (
            Replay::new(),
            "the empty state (the whole history)".to_string(),
            2,
        )
    } else {
        let (index, image) = engine.stored_snapshot().map_err(|e| e.to_string())?;
        let mut m = Machine::default();
        m.restore(&image)?;
        let note = format!(
            "the snapshot at index {index} (entries before it were compacted away on this server)"
        );
        (Replay::from_state(m.state), note, index + 1)
    };
    let mut read = 0u64;
    loop {
        let page = engine.read_log(next, PAGE).map_err(|e| e.to_string())?;
        let n = page.entries.len();
        for e in page.entries {
            next = e.index + 1;
            replay.entry(LogEntry {
                index: e.index,
                term: e.term,
                at_ms: e.at_ms,
                commands: e.commands,
            });
        }
        read += n as u64;
        if n < PAGE || next > page.commit || read >= ENTRIES_MAX {
            break;
        }
    }
    Ok((replay.finish(acked), start))
}
