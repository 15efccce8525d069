//! `troupe chaos`: inject faults into a cluster started with `--fault-injection`, run an
//! experiment file ([`crate::chaos_run`]), and verify the committed log (docs/chaos.md). Every
//! call goes through the API with the caller's token (admin role).

use crate::chaos_experiment::parse_signed_ms;
use crate::client::{Access, Client};
use anyhow::{Context, bail};
use serde_json::{Value, json};
use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

#[derive(clap::Args)]
pub struct ChaosArgs {
    #[command(subcommand)]
    cmd: ChaosCmd,
}

#[derive(clap::Args)]
struct Target {
    /// The node: leader, follower, worker, or a node id (`troupe chaos list` shows them).
    node: String,
    /// How long the fault lasts (e.g. 30s; at most 10m); it heals by itself.
    #[arg(long = "for", value_name = "DURATION")]
    for_: String,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Mode {
    Blackhole,
    Reset,
}

#[derive(clap::Subcommand)]
enum ChaosCmd {
    /// Kill a node like kill -9; it is started again after --for with the same command line.
    Kill(Target),
    /// Freeze a node like kill -STOP (its TCP connections stay up); resumed after --for.
    Pause(Target),
    /// Cut a node from --from (default: every other node): a silent blackhole (sessions stay
    /// up, every cluster frame to and from them is dropped), or --mode reset (sessions dropped).
    Partition {
        #[command(flatten)]
        target: Target,
        /// Nodes (selectors or ids) it is cut from, comma-separated.
        #[arg(long, value_delimiter = ',')]
        from: Vec<String>,
        /// blackhole: peers see silence (timeouts); reset: peers see refused connections.
        #[arg(long, value_enum, default_value_t = Mode::Blackhole)]
        mode: Mode,
        /// Cut the node's HTTP API too: it stops answering (requests time out) until it heals.
        /// (The API field is `api`; `--api` is the global option naming the API to talk to.)
        #[arg(long)]
        cut_api: bool,
    },
    /// Make every fsync of a node's Raft log take --delay longer.
    SlowDisk {
        #[command(flatten)]
        target: Target,
        /// Extra time per fsync (e.g. 50ms).
        #[arg(long)]
        delay: String,
    },
    /// Offset a node's wall clock by --skew (e.g. 30s, or -30s for behind).
    SkewClock {
        #[command(flatten)]
        target: Target,
        #[arg(long, allow_hyphen_values = true)]
        skew: String,
    },
    /// The nodes and the faults in force on each.
    List,
    /// Run an experiment file: faults on a schedule, and a workload whose client operations
    /// are recorded to a history file.
    Run {
        file: PathBuf,
        /// Where the client history goes (JSON lines) [default: <file>.history.jsonl].
        #[arg(long)]
        history: Option<PathBuf>,
    },
    /// Replay the committed log and check the invariants; exits 1 if one fails.
    Verify {
        /// A client history written by `troupe chaos run`: its acknowledged submits must be in
        /// the log, one workflow per key.
        #[arg(long)]
        history: Option<PathBuf>,
    },
    /// Internal: waits, then becomes the killed node again (started by the node itself).
    #[command(hide = true)]
    Restarter {
        #[arg(long)]
        after_ms: u64,
        #[arg(long)]
        pid_file: PathBuf,
        #[arg(last = true)]
        argv: Vec<OsString>,
    },
    /// Internal: waits, then sends SIGCONT to a paused node.
    #[command(hide = true)]
    Resumer {
        #[arg(long)]
        pid: i32,
        #[arg(long)]
        after_ms: u64,
    },
}

pub fn run(api: &str, access: &Access, as_json: bool, args: ChaosArgs) -> anyhow::Result<()> {
    let client = || Client::with_timeout(api, access, Duration::from_secs(10));
    let (kind, target, extra) = match args.cmd {
        ChaosCmd::Restarter {
            after_ms,
            pid_file,
            argv,
        } => {
            let e = troupe_node::chaos::process::run_restarter(after_ms, &pid_file, &argv);
            bail!("the restarter could not start the node again: {e}");
        }
        ChaosCmd::Resumer { pid, after_ms } => {
            return troupe_node::chaos::process::run_resumer(pid, after_ms)
                .with_context(|| format!("cannot resume process {pid}"));
        }
        ChaosCmd::List => return list(&client()?, as_json),
        ChaosCmd::Run { file, history } => {
            return crate::chaos_run::run(api, access, &file, history);
        }
        ChaosCmd::Verify { history } => return verify(&client()?, access, history, as_json),
        ChaosCmd::Kill(t) => ("kill", t, json!({})),
        ChaosCmd::Pause(t) => ("pause", t, json!({})),
        ChaosCmd::Partition {
            target,
            from,
            mode,
            cut_api,
        } => {
            let from = (!from.is_empty()).then_some(from);
            let mode = match mode {
                Mode::Blackhole => "blackhole",
                Mode::Reset => "reset",
            };
            let api = cut_api.then_some(true);
            (
                "partition",
                target,
                json!({ "from": from, "mode": mode, "api": api }),
            )
        }
        ChaosCmd::SlowDisk { target, delay } => {
            let d = troupe_scheduler::units::parse_duration_ms(&delay)
                .map_err(|e| anyhow::anyhow!("--delay {delay:?}: {e}"))?;
            ("slow-disk", target, json!({ "delay_ms": d }))
        }
        ChaosCmd::SkewClock { target, skew } => {
            let s = parse_signed_ms(&skew).map_err(|e| anyhow::anyhow!("--skew {skew:?}: {e}"))?;
            ("skew-clock", target, json!({ "skew_ms": s }))
        }
    };
    let for_ms = troupe_scheduler::units::parse_duration_ms(&target.for_)
        .map_err(|e| anyhow::anyhow!("--for {:?}: {e}", target.for_))?;
    let c = client()?;
    let nodes = nodes(&c)?;
    let node = resolve(&nodes, &target.node)?;
    let mut body = json!({ "kind": kind, "node": node, "for_ms": for_ms });
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            let v = match (k.as_str(), v) {
                ("from", Value::Array(list)) => json!(
                    list.iter()
                        .map(|s| resolve(&nodes, s.as_str().unwrap_or_default()))
                        .collect::<anyhow::Result<Vec<_>>>()?
                ),
                (_, Value::Null) => continue,
                _ => v.clone(),
            };
            b.insert(k.clone(), v);
        }
    }
    let v = c.post("/v1/chaos/faults", &body)?;
    if as_json {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!(
            "{kind} {node}: in force for {} (fault {})",
            troupe_scheduler::units::format_ms(for_ms),
            v["fault"]["id"]
        );
    }
    Ok(())
}

