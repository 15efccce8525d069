//! The properties checked while a run goes (after every apply on every replica) and the
//! records they need. The end-of-run checks are in `crate::verdict`.

use std::collections::BTreeMap;
use troupe_scheduler::{Outcome, Report, TaskRef};

/// Violations found and how many property checks ran.
#[derive(Debug, Default)]
pub struct Checks {
    pub violations: Vec<String>,
    pub checked: u64,
    /// What the faults made happen (node losses, refused reports, ...), to show coverage.
    pub events: BTreeMap<&'static str, u64>,
    /// G7: the first state hash seen at each applied index, and which replica had it.
    hash_at: BTreeMap<u64, (u64, u64)>,
    /// G3: the results accepted, by the log index that accepted them (shared by the replicas:
    /// they apply one log, so a replica that restored a snapshot is judged with the rest).
    pub accepted: Accepted,
    /// G4: the leader of each term (raft's election safety).
    leaders: BTreeMap<u64, u64>,
}

impl Checks {
    pub fn fail(&mut self, now: u64, what: String) {
        // The first few are enough to replay and read.
        if self.violations.len() < 20 {
            self.violations.push(format!("t={now} {what}"));
        }
    }

    pub fn count(&mut self, what: &'static str) {
        *self.events.entry(what).or_default() += 1;
    }

    /// G4: at most one leader per term.
    pub fn leader(&mut self, now: u64, term: u64, id: u64) {
        self.checked += 1;
        match self.leaders.insert(term, id) {
            Some(other) if other != id => {
                self.fail(now, format!("G4: r{id} and r{other} both lead term {term}"))
            }
            _ => {}
        }
    }

    /// G7: every replica that applied `index` holds the same state there. True the first time
    /// an index is seen (it is then traced).
    pub fn hash_at(&mut self, now: u64, replica: u64, index: u64, hash: u64) -> bool {
        self.checked += 1;
        match self.hash_at.get(&index) {
            None => {
                self.hash_at.insert(index, (replica, hash));
                true
            }
            Some(&(r, h)) if h != hash => {
                self.fail(
                    now,
                    format!("G7: r{replica} and r{r} hold different states at index {index} ({hash:x} != {h:x})"),
                );
                false
            }
            Some(_) => false,
        }
    }
}

/// G4 and G6 are the rules `troupe chaos verify` also uses (`scheduler/src/verify/`); G3 is
/// judged here across replicas and restarts, by the index of the entry that accepted a result.
pub use troupe_scheduler::verify::{capacity, may_accept};

/// G3 records: each accepted result with the index of the entry that accepted it. Every
/// replica applies the same log, so the same acceptance is seen once per replica at one index;
/// an acceptance of the same (task, attempt) at another index is a second result.
#[derive(Debug, Default)]
pub struct Accepted {
    /// (task, attempt) with an accepted result -> the index.
    results: BTreeMap<(TaskRef, u32), u64>,
    /// Tasks with an accepted success (the workload never retries or redrives, so one) -> the
    /// index.
    successes: BTreeMap<TaskRef, u64>,
}

impl Accepted {
    /// Records a report accepted at `index`; the error says which rule it breaks.
    pub fn record(&mut self, index: u64, rep: &Report) -> Result<(), String> {
        let first = *self
            .results
            .entry((rep.at.task, rep.at.attempt))
            .or_insert(index);
        if first != index {
            return Err(format!(
                "G3: a second result accepted for {:?} attempt {} (first at index {first})",
                rep.at.task, rep.at.attempt
            ));
        }
        if matches!(rep.outcome, Outcome::Succeeded { .. }) {
            let first = *self.successes.entry(rep.at.task).or_insert(index);
            if first != index {
                return Err(format!(
                    "G3: a second success accepted for {:?} (attempt {}; first at index {first})",
                    rep.at.task, rep.at.attempt
                ));
            }
        }
        Ok(())
    }
}

/// One line per event; hashed as it goes, kept only when printing.
#[derive(Debug, Default)]
pub struct Trace {
    pub keep: bool,
    pub lines: Vec<String>,
    pub hash: u64,
    pub count: u64,
}

impl Trace {
    pub fn new(keep: bool) -> Self {
        Trace {
            keep,
            lines: Vec::new(),
            hash: 0xcbf2_9ce4_8422_2325,
            count: 0,
        }
    }

    pub fn line(&mut self, now: u64, text: std::fmt::Arguments<'_>) {
        let s = format!("{now:>7} {text}");
        for b in s.bytes().chain(std::iter::once(b'\n')) {
            self.hash ^= b as u64;
            self.hash = self.hash.wrapping_mul(0x0100_0000_01b3);
        }
        self.count += 1;
        if self.keep {
            self.lines.push(s);
        }
    }
}
