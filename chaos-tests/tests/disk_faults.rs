//! Fault matrix row 9, disk faults, with real processes: (a) the data dir on a small tmpfs that
//! fills up, (b) an fsync of the Raft log that fails (`fsync-error`, injected). Either way the
//! node fail-stops: it exits with status 1 and a typed error naming the disk (not a panic),
//! acknowledges nothing it did not make durable, and once restarted (space freed) recovers to
//! its last durable index with every acknowledged workflow present and keeps working.
//!
//! (a) needs root (mount); it is skipped, saying so, where mounting fails.

use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};
use troupe_chaos_tests::troupe_bin;

/// A tmpfs mounted for the test, unmounted when dropped (also when the test fails).
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(at).ok()?;
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Tmpfs(at.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// An embedded node (`troupe dev`) with its data in `data` and its log in `log` (off the
/// tmpfs, so a full disk does not silence it). Killed when dropped.
struct Node {
    child: Child,
    api: String,
    agent: ureq::Agent,
    log: PathBuf,
}

impl Node {
    fn start(data: &Path, log: &Path, extra: &[&str]) -> Node {
        let _ = std::fs::remove_file(data.join("api.addr"));
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let child = Command::new(troupe_bin())
            .args(["dev", "--listen", "127.0.0.1:0", "--data"])
            .arg(data)
            .args(extra)
            .env("RUST_LOG", "info,raft=warn")
            .stdout(Stdio::null())
            .stderr(f)
            .spawn()
            .expect("start troupe");
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(10)))
            .build()
            .into();
        let mut n = Node {
            child,
            api: String::new(),
            agent,
            log: log.to_path_buf(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(a) = std::fs::read_to_string(data.join("api.addr"))
                && !a.is_empty()
            {
                n.api = format!("http://{a}");
                if n.get("/v1/health").0 == 200 {
                    return n;
                }
            }
            if let Ok(Some(s)) = n.child.try_wait() {
                panic!("troupe exited at start ({s}):\n{}", n.log());
            }
            assert!(Instant::now() < deadline, "no start in 30s:\n{}", n.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn call(&self, r: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> (u16, Value) {
        match r {
            Ok(mut r) => {
                let s = r.status().as_u16();
                let t = r.body_mut().read_to_string().unwrap_or_default();
                (s, serde_json::from_str(&t).unwrap_or(Value::String(t)))
            }
            Err(e) => (0, Value::String(e.to_string())),
        }
    }

    fn get(&self, path: &str) -> (u16, Value) {
        self.call(self.agent.get(&format!("{}{path}", self.api)).call())
    }

    fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        self.call(
            self.agent
                .post(&format!("{}{path}", self.api))
                .send_json(body),
        )
    }

    /// Submits; the workflow id if it was acknowledged.
    fn submit(&self, toml: &str, key: &str) -> Option<String> {
        let (code, v) = self.post(
            "/v1/workflows",
            &json!({ "spec_toml": toml, "idempotency_key": key }),
        );
        (code == 200 || code == 201).then(|| v["id"].as_str().unwrap().to_string())
    }

    /// Waits (bounded) for the process to exit.
    fn exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "the node did not stop in {limit:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn applied(&self) -> u64 {
        self.get("/v1/health").1["applied"].as_u64().unwrap_or(0)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A spec of about `pad` bytes (a long `with` value), so submits grow the log quickly.
fn spec(pad: usize) -> String {
    format!(
        "name = \"pad\"\n[[step]]\nid = \"a\"\nhandler = \"echo\"\nwith = \"{}\"\n",
        "x".repeat(pad)
    )
}

/// The node stopped as it should on a disk failure: exit status 1, a typed error naming the
/// raft log's disk, and no panic.
fn assert_fail_stop(status: ExitStatus, log: &str, cause: &str) {
    assert_eq!(
        status.code(),
        Some(1),
        "not a fail-stop exit ({status}):\n{log}"
    );
    assert!(
        log.contains("the raft log's disk failed"),
        "no typed error:\n{log}"
    );
    assert!(
        log.contains(cause),
        "the cause {cause:?} is not named:\n{log}"
    );
    assert!(!log.contains("panicked at"), "a panic:\n{log}");
}

/// Restarts on the same data dir and checks recovery: at least `durable` applied, every
/// acknowledged workflow present and finished, and new work accepted.
fn assert_recovers(data: &Path, log: &Path, extra: &[&str], acked: &[String], durable: u64) {
    let node = Node::start(data, log, extra);
    assert!(
        node.applied() >= durable,
        "applied {} < {durable} durable before the fault",
        node.applied()
    );
    for id in acked {
        let (code, v) = node.get(&format!("/v1/workflows/{id}?wait=10s"));
        assert_eq!(
            code,
            200,
            "acknowledged {id} lost after the restart: {v}\n{}",
            node.log()
        );
        assert_eq!(v["status"], "succeeded", "{id}: {v}");
    }
    let id = node
        .submit(&spec(10), "after-restart")
        .expect("the restarted node takes work");
    let (_, v) = node.get(&format!("/v1/workflows/{id}?wait=10s"));
    assert_eq!(v["status"], "succeeded", "{v}");
}

#[test]
fn a_full_disk_fail_stops_the_node_and_it_recovers_once_space_is_freed() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(fs) = Tmpfs::mount(&tmp.path().join("mnt"), "48m") else {
        eprintln!("SKIPPED: cannot mount a tmpfs here (needs root); the disk-full row did not run");
        return;
    };
    let data = fs.0.join("data");
    let log = tmp.path().join("node.log");
    let mut node = Node::start(&data, &log, &["--retain", "forever"]);
    let mut acked = Vec::new();
    for i in 0..5 {
        acked.push(
            node.submit(&spec(1000), &format!("before-{i}"))
                .expect("acked before the disk fills"),
        );
    }
    for id in &acked {
        assert_eq!(
            node.get(&format!("/v1/workflows/{id}?wait=10s")).1["status"],
            "succeeded"
        );
    }
    // Fill the disk, leaving a few pages, then write until the log cannot grow.
    let fill = fs.0.join("fill");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&fill).unwrap();
        let block = vec![7u8; 1 << 20];
        while f.write_all(&block).is_ok() {}
        let _ = f.sync_all();
    }
    let mut refused = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while node.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
        let durable = node.applied();
        match node.submit(&spec(200_000), &format!("full-{refused}-{durable}")) {
            Some(id) => acked.push(id),
            None => refused += 1,
        }
    }
    let status = node.exit(Duration::from_secs(10));
    assert!(refused >= 1, "no submit was refused on a full disk");
    assert_fail_stop(status, &node.log(), "No space left on device");
    // Free the space and start again: everything acknowledged is there.
    std::fs::remove_file(&fill).unwrap();
    assert_recovers(&data, &log, &["--retain", "forever"], &acked, 0);
    drop(fs);
}

