//! # troupe-node — the daemon
//!
//! Wires a node: configuration ([`config`]), the supervision tree ([`tree`]), the executors that
//! run attempts ([`exec`]: processes and builtin handlers), and the HTTP API ([`api`]).
//!
//! Read in this order: `tree.rs` (what runs where), `exec/process.rs`, `api/handlers.rs`.

pub mod api;
pub mod capacity;
pub mod cluster;
pub mod config;
pub mod exec;
pub mod fatal;
pub mod janitor;
pub mod monitor;
pub mod tree;

pub use config::NodeConfig;
pub use tree::{RunningNode, start};

/// ractor_cluster's own lines, unless `RUST_LOG` names `ractor_cluster`: its warnings about
/// streams and TLS stay; its session lines do not. They call a duplicate session refused in the
/// handshake an "authentication failure" and log every session's opening and exit; the
/// membership actor logs what those mean instead (`cluster::sessions`).
const TRANSPORT_LOG_DEFAULTS: [&str; 3] = [
    "ractor_cluster=warn",
    "ractor_cluster::node=error",
    "ractor_cluster::node::node_session=warn",
];

/// Logs to stderr through `tracing` (`RUST_LOG` filters), and routes panics to it too.
pub fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let rust_log = std::env::var("RUST_LOG").unwrap_or_default();
    let mut filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,raft=warn"));
    if !rust_log.contains("ractor_cluster") {
        for d in TRANSPORT_LOG_DEFAULTS {
            filter = filter.add_directive(d.parse().expect("a static directive"));
        }
    }
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
    std::panic::set_hook(Box::new(|info| {
        tracing::error!(panic = %info, "panic (the supervisor decides what restarts)");
    }));
}
