//! The process executor: argv (never a shell), env, per-attempt log files, `$TROUPE_OUTPUT`,
//! and a timeout that sends SIGTERM, then SIGKILL, to the attempt's whole process group.

use super::output_from_text;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;
use tokio::process::{Child, Command};
use troupe_actors::executor::KillSignal;
use troupe_scheduler::spec::OUTPUT_BYTES_MAX;
use troupe_scheduler::units::format_ms;
use troupe_scheduler::{Launch, Outcome, RunSpec};

pub async fn run(data_dir: &Path, spec: &RunSpec, kill: KillSignal, grace: Duration) -> Outcome {
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
    let files = (|| -> std::io::Result<_> {
        std::fs::create_dir_all(stem.parent().unwrap_or(data_dir))?;
        let _ = std::fs::remove_file(&json_path);
        Ok((
            std::fs::File::create(&out_path)?,
            std::fs::File::create(&err_path)?,
        ))
    })();
    let (out, err) = match files {
        Ok(f) => f,
        Err(e) => {
            return Outcome::Failed {
                error: format!("cannot create log files under {}: {e}", stem.display()),
            };
        }
    };
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("TROUPE_WORKFLOW_ID", &spec.workflow)
        .env("TROUPE_STEP", &spec.step_id)
        .env(
            "TROUPE_TASK_ID",
            format!("{}/{}/{}", spec.workflow, spec.step_id, spec.task.item),
        )
        .env("TROUPE_ATTEMPT", spec.attempt.to_string())
        .env("TROUPE_NODE", &spec.node)
        .env("TROUPE_ITERATION", spec.iteration.to_string())
        .env("TROUPE_OUTPUT", &json_path)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0);
    die_with_the_node(&mut cmd);
    // Only the GPUs placed on this attempt are visible to it (none if it asked for none).
    cmd.env("CUDA_VISIBLE_DEVICES", spec.gpus.join(","));
    cmd.env("TROUPE_GPUS", spec.gpus.join(","));
    if let Some(item) = &spec.item {
        let text = match item.value() {
            serde_json::Value::String(s) => s,
            _ => item.0.clone(),
        };
        cmd.env("TROUPE_ITEM", text);
    }
    if let Some(input) = &spec.input {
        let text = match input.value() {
            serde_json::Value::String(s) => s,
            _ => input.0.clone(),
        };
        cmd.env("TROUPE_INPUT", text);
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Outcome::Failed {
                error: format!(
                    "executable `{}` not found (is it installed and on PATH?)",
                    argv[0]
                ),
            };
        }
        Err(e) => {
            return Outcome::Failed {
                error: format!("cannot start `{}`: {e}", argv[0]),
            };
        }
    };
    // Remember the process group until the attempt ends, so a node that was killed can stop
    // whatever its attempts left behind when it starts again (see `reap_orphans`).
    let marker = child
        .id()
        .map(|pid| data_dir.join(RUN_DIR).join(pid.to_string()));
    if let Some(m) = &marker {
        let _ = std::fs::create_dir_all(data_dir.join(RUN_DIR))
            .and_then(|_| std::fs::write(m, &spec.node));
    }
    let _cleanup = RemoveOnDrop(marker);
    let limit = spec
        .timeout_ms
        .map(Duration::from_millis)
        .unwrap_or(Duration::MAX);
    let why_stopped = tokio::select! {
        status = child.wait() => return finished(status, &err_path, &json_path).await,
        _ = tokio::time::sleep(limit) => format!("timed out after {}", format_ms(limit.as_millis() as u64)),
        _ = kill => "stopped: the attempt was cancelled".to_string(),
    };
    stop_group(&mut child, grace).await;
    Outcome::Failed { error: why_stopped }
}

/// Where live attempts' process groups are recorded (one file per group, named by its id).
pub const RUN_DIR: &str = "run";

struct RemoveOnDrop(Option<std::path::PathBuf>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(p) = &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// At start-up: kill what attempts of an earlier run of this node left behind. PR_SET_PDEATHSIG
/// only reaches an attempt's first process; its children (say, `sleep` under `sh`) outlive a
/// SIGKILLed node. Only processes in a recorded group that carry this node's `TROUPE_NODE` are
/// killed, so a recycled group id never hits an unrelated process.
pub fn reap_orphans(data_dir: &Path, node: &str) -> usize {
    let Ok(entries) = std::fs::read_dir(data_dir.join(RUN_DIR)) else {
        return 0;
    };
    let groups: Vec<i64> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    let _ = std::fs::remove_dir_all(data_dir.join(RUN_DIR));
    if groups.is_empty() {
        return 0;
    }
    let tag = format!("TROUPE_NODE={node}");
    let mut killed = 0;
    for proc_entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = proc_entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // Field 5 (after the parenthesized command) is the process group.
        let pgrp = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(2))
            .and_then(|g| g.parse::<i64>().ok());
        if !pgrp.is_some_and(|g| groups.contains(&g)) {
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

/// The attempt's process gets SIGKILL if the node process dies (kill -9 included): a dead node's
/// attempts are requeued elsewhere as attempt + 1, so the old ones must not go on (self-fencing).
#[cfg(target_os = "linux")]
fn die_with_the_node(cmd: &mut Command) {
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

#[cfg(not(target_os = "linux"))]
fn die_with_the_node(_cmd: &mut Command) {}

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
        let tail = last_line(err_path)
            .map(|l| format!(": {l}"))
            .unwrap_or_default();
        return Outcome::Failed {
            error: format!("{how}{tail}"),
        };
    }
    match tokio::fs::metadata(json_path).await {
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
    let text = std::fs::read(path).ok()?;
    let tail = &text[text.len().saturating_sub(4096)..];
    let line = String::from_utf8_lossy(tail)
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())?
        .trim()
        .to_string();
    Some(line.chars().take(300).collect())
}