#[test]
fn a_failed_fsync_fail_stops_the_node_and_a_restart_recovers_the_durable_log() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let log = tmp.path().join("node.log");
    let mut node = Node::start(&data, &log, &["--fault-injection"]);
    let mut acked = Vec::new();
    for i in 0..10 {
        acked.push(node.submit(&spec(100), &format!("k{i}")).expect("acked"));
    }
    for id in &acked {
        assert_eq!(
            node.get(&format!("/v1/workflows/{id}?wait=10s")).1["status"],
            "succeeded"
        );
    }
    let durable = node.applied();
    let me = node.get("/v1/chaos/faults").1["nodes"][0]["node"]
        .as_str()
        .unwrap()
        .to_string();
    let (code, v) = node.post(
        "/v1/chaos/faults",
        &json!({ "kind": "fsync-error", "node": me }),
    );
    assert_eq!(code, 200, "{v}");
    // The next write's fsync fails: that submit is not acknowledged, and the node stops.
    assert_eq!(
        node.submit(&spec(100), "lost"),
        None,
        "a write was acknowledged over a failed fsync"
    );
    let status = node.exit(Duration::from_secs(10));
    assert_fail_stop(status, &node.log(), "injected fsync failure");
    assert_recovers(&data, &log, &["--fault-injection"], &acked, durable);
}
