//! Fault matrix row 12: a rolling restart of every process, one at a time (SIGTERM, start
//! again on the same data dir, wait until it serves), while a 300-item workflow runs and
//! clients submit and read. Clients see only retryable errors (503, 429, connection refused);
//! the work finishes with each task's result accepted once; client histories check.
//!
//! The upgrade across the raft-log table format, from real data of the previous release: the
//! cluster's three servers start on `chaos-tests/fixtures/format1/` (their data dirs as the last
//! build before table format 2 wrote them, `fixtures/make_format1.py`: 4 finished workflows with
//! outputs, 3 queued for a node labelled pool=upgraded, a snapshot and log entries after it, in
//! table format 1). Two servers start on it with this build, migrate and serve; the workers
//! (labelled pool=upgraded) join and the queued work runs; the third server starts on its
//! format-1 data mid-run, while clients write, migrates and catches up; then every process is
//! restarted in turn. The fixture's workflows keep their results, the queued ones finish, and
//! every server ends with the same state.

use serde_json::{Value, json};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use troupe_chaos_tests::format::table_format;
use troupe_chaos_tests::history::{self, Recorder, Workload};
use troupe_chaos_tests::netns::Fabric;
use troupe_chaos_tests::{Cluster, TestNode, step};
fn spec(c: u32, n: u32) -> String {
    format!(
        "name = \"c{c}-{n}\"\n[[step]]\nid = \"a\"\nhandler = \"noop\"\nmap = {{ range = [0, 2] }}\n"
    )
}

const ITEMS: u64 = 300;
const EXTRA: &[&str] = &["--kill-grace-s", "1", "--snapshot-every", "30"];

/// SIGTERM, then wait (bounded) for it to exit; SIGKILL after 15 s.
fn stop(node: &mut TestNode) -> Duration {
    let t = Instant::now();
    node.signal(libc::SIGTERM);
    while node.alive() && t.elapsed() < Duration::from_secs(15) {
        std::thread::sleep(Duration::from_millis(20));
    }
    if node.alive() {
        eprintln!("row 12: no exit 15 s after SIGTERM: killed");
    }
    node.kill9();
    t.elapsed()
}

