//! The API through a follower and a worker: the forwarder keeps the method, headers, status and
//! body; every error is JSON; a write through a follower works like one sent to the leader; the
//! dashboard is served by a follower and a worker.
//! Paused servers: a follower is up again soon after it resumes, a resumed leader claims
//! nothing it did not do, and neither reads as a refused handshake in any log.

use serde_json::{Value, json};
use troupe_chaos_tests::Cluster;

fn call(method: &str, url: &str, body: Option<&str>) -> (u16, Value, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let r = match (method, body) {
        ("PUT", b) => agent
            .put(url)
            .header("content-type", "application/json")
            .send(b.unwrap_or("{}")),
        ("DELETE", _) => agent.delete(url).call(),
        ("POST", Some(b)) => agent.post(url).header("content-type", "text/plain").send(b),
        _ => agent.get(url).call(),
    };
    let mut r = r.expect("an answer");
    let status = r.status().as_u16();
    let ctype = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let text = r.body_mut().read_to_string().unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
        ctype,
    )
}

#[test]
fn a_follower_and_a_worker_forward_method_status_and_json_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(tmp.path(), 36, 3, 1, &[]);
    let leader = cluster.leader().expect("a leader");
    let follower = (0..3).find(|&i| i != leader).unwrap();
    let via = [
        cluster.servers[follower].api.clone(),
        cluster.workers[0].api.clone(),
    ];
    for api in &via {
        // A worker learns the leader's API address from its lease renewals: wait for it.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
        while call("GET", &format!("{api}/v1/workflows"), None).0 != 200 {
            assert!(
                std::time::Instant::now() < deadline,
                "{api} never forwarded"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        // The dashboard is served by every node, a worker too.
        let (code, page, ctype) = call("GET", &format!("{api}/"), None);
        assert_eq!(code, 200, "{api}: {page}");
        assert!(ctype.starts_with("text/html"), "{ctype}");
        assert!(page.as_str().unwrap().contains("/ui/app.js"), "{page}");
        // A PUT is not turned into a GET: it is refused as the leader refuses it.
        let (code, v, ctype) = call("PUT", &format!("{api}/v1/workflows"), Some("{}"));
        assert_eq!(code, 405, "{api}: {v}");
        assert!(ctype.starts_with("application/json"), "{ctype}");
        assert!(
            v["error"].as_str().unwrap().contains("PUT is not allowed"),
            "{v}"
        );
        let (code, v, _) = call("DELETE", &format!("{api}/v1/workflows/wf-1"), None);
        assert_eq!(code, 405, "{v}");
        let (code, v, _) = call("GET", &format!("{api}/v1/nosuch"), None);
        assert_eq!(code, 404, "{v}");
        assert!(v["error"].as_str().unwrap().contains("no route"), "{v}");
        // The client's content type reaches the leader (it is not replaced by JSON).
        let (code, v, _) = call("POST", &format!("{api}/v1/workflows"), Some("name = 1"));
        assert_eq!(code, 415, "{v}");
        assert!(v["error"].is_string(), "{v}");
    }
    // A condition of ~10^7 evaluations is refused before it reaches the log, and every server
    // keeps answering at once.
    let heavy = "name = \"x\"\n[[step]]\nid = \"a\"\nhandler = \"echo\"\n[[step]]\nid = \"b\"\nneeds = [\"a\"]\nhandler = \"noop\"\nwhen = \"steps.a.output.map(a, steps.a.output.map(b, steps.a.output.map(c, steps.a.output.map(d, steps.a.output.map(e, steps.a.output.map(f, steps.a.output.map(g, 1))))))).size() > 0\"\n";
    let (code, v) = cluster.servers[follower].post("/v1/workflows", &json!({ "spec_toml": heavy }));
    assert_eq!(code, 400, "{v}");
    assert!(v["error"].as_str().unwrap().contains("nest 7 deep"), "{v}");
    for s in &cluster.servers {
        let t = std::time::Instant::now();
        assert_eq!(s.get("/v1/health").0, 200);
        assert!(
            t.elapsed() < std::time::Duration::from_millis(100),
            "{:?}",
            t.elapsed()
        );
    }
    // A write through the follower is applied once and readable everywhere.
    let id = {
        let f = &cluster.servers[follower];
        let (code, v) = f.post(
            "/v1/workflows",
            &json!({ "spec_toml": "name = \"fwd\"\n[[step]]\nid = \"a\"\nhandler = \"noop\"\n" }),
        );
        assert_eq!(code, 201, "{v}");
        v["id"].as_str().unwrap().to_string()
    };
    let v = cluster.servers[leader].wait(&id, std::time::Duration::from_secs(30));
    assert_eq!(v["status"], "succeeded");
}

#[test]
fn a_paused_server_is_up_again_within_a_lease_after_it_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(tmp.path(), 37, 3, 0, &[]);
    let leader = cluster.leader().expect("a leader");
    let paused = (0..3).find(|&i| i != leader).unwrap();
    let node_id = cluster.servers[paused].get("/v1/health").1["node"]
        .as_str()
        .unwrap()
        .to_string();
    let status = |c: &Cluster| -> String {
        let (_, v) = c.servers[leader].get("/v1/nodes");
        v["nodes"]
            .as_array()
            .and_then(|a| a.iter().find(|n| n["id"] == node_id.as_str()))
            .map(|n| n["status"].as_str().unwrap_or("").to_string())
            .unwrap_or_default()
    };
    cluster.servers[paused].signal(libc::SIGSTOP);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while status(&cluster) != "down" {
        assert!(std::time::Instant::now() < deadline, "never declared lost");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    std::thread::sleep(std::time::Duration::from_secs(3));
    cluster.servers[paused].signal(libc::SIGCONT);
    let resumed = std::time::Instant::now();
    while status(&cluster) != "up" {
        assert!(
            resumed.elapsed() < std::time::Duration::from_secs(4),
            "still {} {:?} after it resumed",
            status(&cluster),
            resumed.elapsed()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    println!("up again {:?} after it resumed", resumed.elapsed());
    // Its sessions were torn down and dialed again: none of that reads as a refused handshake.
    for s in &cluster.servers {
        let log = s.log();
        let refusals = troupe_chaos_tests::refusal_lines(&log);
        assert!(refusals.is_empty(), "same cookie everywhere: {refusals:#?}");
    }
}

/// Waits (bounded) until a leader answers and every node of the cluster is up.
fn settled(cluster: &Cluster, nodes: usize) -> usize {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        if let Some(l) = cluster.leader() {
            let (_, v) = cluster.servers[l].get("/v1/nodes");
            let up = v["nodes"]
                .as_array()
                .map_or(0, |a| a.iter().filter(|n| n["status"] == "up").count());
            if up == nodes {
                return l;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the cluster did not settle"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// The leader frozen for just short of a lease, then (whoever leads then) for 5 s: in the
/// seconds after it resumes, a deposed leader claims nothing it did not do (it declares no
/// node lost: what it proposed in its ended term was dropped), and no node of the cluster
/// logs a refused handshake through the suspicions and re-dials.
#[test]
fn a_resumed_leader_claims_nothing_it_did_not_do() {
    let tmp = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(tmp.path(), 41, 3, 1, &[]);
    // Just short of the lease, the leader's stall check does not fire: twice, because the
    // nodes' last renewals must be old enough for the lease to have run out (most times).
    for pause_ms in [1_900, 1_900, 5_000] {
        let leader = settled(&cluster, 4);
        let paused = &cluster.servers[leader];
        paused.signal(libc::SIGSTOP);
        std::thread::sleep(std::time::Duration::from_millis(pause_ms));
        let mark = paused.log().len();
        paused.signal(libc::SIGCONT);
        std::thread::sleep(std::time::Duration::from_secs(3));
        let log = paused.log();
        let claims: Vec<&str> = log[mark..]
            .lines()
            .filter(|l| l.contains("declared lost") || l.contains("declaring the node lost"))
            .collect();
        assert!(
            claims.is_empty(),
            "after a {pause_ms} ms pause the old leader claims: {claims:#?}"
        );
    }
    settled(&cluster, 4);
    for n in cluster.servers.iter().chain(&cluster.workers) {
        let log = n.log();
        let refusals = troupe_chaos_tests::refusal_lines(&log);
        assert!(refusals.is_empty(), "same cookie everywhere: {refusals:#?}");
    }
}

#[test]
fn servers_compare_their_state_and_agree() {
    let tmp = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(tmp.path(), 39, 3, 0, &["--audit-every-s", "1"]);
    let id = cluster.servers[0].submit(
        "name = \"a\"\n[[step]]\nid = \"m\"\nhandler = \"echo\"\nmap = { range = [0, 50] }\n",
    );
    cluster.servers[0].wait(&id, std::time::Duration::from_secs(30));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    for s in &cluster.servers {
        loop {
            let (code, h) = s.get("/v1/health");
            assert_eq!(code, 200, "{h}");
            if h["audit"]["matched"] == true {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no audit compared: {h}"
            );
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    }
}
