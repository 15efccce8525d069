//! Three engines in one process, wired by an in-memory [`Transport`] that routes bytes through
//! the handles' `step`: election, replication, forwarding, ReadIndex, fail-over, catch-up by
//! log and by snapshot. Every wait is bounded (generous: CI machines are small and loaded).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tempfile::TempDir;
use troupe_raft_log::{
    Engine, EngineConfig, EngineHandle, Hook, ProposeError, StateMachine, Transport,
};

const WAIT: Duration = Duration::from_secs(20);

/// A key -> counter map; `restores` is bookkeeping, not part of the snapshot.
#[derive(Default)]
struct Kv {
    map: BTreeMap<String, i64>,
    restores: u32,
}

#[derive(Serialize, Deserialize, Debug)]
enum Cmd {
    Add(String, i64),
}

impl StateMachine for Kv {
    type Command = Cmd;
    type Output = i64;

    fn apply(&mut self, _at_ms: u64, cmd: Cmd) -> i64 {
        let Cmd::Add(k, d) = cmd;
        let v = self.map.entry(k).or_default();
        *v += d;
        *v
    }

    fn snapshot(&self) -> Vec<u8> {
        bincode::serde::encode_to_vec(&self.map, bincode::config::standard()).unwrap()
    }

    fn restore(&mut self, data: &[u8]) -> Result<(), String> {
        let (map, _) = bincode::serde::decode_from_slice(data, bincode::config::standard())
            .map_err(|e| e.to_string())?;
        self.map = map;
        self.restores += 1;
        Ok(())
    }
}

fn add(k: &str, d: i64) -> Cmd {
    Cmd::Add(k.to_string(), d)
}

/// The in-memory network: delivers to the registered handles, drops to and from `down`
/// nodes, and drops messages from `muted` ones.
#[derive(Default)]
struct Net {
    peers: Mutex<HashMap<u64, EngineHandle<Kv>>>,
    down: Mutex<HashSet<u64>>,
    muted: Mutex<HashSet<u64>>,
}

struct NetTransport {
    net: Arc<Net>,
    from: u64,
}

impl Transport for NetTransport {
    fn send(&self, to: u64, msg: Vec<u8>) {
        let net = &self.net;
        if net.muted.lock().unwrap().contains(&self.from) {
            return;
        }
        let down = net.down.lock().unwrap();
        if down.contains(&to) || down.contains(&self.from) {
            return;
        }
        drop(down);
        let peer = net.peers.lock().unwrap().get(&to).cloned();
        if let Some(h) = peer {
            h.step(msg);
        }
    }
}

struct Cluster {
    net: Arc<Net>,
    dirs: BTreeMap<u64, TempDir>,
    engines: BTreeMap<u64, Engine<Kv>>,
    snapshot_every: u64,
    /// Hook calls with `is_leader == false`, all members together.
    follower_hook_calls: Arc<AtomicU64>,
}

impl Cluster {
    fn new(snapshot_every: u64) -> Self {
        let mut c = Cluster {
            net: Arc::default(),
            dirs: (1..=3)
                .map(|id| (id, tempfile::tempdir().unwrap()))
                .collect(),
            engines: BTreeMap::new(),
            snapshot_every,
            follower_hook_calls: Arc::default(),
        };
        for id in 1..=3 {
            c.start(id);
        }
        c
    }

    fn start(&mut self, id: u64) {
        let mut cfg = EngineConfig::new(self.dirs[&id].path());
        cfg.id = id;
        cfg.voters = vec![1, 2, 3];
        cfg.tick_ms = 20;
        cfg.fsync = false;
        cfg.snapshot_every_entries = self.snapshot_every;
        cfg.transport = Some(Arc::new(NetTransport {
            net: Arc::clone(&self.net),
            from: id,
        }));
        let calls = Arc::clone(&self.follower_hook_calls);
        // Followers' commands must be discarded: "from-follower" must never appear.
        let hook: Hook<Kv> = Box::new(move |_, _, is_leader| {
            if is_leader {
                Vec::new()
            } else {
                calls.fetch_add(1, Ordering::Relaxed);
                vec![add("from-follower", 1)]
            }
        });
        let started = Instant::now();
        let engine = Engine::open(cfg, Kv::default(), hook).unwrap();
        assert!(
            started.elapsed() < WAIT,
            "open of a multi-voter member must not wait for an election"
        );
        assert_eq!(engine.status().id, id);
        self.net.peers.lock().unwrap().insert(id, engine.handle());
        self.net.down.lock().unwrap().remove(&id);
        self.engines.insert(id, engine);
    }

    /// Cuts `id` off the network and shuts its engine down.
    fn stop(&mut self, id: u64) {
        self.net.down.lock().unwrap().insert(id);
        self.net.peers.lock().unwrap().remove(&id);
        self.engines.remove(&id).unwrap().shutdown();
    }

