//! # troupe-chaos-tests — real-process fault tests
//!
//! A small harness that runs the `troupe` binary as real processes on loopback, talks to them
//! over HTTP like a user, and kills them (`kill -9`). Every wait is bounded; every process is
//! killed when its [`TestNode`] drops. The tests live in `tests/`.
//!
//! The binary is `$TROUPE_BIN`, or `target/debug/troupe` of this workspace (build it first:
//! `cargo build -p troupe-ops`; `.ci/run` does).

use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
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
}

impl TestNode {
    /// Starts a node on `dir` (kept across restarts) and waits until its API answers.
    pub fn start(dir: &Path, extra: &[&str]) -> TestNode {
        let _ = std::fs::remove_file(dir.join("api.addr"));
        std::fs::create_dir_all(dir).expect("data dir");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("node.log"))
            .expect("log file");
        let child = Command::new(troupe_bin())
            .args(["dev", "--listen", "127.0.0.1:0", "--data"])
            .arg(dir)
            .args(extra)
            .env("RUST_LOG", "info,raft=warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start troupe");
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
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(addr) = std::fs::read_to_string(dir.join("api.addr"))
                && !addr.is_empty()
            {
                node.api = format!("http://{addr}");
                // Ready when the API answers and the node has registered (it can run work).
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
        Self::answer(self.agent.get(&format!("{}{path}", self.api)).call())
    }

    pub fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        Self::answer(
            self.agent
                .post(&format!("{}{path}", self.api))
                .send_json(body),
        )
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

/// The step of a workflow detail, by id.
pub fn step<'a>(detail: &'a Value, id: &str) -> &'a Value {
    detail["step_runs"]
        .as_array()
        .and_then(|a| a.iter().find(|s| s["id"] == id))
        .unwrap_or(&Value::Null)
}
