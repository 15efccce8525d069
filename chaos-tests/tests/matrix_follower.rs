//! Fault matrix row 2: a follower is SIGKILLed while clients write, stays down while the
//! leader compacts its log (`--snapshot-every 20`), and is started again on its data dir: it
//! catches up (through a snapshot from the leader) within 10 s. Client histories checked; every
//! task's result accepted once; the restarted follower holds every workflow.

use std::sync::Arc;
use std::time::{Duration, Instant};
use troupe_chaos_tests::history::{self, Recorder, Workload};
use troupe_chaos_tests::netns::Fabric;

fn spec(c: u32, n: u32) -> String {
    format!(
        "name = \"c{c}-{n}\"\n[[step]]\nid = \"a\"\nhandler = \"noop\"\nmap = {{ range = [0, 4] }}\n"
    )
}

const EXTRA: &[&str] = &["--snapshot-every", "20"];

#[test]
fn a_killed_follower_catches_up_by_snapshot_within_10s() {
    let fabric = Fabric::best(53, 3);
    let tmp = tempfile::tempdir().unwrap();
    let mut cluster = fabric.cluster(tmp.path(), 3, 0, EXTRA);
    let apis: Vec<String> = cluster.servers.iter().map(|s| s.api.clone()).collect();
    let rec = Arc::new(Recorder::with_timeout(Duration::from_secs(8)));
    let work = Workload::start(
        rec.clone(),
        apis.clone(),
        3,
        Duration::from_millis(20),
        spec,
    );
    std::thread::sleep(Duration::from_secs(2));
    let (l, _) = history::wait_leader(&apis);
    let f = (l + 1) % 3;
    cluster.servers[f].kill9();
    std::thread::sleep(Duration::from_secs(4));
    let (_, lead) = history::wait_leader(&apis);
    let commit = lead["commit"].as_u64().unwrap();
    let start = Instant::now();
    cluster.servers[f] = fabric.start_node(tmp.path(), f, 3, EXTRA, &[]);
    let (_, h) = history::wait_health(
        &apis[f..=f],
        Duration::from_secs(10),
        "the follower to catch up",
        |h| h["applied"].as_u64().unwrap_or(0) >= commit,
    );
    let took = start.elapsed();
    eprintln!(
        "row 2: the follower caught up to index {commit} {took:?} after its start (applied {}, snapshot {})",
        h["applied"], h["snapshot_index"]
    );
    assert!(took < Duration::from_secs(10));
    let by_snapshot = cluster.servers[f]
        .log()
        .contains("installed a raft snapshot from the leader");
    eprintln!(
        "row 2: caught up by {}",
        if by_snapshot { "snapshot" } else { "log" }
    );
    assert!(
        by_snapshot,
        "the leader's log was compacted past the follower: it needed a snapshot"
    );
    std::thread::sleep(Duration::from_secs(1));
    let rec = work.stop();
    let present = history::settle(&apis, Duration::from_secs(30));
    let report = rec.assert_ok("row 2", &present);
    let want = history::succeeded_items(&apis, &present);
    assert!(report.workflows_checked > 10, "{report:?}");
    history::wait_health(
        &apis[f..=f],
        Duration::from_secs(10),
        "the follower to hold every workflow and result",
        |h| {
            h["workflows"].as_u64() == Some(present.len() as u64)
                && h["stats"]["tasks_succeeded"].as_u64() == Some(want)
        },
    );
    eprintln!(
        "row 2: {} workflows, {want} results accepted once each",
        present.len()
    );
}
