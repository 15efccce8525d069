//! The scheduler state machine as the Raft log drives it, and the leader's hook.

use crate::leases::{LeaseJudge, LeaseTable};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;
use troupe_raft_log::StateMachine;
use troupe_scheduler::placement::Strategy;
use troupe_scheduler::state::{GroupKey, NodeStatus};
use troupe_scheduler::{Command, Effect, Output, Planner, RunSpec, State, TaskRef, WorkflowId};

/// Layout version of the state snapshot (a u16 before the bincode body). Bump it with any
/// change to the state's types, and keep reading the old layout where it matters.
///
/// Version 3 appends a second section, the warm worker table (`state::Workers`), after the
/// version 2 body: a version 2 snapshot restores as the same state with no worker groups (its
/// worker-step attempts were placed before groups existed and are requeued, like every
/// attempt, when their nodes register again).
pub const SNAPSHOT_VERSION: u16 = 3;
/// The oldest layout this build restores.
pub const SNAPSHOT_VERSION_MIN: u16 = 2;

/// `troupe_scheduler::State` behind the Raft log's `StateMachine` trait.
#[derive(Default)]
pub struct Machine {
    pub state: State,
    /// Counted as commands are applied; not replicated, not in snapshots (`crate::metrics`).
    pub metrics: crate::metrics::TaskMetrics,
    /// The attempts each command ended, while an observer wants them (traces); process local.
    pub attempts: crate::attempts::AttemptLog,
}

impl StateMachine for Machine {
    type Command = Command;
    type Output = Output;

    fn apply(&mut self, at_ms: u64, cmd: Command) -> Output {
        let watch = crate::metrics::TaskMetrics::before(&self.state, &cmd);
        let ends = self.attempts.before(&self.state, &cmd);
        let out = self.state.apply(at_ms, cmd);
        if let Some(w) = watch {
            self.metrics.after(&self.state, at_ms, w);
        }
        if let Some(w) = ends {
            self.attempts.after(&self.state, at_ms, w);
        }
        out
    }

    fn snapshot(&self) -> Vec<u8> {
        encode_snapshot(&self.state)
    }

    /// The retained workflows, keys and dead letters are persistent maps, so this clone shares
    /// them and costs what the running work costs; the engine thread goes on while the clone is
    /// serialized.
    fn snapshot_image(&self) -> troupe_raft_log::SnapshotImage {
        let mut state = self.state.clone();
        state.sched.effects.clear();
        Box::new(move || encode_snapshot(&state))
    }

    fn restore(&mut self, data: &[u8]) -> Result<(), String> {
        let (v, body) = match data {
            [a, b, rest @ ..] => (u16::from_le_bytes([*a, *b]), rest),
            _ => return Err("snapshot is too short to hold its version".into()),
        };
        if !(SNAPSHOT_VERSION_MIN..=SNAPSHOT_VERSION).contains(&v) {
            return Err(format!(
                "snapshot format version {v}; this build reads versions {SNAPSHOT_VERSION_MIN} to {SNAPSHOT_VERSION}: run the troupe version that wrote it"
            ));
        }
        let (mut state, used): (State, _) =
            decode_bounded(body).map_err(|e| format!("snapshot does not decode: {e}"))?;
        if v >= 3 {
            let (workers, _) = decode_bounded(&body[used..])
                .map_err(|e| format!("snapshot's worker table does not decode: {e}"))?;
            state.sched.workers = workers;
        }
        state.rebuild_indexes();
        self.state = state;
        Ok(())
    }
}

/// Decodes a snapshot section with a bincode limit of at least its own length, so that a length
/// prefix cannot make bincode allocate far past the bytes there are. Without one, a string
/// length of 2^40 in a corrupt or forged snapshot asked for a terabyte and aborted the process
/// (found by `actors/tests/fuzz.rs`). Through serde, bincode counts against the limit only the
/// bytes of strings and byte arrays, which a valid snapshot holds in full: a limit of at least
/// the input's length refuses no valid snapshot.
fn decode_bounded<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
) -> Result<(T, usize), bincode::error::DecodeError> {
    use bincode::config::standard;
    use bincode::serde::decode_from_slice;
    const MIB: usize = 1 << 20;
    match bytes.len() {
        n if n <= MIB => decode_from_slice(bytes, standard().with_limit::<{ 16 * MIB }>()),
        n if n <= 16 * MIB => decode_from_slice(bytes, standard().with_limit::<{ 256 * MIB }>()),
        n if n <= 256 * MIB => decode_from_slice(bytes, standard().with_limit::<{ 4096 * MIB }>()),
        _ => decode_from_slice(bytes, standard().with_limit::<{ 65536 * MIB }>()),
    }
}

