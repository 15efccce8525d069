//! Leases. Every node renews with the servers every `renew` (default 500 ms), sending the
//! attempts it holds. The leader keeps the last renewal per node in memory (renewals never go
//! through the log) and proposes `NodeLost` when a lease expires; a new leader first grants
//! every node a fresh lease. A node that cannot renew for `lease` stops all its attempts
//! (self-fencing) and registers again — a new epoch — once a leader answers.
//!
//! Time is the node's clock (`LeaseArgs::clock`, skewed by `troupe chaos skew-clock`); the
//! interval that drives renewals is tokio's. The decisions are pure functions of the `now` read
//! from that clock ([`must_fence`], [`silent_too_long`]).

use super::SERVERS_GROUP;
use super::wire::{PeerMsg, RenewReply, decode, encode};
use ractor::{Actor, ActorProcessingErr, ActorRef, pg, registry};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use troupe_actors::dispatcher::{DispatchMsg, Held};
use troupe_actors::sink::DISPATCHER_NAME;
use troupe_clock::SharedClock;

pub use troupe_actors::leases::LeaseTable;

pub enum LeaseMsg {
    Tick,
}

// Local only.
impl ractor::Message for LeaseMsg {}

pub struct LeaseKeeper;

pub struct LeaseArgs {
    pub renew: Duration,
    pub lease: Duration,
    /// Where the leader's API lives (learned from renewals; workers forward API calls there).
    pub leader_api: Arc<Mutex<String>>,
    /// The node's clock: when the lease was last renewed, and how long ago that is.
    pub clock: SharedClock,
}

/// Whether a node whose lease a leader last renewed at `renewed` fences itself at `now`: once
/// more than `lease - renew` has passed, one renewal before the leader may declare it lost.
pub fn must_fence(renewed: Instant, now: Instant, lease: Duration, renew: Duration) -> bool {
    now.saturating_duration_since(renewed) > lease.saturating_sub(renew)
}

/// Whether a server silent since `since` has been silent for more than a whole `lease` at `now`.
pub fn silent_too_long(since: Instant, now: Instant, lease: Duration) -> bool {
    now.saturating_duration_since(since) > lease
}

pub struct LeaseState {
    args: LeaseArgs,
    renewed: Instant,
    /// Sessions whose server has not answered, since when.
    silent: std::collections::BTreeMap<u64, Instant>,
}

impl LeaseState {
    /// A server that stays silent for a whole lease while its session is up is suspected (a
    /// frozen process keeps TCP alive): tear the session down so it is dialed afresh.
    fn suspect(&mut self, session: u64, answered: bool) {
        if answered {
            self.silent.remove(&session);
            return;
        }
        let now = self.args.clock.now();
        let since = *self.silent.entry(session).or_insert(now);
        if silent_too_long(since, now, self.args.lease) {
            self.silent.remove(&session);
            if let Some(m) = registry::where_is(super::membership::MEMBERSHIP_ACTOR) {
                tracing::warn!(
                    session,
                    "a server has not answered for a whole lease: dropping its session"
                );
                let _ = ActorRef::<super::membership::MembershipMsg>::from(m)
                    .cast(super::membership::MembershipMsg::Suspect(session));
            }
        }
    }
}

impl Actor for LeaseKeeper {
    type Msg = LeaseMsg;
    type State = LeaseState;
    type Arguments = LeaseArgs;

    async fn pre_start(
        &self,
        me: ActorRef<LeaseMsg>,
        args: LeaseArgs,
    ) -> Result<LeaseState, ActorProcessingErr> {
        me.send_interval(args.renew, || LeaseMsg::Tick);
        Ok(LeaseState {
            renewed: args.clock.now(),
            args,
            silent: Default::default(),
        })
    }

