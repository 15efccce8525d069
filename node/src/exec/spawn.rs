//! Starting an attempt's process off the async worker threads, without copying the node.
//!
//! A few long-lived `troupe-spawn-N` threads create the log files and start the process. On
//! Linux (5.3 or later) they use `clone(CLONE_VM | CLONE_VFORK | CLONE_PIDFD)`, as
//! `posix_spawn` does: the child runs on a small stack of its own inside the node's memory until
//! it execs, so nothing of the node is copied (a `fork` copies its page tables, and `std`'s
//! `Command` falls back to `fork` as soon as a `pre_exec` hook is set). Between the clone and the
//! exec the child sets `PR_SET_PDEATHSIG`, its process group and its stdio with raw system calls
//! only. Because the death signal follows the *thread* that started the process, the spawner
//! threads never exit. The wait is on the pidfd (epoll through tokio), not SIGCHLD.
//!
//! Elsewhere (other systems, older kernels) the same threads use tokio's `Command` with a
//! `pre_exec` hook: the old fork + exec path.

use std::collections::{BTreeMap, HashSet};
use std::ffi::{CString, OsString};
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::{Mutex, OnceLock, mpsc};

/// What to start. `env` is applied over the node's environment, later entries winning.
pub struct Job {
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub out: PathBuf,
    pub err: PathBuf,
    pub json: PathBuf,
    /// `<data>/run`: marked before the first process of this data directory starts.
    pub run_dir: PathBuf,
    pub node: String,
}

pub enum Failure {
    /// The log files could not be created.
    Files(io::Error),
    /// The program could not be started.
    Start(io::Error),
}

pub enum Child {
    #[cfg(target_os = "linux")]
    Pidfd(linux::PidfdChild),
    Tokio(tokio::process::Child),
}

impl Child {
    pub fn id(&self) -> Option<u32> {
        match self {
            #[cfg(target_os = "linux")]
            Child::Pidfd(c) => Some(c.pid as u32),
            Child::Tokio(c) => c.id(),
        }
    }

    /// Waits for the process to exit and reaps it. Cancel-safe.
    pub async fn wait(&mut self) -> io::Result<ExitStatus> {
        match self {
            #[cfg(target_os = "linux")]
            Child::Pidfd(c) => c.wait().await,
            Child::Tokio(c) => c.wait().await,
        }
    }
}

/// Creates the log files and starts the process on a spawner thread.
pub async fn spawn(job: Job) -> Result<Child, Failure> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let handle = tokio::runtime::Handle::current();
    pool().send(Request { job, handle, tx });
    match rx.await {
        Ok(Ok(Started::Tokio(c))) => Ok(Child::Tokio(c)),
        #[cfg(target_os = "linux")]
        Ok(Ok(Started::Pidfd(pid, fd))) => linux::PidfdChild::new(pid, fd)
            .map(Child::Pidfd)
            .map_err(Failure::Start),
        Ok(Err(f)) => Err(f),
        Err(_) => Err(Failure::Start(io::Error::other(
            "the spawner thread is gone",
        ))),
    }
}

enum Started {
    #[cfg(target_os = "linux")]
    Pidfd(libc::pid_t, std::os::fd::OwnedFd),
    Tokio(tokio::process::Child),
}

struct Request {
    job: Job,
    handle: tokio::runtime::Handle,
    tx: tokio::sync::oneshot::Sender<Result<Started, Failure>>,
}

struct Pool {
    senders: Vec<mpsc::Sender<Request>>,
    next: std::sync::atomic::AtomicUsize,
}

impl Pool {
    fn send(&self, req: Request) {
        let i = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % self.senders.len();
        // The threads never exit, so the send cannot fail; if it did, the caller sees the
        // dropped reply sender as "the spawner thread is gone".
        let _ = self.senders[i].send(req);
    }
}

fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| {
        // Each thread waits while its child gets from clone to exec; with a few of them the
        // next spawn need not wait for that (on 2 cores: 1 thread ~1,400 tasks/s, 2 ~1,900,
        // 4 ~2,000).
        let n = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
            .clamp(4, 8);
        let senders = (0..n)
            .map(|i| {
                let (tx, rx) = mpsc::channel::<Request>();
                std::thread::Builder::new()
                    .name(format!("troupe-spawn-{i}"))
                    .spawn(move || spawner(rx))
                    .expect("cannot start a spawner thread");
                tx
            })
            .collect();
        Pool {
            senders,
            next: Default::default(),
        }
    })
}

/// Data directories whose `run/` marker this process already wrote (see `mark_run_dir`).
pub fn marked() -> &'static Mutex<HashSet<PathBuf>> {
    static MARKED: OnceLock<Mutex<HashSet<PathBuf>>> = OnceLock::new();
    MARKED.get_or_init(Default::default)
}

/// Name of the marker in `<data>/run/`: process attempts may have run since the last start.
pub const MARKER: &str = "processes";

fn mark_run_dir(run_dir: &Path, node: &str) -> io::Result<()> {
    if marked().lock().unwrap().contains(run_dir) {
        return Ok(());
    }
    std::fs::create_dir_all(run_dir)?;
    std::fs::write(run_dir.join(MARKER), node)?;
    marked().lock().unwrap().insert(run_dir.to_path_buf());
    Ok(())
}

// Runs forever: processes started here get their death signal when this thread ends.
fn spawner(rx: mpsc::Receiver<Request>) {
    #[cfg(target_os = "linux")]
    let mut fast = linux::Spawner::new();
    while let Ok(Request { job, handle, tx }) = rx.recv() {
        let result = (|| {
            mark_run_dir(&job.run_dir, &job.node).map_err(Failure::Files)?;
            let (out, err) = log_files(&job).map_err(Failure::Files)?;
            #[cfg(target_os = "linux")]
            if let Some(s) = fast.as_mut() {
                return s
                    .spawn(&job, &out, &err)
                    .map(|(pid, fd)| Started::Pidfd(pid, fd))
                    .map_err(Failure::Start);
            }
            let _rt = handle.enter();
            fallback(&job, out, err)
                .map(Started::Tokio)
                .map_err(Failure::Start)
        })();
        // `out` and `err` are closed here: the node keeps no descriptor of a running attempt
        // but its pidfd.
        let _ = tx.send(result);
    }
}

/// `.out` and `.err`, created empty. The step's directory is made on the first attempt that
/// needs it; `.json` can only be left over when `.out` already existed (a reused data dir).
fn log_files(job: &Job) -> io::Result<(File, File)> {
    // O_APPEND: the node may cut a log's head while the attempt writes (see `logcap`).
    let create_new = |p: &Path| File::options().append(true).create_new(true).open(p);
    let out = match create_new(&job.out) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if let Some(dir) = job.out.parent() {
                std::fs::create_dir_all(dir)?;
            }
            create_new(&job.out)?
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            let _ = std::fs::remove_file(&job.json);
            let _ = std::fs::remove_file(&job.out);
            create_new(&job.out)?
        }
        Err(e) => return Err(e),
    };
    let _ = std::fs::remove_file(&job.err);
    Ok((out, create_new(&job.err)?))
}

/// The node's environment with the job's variables over it, as `std`'s `Command` builds it.
fn environment(job: &Job) -> BTreeMap<OsString, OsString> {
    let mut env: BTreeMap<OsString, OsString> = std::env::vars_os().collect();
    for (k, v) in &job.env {
        env.insert(k.into(), v.into());
    }
    env
}

fn fallback(job: &Job, out: File, err: File) -> io::Result<tokio::process::Child> {
    let mut cmd = tokio::process::Command::new(&job.argv[0]);
    cmd.args(&job.argv[1..])
        .env_clear()
        .envs(environment(job))
        .stdin(std::process::Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0);
    #[cfg(target_os = "linux")]
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn()
}

fn cstring(s: impl Into<Vec<u8>>) -> io::Result<CString> {
    CString::new(s).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "nul byte found in provided data",
        )
    })
}

