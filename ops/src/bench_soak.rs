//! `troupe bench --only soak`: months of uptime in minutes. Pushes many one-step workflows
//! through one node with a short `--retain` and prints, every tenth of the way, the node's RSS,
//! the workflows it holds, and the size of `raft.redb`: with retention these stay flat.

use crate::bench::Node;
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Clients submitting at once.
const CLIENTS: u64 = 8;

pub fn run(total: u64, retain: &str, fsync: bool) -> anyhow::Result<()> {
    let (node, _) = Node::start(&["--retain", retain, "--slots", "64"], fsync)?;
    let node = Arc::new(node);
    println!(
        "soak: {total} workflows (one noop step each) through one node, --retain {retain}, {CLIENTS} clients"
    );
    println!(
        "{:>10} {:>9} {:>10} {:>12} {:>14} {:>10}",
        "submitted", "elapsed", "RSS MiB", "held", "raft.redb MiB", "wf/s"
    );
    let sent = Arc::new(AtomicU64::new(0));
    let t0 = Instant::now();
    let step = (total / 10).max(1);
    let spec = "name = \"soak\"\n[[step]]\nid = \"a\"\nhandler = \"noop\"\n";
    std::thread::scope(|s| -> anyhow::Result<()> {
        let mut workers = Vec::new();
        for _ in 0..CLIENTS {
            let (node, sent) = (node.clone(), sent.clone());
            workers.push(s.spawn(move || -> anyhow::Result<()> {
                let body = json!({ "spec_toml": spec });
                while sent.fetch_add(1, Ordering::Relaxed) < total {
                    crate::client::with_retries(
                        std::time::Duration::from_secs(30),
                        "soak",
                        || node.client.post("/v1/workflows", &body),
                    )?;
                }
                Ok(())
            }));
        }
        let mut next = step;
        loop {
            let done = sent.load(Ordering::Relaxed).min(total);
            if done >= next || done >= total {
                let h = node.client.get("/v1/health")?;
                let redb = std::fs::metadata(node.dir.join("raft.redb"))
                    .map(|m| m.len())
                    .unwrap_or(0);
                let secs = t0.elapsed().as_secs_f64();
                println!(
                    "{done:>10} {secs:>8.0}s {:>10.1} {:>12} {:>14.1} {:>10.0}",
                    node.rss_kb() as f64 / 1024.0,
                    h["workflows"],
                    redb as f64 / (1u64 << 20) as f64,
                    done as f64 / secs
                );
                next += step;
            }
            if done >= total {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        for w in workers {
            w.join()
                .map_err(|_| anyhow::anyhow!("a soak client panicked"))??;
        }
        Ok(())
    })
}
