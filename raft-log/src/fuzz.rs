//! Fuzz target of log-entry decoding (see docs/ARCHITECTURE.md, "Fuzzing"): the bytes an
//! entry's data holds (an [`Envelope`] of scheduler [`Command`]s) decoded from random and
//! mutated bytes: an error, never a panic or an allocation over [`MAX_ENTRY_BYTES`]; valid
//! envelopes round-trip byte for byte. The protobuf pre-check of peers' raft messages
//! ([`crate::wire_check`]) gets the same random bytes.

#[path = "../../fuzz/samples.rs"]
mod samples;
#[path = "../../fuzz/support.rs"]
mod support;

use crate::config::MAX_ENTRY_BYTES;

// The limit bounds what a forged length makes bincode allocate.
const _: () = assert!(MAX_ENTRY_BYTES <= 64 << 20);
use crate::envelope::{ENVELOPE_VERSION, Envelope, Group, decode, encode};
use crate::wire_check::{Schema, check as wire_check};
use proptest::prelude::*;
use std::sync::OnceLock;
use support::{BINCODE_DICT, bound_ms, config, corpus, mutated, show, within};
use troupe_scheduler::Command;

const DIR: &str = env!("CARGO_MANIFEST_DIR");

fn commands() -> &'static [Command] {
    static C: OnceLock<Vec<Command>> = OnceLock::new();
    C.get_or_init(|| samples::samples(DIR, &[]).commands)
}

fn envelope(groups: Vec<(u64, Vec<Command>)>, at_ms: u64, origin: u64) -> Envelope<Command> {
    Envelope {
        v: ENVELOPE_VERSION,
        at_ms,
        origin,
        groups: groups
            .into_iter()
            .map(|(id, cmds)| Group { id, cmds })
            .collect(),
    }
}

fn seeds() -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = commands()
        .chunks(5)
        .map(|c| encode(&envelope(vec![(1, c.to_vec())], 1_700_000_000_000, 7)).unwrap())
        .collect();
    out.extend(corpus(DIR, "log_entry").into_iter().map(|(_, b)| b));
    out
}

fn check(bytes: &[u8]) {
    let r = within(bound_ms(100), || show(bytes), || decode::<Command>(bytes));
    match r {
        Ok(env) => assert_eq!(
            encode(&env).unwrap(),
            bytes,
            "a decoded entry re-encodes as it was"
        ),
        Err(e) => assert!(
            e.starts_with("unreadable envelope")
                || e.starts_with("unsupported envelope")
                || e.starts_with("undecodable envelope")
                || e.contains("trailing bytes"),
            "an unclear entry error: {e}"
        ),
    }
    for schema in [
        Schema::Message,
        Schema::Entry,
        Schema::ConfChange,
        Schema::ConfChangeV2,
    ] {
        let _ = wire_check(schema, bytes);
    }
}

/// Some commands of the samples, in groups.
fn groups() -> impl Strategy<Value = Vec<(u64, Vec<Command>)>> {
    let n = commands().len();
    proptest::collection::vec(
        (
            any::<u64>(),
            proptest::collection::vec(0..n, 0..6)
                .prop_map(|ix| ix.into_iter().map(|i| commands()[i].clone()).collect()),
        ),
        0..4,
    )
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn log_entry_random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        check(&bytes);
    }

    #[test]
    fn log_entry_mutated(bytes in mutated(seeds(), BINCODE_DICT)) {
        check(&bytes);
    }

    #[test]
    fn log_entry_round_trips(g in groups(), at_ms in any::<u64>(), origin in any::<u64>()) {
        let env = envelope(g, at_ms, origin);
        let bytes = encode(&env).unwrap();
        prop_assert_eq!(decode::<Command>(&bytes).unwrap(), env);
    }
}

#[test]
fn log_entry_corpus_replays() {
    for (name, bytes) in corpus(DIR, "log_entry") {
        eprintln!(
            "log_entry/{name}: {:?}",
            decode::<Command>(&bytes).map(|_| ())
        );
        check(&bytes);
    }
}
