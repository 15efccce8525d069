//! Client histories and their checker: every client operation (submit with an idempotency key,
//! cancel, status, redrive) with its invocation time, completion time and outcome, checked
//! against a model of the control API.
//!
//! What [`check`] verifies:
//! - **acknowledged submits present** (G1): every workflow a submit was acknowledged for is in
//!   the final set the caller read from the cluster;
//! - **one workflow per key** (G2): all acknowledgements of one idempotency key name one
//!   workflow, at most one of them says `created`, all of them for one spec digest, and a
//!   different spec under that key was refused (409), never acknowledged;
//! - **linearizable** (G5): per workflow, the operations on it have a linearization (Wing & Gong's
//!   search over the real-time partial order, with Lowe's memo of visited (done set, state)
//!   pairs) against a model of its status as a state machine: absent → running → a terminal
//!   status; cancel takes running to cancelled; redrive (`retry`) takes failed, cancelled or
//!   timed out back to running; running may end by itself at any time (an internal step of the
//!   model). A status read may not go backwards in real time, a read after an acknowledged cancel
//!   shows cancelled (or another end), an acknowledged workflow is never read as absent later.
//!
//! Operations whose outcome is unknown (a timeout, a retryable error after the request was
//! sent) may or may not have taken effect: the search may place them anywhere after their
//! invocation, or nowhere. Failed reads tell nothing and are left out.
//!
//! Why our own: the Rust options are `stateright`'s `LinearizabilityTester`, part of a whole
//! model checker, which wants a deterministic sequential spec (no internal transitions such as
//! a workflow finishing by itself) and has no "maybe applied" outcome; porcupine and Knossos are
//! Go and Clojure. The model here is small, and the search is bounded ([`SEARCH_BUDGET`]): a
//! workflow whose history is too large to search is reported as unchecked, not as passing.
//!
//! Pure: times are plain numbers from the caller (any monotone unit); used by the real-process
//! fault matrix (`chaos-tests/src/history.rs` records) and by the simulator (`sim/`).

use std::collections::{BTreeMap, BTreeSet};

/// Expansions of the search per workflow before it gives up (reported in [`Report::unchecked`]).
pub const SEARCH_BUDGET: usize = 200_000;

/// A workflow's status as the model sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Phase {
    Absent = 0,
    Running,
    Succeeded,
    Degraded,
    Failed,
    Cancelled,
    TimedOut,
}

impl Phase {
    /// The API's status name (`GET /v1/workflows/ID` `status`); `None` for an unknown one.
    pub fn parse(name: &str) -> Option<Phase> {
        Some(match name {
            "running" => Phase::Running,
            "succeeded" => Phase::Succeeded,
            "degraded" => Phase::Degraded,
            "failed" => Phase::Failed,
            "cancelled" => Phase::Cancelled,
            "timed_out" => Phase::TimedOut,
            _ => return None,
        })
    }
    fn bit(self) -> u8 {
        1 << self as u8
    }
}

/// A set of phases (bit per [`Phase`]): the states the model may be in.
type States = u8;
const ALL: [Phase; 7] = [
    Phase::Absent,
    Phase::Running,
    Phase::Succeeded,
    Phase::Degraded,
    Phase::Failed,
    Phase::Cancelled,
    Phase::TimedOut,
];
const TERMINAL: States = 0b111_1100;
const RETRYABLE: States =
    (1 << Phase::Failed as u8) | (1 << Phase::Cancelled as u8) | (1 << Phase::TimedOut as u8);

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `digest`: of the spec and params sent (any stable hash).
    Submit {
        key: Option<String>,
        digest: u64,
    },
    Cancel {
        wf: String,
    },
    Status {
        wf: String,
    },
    /// `POST /v1/workflows/ID/retry`.
    Redrive {
        wf: String,
    },
}

