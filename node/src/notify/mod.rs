//! Alerts: signed JSON webhooks (`--notify URL`) when a workflow fails, times out or ends
//! degraded, and when one step's dead letters pass `--dlq-alert COUNT/WINDOW`.
//!
//! - [`detect`]: which events the applied state calls for (pure; every server runs it on the
//!   engine thread as a [`troupe_actors::machine::Observer`], only the leader's events go out).
//! - [`deliver`]: one bounded queue and sending task per URL, retries with backoff. The engine
//!   thread only pushes to a queue: a slow or dead receiver never holds up apply.
//! - [`sign`]: HMAC-SHA256 over `"<X-Troupe-Timestamp>.<body>"` in `X-Troupe-Signature`.
//!
//! Guarantee: at-least-once from the leader that applied the event, while a receiver answers
//! within the tries (about 4 minutes); a new leader sends the last 10 minutes' events again, so
//! receivers see duplicates after a leader change (drop them by `id`).

pub mod deliver;
pub mod detect;
pub mod sign;

use std::sync::Arc;
use troupe_actors::machine::Observer;
use troupe_scheduler::{Effect, State};

pub use detect::{Detector, DlqAlert, Event};

/// `--notify`, its key and `--dlq-alert`.
#[derive(Clone)]
pub struct NotifyConfig {
    pub urls: Vec<String>,
    /// The HMAC key (`--notify-secret-file` or `$TROUPE_NOTIFY_SECRET`).
    pub key: Arc<Vec<u8>>,
    pub dlq: Option<DlqAlert>,
}

impl std::fmt::Debug for NotifyConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NotifyConfig")
            .field("urls", &self.urls)
            .field("key", &"***")
            .field("dlq", &self.dlq)
            .finish()
    }
}

impl NotifyConfig {
    /// Checks the URLs (http:// or https:// with a host) and the key.
    pub fn new(urls: Vec<String>, key: Vec<u8>, dlq: Option<DlqAlert>) -> Result<Self, String> {
        for u in &urls {
            let uri: hyper::Uri = u
                .parse()
                .map_err(|e| format!("--notify {u:?} is not a valid URL: {e}"))?;
            if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
                return Err(format!(
                    "--notify {u:?} must be http:// or https:// and name a host"
                ));
            }
        }
        if key.is_empty() {
            return Err(
                "--notify needs a signing key: --notify-secret-file FILE or $TROUPE_NOTIFY_SECRET"
                    .into(),
            );
        }
        Ok(NotifyConfig {
            urls,
            key: Arc::new(key),
            dlq,
        })
    }
}

/// The sending side, started once per process (the queues outlive restarts of the Raft facade).
#[derive(Clone)]
pub struct Notifier {
    outboxes: Arc<Vec<Arc<deliver::Outbox>>>,
    dlq: Option<DlqAlert>,
}

impl Notifier {
    /// Starts one sending task per URL (call inside the runtime).
    pub fn start(cfg: &NotifyConfig) -> Notifier {
        let outboxes = cfg
            .urls
            .iter()
            .map(|u| deliver::start(u.clone(), cfg.key.clone()))
            .collect();
        Notifier {
            outboxes: Arc::new(outboxes),
            dlq: cfg.dlq,
        }
    }

    /// A fresh observer for the engine hook (each open of the Raft log makes one).
    pub fn observer(&self, node: String) -> Box<dyn Observer> {
        Box::new(AlertObserver {
            detector: Detector::new(node, self.dlq),
            outboxes: self.outboxes.clone(),
        })
    }
}

struct AlertObserver {
    detector: Detector,
    outboxes: Arc<Vec<Arc<deliver::Outbox>>>,
}

impl Observer for AlertObserver {
    fn observe(&mut self, state: &State, effects: &[Effect], now_ms: u64, is_leader: bool) {
        for e in self.detector.step(state, effects, now_ms, is_leader) {
            tracing::info!(event = %e.id, kind = e.kind, "alert");
            for o in self.outboxes.iter() {
                o.push(e.clone());
            }
        }
    }
}
