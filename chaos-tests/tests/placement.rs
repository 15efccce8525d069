//! Placement on a real node with simulated GPUs (labelled simulation: the real path asks NVML):
//! each attempt sees only its own GPUs, a request no node can ever satisfy is refused at submit
//! with the closest node named, and a drained node takes no new work.

use serde_json::json;
use std::collections::BTreeSet;
use std::time::Duration;
use troupe_chaos_tests::{TestNode, step};

#[test]
fn gpus_are_exclusive_and_impossible_requests_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let node = TestNode::start(
        &tmp.path().join("d"),
        &["--simulate-gpus", "2xH100:80GiB", "--label", "zone=eu"],
    );
    let (_, nodes) = node.get("/v1/nodes");
    assert_eq!(nodes["nodes"][0]["gpus"].as_array().unwrap().len(), 2);
    assert_eq!(nodes["nodes"][0]["gpus"][0]["uuid"], "SIM-GPU-0");

    // Each attempt records the GPUs it sees and which other attempts ran beside it.
    let marks = node.dir.join("gpu.log");
    let spec = format!(
        "name = \"g\"\n[[step]]\nid = \"train\"\nmap = {{ range = [0, 6] }}\nresources = {{ gpu = 1, gpu_model = \"H100\", node_labels = {{ zone = \"eu\" }} }}\nrun = [\"sh\", \"-c\", \"echo start $CUDA_VISIBLE_DEVICES >> {m}; sleep 0.2; echo end $CUDA_VISIBLE_DEVICES >> {m}\"]\n",
        m = marks.display()
    );
    let id = node.submit(&spec);
    let v = node.wait(&id, Duration::from_secs(30));
    assert_eq!(v["status"], "succeeded", "{v}");
    // Replay the log: a GPU is never held by two attempts at once, and never more than 2 run.
    let mut held = BTreeSet::new();
    for line in std::fs::read_to_string(&marks).unwrap().lines() {
        let (what, gpu) = line.split_once(' ').unwrap();
        assert!(
            gpu == "SIM-GPU-0" || gpu == "SIM-GPU-1",
            "one GPU per attempt: {line}"
        );
        if what == "start" {
            assert!(held.insert(gpu.to_string()), "{gpu} given twice at once");
        } else {
            held.remove(gpu);
        }
    }

    let (code, e) = node.post(
        "/v1/workflows",
        &json!({ "spec_toml": "name = \"big\"\n[[step]]\nid = \"train\"\nhandler = \"noop\"\nresources = { gpu = 8 }\n" }),
    );
    assert_eq!(code, 400);
    let e = e["error"].as_str().unwrap();
    assert!(
        e.contains("unschedulable: step \"train\" asks for 8 GPUs")
            && e.contains("has 2 GPU(s), needs 8"),
        "{e}"
    );

    // Drain: nothing new starts; undrain: it runs.
    let node_id = nodes["nodes"][0]["id"].as_str().unwrap().to_string();
    assert_eq!(
        node.post(&format!("/v1/nodes/{node_id}/drain"), &json!({}))
            .0,
        200
    );
    let id = node.submit("name = \"after\"\n[[step]]\nid = \"a\"\nhandler = \"noop\"\n");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        step(&node.get(&format!("/v1/workflows/{id}")).1, "a")["status"],
        "running"
    );
    assert_eq!(
        node.post(
            &format!("/v1/nodes/{node_id}/drain"),
            &json!({ "draining": false })
        )
        .0,
        200
    );
    assert_eq!(
        node.wait(&id, Duration::from_secs(10))["status"],
        "succeeded"
    );
}
