//! `troupe dev --nodes N`: a local cluster of N real server processes on 127.0.0.1, for trying
//! the cluster (kill one and watch the others carry on). APIs on 7070, 7071, ...; cluster
//! transport on 7101, 7102, ...; data in <data>/n1, n2, ...

use crate::DevArgs;
use crate::client::Client;
use anyhow::{Context, bail};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// The node processes, and their data dirs: a node restarted by `troupe chaos kill` is no
/// longer a child of this process; its data dir's `node.pid` names it, and it is stopped too.
struct Children(Vec<Child>, Vec<std::path::PathBuf>);

impl Children {
    /// Stops every node of the cluster (once: a second call finds nothing to stop).
    fn stop(&mut self) {
        let ours: Vec<u32> = self.0.iter().map(Child::id).collect();
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.0.clear();
        for dir in std::mem::take(&mut self.1) {
            if let Some(pid) = troupe_node::chaos::process::read_pid_file(&dir)
                && pid > 1
                && !ours.contains(&(pid as u32))
                && troupe_node::chaos::process::is_node_of(pid, &dir)
            {
                // SAFETY: a plain syscall; the pid file names this cluster's node process.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
        }
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        self.stop();
    }
}

pub fn run(n: u32, args: &DevArgs, token: Option<String>) -> anyhow::Result<()> {
    if !(1..=7).contains(&n) {
        bail!("--nodes {n}: use 1 to 7 (3 or 5 for a fault-tolerant Raft group)");
    }
    if args.opts.api_tls_cert.is_some() {
        bail!("--nodes does not use TLS; start the nodes with `troupe node` for HTTPS");
    }
    if args.opts.tokens.is_some() && token.is_none() {
        bail!(
            "--nodes with --tokens: give a token of the file (--token or TROUPE_TOKEN) to check the cluster formed"
        );
    }
    // SIGTERM is caught from before the first server starts: its default action would end this
    // process without `Children`'s drop and leave the servers running (also when it comes
    // while the cluster forms; then the cluster stops as soon as it is up).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut term = {
        let _in = rt.enter();
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?
    };
    let exe = std::env::current_exe()?;
    // A random cookie: nothing outside these processes can guess it.
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes)
        .map_err(|e| anyhow::anyhow!("no randomness for the cookie: {e}"))?;
    let cookie = format!(
        "dev-{}",
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
    );
    // Names this run's traces (not the cookie: it shows in process lists and in spans).
    let mut salt = [0u8; 6];
    getrandom::fill(&mut salt).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    let trace_name = format!(
        "dev-{}",
        salt.iter().map(|b| format!("{b:02x}")).collect::<String>()
    );
    let cluster: Vec<String> = (0..n).map(|i| format!("127.0.0.1:{}", 7101 + i)).collect();
    let base_api = args.listen.map(|a| a.port()).unwrap_or(7070);
    let mut children = Children(Vec::new(), Vec::new());
    let mut apis = Vec::new();
    for i in 0..n as usize {
        let data = args.opts.data.join(format!("n{}", i + 1));
        std::fs::create_dir_all(&data)?;
        children.1.push(data.clone());
        let api = format!("127.0.0.1:{}", base_api + i as u16);
        let join: Vec<&str> = cluster
            .iter()
            .filter(|c| **c != cluster[i])
            .map(String::as_str)
            .collect();
        let mut cmd = Command::new(&exe);
        cmd.args([
            "node",
            "--server",
            "--listen",
            &cluster[i],
            "--api-listen",
            &api,
            "--data",
        ])
        .arg(&data);
        if let Some(slots) = args.opts.slots {
            cmd.args(["--slots", &slots.to_string()]);
        }
        if !join.is_empty() {
            cmd.arg("--join").arg(join.join(","));
        } else {
            cmd.arg("--join").arg(&cluster[i]);
        }
        let o = &args.opts;
        if let Some(g) = &o.simulate_gpus {
            cmd.args(["--simulate-gpus", g]);
        }
        if o.no_fsync {
            cmd.arg("--no-fsync");
        }
        if o.fault_injection {
            cmd.arg("--fault-injection");
        }
        if let Some(q) = o.queue {
            cmd.args(["--queue", &q.to_string()]);
        }
        if let Some(m) = &o.reserve_memory {
            cmd.args(["--reserve-memory", m]);
        }
        for l in &o.labels {
            cmd.args(["--label", l]);
        }
        cmd.args([
            "--kill-grace-s",
            &o.kill_grace_s.to_string(),
            "--strategy",
            &o.strategy,
        ]);
        cmd.args(["--reserve-cpu", &o.reserve_cpu.to_string()]);
        if let Some(t) = &o.tokens {
            cmd.arg("--tokens").arg(t);
        }
        if o.log_format == troupe_node::LogFormat::Json {
            cmd.args(["--log-format", "json"]);
        }
        for u in &o.notify {
            cmd.args(["--notify", u]);
        }
        if let Some(f) = &o.notify_secret_file {
            cmd.arg("--notify-secret-file").arg(f);
        } else if let Some(s) = crate::NOTIFY_SECRET.get() {
            cmd.env("TROUPE_NOTIFY_SECRET", s);
        }
        if let Some(a) = &o.dlq_alert {
            cmd.args(["--dlq-alert", a]);
        }
        if let Some(e) = &o.otlp_endpoint {
            cmd.args(["--otlp-endpoint", e]);
            // One name for the local cluster's nodes (each has its own node id).
            let name = if o.otlp_cluster.is_empty() {
                &trace_name
            } else {
                &o.otlp_cluster
            };
            cmd.args(["--otlp-cluster", name]);
        }
        cmd.env("TROUPE_COOKIE", &cookie)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(data.join("node.log"))?);
        children
            .0
            .push(cmd.spawn().context("cannot start a node process")?);
        apis.push(format!("http://{api}"));
    }
    // Wait until a leader answers writes through node 1's API.
    let deadline = Instant::now() + Duration::from_secs(30);
    let client = Client::with(
        &apis[0],
        &crate::client::Access {
            token: token.clone(),
            ca: None,
        },
    )?;
    loop {
        if client
            .get("/v1/nodes")
            .map(|v| v["nodes"].as_array().map(|a| a.len()).unwrap_or(0) == n as usize)
            .unwrap_or(false)
        {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "the local cluster did not form within 30s; see {}/n*/node.log",
                args.opts.data.display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("troupe dev: {n} servers up; APIs: {}", apis.join(" "));
    eprintln!("troupe dev: cluster cookie {cookie} (TROUPE_COOKIE, to restart a member by hand)");
    eprintln!(
        "troupe dev: logs in {}/n*/node.log; kill one (kill -9) and watch the others carry on",
        args.opts.data.display()
    );
    // Ctrl-C or SIGTERM stops the cluster and this process, also in the middle of `--run`.
    let children = Arc::new(Mutex::new(children));
    let run = args.run.is_some();
    std::thread::spawn({
        let children = children.clone();
        move || {
            rt.block_on(async {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            });
            eprintln!("troupe dev: stopping the cluster");
            children
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .stop();
            std::process::exit(if run { 130 } else { 0 });
        }
    });
    match &args.run {
        Some(file) => {
            let r = crate::commands::submit(&client, false, file, &[], None, true);
            children
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .stop();
            r
        }
        None => loop {
            std::thread::park();
        },
    }
}
