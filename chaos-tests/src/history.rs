//! The client-history recorder of the fault-matrix tests: every submit (with its key and a
//! digest of its spec), cancel, status read and redrive a test sends, with its invocation and
//! completion times (µs since the recorder was made) and its outcome, from any thread. The
//! checker is `troupe_scheduler::history` (pure, shared with the simulator): at the end a test
//! calls [`Recorder::check`] with the workflows present in the final state.

use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
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

    fn call(&self, api: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        let url = format!("{api}{path}");
        let r = match body {
            Some(b) => self.agent.post(&url).send_json(b),
            None => self.agent.get(&url).call(),
        };
        match r {
            Ok(mut r) => {
                let status = r.status().as_u16();
                let text = r.body_mut().read_to_string().unwrap_or_default();
                (
                    status,
                    serde_json::from_str(&text).unwrap_or(Value::String(text)),
                )
            }
            Err(e) => (0, Value::String(e.to_string())),
        }
    }

    /// Microseconds since the recorder was made (the clock of its history).
    pub fn elapsed_us(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }

    /// Records `kind` around `call`, which returns its outcome.
    pub fn record(&self, client: u32, kind: Kind, call: impl FnOnce() -> Outcome) -> Outcome {
        let invoke = self.elapsed_us();
        let outcome = call();
        let complete = (!matches!(outcome, Outcome::Unknown)).then(|| self.elapsed_us());
        self.ops.lock().unwrap_or_else(|e| e.into_inner()).push(Op {
            client,
            kind,
            invoke,
            complete,
            outcome: outcome.clone(),
        });
        outcome
    }

    /// `POST API/v1/workflows` with this key (`api`: `http://ADDR`) (if any). 201/200 give the id.
    pub fn submit(&self, client: u32, api: &str, spec: &str, key: Option<&str>) -> Outcome {
        let kind = Kind::Submit {
            key: key.map(str::to_string),
            digest: digest(spec),
        };
        self.record(client, kind, || {
            let mut body = json!({ "spec_toml": spec });
            if let Some(k) = key {
                body["idempotency_key"] = json!(k);
            }
            let (code, v) = self.call(api, "/v1/workflows", Some(&body));
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
    pub fn status(&self, client: u32, api: &str, wf: &str) -> Outcome {
        self.record(client, Kind::Status { wf: wf.into() }, || {
            let (code, v) = self.call(api, &format!("/v1/workflows/{wf}"), None);
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

    fn action(&self, client: u32, api: &str, wf: &str, action: &str) -> Outcome {
        let kind = match action {
            "cancel" => Kind::Cancel { wf: wf.into() },
            _ => Kind::Redrive { wf: wf.into() },
        };
        self.record(client, kind, || {
            let (code, v) = self.call(
                api,
                &format!("/v1/workflows/{wf}/{action}"),
                Some(&json!({})),
            );
            match (code, classify(code, &v)) {
                (_, Ok(())) => Outcome::Ok(Ret::Done),
                (409, _) => Outcome::Ok(Ret::Refused),
                (404, _) => Outcome::Ok(Ret::NotFound),
                (_, Err(o)) => o,
            }
        })
    }

    pub fn cancel(&self, client: u32, api: &str, wf: &str) -> Outcome {
        self.action(client, api, wf, "cancel")
    }

    /// `POST /v1/workflows/ID/retry`.
    pub fn redrive(&self, client: u32, api: &str, wf: &str) -> Outcome {
        self.action(client, api, wf, "retry")
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
        let count = |f: fn(&Op) -> bool| ops.iter().filter(|o| f(o)).count();
        eprintln!(
            "{what}: history of {} ops on {} workflows: {} retryable errors, {} definite, {} unknown; {} violation(s); {} reads, {} cancels applied and {} refused, {} redrives applied",
            r.ops,
            r.workflows_checked,
            r.retryable_errors,
            r.definite_errors,
            r.unknown,
            r.violations.len(),
            count(|o| matches!(o.kind, Kind::Status { .. }) && matches!(o.outcome, Outcome::Ok(_))),
            count(|o| matches!(o.kind, Kind::Cancel { .. }) && o.outcome == Outcome::Ok(Ret::Done)),
            count(
                |o| matches!(o.kind, Kind::Cancel { .. }) && o.outcome == Outcome::Ok(Ret::Refused)
            ),
            count(|o| matches!(o.kind, Kind::Redrive { .. }) && o.outcome == Outcome::Ok(Ret::Done)),
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
        assert_catches_tampering(what, &ops, present);
        r
    }
}

/// The checker is not vacuous on this real history: a read of `running` added just after a read
/// that showed a workflow finished (one never redriven) must fail it, and so must a final state
/// missing one acknowledged workflow.
fn assert_catches_tampering(what: &str, ops: &[Op], present: &BTreeSet<String>) {
    let redriven: BTreeSet<&str> = ops
        .iter()
        .filter_map(|o| match &o.kind {
            Kind::Redrive { wf } => Some(wf.as_str()),
            _ => None,
        })
        .collect();
    let finished = ops
        .iter()
        .find_map(|o| match (&o.kind, &o.outcome, o.complete) {
            (Kind::Status { wf }, Outcome::Ok(Ret::Status(p)), Some(t))
                if *p != Phase::Running
                    && *p != Phase::Absent
                    && !redriven.contains(wf.as_str()) =>
            {
                Some((wf.clone(), t))
            }
            _ => None,
        });
    if let Some((wf, t)) = finished {
        let mut bad = ops.to_vec();
        bad.push(Op {
            client: 999,
            kind: Kind::Status { wf: wf.clone() },
            invoke: t + 1,
            complete: Some(t + 2),
            outcome: Outcome::Ok(Ret::Status(Phase::Running)),
        });
        let r = check(&bad, Some(present));
        assert!(
            r.violations
                .iter()
                .any(|v| matches!(v, Violation::NotLinearizable { wf: w, .. } if *w == wf)),
            "{what}: a read going back in time on {wf} was not caught: {r:?}"
        );
        eprintln!(
            "{what}: the checker catches a read of {wf} going back in time added to this history"
        );
    }
    if let Some(Outcome::Ok(Ret::Submitted { id, .. })) = ops
        .iter()
        .map(|o| &o.outcome)
        .find(|o| matches!(o, Outcome::Ok(Ret::Submitted { .. })))
    {
        let mut fewer = present.clone();
        fewer.remove(id);
        let r = check(ops, Some(&fewer));
        assert!(
            r.violations
                .contains(&Violation::LostAck { id: id.clone() }),
            "{what}: a lost acknowledged {id} was not caught"
        );
    }
}

/// Client threads that submit keyed workflows, read their status, now and then send a key again
/// (same spec, and once in a while another spec: a 409), and (client 0) cancel the workflow they
/// just submitted and redrive (`retry`) it once cancelled, recording everything, until stopped
/// (or `OPS_MAX` operations each).
pub struct Workload {
    pub rec: Arc<Recorder>,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

/// Operations per client at most (every loop is bounded).
pub const OPS_MAX: u32 = 2_000;

impl Workload {
    /// `clients` threads over `apis` (round-robin, a failed call moves to the next), each
    /// submitting `spec(client, n)` under key `c<client>-<n>`, pausing `pace` between ops.
    pub fn start(
        rec: Arc<Recorder>,
        apis: Vec<String>,
        clients: u32,
        pace: Duration,
        spec: fn(u32, u32) -> String,
    ) -> Workload {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..clients)
            .map(|c| {
                let (rec, stop, apis) = (rec.clone(), stop.clone(), apis.clone());
                std::thread::spawn(move || client(c, &rec, &stop, &apis, pace, spec))
            })
            .collect();
        Workload { rec, stop, threads }
    }

    /// Stops the clients and waits for them (each finishes its current call).
    pub fn stop(mut self) -> Arc<Recorder> {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        self.rec.clone()
    }
}

fn client(
    c: u32,
    rec: &Recorder,
    stop: &AtomicBool,
    apis: &[String],
    pace: Duration,
    spec: fn(u32, u32) -> String,
) {
    let mut at = c as usize;
    let mut acked: Vec<(u32, String)> = Vec::new();
    let mut cancelled: Option<String> = None;
    let mut n = 0;
    for op in 0..OPS_MAX {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let api = &apis[at % apis.len()];
        let out = match op % 4 {
            // Client 0: cancel what it just submitted (it may have finished: a 409), and
            // redrive it if the cancel took.
            1 if c == 0 && op % 20 == 1 && !acked.is_empty() => {
                let id = acked[acked.len() - 1].1.clone();
                let out = rec.cancel(c, api, &id);
                if out == Outcome::Ok(Ret::Done) {
                    cancelled = Some(id);
                }
                out
            }
            3 if c == 0 && cancelled.is_some() => {
                let id = cancelled.take().unwrap_or_default();
                rec.redrive(c, api, &id)
            }
            // Submit a new key, or send an old one again (its id must come back).
            // Once in a while, another spec under a key already acknowledged: must be a 409.
            2 if op % 40 == 38 && !acked.is_empty() => {
                let k = acked[0].0;
                rec.submit(c, api, &spec(c, k + 100_000), Some(&format!("c{c}-{k}")))
            }
            0 | 2 => {
                let again = op % 8 == 6 && !acked.is_empty();
                let k = if again {
                    acked[op as usize % acked.len()].0
                } else {
                    n
                };
                let out = rec.submit(c, api, &spec(c, k), Some(&format!("c{c}-{k}")));
                if let Outcome::Ok(Ret::Submitted { id, .. }) = &out
                    && !again
                {
                    acked.push((k, id.clone()));
                }
                // A key whose answer was lost is sent again next time (same spec).
                if !again && matches!(out, Outcome::Ok(_)) {
                    n += 1;
                }
                out
            }
            _ => match acked.last() {
                Some((_, id)) => rec.status(c, api, id),
                None => continue,
            },
        };
        if !matches!(out, Outcome::Ok(_)) {
            at += 1;
        }
        std::thread::sleep(pace);
    }
}

/// Waits (bounded) until no workflow runs, as the first of `apis` that answers sees it;
/// returns every workflow id then present.
pub fn settle(apis: &[String], limit: Duration) -> BTreeSet<String> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(5)))
        .build()
        .into();
    let get = |url: String| -> Option<Value> {
        let mut r = agent.get(&url).call().ok()?;
        if r.status().as_u16() != 200 {
            return None;
        }
        serde_json::from_str(&r.body_mut().read_to_string().ok()?).ok()
    };
    let deadline = Instant::now() + limit;
    let mut last = String::new();
    loop {
        for api in apis {
            let Some(running) = get(format!("{api}/v1/workflows?status=running&limit=10000"))
            else {
                continue;
            };
            let n = running["workflows"]
                .as_array()
                .map(|a| a.len())
                .unwrap_or(usize::MAX);
            if n == 0
                && let Some(all) = get(format!("{api}/v1/workflows?limit=10000"))
            {
                return all["workflows"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|w| w["id"].as_str().map(str::to_string))
                    .collect();
            }
            last = format!("{n} running at {api}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not settled in {limit:?}: {last}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Waits (at most 10 s) for a node of `apis` that says it is the leader; returns its index and
/// its health answer.
pub fn wait_leader(apis: &[String]) -> (usize, Value) {
    wait_health(apis, Duration::from_secs(10), "a leader", |h| {
        h["leader"] == true
    })
}

/// Waits (bounded) until some node of `apis` answers `GET /v1/health` with `f` true; returns
/// its index and answer.
pub fn wait_health(
    apis: &[String],
    limit: Duration,
    what: &str,
    f: impl Fn(&Value) -> bool,
) -> (usize, Value) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(1)))
        .build()
        .into();
    let deadline = Instant::now() + limit;
    loop {
        for (i, api) in apis.iter().enumerate() {
            if let Ok(mut r) = agent.get(&format!("{api}/v1/health")).call()
                && let Ok(text) = r.body_mut().read_to_string()
                && let Ok(v) = serde_json::from_str::<Value>(&text)
                && f(&v)
            {
                return (i, v);
            }
        }
        assert!(Instant::now() < deadline, "waited {limit:?} for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Every accepted success the final state records, counted per workflow: the items that
/// succeeded in each step of every workflow of `present` (through the first of `apis` that
/// answers). With each task's result accepted once, the replicated `tasks_succeeded` equals it.
pub fn succeeded_items(apis: &[String], present: &BTreeSet<String>) -> u64 {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(5)))
        .build()
        .into();
    let mut total = 0;
    for id in present {
        let detail = apis.iter().find_map(|api| {
            let mut r = agent.get(&format!("{api}/v1/workflows/{id}")).call().ok()?;
            (r.status().as_u16() == 200).then_some(())?;
            serde_json::from_str::<Value>(&r.body_mut().read_to_string().ok()?).ok()
        });
        let detail = detail.unwrap_or_else(|| panic!("{id}: no detail from any server"));
        total += detail["step_runs"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|s| s["succeeded"].as_u64().unwrap_or(0))
            .sum::<u64>();
    }
    total
}
