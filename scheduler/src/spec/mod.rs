//! Workflow specs: the file format (`raw`), its validation (`compile`) and templating.
//!
//! Read in this order: `raw.rs` (what users write), `compile.rs` (what it means and every rule
//! that rejects a spec), `template.rs` (`{{ params.x }}` substitution), `error.rs`.

mod compile;
mod error;
pub mod http;
mod map;
pub mod raw;
mod template;

pub use compile::{
    compile, load_file, load_str, parse_json, parse_toml, resolve_lines, spec_digest,
};
pub use error::{SpecError, line_col, locate_toml};
pub use template::{TemplateVars, render, render_escaped};

use crate::json::Json;
use serde::{Deserialize, Serialize};

/// Largest output a task may write to `$TROUPE_OUTPUT`.
pub const OUTPUT_BYTES_MAX: usize = 64 * 1024;
/// Most items one map step may have.
pub const MAP_ITEMS_MAX: u32 = 10_000_000;
/// Default number of attempts of a step (1 = no retry).
pub const DEFAULT_ATTEMPTS: u32 = 1;

/// A validated workflow spec, as stored in the replicated state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Spec {
    pub name: String,
    pub description: String,
    pub timeout_ms: Option<u64>,
    /// Declared params with their defaults (JSON), in name order.
    pub params: Vec<(String, Json)>,
    pub steps: Vec<StepSpec>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepSpec {
    pub id: String,
    /// Indexes into `Spec::steps`.
    pub needs: Vec<u16>,
    pub action: Action,
    pub env: Vec<(String, String)>,
    pub resources: Resources,
    pub retry: RetryPolicy,
    pub timeout_ms: Option<u64>,
    pub map: Option<MapSource>,
    /// Most items in flight at once (the lazy expansion window).
    pub parallelism: u32,
    pub when: Option<String>,
    pub optional: bool,
    pub repeat: Option<LoopSpec>,
    pub on_failure: OnFailure,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Action {
    /// An argv (never a shell string); `{{ }}` templates are rendered when the attempt is placed.
    Run(Vec<String>),
    Builtin {
        handler: Builtin,
        with: Json,
    },
    /// Long-lived worker processes fed items in batches (JSON lines over stdin/stdout).
    Worker(WorkerSpec),
}

/// A warm worker step: see `docs/workflow-spec.md`, "Worker steps".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerSpec {
    /// The worker's argv (templates may not name the item: one worker serves many items).
    pub argv: Vec<String>,
    /// Most tasks in one batch (1..=4096).
    pub batch: u32,
    /// A batch that is not full is sent once its oldest task waited this long.
    pub max_wait_ms: u64,
    /// Most worker processes of this step on one node (0: the node's slots).
    pub max_workers: u32,
    /// A worker that had nothing to do for this long is stopped.
    pub idle_ms: u64,
    /// A worker must print `{"ready": true}` within this long of its start.
    pub startup_timeout_ms: u64,
}

/// Most tasks in one worker batch.
pub const WORKER_BATCH_MAX: u32 = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Builtin {
    Noop,
    Sleep,
    Fail,
    Echo,
    /// One request per attempt to an HTTP service; its JSON answer is the output.
    Http,
}

