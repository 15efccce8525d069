//! The engine without its thread (`Stepper`): three voters on one manual clock and one seed,
//! over an in-memory queue of messages and simulated disks (`MemDisk`). Elections, commits, a
//! crash that loses unsynced writes, a failed fsync, and the same run twice.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Kv, add};
use troupe_clock::ManualClock;
use troupe_raft_log::{EngineConfig, MemDisk, Stepper, Transport};

type Outbox = Arc<Mutex<Vec<(u64, Vec<u8>)>>>;

struct Queue(Outbox);

impl Transport for Queue {
    fn send(&self, to: u64, msg: Vec<u8>) {
        self.0.lock().unwrap().push((to, msg));
    }
}

struct Node {
    disk: MemDisk,
    engine: Option<Stepper<Kv>>,
}

struct World {
    clock: Arc<ManualClock>,
    outbox: Outbox,
    nodes: Vec<Node>,
    seed: u64,
    opens: u64,
}

impl World {
    fn new(seed: u64) -> Self {
        let mut w = World {
            clock: ManualClock::new(1_000_000),
            outbox: Outbox::default(),
            nodes: (0..3)
                .map(|_| Node {
                    disk: MemDisk::new(),
                    engine: None,
                })
                .collect(),
            seed,
            opens: 0,
        };
        for id in 1..=3 {
            w.open(id);
        }
        w
    }

    fn open(&mut self, id: u64) {
        self.opens += 1;
        let mut cfg = EngineConfig::new("sim").with_clock(self.clock.clone());
        cfg.id = id;
        cfg.voters = vec![1, 2, 3];
        cfg.tick_ms = 50;
        cfg.seed = Some(self.seed * 1_000 + self.opens);
        cfg.disk = Some(self.nodes[id as usize - 1].disk.clone());
        cfg.transport = Some(Arc::new(Queue(self.outbox.clone())));
        cfg.snapshot_every_entries = 20;
        let engine = Stepper::open(cfg, Kv::default(), Box::new(|_, _, _| Vec::new())).unwrap();
        self.nodes[id as usize - 1].engine = Some(engine);
    }

    /// 10 ms: delivers what was sent, then steps every engine. Returns the failures.
    fn step(&mut self) -> Vec<String> {
        self.clock.advance(Duration::from_millis(10));
        let sent = std::mem::take(&mut *self.outbox.lock().unwrap());
        for (to, msg) in sent {
            if let Some(e) = &self.nodes[to as usize - 1].engine {
                e.handle().step(msg);
            }
        }
        let mut failed = Vec::new();
        for n in &mut self.nodes {
            if let Some(e) = n.engine.as_mut()
                && let Err(f) = e.step()
            {
                failed.push(f.message);
            }
        }
        failed
    }

    fn leader(&self) -> Option<u64> {
        self.nodes
            .iter()
            .filter_map(|n| n.engine.as_ref())
            .find_map(|e| {
                let s = e.handle().status();
                (s.is_leader && s.running).then_some(s.id)
            })
    }

    fn until(&mut self, what: &str, mut done: impl FnMut(&World) -> bool) -> u64 {
        for steps in 0..3_000 {
            if done(self) {
                return steps;
            }
            let failed = self.step();
            assert!(failed.is_empty(), "{what}: {failed:?}");
        }
        panic!("{what}: not within 30 simulated s");
    }

    /// Steps until an engine fails (at most `steps` times); returns the failures.
    fn until_failure(&mut self, steps: usize) -> Vec<String> {
        for _ in 0..steps {
            let failed = self.step();
            if !failed.is_empty() {
                return failed;
            }
        }
        Vec::new()
    }

    fn engine(&self, id: u64) -> &Stepper<Kv> {
        self.nodes[id as usize - 1].engine.as_ref().unwrap()
    }

    fn value(&self, id: u64, key: &str) -> Option<i64> {
        let h = self.engine(id).handle();
        let state = h.state();
        state.read().unwrap().map.get(key).copied()
    }
}

/// Elects a leader, commits 30 proposals on it, and returns (leader, term, steps it took).
fn elect_and_commit(seed: u64) -> (World, u64, u64, u64) {
    let mut w = World::new(seed);
    let steps = w.until("election", |w| w.leader().is_some());
    let leader = w.leader().unwrap();
    let mut rxs = Vec::new();
    for _ in 0..30 {
        rxs.push(
            w.engine(leader)
                .handle()
                .propose(vec![add("k", 1)])
                .unwrap(),
        );
        // One entry per proposal (a cycle packs what is queued into one), so that the log
        // grows past `snapshot_every_entries`.
        assert!(w.step().is_empty());
    }
    w.until("commit", |w| (1..=3).all(|id| w.value(id, "k") == Some(30)));
    for mut rx in rxs {
        assert!(rx.try_recv().unwrap().is_ok());
    }
    let term = w.engine(leader).handle().status().term;
    (w, leader, term, steps)
}