#[cfg(target_os = "linux")]
mod linux {
    use super::{Job, cstring, environment};
    use std::ffi::{CString, c_char, c_int, c_void};
    use std::fs::File;
    use std::io;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::process::ExitStatusExt;
    use std::process::ExitStatus;
    use std::ptr::{null, null_mut};
    use std::sync::atomic::{AtomicI32, Ordering};
    use tokio::io::unix::AsyncFd;

    const STACK: usize = 64 * 1024;
    const PAGE: usize = 4096;

    /// A spawner thread's tools: the child's stack (with a guard page) and `/dev/null`.
    pub struct Spawner {
        stack: *mut u8,
        dev_null: File,
    }

    // SAFETY: the stack mapping is only used by the thread that owns the Spawner.
    unsafe impl Send for Spawner {}

    impl Spawner {
        /// `None` where the kernel has no pollable pidfds (before 5.3): use the fallback.
        pub fn new() -> Option<Spawner> {
            // SAFETY: plain system calls; the fd is closed at once.
            unsafe {
                let fd = libc::syscall(libc::SYS_pidfd_open, libc::getpid(), 0);
                if fd < 0 {
                    return None;
                }
                libc::close(fd as c_int);
                let stack = libc::mmap(
                    null_mut(),
                    STACK + PAGE,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
                    -1,
                    0,
                );
                if stack == libc::MAP_FAILED {
                    return None;
                }
                // The stack grows down: its lowest page stays unmapped-for-use.
                libc::mprotect(stack, PAGE, libc::PROT_NONE);
                let dev_null = File::open("/dev/null").ok()?;
                Some(Spawner {
                    stack: stack as *mut u8,
                    dev_null,
                })
            }
        }

        pub fn spawn(
            &mut self,
            job: &Job,
            out: &File,
            err: &File,
        ) -> io::Result<(libc::pid_t, OwnedFd)> {
            let program = job.argv[0].as_str();
            let env = environment(job);
            let argv: Vec<CString> = job
                .argv
                .iter()
                .map(|a| cstring(a.as_bytes()))
                .collect::<io::Result<_>>()?;
            let envp: Vec<CString> = env
                .iter()
                .map(|(k, v)| {
                    let mut kv = k.as_bytes().to_vec();
                    kv.push(b'=');
                    kv.extend_from_slice(v.as_bytes());
                    cstring(kv)
                })
                .collect::<io::Result<_>>()?;
            // Where to look for the program, as execvp(3) does; the PATH is the child's (as
            // in `std`: the step's `env` may set it).
            let candidates: Vec<CString> = if program.contains('/') {
                vec![cstring(program)?]
            } else {
                let path = env
                    .get(std::ffi::OsStr::new("PATH"))
                    .map(|p| p.as_bytes().to_vec())
                    .unwrap_or_else(|| b"/bin:/usr/bin".to_vec());
                path.split(|b| *b == b':')
                    .map(|dir| {
                        if dir.is_empty() {
                            cstring(program)
                        } else {
                            let mut p = dir.to_vec();
                            if !p.ends_with(b"/") {
                                p.push(b'/');
                            }
                            p.extend_from_slice(program.as_bytes());
                            cstring(p)
                        }
                    })
                    .collect::<io::Result<_>>()?
            };
            let ptrs = |v: &[CString]| -> Vec<*const c_char> {
                v.iter().map(|c| c.as_ptr()).chain([null()]).collect()
            };
            let (argv_p, envp_p, cand_p) = (ptrs(&argv), ptrs(&envp), ptrs(&candidates));
            let args = ChildArgs {
                candidates: cand_p.as_ptr(),
                argv: argv_p.as_ptr(),
                envp: envp_p.as_ptr(),
                stdio: [self.dev_null.as_raw_fd(), out.as_raw_fd(), err.as_raw_fd()],
                // SAFETY: getpid has no preconditions.
                parent: unsafe { libc::getpid() },
                errno: AtomicI32::new(0),
            };
            let mut pidfd: c_int = -1;
            // SAFETY: the child runs `child_main` on its own stack, sharing our memory, while
            // this thread is suspended (CLONE_VFORK) until it execs or exits. It reads `args`
            // (alive until then) and only makes async-signal-safe system calls. All signals
            // are blocked around the clone so no handler of the node runs in the child.
            let pid = unsafe {
                let mut all: libc::sigset_t = std::mem::zeroed();
                let mut old: libc::sigset_t = std::mem::zeroed();
                libc::sigfillset(&mut all);
                libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
                let pid = libc::clone(
                    child_main,
                    self.stack.add(PAGE + STACK) as *mut c_void,
                    libc::CLONE_VM | libc::CLONE_VFORK | libc::CLONE_PIDFD | libc::SIGCHLD,
                    &args as *const ChildArgs as *mut c_void,
                    &mut pidfd as *mut c_int,
                );
                let clone_error = io::Error::last_os_error();
                libc::pthread_sigmask(libc::SIG_SETMASK, &old, null_mut());
                if pid < 0 {
                    return Err(clone_error);
                }
                pid
            };
            // SAFETY: CLONE_PIDFD gave us this descriptor (close-on-exec), and it is ours alone.
            let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
            match args.errno.load(Ordering::SeqCst) {
                0 => Ok((pid, pidfd)),
                e => {
                    // It exited without exec: reap it before reporting why.
                    let mut status = 0;
                    // SAFETY: waitpid on our own child.
                    unsafe { libc::waitpid(pid, &mut status, 0) };
                    Err(io::Error::from_raw_os_error(e))
                }
            }
        }
    }

