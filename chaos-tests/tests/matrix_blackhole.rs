//! Fault matrix row 4 through `troupe chaos partition` (no namespaces needed): the leader is cut
//! from every other node by a silent blackhole partition — its cluster sessions stay up, every
//! frame (Raft, Exec, Propose, Renew) to and from it is dropped — while clients submit and read
//! on every server, and its HTTP API still answers (writes are sent straight to it). The
//! blackholed leader acknowledges no write while cut off and steps down (check-quorum); the
//! majority elects a new leader in a higher term; after the heal every acknowledged workflow is
//! present (history checker), and every task's result is accepted exactly once. Then a
//! follower is partitioned with `api`: its API answers nothing while cut (a client times out)
//! and a request held through the cut is refused unprocessed when it heals. Last, through the
//! CLI, a follower is partitioned with `--mode reset` (sessions dropped, no frame dropped): it
//! falls behind while cut and catches up after.

use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{Duration, Instant};
use troupe_chaos_tests::Cluster;
use troupe_chaos_tests::chaos_run::troupe_cli;
use troupe_chaos_tests::history::{self, Outcome, Recorder, Ret, Workload};

fn spec(c: u32, n: u32) -> String {
    format!(
        "name = \"c{c}-{n}\"\n[[step]]\nid = \"a\"\nhandler = \"noop\"\nmap = {{ range = [0, 4] }}\n"
    )
}

fn agent(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(timeout))
        .build()
        .into()
}

fn post(api: &str, path: &str, body: &Value) -> (u16, Value) {
    let mut r = agent(Duration::from_secs(5))
        .post(&format!("{api}{path}"))
        .send_json(body)
        .unwrap_or_else(|e| panic!("POST {api}{path}: {e}"));
    let code = r.status().as_u16();
    let text = r.body_mut().read_to_string().unwrap_or_default();
    (
        code,
        serde_json::from_str(&text).unwrap_or(json!({ "raw": text })),
    )
}

fn get(api: &str, path: &str) -> Value {
    let mut r = agent(Duration::from_secs(5))
        .get(&format!("{api}{path}"))
        .call()
        .unwrap_or_else(|e| panic!("GET {api}{path}: {e}"));
    serde_json::from_str(&r.body_mut().read_to_string().unwrap_or_default()).unwrap_or_default()
}

fn frames_dropped(api: &str) -> u64 {
    get(api, "/v1/chaos/faults?local=true")["frames_dropped"]
        .as_u64()
        .unwrap_or(0)
}