    fn handle(&self, id: u64) -> EngineHandle<Kv> {
        self.engines[&id].handle()
    }

    /// Waits until one live member leads and every live member knows it.
    fn leader(&self) -> u64 {
        let mut leader = 0;
        wait_until("a leader known to every live member", || {
            let st: Vec<_> = self.engines.values().map(Engine::status).collect();
            let Some(l) = st.iter().find(|s| s.is_leader) else {
                return false;
            };
            leader = l.id;
            st.iter().all(|s| s.leader_id == l.id)
        });
        leader
    }

    fn follower(&self, leader: u64) -> u64 {
        *self.engines.keys().find(|&&id| id != leader).unwrap()
    }

    /// Proposes on the current leader until the proposal is applied (retrying across elections).
    fn write(&self, cmds: impl Fn() -> Vec<Cmd>) -> Vec<i64> {
        let deadline = Instant::now() + WAIT;
        loop {
            assert!(Instant::now() < deadline, "no leader accepted the write");
            let h = self.handle(self.leader());
            let Ok(mut rx) = h.propose(cmds()) else {
                std::thread::sleep(Duration::from_millis(10));
                continue;
            };
            match recv(&mut rx, deadline) {
                Ok(out) => return out,
                Err(ProposeError::Dropped(_) | ProposeError::NotLeader | ProposeError::Busy) => {}
                Err(e) => panic!("{e}"),
            }
        }
    }

    /// Waits until every live member's map equals `want`.
    fn converge(&self, want: &BTreeMap<String, i64>) {
        wait_until("the members to converge", || {
            self.engines
                .values()
                .all(|e| e.state().read().unwrap().map == *want)
        });
    }
}

