//! Engine configuration ([`EngineConfig`]) and the raft-rs `Config` derived from it.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use troupe_clock::{Rng, SharedClock};

use crate::Transport;
use crate::error::RaftLogError;

/// File name of the redb database inside [`EngineConfig::data_dir`].
pub const DB_FILE_NAME: &str = "raft.redb";

/// Largest encoded entry payload we write; bigger proposals are rejected before they reach raft.
/// The same value caps decoding, so a corrupt length prefix cannot make us allocate gigabytes.
pub(crate) const MAX_ENTRY_BYTES: usize = 64 << 20;

/// Wall clock in milliseconds since the Unix epoch.
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// Configuration of an [`crate::Engine`]. Build it with [`EngineConfig::new`] and override fields.
#[derive(Clone)]
pub struct EngineConfig {
    /// Directory of the log; the redb file is `data_dir/raft.redb`. Created if missing.
    pub data_dir: PathBuf,
    /// `true`: every persist is a redb `Durability::Immediate` commit (fsync).
    /// `false`: `Durability::None` (tests and benchmarks only; a crash loses recent entries).
    pub fsync: bool,
    /// Raft tick in milliseconds (default 100). The hook also runs at least once per tick.
    pub tick_ms: u64,
    /// Take a snapshot and compact the log once `applied - last_snapshot >= this` (default 1000).
    pub snapshot_every_entries: u64,
    /// At most this many commands are packed into one raft entry (default 4096). A single
    /// proposal is never split, so a bigger proposal gets an entry of its own.
    pub max_entry_commands: usize,
    /// Capacity of the bounded proposal queue (default 1024); full means `ProposeError::Busy`.
    pub queue_capacity: usize,
    /// Raft refuses new entries beyond this many uncommitted payload bytes (default 64 MiB);
    /// waiters then get `ProposeError::Busy`, fire-and-forget commands are retried next cycle.
    pub max_uncommitted_bytes: u64,
    /// Wall clock in ms since the epoch. Read to stamp entries (by the leader, or by a follower
    /// forwarding a fire-and-forget proposal) and to give the hook its `now_ms`.
    pub clock: Clock,
    /// Monotonic time of the engine: when ticks are due, read-barrier deadlines, the latency
    /// histograms, snapshot pacing. Default `troupe_clock::system()`; the simulator hands in a
    /// `ManualClock` (and sets [`Self::clock`] from the same clock, see [`Self::with_clock`]).
    pub time: SharedClock,
    /// Seed of the engine's randomness: the incarnation nonce of each open and every raft
    /// election timeout (see `driver/timeout.rs`). `None` (default): seeded from the OS.
    pub seed: Option<u64>,
    /// Where the redb file lives. `None` (default): `data_dir/raft.redb` on the file system.
    /// `Some`: a simulated disk ([`crate::MemDisk`]), for the simulator and tests.
    pub disk: Option<crate::MemDisk>,
    /// Raft id of this node (default 1). Unique in the group, never 0.
    pub id: u64,
    /// Initial voters, written into the bootstrap snapshot of a fresh log (default `[1]`); must
    /// contain [`Self::id`]. Ignored once the log exists (the stored conf state wins) and when
    /// [`Self::join_existing`] is set. One voter: the node elects itself at open. Several:
    /// elections run on ticks.
    pub voters: Vec<u64>,
    /// `false` (default): a fresh log is bootstrapped with [`Self::voters`]. `true`: a fresh log
    /// stays empty (no bootstrap snapshot, no conf state); the node neither campaigns nor
    /// counts as a member until the leader adds it
    /// ([`crate::EngineHandle::change_membership`]) and it installs the leader's snapshot.
    /// Ignored once the log exists.
    pub join_existing: bool,
    /// Where outbound raft messages go. `None`: they are dropped (fine for a single voter).
    pub transport: Option<Arc<dyn Transport>>,
    /// Election timeout in ticks (default 10; raft randomizes it within `[n, 2n)`).
    pub election_tick: usize,
    /// Leader heartbeat interval in ticks (default 2); must be below `election_tick`.
    pub heartbeat_tick: usize,
    /// Injected disk faults (chaos mode): slow or failing fsyncs. `None` (default): none.
    pub disk_faults: Option<Arc<crate::DiskFaults>>,
    /// `true`: entries dropped by compaction are moved to an archive table instead of deleted,
    /// so the whole committed history can be read back ([`crate::EngineHandle::read_log`]).
    /// Costs disk (the log grows without bound); meant for chaos runs. Default `false`.
    pub keep_compacted: bool,
}