#[test]
fn a_blackholed_leader_acks_nothing_and_the_majority_fails_over() {
    let tmp = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(
        tmp.path(),
        61,
        3,
        1,
        &["--fault-injection", "--snapshot-every", "200"],
    );
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
    let leader = h["node"].as_str().unwrap().to_string();
    let (code, v) = post(
        &apis[l],
        "/v1/chaos/faults",
        &json!({ "kind": "partition", "node": leader, "for_ms": 6000 }),
    );
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["fault"]["mode"], "blackhole", "{v}");
    let cut = Instant::now();
    let others: Vec<String> = (0..3)
        .filter(|&i| i != l)
        .map(|i| apis[i].clone())
        .collect();
    let to_old = std::thread::scope(|s| {
        // Writes sent straight to the blackholed leader (its API is not cut).
        let probe = s.spawn(|| {
            let mut outs = Vec::new();
            for k in 0..2 {
                let o = rec.submit(90, &apis[l], &spec(90, k), Some(&format!("c90-{k}")));
                outs.push((o, rec.elapsed_us()));
            }
            outs
        });
        let (_, h2) = history::wait_health(&others, Duration::from_secs(10), "a new leader", |h| {
            h["leader"] == true && h["term"].as_u64().unwrap_or(0) > term
        });
        let failover = cut.elapsed();
        eprintln!(
            "blackhole: new leader (term {term} -> {}) {failover:?} after the cut",
            h2["term"]
        );
        assert!(
            failover < Duration::from_secs(5),
            "failover took {failover:?}"
        );
        let (_, old) = history::wait_health(
            &apis[l..=l],
            Duration::from_secs(5),
            "the blackholed leader to step down",
            |h| h["leader"] == false,
        );
        eprintln!(
            "blackhole: the cut-off leader stepped down {:?} after the cut (term {}, still cut: {})",
            cut.elapsed(),
            old["term"],
            cut.elapsed() < Duration::from_secs(6)
        );
        assert!(
            cut.elapsed() < Duration::from_secs(6),
            "it stepped down only after the heal"
        );
        probe.join().unwrap()
    });
    // The cut node dropped its peers' frames, and the peers dropped its frames (stamped).
    let dropped_here = frames_dropped(&apis[l]);
    let dropped_there: u64 = others.iter().map(|a| frames_dropped(a)).sum();
    eprintln!(
        "blackhole: frames dropped at the cut leader {dropped_here}, at the other servers {dropped_there}"
    );
    assert!(dropped_here > 0 && dropped_there > 0);
    let log = cluster.servers[l].log();
    assert!(
        !log.contains("chaos partition: dropping the session"),
        "a blackhole must not drop sessions"
    );
    std::thread::sleep(
        Duration::from_secs(6).saturating_sub(cut.elapsed()) + Duration::from_millis(300),
    );
    let healed_us = rec.elapsed_us();
    eprintln!("blackhole: healed after {:?}", cut.elapsed());
    eprintln!("blackhole: writes sent to the cut-off leader: {to_old:?}");
    let acked_while_cut: Vec<_> = to_old
        .iter()
        .filter(|(o, done)| matches!(o, Outcome::Ok(Ret::Submitted { .. })) && *done < healed_us)
        .collect();
    assert!(
        acked_while_cut.is_empty(),
        "the blackholed leader acknowledged writes while cut off: {acked_while_cut:?}"
    );
    std::thread::sleep(Duration::from_secs(2));
    let rec = work.stop();
    let present = history::settle(&apis, Duration::from_secs(30));
    for (o, _) in &to_old {
        if let Outcome::Ok(Ret::Submitted { id, .. }) = o {
            assert!(present.contains(id), "{id} acknowledged but not in the log");
        }
    }
    history::wait_health(
        &apis[l..=l],
        Duration::from_secs(10),
        "the old leader to catch up",
        |h| h["workflows"].as_u64() == Some(present.len() as u64) && h["leader"] == false,
    );
    let report = rec.assert_ok("blackhole", &present);
    assert!(report.workflows_checked > 10, "{report:?}");
    let want = history::succeeded_items(&apis, &present);
    history::wait_health(&apis, Duration::from_secs(10), "one result per task", |h| {
        h["stats"]["tasks_succeeded"].as_u64() == Some(want)
    });
    eprintln!(
        "blackhole: {} workflows, {} tasks, each result accepted once",
        present.len(),
        want
    );

    // `api`: a follower's HTTP API answers nothing while cut, then refuses what it held.
    let (f, _) = history::wait_health(&apis, Duration::from_secs(10), "a follower", |h| {
        h["leader"] == false
    });
    let follower = get(&apis[f], "/v1/health")["node"]
        .as_str()
        .unwrap()
        .to_string();
    let (code, v) = post(
        &apis[(f + 1) % 3],
        "/v1/chaos/faults",
        &json!({ "kind": "partition", "node": follower, "for_ms": 2000, "api": true }),
    );
    assert_eq!(code, 200, "{v}");
    let cut = Instant::now();
    std::thread::sleep(Duration::from_millis(100));
    let silent = agent(Duration::from_millis(800))
        .get(&format!("{}/v1/health", apis[f]))
        .call();
    assert!(
        matches!(&silent, Err(ureq::Error::Timeout(_))),
        "a cut API must not answer: {:?}",
        silent.map(|r| r.status())
    );
    let mut held = agent(Duration::from_secs(5))
        .get(&format!("{}/v1/health", apis[f]))
        .call()
        .expect("an answer once healed");
    let held_for = cut.elapsed();
    let text = held.body_mut().read_to_string().unwrap_or_default();
    assert_eq!(held.status().as_u16(), 503, "{text}");
    assert!(text.contains("partitioned by chaos"), "{text}");
    assert!(held_for >= Duration::from_millis(1900), "{held_for:?}");
    eprintln!("blackhole: the cut API held a request {held_for:?}, then refused it unprocessed");
    history::wait_health(&apis[f..=f], Duration::from_secs(5), "the API back", |h| {
        h["status"] == "ok"
    });

    // `--mode reset` through the CLI: the follower's sessions are dropped (no frame dropped by
    // it); it falls behind while cut and catches up once healed.
    let (l2, _) = history::wait_leader(&apis);
    let f2 = (0..3).find(|&i| i != l2).unwrap();
    let follower = get(&apis[f2], "/v1/health")["node"]
        .as_str()
        .unwrap()
        .to_string();
    let before = frames_dropped(&apis[f2]);
    let out = troupe_cli(
        &apis[l2],
        None,
        &[
            "--json",
            "chaos",
            "partition",
            &follower,
            "--mode",
            "reset",
            "--for",
            "2s",
        ],
        Duration::from_secs(20),
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    assert!(
        out.status.success() && v["fault"]["mode"] == "reset",
        "{v} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cut = Instant::now();
    std::thread::sleep(Duration::from_millis(300));
    let wf = rec.submit(95, &apis[l2], &spec(95, 0), Some("c95-0"));
    assert!(matches!(wf, Outcome::Ok(Ret::Submitted { .. })), "{wf:?}");
    let commit = get(&apis[l2], "/v1/health")["commit"].as_u64().unwrap_or(0);
    // A connected follower applies a commit within a heartbeat or two (50 ms ticks).
    std::thread::sleep(Duration::from_millis(600));
    let behind = get(&apis[f2], "/v1/health")["applied"]
        .as_u64()
        .unwrap_or(0);
    assert!(
        cut.elapsed() < Duration::from_millis(1900),
        "too slow to look while cut"
    );
    assert!(
        behind < commit,
        "a reset-partitioned follower kept up: applied {behind}, commit {commit}"
    );
    history::wait_health(
        &apis[f2..=f2],
        Duration::from_secs(10),
        "the reset follower to catch up",
        |h| h["applied"].as_u64().unwrap_or(0) >= commit,
    );
    assert_eq!(
        frames_dropped(&apis[f2]),
        before,
        "reset mode dropped frames"
    );
    eprintln!(
        "blackhole: a reset partition left the follower at {behind} < {commit} while cut; caught up {:?} after the cut",
        cut.elapsed()
    );
}
