//! The client-history recorder of the fault-matrix tests: every submit (with its key and a
//! digest of its spec), cancel, status read and redrive a test sends, with its invocation and
//! completion times (µs since the recorder was made) and its outcome, from any thread. The
//! checker is `troupe_scheduler::history` (pure, shared with the simulator): at the end a test
//! calls [`Recorder::check`] with the workflows present in the final state.

use crate::TestNode;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Mutex;
use std::time::{Duration, Instant};
pub use troupe_scheduler::history::{Kind, Op, Outcome, Phase, Report, Ret, Violation, check};

pub struct Recorder {
    start: Instant,
    ops: Mutex<Vec<Op>>,
    agent: ureq::Agent,
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}

/// A stable digest of what a submit sends (spec text and params).
pub fn digest(spec: &str) -> u64 {
    let mut h = DefaultHasher::new();
    spec.hash(&mut h);
    h.finish()
}

/// How an HTTP answer (or transport error, code 0) counts. `retryable`: 503, 429, 504, and
/// transport errors (refused, reset, timed out: the request may have been applied).
fn classify(code: u16, body: &Value) -> Result<(), Outcome> {
    match code {
        200 | 201 => Ok(()),
        0 => {
            let text = body.as_str().unwrap_or("").to_ascii_lowercase();
            if text.contains("timeout") || text.contains("timed out") {
                Err(Outcome::Unknown)
            } else {
                Err(Outcome::Fail {
                    retryable: true,
                    why: text,
                })
            }
        }
        429 | 502 | 503 | 504 => Err(Outcome::Fail {
            retryable: true,
            why: format!("{code}: {body}"),
        }),
        _ => Err(Outcome::Fail {
            retryable: false,
            why: format!("{code}: {body}"),
        }),
    }
}

impl Recorder {
    /// A recorder whose calls wait at most 10 s for an answer (then: unknown).
    pub fn new() -> Recorder {
        Self::with_timeout(Duration::from_secs(10))
    }

    pub fn with_timeout(limit: Duration) -> Recorder {
        Recorder {
            start: Instant::now(),
            ops: Mutex::new(Vec::new()),
            agent: ureq::Agent::config_builder()
                .http_status_as_error(false)
                .timeout_global(Some(limit))
                .build()
                .into(),
        }
    }

