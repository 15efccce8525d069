//! Servers added and removed at run time (Raft ConfChangeV2): a fourth server joins a running
//! group and catches up, a server is removed, and the group still elects and accepts writes
//! after its leader is killed.

use serde_json::json;
use std::time::{Duration, Instant};
use troupe_chaos_tests::{Cluster, TestNode};

fn voters(node: &TestNode) -> Vec<u64> {
    let (_, v) = node.get("/v1/servers");
    v["voters"]
        .as_array()
        .map(|a| a.iter().filter_map(|x| x.as_u64()).collect())
        .unwrap_or_default()
}

fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "waited {limit:?} for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn servers_join_and_leave_a_running_group() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(tmp.path(), 34, 3, 0, &["--snapshot-every", "20"]);
    // Some history first, so the newcomer catches up through a snapshot.
    let before = cluster.any().submit(
        "name = \"before\"\n[[step]]\nid = \"a\"\nhandler = \"noop\"\nmap = { range = [0, 200] }\n",
    );
    assert_eq!(
        cluster.any().wait(&before, Duration::from_secs(30))["status"],
        "succeeded"
    );

    let dir = tmp.path().join("n4");
    let args: Vec<String> = [
        "node",
        "--server",
        "--join-existing",
        "4",
        "--listen",
        "127.0.34.4:7500",
        "--join",
        "127.0.34.1:7500,127.0.34.2:7500,127.0.34.3:7500",
        "--api-listen",
        "127.0.34.4:0",
        "--snapshot-every",
        "20",
        "--data",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([dir.display().to_string()])
    .collect();
    let newcomer = TestNode::spawn(&dir, &args, false);
    let (code, v) = cluster
        .any()
        .post("/v1/servers", &json!({ "raft_id": 4, "action": "add" }));
    assert_eq!(code, 200, "{v}");
    wait_for("voters [1, 2, 3, 4]", Duration::from_secs(10), || {
        voters(cluster.any()) == vec![1, 2, 3, 4]
    });
    // The newcomer catches up: its own state shows the workflow that ran before it existed.
    wait_for("the newcomer to catch up", Duration::from_secs(30), || {
        newcomer.get("/v1/health").1["workflows"].as_u64() == Some(1)
    });

    // Remove server 2 (stop it first if it leads, so the removal goes through a live leader).
    let (code, v) = cluster
        .any()
        .post("/v1/servers", &json!({ "raft_id": 2, "action": "remove" }));
    assert_eq!(code, 200, "{v}");
    // (If server 2 led, it hands leadership over first: reads may briefly find no leader.)
    wait_for("voters [1, 3, 4]", Duration::from_secs(10), || {
        voters(cluster.any()) == vec![1, 3, 4]
    });
    cluster.servers[1].kill9();

    // Kill the leader: the remaining two of {1, 3, 4} elect a new one and accept writes.
    if let Some(l) = cluster.leader() {
        cluster.servers[l].kill9();
    }
    let mut accepted = None;
    wait_for(
        "a new leader to accept a write",
        Duration::from_secs(30),
        || {
            for n in cluster.servers.iter().chain(std::iter::once(&newcomer)) {
                let (code, v) = n.post("/v1/workflows", &json!({ "spec_toml": "name = \"after\"\n[[step]]\nid = \"a\"\nhandler = \"noop\"\n" }));
                if code == 201 {
                    accepted = Some(v["id"].as_str().unwrap_or("").to_string());
                    return true;
                }
            }
            false
        },
    );
    let id = accepted.unwrap();
    let live = cluster
        .servers
        .iter()
        .chain(std::iter::once(&newcomer))
        .find(|n| n.get("/v1/health").0 == 200)
        .unwrap();
    assert_eq!(
        live.wait(&id, Duration::from_secs(30))["status"],
        "succeeded"
    );
}
