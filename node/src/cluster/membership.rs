//! Membership: the ractor_cluster NodeServer (cookie-authenticated sessions) and the loop that
//! keeps sessions to the servers open. ractor_cluster never reconnects by itself, so every
//! `every` this actor lists the open sessions and dials the servers it is missing (with
//! backoff per address). To avoid duplicate sessions, a server dials only servers whose
//! address sorts after its own; workers dial every server. It also follows every session's
//! handshake ([`super::sessions`]): it logs what each came to, and a node that every server
//! refuses for its cookie (and none ever accepted) raises that as fatal: the process exits.

use super::sessions::{Handshakes, SessionEvent, Subscription};
use super::{ClusterConfig, Role};
use crate::fatal::Fatal;
use ractor::{Actor, ActorProcessingErr, ActorRef, call_t};
use ractor_cluster::{NodeServer, NodeServerMessage};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

pub enum MembershipMsg {
    Tick,
    /// Tear down the session with this ractor node id (a suspected peer); it is dialed again.
    Suspect(u64),
    /// A session opened, authenticated or closed (from the node server).
    Session(SessionEvent),
}

/// The registered name of the membership actor (the tree registers it under this name).
pub const MEMBERSHIP_ACTOR: &str = "troupe.membership";

// Local only.
impl ractor::Message for MembershipMsg {}

pub struct Membership;

pub struct MembershipArgs {
    pub cluster: ClusterConfig,
    pub node: String,
    /// Raised when every server refuses this node's cookie.
    pub fatal: Fatal,
    /// Chaos mode: a `reset` partition drops the sessions with the nodes it names (a
    /// blackhole keeps them; its frames are dropped in `wire`).
    pub chaos: Option<std::sync::Arc<crate::chaos::Chaos>>,
    /// The node's clock: dial backoff and handshake judging.
    pub clock: troupe_clock::SharedClock,
}

pub struct MembershipState {
    clock: troupe_clock::SharedClock,
    server: ActorRef<NodeServerMessage>,
    tls: Option<super::tls::Tls>,
    targets: Vec<SocketAddr>,
    /// Next dial allowed per address, and the current backoff.
    backoff: BTreeMap<SocketAddr, (Instant, Duration)>,
    handshakes: Handshakes,
    /// Every server but this node: the peers whose refusals make it give up.
    servers: Vec<String>,
    fatal: Fatal,
    chaos: Option<std::sync::Arc<crate::chaos::Chaos>>,
}

const DIAL_BACKOFF_MAX: Duration = Duration::from_secs(2);
/// Inbound frame limit on every node (ractor_cluster drops a session on a larger frame).
pub const FRAME_BYTES_MAX: u64 = 96 << 20;

impl Actor for Membership {
    type Msg = MembershipMsg;
    type State = MembershipState;
    type Arguments = MembershipArgs;

    async fn pre_start(
        &self,
        me: ActorRef<MembershipMsg>,
        args: MembershipArgs,
    ) -> Result<MembershipState, ActorProcessingErr> {
        let c = &args.cluster;
        let tls = c.tls.as_ref().map(super::tls::Tls::load).transpose()?;
        let encryption = tls
            .as_ref()
            .map(|t| ractor_cluster::IncomingEncryptionMode::Tls(t.acceptor.clone()));
        let ns = NodeServer::new(
            c.listen.port(),
            c.cookie.clone(),
            args.node.clone(),
            c.listen.ip().to_string(),
            encryption,
            Some(ractor_cluster::node::NodeConnectionMode::Transitive),
        )
        .with_listen_addr(c.listen.ip())
        // Raft entries and snapshots can be large: every node accepts the same frame size.
        .with_max_inbound_frame_size(FRAME_BYTES_MAX);
        let (server, _) = Actor::spawn_linked(Some("troupe.cluster".into()), ns, (), me.get_cell())
            .await
            .map_err(|e| format!("cannot listen for the cluster on {}: {e}", c.listen))?;
        let targets = match c.role {
            // A worker, or a server joining a running group (the others do not know it yet).
            _ if c.role == Role::Worker || c.join_existing.is_some() => {
                c.servers().into_iter().filter(|s| *s != c.listen).collect()
            }
            Role::Worker => c.servers(),
            Role::Server => c.servers().into_iter().filter(|s| *s > c.listen).collect(),
        };
        subscribe(&server, me.clone())?;
        me.send_interval(Duration::from_millis(250), || MembershipMsg::Tick);
        let _ = me.cast(MembershipMsg::Tick);
        tracing::info!(listen = %c.listen, ?targets, "cluster transport up");
        Ok(MembershipState {
            clock: args.clock,
            server,
            tls,
            targets,
            backoff: BTreeMap::new(),
            handshakes: Handshakes::default(),
            servers: c
                .servers()
                .into_iter()
                .filter(|s| *s != c.listen)
                .map(|s| s.to_string())
                .collect(),
            fatal: args.fatal,
            chaos: args.chaos,
        })
    }

