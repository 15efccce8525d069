//! The dead-letter queue over HTTP: list with filters and paging, bulk redrive and discard (one
//! command, so one log entry, each), and one item's path through the steps.

use super::ApiError;
use super::AppState;
use super::handlers::{Res, linearize, ok, propose, read, wf_id, workflow};
use super::openapi::ErrorBody;
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::json;
use troupe_scheduler::state::parse_wf;
use troupe_scheduler::{Command, DlqFilter, Output, views};

/// Longest `grep` text (it is matched inside apply, on every server).
const GREP_BYTES_MAX: usize = 1024;
/// Most ids one bulk call may name.
const IDS_MAX: usize = 100_000;
/// Largest page of the list.
const PAGE_MAX: usize = 10_000;

/// The filter, as a query string or a JSON body.
#[derive(Deserialize, Default, utoipa::ToSchema, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct FilterBody {
    #[serde(default)]
    ids: Vec<u64>,
    workflow: Option<String>,
    step: Option<String>,
    grep: Option<String>,
    /// A duration (`"2h"`): only entries at most this old.
    since: Option<String>,
    #[serde(default)]
    all: bool,
    /// Discard only: why (kept in the history).
    reason: Option<String>,
    /// List only.
    limit: Option<usize>,
    offset: Option<usize>,
}

impl FilterBody {
    fn filter(&self) -> Result<DlqFilter, ApiError> {
        if self.ids.len() > IDS_MAX {
            return Err(ApiError::bad(format!(
                "{} ids; at most {IDS_MAX} in one call (use a filter)",
                self.ids.len()
            )));
        }
        if self.grep.as_ref().is_some_and(|g| g.len() > GREP_BYTES_MAX) {
            return Err(ApiError::bad(format!(
                "grep is longer than {GREP_BYTES_MAX} bytes"
            )));
        }
        let workflow = self
            .workflow
            .as_deref()
            .map(|w| {
                parse_wf(w).ok_or_else(|| {
                    ApiError::bad(format!("workflow {w:?} is not a workflow id (like wf-12)"))
                })
            })
            .transpose()?;
        let since_ms = self
            .since
            .as_deref()
            .map(|s| {
                troupe_scheduler::units::parse_duration_ms(s)
                    .map_err(|e| ApiError::bad(format!("since: {e}")))
            })
            .transpose()?;
        Ok(DlqFilter {
            ids: self.ids.clone(),
            workflow,
            step: self.step.clone(),
            grep: self.grep.clone(),
            since_ms,
            all: self.all,
        })
    }
}

/// `GET /v1/dlq?workflow=&step=&grep=&since=&limit=&offset=`: matching entries by id, paged.
#[utoipa::path(get, path = "/v1/dlq", tag = "dlq", params(FilterBody),
    responses((status = 200, description = "Matching dead letters, paged", body = super::openapi::DeadLetterPage), (status = 400, description = "Bad request (the message says which field)", body = ErrorBody), (status = 503, description = "No leader, or no quorum confirmed the read; retry", body = ErrorBody)))]
pub(super) async fn list(State(app): State<AppState>, Query(q): Query<FilterBody>) -> Res {
    linearize(&app).await?;
    let filter = q.filter()?;
    let (limit, offset) = (q.limit.unwrap_or(1000).min(PAGE_MAX), q.offset.unwrap_or(0));
    let m = read(&app)?;
    // The node's clock (the one its entries are stamped with; skewed under skew-clock).
    let now = app.chaos.chaos.now_ms();
    let mut total = 0usize;
    let mut page = Vec::new();
    for d in m
        .state
        .sched
        .dlq
        .values()
        .filter(|d| filter.matches(d, now))
    {
        if total >= offset && page.len() < limit {
            page.push(views::dead_letter(d));
        }
        total += 1;
    }
    let next = (offset + page.len() < total).then_some(offset + page.len());
    ok(json!({ "dead_letters": page, "total": total, "offset": offset, "next_offset": next }))
}

/// `POST /v1/dlq/redrive` with a filter: every match runs again, in one command.
#[utoipa::path(post, path = "/v1/dlq/redrive", tag = "dlq", request_body = FilterBody,
    responses((status = 200, description = "How many were redriven, refused, and why", body = Object), (status = 400, description = "Bad request (the message says which field)", body = ErrorBody), (status = 429, description = "The admission queue is full; retry after a second (Retry-After: 1)", body = ErrorBody)))]
pub(super) async fn redrive(State(app): State<AppState>, Json(b): Json<FilterBody>) -> Res {
    let filter = b.filter()?;
    bulk(
        propose(&app, Command::RedriveMany(filter)).await?,
        "redriven",
    )
}

/// `POST /v1/dlq/discard` with a filter and a reason.
#[utoipa::path(post, path = "/v1/dlq/discard", tag = "dlq", request_body = FilterBody,
    responses((status = 200, description = "How many were discarded, refused, and why", body = Object), (status = 400, description = "Bad request (the message says which field)", body = ErrorBody), (status = 429, description = "The admission queue is full; retry after a second (Retry-After: 1)", body = ErrorBody)))]
pub(super) async fn discard(State(app): State<AppState>, Json(b): Json<FilterBody>) -> Res {
    let filter = b.filter()?;
    let reason = b.reason.clone().unwrap_or_default();
    bulk(
        propose(&app, Command::Discard { filter, reason }).await?,
        "discarded",
    )
}

fn bulk(out: Output, what: &str) -> Res {
    match out {
        Output::Bulk {
            applied,
            refused,
            notes,
        } => ok(json!({ what: applied, "refused": refused, "notes": notes })),
        Output::Rejected(m) => Err(ApiError::bad(m)),
        other => Err(ApiError(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("unexpected answer {other:?}"),
        )),
    }
}

/// `POST /v1/dlq/{id}/redrive`: one entry.
#[utoipa::path(post, path = "/v1/dlq/{id}/redrive", tag = "dlq",
    params(("id" = u64, Path, description = "Dead letter id")),
    responses((status = 200, description = "Redriven", body = Object), (status = 404, description = "No such workflow, step or entry", body = ErrorBody),
        (status = 409, description = "Not possible now", body = ErrorBody)))]
pub(super) async fn redrive_one(State(app): State<AppState>, Path(id): Path<u64>) -> Res {
    match propose(&app, Command::Redrive(id)).await? {
        Output::NotFound(m) => Err(ApiError::not_found(m)),
        Output::Rejected(m) => Err(ApiError(StatusCode::CONFLICT, m)),
        _ => ok(json!({ "id": id, "redriven": true })),
    }
}

/// `GET /v1/workflows/{id}/items/{index}`: one item's path through the steps.
#[utoipa::path(get, path = "/v1/workflows/{id}/items/{index}", tag = "workflows",
    params(("id" = String, Path, description = "Workflow id, like wf-12"), ("index" = u32, Path, description = "Item index, from 0")),
    responses((status = 200, description = "The item's path through the steps", body = Object), (status = 404, description = "No such workflow, step or entry", body = ErrorBody)))]
pub(super) async fn item(
    State(app): State<AppState>,
    Path((id, index)): Path<(String, u32)>,
) -> Res {
    linearize(&app).await?;
    let id = wf_id(&id)?;
    let m = read(&app)?;
    let wf = workflow(&m, id)?;
    match views::item(wf, index) {
        Some(v) => ok(serde_json::to_value(v).unwrap_or_default()),
        None => Err(ApiError::not_found(format!(
            "{} has no map step with an item {index}",
            wf.name()
        ))),
    }
}
