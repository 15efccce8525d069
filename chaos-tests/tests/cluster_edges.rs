//! Cluster edges: a peer with a wrong cookie is refused (and the refusal is logged), and a
//! 100,000-item map completes on a small cluster with bounded memory on every node.

use std::time::{Duration, Instant};
use troupe_chaos_tests::{Cluster, TestNode, step};

fn rss_mb(pid: u32) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

#[test]
fn a_worker_with_a_wrong_cookie_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(tmp.path(), 31, 1, 0, &[]);
    let dir = tmp.path().join("intruder");
    let args: Vec<String> = [
        "node",
        "--worker",
        "--listen",
        "127.0.31.9:7500",
        "--join",
        "127.0.31.1:7500",
        "--api-listen",
        "127.0.31.9:0",
        "--cookie",
        "not-the-cookie",
        "--data",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([dir.display().to_string()])
    .collect();
    let intruder = TestNode::spawn(&dir, &args, false);
    // Give it several dial attempts; it must never join.
    std::thread::sleep(Duration::from_secs(3));
    let (_, nodes) = cluster.servers[0].get("/v1/nodes");
    assert_eq!(
        nodes["nodes"].as_array().unwrap().len(),
        1,
        "the intruder registered: {nodes}"
    );
    let log = cluster.servers[0].log();
    assert!(
        log.contains("authentication failure") || log.contains("auth_fail"),
        "the refusal is logged:\n{log}"
    );
    drop(intruder);
}

#[test]
fn a_100k_item_map_completes_with_bounded_memory() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(tmp.path(), 32, 1, 1, &["--slots", "64"]);
    let id = cluster.any().submit("name = \"big-map\"\n[[step]]\nid = \"m\"\nhandler = \"noop\"\nmap = { range = [0, 100000] }\n");
    let pids: Vec<u32> = cluster
        .servers
        .iter()
        .chain(&cluster.workers)
        .map(TestNode::pid)
        .collect();
    let deadline = Instant::now() + Duration::from_secs(240);
    let mut peak: f64 = 0.0;
    let done = loop {
        peak = peak.max(pids.iter().map(|p| rss_mb(*p)).fold(0.0, f64::max));
        let (_, v) = cluster.any().get(&format!("/v1/workflows/{id}"));
        if v["status"] != "running" {
            break v;
        }
        assert!(
            Instant::now() < deadline,
            "the 100k map did not finish: {}",
            step(&v, "m")
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(step(&done, "m")["succeeded"], 100_000);
    // Lazy expansion keeps at most `parallelism` tasks materialized: memory stays flat.
    assert!(peak < 200.0, "peak RSS {peak:.1} MB");
    eprintln!("100k map: peak RSS {peak:.1} MB");
}

#[test]
fn a_workflow_instance_moves_when_its_server_dies() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(tmp.path(), 35, 3, 0, &[]);
    let id = cluster.any().submit(
        "name = \"moving\"\n[[step]]\nid = \"a\"\nhandler = \"noop\"\n[[step]]\nid = \"b\"\nneeds = [\"a\"]\nhandler = \"sleep\"\nwith = { duration = \"4s\" }\n[[step]]\nid = \"c\"\nneeds = [\"b\"]\nhandler = \"noop\"\n",
    );
    let v = cluster
        .any()
        .wait_until(&id, Duration::from_secs(20), "step a checkpointed", |v| {
            v["checkpoint"]["seq"].as_u64().unwrap_or(0) >= 1
        });
    let owner = v["owner"].as_str().expect("an owner").to_string();
    assert_eq!(
        v["checkpoint"]["owner"],
        owner.as_str(),
        "the owner's instance records checkpoints"
    );
    let k = (0..3)
        .find(|&i| cluster.servers[i].get("/v1/health").1["node"] == owner.as_str())
        .expect("owner is a server");
    cluster.servers[k].kill9();
    let done = cluster.any().wait(&id, Duration::from_secs(60));
    assert_eq!(done["status"], "succeeded", "{done}");
    let new_owner = done["owner"].as_str().unwrap_or("").to_string();
    assert_ne!(new_owner, owner, "the instance moved");
    let history = troupe_chaos_tests::history(&done);
    assert!(
        history.iter().any(|h| h.contains(&format!(
            "instance moved from {owner} to {new_owner} (rebuilds from checkpoint"
        ))),
        "{history:?}"
    );
    // The new owner carried on from the checkpoint: later checkpoints are its, with higher numbers.
    assert_eq!(done["checkpoint"]["owner"], new_owner.as_str());
    assert!(
        done["checkpoint"]["seq"].as_u64().unwrap() >= 2,
        "{}",
        done["checkpoint"]
    );
    // Finished steps did not run again.
    assert_eq!(
        history
            .iter()
            .filter(|h| h.starts_with("step a started"))
            .count(),
        1,
        "{history:?}"
    );
}
