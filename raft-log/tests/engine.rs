//! End-to-end tests of the engine through its public API.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use troupe_raft_log::{Engine, EngineConfig, Hook, ProposeError, RaftLogError, StateMachine};

/// A key -> counter map. `restores` and `applies` are bookkeeping, not part of the snapshot.
#[derive(Default)]
struct Kv {
    map: BTreeMap<String, i64>,
    last_at_ms: u64,
    restores: u32,
    applies: u64,
    blobs: u64,
    /// `blobs` when key "after-blobs" was first added (checks the order of retried commands).
    blobs_seen_by_marker: Option<u64>,
    /// How long building a snapshot image takes (on the snapshot thread), in ms.
    image_delay_ms: Arc<AtomicU64>,
    /// Snapshot images finished.
    images: Arc<AtomicU64>,
}

#[derive(Serialize, Deserialize, Debug)]
enum Cmd {
    Add(String, i64),
    Set(String, i64),
    SleepMs(u64),
    Blob(Vec<u8>),
}

impl StateMachine for Kv {
    type Command = Cmd;
    type Output = i64;

    fn apply(&mut self, at_ms: u64, cmd: Cmd) -> i64 {
        self.last_at_ms = at_ms;
        self.applies += 1;
        match cmd {
            Cmd::Add(k, d) => {
                if k == "after-blobs" && self.blobs_seen_by_marker.is_none() {
                    self.blobs_seen_by_marker = Some(self.blobs);
                }
                let v = self.map.entry(k).or_default();
                *v += d;
                *v
            }
            Cmd::Set(k, v) => {
                self.map.insert(k, v);
                v
            }
            Cmd::SleepMs(ms) => {
                std::thread::sleep(Duration::from_millis(ms));
                0
            }
            Cmd::Blob(b) => {
                self.blobs += 1;
                b.len() as i64
            }
        }
    }

    fn snapshot(&self) -> Vec<u8> {
        bincode::serde::encode_to_vec(&self.map, bincode::config::standard()).unwrap()
    }

    fn snapshot_image(&self) -> troupe_raft_log::SnapshotImage {
        let (map, delay, images) = (
            self.map.clone(),
            self.image_delay_ms.load(Ordering::Relaxed),
            Arc::clone(&self.images),
        );
        Box::new(move || {
            std::thread::sleep(Duration::from_millis(delay));
            images.fetch_add(1, Ordering::Relaxed);
            bincode::serde::encode_to_vec(&map, bincode::config::standard()).unwrap()
        })
    }

    fn restore(&mut self, data: &[u8]) -> Result<(), String> {
        let (map, _) = bincode::serde::decode_from_slice(data, bincode::config::standard())
            .map_err(|e| e.to_string())?;
        self.map = map;
        self.restores += 1;
        Ok(())
    }
}

fn no_hook() -> Hook<Kv> {
    Box::new(|_, _, _| Vec::new())
}

fn cfg(dir: &std::path::Path) -> EngineConfig {
    let mut c = EngineConfig::new(dir);
    c.tick_ms = 20;
    c
}

fn add(k: &str, d: i64) -> Cmd {
    Cmd::Add(k.to_string(), d)
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(3);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn propose_and_await_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(cfg(dir.path()), Kv::default(), no_hook()).unwrap();
    let h = engine.handle();
    let st = h.status();
    assert!(st.is_leader && st.running, "{st:?}");
    let out = h
        .propose(vec![add("a", 1), add("a", 2), add("b", 5)])
        .unwrap()
        .blocking_recv()
        .unwrap()
        .unwrap();
    assert_eq!(out, vec![1, 3, 5]);
    h.propose_nowait(vec![add("a", 10)]).unwrap();
    // Same queue, so the no-wait proposal is applied first.
    let out = h
        .propose(vec![add("a", 0)])
        .unwrap()
        .blocking_recv()
        .unwrap();
    assert_eq!(out, Ok(vec![13]));
    assert!(
        h.propose(Vec::new())
            .unwrap()
            .blocking_recv()
            .unwrap()
            .unwrap()
            .is_empty()
    );
    let st = h.status();
    assert_eq!(st.commands_applied, 5);
    assert!(
        st.applied >= 4 && st.applied == st.commit && st.commit == st.last_index,
        "{st:?}"
    );
    assert_eq!(engine.state().read().unwrap().map["a"], 13);
}

#[test]
fn async_callers_can_await() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(cfg(dir.path()), Kv::default(), no_hook()).unwrap();
    let h = engine.handle();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let outs = rt.block_on(async move {
        let a = h.propose(vec![add("x", 2)]).unwrap();
        let b = h.propose(vec![add("x", 3)]).unwrap();
        (a.await.unwrap().unwrap(), b.await.unwrap().unwrap())
    });
    assert_eq!(outs, (vec![2], vec![5]));
}

