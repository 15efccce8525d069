//! Bad input gets a clear error and loses nothing: each test submits something wrong next to
//! something right, checks the error, and checks that the rest of the node's work is intact.

use serde_json::json;
use std::time::Duration;
use troupe_chaos_tests::{TestNode, step};

const GOOD: &str =
    "name = \"good\"\n[[step]]\nid = \"a\"\nhandler = \"echo\"\nwith = { ok = true }\n";

fn node() -> (tempfile::TempDir, TestNode) {
    let tmp = tempfile::tempdir().unwrap();
    let node = TestNode::start(&tmp.path().join("data"), &["--kill-grace-s", "1"]);
    (tmp, node)
}

fn workflow_count(node: &TestNode) -> usize {
    node.get("/v1/workflows").1["workflows"]
        .as_array()
        .unwrap()
        .len()
}

#[test]
fn bad_specs_are_refused_with_the_field_and_nothing_else_is_lost() {
    let (_tmp, node) = node();
    let good = node.submit(GOOD);
    let cases = [
        (
            "name = \"x\"\n[[step]]\nid = \"a\"\nhandler = \"noop\"\nretires = 3\n",
            "unknown field `retires`",
        ),
        (
            "name = \"x\"\n[[step]]\nid = \"a\"\nneeds = [\"b\"]\nhandler = \"noop\"\n[[step]]\nid = \"b\"\nneeds = [\"a\"]\nhandler = \"noop\"\n",
            "cycle: a -> b -> a",
        ),
        (
            "name = \"x\"\n[[step]]\nid = \"a\"\nhandler = \"noop\"\ntimeout = \"soon\"\n",
            "bad duration",
        ),
        (
            "name = \"x\"\n[[step]]\nid = \"a\"\nhandler = \"noop\"\nmap = { items = [] }\n",
            "at least one item",
        ),
        ("name = [\n", "spec_toml:"),
        (
            // ~10^7 evaluations inside apply on every server: refused before it is proposed.
            "name = \"x\"\n[[step]]\nid = \"a\"\nhandler = \"echo\"\n[[step]]\nid = \"b\"\nneeds = [\"a\"]\nhandler = \"noop\"\nwhen = \"steps.a.output.map(a, steps.a.output.map(b, steps.a.output.map(c, steps.a.output.map(d, steps.a.output.map(e, steps.a.output.map(f, steps.a.output.map(g, 1))))))).size() > 0\"\n",
            "comprehensions nest 7 deep",
        ),
    ];
    for (spec, want) in cases {
        let (code, v) = node.post("/v1/workflows", &json!({ "spec_toml": spec }));
        assert_eq!(code, 400, "{v}");
        let e = v["error"].as_str().unwrap();
        assert!(e.contains(want), "wanted {want:?} in {e}");
        assert!(e.contains("spec_toml:"), "the error points at a line: {e}");
    }
    // The JSON form points at the field too.
    let (code, v) = node.post("/v1/workflows", &json!({ "spec": { "name": "x", "step": [{ "id": "a", "handler": "noop", "needs": ["ghost"] }] } }));
    assert_eq!(code, 400);
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("step \"a\".needs: unknown step \"ghost\""),
        "{v}"
    );
    // Unknown params and malformed bodies.
    let (code, v) = node.post(
        "/v1/workflows",
        &json!({ "spec_toml": GOOD, "params": { "nope": 1 } }),
    );
    assert_eq!(code, 400);
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("unknown param \"nope\""),
        "{v}"
    );
    let (code, _) = node.post(
        "/v1/workflows",
        &json!({ "spec_toml": GOOD, "surprise": 1 }),
    );
    assert_eq!(code, 422);
    assert_eq!(workflow_count(&node), 1, "no bad spec created anything");
    assert_eq!(
        node.wait(&good, Duration::from_secs(20))["status"],
        "succeeded"
    );
}

#[test]
fn oversized_payload_is_refused() {
    let (_tmp, node) = node();
    let items: Vec<String> = (0..400_000).map(|i| format!("item-{i:06}")).collect();
    // Over 8 MiB: the node reads the rest and drops it before it answers, so the client (still
    // sending when the limit is reached) gets the 413 and its reason, not a broken pipe.
    for _ in 0..3 {
        let (code, body) = node.post("/v1/workflows", &json!({ "spec": { "name": "big", "step": [{ "id": "a", "handler": "noop", "map": { "items": items } }] } }));
        assert_eq!(code, 413, "{body}");
        assert!(
            body["error"].as_str().unwrap_or("").contains("8 MiB limit"),
            "{body}"
        );
    }
    assert_eq!(workflow_count(&node), 0);
    assert_eq!(node.get("/v1/health").0, 200, "the node is fine");
}