fn encode_snapshot(state: &State) -> Vec<u8> {
    // An empty snapshot would be compacted over and lose the state: fail-stop instead (a panic
    // here stops the engine with `RaftLogError::SnapshotFailed`).
    let cfg = bincode::config::standard();
    let body =
        bincode::serde::encode_to_vec(state, cfg).expect("the scheduler state always encodes");
    let workers = bincode::serde::encode_to_vec(&state.sched.workers, cfg)
        .expect("the worker table always encodes");
    let mut out = Vec::with_capacity(body.len() + workers.len() + 2);
    out.extend_from_slice(&SNAPSHOT_VERSION.to_le_bytes());
    out.extend_from_slice(&body);
    out.extend_from_slice(&workers);
    out
}

/// Where the effects of applied commands go (the actor side implements it).
pub trait EffectSink: Send + 'static {
    /// Attempts to start, on this node or others (`RunSpec::node`).
    fn run(&mut self, specs: Vec<RunSpec>);
    /// Attempts to stop: (node, task, attempt).
    fn kill(&mut self, kills: Vec<(String, TaskRef, u32)>);
    fn workflows(
        &mut self,
        created: Vec<WorkflowId>,
        changed: Vec<WorkflowId>,
        finished: Vec<WorkflowId>,
    );
    /// Worker groups released: their nodes stop those workers (`GroupKey::node`).
    fn stop_workers(&mut self, groups: Vec<GroupKey>);
}

/// Watches what was applied, on the engine thread of every member, before the effects are
/// routed: alerts and traces are built from it (`troupe-node`'s `notify` and `otel`). It must
/// not block: copy what it needs and queue it for another task.
pub trait Observer: Send + 'static {
    /// `effects`: those of the entries applied since the last call; `now_ms`: the engine's
    /// clock; `is_leader`: whether this member is the Raft leader now.
    fn observe(&mut self, state: &State, effects: &[Effect], now_ms: u64, is_leader: bool);

    /// Whether this observer wants [`Observer::attempts`] (the machine records them only then).
    fn wants_attempts(&self) -> bool {
        false
    }

    /// The attempts ended by the entries applied since the last call (`crate::attempts`), on
    /// every member, with the engine's clock; called before `observe`.
    fn attempts(
        &mut self,
        _state: &State,
        _ended: &[crate::attempts::Ended],
        _now_ms: u64,
        _is_leader: bool,
    ) {
    }
}

/// What the engine hook needs besides the sink.
pub struct HookArgs {
    pub node: String,
    /// This process start's incarnation. The node's attempts are run here only for the epoch
    /// this incarnation registered (read from the applied state, so no timing is involved).
    /// Effects of entries replayed at start-up belong to an earlier epoch: they are dropped,
    /// because the registration requeues those attempts as attempt + 1 (running them here would
    /// run them twice); in a cluster, lease renewals send lost deliveries again.
    pub incarnation: u64,
    pub strategy: Strategy,
    /// Retention of finished workflows (the leader proposes `Collect`).
    pub retain: Option<Duration>,
    /// How often the leader has the servers compare state hashes.
    pub audit_every: Duration,
    /// Clusters: the leader's lease table and the lease length.
    pub lease: Option<(Arc<LeaseTable>, Duration)>,
    /// Called after every apply cycle and tick, before effects are routed.
    pub observers: Vec<Box<dyn Observer>>,
}

/// The engine hook, run on every member after applies and on ticks. Every member routes
/// workflow effects to its instances; only the leader delivers runs and kills (so each is
/// delivered once), plans placements and timeouts, and declares nodes whose lease expired lost.
/// A follower resets the planner, so records of an earlier leadership are not trusted.
pub fn hook(mut args: HookArgs, mut sink: Box<dyn EffectSink>) -> troupe_raft_log::Hook<Machine> {
    let mut planner = Planner::with_strategy(args.strategy)
        .with_retention(args.retain.map(|d| d.as_millis() as u64))
        .with_audit_every(args.audit_every.as_millis() as u64);
    let mut observers = std::mem::take(&mut args.observers);
    let mut judge = args
        .lease
        .as_ref()
        .map(|(table, lease)| LeaseJudge::new(table.clone(), *lease));
    let wants_attempts = observers.iter().any(|o| o.wants_attempts());
    Box::new(move |m: &mut Machine, now_ms: u64, is_leader: bool| {
        m.attempts.enabled = wants_attempts;
        let ended = m.attempts.take();
        let effects = m.state.take_effects();
        let epoch = m
            .state
            .sched
            .nodes
            .get(&args.node)
            .filter(|n| n.incarnation == args.incarnation && n.status != NodeStatus::Down)
            .map(|n| n.epoch)
            .unwrap_or(0);
        for o in observers.iter_mut() {
            if !ended.is_empty() && o.wants_attempts() {
                o.attempts(&m.state, &ended, now_ms, is_leader);
            }
            o.observe(&m.state, &effects, now_ms, is_leader);
        }
        if !effects.is_empty() {
            // Runs for this node need its live epoch (0 until registered: those are dropped).
            route(&args.node, epoch, is_leader, effects, sink.as_mut());
        }
        if !is_leader {
            planner.reset();
            if let Some(j) = judge.as_mut() {
                j.follow();
            }
            return Vec::new();
        }
        let mut cmds = planner.plan(&m.state, now_ms);
        if let Some(j) = judge.as_mut() {
            let nodes: Vec<_> = m
                .state
                .sched
                .nodes
                .values()
                .map(|n| (n.id.as_str(), n.epoch, n.status == NodeStatus::Down))
                .collect();
            let now = j.now();
            cmds.extend(j.judge(&nodes, now));
        }
        cmds
    })
}

