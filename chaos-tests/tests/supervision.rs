//! The node's supervision tree, for real: make actors panic through the fault-injection endpoint
//! and check what restarts, that work goes on, and that a spent restart budget escalates.

use serde_json::json;
use std::time::{Duration, Instant};
use troupe_chaos_tests::{TestNode, history, step};

fn wait_healthy(node: &TestNode) {
    let deadline = Instant::now() + Duration::from_secs(20);
    // The API restarts with the tree; wait for it to answer again.
    std::thread::sleep(Duration::from_millis(100));
    while node.get("/v1/health").0 != 200 {
        assert!(
            Instant::now() < deadline,
            "the node did not come back:\n{}",
            node.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn crashed_runners_fail_their_attempt_which_is_retried() {
    let tmp = tempfile::tempdir().unwrap();
    let node = TestNode::start(
        &tmp.path().join("d"),
        &["--fault-injection", "--slots", "2", "--kill-grace-s", "1"],
    );
    let id = node.submit(
        "name = \"r\"\n[[step]]\nid = \"w\"\nrun = [\"sh\", \"-c\", \"test $TROUPE_ATTEMPT -ge 2 || sleep 5\"]\nmap = { range = [0, 2] }\nretries = { attempts = 3, initial = \"10ms\" }\n",
    );
    node.wait_until(&id, Duration::from_secs(10), "both running", |v| {
        step(v, "w")["running"] == 2
    });
    for r in ["runner-0", "runner-1"] {
        assert_eq!(
            node.post(&format!("/v1/chaos/panic/{r}"), &json!({})).0,
            200
        );
    }
    let v = node.wait(&id, Duration::from_secs(20));
    assert_eq!(v["status"], "succeeded", "{v}");
    // Per-item failures are in the item trace (the workflow history keeps step-level events).
    for item in 0..2 {
        let (_, t) = node.get(&format!("/v1/workflows/{id}/items/{item}"));
        let w = &t["steps"][0];
        assert!(
            w["error"]
                .as_str()
                .is_some_and(|e| e.contains("task runner crashed")),
            "{t}"
        );
        assert_eq!(w["attempt"], 2, "{t}");
    }
    assert!(
        node.log().contains("injected panic in runner"),
        "the panic went to the log"
    );
}

#[test]
fn instance_dispatcher_and_raft_restarts_keep_work_going() {
    let tmp = tempfile::tempdir().unwrap();
    let node = TestNode::start(
        &tmp.path().join("d"),
        &["--fault-injection", "--kill-grace-s", "1"],
    );
    let id = node.submit(
        "name = \"s\"\n[[step]]\nid = \"a\"\nhandler = \"noop\"\n[[step]]\nid = \"b\"\nneeds = [\"a\"]\nhandler = \"sleep\"\nwith = { duration = \"400ms\" }\nmap = { range = [0, 3] }\n[[step]]\nid = \"c\"\nneeds = [\"b\"]\nhandler = \"noop\"\n",
    );
    node.wait_until(&id, Duration::from_secs(10), "b running", |v| {
        step(v, "b")["running"] == 3
    });
    // The workflow's instance: one-for-one restart from its checkpoint.
    assert_eq!(
        node.post(&format!("/v1/chaos/panic/{id}"), &json!({})).0,
        200
    );
    // The dispatcher: its runners restart with it (rest-for-one) and the node re-registers,
    // requeueing its attempts as attempt + 1.
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(node.post("/v1/chaos/panic/dispatcher", &json!({})).0, 200);
    let v = node.wait(&id, Duration::from_secs(20));
    assert_eq!(v["status"], "succeeded", "{v}");
    let h = history(&v);
    assert!(
        h.iter()
            .any(|l| l.contains("restarted (epoch 2)") && l.contains("3 attempt(s) requeued")),
        "{h:?}"
    );
    assert!(
        v["checkpoint"]["seq"].as_u64().unwrap() >= 1,
        "the instance checkpointed: {v}"
    );

    // The raft facade: everything after it restarts; the state is reopened from disk.
    assert_eq!(node.post("/v1/chaos/panic/raft", &json!({})).0, 200);
    wait_healthy(&node);
    let again = node.get(&format!("/v1/workflows/{id}")).1;
    assert_eq!(again["status"], "succeeded", "state survived the restart");
    let id2 = node.submit("name = \"after\"\n[[step]]\nid = \"x\"\nhandler = \"noop\"\n");
    assert_eq!(
        node.wait(&id2, Duration::from_secs(20))["status"],
        "succeeded"
    );
}

#[test]
fn a_spent_restart_budget_escalates_and_the_node_exits() {
    let tmp = tempfile::tempdir().unwrap();
    let mut node = TestNode::start(&tmp.path().join("d"), &["--fault-injection"]);
    let pid = node.pid();
    // The root allows 5 restarts of a child in 30 s; the 6th failure escalates.
    for _ in 0..6 {
        if node.post("/v1/chaos/panic/api", &json!({})).0 != 200 {
            break;
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        std::thread::sleep(Duration::from_millis(50));
        while node.get("/v1/health").0 != 200
            && std::path::Path::new(&format!("/proc/{pid}")).exists()
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        if stat.is_empty() || stat.contains(") Z") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the node kept running after its root gave up:\n{}",
            node.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = node.log();
    assert!(
        log.contains("failed 6 times") && log.contains("giving up"),
        "{log}"
    );
    assert!(log.contains("restart budget spent"), "{log}");
    node.kill9();
}