/// The node's epoch as the first server that answers sees it, if it is up (else 0).
fn epoch(apis: &[String], id: &str) -> u64 {
    for api in apis {
        let Ok(mut r) = ureq::get(&format!("{api}/v1/nodes")).call() else {
            continue;
        };
        let v: serde_json::Value = r.body_mut().read_json().unwrap_or_default();
        if let Some(n) = v["nodes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|n| n["id"] == id)
        {
            return if n["status"] == "up" {
                n["epoch"].as_u64().unwrap_or(0)
            } else {
                0
            };
        }
    }
    0
}

/// Copies the fixture's data dirs (n1..n3) into `dir` (kept: the fixture is read-only).
fn copy_fixture(dir: &Path) -> Value {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/format1");
    for n in 1..=3 {
        let to = dir.join(format!("n{n}"));
        std::fs::create_dir_all(&to).unwrap();
        for f in ["raft.redb", "node-id"] {
            std::fs::copy(src.join(format!("n{n}/{f}")), to.join(f)).unwrap();
        }
    }
    serde_json::from_str(&std::fs::read_to_string(src.join("workflows.json")).unwrap()).unwrap()
}

fn get(api: &str, path: &str) -> Value {
    match ureq::get(&format!("{api}{path}")).call() {
        Ok(mut r) => r.body_mut().read_json().unwrap_or_default(),
        Err(e) => json!({ "error": e.to_string() }),
    }
}

/// The fixture's finished workflows hold the outputs the previous release recorded.
fn check_done(api: &str, ids: &Value) {
    for n in 0..4u64 {
        let id = ids[format!("fixture-done-{n}")].as_str().unwrap();
        let d = get(api, &format!("/v1/workflows/{id}"));
        assert_eq!(d["status"], "succeeded", "{id}: {d}");
        assert_eq!(step(&d, "square")["succeeded"], 3, "{id}: {d}");
        let out = get(api, &format!("/v1/workflows/{id}/steps/square/output"));
        let want: Vec<Value> = (0..3u64)
            .map(|i| json!({ "item": i, "square": i * i + n }))
            .collect();
        assert_eq!(out, json!(want), "{id}: {out}");
    }
}

#[test]
fn a_rolling_restart_of_every_process_shows_clients_only_retryable_errors() {
    let fabric = Fabric::best(57, 5);
    let tmp = tempfile::tempdir().unwrap();
    let ids = copy_fixture(tmp.path());
    for n in 1..=3 {
        assert_eq!(table_format(&tmp.path().join(format!("n{n}"))), Ok(1));
    }
    let apis: Vec<String> = (0..3)
        .map(|i| format!("http://{}:7600", fabric.ip(i)))
        .collect();
    // Two servers of this build on the previous release's data: they migrate and serve.
    let t = Instant::now();
    let mut servers: Vec<TestNode> = (0..2)
        .map(|i| fabric.start_node(tmp.path(), i, 3, EXTRA, &[]))
        .collect();
    let (l, _) = history::wait_leader(&apis[..2]);
    eprintln!(
        "row 12: servers 1 and 2 started on the format-1 fixture; leader {} {:?} after the start",
        l + 1,
        t.elapsed()
    );
    check_done(&apis[l], &ids);
    for n in 0..3 {
        let id = ids[format!("fixture-queued-{n}")].as_str().unwrap();
        let d = get(&apis[l], &format!("/v1/workflows/{id}"));
        assert_eq!(d["status"], "running", "{id}: {d}");
        assert_eq!(step(&d, "later")["succeeded"], 0, "{id} is queued: {d}");
    }
    let mut wextra: Vec<&str> = EXTRA.to_vec();
    wextra.extend(["--label", "pool=upgraded"]);
    let workers: Vec<TestNode> = (3..5)
        .map(|i| fabric.start_node(tmp.path(), i, 3, &wextra, &[]))
        .collect();
    let job = format!(
        "name = \"rolling\"\n[[step]]\nid = \"work\"\nmap = {{ range = [0, {ITEMS}] }}\nparallelism = 16\nresources = {{ cpu = 1 }}\nretries = {{ attempts = 3, initial = \"50ms\" }}\nrun = [\"sleep\", \"0.25\"]\n"
    );
    let id = servers[l].submit(&job);
    let rec = Arc::new(Recorder::with_timeout(Duration::from_secs(10)));
    let work = Workload::start(
        rec.clone(),
        apis.clone(),
        2,
        Duration::from_millis(30),
        spec,
    );
    std::thread::sleep(Duration::from_secs(1));
    // The third server, still on its format-1 data, starts mid-run with this build.
    let t = Instant::now();
    servers.push(fabric.start_node(tmp.path(), 2, 3, EXTRA, &[]));
    let (_, lead) = history::wait_leader(&apis);
    let commit = lead["commit"].as_u64().unwrap_or(0);
    history::wait_health(
        &apis[2..=2],
        Duration::from_secs(20),
        "the third server to catch up",
        |h| h["applied"].as_u64().unwrap_or(0) >= commit,
    );
    eprintln!(
        "row 12: server 3 started on its format-1 data mid-run, caught up to {commit} {:?} after its start",
        t.elapsed()
    );
    let mut cluster = Cluster { servers, workers };
    troupe_chaos_tests::netns::wait_up(&cluster, 5, Duration::from_secs(20));
    for (i, s) in cluster.servers.iter().enumerate() {
        assert_eq!(
            s.log()
                .matches("raft log migrated from table format 1 to 2")
                .count(),
            1,
            "server {} did not migrate its format-1 raft.redb once: {}",
            i + 1,
            s.log()
        );
    }

    // Workers first, then the followers, the leader last.
    let (leader, _) = history::wait_leader(&apis);
    let mut order: Vec<usize> = vec![3, 4];
    order.extend((0..3).filter(|&i| i != leader));
    order.push(leader);
    for &i in &order {
        let node = if i < 3 {
            &mut cluster.servers[i]
        } else {
            &mut cluster.workers[i - 3]
        };
        let me = node.get("/v1/health").1["node"]
            .as_str()
            .unwrap_or("")
            .to_string();
        let was = epoch(&apis, &me);
        let took = stop(node);
        if i < 3 {
            assert_eq!(
                table_format(&node.dir),
                Ok(2),
                "server {} after its stop",
                i + 1
            );
        }
        let t = Instant::now();
        let extra: &[&str] = if i < 3 { EXTRA } else { &wextra };
        *node = fabric.start_node(tmp.path(), i, 3, extra, &[]);
        // Serving again: a server has caught up with the leader; a worker is up again.
        if i < 3 {
            let (_, lead) = history::wait_leader(&apis);
            let commit = lead["commit"].as_u64().unwrap_or(0);
            history::wait_health(
                &apis[i..=i],
                Duration::from_secs(20),
                "the server to catch up",
                |h| h["applied"].as_u64().unwrap_or(0) >= commit,
            );
        } else {
            // A worker registered again: a new epoch, up.
            let deadline = Instant::now() + Duration::from_secs(20);
            while epoch(&apis, &me) <= was {
                assert!(
                    Instant::now() < deadline,
                    "worker {me} did not register again"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        eprintln!(
            "row 12: node {} stopped in {took:?}, serving {:?} after its start",
            i + 1,
            t.elapsed()
        );
        // Work goes on between restarts.
        std::thread::sleep(Duration::from_millis(700));
    }
    let (_, during) = cluster.any().get(&format!("/v1/workflows/{id}"));
    eprintln!(
        "row 12: after the last restart the job has {} of {ITEMS} items done",
        step(&during, "work")["succeeded"]
    );
    for s in &cluster.servers {
        let log = s.log();
        assert!(!log.contains("snapshot format version"), "{log}");
    }
    let done = cluster.any().wait(&id, Duration::from_secs(120));
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(step(&done, "work")["succeeded"], ITEMS);
    let rec = work.stop();
    let present = history::settle(&apis, Duration::from_secs(30));
    let report = rec.assert_ok("row 12", &present);
    let errors: Vec<_> = rec
        .ops()
        .into_iter()
        .filter(|o| {
            matches!(
                o.outcome,
                history::Outcome::Fail {
                    retryable: false,
                    ..
                }
            )
        })
        .collect();
    assert!(
        errors.is_empty(),
        "clients saw errors that are not retryable: {errors:?}"
    );
    let want = history::succeeded_items(&apis, &present);
    history::wait_health(
        &apis,
        Duration::from_secs(10),
        "one result per task on every server",
        |h| h["stats"]["tasks_succeeded"].as_u64() == Some(want),
    );
    // The fixture's workflows: the finished ones kept their outputs, the queued ones ran on
    // the pool=upgraded workers; every server holds the same state.
    let queued: u64 = (0..3u64)
        .map(|n| {
            let id = ids[format!("fixture-queued-{n}")].as_str().unwrap();
            let d = cluster.any().wait(id, Duration::from_secs(30));
            assert_eq!(d["status"], "succeeded", "{id}: {d}");
            let out = get(&apis[0], &format!("/v1/workflows/{id}/steps/later/output"));
            let want: Vec<Value> = (0..2u64)
                .map(|i| json!({ "item": i, "queued": n }))
                .collect();
            assert_eq!(out, json!(want), "{id}: {out}");
            2
        })
        .sum();
    for i in 0..3 {
        check_done(&apis[i], &ids);
        history::wait_health(
            &apis[i..=i],
            Duration::from_secs(10),
            "every server in step",
            |h| {
                h["workflows"].as_u64() == Some(present.len() as u64)
                    && h["stats"]["tasks_succeeded"].as_u64() == Some(want)
            },
        );
    }
    eprintln!(
        "row 12: the fixture's 4 finished workflows kept their outputs on every server; its 3 queued ones finished ({queued} items)"
    );
    eprintln!(
        "row 12: {} ops, {} retryable errors, 0 other; {want} results accepted once each",
        report.ops, report.retryable_errors
    );
}
