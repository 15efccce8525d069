//! The leader's lease table: the last renewal per node, kept in memory (renewals never go
//! through the log), and the [`LeaseJudge`] the engine hook runs to declare nodes lost.
//!
//! Time is the node's clock ([`LeaseTable::clock`]): renewals are stamped with it and the judge
//! is given its reading, so every decision here is a function of the `now` it is handed
//! (tested with a `ManualClock`, and skewed by `troupe chaos skew-clock`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use troupe_clock::SharedClock;
use troupe_scheduler::Command;

pub struct LeaseTable {
    clock: SharedClock,
    seen: Mutex<BTreeMap<String, Instant>>,
}

impl LeaseTable {
    /// A table whose renewals are stamped with `clock` (the node's).
    pub fn new(clock: SharedClock) -> Self {
        LeaseTable {
            clock,
            seen: Mutex::new(BTreeMap::new()),
        }
    }

    /// The clock renewals are stamped with; the judge reads it too.
    pub fn clock(&self) -> &SharedClock {
        &self.clock
    }

    pub fn renew(&self, node: &str) {
        crate::metrics::bump(&crate::metrics::LEASES.renewed);
        self.renew_at(node, self.clock.now());
    }

    fn renew_at(&self, node: &str, at: Instant) {
        if let Ok(mut s) = self.seen.lock() {
            s.insert(node.to_string(), at);
        }
    }

    /// A new leader grants everyone a full lease before judging anyone.
    pub fn grant_all(&self, nodes: impl Iterator<Item = String>) {
        let now = self.clock.now();
        for n in nodes {
            self.renew_at(&n, now);
        }
    }

    /// Time the leader did not watch (it was paused or starved) does not count against the
    /// nodes: every renewal moves `by` later, never past `now`.
    fn forgive(&self, by: Duration, now: Instant) {
        if let Ok(mut s) = self.seen.lock() {
            for t in s.values_mut() {
                *t = (*t + by).min(now);
            }
        }
    }

    /// No renewal for longer than `lease` (a node never seen counts from its grant).
    pub fn expired(&self, node: &str, lease: Duration) -> bool {
        self.expired_at(node, lease, self.clock.now())
    }

    /// Whether `node`'s last renewal is more than `lease` before `now`.
    pub fn expired_at(&self, node: &str, lease: Duration, now: Instant) -> bool {
        self.seen
            .lock()
            .map(|s| {
                s.get(node)
                    .is_some_and(|t| now.saturating_duration_since(*t) > lease)
            })
            .unwrap_or(false)
    }
}

/// The engine hook calls the leader's judge about every 50 ms; a longer gap is time it did not
/// watch the renewals (beyond this much, it is not counted against the nodes).
const WATCHED_GAP: Duration = Duration::from_millis(250);

/// A node as the judge sees it: id, epoch, and whether it is down.
pub type NodeView<'a> = (&'a str, u64, bool);

/// The leader's side of leases: declares lost every node up whose lease expired, once per
/// (node, epoch). A new leader grants every node a fresh lease first; a leader that did not
/// run for a while (SIGSTOP, starvation) does not count that time against the nodes. It logs a
/// node lost when it sees the loss applied, not when it proposes it: a leader that was deposed
/// while it did not run proposes into a term that is over, and those proposals are dropped.
pub struct LeaseJudge {
    table: Arc<LeaseTable>,
    lease: Duration,
    leading: bool,
    last_call: Option<Instant>,
    /// (node, epoch) proposed lost.
    proposed: BTreeSet<(String, u64)>,
    /// The epoch each node got its lease at (a node that re-registered gets a full lease).
    granted: BTreeMap<String, u64>,
    /// (node, epoch) seen down.
    down: BTreeSet<(String, u64)>,
}

impl LeaseJudge {
    pub fn new(table: Arc<LeaseTable>, lease: Duration) -> Self {
        LeaseJudge {
            table,
            lease,
            leading: false,
            last_call: None,
            proposed: BTreeSet::new(),
            granted: BTreeMap::new(),
            down: BTreeSet::new(),
        }
    }

    /// The node's clock, as the table reads it (what the hook passes to [`LeaseJudge::judge`]).
    pub fn now(&self) -> Instant {
        self.table.clock().now()
    }

