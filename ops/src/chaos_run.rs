//! `troupe chaos run FILE`: the faults of an experiment on their schedule, while a workload
//! submits workflows with idempotency keys; every client operation (submit, status read, fault)
//! is written to a history file (JSON lines: `op`, `invoke_ms`, `complete_ms`, `outcome`
//! `ok` | `fail` (definitely not done) | `unknown` (may or may not have happened), and the
//! operation's fields), which `troupe chaos verify --history FILE` checks.

use crate::chaos_cli::{nodes, resolve};
use crate::chaos_experiment::{Experiment, Fault, parse};
use crate::client::{Access, Client, retryable};
use anyhow::Context;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long one call to a node may take before the runner tries another node.
const CALL_LIMIT: Duration = Duration::from_secs(5);
/// How long a submit is retried (same key) before it is left as unknown.
const SUBMIT_RETRY_FOR: Duration = Duration::from_secs(60);
const TERMINAL: [&str; 5] = ["succeeded", "degraded", "failed", "cancelled", "timed_out"];

fn wall_ms() -> u64 {
    troupe_node::chaos::system_ms()
}

/// The history file, one JSON object per line, shared by the runner's threads.
#[derive(Clone)]
struct History(Arc<Mutex<std::fs::File>>);

impl History {
    fn record(&self, v: Value) {
        if let Ok(mut f) = self.0.lock() {
            let _ = writeln!(f, "{v}");
        }
    }
}

/// Clients for every node's API; calls go to one, then the next if it does not answer.
struct Cluster {
    clients: Vec<Client>,
}

impl Cluster {
    /// Tries the nodes in turn from `start`; returns the first answer that is not a
    /// connection error or a retryable status, or the last error.
    fn call(
        &self,
        start: usize,
        f: &dyn Fn(&Client) -> anyhow::Result<Value>,
    ) -> anyhow::Result<Value> {
        let mut last = None;
        for i in 0..self.clients.len() {
            let c = &self.clients[(start + i) % self.clients.len()];
            match f(c) {
                Ok(v) => return Ok(v),
                Err(e) if retryable(&e) => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("no node to ask")))
    }
}

pub fn run(
    api: &str,
    access: &Access,
    file: &Path,
    history: Option<PathBuf>,
) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let exp = parse(&text, file).map_err(|e| anyhow::anyhow!(e))?;
    let history = history.unwrap_or_else(|| file.with_extension("history.jsonl"));
    let seed = Client::with_timeout(api, access, CALL_LIMIT)?;
    let listed = nodes(&seed).context("listing the cluster's nodes (GET /v1/chaos/faults)")?;
    let scheme = if api.starts_with("https://") {
        "https"
    } else {
        "http"
    };
    let mut clients = vec![seed];
    for n in &listed {
        if let Some(a) = n["api"].as_str().filter(|a| !a.is_empty()) {
            clients.push(Client::with_timeout(
                &format!("{scheme}://{a}"),
                access,
                CALL_LIMIT,
            )?);
        }
    }
    let cluster = Arc::new(Cluster { clients });
    let f = std::fs::File::create(&history)
        .with_context(|| format!("cannot write the history {}", history.display()))?;
    let hist = History(Arc::new(Mutex::new(f)));
    let mut salt = [0u8; 4];
    getrandom::fill(&mut salt).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    let run_id: String = salt.iter().map(|b| format!("{b:02x}")).collect();
    eprintln!(
        "chaos run {run_id}: {} ({} faults, {} nodes); history in {}",
        if exp.name.is_empty() {
            file.display().to_string()
        } else {
            exp.name.clone()
        },
        exp.faults.len(),
        listed.len(),
        history.display()
    );
    let start = Instant::now();
    let workload = start_workload(&exp, &cluster, &hist, &run_id, start)?;
    let mut injected = 0;
    for f in &exp.faults {
        sleep_until(start + Duration::from_millis(f.at.0 as u64));
        if inject(&cluster, &hist, f, start) {
            injected += 1;
        }
    }
    let healed = exp
        .faults
        .iter()
        .map(|f| (f.at.0 + f.for_.0) as u64)
        .max()
        .unwrap_or(0);
    sleep_until(start + Duration::from_millis(healed + 1_000));
    let acked: Vec<String> = workload
        .map(|h| h.join().unwrap_or_default())
        .unwrap_or_default();
    let settle = exp.workload.as_ref().map_or(0, |w| w.settle.0 as u64);
    let finished = settle_all(&cluster, &hist, &acked, Duration::from_millis(settle));
    eprintln!(
        "chaos run {run_id}: {injected} of {} faults injected; {} workflows acknowledged, {finished} finished; {:.1}s",
        exp.faults.len(),
        acked.len(),
        start.elapsed().as_secs_f64()
    );
    eprintln!("next: troupe chaos verify --history {}", history.display());
    Ok(())
}

