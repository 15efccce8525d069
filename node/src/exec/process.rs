//! The process executor: argv (never a shell), env, per-attempt log files, `$TROUPE_OUTPUT`,
//! and a timeout that sends SIGTERM, then SIGKILL, to the attempt's whole process group.

use super::output_from_text;
use super::spawn::{self, Child, Failure};
use std::path::Path;
use std::process::ExitStatus;
use std::time::Duration;
use troupe_actors::executor::KillSignal;
use troupe_scheduler::spec::OUTPUT_BYTES_MAX;
use troupe_scheduler::units::format_ms;
use troupe_scheduler::{Launch, Outcome, RunSpec};

pub async fn run(
    data_dir: &Path,
    spec: &RunSpec,
    mut kill: KillSignal,
    grace: Duration,
    max_log: u64,
) -> Outcome {
    let Launch::Process { argv, env } = &spec.launch else {
        return Outcome::Failed {
            error: "not a process".into(),
        };
    };
    let stem = data_dir.join(&spec.log_stem);
    let (out_path, err_path, json_path) = (
        stem.with_extension("out"),
        stem.with_extension("err"),
        stem.with_extension("json"),
    );
    let mut vars = env.clone();
    let task_id = format!("{}/{}/{}", spec.workflow, spec.step_id, spec.task.item);
    for (k, v) in [
        ("TROUPE_WORKFLOW_ID", spec.workflow.clone()),
        ("TROUPE_STEP", spec.step_id.clone()),
        ("TROUPE_TASK_ID", task_id),
        ("TROUPE_ATTEMPT", spec.attempt.to_string()),
        ("TROUPE_NODE", spec.node.clone()),
        ("TROUPE_ITERATION", spec.iteration.to_string()),
        ("TROUPE_OUTPUT", json_path.to_string_lossy().into_owned()),
        // Only the GPUs placed on this attempt are visible to it (none if it asked for none).
        ("CUDA_VISIBLE_DEVICES", spec.gpus.join(",")),
        ("TROUPE_GPUS", spec.gpus.join(",")),
    ] {
        vars.push((k.to_string(), v));
    }
    // W3C trace context of the attempt's span (`--otlp-endpoint`): the task's spans join it.
    if let Some(tp) = crate::otel::attempt_traceparent(spec) {
        vars.push(("TRACEPARENT".to_string(), tp));
    }
    if let Some(item) = &spec.item {
        let text = match item.value() {
            serde_json::Value::String(s) => s,
            _ => item.0.clone(),
        };
        vars.push(("TROUPE_ITEM".to_string(), text));
    }
    if let Some(input) = &spec.input {
        let text = match input.value() {
            serde_json::Value::String(s) => s,
            _ => input.0.clone(),
        };
        vars.push(("TROUPE_INPUT".to_string(), text));
    }
    let job = spawn::Job {
        argv: argv.clone(),
        env: vars,
        out: out_path.clone(),
        err: err_path.clone(),
        json: json_path.clone(),
        run_dir: data_dir.join(RUN_DIR),
        node: spec.node.clone(),
    };
    let mut child = match spawn::spawn(job).await {
        Ok(c) => c,
        Err(Failure::Files(e)) => {
            return Outcome::Failed {
                error: format!("cannot create log files under {}: {e}", stem.display()),
            };
        }
        Err(Failure::Start(e)) if e.kind() == std::io::ErrorKind::NotFound => {
            return Outcome::Failed {
                error: format!(
                    "executable `{}` not found (is it installed and on PATH?)",
                    argv[0]
                ),
            };
        }
        Err(Failure::Start(e)) => {
            return Outcome::Failed {
                error: format!("cannot start `{}`: {e}", argv[0]),
            };
        }
    };
    let limit = spec
        .timeout_ms
        .map(Duration::from_millis)
        .unwrap_or(Duration::MAX);
    let group = child.id();
    let deadline = tokio::time::sleep(limit);
    tokio::pin!(deadline);
    // While it runs, its logs are kept under --max-log-bytes (see `logcap`).
    let mut check = tokio::time::interval_at(
        tokio::time::Instant::now() + LOG_CHECK_EVERY,
        LOG_CHECK_EVERY,
    );
    let why_stopped = loop {
        tokio::select! {
            status = child.wait() => {
                // The attempt ends with its main process: what it left running in its process
                // group (`sh -c "server &"`) is stopped, so nothing outlives the attempt.
                if let Some(pid) = group {
                    signal_group(pid, libc::SIGKILL);
                }
                cap_logs(&out_path, &err_path, &stem, max_log).await;
                return finished(status, &err_path, &json_path).await;
            }
            _ = &mut deadline => break format!("timed out after {}", format_ms(limit.as_millis() as u64)),
            _ = &mut kill => break "stopped: the attempt was cancelled".to_string(),
            _ = check.tick() => cap_logs(&out_path, &err_path, &stem, max_log).await,
        }
    };
    stop_group(&mut child, grace).await;
    cap_logs(&out_path, &err_path, &stem, max_log).await;
    Outcome::Failed { error: why_stopped }
}

