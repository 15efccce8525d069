//! The workload and its history: clients submit small workflows (map steps, retries, a
//! dead-letter step sometimes, idempotency keys sometimes sent again, sometimes with another
//! spec), cancel some, and retry on `NotLeader` (keyed submits also after a timeout). Every
//! operation is recorded with its invoke time, completion time and outcome.

use crate::check::Trace;
use crate::net::{Addr, Net, Payload, Reply};
use crate::rng::Rng;
use std::collections::BTreeMap;
use troupe_scheduler::history;
use troupe_scheduler::spec;
use troupe_scheduler::state::WfStatus;
use troupe_scheduler::{Command, Output, Submission, WorkflowId};

/// A client gives up waiting after this long (the outcome is then unknown).
pub const TIMEOUT_MS: u64 = 3_000;
/// Tries of one logical operation.
pub const TRIES_MAX: u32 = 6;

#[derive(Debug, Clone, PartialEq)]
pub enum OpKind {
    Submit {
        variant: usize,
        key: Option<String>,
    },
    Cancel(WorkflowId),
    /// A status read (ReadIndex on the leader).
    Read(WorkflowId),
}

#[derive(Debug, Clone, PartialEq)]
pub enum OpOutcome {
    Pending,
    Ok(Output),
    /// What a read saw.
    Status(Option<WfStatus>),
    NotLeader,
    Indeterminate,
    Timeout,
}

#[derive(Debug, Clone)]
pub struct Op {
    pub id: u64,
    pub kind: OpKind,
    pub target: u64,
    pub try_no: u32,
    pub invoke_ms: u64,
    pub complete_ms: Option<u64>,
    pub outcome: OpOutcome,
}

pub struct Clients {
    rng: Rng,
    variants: Vec<Submission>,
    pub ops: BTreeMap<u64, Op>,
    /// Ops to send again: (due, seq) -> (kind, try).
    retries: BTreeMap<(u64, u64), (OpKind, u32)>,
    next_op: u64,
    replicas: Vec<u64>,
    keys_used: Vec<(String, usize)>,
    /// Workflows acknowledged as submitted (for cancels).
    pub acked: Vec<WorkflowId>,
    /// Logical operations issued (tries not counted) and the most of them.
    issued: usize,
    ops_max: usize,
    /// Where to send next (the leader the last `NotLeader` named; 0: any server).
    leader_hint: u64,
}

/// A workflow spec, drawn from the seed: a map step (with retries, dead-lettering sometimes)
/// and a step after it.
fn variant_toml(rng: &mut Rng, n: usize) -> String {
    let items = rng.range(1, 6);
    let attempts = rng.range(1, 3);
    let dlq = if rng.chance(400) {
        "on_failure = \"dead-letter\"\n"
    } else {
        ""
    };
    let cpu = ["0.5", "1", "0.25"][rng.below(3) as usize];
    format!(
        "name = \"v{n}\"\n[[step]]\nid = \"a\"\nmap = {{ range = [0, {items}] }}\nhandler = \"noop\"\n\
         resources = {{ cpu = {cpu}, memory = \"64MiB\" }}\n\
         retries = {{ attempts = {attempts}, backoff = \"exponential\", initial = \"100ms\", max = \"1s\" }}\n{dlq}\
         [[step]]\nid = \"b\"\nneeds = [\"a\"]\nhandler = \"noop\"\nresources = {{ cpu = 0.5 }}\n"
    )
}

impl Clients {
    pub fn new(rng: &mut Rng, replicas: Vec<u64>) -> Self {
        let mut rng = rng.fork();
        let variants = (0..4)
            .map(|n| {
                let text = variant_toml(&mut rng, n);
                let raw = spec::parse_toml(&text, Some("sim.toml")).expect("a valid spec");
                let compiled = spec::compile(&raw).expect("a valid spec");
                Submission {
                    digest: spec::spec_digest(&raw, &Default::default()),
                    spec: compiled,
                    params: vec![],
                    idempotency_key: None,
                }
            })
            .collect();
        let ops_max = rng.range(10, 40) as usize;
        Clients {
            rng,
            variants,
            ops: BTreeMap::new(),
            retries: BTreeMap::new(),
            next_op: 0,
            replicas,
            keys_used: Vec::new(),
            acked: Vec::new(),
            issued: 0,
            ops_max,
            leader_hint: 0,
        }
    }

