//! `troupe bench`: end-to-end figures on this machine. Every run starts a fresh `troupe dev`
//! process (fsync on unless `--no-fsync`), drives it over HTTP like a user would, and stops it.
//! Prints medians of `--runs` runs; record them in docs/benchmarks.md.

use crate::client::Client;
use anyhow::{Context, bail};
use serde_json::json;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Runs per workload (the median is reported).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Trials per failover figure (leader, worker-kill, worker-stop).
    #[arg(long, default_value_t = 10)]
    trials: usize,
    /// Only these workloads (noop, dag, sleep, process, start, idle, placement, cluster-noop,
    /// leader, worker-kill, worker-stop, map100k, warm, warm-noop, cluster-warm-noop; `soak` and `warm100k` run
    /// only when named).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Measure without fsync (not the recorded configuration).
    #[arg(long)]
    no_fsync: bool,
    /// Soak: how many workflows to push through one node.
    #[arg(long, default_value_t = 1_000_000)]
    soak_workflows: u64,
    /// Soak: the node's --retain.
    #[arg(long, default_value = "10m")]
    soak_retain: String,
}

pub(crate) struct Node {
    pub(crate) child: Child,
    pub(crate) client: Client,
    pub(crate) dir: PathBuf,
}

impl Node {
    pub(crate) fn start(extra: &[&str], fsync: bool) -> anyhow::Result<(Node, Instant)> {
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("troupe-bench-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let exe = std::env::current_exe()?;
        let mut cmd = Command::new(exe);
        cmd.args(["dev", "--listen", "127.0.0.1:0", "--data"])
            .arg(&dir)
            .args(extra);
        if !fsync {
            cmd.arg("--no-fsync");
        }
        cmd.env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("node.log"))?);
        let t0 = Instant::now();
        let child = cmd.spawn().context("cannot start troupe dev")?;
        let addr_file = dir.join("api.addr");
        let deadline = Instant::now() + Duration::from_secs(30);
        let addr = loop {
            if let Ok(a) = std::fs::read_to_string(&addr_file)
                && !a.is_empty()
            {
                break a;
            }
            if Instant::now() > deadline {
                bail!(
                    "the node did not start within 30s; see {}",
                    dir.join("node.log").display()
                );
            }
            std::thread::sleep(Duration::from_millis(1));
        };
        Ok((
            Node {
                child,
                client: Client::new(&format!("http://{addr}")),
                dir,
            },
            t0,
        ))
    }

    pub(crate) fn rss_kb(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }

    /// Submits and waits; returns the seconds from the request to the finished workflow.
    pub(crate) fn run(&self, spec: &str) -> anyhow::Result<f64> {
        let t = Instant::now();
        let v = self
            .client
            .post("/v1/workflows", &json!({ "spec_toml": spec }))?;
        let id = v["id"].as_str().context("no id")?.to_string();
        loop {
            let d = self.client.get(&format!("/v1/workflows/{id}?wait=60s"))?;
            match d["status"].as_str() {
                Some("running") => continue,
                Some("succeeded") => return Ok(t.elapsed().as_secs_f64()),
                other => bail!("workflow ended {other:?}: {}", d["reason"]),
            }
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

const NOOP: &str = "name = \"noop-20k\"\n[[step]]\nid = \"noop\"\nhandler = \"noop\"\nmap = { range = [0, 20000] }\nparallelism = 20000\n";
const DAG: &str = r#"name = "dag-10k"
[[step]]
id = "map"
handler = "echo"
map = { range = [0, 10000] }
parallelism = 10000
[[step]]
id = "transform"
needs = ["map"]
handler = "echo"
map = { over = "steps.map.output" }
parallelism = 10000
[[step]]
id = "reduce"
needs = ["transform"]
handler = "noop"
"#;
const SLEEP: &str = "name = \"sleep-1k\"\n[[step]]\nid = \"sleep\"\nhandler = \"sleep\"\nwith = { duration = \"10ms\" }\nmap = { range = [0, 1000] }\nparallelism = 1000\n";
/// Process tasks: the whole spawn path (log files, fork/exec, the wait, the output file).
const PROCESS: &str = "name = \"true-5k\"\n[[step]]\nid = \"true\"\nrun = [\"true\"]\nmap = { range = [0, 5000] }\nparallelism = 5000\n";
const ONE: &str = "name = \"one\"\n[[step]]\nid = \"one\"\nhandler = \"noop\"\n";

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown cpu".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    format!("{cores} cores, {cpu}")
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    let want = |n: &str| args.only.is_empty() || args.only.iter().any(|o| o == n);
    let fsync = !args.no_fsync;
    let runs = args.runs.max(1);
    println!(
        "troupe bench — {} — fsync {} — medians of {runs}",
        machine(),
        if fsync { "on" } else { "OFF" }
    );
    println!("{:<58} {:>12} {:>12}  runs", "workload", "median", "figure");
    let report = |name: &str, values: Vec<f64>, unit: &str, figure: &dyn Fn(f64) -> String| {
        let all: Vec<String> = values.iter().map(|v| format!("{v:.3}")).collect();
        let m = median(values);
        println!(
            "{name:<58} {:>10.3}{unit} {:>12}  [{}]",
            m,
            figure(m),
            all.join(", ")
        );
    };
    if want("noop") {
        let mut v = Vec::new();
        for _ in 0..runs {
            let (node, _) = Node::start(&[], fsync)?;
            v.push(node.run(NOOP)?);
        }
        report(
            "20,000 no-op tasks in one map step, end to end",
            v,
            "s",
            &|s| format!("{:.0} tasks/s", 20_000.0 / s),
        );
    }
    if want("dag") {
        let mut v = Vec::new();
        for _ in 0..runs {
            let (node, _) = Node::start(&[], fsync)?;
            v.push(node.run(DAG)?);
        }
        report(
            "3-stage DAG over 10,000 items (map -> transform -> reduce)",
            v,
            "s",
            &|s| format!("{:.0} tasks/s", 20_001.0 / s),
        );
    }
    if want("sleep") {
        let mut v = Vec::new();
        for _ in 0..runs {
            let (node, _) = Node::start(&["--slots", "2"], fsync)?;
            v.push(node.run(SLEEP)?);
        }
        report(
            "1,000 tasks sleeping 10 ms, 2 slots (ideal 5.0 s)",
            v,
            "s",
            &|s| format!("{:.1}% over", (s / 5.0 - 1.0) * 100.0),
        );
    }
    if want("process") {
        let mut v = Vec::new();
        // The data dirs (10,000 log files each) are deleted only after the last run: on ext4
        // without a journal the inode allocator skips inodes freed in the last minutes, so a
        // run right after a large delete measures the delete.
        let mut keep = Vec::new();
        for _ in 0..runs {
            // 64 slots: the spawn path's capacity, not the default (4 per core), which keeps
            // CPU-bound tasks from starving the node; with 8 slots this runs at ~1,900/s.
            let (node, _) = Node::start(&["--slots", "64"], fsync)?;
            v.push(node.run(PROCESS)?);
            keep.push(node);
        }
        drop(keep);
        report(
            "5,000 process tasks `run = [\"true\"]` in one map step, 64 slots",
            v,
            "s",
            &|s| format!("{:.0} tasks/s", 5_000.0 / s),
        );
    }
    if want("start") {
        let mut v = Vec::new();
        for _ in 0..runs {
            let (node, t0) = Node::start(&[], fsync)?;
            node.run(ONE)?;
            v.push(t0.elapsed().as_secs_f64());
        }
        report("start of `troupe dev` to first task result", v, "s", &|s| {
            format!("{:.0} ms", s * 1000.0)
        });
    }
    if want("idle") {
        let mut v = Vec::new();
        for _ in 0..runs {
            let (node, _) = Node::start(&[], fsync)?;
            node.run(ONE)?;
            std::thread::sleep(Duration::from_secs(3));
            v.push(node.rss_kb() as f64 / 1024.0);
        }
        report(
            "idle memory (RSS) of a node, 3 s after its first task",
            v,
            "MB",
            &|m| format!("{m:.1} MB"),
        );
    }
    if want("placement") {
        crate::bench_placement::run(runs);
    }
    let named = |n: &str| args.only.iter().any(|o| o == n);
    crate::bench_warm::run(&want, &named, runs, fsync, &report)?;
    if args.only.iter().any(|o| o == "soak") {
        crate::bench_soak::run(args.soak_workflows, &args.soak_retain, fsync)?;
        return Ok(());
    }
    // The cluster figures start real processes on 127.0.x.y and take about a minute.
    crate::bench_cluster::run(&want, args.trials)?;
    Ok(())
}