/// A definite answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ret {
    /// A submit's workflow: created now (201) or existing for its key (200).
    Submitted { id: String, created: bool },
    /// 409 to a submit: the key names another spec.
    KeyConflict,
    /// A status read (404 reads as [`Phase::Absent`]).
    Status(Phase),
    /// A cancel or redrive applied.
    Done,
    /// A cancel or redrive refused in the workflow's status (409).
    Refused,
    /// 404 to a cancel or redrive.
    NotFound,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Ok(Ret),
    /// An error answer. `retryable` (503, 429, 504, connection refused or reset): a write may or
    /// may not have taken effect. Otherwise (400, 500…) it had none.
    Fail {
        retryable: bool,
        why: String,
    },
    /// No answer (a timeout): it may or may not have taken effect.
    Unknown,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Op {
    pub client: u32,
    pub kind: Kind,
    pub invoke: u64,
    /// `None`: never completed (as [`Outcome::Unknown`]).
    pub complete: Option<u64>,
    pub outcome: Outcome,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Violation {
    /// An acknowledged workflow is not in the final state.
    LostAck { id: String },
    /// One key acknowledged as two workflows.
    KeySplit { key: String, ids: Vec<String> },
    /// One key said `created` twice.
    CreatedTwice { key: String },
    /// A submit acknowledged with a spec digest other than the key's.
    OtherSpecAccepted { key: String },
    /// A 409 to the very spec the key was acknowledged with.
    SameSpecRefused { key: String },
    /// Two unkeyed submits created the same id.
    IdReused { id: String },
    /// No linearization of the operations on this workflow (indices into the history).
    NotLinearizable { wf: String, ops: Vec<usize> },
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub ops: usize,
    pub workflows_checked: usize,
    /// Workflows whose search ran out of budget.
    pub unchecked: Vec<String>,
    pub violations: Vec<Violation>,
    /// Error answers that were not retryable (a rolling restart must show none).
    pub definite_errors: usize,
    pub retryable_errors: usize,
    pub unknown: usize,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.violations.is_empty() && self.unchecked.is_empty()
    }
}

/// Checks `ops`; `present`: the ids of every workflow in the final state (`None`: not read,
/// the presence check is skipped).
pub fn check(ops: &[Op], present: Option<&BTreeSet<String>>) -> Report {
    let mut r = Report {
        ops: ops.len(),
        ..Report::default()
    };
    for op in ops {
        match &op.outcome {
            Outcome::Fail {
                retryable: true, ..
            } => r.retryable_errors += 1,
            Outcome::Fail { .. } => r.definite_errors += 1,
            Outcome::Unknown => r.unknown += 1,
            Outcome::Ok(_) => {}
        }
    }
    let key_owner = check_keys(ops, &mut r);
    if let Some(present) = present {
        let acked: BTreeSet<&String> = ops
            .iter()
            .filter_map(|o| match &o.outcome {
                Outcome::Ok(Ret::Submitted { id, .. }) => Some(id),
                _ => None,
            })
            .collect();
        for id in acked.into_iter().filter(|id| !present.contains(*id)) {
            r.violations.push(Violation::LostAck { id: id.clone() });
        }
    }
    for (wf, idx) in by_workflow(ops, &key_owner) {
        let lops: Vec<LOp> = idx.iter().filter_map(|&i| lower(&ops[i])).collect();
        r.workflows_checked += 1;
        match linearizable(&lops) {
            Some(true) => {}
            Some(false) => r
                .violations
                .push(Violation::NotLinearizable { wf, ops: idx }),
            None => r.unchecked.push(wf),
        }
    }
    r
}

