//! Fault matrix row 4: the leader is isolated from the majority (its own network namespace
//! cut from the other two by blackhole rules; the test still reaches it) while clients submit
//! and read. The isolated leader acknowledges no write while cut off; the majority elects a
//! new leader; after heal the old leader follows and catches up. Every client operation is
//! recorded and checked (acked submits present, one workflow per key, linearizable reads), and
//! every task's result is accepted exactly once.

use std::sync::Arc;
use std::time::{Duration, Instant};
use troupe_chaos_tests::history::{self, Outcome, Recorder, Ret, Workload};
use troupe_chaos_tests::netns::Fabric;

fn spec(c: u32, n: u32) -> String {
    format!(
        "name = \"c{c}-{n}\"\n[[step]]\nid = \"a\"\nhandler = \"noop\"\nmap = {{ range = [0, 4] }}\n"
    )
}

#[test]
fn an_isolated_leader_acks_nothing_and_the_majority_fails_over() {
    let fabric = Fabric::best(51, 3);
    let Some(net) = fabric.net() else {
        eprintln!(
            "row 4 SKIPPED: no network namespaces here, and a loopback proxy cannot cut one server from the others"
        );
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let cluster = fabric.cluster(tmp.path(), 3, 0, &["--snapshot-every", "200"]);
    let apis: Vec<String> = cluster.servers.iter().map(|s| s.api.clone()).collect();
    let rec = Arc::new(Recorder::with_timeout(Duration::from_secs(4)));
    let work = Workload::start(
        rec.clone(),
        apis.clone(),
        3,
        Duration::from_millis(20),
        spec,
    );
    std::thread::sleep(Duration::from_secs(2));

    let (l, h) = history::wait_leader(&apis);
    let term = h["term"].as_u64().unwrap();
    net.isolate(l);
    let cut = Instant::now();
    let cut_us = rec_now(&rec);
    // Writes sent straight to the isolated leader while it is cut off.
    let to_old = std::thread::scope(|s| {
        let probe = s.spawn(|| {
            let mut outs = Vec::new();
            for k in 0..2 {
                let o = rec.submit(90, &apis[l], &spec(90, k), Some(&format!("c90-{k}")));
                outs.push((o, rec_now(&rec)));
            }
            outs
        });
        let others: Vec<String> = (0..3)
            .filter(|&i| i != l)
            .map(|i| apis[i].clone())
            .collect();
        let (_, h2) = history::wait_health(&others, Duration::from_secs(10), "a new leader", |h| {
            h["leader"] == true && h["term"].as_u64().unwrap_or(0) > term
        });
        let failover = cut.elapsed();
        eprintln!(
            "row 4: new leader (term {} -> {}) {failover:?} after the cut",
            term, h2["term"]
        );
        assert!(
            failover < Duration::from_secs(5),
            "failover took {failover:?}"
        );
        // The old leader stops claiming to lead (check-quorum) while still cut off.
        let (_, old) = history::wait_health(
            &apis[l..=l],
            Duration::from_secs(5),
            "the old leader to step down",
            |h| h["leader"] == false,
        );
        eprintln!(
            "row 4: the isolated leader stepped down {:?} after the cut (term {})",
            cut.elapsed(),
            old["term"]
        );
        probe.join().unwrap()
    });
    std::thread::sleep(Duration::from_secs(6).saturating_sub(cut.elapsed()));
    net.heal();
    let healed_us = rec_now(&rec);
    eprintln!("row 4: healed after {:?}", cut.elapsed());
    eprintln!("row 4: writes sent to the isolated leader: {to_old:?}");
    let acked_by_minority: Vec<_> = to_old
        .iter()
        .filter(|(o, done)| matches!(o, Outcome::Ok(Ret::Submitted { .. })) && *done < healed_us)
        .collect();
    assert!(
        acked_by_minority.is_empty(),
        "the isolated leader acknowledged writes while cut off (cut at {cut_us} µs): {acked_by_minority:?}"
    );
    // The old leader follows the new one and catches up.
    std::thread::sleep(Duration::from_secs(2));
    let rec = work.stop();
    let present = history::settle(&apis, Duration::from_secs(30));
    history::wait_health(
        &apis[l..=l],
        Duration::from_secs(10),
        "the old leader to catch up",
        |h| h["workflows"].as_u64() == Some(present.len() as u64) && h["leader"] == false,
    );
    let report = rec.assert_ok("row 4", &present);
    let want = history::succeeded_items(&apis, &present);
    assert!(report.workflows_checked > 10, "{report:?}");
    // G3: every task's result accepted once (4 items per workflow, all noop).
    history::wait_health(&apis, Duration::from_secs(10), "one result per task", |h| {
        h["stats"]["tasks_succeeded"].as_u64() == Some(want)
    });
    eprintln!(
        "row 4: {} workflows, {} tasks, each result accepted once",
        present.len(),
        want
    );
}

fn rec_now(rec: &Recorder) -> u64 {
    rec.elapsed_us()
}
