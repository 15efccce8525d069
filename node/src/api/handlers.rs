//! Route handlers.

use super::openapi::ErrorBody;
use super::{ApiError, AppState, BODY_BYTES_MAX};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{Method, StatusCode};
use axum::routing::{MethodFilter, get, on};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::Duration;
use troupe_actors::instance::{InstanceMsg, instance_name};
use troupe_scheduler::spec::{self, SpecError};
use troupe_scheduler::state::{WorkflowId, parse_wf, wf_name};
use troupe_scheduler::{Command, Output, Submission, views};

/// A router that records every `(method, path)` it serves, so tests can walk the routes (and
/// check each is in the OpenAPI document).
pub(crate) struct Routes {
    router: Router<AppState>,
    pub(crate) list: Vec<(Method, &'static str)>,
}

impl Routes {
    fn new() -> Self {
        Routes {
            router: Router::new(),
            list: Vec::new(),
        }
    }

    fn add<H, T>(mut self, method: Method, path: &'static str, handler: H) -> Self
    where
        H: axum::handler::Handler<T, AppState>,
        T: 'static,
    {
        let filter = MethodFilter::try_from(method.clone()).expect("a standard method");
        self.router = self.router.route(path, on(filter, handler));
        self.list.push((method, path));
        self
    }
}

/// Served on every server (never forwarded): health, metrics, the API document, fault injection.
pub(crate) fn local_routes() -> Routes {
    Routes::new()
        .add(Method::GET, "/v1/health", super::admin::health)
        .add(Method::GET, "/metrics", crate::metrics::serve)
        .add(Method::GET, "/v1/openapi.json", super::openapi::document)
        .add(Method::GET, "/v1/node/logs", super::logs::node_logs_here)
        .add(
            Method::POST,
            "/v1/chaos/panic/{actor}",
            super::admin::inject_panic,
        )
}

/// Served by the leader (forwarded there by followers).
pub(crate) fn leader_routes() -> Routes {
    use super::{admin, dlq};
    Routes::new()
        .add(Method::POST, "/v1/workflows", submit)
        .add(Method::GET, "/v1/workflows", list)
        .add(Method::GET, "/v1/workflows/{id}", detail)
        .add(Method::POST, "/v1/workflows/{id}/{action}", control)
        .add(
            Method::GET,
            "/v1/workflows/{id}/steps/{step}/output",
            output,
        )
        .add(Method::GET, "/v1/workflows/{id}/logs", super::logs::logs)
        .add(Method::GET, "/v1/workflows/{id}/items/{index}", dlq::item)
        .add(Method::GET, "/v1/nodes", admin::nodes)
        .add(Method::POST, "/v1/nodes/{id}/drain", admin::drain)
        .add(Method::GET, "/v1/servers", admin::servers)
        .add(Method::POST, "/v1/servers", admin::change_servers)
        .add(Method::GET, "/v1/dlq", dlq::list)
        .add(Method::POST, "/v1/dlq/redrive", dlq::redrive)
        .add(Method::POST, "/v1/dlq/discard", dlq::discard)
        .add(Method::POST, "/v1/dlq/{id}/redrive", dlq::redrive_one)
}

pub fn router(app: AppState) -> Router {
    let here = local_routes()
        .router
        .with_state(app.clone())
        .merge(super::chaos::routes(app.chaos.clone()))
        .merge(super::dashboard::routes());
    let led = leader_routes()
        .router
        .layer(axum::middleware::from_fn_with_state(app.clone(), to_leader))
        .layer(DefaultBodyLimit::max(BODY_BYTES_MAX))
        .with_state(app.clone());
    here.merge(led)
        // Inside routing, so each request is counted under its matched route template.
        .route_layer(axum::middleware::from_fn(crate::metrics::track))
        .layer(axum::middleware::from_fn_with_state(
            app.auth.clone(),
            super::auth::check,
        ))
        .layer(axum::middleware::from_fn(super::errors::json_errors))
        // Outermost: a body over the limit is drained, then refused (413).
        .layer(axum::middleware::from_fn(super::body::limit))
}

/// Everything but health, fault injection, this node's own logs and the dashboard is served by
/// the leader.
async fn to_leader(
    State(app): State<AppState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    match (app.route)() {
        super::Route::Here => next.run(req).await,
        super::Route::To(target) => {
            super::forward::forward(&app.outbound, app.route.clone(), target, req).await
        }
        super::Route::Unknown => super::forward::no_leader(),
    }
}

/// A worker's API: its own health, task logs and the dashboard, everything else forwarded to
/// the leader.
pub fn proxy_router(w: super::WorkerApi) -> Router {
    let health_node = w.node.clone();
    let data_dir = w.data_dir.clone();
    let (leader_api, outbound) = (w.leader_api.clone(), w.outbound.clone());
    Router::new()
        .route(
            "/v1/health",
            get(move || async move {
                Json(
                    json!({ "status": "ok", "node": health_node, "role": "worker",
                    "degraded": crate::capacity::degraded() }),
                )
            }),
        )
        .route(
            "/v1/node/logs",
            get(
                move |Query(q): Query<super::logs::NodeLogQuery>| async move {
                    super::logs::node_logs(&data_dir, q).await
                },
            ),
        )
        .route("/metrics", get(crate::metrics::serve_local))
        .merge(super::chaos::routes(w.chaos.clone()))
        .merge(super::dashboard::routes())
        .fallback(move |req: axum::extract::Request| {
            let api = leader_api.clone();
            let outbound = outbound.clone();
            let route: std::sync::Arc<dyn Fn() -> super::Route + Send + Sync> =
                std::sync::Arc::new(move || match api.lock().map(|a| a.clone()) {
                    Ok(a) if !a.is_empty() => super::Route::To(a),
                    _ => super::Route::Unknown,
                });
            async move {
                match route() {
                    super::Route::To(target) => {
                        super::forward::forward(&outbound, route, target, req).await
                    }
                    _ => super::forward::no_leader(),
                }
            }
        })
        .layer(DefaultBodyLimit::max(BODY_BYTES_MAX))
        // Outside routing: forwarded calls match no route here and count as `unmatched`.
        .layer(axum::middleware::from_fn(crate::metrics::track))
        .layer(axum::middleware::from_fn_with_state(
            w.auth.clone(),
            super::auth::check,
        ))
        .layer(axum::middleware::from_fn(super::errors::json_errors))
        // Outermost: a body over the limit is drained, then refused (413).
        .layer(axum::middleware::from_fn(super::body::limit))
}

pub(super) type Res = Result<(StatusCode, Json<Value>), ApiError>;

pub(super) fn ok(v: Value) -> Res {
    Ok((StatusCode::OK, Json(v)))
}

/// A linearizable read: in a cluster, wait until this node has applied everything the leader
/// had committed when the read arrived (Raft ReadIndex).
pub(super) async fn linearize(app: &AppState) -> Result<(), ApiError> {
    if !app.linearizable {
        return Ok(());
    }
    let rx = app.engine.read_index()?;
    match tokio::time::timeout(Duration::from_secs(3), rx).await {
        Ok(Ok(Ok(_))) => Ok(()),
        _ => Err(ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            "no quorum confirmed this read (leader change?); retry".into(),
        )),
    }
}

pub(super) fn wf_id(text: &str) -> Result<WorkflowId, ApiError> {
    parse_wf(text)
        .ok_or_else(|| ApiError::bad(format!("{text:?} is not a workflow id (like wf-12)")))
}

pub(super) async fn propose(app: &AppState, cmd: Command) -> Result<Output, ApiError> {
    let rx = app.engine.propose(vec![cmd])?;
    let outs = tokio::time::timeout(Duration::from_secs(30), rx)
        .await
        .map_err(|_| {
            ApiError(
                StatusCode::GATEWAY_TIMEOUT,
                "not committed within 30s; the outcome is unknown: check with GET".into(),
            )
        })?
        .map_err(|_| {
            ApiError(
                StatusCode::SERVICE_UNAVAILABLE,
                "the raft engine stopped".into(),
            )
        })??;
    outs.into_iter()
        .next()
        .ok_or_else(|| ApiError(StatusCode::INTERNAL_SERVER_ERROR, "no output".into()))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct SubmitBody {
    /// The spec in its JSON form (the same model as the TOML file).
    #[schema(value_type = Option<Object>)]
    spec: Option<Value>,
    /// Or the TOML text itself.
    spec_toml: Option<String>,
    /// Overrides of declared params.
    #[serde(default)]
    #[schema(value_type = Object)]
    params: BTreeMap<String, Value>,
    /// Submitting again with the same key returns the same workflow.
    idempotency_key: Option<String>,
}

/// `map.lines` names a file on the submitter's machine: the CLI reads it and sends the items.
/// The API never reads files on the server for a client.
fn refuse_lines(raw: &spec::raw::RawSpec) -> Result<(), ApiError> {
    match raw
        .steps
        .iter()
        .find(|s| s.map.as_ref().is_some_and(|m| m.lines.is_some()))
    {
        Some(s) => Err(ApiError::bad(format!(
            "invalid spec: step \"{}\".map.lines: files are read where the spec is submitted from (`troupe submit` does it); over the API send map.items",
            s.id
        ))),
        None => Ok(()),
    }
}

fn spec_error(e: SpecError) -> ApiError {
    ApiError::bad(format!("invalid spec: {e}"))
}

#[utoipa::path(post, path = "/v1/workflows", tag = "workflows", request_body = SubmitBody,
    responses(
        (status = 201, description = "Submitted", body = super::openapi::Submitted),
        (status = 200, description = "Already submitted with this idempotency key", body = super::openapi::Submitted),
        (status = 400, description = "Bad request (the message says which field)", body = ErrorBody),
        (status = 409, description = "The idempotency key names another spec or params", body = ErrorBody),
        (status = 429, description = "The admission queue is full; retry after a second (Retry-After: 1)", body = ErrorBody), (status = 503, description = "No leader, or no quorum confirmed the read; retry", body = ErrorBody)))]
