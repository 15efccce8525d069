//! The CLI commands.

use crate::client::Client;
use crate::{Cmd, DevArgs, NodeArgs, NodeOpts};
use anyhow::Context;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;
use troupe_node::NodeConfig;
use troupe_node::cluster::{ClusterConfig, Role};

/// Exit with this code (the message was already printed).
#[derive(Debug)]
pub struct Exit(pub i32);
impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit {}", self.0)
    }
}
impl std::error::Error for Exit {}

/// A node configuration from the flags every node has.
fn config(opts: &NodeOpts) -> anyhow::Result<NodeConfig> {
    let mut cfg = NodeConfig::dev(&opts.data);
    cfg.snapshot_every_entries = opts.snapshot_every.max(1);
    cfg.slots = opts.slots.unwrap_or(cfg.slots).max(1);
    cfg.queue = opts.queue.unwrap_or(cfg.queue);
    cfg.fsync = !opts.no_fsync;
    cfg.kill_grace = Duration::from_secs(opts.kill_grace_s);
    cfg.api_header_timeout = Duration::from_secs(opts.api_header_timeout_s.max(1));
    cfg.audit_every = Duration::from_secs(opts.audit_every_s.max(1));
    cfg.max_log_bytes = troupe_scheduler::units::parse_size_bytes(&opts.max_log_bytes)
        .map_err(|e| anyhow::anyhow!("--max-log-bytes {:?}: {e}", opts.max_log_bytes))?
        .max(4096);
    cfg.retain = match opts.retain.as_str() {
        "forever" => None,
        d => Some(Duration::from_millis(
            troupe_scheduler::units::parse_duration_ms(d)
                .map_err(|e| anyhow::anyhow!("--retain {d:?}: {e} (or `forever`)"))?
                .max(1000),
        )),
    };
    cfg.fault_injection = opts.fault_injection;
    cfg.seed = opts.seed;
    if let Some(file) = &opts.tokens {
        cfg.api_auth = troupe_node::api::Auth::from_file(file)
            .map_err(|e| anyhow::anyhow!("--tokens: {e}"))?;
    }
    if let (Some(cert), Some(key)) = (&opts.api_tls_cert, &opts.api_tls_key) {
        let files = troupe_node::api::ApiTlsFiles {
            cert: cert.clone(),
            key: key.clone(),
            ca: opts.api_tls_ca.clone(),
        };
        cfg.api_tls = Some(
            troupe_node::api::ApiTls::load(&files)
                .map_err(|e| anyhow::anyhow!("--api-tls-cert: {e}"))?,
        );
    }
    cfg.simulate_gpus = opts
        .simulate_gpus
        .as_deref()
        .map(troupe_node::capacity::parse_simulated)
        .transpose()
        .map_err(|e| anyhow::anyhow!("--simulate-gpus: {e}"))?;
    if cfg.simulate_gpus.is_some() {
        eprintln!(
            "troupe: SIMULATING GPUs ({}); NVML is not asked",
            opts.simulate_gpus.as_deref().unwrap_or("")
        );
    }
    cfg.reserve.cpu_milli = (opts.reserve_cpu.max(0.0) * 1000.0) as u64;
    if let Some(m) = &opts.reserve_memory {
        cfg.reserve.memory_bytes = troupe_scheduler::units::parse_size_bytes(m)
            .map_err(|e| anyhow::anyhow!("--reserve-memory: {e}"))?;
    }
    for l in &opts.labels {
        let (k, v) = l
            .split_once('=')
            .with_context(|| format!("--label {l:?}: write KEY=VALUE"))?;
        cfg.labels.insert(k.to_string(), v.to_string());
    }
    cfg.strategy = match opts.strategy.as_str() {
        "binpack" => troupe_scheduler::placement::Strategy::BinPack,
        "spread" => troupe_scheduler::placement::Strategy::Spread,
        other => anyhow::bail!("--strategy {other:?}: use binpack or spread"),
    };
    cfg.notify = notify(opts)?;
    cfg.otel = opts
        .otlp_endpoint
        .as_deref()
        .map(|e| troupe_node::otel::OtelConfig::new(e, opts.otlp_cluster.clone()))
        .transpose()
        .map_err(|e| anyhow::anyhow!(e))?;
    Ok(cfg)
}