    /// A follower judges nothing; when it leads again it starts from fresh leases.
    pub fn follow(&mut self) {
        self.leading = false;
    }

    /// The leader's call at `now` (its clock's reading): `NodeLost` for every node up whose
    /// lease expired.
    pub fn judge(&mut self, nodes: &[NodeView], now: Instant) -> Vec<Command> {
        let gap = self.last_call.map(|t| now.saturating_duration_since(t));
        self.last_call = Some(now);
        if !self.leading {
            self.start_leading(nodes, now);
        } else if let Some(gap) = gap.filter(|g| *g > WATCHED_GAP) {
            self.unwatched(gap, now);
        }
        self.leading = true;
        self.log_losses(nodes);
        nodes
            .iter()
            .filter(|(_, _, down)| !down)
            .filter_map(|&(id, epoch, _)| self.judge_one(id, epoch, now))
            .collect()
    }

    fn start_leading(&mut self, nodes: &[NodeView], now: Instant) {
        for (id, _, _) in nodes {
            self.table.renew_at(id, now);
        }
        self.proposed.clear();
        // Losses applied before this leadership were logged by the leader of their time.
        self.down = nodes
            .iter()
            .filter(|(_, _, down)| *down)
            .map(|&(id, epoch, _)| (id.to_string(), epoch))
            .collect();
    }

    fn unwatched(&mut self, gap: Duration, now: Instant) {
        if gap >= self.lease {
            tracing::warn!(
                gap_ms = gap.as_millis() as u64,
                "this leader did not run for a whole lease (paused or starved): that time does not count against the nodes' leases"
            );
            // Its earlier proposals may have been dropped with its term: judge afresh.
            self.proposed.clear();
        }
        self.table.forgive(gap - WATCHED_GAP, now);
    }

    /// Logs each loss the log applied since the last call, once.
    fn log_losses(&mut self, nodes: &[NodeView]) {
        for &(id, epoch, down) in nodes {
            if down && self.down.insert((id.to_string(), epoch)) {
                tracing::warn!(node = %id, epoch, lease_ms = self.lease.as_millis() as u64, "node declared lost: its lease expired; its attempts are requeued");
            }
        }
    }

