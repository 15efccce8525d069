//! API tokens and remote logs on a real cluster (3 servers + 2 workers): a call through a
//! follower is checked there and again on the leader (401 without a token, 403 with too low a
//! role, accepted with `operate`), every refusal is logged with its source; SIGHUP re-reads the
//! tokens file; `troupe logs` finds the log of an attempt that ran on a worker (also
//! `--follow`), and names the worker when it is down. And HTTPS with the CLI and `--ca`.

use serde_json::{Value, json};
use std::path::Path;
use std::process::{Command, Output};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use troupe_chaos_tests::{Cluster, ClusterOpts, TestNode, troupe_bin};

/// The tests run one at a time: the cluster is 5 processes on a 2-core machine.
static SERIAL: Mutex<()> = Mutex::new(());

const READ: &str = "read-secret-0123456789abcdef";
const OPERATE: &str = "operate-secret-0123456789abcdef";
const ADMIN: &str = "admin-secret-0123456789abcdef";
const LATE: &str = "late-secret-0123456789abcdef";

fn tokens_file(dir: &Path, extra: &str) -> std::path::PathBuf {
    let path = dir.join("tokens.toml");
    let mut text = String::new();
    for (name, secret, role) in [
        ("viewer", READ, "read"),
        ("ci", OPERATE, "operate"),
        ("root", ADMIN, "admin"),
    ] {
        text.push_str(&format!(
            "[[token]]\nname = \"{name}\"\nsecret = \"{secret}\"\nrole = \"{role}\"\n\n"
        ));
    }
    text.push_str(extra);
    std::fs::write(&path, text).unwrap();
    path
}

/// A call with an optional token: (status, JSON body).
fn call(method: &str, url: &str, token: Option<&str>) -> (u16, Value) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into();
    let auth = token.map(|t| format!("Bearer {t}"));
    let r = if method == "POST" {
        let mut r = agent.post(url).header("content-type", "application/json");
        if let Some(a) = &auth {
            r = r.header("authorization", a);
        }
        r.send("{}")
    } else {
        let mut r = agent.get(url);
        if let Some(a) = &auth {
            r = r.header("authorization", a);
        }
        r.call()
    };
    let mut r = r.expect("an answer");
    let status = r.status().as_u16();
    let text = r.body_mut().read_to_string().unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// Runs the CLI against `api` (killed after `limit`).
