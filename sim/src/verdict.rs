//! The end-of-run checks, over the history of client operations and every replica's state.

use crate::check::Checks;
use crate::client::{Clients, Op, OpKind, OpOutcome};
use crate::world::World;
use std::collections::{BTreeMap, BTreeSet};
use troupe_scheduler::history;
use troupe_scheduler::state::WfStatus;
use troupe_scheduler::{Output, State};

/// One server's state at the end of a run.
pub struct View<'a> {
    pub id: u64,
    pub applied: u64,
    pub state: &'a State,
}

/// G1, G2, G5 (acked cancels) and G7 after the run settled (or did not).
pub fn check(w: &mut World, unsettled: Option<String>) {
    let views: Vec<View> = w
        .replicas
        .iter()
        .map(|r| View {
            id: r.id,
            applied: r.applied,
            state: &r.state,
        })
        .collect();
    check_views(w.now, &mut w.checks, &w.clients, &views, unsettled);
}

/// [`check`] over any world's servers (`views`, one per server, the first one the reference).
pub fn check_views(
    now: u64,
    checks: &mut Checks,
    clients: &Clients,
    views: &[View],
    unsettled: Option<String>,
) {
    if let Some(why) = unsettled {
        checks.fail(
            now,
            format!("G7: did not settle after the faults healed: {why}"),
        );
        return;
    }
    // G7: one applied index and one state everywhere.
    let first = &views[0];
    for r in &views[1..] {
        checks.checked += 1;
        if r.applied != first.applied || r.state.hash() != first.state.hash() {
            checks.fail(
                now,
                format!(
                    "G7: r{} (index {}) and r{} (index {}) differ after heal",
                    r.id, r.applied, first.id, first.applied
                ),
            );
        }
    }
    let mut by_key: BTreeMap<&str, Vec<(u64, usize)>> = BTreeMap::new();
    for op in clients.ops.values() {
        let OpOutcome::Ok(out) = &op.outcome else {
            continue;
        };
        match (&op.kind, out) {
            (OpKind::Submit { variant, key }, Output::Submitted { id, .. }) => {
                if let Some(k) = key {
                    by_key.entry(k).or_default().push((*id, *variant));
                }
                // G1: acknowledged means present everywhere, and finished after heal.
                for r in views {
                    checks.checked += 1;
                    match r.state.workflows.get(id) {
                        None => checks.fail(
                            now,
                            format!("G1: op{} acked wf {id}; r{} does not have it", op.id, r.id),
                        ),
                        Some(wf) if !wf.status.is_terminal() => checks.fail(
                            now,
                            format!("G1: acked wf {id} is {} on r{}", wf.status.name(), r.id),
                        ),
                        Some(_) => {}
                    }
                }
            }
            (OpKind::Submit { key: Some(_), .. }, Output::Conflict(_)) => {}
            (OpKind::Submit { .. }, other) => {
                checks.fail(now, format!("op{}: a submit answered {other:?}", op.id))
            }
            (OpKind::Cancel(id), Output::Done) => {
                // G5: an acknowledged cancel is what every replica shows (nothing retries it).
                for r in views {
                    checks.checked += 1;
                    let status = r.state.workflows.get(id).map(|wf| wf.status);
                    if status != Some(WfStatus::Cancelled) {
                        checks.fail(
                            now,
                            format!(
                                "G5: op{} cancelled wf {id}; r{} shows {status:?}",
                                op.id, r.id
                            ),
                        );
                    }
                }
            }
            (OpKind::Cancel(_) | OpKind::Read(_), _) => {}
        }
    }
    reads(clients.ops.values(), views[0].state, checks, now);
    // G2: one workflow per key, and only the spec that first used it gets it.
    for (key, acks) in &by_key {
        checks.checked += 1;
        if acks.windows(2).any(|p| p[0] != p[1]) {
            checks.fail(
                now,
                format!("G2: key {key} acknowledged as (workflow, spec) {acks:?}"),
            );
        }
        for r in views {
            checks.checked += 1;
            let ids: Vec<u64> = r
                .state
                .workflows
                .values()
                .filter(|wf| wf.idempotency_key.as_deref() == Some(*key))
                .map(|wf| wf.id)
                .collect();
            if ids != [acks[0].0] {
                checks.fail(
                    now,
                    format!(
                        "G2: key {key}: r{} holds workflows {ids:?}, acked {}",
                        r.id, acks[0].0
                    ),
                );
            }
        }
    }
    // G1, G2, G5 once more through the history checker the real-process tests use: acked
    // submits present, one workflow and one spec per key, and the submits and cancels on each
    // workflow linearizable against its status model.
    let present: BTreeSet<String> = first
        .state
        .workflows
        .keys()
        .map(|id| id.to_string())
        .collect();
    let report = history::check(&clients.history(), Some(&present));
    checks.checked += report.workflows_checked as u64;
    for v in &report.violations {
        checks.fail(now, format!("history: {v:?}"));
    }
    for wf in &report.unchecked {
        checks.fail(
            now,
            format!("history: wf {wf}: too many operations to search"),
        );
    }
    for r in views {
        let mut keys: BTreeMap<&str, u32> = BTreeMap::new();
        for wf in r.state.workflows.values() {
            if let Some(k) = wf.idempotency_key.as_deref() {
                *keys.entry(k).or_default() += 1;
            }
        }
        for (k, n) in keys {
            checks.checked += 1;
            if n > 1 {
                checks.fail(
                    now,
                    format!("G2: r{} holds {n} workflows under key {k}", r.id),
                );
            }
        }
    }
}

