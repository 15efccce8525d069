//! Engine tests that need crate internals (writing raw entries into the store).

use raft::eraftpb::{Entry, EntryType, HardState};

use super::*;
use crate::Engine;
use crate::envelope::{self, ENVELOPE_VERSION, Envelope, Group};

/// Sums the numbers it is given.
#[derive(Default)]
struct Sum(u64);

impl StateMachine for Sum {
    type Command = u64;
    type Output = u64;
    fn apply(&mut self, _at_ms: u64, cmd: u64) -> u64 {
        self.0 += cmd;
        self.0
    }
    fn snapshot(&self) -> Vec<u8> {
        self.0.to_le_bytes().to_vec()
    }
    fn restore(&mut self, data: &[u8]) -> Result<(), String> {
        let b: [u8; 8] = data
            .try_into()
            .map_err(|_| "bad sum snapshot".to_string())?;
        self.0 = u64::from_le_bytes(b);
        Ok(())
    }
}

fn raw_entry(index: u64, term: u64, data: Vec<u8>) -> Entry {
    let mut e = Entry {
        index,
        term,
        ..Default::default()
    };
    e.set_entry_type(EntryType::EntryNormal);
    e.data = data.into();
    e
}

#[test]
fn undecodable_and_foreign_entries_are_handled_on_replay() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = EngineConfig::new(dir.path());
    let engine = Engine::open(cfg.clone(), Sum::default(), Box::new(|_, _, _| Vec::new())).unwrap();
    let out = engine
        .handle()
        .propose(vec![5])
        .unwrap()
        .blocking_recv()
        .unwrap();
    assert_eq!(out, Ok(vec![5]));
    engine.shutdown();

    // Append, as if written by another version or damaged: a garbage entry, an entry from
    // another incarnation whose group id 1 would collide with the next waiter, and a future
    // envelope version. They are persisted but not committed; the next leader commits them.
    let mut store = RedbStorage::open(&cfg.db_path(), true).unwrap();
    let (last, term) = (store.last(), store.hard_state().term);
    let foreign = envelope::encode(&Envelope {
        v: ENVELOPE_VERSION,
        at_ms: 1,
        origin: 12345,
        groups: vec![Group {
            id: 1,
            cmds: vec![100u64],
        }],
    })
    .unwrap();
    let future = {
        let mut b = envelope::encode(&Envelope::<u64> {
            v: ENVELOPE_VERSION,
            at_ms: 1,
            origin: 1,
            groups: vec![],
        })
        .unwrap();
        b[0] = 99; // v is the first varint byte
        b
    };
    let ents = vec![
        raw_entry(last + 1, term, vec![0xff; 32]),
        raw_entry(last + 2, term, foreign),
        raw_entry(last + 3, term, future),
    ];
    let hs: HardState = store.hard_state().clone();
    store.persist(&ents, Some(&hs), None, true).unwrap();
    drop(store);

    let engine = Engine::open(cfg, Sum::default(), Box::new(|_, _, _| Vec::new())).unwrap();
    let st = engine.status();
    assert!(
        st.applied > last + 3,
        "replayed past the bad entries: {st:?}"
    );
    assert_eq!(
        engine.state().read().unwrap().0,
        105,
        "foreign entry applied, bad ones skipped"
    );
    // The first waiter of this incarnation gets its own output, not the replayed group's.
    let out = engine
        .handle()
        .propose(vec![1])
        .unwrap()
        .blocking_recv()
        .unwrap();
    assert_eq!(out, Ok(vec![106]));
}

#[test]
fn a_failing_restore_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = EngineConfig::new(dir.path());
    Engine::open(cfg.clone(), Sum::default(), Box::new(|_, _, _| Vec::new()))
        .unwrap()
        .shutdown();
    let mut store = RedbStorage::open(&cfg.db_path(), true).unwrap();
    let mut meta = store.snapshot_metadata().clone();
    let last = store.last();
    meta.index = last;
    store.save_snapshot(meta, b"not 8 bytes", last).unwrap();
    drop(store);
    let err = Engine::open(cfg, Sum::default(), Box::new(|_, _, _| Vec::new()))
        .err()
        .expect("opened with a bad snapshot");
    assert!(matches!(err, RaftLogError::Restore { .. }), "{err}");
    assert!(err.to_string().contains("bad sum snapshot"), "{err}");
}

#[test]
fn a_panicking_state_machine_fails_open_cleanly() {
    struct Bad;
    impl StateMachine for Bad {
        type Command = u64;
        type Output = ();
        fn apply(&mut self, _: u64, _: u64) {}
        fn snapshot(&self) -> Vec<u8> {
            panic!("snapshot exploded")
        }
        fn restore(&mut self, _: &[u8]) -> Result<(), String> {
            Ok(())
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let err = Engine::open(
        EngineConfig::new(dir.path()),
        Bad,
        Box::new(|_, _, _| Vec::new()),
    )
    .err()
    .expect("opened");
    assert!(matches!(err, RaftLogError::Startup(_)), "{err}");
    assert!(err.to_string().contains("snapshot exploded"), "{err}");
}
