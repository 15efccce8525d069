//! Task logs are deleted once their workflow is past the retention: every node (servers and
//! workers alike, which hold no state) removes `logs/wf-N/` when nothing in it or in its step
//! folders changed for `--retain`. The replicated state forgets the workflow on the same clock
//! (`Command::Collect`). Keep `--retain` longer than the longest workflow.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// Runs forever (a detached task of the node), sweeping every quarter of the retention.
pub async fn run(logs: PathBuf, retain: Duration) {
    let every = (retain / 4).clamp(Duration::from_secs(1), Duration::from_secs(600));
    loop {
        tokio::time::sleep(every).await;
        let dir = logs.clone();
        match tokio::task::spawn_blocking(move || sweep(&dir, retain)).await {
            Ok(0) | Err(_) => {}
            Ok(n) => tracing::info!(workflows = n, "deleted task logs past the retention"),
        }
    }
}

/// Deletes the log folders of workflows idle for longer than `retain`; returns how many.
pub fn sweep(logs: &Path, retain: Duration) -> usize {
    // The OS clock, not the node's: it is compared with file modification times.
    let Some(cutoff) = SystemTime::now().checked_sub(retain) else {
        return 0;
    };
    let mut n = 0;
    for e in std::fs::read_dir(logs).into_iter().flatten().flatten() {
        let path = e.path();
        let is_wf = e.file_name().to_str().is_some_and(|s| s.starts_with("wf-"));
        if is_wf
            && newest(&path).is_some_and(|t| t < cutoff)
            && std::fs::remove_dir_all(&path).is_ok()
        {
            n += 1;
        }
    }
    n
}

/// The newest modification time of a folder and its direct children.
fn newest(dir: &Path) -> Option<SystemTime> {
    let mut t = std::fs::metadata(dir).and_then(|m| m.modified()).ok()?;
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if let Ok(m) = e.metadata().and_then(|m| m.modified()) {
            t = t.max(m);
        }
    }
    Some(t)
}