    #[repr(C)]
    struct ChildArgs {
        candidates: *const *const c_char,
        argv: *const *const c_char,
        envp: *const *const c_char,
        stdio: [c_int; 3],
        parent: libc::pid_t,
        /// Set by the child when it could not exec; read once the clone returned.
        errno: AtomicI32,
    }

    /// The child between clone and exec: system calls only (no allocation, no locks).
    extern "C" fn child_main(arg: *mut c_void) -> c_int {
        // SAFETY: `arg` points at the parent's ChildArgs, alive while the parent is suspended.
        unsafe {
            let a = &*(arg as *const ChildArgs);
            let fail = |e: c_int| -> c_int {
                a.errno
                    .store(if e == 0 { libc::EINVAL } else { e }, Ordering::SeqCst);
                libc::_exit(127)
            };
            let errno = || *libc::__errno_location();
            // A new process group per attempt.
            if libc::setpgid(0, 0) != 0 {
                return fail(errno());
            }
            for (target, &fd) in a.stdio.iter().enumerate() {
                let target = target as c_int;
                let r = if fd == target {
                    libc::fcntl(fd, libc::F_SETFD, 0)
                } else {
                    libc::dup2(fd, target)
                };
                if r < 0 {
                    return fail(errno());
                }
            }
            // Die with the node; if it already died (we were re-parented), do not start.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return fail(errno());
            }
            if libc::getppid() != a.parent {
                libc::_exit(127);
            }
            // Default dispositions for every signal the node handles (our copy of the table:
            // no CLONE_SIGHAND), SIGPIPE too (Rust ignores it), then an empty mask, as `std`.
            for sig in 1..=libc::SIGRTMAX() {
                if sig == libc::SIGKILL || sig == libc::SIGSTOP {
                    continue;
                }
                let mut old: libc::sigaction = std::mem::zeroed();
                if libc::sigaction(sig, null(), &mut old) != 0 {
                    continue;
                }
                if sig == libc::SIGPIPE
                    || (old.sa_sigaction != libc::SIG_DFL && old.sa_sigaction != libc::SIG_IGN)
                {
                    let mut dfl: libc::sigaction = std::mem::zeroed();
                    dfl.sa_sigaction = libc::SIG_DFL;
                    libc::sigaction(sig, &dfl, null_mut());
                }
            }
            let mut none: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut none);
            libc::sigprocmask(libc::SIG_SETMASK, &none, null_mut());
            // execvp(3)'s search: go on past the directories that do not have it.
            let mut result = libc::ENOENT;
            let mut denied = false;
            let mut c = a.candidates;
            while !(*c).is_null() {
                libc::execve(*c, a.argv, a.envp);
                result = errno();
                match result {
                    libc::EACCES => denied = true,
                    libc::ENOENT
                    | libc::ENOTDIR
                    | libc::ESTALE
                    | libc::ELOOP
                    | libc::ENAMETOOLONG
                    | libc::ENODEV
                    | libc::ETIMEDOUT => {}
                    _ => break,
                }
                c = c.add(1);
            }
            if denied && matches!(result, libc::ENOENT | libc::ENOTDIR) {
                result = libc::EACCES;
            }
            fail(result)
        }
    }

    /// A child started by `Spawner`, waited for through its pidfd.
    pub struct PidfdChild {
        pub pid: libc::pid_t,
        fd: Option<AsyncFd<OwnedFd>>,
        status: Option<ExitStatus>,
    }

    impl PidfdChild {
        pub fn new(pid: libc::pid_t, fd: OwnedFd) -> io::Result<PidfdChild> {
            Ok(PidfdChild {
                pid,
                // SAFETY: an OwnedFd keeps its descriptor open, unchanged, while it is owned.
                fd: Some(unsafe {
                    AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE)
                        .map_err(io::Error::from)?
                }),
                status: None,
            })
        }

        fn try_reap(&mut self) -> io::Result<Option<ExitStatus>> {
            let r = reap(self.pid)?;
            if r.is_some() {
                self.status = r;
                self.fd = None;
            }
            Ok(r)
        }

        pub async fn wait(&mut self) -> io::Result<ExitStatus> {
            loop {
                if let Some(s) = self.status {
                    return Ok(s);
                }
                let Some(fd) = &self.fd else {
                    return Err(io::Error::other("no pidfd"));
                };
                // The pidfd turns readable when the process exits.
                let mut ready = fd.readable().await?;
                match reap(self.pid)? {
                    None => ready.clear_ready(),
                    Some(s) => {
                        drop(ready);
                        self.status = Some(s);
                        self.fd = None;
                    }
                }
            }
        }
    }

    fn reap(pid: libc::pid_t) -> io::Result<Option<ExitStatus>> {
        let mut status = 0;
        // SAFETY: waitpid on our own, not yet reaped child.
        match unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) } {
            0 => Ok(None),
            p if p == pid => Ok(Some(ExitStatus::from_raw(status))),
            _ => Err(io::Error::last_os_error()),
        }
    }

    impl Drop for PidfdChild {
        fn drop(&mut self) {
            if self.status.is_some() || matches!(self.try_reap(), Ok(Some(_))) {
                return;
            }
            // Still running (the attempt's future was dropped): reap it when it ends.
            let (pid, fd) = (self.pid, self.fd.take());
            if let (Ok(rt), Some(fd)) = (tokio::runtime::Handle::try_current(), fd) {
                rt.spawn(async move {
                    let _ = fd.readable().await;
                    let mut status = 0;
                    // SAFETY: waitpid on our own child, which has exited.
                    unsafe { libc::waitpid(pid, &mut status, 0) };
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn job(dir: &Path, argv: &[&str], env: &[(&str, &str)]) -> Job {
        Job {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            out: dir.join("logs/s/0-attempt-1.out"),
            err: dir.join("logs/s/0-attempt-1.err"),
            json: dir.join("logs/s/0-attempt-1.json"),
            run_dir: dir.join("run"),
            node: "node-test".into(),
        }
    }

    fn start_error(r: Result<Child, Failure>) -> io::Error {
        match r {
            Err(Failure::Start(e)) => e,
            Err(Failure::Files(e)) => panic!("files: {e}"),
            Ok(_) => panic!("it started"),
        }
    }

    #[tokio::test]
    async fn starts_with_its_env_stdio_and_own_process_group() {
        let tmp = tempfile::tempdir().unwrap();
        let j = job(
            tmp.path(),
            &[
                "sh",
                "-c",
                "echo $FOO; echo oops >&2; read x || echo eof; sleep 0.2",
            ],
            &[("FOO", "bar"), ("FOO", "baz")],
        );
        let (out, err) = (j.out.clone(), j.err.clone());
        let mut child = spawn(j).await.ok().unwrap();
        let pid = child.id().unwrap();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let pgrp = stat.rsplit_once(')').unwrap().1.split_whitespace().nth(2);
        assert_eq!(pgrp, Some(pid.to_string().as_str()), "{stat}");
        assert!(child.wait().await.unwrap().success());
        let (out, err) = (
            std::fs::read_to_string(out).unwrap(),
            std::fs::read_to_string(err).unwrap(),
        );
        assert_eq!((out.as_str(), err.as_str()), ("baz\neof\n", "oops\n"));
        assert!(tmp.path().join("run").join(MARKER).exists());
        // A second wait returns the same status.
        assert!(child.wait().await.unwrap().success());
    }

    #[tokio::test]
    async fn exit_codes_and_signals_come_back() {
        let tmp = tempfile::tempdir().unwrap();
        let mut c = spawn(job(tmp.path(), &["sh", "-c", "exit 3"], &[]))
            .await
            .ok()
            .unwrap();
        assert_eq!(c.wait().await.unwrap().code(), Some(3));
        let mut c = spawn(job(tmp.path(), &["sh", "-c", "kill -9 $$"], &[]))
            .await
            .ok()
            .unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(c.wait().await.unwrap().signal(), Some(9));
    }

    #[tokio::test]
    async fn missing_denied_and_path_from_the_step_env() {
        let tmp = tempfile::tempdir().unwrap();
        let e = start_error(spawn(job(tmp.path(), &["no-such-program-x"], &[])).await);
        assert_eq!(e.kind(), io::ErrorKind::NotFound, "{e}");
        let e = start_error(spawn(job(tmp.path(), &["/no/such/file"], &[])).await);
        assert_eq!(e.kind(), io::ErrorKind::NotFound, "{e}");
        let bin = tmp.path().join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        let script = bin.join("hello-x");
        std::fs::write(&script, "#!/bin/sh\necho hello\n").unwrap();
        let e = start_error(spawn(job(tmp.path(), &[script.to_str().unwrap()], &[])).await);
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied, "{e}");
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = format!("/nonexistent:{}", bin.display());
        let j = job(tmp.path(), &["hello-x"], &[("PATH", &path)]);
        let out = j.out.clone();
        let mut c = spawn(j).await.ok().unwrap();
        assert!(c.wait().await.unwrap().success());
        assert_eq!(std::fs::read_to_string(out).unwrap(), "hello\n");
    }

    #[tokio::test]
    async fn a_reused_stem_starts_empty_and_without_the_old_output() {
        let tmp = tempfile::tempdir().unwrap();
        let j = job(tmp.path(), &["sh", "-c", "echo one; echo '{}' > $OUT"], &[]);
        let (out, json) = (j.out.clone(), j.json.clone());
        let mut j = j;
        j.env.push(("OUT".into(), json.display().to_string()));
        let mut c = spawn(j).await.ok().unwrap();
        assert!(c.wait().await.unwrap().success());
        assert!(json.exists());
        let mut c = spawn(job(tmp.path(), &["true"], &[])).await.ok().unwrap();
        assert!(c.wait().await.unwrap().success());
        assert_eq!(std::fs::read_to_string(out).unwrap(), "");
        assert!(!json.exists());
    }

    #[tokio::test]
    async fn the_fork_fallback_starts_the_same_way() {
        let tmp = tempfile::tempdir().unwrap();
        let j = job(tmp.path(), &["sh", "-c", "echo $FOO"], &[("FOO", "bar")]);
        let (out, err) = log_files(&j).unwrap();
        let mut c = Child::Tokio(fallback(&j, out, err).unwrap());
        assert!(c.wait().await.unwrap().success());
        assert_eq!(std::fs::read_to_string(&j.out).unwrap(), "bar\n");
    }
}
