//! kill -9 the node mid-workflow, start it again on the same data dir: every acknowledged
//! workflow is there and finishes; attempts that were running re-run as attempt + 1; finished
//! steps and items are not re-run.

use std::collections::BTreeMap;
use std::time::Duration;
use troupe_chaos_tests::{TestNode, step};

fn lines(path: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn kill_9_mid_workflow_loses_nothing_and_reruns_only_what_was_running() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let marks = tmp.path().join("marks");
    std::fs::create_dir_all(&marks).unwrap();
    let m = marks.display();
    let spec = format!(
        r#"
name = "survive-kill-9"
[[step]]
id = "first"
map = {{ range = [0, 6] }}
run = ["sh", "-c", "echo $TROUPE_ITEM $TROUPE_ATTEMPT >> {m}/first.log"]

[[step]]
id = "slow"
needs = ["first"]
map = {{ range = [0, 8] }}
parallelism = 8
# Attempt 1 takes long enough to be killed mid-run; later attempts are quick.
run = ["sh", "-c", "echo start $TROUPE_ITEM $TROUPE_ATTEMPT >> {m}/slow.log; if [ $TROUPE_ATTEMPT = 1 ] && [ $TROUPE_ITEM -ge 2 ]; then sleep 2 & echo $! >> {m}/sleep.pids; wait; fi; echo done $TROUPE_ITEM $TROUPE_ATTEMPT >> {m}/slow.log"]

[[step]]
id = "last"
needs = ["slow"]
run = ["sh", "-c", "echo last $TROUPE_ATTEMPT >> {m}/last.log"]
"#
    );
    let mut node = TestNode::start(&data, &["--kill-grace-s", "1", "--snapshot-every", "5"]);
    let id = node.submit(&spec);
    // Wait until "slow" has items 0 and 1 done and the long ones running.
    node.wait_until(&id, Duration::from_secs(30), "slow items running", |v| {
        let s = step(v, "slow");
        s["succeeded"].as_u64() == Some(2) && s["running"].as_u64() == Some(6)
    });
    // "running" is committed once each process is spawned; its shell writes its line a moment
    // later (bounded wait).
    let started = || {
        lines(&marks.join("slow.log"))
            .iter()
            .filter(|l| l.starts_with("start"))
            .count()
    };
    let until = std::time::Instant::now() + Duration::from_secs(5);
    while started() < 8 && std::time::Instant::now() < until {
        std::thread::sleep(Duration::from_millis(10));
    }
    let started_before = started();
    assert_eq!(started_before, 8);
    // A second workflow, acknowledged just before the crash.
    let acked = node.submit("name = \"acked\"\n[[step]]\nid = \"a\"\nhandler = \"sleep\"\nwith = { duration = \"50ms\" }\n");

    node.kill9();
    let killed_at = std::time::Instant::now();
    let node = TestNode::start(&data, &["--kill-grace-s", "1", "--snapshot-every", "5"]);

    let done = node.wait(&id, Duration::from_secs(60));
    assert_eq!(done["status"], "succeeded", "{done}");
    let acked_done = node.wait(&acked, Duration::from_secs(30));
    assert_eq!(
        acked_done["status"], "succeeded",
        "the acknowledged workflow survived: {acked_done}"
    );

    // The `sleep`s under the killed attempts' shells outlived the node (PR_SET_PDEATHSIG only
    // reaches the shell); the restarted node killed them before running anything.
    for pid in lines(&marks.join("sleep.pids")) {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        assert!(
            stat.is_empty() || stat.contains(") Z"),
            "orphan sleep {pid} still runs after the restart: {stat}"
        );
    }
    // "first" finished before the crash: it never ran again.
    let first = lines(&marks.join("first.log"));
    assert_eq!(first.len(), 6, "first ran again: {first:?}");
    assert!(first.iter().all(|l| l.ends_with(" 1")), "{first:?}");
    // "slow": items 0 and 1 had finished (attempt 1 only); items 2..8 were running and re-ran as attempt 2.
    let mut attempts: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    for l in lines(&marks.join("slow.log"))
        .iter()
        .filter(|l| l.starts_with("start"))
    {
        let mut p = l.split(' ').skip(1).map(|x| x.parse::<u32>().unwrap());
        attempts
            .entry(p.next().unwrap())
            .or_default()
            .push(p.next().unwrap());
    }
    for item in 0..2 {
        assert_eq!(attempts[&item], vec![1], "finished item {item} re-ran");
    }
    for item in 2..8 {
        assert_eq!(
            attempts[&item],
            vec![1, 2],
            "running item {item} must re-run as attempt 2"
        );
    }
    // The killed attempts died with the node: none of them finished, even after their sleep.
    std::thread::sleep(Duration::from_millis(2_500).saturating_sub(killed_at.elapsed()));
    let done_lines = lines(&marks.join("slow.log"));
    for item in 2..8 {
        assert!(
            !done_lines.contains(&format!("done {item} 1")),
            "attempt 1 of item {item} outlived the node"
        );
    }
    assert_eq!(lines(&marks.join("last.log")), vec!["last 1".to_string()]);
    // Recovery went through a snapshot plus the log after it (not a full replay).
    let (_, health) = node.get("/v1/health");
    assert!(health["snapshot_index"].as_u64().unwrap() > 1, "{health}");
    let history = troupe_chaos_tests::history(&done);
    assert!(
        history
            .iter()
            .any(|h| h.contains("requeued as attempt + 1")),
        "{history:?}"
    );
}
