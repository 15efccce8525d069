//! # troupe-chaos-tests — real-process fault tests
//!
//! A small harness that runs the `troupe` binary as real processes on loopback, talks to them
//! over HTTP like a user, and kills them (`kill -9`). Every wait is bounded; every process is
//! killed when its [`TestNode`] drops. The tests live in `tests/`.
//!
//! The binary is `$TROUPE_BIN`, or `target/debug/troupe` of this workspace (build it first:
//! `cargo build -p troupe-ops`; `.ci/run` does).

pub mod browser;
pub mod chaos_run;
pub mod format;
pub mod history;
pub mod netns;
pub mod proxy;

use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub fn troupe_bin() -> PathBuf {
    if let Ok(p) = std::env::var("TROUPE_BIN") {
        return PathBuf::from(p);
    }
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/troupe");
    assert!(
        p.exists(),
        "{} is missing: run `cargo build -p troupe-ops` first (or set TROUPE_BIN)",
        p.display()
    );
    p
}

/// One `troupe dev` process on 127.0.0.1 with a port picked by the OS.
pub struct TestNode {
    child: Option<Child>,
    pub dir: PathBuf,
    pub api: String,
    agent: ureq::Agent,
    /// Sent as `Authorization: Bearer TOKEN` on every call (nodes started with `--tokens`).
    pub token: Option<String>,
}

