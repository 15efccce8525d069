//! `troupe chaos skew-clock` on a worker skews the node's own clock (`NodeConfig::clock`): its
//! lease keeper, renewals and timers, not only the Raft log's entry stamps. Real processes: 3
//! servers and 2 workers (`pool = "w"`), all with `--fault-injection`.
//!
//! - **5 s ahead, during a 1 s cut**: while renewals succeed they are stamped with the skewed
//!   clock and nothing changes; but the cut stops them, and the worker's lease keeper reads its
//!   last renewal (stamped before the jump) as 5 s old and fences itself, although the cut is
//!   shorter than the 1.5 s after which it would. It registers again (one new epoch) and its
//!   attempts run again as attempt + 1. When the skew heals its clock steps back: nothing.
//! - **10 s behind, while cut off for 5 s**: the leader declares it lost after its 2 s lease and
//!   places its attempt on the other worker, but the worker's clock says its lease is fresh, so
//!   it does not fence itself: its attempt runs on to its end past the lease (without the skew
//!   it would have been killed 1.5 s into the cut). After the heal the leader disowns its epoch
//!   and it fences then. Every task's result is accepted once (`troupe chaos verify`: G3, G4).
//! - **A leader 5 s ahead**: its lease judge reads the jump as a pause (it logs that it did not
//!   run for a whole lease) and does not count it against the nodes: no node is declared lost.

use serde_json::{Value, json};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use troupe_chaos_tests::chaos_run::{json_of, troupe_cli};
use troupe_chaos_tests::{Cluster, ClusterOpts, TestNode, history, step};

const EXTRA: &[&str] = &["--fault-injection", "--kill-grace-s", "1"];
const WORKER: &[&str] = &["--label", "pool=w"];
/// What the lease keeper logs when it fences itself on its own clock.
const LAPSED: &str = "no leader renewed the lease";
/// What it logs when the leader answers that it no longer knows the node's epoch.
const DISOWNED: &str = "the leader no longer knows this node's epoch";

fn cluster(dir: &Path, net: u8) -> Cluster {
    let opts = ClusterOpts {
        extra: EXTRA,
        worker_extra: WORKER,
        token: None,
    };
    Cluster::start_with(dir, net, 3, 2, &opts)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// `items` tasks on the workers, each `sleep_s` long, marking its start and end (with the wall
/// clock of the test machine, in ms) in `marks`.
fn job(items: u32, sleep_s: f64, marks: &Path) -> String {
    format!(
        "name = \"skewed\"\n[[step]]\nid = \"work\"\nmap = {{ range = [0, {items}] }}\nparallelism = 8\nresources = {{ cpu = 1, node_labels = {{ pool = \"w\" }} }}\nretries = {{ attempts = 3, initial = \"50ms\" }}\nrun = [\"sh\", \"-c\", \"echo start $TROUPE_NODE $TROUPE_TASK_ID $TROUPE_ATTEMPT $(date +%s%3N) >> {m}; sleep {sleep_s}; echo end $TROUPE_NODE $TROUPE_TASK_ID $TROUPE_ATTEMPT $(date +%s%3N) >> {m}\"]\n",
        m = marks.display()
    )
}

/// A mark line: (kind, node, task, attempt, wall ms).
fn marks(path: &Path) -> Vec<(String, String, String, u32, u64)> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            Some((
                f.first()?.to_string(),
                f.get(1)?.to_string(),
                f.get(2)?.to_string(),
                f.get(3)?.parse().ok()?,
                f.get(4)?.parse().ok()?,
            ))
        })
        .collect()
}

fn node_id(n: &TestNode) -> String {
    n.get("/v1/health").1["node"].as_str().unwrap().to_string()
}

/// The node's (epoch, status) in the replicated state.
fn epoch(c: &mut Cluster, id: &str) -> (u64, String) {
    let (_, v) = c.any().get("/v1/nodes");
    let n = v["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"] == id)
        .cloned()
        .unwrap_or_default();
    (
        n["epoch"].as_u64().unwrap_or(0),
        n["status"].as_str().unwrap_or("").to_string(),
    )
}