#[test]
fn missing_executable_fails_the_attempt_retries_and_dead_letters() {
    let (_tmp, node) = node();
    let id = node.submit(
        r#"
name = "missing"
[[step]]
id = "ghost"
run = ["/nonexistent/scorer", "--fast"]
retries = { attempts = 2, initial = "10ms" }
on_failure = "dead-letter"
[[step]]
id = "after"
needs = ["ghost"]
handler = "echo"
with = { still = "running" }
"#,
    );
    let v = node.wait(&id, Duration::from_secs(20));
    assert_eq!(v["status"], "degraded", "{v}");
    assert_eq!(step(&v, "ghost")["dead_lettered"], 1);
    assert_eq!(step(&v, "after")["status"], "succeeded");
    let (_, dlq) = node.get("/v1/dlq");
    let entry = &dlq["dead_letters"][0];
    assert_eq!(entry["workflow"], id.as_str());
    assert_eq!(entry["attempts"], 2);
    let err = entry["last_error"].as_str().unwrap();
    assert!(
        err.contains("executable `/nonexistent/scorer` not found"),
        "{err}"
    );
    // Redrive: it runs again (and fails again, back into the queue).
    let (code, _) = node.post(&format!("/v1/dlq/{}/redrive", entry["id"]), &json!({}));
    assert_eq!(code, 200);
    let v = node.wait(&id, Duration::from_secs(20));
    assert_eq!(v["status"], "degraded");
    let (_, dlq) = node.get("/v1/dlq");
    assert_eq!(dlq["dead_letters"].as_array().unwrap().len(), 1);
    assert_eq!(
        dlq["dead_letters"][0]["attempt"], 4,
        "redrive ran attempts 3 and 4"
    );
    assert_eq!(node.get("/v1/health").0, 200);
}

#[test]
fn oversized_output_fails_the_attempt_with_a_clear_error() {
    let (_tmp, node) = node();
    let ok = node.submit(GOOD);
    let id = node.submit(
        "name = \"big-output\"\n[[step]]\nid = \"big\"\nrun = [\"sh\", \"-c\", \"head -c 70000 /dev/zero | tr '\\\\0' x | sed 's/.*/\\\"&\\\"/' > $TROUPE_OUTPUT\"]\n",
    );
    let v = node.wait(&id, Duration::from_secs(20));
    assert_eq!(v["status"], "failed");
    let reason = v["reason"].as_str().unwrap();
    assert!(
        reason.contains("output is 70002 bytes; the limit is 65536"),
        "{reason}"
    );
    assert_eq!(
        node.wait(&ok, Duration::from_secs(20))["status"],
        "succeeded"
    );
}

#[test]
fn idempotency_key_gives_one_workflow_and_refuses_a_different_spec() {
    let (_tmp, node) = node();
    let (c1, a) = node.post(
        "/v1/workflows",
        &json!({ "spec_toml": GOOD, "idempotency_key": "nightly-2026-11-22" }),
    );
    let (c2, b) = node.post(
        "/v1/workflows",
        &json!({ "spec_toml": GOOD, "idempotency_key": "nightly-2026-11-22" }),
    );
    assert_eq!((c1, c2), (201, 200));
    assert_eq!(a["id"], b["id"]);
    assert_eq!(b["created"], false);
    let other = GOOD.replace("good", "other");
    let (c3, e) = node.post(
        "/v1/workflows",
        &json!({ "spec_toml": other, "idempotency_key": "nightly-2026-11-22" }),
    );
    assert_eq!(c3, 409, "{e}");
    assert!(
        e["error"]
            .as_str()
            .unwrap()
            .contains("already used for wf-1"),
        "{e}"
    );
    assert_eq!(workflow_count(&node), 1);
    // The key finds its workflow, and lists show it.
    let (_, found) = node.get("/v1/workflows?idempotency_key=nightly-2026-11-22");
    assert_eq!(found["workflows"][0]["id"], a["id"], "{found}");
    assert_eq!(
        found["workflows"][0]["idempotency_key"],
        "nightly-2026-11-22"
    );
    let (_, none) = node.get("/v1/workflows?idempotency_key=nope");
    assert_eq!(none["workflows"].as_array().unwrap().len(), 0);
}