impl TestNode {
    /// Starts an embedded node (`troupe dev`) on `dir` (kept across restarts) and waits until
    /// its API answers and it has registered.
    pub fn start(dir: &Path, extra: &[&str]) -> TestNode {
        let mut args = vec![
            "dev".to_string(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--data".into(),
            dir.display().to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        Self::spawn(dir, &args, true)
    }

    /// [`TestNode::start`] with these variables added to the node's environment.
    pub fn start_env(dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> TestNode {
        let mut args = vec![
            "dev".to_string(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--data".into(),
            dir.display().to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        Self::spawn_env(dir, &args, true, env)
    }

    /// Starts `troupe ARGS` (its data in `dir`) and waits until its API answers (and, with
    /// `registered`, until the node shows in /v1/nodes).
    pub fn spawn(dir: &Path, args: &[String], registered: bool) -> TestNode {
        Self::spawn_env(dir, args, registered, &[])
    }

    /// [`TestNode::spawn`] with these variables added to the node's environment.
    pub fn spawn_env(
        dir: &Path,
        args: &[String],
        registered: bool,
        env: &[(&str, &str)],
    ) -> TestNode {
        Self::spawn_token(dir, args, registered, env, None)
    }

    /// [`TestNode::spawn_env`] for a node started with `--tokens`: every call sends `token`.
    pub fn spawn_token(
        dir: &Path,
        args: &[String],
        registered: bool,
        env: &[(&str, &str)],
        token: Option<&str>,
    ) -> TestNode {
        Self::spawn_wrapped(&[], dir, args, registered, env, token)
    }

    /// [`TestNode::spawn_token`] run under `wrap` (e.g. `ip netns exec NS`, which execs the
    /// binary: the pid is still the node's).
    pub fn spawn_wrapped(
        wrap: &[String],
        dir: &Path,
        args: &[String],
        registered: bool,
        env: &[(&str, &str)],
        token: Option<&str>,
    ) -> TestNode {
        let child = launch_wrapped(wrap, dir, args, env);
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .into();
        let mut node = TestNode {
            child: Some(child),
            dir: dir.to_path_buf(),
            api: String::new(),
            agent,
            token: token.map(str::to_string),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(addr) = std::fs::read_to_string(dir.join("api.addr"))
                && !addr.is_empty()
            {
                node.api = format!("http://{addr}");
                // Ready when the API answers and the node has registered (it can run work).
                if !registered && node.get("/v1/health").0 == 200 {
                    return node;
                }
                let (code, nodes) = node.get("/v1/nodes");
                if code == 200 && nodes["nodes"].as_array().is_some_and(|a| !a.is_empty()) {
                    return node;
                }
            }
            if let Some(status) = node
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("troupe exited at start ({status}); log:\n{}", node.log());
            }
            assert!(
                Instant::now() < deadline,
                "node did not start in 30s; log:\n{}",
                node.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("node.log")).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Sends a signal (SIGSTOP / SIGCONT for a frozen process).
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.pid() as i32, sig);
        }
    }

    pub fn alive(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// SIGKILL: no shutdown code runs.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn answer(r: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> (u16, Value) {
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

    pub fn get(&self, path: &str) -> (u16, Value) {
        let r = self.agent.get(&format!("{}{path}", self.api));
        let r = match &self.token {
            Some(t) => r.header("authorization", &format!("Bearer {t}")),
            None => r,
        };
        Self::answer(r.call())
    }

    pub fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let r = self.agent.post(&format!("{}{path}", self.api));
        let r = match &self.token {
            Some(t) => r.header("authorization", &format!("Bearer {t}")),
            None => r,
        };
        Self::answer(r.send_json(body))
    }

    /// Starts `troupe ARGS` and waits only for it to write `api.addr` (an HTTPS node, which
    /// the harness's plain client cannot ask); `api` is then `https://ADDR`.
    pub fn spawn_https(dir: &Path, args: &[String]) -> TestNode {
        let child = launch_env(dir, args, &[]);
        let mut node = TestNode {
            child: Some(child),
            dir: dir.to_path_buf(),
            api: String::new(),
            agent: ureq::Agent::config_builder().build().into(),
            token: None,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(addr) = std::fs::read_to_string(dir.join("api.addr"))
                && !addr.is_empty()
            {
                node.api = format!("https://{addr}");
                return node;
            }
            if let Some(status) = node
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("troupe exited at start ({status}); log:\n{}", node.log());
            }
            assert!(
                Instant::now() < deadline,
                "node did not start in 30s; log:\n{}",
                node.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Submits TOML; panics unless it was accepted. Returns the workflow id.
    pub fn submit(&self, toml: &str) -> String {
        let (code, v) = self.post("/v1/workflows", &json!({ "spec_toml": toml }));
        assert!(code == 201 || code == 200, "submit answered {code}: {v}");
        v["id"].as_str().expect("id").to_string()
    }

    /// Waits (bounded) until the workflow finishes; returns its detail.
    pub fn wait(&self, id: &str, limit: Duration) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            let (code, v) = self.get(&format!("/v1/workflows/{id}?wait=2s"));
            if code == 200 && v["status"] != "running" {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "{id} did not finish in {limit:?}: {v}\nlog:\n{}",
                self.log()
            );
        }
    }

    /// Polls the workflow until `f` holds (bounded).
    pub fn wait_until(
        &self,
        id: &str,
        limit: Duration,
        what: &str,
        f: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            let (_, v) = self.get(&format!("/v1/workflows/{id}"));
            if f(&v) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "waited {limit:?} for {what}: {v}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Starts `troupe ARGS` with the tests' cookie in `TROUPE_COOKIE` (a `--cookie` in `args`
/// wins), its stderr appended to `dir/node.log`.
fn launch(dir: &Path, args: &[String]) -> Child {
    launch_env(dir, args, &[])
}

fn launch_env(dir: &Path, args: &[String], env: &[(&str, &str)]) -> Child {
    launch_wrapped(&[], dir, args, env)
}

fn launch_wrapped(wrap: &[String], dir: &Path, args: &[String], env: &[(&str, &str)]) -> Child {
    let _ = std::fs::remove_file(dir.join("api.addr"));
    std::fs::create_dir_all(dir).expect("data dir");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("node.log"))
        .expect("log file");
    let mut cmd = match wrap.split_first() {
        Some((first, rest)) => {
            let mut c = Command::new(first);
            c.args(rest).arg(troupe_bin());
            c
        }
        None => Command::new(troupe_bin()),
    };
    cmd.args(args)
        .env("RUST_LOG", "info,raft=warn")
        .env("TROUPE_COOKIE", "chaos-test-cookie")
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start troupe")
}

/// Runs `troupe ARGS` (data and log in `dir`) until it exits, for at most `limit` (then it is
/// killed: `None`). Returns how it exited, after how long, and its log.
pub fn run_to_exit(
    dir: &Path,
    args: &[String],
    limit: Duration,
) -> (Option<ExitStatus>, Duration, String) {
    let start = Instant::now();
    let mut child = launch(dir, args);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for troupe") {
            break Some(status);
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let log = std::fs::read_to_string(dir.join("node.log")).unwrap_or_default();
    (status, start.elapsed(), log)
}

/// The arguments of cluster node `i` (0-based) on 127.0.NET.i+1:7500, of a cluster whose
/// servers are the first `servers` of them; its data in `dir/n<i+1>`.
pub fn node_args(dir: &Path, net: u8, i: usize, role: &str, servers: usize) -> Vec<String> {
    let addr = |i: usize| format!("127.0.{net}.{}:7500", i + 1);
    let join: Vec<String> = (0..servers).map(addr).collect();
    let mut args: Vec<String> = [
        "node",
        role,
        "--listen",
        &addr(i),
        "--join",
        &join.join(","),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend([
        "--api-listen".to_string(),
        format!("127.0.{net}.{}:0", i + 1),
        "--data".to_string(),
        dir.join(format!("n{}", i + 1)).display().to_string(),
    ]);
    args
}

/// Log lines that speak of a refused handshake or an authentication failure: a cluster whose
/// nodes all have the same cookie must log none, whatever it goes through.
pub fn refusal_lines(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| {
            let l = l.to_ascii_lowercase();
            ["authentication", "auth_fail", "cookie", "handshake"]
                .iter()
                .any(|w| l.contains(w))
        })
        .collect()
}

/// The step of a workflow detail, by id.
pub fn step<'a>(detail: &'a Value, id: &str) -> &'a Value {
    detail["step_runs"]
        .as_array()
        .and_then(|a| a.iter().find(|s| s["id"] == id))
        .unwrap_or(&Value::Null)
}

/// A cluster of real processes: servers on 127.0.NET.1..n, workers after them.
pub struct Cluster {
    pub servers: Vec<TestNode>,
    pub workers: Vec<TestNode>,
}

/// What [`Cluster::start_with`] adds to every node, or to the workers only.
#[derive(Default)]
pub struct ClusterOpts<'a> {
    pub extra: &'a [&'a str],
    pub worker_extra: &'a [&'a str],
    /// The harness's token, for nodes started with `--tokens`.
    pub token: Option<&'a str>,
}

