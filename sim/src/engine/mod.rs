//! The engine world: N servers (3 or 5), each a real raft-log engine (`troupe_raft_log::Stepper`:
//! its batching, Ready loop, redb persistence, snapshots and compaction, replay, ReadIndex,
//! fail-stop) over a simulated disk under the real redb store (`troupe_raft_log::MemDisk`:
//! unsynced writes are lost on a crash, a sync can be made to fail), applying the real state
//! machine (`troupe_actors::machine::Machine`, watched by [`checked::Checked`]) with the real
//! engine hook, each on its own manual clock, on the seeded network of `crate::net`, with the
//! clients, fake workers, lease judge and checks of the RawNode world (`crate::world`).
//!
//! Why our own harness and not turmoil or madsim: the engine is sans-IO once stepped (it never
//! blocks, sleeps or spawns in a `Stepper`), so a loop over steppers, a message queue and a
//! manual clock is all the simulation needs. turmoil simulates tokio networking and madsim
//! replaces tokio, std time and randomness behind a cfg flag; neither has anything to drive
//! here (the engine's thread, channels and redb file are already replaced), and both would be
//! heavy dependencies for it.
//!
//! Read in this order: [`world`] (the loop and the faults), [`server`] (one engine and what the
//! node does with its handle), [`checked`] (the checks around each applied command).

pub mod checked;
pub mod members;
pub mod server;
pub mod world;

use crate::{FAULT_MS, RunReport, SETTLE_MS_MAX};
use world::EngineWorld;

/// Runs one seed of the engine world: faults for [`FAULT_MS`], heal, settle, check.
pub fn run(seed: u64, keep_trace: bool) -> RunReport {
    let mut w = EngineWorld::new(seed, keep_trace, FAULT_MS);
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
    let mut r = verdict(&mut w, unsettled);
    r.seed = seed;
    r
}

fn verdict(w: &mut EngineWorld, unsettled: Option<String>) -> RunReport {
    let now = w.now;
    // The members at the end: a removed server and a joiner never added keep running, apart.
    let voters = w.voters();
    let members: Vec<_> = w
        .servers
        .iter()
        .filter(|s| voters.contains(&s.id))
        .collect();
    let states: Vec<_> = members.iter().filter_map(|s| s.state_arc()).collect();
    let applied: Vec<(u64, u64)> = members.iter().map(|s| (s.id, s.applied())).collect();
    let all_up = states.len() == members.len();
    {
        let guards: Vec<_> = states
            .iter()
            .map(|s| s.read().unwrap_or_else(std::sync::PoisonError::into_inner))
            .collect();
        let views: Vec<crate::verdict::View> = guards
            .iter()
            .zip(&applied)
            .map(|(g, &(id, applied))| crate::verdict::View {
                id,
                applied,
                state: g.state(),
            })
            .collect();
        let mut p = w.probe.lock();
        match (all_up && !views.is_empty(), unsettled) {
            (true, unsettled) => {
                crate::verdict::check_views(now, &mut p.checks, &w.clients, &views, unsettled)
            }
            (false, _) => p
                .checks
                .fail(now, "G7: a server is still down after heal".into()),
        }
        let final_hash = views.first().map_or(0, |v| v.state.hash());
        for v in p.checks.violations.clone() {
            p.trace.line(now, format_args!("VIOLATION {v}"));
        }
        let at = applied.first().map_or(0, |a| a.1);
        p.trace
            .line(now, format_args!("end: applied {at} state {final_hash:x}"));
    }
    let mut p = w.probe.lock();
    RunReport {
        seed: 0,
        trace_hash: p.trace.hash,
        trace: std::mem::take(&mut p.trace.lines),
        violations: p.checks.violations.clone(),
        faults: w.faults.len(),
        sim_ms: w.now,
        commands: p.applied,
        checks: p.checks.checked,
        ops: w.clients.ops.len(),
        acked: w.clients.acked.len(),
        messages: w.net.stats.sent,
        dropped: w.net.stats.dropped + w.net.stats.cut,
        events: std::mem::take(&mut p.checks.events),
    }
}