/// `--notify`, its key (`--notify-secret-file` or `$TROUPE_NOTIFY_SECRET`) and `--dlq-alert`.
fn notify(opts: &NodeOpts) -> anyhow::Result<Option<troupe_node::notify::NotifyConfig>> {
    if opts.notify.is_empty() {
        return Ok(None);
    }
    let key = match &opts.notify_secret_file {
        Some(f) => std::fs::read(f)
            .with_context(|| format!("--notify-secret-file {}", f.display()))?
            .trim_ascii_end()
            .to_vec(),
        None => crate::NOTIFY_SECRET
            .get()
            .map(|s| s.as_bytes().to_vec())
            .unwrap_or_default(),
    };
    let dlq = opts
        .dlq_alert
        .as_deref()
        .map(str::parse)
        .transpose()
        .map_err(|e| anyhow::anyhow!("--dlq-alert {e}"))?;
    troupe_node::notify::NotifyConfig::new(opts.notify.clone(), key, dlq)
        .map(Some)
        .map_err(|e| anyhow::anyhow!(e))
}

/// Without tokens the API is open: fine on loopback (said once at start), refused on any other
/// address unless `--insecure-api` says so.
/// Refuses an open API off loopback; otherwise the notice to print once logging is set up
/// (so `--log-format json` stays one object per line).
fn check_open_api(cfg: &NodeConfig, insecure: bool, who: &str) -> anyhow::Result<Option<String>> {
    if cfg.api_auth.enabled() {
        return Ok(None);
    }
    let addr = cfg.listen;
    if addr.ip().is_loopback() {
        return Ok(Some(format!(
            "{who}: no --tokens: the API on {addr} is open to every local user and process (loopback only)"
        )));
    }
    if insecure {
        return Ok(Some(format!(
            "{who}: WARNING: no --tokens and --insecure-api: anyone who can reach {addr} may do anything"
        )));
    }
    anyhow::bail!(
        "the API would listen on {addr}, which is not loopback, without tokens: anyone who can reach it could run commands on this machine. Give a tokens file (--tokens FILE, see docs/operations.md), listen on 127.0.0.1, or pass --insecure-api"
    )
}

pub fn dev(args: DevArgs, token: Option<String>) -> anyhow::Result<()> {
    if let Some(n) = args.nodes {
        return crate::local_cluster::run(n, &args, token);
    }
    let mut cfg = config(&args.opts)?;
    let default = if args.run.is_some() {
        "127.0.0.1:0"
    } else {
        "127.0.0.1:7070"
    };
    cfg.listen = args
        .listen
        .unwrap_or_else(|| default.parse().expect("static address"));
    let notice = check_open_api(&cfg, args.opts.insecure_api, "troupe dev")?;
    if args.run.is_some() && cfg.api_tls.is_some() {
        anyhow::bail!(
            "--run does not go with --api-tls-cert; start the node, then `troupe --api https://... --ca FILE submit --wait FILE`"
        );
    }
    let log = args.opts.log_format;
    serve(cfg, args.run.map(|f| (f, token)), log, notice, "troupe dev")
}

pub fn node(args: NodeArgs) -> anyhow::Result<()> {
    if args.cookie.trim().is_empty() {
        anyhow::bail!("a cluster cookie is required (--cookie or TROUPE_COOKIE)");
    }
    let mut cfg = config(&args.opts)?;
    cfg.listen = args.api_listen;
    cfg.cluster = Some(ClusterConfig {
        role: if args.server {
            Role::Server
        } else {
            Role::Worker
        },
        listen: args.listen,
        join: args.join,
        cookie: args.cookie,
        lease: Duration::from_millis(args.lease_ms.max(100)),
        renew: Duration::from_millis(args.renew_ms.max(20)),
        tls: match (args.tls_cert, args.tls_key, args.tls_ca) {
            (Some(cert), Some(key), Some(ca)) => Some(troupe_node::cluster::tls::TlsFiles {
                cert,
                key,
                ca,
                server_name: args.tls_name,
            }),
            _ => None,
        },
        join_existing: args.join_existing,
    });
    let notice = check_open_api(&cfg, args.opts.insecure_api, "troupe node")?;
    serve(cfg, None, args.opts.log_format, notice, "troupe node")
}