    async fn handle(
        &self,
        _me: ActorRef<MembershipMsg>,
        msg: MembershipMsg,
        st: &mut MembershipState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            MembershipMsg::Session(e) => {
                if let SessionEvent::Authenticated(s) = &e
                    && s.name.as_deref().is_some_and(|n| cut(st, n))
                {
                    drop_cut_sessions(st).await;
                }
                if let Some(note) = st.handshakes.event(e, st.clock.now()) {
                    note.log();
                }
            }
            MembershipMsg::Suspect(node_id) => suspect(st, node_id).await,
            MembershipMsg::Tick => {
                judge_handshakes(st);
                if st.chaos.as_ref().is_some_and(|c| c.resets_sessions()) {
                    drop_cut_sessions(st).await;
                }
                dial_missing(st).await;
            }
        }
        Ok(())
    }
}

/// Follows the node server's session events (they come back as `MembershipMsg::Session`).
fn subscribe(
    server: &ActorRef<NodeServerMessage>,
    me: ActorRef<MembershipMsg>,
) -> Result<(), ActorProcessingErr> {
    let forward = move |e| {
        let _ = me.cast(MembershipMsg::Session(e));
    };
    server
        .cast(NodeServerMessage::SubscribeToEvents {
            id: MEMBERSHIP_ACTOR.into(),
            subscription: Box::new(Subscription(forward)),
        })
        .map_err(|e| format!("cannot follow the cluster sessions: {e}").into())
}

async fn suspect(st: &MembershipState, node_id: u64) {
    let sessions = call_t!(st.server, NodeServerMessage::GetSessions, 1_000).unwrap_or_default();
    if let Some(s) = sessions.get(&node_id) {
        tracing::warn!(peer = %s.peer_addr, "tearing down the session of a suspected peer");
        s.actor.stop(Some("suspected: no lease answers".into()));
    }
}

/// Logs what the handshakes that failed came to; gives up when every server refuses this node.
fn judge_handshakes(st: &mut MembershipState) {
    for note in st.handshakes.judge(st.clock.now()) {
        note.log();
    }
    if let Some(why) = st.handshakes.refused_by_all(&st.servers)
        && !st.fatal.is_raised()
    {
        tracing::error!("{why}; exiting");
        st.fatal.raise(why);
    }
}

/// Whether a `reset` partition (chaos) cuts this node's session with `peer`.
fn cut(st: &MembershipState, peer: &str) -> bool {
    st.chaos
        .as_ref()
        .is_some_and(|c| c.resets_sessions_with(peer))
}

/// Stops every session with a node a `reset` partition cuts this one from: no Raft messages,
/// runs, reports or lease renewals cross until it heals (then the dial loop connects again).
async fn drop_cut_sessions(st: &MembershipState) {
    let sessions = call_t!(st.server, NodeServerMessage::GetSessions, 1_000).unwrap_or_default();
    for s in sessions.values() {
        if let Some(name) = s.peer_name.as_ref().map(|n| n.name.as_str())
            && cut(st, name)
        {
            tracing::debug!(peer = %name, "chaos partition: dropping the session");
            s.actor.stop(Some("chaos partition".into()));
        }
    }
}

