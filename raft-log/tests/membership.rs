//! Runtime membership changes over the in-memory network of `tests/common`: a node that joins
//! with an empty log (`join_existing`) is added, catches up by snapshot and votes; a member is
//! removed; the group keeps electing leaders and accepting writes. Every wait is bounded.

mod common;

use std::time::{Duration, Instant};

use common::*;
use troupe_raft_log::{MembershipChange, ProposeError};

/// Proposes `change` on the current leader until it is applied (retrying when raft dropped it
/// or leadership moved); returns the voters it reported.
fn change(c: &Cluster, change: MembershipChange) -> Vec<u64> {
    let deadline = Instant::now() + WAIT;
    loop {
        assert!(Instant::now() < deadline, "{change:?} was never applied");
        let h = c.handle(c.leader());
        match h.change_membership(change) {
            Ok(mut rx) => match recv(&mut rx, deadline) {
                Ok(voters) => return voters,
                Err(ProposeError::Dropped(_) | ProposeError::NotLeader) => {}
                Err(e) => panic!("{e}"),
            },
            Err(ProposeError::NotLeader | ProposeError::Busy) => {}
            Err(e) => panic!("{e}"),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until every live node in `ids` reports these voters and learners.
fn members(c: &Cluster, ids: &[u64], voters: &[u64], learners: &[u64]) {
    wait_until(&format!("voters {voters:?} learners {learners:?}"), || {
        ids.iter().all(|id| {
            let st = c.engines[id].status();
            st.voters == voters && st.learners == learners
        })
    });
}

#[test]
fn add_a_voter_by_snapshot_remove_a_member_and_fail_over() {
    let mut c = Cluster::new(5);
    let leader = c.leader();
    let follower = c.follower(leader);
    assert_eq!(
        c.handle(follower)
            .change_membership(MembershipChange::AddVoter(4))
            .err(),
        Some(ProposeError::NotLeader)
    );
    assert!(matches!(
        c.handle(leader)
            .change_membership(MembershipChange::Remove(0)),
        Err(ProposeError::Dropped(_))
    ));
    for _ in 0..12 {
        c.write(|| vec![add("n", 1)]);
    }
    members(&c, &[1, 2, 3], &[1, 2, 3], &[]);

    // A joiner opens at once with an empty log and no membership.
    let started = Instant::now();
    c.join(4);
    assert!(started.elapsed() < Duration::from_secs(5));
    let st = c.engines[&4].status();
    assert!(st.running && !st.is_leader && st.applied == 0, "{st:?}");
    assert!(st.voters.is_empty() && st.learners.is_empty(), "{st:?}");
    assert!(c.engines[&4].state().read().unwrap().map.is_empty());

    // A second change while the first is pending is refused, not silently lost. The
    // followers are muted so the first cannot commit in between.
    let leader = c.leader();
    for id in [1, 2, 3] {
        if id != leader {
            c.net.muted.lock().unwrap().insert(id);
        }
    }
    let lh = c.handle(leader);
    let first = lh.change_membership(MembershipChange::AddVoter(4));
    let second = lh.change_membership(MembershipChange::Remove(2));
    c.net.muted.lock().unwrap().clear();
    let second = second.and_then(|mut rx| recv(&mut rx, Instant::now() + WAIT));
    assert!(
        matches!(
            second,
            Err(ProposeError::Dropped(_) | ProposeError::NotLeader)
        ),
        "{second:?}"
    );
    if let Ok(mut rx) = first {
        // Applied, or dropped with a leadership change: `change` below settles it.
        let _ = recv(&mut rx, Instant::now() + WAIT);
    }

    assert_eq!(change(&c, MembershipChange::AddVoter(4)), [1, 2, 3, 4]);
    members(&c, &[1, 2, 3, 4], &[1, 2, 3, 4], &[]);
    c.converge(&map(&[("n", 12)]));
    let st = c.engines[&4].status();
    assert!(st.snapshot_index > 1, "caught up by snapshot: {st:?}");
    assert!(c.engines[&4].state().read().unwrap().restores >= 1);
    c.write(|| vec![add("n", 1)]);
    c.converge(&map(&[("n", 13)]));

    // Remove member 2 (perhaps the leader: it then hands leadership over).
    assert_eq!(change(&c, MembershipChange::Remove(2)), [1, 3, 4]);
    members(&c, &[1, 3, 4], &[1, 3, 4], &[]);
    std::thread::sleep(Duration::from_millis(500)); // a few election timeouts
    assert!(
        c.engines[&2].status().running,
        "a removed node keeps running"
    );
    c.stop(2);
    c.write(|| vec![add("n", 1)]);
    c.converge(&map(&[("n", 14)]));

    // Shut the leader down: the two voters left elect a new one, which accepts writes.
    let old = c.leader();
    c.stop(old);
    let new = c.leader();
    assert!(new != old && [1, 3, 4].contains(&new), "{old} -> {new}");
    c.write(|| vec![add("n", 1)]);
    c.converge(&map(&[("n", 15)]));
}

#[test]
fn a_learner_joins_when_the_stored_snapshot_predates_it_then_is_promoted() {
    // No compaction: the leader's only stored snapshot is the bootstrap one (voters 1..=3),
    // which raft would refuse to install on node 4; the leader must take a fresh one.
    let mut c = Cluster::new(1000);
    c.write(|| vec![add("n", 1)]);
    c.join(4);
    assert_eq!(change(&c, MembershipChange::AddLearner(4)), [1, 2, 3]);
    members(&c, &[1, 2, 3, 4], &[1, 2, 3], &[4]);
    c.converge(&map(&[("n", 1)]));
    let leader = c.leader();
    assert!(
        c.engines[&leader].status().snapshot_index > 1,
        "a fresh snapshot"
    );
    assert!(c.engines[&4].status().snapshot_index > 1);
    assert_eq!(c.engines[&4].state().read().unwrap().restores, 1);
    c.write(|| vec![add("n", 1)]);
    c.converge(&map(&[("n", 2)]));
    assert!(!c.engines[&4].status().is_leader);

    assert_eq!(change(&c, MembershipChange::AddVoter(4)), [1, 2, 3, 4]);
    members(&c, &[1, 2, 3, 4], &[1, 2, 3, 4], &[]);

    // The joined node restarts from its own log (join_existing no longer matters).
    c.stop(4);
    c.write(|| vec![add("n", 1)]);
    c.start(4);
    members(&c, &[4], &[1, 2, 3, 4], &[]);
    c.converge(&map(&[("n", 3)]));
    // Adding an existing voter again is a no-op that still answers.
    assert_eq!(change(&c, MembershipChange::AddVoter(4)), [1, 2, 3, 4]);
}

#[test]
fn a_leader_that_removes_itself_hands_leadership_over() {
    let c = Cluster::new(1000);
    c.write(|| vec![add("n", 1)]);
    let old = c.leader();
    let rest: Vec<u64> = [1, 2, 3].into_iter().filter(|&id| id != old).collect();
    let voters = recv(
        &mut c
            .handle(old)
            .change_membership(MembershipChange::Remove(old))
            .unwrap(),
        Instant::now() + WAIT,
    )
    .unwrap();
    assert_eq!(voters, rest);
    members(&c, &rest, &rest, &[]);
    // `leader` only looks at nodes that are voters themselves.
    let new = c.leader();
    assert!(rest.contains(&new), "{old} -> {new}");
    wait_until("the removed leader to step down", || {
        !c.engines[&old].status().is_leader
    });
    c.write(|| vec![add("n", 1)]);
    let want = map(&[("n", 2)]);
    wait_until("the voters to converge", || {
        rest.iter()
            .all(|id| c.engines[id].state().read().unwrap().map == want)
    });
    assert!(
        c.engines[&old].status().running,
        "a removed node keeps running"
    );
}