/// Runs the node until a signal; with `run`, submits that file (with that token), follows it
/// and stops the node when it ends.
fn serve(
    cfg: NodeConfig,
    run: Option<(std::path::PathBuf, Option<String>)>,
    log: troupe_node::LogFormat,
    notice: Option<String>,
    who: &str,
) -> anyhow::Result<()> {
    // With --run the terminal shows the workflow's progress; the node's log goes to a file.
    let log_file = run.as_ref().map(|_| cfg.data_dir.join("node.log"));
    if let Some(f) = &log_file {
        std::fs::create_dir_all(&cfg.data_dir)
            .with_context(|| format!("cannot create {}", cfg.data_dir.display()))?;
        eprintln!("{who}: node log in {}", f.display());
    }
    troupe_node::init_tracing(log, log_file.as_deref())
        .with_context(|| format!("cannot open the node log {:?}", log_file))?;
    if let Some(n) = notice {
        say(log, &n);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let data = cfg.data_dir.clone();
    let fatal = cfg.fatal.clone();
    let (auth, https) = (cfg.api_auth.clone(), cfg.api_tls.is_some());
    let out = rt.block_on(async move {
        auth.reload_on_sighup();
        // The node can be refused while it starts (every server refusing its cookie): the
        // start does not finish then, so wait for either.
        let node = tokio::select! {
            node = troupe_node::start(cfg) => node?,
            why = fatal.wait() => anyhow::bail!(why),
        };
        let scheme = if https { "https" } else { "http" };
        let api = format!("{scheme}://{}", node.addr);
        say(
            log,
            &format!("{who}: node {} serving {api} (data in {})", node.node_id, data.display()),
        );
        if let Some((file, token)) = run {
            let code = tokio::task::spawn_blocking(move || {
                let client = Client::with(&api, &crate::client::Access { token, ca: None })?;
                submit(&client, false, &file, &[], None, true)
            })
            .await?;
            node.root.stop(Some("run finished".into()));
            let _ = tokio::time::timeout(Duration::from_secs(10), node.join).await;
            return code;
        }
        let mut join = node.join;
        tokio::select! {
            _ = shutdown_signal() => {
                say(log, &format!("{who}: stopping"));
                node.root.stop(Some("signal".into()));
                let _ = tokio::time::timeout(Duration::from_secs(10), &mut join).await;
                Ok(())
            }
            _ = &mut join => anyhow::bail!("the node's root supervisor stopped (restart budget spent); see the log above"),
            why = fatal.wait() => anyhow::bail!(why),
        }
    });
    // Without waiting for the node's actors: a refused node stops mid-start.
    rt.shutdown_timeout(Duration::from_secs(2));
    out
}

/// A line for the operator: on stderr, or a log event when the log is JSON (so every line a
/// log shipper reads parses).
fn say(log: troupe_node::LogFormat, line: &str) {
    match log {
        troupe_node::LogFormat::Json => tracing::info!("{line}"),
        troupe_node::LogFormat::Text => eprintln!("{line}"),
    }
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
    }
}

