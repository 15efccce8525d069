//! # troupe-actors — the supervised actor shell of a node
//!
//! Owns the per-node supervision tree's actors and the glue between the pure scheduler core and
//! the durable Raft log:
//!
//! - [`supervisor`] — our OTP-style supervisor (one-for-one, one-for-all, rest-for-one, restart
//!   budget, backoff, escalation); ractor has none.
//! - [`facade`] — RaftFacade, opening the durable log and handing out the engine handle.
//! - [`machine`] — the scheduler state behind the log's `StateMachine` trait, and the engine hook
//!   (routes effects, runs the planner on the leader).
//! - [`instance`] — WorkflowInstance, one per running workflow (checkpoints, waiters).
//! - [`dispatcher`] and [`runner`] — the node's bounded runner queue and its TaskRunner slots.
//! - [`sink`] — delivers applied effects to the actors by registered name.
//! - [`workers`] — how the dispatcher hands attempts of worker steps to the node's worker host.
//! - [`metrics`] — task counters kept by apply, lease counters (read by the node's exporter).
//! - [`attempts`] — which attempts each applied command ended, and how (the node's trace spans).
//!
//! Invariants: no actor blocks (fsync lives on the engine thread, processes in spawned tasks);
//! no unbounded fan-out (the planner only places against a node's credits, so the dispatcher's
//! queue is bounded by `slots + queue`); effects of entries replayed at start-up are never run
//! (the node re-registers and its old attempts are requeued as attempt + 1).
//!
//! Read in this order: `machine.rs`, `facade.rs`, `dispatcher.rs`, `runner.rs`, `instance.rs`,
//! `sink.rs`, `supervisor.rs`.

pub mod attempts;
pub mod dispatcher;
pub mod executor;
pub mod facade;
pub mod instance;
pub mod leases;
pub mod machine;
pub mod metrics;
pub mod runner;
pub mod sink;
pub mod supervisor;
pub mod upstream;
pub mod workers;
