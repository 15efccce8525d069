//! # troupe-scheduler — the pure core
//!
//! Everything Troupe decides, with no I/O: the workflow spec and its validation, the replicated
//! state machine (workflows, steps, tasks, attempts, nodes, dead letters), the DAG rules, and the
//! leader's planner. No tokio, no ractor, no clock reads, no randomness: time arrives as `at_ms`
//! in each command, and jitter is derived from task identity. Containers are `BTreeMap`/`BTreeSet`
//! so every server that applies the same commands holds the same state.
//!
//! Read in this order:
//! 1. [`spec`] — what users write and every rule that rejects it.
//! 2. [`command`] — the commands the Raft log carries, their outputs and effects.
//! 3. [`state`] — the state model (`model.rs`), apply (`apply.rs`), the DAG rules (`dag.rs`).
//! 4. [`placement`] — feasibility and scoring; [`plan`] — the leader's planner.
//! 5. [`views`] — what the API shows.
//!
//! Invariants (asserted by tests):
//! - a report is accepted only for the current `(task, attempt, epoch)` (fencing);
//! - a node never holds more live attempts than `slots + queue`;
//! - a finished item of a step never runs again (retry-from-failure keeps them).

pub mod command;
pub mod cond;
pub mod history;
pub mod json;
pub mod placement;
pub mod plan;
pub mod reconcile;
pub mod spec;
pub mod state;
pub mod units;
pub mod verify;
pub mod views;

pub use command::{
    Assignment, AttemptRef, Command, DlqFilter, Effect, Launch, NodeInfo, Outcome, Output, Report,
    RetryHint, RunSpec, Submission, WorkerLaunch,
};
pub use json::Json;
pub use plan::Planner;
pub use state::{State, TaskRef, WorkflowId};
