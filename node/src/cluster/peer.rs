//! The per-node peer actor: the address other nodes send to (pg groups, not ractor's NodeIds,
//! which change on every reconnect). It feeds Raft messages to the engine, runs to the local
//! dispatcher, proposals to the log, and answers lease renewals — on the leader it also
//! reconciles: attempts placed on the node that it does not hold are sent again, and reports it
//! sent that are not applied yet are proposed again (both are idempotent).

use super::lease::{LeaseTable, held_of};
use super::wire::{ExecMsg, PeerMsg, RenewReply, decode, encode};
use super::{SERVERS_GROUP, exec_group, raft_group};
use ractor::{Actor, ActorProcessingErr, ActorRef, pg, registry};
use std::collections::BTreeSet;
use std::sync::Arc;
use troupe_actors::dispatcher::DispatchMsg;
use troupe_actors::machine::Machine;
use troupe_actors::sink::DISPATCHER_NAME;
use troupe_raft_log::EngineHandle;
use troupe_scheduler::state::NodeStatus;
use troupe_scheduler::{AttemptRef, Command, Outcome, Report, RunSpec};

pub struct PeerActor;

pub struct PeerArgs {
    pub node: String,
    /// Servers only.
    pub raft_id: u64,
    pub engine: Option<EngineHandle<Machine>>,
    pub leases: Arc<LeaseTable>,
    /// The term this server became leader in, and when it noticed (set by the actor).
    pub leading: Option<(u64, std::time::Instant)>,
    /// Whether this process stalled lately (set by the actor at start).
    pub stalls: Option<Arc<super::stall::Stalls>>,
    /// The node's clock: how long this server has led, and the `now` of reconciliation.
    pub clock: troupe_clock::SharedClock,
}

/// Whether a leader that noticed its term at `since` has settled at `now` (and ran without a
/// stall meanwhile: `quiet`), so it may kill or fail what it does not know.
fn settled(since: std::time::Instant, now: std::time::Instant, quiet: bool) -> bool {
    quiet && now.saturating_duration_since(since) >= std::time::Duration::from_millis(SETTLE_MS)
}

/// A new leader may not have applied what the old one committed: for this long it only sends
/// runs again (harmless), it does not kill or fail attempts it does not know yet.
const SETTLE_MS: u64 = 3_000;

impl Actor for PeerActor {
    type Msg = PeerMsg;
    type State = PeerArgs;
    type Arguments = PeerArgs;

    async fn pre_start(
        &self,
        me: ActorRef<PeerMsg>,
        args: PeerArgs,
    ) -> Result<PeerArgs, ActorProcessingErr> {
        let mut args = args;
        args.stalls = Some(super::stall::Stalls::start(args.clock.clone()));
        pg::join(exec_group(&args.node), vec![me.get_cell()]);
        if args.engine.is_some() {
            pg::join(raft_group(args.raft_id), vec![me.get_cell()]);
            pg::join(SERVERS_GROUP.to_string(), vec![me.get_cell()]);
        }
        Ok(args)
    }

