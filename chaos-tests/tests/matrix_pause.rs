//! Fault matrix row 3: the leader is paused (SIGSTOP) past the election timeout, then resumed
//! (SIGCONT). Writes sent to it during the pause get no success unless they are in the new
//! leader's log (the history checker's "acknowledged submits present"); the majority elects a
//! new leader; on resume the old leader steps down. Client histories checked; every task's
//! result accepted once.

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
fn a_paused_leader_acks_nothing_after_the_new_term_and_steps_down() {
    let fabric = Fabric::best(52, 3);
    let tmp = tempfile::tempdir().unwrap();
    let cluster = fabric.cluster(tmp.path(), 3, 0, &[]);
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

    let (l, h) = history::wait_leader(&apis);
    let term = h["term"].as_u64().unwrap();
    cluster.servers[l].signal(libc::SIGSTOP);
    let paused = Instant::now();
    let to_paused = std::thread::scope(|s| {
        // Writes sent to the paused leader: its kernel accepts the connection, the process
        // handles them only after SIGCONT, in a term that is over.
        let probe = s.spawn(|| {
            (0..2)
                .map(|k| rec.submit(91, &apis[l], &spec(91, k), Some(&format!("c91-{k}"))))
                .collect::<Vec<_>>()
        });
        let others: Vec<String> = (0..3)
            .filter(|&i| i != l)
            .map(|i| apis[i].clone())
            .collect();
        let (_, h2) = history::wait_health(&others, Duration::from_secs(10), "a new leader", |h| {
            h["leader"] == true && h["term"].as_u64().unwrap_or(0) > term
        });
        let new_term = h2["term"].as_u64().unwrap();
        eprintln!(
            "row 3: new leader (term {term} -> {new_term}) {:?} after the pause",
            paused.elapsed()
        );
        std::thread::sleep(Duration::from_secs(3).saturating_sub(paused.elapsed()));
        cluster.servers[l].signal(libc::SIGCONT);
        let resumed = Instant::now();
        let (_, old) = history::wait_health(
            &apis[l..=l],
            Duration::from_secs(5),
            "the resumed leader to step down",
            |h| h["leader"] == false && h["term"].as_u64().unwrap_or(0) >= new_term,
        );
        eprintln!(
            "row 3: the resumed leader stepped down {:?} after SIGCONT (term {})",
            resumed.elapsed(),
            old["term"]
        );
        probe.join().unwrap()
    });
    eprintln!("row 3: writes sent to the paused leader: {to_paused:?}");
    std::thread::sleep(Duration::from_secs(1));
    let rec = work.stop();
    let present = history::settle(&apis, Duration::from_secs(30));
    // A success for a write sent to the paused leader must name a workflow in the new log.
    for o in &to_paused {
        if let Outcome::Ok(Ret::Submitted { id, .. }) = o {
            assert!(
                present.contains(id),
                "{id} acknowledged by the paused leader is not in the log"
            );
        }
    }
    let report = rec.assert_ok("row 3", &present);
    let want = history::succeeded_items(&apis, &present);
    assert!(report.workflows_checked > 10, "{report:?}");
    history::wait_health(&apis, Duration::from_secs(10), "one result per task", |h| {
        h["stats"]["tasks_succeeded"].as_u64() == Some(want)
    });
    eprintln!(
        "row 3: {} workflows, {} tasks, each result accepted once",
        present.len(),
        want
    );
}
