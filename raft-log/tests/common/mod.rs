//! The shared harness of the multi-engine tests: a counter map state machine ([`Kv`]), an
//! in-memory network ([`Net`]) routing bytes through the handles' `step`, and [`Cluster`]
//! (three voters 1..=3, plus joiners started with `join_existing`). Every wait is bounded.

#![allow(
    dead_code,
    reason = "each test crate uses a different part of the harness"
)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tempfile::TempDir;
use troupe_raft_log::{
    Engine, EngineConfig, EngineHandle, Hook, ProposeError, StateMachine, Transport,
};

pub const WAIT: Duration = Duration::from_secs(20);

/// A key -> counter map; `restores` is bookkeeping, not part of the snapshot.
#[derive(Default)]
pub struct Kv {
    pub map: BTreeMap<String, i64>,
    pub restores: u32,
}

#[derive(Serialize, Deserialize, Debug)]
pub enum Cmd {
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

pub fn add(k: &str, d: i64) -> Cmd {
    Cmd::Add(k.to_string(), d)
}

/// The in-memory network: delivers to the registered handles, drops to and from `down`
/// nodes, and drops messages from `muted` ones.
#[derive(Default)]
pub struct Net {
    pub peers: Mutex<HashMap<u64, EngineHandle<Kv>>>,
    pub down: Mutex<HashSet<u64>>,
    pub muted: Mutex<HashSet<u64>>,
}

pub struct NetTransport {
    pub net: Arc<Net>,
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

pub struct Cluster {
    pub net: Arc<Net>,
    pub dirs: BTreeMap<u64, TempDir>,
    pub engines: BTreeMap<u64, Engine<Kv>>,
    pub snapshot_every: u64,
    /// Hook calls with `is_leader == false`, all members together.
    pub follower_hook_calls: Arc<AtomicU64>,
    /// Nodes started with `join_existing` (see [`Cluster::join`]).
    pub joiners: HashSet<u64>,
}

impl Cluster {
    pub fn new(snapshot_every: u64) -> Self {
        let mut c = Cluster {
            net: Arc::default(),
            dirs: (1..=3)
                .map(|id| (id, tempfile::tempdir().unwrap()))
                .collect(),
            engines: BTreeMap::new(),
            snapshot_every,
            follower_hook_calls: Arc::default(),
            joiners: HashSet::new(),
        };
        for id in 1..=3 {
            c.start(id);
        }
        c
    }

    pub fn start(&mut self, id: u64) {
        let mut cfg = EngineConfig::new(self.dirs[&id].path());
        cfg.id = id;
        cfg.voters = vec![1, 2, 3];
        cfg.join_existing = self.joiners.contains(&id);
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

    /// Starts a new node `id` on a fresh data dir with `join_existing` (an empty log).
    pub fn join(&mut self, id: u64) {
        self.dirs.insert(id, tempfile::tempdir().unwrap());
        self.joiners.insert(id);
        self.start(id);
    }

    /// Cuts `id` off the network and shuts its engine down.
    pub fn stop(&mut self, id: u64) {
        self.net.down.lock().unwrap().insert(id);
        self.net.peers.lock().unwrap().remove(&id);
        self.engines.remove(&id).unwrap().shutdown();
    }

    pub fn handle(&self, id: u64) -> EngineHandle<Kv> {
        self.engines[&id].handle()
    }

    /// Waits until one live voter leads and every live voter knows it (nodes that are not in
    /// their own voter list, such as a joiner not added yet, are left out).
    pub fn leader(&self) -> u64 {
        let mut leader = 0;
        wait_until("a leader known to every live voter", || {
            let st: Vec<_> = self
                .engines
                .values()
                .map(Engine::status)
                .filter(|s| s.voters.contains(&s.id))
                .collect();
            let Some(l) = st.iter().find(|s| s.is_leader) else {
                return false;
            };
            leader = l.id;
            st.iter().all(|s| s.leader_id == l.id)
        });
        leader
    }

    pub fn follower(&self, leader: u64) -> u64 {
        *self.engines.keys().find(|&&id| id != leader).unwrap()
    }

    /// Proposes on the current leader until the proposal is applied (retrying across elections).
    pub fn write(&self, cmds: impl Fn() -> Vec<Cmd>) -> Vec<i64> {
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
    pub fn converge(&self, want: &BTreeMap<String, i64>) {
        wait_until("the members to converge", || {
            self.engines
                .values()
                .all(|e| e.state().read().unwrap().map == *want)
        });
    }
}

pub fn recv<T>(
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

pub fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

pub fn map(pairs: &[(&str, i64)]) -> BTreeMap<String, i64> {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}
