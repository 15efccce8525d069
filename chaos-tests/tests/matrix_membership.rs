//! Fault matrix row 11: membership changes during faults, while clients write. A fourth server
//! is added and the leader is SIGKILLed right after the change is asked for (the change is
//! asked again of the new leader if it was lost); then a follower is removed while it is cut
//! off (its namespace partitioned, or SIGSTOPped where there are no namespaces). A monitor
//! polls every server's health all along: no two servers ever lead in one term. Client
//! histories check (no acknowledged write lost).
//!
//! A second test adds a server while a worker is SIGKILLed mid-work: the worker's attempts are
//! re-placed as attempt + 1, every task's result is accepted once, the change completes and the
//! newcomer catches up, one leader per term.

use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use troupe_chaos_tests::history::{self, Recorder, Workload};
use troupe_chaos_tests::netns::Fabric;
use troupe_chaos_tests::{Cluster, TestNode, node_args, step};

fn spec(c: u32, n: u32) -> String {
    format!(
        "name = \"c{c}-{n}\"\n[[step]]\nid = \"a\"\nhandler = \"noop\"\nmap = {{ range = [0, 2] }}\n"
    )
}

const EXTRA: &[&str] = &["--snapshot-every", "50"];

fn voters(apis: &[String]) -> Vec<u64> {
    for api in apis {
        if let Ok(mut r) = ureq::get(&format!("{api}/v1/servers")).call()
            && let Ok(v) = r.body_mut().read_json::<Value>()
            && let Some(a) = v["voters"].as_array()
        {
            return a.iter().filter_map(|x| x.as_u64()).collect();
        }
    }
    Vec::new()
}