impl Builtin {
    pub fn name(self) -> &'static str {
        match self {
            Builtin::Noop => "noop",
            Builtin::Sleep => "sleep",
            Builtin::Fail => "fail",
            Builtin::Echo => "echo",
            Builtin::Http => "http",
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Resources {
    pub cpu_milli: u32,
    pub memory_bytes: u64,
    pub gpu: u32,
    /// Memory each GPU must have.
    pub gpu_memory_bytes: u64,
    /// A substring of the GPU's model name (`"H100"` matches `"NVIDIA H100 80GB HBM3"`).
    pub gpu_model: Option<String>,
    /// Node labels the step needs (`node_labels = { zone = "a" }`).
    pub labels: Vec<(String, String)>,
}

impl Resources {
    /// True when the step asks for nothing (it only needs a free slot).
    pub fn is_empty(&self) -> bool {
        self.cpu_milli == 0 && self.memory_bytes == 0 && self.gpu == 0 && self.labels.is_empty()
    }

    /// `2 cpu, 8GiB memory, 1 GPU (H100, 40GiB)` — for messages.
    pub fn describe(&self) -> String {
        use crate::units::format_size;
        let mut parts = Vec::new();
        if self.cpu_milli > 0 {
            parts.push(format!("{} cpu", self.cpu_milli as f64 / 1000.0));
        }
        if self.memory_bytes > 0 {
            parts.push(format!("{} memory", format_size(self.memory_bytes)));
        }
        if self.gpu > 0 {
            let mut g = format!("{} GPU{}", self.gpu, if self.gpu == 1 { "" } else { "s" });
            let detail: Vec<String> = self
                .gpu_model
                .iter()
                .cloned()
                .chain((self.gpu_memory_bytes > 0).then(|| format_size(self.gpu_memory_bytes)))
                .collect();
            if !detail.is_empty() {
                g.push_str(&format!(" ({})", detail.join(", ")));
            }
            parts.push(g);
        }
        for (k, v) in &self.labels {
            parts.push(format!("label {k}={v}"));
        }
        parts.join(", ")
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RetryPolicy {
    /// Total attempts before the task is failed (1 = no retry).
    pub attempts: u32,
    pub exponential: bool,
    pub initial_ms: u64,
    pub max_ms: u64,
    pub jitter: bool,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: DEFAULT_ATTEMPTS,
            exponential: true,
            initial_ms: 500,
            max_ms: 30_000,
            jitter: true,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum MapSource {
    Items(Vec<Json>),
    Range {
        start: i64,
        end: i64,
    },
    /// `steps.<id>.output[.field…]` of an upstream step, which must be a JSON array.
    Upstream {
        step: u16,
        path: Vec<String>,
    },
    /// `from = [...]`: the items of these upstream map steps (which share one lane), one to
    /// one; item i starts as soon as item i is through all of them (streaming).
    From(Vec<u16>),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoopSpec {
    pub until: String,
    pub max_iterations: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum OnFailure {
    /// The step fails (and so does the workflow, unless the step is optional).
    Fail,
    /// The failed task goes to the dead-letter queue; the step goes on.
    DeadLetter,
}

impl Spec {
    pub fn step_index(&self, id: &str) -> Option<usize> {
        self.steps.iter().position(|s| s.id == id)
    }

    /// The steps whose item i feeds item i of step `i` (its *lane parents*): the `from` steps,
    /// or the map step a `map.over = "steps.<id>.output"` reads whole. Empty for other steps.
    pub fn lane_parents(&self, i: usize) -> Vec<u16> {
        match &self.steps[i].map {
            Some(MapSource::From(v)) => v.clone(),
            Some(MapSource::Upstream { step, path })
                if path.is_empty() && self.steps[*step as usize].map.is_some() =>
            {
                vec![*step]
            }
            _ => Vec::new(),
        }
    }

    /// Checks the references between steps of a compiled spec (what apply indexes by): every
    /// `needs`, `over` and `from` names an existing earlier-checked step, and the graph is
    /// acyclic. `compile` guarantees this for specs it produced; apply checks it again because
    /// a log entry is input too.
    pub fn check_references(&self) -> Result<(), String> {
        let n = self.steps.len();
        if n == 0 || n > u16::MAX as usize {
            return Err(format!("{n} steps; a workflow has 1 to 65535"));
        }
        for (i, s) in self.steps.iter().enumerate() {
            let refs = s.needs.iter().chain(match &s.map {
                Some(MapSource::Upstream { step, .. }) => std::slice::from_ref(step),
                Some(MapSource::From(v)) => v.as_slice(),
                _ => &[],
            });
            for &j in refs {
                if j as usize >= n || j as usize == i {
                    return Err(format!("step {:?} refers to step index {j}", s.id));
                }
            }
            if let Some(MapSource::From(v)) = &s.map
                && (v.is_empty() || v.iter().any(|p| !s.needs.contains(p)))
            {
                return Err(format!("step {:?}: `from` steps must be in needs", s.id));
            }
        }
        // Acyclic (Kahn), bounded by the number of edges.
        let mut indegree: Vec<usize> = self.steps.iter().map(|s| s.needs.len()).collect();
        let mut ready: Vec<usize> = (0..n).filter(|&i| indegree[i] == 0).collect();
        let mut children: Vec<Vec<usize>> = vec![Vec::new(); n];
        for (i, s) in self.steps.iter().enumerate() {
            for &j in &s.needs {
                children[j as usize].push(i);
            }
        }
        let mut seen = 0;
        while let Some(i) = ready.pop() {
            seen += 1;
            for &c in &children[i] {
                indegree[c] -= 1;
                if indegree[c] == 0 {
                    ready.push(c);
                }
            }
        }
        if seen != n {
            return Err("the steps' needs form a cycle".into());
        }
        Ok(())
    }

    /// The steps that have `i` as a lane parent.
    pub fn lane_children(&self, i: usize) -> Vec<usize> {
        (0..self.steps.len())
            .filter(|&c| self.lane_parents(c).contains(&(i as u16)))
            .collect()
    }

    /// The steps that list `i` in `needs`.
    pub fn children(&self, i: usize) -> Vec<usize> {
        (0..self.steps.len())
            .filter(|&c| self.steps[c].needs.contains(&(i as u16)))
            .collect()
    }

    /// True for steps whose items follow another step's items one to one.
    pub fn is_lane(&self, i: usize) -> bool {
        !self.lane_parents(i).is_empty()
    }

    /// The step whose items a lane step has (itself for steps that are not lane steps).
    pub fn lane_root(&self, i: usize) -> usize {
        let mut at = i;
        // Bounded: the graph is acyclic, so a walk up is at most `steps` long.
        for _ in 0..self.steps.len() {
            match self.lane_parents(at).first() {
                Some(&p) => at = p as usize,
                None => break,
            }
        }
        at
    }
}
