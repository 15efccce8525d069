//! OpenTelemetry traces (`--otlp-endpoint`): a collector started here receives OTLP/HTTP
//! protobuf spans of a workflow, its steps and its attempts, and a task sees a W3C
//! `TRACEPARENT` whose trace id is the workflow's and whose span id is its attempt's span.

use sha2::{Digest, Sha256};
use std::time::Duration;
use troupe_chaos_tests::TestNode;
use troupe_chaos_tests::receiver::{receiver, wait_for};

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// The trace id Troupe derives (node/src/otel/mod.rs): SHA-256 over length-prefixed parts.
fn trace_id(cluster: &str, wf: &str) -> String {
    let mut h = Sha256::new();
    for p in [
        b"troupe.trace".as_slice(),
        cluster.as_bytes(),
        wf.as_bytes(),
    ] {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p);
    }
    h.finalize()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn spans_of_a_workflow_its_steps_and_attempts_reach_the_collector() {
    let tmp = tempfile::tempdir().unwrap();
    let (url, got) = receiver(vec![]);
    let node = TestNode::start(
        tmp.path(),
        &[
            "--no-fsync",
            "--otlp-endpoint",
            &url,
            "--otlp-cluster",
            "test-c",
        ],
    );
    let out = tmp.path().join("tp.txt");
    let spec = format!(
        "name = \"traced\"\n[[step]]\nid = \"a\"\nmap = {{ range = [0, 2] }}\nrun = [\"sh\", \"-c\", \"echo $TROUPE_ITEM $TRACEPARENT >> {}\"]\n[[step]]\nid = \"b\"\nneeds = [\"a\"]\nrun = [\"true\"]\n",
        out.display()
    );
    let wf = node.submit(&spec);
    let detail = node.wait(&wf, Duration::from_secs(60));
    assert_eq!(detail["status"], "succeeded", "{detail}");
    let lines = std::fs::read_to_string(&out).unwrap();
    let want_trace = trace_id("test-c", &wf);
    let mut span_ids = Vec::new();
    for line in lines.lines() {
        let (_, tp) = line.split_once(' ').expect("item and traceparent");
        let parts: Vec<&str> = tp.split('-').collect();
        assert_eq!(parts.len(), 4, "{tp}");
        assert_eq!(parts[0], "00");
        assert_eq!(parts[3], "01");
        assert_eq!(parts[1].len(), 32);
        assert_eq!(parts[2].len(), 16);
        assert!(
            tp.bytes().all(|b| b == b'-' || b.is_ascii_hexdigit()),
            "{tp}"
        );
        assert_eq!(parts[1], want_trace, "the trace id is the workflow's");
        span_ids.push(parts[2].to_string());
    }
    assert_eq!(span_ids.len(), 2, "{lines}");
    assert_ne!(span_ids[0], span_ids[1]);
    wait_for(&got, Duration::from_secs(30), "spans", |g| !g.is_empty());
    let got = got.lock().unwrap().clone();
    let g = &got[0];
    assert_eq!(g.path, "/v1/traces");
    assert_eq!(g.header("content-type"), "application/x-protobuf");
    let body: Vec<u8> = got.iter().flat_map(|g| g.body.clone()).collect();
    assert!(
        contains(&body, &unhex(&want_trace)),
        "the trace id is in the spans"
    );
    for name in [
        "workflow traced",
        "step a",
        "step b",
        "attempt a/0",
        "attempt a/1",
    ] {
        assert!(contains(&body, name.as_bytes()), "no span {name:?}");
    }
    for key in [
        "troupe.workflow_id",
        "troupe.task_id",
        "troupe.node",
        "troupe.attempt",
        "troupe.status",
    ] {
        assert!(contains(&body, key.as_bytes()), "no attribute {key}");
    }
    assert!(contains(&body, wf.as_bytes()));
    for s in &span_ids {
        assert!(
            contains(&body, &unhex(s)),
            "the attempt's span {s} (its TRACEPARENT) was sent"
        );
    }
}
