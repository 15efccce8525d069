//! Tests of the redb `raft::Storage` contract.

use super::*;
use raft::eraftpb::EntryType;
use raft::{GetEntriesContext, Storage};
use redb::ReadableTableMetadata;

fn entry(index: u64, term: u64) -> Entry {
    let mut e = Entry {
        index,
        term,
        ..Default::default()
    };
    e.set_entry_type(EntryType::EntryNormal);
    e.data = vec![index as u8; 100].into();
    e
}

fn entries(range: std::ops::RangeInclusive<u64>, term: u64) -> Vec<Entry> {
    range.map(|i| entry(i, term)).collect()
}

fn hs(term: u64, vote: u64, commit: u64) -> HardState {
    HardState {
        term,
        vote,
        commit,
        ..Default::default()
    }
}

fn fresh(dir: &tempfile::TempDir) -> RedbStorage {
    let mut s = RedbStorage::open(&dir.path().join("raft.redb"), false, None).unwrap();
    assert!(!s.is_initialized());
    s.bootstrap(&[1], b"image-1").unwrap();
    s
}

fn reopen(dir: &tempfile::TempDir, s: RedbStorage) -> RedbStorage {
    drop(s);
    RedbStorage::open(&dir.path().join("raft.redb"), false, None).unwrap()
}

fn is_store_err(r: raft::Result<impl std::fmt::Debug>, want: StorageError) -> bool {
    matches!(r, Err(raft::Error::Store(e)) if e == want)
}

fn ctx() -> GetEntriesContext {
    GetEntriesContext::empty(false)
}

#[test]
fn bootstrap_writes_the_synthetic_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let s = fresh(&dir);
    let st = s.initial_state().unwrap();
    assert_eq!(st.conf_state.get_voters(), &[1]);
    assert_eq!((st.hard_state.term, st.hard_state.commit), (1, 1));
    assert_eq!((s.first_index().unwrap(), s.last_index().unwrap()), (2, 1));
    assert_eq!(s.term(1).unwrap(), 1);
    assert!(is_store_err(s.term(0), StorageError::Compacted));
    assert!(is_store_err(s.term(2), StorageError::Unavailable));
    assert!(s.entries(2, 2, None, ctx()).unwrap().is_empty());
    assert!(is_store_err(
        s.entries(1, 2, None, ctx()),
        StorageError::Compacted
    ));
    let snap = s.snapshot(1, 1).unwrap();
    assert_eq!(
        (snap.get_metadata().index, snap.get_metadata().term),
        (1, 1)
    );
    assert_eq!(snap.get_data(), b"image-1");
    // Bootstrap is idempotent and the state survives a reopen.
    let mut s = reopen(&dir, s);
    assert!(s.is_initialized());
    s.bootstrap(&[7], b"other").unwrap();
    assert_eq!(s.conf_state().get_voters(), &[1]);
    assert_eq!(s.snapshot_data().unwrap(), b"image-1");
}

#[test]
fn persist_read_back_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = fresh(&dir);
    s.persist(&entries(2..=6, 2), Some(&hs(2, 1, 4)), None, true)
        .unwrap();
    let s = reopen(&dir, s);
    assert_eq!((s.first_index().unwrap(), s.last_index().unwrap()), (2, 6));
    assert_eq!(s.hard_state(), &hs(2, 1, 4));
    assert_eq!(s.term(4).unwrap(), 2);
    assert_eq!(s.entries(2, 7, None, ctx()).unwrap(), entries(2..=6, 2));
    assert_eq!(s.entries(4, 5, None, ctx()).unwrap(), entries(4..=4, 2));
    assert!(is_store_err(
        s.entries(2, 8, None, ctx()),
        StorageError::Unavailable
    ));
    // max_size: at least one entry, then as many as fit (raft::util::limit_size semantics).
    assert_eq!(s.entries(2, 7, Some(0), ctx()).unwrap().len(), 1);
    let one = u64::from(entry(2, 2).compute_size());
    assert_eq!(s.entries(2, 7, Some(one * 3), ctx()).unwrap().len(), 3);
    assert_eq!(s.entries(2, 7, Some(one * 3 - 1), ctx()).unwrap().len(), 2);
}

#[test]
fn conflicting_suffix_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = fresh(&dir);
    s.persist(&entries(2..=6, 2), Some(&hs(2, 1, 1)), None, true)
        .unwrap();
    s.persist(&entries(4..=5, 3), Some(&hs(3, 1, 1)), None, true)
        .unwrap();
    let s = reopen(&dir, s);
    {
        assert_eq!(s.last_index().unwrap(), 5);
        assert_eq!(s.term(3).unwrap(), 2);
        assert_eq!(s.term(4).unwrap(), 3);
        assert!(is_store_err(s.term(6), StorageError::Unavailable));
        let got = s.entries(2, 6, None, ctx()).unwrap();
        assert_eq!(got.iter().map(|e| e.term).collect::<Vec<_>>(), [2, 2, 3, 3]);
    }
}