pub(crate) fn client_command(
    api: &str,
    access: &crate::client::Access,
    as_json: bool,
    cmd: Cmd,
) -> anyhow::Result<()> {
    let client = Client::with(api, access)?;
    match cmd {
        Cmd::Submit {
            file,
            params,
            idempotency_key,
            wait,
        } => submit(&client, as_json, &file, &params, idempotency_key, wait),
        Cmd::Status { id: Some(id), .. } => {
            let v = client.get(&format!("/v1/workflows/{id}"))?;
            if as_json {
                print_json(&v);
            } else {
                crate::progress::print_detail(&v);
            }
            Ok(())
        }
        Cmd::Status { id: None, filter } => {
            let q = filter.map(|f| format!("?status={f}")).unwrap_or_default();
            let v = client.get(&format!("/v1/workflows{q}"))?;
            if as_json {
                print_json(&v);
                return Ok(());
            }
            println!(
                "{:<10} {:<24} {:<10} {:>7}  REASON",
                "ID", "NAME", "STATUS", "STEPS"
            );
            for w in v["workflows"].as_array().into_iter().flatten() {
                println!(
                    "{:<10} {:<24} {:<10} {:>3}/{:<3}  {}",
                    s(&w["id"]),
                    s(&w["name"]),
                    status_of(w),
                    w["steps_finished"],
                    w["steps"],
                    w["reason"].as_str().unwrap_or("")
                );
            }
            Ok(())
        }
        Cmd::Logs {
            id,
            step,
            item,
            attempt,
            stderr,
            follow,
        } => crate::logs_cli::run(
            &client,
            &crate::logs_cli::LogArgs {
                id,
                step,
                item,
                attempt,
                stderr,
                follow,
            },
        ),
        Cmd::Cancel { id } => control(&client, as_json, &id, "cancel"),
        Cmd::Pause { id } => control(&client, as_json, &id, "pause"),
        Cmd::Resume { id } => control(&client, as_json, &id, "resume"),
        Cmd::Retry { id } => control(&client, as_json, &id, "retry"),
        Cmd::Dlq { cmd, filter } => crate::dlq_cli::run(&client, as_json, cmd, filter),
        Cmd::Item { id, index } => crate::dlq_cli::item(&client, as_json, &id, index),
        Cmd::Nodes => {
            let v = client.get("/v1/nodes")?;
            if as_json {
                print_json(&v);
                return Ok(());
            }
            for n in v["nodes"].as_array().into_iter().flatten() {
                let gib = |b: &Value| b.as_u64().unwrap_or(0) as f64 / (1u64 << 30) as f64;
                let cores = |c: &Value| c.as_u64().unwrap_or(0) as f64 / 1000.0;
                println!(
                    "{}  {}  epoch {}  attempts {}/{}  cpu {:.1}/{:.1} (reserved {:.1})  memory {:.1}/{:.1} GiB (reserved {:.1})",
                    s(&n["id"]),
                    s(&n["status"]),
                    n["epoch"],
                    n["attempts"],
                    n["slots"].as_u64().unwrap_or(0) + n["queue"].as_u64().unwrap_or(0),
                    cores(&n["cpu_milli"]["allocated"]),
                    cores(&n["cpu_milli"]["capacity"]),
                    cores(&n["cpu_milli"]["reserved"]),
                    gib(&n["memory_bytes"]["allocated"]),
                    gib(&n["memory_bytes"]["capacity"]),
                    gib(&n["memory_bytes"]["reserved"]),
                );
                if let Some(l) = n["labels"].as_object().filter(|l| !l.is_empty()) {
                    println!(
                        "  labels: {}",
                        l.iter()
                            .map(|(k, v)| format!("{k}={}", s(v)))
                            .collect::<Vec<_>>()
                            .join(", ")
                    );
                }
                for w in n["workers"].as_array().into_iter().flatten() {
                    let gpus = w["gpus"].as_array().map_or(0, |g| g.len());
                    println!(
                        "  workers {}: {} warm, {} item(s) here{}",
                        s(&w["step"]),
                        w["workers"],
                        w["tasks"],
                        if gpus > 0 {
                            format!(", pinned to {gpus} GPU(s)")
                        } else {
                            String::new()
                        }
                    );
                }
                for b in n["broken_workers"].as_array().into_iter().flatten() {
                    println!("  broken worker {}", s(b));
                }
                for g in n["gpus"].as_array().into_iter().flatten() {
                    println!(
                        "  gpu {} {} {} {:.0} GiB{}",
                        g["index"],
                        s(&g["uuid"]),
                        s(&g["model"]),
                        gib(&g["memory_bytes"]),
                        if g["in_use"] == json!(true) {
                            "  in use"
                        } else {
                            ""
                        }
                    );
                }
            }
            Ok(())
        }
        Cmd::Drain {
            node,
            deadline,
            undo,
        } => {
            let body = json!({ "draining": !undo, "deadline": deadline });
            let v = client.post(&format!("/v1/nodes/{node}/drain"), &body)?;
            if as_json {
                print_json(&v)
            } else if undo {
                println!("{node}: back in service")
            } else {
                println!("{node}: draining (no new work; running attempts finish)")
            }
            Ok(())
        }
        Cmd::Servers { cmd } => {
            let v = match cmd {
                None => client.get("/v1/servers")?,
                Some(crate::ServersCmd::Add { raft_id }) => client.post(
                    "/v1/servers",
                    &json!({ "raft_id": raft_id, "action": "add" }),
                )?,
                Some(crate::ServersCmd::Remove { raft_id }) => client.post(
                    "/v1/servers",
                    &json!({ "raft_id": raft_id, "action": "remove" }),
                )?,
            };
            if as_json {
                print_json(&v);
            } else {
                match v.get("leader_id") {
                    Some(leader) => println!(
                        "voters {}  learners {}  leader {leader}",
                        v["voters"], v["learners"]
                    ),
                    None => println!("voters now {}", v["voters"]),
                }
            }
            Ok(())
        }
        Cmd::Dev(_) | Cmd::Node(_) | Cmd::Bench(_) | Cmd::BenchWorker | Cmd::Chaos(_) => {
            unreachable!("handled in main")
        }
    }
}

