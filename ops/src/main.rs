//! `troupe` — the one binary: the embedded node (`troupe dev`), the CLI for its API, and the
//! benchmark (`troupe bench`).

mod bench;
mod bench_cluster;
mod bench_placement;
mod bench_soak;
mod bench_warm;
mod chaos_cli;
mod chaos_experiment;
mod chaos_run;
mod chaos_table;
mod client;
mod commands;
mod dlq_cli;
mod local_cluster;
mod logs_cli;
mod progress;

use clap::{Parser, Subcommand};

/// mimalloc instead of glibc's malloc: a node allocates and frees many small objects per
/// item (commands, task entries, run specs); on the no-op worker bench glibc's malloc and
/// free (with `malloc_consolidate`) took about a quarter of the node's time.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "troupe",
    version,
    about = "Troupe: a self-healing scheduler for AI workflows"
)]
struct Cli {
    /// API of the node to talk to.
    #[arg(
        long,
        global = true,
        env = "TROUPE_API",
        default_value = "http://127.0.0.1:7070"
    )]
    api: String,
    /// Print JSON instead of text (for scripts).
    #[arg(long, global = true)]
    json: bool,
    /// API token (sent as `Authorization: Bearer TOKEN`); prefer the variable (`ps` shows arguments).
    #[arg(long, global = true, env = "TROUPE_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// The CA certificate (PEM) that signed the API's certificate, for an https:// --api.
    #[arg(long, global = true, env = "TROUPE_CA", value_name = "FILE")]
    ca: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the embedded single node (server + worker) with its data in a local folder.
    Dev(DevArgs),
    /// Run one member of a cluster (`--server` or `--worker`).
    Node(NodeArgs),
    /// Submit a workflow spec (TOML).
    Submit {
        file: PathBuf,
        /// Override a declared param: --param shards=10 (JSON values are parsed, the rest are strings).
        #[arg(long = "param", value_name = "NAME=VALUE")]
        params: Vec<String>,
        /// Submitting again with the same key returns the same workflow.
        #[arg(long)]
        idempotency_key: Option<String>,
        /// Follow progress until the workflow finishes.
        #[arg(long)]
        wait: bool,
    },
    /// List workflows, or show one.
    Status {
        id: Option<String>,
        /// Only workflows in this status (running, succeeded, degraded, failed, cancelled, timed_out).
        #[arg(long)]
        filter: Option<String>,
    },
    /// Print a task's log (stdout by default).
    Logs {
        id: String,
        #[arg(long)]
        step: String,
        #[arg(long)]
        item: Option<u32>,
        #[arg(long)]
        attempt: Option<u32>,
        #[arg(long)]
        stderr: bool,
        /// Keep printing what a running attempt writes until it ends.
        #[arg(long, short = 'f')]
        follow: bool,
    },
    /// Cancel a workflow: running attempts are stopped.
    Cancel { id: String },
    /// Pause a workflow: no new attempts start; running ones finish.
    Pause { id: String },
    /// Resume a paused workflow.
    Resume { id: String },
    /// Retry a failed, cancelled or timed-out workflow from where it failed.
    Retry { id: String },
    /// Nodes with their capacity, allocation, GPUs and state.
    Nodes,
    /// Drain a node: it takes no new work; running attempts finish (`--undo` returns it to service).
    Drain {
        node: String,
        /// After this long (e.g. 30s), attempts still running there are stopped and requeued elsewhere.
        #[arg(long)]
        deadline: Option<String>,
        #[arg(long)]
        undo: bool,
    },
    /// The Raft group's servers; add or remove one at run time.
    Servers {
        #[command(subcommand)]
        cmd: Option<ServersCmd>,
    },
    /// The dead-letter queue: list (with filters), redrive or discard in bulk.
    Dlq {
        #[command(subcommand)]
        cmd: Option<DlqCmd>,
        #[command(flatten)]
        filter: dlq_cli::FilterArgs,
    },
    /// One item's path through the steps: status, attempts, node, duration, error, log.
    Item {
        /// The workflow (wf-12).
        id: String,
        /// The item's index (from 0).
        index: u32,
    },
    /// Chaos engineering: inject faults (kill, pause, partition, slow-disk, skew-clock), run
    /// experiments, verify the invariants (a cluster started with --fault-injection).
    Chaos(chaos_cli::ChaosArgs),
    /// Measure Troupe on this machine (starts its own nodes; prints figures).
    Bench(bench::BenchArgs),
    /// Benchmarks only: a no-op worker (the worker-step wire format, answering each task with
    /// its item) in Rust, so `troupe bench --only warm-noop` measures Troupe, not a worker's
    /// JSON parsing.
    #[command(hide = true)]
    BenchWorker,
}

