//! The simulator in `cargo test`: a fixed range of seeds must keep every property, and a seed
//! must replay to the same trace.

/// Seeds run by `cargo test` (about 50 s in a debug build on 2 cores; `sim --seeds N` in
/// release runs many more).
const CI_SEEDS: u64 = 120;

#[test]
fn the_same_seed_gives_the_same_trace() {
    for seed in [7, 1234] {
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
    let (mut faults, mut lost, mut refused) = (0, 0, 0);
    for seed in 0..CI_SEEDS {
        let r = troupe_sim::run(seed, false);
        faults += r.faults;
        lost += r.events.get("node lost").copied().unwrap_or(0);
        refused += r.events.get("report refused").copied().unwrap_or(0);
        if let Some(v) = r.violations.first() {
            failed.push(format!(
                "seed {seed}: {v}\n  replay: cargo run --release -p troupe-sim --bin sim -- --seed {seed}"
            ));
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
    // The faults did reach the fencing paths.
    assert!(faults > CI_SEEDS as usize, "{faults} faults");
    assert!(
        lost > 0 && refused > 0,
        "{lost} nodes lost, {refused} reports refused"
    );
}
