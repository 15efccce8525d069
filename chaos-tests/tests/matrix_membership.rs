//! Fault matrix row 11: membership changes during faults, while clients write. A fourth server
//! is added and the leader is SIGKILLed right after the change is asked for (the change is
//! asked again of the new leader if it was lost); then a follower is removed while it is cut
//! off (its namespace partitioned, or SIGSTOPped where there are no namespaces). A monitor
//! polls every server's health all along: no two servers ever lead in one term. Client
//! histories check (no acknowledged write lost).

use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use troupe_chaos_tests::TestNode;
use troupe_chaos_tests::history::{self, Recorder, Workload};
use troupe_chaos_tests::netns::Fabric;

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

#[test]
fn membership_changes_during_a_leader_kill_and_a_partition_keep_one_leader_per_term() {
    let fabric = Fabric::best(58, 4);
    let tmp = tempfile::tempdir().unwrap();
    let mut cluster = fabric.cluster(tmp.path(), 3, 0, EXTRA);
    let mut apis: Vec<String> = cluster.servers.iter().map(|s| s.api.clone()).collect();
    apis.push(format!("http://{}:7600", fabric.ip(3)));

    // Leaders seen per term, by every server's own health.
    let leaders: Arc<Mutex<BTreeMap<u64, Vec<u64>>>> = Arc::default();
    let done = Arc::new(AtomicBool::new(false));
    let monitor = {
        let (leaders, done, apis) = (leaders.clone(), done.clone(), apis.clone());
        std::thread::spawn(move || {
            let agent: ureq::Agent = ureq::Agent::config_builder()
                .timeout_global(Some(Duration::from_millis(300)))
                .build()
                .into();
            for _ in 0..20_000 {
                if done.load(Ordering::SeqCst) {
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
                        let mut l = leaders.lock().unwrap();
                        let ids = l.entry(t).or_default();
                        if !ids.contains(&id) {
                            ids.push(id);
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(30));
            }
        })
    };
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
    done.store(true, Ordering::SeqCst);
    monitor.join().unwrap();
    let present = history::settle(&others, Duration::from_secs(30));
    let report = rec.assert_ok("row 11", &present);
    assert!(report.workflows_checked > 10, "{report:?}");
    let leaders = leaders.lock().unwrap();
    eprintln!("row 11: leaders seen per term: {leaders:?}");
    for (term, ids) in leaders.iter() {
        assert!(ids.len() <= 1, "two leaders in term {term}: {ids:?}");
    }
    assert!(
        leaders.len() >= 2,
        "the leader kill made a new term: {leaders:?}"
    );
    drop(newcomer);
}
