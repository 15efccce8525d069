//! Secrets stay secret: a task cannot read the node's cookie from its environment, and the
//! node's data (Raft log, task logs) is private to its user.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;
use troupe_chaos_tests::TestNode;

fn mode(p: &std::path::Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o777
}

#[test]
fn tasks_never_see_the_cookie_and_data_files_are_private() {
    // The node inherits this environment, as it would from an operator's shell.
    // SAFETY: the only test in this binary; set before any thread of ours is spawned.
    unsafe {
        std::env::set_var("TROUPE_COOKIE", "s3cret-cookie-value");
    }
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let node = TestNode::start(&data, &[]);
    let id = node.submit(
        "name = \"env\"\n[[step]]\nid = \"dump\"\nrun = [\"sh\", \"-c\", \"env; env | grep -c s3cret-cookie-value >&2 || true\"]\n",
    );
    let v = node.wait(&id, Duration::from_secs(30));
    assert_eq!(v["status"], "succeeded", "{v}");
    // The attempt's stdout, wherever the log layout puts it under logs/.
    let log: String = walk(&data.join("logs"))
        .into_iter()
        .filter(|p| p.extension().is_some_and(|x| x == "out"))
        .map(|p| std::fs::read_to_string(p).unwrap_or_default())
        .collect();
    assert!(
        log.contains("TROUPE_WORKFLOW_ID="),
        "the task's env was captured: {log}"
    );
    assert!(
        !log.contains("s3cret-cookie-value"),
        "the cookie leaked to a task: {log}"
    );
    assert!(!log.contains("TROUPE_COOKIE"), "{log}");
    assert_eq!(mode(&data), 0o700, "data dir");
    assert_eq!(mode(&data.join("raft.redb")), 0o600, "raft.redb");
    for p in walk(&data.join("logs")) {
        let m = mode(&p);
        if p.is_dir() {
            assert_eq!(m, 0o700, "{}", p.display());
        } else {
            assert_eq!(m, 0o600, "{}", p.display());
        }
    }
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p.clone());
            }
            out.push(p);
        }
    }
    out
}
