//! # troupe-node — the daemon
//!
//! Wires a node: configuration ([`config`]), the supervision tree ([`tree`]), the executors that
//! run attempts ([`exec`]: processes and builtin handlers), and the HTTP API ([`api`]).
//!
//! Read in this order: `tree.rs` (what runs where), `exec/process.rs`, `api/handlers.rs`.

pub mod api;
pub mod capacity;
pub mod chaos;
pub mod cluster;
pub mod config;
pub mod exec;
pub mod fatal;
pub mod janitor;
pub mod metrics;
pub mod monitor;
pub mod notify;
pub mod otel;
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

/// How the node's log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// One line of text per event; ANSI colours only when the output is a terminal.
    #[default]
    Text,
    /// One JSON object per line (for log shippers): `timestamp`, `level`, `target`, `fields`
    /// (with `message`), and the span.
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("log format {other:?}: use text or json")),
        }
    }
}

/// Logs through `tracing` (`RUST_LOG` filters) to stderr, or to `file` (appended), and routes
/// panics to it too. Text goes without ANSI codes unless it goes to a terminal.
pub fn init_tracing(format: LogFormat, file: Option<&std::path::Path>) -> std::io::Result<()> {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    use tracing_subscriber::fmt::writer::BoxMakeWriter;
    let rust_log = std::env::var("RUST_LOG").unwrap_or_default();
    let mut filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,raft=warn"));
    if !rust_log.contains("ractor_cluster") {
        for d in TRANSPORT_LOG_DEFAULTS {
            filter = filter.add_directive(d.parse().expect("a static directive"));
        }
    }
    let (writer, ansi) = match file {
        Some(path) => {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)?;
            (BoxMakeWriter::new(std::sync::Mutex::new(f)), false)
        }
        None => (
            BoxMakeWriter::new(std::io::stderr),
            std::io::stderr().is_terminal(),
        ),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    let _ = match format {
        LogFormat::Text => builder.with_ansi(ansi).try_init(),
        LogFormat::Json => builder.json().with_ansi(false).try_init(),
    };
    std::panic::set_hook(Box::new(|info| {
        tracing::error!(panic = %info, "panic (the supervisor decides what restarts)");
    }));
    Ok(())
}