#[test]
fn restart_recovers_state_and_stamps_come_from_the_clock() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg(dir.path());
    c.clock = Arc::new(|| 42_000);
    let engine = Engine::open(c.clone(), Kv::default(), no_hook()).unwrap();
    let h = engine.handle();
    for i in 0..10 {
        h.propose(vec![add("k", i)])
            .unwrap()
            .blocking_recv()
            .unwrap()
            .unwrap();
    }
    assert_eq!(engine.state().read().unwrap().last_at_ms, 42_000);
    let term = h.status().term;
    engine.shutdown();
    assert_eq!(
        h.propose_nowait(vec![add("k", 1)]),
        Err(ProposeError::Stopped)
    );
    assert!(!h.status().running);

    c.clock = Arc::new(|| 43_000);
    let engine = Engine::open(c, Kv::default(), no_hook()).unwrap();
    let st = engine.status();
    assert!(st.term > term, "a restart elects in a new term: {st:?}");
    let s = engine.state();
    let s = s.read().unwrap();
    assert_eq!(s.map["k"], 45);
    // Replayed entries keep the timestamp stamped by the first leader.
    assert_eq!(s.last_at_ms, 42_000);
    assert_eq!(s.applies, 10);
}

#[test]
fn snapshot_compaction_and_recovery_by_snapshot_plus_replay() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg(dir.path());
    c.snapshot_every_entries = 5;
    let engine = Engine::open(c.clone(), Kv::default(), no_hook()).unwrap();
    let h = engine.handle();
    for i in 1..=23 {
        h.propose(vec![add("n", i)])
            .unwrap()
            .blocking_recv()
            .unwrap()
            .unwrap();
    }
    // Snapshots are built on their own thread and stored a cycle later.
    wait_until("a snapshot at 20 or later", || {
        h.status().snapshot_index >= 20
    });
    let st = h.status();
    assert_eq!(
        st.first_index,
        st.snapshot_index + 1,
        "log compacted up to the snapshot"
    );
    assert!(st.entries_since_snapshot < 5, "{st:?}");
    engine.shutdown();

    let engine = Engine::open(c, Kv::default(), no_hook()).unwrap();
    let st2 = engine.status();
    let s = engine.state();
    let s = s.read().unwrap();
    assert_eq!(s.map["n"], (1..=23).sum::<i64>());
    assert_eq!(s.restores, 1, "state came from the snapshot");
    assert!(
        s.applies < 5,
        "only the tail after the snapshot was replayed: {}",
        s.applies
    );
    assert_eq!(st2.commands_applied, s.applies);
    assert!(st2.first_index > 2, "{st2:?}");
}

#[test]
fn a_slow_snapshot_is_built_off_the_engine_thread_while_commands_commit() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg(dir.path());
    c.snapshot_every_entries = 5;
    let kv = Kv::default();
    kv.image_delay_ms.store(1_500, Ordering::Relaxed);
    let images = Arc::clone(&kv.images);
    let engine = Engine::open(c.clone(), kv, no_hook()).unwrap();
    let h = engine.handle();
    for i in 1..=6 {
        h.propose(vec![add("n", i)])
            .unwrap()
            .blocking_recv()
            .unwrap()
            .unwrap();
    }
    // A snapshot is being built now and takes 1.5 s; commands still commit at full speed.
    let started = Instant::now();
    for i in 7..=40 {
        h.propose(vec![add("n", i)])
            .unwrap()
            .blocking_recv()
            .unwrap()
            .unwrap();
    }
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(1_000),
        "34 commands took {took:?} while a snapshot was being built"
    );
    assert_eq!(
        images.load(Ordering::Relaxed),
        0,
        "the snapshot is still building"
    );
    let before = h.status().snapshot_index;
    assert!(before < 6, "not stored before it is built: {before}");
    wait_until("the built snapshot stored", || {
        h.status().snapshot_index >= 6
    });
    assert_eq!(images.load(Ordering::Relaxed), 1);
    engine.shutdown();
    let engine = Engine::open(c, Kv::default(), no_hook()).unwrap();
    assert_eq!(
        engine.state().read().unwrap().map["n"],
        (1..=40).sum::<i64>()
    );
}