fn sleep_until(t: Instant) {
    let now = Instant::now();
    if t > now {
        std::thread::sleep(t - now);
    }
}

/// Starts the fault on the node its selector names now; records it. True if it took.
fn inject(cluster: &Cluster, hist: &History, f: &Fault, start: Instant) -> bool {
    let t = start.elapsed().as_secs_f64();
    let invoke = wall_ms();
    let result = (|| -> anyhow::Result<(String, Value)> {
        let listed = cluster.call(0, &|c| c.get("/v1/chaos/faults"))?;
        let listed = listed["nodes"].as_array().cloned().unwrap_or_default();
        let node = resolve(&listed, &f.node)?;
        let mut body = json!({ "kind": f.kind.name(), "node": node, "for_ms": f.for_.0 });
        if let Some(from) = &f.from {
            let ids = from
                .iter()
                .map(|s| resolve(&listed, s))
                .collect::<anyhow::Result<Vec<_>>>()?;
            body["from"] = json!(ids);
        }
        if let Some(m) = f.mode {
            body["mode"] = json!(m.name());
        }
        if let Some(a) = f.api {
            body["api"] = json!(a);
        }
        if let Some(d) = f.delay {
            body["delay_ms"] = json!(d.0);
        }
        if let Some(s) = f.skew {
            body["skew_ms"] = json!(s.0);
        }
        let v = cluster.call(0, &|c| c.post("/v1/chaos/faults", &body))?;
        Ok((node, v))
    })();
    let mut rec = json!({
        "op": "fault", "kind": f.kind.name(), "selector": f.node, "for_ms": f.for_.0,
        "invoke_ms": invoke, "complete_ms": wall_ms(),
    });
    let ok = match result {
        Ok((node, _)) => {
            eprintln!(
                "  t={t:>5.1}s {} {} ({node}) for {}ms",
                f.kind.name(),
                f.node,
                f.for_.0
            );
            rec["node"] = json!(node);
            rec["outcome"] = json!("ok");
            true
        }
        Err(e) => {
            eprintln!(
                "  t={t:>5.1}s {} {}: not injected: {e:#}",
                f.kind.name(),
                f.node
            );
            rec["outcome"] = json!("fail");
            rec["error"] = json!(format!("{e:#}"));
            false
        }
    };
    hist.record(rec);
    ok
}

type Workload = Option<std::thread::JoinHandle<Vec<String>>>;

/// Submits the workload's workflows at its rate on a thread; returns the acknowledged ids.
fn start_workload(
    exp: &Experiment,
    cluster: &Arc<Cluster>,
    hist: &History,
    run_id: &str,
    start: Instant,
) -> anyhow::Result<Workload> {
    let Some(w) = exp.workload.clone() else {
        return Ok(None);
    };
    let (raw, _) =
        troupe_scheduler::spec::load_file(&w.spec).map_err(|e| anyhow::anyhow!("{e}"))?;
    let spec = serde_json::to_value(&raw)?;
    let interval = w.interval_ms().map_err(|e| anyhow::anyhow!(e))?;
    let (cluster, hist, run_id) = (cluster.clone(), hist.clone(), run_id.to_string());
    Ok(Some(std::thread::spawn(move || {
        let mut acked = Vec::new();
        for i in 0..w.count {
            sleep_until(start + Duration::from_millis(interval * i as u64));
            let key = format!("chaos-{run_id}-{i}");
            if let Some(id) = submit(&cluster, &hist, &spec, &key, i as usize) {
                acked.push(id);
            }
        }
        acked
    })))
}

/// One workflow, retried with the same key until a definite answer (or the time is up).
fn submit(cluster: &Cluster, hist: &History, spec: &Value, key: &str, i: usize) -> Option<String> {
    let body = json!({ "spec": spec, "params": {}, "idempotency_key": key });
    let deadline = Instant::now() + SUBMIT_RETRY_FOR;
    for attempt in 0.. {
        let invoke = wall_ms();
        let r = cluster.call(i + attempt, &|c| c.post("/v1/workflows", &body));
        let mut rec =
            json!({ "op": "submit", "key": key, "invoke_ms": invoke, "complete_ms": wall_ms() });
        match r {
            Ok(v) => {
                let id = v["id"].as_str().unwrap_or_default().to_string();
                rec["outcome"] = json!("ok");
                rec["workflow"] = json!(id);
                rec["created"] = v["created"].clone();
                hist.record(rec);
                return Some(id);
            }
            Err(e) => {
                let again = retryable(&e) && Instant::now() < deadline;
                // A retryable error may have been applied (a lost answer): unknown, not fail.
                rec["outcome"] = json!(if retryable(&e) { "unknown" } else { "fail" });
                rec["error"] = json!(format!("{e:#}"));
                hist.record(rec);
                if !again {
                    return None;
                }
                std::thread::sleep(Duration::from_millis(300));
            }
        }
    }
    None
}

