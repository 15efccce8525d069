//! Fuzz targets of the cluster wire (`node/src/cluster/wire.rs`): the payloads a peer sends
//! (`ExecMsg`, `Vec<Command>` proposals, lease renewals and their replies) decoded from random
//! and mutated bytes: never a panic, never an allocation over the payload limit, and valid
//! encodings round-trip. See docs/ARCHITECTURE.md, "Fuzzing".

#[path = "../../fuzz/alloc.rs"]
mod alloc;
#[path = "../../fuzz/samples.rs"]
mod samples;
#[path = "../../fuzz/support.rs"]
mod support;

use proptest::prelude::*;
use std::sync::OnceLock;
use support::{BINCODE_DICT, bound_ms, config, corpus, mutated, show, within};
use troupe_actors::dispatcher::Held;
use troupe_node::cluster::lease::held_of;
use troupe_node::cluster::wire::{ExecMsg, PAYLOAD_BYTES_MAX, RenewReply, decode, encode};
use troupe_scheduler::{AttemptRef, Command, Outcome, Report, TaskRef};

#[global_allocator]
static ALLOC: alloc::Tracking = alloc::Tracking;

const DIR: &str = env!("CARGO_MANIFEST_DIR");

fn samples() -> &'static samples::Samples {
    static S: OnceLock<samples::Samples> = OnceLock::new();
    S.get_or_init(|| samples::samples(DIR, &[]))
}

/// Valid payloads of each kind, encoded as peers send them, plus the committed corpus.
fn seeds() -> Vec<Vec<u8>> {
    let s = samples();
    let mut out = vec![
        encode(&ExecMsg::Run(s.runs.iter().take(8).cloned().collect())),
        encode(&ExecMsg::Kill(
            s.runs.iter().take(8).map(|r| (r.task, r.attempt)).collect(),
        )),
        encode(&ExecMsg::StopWorkers(s.groups.clone())),
        encode(&RenewReply {
            leader: true,
            epoch: 3,
            up: true,
            leader_api: "127.0.0.1:7000".into(),
        }),
    ];
    out.extend(s.commands.chunks(4).map(|c| encode(&c.to_vec())));
    out.extend(corpus(DIR, "wire").into_iter().map(|(_, b)| b));
    out
}

/// Decodes `bytes` as every payload type: no panic, bounded time, bounded allocation.
fn check(bytes: &[u8]) {
    let ((), largest) = alloc::largest_allocation(|| {
        within(
            bound_ms(100),
            || show(bytes),
            || {
                let _ = decode::<ExecMsg>(bytes);
                let _ = decode::<Vec<Command>>(bytes);
                let _ = decode::<RenewReply>(bytes);
                let _ = held_of(bytes);
            },
        )
    });
    // A length prefix may make bincode allocate up to the payload limit, never past it.
    assert!(
        largest <= PAYLOAD_BYTES_MAX + 4096,
        "decoding {} allocated {largest} bytes at once",
        show(bytes)
    );
}

fn held() -> impl Strategy<Value = Held> {
    let at = (
        any::<u64>(),
        any::<u16>(),
        any::<u32>(),
        any::<u32>(),
        any::<u64>(),
    )
        .prop_map(|(wf, step, item, attempt, epoch)| AttemptRef {
            task: TaskRef { wf, step, item },
            attempt,
            epoch,
        });
    let outcome = prop_oneof![
        Just(Outcome::Succeeded { output: None }),
        ".{0,20}".prop_map(|error| Outcome::Failed { error }),
        ".{0,20}".prop_map(|error| Outcome::WorkerBroken { error }),
    ];
    (
        ".{0,20}",
        any::<u64>(),
        proptest::collection::vec(at.clone(), 0..6),
        proptest::collection::vec((at, outcome), 0..6),
    )
        .prop_map(|(node, epoch, attempts, recent)| Held {
            node,
            epoch,
            attempts,
            recent: recent
                .into_iter()
                .map(|(at, outcome)| Report { at, outcome })
                .collect(),
        })
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn wire_random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        check(&bytes);
    }

    #[test]
    fn wire_mutated_payloads(bytes in mutated(seeds(), BINCODE_DICT)) {
        check(&bytes);
    }

    #[test]
    fn wire_renewals_round_trip(h in held()) {
        let bytes = encode(&h);
        let back = held_of(&bytes).expect("a valid renewal decodes");
        prop_assert_eq!(encode(&back), bytes);
        prop_assert_eq!(back.attempts, h.attempts);
        prop_assert_eq!(back.recent, h.recent);
    }
}

#[test]
fn wire_valid_payloads_round_trip() {
    let s = samples();
    assert!(
        s.commands.len() > 20 && !s.runs.is_empty(),
        "the samples ran work"
    );
    for c in s.commands.chunks(3) {
        let bytes = encode(&c.to_vec());
        assert_eq!(decode::<Vec<Command>>(&bytes).as_deref(), Some(c));
    }
    let run = ExecMsg::Run(s.runs.clone());
    let bytes = encode(&run);
    let Some(ExecMsg::Run(back)) = decode::<ExecMsg>(&bytes) else {
        panic!("Run does not decode");
    };
    assert_eq!(back, s.runs);
    let stop = encode(&ExecMsg::StopWorkers(s.groups.clone()));
    assert_eq!(decode::<ExecMsg>(&stop).map(|m| encode(&m)), Some(stop));
}

#[test]
fn wire_corpus_replays() {
    for (name, bytes) in corpus(DIR, "wire") {
        eprintln!("wire/{name}: {} bytes", bytes.len());
        check(&bytes);
    }
}

/// A length prefix over the limit is refused before anything is allocated for it.
#[test]
fn wire_huge_length_prefixes_are_refused() {
    for prefix in [
        &[0x00, 0xfd, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f][..],
        &[0x00, 0xfc, 0x00, 0x00, 0x00, 0x40],
        &[0xfd, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
    ] {
        let (r, largest) = alloc::largest_allocation(|| decode::<ExecMsg>(prefix));
        assert!(r.is_none());
        assert!(largest < 1 << 20, "{largest} bytes for {prefix:?}");
        assert!(held_of(prefix).is_none());
    }
}
