//! Fault injection for chaos engineering (`--fault-injection` only; `troupe chaos`, docs/chaos.md).
//!
//! [`Chaos`] is this node's fault state, shared by the parts a fault acts on: the node's clock
//! (skew: `NodeConfig::clock`, which the leases, the timers and the Raft log's entry stamps
//! read) and the Raft log's disk ([`troupe_raft_log::DiskFaults`]: slow or failing fsyncs), the
//! cluster layer (a partition is a silent [`blackhole`]: every cluster frame to and from the
//! nodes it names is dropped; in `reset` mode `cluster::membership` drops the sessions instead),
//! the HTTP API (a partition with `api` leaves it unanswered, `api::chaos::cut_api`), and the
//! process itself ([`process`]: kill and pause). Every fault is timed and heals by itself; the
//! API is `node/src/api/chaos.rs`.

pub mod blackhole;
pub mod fault;
pub mod process;

use fault::{ActiveFault, FaultRequest, Kind, PartitionMode};
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use troupe_clock::{Clock, SkewedClock};
use troupe_raft_log::DiskFaults;

/// A process fault is carried out this long after it is accepted, so the answer gets out.
const ACT_AFTER: Duration = Duration::from_millis(200);

pub struct Chaos {
    /// The node's clock, whose offset `skew-clock` sets (the same `Arc` as
    /// `NodeConfig::clock`).
    clock: Arc<SkewedClock>,
    /// The Raft log's disk faults.
    pub disk: Arc<DiskFaults>,
    /// The partition in force, if any.
    partition: Mutex<Option<Partition>>,
    /// Cluster frames this node dropped for a blackhole partition (its own or a peer's).
    frames_dropped: AtomicU64,
    active: Mutex<Vec<ActiveFault>>,
    next_id: AtomicU64,
}

/// A partition in force.
#[derive(Debug, Clone)]
struct Partition {
    id: u64,
    /// The nodes this one is cut from (`None`: every other node).
    from: Option<BTreeSet<String>>,
    mode: PartitionMode,
    /// The HTTP API is cut too.
    api: bool,
}

impl Partition {
    fn cuts(&self, peer: &str) -> bool {
        self.from.as_ref().is_none_or(|set| set.contains(peer))
    }
}

impl Default for Chaos {
    /// Over a clock of its own (tests); a node's is made with [`Chaos::new`].
    fn default() -> Self {
        Chaos::new(SkewedClock::new(troupe_clock::system()))
    }
}

impl std::fmt::Debug for Chaos {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chaos")
            .field("active", &self.active())
            .finish_non_exhaustive()
    }
}

