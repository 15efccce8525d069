//! Fault injection for chaos engineering (`--fault-injection` only; `troupe chaos`, docs/chaos.md).
//!
//! [`Chaos`] is this node's fault state, shared by the parts a fault acts on: the node's clock
//! (skew: `NodeConfig::clock`, which the leases, the timers and the Raft log's entry stamps
//! read) and the Raft log's disk ([`troupe_raft_log::DiskFaults`]: slow or failing fsyncs), the cluster
//! sessions (a partition drops the sessions with the nodes it names, see
//! `cluster::membership`), and the process itself ([`process`]: kill and pause). Every fault is
//! timed and heals by itself; the API is `node/src/api/chaos.rs`.

pub mod fault;
pub mod process;

use fault::{ActiveFault, FaultRequest, Kind};
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
    /// The nodes this one is cut from (`None` in the set: every other node), with the fault id.
    partition: Mutex<Option<(u64, Option<BTreeSet<String>>)>>,
    active: Mutex<Vec<ActiveFault>>,
    next_id: AtomicU64,
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
            active: Mutex::new(Vec::new()),
            next_id: AtomicU64::new(0),
        }
    }

    /// This node's wall clock: the system's plus the injected skew.
    pub fn now_ms(&self) -> u64 {
        self.clock.wall_ms()
    }

    /// Whether cluster traffic with `peer` (a node id) is cut now.
    pub fn cut_from(&self, peer: &str) -> bool {
        match &*self.partition.lock().unwrap_or_else(|e| e.into_inner()) {
            Some((_, None)) => true,
            Some((_, Some(set))) => set.contains(peer),
            None => false,
        }
    }

    /// Whether a partition cuts this node from every other one.
    pub fn cut_from_all(&self) -> bool {
        matches!(
            &*self.partition.lock().unwrap_or_else(|e| e.into_inner()),
            Some((_, None))
        )
    }

    /// Whether a partition is in force.
    pub fn partitioned(&self) -> bool {
        self.partition
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
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
                let set = req.from.clone().map(|f| f.into_iter().collect());
                *self.partition.lock().unwrap_or_else(|e| e.into_inner()) = Some((fault.id, set));
                tracing::warn!(from = ?req.from, for_ms = req.for_ms, "chaos: cluster sessions cut");
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
                if p.as_ref().is_some_and(|(pid, _)| *pid == id) {
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
        assert!(!c.partitioned() && !c.cut_from("n2"));
        assert!(c.now_ms() < system_ms() + 1_000);
        assert!(c.clock.now() < before + Duration::from_secs(60), "healed");
        assert_eq!(c.disk.fsync_delay_ms(), 0);
    }
}
