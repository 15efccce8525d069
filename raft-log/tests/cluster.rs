//! Three engines in one process, wired by an in-memory `Transport` (tests/common) that routes bytes through
//! the handles' `step`: election, replication, forwarding, ReadIndex, fail-over, catch-up by
//! log and by snapshot. Every wait is bounded (generous: CI machines are small and loaded).

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::*;
use troupe_raft_log::{Engine, EngineConfig, Hook, ProposeError};

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