#[derive(Subcommand)]
enum ServersCmd {
    /// Add a voter (start it first: `troupe node --server --join-existing ID ...`).
    Add { raft_id: u64 },
    /// Remove a voter.
    Remove { raft_id: u64 },
}

#[derive(Subcommand)]
pub enum DlqCmd {
    /// List dead letters (the default): filter with --workflow, --step, --grep, --since.
    List {
        #[command(flatten)]
        filter: dlq_cli::FilterArgs,
        /// Most entries to print.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Skip this many matching entries (paging).
        #[arg(long, default_value_t = 0)]
        offset: usize,
    },
    /// Redrive dead letters (ids, a filter, or --all) in one command: each item runs again,
    /// then through every step after it.
    Redrive {
        ids: Vec<u64>,
        #[command(flatten)]
        filter: dlq_cli::FilterArgs,
        /// Every dead letter in the queue.
        #[arg(long)]
        all: bool,
    },
    /// Give up on dead letters (ids, a filter, or --all): their items are `discarded`.
    Discard {
        ids: Vec<u64>,
        #[command(flatten)]
        filter: dlq_cli::FilterArgs,
        #[arg(long)]
        all: bool,
        /// Why (kept in the workflow history).
        #[arg(long)]
        reason: String,
    },
}

#[derive(clap::Args)]
pub struct DevArgs {
    /// API address [default: 127.0.0.1:7070; with --run, a free port].
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Submit this spec once the node is up, show its progress, and exit when it finishes
    /// (the node's log then goes to <data>/node.log, not between the progress lines).
    #[arg(long, value_name = "FILE")]
    run: Option<PathBuf>,
    /// Start a local cluster of this many server processes on 127.0.0.1 instead of one
    /// embedded node (APIs on 7070, 7071, ...; data in <data>/n1, n2, ...).
    #[arg(long)]
    nodes: Option<u32>,
    #[command(flatten)]
    opts: NodeOpts,
}

/// `troupe node`: one member of a cluster.
#[derive(clap::Args)]
pub struct NodeArgs {
    /// A Raft voter: holds the replicated state (and runs work).
    #[arg(long, conflicts_with = "worker", required_unless_present = "worker")]
    server: bool,
    /// Runs work; not in the Raft group.
    #[arg(long)]
    worker: bool,
    /// This node's cluster address (servers: the Raft id follows the sorted server addresses).
    #[arg(long)]
    listen: SocketAddr,
    /// Cluster addresses of the servers (for a server: the others), comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    join: Vec<SocketAddr>,
    /// Shared secret of the cluster; a peer with another cookie is refused.
    #[arg(long, env = "TROUPE_COOKIE", hide_env_values = true)]
    cookie: String,
    /// This node's HTTP API address.
    #[arg(long, default_value = "127.0.0.1:0")]
    api_listen: SocketAddr,
    /// A node whose lease is not renewed for this long (ms) is declared lost.
    #[arg(long, default_value_t = 2000)]
    lease_ms: u64,
    /// How often (ms) a node renews its lease.
    #[arg(long, default_value_t = 500)]
    renew_ms: u64,
    /// Mutual TLS between nodes: this node's certificate chain (PEM; needs --tls-key and --tls-ca).
    #[arg(long, requires_all = ["tls_key", "tls_ca"])]
    tls_cert: Option<PathBuf>,
    /// This node's private key (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// The cluster CA (PEM): peers must present a certificate it signed.
    #[arg(long, requires = "tls_cert")]
    tls_ca: Option<PathBuf>,
    /// Join a running group as the server with this Raft id (then add it: `troupe servers add ID`).
    #[arg(long, value_name = "RAFT_ID", requires = "server")]
    join_existing: Option<u64>,
    /// The DNS name every node certificate carries.
    #[arg(long, default_value = "troupe")]
    tls_name: String,
    #[command(flatten)]
    opts: NodeOpts,
}