    fn judge_one(&mut self, id: &str, epoch: u64, now: Instant) -> Option<Command> {
        // A node that (re)registered gets a full lease from that moment.
        if self.granted.get(id) != Some(&epoch) {
            self.granted.insert(id.to_string(), epoch);
            self.table.renew_at(id, now);
            return None;
        }
        if !self.table.expired_at(id, self.lease, now)
            || !self.proposed.insert((id.to_string(), epoch))
        {
            return None;
        }
        tracing::debug!(node = %id, epoch, "lease expired: proposing that the node is lost");
        crate::metrics::bump(&crate::metrics::LEASES.expired);
        Some(Command::NodeLost {
            node: id.to_string(),
            epoch,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use troupe_clock::ManualClock;

    const LEASE: Duration = Duration::from_secs(2);
    const TICK: Duration = Duration::from_millis(50);

    /// Runs the judge every tick after `from` up to `to`, the `renewing` nodes renewing each
    /// tick; returns the nodes it proposed lost.
    fn run(
        j: &mut LeaseJudge,
        nodes: &[NodeView],
        renewing: &[&str],
        from: Instant,
        to: Instant,
    ) -> Vec<String> {
        let mut lost = Vec::new();
        let mut t = from + TICK;
        while t <= to {
            for n in renewing {
                j.table.renew_at(n, t);
            }
            for c in j.judge(nodes, t) {
                if let Command::NodeLost { node, .. } = c {
                    lost.push(node);
                }
            }
            t += TICK;
        }
        lost
    }

    const NODES: [NodeView; 2] = [("a", 1, false), ("b", 1, false)];

    fn judge() -> LeaseJudge {
        LeaseJudge::new(Arc::new(LeaseTable::new(ManualClock::new(0))), LEASE)
    }

    fn start() -> (LeaseJudge, Instant) {
        let j = judge();
        let t0 = j.table.clock().now();
        (j, t0)
    }

    #[test]
    fn a_lease_renewed_at_t_expires_exactly_at_t_plus_lease() {
        let clock = ManualClock::new(0);
        let table = LeaseTable::new(clock.clone());
        clock.advance(Duration::from_secs(7));
        table.renew("a");
        clock.advance(LEASE);
        assert!(!table.expired("a", LEASE), "still held at t + lease");
        clock.advance(Duration::from_millis(1));
        assert!(table.expired("a", LEASE), "expired just after t + lease");
        table.renew("a");
        assert!(!table.expired("a", LEASE), "a renewal restarts it");
        assert!(
            !table.expired("never-seen", LEASE),
            "no renewal, no verdict"
        );
    }

    #[test]
    fn the_judge_reads_time_from_the_tables_clock() {
        let clock = ManualClock::new(0);
        let table = Arc::new(LeaseTable::new(clock.clone()));
        let mut j = LeaseJudge::new(table.clone(), LEASE);
        assert!(j.judge(&NODES, table.clock().now()).is_empty());
        // Renewals stamped by the table (as the renewal handler does), judged every tick.
        let mut lost = Vec::new();
        for _ in 0..60 {
            clock.advance(TICK);
            table.renew("a");
            lost.extend(j.judge(&NODES, table.clock().now()));
        }
        assert_eq!(lost.len(), 1, "b, 2 s after its grant: {lost:?}");
        assert!(matches!(&lost[0], Command::NodeLost { node, .. } if node == "b"));
    }

    #[test]
    fn a_node_that_stops_renewing_is_declared_lost_once() {
        let (mut j, t0) = start();
        assert!(j.judge(&NODES, t0).is_empty());
        let ms = |n| t0 + Duration::from_millis(n);
        assert!(run(&mut j, &NODES, &["a"], t0, ms(2_000)).is_empty());
        assert_eq!(run(&mut j, &NODES, &["a"], ms(2_000), ms(2_050)), vec!["b"]);
        assert!(run(&mut j, &NODES, &["a"], ms(2_050), ms(4_000)).is_empty());
    }

    #[test]
    fn a_pause_just_short_of_a_lease_does_not_count_against_the_nodes() {
        let (mut j, t0) = start();
        assert!(j.judge(&NODES, t0).is_empty());
        let ms = |n| t0 + Duration::from_millis(n);
        // Everyone renews for 400 ms; then the leader freezes for 1.9 s.
        assert!(run(&mut j, &NODES, &["a", "b"], t0, ms(400)).is_empty());
        assert!(
            j.judge(&NODES, ms(2_300)).is_empty(),
            "the pause is not counted"
        );
        // Renewals resume, but not b's: b is lost a lease after its last renewal, pause aside.
        assert!(run(&mut j, &NODES, &["a"], ms(2_300), ms(4_000)).is_empty());
        assert_eq!(run(&mut j, &NODES, &["a"], ms(4_000), ms(4_200)), vec!["b"]);
    }

    #[test]
    fn a_long_pause_does_not_count_either() {
        let (mut j, t0) = start();
        assert!(j.judge(&NODES, t0).is_empty());
        let ms = |n| t0 + Duration::from_millis(n);
        assert!(run(&mut j, &NODES, &["a", "b"], t0, ms(400)).is_empty());
        assert!(j.judge(&NODES, ms(5_400)).is_empty());
        assert!(run(&mut j, &NODES, &["a", "b"], ms(5_400), ms(8_000)).is_empty());
    }

    #[test]
    fn a_new_leader_grants_everyone_a_lease_and_logs_only_new_losses() {
        let (mut j, t0) = start();
        // A node that never renewed to this leader, and one already down.
        let nodes = [("a", 1, false), ("c", 3, true)];
        assert!(j.judge(&nodes, t0).is_empty());
        assert!(j.down.contains(&("c".to_string(), 3)));
        j.follow();
        let later = t0 + Duration::from_secs(10);
        assert!(j.judge(&nodes, later).is_empty(), "fresh leases again");
        let ms = |n| later + Duration::from_millis(n);
        assert!(run(&mut j, &nodes, &[], later, ms(2_000)).is_empty());
        assert_eq!(run(&mut j, &nodes, &[], ms(2_000), ms(2_050)), vec!["a"]);
        // The loss applied: seen (and logged) once.
        j.judge(&[("a", 1, true), ("c", 3, true)], ms(2_100));
        assert!(j.down.contains(&("a".to_string(), 1)));
    }
}