#[test]
fn hook_runs_every_tick_and_its_commands_are_applied() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg(dir.path());
    c.clock = Arc::new(|| 7_000);
    let calls = Arc::new(AtomicU64::new(0));
    let hook: Hook<Kv> = {
        let calls = Arc::clone(&calls);
        Box::new(move |kv: &mut Kv, now_ms, _is_leader| {
            calls.fetch_add(1, Ordering::Relaxed);
            if kv.map.contains_key("trigger") && !kv.map.contains_key("planned") {
                vec![Cmd::Set("planned".into(), now_ms as i64)]
            } else {
                Vec::new()
            }
        })
    };
    let engine = Engine::open(c, Kv::default(), hook).unwrap();
    let h = engine.handle();
    h.propose(vec![Cmd::Set("trigger".into(), 1)])
        .unwrap()
        .blocking_recv()
        .unwrap()
        .unwrap();
    let state = engine.state();
    wait_until("the hook's command", || {
        state.read().unwrap().map.get("planned") == Some(&7_000)
    });
    let before = calls.load(Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(200));
    let ticks = calls.load(Ordering::Relaxed) - before;
    assert!(
        ticks >= 4,
        "hook ran {ticks} times in 200 ms at a 20 ms tick"
    );
    assert_eq!(
        state.read().unwrap().applies,
        2,
        "the hook proposed exactly once"
    );
}

#[test]
fn busy_when_the_queue_is_full() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg(dir.path());
    c.queue_capacity = 2;
    c.fsync = false;
    let engine = Engine::open(c, Kv::default(), no_hook()).unwrap();
    let h = engine.handle();
    h.propose_nowait(vec![Cmd::SleepMs(300)]).unwrap();
    let mut accepted = 0i64;
    let deadline = Instant::now() + Duration::from_secs(2);
    let busy = loop {
        match h.propose_nowait(vec![add("x", 1)]) {
            Ok(()) => accepted += 1,
            Err(e) => break e,
        }
        assert!(Instant::now() < deadline, "never got Busy");
    };
    assert_eq!(busy, ProposeError::Busy);
    assert!(busy.to_string().contains("retry later"));
    // Everything accepted before the Busy is still applied.
    let state = engine.state();
    wait_until("accepted commands", || {
        state.read().unwrap().map.get("x") == Some(&accepted)
    });
}

#[test]
fn raft_uncommitted_limit_gives_busy_and_retries_fire_and_forget_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg(dir.path());
    c.max_entry_commands = 1;
    c.max_uncommitted_bytes = 1 << 20;
    c.fsync = false;
    let engine = Engine::open(c, Kv::default(), no_hook()).unwrap();
    let h = engine.handle();
    // Park the engine thread in apply so that the next proposals are drained as one batch.
    h.propose_nowait(vec![Cmd::SleepMs(300)]).unwrap();
    let state = engine.state();
    // Apply holds the write lock: wait until it is held across two polls (the hook holds it
    // only for microseconds).
    let mut blocked_polls = 0;
    wait_until("the engine to sleep in apply", || {
        let blocked = matches!(state.try_read(), Err(std::sync::TryLockError::WouldBlock));
        blocked_polls = if blocked { blocked_polls + 1 } else { 0 };
        blocked_polls >= 2
    });
    let blob = || vec![Cmd::Blob(vec![7u8; 400 << 10])];
    let p1 = h.propose(blob()).unwrap();
    let p2 = h.propose(blob()).unwrap();
    h.propose_nowait(blob()).unwrap(); // 1.2 MiB uncommitted: raft drops it
    let p4 = h.propose(vec![add("x", 1)]).unwrap(); // refused too, to keep the order
    h.propose_nowait(vec![add("after-blobs", 1)]).unwrap();
    assert_eq!(p1.blocking_recv().unwrap(), Ok(vec![400 << 10]));
    assert_eq!(p2.blocking_recv().unwrap(), Ok(vec![400 << 10]));
    assert_eq!(p4.blocking_recv().unwrap(), Err(ProposeError::Busy));
    wait_until("retried commands", || {
        state.read().unwrap().map.get("after-blobs") == Some(&1)
    });
    let s = state.read().unwrap();
    assert_eq!(s.blobs, 3, "the dropped fire-and-forget blob was retried");
    assert_eq!(
        s.blobs_seen_by_marker,
        Some(3),
        "and kept its place in the queue"
    );
    assert!(!s.map.contains_key("x"));
}

