//! OpenTelemetry traces (`--otlp-endpoint`): a collector started here receives OTLP/HTTP
//! protobuf spans of a workflow, its steps and every attempt (a failed attempt and its retry
//! each get a span, the failure with status ERROR and its message), and a task sees a W3C
//! `TRACEPARENT` whose trace id is the workflow's and whose span id is its attempt's span: in
//! its environment for a process, as the `"traceparent"` key of its batch line for a worker
//! step (whose worker process runs under the step's span).

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::{Span, status::StatusCode};
use prost::Message;
use sha2::{Digest, Sha256};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use troupe_chaos_tests::TestNode;
use troupe_chaos_tests::receiver::{Got, receiver, wait_for};

fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
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
    hex(&h.finalize()[..16])
}

/// Every span the collector got, decoded.
fn spans(got: &Mutex<Vec<Got>>) -> Vec<Span> {
    got.lock()
        .unwrap()
        .iter()
        .flat_map(|g| {
            assert_eq!(g.path, "/v1/traces");
            assert_eq!(g.header("content-type"), "application/x-protobuf");
            ExportTraceServiceRequest::decode(g.body.as_slice())
                .expect("an OTLP export request")
                .resource_spans
        })
        .flat_map(|r| r.scope_spans)
        .flat_map(|s| s.spans)
        .collect()
}

fn attr(s: &Span, key: &str) -> String {
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    let v = s
        .attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref()?.value.clone())
        .unwrap_or_else(|| panic!("span {:?} has no {key}", s.name));
    match v {
        Value::StringValue(s) => s,
        Value::IntValue(i) => i.to_string(),
        Value::BoolValue(b) => b.to_string(),
        other => format!("{other:?}"),
    }
}

fn status(s: &Span) -> (i32, String) {
    let st = s.status.clone().unwrap_or_default();
    (st.code, st.message)
}