pub(crate) fn s(v: &Value) -> String {
    v.as_str()
        .map(str::to_string)
        .unwrap_or_else(|| v.to_string())
}

fn status_of(w: &Value) -> String {
    let st = s(&w["status"]);
    if w["paused"].as_bool() == Some(true) {
        format!("{st}*")
    } else {
        st
    }
}

pub fn print_json(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

fn control(client: &Client, as_json: bool, id: &str, action: &str) -> anyhow::Result<()> {
    let v = client.post(&format!("/v1/workflows/{id}/{action}"), &json!({}))?;
    if as_json {
        print_json(&v)
    } else {
        println!("{id}: {action} ok")
    }
    Ok(())
}

/// `NAME=VALUE`: JSON values are parsed (`10`, `true`, `[1,2]`), anything else is a string.
fn parse_params(params: &[String]) -> anyhow::Result<BTreeMap<String, Value>> {
    params
        .iter()
        .map(|p| {
            let (k, v) = p
                .split_once('=')
                .with_context(|| format!("--param {p:?}: write NAME=VALUE"))?;
            let value = serde_json::from_str(v).unwrap_or_else(|_| Value::String(v.to_string()));
            Ok((k.to_string(), value))
        })
        .collect()
}

pub fn submit(
    client: &Client,
    as_json: bool,
    file: &Path,
    params: &[String],
    key: Option<String>,
    wait: bool,
) -> anyhow::Result<()> {
    // Validate here first: errors name this file and its lines.
    let (raw, _) = troupe_scheduler::spec::load_file(file).map_err(|e| anyhow::anyhow!("{e}"))?;
    // Without a key of the user's, a random one: sending the same submit again after a lost
    // answer (a leader change, a dropped connection) then returns the same workflow.
    let key = match key {
        Some(k) => k,
        None => cli_key()?,
    };
    let body = json!({ "spec": raw, "params": parse_params(params)?, "idempotency_key": key });
    let v = crate::client::with_retries(Duration::from_secs(60), "submit", || {
        client.post("/v1/workflows", &body)
    })?;
    let id = s(&v["id"]);
    if !wait {
        if as_json {
            print_json(&v)
        } else if v["created"] == json!(false) {
            println!("{id} (already submitted with this idempotency key)")
        } else {
            println!("{id}")
        }
        return Ok(());
    }
    if !as_json {
        eprintln!("{id} submitted; following it (Ctrl-C stops following, not the workflow)");
    }
    let detail = crate::progress::follow(client, &id, as_json)?;
    exit_for(detail["status"].as_str())
}

/// `succeeded` exits 0, `degraded` 3 (finished, but not every item got through), and `failed`,
/// `cancelled` or `timed_out` 2.
pub fn exit_for(status: Option<&str>) -> anyhow::Result<()> {
    match status {
        Some("succeeded") => Ok(()),
        Some("degraded") => Err(Exit(3).into()),
        _ => Err(Exit(2).into()),
    }
}

fn cli_key() -> anyhow::Result<String> {
    let mut bytes = [0u8; 12];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    Ok(format!(
        "cli-{}",
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
    ))
}