fn recv<T>(
    rx: &mut tokio::sync::oneshot::Receiver<Result<T, ProposeError>>,
    deadline: Instant,
) -> Result<T, ProposeError> {
    loop {
        match rx.try_recv() {
            Ok(r) => return r,
            Err(tokio::sync::oneshot::error::TryRecvError::Empty) => {
                assert!(Instant::now() < deadline, "no answer in time");
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => panic!("reply channel closed: {e}"),
        }
    }
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn map(pairs: &[(&str, i64)]) -> BTreeMap<String, i64> {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

#[test]
fn three_members_elect_replicate_forward_and_read() {
    let c = Cluster::new(1000);
    // Before any election: kept and retried until a leader is known, then forwarded.
    c.handle(2).propose_nowait(vec![add("early", 1)]).unwrap();
    let leader = c.leader();
    let follower = c.follower(leader);
    let fh = c.handle(follower);
    assert!(!fh.status().is_leader);
    assert_eq!(
        fh.propose(vec![add("a", 1)]).err(),
        Some(ProposeError::NotLeader),
        "a waiter on a follower is refused"
    );

    let out = c.write(|| vec![add("a", 1), add("a", 2)]);
    assert_eq!(out, vec![1, 3]);
    c.converge(&map(&[("a", 3), ("early", 1)]));

    // Forwarded by the follower to the leader.
    fh.propose_nowait(vec![add("b", 5)]).unwrap();
    c.converge(&map(&[("a", 3), ("b", 5), ("early", 1)]));

    // Read barrier on a follower: covers the last write.
    c.write(|| vec![add("a", 10)]);
    let last_write = c.engines[&leader].status().applied;
    let index = recv(&mut fh.read_index().unwrap(), Instant::now() + WAIT).unwrap();
    assert!(index >= last_write, "read index {index} < {last_write}");
    assert!(fh.status().applied >= index);
    assert_eq!(c.engines[&follower].state().read().unwrap().map["a"], 13);
    // And on the leader.
    let lh = c.handle(leader);
    let index = recv(&mut lh.read_index().unwrap(), Instant::now() + WAIT).unwrap();
    assert!(index >= last_write);

    // Garbage and misaddressed messages are dropped, not a panic.
    fh.step(vec![0xff; 16]);
    fh.step(Vec::new());
    c.net.peers.lock().unwrap()[&leader].step(vec![8, 3, 16, 99]); // MsgAppend to id 99
    c.write(|| vec![add("c", 1)]);
    c.converge(&map(&[("a", 13), ("b", 5), ("c", 1), ("early", 1)]));
    assert!(c.engines.values().all(|e| e.status().running));

    assert!(
        c.follower_hook_calls.load(Ordering::Relaxed) > 0,
        "followers run the hook"
    );
}

#[test]
fn a_read_that_is_never_confirmed_times_out() {
    let c = Cluster::new(1000);
    let leader = c.leader();
    let follower = c.follower(leader);
    // The follower still hears the leader but its requests are lost.
    c.net.muted.lock().unwrap().insert(follower);
    let started = Instant::now();
    let mut rx = c.handle(follower).read_index().unwrap();
    let err = recv(&mut rx, Instant::now() + WAIT).unwrap_err();
    assert!(matches!(err, ProposeError::Dropped(_)), "{err}");
    assert!(err.to_string().contains("not confirmed in time"), "{err}");
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "two election timeouts: {:?}",
        started.elapsed()
    );
}

#[test]
fn fail_over_to_a_new_leader_and_the_old_one_catches_up() {
    let mut c = Cluster::new(1000);
    c.write(|| vec![add("x", 1)]);
    let old = c.leader();
    c.stop(old);
    let new = c.leader();
    assert_ne!(new, old);
    c.write(|| vec![add("x", 10)]);
    c.write(|| vec![add("y", 1)]);
    let want = map(&[("x", 11), ("y", 1)]);
    c.converge(&want);

    c.start(old);
    c.converge(&want);
    c.write(|| vec![add("x", 100)]);
    c.converge(&map(&[("x", 111), ("y", 1)]));
    c.leader();
}

#[test]
fn a_member_behind_the_compacted_log_catches_up_by_snapshot() {
    let mut c = Cluster::new(5);
    let leader = c.leader();
    let lagging = c.follower(leader);
    c.write(|| vec![add("n", 1)]);
    c.converge(&map(&[("n", 1)]));
    let behind = c.engines[&lagging].status().last_index;
    c.stop(lagging);
    for _ in 0..20 {
        c.write(|| vec![add("n", 1)]);
    }
    let lh = c.handle(c.leader());
    assert!(
        lh.status().first_index > behind + 1,
        "the leader compacted past the lagging member: {:?}",
        lh.status()
    );

    c.start(lagging);
    c.converge(&map(&[("n", 21)]));
    let e = &c.engines[&lagging];
    // One restore at open (its own stored snapshot), one from the leader's MsgSnapshot.
    assert!(
        e.state().read().unwrap().restores >= 2,
        "caught up through a snapshot"
    );
    assert!(e.status().snapshot_index > behind, "{:?}", e.status());
    // It keeps following afterwards.
    c.write(|| vec![add("n", 1)]);
    c.converge(&map(&[("n", 22)]));
}

#[test]
fn read_index_on_a_single_voter_and_without_a_leader() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = EngineConfig::new(dir.path());
    cfg.tick_ms = 20;
    let no_hook = || -> Hook<Kv> { Box::new(|_, _, _| Vec::new()) };
    let engine = Engine::open(cfg, Kv::default(), no_hook()).unwrap();
    let h = engine.handle();
    let st = h.status();
    assert_eq!((st.id, st.leader_id, st.is_leader), (1, 1, true));
    h.propose(vec![add("a", 1)])
        .unwrap()
        .blocking_recv()
        .unwrap()
        .unwrap();
    let applied = h.status().applied;
    let index = recv(&mut h.read_index().unwrap(), Instant::now() + WAIT).unwrap();
    assert!(index >= applied, "{index} < {applied}");
    drop(engine);
    assert_eq!(h.read_index().err(), Some(ProposeError::Stopped));

    // A member of a 3-voter group whose peers never answer: open returns, nobody leads.
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = EngineConfig::new(dir.path());
    cfg.id = 2;
    cfg.voters = vec![1, 2, 3];
    let engine = Engine::open(cfg, Kv::default(), no_hook()).unwrap();
    let st = engine.status();
    assert!(!st.is_leader && st.leader_id == 0 && st.running, "{st:?}");
    let h = engine.handle();
    assert!(matches!(h.read_index(), Err(ProposeError::Dropped(_))));
    assert_eq!(
        h.propose(vec![add("a", 1)]).err(),
        Some(ProposeError::NotLeader)
    );
    // Fire-and-forget is accepted (retried until a leader is known).
    h.propose_nowait(vec![add("a", 1)]).unwrap();
}

#[test]
fn invalid_membership_config_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let open = |f: &dyn Fn(&mut EngineConfig)| {
        let mut cfg = EngineConfig::new(dir.path());
        f(&mut cfg);
        Engine::open(cfg, Kv::default(), Box::new(|_, _, _| Vec::new())).err()
    };
    let bad: [&dyn Fn(&mut EngineConfig); 4] = [
        &|c| c.id = 0,
        &|c| c.voters = vec![2, 3],
        &|c| c.heartbeat_tick = 0,
        &|c| c.election_tick = c.heartbeat_tick,
    ];
    for f in bad {
        let err = open(f).expect("opened with a bad config");
        assert!(
            matches!(err, troupe_raft_log::RaftLogError::Config(_)),
            "{err}"
        );
    }
}