/// Waits (bounded) until every acknowledged workflow has finished; returns how many did.
fn settle_all(cluster: &Cluster, hist: &History, acked: &[String], limit: Duration) -> usize {
    let deadline = Instant::now() + limit;
    let mut done: BTreeSet<&str> = BTreeSet::new();
    while done.len() < acked.len() && Instant::now() < deadline {
        let open: Vec<&String> = acked
            .iter()
            .filter(|id| !done.contains(id.as_str()))
            .collect();
        for id in open {
            let invoke = wall_ms();
            let r = cluster.call(0, &|c| c.get(&format!("/v1/workflows/{id}")));
            let mut rec = json!({ "op": "status", "workflow": id, "invoke_ms": invoke, "complete_ms": wall_ms() });
            match r {
                Ok(v) => {
                    let status = v["status"].as_str().unwrap_or_default().to_string();
                    if TERMINAL.contains(&status.as_str()) {
                        done.insert(id);
                    }
                    rec["outcome"] = json!("ok");
                    rec["status"] = json!(status);
                }
                Err(e) => {
                    rec["outcome"] = json!("unknown");
                    rec["error"] = json!(format!("{e:#}"));
                }
            }
            hist.record(rec);
        }
        if done.len() < acked.len() {
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    done.len()
}

/// The acknowledged submits of a history (for the server's check) and what the history alone
/// shows wrong: one key answered with two workflows.
pub fn acked_from_history(file: &Path) -> anyhow::Result<(Vec<Value>, Vec<String>)> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let mut acked = Vec::new();
    let mut per_key: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (n, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let v: Value = serde_json::from_str(line)
            .with_context(|| format!("{}:{}: not a JSON object", file.display(), n + 1))?;
        if v["op"] == "submit" && v["outcome"] == "ok" {
            let (key, wf) = (v["key"].as_str(), v["workflow"].as_str());
            let Some(wf) = wf else {
                anyhow::bail!(
                    "{}:{}: an ok submit without a workflow",
                    file.display(),
                    n + 1
                );
            };
            acked.push(json!({ "key": key, "workflow": wf }));
            if let Some(k) = key {
                per_key
                    .entry(k.to_string())
                    .or_default()
                    .insert(wf.to_string());
            }
        }
    }
    let local = per_key
        .into_iter()
        .filter(|(_, w)| w.len() > 1)
        .map(|(k, w)| format!("key {k:?} was answered with {} workflows: {:?}", w.len(), w))
        .collect();
    Ok((acked, local))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_history_gives_its_acked_submits_and_flags_a_key_with_two_workflows() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("h.jsonl");
        std::fs::write(
            &f,
            [
                r#"{"op":"submit","key":"a","outcome":"unknown","invoke_ms":1,"complete_ms":2}"#,
                r#"{"op":"submit","key":"a","outcome":"ok","workflow":"wf-1","invoke_ms":3,"complete_ms":4}"#,
                r#"{"op":"submit","key":"b","outcome":"ok","workflow":"wf-2","invoke_ms":3,"complete_ms":4}"#,
                r#"{"op":"submit","key":"b","outcome":"ok","workflow":"wf-3","invoke_ms":5,"complete_ms":6}"#,
                r#"{"op":"fault","kind":"kill","outcome":"ok","invoke_ms":5,"complete_ms":6}"#,
            ]
            .join("\n"),
        )
        .unwrap();
        let (acked, local) = acked_from_history(&f).unwrap();
        assert_eq!(acked.len(), 3);
        assert_eq!(acked[0], json!({ "key": "a", "workflow": "wf-1" }));
        assert_eq!(local.len(), 1);
        assert!(local[0].contains("\"b\""), "{local:?}");
        std::fs::write(&f, "{not json\n").unwrap();
        let e = acked_from_history(&f).unwrap_err().to_string();
        assert!(e.ends_with("h.jsonl:1: not a JSON object"), "{e}");
    }
}