fn route(node: &str, epoch: u64, is_leader: bool, effects: Vec<Effect>, sink: &mut dyn EffectSink) {
    let mut runs = Vec::new();
    let mut kills = Vec::new();
    let mut stops = Vec::new();
    let (mut created, mut changed, mut finished) = (Vec::new(), BTreeSet::new(), Vec::new());
    for e in effects {
        match e {
            // This node's own attempts only for its live epoch; others' are checked by them.
            Effect::Run(spec)
                if is_leader && (spec.node != node || (epoch != 0 && spec.epoch == epoch)) =>
            {
                runs.push(*spec)
            }
            Effect::Kill {
                task,
                attempt,
                node: n,
            } if is_leader => kills.push((n, task, attempt)),
            // Each workflow's instance runs on its owner only.
            Effect::Owned { wf, owner } if owner == node => created.push(wf),
            Effect::Changed(id) => {
                changed.insert(id);
            }
            Effect::Finished(id) => finished.push(id),
            Effect::Diverged(why) => tracing::error!("{why}"),
            Effect::StopWorkers(groups) if is_leader => stops.extend(groups),
            _ => {}
        }
    }
    if !kills.is_empty() {
        sink.kill(kills);
    }
    if !stops.is_empty() {
        sink.stop_workers(stops);
    }
    if !runs.is_empty() {
        sink.run(runs);
    }
    if !(created.is_empty() && changed.is_empty() && finished.is_empty()) {
        sink.workflows(created, changed.into_iter().collect(), finished);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_carries_its_version_and_another_version_is_refused() {
        let m = Machine::default();
        let mut bytes = m.snapshot();
        assert_eq!(&bytes[..2], &SNAPSHOT_VERSION.to_le_bytes());
        let mut back = Machine::default();
        back.restore(&bytes).unwrap();
        bytes[0] = bytes[0].wrapping_add(1);
        let err = back.restore(&bytes).unwrap_err();
        assert!(err.contains("this build reads versions"), "{err}");
        bytes[0] = 1;
        let err = back.restore(&bytes).unwrap_err();
        assert!(err.contains("this build reads version"), "{err}");
        assert!(back.restore(&[1]).is_err());
    }

    fn with_a_worker_group() -> Machine {
        let mut m = Machine::default();
        m.state.sched.workers.groups.insert(
            GroupKey {
                node: "n1".into(),
                wf: 1,
                step: 0,
                gpus: vec!["GPU-a".into()],
            },
            troupe_scheduler::state::WorkerGroup {
                workers: 1,
                tasks: 3,
                depth: 8,
                idle_since_ms: None,
                idle_ms: 60_000,
            },
        );
        m
    }

    #[test]
    fn the_worker_table_travels_in_the_snapshot_and_counts_in_the_audit_hash() {
        let m = with_a_worker_group();
        let mut back = Machine::default();
        back.restore(&m.snapshot()).unwrap();
        assert_eq!(back.state.sched.workers, m.state.sched.workers);
        assert_ne!(m.state.hash(), Machine::default().state.hash());
    }

    #[test]
    fn a_version_2_snapshot_restores_with_no_worker_groups() {
        let m = with_a_worker_group();
        let body = bincode::serde::encode_to_vec(&m.state, bincode::config::standard()).unwrap();
        let mut v2 = 2u16.to_le_bytes().to_vec();
        v2.extend_from_slice(&body);
        let mut back = Machine::default();
        back.restore(&v2).unwrap();
        assert!(back.state.sched.workers.groups.is_empty());
        assert_eq!(back.state.sched.nodes, m.state.sched.nodes);
    }

    /// Fuzz findings (actors/tests/fuzz.rs): a forged length in a snapshot aborted the process
    /// ("memory allocation of 341435380216 bytes failed") instead of being an error.
    #[test]
    fn forged_lengths_in_a_snapshot_are_errors_not_an_abort() {
        let v = SNAPSHOT_VERSION.to_le_bytes();
        let u64_varint = |n: u64| {
            let mut b = vec![0xfd];
            b.extend_from_slice(&n.to_le_bytes());
            b
        };
        // `workflows` (the state's first field) claims 2^36 entries: imbl reserved them all.
        let mut many_workflows = v.to_vec();
        many_workflows.extend(u64_varint(1 << 36));
        // No workflows, next id 0, one idempotency key of 2^40 bytes: bincode reserved them.
        let mut long_key = v.to_vec();
        long_key.extend([0, 0, 1]);
        long_key.extend(u64_varint(1 << 40));
        for bytes in [many_workflows, long_key] {
            let err = Machine::default().restore(&bytes).unwrap_err();
            assert!(err.starts_with("snapshot does not decode"), "{err}");
        }
    }
}
