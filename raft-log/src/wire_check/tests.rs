use protobuf::Message as PbMessage;
use raft::eraftpb::{
    ConfChange, ConfChangeSingle, ConfChangeType, ConfChangeV2, ConfState, Entry, Message,
    MessageType, Snapshot,
};

use super::*;

/// A tag varint.
fn tag(field: u32, wire_type: u8) -> Vec<u8> {
    let mut out = Vec::new();
    let mut v = (u64::from(field) << 3) | u64::from(wire_type);
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return out;
        }
        out.push(b | 0x80);
    }
}

/// A length-delimited field `field` holding `body`.
fn delimited(field: u32, body: &[u8]) -> Vec<u8> {
    let mut out = tag(field, 2);
    let mut len = body.len() as u64;
    loop {
        let b = (len & 0x7f) as u8;
        len >>= 7;
        if len == 0 {
            out.push(b);
            break;
        }
        out.push(b | 0x80);
    }
    out.extend_from_slice(body);
    out
}

/// `depth` start-group tags of unknown field 100, nested, never closed: the shape that makes a
/// recursive group skipper (protobuf 3.x before 3.7.2) recurse once per tag.
fn nested_groups(depth: usize) -> Vec<u8> {
    tag(100, 3).repeat(depth)
}

fn full_message() -> Message {
    let mut cs = ConfState::default();
    cs.set_voters(vec![1, 2, 3]);
    cs.set_learners(vec![4]);
    let mut snap = Snapshot::default();
    snap.set_data(vec![7u8; 300].into());
    snap.mut_metadata().set_conf_state(cs);
    snap.mut_metadata().index = 40;
    snap.mut_metadata().term = 3;
    let mut m = Message::default();
    m.set_msg_type(MessageType::MsgSnapshot);
    m.to = 2;
    m.from = 1;
    m.term = 3;
    m.priority = -5;
    m.set_context(b"ctx".to_vec().into());
    m.set_snapshot(snap);
    let mut e = Entry {
        index: 41,
        term: 3,
        ..Default::default()
    };
    // Entry data is opaque to protobuf: bytes that look like groups are fine there.
    e.set_data(nested_groups(50).into());
    m.set_entries(vec![e.clone(), e].into());
    m
}

#[test]
fn real_messages_pass() {
    let bytes = full_message().write_to_bytes().unwrap();
    assert_eq!(check(Schema::Message, &bytes), Ok(()));
    assert_eq!(check(Schema::Message, &[]), Ok(()));

    let mut cc = ConfChange::default();
    cc.set_change_type(ConfChangeType::AddLearnerNode);
    cc.node_id = 9;
    cc.set_context(b"x".to_vec().into());
    let bytes = cc.write_to_bytes().unwrap();
    assert_eq!(check(Schema::ConfChange, &bytes), Ok(()));

    let single = ConfChangeSingle {
        node_id: 4,
        ..Default::default()
    };
    let mut v2 = ConfChangeV2::default();
    v2.set_changes(vec![single.clone(), single].into());
    let bytes = v2.write_to_bytes().unwrap();
    assert_eq!(check(Schema::ConfChangeV2, &bytes), Ok(()));
}

#[test]
fn unknown_non_group_fields_pass() {
    let mut bytes = full_message().write_to_bytes().unwrap();
    bytes.extend(tag(100, 0));
    bytes.push(0x01);
    bytes.extend(tag(101, 1));
    bytes.extend([0u8; 8]);
    bytes.extend(tag(102, 5));
    bytes.extend([0u8; 4]);
    bytes.extend(delimited(103, &nested_groups(10)));
    assert_eq!(check(Schema::Message, &bytes), Ok(()));
    // protobuf keeps unknown length-delimited fields as raw bytes, so this decodes.
    assert!(Message::parse_from_bytes(&bytes).is_ok());
}

#[test]
fn groups_are_refused_at_every_level() {
    // Top level, a start and an end tag.
    let err = check(Schema::Message, &tag(100, 3)).unwrap_err();
    assert!(matches!(
        err,
        WireCheckError::Group {
            schema: Schema::Message,
            field: 100,
            offset: 0
        }
    ));
    let err = check(Schema::Message, &tag(5, 4)).unwrap_err();
    assert!(matches!(err, WireCheckError::Group { field: 5, .. }));

    // Inside an entry (Message.entries).
    let mut entry = tag(2, 0);
    entry.push(3);
    entry.extend(tag(100, 3));
    let mut bytes = tag(2, 0);
    bytes.push(2);
    bytes.extend(delimited(7, &entry));
    let err = check(Schema::Message, &bytes).unwrap_err();
    assert_eq!(
        err,
        WireCheckError::Group {
            schema: Schema::Entry,
            field: 100,
            offset: 6
        }
    );

    // Inside Message.snapshot.metadata.conf_state.
    let conf_state = tag(100, 3);
    let metadata = delimited(1, &conf_state);
    let snapshot = delimited(2, &metadata);
    let bytes = delimited(9, &snapshot);
    let err = check(Schema::Message, &bytes).unwrap_err();
    assert!(matches!(
        err,
        WireCheckError::Group {
            schema: Schema::ConfState,
            offset: 6,
            ..
        }
    ));

    // Inside ConfChangeV2.changes.
    let bytes = delimited(2, &tag(1, 3));
    let err = check(Schema::ConfChangeV2, &bytes).unwrap_err();
    assert!(matches!(
        err,
        WireCheckError::Group {
            schema: Schema::ConfChangeSingle,
            ..
        }
    ));

    let text = err.to_string();
    assert!(
        text.contains("group") && text.contains("RUSTSEC-2024-0437"),
        "{text}"
    );
}