/// G2's checks; returns each key's workflow id (when acknowledged).
fn check_keys(ops: &[Op], r: &mut Report) -> BTreeMap<String, String> {
    let mut acks: BTreeMap<&str, Vec<(&str, bool, u64)>> = BTreeMap::new();
    let mut conflicts: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    let mut unkeyed: BTreeMap<&str, usize> = BTreeMap::new();
    for op in ops {
        let Kind::Submit { key, digest } = &op.kind else {
            continue;
        };
        match (&op.outcome, key) {
            (Outcome::Ok(Ret::Submitted { id, created }), Some(k)) => {
                acks.entry(k).or_default().push((id, *created, *digest))
            }
            (Outcome::Ok(Ret::Submitted { id, created: true }), None) => {
                *unkeyed.entry(id).or_default() += 1
            }
            (Outcome::Ok(Ret::KeyConflict), Some(k)) => {
                conflicts.entry(k).or_default().push(*digest)
            }
            _ => {}
        }
    }
    let mut owner = BTreeMap::new();
    for (key, list) in &acks {
        let ids: BTreeSet<&str> = list.iter().map(|a| a.0).collect();
        if ids.len() > 1 {
            r.violations.push(Violation::KeySplit {
                key: key.to_string(),
                ids: ids.iter().map(|s| s.to_string()).collect(),
            });
        }
        if list.iter().filter(|a| a.1).count() > 1 {
            r.violations.push(Violation::CreatedTwice {
                key: key.to_string(),
            });
        }
        let digests: BTreeSet<u64> = list.iter().map(|a| a.2).collect();
        if digests.len() > 1 {
            r.violations.push(Violation::OtherSpecAccepted {
                key: key.to_string(),
            });
        }
        if conflicts
            .get(key)
            .is_some_and(|c| c.iter().any(|d| digests.contains(d)))
        {
            r.violations.push(Violation::SameSpecRefused {
                key: key.to_string(),
            });
        }
        owner.insert(key.to_string(), list[0].0.to_string());
    }
    for (id, n) in unkeyed {
        let keyed = acks.values().flatten().any(|a| a.0 == id);
        if n > 1 || keyed {
            r.violations
                .push(Violation::IdReused { id: id.to_string() });
        }
    }
    owner
}

/// The operations on each workflow (indices), keyed submits whose outcome is unknown included
/// under their key's workflow.
fn by_workflow(ops: &[Op], owner: &BTreeMap<String, String>) -> BTreeMap<String, Vec<usize>> {
    let mut out: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (i, op) in ops.iter().enumerate() {
        let wf = match (&op.kind, &op.outcome) {
            (_, Outcome::Ok(Ret::Submitted { id, .. })) => Some(id.clone()),
            (
                Kind::Submit { key: Some(k), .. },
                Outcome::Unknown
                | Outcome::Fail {
                    retryable: true, ..
                },
            ) => owner.get(k).cloned(),
            (Kind::Submit { .. }, _) => None,
            (Kind::Cancel { wf } | Kind::Status { wf } | Kind::Redrive { wf }, _) => {
                Some(wf.clone())
            }
        };
        if let Some(wf) = wf {
            out.entry(wf).or_default().push(i);
        }
    }
    out
}

/// An operation as the search sees it: when, and what it does to each state (`None`: not
/// possible in that state).
#[derive(Clone, Copy, Debug)]
struct LOp {
    invoke: u64,
    /// `u64::MAX` for an operation that may or may not have happened (then also optional).
    complete: u64,
    optional: bool,
    step: Step,
}

#[derive(Clone, Copy, Debug)]
enum Step {
    Create,
    Exists,
    Read(Phase),
    Cancel,
    CancelRefused,
    Redrive,
    RedriveRefused,
    NotFound,
    MaybeCreate,
    MaybeCancel,
    MaybeRedrive,
}

fn lower(op: &Op) -> Option<LOp> {
    let maybe = matches!(
        op.outcome,
        Outcome::Unknown
            | Outcome::Fail {
                retryable: true,
                ..
            }
    );
    let step = match (&op.kind, &op.outcome) {
        (
            _,
            Outcome::Fail {
                retryable: false, ..
            },
        ) => return None,
        (Kind::Status { .. }, Outcome::Ok(Ret::Status(p))) => Step::Read(*p),
        (Kind::Status { .. }, _) => return None,
        (Kind::Submit { .. }, Outcome::Ok(Ret::Submitted { created: true, .. })) => Step::Create,
        (Kind::Submit { .. }, Outcome::Ok(Ret::Submitted { created: false, .. })) => Step::Exists,
        (Kind::Submit { .. }, _) if maybe => Step::MaybeCreate,
        (Kind::Cancel { .. }, Outcome::Ok(Ret::Done)) => Step::Cancel,
        (Kind::Cancel { .. }, Outcome::Ok(Ret::Refused)) => Step::CancelRefused,
        (Kind::Cancel { .. }, _) if maybe => Step::MaybeCancel,
        (Kind::Redrive { .. }, Outcome::Ok(Ret::Done)) => Step::Redrive,
        (Kind::Redrive { .. }, Outcome::Ok(Ret::Refused)) => Step::RedriveRefused,
        (Kind::Redrive { .. }, _) if maybe => Step::MaybeRedrive,
        (_, Outcome::Ok(Ret::NotFound)) => Step::NotFound,
        _ => return None,
    };
    Some(LOp {
        invoke: op.invoke,
        complete: if maybe {
            u64::MAX
        } else {
            op.complete.unwrap_or(u64::MAX)
        },
        optional: maybe,
        step,
    })
}

