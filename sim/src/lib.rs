//! # troupe-sim — a deterministic simulator of a Troupe cluster
//!
//! N servers (3 or 5), each a raft-rs `RawNode` over a simulated disk ([`disk`]: unsynced
//! writes are lost on a crash, a failed fsync stops the server) whose committed entries carry
//! bincode `troupe_scheduler::Command`s stamped with the leader's `at_ms` (the layout of
//! raft-log's envelope) and applied to a `troupe_scheduler::State`; snapshots in the real state
//! machine's encoding (`troupe_actors::machine::Machine`), log compaction and snapshot install;
//! a leader that runs the real `Planner`, a lease judge and the real `reconcile`; fake worker
//! nodes; clients that submit, cancel and read status linearizably (ReadIndex); and a network
//! that delays, drops, duplicates, reorders and partitions. Time is a `u64` of simulated ms and
//! every random choice (raft's election timeouts too) comes from one seed, so a seed replays
//! exactly (`sim --seed S`).
//!
//! A second world, [`engine`] (`sim --engine`), runs real raft-log engines instead
//! (`troupe_raft_log::Stepper` over `troupe_raft_log::MemDisk`, the real `Machine` and engine
//! hook) with the same clients, workers, network and checks. Neither runs the node's actors:
//! ractor's registry is process-global; docs/GUARANTEES.md ("Simulation") says what each world
//! checks and what a full-stack simulation would still take.
//!
//! Read in this order: [`world`] (the loop and the faults), [`replica`] (raft + apply + the
//! leader's duties), [`ready`] (the Ready loop, syncs, snapshots), [`disk`], [`read`],
//! [`worker`], [`client`], [`check`] (per-apply properties) and [`verdict`] (end-of-run
//! properties, over the client history).
//!
//! Invariants checked: G1 acked workflows exist everywhere and finish; G2 one workflow per
//! idempotency key; G3 one accepted result per (task, attempt), across servers and restarts;
//! G4 no accepted report that fencing refuses, one leader per term; G5 acked cancels hold and
//! status reads are linearizable; G6 capacity at every applied index on every replica; G7 equal
//! state hashes at equal indexes (restored snapshots included), convergence after heal.
//! Not simulated: membership changes (docs/GUARANTEES.md, "Simulation").

pub mod check;
pub mod cli;
pub mod client;
pub mod disk;
pub mod engine;
pub mod entry;
pub mod lease;
pub mod net;
pub mod read;
pub mod ready;
pub mod replica;
pub mod rng;
pub mod verdict;
pub mod worker;
pub mod world;

/// Simulated time with faults (then everything heals).
pub const FAULT_MS: u64 = 20_000;
/// The most simulated time after the heal for the cluster to settle.
pub const SETTLE_MS_MAX: u64 = 120_000;

/// What one seed did.
#[derive(Debug, Clone)]
pub struct RunReport {
    pub seed: u64,
    pub trace_hash: u64,
    pub trace: Vec<String>,
    pub violations: Vec<String>,
    pub faults: usize,
    pub sim_ms: u64,
    pub commands: u64,
    pub checks: u64,
    pub ops: usize,
    pub acked: usize,
    pub messages: u64,
    pub dropped: u64,
    /// What happened (counted on every replica that applied it).
    pub events: std::collections::BTreeMap<&'static str, u64>,
}

/// Runs one seed: faults for [`FAULT_MS`], heal, settle, check.
pub fn run(seed: u64, keep_trace: bool) -> RunReport {
    let mut w = world::World::new(seed, keep_trace, FAULT_MS);
    while w.now < FAULT_MS {
        w.step(true);
    }
    w.heal();
    let deadline = w.now + SETTLE_MS_MAX;
    let mut unsettled = w.unsettled();
    while w.now < deadline {
        w.step(false);
        if w.now.is_multiple_of(500) {
            unsettled = w.unsettled();
            if unsettled.is_none() {
                break;
            }
        }
    }
    verdict::check(&mut w, unsettled);
    let now = w.now;
    for v in w.checks.violations.clone() {
        w.trace.line(now, format_args!("VIOLATION {v}"));
    }
    let final_hash = w.replicas[0].state.hash();
    w.trace.line(
        now,
        format_args!(
            "end: applied {} state {final_hash:x}",
            w.replicas[0].applied
        ),
    );
    RunReport {
        seed,
        trace_hash: w.trace.hash,
        trace: std::mem::take(&mut w.trace.lines),
        violations: w.checks.violations.clone(),
        faults: w.faults.len(),
        sim_ms: w.now,
        commands: w.applied,
        checks: w.checks.checked,
        ops: w.clients.ops.len(),
        acked: w.clients.acked.len(),
        messages: w.net.stats.sent,
        dropped: w.net.stats.dropped + w.net.stats.cut,
        events: std::mem::take(&mut w.checks.events),
    }
}
