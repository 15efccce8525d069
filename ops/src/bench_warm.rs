//! `troupe bench --only warm,warm-noop` (and `warm100k`, only when named): warm worker steps.
//!
//! - `warm`: the issue's batch-scoring workload: N = 200 items, a worker that loads for 1.0 s
//!   and spends 5 ms of CPU per item, batch 8, 2 slots; against the ideal (load + N x 5 ms / 2).
//! - `warm100k`: the same with N = 100,000 (about 4.5 minutes).
//! - `warm-noop`: items/s of a no-op worker step (batch 64) on one node, fsync on, with a Python
//!   worker; `warm-noop-rust`: the same with `troupe bench-worker`, a no-op worker in Rust (so
//!   the figure is Troupe's, not the worker's JSON parsing).
//!
//! The worker is a standalone Python script written into the node's data dir (the protocol in
//! a few lines, so the bench does not depend on where clients/python is).

use crate::bench::Node;
use anyhow::Context;

/// The bench worker: `argv[1]` seconds of load, `argv[2]` ms of busy CPU per item.
pub(crate) const WORKER: &str = r#"
import json, sys, time
load_s, item_ms = float(sys.argv[1]), float(sys.argv[2]) / 1000.0
time.sleep(load_s)
out = sys.stdout
out.write('{"ready": true}\n'); out.flush()
for line in sys.stdin:
    tasks = json.loads(line)["tasks"]
    res = []
    for t in tasks:
        if item_ms > 0:
            end = time.perf_counter() + item_ms
            while time.perf_counter() < end:
                pass
        res.append({"id": t["id"], "output": t["item"]})
    out.write(json.dumps({"results": res}) + "\n"); out.flush()
"#;

/// Two slots: two workers. A worker step's items do not take the node's credits (its workers
/// do), so the default queue is enough: each worker holds up to 4 batches.
const NOOP_NODE: [&str; 2] = ["--slots", "2"];

pub(crate) fn spec(
    script: &std::path::Path,
    n: u64,
    batch: u32,
    load_s: f64,
    item_ms: f64,
) -> String {
    let argv = format!(
        "{:?}, \"{}\", \"{load_s}\", \"{item_ms}\"",
        python(),
        script.display()
    );
    spec_argv(&argv, n, batch)
}

/// The Python interpreter by its real path (`sys.executable`), found once. A `python3` on the
/// PATH may be a version manager's shim (pyenv's is a shell script): on this machine it adds
/// 60-150 ms to every worker start, which is not Troupe's and which Ray's figure does not pay
/// (its worker processes are started by `ray.init()`, before the timing). Falls back to
/// `python3`.
fn python() -> &'static str {
    static PY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    PY.get_or_init(|| {
        std::process::Command::new("python3")
            .args(["-c", "import sys; print(sys.executable)"])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "python3".to_string())
    })
}

fn spec_argv(argv: &str, n: u64, batch: u32) -> String {
    format!(
        r#"name = "warm-bench"
[[step]]
id = "score"
map = {{ range = [0, {n}] }}
parallelism = 100000
worker = {{ run = [{argv}], batch = {batch}, max_wait = "5ms" }}
"#
    )
}

/// `troupe bench-worker`: the no-op worker of `warm-noop-rust`. Hand-written over serde_json
/// because it is the thing being kept out of the measurement.
pub fn noop_worker() -> anyhow::Result<()> {
    use std::io::{BufRead, Write};
    let stdin = std::io::stdin().lock();
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    out.write_all(b"{\"ready\": true}\n")?;
    out.flush()?;
    for line in stdin.lines() {
        let v: serde_json::Value = serde_json::from_str(&line?)?;
        let results: Vec<serde_json::Value> = v["tasks"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|t| serde_json::json!({ "id": t["id"], "output": t["item"] }))
            .collect();
        serde_json::to_writer(&mut out, &serde_json::json!({ "results": results }))?;
        out.write_all(b"\n")?;
        out.flush()?;
    }
    Ok(())
}

/// Seconds for N items of the Rust no-op worker on a fresh node.
fn once_rust(n: u64, batch: u32, node_args: &[&str], fsync: bool) -> anyhow::Result<f64> {
    let (node, _) = Node::start(node_args, fsync)?;
    let me = std::env::current_exe().context("the troupe binary's path")?;
    let argv = format!("\"{}\", \"bench-worker\"", me.display());
    node.run(&spec_argv(&argv, n, batch))
}

/// Seconds for N items on a fresh node with `slots` slots.
fn once(
    n: u64,
    batch: u32,
    load_s: f64,
    item_ms: f64,
    node_args: &[&str],
    fsync: bool,
) -> anyhow::Result<f64> {
    let (node, _) = Node::start(node_args, fsync)?;
    // Timed from the submit to a running node (registered, capacity read), as Ray's figure is
    // timed after `ray.init()`.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while node.client.get("/v1/nodes").ok().and_then(|v| {
        v["nodes"]
            .as_array()
            .map(|a| a.iter().any(|n| n["status"] == "up"))
    }) != Some(true)
    {
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "the node did not register"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }

    let script = node.dir.join("bench_worker.py");
    std::fs::write(&script, WORKER).context("writing the bench worker")?;
    node.run(&spec(&script, n, batch, load_s, item_ms))
}

/// Prints one workload's line: name, runs, unit, how to show the median.
pub type Report = dyn Fn(&str, Vec<f64>, &str, &dyn Fn(f64) -> String);

pub fn run(
    want: &dyn Fn(&str) -> bool,
    named: &dyn Fn(&str) -> bool,
    runs: usize,
    fsync: bool,
    report: &Report,
) -> anyhow::Result<()> {
    if want("warm") {
        let v = (0..runs)
            .map(|_| once(200, 8, 1.0, 5.0, &["--slots", "2"], fsync))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let ideal = 1.0 + 200.0 * 0.005 / 2.0;
        report(
            "warm worker: 200 items, 1.0 s load, 5 ms each, batch 8, 2 slots (ideal 1.5 s)",
            v,
            "s",
            &|s| format!("{:.2}x ideal", s / ideal),
        );
    }
    if named("warm100k") {
        let v = (0..runs.min(1))
            .map(|_| once(100_000, 8, 1.0, 5.0, &["--slots", "2"], fsync))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let ideal = 1.0 + 100_000.0 * 0.005 / 2.0;
        report(
            "warm worker: 100,000 items, 1.0 s load, 5 ms each, batch 8, 2 slots (ideal 251 s)",
            v,
            "s",
            &|s| format!("{:.1}% over ideal", (s / ideal - 1.0) * 100.0),
        );
    }
    if want("warm-noop") {
        let v = (0..runs)
            .map(|_| once(100_000, 64, 0.0, 0.0, &NOOP_NODE, fsync))
            .collect::<anyhow::Result<Vec<_>>>()?;
        report(
            "no-op worker step: 100,000 items, batch 64, 2 workers (default --queue)",
            v,
            "s",
            &|s| format!("{:.0} items/s", 100_000.0 / s),
        );
    }
    if want("warm-noop-rust") {
        let v = (0..runs)
            .map(|_| once_rust(200_000, 64, &NOOP_NODE, fsync))
            .collect::<anyhow::Result<Vec<_>>>()?;
        report(
            "no-op worker step, Rust worker: 200,000 items, batch 64, 2 workers",
            v,
            "s",
            &|s| format!("{:.0} items/s", 200_000.0 / s),
        );
    }
    Ok(())
}
