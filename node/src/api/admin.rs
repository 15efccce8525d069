//! Operator routes: health, nodes and drain, the Raft group's servers, fault injection.

use super::handlers::{Res, linearize, ok, propose};
use super::openapi::ErrorBody;
use super::{ApiError, AppState};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};
use std::time::Duration;
use troupe_actors::instance::{InstanceMsg, instance_name};
use troupe_scheduler::state::parse_wf;
use troupe_scheduler::{Command, Output};

#[utoipa::path(get, path = "/v1/health", tag = "operations",
    responses((status = 200, description = "Role, Raft figures, counters", body = Object),
        (status = 503, description = "The Raft engine stopped, or this replica diverged", body = Object)))]
pub(super) async fn health(State(app): State<AppState>) -> Res {
    let st = app.engine.status();
    if !st.running {
        return Ok((
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({
                "status": "failed",
                "node": app.node,
                "error": "the raft engine stopped (see the node log); the node restarts it or exits",
                "applied": st.applied,
            })),
        ));
    }
    let (workflows, stats, audit) = app
        .state
        .read()
        .map(|m| {
            (
                m.state.workflows.len(),
                m.state.sched.stats.clone(),
                m.state.audit.clone(),
            )
        })
        .unwrap_or_default();
    if let Some(why) = &audit.diverged {
        return Ok((
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "diverged", "node": app.node, "error": why })),
        ));
    }
    ok(json!({
        "status": "ok",
        "node": app.node,
        "role": "server",
        "raft_id": st.id,
        "leader_id": st.leader_id,
        "leader": st.is_leader,
        "term": st.term,
        "applied": st.applied,
        "commit": st.commit,
        "snapshot_index": st.snapshot_index,
        "workflows": workflows,
        "stats": {
            "commands": stats.commands,
            "tasks_succeeded": stats.tasks_succeeded,
            "tasks_failed": stats.tasks_failed,
            "stale_reports_refused": stats.stale_reports,
            "assignments_refused": stats.rejected_assignments,
        },
        "uptime_ms": app.started.elapsed().as_millis() as u64,
        // Why this node's capacity is unknown (its resource probe failed), if it is.
        "degraded": crate::capacity::degraded(),
        "audit": audit.last_checked.map(|(seq, same)| json!({ "seq": seq, "matched": same })),
    }))
}

/// Fault injection (only with `--fault-injection`): make one actor panic, to watch its
/// supervisor restart it. Targets: raft, api, dispatcher, runner-N, wf-N.
#[utoipa::path(post, path = "/v1/chaos/panic/{actor}", tag = "operations",
    params(("actor" = String, Path, description = "raft, api, dispatcher, runner-N or wf-N")),
    responses((status = 200, description = "The panic was sent", body = Object),
        (status = 403, description = "The node was started without --fault-injection", body = ErrorBody),
        (status = 404, description = "No such workflow, step or entry", body = ErrorBody)))]
pub(super) async fn inject_panic(State(app): State<AppState>, Path(actor): Path<String>) -> Res {
    use ractor::{ActorRef, registry};
    if !app.fault_injection {
        return Err(ApiError(
            StatusCode::FORBIDDEN,
            "fault injection is off; start the node with --fault-injection".into(),
        ));
    }
    let sent = match actor.as_str() {
        "raft" => registry::where_is(troupe_actors::facade::RAFT_NAME).map(|c| {
            ActorRef::<troupe_actors::facade::FacadeMsg>::from(c)
                .cast(troupe_actors::facade::FacadeMsg::InjectPanic)
                .is_ok()
        }),
        "api" => registry::where_is(crate::tree::API_NAME).map(|c| {
            ActorRef::<super::ApiMsg>::from(c)
                .cast(super::ApiMsg::InjectPanic)
                .is_ok()
        }),
        "dispatcher" => registry::where_is(troupe_actors::sink::DISPATCHER_NAME).map(|c| {
            ActorRef::<troupe_actors::dispatcher::DispatchMsg>::from(c)
                .cast(troupe_actors::dispatcher::DispatchMsg::InjectPanic)
                .is_ok()
        }),
        a if a.starts_with("runner-") => registry::where_is(format!("troupe.runner.{}", &a[7..]))
            .map(|c| {
                ActorRef::<troupe_actors::runner::RunnerMsg>::from(c)
                    .cast(troupe_actors::runner::RunnerMsg::InjectPanic)
                    .is_ok()
            }),
        a => match parse_wf(a) {
            Some(id) => registry::where_is(instance_name(id)).map(|c| {
                ActorRef::<InstanceMsg>::from(c)
                    .cast(InstanceMsg::InjectPanic)
                    .is_ok()
            }),
            None => {
                return Err(ApiError::bad(format!(
                    "unknown actor {a:?}; use raft, api, dispatcher, runner-N or wf-N"
                )));
            }
        },
    };
    match sent {
        Some(true) => ok(json!({ "actor": actor, "panic": "sent" })),
        _ => Err(ApiError::not_found(format!("no running actor {actor:?}"))),
    }
}

#[utoipa::path(get, path = "/v1/nodes", tag = "cluster",
    responses((status = 200, description = "Nodes with capacity, allocation, GPUs and status", body = Object), (status = 503, description = "No leader, or no quorum confirmed the read; retry", body = ErrorBody)))]