    async fn handle(
        &self,
        _me: ActorRef<LeaseMsg>,
        _msg: LeaseMsg,
        st: &mut LeaseState,
    ) -> Result<(), ActorProcessingErr> {
        let Some(dispatcher) =
            registry::where_is(DISPATCHER_NAME).map(ActorRef::<DispatchMsg>::from)
        else {
            return Ok(());
        };
        let Ok(held) = ractor::call_t!(dispatcher, DispatchMsg::Held, 1_000) else {
            return Ok(());
        };
        if held.epoch == 0 {
            // Fenced and registering again: nothing to renew.
            st.renewed = st.args.clock.now();
            return Ok(());
        }
        let payload = encode(&held);
        // A renewal counts from when it was sent (the leader's lease starts when it handles it).
        let sent = st.args.clock.now();
        let servers = pg::get_members(&SERVERS_GROUP.to_string());
        let timeout = st.args.renew.min(Duration::from_millis(400));
        let calls = servers.into_iter().map(|cell| {
            // The session a remote server is reached through (local: none).
            let session = match cell.get_id() {
                ractor::ActorId::Remote { node_id, .. } => Some(node_id),
                ractor::ActorId::Local(_) => None,
            };
            let peer = ActorRef::<PeerMsg>::from(cell);
            let payload = payload.clone();
            async move {
                (
                    session,
                    peer.call(|reply| PeerMsg::Renew(payload, reply), Some(timeout))
                        .await,
                )
            }
        });
        let answers = futures_join(calls).await;
        for (session, answer) in answers {
            let answered = matches!(answer, Ok(ractor::rpc::CallResult::Success(_)));
            if let Some(s) = session {
                st.suspect(s, answered);
            }
            let Ok(ractor::rpc::CallResult::Success(bytes)) = answer else {
                continue;
            };
            let Some(reply) = decode::<RenewReply>(&bytes) else {
                continue;
            };
            if !reply.leader {
                continue;
            }
            if !reply.leader_api.is_empty()
                && let Ok(mut api) = st.args.leader_api.lock()
            {
                *api = reply.leader_api.clone();
            }
            if reply.up && reply.epoch == held.epoch {
                st.renewed = sent;
            } else if reply.epoch >= held.epoch {
                // The leader declared this node lost (or it re-registered elsewhere): fence.
                tracing::warn!(
                    ours = held.epoch,
                    theirs = reply.epoch,
                    up = reply.up,
                    "the leader no longer knows this node's epoch"
                );
                troupe_actors::metrics::bump(&troupe_actors::metrics::LEASES.fenced);
                let _ = dispatcher.cast(DispatchMsg::Fence);
                st.renewed = st.args.clock.now();
                return Ok(());
            }
        }
        // Fence one renewal before the leader can declare this node lost, so its attempts are
        // stopped before they are started again elsewhere.
        let now = st.args.clock.now();
        if must_fence(st.renewed, now, st.args.lease, st.args.renew) {
            tracing::warn!(
                since_ms = now.saturating_duration_since(st.renewed).as_millis() as u64,
                "no leader renewed the lease (by this node's clock): fencing"
            );
            troupe_actors::metrics::bump(&troupe_actors::metrics::LEASES.fenced);
            let _ = dispatcher.cast(DispatchMsg::Fence);
            st.renewed = now;
        }
        Ok(())
    }
}

/// Runs the futures concurrently and returns their results in order.
async fn futures_join<F: std::future::Future + Send + 'static>(
    futs: impl Iterator<Item = F>,
) -> Vec<F::Output>
where
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futs.map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        if let Ok(v) = h.await {
            out.push(v);
        }
    }
    out
}

/// What renewals bring to the leader: the node is alive, and the attempts it holds.
pub fn held_of(bytes: &[u8]) -> Option<Held> {
    decode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use troupe_clock::{Clock, ManualClock, SkewedClock};

    const LEASE: Duration = Duration::from_secs(2);
    const RENEW: Duration = Duration::from_millis(500);

    #[test]
    fn a_node_fences_one_renewal_before_its_lease_can_expire() {
        let clock = ManualClock::new(0);
        let renewed = clock.now();
        clock.advance(LEASE - RENEW);
        assert!(
            !must_fence(renewed, clock.now(), LEASE, RENEW),
            "at t + 1.5 s: not yet"
        );
        clock.advance(Duration::from_millis(1));
        assert!(must_fence(renewed, clock.now(), LEASE, RENEW), "just after");
    }

    #[test]
    fn a_skew_ahead_fences_at_once_and_one_back_delays_the_fence_by_the_skew() {
        let manual = ManualClock::new(0);
        let clock = SkewedClock::new(manual.clone());
        let renewed = clock.now();
        manual.advance(Duration::from_millis(100));
        clock.set_offset_ms(5_000);
        assert!(
            must_fence(renewed, clock.now(), LEASE, RENEW),
            "5 s ahead: the lease looks long gone"
        );
        clock.set_offset_ms(-5_000);
        manual.advance(LEASE);
        assert!(
            !must_fence(renewed, clock.now(), LEASE, RENEW),
            "5 s behind: 2.1 s after the renewal it has not fenced (the leader may have declared it lost)"
        );
        // Healing the skew moves the clock forward by 5 s: the fence happens then.
        clock.set_offset_ms(0);
        assert!(must_fence(renewed, clock.now(), LEASE, RENEW));
    }

    #[test]
    fn a_server_is_suspected_after_a_whole_silent_lease() {
        let clock = ManualClock::new(0);
        let since = clock.now();
        clock.advance(LEASE);
        assert!(!silent_too_long(since, clock.now(), LEASE));
        clock.advance(Duration::from_millis(1));
        assert!(silent_too_long(since, clock.now(), LEASE));
    }
}