#[test]
fn lifecycle_cancel_pause_resume_retry_and_logs() {
    let (_tmp, node) = node();
    // pause / resume
    let id = node.submit("name = \"p\"\n[[step]]\nid = \"w\"\nhandler = \"sleep\"\nwith = { duration = \"30ms\" }\nmap = { range = [0, 40] }\nparallelism = 4\n");
    assert_eq!(
        node.post(&format!("/v1/workflows/{id}/pause"), &json!({}))
            .0,
        200
    );
    std::thread::sleep(Duration::from_millis(300));
    let v = node.get(&format!("/v1/workflows/{id}")).1;
    assert_eq!(v["paused"], true);
    let frozen = step(&v, "w")["succeeded"].as_u64().unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let later = step(&node.get(&format!("/v1/workflows/{id}")).1, "w")["succeeded"]
        .as_u64()
        .unwrap();
    assert_eq!(frozen, later, "nothing new starts while paused");
    assert!(later < 40);
    assert_eq!(
        node.post(&format!("/v1/workflows/{id}/resume"), &json!({}))
            .0,
        200
    );
    assert_eq!(
        node.wait(&id, Duration::from_secs(20))["status"],
        "succeeded"
    );

    // cancel stops the running process
    let id = node.submit("name = \"c\"\n[[step]]\nid = \"long\"\nrun = [\"sh\", \"-c\", \"echo started; sleep 30\"]\n");
    node.wait_until(&id, Duration::from_secs(10), "running", |v| {
        step(v, "long")["running"] == 1
    });
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        node.post(&format!("/v1/workflows/{id}/cancel"), &json!({}))
            .0,
        200
    );
    let v = node.wait(&id, Duration::from_secs(10));
    assert_eq!(v["status"], "cancelled");
    let (code, _) = node.post(&format!("/v1/workflows/{id}/cancel"), &json!({}));
    assert_eq!(code, 409, "cancelling twice is a conflict");
    let (code, log) = node.get(&format!("/v1/workflows/{id}/logs?step=long"));
    assert_eq!(code, 200);
    assert_eq!(log.as_str().unwrap(), "started\n");

    // retry from failure keeps finished steps
    let marks = node.dir.join("marks.log");
    let m = marks.display();
    let spec = format!(
        "name = \"r\"\n[[step]]\nid = \"once\"\nrun = [\"sh\", \"-c\", \"echo once >> {m}\"]\n[[step]]\nid = \"flaky\"\nneeds = [\"once\"]\nrun = [\"sh\", \"-c\", \"test $TROUPE_ATTEMPT -ge 2 || {{ echo broken >&2; exit 3; }}\"]\n"
    );
    let id = node.submit(&spec);
    let v = node.wait(&id, Duration::from_secs(20));
    assert_eq!(v["status"], "failed");
    assert!(
        v["reason"]
            .as_str()
            .unwrap()
            .contains("exited with code 3: broken"),
        "{v}"
    );
    assert_eq!(
        node.post(&format!("/v1/workflows/{id}/retry"), &json!({}))
            .0,
        200
    );
    let v = node.wait(&id, Duration::from_secs(20));
    assert_eq!(v["status"], "succeeded", "{v}");
    assert_eq!(
        std::fs::read_to_string(&marks).unwrap(),
        "once\n",
        "the finished step did not run again"
    );
    let (_, err_log) = node.get(&format!(
        "/v1/workflows/{id}/logs?step=flaky&attempt=1&stream=stderr"
    ));
    assert_eq!(err_log.as_str().unwrap(), "broken\n");
}