/// Options every node has.
#[derive(clap::Args, Clone)]
pub struct NodeOpts {
    /// Data folder (Raft log, snapshots, task logs).
    #[arg(long, default_value = ".troupe/dev")]
    data: PathBuf,
    /// Attempts run at once [default: 4 per CPU core, at least 4].
    #[arg(long)]
    slots: Option<u32>,
    /// Attempts held queued beyond the slots [default: 256].
    #[arg(long)]
    queue: Option<u32>,
    /// Do not fsync the Raft log (throwaway runs only: a crash can lose acknowledged work).
    #[arg(long)]
    no_fsync: bool,
    /// Seconds between SIGTERM and SIGKILL when an attempt is stopped.
    #[arg(long, default_value_t = 5)]
    kill_grace_s: u64,
    /// Chaos drills only: serve the chaos API (`troupe chaos`: kill, pause, partition,
    /// slow-disk, skew-clock, verify; POST /v1/chaos/panic/{actor}) and keep the compacted
    /// Raft log for `troupe chaos verify` (the log then grows without bound); also honours the
    /// resource-probe failpoint `TROUPE_FAILPOINT_PROBE=fail|file:PATH`. docs/chaos.md.
    #[arg(long)]
    fault_injection: bool,
    /// SIMULATION for tests and demos: advertise made-up GPUs instead of asking NVML
    /// (e.g. `2xH100:80GiB` or `H100:80GiB,A10G:24GiB`; their UUIDs start with SIM-).
    #[arg(long, value_name = "GPUS")]
    simulate_gpus: Option<String>,
    /// CPU cores kept back from scheduling (e.g. 0.5).
    #[arg(long, default_value_t = 0.0)]
    reserve_cpu: f64,
    /// Memory kept back from scheduling (e.g. 2GiB).
    #[arg(long)]
    reserve_memory: Option<String>,
    /// A node label steps can require with node_labels (repeatable): --label zone=eu.
    #[arg(long = "label", value_name = "KEY=VALUE")]
    labels: Vec<String>,
    /// How to choose among feasible nodes: binpack (default) or spread.
    #[arg(long, default_value = "binpack")]
    strategy: String,
    /// Snapshot the state and compact the Raft log every this many applied entries.
    #[arg(long, default_value_t = 1000, hide = true)]
    snapshot_every: u64,
    /// Seconds an API connection may take to send a request's headers (also the idle limit of
    /// a kept-alive connection).
    #[arg(long, default_value_t = 30)]
    api_header_timeout_s: u64,
    /// Keep finished workflows (their history, outputs, idempotency keys, dead letters) and task
    /// logs this long after they end (e.g. 7d, 12h, 10m); `forever` keeps them.
    #[arg(long, default_value = "7d")]
    retain: String,
    /// Seconds between replica audits (the servers compare a hash of their applied state).
    #[arg(long, default_value_t = 60, hide = true)]
    audit_every_s: u64,
    /// Seed of the node's randomness (incarnation, a new node id), for tests that replay a
    /// run; without it the OS seeds it. Never a security secret (cookies are not drawn from it).
    #[arg(long, hide = true)]
    seed: Option<u64>,
    /// Most bytes kept of each attempt's stdout and stderr log (e.g. 64MiB): past it the
    /// oldest part is dropped, the tail kept, and the cut marked in the log.
    #[arg(long, default_value = "64MiB")]
    max_log_bytes: String,
    /// API tokens with roles (TOML: [[token]] name, secret, role = read|operate|admin);
    /// re-read on SIGHUP. Give every node of a cluster the same file.
    #[arg(long, value_name = "FILE")]
    tokens: Option<PathBuf>,
    /// Serve the API over HTTPS: this certificate chain (PEM; needs --api-tls-key).
    #[arg(long, value_name = "FILE", requires = "api_tls_key")]
    api_tls_cert: Option<PathBuf>,
    /// The API certificate's private key (PEM).
    #[arg(long, value_name = "FILE", requires = "api_tls_cert")]
    api_tls_key: Option<PathBuf>,
    /// The CA (PEM) of the other nodes' API certificates, trusted when this node forwards a
    /// call or fetches a log over HTTPS [default: the system's CA bundle].
    #[arg(long, value_name = "FILE", requires = "api_tls_cert")]
    api_tls_ca: Option<PathBuf>,
    /// Allow an API without tokens on an address other than loopback (anyone who can reach it
    /// may do anything).
    #[arg(long)]
    insecure_api: bool,
    /// The node log's format: text (no colours unless stderr is a terminal) or json (one object
    /// per line, for log shippers).
    #[arg(long, default_value = "text", value_name = "FORMAT")]
    log_format: troupe_node::LogFormat,
    /// POST a signed JSON alert to this URL (repeatable) when a workflow fails, times out or
    /// ends degraded, and when --dlq-alert fires; the leading server sends. The signing key:
    /// --notify-secret-file, or $TROUPE_NOTIFY_SECRET.
    #[arg(long = "notify", value_name = "URL")]
    notify: Vec<String>,
    /// The file holding the alerts' HMAC key (its bytes, trailing whitespace trimmed).
    #[arg(long, value_name = "FILE")]
    notify_secret_file: Option<PathBuf>,
    /// Alert when one step of a workflow has more than COUNT new dead letters within WINDOW
    /// (e.g. 50/1h); once per window per step.
    #[arg(long, value_name = "COUNT/WINDOW", requires = "notify")]
    dlq_alert: Option<String>,
    /// Send OpenTelemetry spans (OTLP over HTTP, protobuf) of each workflow, step and attempt
    /// to this collector (e.g. http://127.0.0.1:4318; /v1/traces is appended); off without it.
    #[arg(long, value_name = "URL")]
    otlp_endpoint: Option<String>,
    /// Names the cluster in trace ids: give every node of a cluster the same name, and each
    /// cluster that sends to one collector its own [default: the node id for `troupe dev`,
    /// `troupe` for `troupe node`].
    #[arg(
        long,
        value_name = "NAME",
        requires = "otlp_endpoint",
        default_value = ""
    )]
    otlp_cluster: String,
}