/// Asks any of `apis` for the change until one answers 200 (bounded).
fn change(apis: &[String], id: u64, action: &str, limit: Duration) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(5)))
        .build()
        .into();
    let deadline = Instant::now() + limit;
    let mut last = String::new();
    while Instant::now() < deadline {
        for api in apis {
            match agent
                .post(&format!("{api}/v1/servers"))
                .send_json(json!({ "raft_id": id, "action": action }))
            {
                Ok(r) if r.status() == 200 => return,
                Ok(mut r) => {
                    last = format!(
                        "{}: {}",
                        r.status(),
                        r.body_mut().read_to_string().unwrap_or_default()
                    )
                }
                Err(e) => last = e.to_string(),
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("{action} {id} not accepted in {limit:?}: {last}");
}

fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "waited {limit:?} for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Polls every server's health every 30 ms: the leaders each term saw (by Raft id).
struct Monitor {
    leaders: Arc<Mutex<BTreeMap<u64, Vec<u64>>>>,
    done: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl Monitor {
    fn start(apis: Vec<String>) -> Monitor {
        let leaders: Arc<Mutex<BTreeMap<u64, Vec<u64>>>> = Arc::default();
        let done = Arc::new(AtomicBool::new(false));
        let (l, d) = (leaders.clone(), done.clone());
        let thread = std::thread::spawn(move || {
            let agent: ureq::Agent = ureq::Agent::config_builder()
                .timeout_global(Some(Duration::from_millis(300)))
                .build()
                .into();
            for _ in 0..20_000 {
                if d.load(Ordering::SeqCst) {
                    break;
                }
                for api in &apis {
                    if let Ok(mut r) = agent.get(&format!("{api}/v1/health")).call()
                        && let Ok(h) = r.body_mut().read_json::<Value>()
                        && h["leader"] == true
                    {
                        let (t, id) = (
                            h["term"].as_u64().unwrap_or(0),
                            h["raft_id"].as_u64().unwrap_or(0),
                        );
                        let mut l = l.lock().unwrap();
                        let ids = l.entry(t).or_default();
                        if !ids.contains(&id) {
                            ids.push(id);
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(30));
            }
        });
        Monitor {
            leaders,
            done,
            thread,
        }
    }

    /// Stops polling; asserts at most one leader per term; returns what it saw.
    fn stop(self, what: &str) -> BTreeMap<u64, Vec<u64>> {
        self.done.store(true, Ordering::SeqCst);
        self.thread.join().unwrap();
        let leaders = self.leaders.lock().unwrap().clone();
        eprintln!("{what}: leaders seen per term: {leaders:?}");
        for (term, ids) in leaders.iter() {
            assert!(ids.len() <= 1, "two leaders in term {term}: {ids:?}");
        }
        assert!(!leaders.is_empty(), "the monitor saw no leader");
        leaders
    }
}

#[test]
fn membership_changes_during_a_leader_kill_and_a_partition_keep_one_leader_per_term() {
    let fabric = Fabric::best(58, 4);
    let tmp = tempfile::tempdir().unwrap();
    let mut cluster = fabric.cluster(tmp.path(), 3, 0, EXTRA);
    let mut apis: Vec<String> = cluster.servers.iter().map(|s| s.api.clone()).collect();
    apis.push(format!("http://{}:7600", fabric.ip(3)));

    let monitor = Monitor::start(apis.clone());
    let rec = Arc::new(Recorder::with_timeout(Duration::from_secs(8)));
    let work = Workload::start(
        rec.clone(),
        apis[..3].to_vec(),
        2,
        Duration::from_millis(30),
        spec,
    );
    std::thread::sleep(Duration::from_secs(1));

    // 1. Add server 4; SIGKILL the leader right after asking.
    let mut args = fabric.args(tmp.path(), 3, "--server", 3);
    args.extend(["--join-existing".to_string(), "4".to_string()]);
    args.extend(EXTRA.iter().map(|s| s.to_string()));
    let newcomer: TestNode = fabric.spawn(tmp.path(), 3, &args, &[]);
    let (l, _) = history::wait_leader(&apis[..3]);
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(2)))
        .build()
        .into();
    // The leader dies while the change is in flight (its answer is not waited for).
    let url = format!("{}/v1/servers", apis[l]);
    let ask = std::thread::spawn(move || {
        agent
            .post(&url)
            .send_json(json!({ "raft_id": 4, "action": "add" }))
            .map(|r| r.status().as_u16())
    });
    std::thread::sleep(Duration::from_millis(5));
    cluster.servers[l].kill9();
    let killed = Instant::now();
    let asked = ask.join().unwrap();
    eprintln!(
        "row 11: add 4 asked of leader {}, killed 5 ms later (answer: {asked:?})",
        l + 1
    );
    let live: Vec<String> = (0..4)
        .filter(|&i| i != l)
        .map(|i| apis[i].clone())
        .collect();
    history::wait_health(&live, Duration::from_secs(10), "a new leader", |h| {
        h["leader"] == true
    });
    eprintln!("row 11: new leader {:?} after the kill", killed.elapsed());
    if !voters(&live).contains(&4) {
        eprintln!("row 11: the add was lost with the leader: asked again");
        change(&live, 4, "add", Duration::from_secs(20));
    }
    wait_for("voters [1, 2, 3, 4]", Duration::from_secs(15), || {
        voters(&live) == vec![1, 2, 3, 4]
    });
    cluster.servers[l] = fabric.start_node(tmp.path(), l, 3, EXTRA, &[]);
    let (_, lead) = history::wait_leader(&live);
    let commit = lead["commit"].as_u64().unwrap_or(0);
    history::wait_health(
        &apis[3..],
        Duration::from_secs(20),
        "the newcomer to catch up",
        |h| h["applied"].as_u64().unwrap_or(0) >= commit,
    );

    // 2. Remove a follower while it is cut off.
    let (l2, _) = history::wait_leader(&apis);
    let f = (0..3).find(|&i| i != l2).unwrap();
    match fabric.net() {
        Some(net) => net.isolate(f),
        None => cluster.servers[f].signal(libc::SIGSTOP),
    }
    let others: Vec<String> = (0..4)
        .filter(|&i| i != f)
        .map(|i| apis[i].clone())
        .collect();
    change(&others, f as u64 + 1, "remove", Duration::from_secs(20));
    wait_for("the removal", Duration::from_secs(15), || {
        !voters(&others).contains(&(f as u64 + 1))
    });
    match fabric.net() {
        Some(net) => net.heal(),
        None => cluster.servers[f].signal(libc::SIGCONT),
    }
    cluster.servers[f].kill9(); // A removed server is stopped by hand.
    eprintln!(
        "row 11: server {} removed while cut off; voters {:?}",
        f + 1,
        voters(&others)
    );
    std::thread::sleep(Duration::from_secs(1));

    let rec = work.stop();
    let leaders = monitor.stop("row 11");
    let present = history::settle(&others, Duration::from_secs(30));
    let report = rec.assert_ok("row 11", &present);
    assert!(report.workflows_checked > 10, "{report:?}");
    assert!(
        leaders.len() >= 2,
        "the leader kill made a new term: {leaders:?}"
    );
    drop(newcomer);
}

/// The node ids of `start` marks without an `end` on `node` (attempts it was running).
fn running_on(marks: &str, node: &str) -> Vec<(String, u32)> {
    let mut open: Vec<(String, u32)> = Vec::new();
    for line in marks.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        let [what, n, task, attempt, ..] = f[..] else {
            continue;
        };
        if n != node {
            continue;
        }
        let key = (task.to_string(), attempt.parse().unwrap_or(0));
        if what == "start" {
            open.push(key);
        } else {
            open.retain(|k| *k != key);
        }
    }
    open
}

#[test]
fn a_server_added_while_a_worker_is_killed_mid_work_keeps_results_once_and_one_leader() {
    const EXTRA2: &[&str] = &[
        "--snapshot-every",
        "50",
        "--slots",
        "4",
        "--kill-grace-s",
        "1",
    ];
    let tmp = tempfile::tempdir().unwrap();
    let marks = tmp.path().join("marks.log");
    let mut cluster = Cluster::start(tmp.path(), 62, 3, 2, EXTRA2);
    let mut apis: Vec<String> = cluster.servers.iter().map(|s| s.api.clone()).collect();
    let monitor = Monitor::start(apis.clone());
    let rec = Arc::new(Recorder::with_timeout(Duration::from_secs(8)));
    let work = Workload::start(
        rec.clone(),
        apis.clone(),
        2,
        Duration::from_millis(40),
        spec,
    );
    // Work that keeps every node busy: 300 items of 150 ms, retried on failure.
    let big = format!(
        "name = \"busy\"\n[[step]]\nid = \"work\"\nmap = {{ range = [0, 300] }}\nparallelism = 32\nresources = {{ cpu = 1 }}\nretries = {{ attempts = 3, initial = \"50ms\" }}\nrun = [\"sh\", \"-c\", \"echo start $TROUPE_NODE $TROUPE_TASK_ID $TROUPE_ATTEMPT >> {m}; sleep 0.15; echo end $TROUPE_NODE $TROUPE_TASK_ID $TROUPE_ATTEMPT >> {m}\"]\n",
        m = marks.display()
    );
    let id = cluster.any().submit(&big);
    let victim = cluster.workers[0].get("/v1/health").1["node"]
        .as_str()
        .unwrap()
        .to_string();
    // The newcomer (Raft id 4) starts and waits to be added.
    let mut args = node_args(tmp.path(), 62, 5, "--server", 3);
    args.extend(["--join-existing".to_string(), "4".to_string()]);
    args.extend(EXTRA2.iter().map(|s| s.to_string()));
    let newcomer = TestNode::spawn(&tmp.path().join("n6"), &args, false);
    apis.push(newcomer.api.clone());
    // Mid-work: some items done, and the worker runs attempts right now.
    cluster
        .any()
        .wait_until(&id, Duration::from_secs(60), "50 items done", |v| {
            step(v, "work")["succeeded"].as_u64().unwrap_or(0) >= 50
        });
    let (l, h) = history::wait_leader(&apis[..3]);
    let term = h["term"].as_u64().unwrap_or(0);
    let deadline = Instant::now() + Duration::from_secs(20);
    while running_on(
        &std::fs::read_to_string(&marks).unwrap_or_default(),
        &victim,
    )
    .len()
        < 2
    {
        assert!(
            Instant::now() < deadline,
            "{victim} never ran 2 attempts at once"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    // The add is asked of the leader and the worker is SIGKILLed 5 ms later, while the change
    // is in flight.
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(5)))
        .build()
        .into();
    let url = format!("{}/v1/servers", apis[l]);
    let ask = std::thread::spawn(move || {
        agent
            .post(&url)
            .send_json(json!({ "raft_id": 4, "action": "add" }))
            .map(|r| r.status().as_u16())
    });
    std::thread::sleep(Duration::from_millis(5));
    let at_kill = std::fs::read_to_string(&marks).unwrap_or_default();
    cluster.workers[0].kill9();
    let killed = Instant::now();
    let cut_short = running_on(&at_kill, &victim);
    let asked = ask.join().unwrap();
    eprintln!(
        "row 11 (worker kill): add 4 asked of leader {}, worker {victim} killed 5 ms later with {} attempts running (answer: {asked:?})",
        l + 1,
        cut_short.len()
    );
    if !voters(&apis[..3]).contains(&4) && asked.as_ref().map_or(true, |c| *c != 200) {
        change(&apis[..3], 4, "add", Duration::from_secs(20));
    }
    wait_for("voters [1, 2, 3, 4]", Duration::from_secs(15), || {
        voters(&apis[..3]) == vec![1, 2, 3, 4]
    });
    let changed = killed.elapsed();
    // The killed worker is declared lost by its lease.
    wait_for("the worker declared lost", Duration::from_secs(10), || {
        let (_, v) = cluster.servers[l].get("/v1/nodes");
        v["nodes"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|n| n["id"] == victim.as_str() && n["status"] != "up")
    });
    let lost = killed.elapsed();
    eprintln!(
        "row 11 (worker kill): voters [1, 2, 3, 4] {changed:?} after the kill; worker lost {lost:?} after it"
    );
    let done = cluster.any().wait(&id, Duration::from_secs(120));
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(step(&done, "work")["succeeded"], 300, "{done}");
    assert!(
        troupe_chaos_tests::history(&done)
            .iter()
            .any(|h| h.contains("lost (no lease renewal")),
        "the workflow's history shows no lost node"
    );
    // Re-placed: each attempt the worker was running when it died ran again, as a later
    // attempt on another node.
    let all = std::fs::read_to_string(&marks).unwrap_or_default();
    for (task, attempt) in &cut_short {
        let again = all.lines().any(|line| {
            let f: Vec<&str> = line.split(' ').collect();
            matches!(f[..], ["start", n, t, a, ..] if n != victim && t == task && a.parse::<u32>().unwrap_or(0) > *attempt)
        });
        let ended_there = all
            .lines()
            .any(|l| l == format!("end {victim} {task} {attempt}"));
        assert!(
            again || ended_there,
            "{task} attempt {attempt} died with {victim} and was not run again"
        );
    }
    let replaced = cut_short
        .iter()
        .filter(|(task, attempt)| {
            all.lines().any(|line| {
                let f: Vec<&str> = line.split(' ').collect();
                matches!(f[..], ["start", n, t, a, ..] if n != victim && t == task && a.parse::<u32>().unwrap_or(0) > *attempt)
            })
        })
        .count();
    assert!(
        replaced > 0,
        "no attempt of the killed worker was re-placed"
    );
    // The newcomer catches up.
    let (_, lead) = history::wait_leader(&apis);
    let commit = lead["commit"].as_u64().unwrap_or(0);
    history::wait_health(
        &apis[3..],
        Duration::from_secs(20),
        "the newcomer to catch up",
        |h| h["applied"].as_u64().unwrap_or(0) >= commit,
    );
    std::thread::sleep(Duration::from_millis(500));
    let rec = work.stop();
    let leaders = monitor.stop("row 11 (worker kill)");
    let present = history::settle(&apis[..3], Duration::from_secs(30));
    let report = rec.assert_ok("row 11 (worker kill)", &present);
    assert!(report.workflows_checked > 5, "{report:?}");
    // G3: every task's result accepted once, the busy workflow's 300 with the rest.
    let want = history::succeeded_items(&apis[..3], &present);
    history::wait_health(&apis, Duration::from_secs(10), "one result per task", |h| {
        h["stats"]["tasks_succeeded"].as_u64() == Some(want)
    });
    let last_term = leaders.keys().last().copied().unwrap_or(0);
    eprintln!(
        "row 11 (worker kill): {} of {} attempts cut short were re-placed (the others had ended); {} workflows, {want} results once each; terms {term}..{last_term}",
        replaced,
        cut_short.len(),
        present.len()
    );
    drop(newcomer);
}
