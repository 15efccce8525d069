//! Cluster sessions in words: what each session's handshake came to, and whether the cluster
//! refuses this node as a whole.
//!
//! ractor_cluster shows a cookie mismatch only as a session that closes during its handshake,
//! and it closes duplicate sessions the same way (two nodes dialing each other at once, a peer
//! dialed again after a suspicion or a restart, transitive connections), logging both as an
//! "authentication failure". So a session that closes after the peer named itself but before
//! it was authenticated is judged [`GRACE`] later: if another session to that peer is up by
//! then it was a duplicate (debug); otherwise the two nodes' cookies differ (a warning naming
//! the peer). A node that no peer ever accepted, and that every server refused
//! [`REFUSALS_TO_EXIT`] times, cannot join: [`Handshakes::refused_by_all`] says why, and the
//! membership actor makes the process exit with it.

use ractor_cluster::NodeEventSubscription;
use ractor_cluster::node::NodeServerSessionInformation;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

/// How long a session that closed mid-handshake waits to be judged (a duplicate's twin has
/// authenticated by then).
pub const GRACE: Duration = Duration::from_secs(1);
/// Refusals by every server, with no peer ever accepting, before the node gives up.
pub const REFUSALS_TO_EXIT: u32 = 3;
/// A peer that keeps refusing is warned about again after this long (debug in between).
const REWARN: Duration = Duration::from_secs(30);

/// One cluster session, as the node server reports it.
#[derive(Clone, Debug, PartialEq)]
pub struct Session {
    /// The node server's id of the session.
    pub id: u64,
    /// Accepted here (the peer dialed).
    pub inbound: bool,
    /// The peer's name (`node-…@host`), once it sent it in the handshake.
    pub name: Option<String>,
    /// The peer's cluster address: the listen address it names, else the address dialed.
    pub peer: String,
}

impl Session {
    pub fn of(info: &NodeServerSessionInformation) -> Session {
        let named = info
            .peer_name
            .as_ref()
            .map(|n| n.connection_string.as_str())
            .filter(|c| !c.is_empty());
        Session {
            id: info.node_id,
            inbound: info.is_server,
            name: info.peer_name.as_ref().map(|n| n.name.clone()),
            peer: addr_key(named.unwrap_or(&info.peer_addr)),
        }
    }
}

/// `host:port` as a `SocketAddr` prints it (a peer names itself `::1:7500`; we know it as
/// `[::1]:7500`), or the text as it is.
pub fn addr_key(s: &str) -> String {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return a.to_string();
    }
    s.rsplit_once(':')
        .and_then(|(ip, port)| {
            Some(SocketAddr::new(
                ip.parse::<IpAddr>().ok()?,
                port.parse().ok()?,
            ))
        })
        .map(|a| a.to_string())
        .unwrap_or_else(|| s.to_string())
}

#[derive(Clone, Debug, PartialEq)]
pub enum SessionEvent {
    Opened(Session),
    Authenticated(Session),
    Closed(Session),
}

/// Forwards the node server's session events (its callbacks must not block).
pub struct Subscription<F>(pub F);

impl<F: Fn(SessionEvent) + Send + 'static> NodeEventSubscription for Subscription<F> {
    fn node_session_opened(&self, ses: NodeServerSessionInformation) {
        (self.0)(SessionEvent::Opened(Session::of(&ses)));
    }
    fn node_session_disconnected(&self, ses: NodeServerSessionInformation) {
        (self.0)(SessionEvent::Closed(Session::of(&ses)));
    }
    fn node_session_authenticated(&self, ses: NodeServerSessionInformation) {
        (self.0)(SessionEvent::Authenticated(Session::of(&ses)));
    }
}

/// What a session event means, for the log.
#[derive(Clone, Debug, PartialEq)]
pub enum Note {
    /// The first authenticated session to this peer.
    Up { peer: String, name: String },
    /// Its last authenticated session closed.
    Down { peer: String, name: String },
    /// One of two sessions to the same peer was dropped; the other is up.
    Duplicate { peer: String },
    /// Closed before the peer named itself (it died, or refused a duplicate).
    Dropped { peer: String },
    /// The peer and this node have different cookies. `warn`: the first time, or `REWARN`
    /// after the last warning.
    Refused {
        peer: String,
        name: String,
        inbound: bool,
        count: u32,
        warn: bool,
    },
}