pub(super) async fn submit(
    State(app): State<AppState>,
    body: Result<Json<SubmitBody>, axum::extract::rejection::JsonRejection>,
) -> Res {
    let Json(body) =
        body.map_err(|e| ApiError(e.status(), format!("bad request body: {}", e.body_text())))?;
    let (raw, compiled) = match (body.spec, body.spec_toml) {
        (Some(v), None) => {
            let raw = spec::parse_json(v).map_err(spec_error)?;
            refuse_lines(&raw)?;
            let compiled = spec::compile(&raw).map_err(spec_error)?;
            (raw, compiled)
        }
        (None, Some(text)) => {
            refuse_lines(&spec::parse_toml(&text, Some("spec_toml")).map_err(spec_error)?)?;
            spec::load_str(&text, Some("spec_toml"), std::path::Path::new("."))
                .map_err(spec_error)?
        }
        _ => {
            return Err(ApiError::bad(
                "give exactly one of `spec` (JSON) or `spec_toml` (TOML text)",
            ));
        }
    };
    let declared: Vec<&str> = compiled.params.iter().map(|(n, _)| n.as_str()).collect();
    for name in body.params.keys() {
        if !declared.contains(&name.as_str()) {
            return Err(ApiError::bad(format!(
                "unknown param {name:?}; the spec declares: {}",
                if declared.is_empty() {
                    "none".into()
                } else {
                    declared.join(", ")
                }
            )));
        }
    }
    if body
        .idempotency_key
        .as_ref()
        .is_some_and(|k| k.is_empty() || k.len() > 256)
    {
        return Err(ApiError::bad("idempotency_key must be 1-256 characters"));
    }
    let digest = spec::spec_digest(&raw, &body.params);
    let params = body
        .params
        .iter()
        .map(|(k, v)| (k.clone(), troupe_scheduler::Json::from_value(v)))
        .collect();
    let sub = Submission {
        spec: compiled,
        params,
        idempotency_key: body.idempotency_key,
        digest,
    };
    match propose(&app, Command::Submit(Box::new(sub))).await? {
        Output::Submitted { id, created } => {
            let code = if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            Ok((code, Json(json!({ "id": wf_name(id), "created": created }))))
        }
        Output::Conflict(m) => Err(ApiError(StatusCode::CONFLICT, m)),
        Output::NotFound(m) => Err(ApiError::not_found(m)),
        Output::Rejected(m) => Err(ApiError::bad(m)),
        other => Err(ApiError(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("unexpected output {other:?}"),
        )),
    }
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct ListQuery {
    /// Only workflows in this status (running, succeeded, degraded, failed, cancelled, timed_out).
    status: Option<String>,
    /// Most workflows returned (default 100, at most 10,000).
    limit: Option<usize>,
    /// The workflow submitted with this key (at most one).
    idempotency_key: Option<String>,
}

#[utoipa::path(get, path = "/v1/workflows", tag = "workflows", params(ListQuery),
    responses((status = 200, description = "Workflow summaries, newest first", body = super::openapi::WorkflowList), (status = 503, description = "No leader, or no quorum confirmed the read; retry", body = ErrorBody)))]
