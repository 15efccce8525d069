//! TLS between nodes: a cluster whose nodes use mutual TLS forms and runs work; a node that
//! speaks plain TCP (right cookie, no certificate) is refused.

use std::path::Path;
use std::process::Command;
use std::time::Duration;
use troupe_chaos_tests::{Cluster, TestNode};

/// A throwaway CA and one node certificate for the DNS name `troupe` (EC keys: quick to make).
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
        "subjectAltName=DNS:troupe\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\n",
    )
    .unwrap();
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
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
            "/CN=troupe-test-ca",
        ],
    ]
    .concat());
    run(&[
        &["req"][..],
        &ec,
        &[
            "-keyout",
            "node.key",
            "-out",
            "node.csr",
            "-subj",
            "/CN=troupe",
        ],
    ]
    .concat());
    run(&[
        "x509",
        "-req",
        "-in",
        "node.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "node.pem",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    ]);
}

#[test]
fn a_tls_cluster_runs_work_and_refuses_plain_peers() {
    let tmp = tempfile::tempdir().unwrap();
    make_certs(tmp.path());
    let p = |f: &str| tmp.path().join(f).display().to_string();
    let (cert, key, ca) = (p("node.pem"), p("node.key"), p("ca.pem"));
    let tls = [
        "--tls-cert",
        cert.as_str(),
        "--tls-key",
        key.as_str(),
        "--tls-ca",
        ca.as_str(),
    ];
    let mut cluster = Cluster::start(tmp.path(), 33, 3, 1, &tls);
    let id = cluster.any().submit("name = \"over-tls\"\n[[step]]\nid = \"a\"\nhandler = \"noop\"\nmap = { range = [0, 50] }\n");
    assert_eq!(
        cluster.any().wait(&id, Duration::from_secs(30))["status"],
        "succeeded"
    );

    // The right cookie without a certificate does not get in.
    let dir = tmp.path().join("plain");
    let args: Vec<String> = [
        "node",
        "--worker",
        "--listen",
        "127.0.33.9:7500",
        "--join",
        "127.0.33.1:7500",
        "--api-listen",
        "127.0.33.9:0",
        "--data",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([dir.display().to_string()])
    .collect();
    let plain = TestNode::spawn(&dir, &args, false);
    std::thread::sleep(Duration::from_secs(3));
    let (_, nodes) = cluster.any().get("/v1/nodes");
    assert_eq!(
        nodes["nodes"].as_array().unwrap().len(),
        4,
        "the plain-TCP node joined: {nodes}"
    );
    drop(plain);
}
