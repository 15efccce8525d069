//! Executors: how a node runs an attempt — a process (argv) or a builtin handler.

mod builtin;
pub(crate) mod http;
mod logcap;
mod process;
mod spawn;
pub mod worker;

pub use process::reap_orphans;

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;
use troupe_actors::executor::{Executor, KillSignal};
use troupe_scheduler::spec::{Builtin, OUTPUT_BYTES_MAX};
use troupe_scheduler::{Json, Launch, Outcome, RunSpec};

/// Runs processes under the node's data dir and the builtin handlers.
pub struct LocalExecutor {
    pub data_dir: PathBuf,
    /// Time between SIGTERM and SIGKILL when an attempt is stopped.
    pub kill_grace: Duration,
    /// Most bytes kept of each attempt log (`.out`, `.err`); the tail is kept.
    pub max_log_bytes: u64,
    /// The node's clock (the `http` handler's rate limits read it).
    pub clock: troupe_clock::SharedClock,
}

impl Executor for LocalExecutor {
    fn run_inline(&self, spec: &RunSpec) -> Option<Outcome> {
        match &spec.launch {
            Launch::Builtin { handler, with } => builtin::inline(*handler, with, spec),
            Launch::Process { .. } => None,
            // The dispatcher hands these to the worker host; a runner never sees one.
            Launch::Worker { .. } => Some(Outcome::Failed {
                error: "a worker-step attempt reached a task runner".into(),
            }),
        }
    }

    fn run(
        &self,
        spec: RunSpec,
        kill: KillSignal,
    ) -> Pin<Box<dyn Future<Output = Outcome> + Send>> {
        let data_dir = self.data_dir.clone();
        let grace = self.kill_grace;
        let max_log = self.max_log_bytes;
        let clock = self.clock.clone();
        Box::pin(async move {
            match &spec.launch {
                Launch::Builtin {
                    handler: Builtin::Http,
                    with,
                } => http::run(&spec, with, kill, clock.as_ref()).await,
                Launch::Builtin { with, .. } => builtin::sleep(with, spec.timeout_ms, kill).await,
                Launch::Process { .. } => {
                    process::run(&data_dir, &spec, kill, grace, max_log).await
                }
                Launch::Worker { .. } => Outcome::Failed {
                    error: "a worker-step attempt reached a task runner".into(),
                },
            }
        })
    }
}

/// Checks and wraps a task's JSON output (size limit, valid JSON).
pub fn output_from_text(text: &[u8]) -> Outcome {
    if text.len() > OUTPUT_BYTES_MAX {
        return Outcome::Failed {
            error: format!(
                "output is {} bytes; the limit is {OUTPUT_BYTES_MAX} (the 64 KiB output limit): write large results to a file and output its path",
                text.len()
            ),
        };
    }
    if text.iter().all(u8::is_ascii_whitespace) {
        return Outcome::Succeeded { output: None };
    }
    match serde_json::from_slice::<serde_json::Value>(text) {
        Ok(v) => Outcome::Succeeded {
            output: Some(Json::from_value(&v)),
        },
        Err(e) => Outcome::Failed {
            error: format!("$TROUPE_OUTPUT is not valid JSON: {e}"),
        },
    }
}
