//! Chaos mode of the log: compacted entries kept in the archive and read back in order
//! (`EngineHandle::read_log`), and injected disk faults (a failed fsync stops the engine with a
//! disk failure; nothing is acknowledged over it).

use std::sync::Arc;
use std::time::{Duration, Instant};
use troupe_raft_log::{DiskFaults, Engine, EngineConfig, StateMachine};

#[derive(Default)]
struct Sum(i64);

impl StateMachine for Sum {
    type Command = i64;
    type Output = i64;
    fn apply(&mut self, _at_ms: u64, cmd: i64) -> i64 {
        self.0 += cmd;
        self.0
    }
    fn snapshot(&self) -> Vec<u8> {
        self.0.to_le_bytes().to_vec()
    }
    fn restore(&mut self, data: &[u8]) -> Result<(), String> {
        if data.is_empty() {
            self.0 = 0;
            return Ok(());
        }
        self.0 = i64::from_le_bytes(data.try_into().map_err(|_| "bad snapshot".to_string())?);
        Ok(())
    }
}

fn open(dir: &std::path::Path, keep: bool, faults: Option<Arc<DiskFaults>>) -> Engine<Sum> {
    let mut cfg = EngineConfig::new(dir);
    cfg.snapshot_every_entries = 10;
    cfg.keep_compacted = keep;
    cfg.disk_faults = faults;
    cfg.clock = Arc::new(|| 42_000);
    Engine::open(cfg, Sum::default(), Box::new(|_, _, _| vec![])).unwrap()
}

fn propose_all(e: &Engine<Sum>, n: i64) {
    for i in 1..=n {
        let rx = e.handle().propose(vec![i]).unwrap();
        rx.blocking_recv().unwrap().unwrap();
    }
}

/// Every command of the committed history, from index `from`, in order.
fn history(e: &Engine<Sum>) -> (u64, Vec<i64>) {
    let mut next = 0;
    let mut first = None;
    let mut cmds = Vec::new();
    loop {
        let page = e.handle().read_log(next, 7).unwrap();
        first.get_or_insert(page.first_index);
        if page.entries.is_empty() {
            break;
        }
        for en in page.entries {
            assert!(en.index >= next, "out of order");
            next = en.index + 1;
            if !en.commands.is_empty() {
                assert_eq!(en.at_ms, 42_000);
            }
            cmds.extend(en.commands);
        }
    }
    (first.unwrap(), cmds)
}

#[test]
fn compacted_entries_are_archived_and_read_back_in_order_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let e = open(dir.path(), true, None);
    propose_all(&e, 45);
    // Several snapshots were taken (every 10 entries) and the log was compacted...
    assert!(e.status().snapshot_index >= 30, "{:?}", e.status());
    assert!(e.status().first_index > 30);
    // ...but the whole history reads back, from index 2 (after the bootstrap snapshot).
    let (first, cmds) = history(&e);
    assert_eq!(first, 2);
    assert_eq!(cmds, (1..=45).collect::<Vec<_>>());
    e.shutdown();
    let e = open(dir.path(), true, None);
    propose_all(&e, 5);
    let (_, cmds) = history(&e);
    assert_eq!(cmds.len(), 50);
    assert_eq!(&cmds[45..], &[1, 2, 3, 4, 5]);
    // The stored snapshot is there for a replay that cannot start from the beginning.
    let (index, image) = e.handle().stored_snapshot().unwrap();
    assert!(index >= 40 && image.len() == 8, "{index} {}", image.len());
}

#[test]
fn without_the_archive_the_history_starts_after_the_last_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let e = open(dir.path(), false, None);
    propose_all(&e, 45);
    let (first, cmds) = history(&e);
    assert!(first > 30, "{first}");
    assert!(cmds.len() < 20, "{cmds:?}");
    assert_eq!(*cmds.last().unwrap(), 45);
}

#[test]
fn a_closed_engine_answers_closed_instead_of_holding_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let e = open(dir.path(), true, None);
    let h = e.handle();
    e.shutdown();
    assert!(matches!(
        h.read_log(0, 10),
        Err(troupe_raft_log::RaftLogError::Closed)
    ));
    // The file is free: it opens again at once.
    let e = open(dir.path(), true, None);
    e.shutdown();
}

#[test]
fn a_failed_fsync_stops_the_engine_as_a_disk_failure_and_acknowledges_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let faults = Arc::new(DiskFaults::default());
    let e = open(dir.path(), true, Some(faults.clone()));
    propose_all(&e, 3);
    faults.set_fsync_delay_ms(30);
    let t = Instant::now();
    propose_all(&e, 1);
    assert!(
        t.elapsed() >= Duration::from_millis(30),
        "the slow disk was not slow"
    );
    faults.set_fsync_delay_ms(0);
    faults.fail_next_fsyncs(1);
    let rx = e.handle().propose(vec![100]).unwrap();
    assert!(
        rx.blocking_recv().map(|r| r.is_err()).unwrap_or(true),
        "acknowledged over a failed fsync"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while e.status().running {
        assert!(Instant::now() < deadline, "the engine did not stop");
        std::thread::sleep(Duration::from_millis(10));
    }
    let f = e.handle().failure().expect("a recorded failure");
    assert!(f.disk, "{f:?}");
    assert!(
        f.message.contains("injected fsync failure"),
        "{}",
        f.message
    );
    assert_eq!(faults.injected_failures(), 1);
    drop(e);
    // Reopened: the durable log is all there, the failed write is not.
    let e = open(dir.path(), true, None);
    assert_eq!(e.state().read().unwrap().0, 1 + 2 + 3 + 1);
}
