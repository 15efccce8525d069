//! The write side of [`RedbStorage`]: every write is one redb transaction ([`RedbStorage::write`]
//! and its variants, which also replace the chunked snapshot image and archive compacted entries
//! in chaos mode), and the one-time migration of a table-format-1 file.

use super::*;

impl RedbStorage {
    /// The stored snapshot image, its chunks joined (empty if none).
    pub(super) fn read_snapshot(&self) -> Result<Vec<u8>, redb::Error> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(SNAPSHOT)?;
        let mut data = Vec::new();
        for item in t.iter()? {
            data.extend_from_slice(item?.1.value());
        }
        Ok(data)
    }

    /// Runs `f` in one write transaction; Immediate durability when `sync && self.fsync`.
    pub(super) fn write(
        &self,
        sync: bool,
        f: impl FnOnce(&mut EntriesTable<'_>, &mut MetaTable<'_>) -> TxnResult,
    ) -> Result<(), RaftLogError> {
        self.write_archiving(sync, None, |et, mt, _| f(et, mt))
    }

    /// One write transaction (Immediate durability when `sync && self.fsync`), also replacing
    /// the stored snapshot image with `snap` when given and handing `f` the archive table when
    /// compaction archives (chaos mode).
    pub(super) fn write_archiving(
        &self,
        sync: bool,
        snap: Option<&[u8]>,
        f: impl FnOnce(
            &mut EntriesTable<'_>,
            &mut MetaTable<'_>,
            Option<&mut EntriesTable<'_>>,
        ) -> TxnResult,
    ) -> Result<(), RaftLogError> {
        let durability = if sync && self.fsync {
            Durability::Immediate
        } else {
            Durability::None
        };
        self.write_full(durability, snap, f)
    }

    /// One write transaction. A durable (fsync'ed) one first goes through the injected disk
    /// faults (chaos mode): a delay, or a failure before anything is written.
    pub(super) fn write_full(
        &self,
        durability: Durability,
        snap: Option<&[u8]>,
        f: impl FnOnce(
            &mut EntriesTable<'_>,
            &mut MetaTable<'_>,
            Option<&mut EntriesTable<'_>>,
        ) -> TxnResult,
    ) -> Result<(), RaftLogError> {
        let err = |e: redb::Error| RaftLogError::from_redb(&self.path, e);
        if matches!(durability, Durability::Immediate)
            && let Some(f) = &self.faults
        {
            f.before_fsync().map_err(|source| RaftLogError::Io {
                path: self.path.clone(),
                source,
            })?;
        }
        let mut txn = self.db.begin_write().map_err(|e| err(e.into()))?;
        txn.set_durability(durability).map_err(|e| err(e.into()))?;
        {
            let mut et = txn.open_table(ENTRIES).map_err(|e| err(e.into()))?;
            let mut mt = txn.open_table(META).map_err(|e| err(e.into()))?;
            let mut at = if self.archive {
                Some(txn.open_table(ARCHIVE).map_err(|e| err(e.into()))?)
            } else {
                None
            };
            f(&mut et, &mut mt, at.as_mut()).map_err(err)?;
            if let Some(data) = snap {
                let mut st = txn.open_table(SNAPSHOT).map_err(|e| err(e.into()))?;
                put_snapshot(&mut st, data).map_err(err)?;
            }
        }
        txn.commit().map_err(|e| err(e.into()))
    }
}

/// Copies the entries `<= upto` into the archive table (inside the caller's transaction).
pub(super) fn archive_range(
    et: &EntriesTable<'_>,
    archive: &mut EntriesTable<'_>,
    upto: u64,
) -> TxnResult {
    for row in et.range(..=upto)? {
        let (k, v) = row?;
        archive.insert(k.value(), v.value())?;
    }
    Ok(())
}

/// Replaces the snapshot table's chunks with `data`'s.
pub(super) fn put_snapshot(st: &mut redb::Table<'_, u32, &'static [u8]>, data: &[u8]) -> TxnResult {
    st.retain(|_, _| false)?;
    for (i, chunk) in data.chunks(SNAP_CHUNK).enumerate() {
        let key = u32::try_from(i)
            .map_err(|_| redb::Error::Corrupted("snapshot over 4 PiB".to_string()))?;
        st.insert(key, chunk)?;
    }
    Ok(())
}

/// Moves a format-1 file's snapshot image from `META` into `SNAPSHOT`, in one transaction,
/// and marks the file format 2. Nothing to do on a fresh or a format-2 file.
pub(super) fn migrate_v1(db: &Database) -> TxnResult {
    let txn = db.begin_write()?;
    {
        let mut mt = txn.open_table(META)?;
        let v1 = 1u16.to_le_bytes();
        if mt.get(K_FORMAT)?.map(|f| f.value() == v1.as_slice()) != Some(true) {
            return Ok(());
        }
        let data = mt
            .remove(K_SNAP_DATA_V1)?
            .map(|g| g.value().to_vec())
            .unwrap_or_default();
        let mut st = txn.open_table(SNAPSHOT)?;
        put_snapshot(&mut st, &data)?;
        mt.insert(K_FORMAT, FORMAT_VERSION.to_le_bytes().as_slice())?;
        tracing::info!(
            bytes = data.len(),
            "raft log migrated from table format 1 to 2"
        );
    }
    txn.commit()?;
    Ok(())
}