/// The nodes as `GET /v1/chaos/faults` lists them.
pub fn nodes(c: &Client) -> anyhow::Result<Vec<Value>> {
    let v = c.get("/v1/chaos/faults")?;
    Ok(v["nodes"].as_array().cloned().unwrap_or_default())
}

/// A selector (`leader`, `follower`, `worker`) or a node id, to a node id. Of several matching
/// nodes (followers, workers), the first by id that is up.
pub fn resolve(nodes: &[Value], sel: &str) -> anyhow::Result<String> {
    let pick = |f: &dyn Fn(&Value) -> bool| {
        let mut m: Vec<&Value> = nodes
            .iter()
            .filter(|n| f(n) && n["up"] == json!(true))
            .collect();
        m.sort_by_key(|n| n["node"].as_str().unwrap_or_default().to_string());
        m.first()
            .and_then(|n| n["node"].as_str())
            .map(str::to_string)
    };
    let found = match sel {
        "leader" => pick(&|n| n["leader"] == json!(true)),
        "follower" => pick(&|n| n["role"] == "server" && n["leader"] != json!(true)),
        "worker" => pick(&|n| n["role"] == "worker"),
        id => nodes
            .iter()
            .find(|n| n["node"] == id)
            .map(|_| id.to_string()),
    };
    found.with_context(|| {
        let ids: Vec<&str> = nodes.iter().filter_map(|n| n["node"].as_str()).collect();
        format!(
            "no node matches {sel:?} (nodes: {}; selectors: leader, follower, worker)",
            ids.join(", ")
        )
    })
}