#[test]
fn step_timeout_stops_the_whole_process_group() {
    let (_tmp, node) = node();
    let pids = node.dir.join("pids");
    let spec = format!(
        "name = \"t\"\n[[step]]\nid = \"hang\"\ntimeout = \"500ms\"\nrun = [\"sh\", \"-c\", \"sleep 30 & echo $! > {}; wait\"]\n",
        pids.display()
    );
    let id = node.submit(&spec);
    let v = node.wait(&id, Duration::from_secs(20));
    assert_eq!(v["status"], "failed");
    assert!(
        v["reason"]
            .as_str()
            .unwrap()
            .contains("timed out after 500ms"),
        "{v}"
    );
    let child: u32 = std::fs::read_to_string(&pids)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // The background sleep was in the attempt's process group: it is gone too.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while std::path::Path::new(&format!("/proc/{child}")).exists() {
        let state = std::fs::read_to_string(format!("/proc/{child}/stat")).unwrap_or_default();
        if state.contains(") Z") {
            break; // a zombie waiting for its reaper is dead
        }
        assert!(
            std::time::Instant::now() < deadline,
            "grandchild {child} survived the timeout"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[test]
fn a_huge_log_is_read_by_its_tail_without_loading_it() {
    let (_tmp, node) = node();
    // 64 MB of stdout, then a last line.
    let id = node.submit(
        "name = \"big\"\n[[step]]\nid = \"a\"\nrun = [\"sh\", \"-c\", \"head -c 64000000 /dev/zero | tr '\\\\0' a; echo; echo THE-END\"]\n",
    );
    let v = node.wait(&id, Duration::from_secs(60));
    assert_eq!(v["status"], "succeeded", "{v}");
    let before = rss_kb(node.pid());
    for _ in 0..3 {
        let (code, text) = node.get(&format!("/v1/workflows/{id}/logs?step=a"));
        assert_eq!(code, 200);
        let text = text.as_str().unwrap().to_string();
        assert_eq!(text.len(), 1 << 20, "the last 1 MiB");
        assert!(text.ends_with("THE-END\n"));
    }
    let after = rss_kb(node.pid());
    assert!(
        after < before + 16 * 1024,
        "reading a 64 MB log grew the node from {before} kB to {after} kB"
    );
}

#[test]
fn finished_workflows_their_keys_and_logs_are_collected_after_the_retention() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let node = TestNode::start(&data, &["--retain", "2s"]);
    let spec = "name = \"short\"\n[[step]]\nid = \"a\"\nrun = [\"sh\", \"-c\", \"echo hi\"]\n";
    let body = json!({ "spec_toml": spec, "idempotency_key": "nightly-1" });
    let (code, v) = node.post("/v1/workflows", &body);
    assert_eq!(code, 201, "{v}");
    let id = v["id"].as_str().unwrap().to_string();
    let long = node.submit(
        "name = \"long\"\n[[step]]\nid = \"a\"\nhandler = \"sleep\"\nwith = { duration = \"6s\" }\n",
    );
    assert_eq!(
        node.wait(&id, Duration::from_secs(30))["status"],
        "succeeded"
    );
    assert!(data.join("logs").join(&id).exists());
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while node.get(&format!("/v1/workflows/{id}")).0 != 404 || data.join("logs").join(&id).exists()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "{id} was not collected"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // A running workflow is kept, however old.
    assert_eq!(node.get(&format!("/v1/workflows/{long}")).0, 200);
    // The key's window ended with the workflow: it makes a new one.
    let (code, v) = node.post("/v1/workflows", &body);
    assert_eq!((code, &v["created"]), (201, &json!(true)), "{v}");
    assert_ne!(v["id"], json!(id));
}

#[test]
fn an_attempt_ends_with_its_main_process_and_takes_its_group_with_it() {
    let (tmp, node) = node();
    let pidfile = tmp.path().join("bg.pid");
    let id = node.submit(&format!(
        "name = \"bg\"\n[[step]]\nid = \"a\"\nrun = [\"sh\", \"-c\", \"sleep 60 & echo $! > {}; echo started\"]\n",
        pidfile.display()
    ));
    assert_eq!(
        node.wait(&id, Duration::from_secs(30))["status"],
        "succeeded"
    );
    let pid: u32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    // Gone, or a zombie waiting for its (init) parent to reap it.
    let alive = || {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| !s.contains(") Z "))
            .unwrap_or(false)
    };
    while alive() {
        assert!(
            std::time::Instant::now() < deadline,
            "the background child {pid} outlived its attempt"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_log_is_capped_to_its_tail_and_the_cut_is_marked() {
    let tmp = tempfile::tempdir().unwrap();
    let node = TestNode::start(&tmp.path().join("data"), &["--max-log-bytes", "1MiB"]);
    // ~6 MB over ~2 s, so the cap acts while it runs and again at the end.
    let id = node.submit(
        "name = \"chatty\"\n[[step]]\nid = \"a\"\nrun = [\"sh\", \"-c\", \"for i in 1 2 3 4; do head -c 1500000 /dev/zero | tr '\\\\0' x; echo; sleep 0.5; done; echo LAST-LINE\"]\n",
    );
    assert_eq!(
        node.wait(&id, Duration::from_secs(60))["status"],
        "succeeded"
    );
    let (code, text) = node.get(&format!("/v1/workflows/{id}/logs?step=a"));
    assert_eq!(code, 200);
    let text = text.as_str().unwrap();
    assert!(text.len() <= 1 << 20, "{} bytes kept", text.len());
    assert!(text.starts_with("[troupe: "), "the cut is marked");
    assert!(text.contains("were dropped (--max-log-bytes 1048576)"));
    assert!(text.ends_with("LAST-LINE\n"), "the tail is kept");
}