fn cli(api: &str, args: &[&str], env: &[(&str, &str)], limit: Duration) -> Output {
    let mut child = Command::new(troupe_bin())
        .arg("--api")
        .arg(api)
        .args(args)
        .env_remove("TROUPE_TOKEN")
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run the troupe CLI");
    let deadline = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn wait_for(limit: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "waited {limit:?} for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn tokens_are_checked_through_a_follower_and_logs_come_from_the_worker_that_ran_the_attempt() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let tokens = tokens_file(tmp.path(), "");
    let tokens_arg = tokens.display().to_string();
    let mut cluster = Cluster::start_with(
        tmp.path(),
        42,
        3,
        2,
        &ClusterOpts {
            extra: &["--tokens", &tokens_arg, "--kill-grace-s", "1"],
            worker_extra: &["--label", "pool=w"],
            token: Some(ADMIN),
        },
    );
    let leader = cluster.leader().expect("a leader");
    let f = (0..3).find(|&i| i != leader).unwrap();
    let follower = cluster.servers[f].api.clone();

    // A long workflow to cancel, submitted by an operator through the follower.
    let spec = "name = \"long\"\n[[step]]\nid = \"wait\"\nrun = [\"sleep\", \"60\"]\n";
    let url = format!("{follower}/v1/workflows");
    let body = json!({ "spec_toml": spec }).to_string();
    let (code, v) = call("POST", &url, None);
    assert_eq!(code, 401, "a submit without a token: {v}");
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut r = agent
        .post(&url)
        .header("content-type", "application/json")
        .header("authorization", &format!("Bearer {OPERATE}"))
        .send(&body)
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let id: Value = serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
    let id = id["id"].as_str().unwrap().to_string();

    let cancel = format!("{follower}/v1/workflows/{id}/cancel");
    let (code, v) = call("POST", &cancel, None);
    assert_eq!(code, 401, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("operate role"),
        "the error names the role: {v}"
    );
    let (code, v) = call("POST", &cancel, Some("not-a-token-of-the-file"));
    assert_eq!(code, 401, "{v}");
    let (code, v) = call("POST", &cancel, Some(READ));
    assert_eq!(code, 403, "{v}");
    let msg = v["error"].as_str().unwrap();
    assert!(
        msg.contains("operate role") && msg.contains("\"viewer\""),
        "{v}"
    );
    // The follower logged the refusals, with the route, the source and the token's name.
    let log = cluster.servers[f].log();
    let refused: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("api call refused") && l.contains("/cancel"))
        .collect();
    assert!(refused.len() >= 3, "{log}");
    assert!(refused.iter().any(|l| l.contains("viewer")), "{refused:?}");
    assert!(
        refused
            .iter()
            .all(|l| l.contains("source") && l.contains("127.0.0.1:")),
        "{refused:?}"
    );
    assert!(!log.contains(READ), "a secret in the log");
    // Reads are fine with `read`, health with nothing.
    assert_eq!(
        call("GET", &format!("{follower}/v1/nodes"), Some(READ)).0,
        200
    );
    assert_eq!(call("GET", &format!("{follower}/v1/health"), None).0, 200);
    let (code, v) = call("POST", &cancel, Some(OPERATE));
    assert_eq!(code, 200, "{v}");
    let leader_log = cluster.servers[leader].log();
    assert!(
        !leader_log.contains("api call refused"),
        "the follower refused them before the leader saw them: {leader_log}"
    );

    // SIGHUP adds a token on every node (a follower checks it, then the leader).
    let nodes_url = format!("{follower}/v1/nodes");
    assert_eq!(call("GET", &nodes_url, Some(LATE)).0, 401);
    tokens_file(
        tmp.path(),
        &format!("[[token]]\nname = \"late\"\nsecret = \"{LATE}\"\nrole = \"read\"\n"),
    );
    for n in cluster.servers.iter().chain(&cluster.workers) {
        n.signal(libc::SIGHUP);
    }
    wait_for(Duration::from_secs(10), "the new token", || {
        call("GET", &nodes_url, Some(LATE)).0 == 200
    });
    assert!(
        cluster.servers[f]
            .log()
            .contains("SIGHUP: re-read the tokens file")
    );

    // A log written on a worker, read through a follower and through the other worker.
    let spec = "name = \"on-a-worker\"\n[[step]]\nid = \"w\"\nresources = { node_labels = { pool = \"w\" } }\nrun = [\"sh\", \"-c\", \"echo hello from $TROUPE_NODE; echo an error line >&2\"]\n";
    let id = cluster.servers[leader].submit(spec);
    let done = cluster.servers[leader].wait(&id, Duration::from_secs(60));
    assert_eq!(done["status"], "succeeded", "{done}");
    let out = cli(
        &follower,
        &["logs", &id, "--step", "w"],
        &[("TROUPE_TOKEN", READ)],
        Duration::from_secs(30),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let node = text(&out.stdout)
        .trim()
        .trim_start_matches("hello from ")
        .to_string();
    let ids: Vec<Value> = cluster
        .workers
        .iter()
        .map(|w| w.get("/v1/health").1["node"].clone())
        .collect();
    let ran = ids
        .iter()
        .position(|n| *n == node.as_str())
        .unwrap_or_else(|| panic!("{id} ran on {node:?}, not on a worker ({ids:?})"));
    let other = 1 - ran;
    let via = [follower.clone(), cluster.workers[other].api.clone()];
    for api in &via {
        // A worker learns the leader's API address from its lease renewals: wait for it.
        wait_for(Duration::from_secs(15), "forwarding", || {
            call("GET", &format!("{api}/v1/workflows"), Some(READ)).0 == 200
        });
        let out = cli(
            api,
            &["logs", &id, "--step", "w"],
            &[("TROUPE_TOKEN", READ)],
            Duration::from_secs(30),
        );
        assert!(out.status.success(), "{api}: {}", text(&out.stderr));
        assert_eq!(text(&out.stdout), format!("hello from {node}\n"));
    }
    let out = cli(
        &follower,
        &["--token", READ, "logs", &id, "--step", "w", "--stderr"],
        &[],
        Duration::from_secs(30),
    );
    assert_eq!(
        text(&out.stdout),
        "an error line\n",
        "{}",
        text(&out.stderr)
    );
    // Without a token the follower refuses it before anyone reads a file.
    let out = cli(
        &follower,
        &["logs", &id, "--step", "w"],
        &[],
        Duration::from_secs(30),
    );
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("HTTP 401"),
        "{}",
        text(&out.stderr)
    );

    // --follow prints what a running attempt writes, until it ends.
    let spec = "name = \"slow\"\n[[step]]\nid = \"s\"\nresources = { node_labels = { pool = \"w\" } }\nrun = [\"sh\", \"-c\", \"echo one; sleep 3; echo two\"]\n";
    let slow = cluster.servers[leader].submit(spec);
    cluster.servers[leader].wait_until(&slow, Duration::from_secs(30), "s running", |v| {
        troupe_chaos_tests::step(v, "s")["running"] == 1
    });
    let t = Instant::now();
    let out = cli(
        &follower,
        &["--token", READ, "logs", &slow, "--step", "s", "--follow"],
        &[],
        Duration::from_secs(30),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "one\ntwo\n");
    assert!(t.elapsed() < Duration::from_secs(20), "{:?}", t.elapsed());

    // The worker that has the first log dies: the error names it.
    cluster.workers[ran].kill9();
    let out = cli(
        &follower,
        &["--token", READ, "logs", &id, "--step", "w"],
        &[],
        Duration::from_secs(30),
    );
    assert!(!out.status.success());
    let err = text(&out.stderr);
    eprintln!("the error when the worker is down: {err}");
    assert!(err.contains(&format!("on node {node}")), "{err}");
    assert!(
        err.contains("did not answer") || err.contains("is down"),
        "{err}"
    );
    let _ = cluster.any();
}