/// Waits until the collector holds the workflow span and `attempts` attempt spans.
fn collect(got: &Arc<Mutex<Vec<Got>>>, attempts: usize) -> Vec<Span> {
    wait_for(got, Duration::from_secs(30), "the spans", |_| true);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let all = spans(got);
        let n = all
            .iter()
            .filter(|s| s.name.starts_with("attempt "))
            .count();
        if all.iter().any(|s| s.name.starts_with("workflow ")) && n >= attempts {
            return all;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "waited for {attempts} attempt spans: {:?}",
            all.iter().map(|s| &s.name).collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `(trace id, span id)` of a `00-<trace>-<span>-01` traceparent, checked for its form.
fn parse_tp(tp: &str) -> (String, String) {
    let parts: Vec<&str> = tp.split('-').collect();
    assert_eq!(parts.len(), 4, "{tp}");
    assert_eq!((parts[0], parts[3]), ("00", "01"), "{tp}");
    assert_eq!((parts[1].len(), parts[2].len()), (32, 16), "{tp}");
    assert!(
        tp.bytes().all(|b| b == b'-' || b.is_ascii_hexdigit()),
        "{tp}"
    );
    (parts[1].to_string(), parts[2].to_string())
}

fn node(tmp: &std::path::Path, url: &str) -> TestNode {
    TestNode::start(
        tmp,
        &[
            "--no-fsync",
            "--otlp-endpoint",
            url,
            "--otlp-cluster",
            "test-c",
        ],
    )
}

/// With fsync: its log survives a `kill -9`.
fn durable_node(dir: &std::path::Path, url: &str) -> TestNode {
    TestNode::start(dir, &["--otlp-endpoint", url, "--otlp-cluster", "test-c"])
}

#[test]
fn every_attempt_of_a_workflow_gets_its_span_and_its_task_the_span_s_traceparent() {
    let tmp = tempfile::tempdir().unwrap();
    let (url, got) = receiver(vec![]);
    let node = node(tmp.path(), &url);
    let out = tmp.path().join("tp.txt");
    // Item 0 fails its first attempt; it is retried and succeeds.
    let spec = format!(
        "name = \"traced\"\n[[step]]\nid = \"a\"\nmap = {{ range = [0, 2] }}\nretries = {{ attempts = 3, initial = \"10ms\" }}\nrun = [\"sh\", \"-c\", \"echo $TROUPE_ITEM $TROUPE_ATTEMPT $TRACEPARENT >> {}; if [ $TROUPE_ITEM = 0 ] && [ $TROUPE_ATTEMPT = 1 ]; then echo 'disk on fire' >&2; exit 3; fi\"]\n[[step]]\nid = \"b\"\nneeds = [\"a\"]\nrun = [\"true\"]\n",
        out.display()
    );
    let wf = node.submit(&spec);
    let detail = node.wait(&wf, Duration::from_secs(60));
    assert_eq!(detail["status"], "succeeded", "{detail}");
    let want_trace = trace_id("test-c", &wf);
    // (item, attempt) -> the span id its TRACEPARENT named.
    let mut tps = Vec::new();
    for line in std::fs::read_to_string(&out).unwrap().lines() {
        let mut w = line.split(' ');
        let (item, attempt, tp) = (w.next().unwrap(), w.next().unwrap(), w.next().unwrap());
        let (trace, span) = parse_tp(tp);
        assert_eq!(trace, want_trace, "the trace id is the workflow's");
        tps.push((item.to_string(), attempt.to_string(), span));
    }
    assert_eq!(tps.len(), 3, "items 0 (twice) and 1: {tps:?}");

    let all = collect(&got, 4);
    for s in &all {
        assert_eq!(hex(&s.trace_id), want_trace, "{}", s.name);
    }
    let root = all.iter().find(|s| s.name == "workflow traced").unwrap();
    assert_eq!(attr(root, "troupe.workflow_id"), wf);
    let step_a = all.iter().find(|s| s.name == "step a").unwrap();
    assert_eq!(step_a.parent_span_id, root.span_id);
    assert!(all.iter().any(|s| s.name == "step b"));
    let attempts: Vec<&Span> = all
        .iter()
        .filter(|s| s.name.starts_with("attempt "))
        .collect();
    // a/0 twice, a/1 and b/0: one span per attempt, each its own.
    assert_eq!(
        attempts.len(),
        4,
        "{:?}",
        attempts.iter().map(|s| &s.name).collect::<Vec<_>>()
    );
    let mut ids: Vec<&Vec<u8>> = attempts.iter().map(|s| &s.span_id).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 4, "distinct span ids");
    for (item, attempt, span) in &tps {
        let s = attempts
            .iter()
            .find(|s| hex(&s.span_id) == *span)
            .unwrap_or_else(|| panic!("no span {span} for item {item} attempt {attempt}"));
        assert_eq!(s.name, format!("attempt a/{item}"));
        assert_eq!(attr(s, "troupe.attempt"), *attempt);
        assert_eq!(attr(s, "troupe.workflow_id"), wf);
        assert_eq!(attr(s, "troupe.task_id"), format!("{wf}/a/{item}"));
        assert!(!attr(s, "troupe.node").is_empty());
        assert_eq!(s.parent_span_id, step_a.span_id, "under its step");
        assert!(s.start_time_unix_nano > 0 && s.start_time_unix_nano <= s.end_time_unix_nano);
        assert!(s.start_time_unix_nano >= root.start_time_unix_nano);
        assert!(s.end_time_unix_nano <= root.end_time_unix_nano);
        let (code, msg) = status(s);
        if item == "0" && attempt == "1" {
            assert_eq!(
                code,
                StatusCode::Error as i32,
                "the failed attempt is an error"
            );
            assert!(
                msg.contains("exit") && msg.contains('3'),
                "the error: {msg}"
            );
            assert_eq!(attr(s, "troupe.status"), "failed");
            assert_eq!(attr(s, "troupe.retried"), "true");
        } else {
            assert_eq!(code, StatusCode::Ok as i32, "{item}/{attempt}: {msg}");
            assert_eq!(attr(s, "troupe.status"), "succeeded");
        }
    }
    // The retry starts after the failed attempt ended.
    let of = |a: &str| {
        let span = &tps.iter().find(|(i, at, _)| i == "0" && at == a).unwrap().2;
        *attempts.iter().find(|s| hex(&s.span_id) == *span).unwrap()
    };
    assert!(of("1").end_time_unix_nano <= of("2").start_time_unix_nano);
}

fn python_path() -> PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../clients/python")
        .canonicalize()
        .expect("clients/python")
}

