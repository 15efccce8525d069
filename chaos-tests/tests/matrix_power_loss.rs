//! Fault matrix row 8: full-cluster power loss. 3 servers and a worker run work while clients
//! submit and read; every process gets SIGKILL at once; all are started again on their data
//! dirs. Every acknowledged workflow is present and finishes, the cluster serves (a write and
//! a linearizable read answered) within 10 s of the last start, client histories check, and
//! every task's result is accepted exactly once.

use std::sync::Arc;
use std::time::{Duration, Instant};
use troupe_chaos_tests::history::{self, Outcome, Phase, Recorder, Ret, Workload};
use troupe_chaos_tests::netns::Fabric;

fn spec(c: u32, n: u32) -> String {
    format!(
        "name = \"c{c}-{n}\"\n[[step]]\nid = \"a\"\nrun = [\"sleep\", \"0.2\"]\nmap = {{ range = [0, 3] }}\n"
    )
}

const EXTRA: &[&str] = &["--kill-grace-s", "1", "--snapshot-every", "50"];

#[test]
fn kill_9_of_every_process_loses_nothing_and_serves_within_10s() {
    let fabric = Fabric::best(54, 4);
    let tmp = tempfile::tempdir().unwrap();
    let mut cluster = fabric.cluster(tmp.path(), 3, 1, EXTRA);
    let apis: Vec<String> = cluster.servers.iter().map(|s| s.api.clone()).collect();
    let rec = Arc::new(Recorder::with_timeout(Duration::from_secs(8)));
    let work = Workload::start(
        rec.clone(),
        apis.clone(),
        3,
        Duration::from_millis(30),
        spec,
    );
    std::thread::sleep(Duration::from_secs(3));

    // Power loss: SIGKILL to every process before reaping any.
    let all = || cluster.servers.iter().chain(&cluster.workers);
    for n in all() {
        n.signal(libc::SIGKILL);
    }
    for n in cluster.servers.iter_mut().chain(cluster.workers.iter_mut()) {
        n.kill9();
    }
    let acked_before = rec.acked().len();
    std::thread::sleep(Duration::from_secs(1));

    let mut last_start = Instant::now();
    for i in 0..4 {
        last_start = Instant::now();
        let node = fabric.start_node(tmp.path(), i, 3, EXTRA, &[]);
        if i < 3 {
            cluster.servers[i] = node;
        } else {
            cluster.workers[0] = node;
        }
    }
    // Serving: a new write acknowledged and read back (linearizable read), through any server.
    let serving = {
        let deadline = last_start + Duration::from_secs(30);
        let mut k = 0;
        loop {
            let api = &apis[k % 3];
            k += 1;
            let key = format!("after-{k}");
            if let Outcome::Ok(Ret::Submitted { id, .. }) =
                rec.submit(99, api, &spec(99, k as u32), Some(&key))
                && rec.status(99, api, &id) != Outcome::Ok(Ret::Status(Phase::Absent))
                && matches!(rec.status(99, api, &id), Outcome::Ok(Ret::Status(_)))
            {
                break last_start.elapsed();
            }
            assert!(
                Instant::now() < deadline,
                "not serving 30 s after the last start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    eprintln!(
        "row 8: serving {serving:?} after the last start ({acked_before} workflows acknowledged before the power loss)"
    );
    assert!(
        serving < Duration::from_secs(10),
        "serving took {serving:?}"
    );
    std::thread::sleep(Duration::from_secs(1));
    let rec = work.stop();
    let present = history::settle(&apis, Duration::from_secs(60));
    let report = rec.assert_ok("row 8", &present);
    let want = history::succeeded_items(&apis, &present);
    assert!(report.workflows_checked > 10, "{report:?}");
    history::wait_health(&apis, Duration::from_secs(10), "one result per task", |h| {
        h["stats"]["tasks_succeeded"].as_u64() == Some(want)
    });
    eprintln!(
        "row 8: {} workflows present and finished, {want} results accepted once each",
        present.len()
    );
}
