//! The simulator in `cargo test`: a fixed range of seeds must keep every property, and a seed
//! must replay to the same trace.

/// Seeds run by `cargo test` (about a minute in a debug build on 2 shared cores, with the
/// opt-level overrides of the root Cargo.toml; `sim --seeds N` in release runs many more).
const CI_SEEDS: u64 = 2_000;

#[test]
fn the_same_seed_gives_the_same_trace() {
    for seed in [7, 1234, 1852] {
        let a = troupe_sim::run(seed, true);
        let b = troupe_sim::run(seed, false);
        assert_eq!(a.trace_hash, b.trace_hash, "seed {seed} did not replay");
        assert!(
            a.trace.len() > 50,
            "seed {seed} traced only {} lines",
            a.trace.len()
        );
    }
    assert_ne!(
        troupe_sim::run(7, false).trace_hash,
        troupe_sim::run(8, false).trace_hash
    );
}

#[test]
fn ci_seeds_keep_every_property() {
    let mut failed = Vec::new();
    let mut faults = 0;
    let mut events = std::collections::BTreeMap::new();
    for seed in 0..CI_SEEDS {
        let r = troupe_sim::run(seed, false);
        faults += r.faults;
        for (k, v) in r.events {
            *events.entry(k).or_insert(0u64) += v;
        }
        if let Some(v) = r.violations.first() {
            failed.push(format!(
                "seed {seed}: {v}\n  replay: cargo run --release -p troupe-sim --bin sim -- --seed {seed}"
            ));
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
    // The faults did reach the fencing paths, snapshots (taken, sent to a follower behind the
    // compacted log, restored after a crash), failed syncs, and linearizable reads.
    assert!(faults > CI_SEEDS as usize, "{faults} faults");
    for what in [
        "node lost",
        "report refused",
        "late success accepted",
        "snapshot taken",
        "snapshot installed",
        "restored from snapshot",
        "sync failed",
        "read answered",
    ] {
        assert!(
            events.get(what).copied().unwrap_or(0) > 0,
            "no {what:?} in {events:?}"
        );
    }
}