/// Running may end by itself: the states reachable without a client operation.
fn closure(s: States) -> States {
    if s & Phase::Running.bit() != 0 {
        s | Phase::Succeeded.bit()
            | Phase::Degraded.bit()
            | Phase::Failed.bit()
            | Phase::TimedOut.bit()
    } else {
        s
    }
}

/// The states after `step` from any of `s` (`None`: impossible in every one).
fn apply(s: States, step: Step) -> Option<States> {
    let s = closure(s);
    let map = |f: &dyn Fn(Phase) -> Option<Phase>| -> Option<States> {
        let out = ALL
            .iter()
            .filter(|p| s & p.bit() != 0)
            .filter_map(|p| f(*p))
            .fold(0, |acc, p| acc | p.bit());
        (out != 0).then_some(out)
    };
    match step {
        Step::Create => map(&|p| (p == Phase::Absent).then_some(Phase::Running)),
        // Not "it existed before": a request delivered twice (a retry on the way) answers
        // `created: false` to the very submit that created it. After it, it exists.
        Step::Exists => map(&|p| {
            Some(if p == Phase::Absent {
                Phase::Running
            } else {
                p
            })
        }),
        Step::Read(want) => map(&|p| (p == want).then_some(p)),
        Step::Cancel => map(&|p| (p == Phase::Running).then_some(Phase::Cancelled)),
        Step::CancelRefused => map(&|p| (TERMINAL & p.bit() != 0).then_some(p)),
        Step::Redrive => map(&|p| (RETRYABLE & p.bit() != 0).then_some(Phase::Running)),
        Step::RedriveRefused => {
            map(&|p| (p != Phase::Absent && RETRYABLE & p.bit() == 0).then_some(p))
        }
        Step::NotFound => map(&|p| (p == Phase::Absent).then_some(p)),
        Step::MaybeCreate => map(&|p| {
            Some(if p == Phase::Absent {
                Phase::Running
            } else {
                p
            })
        }),
        Step::MaybeCancel => map(&|p| {
            Some(if p == Phase::Running {
                Phase::Cancelled
            } else {
                p
            })
        }),
        Step::MaybeRedrive => map(&|p| {
            Some(if RETRYABLE & p.bit() != 0 {
                Phase::Running
            } else {
                p
            })
        }),
    }
}

/// Wing & Gong's search with Lowe's memo. `None`: out of budget.
fn linearizable(ops: &[LOp]) -> Option<bool> {
    let mut ops = ops.to_vec();
    ops.sort_by_key(|o| (o.invoke, o.complete));
    let words = ops.len().div_ceil(64).max(1);
    let mut seen: BTreeSet<(Vec<u64>, States)> = BTreeSet::new();
    let mut budget = SEARCH_BUDGET;
    let mut stack = vec![(vec![0u64; words], Phase::Absent.bit())];
    while let Some((done, state)) = stack.pop() {
        if !seen.insert((done.clone(), state)) {
            continue;
        }
        budget = budget.checked_sub(1)?;
        let is_done = |i: usize| done[i / 64] & (1 << (i % 64)) != 0;
        if (0..ops.len()).all(|i| is_done(i) || ops[i].optional) {
            return Some(true);
        }
        // An operation may go next unless another pending one completed before it began.
        let first_end = (0..ops.len())
            .filter(|&i| !is_done(i))
            .map(|i| ops[i].complete)
            .min()
            .unwrap_or(u64::MAX);
        for i in (0..ops.len()).rev() {
            if is_done(i) || ops[i].invoke > first_end {
                continue;
            }
            if let Some(next) = apply(state, ops[i].step) {
                // A maybe-applied operation that changes nothing here is as good as never
                // applied (which stays possible): no branch for it.
                if ops[i].optional && next == closure(state) {
                    continue;
                }
                let mut d = done.clone();
                d[i / 64] |= 1 << (i % 64);
                stack.push((d, next));
            }
        }
    }
    Some(false)
}

#[cfg(test)]
#[path = "history_tests.rs"]
mod tests;