/// A throwaway CA and an API certificate for 127.0.0.1 and localhost.
fn make_certs(dir: &Path) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl is installed (.ci/run installs it)");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    let ec = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
    let ec: Vec<&str> = ec.split(' ').collect();
    run(&[
        &["req", "-x509"][..],
        &ec,
        &[
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=troupe-api-test-ca",
        ],
    ]
    .concat());
    run(&[
        &["req"][..],
        &ec,
        &[
            "-keyout",
            "api.key",
            "-out",
            "api.csr",
            "-subj",
            "/CN=troupe-api",
        ],
    ]
    .concat());
    run(&[
        "x509",
        "-req",
        "-in",
        "api.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "api.pem",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    ]);
}

#[test]
fn https_api_with_the_cli_and_its_ca() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    make_certs(tmp.path());
    let tokens = tokens_file(tmp.path(), "");
    let p = |f: &str| tmp.path().join(f).display().to_string();
    let data = tmp.path().join("node");
    let args: Vec<String> = [
        "dev",
        "--listen",
        "127.0.0.1:0",
        "--data",
        &data.display().to_string(),
        "--tokens",
        &tokens.display().to_string(),
        "--api-tls-cert",
        &p("api.pem"),
        "--api-tls-key",
        &p("api.key"),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let node = TestNode::spawn_https(&data, &args);
    let ca = p("ca.pem");
    let env = [("TROUPE_TOKEN", OPERATE), ("TROUPE_CA", ca.as_str())];
    wait_for(Duration::from_secs(30), "the https API", || {
        cli(&node.api, &["nodes"], &env, Duration::from_secs(10))
            .status
            .success()
    });
    let spec = tmp.path().join("hello.toml");
    std::fs::write(
        &spec,
        "name = \"hello\"\n[[step]]\nid = \"a\"\nrun = [\"echo\", \"over tls\"]\n",
    )
    .unwrap();
    let out = cli(
        &node.api,
        &["submit", &spec.display().to_string(), "--wait"],
        &env,
        Duration::from_secs(60),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = cli(
        &node.api,
        &["logs", "wf-1", "--step", "a"],
        &env,
        Duration::from_secs(30),
    );
    assert_eq!(text(&out.stdout), "over tls\n", "{}", text(&out.stderr));
    // Without the CA, the certificate is not trusted.
    let out = cli(
        &node.api,
        &["nodes"],
        &[("TROUPE_TOKEN", OPERATE)],
        Duration::from_secs(30),
    );
    assert!(!out.status.success());
    // A plain http call to the https port gets no answer.
    let plain = node.api.replace("https://", "http://");
    let out = cli(&plain, &["nodes"], &env[..1], Duration::from_secs(30));
    assert!(!out.status.success(), "{}", text(&out.stdout));
    // HTTPS with the wrong role is still a 403.
    let out = cli(
        &node.api,
        &["drain", "nobody"],
        &env,
        Duration::from_secs(30),
    );
    assert!(
        text(&out.stderr).contains("needs the admin role"),
        "{}",
        text(&out.stderr)
    );
}