impl Note {
    /// Writes the note to the log, at the level it deserves.
    pub fn log(&self) {
        match self {
            Note::Up { peer, name } => tracing::info!(%peer, node = %name, "cluster session up"),
            Note::Down { peer, name } => {
                tracing::info!(%peer, node = %name, "cluster session closed; it is dialed again")
            }
            Note::Duplicate { peer } => tracing::debug!(
                %peer,
                "a duplicate cluster session was dropped in its handshake (another one is up)"
            ),
            Note::Dropped { peer } => {
                tracing::debug!(%peer, "a cluster connection closed before its handshake")
            }
            Note::Refused {
                peer,
                name,
                inbound,
                count,
                warn,
            } => {
                let who = if *inbound {
                    format!("refused a handshake from {peer}")
                } else {
                    format!("{peer} refused this node's handshake")
                };
                if *warn {
                    tracing::warn!(node = %name, refusals = count, "{who}: its cookie differs from this node's (--cookie / TROUPE_COOKIE)");
                } else {
                    tracing::debug!(node = %name, refusals = count, "{who} again: the cookies differ");
                }
            }
        }
    }
}

#[derive(Default)]
struct Refusals {
    count: u32,
    warned: Option<Instant>,
}

/// The sessions' handshakes, judged (pure: the caller gives the time and logs the notes).
#[derive(Default)]
pub struct Handshakes {
    /// Open sessions, and whether each authenticated.
    open: BTreeMap<u64, (Session, bool)>,
    /// Closed during the handshake after the peer named itself; judged after `GRACE`.
    closing: Vec<(Instant, Session)>,
    /// Refusals by peer address, until that peer accepts.
    refused: BTreeMap<String, Refusals>,
    /// Some peer authenticated a session with this node (ever).
    accepted: bool,
}

impl Handshakes {
    pub fn event(&mut self, e: SessionEvent, now: Instant) -> Option<Note> {
        match e {
            SessionEvent::Opened(s) => {
                self.open.insert(s.id, (s, false));
                None
            }
            SessionEvent::Authenticated(s) => self.authenticated(s),
            SessionEvent::Closed(s) => self.closed(s, now),
        }
    }

    fn authenticated(&mut self, s: Session) -> Option<Note> {
        self.accepted = true;
        self.refused.remove(&s.peer);
        let name = s.name.clone().unwrap_or_default();
        let first = !self.up_with(&name);
        let peer = s.peer.clone();
        self.open.insert(s.id, (s, true));
        first.then_some(Note::Up { peer, name })
    }

    fn closed(&mut self, s: Session, now: Instant) -> Option<Note> {
        let authenticated = self.open.remove(&s.id).is_some_and(|(_, a)| a);
        let Some(name) = s.name.clone() else {
            return Some(Note::Dropped { peer: s.peer });
        };
        match (authenticated, self.up_with(&name)) {
            (true, false) => Some(Note::Down { peer: s.peer, name }),
            (true, true) => Some(Note::Duplicate { peer: s.peer }),
            (false, _) => {
                self.closing.push((now, s));
                None
            }
        }
    }

    /// Judges the sessions that closed mid-handshake at least `GRACE` ago.
    pub fn judge(&mut self, now: Instant) -> Vec<Note> {
        let (due, wait): (Vec<_>, Vec<_>) = std::mem::take(&mut self.closing)
            .into_iter()
            .partition(|(at, _)| now.duration_since(*at) >= GRACE);
        self.closing = wait;
        due.into_iter()
            .map(|(_, s)| self.judge_one(s, now))
            .collect()
    }

    fn judge_one(&mut self, s: Session, now: Instant) -> Note {
        let name = s.name.unwrap_or_default();
        if self.up_with(&name) {
            return Note::Duplicate { peer: s.peer };
        }
        let r = self.refused.entry(s.peer.clone()).or_default();
        r.count += 1;
        let warn = r.warned.is_none_or(|w| now.duration_since(w) >= REWARN);
        if warn {
            r.warned = Some(now);
        }
        Note::Refused {
            peer: s.peer,
            name,
            inbound: s.inbound,
            count: r.count,
            warn,
        }
    }

    /// Why this node cannot join, when no peer ever accepted it and every one of `servers`
    /// refused it `REFUSALS_TO_EXIT` times.
    pub fn refused_by_all(&self, servers: &[String]) -> Option<String> {
        let all = !servers.is_empty()
            && servers.iter().all(|s| {
                self.refused
                    .get(s)
                    .is_some_and(|r| r.count >= REFUSALS_TO_EXIT)
            });
        (all && !self.accepted).then(|| {
            format!(
                "every server refused this node's handshake ({}): this node's cookie differs from theirs; give it the cluster's cookie (--cookie or TROUPE_COOKIE)",
                servers.join(", ")
            )
        })
    }

