//! The log's command encoding is a contract: entries written by one version are applied by
//! the next. These bytes are what this version writes for a few commands; if a change to
//! `Command` (or a type inside it) alters them, old logs would no longer decode: bump the
//! envelope version in `raft-log/src/envelope.rs` and keep decoding the old layout, then update
//! the bytes here.

use troupe_scheduler::state::TaskRef;
use troupe_scheduler::*;

fn hex(cmd: &Command) -> String {
    bincode::serde::encode_to_vec(cmd, bincode::config::standard())
        .unwrap()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn samples() -> Vec<(&'static str, Command)> {
    let at = AttemptRef {
        task: TaskRef {
            wf: 7,
            step: 2,
            item: 300,
        },
        attempt: 3,
        epoch: 9,
    };
    vec![
        ("cancel", Command::Cancel(7)),
        ("started", Command::Started(vec![at])),
        (
            "finished",
            Command::Finished(vec![Report {
                at,
                outcome: Outcome::Succeeded {
                    output: Some(Json("{\"a\":1}".into())),
                },
            }]),
        ),
        (
            "redrive-many",
            Command::RedriveMany(DlqFilter {
                step: Some("ocr".into()),
                all: false,
                ..Default::default()
            }),
        ),
        ("collect", Command::Collect { retain_ms: 600_000 }),
    ]
}

const GOLDEN: &[(&str, &str)] = &[
    ("cancel", "0907"),
    ("started", "07010702fb2c010309"),
    ("finished", "08010702fb2c0103090001077b2261223a317d"),
    ("redrive-many", "0f000001036f6372000000"),
    ("collect", "11fcc0270900"),
];

#[test]
fn command_bytes_are_stable() {
    for ((name, cmd), (gname, want)) in samples().iter().zip(GOLDEN) {
        assert_eq!(name, gname);
        assert_eq!(
            &hex(cmd),
            want,
            "the encoding of {name} changed: bump the envelope version (see the module doc)"
        );
        let (back, _): (Command, usize) =
            bincode::serde::decode_from_slice(&hex_bytes(want), bincode::config::standard())
                .unwrap();
        assert_eq!(&back, cmd);
    }
}

fn hex_bytes(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}