/// G5: status reads are linearizable against the writes and reads around them. A read sees
/// every submit and cancel acknowledged before it was invoked; a terminal status it shows is
/// the one the workflow ends with (terminal is final, so a later read cannot show another);
/// it shows `Cancelled` only if a cancel was invoked before the read completed.
fn reads<'a>(
    ops: impl Iterator<Item = &'a Op> + Clone,
    end: &State,
    checks: &mut Checks,
    now: u64,
) {
    for r in ops.clone() {
        let (OpKind::Read(wf), OpOutcome::Status(seen)) = (&r.kind, &r.outcome) else {
            continue;
        };
        checks.checked += 1;
        let before = |o: &Op| o.complete_ms.is_some_and(|c| c < r.invoke_ms);
        let acked_submit = ops.clone().any(|o| {
            before(o)
                && matches!(&o.outcome, OpOutcome::Ok(Output::Submitted { id, .. }) if id == wf)
        });
        let acked_cancel = ops.clone().any(|o| {
            before(o) && o.kind == OpKind::Cancel(*wf) && o.outcome == OpOutcome::Ok(Output::Done)
        });
        let final_status = end.workflows.get(wf).map(|w| w.status);
        let cancel_invoked = ops.clone().any(|o| {
            o.kind == OpKind::Cancel(*wf) && r.complete_ms.is_some_and(|c| o.invoke_ms < c)
        });
        let why = match *seen {
            None if acked_submit => Some("misses a workflow acknowledged before it"),
            Some(s) if acked_cancel && s != WfStatus::Cancelled => {
                Some("misses a cancel acknowledged before it")
            }
            Some(s) if s.is_terminal() && final_status != Some(s) => {
                Some("shows a terminal status the workflow does not end with")
            }
            Some(WfStatus::Cancelled) if !cancel_invoked => {
                Some("shows a cancel nobody had asked for yet")
            }
            _ => None,
        };
        if let Some(why) = why {
            checks.fail(
                now,
                format!(
                    "G5: read op{} of wf {wf} (invoked {}) saw {seen:?}: {why} (ends {final_status:?})",
                    r.id, r.invoke_ms
                ),
            );
        }
    }
}