#[test]
#[should_panic(expected = "raft log gap")]
fn a_gap_in_appended_entries_is_an_invariant_violation() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = fresh(&dir);
    s.persist(&entries(2..=3, 2), None, None, false).unwrap();
    s.persist(&entries(5..=6, 2), None, None, false).unwrap();
}

#[test]
fn snapshot_compacts_and_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = fresh(&dir);
    s.persist(&entries(2..=10, 2), Some(&hs(2, 1, 8)), None, true)
        .unwrap();
    s.set_commit(10).unwrap();
    let mut meta = SnapshotMetadata {
        index: 7,
        term: 2,
        ..Default::default()
    };
    meta.mut_conf_state().set_voters(vec![1]);
    s.save_snapshot(meta, b"image-7", 7).unwrap();
    let s = reopen(&dir, s);
    assert_eq!((s.first_index().unwrap(), s.last_index().unwrap()), (8, 10));
    assert_eq!(s.hard_state().commit, 10);
    assert_eq!(s.term(7).unwrap(), 2);
    assert!(is_store_err(s.term(6), StorageError::Compacted));
    assert!(is_store_err(
        s.entries(7, 9, None, ctx()),
        StorageError::Compacted
    ));
    assert_eq!(s.entries(8, 11, None, ctx()).unwrap(), entries(8..=10, 2));
    let snap = s.snapshot(7, 1).unwrap();
    assert_eq!(snap.get_metadata().index, 7);
    assert_eq!(snap.get_data(), b"image-7");
    // A node added after the snapshot (raft would refuse it): a newer one is requested.
    assert!(is_store_err(
        s.snapshot(0, 2),
        StorageError::SnapshotTemporarilyUnavailable
    ));
    assert_eq!(s.take_snapshot_request(), 8);
    // A follower needing a newer snapshot: temporarily unavailable, and the request is noted.
    assert!(is_store_err(
        s.snapshot(9, 2),
        StorageError::SnapshotTemporarilyUnavailable
    ));
    assert_eq!(s.take_snapshot_request(), 9);
    assert_eq!(s.take_snapshot_request(), 0);
}

#[test]
fn compact_never_passes_the_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = fresh(&dir);
    s.persist(&entries(2..=10, 2), Some(&hs(2, 1, 10)), None, true)
        .unwrap();
    s.compact(8).unwrap();
    assert_eq!(s.first_index().unwrap(), 2, "no snapshot past 1 yet");
    let meta = SnapshotMetadata {
        index: 6,
        term: 2,
        ..Default::default()
    };
    s.save_snapshot(meta, b"image-6", 3).unwrap();
    assert_eq!(s.first_index().unwrap(), 4, "kept slack 4..=6");
    assert_eq!(s.term(3).unwrap(), 2);
    s.compact(9).unwrap();
    assert_eq!(s.first_index().unwrap(), 7);
    let s = reopen(&dir, s);
    assert_eq!((s.first_index().unwrap(), s.last_index().unwrap()), (7, 10));
    assert_eq!(s.term(6).unwrap(), 2);
}

#[test]
fn incoming_snapshot_replaces_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = fresh(&dir);
    s.persist(&entries(2..=4, 2), Some(&hs(2, 1, 3)), None, true)
        .unwrap();
    let mut snap = Snapshot::default();
    snap.mut_metadata().index = 20;
    snap.mut_metadata().term = 5;
    snap.mut_metadata()
        .mut_conf_state()
        .set_voters(vec![1, 2, 3]);
    snap.set_data(b"leader-image".to_vec().into());
    s.persist(&entries(21..=22, 5), Some(&hs(5, 0, 20)), Some(&snap), true)
        .unwrap();
    let s = reopen(&dir, s);
    assert_eq!(
        (s.first_index().unwrap(), s.last_index().unwrap()),
        (21, 22)
    );
    assert_eq!(s.term(20).unwrap(), 5);
    assert_eq!(s.conf_state().get_voters(), &[1, 2, 3]);
    assert_eq!(s.snapshot_data().unwrap(), b"leader-image");
    assert_eq!(s.hard_state().commit, 20);
}

#[test]
fn a_second_open_reports_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let _s = fresh(&dir);
    match RedbStorage::open(&dir.path().join("raft.redb"), false, None) {
        Err(RaftLogError::InUse { dir: d }) => assert_eq!(d, dir.path()),
        Err(other) => panic!("unexpected error {other}"),
        Ok(_) => panic!("second open succeeded"),
    }
}

#[test]
fn a_garbage_file_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("raft.redb");
    let garbage: Vec<u8> = (0..64 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&path, garbage).unwrap();
    let err = RedbStorage::open(&path, false, None)
        .err()
        .expect("garbage opened");
    assert!(matches!(err, RaftLogError::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains("raft.redb"), "{err}");
}

