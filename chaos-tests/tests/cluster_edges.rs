//! Cluster edges: a node with a wrong cookie is refused and exits saying so (a worker, and a
//! server among servers that accept each other), and a 100,000-item map completes on a small
//! cluster with bounded memory on every node.

use std::time::{Duration, Instant};
use troupe_chaos_tests::{Cluster, TestNode, node_args, run_to_exit, step};

fn rss_mb(pid: u32) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

/// The refused node's own account: it exits non-zero within `limit`, its log names the
/// cookie and every server, and nothing panicked on the way.
fn assert_refused_and_gone(
    who: &str,
    (status, took, log): (Option<std::process::ExitStatus>, Duration, String),
    servers: &[&str],
    limit: Duration,
) {
    let status = status.unwrap_or_else(|| panic!("{who} still ran after {limit:?}; log:\n{log}"));
    assert!(!status.success(), "{who} exited {status}; log:\n{log}");
    assert!(took < limit, "{who} took {took:?}");
    let reason = log
        .lines()
        .find(|l| l.starts_with("error: ") && l.contains("cookie"))
        .unwrap_or_else(|| panic!("{who} gave no reason; log:\n{log}"));
    for s in servers {
        assert!(reason.contains(s), "the reason names {s}: {reason}");
    }
    assert!(!log.contains("panic"), "{who} panicked:\n{log}");
    eprintln!("{who} exited ({status}) after {took:?}: {reason}");
}

#[test]
fn a_worker_with_a_wrong_cookie_exits_saying_so() {
    let tmp = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(tmp.path(), 31, 3, 0, &[]);
    let mut args = node_args(tmp.path(), 31, 8, "--worker", 3);
    args.extend(["--cookie".into(), "not-the-cookie".into()]);
    let limit = Duration::from_secs(10);
    let exit = run_to_exit(&tmp.path().join("n9"), &args, limit);
    let servers = ["127.0.31.1:7500", "127.0.31.2:7500", "127.0.31.3:7500"];
    assert_refused_and_gone("the worker with a wrong cookie", exit, &servers, limit);
    let (_, nodes) = cluster.servers[0].get("/v1/nodes");
    assert_eq!(
        nodes["nodes"].as_array().unwrap().len(),
        3,
        "the intruder registered: {nodes}"
    );
    for s in &cluster.servers {
        let log = s.log();
        assert!(
            log.contains("refused a handshake from 127.0.31.9:7500: its cookie differs"),
            "the refusal is logged:\n{log}"
        );
    }
}

#[test]
fn a_server_with_a_wrong_cookie_exits_and_the_others_form_the_group() {
    let tmp = tempfile::tempdir().unwrap();
    // Server 3 sorts last: it dials nobody, so it learns of the refusals from the dials it
    // refuses. Servers 1 and 2 are refused by it, but accept each other.
    let good: Vec<TestNode> = (0..2)
        .map(|i| {
            let args = node_args(tmp.path(), 40, i, "--server", 3);
            TestNode::spawn(&tmp.path().join(format!("n{}", i + 1)), &args, false)
        })
        .collect();
    let mut args = node_args(tmp.path(), 40, 2, "--server", 3);
    args.extend(["--cookie".into(), "not-the-cookie".into()]);
    let limit = Duration::from_secs(15);
    let exit = run_to_exit(&tmp.path().join("n3"), &args, limit);
    let servers = ["127.0.40.1:7500", "127.0.40.2:7500"];
    assert_refused_and_gone("the server with a wrong cookie", exit, &servers, limit);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, v) = good[0].get("/v1/nodes");
        let up = v["nodes"].as_array().map_or(0, |a| a.len());
        if up == 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "servers 1 and 2 did not form: {v}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    for (i, mut s) in good.into_iter().enumerate() {
        assert!(s.alive(), "server {} exited:\n{}", i + 1, s.log());
        assert!(
            !s.log().contains("every server refused"),
            "server {} gave up:\n{}",
            i + 1,
            s.log()
        );
    }
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
