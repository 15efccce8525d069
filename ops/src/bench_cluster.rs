//! Cluster figures, with real processes on 127.0.x.y (fsync on): end-to-end no-op throughput on
//! 3 servers, leader failover (SIGKILL → a write accepted through another server), worker loss
//! (SIGKILL or SIGSTOP → its task running on another node), and peak RSS during a 100,000-item
//! map on 3 servers + 2 workers.

use crate::client::Client;
use anyhow::{Context, bail};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Proc {
    child: Option<Child>,
    args: Vec<String>,
    api: String,
    dir: PathBuf,
}

impl Proc {
    fn start(args: Vec<String>, dir: PathBuf) -> anyhow::Result<Proc> {
        let mut p = Proc {
            child: None,
            args,
            api: String::new(),
            dir,
        };
        p.spawn()?;
        Ok(p)
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let _ = std::fs::remove_file(self.dir.join("api.addr"));
        let child = Command::new(std::env::current_exe()?)
            .args(&self.args)
            .env("TROUPE_COOKIE", "bench-cookie")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(self.dir.join("node.log"))?,
            )
            .spawn()?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(a) = std::fs::read_to_string(self.dir.join("api.addr"))
                && !a.is_empty()
            {
                self.api = format!("http://{a}");
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("{} did not start", self.dir.display());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).unwrap_or(0)
    }

    fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child.
        unsafe {
            libc::kill(self.pid(), sig);
        }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn rss_kb(&self) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        s.lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }

    fn client(&self) -> Client {
        Client::new(&self.api)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

struct Cluster {
    servers: Vec<Proc>,
    workers: Vec<Proc>,
    root: PathBuf,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.servers.clear();
        self.workers.clear();
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

fn cluster(
    net: u8,
    servers: usize,
    workers: &[&[&str]],
    extra: &[&str],
) -> anyhow::Result<Cluster> {
    let root =
        std::env::temp_dir().join(format!("troupe-bench-cluster-{}-{net}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let addr = |i: usize| format!("127.0.{net}.{}:7600", i + 1);
    let join = (0..servers).map(addr).collect::<Vec<_>>().join(",");
    let mk = |i: usize, role: &str, more: &[&str]| -> anyhow::Result<Proc> {
        let mut args: Vec<String> = vec![
            "node".into(),
            role.into(),
            "--listen".into(),
            addr(i),
            "--join".into(),
            join.clone(),
        ];
        args.extend([
            "--api-listen".to_string(),
            format!("127.0.{net}.{}:0", i + 1),
            "--data".into(),
        ]);
        let dir = root.join(format!("n{}", i + 1));
        args.push(dir.display().to_string());
        args.extend(extra.iter().chain(more).map(|s| s.to_string()));
        Proc::start(args, dir)
    };
    let servers: Vec<Proc> = (0..servers)
        .map(|i| mk(i, "--server", &[]))
        .collect::<anyhow::Result<_>>()?;
    let n = servers.len();
    let workers: Vec<Proc> = workers
        .iter()
        .enumerate()
        .map(|(k, more)| mk(n + k, "--worker", more))
        .collect::<anyhow::Result<_>>()?;
    let c = Cluster {
        servers,
        workers,
        root,
    };
    let want = c.servers.len() + c.workers.len();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let up = c.servers[0].client().get("/v1/nodes").ok().and_then(|v| {
            v["nodes"]
                .as_array()
                .map(|a| a.iter().filter(|n| n["status"] == "up").count())
        });
        if up == Some(want) {
            return Ok(c);
        }
        if Instant::now() > deadline {
            bail!("the bench cluster did not form; see {}", c.root.display());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn leader(c: &Cluster) -> Option<usize> {
    c.servers.iter().position(|s| {
        s.child.is_some()
            && s.client()
                .get("/v1/health")
                .map(|h| h["leader"] == true)
                .unwrap_or(false)
    })
}

fn wait_done(client: &Client, id: &str) -> anyhow::Result<Value> {
    loop {
        let d = client.get(&format!("/v1/workflows/{id}?wait=60s"))?;
        if d["status"] != "running" {
            return Ok(d);
        }
    }
}

fn pct(mut v: Vec<f64>, p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

const NOOP: &str = "name = \"noop-20k\"\n[[step]]\nid = \"noop\"\nhandler = \"noop\"\nmap = { range = [0, 20000] }\nparallelism = 20000\n";

pub fn run(want: &dyn Fn(&str) -> bool, trials: usize) -> anyhow::Result<()> {
    if want("cluster-noop") {
        let c = cluster(21, 3, &[], &[])?;
        let l = leader(&c).context("no leader")?;
        let client = c.servers[l].client();
        let mut v = Vec::new();
        for _ in 0..3 {
            let t = Instant::now();
            let id = client.post("/v1/workflows", &json!({ "spec_toml": NOOP }))?["id"]
                .as_str()
                .unwrap_or("")
                .to_string();
            let d = wait_done(&client, &id)?;
            if d["status"] != "succeeded" {
                bail!("noop workflow ended {}", d["status"]);
            }
            v.push(20_000.0 / t.elapsed().as_secs_f64());
        }
        println!(
            "{:<58} {:>10.0}/s {:>12}  {:?}",
            "end-to-end no-op tasks/s, 3 servers with fsync",
            pct(v.clone(), 0.5),
            "median",
            v.iter().map(|x| x.round()).collect::<Vec<_>>()
        );
    }
    if want("cluster-warm-noop") {
        // 3 servers + 2 workers, every node 2 workers deep with a 4,096 queue (see bench_warm).
        let c = cluster(26, 3, &[&[], &[]], &["--slots", "2", "--queue", "4096"])?;
        let l = leader(&c).context("no leader")?;
        let client = c.servers[l].client();
        let script = c.root.join("bench_worker.py");
        std::fs::write(&script, crate::bench_warm::WORKER)?;
        let spec = crate::bench_warm::spec(&script, 100_000, 64, 0.0, 0.0);
        let mut v = Vec::new();
        for _ in 0..3 {
            let t = Instant::now();
            let id = client.post("/v1/workflows", &json!({ "spec_toml": spec }))?["id"]
                .as_str()
                .unwrap_or("")
                .to_string();
            let d = wait_done(&client, &id)?;
            if d["status"] != "succeeded" {
                bail!("warm no-op workflow ended {}", d["status"]);
            }
            v.push(100_000.0 / t.elapsed().as_secs_f64());
        }
        println!(
            "{:<58} {:>10.0}/s {:>12}  {:?}",
            "no-op worker step items/s, batch 64, 3 servers + 2 workers",
            pct(v.clone(), 0.5),
            "median",
            v.iter().map(|x| x.round()).collect::<Vec<_>>()
        );
    }
    if want("leader") {
        let mut c = cluster(22, 3, &[], &[])?;
        let mut v = Vec::new();
        let tiny =
            json!({ "spec_toml": "name = \"w\"\n[[step]]\nid = \"a\"\nhandler = \"noop\"\n" });
        for _ in 0..trials {
            let l = leader(&c).context("no leader")?;
            let other = (l + 1) % c.servers.len();
            let client = c.servers[other].client();
            let t = Instant::now();
            c.servers[l].kill();
            loop {
                if client.post("/v1/workflows", &tiny).is_ok() {
                    break;
                }
                if t.elapsed() > Duration::from_secs(30) {
                    bail!("no new leader accepted a write within 30s");
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            v.push(t.elapsed().as_secs_f64());
            c.servers[l].spawn()?;
            std::thread::sleep(Duration::from_millis(1_500)); // let it rejoin and catch up
        }
        println!(
            "{:<58} {:>10.3}s {:>12}  p50 {:.3}s, max {:.3}s, {} trials",
            "leader SIGKILL -> new leader accepting writes (p99)",
            pct(v.clone(), 0.99),
            "p99",
            pct(v.clone(), 0.5),
            pct(v.clone(), 1.0),
            v.len()
        );
    }
    for (name, sig) in [
        ("worker-kill", libc::SIGKILL),
        ("worker-stop", libc::SIGSTOP),
    ] {
        if !want(name) {
            continue;
        }
        // Two workers carry the label the task needs: when one goes, the task runs on the other.
        let mut c = cluster(
            23,
            3,
            &[&["--label", "pool=w"], &["--label", "pool=w"]],
            &[],
        )?;
        let client = c.servers[0].client();
        let spec = json!({ "spec_toml": "name = \"long\"\n[[step]]\nid = \"a\"\nhandler = \"sleep\"\nwith = { duration = \"10m\" }\nresources = { node_labels = { pool = \"w\" } }\n" });
        let mut v = Vec::new();
        for _ in 0..trials {
            let id = client.post("/v1/workflows", &spec)?["id"]
                .as_str()
                .unwrap_or("")
                .to_string();
            let holder = |client: &Client| -> Option<String> {
                let nodes = client.get("/v1/nodes").ok()?;
                nodes["nodes"]
                    .as_array()?
                    .iter()
                    .find(|n| n["attempts"].as_u64().unwrap_or(0) > 0 && n["labels"]["pool"] == "w")
                    .map(|n| n["id"].as_str().unwrap_or("").to_string())
            };
            let deadline = Instant::now() + Duration::from_secs(20);
            let first = loop {
                if let Some(h) = holder(&client) {
                    break h;
                }
                if Instant::now() > deadline {
                    bail!("the long task did not start");
                }
                std::thread::sleep(Duration::from_millis(10));
            };
            let k = c
                .workers
                .iter()
                .position(|w| {
                    w.client()
                        .get("/v1/health")
                        .map(|h| h["node"] == first.as_str())
                        .unwrap_or(false)
                })
                .context("holder is not a worker")?;
            let t = Instant::now();
            if sig == libc::SIGKILL {
                c.workers[k].kill()
            } else {
                c.workers[k].signal(sig)
            }
            loop {
                // Running again elsewhere: the other worker reports the attempt as started.
                let d = client.get(&format!("/v1/workflows/{id}"))?;
                let moved = holder(&client).is_some_and(|h| h != first);
                let started = d["step_runs"][0]["running"].as_u64().unwrap_or(0) == 1
                    && d["history"].as_array().is_some_and(|h| {
                        h.iter()
                            .any(|e| e["what"].as_str().unwrap_or("").contains("lost"))
                    });
                if moved && started {
                    break;
                }
                if t.elapsed() > Duration::from_secs(30) {
                    bail!("the task did not move within 30s");
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            v.push(t.elapsed().as_secs_f64());
            client.post(&format!("/v1/workflows/{id}/cancel"), &json!({}))?;
            if sig == libc::SIGKILL {
                c.workers[k].spawn()?;
            } else {
                c.workers[k].signal(libc::SIGCONT);
            }
            std::thread::sleep(Duration::from_millis(2_500)); // it re-registers (new epoch)
        }
        println!(
            "{:<58} {:>10.3}s {:>12}  p50 {:.3}s, max {:.3}s, {} trials (lease 2 s)",
            format!(
                "{} -> its task running again elsewhere (p99)",
                if sig == libc::SIGKILL {
                    "worker SIGKILL"
                } else {
                    "worker SIGSTOP"
                }
            ),
            pct(v.clone(), 0.99),
            "p99",
            pct(v.clone(), 0.5),
            pct(v.clone(), 1.0),
            v.len()
        );
    }
    if want("map100k") {
        let c = cluster(24, 3, &[&[], &[]], &["--slots", "64"])?;
        let client = c.servers[0].client();
        let spec = json!({ "spec_toml": "name = \"map-100k\"\n[[step]]\nid = \"m\"\nhandler = \"noop\"\nmap = { range = [0, 100000] }\n" });
        let t = Instant::now();
        let id = client.post("/v1/workflows", &spec)?["id"]
            .as_str()
            .unwrap_or("")
            .to_string();
        let mut peak = 0u64;
        loop {
            peak = peak.max(
                c.servers
                    .iter()
                    .chain(&c.workers)
                    .map(Proc::rss_kb)
                    .max()
                    .unwrap_or(0),
            );
            let d = client.get(&format!("/v1/workflows/{id}"))?;
            if d["status"] != "running" {
                if d["status"] != "succeeded" {
                    bail!("the 100k map ended {}", d["status"]);
                }
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        println!(
            "{:<58} {:>9.1}MB {:>12}  finished in {:.1}s (3 servers + 2 workers)",
            "peak RSS of any node during a 100,000-item map",
            peak as f64 / 1024.0,
            "peak",
            t.elapsed().as_secs_f64()
        );
    }
    Ok(())
}
