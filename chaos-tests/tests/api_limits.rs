//! A flood of idle connections can slow the API, never fail a task: connections are capped
//! below the open-file limit, and idle ones are closed after the header timeout.

use std::io::Read;
use std::net::TcpStream;
use std::time::{Duration, Instant};
use troupe_chaos_tests::TestNode;

#[test]
fn idle_connections_are_capped_and_closed_and_tasks_still_run() {
    let tmp = tempfile::tempdir().unwrap();
    let node = TestNode::start(&tmp.path().join("data"), &["--api-header-timeout-s", "2"]);
    let addr = node.api.trim_start_matches("http://").to_string();
    // More idle connections than the node's cap (a quarter of its open-file limit, at most 4,096).
    let mut idle = Vec::new();
    for _ in 0..4500 {
        match TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(3)) {
            Ok(s) => idle.push(s),
            Err(_) => break, // the backlog is full: that is the cap working
        }
    }
    assert!(idle.len() >= 1000, "opened only {}", idle.len());
    // Work still gets in and runs processes (it may wait for room while idle ones time out).
    let t = Instant::now();
    let id = node.submit(
        "name = \"after-flood\"\n[[step]]\nid = \"a\"\nmap = { range = [0, 20] }\nrun = [\"sh\", \"-c\", \"echo ok\"]\n",
    );
    let v = node.wait(&id, Duration::from_secs(60));
    assert_eq!(v["status"], "succeeded", "{v}");
    assert!(
        t.elapsed() < Duration::from_secs(30),
        "took {:?}",
        t.elapsed()
    );
    // The idle connections were closed by the node (read returns 0: end of stream).
    let s = &mut idle[0];
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = [0u8; 16];
    let n = s.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "an idle connection was left open");
    assert!(
        !node.log().contains("Too many open files"),
        "the flood took the node's file descriptors"
    );
}