#[test]
fn a_snapshot_larger_than_a_chunk_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = fresh(&dir);
    s.persist(&entries(2..=4, 2), Some(&hs(2, 1, 4)), None, true)
        .unwrap();
    let image: Vec<u8> = (0..(SNAP_CHUNK * 2 + 123))
        .map(|i| (i % 251) as u8)
        .collect();
    let mut meta = SnapshotMetadata {
        index: 4,
        term: 2,
        ..Default::default()
    };
    meta.mut_conf_state().set_voters(vec![1]);
    s.save_snapshot(meta.clone(), &image, 4).unwrap();
    assert_eq!(s.snapshot_data().unwrap(), image);
    // A smaller one replaces it whole (no chunk of the old one is left behind).
    s.persist(&entries(5..=6, 2), Some(&hs(2, 1, 6)), None, true)
        .unwrap();
    meta.index = 6;
    s.save_snapshot(meta, b"small", 6).unwrap();
    let s = reopen(&dir, s);
    assert_eq!(s.snapshot_data().unwrap(), b"small");
    assert_eq!(s.snapshot(6, 1).unwrap().get_data(), b"small");
}

/// The regression behind format 2: with the image in `META`, every hard-state write (one per
/// Ready) copied a B-tree leaf as large as the snapshot, so the cost of each commit grew with
/// the state. The table that every Ready writes must stay small whatever the snapshot's size.
#[test]
fn the_table_every_ready_writes_does_not_hold_the_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = fresh(&dir);
    s.persist(&entries(2..=2, 2), Some(&hs(2, 1, 2)), None, true)
        .unwrap();
    let mut meta = SnapshotMetadata {
        index: 2,
        term: 2,
        ..Default::default()
    };
    meta.mut_conf_state().set_voters(vec![1]);
    s.save_snapshot(meta, &vec![7u8; 4 << 20], 2).unwrap();
    for i in 3..=50u64 {
        s.persist(&entries(i..=i, 2), Some(&hs(2, 1, i - 1)), None, true)
            .unwrap();
        s.set_commit(i).unwrap();
    }
    let txn = s.db.begin_read().unwrap();
    let meta_bytes = txn
        .open_table(META)
        .unwrap()
        .stats()
        .unwrap()
        .stored_bytes();
    assert!(
        meta_bytes < 4096,
        "the meta table holds {meta_bytes} bytes: every Ready would copy them"
    );
    drop(txn);
    assert_eq!(s.snapshot_data().unwrap().len(), 4 << 20);
}

/// A file written by a build with table format 1 (the image in `META`) opens: the image moves
/// to its own table, the file says format 2, and nothing else changes.
#[test]
fn a_format_1_file_is_migrated_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("raft.redb");
    {
        let db = redb::Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut mt = txn.open_table(META).unwrap();
            let mut meta = SnapshotMetadata {
                index: 1,
                term: 1,
                ..Default::default()
            };
            meta.mut_conf_state().set_voters(vec![1]);
            mt.insert(K_FORMAT, 1u16.to_le_bytes().as_slice()).unwrap();
            mt.insert(K_SNAP_META, pb(&meta).unwrap().as_slice())
                .unwrap();
            mt.insert(K_SNAP_DATA_V1, b"image-v1".as_slice()).unwrap();
            mt.insert(K_CONF_STATE, pb(meta.get_conf_state()).unwrap().as_slice())
                .unwrap();
            mt.insert(K_TRUNCATED, pair_bytes(1, 1).as_slice()).unwrap();
            mt.insert(K_HARD_STATE, pb(&hs(1, 0, 1)).unwrap().as_slice())
                .unwrap();
            let mut et = txn.open_table(ENTRIES).unwrap();
            et.insert(2, encode_entry(&entry(2, 1)).unwrap().as_slice())
                .unwrap();
        }
        txn.commit().unwrap();
    }
    let s = RedbStorage::open(&path, false, None).unwrap();
    assert!(s.is_initialized());
    assert_eq!(s.snapshot_data().unwrap(), b"image-v1");
    assert_eq!(s.last_index().unwrap(), 2);
    drop(s);
    let db = redb::Database::open(&path).unwrap();
    let txn = db.begin_read().unwrap();
    let mt = txn.open_table(META).unwrap();
    assert_eq!(
        mt.get(K_FORMAT).unwrap().unwrap().value(),
        FORMAT_VERSION.to_le_bytes().as_slice()
    );
    assert!(mt.get(K_SNAP_DATA_V1).unwrap().is_none());
}

/// A file of a newer format is refused with the versions named, not read half-way.
#[test]
fn a_newer_format_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("raft.redb");
    {
        let db = redb::Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(META)
            .unwrap()
            .insert(K_FORMAT, 9u16.to_le_bytes().as_slice())
            .unwrap();
        txn.commit().unwrap();
    }
    let err = RedbStorage::open(&path, false, None)
        .err()
        .expect("refused");
    assert!(err.to_string().contains("this build reads"), "{err}");
}