#[test]
fn a_worker_step_s_tasks_get_their_attempt_s_traceparent_in_the_batch() {
    let tmp = tempfile::tempdir().unwrap();
    let (url, got) = receiver(vec![]);
    let node = node(tmp.path(), &url);
    let out = tmp.path().join("tp.txt");
    let script = tmp.path().join("echo_tp.py");
    // Writes, per task, the traceparent its batch line carried and the worker's own TRACEPARENT.
    std::fs::write(
        &script,
        format!(
            "import os, troupe_worker\n\
             def score_batch(model, items, traceparents):\n\
             \x20   with open({out:?}, 'a') as f:\n\
             \x20       for x, tp in zip(items, traceparents):\n\
             \x20           f.write('%s %s %s\\n' % (x, tp, os.environ.get('TRACEPARENT')))\n\
             \x20   return items\n\
             troupe_worker.serve(score_batch=score_batch)\n",
            out = out.display().to_string()
        ),
    )
    .unwrap();
    let spec = format!(
        "name = \"wtraced\"\n[[step]]\nid = \"score\"\nmap = {{ range = [0, 5] }}\nenv = {{ PYTHONPATH = \"{py}\" }}\nworker = {{ run = [\"python3\", \"{script}\"], batch = 4, max_wait = \"5ms\" }}\n",
        py = python_path().display(),
        script = script.display()
    );
    let wf = node.submit(&spec);
    let detail = node.wait(&wf, Duration::from_secs(60));
    assert_eq!(detail["status"], "succeeded", "{detail}");
    let want_trace = trace_id("test-c", &wf);
    let lines = std::fs::read_to_string(&out).unwrap();
    let mut task_spans = Vec::new();
    let mut worker_spans = Vec::new();
    for line in lines.lines() {
        let mut w = line.split(' ');
        let (item, tp, env) = (w.next().unwrap(), w.next().unwrap(), w.next().unwrap());
        let (trace, span) = parse_tp(tp);
        assert_eq!(
            trace, want_trace,
            "the batch line's trace is the workflow's"
        );
        let (env_trace, env_span) = parse_tp(env);
        assert_eq!(
            env_trace, want_trace,
            "the worker's TRACEPARENT is the workflow's trace"
        );
        task_spans.push((item.to_string(), span));
        worker_spans.push(env_span);
    }
    assert_eq!(task_spans.len(), 5, "{lines}");
    let all = collect(&got, 5);
    let step = all.iter().find(|s| s.name == "step score").unwrap();
    worker_spans.dedup();
    assert_eq!(
        worker_spans,
        vec![hex(&step.span_id)],
        "the worker process runs under its step's span"
    );
    for (item, span) in &task_spans {
        let s = all
            .iter()
            .find(|s| hex(&s.span_id) == *span)
            .unwrap_or_else(|| panic!("the collector got no span {span} (item {item})"));
        assert_eq!(s.name, format!("attempt score/{item}"));
        assert_eq!(s.parent_span_id, step.span_id);
        assert_eq!(status(s).0, StatusCode::Ok as i32);
        assert_eq!(attr(s, "troupe.attempt"), "1");
    }
}

#[test]
fn an_attempt_lost_with_a_restarted_node_gets_its_span_and_so_does_its_retry() {
    let tmp = tempfile::tempdir().unwrap();
    let (url, got) = receiver(vec![]);
    let data = tmp.path().join("data");
    let mut first = durable_node(&data, &url);
    let pid = tmp.path().join("pid");
    // Attempt 1 hangs (bounded: it ends by itself in 20 s, and is killed by pid below).
    let spec = format!(
        "name = \"lost\"\n[[step]]\nid = \"a\"\nrun = [\"sh\", \"-c\", \"if [ $TROUPE_ATTEMPT = 1 ]; then echo $$ > {pid}; exec sleep 20; fi\"]\n",
        pid = pid.display()
    );
    let wf = first.submit(&spec);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::fs::read_to_string(&pid).map_or(true, |p| p.trim().is_empty()) {
        assert!(
            std::time::Instant::now() < deadline,
            "attempt 1 never started"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Let its `Started` report commit, then kill the node under it and start it again.
    std::thread::sleep(Duration::from_millis(500));
    first.kill9();
    let sleeper: i32 = std::fs::read_to_string(&pid)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // SAFETY: a plain kill(2) of the process this test's attempt started.
    unsafe { libc::kill(sleeper, libc::SIGKILL) };
    let again = durable_node(&data, &url);
    let detail = again.wait(&wf, Duration::from_secs(60));
    assert_eq!(detail["status"], "succeeded", "{detail}");
    let all = collect(&got, 2);
    let a: Vec<&Span> = all.iter().filter(|s| s.name == "attempt a/0").collect();
    let of = |n: &str| {
        *a.iter()
            .find(|s| attr(s, "troupe.attempt") == n)
            .unwrap_or_else(|| panic!("no span of attempt {n}: {a:?}"))
    };
    let (lost, retry) = (of("1"), of("2"));
    assert_eq!(attr(lost, "troupe.status"), "lost");
    assert_eq!(attr(lost, "troupe.retried"), "true");
    let (code, msg) = status(lost);
    assert_eq!(code, StatusCode::Error as i32);
    assert!(msg.contains("registered again"), "{msg}");
    assert!(lost.start_time_unix_nano < lost.end_time_unix_nano);
    assert_eq!(attr(retry, "troupe.status"), "succeeded");
    assert!(lost.end_time_unix_nano <= retry.start_time_unix_nano);
    assert_ne!(lost.span_id, retry.span_id);
    assert_eq!(lost.parent_span_id, retry.parent_span_id);
}
