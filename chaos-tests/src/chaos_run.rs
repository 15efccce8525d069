//! Helpers for the `troupe chaos` tests: a cluster whose nodes keep their API address across a
//! restart (so a node killed by `troupe chaos kill` comes back where it was), a guard that
//! stops restarted nodes too (they are no longer children of the test: their data dir's
//! `node.pid` names them), and running the `troupe` CLI.

use crate::{TestNode, troupe_bin};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// Stops the processes named by the data dirs' `node.pid` when dropped (after the test's own
/// children): a node restarted by a chaos kill, or a restarter waiting to become it.
pub struct PidFileGuard(pub Vec<PathBuf>);

/// Whether `pid`'s command line has `dir` as an argument (a stale pid file cannot name a
/// process of someone else then).
fn runs_on(pid: i32, dir: &Path) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let want = dir.display().to_string();
    cmdline.split(|b| *b == 0).any(|a| a == want.as_bytes())
}

impl PidFileGuard {
    /// The pid in `dir/node.pid` if it still runs a node of `dir`.
    pub fn pid(dir: &Path) -> Option<i32> {
        let pid: i32 = std::fs::read_to_string(dir.join("node.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        (pid > 1 && runs_on(pid, dir)).then_some(pid)
    }
}

impl Drop for PidFileGuard {
    fn drop(&mut self) {
        for dir in &self.0 {
            if let Some(pid) = PidFileGuard::pid(dir) {
                // SAFETY: kill(2) on a process running this test's data dir.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
        }
    }
}

/// 3 servers and `workers` workers on 127.0.NET.1.., APIs on port 7070 of each address, all
/// with `extra` (e.g. `--fault-injection`). Dropping it stops every node, restarted ones too.
pub struct ChaosCluster {
    pub nodes: Vec<TestNode>,
    /// Declared after `nodes`: dropped after them.
    _guard: PidFileGuard,
}

impl ChaosCluster {
    pub fn start(
        dir: &Path,
        net: u8,
        workers: usize,
        extra: &[&str],
        token: Option<&str>,
    ) -> ChaosCluster {
        let servers = 3;
        let join: Vec<String> = (1..=servers)
            .map(|i| format!("127.0.{net}.{i}:7500"))
            .collect();
        let dirs: Vec<PathBuf> = (1..=servers + workers)
            .map(|i| dir.join(format!("n{i}")))
            .collect();
        let guard = PidFileGuard(dirs.clone());
        let mut nodes = Vec::new();
        for (i, d) in dirs.iter().enumerate() {
            let role = if i < servers { "--server" } else { "--worker" };
            let mut args: Vec<String> = [
                "node",
                role,
                "--listen",
                &format!("127.0.{net}.{}:7500", i + 1),
                "--join",
                &join.join(","),
                "--api-listen",
                &format!("127.0.{net}.{}:7070", i + 1),
                "--data",
                &d.display().to_string(),
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            args.extend(extra.iter().map(|s| s.to_string()));
            nodes.push(TestNode::spawn_token(d, &args, false, &[], token));
        }
        let c = ChaosCluster {
            nodes,
            _guard: guard,
        };
        let want = servers + workers;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (code, v) = c.nodes[0].get("/v1/nodes");
            let up = v["nodes"]
                .as_array()
                .map(|a| a.iter().filter(|n| n["status"] == "up").count())
                .unwrap_or(0);
            if code == 200 && up == want {
                return c;
            }
            assert!(
                Instant::now() < deadline,
                "the cluster did not form: {v}\n{}",
                c.nodes[0].log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Every node's log, for a failure message.
    pub fn logs(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("==== {}\n{}", n.dir.display(), n.log()))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Runs `troupe ARGS` against `api` (with `token` as TROUPE_TOKEN), for at most `limit`.
pub fn troupe_cli(api: &str, token: Option<&str>, args: &[&str], limit: Duration) -> Output {
    let mut cmd = Command::new(troupe_bin());
    cmd.arg("--api").arg(api).args(args);
    if let Some(t) = token {
        cmd.env("TROUPE_TOKEN", t);
    }
    let child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start the troupe CLI");
    let pid = child.id() as i32;
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watchdog = {
        let done = done.clone();
        std::thread::spawn(move || {
            let end = Instant::now() + limit;
            while Instant::now() < end {
                if done.load(std::sync::atomic::Ordering::Acquire) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            // SAFETY: kill(2) on the CLI process this function started.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        })
    };
    let out = child.wait_with_output().expect("wait for the troupe CLI");
    done.store(true, std::sync::atomic::Ordering::Release);
    let _ = watchdog.join();
    out
}

/// stdout parsed as JSON (panics with both streams if it is not).
pub fn json_of(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): status {}\nstdout:\n{}\nstderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}