    /// Issues new operations (while `issue`), retries due ones, times out old ones.
    pub fn step(&mut self, now: u64, issue: bool, net: &mut Net, trace: &mut Trace) {
        if issue && self.issued < self.ops_max && self.rng.chance(40) {
            self.issued += 1;
            let kind = self.draw();
            self.send(now, kind, 1, net, trace);
        }
        while let Some((&(due, seq), _)) = self.retries.first_key_value() {
            if due > now {
                break;
            }
            let (kind, try_no) = self.retries.remove(&(due, seq)).expect("present");
            self.send(now, kind, try_no, net, trace);
        }
        let late: Vec<u64> = self
            .ops
            .values()
            .filter(|o| o.outcome == OpOutcome::Pending && now - o.invoke_ms > TIMEOUT_MS)
            .map(|o| o.id)
            .collect();
        for id in late {
            self.complete(now, id, OpOutcome::Timeout, trace);
        }
    }

    fn draw(&mut self) -> OpKind {
        let roll = self.rng.below(100);
        if roll < 10 && !self.acked.is_empty() {
            let i = self.rng.below(self.acked.len() as u64) as usize;
            return OpKind::Cancel(self.acked[i]);
        }
        if roll < 30 && !self.acked.is_empty() {
            let i = self.rng.below(self.acked.len() as u64) as usize;
            return OpKind::Read(self.acked[i]);
        }
        if roll < 45 && !self.keys_used.is_empty() {
            let i = self.rng.below(self.keys_used.len() as u64) as usize;
            let (key, variant) = self.keys_used[i].clone();
            // Mostly the same spec again (the same workflow back); sometimes another (409).
            let variant = if self.rng.chance(700) {
                variant
            } else {
                (variant + 1) % self.variants.len()
            };
            return OpKind::Submit {
                variant,
                key: Some(key),
            };
        }
        let variant = self.rng.below(self.variants.len() as u64) as usize;
        let key = self.rng.chance(500).then(|| {
            let k = format!("k{}", self.keys_used.len());
            self.keys_used.push((k.clone(), variant));
            k
        });
        OpKind::Submit { variant, key }
    }

    fn send(&mut self, now: u64, kind: OpKind, try_no: u32, net: &mut Net, trace: &mut Trace) {
        self.next_op += 1;
        let id = self.next_op;
        let target = match self.leader_hint {
            0 => self.replicas[self.rng.below(self.replicas.len() as u64) as usize],
            hint => hint,
        };
        let propose = |cmd| Payload::Propose {
            op: Some(id),
            cmds: vec![cmd],
        };
        let p = match &kind {
            OpKind::Submit { variant, key } => {
                let mut s = self.variants[*variant].clone();
                s.idempotency_key = key.clone();
                propose(Command::Submit(Box::new(s)))
            }
            OpKind::Cancel(wf) => propose(Command::Cancel(*wf)),
            OpKind::Read(wf) => Payload::Read { op: id, wf: *wf },
        };
        trace.line(
            now,
            format_args!("client op{id} {kind:?} try {try_no} -> r{target}"),
        );
        self.ops.insert(
            id,
            Op {
                id,
                kind,
                target,
                try_no,
                invoke_ms: now,
                complete_ms: None,
                outcome: OpOutcome::Pending,
            },
        );
        net.send(now, Addr::Client, Addr::Replica(target), p);
    }

    pub fn on_reply(&mut self, now: u64, op: u64, reply: Reply, trace: &mut Trace) {
        let outcome = match reply {
            Reply::Applied(mut outs) => OpOutcome::Ok(outs.pop().unwrap_or(Output::Done)),
            Reply::NotLeader { leader } => {
                self.leader_hint = leader;
                OpOutcome::NotLeader
            }
            Reply::Indeterminate => OpOutcome::Indeterminate,
            Reply::Status(s) => OpOutcome::Status(s),
        };
        self.complete(now, op, outcome, trace);
    }