fn list(c: &Client, as_json: bool) -> anyhow::Result<()> {
    let v = c.get("/v1/chaos/faults")?;
    if as_json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!(
        "{:<16} {:<7} {:<4} {:<22} {:<6} faults",
        "node", "role", "raft", "api", "leader"
    );
    for n in v["nodes"].as_array().into_iter().flatten() {
        let faults = match &n["faults"] {
            Value::Array(a) if a.is_empty() => "-".to_string(),
            Value::Array(a) => a
                .iter()
                .map(|f| {
                    let left = f["until_ms"]
                        .as_u64()
                        .unwrap_or(0)
                        .saturating_sub(troupe_node::chaos::system_ms());
                    let mut kind = f["kind"].as_str().unwrap_or("?").to_string();
                    if let Some(mode) = f["mode"].as_str() {
                        kind = format!("{kind} {mode}");
                    }
                    if f["api"] == json!(true) {
                        kind.push_str(" +api");
                    }
                    format!("{kind} ({} left)", troupe_scheduler::units::format_ms(left))
                })
                .collect::<Vec<_>>()
                .join(", "),
            other => format!(
                "unreachable: {}",
                other["unreachable"].as_str().unwrap_or("?")
            ),
        };
        println!(
            "{:<16} {:<7} {:<4} {:<22} {:<6} {faults}",
            n["node"].as_str().unwrap_or("?"),
            n["role"].as_str().unwrap_or("?"),
            n["raft_id"],
            n["api"].as_str().unwrap_or(""),
            if n["leader"] == json!(true) {
                "yes"
            } else {
                ""
            },
        );
    }
    Ok(())
}

/// `troupe chaos verify`: asks the leader to replay its log (with the history's acknowledged
/// submits), prints the table, exits 1 when an invariant fails.
fn verify(
    c: &Client,
    access: &Access,
    history: Option<PathBuf>,
    as_json: bool,
) -> anyhow::Result<()> {
    let (acked, local) = match &history {
        Some(f) => crate::chaos_run::acked_from_history(f)?,
        None => (vec![], vec![]),
    };
    // The leader's log: it holds everything committed.
    let leader = nodes(c)
        .ok()
        .and_then(|n| n.into_iter().find(|n| n["leader"] == json!(true)))
        .and_then(|n| n["api"].as_str().map(|a| format!("http://{a}")));
    let target = match leader {
        Some(a) if !c.base().starts_with("https://") => {
            Client::with_timeout(&a, access, Duration::from_secs(300))?
        }
        _ => Client::with_timeout(c.base(), access, Duration::from_secs(300))?,
    };
    let mut report = crate::client::with_retries(Duration::from_secs(30), "verify", || {
        target.post("/v1/chaos/verify", &json!({ "acked": acked }))
    })?;
    // Checks of the history alone (G2 as the client saw it).
    if !local.is_empty() {
        let list = report["violations"].as_array().cloned().unwrap_or_default();
        let mut all = list;
        for v in &local {
            all.push(json!({ "rule": "G2", "index": 0, "detail": v }));
        }
        let count = report["violation_count"].as_u64().unwrap_or(0) + local.len() as u64;
        report["violations"] = json!(all);
        report["violation_count"] = json!(count);
        report["ok"] = json!(false);
    }
    if as_json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", crate::chaos_table::render(&report, history.is_some()));
    }
    if report["ok"] != json!(true) {
        return Err(crate::commands::Exit(1).into());
    }
    Ok(())
}
