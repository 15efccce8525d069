//! `troupe chaos` end to end: the bundled experiment (kill the leader, partition a worker 5 s,
//! pause a worker past its lease) against 3 servers and a worker started with
//! `--fault-injection`, then `troupe chaos verify --json`: every invariant holds and the figures
//! are there. And the refusals: no `--fault-injection` → 403; a read or operate token → 403.

use serde_json::{Value, json};
use std::path::Path;
use std::time::Duration;
use troupe_chaos_tests::TestNode;
use troupe_chaos_tests::chaos_run::{ChaosCluster, PidFileGuard, json_of, troupe_cli};

fn experiment() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/chaos/leader-kill-partition-pause.toml")
        .canonicalize()
        .expect("the bundled experiment")
}

#[test]
fn the_bundled_experiment_keeps_every_invariant_and_verify_reports_the_figures() {
    let tmp = tempfile::tempdir().unwrap();
    let c = ChaosCluster::start(tmp.path(), 91, 1, &["--fault-injection"], None);
    let first_pids: Vec<u32> = c.nodes.iter().map(TestNode::pid).collect();
    let history = tmp.path().join("history.jsonl");
    let h = history.display().to_string();
    let exp = experiment().display().to_string();
    let api = "http://127.0.91.2:7070";
    let out = troupe_cli(
        api,
        None,
        &["chaos", "run", &exp, "--history", &h],
        Duration::from_secs(240),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "chaos run failed:\n{err}\n{}",
        c.logs()
    );
    assert!(err.contains("3 of 3 faults injected"), "{err}");
    assert!(
        err.contains("30 workflows acknowledged, 30 finished"),
        "{err}\n{}",
        c.logs()
    );

    // The history: every submit acknowledged once per key, the faults, the status reads.
    let text = std::fs::read_to_string(&history).unwrap();
    let ops: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let count = |op: &str, outcome: &str| {
        ops.iter()
            .filter(|o| o["op"] == op && o["outcome"] == outcome)
            .count()
    };
    assert_eq!(count("submit", "ok"), 30, "{text}");
    assert_eq!(count("fault", "ok"), 3, "{text}");
    assert!(count("status", "ok") >= 30, "{text}");
    for o in &ops {
        assert!(o["invoke_ms"].as_u64() <= o["complete_ms"].as_u64(), "{o}");
    }

    // The killed leader is back: a new process on the same data dir, serving.
    let killed = ops
        .iter()
        .find(|o| o["op"] == "fault" && o["kind"] == "kill")
        .unwrap();
    let killed_node = killed["node"].as_str().unwrap();
    let back = c
        .nodes
        .iter()
        .enumerate()
        .find(|(_, n)| {
            std::fs::read_to_string(n.dir.join("node-id"))
                .unwrap_or_default()
                .trim()
                == killed_node
        })
        .expect("the killed node's data dir");
    let pid = PidFileGuard::pid(&back.1.dir).expect("the restarted node runs");
    assert_ne!(
        pid as u32, first_pids[back.0],
        "the killed node is a new process"
    );
    assert_eq!(back.1.get("/v1/health").0, 200);

    let out = troupe_cli(
        api,
        None,
        &["--json", "chaos", "verify", "--history", &h],
        Duration::from_secs(60),
    );
    let r = json_of(&out);
    assert!(out.status.success(), "verify failed: {r:#}");
    assert_eq!(r["ok"], json!(true), "{r:#}");
    assert_eq!(r["violation_count"], json!(0), "{r:#}");
    assert_eq!(r["acked_submits"], json!(30), "{r:#}");
    assert_eq!(
        r["from_index"],
        json!(2),
        "the whole history is replayed: {r:#}"
    );
    assert_eq!(r["workflows"], json!(30));
    assert_eq!(r["workflows_terminal"], json!(30));
    // 30 workflows of 4 sleeping items and a join: at least 150 results accepted.
    assert!(r["reports_accepted"].as_u64().unwrap() >= 150, "{r:#}");
    assert!(
        r["capacity_checks"].as_u64().unwrap() > r["entries"].as_u64().unwrap(),
        "{r:#}"
    );
    // The leader kill shows as a term change, with its gap measured.
    let failovers = r["failovers"].as_array().unwrap();
    assert!(!failovers.is_empty(), "no failover seen: {r:#}");
    assert!(
        failovers.iter().all(|f| f["gap_ms"].as_u64().is_some()),
        "{r:#}"
    );
    // Killed, partitioned past the lease, paused past the lease: nodes lost, attempts re-placed.
    let lost = r["replacements"].as_array().unwrap();
    assert!(lost.len() >= 2, "{r:#}");
    let replaced: usize = lost
        .iter()
        .map(|p| p["replaced_ms"].as_array().unwrap().len())
        .sum();
    assert!(replaced >= 1, "no re-placement measured: {r:#}");

    // The table says the same.
    let out = troupe_cli(
        api,
        None,
        &["chaos", "verify", "--history", &h],
        Duration::from_secs(60),
    );
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{table}");
    for row in [
        "G1 ",
        "G3 ",
        "G6 ",
        "failovers: ",
        "nodes lost: ",
        "all invariants hold",
    ] {
        assert!(table.contains(row), "{row:?} missing:\n{table}");
    }
    println!("{table}");
}

