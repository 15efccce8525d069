//! One worker process: started with its step's argv and env, its stdin fed with request lines
//! from its pool, its stdout read line by line (bounded) and parsed, its stderr appended to its
//! own log file. Everything it sees or does is sent to the pool as a [`PoolMsg`]; the pool
//! decides (timeouts, restarts, which attempts fail).

use super::pool::PoolMsg;
use super::protocol::{self, Line};
use ractor::ActorRef;
use std::path::PathBuf;
use std::process::Stdio;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, oneshot};

/// Most bytes of one stdout line: a full batch of 64 KiB outputs, plus room.
pub fn line_max(batch: u32) -> usize {
    (batch as usize) * (troupe_scheduler::spec::OUTPUT_BYTES_MAX + 1024) + (1 << 20)
}

pub struct Launch {
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub stderr_log: PathBuf,
    pub line_max: usize,
}

/// What a worker process task needs to talk to its pool.
pub struct Wiring {
    pub worker: usize,
    pub pool: ActorRef<PoolMsg>,
    pub requests: mpsc::Receiver<String>,
    pub stop: oneshot::Receiver<()>,
}

/// Runs the worker process until it exits or is stopped; tells the pool how it ended.
pub async fn run(launch: Launch, w: Wiring) {
    let Wiring {
        worker,
        pool,
        mut requests,
        stop,
    } = w;
    let mut child = match start(&launch) {
        Ok(c) => c,
        Err(e) => {
            let _ = pool.cast(PoolMsg::Exited(worker, e));
            return;
        }
    };
    let pid = child.id();
    let (Some(mut stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
        let _ = pool.cast(PoolMsg::Exited(worker, "has no stdin or stdout".into()));
        return;
    };
    // After a failed write (the worker died) requests are still taken and dropped, so the pool
    // hears how the worker ended (`Exited`, with its exit code) rather than a closed channel.
    let writer = tokio::spawn(async move {
        let mut open = true;
        while let Some(line) = requests.recv().await {
            if open {
                open =
                    stdin.write_all(line.as_bytes()).await.is_ok() && stdin.flush().await.is_ok();
            }
        }
    });
    let reader = tokio::spawn(read_lines(stdout, launch.line_max, worker, pool.clone()));
    let ended = tokio::select! {
        status = child.wait() => Some(status),
        _ = stop => None,
    };
    if let Some(pid) = pid {
        // The worker and whatever it started: nothing outlives the worker.
        // SAFETY: kill(2) on the process group created for this worker (process_group(0)).
        unsafe {
            libc::kill(-(pid as libc::pid_t), libc::SIGKILL);
        }
    }
    let _ = child.wait().await;
    // Let the reader deliver what the worker printed before it exited.
    let _ = tokio::time::timeout(std::time::Duration::from_millis(200), reader).await;
    if let Some(status) = ended {
        let how = match status {
            Ok(s) => match s.code() {
                Some(code) => format!("exited with code {code}"),
                None => format!(
                    "was killed by signal {}",
                    std::os::unix::process::ExitStatusExt::signal(&s).unwrap_or(0)
                ),
            },
            Err(e) => format!("could not be waited for: {e}"),
        };
        let tail = last_line(&launch.stderr_log)
            .map(|l| format!(": {l}"))
            .unwrap_or_default();
        let _ = pool.cast(PoolMsg::Exited(worker, format!("{how}{tail}")));
    }
    // Only now: until the pool has heard how the worker ended, its requests are still taken.
    writer.abort();
}

fn start(l: &Launch) -> Result<tokio::process::Child, String> {
    if let Some(dir) = l.stderr_log.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let err = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&l.stderr_log)
        .map_err(|e| format!("cannot open {}: {e}", l.stderr_log.display()))?;
    let mut cmd = tokio::process::Command::new(&l.argv[0]);
    cmd.args(&l.argv[1..])
        .envs(l.env.iter().cloned())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(err))
        .process_group(0)
        .kill_on_drop(true);
    // SAFETY: prctl in the child between fork and exec is async-signal-safe; it makes the
    // kernel kill the worker if this node dies.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    cmd.spawn().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            format!(
                "could not start: executable `{}` not found (is it installed and on PATH?)",
                l.argv[0]
            )
        } else {
            format!("could not start `{}`: {e}", l.argv[0])
        }
    })
}

/// Reads stdout lines of at most `max` bytes and sends what they say to the pool. A line that
/// breaks the protocol (or is too long) ends reading: the pool stops the worker.
async fn read_lines(
    stdout: tokio::process::ChildStdout,
    max: usize,
    worker: usize,
    pool: ActorRef<PoolMsg>,
) {
    let mut r = BufReader::with_capacity(64 * 1024, stdout);
    let mut line = Vec::new();
    loop {
        line.clear();
        match read_bounded(&mut r, &mut line, max).await {
            Ok(false) => return,
            Ok(true) => {}
            Err(e) => {
                let _ = pool.cast(PoolMsg::Broke(worker, e));
                return;
            }
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let msg = match protocol::parse(&line) {
            Ok(Line::Ready) => PoolMsg::Ready(worker),
            Ok(Line::Results(r)) => PoolMsg::Answered(worker, r),
            Err(e) => {
                let _ = pool.cast(PoolMsg::Broke(worker, e));
                return;
            }
        };
        if pool.cast(msg).is_err() {
            return;
        }
    }
}

/// One line into `out` (without its newline); false at end of file. A line over `max` bytes is
/// an error (the worker's memory is not ours to spend).
async fn read_bounded(
    r: &mut BufReader<tokio::process::ChildStdout>,
    out: &mut Vec<u8>,
    max: usize,
) -> Result<bool, String> {
    loop {
        let buf = r
            .fill_buf()
            .await
            .map_err(|e| format!("stdout failed: {e}"))?;
        if buf.is_empty() {
            return Ok(!out.is_empty());
        }
        let (take, done) = match buf.iter().position(|b| *b == b'\n') {
            Some(i) => (i, true),
            None => (buf.len(), false),
        };
        if out.len() + take > max {
            return Err(format!("printed a line longer than {max} bytes"));
        }
        out.extend_from_slice(&buf[..take]);
        r.consume(if done { take + 1 } else { take });
        if done {
            return Ok(true);
        }
    }
}

/// The last non-empty line of the worker's stderr log (at most 300 characters).
fn last_line(path: &std::path::Path) -> Option<String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = std::fs::File::open(path).ok()?;
    let len = file.metadata().ok()?.len();
    file.seek(SeekFrom::Start(len.saturating_sub(4096))).ok()?;
    let mut tail = Vec::with_capacity(4096);
    file.take(4096).read_to_end(&mut tail).ok()?;
    let text = String::from_utf8_lossy(&tail);
    let line = text.lines().rev().find(|l| !l.trim().is_empty())?.trim();
    Some(line.chars().take(300).collect())
}