/// Waits (bounded) until `f` holds.
fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "waited {limit:?} for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `troupe chaos ARGS` through `api`; panics with its stderr unless it succeeded.
fn chaos(api: &str, args: &[&str]) {
    let mut all = vec!["chaos"];
    all.extend_from_slice(args);
    let out = troupe_cli(api, None, &all, Duration::from_secs(20));
    assert!(
        out.status.success(),
        "troupe chaos {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `troupe chaos verify --json` holds every invariant; returns the report.
fn verify(api: &str) -> Value {
    let out = troupe_cli(
        api,
        None,
        &["--json", "chaos", "verify"],
        Duration::from_secs(60),
    );
    let r = json_of(&out);
    assert_eq!(r["ok"], json!(true), "{r:#}");
    r
}

fn lines_with(log: &str, what: &str) -> usize {
    log.lines().filter(|l| l.contains(what)).count()
}

/// The `since_ms` of each line where the lease keeper fenced itself on its own clock.
fn lapses(log: &str) -> Vec<u64> {
    log.lines()
        .filter(|l| l.contains(LAPSED))
        .filter_map(|l| {
            let at = l.find("since_ms=")? + "since_ms=".len();
            l[at..]
                .split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        })
        .collect()
}

#[test]
fn a_worker_skewed_ahead_reads_its_lease_as_lapsed_and_fences_early() {
    let tmp = tempfile::tempdir().unwrap();
    let marks_at = tmp.path().join("marks.log");
    let mut c = cluster(tmp.path(), 71);
    let w0 = node_id(&c.workers[0]);
    let id = c.any().submit(&job(24, 0.4, &marks_at));
    c.any()
        .wait_until(&id, Duration::from_secs(60), "4 items done", |v| {
            step(v, "work")["succeeded"].as_u64().unwrap_or(0) >= 4
        });
    let (e0, _) = epoch(&mut c, &w0);
    assert!(lapses(&c.workers[0].log()).is_empty());

    // A 1 s cut: shorter than the 1.5 s after which a worker fences itself. While it lasts the
    // worker's clock jumps 5 s ahead (after its last renewal was stamped), so its next check
    // reads that renewal as 5 s old.
    let api = c.servers[0].api.clone();
    let cut = Instant::now();
    chaos(&api, &["partition", &w0, "--for", "1s"]);
    chaos(&api, &["skew-clock", &w0, "--skew", "5s", "--for", "4s"]);
    wait_for("the worker to fence itself", Duration::from_secs(3), || {
        !lapses(&c.workers[0].log()).is_empty()
    });
    let fenced_after = cut.elapsed();
    let since = lapses(&c.workers[0].log())[0];
    assert!(
        since >= 5_000,
        "it fenced, but read its last renewal as only {since} ms old: not the skew"
    );
    let mut e1 = 0;
    wait_for("its new registration", Duration::from_secs(10), || {
        let (e, s) = epoch(&mut c, &w0);
        e1 = e;
        e > e0 && s == "up"
    });
    // The skew heals 4 s after it began: the clock steps back 5 s, which fences nothing.
    std::thread::sleep(Duration::from_secs(7).saturating_sub(cut.elapsed()));
    let (e2, s2) = epoch(&mut c, &w0);
    assert_eq!(
        (e2, s2.as_str()),
        (e1, "up"),
        "registered again after the heal"
    );
    assert_eq!(lapses(&c.workers[0].log()).len(), 1, "fenced again");

    let done = c.any().wait(&id, Duration::from_secs(120));
    assert_eq!(done["status"], "succeeded", "{done}");
    let r = verify(&c.any().api.clone());
    let apis: Vec<String> = c.servers.iter().map(|s| s.api.clone()).collect();
    let present = std::iter::once(id.clone()).collect();
    assert_eq!(history::succeeded_items(&apis, &present), 24);
    let reruns = marks(&marks_at)
        .iter()
        .filter(|m| m.0 == "start" && m.3 >= 2)
        .count();
    eprintln!(
        "skew +5s under a 1 s cut: {w0} fenced itself {fenced_after:?} after the cut, reading its last renewal as {since} ms old (epoch {e0} -> {e1}); none after the heal; {reruns} attempt(s) run again; verify: {} results accepted, {} refused",
        r["reports_accepted"], r["reports_refused"]
    );
}

#[test]
fn a_worker_skewed_back_outlives_its_lease_and_its_late_result_is_not_accepted_twice() {
    let tmp = tempfile::tempdir().unwrap();
    let marks_at = tmp.path().join("marks.log");
    let mut c = cluster(tmp.path(), 72);
    let w0 = node_id(&c.workers[0]);
    let id = c.any().submit(&job(8, 4.0, &marks_at));
    // Cut it off right after one of its attempts started: that attempt ends 4 s later.
    wait_for(
        "an attempt started on the worker",
        Duration::from_secs(60),
        || marks(&marks_at).iter().any(|m| m.0 == "start" && m.1 == w0),
    );
    let w0_api = c.servers[0].api.clone();
    let cut_ms = now_ms();
    let cut = Instant::now();
    chaos(&w0_api, &["partition", &w0, "--for", "5s"]);
    // After the cut began (its last renewal was stamped before): 10 s behind, for longer than
    // the cut and the re-dial.
    chaos(&w0_api, &["skew-clock", &w0, "--skew=-10s", "--for", "12s"]);
    c.any().wait_until(
        &id,
        Duration::from_secs(10),
        "the worker declared lost",
        |v| {
            troupe_chaos_tests::history(v)
                .iter()
                .any(|l| l.contains(&format!("node {w0} lost (no lease renewal")))
        },
    );
    let lost_after = cut.elapsed();
    // After the heal the leader disowns its epoch: fenced then, not by its own clock.
    wait_for(
        "the leader to disown the worker",
        Duration::from_secs(6),
        || cut.elapsed() > Duration::from_secs(5) && lines_with(&c.workers[0].log(), DISOWNED) >= 1,
    );
    let log = c.workers[0].log();
    assert_eq!(
        lines_with(&log, LAPSED),
        0,
        "its clock was behind: it must not have seen its lease lapse during the cut:\n{log}"
    );
    // Its attempt ran to the end past the lease (2 s), while the other worker ran it again.
    let m = marks(&marks_at);
    let late: Vec<_> = m
        .iter()
        .filter(|(k, n, _, _, at)| k == "end" && *n == w0 && *at > cut_ms + 2_000)
        .collect();
    assert!(
        !late.is_empty(),
        "no attempt of {w0} ran past its lease: {m:?}"
    );
    let again = late.iter().all(|(_, _, task, a, _)| {
        m.iter()
            .any(|(k, n, t, b, _)| k == "start" && *n != w0 && t == task && *b > *a)
    });
    assert!(
        again,
        "a late attempt was not placed again elsewhere: {m:?}"
    );

    let done = c.any().wait(&id, Duration::from_secs(120));
    assert_eq!(done["status"], "succeeded", "{done}");
    let r = verify(&c.any().api.clone());
    let apis: Vec<String> = c.servers.iter().map(|s| s.api.clone()).collect();
    let present = std::iter::once(id.clone()).collect();
    assert_eq!(history::succeeded_items(&apis, &present), 8);
    let (_, health) =
        history::wait_health(&apis, Duration::from_secs(10), "one result per task", |h| {
            h["stats"]["tasks_succeeded"].as_u64() == Some(8)
        });
    eprintln!(
        "skew -10s under a 5 s cut: {w0} declared lost {lost_after:?} after the cut, never fenced by its own clock, {} attempt(s) ran past the lease and were run again elsewhere; {} stale report(s) refused; verify: {} results accepted, {} refused",
        late.len(),
        health["stats"]["stale_reports_refused"],
        r["reports_accepted"],
        r["reports_refused"]
    );
}

#[test]
fn a_leader_skewed_ahead_reads_the_jump_as_a_pause_and_declares_no_one_lost() {
    let tmp = tempfile::tempdir().unwrap();
    let marks_at = tmp.path().join("marks.log");
    let mut c = cluster(tmp.path(), 73);
    let id = c.any().submit(&job(16, 0.3, &marks_at));
    c.any()
        .wait_until(&id, Duration::from_secs(60), "2 items done", |v| {
            step(v, "work")["succeeded"].as_u64().unwrap_or(0) >= 2
        });
    let mut leader = None;
    wait_for("a leader", Duration::from_secs(10), || {
        leader = c.leader();
        leader.is_some()
    });
    let l = leader.unwrap();
    let lid = node_id(&c.servers[l]);
    const PAUSED: &str = "this leader did not run for a whole lease";
    assert_eq!(lines_with(&c.servers[l].log(), PAUSED), 0);
    // 5 s ahead: every renewal in the leader's table looks 5 s old at its next judgement.
    chaos(
        &c.servers[l].api.clone(),
        &["skew-clock", &lid, "--skew", "5s", "--for", "2s"],
    );
    wait_for("the judge to see the jump", Duration::from_secs(3), || {
        lines_with(&c.servers[l].log(), PAUSED) == 1
    });
    let done = c.any().wait(&id, Duration::from_secs(120));
    assert_eq!(done["status"], "succeeded", "{done}");
    let h = troupe_chaos_tests::history(&done);
    assert!(
        !h.iter().any(|l| l.contains(" lost (no lease renewal")),
        "a leader's clock jump declared nodes lost: {h:?}"
    );
    verify(&c.any().api.clone());
    eprintln!("skew +5s on the leader {lid}: read as a pause, no node declared lost");
}