    fn up_with(&self, name: &str) -> bool {
        self.open
            .values()
            .any(|(s, a)| *a && s.name.as_deref() == Some(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(id: u64, inbound: bool, name: Option<&str>, peer: &str) -> Session {
        Session {
            id,
            inbound,
            name: name.map(str::to_string),
            peer: peer.to_string(),
        }
    }

    /// A dialed session that the peer closes on our challenge reply.
    fn refused_once(h: &mut Handshakes, id: u64, peer: &str, at: Instant) {
        let ses = s(id, false, Some(&format!("node-{peer}")), peer);
        h.event(SessionEvent::Opened(ses.clone()), at);
        assert_eq!(h.event(SessionEvent::Closed(ses), at), None);
    }

    #[test]
    fn peers_name_their_address_as_a_socket_address_prints_it() {
        assert_eq!(addr_key("127.0.0.1:7500"), "127.0.0.1:7500");
        assert_eq!(addr_key("::1:7500"), "[::1]:7500");
        assert_eq!(addr_key("external"), "external");
    }

    #[test]
    fn a_duplicate_closed_in_its_handshake_is_not_a_refusal() {
        let (mut h, t) = (Handshakes::default(), Instant::now());
        let a = s(1, false, Some("node-a"), "10.0.0.1:7500");
        let b = s(2, true, Some("node-a"), "10.0.0.1:7500");
        h.event(SessionEvent::Opened(a.clone()), t);
        h.event(SessionEvent::Opened(b.clone()), t);
        assert_eq!(h.event(SessionEvent::Closed(b), t), None);
        // Its twin authenticates within the grace.
        assert!(matches!(
            h.event(SessionEvent::Authenticated(a.clone()), t),
            Some(Note::Up { .. })
        ));
        assert_eq!(h.judge(t), vec![]);
        assert_eq!(
            h.judge(t + GRACE),
            vec![Note::Duplicate {
                peer: "10.0.0.1:7500".into()
            }]
        );
        assert_eq!(h.refused_by_all(&["10.0.0.1:7500".into()]), None);
        // The session itself closing is news; a second authenticated one closing is not.
        let c = s(3, true, Some("node-a"), "10.0.0.1:7500");
        h.event(SessionEvent::Authenticated(c.clone()), t);
        assert!(matches!(
            h.event(SessionEvent::Closed(c), t),
            Some(Note::Duplicate { .. })
        ));
        assert!(matches!(
            h.event(SessionEvent::Closed(a), t),
            Some(Note::Down { .. })
        ));
    }

    #[test]
    fn a_connection_closed_before_the_peer_named_itself_is_only_dropped() {
        let (mut h, t) = (Handshakes::default(), Instant::now());
        let a = s(1, false, None, "10.0.0.1:7500");
        h.event(SessionEvent::Opened(a.clone()), t);
        assert!(matches!(
            h.event(SessionEvent::Closed(a), t),
            Some(Note::Dropped { .. })
        ));
        assert_eq!(h.judge(t + GRACE), vec![]);
    }

    #[test]
    fn every_server_refusing_a_node_never_accepted_is_the_reason_to_exit() {
        let (mut h, t) = (Handshakes::default(), Instant::now());
        let servers: Vec<String> = vec!["10.0.0.1:7500".into(), "10.0.0.2:7500".into()];
        for round in 0..REFUSALS_TO_EXIT as u64 {
            refused_once(&mut h, 2 * round, &servers[0], t);
            refused_once(&mut h, 2 * round + 1, &servers[1], t);
        }
        let notes = h.judge(t + GRACE);
        assert_eq!(notes.len(), 2 * REFUSALS_TO_EXIT as usize);
        // Warned once per peer, then quiet.
        let warned = notes
            .iter()
            .filter(|n| matches!(n, Note::Refused { warn: true, .. }))
            .count();
        assert_eq!(warned, 2);
        let why = h.refused_by_all(&servers).expect("refused by all");
        assert!(
            why.contains("10.0.0.1:7500, 10.0.0.2:7500") && why.contains("cookie"),
            "{why}"
        );
    }

    #[test]
    fn one_peer_accepting_keeps_the_node_whatever_the_others_do() {
        let (mut h, t) = (Handshakes::default(), Instant::now());
        let servers: Vec<String> = vec!["10.0.0.1:7500".into(), "10.0.0.2:7500".into()];
        let ok = s(100, true, Some("node-b"), &servers[1]);
        h.event(SessionEvent::Authenticated(ok.clone()), t);
        h.event(SessionEvent::Closed(ok), t);
        for round in 0..10 {
            refused_once(&mut h, 2 * round, &servers[0], t);
            refused_once(&mut h, 2 * round + 1, &servers[1], t);
        }
        h.judge(t + GRACE);
        assert_eq!(h.refused_by_all(&servers), None);
    }

    #[test]
    fn refusals_by_only_some_servers_are_not_enough() {
        let (mut h, t) = (Handshakes::default(), Instant::now());
        let servers: Vec<String> = vec!["10.0.0.1:7500".into(), "10.0.0.2:7500".into()];
        for round in 0..10 {
            refused_once(&mut h, round, &servers[0], t);
        }
        h.judge(t + GRACE);
        assert_eq!(h.refused_by_all(&servers), None);
        assert_eq!(h.refused_by_all(&[]), None);
    }
}
