//! `troupe logs`: an attempt's stdout or stderr, from whichever node ran it (the API finds the
//! node). `--follow` tails a running attempt by bounded polling: each answer says where to
//! read from next and whether the attempt still runs; it stops when the attempt ends.

use crate::client::{Client, retryable};
use std::io::Write;
use std::time::{Duration, Instant};

/// How often `--follow` asks for more.
const FOLLOW_EVERY: Duration = Duration::from_millis(500);
/// `--follow` stops after this long in any case.
const FOLLOW_LIMIT: Duration = Duration::from_secs(24 * 3600);
/// With `--follow`, how long to wait for a placed attempt to start writing its log.
const START_WAIT: Duration = Duration::from_secs(30);
/// Failed polls in a row (no leader for a moment, a busy node) before `--follow` gives up.
const ERRORS_MAX: u32 = 20;

pub struct LogArgs {
    pub id: String,
    pub step: String,
    pub item: Option<u32>,
    pub attempt: Option<u32>,
    pub stderr: bool,
    pub follow: bool,
}

fn header<'a>(h: &'a ureq::http::HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

pub fn run(client: &Client, a: &LogArgs) -> anyhow::Result<()> {
    let mut q = format!(
        "step={}&stream={}",
        a.step,
        if a.stderr { "stderr" } else { "stdout" }
    );
    if let Some(i) = a.item {
        q.push_str(&format!("&item={i}"));
    }
    if let Some(k) = a.attempt {
        q.push_str(&format!("&attempt={k}"));
    }
    let path = |q: &str| format!("/v1/workflows/{}/logs?{q}", a.id);
    let started = Instant::now();
    let (body, headers) = loop {
        match client.bytes(&path(&q)) {
            Ok(r) => break r,
            // A placed attempt that has not started has no log yet.
            Err(e)
                if a.follow && started.elapsed() < START_WAIT && (is_404(&e) || retryable(&e)) =>
            {
                std::thread::sleep(FOLLOW_EVERY)
            }
            Err(e) => return Err(e),
        }
    };
    let mut out = std::io::stdout().lock();
    out.write_all(&body)?;
    out.flush()?;
    if !a.follow {
        return Ok(());
    }
    // Stay on this attempt even if a retry places a newer one meanwhile.
    if a.attempt.is_none()
        && let Some(k) = header(&headers, "x-troupe-log-attempt")
    {
        q.push_str(&format!("&attempt={k}"));
    }
    let mut next = header(&headers, "x-troupe-log-next-offset")
        .unwrap_or("0")
        .to_string();
    let mut running = header(&headers, "x-troupe-attempt-running") == Some("true");
    let mut errors = 0;
    while running && started.elapsed() < FOLLOW_LIMIT {
        std::thread::sleep(FOLLOW_EVERY);
        match client.bytes(&path(&format!("{q}&offset={next}"))) {
            Ok((body, h)) => {
                errors = 0;
                out.write_all(&body)?;
                out.flush()?;
                if let Some(n) = header(&h, "x-troupe-log-next-offset") {
                    next = n.to_string();
                }
                running = header(&h, "x-troupe-attempt-running") == Some("true");
            }
            Err(e) if retryable(&e) && errors < ERRORS_MAX => errors += 1,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn is_404(e: &anyhow::Error) -> bool {
    e.downcast_ref::<crate::client::ApiError>()
        .is_some_and(|a| a.status == 404)
}