    async fn handle(
        &self,
        _me: ActorRef<PeerMsg>,
        msg: PeerMsg,
        st: &mut PeerArgs,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            // Cut by a blackhole partition (chaos): dropped, a call's reply port with it.
            PeerMsg::Blackholed => {}
            PeerMsg::Raft(bytes) => {
                if let Some(e) = &st.engine {
                    e.step(bytes);
                }
            }
            PeerMsg::Exec(bytes) => {
                let Some(m) = decode::<ExecMsg>(&bytes) else {
                    return Ok(());
                };
                let m = match m {
                    ExecMsg::Run(specs) => DispatchMsg::Run(specs),
                    ExecMsg::Kill(k) => DispatchMsg::Kill(k),
                    ExecMsg::StopWorkers(groups) => {
                        troupe_actors::workers::stop_groups(groups);
                        return Ok(());
                    }
                };
                if let Some(d) =
                    registry::where_is(DISPATCHER_NAME).map(ActorRef::<DispatchMsg>::from)
                {
                    let _ = d.cast(m);
                }
            }
            PeerMsg::Propose(bytes) => {
                let (Some(e), Some(cmds)) = (&st.engine, decode::<Vec<Command>>(&bytes)) else {
                    return Ok(());
                };
                // A peer proposes only what a node says about itself: its registration and the
                // reports of its attempts (fenced in apply by epoch). Anything else (a submit,
                // a cancel, a NodeLost) comes through the API or the leader, never a peer.
                let (cmds, refused): (Vec<Command>, Vec<Command>) =
                    cmds.into_iter().partition(|c| {
                        matches!(
                            c,
                            Command::RegisterNode(_) | Command::Started(_) | Command::Finished(_)
                        )
                    });
                for c in &refused {
                    tracing::warn!(
                        command = command_kind(c),
                        "refused a peer's proposal: peers may only register themselves and report their attempts"
                    );
                }
                if cmds.is_empty() {
                    return Ok(());
                }
                if let Err(err) = e.propose_nowait(cmds) {
                    tracing::debug!(%err, "a peer's proposal was not accepted; it sends again");
                }
            }
            PeerMsg::Renew(bytes, reply) => {
                let answer = match (&st.engine, held_of(&bytes)) {
                    (Some(engine), Some(held)) => {
                        let status = engine.status();
                        let now = st.clock.now();
                        let settled = if status.is_leader {
                            let since = match st.leading {
                                Some((term, since)) if term == status.term => since,
                                _ => st.leading.insert((status.term, now)).1,
                            };
                            // A leader that just resumed from a pause may not know yet that
                            // a new one took over: its state may be behind what the nodes
                            // run, so it settles again before it kills or fails anything.
                            let quiet = st.stalls.as_ref().is_none_or(|s| {
                                s.quiet_for(std::time::Duration::from_millis(SETTLE_MS))
                            });
                            if !quiet {
                                st.leading = Some((status.term, now));
                            }
                            settled(since, now, quiet)
                        } else {
                            false
                        };
                        renew(engine, &st.leases, held, settled, st.clock.wall_ms())
                    }
                    _ => RenewReply::default(),
                };
                let _ = reply.send(encode(&answer));
            }
        }
        Ok(())
    }
}

fn renew(
    engine: &EngineHandle<Machine>,
    leases: &LeaseTable,
    held: troupe_actors::dispatcher::Held,
    settled: bool,
    now_ms: u64,
) -> RenewReply {
    let status = engine.status();
    let state = engine.state();
    let Ok(m) = state.read() else {
        return RenewReply::default();
    };
    let node = m.state.sched.nodes.get(&held.node);
    let leader_api = m
        .state
        .sched
        .nodes
        .values()
        .find(|n| n.raft_id == status.leader_id && n.raft_id != 0)
        .map(|n| n.api.clone())
        .unwrap_or_default();
    let reply = RenewReply {
        leader: status.is_leader,
        epoch: node.map(|n| n.epoch).unwrap_or(0),
        up: node.is_some_and(|n| n.status != NodeStatus::Down),
        leader_api,
    };
    if !status.is_leader || !reply.up || reply.epoch != held.epoch {
        return reply;
    }
    leases.renew(&held.node);
    // Reconcile what the node holds with what the log says it holds.
    let holds: BTreeSet<(troupe_scheduler::TaskRef, u32)> =
        held.attempts.iter().map(|a| (a.task, a.attempt)).collect();
    let reported: BTreeSet<(troupe_scheduler::TaskRef, u32)> = held
        .recent
        .iter()
        .map(|r| (r.at.task, r.at.attempt))
        .collect();
    let live_reports: Vec<_> = held
        .recent
        .into_iter()
        .filter(|r| m.state.would_accept(r))
        .collect();
    let repair = troupe_scheduler::reconcile::reconcile(
        &m.state,
        &troupe_scheduler::reconcile::Held {
            node: &held.node,
            epoch: held.epoch,
            holds: &holds,
            reported: &reported,
        },
        now_ms,
        settled,
    );
    // The run was lost on the way: send it again (the node ignores duplicates).
    let resend: Vec<RunSpec> = repair
        .resend
        .iter()
        .filter_map(|(r, attempt)| m.state.run_spec_of(*r, *attempt))
        .collect();
    // It started, the node no longer has it and its report is gone: fail it (retried).
    let vanished: Vec<Report> = repair
        .vanished
        .into_iter()
        .map(|at| Report {
            at,
            outcome: Outcome::Failed {
                error: format!(
                    "the attempt vanished from node {} without a report",
                    held.node
                ),
            },
        })
        .collect();
    // Attempts the node runs that the log no longer wants (a kill was lost): stop them.
    let stale: Vec<(troupe_scheduler::TaskRef, u32)> = held
        .attempts
        .iter()
        .filter(|a| settled && !is_live(&m.state, a))
        .map(|a| (a.task, a.attempt))
        .collect();
    drop(m);
    if !live_reports.is_empty() || !vanished.is_empty() {
        let mut cmds = Vec::new();
        if !live_reports.is_empty() {
            cmds.push(Command::Finished(live_reports));
        }
        if !vanished.is_empty() {
            tracing::warn!(node = %held.node, n = vanished.len(), "attempts vanished from their node");
            cmds.push(Command::Finished(vanished));
        }
        let _ = engine.propose_nowait(cmds);
    }
    if !resend.is_empty() {
        tracing::info!(node = %held.node, n = resend.len(), "sending placed attempts again (delivery was lost)");
        deliver(&held.node, resend);
    }
    if !stale.is_empty() {
        tracing::info!(node = %held.node, n = stale.len(), "stopping attempts the log no longer wants (a kill was lost)");
        send_exec(&held.node, ExecMsg::Kill(stale));
    }
    reply
}

