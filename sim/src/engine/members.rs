//! Membership changes in the engine world, drawn from the seed: a server that starts empty as
//! a non-member (`EngineConfig::join_existing`, as `troupe node --join-existing` starts one) is
//! added at a seeded time through the leader's real `EngineHandle::change_membership`, and in
//! some seeds a voter (the leader itself in about half of them) is removed later, while the
//! faults go on. A refused or dropped change is tried again later, a bounded number of times.

use super::checked::Probe;
use super::server::Server;
use crate::rng::Rng;
use tokio::sync::oneshot::error::TryRecvError;
use troupe_raft_log::{MembershipChange, MembershipReceiver};

/// Seeds (per mille) whose world has a joiner to add.
pub const ADD_PER_MILLE: u64 = 250;
/// Of those, seeds (per mille) that also remove a voter once the joiner is in.
const REMOVE_PER_MILLE: u64 = 600;

/// Attempts per change before the world gives it up.
const TRIES_MAX: u32 = 10;
/// A change unanswered this long (simulated ms) is treated as dropped and tried again.
const ANSWER_MS_MAX: u64 = 5_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Add,
    Remove,
    Done,
}

/// One seed's membership changes and where they stand.
pub struct Plan {
    pub rng: Rng,
    /// The server that starts as a non-member.
    pub joiner: u64,
    stage: Stage,
    /// After the add completes, a removal this many ms later.
    remove_after: Option<u64>,
    /// The removal targets whoever leads when it is first tried.
    remove_leader: bool,
    target: Option<u64>,
    due: u64,
    tries: u32,
    /// The change asked for, since when, and its answer to come.
    pending: Option<(u64, MembershipReceiver)>,
    /// The server removed, once the removal is in effect.
    pub removed: Option<u64>,
}

impl Plan {
    /// `None`: this seed changes no membership. `joiner`: the id the extra server gets.
    pub fn draw(seed: u64, joiner: u64) -> Option<Plan> {
        let mut rng = Rng::new(seed ^ 0x3E3B_E125);
        if !rng.chance(ADD_PER_MILLE) {
            return None;
        }
        let due = rng.range(1_000, 8_000);
        let remove_after = rng
            .chance(REMOVE_PER_MILLE)
            .then(|| rng.range(1_000, 6_000));
        // Half of the removals target whoever leads: raft-log must step that leader down (raft-rs
        // 0.7 alone panicked on it, see `driver/membership.rs`).
        let remove_leader = rng.chance(500);
        Some(Plan {
            rng,
            joiner,
            stage: Stage::Add,
            remove_after,
            remove_leader,
            target: None,
            due,
            tries: 0,
            pending: None,
            removed: None,
        })
    }

    pub fn describe(&self) -> String {
        let remove = match (self.remove_after, self.remove_leader) {
            (None, _) => "no removal".to_string(),
            (Some(ms), true) => format!("then removes the leader {ms} ms later"),
            (Some(ms), false) => format!("then removes a voter {ms} ms later"),
        };
        format!("adds r{} at {} ms, {remove}", self.joiner, self.due)
    }

    /// Whether the seed removes a voter after the add.
    pub fn removes(&self) -> bool {
        self.remove_after.is_some()
    }

    fn change(&self) -> Option<MembershipChange> {
        match (self.stage, self.target) {
            (Stage::Add, _) => Some(MembershipChange::AddVoter(self.joiner)),
            (Stage::Remove, Some(t)) => Some(MembershipChange::Remove(t)),
            _ => None,
        }
    }

    fn in_effect(&self, voters: &[u64]) -> bool {
        match (self.stage, self.target) {
            (Stage::Add, _) => voters.contains(&self.joiner),
            (Stage::Remove, Some(t)) => !voters.contains(&t),
            _ => false,
        }
    }

    /// One step: notices a change in effect, collects an answer, or asks the leader.
    pub fn step(&mut self, now: u64, leader: Option<&Server>, probe: &Probe) {
        if self.stage == Stage::Done || now < self.due {
            return;
        }
        // In effect already? (An answer lost with the leadership may still have been applied.)
        let voters = leader.and_then(|l| l.status()).map(|s| s.voters);
        if let Some(v) = &voters
            && self.in_effect(v)
        {
            self.done(now, v, probe);
            return;
        }
        if let Some((since, rx)) = &mut self.pending {
            let why = match rx.try_recv() {
                Err(TryRecvError::Empty) if now - *since < ANSWER_MS_MAX => return,
                Err(TryRecvError::Empty) => "no answer".to_string(),
                Err(TryRecvError::Closed) => "the engine went away".to_string(),
                Ok(Ok(v)) if self.in_effect(&v) => {
                    self.done(now, &v, probe);
                    return;
                }
                Ok(Ok(v)) => format!("applied, voters {v:?}"),
                Ok(Err(e)) => e.to_string(),
            };
            self.refused(now, &why, probe);
            return;
        }
        let (Some(l), Some(voters)) = (leader, voters) else {
            self.due = now + 200;
            return;
        };
        if self.tries >= TRIES_MAX {
            let mut p = probe.lock();
            p.checks.count("membership_given_up");
            p.trace.line(
                now,
                format_args!("membership: gives up {:?}", self.change()),
            );
            self.stage = Stage::Done;
            return;
        }
        // A follower target is drawn again if it has come to lead since.
        let leads = self.target == Some(l.id) && !self.remove_leader;
        if self.stage == Stage::Remove && (self.target.is_none() || leads) {
            let followers: Vec<u64> = voters.iter().copied().filter(|&v| v != l.id).collect();
            self.target = Some(if self.remove_leader || followers.is_empty() {
                l.id
            } else {
                followers[self.rng.below(followers.len() as u64) as usize]
            });
        }
        let Some(change) = self.change() else {
            return;
        };
        self.tries += 1;
        if self.tries > 1 {
            probe.lock().checks.count("membership_retried");
        }
        probe.lock().trace.line(
            now,
            format_args!(
                "membership: asks r{} for {change:?} (try {}, voters {voters:?})",
                l.id, self.tries
            ),
        );
        match l.change_membership(change) {
            Ok(rx) => self.pending = Some((now, rx)),
            Err(e) => self.refused(now, &e.to_string(), probe),
        }
    }

    fn refused(&mut self, now: u64, why: &str, probe: &Probe) {
        self.pending = None;
        self.due = now + self.rng.range(300, 1_500);
        let mut p = probe.lock();
        p.checks.count("membership_refused");
        p.trace.line(
            now,
            format_args!(
                "membership: {:?} not done ({why}); retry at {}",
                self.change(),
                self.due
            ),
        );
    }

    fn done(&mut self, now: u64, voters: &[u64], probe: &Probe) {
        self.pending = None;
        self.tries = 0;
        let mut p = probe.lock();
        p.trace.line(
            now,
            format_args!(
                "membership: {:?} in effect, voters {voters:?}",
                self.change()
            ),
        );
        match self.stage {
            Stage::Add => {
                p.checks.count("members_added");
                match self.remove_after {
                    Some(ms) => {
                        self.stage = Stage::Remove;
                        self.due = now + ms;
                    }
                    None => self.stage = Stage::Done,
                }
            }
            Stage::Remove => {
                p.checks.count("members_removed");
                self.removed = self.target;
                self.stage = Stage::Done;
            }
            Stage::Done => {}
        }
    }
}
