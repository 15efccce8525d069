//! The real scheduler state machine (`troupe_actors::machine::Machine`) as each engine applies
//! it, watched: [`Checked`] hands every call to the `Machine` unchanged (apply, its snapshot
//! bytes, restore) and checks, around each applied command, what `crate::replica` checks in
//! the RawNode world: G3 (one accepted result per (task, attempt), keyed by the log index that
//! accepted it, shared by all servers and restarts), G4 (an accepted report is one fencing
//! allows, a current one is not refused), G6 (capacity after every command) and G7 (the state
//! hash at each log index, and at a restored snapshot's index, is the same on every server).
//! The log index comes from raft-log itself (`StateMachine::at_index`).

use crate::check::{self, Checks, Trace};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use troupe_actors::machine::Machine;
use troupe_raft_log::{SnapshotImage, StateMachine};
use troupe_scheduler::state::TaskState;
use troupe_scheduler::{Command, Output};

/// What the world and every server's state machine share: the checks, the trace, the time.
#[derive(Debug, Default)]
pub struct Shared {
    pub checks: Checks,
    pub trace: Trace,
    /// Simulated time, for the messages of a violation.
    pub now: u64,
    /// Commands applied, over all servers.
    pub applied: u64,
}

/// A handle on [`Shared`] (the engines require `Send + Sync` state machines).
#[derive(Debug, Clone, Default)]
pub struct Probe(Arc<Mutex<Shared>>);

impl Probe {
    pub fn new(keep_trace: bool) -> Self {
        Probe(Arc::new(Mutex::new(Shared {
            trace: Trace::new(keep_trace),
            ..Default::default()
        })))
    }

    /// Never held across a call into an engine (its state machine takes it too).
    pub fn lock(&self) -> MutexGuard<'_, Shared> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One server's state machine: the real `Machine`, and the checks around it.
pub struct Checked {
    pub machine: Machine,
    id: u64,
    probe: Probe,
    /// The log index of the entry being applied (or of the restored snapshot).
    index: u64,
    /// Commands of `index` applied so far (its state is hashed when the next entry starts).
    dirty: bool,
    /// A snapshot was just restored; raft-log names its index next (`at_index`).
    restored: bool,
}

impl Checked {
    pub fn new(id: u64, probe: Probe) -> Self {
        Checked {
            machine: Machine::default(),
            id,
            probe,
            index: 0,
            dirty: false,
            restored: false,
        }
    }

    pub fn state(&self) -> &troupe_scheduler::State {
        &self.machine.state
    }

    /// G7: the state after the whole entry `index`, which every server must share.
    fn hash_done_entry(&mut self) {
        if !self.dirty {
            return;
        }
        self.dirty = false;
        let hash = self.machine.state.hash();
        let mut p = self.probe.lock();
        let now = p.now;
        if p.checks.hash_at(now, self.id, self.index, hash) {
            p.trace.line(
                now,
                format_args!("r{} applied through {}", self.id, self.index),
            );
        }
    }

    /// G3, G4 on an applied report; G6 after any command.
    fn after(&mut self, report: Option<(troupe_scheduler::Report, bool, bool)>, out: &Output) {
        let state = &self.machine.state;
        let mut p = self.probe.lock();
        let (now, id, index) = (p.now, self.id, self.index);
        let c = &mut p.checks;
        if let Some((rep, legal, late)) = report {
            c.checked += 1;
            let accepted = matches!(out, Output::Counted { accepted: 1, .. });
            c.count(match (accepted, late) {
                (true, true) => "late success accepted",
                (true, false) => "report accepted",
                (false, _) => "report refused",
            });
            if accepted && !legal {
                c.fail(now, format!(
                    "G4: r{id} accepted a report fencing refuses: {:?} attempt {} epoch {} ({:?})",
                    rep.at.task, rep.at.attempt, rep.at.epoch, rep.outcome
                ));
            }
            if !accepted && legal {
                c.fail(
                    now,
                    format!(
                        "G4: r{id} refused a current report: {:?} attempt {} epoch {}",
                        rep.at.task, rep.at.attempt, rep.at.epoch
                    ),
                );
            }
            if accepted && let Err(why) = c.accepted.record(index, &rep) {
                c.fail(now, format!("r{id} at index {index}: {why}"));
            }
        }
        match check::capacity(state) {
            Ok(n) => c.checked += n,
            Err(why) => c.fail(now, format!("r{id} at index {index}: {why}")),
        }
    }
}

impl StateMachine for Checked {
    type Command = Command;
    type Output = Output;

    fn apply(&mut self, at_ms: u64, cmd: Command) -> Output {
        self.probe.lock().applied += 1;
        self.dirty = true;
        let report = match &cmd {
            // The simulator proposes one report per `Finished` (each is judged alone).
            Command::Finished(reps) if reps.len() == 1 => {
                let state = &self.machine.state;
                let legal = check::may_accept(state, &reps[0]);
                let late = state
                    .task(reps[0].at.task)
                    .is_some_and(|t| t.state == TaskState::Queued);
                Some((reps[0].clone(), legal, late))
            }
            _ => None,
        };
        let lost = matches!(cmd, Command::NodeLost { .. });
        let out = self.machine.apply(at_ms, cmd);
        if lost && out == Output::Done {
            self.probe.lock().checks.count("node lost");
        }
        self.after(report, &out);
        out
    }

    fn snapshot(&self) -> Vec<u8> {
        self.machine.snapshot()
    }

    fn snapshot_image(&self) -> SnapshotImage {
        self.probe.lock().checks.count("snapshot taken");
        self.machine.snapshot_image()
    }

    fn restore(&mut self, data: &[u8]) -> Result<(), String> {
        self.dirty = false;
        self.restored = true;
        self.machine.restore(data)
    }

    fn at_index(&mut self, index: u64) {
        if std::mem::take(&mut self.restored) {
            // A restore (at open, or a snapshot from the leader): its state must be the one
            // every server had at that index.
            self.index = index;
            let hash = self.machine.state.hash();
            let mut p = self.probe.lock();
            let now = p.now;
            if index > 1 {
                p.checks.count("snapshot restored");
            }
            p.checks.hash_at(now, self.id, index, hash);
            return;
        }
        self.hash_done_entry();
        self.index = index;
    }
}