impl EngineConfig {
    /// Defaults: fsync on, 100 ms tick, snapshot every 1000 entries, 4096 commands per entry,
    /// queue of 1024 proposals, 64 MiB uncommitted, `SystemTime` clock; single voter (id 1,
    /// voters `[1]`, bootstrapped, no transport), election after 10 ticks, heartbeat every 2.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        EngineConfig {
            data_dir: data_dir.into(),
            fsync: true,
            tick_ms: 100,
            snapshot_every_entries: 1000,
            max_entry_commands: 4096,
            queue_capacity: 1024,
            max_uncommitted_bytes: 64 << 20,
            clock: Arc::new(system_clock_ms),
            time: troupe_clock::system(),
            seed: None,
            disk: None,
            id: 1,
            voters: vec![1],
            join_existing: false,
            transport: None,
            election_tick: 10,
            heartbeat_tick: 2,
            disk_faults: None,
            keep_compacted: false,
        }
    }

    /// Takes both readings of time from `clock`: ticks and deadlines from its monotonic
    /// `now()`, entry stamps and the hook's `now_ms` from its `wall_ms()`.
    pub fn with_clock(mut self, clock: SharedClock) -> Self {
        let wall = clock.clone();
        self.clock = Arc::new(move || wall.wall_ms());
        self.time = clock;
        self
    }

    /// The random stream of one open: from [`Self::seed`], else from the OS.
    pub(crate) fn rng(&self) -> Rng {
        match self.seed {
            Some(seed) => Rng::new(seed),
            None => Rng::from_os(),
        }
    }

    /// Path of the redb file.
    pub fn db_path(&self) -> PathBuf {
        self.data_dir.join(DB_FILE_NAME)
    }

    pub(crate) fn validate(&self) -> Result<(), RaftLogError> {
        let bad = |what: &str| Err(RaftLogError::Config(format!("{what} must be at least 1")));
        if self.tick_ms == 0 {
            return bad("tick_ms");
        }
        if self.snapshot_every_entries == 0 {
            return bad("snapshot_every_entries");
        }
        if self.max_entry_commands == 0 {
            return bad("max_entry_commands");
        }
        if self.queue_capacity == 0 {
            return bad("queue_capacity");
        }
        if self.max_uncommitted_bytes == 0 {
            return bad("max_uncommitted_bytes");
        }
        if self.id == 0 {
            return bad("id");
        }
        if self.heartbeat_tick == 0 {
            return bad("heartbeat_tick");
        }
        let invalid = |what: String| Err(RaftLogError::Config(what));
        if self.election_tick <= self.heartbeat_tick {
            return invalid(format!(
                "election_tick ({}) must be greater than heartbeat_tick ({})",
                self.election_tick, self.heartbeat_tick
            ));
        }
        if self.voters.contains(&0) || (!self.join_existing && !self.voters.contains(&self.id)) {
            return invalid(format!(
                "voters {:?} must contain this node's id {} and no 0",
                self.voters, self.id
            ));
        }
        Ok(())
    }

    /// The raft-rs configuration for this node; `applied` is the index of the restored snapshot.
    pub(crate) fn raft_config(&self, applied: u64) -> raft::Config {
        raft::Config {
            id: self.id,
            election_tick: self.election_tick,
            heartbeat_tick: self.heartbeat_tick,
            // raft-rs's own defaults, written out: the driver overwrites each draw within
            // this range from its seeded stream (driver/timeout.rs).
            min_election_tick: self.election_tick,
            max_election_tick: 2 * self.election_tick,
            applied,
            max_size_per_msg: 1 << 20,
            max_inflight_msgs: 256,
            check_quorum: true,
            pre_vote: true,
            max_uncommitted_size: self.max_uncommitted_bytes,
            // Bounds the memory of one Ready during a long replay; the loop drains the rest.
            max_committed_size_per_ready: 16 << 20,
            ..Default::default()
        }
    }
}

impl fmt::Debug for EngineConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EngineConfig")
            .field("data_dir", &self.data_dir)
            .field("fsync", &self.fsync)
            .field("tick_ms", &self.tick_ms)
            .field("snapshot_every_entries", &self.snapshot_every_entries)
            .field("max_entry_commands", &self.max_entry_commands)
            .field("queue_capacity", &self.queue_capacity)
            .field("max_uncommitted_bytes", &self.max_uncommitted_bytes)
            .field("id", &self.id)
            .field("voters", &self.voters)
            .field("join_existing", &self.join_existing)
            .field("transport", &self.transport.is_some())
            .field("election_tick", &self.election_tick)
            .field("heartbeat_tick", &self.heartbeat_tick)
            .field("disk_faults", &self.disk_faults)
            .field("keep_compacted", &self.keep_compacted)
            .field("time", &self.time)
            .field("seed", &self.seed)
            .field("disk", &self.disk.is_some())
            .finish_non_exhaustive()
    }
}

fn system_clock_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