/// Wall clock in ms since the epoch, not skewed: when faults start and heal (what an operator
/// reads in `troupe chaos list`), never a decision of the node.
pub fn system_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Chaos {
    /// The faults of a node whose clock is `clock` (skewed by `skew-clock`).
    pub fn new(clock: Arc<SkewedClock>) -> Self {
        Chaos {
            clock,
            disk: Default::default(),
            partition: Mutex::new(None),
            frames_dropped: AtomicU64::new(0),
            active: Mutex::new(Vec::new()),
            next_id: AtomicU64::new(0),
        }
    }

    /// This node's wall clock: the system's plus the injected skew.
    pub fn now_ms(&self) -> u64 {
        self.clock.wall_ms()
    }

    fn partition(&self) -> Option<Partition> {
        self.partition
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Whether cluster traffic with `peer` (a node id) is cut now, in either mode.
    pub fn cut_from(&self, peer: &str) -> bool {
        self.partition().is_some_and(|p| p.cuts(peer))
    }

    /// Whether a `reset` partition cuts the sessions with `peer` (membership drops them).
    pub fn resets_sessions_with(&self, peer: &str) -> bool {
        self.partition()
            .is_some_and(|p| p.mode == PartitionMode::Reset && p.cuts(peer))
    }

    /// Whether a `reset` partition is in force.
    pub fn resets_sessions(&self) -> bool {
        self.partition()
            .is_some_and(|p| p.mode == PartitionMode::Reset)
    }

    /// Whether a `reset` partition cuts this node from every other one (it stops dialing).
    pub fn resets_all(&self) -> bool {
        self.partition()
            .is_some_and(|p| p.mode == PartitionMode::Reset && p.from.is_none())
    }

    /// A `blackhole` partition in force: `Some(None)` cut from every other node,
    /// `Some(Some(nodes))` from those.
    pub fn blackhole(&self) -> Option<Option<Vec<String>>> {
        self.partition()
            .filter(|p| p.mode == PartitionMode::Blackhole)
            .map(|p| p.from.map(|s| s.into_iter().collect()))
    }

    /// Whether a blackhole partition cuts cluster frames with `peer`; `None`: a frame whose
    /// sender is not known (only a cut from everyone drops it).
    pub fn blackholes(&self, peer: Option<&str>) -> bool {
        self.partition().is_some_and(|p| {
            p.mode == PartitionMode::Blackhole
                && match peer {
                    Some(peer) => p.cuts(peer),
                    None => p.from.is_none(),
                }
        })
    }

    /// Whether a partition cuts this node's HTTP API.
    pub fn api_cut(&self) -> bool {
        self.partition().is_some_and(|p| p.api)
    }

    /// Counts a cluster frame dropped by a blackhole.
    pub fn count_dropped_frame(&self) {
        self.frames_dropped.fetch_add(1, Ordering::Relaxed);
    }

    /// Cluster frames dropped here by blackhole partitions since the start.
    pub fn frames_dropped(&self) -> u64 {
        self.frames_dropped.load(Ordering::Relaxed)
    }

    pub fn active(&self) -> Vec<ActiveFault> {
        self.active
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Starts a fault on this node (the request is for this node and valid). Process faults act
    /// a moment later, after the answer is sent; the others heal by themselves after `for_ms`.
    pub fn inject(
        self: &Arc<Self>,
        req: &FaultRequest,
        data_dir: PathBuf,
    ) -> Result<ActiveFault, String> {
        req.validate()?;
        let now = system_ms();
        let fault = ActiveFault {
            id: self.next_id.fetch_add(1, Ordering::AcqRel) + 1,
            kind: req.kind,
            node: req.node.clone(),
            from: req.from.clone(),
            mode: (req.kind == Kind::Partition).then(|| req.mode.unwrap_or_default()),
            api: req.api,
            since_ms: now,
            until_ms: now + req.for_ms,
            delay_ms: req.delay_ms,
            skew_ms: req.skew_ms,
        };
        let mut active = self.active.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(same) = active.iter().find(|f| f.kind == req.kind) {
            return Err(format!(
                "a {} fault (id {}) is already in force on this node until {}; wait for it to heal",
                req.kind.name(),
                same.id,
                same.until_ms
            ));
        }
        match req.kind {
            Kind::Kill => {
                process::spawn_restarter(&data_dir, req.for_ms)
                    .map_err(|e| format!("cannot start the restarter: {e}"))?;
                tracing::warn!(
                    for_ms = req.for_ms,
                    "chaos: this node dies now (kill -9) and is restarted after the fault"
                );
                std::thread::spawn(|| {
                    std::thread::sleep(ACT_AFTER);
                    process::kill_self()
                });
            }
            Kind::Pause => {
                process::spawn_resumer(req.for_ms + ACT_AFTER.as_millis() as u64)
                    .map_err(|e| format!("cannot start the resumer: {e}"))?;
                tracing::warn!(
                    for_ms = req.for_ms,
                    "chaos: this node freezes now (SIGSTOP)"
                );
                std::thread::spawn(|| {
                    std::thread::sleep(ACT_AFTER);
                    process::stop_self()
                });
            }
            Kind::Partition => {
                let mode = req.mode.unwrap_or_default();
                let api = req.api.unwrap_or(false);
                *self.partition.lock().unwrap_or_else(|e| e.into_inner()) = Some(Partition {
                    id: fault.id,
                    from: req.from.clone().map(|f| f.into_iter().collect()),
                    mode,
                    api,
                });
                tracing::warn!(from = ?req.from, mode = mode.name(), api, for_ms = req.for_ms, "chaos: partitioned");
            }
            Kind::SlowDisk => {
                self.disk.set_fsync_delay_ms(req.delay_ms.unwrap_or(0));
                tracing::warn!(delay_ms = ?req.delay_ms, for_ms = req.for_ms, "chaos: slow fsyncs");
            }
            Kind::FsyncError => {
                self.disk.fail_next_fsyncs(1);
                tracing::warn!("chaos: the next fsync of the raft log fails");
            }
            Kind::SkewClock => {
                self.clock.set_offset_ms(req.skew_ms.unwrap_or(0));
                tracing::warn!(skew_ms = ?req.skew_ms, for_ms = req.for_ms, "chaos: the node's clock skewed (leases, timers, entry stamps)");
            }
        }
        active.push(fault.clone());
        drop(active);
        if req.kind == Kind::FsyncError {
            // Spent by the write it fails (the node then stops); no timer disarms it first.
            return Ok(fault);
        }
        let me = self.clone();
        let (id, for_ms) = (fault.id, req.for_ms);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(for_ms)).await;
            me.heal(id);
        });
        Ok(fault)
    }

    /// Ends fault `id` (a no-op if it already ended).
    pub fn heal(&self, id: u64) {
        let mut active = self.active.lock().unwrap_or_else(|e| e.into_inner());
        let Some(pos) = active.iter().position(|f| f.id == id) else {
            return;
        };
        let f = active.remove(pos);
        match f.kind {
            Kind::Partition => {
                let mut p = self.partition.lock().unwrap_or_else(|e| e.into_inner());
                if p.as_ref().is_some_and(|p| p.id == id) {
                    *p = None;
                }
            }
            Kind::SlowDisk => self.disk.set_fsync_delay_ms(0),
            Kind::SkewClock => self.clock.set_offset_ms(0),
            Kind::FsyncError => self.disk.fail_next_fsyncs(0),
            Kind::Kill | Kind::Pause => {}
        }
        tracing::info!(kind = f.kind.name(), id, "chaos: fault healed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(kind: Kind, for_ms: u64) -> FaultRequest {
        FaultRequest {
            kind,
            node: "n1".into(),
            from: None,
            mode: None,
            api: None,
            for_ms,
            delay_ms: None,
            skew_ms: None,
        }
    }

    #[tokio::test]
    async fn faults_act_then_heal_by_themselves() {
        let c = Arc::new(Chaos::default());
        let dir = std::env::temp_dir();
        let mut p = req(Kind::Partition, 60);
        p.from = Some(vec!["n2".into()]);
        c.inject(&p, dir.clone()).unwrap();
        assert!(c.cut_from("n2") && !c.cut_from("n3"));
        assert!(c.blackholes(Some("n2")) && !c.blackholes(Some("n3")) && !c.blackholes(None));
        assert!(!c.resets_sessions() && !c.api_cut());
        let mut s = req(Kind::SkewClock, 60);
        s.skew_ms = Some(3_600_000);
        let before = c.clock.now();
        c.inject(&s, dir.clone()).unwrap();
        assert!(c.now_ms() >= system_ms() + 3_590_000);
        assert!(
            c.clock.now() >= before + Duration::from_secs(3_600),
            "the monotonic clock (leases, timers) is skewed too"
        );
        let mut d = req(Kind::SlowDisk, 60);
        d.delay_ms = Some(7);
        c.inject(&d, dir.clone()).unwrap();
        assert_eq!(c.disk.fsync_delay_ms(), 7);
        let e = c.inject(&p, dir).unwrap_err();
        assert!(e.contains("already in force"), "{e}");
        assert_eq!(c.active().len(), 3);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(c.active().is_empty());
        assert!(!c.cut_from("n2") && c.blackhole().is_none());
        assert!(c.now_ms() < system_ms() + 1_000);
        assert!(c.clock.now() < before + Duration::from_secs(60), "healed");
        assert_eq!(c.disk.fsync_delay_ms(), 0);
    }

    #[tokio::test]
    async fn a_reset_partition_drops_sessions_and_a_blackhole_does_not() {
        let c = Arc::new(Chaos::default());
        let mut p = req(Kind::Partition, 5_000);
        p.mode = Some(PartitionMode::Reset);
        c.inject(&p, std::env::temp_dir()).unwrap();
        assert!(c.resets_sessions() && c.resets_all() && c.resets_sessions_with("n9"));
        assert!(c.blackhole().is_none() && !c.blackholes(None));
        c.heal(c.active()[0].id);
        p.mode = None;
        p.api = Some(true);
        p.from = Some(vec!["n2".into()]);
        c.inject(&p, std::env::temp_dir()).unwrap();
        assert!(!c.resets_sessions() && c.api_cut());
        assert_eq!(c.blackhole(), Some(Some(vec!["n2".to_string()])));
        assert_eq!(c.active()[0].mode, Some(PartitionMode::Blackhole));
    }
}
