//! OpenTelemetry traces (`--otlp-endpoint URL`, off by default): a span per workflow, step and
//! attempt, sent over OTLP/HTTP protobuf (`POST <endpoint>/v1/traces`).
//!
//! - Spans are built after the fact from applied log times (`spans.rs`), so nothing is held
//!   open across failovers and no state passes between nodes. Ids are derived, not random: the
//!   trace id hashes `--otlp-cluster` and the workflow id, a span id also the step, item and
//!   attempt, so every node computes them alike.
//! - Every attempt's span is sent by the leader as the command that ended it applies (success,
//!   failure, lost with its node, stopped): `troupe_actors::attempts` records those, process
//!   local, so the replicated state keeps no per-attempt history. The workflow's and its
//!   steps' spans are sent when the workflow ends.
//! - The attempt's span is the parent of a task's own spans: the runner passes its W3C
//!   context as `TRACEPARENT` (`00-<trace id>-<span id>-01`) to processes, and as the
//!   `"traceparent"` key of each task of a worker batch; a worker process gets its step's
//!   span as `TRACEPARENT`.
//! - At most once: a leader that dies before exporting loses those spans; a retried workflow
//!   that ends again sends its workflow and step spans again (same ids).

pub(crate) mod export;
pub mod proto;
pub mod spans;

use proto::Value;
use sha2::{Digest, Sha256};
use std::sync::{Arc, OnceLock};
use troupe_actors::attempts::Ended;
use troupe_actors::machine::Observer;
use troupe_scheduler::{Effect, State};

/// `--otlp-endpoint` and `--otlp-cluster`.
#[derive(Debug, Clone)]
pub struct OtelConfig {
    /// Where spans go: `<endpoint>/v1/traces` (the path is used as given if it ends so).
    pub endpoint: String,
    /// Names this cluster in the trace ids (the same on every node of a cluster). Empty: the
    /// node id for `troupe dev`, `troupe` for a cluster.
    pub cluster: String,
}

impl OtelConfig {
    pub fn new(endpoint: &str, cluster: String) -> Result<Self, String> {
        let url = if endpoint.trim_end_matches('/').ends_with("/v1/traces") {
            endpoint.to_string()
        } else {
            format!("{}/v1/traces", endpoint.trim_end_matches('/'))
        };
        let uri: hyper::Uri = url
            .parse()
            .map_err(|e| format!("--otlp-endpoint {endpoint:?} is not a valid URL: {e}"))?;
        if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
            return Err(format!(
                "--otlp-endpoint {endpoint:?} must be http:// or https:// and name a host"
            ));
        }
        Ok(OtelConfig {
            endpoint: url,
            cluster,
        })
    }
}

/// Spans of what ended longer ago than this (log time) are not sent: a log replayed at start
/// does not send its old spans again.
pub const REPLAYED_MS: u64 = 10 * 60 * 1000;

/// The cluster name of the trace ids, set when traces are on (the runner reads it for
/// `TRACEPARENT`).
static CLUSTER: OnceLock<String> = OnceLock::new();

fn digest(parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p);
    }
    h.finalize().into()
}

fn first<const N: usize>(d: [u8; 32]) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&d[..N]);
    // All-zero ids are invalid in W3C and OTLP.
    if out.iter().all(|b| *b == 0) {
        out[N - 1] = 1;
    }
    out
}

/// The trace of workflow `wf` (`wf-12`).
pub fn trace_id(cluster: &str, wf: &str) -> [u8; 16] {
    first(digest(&[
        b"troupe.trace",
        cluster.as_bytes(),
        wf.as_bytes(),
    ]))
}

pub(crate) fn workflow_span(cluster: &str, wf: &str) -> [u8; 8] {
    first(digest(&[
        b"troupe.workflow",
        cluster.as_bytes(),
        wf.as_bytes(),
    ]))
}

pub(crate) fn step_span(cluster: &str, wf: &str, step: u16) -> [u8; 8] {
    first(digest(&[
        b"troupe.step",
        cluster.as_bytes(),
        wf.as_bytes(),
        &step.to_le_bytes(),
    ]))
}

pub(crate) fn attempt_span(cluster: &str, wf: &str, step: u16, item: u32, attempt: u32) -> [u8; 8] {
    first(digest(&[
        b"troupe.attempt",
        cluster.as_bytes(),
        wf.as_bytes(),
        &step.to_le_bytes(),
        &item.to_le_bytes(),
        &attempt.to_le_bytes(),
    ]))
}

