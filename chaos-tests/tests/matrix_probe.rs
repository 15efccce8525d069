//! Fault matrix row 10: a node's resource probe fails (the failpoint of
//! `node/src/capacity.rs`: `TROUPE_FAILPOINT_PROBE=file:PATH`, honoured only with
//! `--fault-injection`). The node is reported degraded with the reason (`/v1/health`
//! `degraded`), advertises no capacity, gets 0 placements, and nothing panics; once the probe
//! works again (the file removed) its capacity comes back (the monitor's refresh, every 5 s)
//! and it runs work again.

use std::sync::Arc;
use std::time::{Duration, Instant};
use troupe_chaos_tests::history::{self, Recorder, Workload};
use troupe_chaos_tests::netns::{Fabric, wait_up};
use troupe_chaos_tests::{Cluster, TestNode};

fn spec(c: u32, n: u32) -> String {
    format!(
        "name = \"c{c}-{n}\"\n[[step]]\nid = \"a\"\nhandler = \"noop\"\nmap = {{ range = [0, 2] }}\n"
    )
}

fn capacity(node: &TestNode, id: &str) -> u64 {
    let (_, v) = node.get("/v1/nodes");
    v["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|n| n["id"] == id)
        .and_then(|n| n["cpu_milli"]["capacity"].as_u64())
        .unwrap_or(u64::MAX)
}

#[test]
fn a_failing_resource_probe_degrades_the_node_and_it_gets_no_work_until_it_recovers() {
    let fabric = Fabric::Loopback(56);
    let tmp = tempfile::tempdir().unwrap();
    let flag = tmp.path().join("probe-fails");
    std::fs::write(&flag, "").unwrap();
    let env = format!("file:{}", flag.display());
    let base = ["--fault-injection", "--slots", "4"];
    let servers: Vec<TestNode> = (0..3)
        .map(|i| {
            if i == 2 {
                let extra = [&base[..], &["--label", "role=probe"]].concat();
                fabric.start_node(
                    tmp.path(),
                    i,
                    3,
                    &extra,
                    &[("TROUPE_FAILPOINT_PROBE", env.as_str())],
                )
            } else {
                fabric.start_node(tmp.path(), i, 3, &base, &[])
            }
        })
        .collect();
    let cluster = Cluster {
        servers,
        workers: vec![],
    };
    wait_up(&cluster, 3, Duration::from_secs(60));
    let apis: Vec<String> = cluster.servers.iter().map(|s| s.api.clone()).collect();
    let rec = Arc::new(Recorder::with_timeout(Duration::from_secs(8)));
    let work = Workload::start(
        rec.clone(),
        apis.clone(),
        1,
        Duration::from_millis(50),
        spec,
    );
    let bad = cluster.servers[2].get("/v1/health").1;
    let bad_id = bad["node"].as_str().unwrap().to_string();
    let why = bad["degraded"].as_str().unwrap_or("").to_string();
    assert!(why.contains("resource probe failed"), "{bad}");
    eprintln!("row 10: {bad_id} degraded: {why}");
    assert_eq!(capacity(&cluster.servers[0], &bad_id), 0);

    let marks = tmp.path().join("marks.log");
    let job = |name: &str, items: u32, labels: &str| {
        format!(
            "name = \"{name}\"\n[[step]]\nid = \"a\"\nmap = {{ range = [0, {items}] }}\nparallelism = 8\n{labels}run = [\"sh\", \"-c\", \"echo $TROUPE_NODE >> {m}; sleep 0.05\"]\n",
            m = marks.display()
        )
    };
    // No resource request: only the unknown capacity keeps the items off the degraded node.
    let id = cluster.servers[0].submit(&job("spread", 40, ""));
    let done = cluster.servers[0].wait(&id, Duration::from_secs(60));
    assert_eq!(done["status"], "succeeded", "{done}");
    let ran = std::fs::read_to_string(&marks).unwrap();
    let on_bad = ran.lines().filter(|l| *l == bad_id).count();
    assert_eq!(
        on_bad, 0,
        "{on_bad} of 40 items placed on the degraded node"
    );
    eprintln!("row 10: 40 items, 0 placed on the degraded node");

    // The probe works again: the capacity comes back at the next refresh.
    std::fs::remove_file(&flag).unwrap();
    let t = Instant::now();
    while capacity(&cluster.servers[0], &bad_id) == 0 {
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "capacity not back in 15 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!(
        "row 10: capacity back {:?} after the probe recovered",
        t.elapsed()
    );
    assert_eq!(
        cluster.servers[2].get("/v1/health").1["degraded"],
        serde_json::Value::Null
    );
    let id = cluster.servers[0].submit(&job(
        "on-probe",
        4,
        "resources = { node_labels = { role = \"probe\" } }\n",
    ));
    let done = cluster.servers[0].wait(&id, Duration::from_secs(30));
    assert_eq!(done["status"], "succeeded", "{done}");
    let ran = std::fs::read_to_string(&marks).unwrap();
    assert_eq!(ran.lines().filter(|l| *l == bad_id).count(), 4);

    let rec = work.stop();
    let present = history::settle(&apis, Duration::from_secs(30));
    rec.assert_ok("row 10", &present);
    for s in &cluster.servers {
        assert!(!s.log().contains("panicked"), "a panic: {}", s.log());
    }
}