impl Cluster {
    pub fn start(dir: &Path, net: u8, servers: usize, workers: usize, extra: &[&str]) -> Cluster {
        let opts = ClusterOpts {
            extra,
            ..Default::default()
        };
        Self::start_with(dir, net, servers, workers, &opts)
    }

    pub fn start_with(
        dir: &Path,
        net: u8,
        servers: usize,
        workers: usize,
        opts: &ClusterOpts,
    ) -> Cluster {
        let n = servers;
        let launch = |i: usize, role: &str| {
            let mut args = node_args(dir, net, i, role, n);
            args.extend(opts.extra.iter().map(|s| s.to_string()));
            if role == "--worker" {
                args.extend(opts.worker_extra.iter().map(|s| s.to_string()));
            }
            let dir = dir.join(format!("n{}", i + 1));
            TestNode::spawn_token(&dir, &args, false, &[], opts.token)
        };
        let servers: Vec<TestNode> = (0..servers).map(|i| launch(i, "--server")).collect();
        let workers: Vec<TestNode> = (servers.len()..servers.len() + workers)
            .map(|i| launch(i, "--worker"))
            .collect();
        let cluster = Cluster { servers, workers };
        let want = cluster.servers.len() + cluster.workers.len();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (code, v) = cluster.servers[0].get("/v1/nodes");
            let up = v["nodes"]
                .as_array()
                .map(|a| a.iter().filter(|n| n["status"] == "up").count())
                .unwrap_or(0);
            if code == 200 && up == want {
                return cluster;
            }
            assert!(
                Instant::now() < deadline,
                "the cluster did not form: {v}\n{}",
                cluster.servers[0].log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The index of the server that says it leads.
    pub fn leader(&self) -> Option<usize> {
        self.servers
            .iter()
            .position(|s| s.get("/v1/health").1["leader"] == true)
    }

    /// A server that answers (any: followers forward to the leader).
    pub fn any(&mut self) -> &TestNode {
        let i = (0..self.servers.len())
            .find(|&i| self.servers[i].alive() && self.servers[i].get("/v1/health").0 == 200)
            .expect("no server answers");
        &self.servers[i]
    }
}

/// The audit trail of a workflow detail, one line per event.
pub fn history(detail: &Value) -> Vec<String> {
    detail["history"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| e["what"].as_str().unwrap_or("").to_string())
        .collect()
}

/// A loopback HTTP receiver for what nodes send out (alert webhooks, OTLP spans).
pub mod receiver;