#[test]
fn steppers_elect_a_leader_and_replicate_on_a_manual_clock() {
    let (w, leader, term, _) = elect_and_commit(1);
    for id in 1..=3 {
        let s = w.engine(id).handle().status();
        assert_eq!(s.leader_id, leader, "r{id}");
        assert_eq!(s.term, term, "r{id}");
        assert!(s.snapshot_index > 1, "r{id} took no snapshot: {s:?}");
    }
}

#[test]
fn the_same_seed_elects_the_same_leader_at_the_same_step() {
    let runs: Vec<_> = (0..2)
        .map(|_| {
            let (_, leader, term, steps) = elect_and_commit(7);
            (leader, term, steps)
        })
        .collect();
    assert_eq!(runs[0], runs[1]);
    let others: Vec<_> = (8..14)
        .map(|seed| {
            let (_, leader, term, steps) = elect_and_commit(seed);
            (leader, term, steps)
        })
        .collect();
    assert!(
        others.iter().any(|r| *r != runs[0]),
        "every seed ran alike: {others:?}"
    );
}

#[test]
fn a_crashed_voter_restarts_from_its_synced_log_and_catches_up() {
    let (mut w, leader, _, _) = elect_and_commit(3);
    let victim = leader % 3 + 1;
    let disk = w.nodes[victim as usize - 1].disk.clone();
    disk.crash();
    w.nodes[victim as usize - 1].engine = None;
    let h = w.engine(leader).handle();
    let mut rxs: Vec<_> = (0..10)
        .map(|_| h.propose(vec![add("k", 1)]).unwrap())
        .collect();
    w.until("commit without it", |_| {
        rxs.iter_mut().all(|rx| matches!(rx.try_recv(), Ok(Ok(_))))
    });
    w.open(victim);
    // The synced log holds everything it acknowledged: the replay alone brings it to 30.
    w.until("replay", |w| w.value(victim, "k") >= Some(30));
    w.until("catch up", |w| w.value(victim, "k") == Some(40));
}

#[test]
fn a_failed_fsync_stops_the_engine_as_a_disk_failure() {
    let (mut w, leader, _, _) = elect_and_commit(5);
    w.nodes[leader as usize - 1].disk.fail_next_syncs(1);
    let mut rx = w
        .engine(leader)
        .handle()
        .propose(vec![add("k", 1)])
        .unwrap();
    let failures = w.until_failure(100);
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert!(
        failures[0].contains("injected fsync failure"),
        "{failures:?}"
    );
    let f = w.engine(leader).handle().failure().expect("recorded");
    assert!(f.disk, "{f:?}");
    assert!(!w.engine(leader).is_running());
    assert!(
        matches!(rx.try_recv(), Ok(Err(_))),
        "the waiter was answered"
    );
}

#[test]
fn a_message_that_makes_raft_panic_stops_the_engine_with_a_clear_error() {
    use protobuf::Message as _;
    use raft::eraftpb::{Message, MessageType};
    let (mut w, leader, term, _) = elect_and_commit(6);
    let follower = (1..=3).find(|&id| id != leader).unwrap();
    // A heartbeat "from the leader" whose commit is far past the follower's log: raft-rs
    // panics (`to_commit ... is out of range`), as it would on a broken or foreign peer.
    let mut m = Message::default();
    m.set_msg_type(MessageType::MsgHeartbeat);
    (m.from, m.to, m.term, m.commit) = (leader, follower, term, 1_000_000);
    w.engine(follower)
        .handle()
        .step(m.write_to_bytes().unwrap());
    let failures = w.until_failure(10);
    assert_eq!(failures.len(), 1, "{failures:?}");
    let want = format!("raft panicked on a MsgHeartbeat message from node {leader}");
    assert!(failures[0].contains(&want), "{failures:?}");
    assert!(failures[0].contains("restart the node"), "{failures:?}");
    assert!(!w.engine(follower).is_running());
    let f = w.engine(follower).handle().failure().expect("recorded");
    assert!(!f.disk, "not a disk failure: {f:?}");
    // The other two go on: a leader and a majority remain (the stopped one is taken away).
    w.nodes[follower as usize - 1].engine = None;
    let mut rx = w
        .engine(leader)
        .handle()
        .propose(vec![add("k", 1)])
        .unwrap();
    let other = (1..=3).find(|&id| id != leader && id != follower).unwrap();
    w.until("commit on two", |w| w.value(other, "k") == Some(31));
    assert!(matches!(rx.try_recv(), Ok(Ok(_))));
}
