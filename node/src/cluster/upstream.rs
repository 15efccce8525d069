//! A worker's upstream: the servers, over the cluster transport. Reports are cast to a server
//! (a follower forwards them to the leader inside raft; reports lost with a leader are sent
//! again with lease renewals). Registration is proposed once and confirmed by asking the
//! servers for the node's epoch.

use super::SERVERS_GROUP;
use super::wire::{PeerMsg, RenewReply, decode, encode};
use ractor::{ActorRef, pg};
use std::time::Duration;
use troupe_actors::dispatcher::Held;
use troupe_actors::upstream::{BoxFut, Upstream};
use troupe_scheduler::{Command, NodeInfo};

/// The servers, and the node's clock (when to send again, when to give up).
pub struct RemoteUpstream(pub troupe_clock::SharedClock);

/// How long a worker's registration may take to be confirmed before the dispatcher gives up.
const REGISTER_WITHIN: Duration = Duration::from_secs(60);

fn servers() -> Vec<ActorRef<PeerMsg>> {
    pg::get_members(&SERVERS_GROUP.to_string())
        .into_iter()
        .map(ActorRef::from)
        .collect()
}

/// The node's (epoch, up) as the leader sees it, if a leader answers.
async fn probe(node: &str) -> Option<(u64, bool)> {
    let held = encode(&Held {
        node: node.to_string(),
        epoch: 0,
        attempts: vec![],
        recent: vec![],
    });
    for s in servers() {
        let payload = held.clone();
        let Ok(ractor::rpc::CallResult::Success(bytes)) = s
            .call(
                |reply| PeerMsg::Renew(payload, reply),
                Some(Duration::from_millis(500)),
            )
            .await
        else {
            continue;
        };
        if let Some(r) = decode::<RenewReply>(&bytes).filter(|r| r.leader) {
            return Some((r.epoch, r.up));
        }
    }
    None
}

impl Upstream for RemoteUpstream {
    fn register(&self, mut info: NodeInfo) -> BoxFut<Result<u64, String>> {
        info.registration = troupe_actors::upstream::registration_nonce();
        let clock = self.0.clone();
        Box::pin(async move {
            let deadline = clock.now() + REGISTER_WITHIN;
            // The epoch before this registration, from the first answer (a re-sent copy of a
            // registration that already committed changes nothing, so compare with this one).
            let mut before = None;
            for round in 0usize.. {
                if clock.now() > deadline {
                    return Err(format!(
                        "no leader confirmed this node's registration within {}s",
                        REGISTER_WITHIN.as_secs()
                    ));
                }
                let Some((now, _)) = probe(&info.node).await else {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                };
                let before = *before.get_or_insert(now);
                // Each round through another server, in case a session is half-broken.
                let all = servers();
                if !all.is_empty() {
                    let cmds = encode(&vec![Command::RegisterNode(info.clone())]);
                    let _ = all[round % all.len()].cast(PeerMsg::Propose(cmds));
                }
                // Sent again if it has not committed (the same registration applies once).
                let sent = Some(clock.now());
                while !troupe_actors::upstream::resend_due(sent, clock.now()) {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    if let Some((epoch, true)) = probe(&info.node).await
                        && epoch > before
                    {
                        return Ok(epoch);
                    }
                }
            }
            unreachable!("the loop returns")
        })
    }

    fn report(&self, cmds: Vec<Command>) -> Result<(), String> {
        let all = servers();
        let Some(first) = all.first() else {
            return Err("no session to any server".into());
        };
        first
            .cast(PeerMsg::Propose(encode(&cmds)))
            .map_err(|e| e.to_string())
    }
}