/// Dials every target without a session (backoff per address, each dial in the background).
async fn dial_missing(st: &mut MembershipState) {
    // Cut from everyone: no dials (sessions others open are dropped as they authenticate).
    if st.chaos.as_ref().is_some_and(|c| c.resets_all()) {
        return;
    }
    let sessions = call_t!(st.server, NodeServerMessage::GetSessions, 1_000).unwrap_or_default();
    let open = connected(&sessions);
    let now = st.clock.now();
    for target in st.targets.clone() {
        if open.contains(&target.to_string()) {
            st.backoff.remove(&target);
        } else if due(&mut st.backoff, target, now) {
            dial(st.server.clone(), st.tls.clone(), target);
        }
    }
}

/// The addresses that have a session. A session is to a target when it was dialed there
/// (peer_addr) or when the peer says that is its listen address (an accepted session's
/// peer_addr is an ephemeral port): without the second, a server re-dialed peers it already
/// had, and each duplicate was refused in the handshake.
fn connected(
    sessions: &std::collections::HashMap<u64, ractor_cluster::node::NodeServerSessionInformation>,
) -> BTreeSet<String> {
    sessions
        .values()
        .flat_map(|s| {
            std::iter::once(s.peer_addr.clone()).chain(
                s.peer_name
                    .as_ref()
                    .map(|n| super::sessions::addr_key(&n.connection_string))
                    .filter(|c| !c.is_empty()),
            )
        })
        .collect()
}

/// Whether `target` may be dialed now; if so, its backoff doubles (100 ms up to 2 s).
fn due(
    backoff: &mut BTreeMap<SocketAddr, (Instant, Duration)>,
    target: SocketAddr,
    now: Instant,
) -> bool {
    let (next, delay) = backoff
        .get(&target)
        .copied()
        .unwrap_or((now, Duration::from_millis(100)));
    if now < next {
        return false;
    }
    backoff.insert(target, (now + delay, (delay * 2).min(DIAL_BACKOFF_MAX)));
    true
}

/// Dials in the background: a peer that is down must not stall the loop. Each dial gives up
/// after 1 s; how the handshake ends comes back as session events.
fn dial(server: ActorRef<NodeServerMessage>, tls: Option<super::tls::Tls>, target: SocketAddr) {
    tokio::spawn(async move {
        let dial = async {
            match tls {
                Some(t) => {
                    ractor_cluster::client_connect_enc(&server, target, t.connector, t.server_name)
                        .await
                }
                None => ractor_cluster::client_connect(&server, target).await,
            }
        };
        match tokio::time::timeout(Duration::from_secs(1), dial).await {
            Ok(Ok(())) => tracing::debug!(%target, "dialed"),
            Ok(Err(e)) => tracing::debug!(%target, error = %e, "dial failed"),
            Err(_) => tracing::debug!(%target, "dial timed out"),
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use troupe_clock::{Clock, ManualClock};

    #[test]
    fn dial_backoff_doubles_from_100ms_up_to_2s_on_the_clock() {
        let clock = ManualClock::new(0);
        let target: SocketAddr = "127.0.0.1:7101".parse().unwrap();
        let mut backoff = BTreeMap::new();
        let mut dials = Vec::new();
        let start = clock.now();
        for _ in 0..1_000 {
            if due(&mut backoff, target, clock.now()) {
                dials.push((clock.now() - start).as_millis() as u64);
            }
            clock.advance(Duration::from_millis(10));
        }
        let gaps: Vec<u64> = dials.windows(2).map(|w| w[1] - w[0]).collect();
        assert_eq!(gaps[..6], [100, 200, 400, 800, 1_600, 2_000]);
        assert!(gaps[6..].iter().all(|g| *g == 2_000), "{gaps:?}");
    }
}
