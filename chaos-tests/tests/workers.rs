//! Warm worker steps with real Python worker processes (clients/python's `troupe_worker`): a
//! step's items are scored in batches by long-lived workers; a worker that crashes costs only
//! its in-flight batch (retried as attempt + 1); a worker that never says ready, one that
//! prints garbage and one that hangs each fail with a clear reason and lose nothing else.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Duration;
use troupe_chaos_tests::{TestNode, history, step};

fn python_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../clients/python")
        .canonicalize()
        .expect("clients/python")
}

/// A worker script: marks each start in `marks/starts`, loads for `load_s`, and scores items
/// (`{"item": i, "attempt": n}`), crashing when it sees `crash_on` on attempt 1.
fn worker_script(dir: &Path, load_s: f64, crash_on: i64) -> PathBuf {
    let path = dir.join("worker.py");
    std::fs::write(
        &path,
        format!(
            r#"
import os, sys, time
import troupe_worker
def load():
    with open({marks:?}, "a") as f:
        f.write("%d\n" % os.getpid())
    time.sleep({load_s})
    return None
def score(model, task):
    if task.item == {crash_on} and task.attempt == 1:
        print("crashing on purpose", file=sys.stderr)
        os._exit(3)
    return {{"item": task.item, "attempt": task.attempt}}
troupe_worker.serve(load=load, score=score, with_tasks=True)
"#,
            marks = dir.join("starts").display().to_string()
        ),
    )
    .unwrap();
    path
}

fn worker_step(script: &Path, items: u32, extra: &str) -> String {
    format!(
        r#"
name = "warm"
[[step]]
id = "score"
map = {{ range = [0, {items}] }}
retries = {{ attempts = 3, initial = "10ms" }}
env = {{ PYTHONPATH = "{py}" }}
worker = {{ run = ["python3", "{script}"], batch = 8, max_wait = "5ms" {extra} }}
"#,
        py = python_path().display(),
        script = script.display(),
    )
}

