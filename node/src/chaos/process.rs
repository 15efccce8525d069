//! The process faults: `kill` (SIGKILL this process; a detached helper starts it again with the
//! same command line, environment and data dir) and `pause` (SIGSTOP this process; a detached
//! helper sends SIGCONT). The helpers are this binary's hidden `troupe chaos restarter` and
//! `troupe chaos resumer` subcommands, in their own session (`setsid`), so they outlive the
//! node. `data_dir/node.pid` always names the process that holds the data dir (the node, or the
//! restarter that will become it by `exec`), so `troupe dev --nodes N` and the tests stop a
//! restarted node too.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// The file naming the process of a data dir (chaos mode).
pub const PID_FILE: &str = "node.pid";

/// This process's command line and environment as it started (before the node removed its
/// secrets from its environment): a killed node comes back with exactly these.
static ORIGINAL: OnceLock<Started> = OnceLock::new();

/// A command line and an environment.
type Started = (Vec<OsString>, Vec<(OsString, OsString)>);

/// Call first thing in `main`, before the environment is changed.
pub fn remember_command() {
    let _ = ORIGINAL.set((std::env::args_os().collect(), std::env::vars_os().collect()));
}

/// Writes this process's pid to `data_dir/node.pid`.
pub fn write_pid_file(data_dir: &Path) -> std::io::Result<()> {
    std::fs::write(data_dir.join(PID_FILE), format!("{}\n", std::process::id()))
}

/// The pid in `data_dir/node.pid`, if any.
pub fn read_pid_file(data_dir: &Path) -> Option<i32> {
    std::fs::read_to_string(data_dir.join(PID_FILE))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Whether process `pid` is a node (or its restarter) of `data_dir`: its command line has
/// `data_dir` as an argument, written as the caller gave it. A stale pid file may name a pid
/// that another process took since; this keeps a stop from killing that one.
pub fn is_node_of(pid: i32, data_dir: &Path) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let want = data_dir.as_os_str().as_encoded_bytes();
    cmdline.split(|b| *b == 0).any(|arg| arg == want)
}

fn exe() -> std::io::Result<PathBuf> {
    std::env::current_exe()
}

/// A helper in a session of its own, its stdin closed, its stdout and stderr this process's
/// (the node log), so that it outlives this process.
fn detached(mut cmd: Command) -> std::io::Result<std::process::Child> {
    use std::os::unix::process::CommandExt;
    cmd.stdin(Stdio::null());
    // SAFETY: setsid is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn()
}

/// Starts the restarter: after `after_ms` it becomes this node again (same argv and env).
pub fn spawn_restarter(data_dir: &Path, after_ms: u64) -> std::io::Result<()> {
    let (args, env) = ORIGINAL.get().ok_or_else(|| {
        std::io::Error::other("the node's command line was not recorded at start")
    })?;
    let mut cmd = Command::new(exe()?);
    cmd.env_clear().envs(env.iter().cloned());
    cmd.args([
        "chaos",
        "restarter",
        "--after-ms",
        &after_ms.to_string(),
        "--pid-file",
    ]);
    cmd.arg(data_dir.join(PID_FILE));
    cmd.arg("--");
    cmd.args(args.iter().skip(1));
    // Not waited for: this process dies next, and the restarter becomes the node by `exec`.
    detached(cmd).map(drop)
}

/// Starts the resumer: after `after_ms` it sends SIGCONT to this process.
pub fn spawn_resumer(after_ms: u64) -> std::io::Result<()> {
    let mut cmd = Command::new(exe()?);
    cmd.args([
        "chaos",
        "resumer",
        "--pid",
        &std::process::id().to_string(),
        "--after-ms",
        &after_ms.to_string(),
    ]);
    let mut child = detached(cmd)?;
    // Reaped once it has resumed this process (a thread, so no zombie is left).
    std::thread::spawn(move || child.wait());
    Ok(())
}

/// Dies at once, like `kill -9`: no shutdown, nothing flushed.
pub fn kill_self() -> ! {
    // SAFETY: plain syscalls on this process.
    unsafe {
        libc::kill(libc::getpid(), libc::SIGKILL);
    }
    // SIGKILL cannot be caught; this is not reached.
    std::process::abort()
}

/// Freezes this process (every thread) until something sends SIGCONT.
pub fn stop_self() {
    // SAFETY: plain syscalls on this process.
    unsafe {
        libc::kill(libc::getpid(), libc::SIGSTOP);
    }
}

/// `troupe chaos restarter`: writes its own pid to the pid file (it is the node-to-be), waits,
/// then `exec`s the node's command line with the environment it was given.
pub fn run_restarter(after_ms: u64, pid_file: &Path, argv: &[OsString]) -> std::io::Error {
    use std::os::unix::process::CommandExt;
    if let Err(e) = std::fs::write(pid_file, format!("{}\n", std::process::id())) {
        return e;
    }
    std::thread::sleep(std::time::Duration::from_millis(
        after_ms.min(super::fault::FOR_MAX_MS),
    ));
    let exe = match exe() {
        Ok(e) => e,
        Err(e) => return e,
    };
    eprintln!("troupe chaos: restarting the killed node after {after_ms} ms");
    // Only returns on failure.
    Command::new(exe).args(argv).exec()
}

/// `troupe chaos resumer`: waits, then sends SIGCONT to `pid`.
pub fn run_resumer(pid: i32, after_ms: u64) -> std::io::Result<()> {
    std::thread::sleep(std::time::Duration::from_millis(
        after_ms.min(super::fault::FOR_MAX_MS),
    ));
    // SAFETY: a plain syscall.
    if unsafe { libc::kill(pid, libc::SIGCONT) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
