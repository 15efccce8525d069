//! Builtin handlers for tests, examples and benchmarks: `noop`, `echo`, `fail`, `sleep` (and
//! `http`, in `http/`).

use super::output_from_text;
use std::time::Duration;
use troupe_actors::executor::KillSignal;
use troupe_scheduler::spec::Builtin;
use troupe_scheduler::units::{format_ms, parse_duration_ms};
use troupe_scheduler::{Json, Outcome, RunSpec};

/// `noop`, `echo` and `fail` finish at once; `sleep` and `http` run in a task (`None`).
pub fn inline(handler: Builtin, with: &Json, spec: &RunSpec) -> Option<Outcome> {
    let w = with.value();
    Some(match handler {
        Builtin::Noop => Outcome::Succeeded { output: None },
        Builtin::Echo => {
            let out = if w.is_null() {
                spec.item.clone().unwrap_or_else(Json::null)
            } else {
                with.clone()
            };
            output_from_text(out.0.as_bytes())
        }
        Builtin::Fail => {
            let message = w
                .get("message")
                .and_then(|m| m.as_str())
                .unwrap_or("the fail handler failed");
            match w.get("attempts").and_then(|a| a.as_u64()) {
                Some(n) if spec.attempt as u64 > n => Outcome::Succeeded { output: None },
                _ => Outcome::Failed {
                    error: message.to_string(),
                },
            }
        }
        Builtin::Sleep | Builtin::Http => return None,
    })
}

pub async fn sleep(with: &Json, timeout_ms: Option<u64>, kill: KillSignal) -> Outcome {
    let w = with.value();
    let text = w.get("duration").and_then(|d| d.as_str()).unwrap_or("0ms");
    let ms = match parse_duration_ms(text) {
        Ok(ms) => ms,
        Err(e) => {
            return Outcome::Failed {
                error: format!("sleep: {e}"),
            };
        }
    };
    let limit = timeout_ms.unwrap_or(u64::MAX);
    let d = Duration::from_millis(ms.min(limit));
    // tokio's timer wheel rounds up to the next millisecond; short sleeps use a blocking thread's
    // precise sleep so `sleep` measures the scheduler, not the timer (a kill still returns at once).
    let slept = async move {
        if d <= Duration::from_millis(100) {
            let _ = tokio::task::spawn_blocking(move || std::thread::sleep(d)).await;
        } else {
            tokio::time::sleep(d).await;
        }
    };
    tokio::select! {
        _ = slept => {
            if ms > limit {
                Outcome::Failed { error: format!("timed out after {}", format_ms(limit)) }
            } else {
                Outcome::Succeeded { output: None }
            }
        }
        _ = kill => Outcome::Failed { error: "stopped: the attempt was cancelled".into() },
    }
}
