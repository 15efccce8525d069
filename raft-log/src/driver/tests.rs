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

/// Opens an engine on `dir` that has applied 5, then appends `data` as an uncommitted entry
/// (as if written by another version, or damaged); the next leader commits it.
fn append_raw(dir: &std::path::Path, data: Vec<u8>) -> (EngineConfig, u64) {
    let cfg = EngineConfig::new(dir);
    let engine = Engine::open(cfg.clone(), Sum::default(), Box::new(|_, _, _| Vec::new())).unwrap();
    let out = engine
        .handle()
        .propose(vec![5])
        .unwrap()
        .blocking_recv()
        .unwrap();
    assert_eq!(out, Ok(vec![5]));
    engine.shutdown();
    let mut store = RedbStorage::open(&cfg.db_path(), true, None).unwrap();
    let (last, term) = (store.last(), store.hard_state().term);
    let hs: HardState = store.hard_state().clone();
    store
        .persist(&[raw_entry(last + 1, term, data)], Some(&hs), None, true)
        .unwrap();
    (cfg, last + 1)
}

#[test]
fn a_foreign_incarnation_entry_is_applied_and_reaches_no_new_waiter() {
    let dir = tempfile::tempdir().unwrap();
    // An entry from another incarnation whose group id 1 would collide with the next waiter.
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
    let (cfg, bad) = append_raw(dir.path(), foreign);
    let engine = Engine::open(cfg, Sum::default(), Box::new(|_, _, _| Vec::new())).unwrap();
    let out = engine
        .handle()
        .propose(vec![1])
        .unwrap()
        .blocking_recv()
        .unwrap();
    assert!(engine.status().applied > bad);
    // The first waiter of this incarnation gets its own output, not the replayed group's.
    assert_eq!(out, Ok(vec![106]));
}

#[test]
fn an_undecodable_committed_entry_stops_the_engine_instead_of_being_skipped() {
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
    for (what, data) in [("garbage", vec![0xff; 32]), ("a newer version", future)] {
        let dir = tempfile::tempdir().unwrap();
        let (cfg, bad) = append_raw(dir.path(), data);
        match Engine::open(cfg, Sum::default(), Box::new(|_, _, _| Vec::new())) {
            Err(e) => assert!(matches!(e, RaftLogError::Undecodable { .. }), "{what}: {e}"),
            Ok(engine) => {
                let deadline = Instant::now() + Duration::from_secs(10);
                while engine.status().running {
                    assert!(Instant::now() < deadline, "{what}: the engine kept running");
                    std::thread::sleep(Duration::from_millis(10));
                }
                let st = engine.status();
                assert!(
                    st.applied < bad,
                    "{what}: applied past the bad entry: {st:?}"
                );
                assert_eq!(engine.state().read().unwrap().0, 5, "{what}");
            }
        }
    }
}

#[test]
fn a_failing_restore_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = EngineConfig::new(dir.path());
    Engine::open(cfg.clone(), Sum::default(), Box::new(|_, _, _| Vec::new()))
        .unwrap()
        .shutdown();
    let mut store = RedbStorage::open(&cfg.db_path(), true, None).unwrap();
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
