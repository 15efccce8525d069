//! Fault matrix row 12: a rolling restart of every process, one at a time (SIGTERM, start
//! again on the same data dir, wait until it serves), while a 300-item workflow runs and
//! clients submit and read. Clients see only retryable errors (503, 429, connection refused);
//! the work finishes with each task's result accepted once; client histories check.
//!
//! The upgrade across the snapshot format: before its restart, one server's snapshot is
//! rewritten in layout version 2 (what builds before version 3 wrote: `chaos-tests/src/format.rs`)
//! and the node restores it through that path, then rejoins and holds the same state.

use std::sync::Arc;
use std::time::{Duration, Instant};
use troupe_chaos_tests::history::{self, Recorder, Workload};
use troupe_chaos_tests::netns::Fabric;
use troupe_chaos_tests::{TestNode, step};

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

#[test]
fn a_rolling_restart_of_every_process_shows_clients_only_retryable_errors() {
    let fabric = Fabric::best(57, 5);
    let tmp = tempfile::tempdir().unwrap();
    let mut cluster = fabric.cluster(tmp.path(), 3, 2, EXTRA);
    let apis: Vec<String> = cluster.servers.iter().map(|s| s.api.clone()).collect();
    let job = format!(
        "name = \"rolling\"\n[[step]]\nid = \"work\"\nmap = {{ range = [0, {ITEMS}] }}\nparallelism = 16\nresources = {{ cpu = 1 }}\nretries = {{ attempts = 3, initial = \"50ms\" }}\nrun = [\"sleep\", \"0.25\"]\n"
    );
    let id = cluster.any().submit(&job);
    let rec = Arc::new(Recorder::with_timeout(Duration::from_secs(10)));
    let work = Workload::start(
        rec.clone(),
        apis.clone(),
        2,
        Duration::from_millis(30),
        spec,
    );
    std::thread::sleep(Duration::from_secs(1));

    // Workers first, then the followers, the leader last.
    let (leader, _) = history::wait_leader(&apis);
    let mut order: Vec<usize> = vec![3, 4];
    order.extend((0..3).filter(|&i| i != leader));
    order.push(leader);
    let upgraded = order[2];
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
        if i == upgraded {
            let (v3, v2) = troupe_chaos_tests::format::downgrade_snapshot(&node.dir).unwrap();
            assert_eq!(troupe_chaos_tests::format::table_format(&node.dir), Ok(1));
            eprintln!(
                "row 12: server {} rewritten as the previous release wrote it: snapshot version 2 ({v3} -> {v2} bytes) in raft-log table format 1",
                i + 1
            );
        }
        let t = Instant::now();
        *node = fabric.start_node(tmp.path(), i, 3, EXTRA, &[]);
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
    let restored = cluster.servers[upgraded].log();
    assert!(!restored.contains("snapshot format version"), "{restored}");
    assert!(
        restored.contains("raft log migrated from table format 1 to 2"),
        "the upgraded server did not migrate its raft.redb: {restored}"
    );
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
    // The server restored from the version-2 snapshot holds the same state as the others.
    history::wait_health(
        &apis[upgraded..=upgraded],
        Duration::from_secs(10),
        "the upgraded server in step",
        |h| {
            h["workflows"].as_u64() == Some(present.len() as u64)
                && h["stats"]["tasks_succeeded"].as_u64() == Some(want)
        },
    );
    eprintln!(
        "row 12: {} ops, {} retryable errors, 0 other; {want} results accepted once each",
        report.ops, report.retryable_errors
    );
}
