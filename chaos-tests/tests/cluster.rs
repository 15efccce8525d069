//! 3 servers + 2 workers as real processes on 127.0.x.y. A 2,000-task workflow runs while a
//! worker is SIGKILLed, the leader is SIGKILLed, or a worker is SIGSTOPped past its lease and
//! resumed. In each: every task reaches a terminal state, no task has two accepted results, no
//! node is ever over its advertised CPU, and the workflow finishes.

use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use troupe_chaos_tests::{Cluster, step};

/// The scenarios run one at a time: each starts 5 processes on a 2-core machine.
static SERIAL: Mutex<()> = Mutex::new(());

#[derive(Clone, Copy, Debug)]
enum Fault {
    KillWorker,
    KillLeader,
    FreezeWorker,
}

fn scenario(fault: Fault, net: u8) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let marks = tmp.path().join("marks.log");
    let mut cluster = Cluster::start(
        tmp.path(),
        net,
        3,
        2,
        &["--slots", "4", "--kill-grace-s", "1"],
    );
    let spec = format!(
        "name = \"chaos-{fault:?}\"\n[[step]]\nid = \"work\"\nmap = {{ range = [0, 2000] }}\nparallelism = 64\nresources = {{ cpu = 1 }}\nretries = {{ attempts = 3, initial = \"50ms\" }}\nrun = [\"sh\", \"-c\", \"trap 'echo end $TROUPE_NODE $TROUPE_TASK_ID $TROUPE_ATTEMPT term >> {m}; exit 1' TERM; echo start $TROUPE_NODE $TROUPE_TASK_ID $TROUPE_ATTEMPT >> {m}; sleep 0.01; echo end $TROUPE_NODE $TROUPE_TASK_ID $TROUPE_ATTEMPT >> {m}\"]\n",
        m = marks.display()
    );
    let id = cluster.any().submit(&spec);
    cluster
        .any()
        .wait_until(&id, Duration::from_secs(60), "300 tasks done", |v| {
            step(v, "work")["succeeded"].as_u64().unwrap_or(0) >= 300
        });
    let t = Instant::now();
    match fault {
        Fault::KillWorker => cluster.workers[0].kill9(),
        Fault::KillLeader => {
            let l = cluster.leader().expect("a leader");
            cluster.servers[l].kill9();
        }
        Fault::FreezeWorker => {
            cluster.workers[0].signal(libc::SIGSTOP);
            std::thread::sleep(Duration::from_millis(3_000)); // past the 2 s lease
            cluster.workers[0].signal(libc::SIGCONT);
        }
    }
    let done = cluster.any().wait(&id, Duration::from_secs(180));
    let took = t.elapsed();
    assert_eq!(done["status"], "succeeded", "{fault:?}: {done}");
    assert_eq!(step(&done, "work")["succeeded"], 2000);
    // Exactly one accepted result per task: the replicated counter saw 2,000 successes, not more.
    // (Health is answered locally: a follower may apply the last entries a moment later.)
    let deadline = Instant::now() + Duration::from_secs(10);
    let health = loop {
        let (_, h) = cluster.any().get("/v1/health");
        if h["stats"]["tasks_succeeded"] == 2000 || Instant::now() > deadline {
            break h;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(
        health["stats"]["tasks_succeeded"], 2000,
        "{fault:?}: {health}"
    );
    // The fault was noticed and handled as designed.
    let history = troupe_chaos_tests::history(&done);
    match fault {
        Fault::KillWorker | Fault::FreezeWorker => {
            assert!(
                history.iter().any(|h| h.contains("lost (no lease renewal")),
                "{fault:?}: {history:?}"
            )
        }
        Fault::KillLeader => {}
    }
    // No node ever ran more attempts at once than it has CPUs (each asks for 1).
    let (_, nodes) = cluster.any().get("/v1/nodes");
    let cpus: BTreeMap<String, u64> = nodes["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["id"].as_str().unwrap().to_string(),
                n["cpu_milli"]["capacity"].as_u64().unwrap() / 1000,
            )
        })
        .collect();
    let mut running: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let text = std::fs::read_to_string(&marks).unwrap();
    for (k, line) in text.lines().enumerate() {
        let f: Vec<&str> = line.split(' ').collect();
        let [what, node, task, attempt, ..] = f[..] else {
            continue;
        };
        let now = running.entry(node.to_string()).or_default();
        let key = format!("{task}#{attempt}");
        if what == "start" {
            now.push(key);
        } else {
            now.retain(|k| *k != key);
        }
        let around: Vec<&str> = text
            .lines()
            .skip(k.saturating_sub(30))
            .take(31)
            .filter(|l| l.contains(node))
            .collect();
        assert!(
            now.len() as u64 <= cpus[node],
            "{fault:?}: node {node} ran {now:?} at once with {} CPUs; before:\n{}",
            cpus[node],
            around.join("\n")
        );
    }
    if let Fault::FreezeWorker = fault {
        // The frozen worker came back under a new epoch (it fenced itself and registered again).
        let frozen = cluster.workers[0].get("/v1/health").1["node"]
            .as_str()
            .unwrap_or("")
            .to_string();
        let epoch = nodes["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["id"] == frozen.as_str())
            .map(|n| n["epoch"].clone())
            .unwrap_or(Value::Null);
        assert!(
            epoch.as_u64().unwrap_or(0) >= 2,
            "{fault:?}: {frozen} at epoch {epoch}"
        );
    }
    let fences: usize = cluster
        .servers
        .iter()
        .chain(&cluster.workers)
        .map(|n| n.log().matches("self-fencing").count())
        .sum();
    eprintln!("{fault:?}: finished {took:?} after the fault; {fences} self-fencing event(s)");
}

#[test]
fn worker_sigkill_mid_workflow() {
    scenario(Fault::KillWorker, 11);
}

#[test]
fn leader_sigkill_mid_workflow() {
    scenario(Fault::KillLeader, 12);
}

#[test]
fn worker_sigstop_past_its_lease_then_resumed() {
    scenario(Fault::FreezeWorker, 13);
}
