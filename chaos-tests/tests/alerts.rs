//! Alerts (`--notify`): a receiver started here gets signed webhooks for a failed and a
//! degraded workflow and one `dlq.threshold` event for a step past `--dlq-alert`, and nothing
//! for a workflow that succeeded; a receiver that answers 500 twice still gets the event.

use serde_json::Value;
use sha2::{Digest, Sha256};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use troupe_chaos_tests::TestNode;

const KEY: &str = "test-notify-key";

/// One request the receiver got: its headers (lowercase names) and body.
#[derive(Clone, Debug)]
struct Got {
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    answered: u16,
}

impl Got {
    fn header(&self, name: &str) -> &str {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("no {name} header in {:?}", self.headers))
    }
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("the body is JSON")
    }
}

/// A webhook receiver on 127.0.0.1: answers each request with the next status of `answers`
/// (then 200), closing the connection. Stops accepting after 3 minutes.
fn receiver(answers: Vec<u16>) -> (String, Arc<Mutex<Vec<Got>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let got = Arc::new(Mutex::new(Vec::new()));
    let (g, n) = (got.clone(), Arc::new(AtomicUsize::new(0)));
    std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(180);
        while Instant::now() < deadline {
            let Ok((stream, _)) = listener.accept() else {
                std::thread::sleep(Duration::from_millis(10));
                continue;
            };
            stream.set_nonblocking(false).unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            let mut r = BufReader::new(stream);
            let mut line = String::new();
            if r.read_line(&mut line).is_err() || line.is_empty() {
                continue;
            }
            let mut headers = Vec::new();
            loop {
                let mut h = String::new();
                if r.read_line(&mut h).is_err() || h.trim().is_empty() {
                    break;
                }
                if let Some((k, v)) = h.split_once(':') {
                    headers.push((k.trim().to_lowercase(), v.trim().to_string()));
                }
            }
            let len: usize = headers
                .iter()
                .find(|(k, _)| k == "content-length")
                .and_then(|(_, v)| v.parse().ok())
                .unwrap_or(0);
            let mut body = vec![0; len];
            if r.read_exact(&mut body).is_err() {
                continue;
            }
            let i = n.fetch_add(1, Ordering::SeqCst);
            let answered = answers.get(i).copied().unwrap_or(200);
            g.lock().unwrap().push(Got {
                headers,
                body,
                answered,
            });
            let mut s = r.into_inner();
            let _ = write!(
                s,
                "HTTP/1.1 {answered} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            );
        }
    });
    (url, got)
}

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

/// Waits (bounded) until `f` holds for what the receiver got.
fn wait_for(got: &Mutex<Vec<Got>>, limit: Duration, what: &str, f: impl Fn(&[Got]) -> bool) {
    let deadline = Instant::now() + limit;
    loop {
        if f(&got.lock().unwrap()) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "waited {limit:?} for {what}; got {:?}",
            got.lock()
                .unwrap()
                .iter()
                .map(|g| String::from_utf8_lossy(&g.body).to_string())
                .collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn of_type<'a>(got: &'a [Got], t: &str) -> Vec<&'a Got> {
    got.iter().filter(|g| g.json()["type"] == t).collect()
}

#[test]
fn failures_and_a_dead_letter_burst_arrive_signed() {
    let tmp = tempfile::tempdir().unwrap();
    let (url, got) = receiver(vec![]);
    let node = TestNode::start_env(
        tmp.path(),
        &["--no-fsync", "--notify", &url, "--dlq-alert", "3/1h"],
        &[("TROUPE_NOTIFY_SECRET", KEY)],
    );
    let ok = node.submit(
        "name = \"fine\"\n[[step]]\nid = \"a\"\nrun = [\"true\"]\n",
    );
    let failed = node.submit(
        "name = \"breaks\"\n[[step]]\nid = \"a\"\nrun = [\"sh\", \"-c\", \"exit 3\"]\nretries = { attempts = 1 }\n",
    );
    let burst = node.submit(
        "name = \"burst\"\n[[step]]\nid = \"score\"\nmap = { range = [0, 6] }\nrun = [\"sh\", \"-c\", \"exit 4\"]\nretries = { attempts = 1 }\non_failure = \"dead-letter\"\n",
    );
    for id in [&ok, &failed, &burst] {
        node.wait(id, Duration::from_secs(60));
    }
    wait_for(&got, Duration::from_secs(30), "three events", |g| g.len() >= 3);
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
    assert_eq!(q["window"], "1h");
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
}