    fn complete(&mut self, now: u64, id: u64, outcome: OpOutcome, trace: &mut Trace) {
        let Some(op) = self.ops.get_mut(&id) else {
            return;
        };
        // A duplicated reply, or one after the timeout: the first outcome stands.
        if op.outcome != OpOutcome::Pending {
            return;
        }
        trace.line(now, format_args!("client op{id} -> {outcome:?}"));
        if matches!(outcome, OpOutcome::Timeout | OpOutcome::Indeterminate) {
            self.leader_hint = 0;
        }
        op.outcome = outcome.clone();
        op.complete_ms = Some(now);
        if let OpOutcome::Ok(Output::Submitted { id: wf, .. }) = &outcome {
            self.acked.push(*wf);
        }
        // Retry what surely was not applied, and keyed submits whatever happened (the key
        // makes them safe to send again).
        // Reads change nothing: they are safe to send again too.
        let keyed = matches!(
            &op.kind,
            OpKind::Submit { key: Some(_), .. } | OpKind::Read(_)
        );
        let retry = match outcome {
            OpOutcome::NotLeader => true,
            OpOutcome::Timeout | OpOutcome::Indeterminate => keyed,
            _ => false,
        };
        if retry && op.try_no < TRIES_MAX {
            let due = now + self.rng.range(50, 400);
            self.retries
                .insert((due, id), (op.kind.clone(), op.try_no + 1));
        }
    }

    /// Pending operations (none after the run settles, or a client is stuck).
    pub fn pending(&self) -> usize {
        self.ops
            .values()
            .filter(|o| o.outcome == OpOutcome::Pending)
            .count()
            + self.retries.len()
    }
}

impl Clients {
    /// The operations in the shape of the shared history checker (`troupe_scheduler::history`):
    /// a submit's spec digest is its variant; a `NotLeader` answer (refused before it was
    /// proposed) is left out, a timeout or an indeterminate answer is unknown.
    pub fn history(&self) -> Vec<history::Op> {
        self.ops
            .values()
            // Refused before it was proposed: it had no effect.
            .filter(|op| op.outcome != OpOutcome::NotLeader)
            .map(|op| {
                let kind = match &op.kind {
                    OpKind::Submit { variant, key } => history::Kind::Submit {
                        key: key.clone(),
                        digest: *variant as u64,
                    },
                    OpKind::Cancel(wf) => history::Kind::Cancel { wf: wf.to_string() },
                    OpKind::Read(wf) => history::Kind::Status { wf: wf.to_string() },
                };
                let outcome = match &op.outcome {
                    // A refused cancel may be the answer to a duplicate of this very cancel
                    // (the network re-delivered it after the first copy applied): it may have
                    // taken effect. (A real client that resends a cancel sees the same.)
                    OpOutcome::Ok(Output::Rejected(_)) if matches!(op.kind, OpKind::Cancel(_)) => {
                        history::Outcome::Unknown
                    }
                    OpOutcome::Ok(out) => history::Outcome::Ok(match (out, &op.kind) {
                        (Output::Submitted { id, created }, _) => history::Ret::Submitted {
                            id: id.to_string(),
                            created: *created,
                        },
                        (Output::Conflict(_), OpKind::Submit { .. }) => history::Ret::KeyConflict,
                        (Output::NotFound(_), _) => history::Ret::NotFound,
                        (Output::Rejected(_) | Output::Conflict(_), _) => history::Ret::Refused,
                        _ => history::Ret::Done,
                    }),
                    OpOutcome::Status(s) => history::Outcome::Ok(history::Ret::Status(
                        s.and_then(|s| history::Phase::parse(s.name()))
                            .unwrap_or(history::Phase::Absent),
                    )),
                    OpOutcome::NotLeader
                    | OpOutcome::Pending
                    | OpOutcome::Indeterminate
                    | OpOutcome::Timeout => history::Outcome::Unknown,
                };
                history::Op {
                    client: 0,
                    kind,
                    invoke: op.invoke_ms,
                    complete: op.complete_ms,
                    outcome,
                }
            })
            .collect()
    }
}