/// The W3C `traceparent` of an attempt's span: `00-<32 hex>-<16 hex>-01`.
pub fn traceparent(cluster: &str, wf: &str, step: u16, item: u32, attempt: u32) -> String {
    use crate::notify::sign::hex;
    format!(
        "00-{}-{}-01",
        hex(&trace_id(cluster, wf)),
        hex(&attempt_span(cluster, wf, step, item, attempt))
    )
}

/// The W3C `traceparent` of a step's span (a worker process's `TRACEPARENT`).
pub fn step_traceparent(cluster: &str, wf: &str, step: u16) -> String {
    use crate::notify::sign::hex;
    format!(
        "00-{}-{}-01",
        hex(&trace_id(cluster, wf)),
        hex(&step_span(cluster, wf, step))
    )
}

/// `TRACEPARENT` of a worker step's processes when traces are on: the step's span.
pub fn worker_traceparent(wf: &str, step: u16) -> Option<String> {
    Some(step_traceparent(CLUSTER.get()?, wf, step))
}

/// `TRACEPARENT` for an attempt when traces are on.
pub fn attempt_traceparent(spec: &troupe_scheduler::RunSpec) -> Option<String> {
    let c = CLUSTER.get()?;
    Some(traceparent(
        c,
        &spec.workflow,
        spec.task.step,
        spec.task.item,
        spec.attempt,
    ))
}

/// The exporter, started once per process.
#[derive(Clone)]
pub struct Tracer {
    cluster: String,
    outbox: Arc<export::Outbox>,
}

impl Tracer {
    /// Starts the export task (inside the runtime) and turns `TRACEPARENT` on.
    pub fn start(cfg: &OtelConfig, node: &str) -> Tracer {
        let _ = CLUSTER.set(cfg.cluster.clone());
        let resource = vec![
            ("service.name", Value::Str("troupe".into())),
            ("troupe.node", Value::Str(node.to_string())),
            ("troupe.cluster", Value::Str(cfg.cluster.clone())),
        ];
        Tracer {
            cluster: cfg.cluster.clone(),
            outbox: export::start(cfg.endpoint.clone(), resource),
        }
    }

    pub fn observer(&self) -> Box<dyn Observer> {
        Box::new(self.clone())
    }
}

impl Observer for Tracer {
    fn wants_attempts(&self) -> bool {
        true
    }

    fn attempts(&mut self, state: &State, ended: &[Ended], now_ms: u64, is_leader: bool) {
        if is_leader {
            let recent = |at: u64| at.saturating_add(REPLAYED_MS) >= now_ms;
            self.outbox.push(
                ended
                    .iter()
                    .filter(|e| recent(e.ended_ms))
                    .filter_map(|e| spans::attempt(&self.cluster, state, e))
                    .collect(),
            );
        }
    }

    fn observe(&mut self, state: &State, effects: &[Effect], now_ms: u64, is_leader: bool) {
        if !is_leader {
            return;
        }
        for e in effects {
            if let Effect::Finished(id) = e
                && let Some(wf) = state.workflows.get(id)
                && wf.status.is_terminal()
                && wf.finished_ms.unwrap_or(0).saturating_add(REPLAYED_MS) >= now_ms
            {
                self.outbox.push(spans::workflow(&self.cluster, wf));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_derived_and_the_traceparent_is_w3c() {
        let a = traceparent("c", "wf-1", 0, 7, 2);
        assert_eq!(a, traceparent("c", "wf-1", 0, 7, 2));
        let parts: Vec<&str> = a.split('-').collect();
        assert_eq!(parts.len(), 4, "{a}");
        assert_eq!((parts[0], parts[3]), ("00", "01"));
        assert_eq!(parts[1].len(), 32);
        assert_eq!(parts[2].len(), 16);
        assert_eq!(parts[1], crate::notify::sign::hex(&trace_id("c", "wf-1")));
        assert_ne!(a, traceparent("c", "wf-1", 0, 7, 3));
        assert_ne!(trace_id("c", "wf-1"), trace_id("d", "wf-1"));
    }

    #[test]
    fn the_endpoint_gets_the_traces_path() {
        let c = OtelConfig::new("http://127.0.0.1:4318", "x".into()).unwrap();
        assert_eq!(c.endpoint, "http://127.0.0.1:4318/v1/traces");
        let c = OtelConfig::new("http://h/v1/traces", "x".into()).unwrap();
        assert_eq!(c.endpoint, "http://h/v1/traces");
        assert!(OtelConfig::new("ftp://h", "x".into()).is_err());
    }
}