    fn call(&self, node: &TestNode, path: &str, body: Option<&Value>) -> (u16, Value) {
        let url = format!("{}{path}", node.api);
        let auth = node.token.as_ref().map(|t| format!("Bearer {t}"));
        let r = match body {
            Some(b) => {
                let mut r = self.agent.post(&url);
                if let Some(a) = &auth {
                    r = r.header("authorization", a);
                }
                r.send_json(b)
            }
            None => {
                let mut r = self.agent.get(&url);
                if let Some(a) = &auth {
                    r = r.header("authorization", a);
                }
                r.call()
            }
        };
        match r {
            Ok(mut r) => {
                let status = r.status().as_u16();
                let text = r.body_mut().read_to_string().unwrap_or_default();
                (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
            }
            Err(e) => (0, Value::String(e.to_string())),
        }
    }

    fn now(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }

    /// Records `kind` around `call`, which returns its outcome.
    pub fn record(&self, client: u32, kind: Kind, call: impl FnOnce() -> Outcome) -> Outcome {
        let invoke = self.now();
        let outcome = call();
        let complete = (!matches!(outcome, Outcome::Unknown)).then(|| self.now());
        self.ops.lock().unwrap_or_else(|e| e.into_inner()).push(Op {
            client,
            kind,
            invoke,
            complete,
            outcome: outcome.clone(),
        });
        outcome
    }

    /// `POST /v1/workflows` with this key (if any). 201/200 give the id.
    pub fn submit(&self, client: u32, node: &TestNode, spec: &str, key: Option<&str>) -> Outcome {
        let kind = Kind::Submit {
            key: key.map(str::to_string),
            digest: digest(spec),
        };
        self.record(client, kind, || {
            let mut body = json!({ "spec_toml": spec });
            if let Some(k) = key {
                body["idempotency_key"] = json!(k);
            }
            let (code, v) = self.call(node, "/v1/workflows", Some(&body));
            match (code, classify(code, &v)) {
                (_, Ok(())) => match v["id"].as_str() {
                    Some(id) => Outcome::Ok(Ret::Submitted {
                        id: id.to_string(),
                        created: code == 201,
                    }),
                    None => Outcome::Fail {
                        retryable: false,
                        why: format!("no id in {v}"),
                    },
                },
                (409, _) => Outcome::Ok(Ret::KeyConflict),
                (_, Err(o)) => o,
            }
        })
    }

    /// `GET /v1/workflows/ID` (404: absent).
    pub fn status(&self, client: u32, node: &TestNode, wf: &str) -> Outcome {
        self.record(client, Kind::Status { wf: wf.into() }, || {
            let (code, v) = self.call(node, &format!("/v1/workflows/{wf}"), None);
            if code == 404 {
                return Outcome::Ok(Ret::Status(Phase::Absent));
            }
            match classify(code, &v) {
                Ok(()) => match v["status"].as_str().and_then(Phase::parse) {
                    Some(p) => Outcome::Ok(Ret::Status(p)),
                    None => Outcome::Fail {
                        retryable: false,
                        why: format!("unknown status in {v}"),
                    },
                },
                Err(o) => o,
            }
        })
    }

    fn action(&self, client: u32, node: &TestNode, wf: &str, action: &str) -> Outcome {
        let kind = match action {
            "cancel" => Kind::Cancel { wf: wf.into() },
            _ => Kind::Redrive { wf: wf.into() },
        };
        self.record(client, kind, || {
            let (code, v) = self.call(node, &format!("/v1/workflows/{wf}/{action}"), Some(&json!({})));
            match (code, classify(code, &v)) {
                (_, Ok(())) => Outcome::Ok(Ret::Done),
                (409, _) => Outcome::Ok(Ret::Refused),
                (404, _) => Outcome::Ok(Ret::NotFound),
                (_, Err(o)) => o,
            }
        })
    }

    pub fn cancel(&self, client: u32, node: &TestNode, wf: &str) -> Outcome {
        self.action(client, node, wf, "cancel")
    }

    /// `POST /v1/workflows/ID/retry`.
    pub fn redrive(&self, client: u32, node: &TestNode, wf: &str) -> Outcome {
        self.action(client, node, wf, "retry")
    }

    pub fn ops(&self) -> Vec<Op> {
        self.ops.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The ids of every acknowledged submit.
    pub fn acked(&self) -> BTreeSet<String> {
        self.ops()
            .into_iter()
            .filter_map(|o| match o.outcome {
                Outcome::Ok(Ret::Submitted { id, .. }) => Some(id),
                _ => None,
            })
            .collect()
    }

    /// Checks the history against the model; `present`: every workflow id in the final state.
    pub fn check(&self, present: &BTreeSet<String>) -> Report {
        check(&self.ops(), Some(present))
    }

    /// [`Recorder::check`], panicking with the offending operations on any violation; prints
    /// the figures.
    pub fn assert_ok(&self, what: &str, present: &BTreeSet<String>) -> Report {
        let ops = self.ops();
        let r = check(&ops, Some(present));
        eprintln!(
            "{what}: history of {} ops on {} workflows: {} retryable errors, {} definite, {} unknown; {} violation(s)",
            r.ops,
            r.workflows_checked,
            r.retryable_errors,
            r.definite_errors,
            r.unknown,
            r.violations.len()
        );
        if !r.ok() {
            let detail: Vec<String> = r
                .violations
                .iter()
                .map(|v| match v {
                    Violation::NotLinearizable { wf, ops: idx } => format!(
                        "{wf} not linearizable:\n  {}",
                        idx.iter()
                            .map(|&i| format!("{:?}", ops[i]))
                            .collect::<Vec<_>>()
                            .join("\n  ")
                    ),
                    other => format!("{other:?}"),
                })
                .collect();
            panic!(
                "{what}: history check failed (unchecked: {:?}):\n{}",
                r.unchecked,
                detail.join("\n")
            );
        }
        r
    }
}

/// Every workflow id the cluster lists (`GET /v1/workflows`, newest 10,000), or `None` if the
/// node did not answer.
pub fn present(node: &TestNode) -> Option<BTreeSet<String>> {
    let (code, v) = node.get("/v1/workflows?limit=10000");
    if code != 200 {
        return None;
    }
    let list = v["workflows"].as_array().or_else(|| v.as_array())?;
    Some(
        list.iter()
            .filter_map(|w| w["id"].as_str().map(str::to_string))
            .collect(),
    )
}
