//! raft-rs's randomized election timeout, drawn from the engine's seeded stream.
//!
//! raft-rs 0.7 draws each election timeout with `rand::thread_rng()`, uniform in
//! `[min_election_tick, max_election_tick)`, in `Raft::reset_randomized_election_timeout`, which
//! `Raft::reset` calls on every `become_follower`, `become_candidate` and `become_leader`. Its
//! `Config` takes no seed and no generator, and the range's bounds are private fields fixed at
//! `RawNode::new`, so they cannot be re-set per term either (a range of width one would be
//! deterministic, but then every election of a node would time out alike: the simulator saw
//! two servers with equal timeouts split every vote for ever, seed 1852 of the RawNode world).
//! What raft-rs does allow is `Raft::set_randomized_election_timeout` (public, documented for
//! tests) and reading `election_elapsed` (public). `Raft::reset` always leaves
//! `election_elapsed` at 0, and within one call into raft nothing counts it up again after a
//! reset (only a tick does, before it may reset). So after every call that can reset (a tick, a
//! stepped message, a campaign, `RawNode::new`) the driver overwrites the timeout with one drawn
//! from its own stream whenever `election_elapsed == 0`. That also redraws when a follower
//! merely heard from its leader (which zeroes the count too): harmless, the timeout only
//! matters while the count grows from 0, and the draw stays uniform in the same range. raft's
//! own draw still happens and is thrown away. With [`crate::EngineConfig::seed`] set, every
//! timeout of a node is a function of the seed and of what the node was told, so a simulated
//! run replays exactly.

use super::Driver;
use crate::StateMachine;

impl<M: StateMachine> Driver<M> {
    /// Replaces raft's election timeout with a seeded draw if raft may just have drawn one.
    pub(super) fn fix_timeout(&mut self) {
        let raft = &mut self.node.raft;
        if raft.election_elapsed != 0 {
            return;
        }
        let min = self.cfg.election_tick as u64;
        let t = self.rng.range(min, 2 * min - 1);
        raft.set_randomized_election_timeout(t as usize);
    }
}