/// How often a running attempt's log sizes are checked.
const LOG_CHECK_EVERY: Duration = Duration::from_secs(1);

/// Cuts an attempt's logs that are over the cap (two `stat`s when they are not).
async fn cap_logs(out: &Path, err: &Path, stem: &Path, max: u64) {
    let over = |p: &Path| std::fs::metadata(p).is_ok_and(|m| m.len() > max);
    if over(out) || over(err) {
        let stem = stem.to_path_buf();
        let _ = tokio::task::spawn_blocking(move || super::logcap::cap_both(&stem, max)).await;
    }
}

/// `<data>/run/` holds a marker while process attempts may be running: written before the
/// first process this node process starts on the data dir, cleared by `reap_orphans`.
pub const RUN_DIR: &str = "run";

/// At start-up: kill what attempts of an earlier run of this node left behind. PR_SET_PDEATHSIG
/// only reaches an attempt's first process; its children (say, `sleep` under `sh`) outlive a
/// SIGKILLed node. If the earlier run started processes (`run/` is there), every process that
/// carries this node's `TROUPE_NODE` in its environment is killed: attempts inherit it, and a
/// node never has attempts running before this point.
pub fn reap_orphans(data_dir: &Path, node: &str) -> usize {
    let run_dir = data_dir.join(RUN_DIR);
    if let Ok(abs) = std::path::absolute(&run_dir) {
        spawn::marked().lock().unwrap().remove(&abs);
    }
    spawn::marked().lock().unwrap().remove(&run_dir);
    let Ok(mut entries) = std::fs::read_dir(&run_dir) else {
        return 0;
    };
    let any = entries.next().is_some();
    let _ = std::fs::remove_dir_all(&run_dir);
    if !any {
        return 0;
    }
    let tag = format!("TROUPE_NODE={node}");
    let me = std::process::id() as i32;
    let mut killed = 0;
    for proc_entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = proc_entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        if environ.split(|b| *b == 0).any(|kv| kv == tag.as_bytes()) {
            // SAFETY: kill(2) on a process we verified is one of this node's former attempts.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
            killed += 1;
        }
    }
    killed
}

/// SIGTERM to the process group, then SIGKILL after `grace`.
async fn stop_group(child: &mut Child, grace: Duration) {
    let Some(pid) = child.id() else { return };
    signal_group(pid, libc::SIGTERM);
    if tokio::time::timeout(grace, child.wait()).await.is_err() {
        signal_group(pid, libc::SIGKILL);
        let _ = child.wait().await;
    }
    // Children of the task that outlived it (it may not forward SIGTERM).
    signal_group(pid, libc::SIGKILL);
}

fn signal_group(pid: u32, sig: libc::c_int) {
    // SAFETY: kill(2) with a negative pid signals the process group we created with process_group(0).
    unsafe {
        libc::kill(-(pid as libc::pid_t), sig);
    }
}

async fn finished(
    status: std::io::Result<ExitStatus>,
    err_path: &Path,
    json_path: &Path,
) -> Outcome {
    let status = match status {
        Ok(s) => s,
        Err(e) => {
            return Outcome::Failed {
                error: format!("waiting for the process failed: {e}"),
            };
        }
    };
    if !status.success() {
        let how = match status.code() {
            Some(code) => format!("exited with code {code}"),
            None => format!(
                "killed by signal {}",
                std::os::unix::process::ExitStatusExt::signal(&status).unwrap_or(0)
            ),
        };
        let path = err_path.to_path_buf();
        let tail = tokio::task::spawn_blocking(move || last_line(&path))
            .await
            .ok()
            .flatten()
            .map(|l| format!(": {l}"))
            .unwrap_or_default();
        return Outcome::Failed {
            error: format!("{how}{tail}"),
        };
    }
    // One stat in the directory the attempt's logs were just created in: no blocking hop.
    match std::fs::metadata(json_path) {
        Err(_) => Outcome::Succeeded { output: None },
        Ok(m) if m.len() > OUTPUT_BYTES_MAX as u64 => Outcome::Failed {
            error: format!(
                "output is {} bytes; the limit is {OUTPUT_BYTES_MAX} (the 64 KiB output limit): write large results to a file and output its path",
                m.len()
            ),
        },
        Ok(_) => match tokio::fs::read(json_path).await {
            Ok(bytes) => output_from_text(&bytes),
            Err(e) => Outcome::Failed {
                error: format!("cannot read $TROUPE_OUTPUT: {e}"),
            },
        },
    }
}

/// The last non-empty line of stderr (at most 300 characters), for the error message.
fn last_line(path: &Path) -> Option<String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = std::fs::File::open(path).ok()?;
    let len = file.metadata().ok()?.len();
    file.seek(SeekFrom::Start(len.saturating_sub(4096))).ok()?;
    let mut tail = Vec::with_capacity(4096);
    file.take(4096).read_to_end(&mut tail).ok()?;
    let line = String::from_utf8_lossy(&tail)
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())?
        .trim()
        .to_string();
    Some(line.chars().take(300).collect())
}