#[test]
fn malformed_input_is_refused() {
    // Wire types 6 and 7, field 0.
    assert_eq!(
        check(Schema::Message, &tag(1, 6)),
        Err(WireCheckError::BadTag { offset: 0 })
    );
    assert_eq!(
        check(Schema::Message, &tag(1, 7)),
        Err(WireCheckError::BadTag { offset: 0 })
    );
    assert_eq!(
        check(Schema::Message, &[0x00]),
        Err(WireCheckError::BadTag { offset: 0 })
    );
    // A field number over u32.
    let mut big = vec![0xff; 9];
    big.push(0x01);
    assert_eq!(
        check(Schema::Message, &big),
        Err(WireCheckError::BadTag { offset: 0 })
    );
    // An unterminated varint, a short fixed64, a length past the end.
    assert_eq!(
        check(Schema::Message, &[0x10, 0x80]),
        Err(WireCheckError::Truncated { offset: 0 })
    );
    assert_eq!(
        check(Schema::Message, &[0x09, 0, 0]),
        Err(WireCheckError::Truncated { offset: 0 })
    );
    let mut bytes = tag(2, 0);
    bytes.push(1);
    bytes.extend([0x3a, 0x05, 0x00]);
    assert_eq!(
        check(Schema::Message, &bytes),
        Err(WireCheckError::Truncated { offset: 2 })
    );
    // A nested length (metadata: 5 bytes) past the end of its message (the snapshot: 4 left),
    // though not past the end of the input.
    let mut bytes = delimited(9, &[0x12, 0x05, 0x0a, 0x03, 0x08, 0x01]);
    bytes.extend([0u8; 8]);
    assert_eq!(
        check(Schema::Message, &bytes),
        Err(WireCheckError::Truncated { offset: 2 })
    );
}

#[test]
fn the_size_bound_is_enforced() {
    let bytes = full_message().write_to_bytes().unwrap();
    let err = check_within(Schema::Message, &bytes, bytes.len() - 1).unwrap_err();
    assert_eq!(
        err,
        WireCheckError::TooLarge {
            bytes: bytes.len(),
            max: bytes.len() - 1
        }
    );
    assert_eq!(check_within(Schema::Message, &bytes, bytes.len()), Ok(()));
    assert_eq!(MESSAGE_BYTES_MAX, 96 << 20);
}

/// Set in the child process of [`deeply_nested_groups_are_refused`].
const CHILD_ENV: &str = "TROUPE_WIRE_CHECK_CHILD";

/// Nesting depth of the crafted payload: 1 MiB of start-group tags.
const DEPTH: usize = 1 << 19;

/// The crafted payload: a message whose first entry holds `DEPTH` nested unknown groups.
fn crafted() -> Vec<u8> {
    let mut bytes = tag(2, 0);
    bytes.push(2);
    bytes.extend(delimited(7, &nested_groups(DEPTH)));
    bytes
}

/// Child side: hands the crafted payload to protobuf unchecked, on a 64 KiB stack, and prints
/// what happened (a stack overflow kills the process instead).
#[test]
fn unchecked_decode_child() {
    if std::env::var_os(CHILD_ENV).is_none() {
        return;
    }
    let bytes = crafted();
    let outcome = std::thread::Builder::new()
        .stack_size(64 << 10)
        .spawn(move || match Message::parse_from_bytes(&bytes) {
            Ok(_) => "decoded".to_string(),
            Err(e) => format!("refused by protobuf: {e}"),
        })
        .unwrap()
        .join()
        .unwrap();
    println!("UNCHECKED-OUTCOME: {outcome}");
}

#[test]
fn deeply_nested_groups_are_refused() {
    let bytes = crafted();
    let err = check(Schema::Message, &bytes).unwrap_err();
    assert_eq!(
        err,
        WireCheckError::Group {
            schema: Schema::Entry,
            field: 100,
            offset: 6
        }
    );
    assert!(
        err.to_string()
            .contains("group tag (field 100 of Entry, byte 6) refused"),
        "{err}"
    );

    // Without the check, in a child process: protobuf 2.28 refuses the payload itself (its
    // group skipper is a loop); a recursive one (3.x before 3.7.2) kills the child with a
    // stack overflow. Either way it must never decode.
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "wire_check::tests::unchecked_decode_child",
            "--nocapture",
        ])
        .env(CHILD_ENV, "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let refused = stdout.contains("UNCHECKED-OUTCOME: refused by protobuf");
    let overflowed = std::os::unix::process::ExitStatusExt::signal(&out.status).is_some();
    assert!(
        refused || overflowed,
        "{:?}\n{stdout}\n{stderr}",
        out.status
    );
}