#[test]
fn a_warm_worker_scores_every_item_and_a_crash_costs_only_its_batch() {
    let tmp = tempfile::tempdir().unwrap();
    let script = worker_script(tmp.path(), 0.3, 50);
    let node = TestNode::start(&tmp.path().join("n"), &["--slots", "2"]);
    let id = node.submit(&worker_step(&script, 200, ""));
    let v = node.wait(&id, Duration::from_secs(120));
    assert_eq!(v["status"], "succeeded", "{v}\n{}", node.log());
    let (code, out) = node.get(&format!("/v1/workflows/{id}/steps/score/output"));
    assert_eq!(code, 200, "{out}");
    let out = out.as_array().expect("outputs").clone();
    assert_eq!(out.len(), 200, "every item has its output");
    for (i, o) in out.iter().enumerate() {
        assert_eq!(o["item"], i as i64, "output {i} is item {i}'s: {o}");
    }
    assert_eq!(
        out[50]["attempt"], 2,
        "item 50's output came from attempt 2"
    );
    // Only the crashed batch (at most 2 x 8 tasks in flight on that worker) ran again.
    let again = out.iter().filter(|o| o["attempt"] != 1).count();
    assert!((1..=16).contains(&again), "{again} items ran twice");
    // Two workers for 2 slots, and a restart after the crash if work still waits: the model
    // loaded 2 or 3 times, not 200.
    let starts = std::fs::read_to_string(tmp.path().join("starts")).unwrap();
    assert!(
        (2..=3).contains(&starts.lines().count()),
        "worker starts: {starts}"
    );
    // The workflow ended: its workers are stopped now, not after `idle` (60 s).
    let gone = |pid: &str| !Path::new(&format!("/proc/{pid}")).exists();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !starts.lines().all(gone) {
        assert!(
            std::time::Instant::now() < deadline,
            "workers still running: {starts}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let (_, item) = node.get(&format!("/v1/workflows/{id}/items/50"));
    let err = item.to_string();
    assert!(
        err.contains("exited with code 3") && err.contains("crashing on purpose"),
        "{item}"
    );
}

/// A worker that breaks in a given way; each fails its step with a clear reason.
fn broken(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(format!("{name}.py"));
    std::fs::write(&path, body).unwrap();
    path
}

#[test]
fn workers_that_never_get_ready_print_garbage_or_hang_fail_with_reasons_and_lose_nothing_else() {
    let tmp = tempfile::tempdir().unwrap();
    let node = TestNode::start(&tmp.path().join("n"), &["--slots", "2"]);
    let cases = [
        (
            "never-ready",
            "import time\ntime.sleep(60)\n",
            ", startup_timeout = \"1s\"",
            "5 starts in a row failed; last: did not print {\"ready\": true} within 1.0s",
        ),
        (
            "garbage",
            "import sys\nprint('{\"ready\": true}', flush=True)\nfor line in sys.stdin:\n    print('loading weights 40%', flush=True)\n",
            "",
            "broke the protocol: printed a line that is not JSON",
        ),
        (
            "hangs",
            "import sys, time\nprint('{\"ready\": true}', flush=True)\nfor line in sys.stdin:\n    time.sleep(60)\n",
            "",
            "did not answer a batch within the step's timeout of 1.0s",
        ),
    ];
    let mut ids = Vec::new();
    for (name, body, extra, _) in &cases {
        let script = broken(tmp.path(), name, body);
        let spec = worker_step(&script, 4, extra)
            .replace("name = \"warm\"", &format!("name = \"{name}\""))
            .replace("attempts = 3", "attempts = 1")
            .replace(
                "[[step]]\nid = \"score\"",
                "[[step]]\nid = \"score\"\ntimeout = \"1s\"",
            );
        ids.push(node.submit(&spec));
    }
    let fine = node.submit(
        "name = \"fine\"\n[[step]]\nid = \"a\"\nmap = { range = [0, 20] }\nhandler = \"echo\"\n",
    );
    for ((name, _, _, reason), id) in cases.iter().zip(&ids) {
        let v = node.wait(id, Duration::from_secs(60));
        assert_eq!(v["status"], "failed", "{name}: {v}");
        let text = history(&v).join("\n");
        assert!(text.contains(reason), "{name}: no {reason:?} in {text}");
        assert_eq!(step(&v, "score")["status"], "failed", "{name}");
    }
    let v = node.wait(&fine, Duration::from_secs(30));
    assert_eq!(v["status"], "succeeded", "{v}");
    let (_, out) = node.get(&format!("/v1/workflows/{fine}/steps/a/output"));
    assert_eq!(out.as_array().map(Vec::len), Some(20), "{out}");
    let _: Value = out;
}

#[test]
fn kill_9_of_a_worker_node_mid_step_finishes_every_item_exactly_once_on_the_others() {
    let tmp = tempfile::tempdir().unwrap();
    let script = tmp.path().join("slow.py");
    std::fs::write(
        &script,
        "import os, time, troupe_worker\n\
         def score(m, t):\n    time.sleep(0.02)\n    return {'item': t.item, 'node': os.environ['TROUPE_NODE']}\n\
         troupe_worker.serve(score=score, with_tasks=True)\n",
    )
    .unwrap();
    let mut c = troupe_chaos_tests::Cluster::start(
        tmp.path(),
        41,
        3,
        2,
        &["--slots", "2", "--queue", "8", "--strategy", "spread"],
    );
    let spec = worker_step(&script, 400, "").replace("batch = 8", "batch = 4");
    let id = c.any().submit(&spec);
    // Let the step get going, with items on the first worker node.
    let victim = c.workers[0].dir.clone();
    let node_id = std::fs::read_to_string(victim.join("node-id")).unwrap_or_default();
    c.any()
        .wait_until(&id, Duration::from_secs(60), "a quarter done", |v| {
            step(v, "score")["succeeded"].as_u64().unwrap_or(0) >= 100
        });
    c.workers[0].kill9();
    let v = c.any().wait(&id, Duration::from_secs(120));
    assert_eq!(v["status"], "succeeded", "{v}");
    let (_, out) = c
        .any()
        .get(&format!("/v1/workflows/{id}/steps/score/output"));
    let out = out.as_array().expect("outputs").clone();
    assert_eq!(out.len(), 400);
    for (i, o) in out.iter().enumerate() {
        assert_eq!(o["item"], i as i64, "{o}");
    }
    let on_victim = out
        .iter()
        .filter(|o| !node_id.trim().is_empty() && o["node"] == node_id.trim())
        .count();
    assert!(
        on_victim > 0,
        "the killed worker node had scored items before it died"
    );
    assert!(
        out.len() - on_victim > 0,
        "the other nodes finished the step"
    );
}

#[test]
fn a_gpu_worker_is_pinned_to_the_gpu_its_items_were_placed_on() {
    let tmp = tempfile::tempdir().unwrap();
    let script = tmp.path().join("gpu.py");
    std::fs::write(
        &script,
        format!(
            "import os, troupe_worker\n\
             with open({:?}, 'a') as f:\n    f.write(os.environ['CUDA_VISIBLE_DEVICES'] + '\\n')\n\
             def score(m, t):\n    return {{'item': t.item, 'gpu': os.environ['CUDA_VISIBLE_DEVICES']}}\n\
             troupe_worker.serve(score=score, with_tasks=True)\n",
            tmp.path().join("starts").display().to_string()
        ),
    )
    .unwrap();
    // SIMULATION: two made-up GPUs (no NVML here); placement hands each attempt one of them.
    let node = TestNode::start(
        &tmp.path().join("n"),
        &["--slots", "4", "--simulate-gpus", "2xA10G:24GiB"],
    );
    // No max_workers: the node's two GPUs bound the step to two workers (each holds its GPU).
    let spec =
        worker_step(&script, 40, "").replace("retries =", "resources = { gpu = 1 }\nretries =");
    let id = node.submit(&spec);
    let v = node.wait(&id, Duration::from_secs(60));
    assert_eq!(v["status"], "succeeded", "{v}");
    let starts = std::fs::read_to_string(tmp.path().join("starts")).unwrap();
    let mut gpus: Vec<&str> = starts.lines().collect();
    gpus.sort();
    gpus.dedup();
    assert_eq!(gpus.len(), 2, "one worker per GPU: {starts}");
    assert!(
        gpus.iter()
            .all(|g| g.starts_with("SIM-") && !g.contains(',')),
        "{starts}"
    );
    assert_eq!(starts.lines().count(), 2, "each started once: {starts}");
    let (_, out) = node.get(&format!("/v1/workflows/{id}/steps/score/output"));
    let used: std::collections::BTreeSet<String> = out
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["gpu"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(used.len(), 2, "both GPUs scored items: {used:?}");
}
