//! The engine world in `cargo test`: real raft-log engines over simulated disks
//! (`troupe_sim::engine`). A fixed range of seeds must keep every property, and a seed must
//! replay to the same trace.

/// Seeds run by `cargo test` (about 50 s in a debug build on 2 idle cores, 75 s when other
/// builds share them; `sim --engine --seeds N` runs more).
const CI_SEEDS: u64 = 500;

#[test]
fn the_same_seed_gives_the_same_trace_in_the_engine_world() {
    // Seed 35 adds a server and removes a voter; seed 29 removes the leader itself, which
    // made raft-rs 0.7 panic (and the engine fail stop) before raft-log stepped it down.
    for seed in [3, 29, 35, 77, 1_001] {
        let a = troupe_sim::engine::run(seed, true);
        let b = troupe_sim::engine::run(seed, true);
        assert_eq!(a.trace, b.trace, "seed {seed} did not replay line for line");
        assert_eq!(a.trace_hash, b.trace_hash);
        assert!(
            a.trace.len() > 50,
            "seed {seed} traced only {} lines",
            a.trace.len()
        );
    }
    assert_ne!(
        troupe_sim::engine::run(3, false).trace_hash,
        troupe_sim::engine::run(4, false).trace_hash
    );
}

#[test]
fn ci_seeds_of_the_engine_world_keep_every_property() {
    let mut failed = Vec::new();
    let mut faults = 0;
    let mut events = std::collections::BTreeMap::new();
    for seed in 0..CI_SEEDS {
        let r = troupe_sim::engine::run(seed, false);
        faults += r.faults;
        for (k, v) in r.events {
            *events.entry(k).or_insert(0u64) += v;
        }
        if let Some(v) = r.violations.first() {
            failed.push(format!(
                "seed {seed}: {v}\n  replay: cargo run --release -p troupe-sim --bin sim -- --engine --seed {seed}"
            ));
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
    // The faults reached fencing, lost nodes, snapshots (taken, restored at a restart or
    // installed from the leader), restarts from the simulated disk, failed fsyncs (fail-stop)
    // and ReadIndex reads; membership changes completed (a joiner added, a voter removed).
    assert!(faults > CI_SEEDS as usize, "{faults} faults");
    for what in [
        "node lost",
        "report refused",
        "late success accepted",
        "snapshot taken",
        "snapshot restored",
        "restarts",
        "sync failed",
        "read answered",
        "members_added",
        "members_removed",
    ] {
        assert!(
            events.get(what).copied().unwrap_or(0) > 0,
            "no {what:?} in {events:?}"
        );
    }
}
