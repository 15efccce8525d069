//! Fuzz target of snapshot restore (`Machine::restore`, what a follower does with the
//! leader's snapshot and a server with its own at start): random and mutated snapshots are an
//! error, never a panic or a huge allocation, and a valid snapshot round-trips. See
//! docs/ARCHITECTURE.md, "Fuzzing".

#[path = "../../fuzz/alloc.rs"]
mod alloc;
#[path = "../../fuzz/samples.rs"]
mod samples;
#[path = "../../fuzz/support.rs"]
mod support;

use proptest::prelude::*;
use std::sync::OnceLock;
use support::{BINCODE_DICT, bound_ms, config, corpus, mutated, show, within};
use troupe_actors::machine::{Machine, SNAPSHOT_VERSION};
use troupe_raft_log::StateMachine;

#[global_allocator]
static ALLOC: alloc::Tracking = alloc::Tracking;

const DIR: &str = env!("CARGO_MANIFEST_DIR");

/// A snapshot of a state that ran the examples.
fn snapshot() -> &'static [u8] {
    static S: OnceLock<Vec<u8>> = OnceLock::new();
    S.get_or_init(|| {
        let m = Machine {
            state: samples::samples(DIR, &[]).state,
            ..Default::default()
        };
        m.snapshot()
    })
}

fn seeds() -> Vec<Vec<u8>> {
    let mut out = vec![snapshot().to_vec(), Machine::default().snapshot()];
    out.extend(corpus(DIR, "snapshot").into_iter().map(|(_, b)| b));
    out
}

fn check(bytes: &[u8]) {
    let (r, largest) = alloc::largest_allocation(|| {
        within(
            bound_ms(500),
            || show(bytes),
            || {
                let mut m = Machine::default();
                m.restore(bytes).map(|()| m.snapshot())
            },
        )
    });
    // A forged length may not make restore allocate much more than the snapshot's own size.
    let bound = (bytes.len() * 16).max(16 << 20);
    assert!(
        largest <= bound,
        "restoring {} allocated {largest} bytes at once",
        show(bytes)
    );
    match r {
        // What restored snapshots again to a state that restores to itself.
        Ok(again) => {
            let mut m = Machine::default();
            m.restore(&again)
                .expect("a snapshot this build wrote restores");
            assert_eq!(m.snapshot(), again);
        }
        Err(e) => assert!(e.starts_with("snapshot"), "an unclear restore error: {e}"),
    }
}

proptest! {
    #![proptest_config(config(128))]

    #[test]
    fn snapshot_random_bytes(bytes in prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..256),
        proptest::collection::vec(any::<u8>(), 0..256).prop_map(|mut b| {
            b.splice(0..0, SNAPSHOT_VERSION.to_le_bytes());
            b
        }),
    ]) {
        check(&bytes);
    }

    #[test]
    fn snapshot_mutated(bytes in mutated(seeds(), BINCODE_DICT)) {
        check(&bytes);
    }
}

#[test]
fn snapshot_round_trips() {
    let bytes = snapshot();
    assert!(bytes.len() > 1000, "the samples' state has work in it");
    let mut m = Machine::default();
    m.restore(bytes).unwrap();
    assert_eq!(m.snapshot(), bytes);
    assert!(!m.state.workflows.is_empty());
}

#[test]
fn snapshot_corpus_replays() {
    for (name, bytes) in corpus(DIR, "snapshot") {
        eprintln!("snapshot/{name}: {} bytes", bytes.len());
        check(&bytes);
    }
}