pub(super) async fn nodes(State(app): State<AppState>) -> Res {
    linearize(&app).await?;
    let m = app
        .state
        .read()
        .map_err(|_| ApiError::bad("state lock poisoned"))?;
    let list: Vec<Value> = m
        .state
        .sched
        .nodes
        .values()
        .map(|n| {
            let (workers, broken) = m.state.node_workers(&n.id);
            json!({
                "id": n.id,
                "status": format!("{:?}", n.status).to_lowercase(),
                "epoch": n.epoch,
                "slots": n.slots,
                "queue": n.queue,
                "attempts": n.assigned,
                "labels": n.labels,
                "cpu_milli": { "capacity": n.capacity.cpu_milli, "reserved": n.reserved.cpu_milli, "allocated": n.used.cpu_milli },
                "memory_bytes": { "capacity": n.capacity.memory_bytes, "reserved": n.reserved.memory_bytes, "allocated": n.used.memory_bytes },
                "gpus": n.capacity.gpus.iter().map(|g| json!({
                    "index": g.index, "uuid": g.uuid, "model": g.model, "memory_bytes": g.memory_bytes,
                    "in_use": n.used.gpus.contains(&g.uuid),
                })).collect::<Vec<_>>(),
                // Warm workers: each group holds a credit and the step's resources per worker.
                "workers": workers,
                // Steps whose worker is broken here ("wf-N/<step>: why"): placed elsewhere.
                "broken_workers": broken,
            })
        })
        .collect();
    ok(json!({ "nodes": list }))
}

#[derive(Deserialize, Default, utoipa::ToSchema)]
pub(super) struct DrainBody {
    /// `false` returns a drained node to service.
    #[serde(default = "yes")]
    draining: bool,
    /// After this long (`"30s"`), attempts still running on the node are stopped and requeued.
    deadline: Option<String>,
}

fn yes() -> bool {
    true
}

/// Drain: the node takes no new work; running attempts finish.
#[utoipa::path(post, path = "/v1/nodes/{id}/drain", tag = "cluster",
    params(("id" = String, Path, description = "Node id")), request_body(content = Option<DrainBody>),
    responses((status = 200, description = "Applied", body = Object), (status = 404, description = "No such workflow, step or entry", body = ErrorBody), (status = 400, description = "Bad request (the message says which field)", body = ErrorBody)))]
pub(super) async fn drain(
    State(app): State<AppState>,
    Path(id): Path<String>,
    body: Option<Json<DrainBody>>,
) -> Res {
    let body = body.map(|b| b.0).unwrap_or(DrainBody {
        draining: true,
        deadline: None,
    });
    let deadline_ms = body
        .deadline
        .as_deref()
        .map(troupe_scheduler::units::parse_duration_ms)
        .transpose()
        .map_err(|e| ApiError::bad(format!("deadline: {e}")))?;
    let draining = body.draining;
    match propose(
        &app,
        Command::SetDraining {
            node: id.clone(),
            draining,
            deadline_ms,
        },
    )
    .await?
    {
        Output::NotFound(m) => Err(ApiError::not_found(m)),
        Output::Rejected(m) => Err(ApiError(StatusCode::CONFLICT, m)),
        _ => ok(json!({ "node": id, "draining": draining })),
    }
}

/// The Raft group: voters, learners and the leader.
#[utoipa::path(get, path = "/v1/servers", tag = "cluster",
    responses((status = 200, description = "Voters, learners, leader and term", body = Object), (status = 503, description = "No leader, or no quorum confirmed the read; retry", body = ErrorBody)))]
pub(super) async fn servers(State(app): State<AppState>) -> Res {
    linearize(&app).await?;
    let st = app.engine.status();
    ok(
        json!({ "voters": st.voters, "learners": st.learners, "leader_id": st.leader_id, "term": st.term }),
    )
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct ServerChange {
    raft_id: u64,
    /// `add` (as a voter; start it first with `troupe node --server --join-existing ID`) or `remove`.
    action: String,
}

/// Adds or removes a server (a Raft voter) at run time, one change at a time.
#[utoipa::path(post, path = "/v1/servers", tag = "cluster", request_body = ServerChange,
    responses((status = 200, description = "The voters after the change", body = Object), (status = 400, description = "Bad request (the message says which field)", body = ErrorBody),
        (status = 409, description = "Another change is pending; retry", body = ErrorBody),
        (status = 504, description = "Not confirmed in time", body = ErrorBody)))]
pub(super) async fn change_servers(
    State(app): State<AppState>,
    body: Result<Json<ServerChange>, axum::extract::rejection::JsonRejection>,
) -> Res {
    use troupe_raft_log::MembershipChange;
    let Json(b) =
        body.map_err(|e| ApiError(e.status(), format!("bad request body: {}", e.body_text())))?;
    if b.raft_id == 0 {
        return Err(ApiError::bad("raft_id must be 1 or more"));
    }
    let change = match b.action.as_str() {
        "add" => MembershipChange::AddVoter(b.raft_id),
        "remove" => MembershipChange::Remove(b.raft_id),
        other => {
            return Err(ApiError::bad(format!(
                "action {other:?}: use add or remove"
            )));
        }
    };
    let rx = app.engine.change_membership(change)?;
    match tokio::time::timeout(Duration::from_secs(15), rx).await {
        Ok(Ok(Ok(voters))) => ok(json!({ "voters": voters })),
        Ok(Ok(Err(e))) => Err(ApiError(
            StatusCode::CONFLICT,
            format!("the change was not applied: {e}; retry"),
        )),
        _ => Err(ApiError(
            StatusCode::GATEWAY_TIMEOUT,
            "the change was not confirmed within 15s; check GET /v1/servers".into(),
        )),
    }
}