#[test]
fn a_second_open_of_the_same_dir_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(cfg(dir.path()), Kv::default(), no_hook()).unwrap();
    let err = Engine::open(cfg(dir.path()), Kv::default(), no_hook())
        .err()
        .expect("second open succeeded");
    assert!(matches!(err, RaftLogError::InUse { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("is in use by another troupe process"), "{msg}");
    assert!(msg.contains(&dir.path().display().to_string()), "{msg}");
    drop(engine);
    Engine::open(cfg(dir.path()), Kv::default(), no_hook()).unwrap();
}

#[test]
fn concurrent_proposals_are_batched_into_few_entries() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg(dir.path());
    c.max_entry_commands = 4;
    let engine = Engine::open(c, Kv::default(), no_hook()).unwrap();
    let start = engine.status().last_index;
    let per_thread = 500;
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let h = engine.handle();
            std::thread::spawn(move || {
                let mut rxs = Vec::new();
                for _ in 0..per_thread {
                    loop {
                        match h.propose(vec![add("c", 1)]) {
                            Ok(rx) => break rxs.push(rx),
                            Err(ProposeError::Busy) => std::thread::yield_now(),
                            Err(e) => panic!("{e}"),
                        }
                    }
                }
                rxs.into_iter()
                    .map(|rx| rx.blocking_recv().unwrap().unwrap()[0])
                    .max()
                    .unwrap()
            })
        })
        .collect();
    let maxes: Vec<i64> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let total = 4 * per_thread;
    assert_eq!(maxes.into_iter().max(), Some(total));
    assert_eq!(engine.state().read().unwrap().map["c"], total);
    let entries = engine.status().last_index - start;
    assert!(
        entries >= total as u64 / 4,
        "at most 4 commands per entry: {entries} entries"
    );
    assert!(
        entries < total as u64,
        "proposals were not batched: {entries} entries"
    );
}

#[test]
fn invalid_config_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg(dir.path());
    c.queue_capacity = 0;
    let err = Engine::open(c, Kv::default(), no_hook()).err().unwrap();
    assert!(matches!(err, RaftLogError::Config(_)), "{err}");
}

/// Quick throughput and memory check: `cargo test -p troupe-raft-log --release -- --ignored --nocapture`.
#[test]
#[ignore = "measurement, not a check"]
fn throughput() {
    fn rss_kb() -> u64 {
        std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmRSS:"))
                    .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            })
            .unwrap_or(0)
    }
    for fsync in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let mut c = EngineConfig::new(dir.path());
        c.fsync = fsync;
        let engine = Engine::open(c, Kv::default(), no_hook()).unwrap();
        let idle_rss = rss_kb();
        let total: u64 = 200_000;
        let start = Instant::now();
        let producers: Vec<_> = (0..2)
            .map(|t| {
                let h = engine.handle();
                std::thread::spawn(move || {
                    for i in 0..total / 2 {
                        let mut cmd = vec![add(&format!("k{}", (i + t) % 64), 1)];
                        loop {
                            match h.propose_nowait(cmd) {
                                Ok(()) => break,
                                Err(ProposeError::Busy) => {
                                    cmd = vec![add(&format!("k{}", (i + t) % 64), 1)];
                                    std::thread::yield_now();
                                }
                                Err(e) => panic!("{e}"),
                            }
                        }
                    }
                })
            })
            .collect();
        for p in producers {
            p.join().unwrap();
        }
        let h = engine.handle();
        h.propose(vec![add("end", 1)])
            .unwrap()
            .blocking_recv()
            .unwrap()
            .unwrap();
        let secs = start.elapsed().as_secs_f64();
        let st = h.status();
        println!(
            "fsync={fsync}: {} commands in {:.2}s = {:.0} cmd/s, {} entries ({:.1} cmds/entry), rss idle {} KiB -> {} KiB, db {} KiB",
            st.commands_applied,
            secs,
            st.commands_applied as f64 / secs,
            st.last_index,
            st.commands_applied as f64 / st.last_index as f64,
            idle_rss,
            rss_kb(),
            std::fs::metadata(dir.path().join("raft.redb"))
                .unwrap()
                .len()
                / 1024,
        );
        // Latency of a single awaited proposal on an idle engine.
        let t = Instant::now();
        for _ in 0..100 {
            h.propose(vec![add("lat", 1)])
                .unwrap()
                .blocking_recv()
                .unwrap()
                .unwrap();
        }
        println!(
            "fsync={fsync}: awaited proposal round trip {:?}",
            t.elapsed() / 100
        );
    }
}

#[test]
fn handles_are_send_sync_and_clone() {
    fn send_sync<T: Send + Sync + 'static>() {}
    send_sync::<troupe_raft_log::EngineHandle<Kv>>();
    send_sync::<Engine<Kv>>();
    send_sync::<EngineConfig>();
    fn clone<T: Clone>() {}
    clone::<troupe_raft_log::EngineHandle<Kv>>();
}
