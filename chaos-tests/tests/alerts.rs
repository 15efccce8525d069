//! Alerts (`--notify`): a receiver started here gets signed webhooks for a failed and a
//! degraded workflow and one `dlq.threshold` event for a step past `--dlq-alert`, and nothing
//! for a workflow that succeeded; a receiver that answers 500 twice still gets the event.

use sha2::{Digest, Sha256};
use std::time::Duration;
use troupe_chaos_tests::TestNode;
use troupe_chaos_tests::receiver::{Got, receiver, wait_for};

const KEY: &str = "test-notify-key";

fn hmac_sha256(key: &[u8], msg: &[u8]) -> String {
    let mut k = [0u8; 64];
    k[..key.len()].copy_from_slice(key);
    let inner = Sha256::new()
        .chain_update(k.map(|b| b ^ 0x36))
        .chain_update(msg)
        .finalize();
    let outer = Sha256::new()
        .chain_update(k.map(|b| b ^ 0x5c))
        .chain_update(inner)
        .finalize();
    outer.iter().map(|b| format!("{b:02x}")).collect()
}

/// Checks the signature the way a receiver does: HMAC-SHA256 over "<timestamp>.<body>".
fn assert_signed(g: &Got) {
    let ts = g.header("x-troupe-timestamp");
    let mut msg = ts.as_bytes().to_vec();
    msg.push(b'.');
    msg.extend_from_slice(&g.body);
    let want = format!("sha256={}", hmac_sha256(KEY.as_bytes(), &msg));
    assert_eq!(g.header("x-troupe-signature"), want, "bad signature");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let ts: u64 = ts.parse().unwrap();
    assert!(now.abs_diff(ts) < 60_000, "timestamp {ts} is not recent");
    assert_eq!(g.header("x-troupe-event"), g.json()["id"].as_str().unwrap());
}

fn of_type<'a>(got: &'a [Got], t: &str) -> Vec<&'a Got> {
    got.iter().filter(|g| g.json()["type"] == t).collect()
}

#[test]
fn failures_and_a_dead_letter_burst_arrive_signed() {
    let tmp = tempfile::tempdir().unwrap();
    let (url, got) = receiver(vec![]);
    let url = format!("{url}/hook");
    let node = TestNode::start_env(
        tmp.path(),
        &["--no-fsync", "--notify", &url, "--dlq-alert", "3/1h"],
        &[("TROUPE_NOTIFY_SECRET", KEY)],
    );
    let ok = node.submit("name = \"fine\"\n[[step]]\nid = \"a\"\nrun = [\"true\"]\n");
    let failed = node.submit(
        "name = \"breaks\"\n[[step]]\nid = \"a\"\nrun = [\"sh\", \"-c\", \"exit 3\"]\nretries = { attempts = 1 }\n",
    );
    let burst = node.submit(
        "name = \"burst\"\n[[step]]\nid = \"score\"\nmap = { range = [0, 6] }\nrun = [\"sh\", \"-c\", \"exit 4\"]\nretries = { attempts = 1 }\non_failure = \"dead-letter\"\n",
    );
    for id in [&ok, &failed, &burst] {
        node.wait(id, Duration::from_secs(60));
    }
    wait_for(&got, Duration::from_secs(30), "three events", |g| {
        g.len() >= 3
    });
    // Anything late would show in this second.
    std::thread::sleep(Duration::from_secs(1));
    let got = got.lock().unwrap().clone();
    for g in &got {
        assert_signed(g);
        assert_eq!(g.header("content-type"), "application/json");
    }
    let f = of_type(&got, "workflow.failed");
    assert_eq!(f.len(), 1, "{got:?}");
    let f = f[0].json();
    assert_eq!(f["workflow"], failed.as_str());
    assert_eq!(f["name"], "breaks");
    assert_eq!(f["status"], "failed");
    assert!(f["at_ms"].as_u64().unwrap() > 0);
    assert!(f["node"].as_str().is_some_and(|n| !n.is_empty()), "{f}");
    let d = of_type(&got, "workflow.degraded");
    assert_eq!(d.len(), 1, "{got:?}");
    assert_eq!(d[0].json()["workflow"], burst.as_str());
    let q = of_type(&got, "dlq.threshold");
    assert_eq!(q.len(), 1, "once per window per step: {got:?}");
    let q = q[0].json();
    assert_eq!(q["workflow"], burst.as_str());
    assert_eq!(q["step"], "score");
    assert_eq!(q["count"], 4);
    assert_eq!(q["threshold"], 3);
    assert_eq!(q["window_ms"], 3_600_000);
    assert!(
        !got.iter().any(|g| g.json()["workflow"] == ok.as_str()),
        "a workflow that succeeded sends nothing: {got:?}"
    );
    let mut ids: Vec<String> = got.iter().map(|g| g.json()["id"].to_string()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 3, "ids are distinct: {ids:?}");
}

#[test]
fn a_receiver_that_fails_twice_still_gets_the_event() {
    let tmp = tempfile::tempdir().unwrap();
    let (url, got) = receiver(vec![500, 500]);
    let url = format!("{url}/hook");
    let key = tmp.path().join("notify.key");
    std::fs::write(&key, format!("{KEY}\n")).unwrap();
    let key = key.display().to_string();
    let node = TestNode::start(
        tmp.path(),
        &["--no-fsync", "--notify", &url, "--notify-secret-file", &key],
    );
    let failed = node.submit(
        "name = \"breaks\"\n[[step]]\nid = \"a\"\nrun = [\"false\"]\nretries = { attempts = 1 }\n",
    );
    node.wait(&failed, Duration::from_secs(60));
    // Tries 2 s and 4 s apart.
    wait_for(&got, Duration::from_secs(40), "a third try", |g| {
        g.iter().any(|g| g.answered == 200)
    });
    let got = got.lock().unwrap().clone();
    assert_eq!(
        got.iter().map(|g| g.answered).collect::<Vec<_>>(),
        [500, 500, 200]
    );
    for g in &got {
        assert_signed(g);
        assert_eq!(g.json()["workflow"], failed.as_str());
        assert_eq!(g.json()["type"], "workflow.failed");
    }
    // Each try is signed again with its own timestamp; the event id stays.
    assert_eq!(got[0].json()["id"], got[2].json()["id"]);
    // The delivery shows on /metrics.
    let (code, body) = node.get("/metrics");
    assert_eq!(code, 200);
    let text = body.as_str().expect("text").to_string();
    assert!(
        text.lines().any(|l| l == "troupe_alerts_delivered_total 1"),
        "{text}"
    );
}