fn is_live(state: &troupe_scheduler::State, at: &AttemptRef) -> bool {
    state
        .workflows
        .get(&at.task.wf)
        .and_then(|w| w.steps.get(at.task.step as usize))
        .and_then(|s| s.tasks.get(&at.task.item))
        .is_some_and(|t| t.attempt == at.attempt && t.state.placement().is_some())
}

/// Sends runs to a node's peer actor (local or remote).
pub fn deliver(node: &str, specs: Vec<RunSpec>) {
    send_exec(node, ExecMsg::Run(specs));
}

pub fn send_exec(node: &str, msg: ExecMsg) {
    match pg::get_members(&exec_group(node)).first() {
        Some(cell) => {
            let _ = ActorRef::<PeerMsg>::from(cell.clone()).cast(PeerMsg::Exec(encode(&msg)));
        }
        None => {
            tracing::debug!(%node, "no session to node; its attempts are sent again when it renews")
        }
    }
}

/// The name of a command, for logs.
fn command_kind(c: &Command) -> &'static str {
    match c {
        Command::RegisterNode(_) => "RegisterNode",
        Command::UpdateCapacity { .. } => "UpdateCapacity",
        Command::SetDraining { .. } => "SetDraining",
        Command::Evict { .. } => "Evict",
        Command::NodeLost { .. } => "NodeLost",
        Command::Submit(_) => "Submit",
        Command::Assign(_) => "Assign",
        Command::Started(_) => "Started",
        Command::Finished(_) => "Finished",
        Command::Cancel(_) => "Cancel",
        Command::Pause(_) => "Pause",
        Command::Resume(_) => "Resume",
        Command::Retry(_) => "Retry",
        Command::TimeoutWorkflow(_) => "TimeoutWorkflow",
        Command::Redrive(_) => "Redrive",
        Command::RedriveMany(_) => "RedriveMany",
        Command::Discard { .. } => "Discard",
        Command::Checkpoint { .. } => "Checkpoint",
        Command::ReleaseWorkers(_) => "ReleaseWorkers",
        Command::Collect { .. } => "Collect",
        Command::Audit { .. } => "Audit",
        Command::AuditResult { .. } => "AuditResult",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use troupe_clock::{Clock, ManualClock};

    #[test]
    fn a_new_leader_settles_3s_after_it_noticed_its_term_and_only_without_a_stall() {
        let clock = ManualClock::new(0);
        let since = clock.now();
        clock.advance(Duration::from_millis(SETTLE_MS - 1));
        assert!(!settled(since, clock.now(), true));
        clock.advance(Duration::from_millis(1));
        assert!(settled(since, clock.now(), true));
        assert!(!settled(since, clock.now(), false), "a stall unsettles it");
        assert!(
            !settled(clock.now(), since, true),
            "a clock that went back is not later"
        );
    }
}