pub(super) async fn list(State(app): State<AppState>, Query(q): Query<ListQuery>) -> Res {
    linearize(&app).await?;
    let m = read(&app)?;
    if let Some(key) = &q.idempotency_key {
        let items: Vec<_> = m
            .state
            .idempotency
            .get(key)
            .and_then(|(id, _)| m.state.workflows.get(id))
            .map(views::summary)
            .into_iter()
            .collect();
        return ok(json!({ "workflows": items }));
    }
    let items: Vec<_> = m
        .state
        .workflows
        .values()
        .rev()
        .filter(|w| q.status.as_deref().is_none_or(|s| w.status.name() == s))
        .take(q.limit.unwrap_or(100).min(10_000))
        .map(views::summary)
        .collect();
    ok(json!({ "workflows": items }))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct DetailQuery {
    /// Wait up to this long (`"30s"`) for the workflow to finish.
    wait: Option<String>,
}

#[utoipa::path(get, path = "/v1/workflows/{id}", tag = "workflows", params(("id" = String, Path, description = "Workflow id, like wf-12"), DetailQuery),
    responses((status = 200, description = "The workflow: status, steps with their funnels, history", body = Object), (status = 404, description = "No such workflow, step or entry", body = ErrorBody), (status = 503, description = "No leader, or no quorum confirmed the read; retry", body = ErrorBody)))]
