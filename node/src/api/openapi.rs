//! `GET /v1/openapi.json`: the OpenAPI document of the API, derived with `utoipa` from the
//! handlers (`#[utoipa::path]` on each) and their request types (`ToSchema`, `IntoParams`).
//! Answers whose body is a view of the state (`troupe_scheduler::views`) are described as
//! objects here; their fields are in docs/operations.md.

use axum::Json;
use serde::Serialize;
use utoipa::{OpenApi, ToSchema};

/// Every error answer.
#[derive(Serialize, ToSchema)]
pub(super) struct ErrorBody {
    /// What went wrong and what to do next.
    error: String,
}

/// The answer to a submit.
#[derive(Serialize, ToSchema)]
pub(super) struct Submitted {
    /// The workflow id, like `wf-12`.
    id: String,
    /// `false`: an earlier submission with the same idempotency key.
    created: bool,
}

/// A list of workflow summaries, newest first.
#[derive(Serialize, ToSchema)]
pub(super) struct WorkflowList {
    #[schema(value_type = Vec<Object>)]
    workflows: Vec<serde_json::Value>,
}

/// A page of dead letters.
#[derive(Serialize, ToSchema)]
pub(super) struct DeadLetterPage {
    #[schema(value_type = Vec<Object>)]
    dead_letters: Vec<serde_json::Value>,
    total: u64,
    offset: u64,
    next_offset: Option<u64>,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Troupe API",
        description = "The HTTP API of a Troupe node. Any node answers: followers and workers forward to the leader (see docs/operations.md)."
    ),
    paths(
        super::admin::health,
        crate::metrics::serve,
        document,
        super::admin::inject_panic,
        super::chaos::inject,
        super::chaos::list,
        super::chaos_verify::verify,
        super::handlers::submit,
        super::handlers::list,
        super::handlers::detail,
        super::handlers::control,
        super::handlers::output,
        super::logs::logs,
        super::logs::node_logs_here,
        super::dlq::item,
        super::admin::nodes,
        super::admin::drain,
        super::admin::servers,
        super::admin::change_servers,
        super::dlq::list,
        super::dlq::redrive,
        super::dlq::discard,
        super::dlq::redrive_one,
    ),
    components(schemas(ErrorBody, Submitted, WorkflowList, DeadLetterPage, crate::chaos::fault::FaultRequest, super::chaos_verify::VerifyBody)),
    tags(
        (name = "workflows", description = "Submit, follow and control workflows"),
        (name = "dlq", description = "The dead-letter queue"),
        (name = "cluster", description = "Nodes and servers"),
        (name = "operations", description = "Health, metrics, this document, fault injection"),
    )
)]
pub struct ApiDoc;

/// This document.
#[utoipa::path(get, path = "/v1/openapi.json", tag = "operations",
    responses((status = 200, description = "The OpenAPI 3 document of this API", content_type = "application/json", body = Object)))]
pub(super) async fn document() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every route the router serves is in the document, with its method.
    #[test]
    fn every_route_is_documented() {
        let doc = serde_json::to_value(ApiDoc::openapi()).expect("the document serializes");
        let paths = doc["paths"].as_object().expect("paths");
        let routes = super::super::handlers::local_routes()
            .list
            .into_iter()
            .chain(super::super::handlers::leader_routes().list)
            .chain(super::super::chaos::ROUTES);
        let mut n = 0;
        for (method, path) in routes {
            let m = method.as_str().to_ascii_lowercase();
            assert!(
                paths.get(path).and_then(|p| p.get(&m)).is_some(),
                "{method} {path} is served but not in the OpenAPI document"
            );
            n += 1;
        }
        assert_eq!(
            n,
            paths
                .values()
                .map(|p| p.as_object().map_or(0, |o| o.len()))
                .sum::<usize>(),
            "the document names a route the router does not serve"
        );
    }
}