const READ: &str = "read-secret-0123456789abcdef";
const OPERATE: &str = "operate-secret-0123456789abcd";
const ADMIN: &str = "admin-secret-0123456789abcdef";

#[test]
fn chaos_is_refused_without_fault_injection_and_without_the_admin_role() {
    let tmp = tempfile::tempdir().unwrap();
    // Without --fault-injection: 403 with the flag to use, also through the CLI.
    let plain = TestNode::start(&tmp.path().join("plain"), &[]);
    let fault = json!({ "kind": "pause", "node": "x", "for_ms": 1000 });
    let (code, v) = plain.post("/v1/chaos/faults", &fault);
    assert_eq!(code, 403, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("--fault-injection"),
        "{v}"
    );
    assert_eq!(plain.get("/v1/chaos/faults").0, 403);
    assert_eq!(plain.post("/v1/chaos/verify", &json!({})).0, 403);
    let out = troupe_cli(
        &plain.api,
        None,
        &["chaos", "list"],
        Duration::from_secs(20),
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--fault-injection"));

    // With it, and tokens: only admin may.
    let tokens = tmp.path().join("tokens.toml");
    let mut text = String::new();
    for (name, secret, role) in [
        ("viewer", READ, "read"),
        ("ci", OPERATE, "operate"),
        ("root", ADMIN, "admin"),
    ] {
        text.push_str(&format!(
            "[[token]]\nname = \"{name}\"\nsecret = \"{secret}\"\nrole = \"{role}\"\n\n"
        ));
    }
    std::fs::write(&tokens, text).unwrap();
    let dir = tmp.path().join("armed");
    let args: Vec<String> = [
        "dev",
        "--listen",
        "127.0.0.1:0",
        "--data",
        &dir.display().to_string(),
        "--fault-injection",
        "--tokens",
        &tokens.display().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut node = TestNode::spawn_token(&dir, &args, true, &[], Some(ADMIN));
    let id = node.get("/v1/chaos/faults").1["nodes"][0]["node"]
        .as_str()
        .unwrap()
        .to_string();
    for (who, secret) in [("read", READ), ("operate", OPERATE)] {
        node.token = Some(secret.into());
        let (code, v) = node.get("/v1/chaos/faults");
        assert_eq!(code, 403, "{who}: {v}");
        let (code, v) = node.post(
            "/v1/chaos/faults",
            &json!({ "kind": "skew-clock", "node": id, "for_ms": 500, "skew_ms": 1000 }),
        );
        assert_eq!(code, 403, "{who}: {v}");
        let out = troupe_cli(
            &node.api,
            Some(secret),
            &["chaos", "list"],
            Duration::from_secs(20),
        );
        assert!(!out.status.success(), "{who}");
    }
    node.token = Some(ADMIN.into());
    // A bad request names its field; a good one is in force, listed, and heals by itself.
    let (code, v) = node.post(
        "/v1/chaos/faults",
        &json!({ "kind": "slow-disk", "node": id, "for_ms": 500 }),
    );
    assert_eq!(code, 400, "{v}");
    assert!(v["error"].as_str().unwrap().starts_with("delay_ms"), "{v}");
    let out = troupe_cli(
        &node.api,
        Some(ADMIN),
        &[
            "chaos",
            "slow-disk",
            &id,
            "--delay",
            "20ms",
            "--for",
            "700ms",
        ],
        Duration::from_secs(20),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed = node.get("/v1/chaos/faults").1;
    assert_eq!(
        listed["nodes"][0]["faults"][0]["kind"], "slow-disk",
        "{listed}"
    );
    // Writes still commit (slowly) under the slow disk.
    let wf = node.submit("name = \"s\"\n[[step]]\nid = \"a\"\nhandler = \"noop\"\n");
    assert_eq!(
        node.wait(&wf, Duration::from_secs(20))["status"],
        "succeeded"
    );
    std::thread::sleep(Duration::from_millis(800));
    let listed = node.get("/v1/chaos/faults").1;
    assert_eq!(listed["nodes"][0]["faults"], json!([]), "healed: {listed}");
    let out = troupe_cli(
        &node.api,
        Some(ADMIN),
        &["--json", "chaos", "verify"],
        Duration::from_secs(30),
    );
    let r = json_of(&out);
    assert_eq!(r["ok"], json!(true), "{r:#}");
    assert_eq!(r["workflows"], json!(1));
    node.kill9();
}
