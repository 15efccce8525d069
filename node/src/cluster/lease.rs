//! Leases. Every node renews with the servers every `renew` (default 500 ms), sending the
//! attempts it holds. The leader keeps the last renewal per node in memory (renewals never go
//! through the log) and proposes `NodeLost` when a lease expires; a new leader first grants
//! every node a fresh lease. A node that cannot renew for `lease` stops all its attempts
//! (self-fencing) and registers again — a new epoch — once a leader answers.

use super::SERVERS_GROUP;
use super::wire::{PeerMsg, RenewReply, decode, encode};
use ractor::{Actor, ActorProcessingErr, ActorRef, pg, registry};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use troupe_actors::dispatcher::{DispatchMsg, Held};
use troupe_actors::sink::DISPATCHER_NAME;

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
}

pub struct LeaseState {
    args: LeaseArgs,
    renewed: Instant,
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
            args,
            renewed: Instant::now(),
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
            st.renewed = Instant::now();
            return Ok(());
        }
        let payload = encode(&held);
        let servers = pg::get_members(&SERVERS_GROUP.to_string());
        let timeout = st.args.renew.min(Duration::from_millis(400));
        let calls = servers.into_iter().map(|cell| {
            let peer = ActorRef::<PeerMsg>::from(cell);
            let payload = payload.clone();
            async move {
                peer.call(|reply| PeerMsg::Renew(payload, reply), Some(timeout))
                    .await
            }
        });
        let answers = futures_join(calls).await;
        for answer in answers {
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
                st.renewed = Instant::now();
            } else if reply.epoch >= held.epoch {
                // The leader declared this node lost (or it re-registered elsewhere): fence.
                tracing::warn!(
                    ours = held.epoch,
                    theirs = reply.epoch,
                    up = reply.up,
                    "the leader no longer knows this node's epoch"
                );
                let _ = dispatcher.cast(DispatchMsg::Fence);
                st.renewed = Instant::now();
                return Ok(());
            }
        }
        // Fence one renewal before the leader can declare this node lost, so its attempts are
        // stopped before they are started again elsewhere.
        if st.renewed.elapsed() > st.args.lease.saturating_sub(st.args.renew) {
            tracing::warn!(
                since_ms = st.renewed.elapsed().as_millis() as u64,
                "no leader renewed the lease"
            );
            let _ = dispatcher.cast(DispatchMsg::Fence);
            st.renewed = Instant::now();
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
