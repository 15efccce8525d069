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

/// Logs to stderr through `tracing` (`RUST_LOG` filters), and routes panics to it too.
pub fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,raft=warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
    std::panic::set_hook(Box::new(|info| {
        tracing::error!(panic = %info, "panic (the supervisor decides what restarts)");
    }));
}
