//! Live progress (one bar per step) and the final report.

use crate::client::Client;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::Value;
use std::time::Duration;

/// Polls the workflow until it finishes, drawing a bar per step; returns the final detail.
pub fn follow(client: &Client, id: &str, as_json: bool) -> anyhow::Result<Value> {
    let multi = MultiProgress::with_draw_target(if as_json {
        ProgressDrawTarget::hidden()
    } else {
        ProgressDrawTarget::stderr()
    });
    let style = ProgressStyle::with_template("{prefix:>16} [{bar:30}] {pos:>6}/{len:<6} {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    let mut bars: Vec<ProgressBar> = Vec::new();
    loop {
        // Rides through leader changes, a busy node and dropped connections (bounded).
        let v = crate::client::with_retries(Duration::from_secs(120), id, || {
            client.get(&format!("/v1/workflows/{id}?wait=250ms"))
        })?;
        let steps = v["step_runs"].as_array().cloned().unwrap_or_default();
        for (i, st) in steps.iter().enumerate() {
            if bars.len() <= i {
                let b = multi.add(ProgressBar::new(0).with_style(style.clone()));
                b.set_prefix(st["id"].as_str().unwrap_or("?").to_string());
                bars.push(b);
            }
            let f = &st["funnel"];
            let done = [
                "succeeded",
                "failed",
                "dead_lettered",
                "blocked",
                "skipped",
                "discarded",
            ]
            .iter()
            .map(|k| f[*k].as_u64().unwrap_or(0))
            .sum::<u64>();
            bars[i].set_length(st["items"].as_u64().unwrap_or(0).max(done));
            bars[i].set_position(done);
            let mut msg = st["status"].as_str().unwrap_or("").to_string();
            if let Some(n) = st["running"].as_u64().filter(|n| *n > 0) {
                msg.push_str(&format!(" ({n} running)"));
            }
            bars[i].set_message(msg);
        }
        if v["status"].as_str() != Some("running") {
            for b in &bars {
                b.finish();
            }
            if as_json {
                crate::commands::print_json(&v);
            } else {
                print_detail(&v);
            }
            return Ok(v);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn print_detail(v: &Value) {
    let took = match (v["submitted_ms"].as_u64(), v["finished_ms"].as_u64()) {
        (Some(a), Some(b)) => format!(
            " in {}",
            troupe_scheduler::units::format_ms(b.saturating_sub(a))
        ),
        _ => String::new(),
    };
    println!(
        "{} {}: {}{took}",
        v["id"].as_str().unwrap_or("?"),
        v["name"].as_str().unwrap_or(""),
        v["status"].as_str().unwrap_or("?")
    );
    if let Some(r) = v["reason"].as_str() {
        println!("  reason: {r}");
    }
    for st in v["step_runs"].as_array().into_iter().flatten() {
        let mut line = format!(
            "  {:<16} {:<10} {}/{} ok",
            st["id"].as_str().unwrap_or("?"),
            st["status"].as_str().unwrap_or("?"),
            st["succeeded"],
            st["items"]
        );
        // The funnel: every item in exactly one bucket.
        let f = &st["funnel"];
        for (k, label) in [
            ("running", "running"),
            ("queued", "queued"),
            ("waiting_retry", "waiting to retry"),
            ("waiting_upstream", "waiting upstream"),
            ("blocked", "blocked"),
            ("dead_lettered", "dead-lettered"),
            ("discarded", "discarded"),
            ("skipped", "skipped"),
            ("failed", "failed"),
            ("cancelled", "cancelled"),
        ] {
            if f[k].as_u64().unwrap_or(0) > 0 {
                line.push_str(&format!(", {} {label}", f[k]));
            }
        }
        if st["iteration"].as_u64().unwrap_or(0) > 1 {
            line.push_str(&format!(", {} iterations", st["iteration"]));
        }
        println!("{line}");
        if let Some(e) = st["error"].as_str() {
            println!("  {:<16} error: {e}", "");
        }
        if !st["output"].is_null() {
            let out = st["output"].to_string();
            let out: String = out.chars().take(200).collect();
            println!("  {:<16} output: {out}", "");
        }
    }
}
