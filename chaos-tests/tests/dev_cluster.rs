//! `troupe dev --nodes N` as a user stops it: `kill PID` (SIGTERM) or Ctrl-C stops every server
//! it started, so none is left running on the fixed cluster ports (7101, ...) it would need
//! next time.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use troupe_chaos_tests::chaos_run::PidFileGuard;
use troupe_chaos_tests::troupe_bin;

fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn sigterm_to_troupe_dev_nodes_stops_every_server_it_started() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("d");
    let dirs = vec![data.join("n1"), data.join("n2")];
    // Whatever happens, nothing of this test outlives it.
    let _guard = PidFileGuard(dirs.clone());
    let mut dev = Command::new(troupe_bin())
        // `--fault-injection`: each server writes `node.pid`, which names it here.
        .args([
            "dev",
            "--nodes",
            "2",
            "--listen",
            "127.0.0.1:7470",
            "--fault-injection",
            "--data",
        ])
        .arg(&data)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(
        "both servers to write their pid",
        Duration::from_secs(60),
        || dirs.iter().all(|d| PidFileGuard::pid(d).is_some()),
    );
    let pids: Vec<i32> = dirs.iter().filter_map(|d| PidFileGuard::pid(d)).collect();
    // SAFETY: kill(2) on the `troupe dev` process this test started.
    unsafe {
        libc::kill(dev.id() as i32, libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while dev.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "troupe dev did not exit on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    wait_for(
        "the servers to stop with troupe dev",
        Duration::from_secs(10),
        || dirs.iter().all(|d| PidFileGuard::pid(d).is_none()),
    );
    eprintln!("troupe dev stopped servers {pids:?} on SIGTERM");
}
