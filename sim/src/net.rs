//! The simulated network: every message gets a seeded delay (so messages reorder), may be
//! dropped or duplicated, and is dropped when a partition separates its ends.

use crate::rng::Rng;
use std::collections::{BTreeMap, BTreeSet};
use troupe_scheduler::state::WfStatus;
use troupe_scheduler::{Command, Output, Report, RunSpec, TaskRef, WorkflowId};

/// An endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Addr {
    /// A server, by raft id (1..=N).
    Replica(u64),
    /// A worker node, by index.
    Worker(usize),
    /// The clients (never partitioned: a client that reaches only a minority sees no ack).
    Client,
}

/// What a client or a worker proposal got back.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// Committed and applied: the outputs of its commands.
    Applied(Vec<Output>),
    /// Not proposed (this server does not lead): safe to retry elsewhere; `leader` is the
    /// leader it knows of (0: none).
    NotLeader { leader: u64 },
    /// Proposed, then leadership was lost before it applied: it may still be applied.
    Indeterminate,
    /// A linearizable read (ReadIndex): the workflow's status (`None`: no such workflow).
    Status(Option<WfStatus>),
}

/// A worker's lease renewal (what it holds and what it reported recently).
#[derive(Debug, Clone, PartialEq)]
pub struct Renewal {
    pub node: String,
    pub registration: u64,
    pub epoch: u64,
    pub holds: BTreeSet<(TaskRef, u32)>,
    pub recent: Vec<Report>,
}

/// The leader's answer to a renewal.
#[derive(Debug, Clone, PartialEq)]
pub struct RenewReply {
    /// The registration the log holds for the node (0: none).
    pub registration: u64,
    pub epoch: u64,
    pub up: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Payload {
    Raft(Box<raft::eraftpb::Message>),
    /// A raft message as raft-log's transport sends it (protobuf bytes; the engine world).
    RaftBytes(Vec<u8>),
    /// Commands to propose; `op` set: the sender waits for a [`Payload::Reply`].
    Propose {
        op: Option<u64>,
        cmds: Vec<Command>,
    },
    Reply {
        op: u64,
        reply: Reply,
    },
    /// A client's status read, answered by the leader after a ReadIndex barrier.
    Read {
        op: u64,
        wf: WorkflowId,
    },
    Run(Box<RunSpec>),
    Kill {
        task: TaskRef,
        attempt: u32,
    },
    Renew(Box<Renewal>),
    RenewReply(RenewReply),
}

impl Payload {
    pub fn kind(&self) -> &'static str {
        match self {
            Payload::Raft(_) | Payload::RaftBytes(_) => "raft",
            Payload::Propose { .. } => "propose",
            Payload::Reply { .. } => "reply",
            Payload::Read { .. } => "read",
            Payload::Run(_) => "run",
            Payload::Kill { .. } => "kill",
            Payload::Renew(_) => "renew",
            Payload::RenewReply(_) => "renew-reply",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Envelope {
    pub from: Addr,
    pub to: Addr,
    pub payload: Payload,
}

/// Fault settings of the network (seeded per run).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Faults {
    pub drop_per_mille: u64,
    pub dup_per_mille: u64,
    pub delay_ms_max: u64,
}

#[derive(Debug, Default, Clone, Copy)]
pub struct NetStats {
    pub sent: u64,
    pub dropped: u64,
    pub duplicated: u64,
    pub cut: u64,
}

pub struct Net {
    /// In flight, by (delivery time, send sequence): a deterministic order.
    queue: BTreeMap<(u64, u64), Envelope>,
    seq: u64,
    pub faults: Faults,
    /// One side of a partition (the rest is the other side); `None`: connected.
    pub partition: Option<BTreeSet<Addr>>,
    pub stats: NetStats,
    rng: Rng,
}

impl Net {
    pub fn new(rng: Rng) -> Self {
        Net {
            queue: BTreeMap::new(),
            seq: 0,
            faults: Faults {
                drop_per_mille: 0,
                dup_per_mille: 0,
                delay_ms_max: 1,
            },
            partition: None,
            stats: NetStats::default(),
            rng,
        }
    }

    fn cut(&self, a: Addr, b: Addr) -> bool {
        if a == Addr::Client || b == Addr::Client {
            return false;
        }
        self.partition
            .as_ref()
            .is_some_and(|side| side.contains(&a) != side.contains(&b))
    }

    pub fn send(&mut self, now: u64, from: Addr, to: Addr, payload: Payload) {
        self.stats.sent += 1;
        if from != to && self.cut(from, to) {
            self.stats.cut += 1;
            return;
        }
        if from != to && self.rng.chance(self.faults.drop_per_mille) {
            self.stats.dropped += 1;
            return;
        }
        let copies = if self.rng.chance(self.faults.dup_per_mille) {
            self.stats.duplicated += 1;
            2
        } else {
            1
        };
        for _ in 0..copies {
            let delay = self.rng.range(1, self.faults.delay_ms_max.max(1));
            self.seq += 1;
            self.queue.insert(
                (now + delay, self.seq),
                Envelope {
                    from,
                    to,
                    payload: payload.clone(),
                },
            );
        }
    }

    /// Puts a message back for later (its receiver is paused: it sits in a socket buffer).
    pub fn hold(&mut self, at: u64, env: Envelope) {
        self.seq += 1;
        self.queue.insert((at, self.seq), env);
    }

    /// The next message due at or before `now`, if any.
    pub fn pop_due(&mut self, now: u64) -> Option<Envelope> {
        let (&key, _) = self.queue.first_key_value()?;
        if key.0 > now {
            return None;
        }
        self.queue.remove(&key)
    }

    pub fn in_flight(&self) -> usize {
        self.queue.len()
    }
}
