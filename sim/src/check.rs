//! The properties checked while a run goes (after every apply on every replica) and the
//! records they need. The end-of-run checks are in `crate::verdict`.

use std::collections::BTreeMap;

/// Violations found and how many property checks ran.
#[derive(Debug, Default)]
pub struct Checks {
    pub violations: Vec<String>,
    pub checked: u64,
    /// What the faults made happen (node losses, refused reports, ...), to show coverage.
    pub events: BTreeMap<&'static str, u64>,
    /// G7: the first state hash seen at each applied index, and which replica had it.
    hash_at: BTreeMap<u64, (u64, u64)>,
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

pub use troupe_scheduler::verify::{Accepted, capacity, may_accept};

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