pub(super) async fn detail(
    State(app): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<DetailQuery>,
) -> Res {
    linearize(&app).await?;
    let id = wf_id(&id)?;
    if let Some(w) = q.wait {
        let ms = troupe_scheduler::units::parse_duration_ms(&w).map_err(ApiError::bad)?;
        wait_finished(&app, id, Duration::from_millis(ms.min(600_000))).await;
    }
    let m = read(&app)?;
    let wf = workflow(&m, id)?;
    ok(serde_json::to_value(views::detail(wf)).unwrap_or_default())
}

/// The applied state, for reading.
pub(super) fn read(
    app: &AppState,
) -> Result<std::sync::RwLockReadGuard<'_, troupe_actors::machine::Machine>, ApiError> {
    app.state.read().map_err(|_| {
        ApiError(
            StatusCode::INTERNAL_SERVER_ERROR,
            "state lock poisoned".into(),
        )
    })
}

pub(super) fn workflow(
    m: &troupe_actors::machine::Machine,
    id: WorkflowId,
) -> Result<&troupe_scheduler::state::Workflow, ApiError> {
    m.state
        .workflows
        .get(&id)
        .ok_or_else(|| ApiError::not_found(format!("no workflow {}", wf_name(id))))
}

fn is_finished(app: &AppState, id: WorkflowId) -> bool {
    app.state
        .read()
        .map(|m| {
            m.state
                .workflows
                .get(&id)
                .is_none_or(|w| w.status.is_terminal())
        })
        .unwrap_or(true)
}

/// Waits through the workflow's instance actor; polls if it has none (yet).
async fn wait_finished(app: &AppState, id: WorkflowId, limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    while !is_finished(app, id) && tokio::time::Instant::now() < deadline {
        let left = deadline - tokio::time::Instant::now();
        match ractor::registry::where_is(instance_name(id))
            .map(ractor::ActorRef::<InstanceMsg>::from)
        {
            Some(actor) => {
                let _ = actor
                    .call(InstanceMsg::Wait, Some(left.min(Duration::from_secs(5))))
                    .await;
            }
            None => tokio::time::sleep(Duration::from_millis(10).min(left)).await,
        }
    }
}

#[utoipa::path(post, path = "/v1/workflows/{id}/{action}", tag = "workflows",
    params(("id" = String, Path, description = "Workflow id, like wf-12"), ("action" = String, Path, description = "cancel, pause, resume or retry")),
    responses((status = 200, description = "Applied", body = Object), (status = 404, description = "No such workflow, step or entry", body = ErrorBody),
        (status = 409, description = "Not possible in the workflow's status", body = ErrorBody), (status = 429, description = "The admission queue is full; retry after a second (Retry-After: 1)", body = ErrorBody)))]
pub(super) async fn control(
    State(app): State<AppState>,
    Path((id, action)): Path<(String, String)>,
) -> Res {
    let id = wf_id(&id)?;
    let cmd = match action.as_str() {
        "cancel" => Command::Cancel(id),
        "pause" => Command::Pause(id),
        "resume" => Command::Resume(id),
        "retry" => Command::Retry(id),
        other => {
            return Err(ApiError::not_found(format!(
                "unknown action {other:?}; use cancel, pause, resume or retry"
            )));
        }
    };
    match propose(&app, cmd).await? {
        Output::NotFound(m) => Err(ApiError::not_found(m)),
        Output::Rejected(m) => Err(ApiError(StatusCode::CONFLICT, m)),
        _ => ok(json!({ "id": wf_name(id), "action": action, "ok": true })),
    }
}

#[utoipa::path(get, path = "/v1/workflows/{id}/steps/{step}/output", tag = "workflows",
    params(("id" = String, Path, description = "Workflow id, like wf-12"), ("step" = String, Path, description = "Step id")),
    responses((status = 200, description = "The step's output (a list for map steps)", body = Object), (status = 404, description = "No such workflow, step or entry", body = ErrorBody)))]
pub(super) async fn output(
    State(app): State<AppState>,
    Path((id, step)): Path<(String, String)>,
) -> Res {
    linearize(&app).await?;
    let id = wf_id(&id)?;
    let m = read(&app)?;
    let wf = workflow(&m, id)?;
    let i = wf
        .spec
        .step_index(&step)
        .ok_or_else(|| ApiError::not_found(format!("{} has no step {step:?}", wf_name(id))))?;
    ok(troupe_scheduler::state::step_output(wf, i))
}