/// The alerts' key from `$TROUPE_NOTIFY_SECRET`, read before [`keep_secrets`] removes it.
pub static NOTIFY_SECRET: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Node secrets stay out of reach of tasks: the cookie (already read into the arguments) and
/// the alerts' key leave this process's environment, which every attempt inherits; files and
/// folders the node creates are private to its user (data dir 0700, files 0600).
fn keep_secrets() {
    if let Ok(s) = std::env::var("TROUPE_NOTIFY_SECRET") {
        let _ = NOTIFY_SECRET.set(s);
    }
    // SAFETY: called first thing in main, before any thread is spawned.
    unsafe {
        for name in ["TROUPE_COOKIE", "TROUPE_TOKEN", "TROUPE_NOTIFY_SECRET"] {
            std::env::remove_var(name);
        }
        libc::umask(0o077);
    }
}

fn main() {
    // Before the secrets leave the environment: a node killed by `troupe chaos kill` comes
    // back with the same command line and environment.
    troupe_node::chaos::process::remember_command();
    let cli = Cli::parse();
    if matches!(cli.cmd, Cmd::Dev(_) | Cmd::Node(_)) {
        keep_secrets();
    }
    let result = match cli.cmd {
        Cmd::Dev(args) => commands::dev(args, cli.token),
        Cmd::Node(args) => commands::node(args),
        Cmd::Bench(args) => bench::run(args),
        Cmd::BenchWorker => bench_warm::noop_worker(),
        Cmd::Chaos(args) => {
            let access = client::Access {
                token: cli.token,
                ca: cli.ca,
            };
            chaos_cli::run(&cli.api, &access, cli.json, args)
        }
        other => {
            // A client printing into a closed pipe (`troupe status | head -1`) ends quietly, as
            // coreutils do, instead of panicking. Only the client: a node must get EPIPE on its
            // sockets, never the signal.
            // SAFETY: resetting one signal's disposition before any thread is spawned.
            unsafe {
                libc::signal(libc::SIGPIPE, libc::SIG_DFL);
            }
            let access = client::Access {
                token: cli.token,
                ca: cli.ca,
            };
            commands::client_command(&cli.api, &access, cli.json, other)
        }
    };
    if let Err(e) = result {
        match e.downcast_ref::<commands::Exit>() {
            Some(commands::Exit(code)) => std::process::exit(*code),
            None => {
                eprintln!("error: {e:#}");
                std::process::exit(1);
            }
        }
    }
}
